"""Conditional epsilon-prediction denoising diffusion model on image patches (WeatherDiff).

Özdenizci & Legenstein, "Restoring Vision in Adverse Weather Conditions with Patch-Based Denoising
Diffusion Models", IEEE TPAMI 2023 (arXiv:2207.14626); official code IGITUGraz/WeatherDiffusion
(``models/ddm.py``, ``models/unet.py``).

The network sees the degraded patch x~ and the noisy clean patch x_t concatenated along the channels
and predicts the noise: ``eps_theta(concat(x~, x_t), t)`` (2C input channels, C output channels, both
images in [-1, 1]). Its UNet is diffusers' ``UNet2DModel`` sized by :class:`UNetConfig` (from a tiny
CPU-test network to the paper's: 128 channels, multipliers (1, 2, 3, 4), 2 residual blocks per level,
self-attention at 16 x 16, patch 64). Training loss (ddm.py ``noise_estimation_loss``)::

    L = mean_batch sum_pixels (eps - eps_theta(concat(x~, sqrt(abar_t) x0 + sqrt(1 - abar_t) eps), t))^2

The weights used for sampling are an exponential moving average (EMA, decay 0.999) of the trained ones:
``ema <- decay * ema + (1 - decay) * theta`` after every optimizer step.

Optional analytic skip path (``UNetConfig.skip``; not in the paper, whose UNet is ``"none"``). With
``x_t = s x0 + sigma eps`` (``s = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)``) the network returns
``eps_theta = eps_lin + UNet(...)`` where ``eps_lin = E[eps | x_t, x~]`` under a Gaussian prior on x0
(``E[eps | x_t] = sigma (x_t - s mu) / (abar + sigma^2)`` for x0 ~ (mu, I), and ``abar + sigma^2 = 1``):

- ``"noise"``: x0 ~ (0, I): ``eps_lin = sigma x_t``;
- ``"cond"``: x0 ~ (x~, I), the degraded image as the prior mean: ``eps_lin = sigma (x_t - s x~)``.

The UNet's last convolution starts at zero then (ADM's ``zero_module``), so the untrained network is
``eps_lin``: with "cond" it restores every image to itself.

It is still an epsilon-predictor trained with the same loss and sampled by the same samplers; the UNet
only learns the correction. At high t, where ``x0_hat = (x_t - sigma eps_theta) / s`` multiplies any
error of eps by ``1 / s`` (up to 160), the UNet no longer has to reproduce x_t to that precision, so a
network trained for CPU minutes already starts from "output = input" instead of from noise. The --quick
recipe uses "cond" for that reason; its figures in docs/weather.md are with the skip path, and the
paper-scale default is the paper's network ("none").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .._validate import positive_int
from ..averaging import ema_init, ema_update
from ..data.images import optional_module
from .schedule import weatherdiff_schedule

__all__ = [
    "UNetConfig",
    "ConditionalUNet",
    "build_model",
    "int_tuple",
    "ema_init",
    "ema_update",
    "autocast_for",
    "activation_bytes_per_patch",
    "PAPER_64",
    "PAPER_128",
    "TINY",
]


def int_tuple(name: str, value) -> tuple[int, ...]:
    """``value`` (a tuple/list of ints or of integer strings) as a tuple of ints; ``ValueError`` naming
    ``name`` otherwise."""
    if isinstance(value, str) or not isinstance(value, tuple | list):
        raise ValueError(f"{name} must be a tuple of ints, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool):
            raise ValueError(f"{name} must be a tuple of ints, got {value!r}")
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a tuple of ints, got {value!r}") from None
        if iv != v and str(iv) != str(v).strip():
            raise ValueError(f"{name} must be a tuple of ints, got {value!r}")
        out.append(iv)
    return tuple(out)


@dataclass(frozen=True)
class UNetConfig:
    """Size of the conditional UNet. ``channels * channel_mult[i]`` channels at level ``i`` (resolution
    ``patch / 2**i``); self-attention at the levels whose resolution is in ``attention_resolutions``;
    ``norm_groups`` must divide every level's width (GroupNorm, 32 in the paper); ``skip``: the
    analytic skip path of the module doc ("none" = the paper's network)."""

    patch: int = 64
    image_channels: int = 3
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    layers_per_block: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    norm_groups: int = 32
    dropout: float = 0.0
    skip: str = "none"

    def __post_init__(self) -> None:
        # ``--set model.channel_mult=1,2,2`` arrives as strings; a config read back from YAML as lists.
        for name in ("channel_mult", "attention_resolutions"):
            object.__setattr__(self, name, int_tuple(f"model.{name}", getattr(self, name)))

    def validate(self) -> None:
        for name in ("patch", "image_channels", "channels", "layers_per_block", "norm_groups"):
            positive_int(f"model.{name}", getattr(self, name))
        if not self.channel_mult or any(
            isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.channel_mult
        ):
            raise ValueError(
                f"model.channel_mult must be a non-empty tuple of ints >= 1, got {self.channel_mult!r}"
            )
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.patch % factor:
            raise ValueError(
                f"model.patch ({self.patch}) must be divisible by 2**(levels - 1) = {factor} "
                f"(channel_mult {self.channel_mult} has {len(self.channel_mult)} levels)"
            )
        for m in self.channel_mult:
            if (self.channels * m) % self.norm_groups:
                raise ValueError(
                    f"model.norm_groups ({self.norm_groups}) must divide every level's width "
                    f"channels * channel_mult = {[self.channels * k for k in self.channel_mult]}"
                )
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.attention_resolutions):
            raise ValueError(
                f"model.attention_resolutions must be ints >= 1, got {self.attention_resolutions!r}"
            )
        if self.skip not in SKIPS:
            raise ValueError(f"model.skip must be one of {SKIPS}, got {self.skip!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout!r}")

    def resolutions(self) -> list[int]:
        return [self.patch // 2**i for i in range(len(self.channel_mult))]


# The paper's networks (configs/allweather.yml and allweather128.yml) and the CPU-test size.
SKIPS = ("none", "noise", "cond")

PAPER_64 = UNetConfig(patch=64, channels=128, channel_mult=(1, 2, 3, 4))
PAPER_128 = UNetConfig(patch=128, channels=128, channel_mult=(1, 1, 2, 3, 4))
TINY = UNetConfig(
    patch=16, channels=8, channel_mult=(1, 2), layers_per_block=1, attention_resolutions=(), norm_groups=4
)


class ConditionalUNet(nn.Module):
    """``forward(cond, x_t, t) -> eps``: the UNet on ``concat(cond, x_t)`` (cond = degraded patch), plus
    the analytic skip path ``eps_lin(cond, x_t, t)`` when ``cfg.skip`` is not "none".

    ``cond`` and ``x_t`` are ``[N, C, p, p]`` in [-1, 1]; ``t`` is an int or an ``[N]`` tensor of
    timesteps in [0, 1000)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        cfg.validate()
        UNet2DModel = optional_module("diffusers", "diffusers").UNet2DModel
        self.cfg = cfg
        res = cfg.resolutions()
        down = tuple("AttnDownBlock2D" if r in cfg.attention_resolutions else "DownBlock2D" for r in res)
        up = tuple("AttnUpBlock2D" if r in cfg.attention_resolutions else "UpBlock2D" for r in reversed(res))
        self.unet = UNet2DModel(
            sample_size=cfg.patch,
            in_channels=2 * cfg.image_channels,
            out_channels=cfg.image_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=tuple(cfg.channels * m for m in cfg.channel_mult),
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_groups,
            dropout=cfg.dropout,
            attention_head_dim=None,  # one head per attention layer, as the DDIM UNet
        )
        if cfg.skip != "none":  # the UNet learns a correction to eps_lin: start from none (ADM's zero_module)
            torch.nn.init.zeros_(self.unet.conv_out.weight)
            torch.nn.init.zeros_(self.unet.conv_out.bias)
        # abar_t per timestep, for the optional analytic skip path (not part of the state dict)
        self.register_buffer("abar", weatherdiff_schedule().alphas_cumprod, persistent=False)

    def forward(self, cond: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if cond.shape != x_t.shape:
            raise ValueError(
                f"cond and x_t must have the same shape, got {tuple(cond.shape)} and {tuple(x_t.shape)}"
            )
        if not torch.is_tensor(t):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        eps = self.unet(torch.cat([cond, x_t], dim=1), t).sample
        if self.cfg.skip == "none":
            return eps
        abar = self.abar[t].view(-1, 1, 1, 1).to(x_t.dtype)
        s, sigma = abar.sqrt(), (1.0 - abar).sqrt()
        if self.cfg.skip == "noise":  # prior x0 ~ (0, I): E[eps | x_t] = sigma x_t
            return eps + sigma * x_t
        return eps + sigma * (x_t - s * cond)  # prior x0 ~ (cond, I): E[eps | x_t, cond]


def build_model(cfg: UNetConfig, seed: int) -> ConditionalUNet:
    """The network with weights drawn from ``seed`` (diffusers initialises from the global generator, so
    the draw happens inside ``fork_rng``: the caller's global random state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConditionalUNet(cfg)


def autocast_for(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when ``enabled`` (mixed precision; no loss scaling needed), else a no-op.

    CPU runs stay in float32: bfloat16 autocast on CPU is slower on most machines without AMX."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def activation_bytes_per_patch(cfg: UNetConfig, bytes_per_value: int = 4) -> int:
    """A rough upper estimate of the inference memory one patch needs: the skip activations kept for the
    up path plus a few working feature maps per level, plus the attention matrices. Used only to size
    the patch batches under a memory budget (:func:`neuromorph.diffusion.sampler.patches_per_batch`)."""
    values = 0
    for i, r in enumerate(cfg.resolutions()):
        width = cfg.channels * cfg.channel_mult[i]
        values += (cfg.layers_per_block + 1 + 4) * width * r * r  # skips + working maps (down and up)
        if r in cfg.attention_resolutions:
            values += 3 * (r * r) ** 2 // 2 + 4 * width * r * r  # scores, softmax, q/k/v/out
    values += 4 * cfg.channels * cfg.patch * cfg.patch  # conv_in / out, input concat
    return int(values * bytes_per_value)
