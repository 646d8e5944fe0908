"""Image-quality metrics as WeatherDiff reports them: PSNR and SSIM on the Y channel (ITU-R BT.601).

Özdenizci & Legenstein, TPAMI 2023 (arXiv:2207.14626); official ``calculate_psnr_ssim.py`` and
``utils/metrics.py``, which use SwinIR's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True`` on 8-bit images read from disk.

- Y (BT.601, studio range, 8-bit scale): ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for R, G, B in
  [0, 1] (Y in [16, 235]). Grey images are used as they are (scaled to [0, 255]).
- ``PSNR = 20 log10(255 / sqrt(mean((Y1 - Y2)^2)))`` (inf for identical images).
- SSIM (Wang et al. 2004): 11 x 11 Gaussian window, sigma 1.5, ``C1 = (0.01 * 255)^2``,
  ``C2 = (0.03 * 255)^2``, local statistics over the valid region only (SwinIR crops 5 pixels after
  filtering), SSIM map averaged.

By default images are first rounded to 8 bits (``quantize=True``), as the paper measures the saved PNGs.
Computed in float64 (SwinIR keeps Y as float32 in between: differences are below 1e-4 dB).

:func:`seam_score` measures grid artefacts: the mean absolute Y gradient across patch edges divided by
the mean absolute gradient everywhere else, relative to the ground truth's (1 = no seam); with
``shift`` the same statistic at positions between the edges serves as the control.
"""

from __future__ import annotations

import math

import numpy as np

from .sampler import PatchGrid

__all__ = ["rgb_to_y", "psnr_y", "ssim_y", "seam_score", "gaussian_window"]

_Y_COEFFS = np.array([65.481, 128.553, 24.966])


def _as_image(x, name: str, quantize: bool) -> np.ndarray:
    """``x``: ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` in [0, 1] (array or tensor) -> float64 in [0, 1]."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"{name} must be [H, W] (grey) or [H, W, 3] (RGB) in [0, 1], got shape {arr.shape}")
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be non-empty and finite")
    arr = np.clip(arr, 0.0, 1.0)
    if quantize:
        arr = np.round(arr * 255.0) / 255.0
    return arr


def rgb_to_y(img) -> np.ndarray:
    """BT.601 luma on the 8-bit scale: ``16 + [65.481, 128.553, 24.966] . RGB`` (grey -> 255 * value)."""
    arr = _as_image(img, "img", quantize=False)
    if arr.ndim == 2:
        return arr * 255.0
    return arr @ _Y_COEFFS + 16.0


def _pair(a, b, quantize: bool) -> tuple[np.ndarray, np.ndarray]:
    ya = _as_image(a, "a", quantize)
    yb = _as_image(b, "b", quantize)
    if ya.shape != yb.shape:
        raise ValueError(f"images must have the same shape, got {ya.shape} and {yb.shape}")
    return rgb_to_y(ya), rgb_to_y(yb)


def psnr_y(a, b, *, quantize: bool = True) -> float:
    """PSNR in dB between the Y channels of ``a`` and ``b`` (``[H, W(, 3)]`` in [0, 1]); inf if equal."""
    ya, yb = _pair(a, b, quantize)
    mse = float(np.mean((ya - yb) ** 2))
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(255.0 / math.sqrt(mse))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 2-D Gaussian (outer product of OpenCV's ``getGaussianKernel(size, sigma)``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def _filter_valid(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    from scipy.signal import correlate2d

    return correlate2d(img, window, mode="valid")


def ssim_y(a, b, *, quantize: bool = True) -> float:
    """SSIM between the Y channels (Gaussian 11 x 11, sigma 1.5, valid region); images >= 11 x 11."""
    ya, yb = _pair(a, b, quantize)
    if min(ya.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11 x 11 pixels, got {ya.shape[0]} x {ya.shape[1]}")
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    w = gaussian_window()
    mu1, mu2 = _filter_valid(ya, w), _filter_valid(yb, w)
    s11 = _filter_valid(ya * ya, w) - mu1 * mu1
    s22 = _filter_valid(yb * yb, w) - mu2 * mu2
    s12 = _filter_valid(ya * yb, w) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def _edges(positions: tuple[int, ...], patch: int, size: int, shift: int) -> list[int]:
    """Indices i of the differences ``Y[i + 1] - Y[i]`` that cross a patch edge (a patch's first row or
    the row after its last), moved by ``shift`` pixels; those outside the image are dropped."""
    edges = {p - 1 for p in positions if p > 0} | {p + patch - 1 for p in positions if p + patch < size}
    return sorted(e + shift for e in edges if 0 <= e + shift < size - 1)


def _edge_ratio(y: np.ndarray, rows: list[int], cols: list[int]) -> float:
    dy = np.abs(np.diff(y, axis=0))  # [H-1, W]
    dx = np.abs(np.diff(y, axis=1))  # [H, W-1]
    on_r = np.zeros(dy.shape[0], dtype=bool)
    on_c = np.zeros(dx.shape[1], dtype=bool)
    on_r[rows] = True
    on_c[cols] = True
    on = np.concatenate([dy[on_r].ravel(), dx[:, on_c].ravel()])
    off = np.concatenate([dy[~on_r].ravel(), dx[:, ~on_c].ravel()])
    if on.size == 0 or off.size == 0:
        return math.nan
    return float(on.mean() / max(off.mean(), 1e-12))


def seam_score(img, grid: PatchGrid, *, clean=None, shift: int = 0) -> float:
    """Grid seams: the mean ``|Y[i+1] - Y[i]|`` across the patch edges of ``grid`` (rows and columns)
    divided by the mean over all other neighbouring pixel pairs. With ``clean`` (the ground truth), that
    ratio is divided by the clean image's at the same positions, so image content cancels: 1 = the edges
    look as in the ground truth, > 1 = visible seams. ``shift`` moves every edge by that many pixels (a
    control: positions between edges). NaN when there is no edge (a single patch).

    Computed on the unquantised image; images must have the grid's height and width."""
    y = rgb_to_y(img)
    h, w = y.shape
    if (h, w) != (grid.height, grid.width):
        raise ValueError(f"img is {h} x {w} but the grid was made for {grid.height} x {grid.width}")
    rows = _edges(grid.tops, grid.patch, h, shift)
    cols = _edges(grid.lefts, grid.patch, w, shift)
    ratio = _edge_ratio(y, rows, cols)
    if clean is None:
        return ratio
    yc = rgb_to_y(clean)
    if yc.shape != y.shape:
        raise ValueError(f"clean must have the image's shape {y.shape}, got {yc.shape}")
    return ratio / _edge_ratio(yc, rows, cols)
