"""Triton step kernels of the recurrent ALIF population (run by Triton's interpreter on CPU): the
reference's spikes, and its gradients to the inputs, weights and initial state."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import random_case

from neuromorph.kernels import triton_alif
from neuromorph.kernels.alif_sequence import alif_sequence, alif_sequence_reference, alif_sequence_triton
from neuromorph.neurons.alif import ALIFState

pytestmark = pytest.mark.skipif(
    not triton_alif.usable(torch.empty(0)), reason=str(triton_alif.unavailable_reason(torch.empty(0)))
)


def _float32(case):
    external, w_rec, state, pending, p, w_out = case
    p = p._replace(**{k: getattr(p, k).float() for k in ("tau_mem", "tau_adapt", "beta", "threshold")})
    return (
        external.float(),
        w_rec.float(),
        ALIFState(*(t.float() for t in state)),
        pending.float(),
        p,
        w_out.float(),
    )


def _grads(fn, external, w_rec, state, pending, p, w_out):
    ext, w = external.clone().requires_grad_(), w_rec.clone().requires_grad_()
    v0, b0 = state.v.clone().requires_grad_(), state.b.clone().requires_grad_()
    out = fn(ext, w, state._replace(v=v0, b=b0), pending, p)
    loss = (out.z * w_out).sum() + out.state.v.square().sum() + out.pending.sum()
    loss = loss + 0.0 * (ext.sum() + w.sum() + v0.sum() + b0.sum())
    return out, torch.autograd.grad(loss, (ext, w, v0, b0))


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 1000),
    steps=st.integers(1, 12),
    batch=st.integers(1, 3),
    n=st.integers(1, 6),
    n_delay=st.integers(1, 3),
    n_ref=st.sampled_from([0, 2]),
    dt=st.sampled_from([1.0, 0.5]),
)
def test_triton_equals_reference(seed, steps, batch, n, n_delay, n_ref, dt):
    case = _float32(random_case(seed, steps, batch, n, n_delay, n_ref, dt))
    ref, g_ref = _grads(alif_sequence_reference, *case)
    tri, g_tri = _grads(alif_sequence_triton, *case)
    assert torch.equal(tri.z, ref.z)
    torch.testing.assert_close(tri.state.v, ref.state.v, rtol=1e-5, atol=1e-5)
    for a, b, name in zip(g_tri, g_ref, ["external", "w_rec", "v0", "b0"], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4, msg=name)


def test_triton_selectable_and_refuses_float64():
    case = random_case(1, 5, 2, 3, 1, 0, 1.0)
    with pytest.raises(RuntimeError, match="float32"):
        alif_sequence(*case[:5], impl="triton")
    out = alif_sequence(*_float32(case)[:5], impl="triton")
    assert out.z.shape == (5, 2, 3)
