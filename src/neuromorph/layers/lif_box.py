"""Element-wise LIF and LI populations with NIR's semantics (no weights; put a dense or conv layer before).

Pedersen et al. (Nature Communications 15:8122, 2024), the ``LIF`` and ``LI`` primitives of the
Neuromorphic Intermediate Representation; step functions and equations in
:mod:`neuromorph.neurons.lif_box`:

    v(t) = leak_and_integrate(v(t-1), I(t));  z(t) = H(v(t) - v_th);  v(t) <- v_reset where z(t) = 1

These are the layers :func:`neuromorph.nir.load` builds for ``LIF``/``LI`` nodes that did not come
from a neuromorph LSNN layer, and the layers to train with when a network must run unchanged in
snnTorch or Norse (``integration="euler"``). Input ``[T, B, *shape]``, state explicit.
"""

from __future__ import annotations

import torch
from torch import nn

from ..families import TAUS, THRESHOLDS
from ..neurons.lif_box import (
    BoxState,
    LIBoxParameters,
    LIFBoxParameters,
    box_initial_state,
    li_box_step,
    lif_box_step,
    validate_li_parameters,
    validate_lif_parameters,
)
from ..spikes import PiecewiseLinear, Surrogate
from ._population import check_sequence, feature_shape, per_element

__all__ = ["LIFBoxLayer", "LIBoxLayer"]


class _BoxPopulation(nn.Module):
    shape: tuple[int, ...]

    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> BoxState:
        from .. import _validate

        _validate.positive_int("batch_size", batch_size)
        return box_initial_state((batch_size, *self.shape), device=device, dtype=dtype)

    def _check_state(self, state: BoxState, x: torch.Tensor) -> BoxState:
        if state is None:
            return self.initial_state(x.shape[1], device=x.device, dtype=x.dtype)
        if not isinstance(state, BoxState):
            raise ValueError(f"state must be a BoxState (or None), got {type(state).__name__}")
        want = (x.shape[1], *self.shape)
        if tuple(state.v.shape) != want:
            raise ValueError(f"state.v must have shape {want}, got {tuple(state.v.shape)}")
        return state


class LIFBoxLayer(_BoxPopulation):
    """``forward(x [T, B, *shape], state=None) -> (z [T, B, *shape] in {0, 1}, BoxState)``.

    ``tau_mem`` and ``dt`` in ms; ``r``, ``v_leak``, ``threshold``, ``v_reset`` numbers or tensors
    broadcastable to ``shape``; ``reset`` "hard" (to ``v_reset``, NIR) or "soft" (subtract the
    threshold; not expressible in NIR 1.0); ``integration`` "exact" or "euler" (Norse, snnTorch)."""

    families = {"tau_mem": TAUS, "threshold": THRESHOLDS}

    def __init__(
        self,
        shape,
        *,
        tau_mem=20.0,
        r=1.0,
        v_leak=0.0,
        threshold=1.0,
        v_reset=0.0,
        reset: str = "hard",
        integration: str = "exact",
        dt: float = 1.0,
        surrogate: Surrogate = PiecewiseLinear(width=1.0),
    ) -> None:
        super().__init__()
        self.shape = feature_shape("shape", shape)
        validate_lif_parameters(
            LIFBoxParameters(1.0, reset=reset, integration=integration, dt=dt, surrogate=surrogate)
        )
        self.reset, self.integration, self.dt, self.surrogate = reset, integration, float(dt), surrogate
        self.register_buffer("tau_mem", per_element("tau_mem", tau_mem, self.shape, positive=True))
        self.register_buffer("r", per_element("r", r, self.shape))
        self.register_buffer("v_leak", per_element("v_leak", v_leak, self.shape))
        self.register_buffer("threshold", per_element("threshold", threshold, self.shape))
        self.register_buffer("v_reset", per_element("v_reset", v_reset, self.shape))

    def parameters_for_neurons(self) -> LIFBoxParameters:
        return LIFBoxParameters(
            self.tau_mem,
            self.r,
            self.v_leak,
            self.threshold,
            self.v_reset,
            self.reset,
            self.integration,
            self.dt,
            self.surrogate,
        )

    def forward(self, x: torch.Tensor, state: BoxState | None = None) -> tuple[torch.Tensor, BoxState]:
        check_sequence("x", x, self.shape)
        state = self._check_state(state, x)
        p = self.parameters_for_neurons()
        zs = []
        for i_t in x.unbind(0):
            z, state = lif_box_step(i_t, state, p)
            zs.append(z)
        return torch.stack(zs), state

    def extra_repr(self) -> str:
        return f"shape={self.shape}, reset={self.reset}, integration={self.integration}, dt={self.dt}"


class LIBoxLayer(_BoxPopulation):
    """Leaky integrator population: ``forward(x, state=None) -> (v [T, B, *shape], BoxState)``."""

    families = {"tau": TAUS}

    def __init__(self, shape, *, tau=20.0, r=1.0, v_leak=0.0, integration: str = "exact", dt: float = 1.0):
        super().__init__()
        self.shape = feature_shape("shape", shape)
        validate_li_parameters(LIBoxParameters(1.0, integration=integration, dt=dt))
        self.integration, self.dt = integration, float(dt)
        self.register_buffer("tau", per_element("tau", tau, self.shape, positive=True))
        self.register_buffer("r", per_element("r", r, self.shape))
        self.register_buffer("v_leak", per_element("v_leak", v_leak, self.shape))

    def forward(self, x: torch.Tensor, state: BoxState | None = None) -> tuple[torch.Tensor, BoxState]:
        check_sequence("x", x, self.shape)
        state = self._check_state(state, x)
        p = LIBoxParameters(self.tau, self.r, self.v_leak, self.integration, self.dt)
        vs = []
        for i_t in x.unbind(0):
            v, state = li_box_step(i_t, state, p)
            vs.append(v)
        return torch.stack(vs), state

    def extra_repr(self) -> str:
        return f"shape={self.shape}, integration={self.integration}, dt={self.dt}"
