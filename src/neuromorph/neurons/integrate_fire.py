"""Non-leaky integrate-and-fire (IF) neuron for ANN-to-SNN conversion, as a pure step function.

Used by rate-coded conversion (e.g. Oezdenizci & Legenstein, TMLR 2024, "Adversarially robust spiking
neural networks through conversion", IGITUGraz/RobustSNNConversion ``models/layers.py``). The spike is
emitted from the voltage *after* integration:

    u(t) = v(t-1) + I(t)
    z(t) = H(u(t) - v_th)
    v(t) = u(t) * (1 - z(t))          hard reset (to zero)
    v(t) = u(t) - v_th * z(t)         soft reset (subtract the threshold; keeps the residue)

The pseudo-derivative acts on the unnormalised distance ``u - v_th`` (``PiecewiseLinear(1.0)``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from .. import _validate
from ..spikes import PiecewiseLinear, Surrogate, spike

__all__ = ["IFParameters", "IFState", "if_step", "if_initial_state"]

RESETS = ("hard", "soft")


class IFParameters(NamedTuple):
    threshold: float | torch.Tensor = 1.0
    reset: Literal["hard", "soft"] = "hard"
    surrogate: Surrogate = PiecewiseLinear(width=1.0)


class IFState(NamedTuple):
    v: torch.Tensor


def if_initial_state(shape: tuple[int, ...], *, device=None, dtype=torch.float32) -> IFState:
    return IFState(torch.zeros(shape, device=device, dtype=dtype))


def validate_parameters(p: IFParameters) -> None:
    _validate.positive("threshold", p.threshold)
    if p.reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {p.reset!r}")


def if_step(current: torch.Tensor, state: IFState, p: IFParameters) -> tuple[torch.Tensor, IFState]:
    """One IF step (equations in the module docstring). Returns ``(z(t), state(t))``."""
    u = state.v + current
    z = spike(u - p.threshold, p.surrogate)
    v = u * (1.0 - z) if p.reset == "hard" else u - p.threshold * z
    return z, IFState(v=v)
