"""Regularisers for spiking networks.

Firing-rate regulariser of the LSNN-official tutorials:

    L_reg = c * sum_j (mean_{t, batch} z_j / dt - f0)^2,   f0 = target rate in spikes per ms
"""

from __future__ import annotations

import torch

from .. import _validate

__all__ = ["firing_rate_loss"]


def firing_rate_loss(z: torch.Tensor, *, target_hz: float = 10.0, coefficient: float = 1.0, dt: float = 1.0):
    """Quadratic penalty pulling each neuron's mean rate (over time and batch of ``z [T, B, N]``)
    towards ``target_hz``. ``dt`` in ms."""
    if not isinstance(z, torch.Tensor) or z.dim() != 3:
        raise ValueError(f"z must be a [T, B, N] tensor, got {getattr(z, 'shape', type(z).__name__)}")
    _validate.positive("target_hz", target_hz, allow_zero=True)
    _validate.positive("coefficient", coefficient, allow_zero=True)
    _validate.positive("dt", dt)
    rate = z.mean(dim=(0, 1)) / dt  # spikes per ms (z is H / dt)
    return coefficient * ((rate - target_hz / 1000.0) ** 2).sum()
