"""Leaky readout: exponentially filtered spikes through a linear layer.

LSNN-official tutorials (``exp_convolve`` then a dense layer): with ``kappa = exp(-dt / tau_out)``,

    y(t) = kappa * y(t-1) + (1 - kappa) * z(t)        (filtered spikes, "PSPs")
    out(t) = y(t) @ W_out (+ bias)

The filter state ``y`` is explicit, so a readout can continue across chunks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _validate
from ..families import BIASES, TAUS, WEIGHTS
from ..kernels.exp_filter import exp_filter

__all__ = ["LeakyReadout"]


class LeakyReadout(nn.Module):
    """``forward(z, state=None) -> (out [T, B, n_out], y_last [B, n_in])``."""

    families = {"weight": WEIGHTS, "bias": BIASES, "tau_out": TAUS}

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        tau_out: float = 20.0,
        dt: float = 1.0,
        bias: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _validate.positive_int("n_in", n_in)
        _validate.positive_int("n_out", n_out)
        _validate.positive("tau_out", tau_out)
        _validate.positive("dt", dt)
        self.n_in, self.n_out, self.dt = n_in, n_out, dt
        self.register_buffer("tau_out", torch.tensor(float(tau_out)))
        bound = math.sqrt(6.0 / (n_in + n_out))  # Glorot uniform, as tf.get_variable's default
        self.weight = nn.Parameter((torch.rand(n_in, n_out, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def filtered(self, z: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """The filtered spikes ``y`` ``[T, B, n_in]``."""
        _validate.same_device_dtype("z", z, "weight", self.weight)
        _validate.sequence("z", z, self.n_in)
        kappa = torch.exp(-self.dt / self.tau_out)
        return exp_filter(z, kappa, state)

    def forward(
        self, z: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.filtered(z, state)
        out = y @ self.weight
        if self.bias is not None:
            out = out + self.bias
        return out, y[-1]
