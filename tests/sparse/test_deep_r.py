"""DEEP R and soft-DEEP R: one step against hand computation, the budget/sign invariants (hypothesis),
the guard against revival by momentum, layer targets (Linear, Conv, LSNN with Dale's law, SparseLinear),
checkpoint round trips and bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neuromorph.layers import RecurrentSpikingLayer
from neuromorph.sparse import DeepR, RewiringTarget, SoftDeepR, SparseLinear, rewiring_targets, soft_theta_min
from neuromorph.sparse.deep_r import step_noise
from neuromorph.sparse.targets import step_generator


def _params(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


# -- one step by hand --------------------------------------------------------------------------------


def test_one_sgd_step_matches_hand_computation():
    (w,) = _params((3, 4))
    opt = torch.optim.SGD([w], lr=0.1)
    lr, l1, temp, seed = 0.1, 0.05, 1e-3, 7
    r = DeepR(opt, [w], connections=5, l1=l1, temperature=temp, seed=seed)
    idx = torch.from_numpy(r.index.copy())
    sign = torch.from_numpy(r.sign.copy())
    theta = r.theta.detach().clone()
    assert torch.equal(w.detach().view(-1)[idx], sign * theta)  # eq. (1)
    assert int(torch.count_nonzero(w)) == 5
    grad = torch.linspace(-0.3, 0.3, 12).view(3, 4)
    w.grad = grad.clone()
    r.step()
    noise = torch.from_numpy(step_noise(seed, 0, 5).astype("float32"))
    want = theta - lr * sign * grad.view(-1)[idx] - lr * l1 + math.sqrt(2 * lr * temp) * noise
    assert bool((want > 0).all()), "test set-up: no connection should die in this step"
    torch.testing.assert_close(r.theta.detach(), want, rtol=0, atol=1e-7)
    expect_w = torch.zeros(12)
    expect_w[idx] = sign * want
    torch.testing.assert_close(w.detach().view(-1), expect_w, rtol=0, atol=1e-7)
    assert w.grad is None  # consumed by the step


def test_a_connection_pushed_below_zero_dies_and_one_dormant_is_reborn_at_epsilon():
    (w,) = _params((4, 5), seed=1)
    opt = torch.optim.SGD([w], lr=1.0)
    r = DeepR(opt, [w], connections=6, l1=0.0, temperature=0.0, epsilon=1e-12, seed=3)
    idx, sign = torch.from_numpy(r.index.copy()), torch.from_numpy(r.sign.copy())
    victim = int(idx[2])
    grad = torch.zeros(20)
    grad[victim] = float(sign[2]) * (float(r.theta.detach()[2]) + 1.0)  # theta - lr * s * g = -1
    w.grad = grad.view(4, 5)
    r.step()
    flat = w.detach().view(-1)
    assert int(torch.count_nonzero(flat)) == 6
    reborn = set(r.index.tolist()) - (set(idx.tolist()) - {victim})
    assert len(reborn) == 1
    (k,) = reborn
    assert abs(float(flat[k])) == pytest.approx(1e-12)
    assert float(torch.sign(flat[k])) == float(r.targets[0].sign[k])
    if k != victim:
        assert float(flat[victim]) == 0.0


# -- invariants (hypothesis) -------------------------------------------------------------------------

shapes = st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(
    shape_list=shapes,
    fraction=st.floats(0.05, 1.0),
    budget=st.sampled_from(["per-tensor", "global"]),
    opt_name=st.sampled_from(["sgd", "sgd-momentum", "adam"]),
    lr=st.floats(0.01, 2.0),
    temperature=st.sampled_from([0.0, 1e-4, 0.05]),
    seed=st.integers(0, 10_000),
)
def test_exactly_k_active_after_every_step_and_signs_never_flip(
    shape_list, fraction, budget, opt_name, lr, temperature, seed
):
    ws = _params(*shape_list, seed=seed)
    opt = {
        "sgd": lambda: torch.optim.SGD(ws, lr=lr),
        "sgd-momentum": lambda: torch.optim.SGD(ws, lr=lr, momentum=0.9),
        "adam": lambda: torch.optim.Adam(ws, lr=lr),
    }[opt_name]()
    eps = 1e-12
    r = DeepR(opt, ws, connectivity=fraction, budget=budget, l1=0.01, temperature=temperature, seed=seed,
              epsilon=eps)  # fmt: skip
    budgets, total = list(r.budgets), r.budget_total
    seen_sign = [torch.zeros(w.numel()) for w in ws]
    g = torch.Generator().manual_seed(seed + 1)
    before = [w.detach().view(-1).clone() for w in ws]
    for _ in range(12):
        for w in ws:
            w.grad = torch.randn(w.shape, generator=g)
        r.step()
        counts = [int(torch.count_nonzero(w)) for w in ws]
        assert sum(counts) == total
        if budget == "per-tensor":
            assert counts == budgets
        assert r.active_counts() == counts
        for w, seen, old, t in zip(ws, seen_sign, before, r.targets, strict=True):
            flat = w.detach().view(-1)
            nz = flat != 0
            s = torch.sign(flat[nz])
            assert torch.equal(s, t.sign[nz].float())  # the fixed sign table
            prior = seen[nz]
            assert bool(((prior == 0) | (prior == s)).all()), "a sign flipped"
            seen[nz] = s
            born = nz & (old == 0)  # was dormant: only a rebirth (theta = eps) may activate it
            assert bool((flat[born].abs() == eps).all()), "a dormant connection was revived by the optimizer"
        before = [w.detach().view(-1).clone() for w in ws]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 8), fraction=st.floats(0.1, 1.0), seed=st.integers(0, 1000))
def test_recurrent_layer_with_dale_keeps_presynaptic_signs_and_no_autapses(n, fraction, seed):
    layer = RecurrentSpikingLayer(
        4, n - n // 2, n // 2, dale=0.75, generator=torch.Generator().manual_seed(seed)
    )
    targets = rewiring_targets(layer)
    assert [t.weight for t in targets] == [layer.w_in, layer.w_rec]
    opt = torch.optim.Adam(layer.parameters(), lr=0.5)
    r = DeepR(opt, targets, connectivity=fraction, budget="global", temperature=0.01, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(8):
        layer.w_in.grad = torch.randn(layer.w_in.shape, generator=g)
        layer.w_rec.grad = torch.randn(layer.w_rec.shape, generator=g)
        r.step()
        w = layer.w_rec.detach()
        assert bool((w.diagonal() == 0).all())
        nz = w != 0
        row_sign = layer.rec_sign[:, None].expand_as(w)
        assert torch.equal(torch.sign(w[nz]), row_sign[nz])
        torch.testing.assert_close(layer.effective_w_rec().detach(), w)
        assert sum(int(torch.count_nonzero(t)) for t in (layer.w_in, layer.w_rec)) == r.budget_total


def test_conv_and_linear_weights_of_a_model():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    targets = rewiring_targets(model)
    assert [t.weight for t in targets] == [model[0].weight, model[2].weight]
    r = DeepR(opt, targets, connectivity=0.2, temperature=1e-3, seed=0)
    x = torch.randn(3, 2, 6, 6)
    for _ in range(5):
        r.zero_grad()
        model(x).pow(2).mean().backward()
        r.step()
    assert [int(torch.count_nonzero(t.weight)) for t in targets] == r.budgets
    assert model[0].bias.grad is not None  # biases are trained by the same optimizer, untouched by DEEP R


def test_sparse_linear_target_keeps_its_layer_consistent():
    layer = SparseLinear(20, 7, connectivity=0.2, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(layer.parameters(), lr=0.3)
    r = DeepR(opt, rewiring_targets(layer), temperature=0.01, seed=1)
    assert r.budgets == [layer.values.numel()]
    x = torch.randn(5, 20)
    for _ in range(10):
        r.zero_grad()
        layer(x).sum().backward()
        r.step()
        assert layer.index.unique().numel() == layer.index.numel()
        assert bool((layer.values != 0).all())
        torch.testing.assert_close(layer(x), x @ layer.dense_weight().t())


def test_state_round_trip_continues_bit_for_bit():
    def make():
        ws = _params((6, 5), (4, 6), seed=2)
        opt = torch.optim.Adam(ws, lr=0.2)
        r = DeepR(opt, ws, connectivity=0.3, budget="global", temperature=0.01, seed=5)
        return ws, opt, r

    def steps(ws, r, start, n):
        for k in range(start, start + n):
            g = torch.Generator().manual_seed(k)
            for w in ws:
                w.grad = torch.randn(w.shape, generator=g)
            r.step()

    ws_a, _, ra = make()
    steps(ws_a, ra, 0, 10)
    ws_b, opt_b, rb = make()
    steps(ws_b, rb, 0, 4)
    saved = {k: v.clone() for k, v in rb.state_tensors("r.").items()}
    opt_state = opt_b.state_dict()
    weights = [w.detach().clone() for w in ws_b]
    ws_c, opt_c, rc = make()
    with torch.no_grad():
        for w, v in zip(ws_c, weights, strict=True):
            w.copy_(v)
    rc.load_state_tensors("r.", saved)
    opt_c.load_state_dict(opt_state)
    steps(ws_c, rc, 4, 6)
    for a, c in zip(ws_a, ws_c, strict=True):
        assert torch.equal(a, c)


# -- soft-DEEP R -------------------------------------------------------------------------------------


def test_soft_step_matches_hand_computation():
    (w,) = _params((3, 3), seed=4)
    opt = torch.optim.SGD([w], lr=0.1)
    lr, l1, temp, tmin, seed = 0.1, 0.2, 1e-3, -0.05, 9
    r = SoftDeepR(opt, [w], connectivity=0.5, l1=l1, temperature=temp, theta_min=tmin, seed=seed)
    theta = r.thetas[0].detach().clone()
    sign = r.targets[0].sign.view(3, 3).float()
    torch.testing.assert_close(w.detach(), sign * theta.clamp_min(0))
    grad = torch.linspace(-1, 1, 9).view(3, 3)
    w.grad = grad.clone()
    r.step()
    active = theta > 0
    noise = torch.randn(9, generator=step_generator(seed, 0)).view(3, 3)
    want = theta - lr * sign * grad * active  # gradient on active connections only
    want = want - lr * l1 * (want > 0)
    want = (want + math.sqrt(2 * lr * temp) * noise).clamp_min(tmin)
    torch.testing.assert_close(r.thetas[0].detach(), want, rtol=0, atol=1e-7)
    torch.testing.assert_close(w.detach(), sign * want.clamp_min(0), rtol=0, atol=1e-7)


def test_soft_guard_keeps_dormant_thetas_still_under_momentum():
    (w,) = _params((8, 8), seed=5)
    opt = torch.optim.SGD([w], lr=0.5, momentum=0.9)
    r = SoftDeepR(opt, [w], connectivity=0.5, l1=0.0, temperature=0.0, theta_min=-1.0, seed=0)
    for k in range(6):
        dormant = r.thetas[0].detach() <= 0
        before = r.thetas[0].detach().clone()
        w.grad = torch.randn(8, 8, generator=torch.Generator().manual_seed(k))
        r.step()
        assert torch.equal(r.thetas[0].detach()[dormant], before[dormant])


def test_soft_connectivity_settles_at_the_target_without_gradients():
    # theta_min = -((1 - p0) / p0) (T / alpha) makes p0 the stationary active fraction (no gradient).
    p0, temp, l1, lr = 0.2, 1e-3, 1.0, 1e-5
    w = nn.Parameter(torch.full((60, 60), 1e-4))
    opt = torch.optim.SGD([w], lr=lr)
    r = SoftDeepR(opt, [w], connectivity=p0, l1=l1, temperature=temp, seed=0)
    assert r.theta_min[0] == pytest.approx(soft_theta_min(p0, temp, l1)) == pytest.approx(-0.004)
    fractions = []
    for k in range(4000):
        r.step()
        if k >= 2000 and k % 50 == 0:
            fractions.append(r.connectivity()[0])
    assert sum(fractions) / len(fractions) == pytest.approx(p0, abs=0.03)


# -- bad input ---------------------------------------------------------------------------------------


def _fresh():
    ws = _params((4, 5), (5, 3))
    return ws, torch.optim.SGD(ws, lr=0.1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"connectivity": 0.0}, "connectivity must be a number in (0, 1], got 0.0"),
        ({"connectivity": 1.5}, "connectivity must be a number in (0, 1], got 1.5"),
        ({"connectivity": [0.5, -0.1]}, "connectivity[1] must be a number in (0, 1], got -0.1"),
        ({"connectivity": [0.5]}, "one entry per weight (2)"),
        ({"connections": [3, 16]}, "connections[1]=16 is larger than weights[1] allows: 15"),
        ({"connections": 40, "budget": "global"}, "connections=40 must be in [1, 35]"),
        ({"connections": 0}, "connections[0] must be a positive int, got 0"),
        ({"connectivity": 0.5, "connections": 3}, "either connectivity or connections"),
        ({"connectivity": 0.5, "temperature": -1.0}, "temperature must be non-negative, got -1.0"),
        ({"connectivity": 0.5, "l1": -1e-5}, "l1 must be non-negative"),
        ({"connectivity": 0.5, "epsilon": 0.0}, "epsilon"),
        ({"connectivity": 0.5, "budget": "layer"}, "budget must be one of"),
    ],
)
def test_deep_r_bad_input_names_argument_and_value(kwargs, needle):
    ws, opt = _fresh()
    with pytest.raises(ValueError) as err:
        DeepR(opt, ws, **kwargs)
    assert needle in str(err.value)


def test_wrapping_a_tensor_twice_is_an_error():
    ws, opt = _fresh()
    with pytest.raises(ValueError, match=r"weights\[1\] is the same tensor as weights\[0\]"):
        DeepR(opt, [ws[0], ws[0]], connectivity=0.5)
    DeepR(opt, [ws[0]], connectivity=0.5)
    with pytest.raises(ValueError, match=r"weights\[0\] is not among the optimizer's parameters"):
        DeepR(opt, [ws[0]], connectivity=0.5)
    with pytest.raises(ValueError, match=r"weights\[0\] is not among the optimizer's parameters"):
        SoftDeepR(opt, [ws[0]], connectivity=0.5, temperature=1e-3)


def test_other_bad_targets():
    ws, opt = _fresh()
    with pytest.raises(ValueError, match="must be a list"):
        DeepR(opt, ws[0], connectivity=0.5)
    with pytest.raises(ValueError, match="at least one tensor"):
        DeepR(opt, [], connectivity=0.5)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        DeepR("sgd", ws, connectivity=0.5)
    with pytest.raises(ValueError, match=r"sign of weights\[0\] must hold only \+1 and -1"):
        DeepR(opt, [RewiringTarget(ws[0], sign=torch.zeros(4, 5))], connectivity=0.5)
    with pytest.raises(ValueError, match="does not broadcast"):
        DeepR(opt, [RewiringTarget(ws[0], sign=torch.ones(3))], connectivity=0.5)
    layer = SparseLinear(6, 4, connections=5)
    opt2 = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match='budget="global" needs dense weight tensors'):
        DeepR(opt2, [layer], budget="global")
    with pytest.raises(ValueError, match="SparseLinear with 5 connections, but a budget of 12"):
        DeepR(opt2, [layer], connections=12)
    with pytest.raises(ValueError, match="soft-DEEP R needs a theta for every potential connection"):
        SoftDeepR(opt2, [layer], connectivity=0.5, temperature=1e-3)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"connectivity": 0.0, "temperature": 1e-3}, "connectivity[0] must be a number in (0, 1], got 0.0"),
        ({"connectivity": 0.5, "temperature": -1.0}, "temperature must be non-negative, got -1.0"),
        ({"connectivity": 0.5, "temperature": 0.0}, "give theta_min explicitly"),
        (
            {"connectivity": 0.5, "temperature": 1e-3, "theta_min": 0.1},
            "theta_min[0] must be a finite number < 0",
        ),
    ],
)
def test_soft_deep_r_bad_input(kwargs, needle):
    ws, opt = _fresh()
    with pytest.raises(ValueError) as err:
        SoftDeepR(opt, ws, **kwargs)
    assert needle in str(err.value)


def test_the_torch_path_for_non_cpu_weights_equals_the_numpy_path():
    # CUDA weights take torch gathers/scatters instead of numpy views; run that branch on CPU tensors.
    def run(force_torch: bool):
        ws = _params((7, 9), (5, 7), seed=8)
        opt = torch.optim.Adam(ws, lr=0.3)
        r = DeepR(opt, ws, connectivity=0.3, budget="global", temperature=0.01, seed=3)
        if force_torch:
            r._cpu, r._native = False, False
        for k in range(10):
            g = torch.Generator().manual_seed(k)
            for w in ws:
                w.grad = torch.randn(w.shape, generator=g)
            r.step()
        return [w.detach().clone() for w in ws]

    for a, b in zip(run(False), run(True), strict=True):
        assert torch.equal(a, b)


# -- the cheap step: one reused generator, cached views and buffers ---------------------------------


@pytest.mark.parametrize("impl", ["numpy", "native"])
def test_noise_of_a_later_step_is_step_noise_of_that_step(impl):
    # counter-based: the noise of step n is a function of (seed, n), whatever ran before
    (w,) = _params((6, 7), seed=4)
    lr, temp, seed = 0.01, 1e-3, 11
    r = DeepR(torch.optim.SGD([w], lr=lr), [w], connections=8, l1=0.0, temperature=temp, seed=seed, impl=impl)
    for n in range(4):
        theta = r.theta.detach().clone()
        w.grad = torch.zeros(6, 7)
        r.step()
        noise = torch.from_numpy(step_noise(seed, n, 8).astype("float32"))
        want = theta + noise * torch.tensor(math.sqrt(2 * lr * temp), dtype=torch.float32)
        assert bool((want > 0).all()), "test set-up: no connection should die"
        torch.testing.assert_close(r.theta.detach(), want, rtol=0, atol=0)


def test_step_noise_is_a_function_of_seed_and_step_only():
    a, b = step_noise(3, 5, 4), step_noise(3, 5, 4)
    assert (a == b).all()
    assert not (step_noise(3, 6, 4) == a).any()
    assert not (step_noise(4, 5, 4) == a).any()
    assert (step_noise(3, 5, 9)[:4] == a).all()  # slot k's draw does not depend on how many slots
    with pytest.raises(ValueError, match="step"):
        step_noise(3, -1, 4)


def test_weights_whose_storage_is_replaced_are_still_written():
    # the step caches numpy views of the weights; a new storage (w.data = ...) must be seen
    ws = _params((5, 6), (4, 5), seed=6)
    r = DeepR(torch.optim.SGD(ws, lr=0.5, momentum=0.9), ws, connectivity=0.3, budget="global", seed=2)
    g = torch.Generator().manual_seed(0)
    for k in range(6):
        if k == 3:
            for w in ws:
                w.data = w.data.clone()
        for w in ws:
            w.grad = torch.randn(w.shape, generator=g)
        r.step()
        for w, sl, idx in zip(ws, r._slices(), r.positions(), strict=True):
            expect = torch.zeros(w.numel())
            expect[idx] = torch.from_numpy(r.sign[sl]) * r.theta.detach()[sl]
            assert torch.equal(w.detach().view(-1), expect)
        assert sum(int(torch.count_nonzero(w)) for w in ws) == r.budget_total


def test_a_missing_weight_gradient_counts_as_zero():
    ws = _params((4, 4), (3, 4), seed=9)
    r = DeepR(torch.optim.SGD(ws, lr=0.1), ws, connectivity=0.5, l1=0.0, seed=1)
    before = r.theta.detach().clone()
    ws[0].grad = torch.ones(4, 4)
    r.step()  # ws[1].grad is None: its slots must not move (a stale buffer would move them)
    sl = r._slices()[1]
    assert torch.equal(r.theta.detach()[sl], before[sl])
    ws[0].grad = None
    ws[1].grad = torch.ones(3, 4)
    after_first = r.theta.detach().clone()
    r.step()
    assert torch.equal(r.theta.detach()[r._slices()[0]], after_first[r._slices()[0]])
