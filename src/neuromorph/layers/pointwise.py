"""Stateless element-wise maps of NIR (Pedersen et al., Nature Communications 15:8122, 2024):

    Scale:      y = s * x                 (``nir.Scale``)
    Threshold:  y = H(x - threshold)      (``nir.Threshold``; 1 where x > threshold)

Applied per time step like any stateless module (input ``[N, *shape]``, batch first).
"""

from __future__ import annotations

import torch
from torch import nn

from ..spikes import PiecewiseLinear, Surrogate, spike
from ._population import feature_shape, per_element

__all__ = ["Scale", "Threshold"]


class Scale(nn.Module):
    def __init__(self, shape, scale) -> None:
        super().__init__()
        self.shape = feature_shape("shape", shape)
        self.register_buffer("scale", per_element("scale", scale, self.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Threshold(nn.Module):
    def __init__(self, shape, threshold, *, surrogate: Surrogate = PiecewiseLinear(width=1.0)) -> None:
        super().__init__()
        self.shape = feature_shape("shape", shape)
        self.surrogate = surrogate
        self.register_buffer("threshold", per_element("threshold", threshold, self.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spike(x - self.threshold, self.surrogate)
