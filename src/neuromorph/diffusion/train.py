"""Training the conditional patch DDPM of WeatherDiff: aligned random crops and the noise-estimation loss.

Özdenizci & Legenstein, TPAMI 2023 (arXiv:2207.14626); official code IGITUGraz/WeatherDiffusion
``models/ddm.py`` (``noise_estimation_loss``, ``DenoisingDiffusion.train``) and ``datasets/*.py``
(``get_params`` / ``n_random_crops``).

- Patches: ``patch_n`` random p x p crops per image, at the same position in the degraded input and in
  its ground truth, images in [-1, 1] (``data_transform``: 2 x - 1).
- Loss: ``L = mean_batch sum_pixels (eps - eps_theta(x~, sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t))^2``
  with antithetic timesteps (t and T - 1 - t).

Every random draw takes an explicit ``numpy`` / ``torch`` generator, so a recipe that derives them from
(seed, role, iteration, rank) resumes bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._validate import positive_int
from .schedule import NoiseSchedule, antithetic_timesteps, q_sample

__all__ = ["random_aligned_crops", "to_model_range", "from_model_range", "diffusion_loss", "training_batch"]


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` (or float in [0, 1]) -> float32 ``[N, C, H, W]`` in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return (x.permute(0, 3, 1, 2) * 2.0 - 1.0).contiguous()


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """float ``[N, C, H, W]`` in [-1, 1] -> float32 ``[N, H, W, C]`` in [0, 1] (clamped)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1).numpy()


def random_aligned_crops(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    patch: int,
    images: int,
    patch_n: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``images`` pairs (with replacement) from ``pairs`` (``(clean, degraded)``, ``[H, W, C]``
    arrays of the same shape) and ``patch_n`` random ``patch x patch`` crops from each, at the same
    position in both images. Returns ``(clean, degraded)`` ``[images * patch_n, p, p, C]``. Images
    smaller than the patch are padded by edge replication first."""
    positive_int("patch", patch)
    positive_int("images", images)
    positive_int("patch_n", patch_n)
    if not pairs:
        raise ValueError("pairs must hold at least one (clean, degraded) pair")
    clean_out, deg_out = [], []
    for k in rng.integers(0, len(pairs), size=images):
        clean, degraded = pairs[int(k)]
        if clean.shape != degraded.shape:
            raise ValueError(
                f"pair {int(k)}: clean {clean.shape} and degraded {degraded.shape} differ in shape"
            )
        h, w = clean.shape[:2]
        if h < patch or w < patch:
            pad = ((0, max(0, patch - h)), (0, max(0, patch - w)), (0, 0))
            clean, degraded = np.pad(clean, pad, mode="edge"), np.pad(degraded, pad, mode="edge")
            h, w = clean.shape[:2]
        tops = rng.integers(0, h - patch + 1, size=patch_n)
        lefts = rng.integers(0, w - patch + 1, size=patch_n)
        for top, left in zip(tops, lefts, strict=True):
            clean_out.append(clean[top : top + patch, left : left + patch])
            deg_out.append(degraded[top : top + patch, left : left + patch])
    return np.stack(clean_out), np.stack(deg_out)


def training_batch(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    patch: int,
    images: int,
    patch_n: int,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch ``(x0, cond, t, noise)``: aligned crops in [-1, 1] ``[N, C, p, p]``, antithetic
    timesteps ``[N]`` and Gaussian noise, all drawn from ``rng`` / ``generator`` (CPU tensors)."""
    clean, degraded = random_aligned_crops(pairs, patch, images, patch_n, rng)
    x0, cond = to_model_range(clean), to_model_range(degraded)
    t = antithetic_timesteps(x0.shape[0], generator)
    noise = torch.randn(x0.shape, generator=generator)
    return x0, cond, t, noise


def diffusion_loss(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    cond: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """``mean_batch sum_pixels (noise - model(cond, q_sample(x0, t, noise), t))^2`` (ddm.py)."""
    x_t = q_sample(schedule, x0, t, noise)
    eps = model(cond, x_t, t)
    return (noise - eps.float()).square().sum(dim=(1, 2, 3)).mean()
