"""Adaptive leaky integrate-and-fire (ALIF) neuron of the LSNN, as a pure step function.

Bellec, Salaj, Subramoney, Legenstein, Maass (NeurIPS 2018), "Long short-term memory and
learning-to-learn in networks of spiking neurons"; conventions of the official code
(IGITUGraz/LSNN-official, ``lsnn/spiking_models.py``, class ``ALIF``). With
``alpha = exp(-dt / tau_mem)`` and ``rho = exp(-dt / tau_adapt)``, one step from ``t-1`` to ``t`` is

    b(t) = rho * b(t-1) + (1 - rho) * z(t-1)                       adaptation
    A(t) = b0 + beta * b(t)                                         adaptive threshold
    z(t) = H((v(t-1) - A(t)) / A(t)) / dt, 0 while refractory       spike from the *previous* voltage
    v(t) = alpha * v(t-1) + (1 - alpha) * I(t) - A(t) * z(t-1) * dt  leak, scaled input, soft reset

``I(t)`` is the synaptic input current (delays and weights are the layer's business). A neuron is
refractory at ``t`` when it spiked in one of the last ``n_refractory`` steps; the state keeps the
number of refractory steps left. ``beta = 0`` gives a plain LIF neuron with threshold ``b0``.
The pseudo-derivative acts on the threshold-normalised voltage ``(v - A) / A`` (``Triangle(0.3)``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _validate
from ..spikes import Surrogate, Triangle, spike

__all__ = ["ALIFParameters", "ALIFState", "alif_step", "alif_initial_state", "adaptive_threshold"]


class ALIFParameters(NamedTuple):
    """Parameters of an ALIF population (floats, or tensors broadcastable to ``[N]``).

    Times are in ms: ``tau_mem`` membrane, ``tau_adapt`` threshold adaptation, ``dt`` step.
    ``threshold`` is the baseline ``b0``; ``beta`` the adaptation strength (0 = LIF)."""

    tau_mem: float | torch.Tensor = 20.0
    tau_adapt: float | torch.Tensor = 1200.0
    beta: float | torch.Tensor = 1.7
    threshold: float | torch.Tensor = 0.01
    n_refractory: int = 0
    dt: float = 1.0
    surrogate: Surrogate = Triangle(gamma=0.3)


class ALIFState(NamedTuple):
    """``v`` membrane, ``z`` last spikes, ``b`` adaptation, ``refractory`` steps left; each ``[B, N]``."""

    v: torch.Tensor
    z: torch.Tensor
    b: torch.Tensor
    refractory: torch.Tensor


def alif_initial_state(batch_size: int, n: int, *, device=None, dtype=torch.float32) -> ALIFState:
    """All-zero state (the official ``zero_state``)."""
    zeros = torch.zeros(batch_size, n, device=device, dtype=dtype)
    return ALIFState(zeros, zeros.clone(), zeros.clone(), zeros.clone())


def validate_parameters(p: ALIFParameters) -> None:
    """Reject non-physical parameters with a ``ValueError`` naming the field."""
    _validate.positive("tau_mem", p.tau_mem)
    _validate.positive("tau_adapt", p.tau_adapt)
    _validate.positive("beta", p.beta, allow_zero=True)
    _validate.positive("threshold", p.threshold)
    _validate.non_negative_int("n_refractory", p.n_refractory)
    _validate.positive("dt", p.dt)


def _decay(tau: float | torch.Tensor, dt: float) -> float | torch.Tensor:
    return torch.exp(-dt / tau) if isinstance(tau, torch.Tensor) else math.exp(-dt / tau)


def adaptive_threshold(b: torch.Tensor, p: ALIFParameters) -> torch.Tensor:
    """``A = b0 + beta * b``."""
    return p.threshold + p.beta * b


def alif_step(current: torch.Tensor, state: ALIFState, p: ALIFParameters) -> tuple[torch.Tensor, ALIFState]:
    """One ALIF step (equations in the module docstring). Returns ``(z(t), state(t))``.

    ``current`` is ``I(t)`` of shape ``[B, N]``. Differentiable through ``p.surrogate``."""
    alpha = _decay(p.tau_mem, p.dt)
    rho = _decay(p.tau_adapt, p.dt)
    b = rho * state.b + (1.0 - rho) * state.z
    a = p.threshold + p.beta * b
    z = spike((state.v - a) / a, p.surrogate)
    if p.n_refractory > 0:
        z = z * (state.refractory == 0).to(z.dtype)
        refractory = torch.where(z > 0, float(p.n_refractory), (state.refractory - 1).clamp(min=0))
    else:
        refractory = state.refractory
    z = z / p.dt
    v = alpha * state.v + (1.0 - alpha) * current - a * state.z * p.dt
    return z, ALIFState(v=v, z=z, b=b, refractory=refractory)
