"""Element-wise integrate-and-fire (IF) population: the neurons of rate-coded ANN-to-SNN conversion.

Oezdenizci & Legenstein (TMLR 2024), IGITUGraz/RobustSNNConversion; step function and equations in
:mod:`neuromorph.neurons.integrate_fire`. With NIR's ``IF`` primitive (``dv/dt = r I``, one unit
spike integrates ``r`` times its weight; reset to ``v_reset``) the layer computes

    u(t) = v(t-1) + r I(t);   z(t) = H(u(t) - v_th)
    v(t) = (1 - z) u(t) + z v_reset        hard reset (NIR, Norse ``IAFCell``)
    v(t) = u(t) - z v_th                   soft reset (keeps the residue; not expressible in NIR 1.0)

No weights: put a dense or conv layer before it. Input ``[T, B, *shape]``, state explicit.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate
from ..families import THRESHOLDS
from ..neurons.integrate_fire import IFParameters, IFState, if_initial_state, if_step, validate_parameters
from ..spikes import PiecewiseLinear, Surrogate
from ._population import check_sequence, feature_shape, per_element

__all__ = ["IntegrateFireLayer"]


class IntegrateFireLayer(nn.Module):
    """``forward(x [T, B, *shape], state=None) -> (z [T, B, *shape] in {0, 1}, IFState)``."""

    families = {"threshold": THRESHOLDS}

    def __init__(
        self,
        shape,
        *,
        threshold=1.0,
        reset: str = "hard",
        r=1.0,
        v_reset=0.0,
        surrogate: Surrogate = PiecewiseLinear(width=1.0),
    ) -> None:
        super().__init__()
        self.shape = feature_shape("shape", shape)
        validate_parameters(IFParameters(1.0, reset, surrogate))
        if not isinstance(surrogate, Surrogate):
            raise ValueError(
                f"surrogate must be a neuromorph.spikes.Surrogate, got {type(surrogate).__name__}"
            )
        self.reset, self.surrogate = reset, surrogate
        self.register_buffer("threshold", per_element("threshold", threshold, self.shape, positive=True))
        self.register_buffer("r", per_element("r", r, self.shape))
        self.register_buffer("v_reset", per_element("v_reset", v_reset, self.shape))
        if reset == "soft" and bool((self.v_reset != 0).any()):
            raise ValueError("v_reset applies to the hard reset only; with reset='soft' it must be 0")

    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> IFState:
        _validate.positive_int("batch_size", batch_size)
        return if_initial_state((batch_size, *self.shape), device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: IFState | None = None) -> tuple[torch.Tensor, IFState]:
        check_sequence("x", x, self.shape)
        if state is None:
            state = self.initial_state(x.shape[1], device=x.device, dtype=x.dtype)
        elif not isinstance(state, IFState) or tuple(state.v.shape) != (x.shape[1], *self.shape):
            got = tuple(state.v.shape) if isinstance(state, IFState) else type(state).__name__
            raise ValueError(
                f"state must be an IFState with v of shape {(x.shape[1], *self.shape)}, got {got}"
            )
        p = IFParameters(self.threshold, self.reset, self.surrogate)
        scale = None if bool((self.r == 1).all()) else self.r
        shift = None if self.reset == "soft" or not bool((self.v_reset != 0).any()) else self.v_reset
        zs = []
        for i_t in x.unbind(0):
            z, state = if_step(i_t if scale is None else scale * i_t, state, p)
            if shift is not None:  # if_step resets to 0; NIR's v_reset shifts that
                state = IFState(state.v + z * shift)
            zs.append(z)
        return torch.stack(zs), state

    def extra_repr(self) -> str:
        return f"shape={self.shape}, reset={self.reset}"
