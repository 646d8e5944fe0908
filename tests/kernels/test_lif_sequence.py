"""Feed-forward LIF kernels: every fast path gives the reference's spikes and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.kernels import cpu_native, triton_lif
from neuromorph.kernels.lif_sequence import lif_sequence
from neuromorph.neurons.lif import LIFParameters, LIFState, lif_initial_state
from neuromorph.spikes import Exponential, PiecewiseLinear, Rectangular, Sigmoid, Triangle

SURROGATES = [Triangle(0.3), PiecewiseLinear(), Rectangular(), Exponential(), Sigmoid()]
FAST = ["fused", "native", "triton"]


def _available(impl: str, dtype: torch.dtype) -> bool:
    if impl == "native":
        return cpu_native.available()
    if impl == "triton":
        return triton_lif.usable(torch.empty(0, dtype=dtype))
    return True


def _case(seed, steps, batch, n, n_ref, dt, tensor_params, dtype):
    g = torch.Generator().manual_seed(seed)
    if tensor_params:
        tau = (3.0 + 27.0 * torch.rand(n, generator=g)).to(dtype)
        thr = (0.3 + 0.5 * torch.rand(n, generator=g)).to(dtype)
    else:
        tau, thr = 12.5, 0.4
    p = LIFParameters(tau_mem=tau, threshold=thr, n_refractory=n_ref, dt=dt)
    current = (1.0 + torch.randn(steps, batch, n, generator=g)).to(dtype)
    state = LIFState(
        v=(0.3 + 0.6 * torch.randn(batch, n, generator=g)).to(dtype),
        z=((torch.rand(batch, n, generator=g) > 0.6).to(dtype) / dt),
        refractory=torch.randint(0, n_ref + 1, (batch, n), generator=g).to(dtype),
    )
    w_out = torch.randn(steps, batch, n, generator=g).to(dtype)
    return current, state, p, w_out


def _run(impl, current, state, p, w_out):
    cur = current.clone().requires_grad_()
    z, final = lif_sequence(cur, state, p, impl)
    if not z.requires_grad:  # one step: z(0) depends on the initial voltage only
        return z, final, torch.zeros_like(cur)
    (g,) = torch.autograd.grad((z * w_out).sum(), cur)
    return z.detach(), final, g


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    steps=st.integers(1, 30),
    batch=st.integers(1, 4),
    n=st.integers(1, 9),
    n_ref=st.sampled_from([0, 2]),
    dt=st.sampled_from([1.0, 0.5]),
    tensor_params=st.booleans(),
    surrogate=st.sampled_from(SURROGATES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_fast_paths_equal_reference(seed, steps, batch, n, n_ref, dt, tensor_params, surrogate, dtype):
    current, state, p, w_out = _case(seed, steps, batch, n, n_ref, dt, tensor_params, dtype)
    p = p._replace(surrogate=surrogate)
    z_ref, final_ref, g_ref = _run("reference", current, state, p, w_out)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for impl in FAST:
        if not _available(impl, dtype):
            continue
        z, final, g = _run(impl, current, state, p, w_out)
        assert torch.equal(z, z_ref), impl
        for name, a, b in zip(LIFState._fields, final, final_ref, strict=True):
            assert torch.equal(a, b), (impl, name)
        torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol, msg=impl)


def test_backward_hand_computed():
    """Two steps, one neuron, alpha = exp(-1/tau): dL/dI(0) = (1 - alpha) * gv(0) with
    gv(0) = gs(1) / thr, gs(1) = dL/dz(1) * psi(s(1)); s(1) = (v(0) - thr) / thr."""
    tau, thr = 10.0, 1.0
    alpha = math.exp(-1.0 / tau)
    current = torch.tensor([[[8.0]], [[0.0]]], dtype=torch.float64, requires_grad=True)
    state = lif_initial_state(1, 1, dtype=torch.float64)
    p = LIFParameters(tau_mem=tau, threshold=thr, surrogate=Triangle(0.3))
    for impl in ["reference", *FAST]:
        if not _available(impl, torch.float64):
            continue
        z, _ = lif_sequence(current, state, p, impl)
        (g,) = torch.autograd.grad(z[1, 0, 0], current)
        v0 = (1 - alpha) * 8.0
        s1 = (v0 - thr) / thr
        psi = 0.3 * max(0.0, 1 - abs(s1))
        assert z[1, 0, 0].item() == (1.0 if s1 > 0 else 0.0)
        assert g[0, 0, 0].item() == pytest.approx((1 - alpha) * psi / thr, rel=1e-12), impl
        assert g[1, 0, 0].item() == 0.0


def test_auto_dispatch(monkeypatch):
    current, state, p, _ = _case(0, 5, 2, 3, 0, 1.0, True, torch.float32)
    calls = []
    monkeypatch.setattr(cpu_native.NativeLIF, "apply", lambda *a: calls.append("native") or _fail())
    with pytest.raises(RuntimeError, match="dispatched"):
        lif_sequence(current, state, p)
    assert calls == (["native"] if cpu_native.available() else [])
    # the initial state needs a gradient: the reference, which gives it one
    v = state.v.clone().requires_grad_()
    z, _ = lif_sequence(current, state._replace(v=v), p)
    z.sum().backward()
    assert v.grad is not None


def _fail():
    raise RuntimeError("dispatched")


@pytest.mark.parametrize("impl", ["reference", *FAST])
def test_bad_input(impl):
    state = lif_initial_state(2, 3)
    p = LIFParameters()
    with pytest.raises(ValueError, match="at least one time step"):
        lif_sequence(torch.zeros(0, 2, 3), state, p, impl)
    with pytest.raises(ValueError, match=r"\[T, B, N\]"):
        lif_sequence(torch.zeros(2, 3), state, p, impl)
    with pytest.raises(ValueError, match="state.v must have shape"):
        lif_sequence(torch.zeros(4, 5, 3), state, p, impl)
    with pytest.raises(ValueError, match="state.v is torch.float64"):
        lif_sequence(torch.zeros(4, 2, 3), lif_initial_state(2, 3, dtype=torch.float64), p, impl)
    with pytest.raises(ValueError, match="impl must be one of"):
        lif_sequence(torch.zeros(4, 2, 3), state, p, "cuda-magic")


def test_non_contiguous_current_gives_the_same_result():
    current, state, p, w_out = _case(3, 12, 3, 5, 0, 1.0, True, torch.float32)
    strided = current.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    assert not strided.is_contiguous()
    for impl in ["reference", *FAST]:
        if _available(impl, torch.float32):
            assert torch.equal(
                _run(impl, strided, state, p, w_out)[0], _run(impl, current, state, p, w_out)[0]
            )
