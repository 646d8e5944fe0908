"""Regularisers for spiking networks.

Firing-rate regulariser of the LSNN-official tutorials (Bellec et al. 2018):

    L_reg = c * sum_j (r_j - f0)^2,   r_j = mean_{t, batch} z_j   (spikes per ms),   f0 = target_hz / 1000

``z`` are the spikes as the neurons emit them, ``H / dt`` (per ms), so ``r_j`` is a rate whatever ``dt``
is. The official code divides the mean by ``dt`` once more, which only agrees at its ``dt = 1 ms``.
"""

from __future__ import annotations

import torch

from .. import _validate

__all__ = ["firing_rate_loss"]


def firing_rate_loss(z: torch.Tensor, *, target_hz: float = 10.0, coefficient: float = 1.0) -> torch.Tensor:
    """Quadratic penalty pulling each neuron's mean rate (over time and batch of ``z [T, B, N]``, in
    spikes per ms) towards ``target_hz``."""
    if not isinstance(z, torch.Tensor) or z.dim() != 3:
        raise ValueError(f"z must be a [T, B, N] tensor, got {getattr(z, 'shape', type(z).__name__)}")
    _validate.positive("target_hz", target_hz, allow_zero=True)
    _validate.positive("coefficient", coefficient, allow_zero=True)
    rate = z.mean(dim=(0, 1))
    return coefficient * ((rate - target_hz / 1000.0) ** 2).sum()
