"""Size-agnostic restoration: diffusion sampling with noise estimates averaged over overlapping patches.

Özdenizci & Legenstein, TPAMI 2023 (arXiv:2207.14626), Sec. 3.2 and Algorithm 2; official code
IGITUGraz/WeatherDiffusion ``utils/sampling.py::generalized_steps_overlapping``.

A grid of p x p patches with stride r covers the image (corners 0, r, 2r, ... and, where H - p is not a
multiple of r, one more row/column at H - p, so that every pixel is covered and no count is zero). One
global noise image x_T ~ N(0, I) is drawn; at every sampling step the network's noise estimate of each
patch d is put back in place and averaged per pixel::

    eps_hat(x_t) = (1 / M) * sum_d P_d^T eps_theta(P_d x~, P_d x_t, t),     M = sum_d P_d^T 1

(P_d crops patch d, P_d^T puts it back in a zero image, M counts the patches covering a pixel). The
smoothed ``eps_hat`` drives a standard sampler step (DDIM or DPM-Solver++, :mod:`.schedule`) on the
whole image. Averaging eps (not x0 or x_{t-1}) is the paper's choice.

``blend="hann"`` (ours, not the paper's) weights each patch's estimate by a separable window that falls
towards the patch border, ``w(i) = eps_w + sin^2(pi (i + 1/2) / p)`` per axis::

    eps_hat = (sum_d P_d^T (w * eps_d)) / (sum_d P_d^T w)

Why: a patch's estimate is worst at its border (the network sees zero padding there), and with uniform
weights the set of patches averaged at a pixel changes abruptly at every patch edge, which leaves faint
seams at small strides (measured in docs/weather.md: +10-12 % edge gradient at r = p/4 against a
restoration without patches; with the window at most 1 %). ``eps_w`` = 1e-3 keeps the weight positive where a
single patch border covers the image border. At r = p the weights cancel (one patch per pixel), so both
blends are the same standard sampler there.

Unlike the official loop, which runs the network on one patch at a time, the patches are gathered with
one index tensor, evaluated in batches whose size a memory budget sets, and scattered back with
``index_add_`` (a vectorised fold). :func:`restore_patch_loop` keeps the one-patch-at-a-time loop as the
reference the batched sampler is tested and benchmarked against. Images smaller than the patch are
padded (edge replication) to the patch size and the result cropped back, so any size from 1 x 1 works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._validate import finite_tensor, positive_int
from .schedule import make_scheduler

__all__ = [
    "EpsFn",
    "PatchGrid",
    "grid_positions",
    "patch_grid",
    "patch_corners",
    "overlap_count",
    "blend_window",
    "overlap_weight",
    "BLENDS",
    "gather_patches",
    "smoothed_eps",
    "restore",
    "restore_patch_loop",
    "patches_per_batch",
    "pad_to_patch",
]

BLENDS = ("uniform", "hann")
"""How the patch estimates are averaged per pixel: the paper's plain mean, or a Hann-windowed mean."""

_HANN_FLOOR = 1e-3

EpsFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``eps_fn(cond_patches, x_t_patches, t) -> eps_patches``, all ``[N, C, p, p]``; ``t`` a Python int."""


class PatchGrid(NamedTuple):
    """Top-left corners of the patches: every ``(top, left)`` in ``tops x lefts`` (row-major)."""

    height: int
    width: int
    patch: int
    stride: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.tops) * len(self.lefts)


def grid_positions(size: int, patch: int, stride: int) -> tuple[int, ...]:
    """Patch starts along one axis: ``0, r, 2r, ... <= size - p`` plus ``size - p`` if not yet there."""
    positive_int("size", size)
    positive_int("patch", patch)
    positive_int("stride", stride)
    if size < patch:
        raise ValueError(f"size ({size}) must be >= patch ({patch}); pad the image first (pad_to_patch)")
    if stride > patch:
        raise ValueError(
            f"stride must be in [1, patch = {patch}] so that patches cover the image, got {stride}"
        )
    last = size - patch
    pos = list(range(0, last + 1, stride))
    if pos[-1] != last:
        pos.append(last)
    return tuple(pos)


def patch_grid(height: int, width: int, patch: int, stride: int) -> PatchGrid:
    """The overlapping grid over an ``height x width`` image (both >= ``patch``)."""
    return PatchGrid(
        height,
        width,
        patch,
        stride,
        grid_positions(height, patch, stride),
        grid_positions(width, patch, stride),
    )


def patch_corners(grid: PatchGrid) -> torch.Tensor:
    """``[N, 2]`` long tensor of ``(top, left)``, row-major over the grid."""
    tops = torch.tensor(grid.tops, dtype=torch.long)
    lefts = torch.tensor(grid.lefts, dtype=torch.long)
    return torch.cartesian_prod(tops, lefts).view(-1, 2)


def _flat_index(grid: PatchGrid, corners: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[K, p, p]`` indices into the flattened ``H * W`` image of the pixels of each patch."""
    ar = torch.arange(grid.patch, device=device)
    corners = corners.to(device)
    rows = corners[:, 0, None, None] + ar[None, :, None]
    cols = corners[:, 1, None, None] + ar[None, None, :]
    return rows * grid.width + cols


def _axis_count(size: int, patch: int, starts: tuple[int, ...], device) -> torch.Tensor:
    """``m[i]``: how many of the windows ``[s, s + patch)`` (``s`` in ``starts``) hold index ``i``."""
    diff = torch.zeros(size + 1, device=device)
    starts_t = torch.tensor(starts, dtype=torch.long, device=device)
    diff.index_add_(0, starts_t, torch.ones(len(starts), device=device))
    diff.index_add_(0, starts_t + patch, -torch.ones(len(starts), device=device))
    return diff.cumsum(0)[:size]


def overlap_count(grid: PatchGrid, device: torch.device | str = "cpu") -> torch.Tensor:
    """``M[H, W]``: how many patches cover each pixel (>= 1 everywhere by construction).

    The grid is the product ``tops x lefts``, so ``M(i, j) = m_rows(i) * m_cols(j)``: two 1-D counts
    instead of one index per patch pixel (which would take gigabytes at 4096 x 4096 with small strides)."""
    rows = _axis_count(grid.height, grid.patch, grid.tops, device)
    cols = _axis_count(grid.width, grid.patch, grid.lefts, device)
    return rows[:, None] * cols[None, :]


def blend_window(
    patch: int, blend: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor | None:
    """The 1-D weight ``w[p]`` of ``blend`` along one patch axis (the 2-D window is ``w w^T``); None for
    "uniform" (every estimate weighs 1: the plain mean, computed without multiplications)."""
    positive_int("patch", patch)
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if blend == "uniform":
        return None
    i = torch.arange(patch, dtype=torch.float64)
    return (_HANN_FLOOR + torch.sin(torch.pi * (i + 0.5) / patch) ** 2).to(device=device, dtype=dtype)


def _axis_weight(size: int, starts: tuple[int, ...], w: torch.Tensor) -> torch.Tensor:
    """``s[i] = sum over windows starting at s of w[i - s]`` (the window's weight summed along one axis)."""
    p = w.shape[0]
    idx = torch.tensor(starts, dtype=torch.long, device=w.device)[:, None] + torch.arange(p, device=w.device)
    out = torch.zeros(size, device=w.device, dtype=w.dtype)
    out.index_add_(0, idx.reshape(-1), w.repeat(len(starts)))
    return out


def overlap_weight(
    grid: PatchGrid,
    blend: str = "uniform",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``M[H, W]``: the summed window weight of the patches covering each pixel (> 0 everywhere); for
    "uniform" the number of patches (:func:`overlap_count`). Separable like the grid and the window."""
    w = blend_window(grid.patch, blend, device, dtype)
    if w is None:
        return overlap_count(grid, device)
    rows = _axis_weight(grid.height, grid.tops, w)
    cols = _axis_weight(grid.width, grid.lefts, w)
    return rows[:, None] * cols[None, :]


def gather_patches(x: torch.Tensor, grid: PatchGrid, corners: torch.Tensor) -> torch.Tensor:
    """Crop the patches at ``corners`` ``[K, 2]`` from ``x`` ``[B, C, H, W]`` -> ``[B * K, C, p, p]``
    (image-major: the K patches of image 0 first)."""
    b, c = x.shape[:2]
    idx = _flat_index(grid, corners, x.device)
    out = x.reshape(b, c, -1)[:, :, idx]  # [B, C, K, p, p]
    return out.permute(0, 2, 1, 3, 4).reshape(-1, c, grid.patch, grid.patch)


def _scatter_add(acc: torch.Tensor, patches: torch.Tensor, grid: PatchGrid, corners: torch.Tensor) -> None:
    """``acc[B, C, H*W] += P^T patches`` for the patches at ``corners`` (gather's inverse; overlaps add)."""
    b, c = acc.shape[:2]
    k = corners.shape[0]
    idx = _flat_index(grid, corners, acc.device).reshape(-1)
    src = patches.reshape(b, k, c, -1).permute(0, 2, 1, 3).reshape(b, c, -1)
    acc.index_add_(2, idx, src.to(acc.dtype))


def smoothed_eps(
    eps_fn: EpsFn,
    cond: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    grid: PatchGrid,
    *,
    batch_patches: int = 64,
    count: torch.Tensor | None = None,
    blend: str = "uniform",
) -> torch.Tensor:
    """``eps_hat = (1/M) sum_d P_d^T eps_fn(P_d cond, P_d x_t, t)`` over every patch of ``grid``
    (``blend="hann"``: each estimate times the window, M the summed window; see the module docstring).

    ``cond`` and ``x_t`` are ``[B, C, H, W]``; the network sees at most ``batch_patches`` patches per
    call (``batch_patches // B`` patch positions of all B images, at least one position). ``count``:
    :func:`overlap_weight` of the grid and blend, if already computed."""
    positive_int("batch_patches", batch_patches)
    b, c, h, w = x_t.shape
    if (h, w) != (grid.height, grid.width):
        raise ValueError(f"x_t is {h}x{w} but the grid was made for {grid.height}x{grid.width}")
    w1 = blend_window(grid.patch, blend, x_t.device, x_t.dtype)
    if count is None:
        count = overlap_weight(grid, blend, x_t.device, x_t.dtype)
    window = None if w1 is None else w1[:, None] * w1[None, :]
    corners = patch_corners(grid)
    per_call = max(1, batch_patches // b)
    acc = torch.zeros(b, c, h * w, device=x_t.device, dtype=x_t.dtype)
    for start in range(0, corners.shape[0], per_call):
        chunk = corners[start : start + per_call]
        eps = eps_fn(gather_patches(cond, grid, chunk), gather_patches(x_t, grid, chunk), t)
        _scatter_add(acc, eps if window is None else eps * window, grid, chunk)
    return (acc.view(b, c, h, w) / count).to(x_t.dtype)


def pad_to_patch(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, int, int]:
    """Pad ``x`` ``[B, C, H, W]`` at the bottom/right by edge replication so that H, W >= ``patch``;
    returns the padded tensor and the original H, W (to crop the result)."""
    h, w = x.shape[-2:]
    ph, pw = max(0, patch - h), max(0, patch - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


def _check_inputs(cond: torch.Tensor, patch: int, stride: int, steps: int, generator) -> None:
    gens = generator if isinstance(generator, list | tuple) else [generator]
    if not isinstance(cond, torch.Tensor) or cond.dim() != 4 or cond.numel() == 0:
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"cond must be a non-empty [B, C, H, W] tensor in [-1, 1], got {shape}")
    if not cond.is_floating_point():
        raise ValueError(f"cond must be a floating-point tensor, got {cond.dtype}")
    finite_tensor("cond", cond)
    positive_int("patch", patch)
    positive_int("stride", stride)
    positive_int("steps", steps)
    if stride > patch:
        raise ValueError(f"stride must be in [1, patch = {patch}], got {stride}")
    if not gens or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(
            "generator must be a torch.Generator or a list of one per image (the draw of x_T), "
            f"got {generator!r}"
        )
    if isinstance(generator, list | tuple) and len(gens) != cond.shape[0]:
        raise ValueError(f"generator: got a list of {len(gens)} generators for {cond.shape[0]} images")


def _initial_noise(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """x_T ~ N(0, I), drawn on the CPU (the same x_T on every device); one draw for the batch, or one per
    image with a list of generators (then an image's x_T does not depend on the batch it is in)."""
    if isinstance(generator, list | tuple):
        noise = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generator])
    else:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def restore(
    eps_fn: EpsFn,
    cond: torch.Tensor,
    *,
    patch: int,
    stride: int,
    steps: int,
    generator: torch.Generator | list[torch.Generator],
    sampler: str = "ddim",
    batch_patches: int = 64,
    progress: Callable[[int, int], None] | None = None,
    blend: str = "uniform",
) -> torch.Tensor:
    """Restore ``cond`` ``[B, C, H, W]`` (degraded images in [-1, 1], any H, W >= 1) with the overlapping
    patch sampler; returns the restored images in [-1, 1] (clamped), same shape.

    ``steps`` sampler steps of ``sampler`` ("ddim": deterministic DDIM, eta = 0; "dpm": DPM-Solver++ 2M),
    patches ``patch`` x ``patch`` at stride ``stride`` (<= patch), at most ``batch_patches`` patches per
    network call; ``progress(done, total)`` is called after every step. x_T is drawn from ``generator``
    (CPU) at the padded size, or image by image from a list of generators (one per image). ``blend``:
    "uniform" (the paper's mean) or "hann" (windowed mean; fewer seams at small strides)."""
    _check_inputs(cond, patch, stride, steps, generator)
    positive_int("batch_patches", batch_patches)
    blend_window(patch, blend)  # validates blend before any work
    sched = make_scheduler(sampler, steps)
    cond_p, h, w = pad_to_patch(cond, patch)
    grid = patch_grid(cond_p.shape[-2], cond_p.shape[-1], patch, stride)
    count = overlap_weight(grid, blend, cond.device, cond.dtype)
    x = _initial_noise(cond_p.shape, generator, cond_p)
    total = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        eps = smoothed_eps(
            eps_fn, cond_p, x, int(t), grid, batch_patches=batch_patches, count=count, blend=blend
        )
        x = sched.step(eps, t, x).prev_sample
        if progress is not None:
            progress(i + 1, total)
    return x[..., :h, :w].clamp(-1.0, 1.0)


def restore_patch_loop(
    eps_fn: EpsFn,
    cond: torch.Tensor,
    *,
    patch: int,
    stride: int,
    steps: int,
    generator: torch.Generator | list[torch.Generator],
    sampler: str = "ddim",
    progress: Callable[[int, int], None] | None = None,
    blend: str = "uniform",
) -> torch.Tensor:
    """The official algorithm as written there: per step, a Python loop over the patch corners runs the
    network on one patch (of every image in the batch) at a time and adds the result into a full-size
    map, then divides by the overlap count. Same inputs, noise draw and output as :func:`restore`; kept as
    the reference for tests and the speed benchmark."""
    _check_inputs(cond, patch, stride, steps, generator)
    w1 = blend_window(patch, blend, cond.device, cond.dtype)
    weight = 1.0 if w1 is None else w1[:, None] * w1[None, :]
    sched = make_scheduler(sampler, steps)
    cond_p, h, w = pad_to_patch(cond, patch)
    grid = patch_grid(cond_p.shape[-2], cond_p.shape[-1], patch, stride)
    x = _initial_noise(cond_p.shape, generator, cond_p)
    count = torch.zeros_like(x[:1, :1])
    for top in grid.tops:
        for left in grid.lefts:
            count[..., top : top + patch, left : left + patch] += weight
    total = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        acc = torch.zeros_like(x)
        for top in grid.tops:
            for left in grid.lefts:
                window = (..., slice(top, top + patch), slice(left, left + patch))
                eps = eps_fn(cond_p[window], x[window], int(t)).to(acc.dtype)
                acc[window] += eps if w1 is None else eps * weight
        x = sched.step(acc / count, t, x).prev_sample
        if progress is not None:
            progress(i + 1, total)
    return x[..., :h, :w].clamp(-1.0, 1.0)


def patches_per_batch(bytes_per_patch: int, budget_bytes: int) -> int:
    """How many patches fit in ``budget_bytes`` of activations at ``bytes_per_patch`` each (>= 1)."""
    positive_int("bytes_per_patch", bytes_per_patch)
    positive_int("budget_bytes", budget_bytes)
    return max(1, budget_bytes // bytes_per_patch)
