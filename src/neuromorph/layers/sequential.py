"""Time-major container: stateful spiking layers and stateless per-step modules in a chain.

The Norse ``SequentialState`` pattern (norse/torch/module/sequential.py) for neuromorph's ``[T, B, ...]``
layers: a spiking layer consumes the whole sequence, ``(y, s_i) = layer_i(x, s_i)``; a stateless
module (``nn.Linear``, ``nn.Conv2d``, ``nn.AvgPool2d``, ``nn.Flatten``, ...) is applied to every time
step at once by folding time into the batch, ``y = f(x.reshape(T * B, ...)).reshape(T, B, ...)``.
The state is the tuple of the layers' states (``None`` for stateless modules).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate
from .delay import DelayLayer
from .feedforward import FeedForwardSpikingLayer
from .integrate_fire import IntegrateFireLayer
from .lif_box import LIBoxLayer, LIFBoxLayer
from .readout import LeakyReadout
from .recurrent import RecurrentSpikingLayer

__all__ = ["SpikingSequential", "is_stateful", "apply_per_step"]

_STATEFUL = (
    FeedForwardSpikingLayer,
    RecurrentSpikingLayer,
    LeakyReadout,
    IntegrateFireLayer,
    LIFBoxLayer,
    LIBoxLayer,
    DelayLayer,
)


def is_stateful(module: nn.Module) -> bool:
    """True for layers with the ``forward(x [T, B, ...], state) -> (y, state)`` contract."""
    return isinstance(module, _STATEFUL) or bool(getattr(type(module), "time_major_stateful", False))


def apply_per_step(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a stateless module to every time step of ``x`` ``[T, B, ...]`` in one call."""
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"input must be a time-major tensor [T, B, ...], got {got}")
    n_steps, batch = x.shape[:2]
    y = module(x.reshape(n_steps * batch, *x.shape[2:]))
    return y.reshape(n_steps, batch, *y.shape[1:])


class SpikingSequential(nn.Module):
    """``forward(x [T, B, ...], state=None) -> (y [T, B, ...], tuple of states)``.

    ``SpikingSequential(layer0, layer1, ...)`` names the layers "0", "1", ...;
    ``SpikingSequential({"rsnn": ..., "readout": ...})`` gives them names (used by NIR export)."""

    time_major_stateful = True

    def __init__(self, *layers) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], dict):
            named = dict(layers[0])
        else:
            named = {str(i): layer for i, layer in enumerate(layers)}
        if not named:
            raise ValueError("SpikingSequential needs at least one layer")
        for name, layer in named.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"layer names must be non-empty strings without '.', got {name!r}")
            if not isinstance(layer, nn.Module):
                raise ValueError(f"layer {name!r} must be a torch.nn.Module, got {type(layer).__name__}")
        self.layers = nn.ModuleDict(named)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int | str) -> nn.Module:
        if isinstance(index, int):
            return list(self.layers.values())[index]
        return self.layers[index]

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        return list(self.layers.items())

    def forward(self, x: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        _validate.finite_tensor("x", x)
        if state is None:
            state = (None,) * len(self.layers)
        elif not isinstance(state, tuple) or len(state) != len(self.layers):
            raise ValueError(f"state must be None or a tuple of {len(self.layers)} layer states")
        out = []
        for layer, s in zip(self.layers.values(), state, strict=True):
            if is_stateful(layer):
                x, s = layer(x, s)
            else:
                x, s = apply_per_step(layer, x), None
            out.append(s)
        return x, tuple(out)
