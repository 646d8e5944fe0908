"""Exponential moving average (EMA) of a network's weights, updated after every optimizer step::

    ema <- decay * ema + (1 - decay) * theta

Used for the weights a run keeps: WeatherDiff samples with them (decay 0.999, the official code's
``EMAHelper``), and robust SNN finetuning can evaluate them instead of the last iterate
(``finetune.ema_decay``), which averages out the last steps' noise; weight averaging is one of the
known remedies of robust overfitting (Rebuffi et al. 2021, "Data augmentation can improve robustness";
Chen et al. 2021, "Robust overfitting may be mitigated by properly learned smoothening").

The average is a plain dict of detached tensors (``state_dict`` keys), so that it checkpoints like any
other tensors and never appears among a module's parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validate import positive

__all__ = ["ema_init", "ema_update", "warmup_decay"]


@torch.no_grad()
def ema_init(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every floating-point parameter and buffer (the EMA weights start equal)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * theta`` for floating-point tensors (in place, foreach);
    integer buffers are copied."""
    positive("decay", decay, allow_zero=True)
    if decay >= 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    state = model.state_dict()
    floats_e, floats_m = [], []
    for k, v in state.items():
        if v.is_floating_point():
            floats_e.append(ema[k])
            floats_m.append(v.detach())
        else:
            ema[k].copy_(v)
    torch._foreach_lerp_(floats_e, floats_m, 1.0 - decay)


def warmup_decay(decay: float, updates: int) -> float:
    """``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``): early on the average forgets its start quickly, so that in a short run it is
    not dominated by the initial weights (after 124 steps with decay 0.97 the start weighs 4e-14, not
    0.02)."""
    return min(decay, (1 + updates) / (10 + updates))
