"""LIF and LI neurons as NIR defines them (no synaptic current), discretised, as pure step functions.

The Neuromorphic Intermediate Representation (Pedersen et al., Nature Communications 15:8122, 2024;
package ``nir``) writes its ``LIF`` and ``LI`` primitives as ODEs (Norse calls the current-free
version "box" neurons, after the instantaneous current boxes):

    tau dv/dt = (v_leak - v) + r I                      LI and LIF
    z = H(v - v_threshold);  v <- v_reset where z = 1   LIF only ("hard" reset)

One step of length ``dt`` with the input ``I`` held constant over the step (so ``k`` is the decay):

    exact:  k = exp(-dt / tau)   v(t) = v_inf + k (v(t-1) - v_inf),  v_inf = v_leak + r I(t)
    euler:  v(t) = v(t-1) + (dt / tau) ((r I(t) + v_leak) - v(t-1))    (Norse, snnTorch; k = 1 - dt/tau)
    z(t) = H(v(t) - v_threshold)                         spike from the *updated* voltage
    v(t) <- (1 - z) v(t) + z v_reset   (hard)   or   v(t) - z v_threshold   (soft, not in NIR 1.0)

Spikes are 0/1 (NIR's unit events). This differs from the LSNN neurons of :mod:`.lif` and :mod:`.alif`
(spike from the previous voltage, reset subtracted one step later, spikes ``1 / dt``): those are the
conventions of the LSNN-official code, kept there; this module is what NIR files and the peers mean.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

from .. import _validate
from ..spikes import PiecewiseLinear, Surrogate, spike

__all__ = [
    "INTEGRATIONS",
    "RESETS",
    "LIFBoxParameters",
    "LIBoxParameters",
    "BoxState",
    "lif_box_step",
    "li_box_step",
    "box_initial_state",
]

INTEGRATIONS = ("exact", "euler")
RESETS = ("hard", "soft")


class LIFBoxParameters(NamedTuple):
    """``tau_mem`` and ``dt`` in ms; the rest in the units of ``v`` (floats or tensors broadcastable
    to the population's shape)."""

    tau_mem: float | torch.Tensor = 20.0
    r: float | torch.Tensor = 1.0
    v_leak: float | torch.Tensor = 0.0
    threshold: float | torch.Tensor = 1.0
    v_reset: float | torch.Tensor = 0.0
    reset: Literal["hard", "soft"] = "hard"
    integration: Literal["exact", "euler"] = "exact"
    dt: float = 1.0
    surrogate: Surrogate = PiecewiseLinear(width=1.0)


class LIBoxParameters(NamedTuple):
    """Leaky integrator (no spikes): ``tau`` and ``dt`` in ms."""

    tau: float | torch.Tensor = 20.0
    r: float | torch.Tensor = 1.0
    v_leak: float | torch.Tensor = 0.0
    integration: Literal["exact", "euler"] = "exact"
    dt: float = 1.0


class BoxState(NamedTuple):
    """Membrane ``v`` (any shape ``[B, ...]``)."""

    v: torch.Tensor


def box_initial_state(shape: tuple[int, ...], *, device=None, dtype=torch.float32) -> BoxState:
    """All-zero state (NIR does not define an initial state; zero is what the peers use for LIF)."""
    return BoxState(torch.zeros(shape, device=device, dtype=dtype))


def _check_common(tau_name: str, tau, integration: str, dt: float) -> None:
    _validate.positive(tau_name, tau)
    _validate.positive("dt", dt)
    if integration not in INTEGRATIONS:
        raise ValueError(f"integration must be one of {INTEGRATIONS}, got {integration!r}")


def validate_lif_parameters(p: LIFBoxParameters) -> None:
    _check_common("tau_mem", p.tau_mem, p.integration, p.dt)
    if p.reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {p.reset!r}")
    if not isinstance(p.surrogate, Surrogate):
        raise ValueError(f"surrogate must be a neuromorph.spikes.Surrogate, got {type(p.surrogate).__name__}")


def validate_li_parameters(p: LIBoxParameters) -> None:
    _check_common("tau", p.tau, p.integration, p.dt)


def _leak(v: torch.Tensor, current: torch.Tensor, tau, r, v_leak, integration: str, dt: float):
    drive = r * current + v_leak
    if integration == "euler":
        return v + (dt / tau) * (drive - v)
    k = torch.exp(-dt / tau) if isinstance(tau, torch.Tensor) else math.exp(-dt / tau)
    k = torch.as_tensor(k, dtype=v.dtype, device=v.device).expand_as(v)
    return torch.lerp(drive.expand_as(v), v, k)  # drive + k (v - drive)


def lif_box_step(
    current: torch.Tensor, state: BoxState, p: LIFBoxParameters
) -> tuple[torch.Tensor, BoxState]:
    """One LIF step (module docstring): leak and integrate, spike from the new voltage, reset.

    Returns ``(z(t), state(t))`` with ``z`` in {0, 1}. The pseudo-derivative acts on ``v - threshold``."""
    v = _leak(state.v, current, p.tau_mem, p.r, p.v_leak, p.integration, p.dt)
    z = spike(v - p.threshold, p.surrogate)
    if p.reset == "hard":
        v = (1.0 - z) * v + z * p.v_reset
    else:
        v = v - z * p.threshold
    return z, BoxState(v)


def li_box_step(current: torch.Tensor, state: BoxState, p: LIBoxParameters) -> tuple[torch.Tensor, BoxState]:
    """One leaky-integrator step; the output is the membrane ``v(t)`` itself."""
    v = _leak(state.v, current, p.tau, p.r, p.v_leak, p.integration, p.dt)
    return v, BoxState(v)
