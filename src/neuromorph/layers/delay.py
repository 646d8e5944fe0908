"""Element-wise transmission delay in whole time steps: NIR's ``Delay`` primitive.

Pedersen et al. (Nature Communications 15:8122, 2024), ``nir.Delay``: ``y(t) = x(t - d)`` with ``d``
per element; here ``d`` counts steps of ``dt`` (``round(delay_s / dt_s)``). The state holds the last
``D = max(d)`` inputs (``[B, D, *shape]``, oldest first), so a sequence cut into chunks gives the same
output as in one piece.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .. import _validate
from ._population import check_sequence, feature_shape

__all__ = ["DelayLayer", "DelayState"]


class DelayState(NamedTuple):
    pending: torch.Tensor  # [B, D, *shape]


class DelayLayer(nn.Module):
    """``forward(x [T, B, *shape], state=None) -> (x delayed, DelayState)``; ``steps`` per element
    (a number or a tensor broadcastable to ``shape``), ``dt`` in ms."""

    def __init__(self, shape, steps, *, dt: float = 1.0) -> None:
        super().__init__()
        self.shape = feature_shape("shape", shape)
        _validate.positive("dt", dt)
        self.dt = float(dt)  # ms per step (the delay in time is steps * dt)
        d = torch.as_tensor(steps)
        if d.is_floating_point() and not bool((d == d.round()).all()):
            raise ValueError(f"steps must be whole numbers of time steps, got {steps!r}")
        d = torch.broadcast_to(d.round().long(), self.shape).clone()
        if bool((d < 0).any()):
            raise ValueError(f"steps must be >= 0, got a minimum of {int(d.min())}")
        self.register_buffer("steps", d)
        self.max_steps = int(d.max())

    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> DelayState:
        _validate.positive_int("batch_size", batch_size)
        return DelayState(torch.zeros(batch_size, self.max_steps, *self.shape, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, state: DelayState | None = None) -> tuple[torch.Tensor, DelayState]:
        check_sequence("x", x, self.shape)
        n_steps, batch = x.shape[:2]
        if state is None:
            state = self.initial_state(batch, device=x.device, dtype=x.dtype)
        d = self.max_steps
        if d == 0:
            return x, state
        # timeline: [pending (D steps, oldest first) | x (T steps)]; element j reads slot t + D - d_j
        line = torch.cat([state.pending.movedim(1, 0), x])  # [D + T, B, *shape]
        idx = torch.arange(n_steps, device=x.device).view(-1, *([1] * (x.dim() - 1))) + d - self.steps
        out = torch.gather(line, 0, idx.expand_as(x))
        return out, DelayState(line[n_steps:].movedim(0, 1).contiguous())

    def extra_repr(self) -> str:
        return f"shape={self.shape}, max_steps={self.max_steps}"
