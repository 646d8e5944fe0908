"""Patch-based conditional denoising diffusion for weather restoration (WeatherDiff).

Özdenizci & Legenstein, "Restoring Vision in Adverse Weather Conditions with Patch-Based Denoising
Diffusion Models", IEEE TPAMI 2023 (arXiv:2207.14626). ``model`` (conditional eps-UNet, EMA),
``schedule`` (linear-beta DDPM, DDIM / DPM-Solver++ schedulers), ``sampler`` (overlapping-patch
sampling with per-pixel averaged noise estimates), ``train`` (aligned crops, loss), ``metrics``
(PSNR / SSIM on Y, seam score), ``restore_cli`` (``neuromorph restore``).
"""

from .metrics import psnr_y, seam_score, ssim_y
from .model import ConditionalUNet, UNetConfig, build_model, ema_init, ema_update
from .sampler import patch_grid, restore, restore_patch_loop, smoothed_eps
from .schedule import make_scheduler, weatherdiff_schedule

__all__ = [
    "ConditionalUNet",
    "UNetConfig",
    "build_model",
    "ema_init",
    "ema_update",
    "make_scheduler",
    "weatherdiff_schedule",
    "patch_grid",
    "restore",
    "restore_patch_loop",
    "smoothed_eps",
    "psnr_y",
    "ssim_y",
    "seam_score",
]
