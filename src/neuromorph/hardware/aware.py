"""Hardware-aware training: weight noise injected in the forward pass and weight clipping.

The practice of IBM aihwkit (``WeightModifierParameter`` and ``WeightClipParameter``, examples 05/06;
Joshi et al., Nat. Commun. 2020; Rasch et al. 2023, arXiv:2302.08469; ``reference/hardware.md`` section 2):
once per mini-batch the forward (and backward) pass sees perturbed weights, while the update is applied to
the clean weights; after each optimizer step the weights are clipped, so that the largest weight (which
sets the conductance scale ``g_max / max|W|``) is not an outlier and the device noise stays small relative
to the typical weight. Noise types:

    "additive"   W~ = W + std * max|W| * N(0, 1)                (aihwkit ADD_NORMAL, relative to max|W|)
    "pcm"        W~ = one read of W programmed on PCM at a time t drawn log-uniformly in [t_min, t_max]
                 (programming noise, drift, read noise, compensation of :mod:`neuromorph.hardware.pcm`;
                 aihwkit's PCM_NOISE modifier samples the same model at one fixed time)
    clipping     W <- clamp(W, -c * std(W), c * std(W))          (aihwkit LAYER_GAUSSIAN, c = 2.5)

The weights affected are those :func:`neuromorph.hardware.analog.deploy` would program
(:func:`neuromorph.hardware.analog.hardware_weights`). Use::

    for x, y in batches:
        with inject_weight_noise(model, hwa, generator):
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward()          # gradients at the perturbed weights
        opt.step()                                    # applied to the clean weights
        clip_weights(model, hwa)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from . import pcm
from .analog import hardware_weights
from .pcm import PCMParameters

__all__ = [
    "HWAParameters",
    "NOISE_TYPES",
    "validate_hwa",
    "perturbed_weights",
    "inject_weight_noise",
    "clip_weights",
]

NOISE_TYPES = ("none", "additive", "pcm")


class HWAParameters(NamedTuple):
    """``noise`` type; ``std`` of the additive noise relative to max|W|; ``[t_min, t_max]`` seconds for
    the PCM noise; ``clip_sigma`` the clipping bound in standard deviations of each weight tensor (None:
    no clipping); ``device_model`` the PCM model of the ``"pcm"`` noise."""

    noise: str = "pcm"
    std: float = 0.1
    t_min: float = 1.0
    t_max: float = 365 * 86400.0
    clip_sigma: float | None = 2.5
    device_model: PCMParameters = PCMParameters()


def validate_hwa(p: HWAParameters) -> None:
    if not isinstance(p, HWAParameters):
        raise ValueError(f"hardware-aware settings must be HWAParameters, got {type(p).__name__}")
    if p.noise not in NOISE_TYPES:
        raise ValueError(f"noise must be one of {NOISE_TYPES}, got {p.noise!r}")
    for name in ("std", "t_min", "t_max"):
        value = getattr(p, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not 0 <= p.t_min <= p.t_max:
        raise ValueError(f"t_min and t_max must satisfy 0 <= t_min <= t_max, got {p.t_min!r}, {p.t_max!r}")
    if p.clip_sigma is not None and (
        isinstance(p.clip_sigma, bool) or not isinstance(p.clip_sigma, (int, float)) or not p.clip_sigma > 0
    ):
        raise ValueError(f"clip_sigma must be None or a number > 0, got {p.clip_sigma!r}")
    pcm.validate_parameters(p.device_model)


def _inference_time(p: HWAParameters, generator: torch.Generator | None) -> float:
    u = float(torch.rand((), generator=generator))
    if p.t_min == p.t_max:
        return float(p.t_min)
    lo = math.log(max(p.t_min, 1e-9))
    return math.exp(lo + u * (math.log(p.t_max) - lo))


@torch.no_grad()
def perturbed_weights(w: torch.Tensor, p: HWAParameters, generator: torch.Generator | None) -> torch.Tensor:
    """One perturbed copy of ``w`` (equations in the module docstring)."""
    if p.noise == "none":
        return w.detach().clone()
    if p.noise == "additive":
        scale = p.std * float(w.detach().abs().max()) if w.numel() else 0.0
        eps = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        return w.detach() + scale * eps
    t = _inference_time(p, generator)
    state = pcm.program(w.detach(), p.device_model, generator)
    return pcm.read_weights(state, t, p.device_model, generator)


@contextlib.contextmanager
def inject_weight_noise(
    model: nn.Module, p: HWAParameters, generator: torch.Generator | None
) -> Iterator[None]:
    """Within the block, the hardware weights of ``model`` hold one perturbed draw; on exit the clean
    weights are back. Run forward *and* backward inside the block."""
    validate_hwa(p)
    params = [param for _, param in hardware_weights(model)]
    clean = [param.detach().clone() for param in params]
    try:
        with torch.no_grad():
            for param in params:
                param.copy_(perturbed_weights(param, p, generator))
        yield
    finally:
        with torch.no_grad():
            for param, value in zip(params, clean, strict=True):
                param.copy_(value)


@torch.no_grad()
def clip_weights(model: nn.Module, p: HWAParameters) -> None:
    """Clip every hardware weight tensor to ``+- clip_sigma * std`` (in place; no-op without clipping)."""
    validate_hwa(p)
    if p.clip_sigma is None:
        return
    for _, param in hardware_weights(model):
        if param.numel() > 1:
            bound = p.clip_sigma * float(param.std())
            param.clamp_(-bound, bound)
