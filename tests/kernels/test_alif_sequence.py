"""The fused ALIF sequence kernel against the eager reference (hypothesis), dispatch, and ``exp_filter``."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import random_case, run_with_grads

from neuromorph.kernels import alif_sequence, alif_sequence_fused, alif_sequence_reference, exp_filter
from neuromorph.neurons.alif import ALIFParameters, ALIFState

F64 = torch.float64
# ``neuromorph.kernels.alif_sequence`` as an attribute is the function (re-exported), not the module
seq_module = importlib.import_module("neuromorph.kernels.alif_sequence")


def _assert_same(out_a, out_b, atol=1e-12):
    assert torch.equal(out_a.z, out_b.z)
    for name in ("v", "a", "pending"):
        torch.testing.assert_close(getattr(out_a, name), getattr(out_b, name), rtol=0, atol=atol, msg=name)
    for name in ALIFState._fields:
        torch.testing.assert_close(
            getattr(out_a.state, name), getattr(out_b.state, name), rtol=0, atol=atol, msg=f"state.{name}"
        )


SIZES = dict(
    batch=st.integers(1, 3),
    n=st.integers(1, 6),
    n_ref=st.integers(0, 3),
    dt=st.sampled_from([1.0, 0.5]),
    seed=st.integers(0, 2**31 - 1),
)


@st.composite
def _sizes(draw):
    n_delay = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 30))  # also chunks shorter than the delay range
    return dict(steps=steps, n_delay=n_delay, **{k: draw(v) for k, v in SIZES.items()})


@settings(max_examples=35, deadline=None)
@given(sizes=_sizes())
def test_fused_equals_reference(sizes):
    external, w_rec, state, pending, p, w_out = random_case(**sizes)
    ref, g_ext_ref, g_w_ref = run_with_grads(
        alif_sequence_reference, external, w_rec, state, pending, p, w_out
    )
    fus, g_ext_fus, g_w_fus = run_with_grads(alif_sequence_fused, external, w_rec, state, pending, p, w_out)
    assert ref.z.shape == (sizes["steps"], sizes["batch"], sizes["n"])
    assert ref.pending.shape == (sizes["batch"], sizes["n_delay"], sizes["n"])
    assert set(ref.z.unique().tolist()) <= {0.0, 1.0 / sizes["dt"]}
    _assert_same(ref, fus)
    torch.testing.assert_close(g_ext_fus, g_ext_ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(g_w_fus, g_w_ref, rtol=0, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(sizes=_sizes(), split=st.floats(0.1, 0.9))
def test_two_chunks_equal_one_piece(sizes, split):
    external, w_rec, state, pending, p, _ = random_case(**sizes)
    steps, n_delay = sizes["steps"], sizes["n_delay"]
    if steps == 1:
        return
    t1 = min(steps - 1, max(1, int(split * steps)))
    # chunk 1 spills nothing of its own; the currents of steps >= t1 come with chunk 2
    ext1 = torch.cat([external[:t1], torch.zeros_like(external[:n_delay])])
    ext2 = external[t1:]
    for fn in (alif_sequence_reference, alif_sequence_fused):
        whole = fn(external, w_rec, state, pending, p)
        first = fn(ext1, w_rec, state, pending, p)
        second = fn(ext2, w_rec, first.state, first.pending, p)
        assert torch.equal(torch.cat([first.z, second.z]), whole.z)
        torch.testing.assert_close(torch.cat([first.v, second.v]), whole.v, rtol=0, atol=1e-12)
        torch.testing.assert_close(second.pending, whole.pending, rtol=0, atol=1e-12)
        torch.testing.assert_close(second.state.b, whole.state.b, rtol=0, atol=1e-12)


def test_fused_backward_with_chunk_shorter_than_delays():
    external, w_rec, state, pending, p, w_out = random_case(
        seed=0, steps=2, batch=2, n=3, n_delay=4, n_ref=0, dt=1.0
    )
    ref, g_ext_ref, g_w_ref = run_with_grads(
        alif_sequence_reference, external, w_rec, state, pending, p, w_out
    )
    fus, g_ext_fus, g_w_fus = run_with_grads(alif_sequence_fused, external, w_rec, state, pending, p, w_out)
    _assert_same(ref, fus)
    torch.testing.assert_close(g_w_fus, g_w_ref, rtol=0, atol=1e-9)


def test_forward_with_chunk_shorter_than_delays():
    external, w_rec, state, pending, p, _ = random_case(
        seed=1, steps=2, batch=2, n=3, n_delay=4, n_ref=1, dt=1.0
    )
    _assert_same(
        alif_sequence_reference(external, w_rec, state, pending, p),
        alif_sequence_fused(external, w_rec, state, pending, p),
    )


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_pending_slot_d_arrives_at_step_d(impl):
    n_delay, n = 4, 2
    p = ALIFParameters(tau_mem=10.0, tau_adapt=100.0, beta=0.0, threshold=100.0)
    alpha = math.exp(-0.1)
    state = ALIFState(*(torch.zeros(1, n, dtype=F64) for _ in range(4)))
    pending = torch.zeros(1, n_delay, n, dtype=F64)
    pending[0, 2, 1] = 1.0
    external = torch.zeros(6 + n_delay, 1, n, dtype=F64)
    out = alif_sequence(external, torch.zeros(n_delay, n, n, dtype=F64), state, pending, p, impl=impl)
    v = out.v[:, 0, 1]
    assert v[:2].tolist() == [0.0, 0.0]
    assert v[2:].tolist() == pytest.approx([(1 - alpha) * alpha**k for k in range(4)], rel=1e-12)
    assert not out.v[:, 0, 0].any()
    assert not out.pending.any()


def test_auto_differentiates_the_initial_state_like_the_reference():
    external, w_rec, state, pending, p, w_out = random_case(
        seed=5, steps=12, batch=2, n=4, n_delay=2, n_ref=1, dt=1.0
    )
    v0 = state.v.clone().requires_grad_()
    out = alif_sequence(external, w_rec, state._replace(v=v0), pending, p, impl="auto")
    ((out.z * w_out).sum() + out.state.v.sum()).backward()
    assert v0.grad is not None and v0.grad.abs().max() > 0

    v0_ref = state.v.clone().requires_grad_()
    ref = alif_sequence_reference(external, w_rec, state._replace(v=v0_ref), pending, p)
    ((ref.z * w_out).sum() + ref.state.v.sum()).backward()
    torch.testing.assert_close(v0.grad, v0_ref.grad, rtol=0, atol=1e-12)

    pending_g = pending.clone().requires_grad_()
    out = alif_sequence(external, w_rec, state, pending_g, p, impl="auto")
    out.state.v.sum().backward()
    assert pending_g.grad is not None and pending_g.grad.abs().max() > 0


@settings(max_examples=30, deadline=None)
@given(sizes=_sizes(), weights=st.lists(st.floats(-1, 1), min_size=4, max_size=4))
def test_fused_state_gradients_equal_reference(sizes, weights):
    """Gradients to every initial-state tensor and from every final-state tensor (and the spikes)."""
    external, w_rec, state, pending, p, w_out = random_case(**sizes)
    c_v, c_z, c_b, c_p = weights

    def grads(fn):
        ext, w = external.clone().requires_grad_(), w_rec.clone().requires_grad_()
        v0, z0, b0, pend = (t.clone().requires_grad_() for t in (state.v, state.z, state.b, pending))
        out = fn(ext, w, ALIFState(v0, z0, b0, state.refractory), pend, p)
        final = out.state
        loss = (out.z * w_out).sum() + c_v * final.v.square().sum() + c_b * final.b.sum()
        loss = loss + c_z * final.z.sum() + c_p * out.pending.square().sum()
        loss = loss + 0.0 * (ext.sum() + w.sum() + v0.sum() + z0.sum() + b0.sum() + pend.sum())
        return torch.autograd.grad(loss, (ext, w, v0, z0, b0, pend))

    names = ["ext", "w", "v0", "z0", "b0", "pending"]
    for a, b, name in zip(grads(alif_sequence_fused), grads(alif_sequence_reference), names, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_auto_dispatch_by_what_needs_gradients(monkeypatch):
    calls = []
    for name in ("alif_sequence_reference", "alif_sequence_fused", "alif_sequence_native"):
        real = getattr(seq_module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name.rsplit("_", 1)[1])
            return _real(*args, **kwargs)

        monkeypatch.setattr(seq_module, name, spy)
    external, w_rec, state, pending, p, _ = random_case(
        seed=6, steps=5, batch=1, n=3, n_delay=1, n_ref=0, dt=1.0
    )
    fast = "native" if seq_module._native_supported(external, w_rec, state, pending) else "fused"
    if not seq_module.cpu_native.available():
        fast = "fused"
    out = alif_sequence(external.requires_grad_(), w_rec.requires_grad_(), state, pending, p, impl="auto")
    assert calls == [fast] and out.z.requires_grad  # gradients only to the current and the weights
    alif_sequence(external, w_rec, state._replace(b=state.b.clone().requires_grad_()), pending, p)
    assert calls[-1] == "fused"  # the initial state needs a gradient: the native path gives none
    tau = torch.as_tensor(p.tau_mem).clone().requires_grad_()
    alif_sequence(external, w_rec, state, pending, p._replace(tau_mem=tau))
    assert calls[-1] == "reference"  # a parameter needs a gradient: only the reference gives one
    alif_sequence(external, w_rec, state, pending, p, impl="reference")
    assert calls[-1] == "reference"


def test_unknown_impl_rejected():
    external, w_rec, state, pending, p, _ = random_case(
        seed=7, steps=3, batch=1, n=2, n_delay=1, n_ref=0, dt=1.0
    )
    with pytest.raises(ValueError, match="impl"):
        alif_sequence(external, w_rec, state, pending, p, impl="cuda")


# -- exp_filter ------------------------------------------------------------------------------------------
def _loop(x, kappa, y0):
    y, out = y0, []
    for t in range(x.shape[0]):
        y = kappa * y + (1 - kappa) * x[t]
        out.append(y)
    return torch.stack(out)


def test_exp_filter_equals_python_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 2, 3, generator=g, dtype=F64)
    y0 = torch.randn(2, 3, generator=g, dtype=F64)
    kappa = math.exp(-1.0 / 20.0)
    torch.testing.assert_close(exp_filter(x, kappa, y0), _loop(x, kappa, y0), rtol=0, atol=1e-14)
    torch.testing.assert_close(
        exp_filter(x, kappa), _loop(x, kappa, torch.zeros(2, 3, dtype=F64)), rtol=0, atol=1e-14
    )
    k_vec = torch.tensor([0.0, 0.5, 0.95], dtype=F64)
    torch.testing.assert_close(exp_filter(x, k_vec, y0), _loop(x, k_vec, y0), rtol=0, atol=1e-14)
    assert torch.equal(exp_filter(x, 0.0, y0), x)  # kappa = 0: no memory


def test_exp_filter_hand_values():
    x = torch.tensor([[1.0], [0.0], [0.0]], dtype=F64)
    y = exp_filter(x, 0.5)
    assert y[:, 0].tolist() == [0.5, 0.25, 0.125]


@pytest.mark.parametrize("kappa", [0.8, torch.tensor([0.1, 0.6, 0.9], dtype=F64)], ids=["scalar", "vector"])
def test_exp_filter_gradcheck(kappa):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, 3, generator=g, dtype=F64, requires_grad=True)
    y0 = torch.randn(2, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: exp_filter(a, kappa, b), (x, y0))


def test_exp_filter_chunks_continue():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 2, 4, generator=g, dtype=F64)
    y0 = torch.randn(2, 4, generator=g, dtype=F64)
    whole = exp_filter(x, 0.9, y0)
    first = exp_filter(x[:7], 0.9, y0)
    second = exp_filter(x[7:], 0.9, first[-1])
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "kappa",
    [1.0, -0.1, 1.5, float("nan"), torch.tensor([0.5, 1.0, 0.2])],
    ids=["1", "-0.1", "1.5", "nan", "vec"],
)
def test_exp_filter_rejects_kappa_outside_unit_interval(kappa):
    with pytest.raises(ValueError, match="kappa"):
        exp_filter(torch.zeros(3, 1, 3), kappa)


def test_auto_takes_native_only_up_to_its_size_limit(monkeypatch):
    from neuromorph.kernels import cpu_native

    if not cpu_native.available():
        pytest.skip(f"native kernels unavailable: {cpu_native.unavailable_reason()}")
    calls = []
    for name in ("alif_sequence_native", "alif_sequence_fused"):
        real = getattr(seq_module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(seq_module, name, spy)
    small = seq_module.NATIVE_MAX_NEURONS
    for n, want in ((small, "alif_sequence_native"), (small + 1, "alif_sequence_fused")):
        external, w_rec, state, pending, p, _ = random_case(
            seed=8, steps=2, batch=1, n=n, n_delay=1, n_ref=0, dt=1.0
        )
        alif_sequence(external, w_rec, state, pending, p, impl="auto")
        assert calls[-1] == want
