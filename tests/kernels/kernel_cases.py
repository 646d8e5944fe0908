"""Random float64 inputs for the whole-sequence ALIF kernels, shared by the kernel test files."""

from __future__ import annotations

import torch

from neuromorph.neurons.alif import ALIFParameters, ALIFState
from neuromorph.spikes import Surrogate, Triangle

F64 = torch.float64


def random_case(
    seed: int,
    steps: int,
    batch: int,
    n: int,
    n_delay: int,
    n_ref: int,
    dt: float,
    surrogate: Surrogate = Triangle(),
):
    """Currents of the order of the thresholds (neurons spike and sit in the pseudo-derivative's support),
    some plain LIF neurons (beta = 0), a non-zero initial state and pending input, and a random readout
    ``w_out`` for the loss ``sum(z * w_out)``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=F64)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    p = ALIFParameters(
        tau_mem=3.0 + 27.0 * rand(n),
        tau_adapt=20.0 + 280.0 * rand(n),
        beta=rand(n) * (rand(n) > 0.3),
        threshold=0.3 + 0.5 * rand(n),
        n_refractory=n_ref,
        dt=dt,
        surrogate=surrogate,
    )
    external = 1.0 + randn(steps + n_delay, batch, n)
    w_rec = 0.5 * randn(n_delay, n, n)
    state = ALIFState(
        v=0.3 + 0.6 * randn(batch, n),
        z=(rand(batch, n) > 0.6).to(F64) / dt,
        b=0.2 * rand(batch, n),
        refractory=torch.randint(0, n_ref + 1, (batch, n), generator=g).to(F64),
    )
    pending = 0.3 * randn(batch, n_delay, n)
    w_out = randn(steps, batch, n)
    return external, w_rec, state, pending, p, w_out


def run_with_grads(fn, external, w_rec, state, pending, p, w_out):
    """``fn``'s result and the gradients of ``sum(z * w_out)`` w.r.t. the external current and w_rec."""
    ext = external.clone().requires_grad_()
    w = w_rec.clone().requires_grad_()
    out = fn(ext, w, state, pending, p)
    loss = (out.z * w_out).sum() + 0.0 * (ext.sum() + w.sum())  # a graph even when z ignores the inputs
    g_ext, g_w = torch.autograd.grad(loss, (ext, w))
    return out, g_ext, g_w
