"""Spike generation with swappable pseudo-derivatives (surrogate gradients).

The forward pass of every spiking neuron is the Heaviside step ``z = H(x)`` of a scaled distance ``x``
to the threshold. Its true derivative is zero almost everywhere, so backpropagation through time
replaces ``dz/dx`` by a *pseudo-derivative* (Bellec et al., NeurIPS 2018, "Long short-term memory and
learning-to-learn in networks of spiking neurons", Eq. for ``dz/dv``):

    dz/dx ~= gamma * max(0, 1 - |x|),  x = (v - A) / A,  gamma = 0.3        (LSNN triangle)

Each pseudo-derivative is a small frozen object with a ``derivative(x)`` method, so it can be swapped
without touching the neuron code (the Sinabs pattern). ``spike(x, surrogate)`` is the one entry point:

    >>> z = spike(v_scaled, Triangle(gamma=0.3))

Conventions of the other papers map onto these objects (papers.md section 8):
- LSNN / e-prop: ``Triangle(gamma=0.3)`` on the threshold-normalised voltage ``(v - A) / A``.
- Robust SNN conversion "PCW": ``PiecewiseLinear(width=g)`` on ``u = v - v_th``:
  ``max(0, g - |u|) / g**2``.
- RECT / EXP / EXP-D / STE: ``Rectangular``, ``Exponential``, ``StraightThrough``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch

__all__ = [
    "Surrogate",
    "Triangle",
    "PiecewiseLinear",
    "Rectangular",
    "Exponential",
    "Sigmoid",
    "StraightThrough",
    "spike",
    "surrogate_from_name",
    "SURROGATES",
]


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


class Surrogate(abc.ABC):
    """Base class of pseudo-derivatives: ``derivative(x)`` replaces ``dH/dx`` in the backward pass."""

    @abc.abstractmethod
    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``dz/dx`` used by backpropagation at the scaled distance ``x`` to the threshold."""


@dataclass(frozen=True)
class Triangle(Surrogate):
    """LSNN pseudo-derivative ``gamma * max(0, 1 - |x| / width)`` (Bellec et al. 2018, gamma = 0.3).

    With ``x = (v - A) / A`` (threshold-normalised voltage) this is exactly the official
    ``SpikeFunction`` of IGITUGraz/LSNN-official (``dampening_factor`` = gamma)."""

    gamma: float = 0.3
    width: float = 1.0

    def __post_init__(self) -> None:
        _positive("gamma", self.gamma)
        _positive("width", self.width)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.clamp(1.0 - x.abs() / self.width, min=0.0)


@dataclass(frozen=True)
class PiecewiseLinear(Surrogate):
    """ "PCW" triangle of Oezdenizci & Legenstein (TMLR 2024): ``max(0, width - |x|) / width**2``.

    Unit area for every width; used on the unnormalised distance ``x = v - v_th``."""

    width: float = 1.0

    def __post_init__(self) -> None:
        _positive("width", self.width)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.width - x.abs(), min=0.0) / self.width**2


@dataclass(frozen=True)
class Rectangular(Surrogate):
    """Boxcar ``1(|x| < width / 2) / width`` (unit area)."""

    width: float = 1.0

    def __post_init__(self) -> None:
        _positive("width", self.width)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() < self.width / 2).to(x.dtype) / self.width


@dataclass(frozen=True)
class Exponential(Surrogate):
    """``alpha * exp(-gamma * |x|)`` ("EXP" with alpha = 1, "EXP-D" with alpha = 0.3)."""

    alpha: float = 1.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        _positive("alpha", self.alpha)
        _positive("gamma", self.gamma)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * torch.exp(-self.gamma * x.abs())


@dataclass(frozen=True)
class Sigmoid(Surrogate):
    """Derivative of a logistic ``sigma(slope * x)``: ``slope * s * (1 - s)``."""

    slope: float = 5.0

    def __post_init__(self) -> None:
        _positive("slope", self.slope)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.slope * x)
        return self.slope * s * (1.0 - s)


@dataclass(frozen=True)
class StraightThrough(Surrogate):
    """Straight-through estimator: the gradient passes unchanged (``dz/dx = 1``)."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate.derivative(x), None


def spike(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Heaviside ``z = 1[x > 0]`` in the forward pass; ``dz/dx = surrogate.derivative(x)`` backward."""
    if not isinstance(surrogate, Surrogate):
        raise ValueError(f"surrogate must be a neuromorph.spikes.Surrogate, got {type(surrogate).__name__}")
    return _Spike.apply(x, surrogate)


SURROGATES: dict[str, type[Surrogate]] = {
    "triangle": Triangle,
    "pcw": PiecewiseLinear,
    "rect": Rectangular,
    "exp": Exponential,
    "sigmoid": Sigmoid,
    "ste": StraightThrough,
}


def surrogate_from_name(name: str, **kwargs: float) -> Surrogate:
    """A pseudo-derivative from its short name (for configs): ``surrogate_from_name("pcw", width=0.5)``."""
    if name not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {name!r}")
    return SURROGATES[name](**kwargs)
