"""Exponential filter (leaky integrator) over time with a cheap exact backward.

    y(t) = kappa * y(t-1) + (1 - kappa) * x(t),   y(-1) = y0,   kappa = exp(-dt / tau)

This is the LSNN-official ``exp_convolve`` (readout PSPs, e-prop traces). Under plain autograd a
per-step loop records one node per step; here the loop runs once forward and once backward on the
adjoint recurrence ``g_x(t) = (1 - kappa) * a(t)``, ``a(t) = g_y(t) + kappa * a(t+1)``.
"""

from __future__ import annotations

import torch

__all__ = ["exp_filter"]


class _ExpFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kappa, y0):
        y = torch.empty_like(x)
        prev = y0
        for t in range(x.shape[0]):
            torch.lerp(x[t], prev, kappa, out=y[t])  # x + kappa * (prev - x)
            prev = y[t]
        ctx.save_for_backward(kappa)
        return y

    @staticmethod
    def backward(ctx, g_y):
        (kappa,) = ctx.saved_tensors
        adj = g_y.contiguous().clone()
        for t in range(adj.shape[0] - 2, -1, -1):
            adj[t].addcmul_(adj[t + 1], kappa)
        g_y0 = adj[0] * kappa if ctx.needs_input_grad[2] else None
        return adj * (1.0 - kappa), None, g_y0


def exp_filter(x: torch.Tensor, kappa: float | torch.Tensor, y0: torch.Tensor | None = None) -> torch.Tensor:
    """Filter ``x`` ``[T, ...]`` along time with decay ``kappa`` (float or tensor broadcastable to
    ``x[0]``); ``y0`` is the filter state before the first step (zeros by default)."""
    kappa_t = torch.as_tensor(kappa, dtype=x.dtype, device=x.device)
    if not bool(((kappa_t >= 0) & (kappa_t < 1)).all()):  # written so that NaN is rejected too
        raise ValueError(f"kappa must lie in [0, 1), got {kappa}")
    kappa_t = kappa_t.expand_as(x[0]).contiguous()
    if y0 is None:
        y0 = torch.zeros_like(x[0])
    return _ExpFilter.apply(x, kappa_t, y0)
