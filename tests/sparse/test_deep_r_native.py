"""The native DEEP R step (kernels/_deep_r_cpu.c) against the numpy reference: the same random numbers,
the same weights, thetas, positions and counts after every step, bit for bit (hypothesis over shapes,
budgets, optimizers, dtypes, allowed masks); the fused SGD update against torch's; the fallbacks."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from neuromorph.kernels import cpu_native
from neuromorph.sparse import DeepR, RewiringTarget
from neuromorph.sparse import deep_r_random as rnd
from neuromorph.sparse.deep_r import _torch_add_fma

pytestmark = pytest.mark.skipif(not cpu_native.available(), reason="no C compiler: native step unavailable")


def _normals_c(n, seed, step):
    out = np.empty(n)
    kn, wn, fn = rnd.ziggurat_tables()
    assert cpu_native.deep_r_normals(n, seed % 2**64, step, kn, wn, fn, out) == 0
    return out


@pytest.mark.parametrize("seed, step", [(0, 0), (7, 123), (-5, 2**48 - 1), (2**63 + 11, 9)])
def test_c_normals_equal_the_numpy_ziggurat_bit_for_bit(seed, step):
    n = 20_000  # about 2 % take the slow path (wedges and tail): both are exercised
    a, b = _normals_c(n, seed, step), rnd.normals(seed, step, n)
    assert np.array_equal(a, b)


def test_normals_are_standard_normal():
    z = np.concatenate([rnd.normals(1, s, 20_000) for s in range(5)])
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert (np.abs(z) > 3.4426).mean() == pytest.approx(2 * stats.norm.sf(3.4426), rel=0.5)  # the tail


def test_uniforms_are_uniform_and_streams_differ():
    u = rnd.uniforms(3, 4, rnd.LANE_SPLIT, 0, 50_000)
    assert ((u >= 0) & (u < 1)).all() and stats.kstest(u, "uniform").pvalue > 1e-3
    v = rnd.uniforms(3, 4, rnd.LANE_DRAW, 0, 50_000)
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.03
    assert np.array_equal(rnd.uniforms(3, 4, rnd.LANE_SPLIT, 100, 10), u[100:110])


def test_torch_add_rounding_probe_matches_torch():
    for dtype in (torch.float32, torch.float64):
        kind = _torch_add_fma(dtype)
        assert kind in (True, False, None)
        x = torch.randn(1000, dtype=dtype, generator=torch.Generator().manual_seed(0))
        g = torch.randn(1000, dtype=dtype, generator=torch.Generator().manual_seed(1))
        out = x.clone().add_(g, alpha=-0.3)
        a = torch.tensor(-0.3, dtype=dtype)
        if kind is False:
            assert torch.equal(out, x + g * a)


# -- native step == numpy step ------------------------------------------------------------------------


def _run(impl, shapes, conn, budget, opt_name, dtype, temp, l1, masks, steps, seed, extra_param=False):
    g = torch.Generator().manual_seed(seed)
    ws = [nn.Parameter(torch.randn(*s, generator=g, dtype=dtype)) for s in shapes]
    targets = []
    for w, use_mask in zip(ws, masks, strict=True):
        if use_mask:
            allowed = torch.rand(w.shape, generator=g) < 0.6
            allowed.view(-1)[0] = True
            targets.append(RewiringTarget(w, allowed=allowed))
        else:
            targets.append(w)
    params = list(ws)
    bias = nn.Parameter(torch.randn(3, generator=g, dtype=dtype)) if extra_param else None
    if bias is not None:
        params.append(bias)
    lr = 0.3 if opt_name != "adam" else 0.05
    opt = {
        "sgd": lambda p: torch.optim.SGD(p, lr=lr),
        "momentum": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, lr=lr),
    }[opt_name](params)
    r = DeepR(opt, targets, connectivity=conn, budget=budget, temperature=temp, l1=l1, seed=seed, impl=impl)
    assert r._native == (impl == "native")
    trace = []
    for k in range(steps):
        gk = torch.Generator().manual_seed(1000 + k)
        for w in ws:
            w.grad = torch.randn(w.shape, generator=gk, dtype=dtype)
        if bias is not None:
            bias.grad = torch.randn(3, generator=gk, dtype=dtype)
        r.step()
        assert sum(r.active_counts()) == r.budget_total
        trace.append(
            (
                [w.detach().clone() for w in ws],
                r.theta.detach().clone(),
                r.index.copy(),
                list(r.active_counts()),
                None if bias is None else bias.detach().clone(),
            )
        )
    return trace


def _assert_same(a, b):
    for (wa, ta, ia, ca, ba), (wb, tb, ib, cb, bb) in zip(a, b, strict=True):
        assert ca == cb
        assert np.array_equal(ia, ib)
        assert torch.equal(ta, tb)
        for x, y in zip(wa, wb, strict=True):
            assert torch.equal(x, y)
        if ba is not None:
            assert torch.equal(ba, bb)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3),
    conn=st.floats(0.05, 0.95),
    budget=st.sampled_from(["per-tensor", "global"]),
    opt_name=st.sampled_from(["sgd", "momentum", "adam"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    temp=st.sampled_from([0.0, 1e-3, 0.05]),
    l1=st.sampled_from([0.0, 0.01]),
    masks=st.lists(st.booleans(), min_size=3, max_size=3),
    seed=st.integers(0, 2**31),
)
def test_native_step_equals_the_numpy_step_bit_for_bit(
    shapes, conn, budget, opt_name, dtype, temp, l1, masks, seed
):
    masks = masks[: len(shapes)]
    args = (shapes, conn, budget, opt_name, dtype, temp, l1, masks, 12, seed)
    _assert_same(_run("numpy", *args), _run("native", *args))


def test_fused_sgd_with_other_parameters_in_the_optimizer():
    args = ([(8, 9), (5, 8)], 0.3, "global", "sgd", torch.float32, 1e-3, 0.01, [False, False], 15, 4)
    _assert_same(_run("numpy", *args, extra_param=True), _run("native", *args, extra_param=True))


def test_many_deaths_move_connections_between_tensors_identically():
    # large lr and noise: most connections die every step; with a global budget they migrate
    args = ([(20, 30), (10, 20), (3, 10)], 0.1, "global", "sgd", torch.float32, 0.5, 0.0, [False] * 3, 10, 2)
    a, b = _run("numpy", *args), _run("native", *args)
    _assert_same(a, b)
    assert a[0][3] != a[-1][3], "test set-up: connections should move between tensors"


def test_the_exact_draw_falls_back_to_python_identically():
    # 95 % connectivity: fewer than a quarter dormant, the C rewiring hands over to Python
    args = ([(6, 7)], 0.95, "per-tensor", "sgd", torch.float64, 0.3, 0.0, [False], 8, 5)
    _assert_same(_run("numpy", *args), _run("native", *args))


def test_fused_sgd_respects_a_scheduler_and_does_not_warn():
    def run(impl):
        w = nn.Parameter(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)))
        opt = torch.optim.SGD([w], lr=0.5)
        r = DeepR(opt, [w], connectivity=0.2, temperature=1e-4, seed=1, impl=impl)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for k in range(6):
                w.grad = torch.randn(10, 10, generator=torch.Generator().manual_seed(k))
                r.step()
                sched.step()
        return w.detach().clone()

    assert torch.equal(run("numpy"), run("native"))


def test_a_step_hook_disables_the_fused_update_and_runs():
    w = nn.Parameter(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.SGD([w], lr=0.1)
    r = DeepR(opt, [w], connectivity=0.3, seed=0, impl="native")
    assert r._sgd_fusable()
    calls = []
    handle = opt.register_step_post_hook(lambda *a: calls.append(1))
    assert not r._sgd_fusable()
    w.grad = torch.ones(6, 6)
    r.step()
    assert calls == [1]
    handle.remove()
    assert r._sgd_fusable()


def test_resume_continues_bit_for_bit_on_the_native_path():
    def make():
        ws = [
            nn.Parameter(torch.randn(7, 8, generator=torch.Generator().manual_seed(3))),
            nn.Parameter(torch.zeros(4, 7)),
        ]
        opt = torch.optim.Adam(ws, lr=0.1)
        return (
            ws,
            opt,
            DeepR(opt, ws, connectivity=0.3, budget="global", temperature=0.01, seed=6, impl="native"),
        )

    def steps(ws, r, ks):
        for k in ks:
            g = torch.Generator().manual_seed(k)
            for w in ws:
                w.grad = torch.randn(w.shape, generator=g)
            r.step()

    ws, opt, r = make()
    steps(ws, r, range(10))
    want = [w.detach().clone() for w in ws]
    ws2, opt2, r2 = make()
    steps(ws2, r2, range(4))
    saved = ({k: v.clone() for k, v in r2.state_tensors("d.").items()}, opt2.state_dict())
    ws3, opt3, r3 = make()
    r3.load_state_tensors("d.", saved[0])
    opt3.load_state_dict(saved[1])
    steps(ws3, r3, range(4, 10))
    for a, b in zip(want, ws3, strict=True):
        assert torch.equal(a, b)


def test_impl_is_checked(monkeypatch):
    w = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="impl must be one of"):
        DeepR(torch.optim.SGD([w], lr=0.1), [w], connectivity=0.5, impl="fast")
    w16 = nn.Parameter(torch.randn(4, 4).half())
    with pytest.raises(ValueError, match='impl="native" cannot be used: the weights are torch.float16'):
        DeepR(torch.optim.SGD([w16], lr=0.1), [w16], connectivity=0.5, impl="native")
    monkeypatch.setenv("NEUROMORPH_NATIVE", "0")
    with pytest.raises(ValueError, match="C library is unavailable"):
        DeepR(torch.optim.SGD([w], lr=0.1), [w], connectivity=0.5, impl="native")
    assert not DeepR(torch.optim.SGD([w], lr=0.1), [w], connectivity=0.5)._native  # auto: numpy


def test_noise_scale_matches_the_langevin_term():
    # many steps of pure noise at small T: theta's increments have std sqrt(2 eta T)
    w = nn.Parameter(torch.full((40, 50), 5.0, dtype=torch.float64))
    lr, temp = 0.1, 1e-3
    r = DeepR(torch.optim.SGD([w], lr=lr), [w], connections=2000, l1=0.0, temperature=temp, seed=0)
    before = r.theta.detach().clone()
    w.grad = torch.zeros_like(w)
    r.step()
    inc = (r.theta.detach() - before).numpy()
    assert inc.std() == pytest.approx(math.sqrt(2 * lr * temp), rel=0.1)
