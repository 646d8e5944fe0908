"""Feed-forward spiking layer: a dense projection into a LIF population (no recurrence).

    I(t) = x(t) @ W (+ bias);   (z(t), state(t)) = lif_step(I(t), state(t-1))

LIF conventions of the LSNN-official code (``neurons/lif.py``). The projection is one matrix product over
all steps; the loop over time is :func:`neuromorph.kernels.lif_sequence` (fused BPTT on CPU, Triton on
CUDA, the eager reference when gradients must reach the initial state; ``impl`` selects one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _validate
from ..families import BIASES, TAUS, THRESHOLDS, WEIGHTS
from ..kernels.lif_sequence import LIF_IMPLEMENTATIONS, lif_sequence
from ..neurons.lif import LIFParameters, LIFState, lif_initial_state
from ..spikes import Surrogate, Triangle

__all__ = ["FeedForwardSpikingLayer"]


class FeedForwardSpikingLayer(nn.Module):
    """``forward(x [T, B, n_in], state=None) -> (z [T, B, n_out], LIFState)``."""

    families = {"weight": WEIGHTS, "bias": BIASES, "threshold": THRESHOLDS, "tau_mem": TAUS}

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        tau_mem: float = 20.0,
        threshold: float = 0.01,
        n_refractory: int = 0,
        dt: float = 1.0,
        bias: bool = False,
        surrogate: Surrogate = Triangle(gamma=0.3),
        impl: str = "auto",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _validate.positive_int("n_in", n_in)
        _validate.positive_int("n_out", n_out)
        _validate.positive("tau_mem", tau_mem)
        _validate.positive("threshold", threshold)
        _validate.non_negative_int("n_refractory", n_refractory)
        _validate.positive("dt", dt)
        if impl not in LIF_IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {LIF_IMPLEMENTATIONS}, got {impl!r}")
        self.impl = impl
        self.n_in, self.n_out, self.n_refractory, self.dt, self.surrogate = (
            n_in,
            n_out,
            n_refractory,
            dt,
            surrogate,
        )
        self.register_buffer("tau_mem", torch.full((n_out,), float(tau_mem)))
        self.register_buffer("threshold", torch.full((n_out,), float(threshold)))
        self.weight = nn.Parameter(torch.randn(n_in, n_out, generator=generator) / math.sqrt(n_in))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> LIFState:
        _validate.positive_int("batch_size", batch_size)
        return lif_initial_state(batch_size, self.n_out, device=device or self.weight.device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: LIFState | None = None) -> tuple[torch.Tensor, LIFState]:
        _validate.same_device_dtype("x", x, "weight", self.weight)
        _validate.sequence("x", x, self.n_in)
        if state is None:
            state = self.initial_state(x.shape[1], device=x.device, dtype=x.dtype)
        current = x @ self.weight
        if self.bias is not None:
            current = current + self.bias
        p = LIFParameters(self.tau_mem, self.threshold, self.n_refractory, self.dt, self.surrogate)
        return lif_sequence(current, state, p, self.impl)
