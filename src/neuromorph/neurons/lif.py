"""Leaky integrate-and-fire (LIF) neuron with the LSNN-official conventions, as a pure step function.

IGITUGraz/LSNN-official ``lsnn/spiking_models.py``, class ``LIF`` (Bellec et al., NeurIPS 2018). With
``alpha = exp(-dt / tau_mem)`` and a fixed threshold ``thr``:

    z(t) = H((v(t-1) - thr) / thr) / dt, 0 while refractory      spike from the previous voltage
    v(t) = alpha * v(t-1) + (1 - alpha) * I(t) - thr * z(t-1) * dt   leak, scaled input, soft reset

This is the ALIF step with ``beta = 0``; it is written out here so that a LIF population carries no
adaptation state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _validate
from ..spikes import Surrogate, Triangle, spike

__all__ = ["LIFParameters", "LIFState", "lif_step", "lif_initial_state"]


class LIFParameters(NamedTuple):
    """``tau_mem`` and ``dt`` in ms; ``threshold`` the firing threshold; refractory period in steps."""

    tau_mem: float | torch.Tensor = 20.0
    threshold: float | torch.Tensor = 0.01
    n_refractory: int = 0
    dt: float = 1.0
    surrogate: Surrogate = Triangle(gamma=0.3)


class LIFState(NamedTuple):
    """``v`` membrane, ``z`` last spikes, ``refractory`` steps left; each ``[B, N]``."""

    v: torch.Tensor
    z: torch.Tensor
    refractory: torch.Tensor


def lif_initial_state(batch_size: int, n: int, *, device=None, dtype=torch.float32) -> LIFState:
    zeros = torch.zeros(batch_size, n, device=device, dtype=dtype)
    return LIFState(zeros, zeros.clone(), zeros.clone())


def validate_parameters(p: LIFParameters) -> None:
    _validate.positive("tau_mem", p.tau_mem)
    _validate.positive("threshold", p.threshold)
    _validate.non_negative_int("n_refractory", p.n_refractory)
    _validate.positive("dt", p.dt)


def lif_step(current: torch.Tensor, state: LIFState, p: LIFParameters) -> tuple[torch.Tensor, LIFState]:
    """One LIF step (equations in the module docstring). Returns ``(z(t), state(t))``."""
    alpha = (
        torch.exp(-p.dt / p.tau_mem) if isinstance(p.tau_mem, torch.Tensor) else math.exp(-p.dt / p.tau_mem)
    )
    z = spike((state.v - p.threshold) / p.threshold, p.surrogate)
    if p.n_refractory > 0:
        z = z * (state.refractory == 0).to(z.dtype)
        refractory = torch.where(z > 0, float(p.n_refractory), (state.refractory - 1).clamp(min=0))
    else:
        refractory = state.refractory
    z = z / p.dt
    v = alpha * state.v + (1.0 - alpha) * current - p.threshold * state.z * p.dt
    return z, LIFState(v=v, z=z, refractory=refractory)
