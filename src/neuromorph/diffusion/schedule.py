"""Noise schedule of WeatherDiff and the samplers that walk it backwards (diffusers schedulers).

Özdenizci & Legenstein, TPAMI 2023 (arXiv:2207.14626), official code IGITUGraz/WeatherDiffusion
(``models/ddm.py``, ``utils/sampling.py``).

Forward process (DDPM, Ho et al. 2020): linear beta_t from 1e-4 to 0.02 over T = 1000 steps,
``abar_t = prod_{s<=t} (1 - beta_s)`` and ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.
Training draws timesteps antithetically: ``t`` for the first half of the batch and ``T - 1 - t`` for the
second (ddm.py), which lowers the variance of the loss estimate.

Reverse process: deterministic DDIM (eta = 0) with S implicit steps tau = {0, T/S, 2T/S, ...} (the
paper: S = 25, tau = 960, 920, ..., 0)::

    x0_hat   = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    x_{prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat,   abar_prev = 1 after the last step

which is diffusers' ``DDIMScheduler(set_alpha_to_one=True, steps_offset=0, clip_sample=False)``; and
DPM-Solver++(2M) (Lu et al. 2022), diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++")``
on the same betas, which needs fewer steps for the same quality.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._validate import positive_int
from ..data.images import optional_module

__all__ = [
    "NoiseSchedule",
    "SAMPLERS",
    "T_TRAIN",
    "weatherdiff_schedule",
    "q_sample",
    "antithetic_timesteps",
    "make_scheduler",
]

T_TRAIN = 1000
BETA_START = 1e-4
BETA_END = 0.02
SAMPLERS = ("ddim", "dpm")


class NoiseSchedule(NamedTuple):
    """``betas`` and ``alphas_cumprod`` (``abar_t``), float32 ``[T]``."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor


def weatherdiff_schedule() -> NoiseSchedule:
    """Linear betas 1e-4 .. 0.02, T = 1000, computed in float32 exactly as the diffusers schedulers do, so
    that training (:func:`q_sample`) and sampling use the same ``abar_t`` to the last bit."""
    betas = torch.linspace(BETA_START, BETA_END, T_TRAIN, dtype=torch.float32)
    return NoiseSchedule(betas, torch.cumprod(1.0 - betas, dim=0))


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for a batch of timesteps ``t`` ``[N]``."""
    if x0.shape != noise.shape:
        raise ValueError(
            f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}"
        )
    if t.dim() != 1 or t.shape[0] != x0.shape[0]:
        raise ValueError(f"t must have shape [N] = [{x0.shape[0]}], got {tuple(t.shape)}")
    a = schedule.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def antithetic_timesteps(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` timesteps: ``ceil(n/2)`` uniform draws ``t`` and their mirrors ``T - 1 - t`` (ddm.py)."""
    positive_int("n", n)
    half = torch.randint(0, T_TRAIN, ((n + 1) // 2,), generator=generator)
    return torch.cat([half, T_TRAIN - 1 - half])[:n]


def make_scheduler(kind: str, steps: int):
    """A fresh diffusers scheduler of ``kind`` ("ddim" or "dpm") with ``steps`` timesteps set.

    Schedulers carry state (DPM-Solver keeps its previous model outputs), so every sampling run gets its
    own. ``steps`` may be anything from 1 to 1000."""
    if kind not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {kind!r}")
    positive_int("steps", steps)
    if steps > T_TRAIN:
        raise ValueError(f"steps must be <= {T_TRAIN} (the training timesteps), got {steps}")
    common = dict(
        num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="linear"
    )
    diffusers = optional_module("diffusers", "diffusers")
    if kind == "ddim":
        sched = diffusers.DDIMScheduler(
            **common,
            set_alpha_to_one=True,
            steps_offset=0,
            clip_sample=False,
            timestep_spacing="leading",
            prediction_type="epsilon",
        )
    else:
        sched = diffusers.DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            prediction_type="epsilon",
            lower_order_final=True,
            final_sigmas_type="zero",
            timestep_spacing="linspace",
        )
    sched.set_timesteps(steps)
    return sched
