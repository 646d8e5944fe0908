"""Sequential-digit inputs: spiking sequential MNIST (LSNN tutorial) and MNIST-1D sequences.

``smnist_spikes`` re-implements the threshold-crossing encoding of ``get_data_dict`` and
``find_onset_offset`` in ``bin/tutorial_sequential_mnist_with_LSNN.py`` (IGITUGraz/LSNN-official, flag
``crs_thr=True``); ``smnist_readout_window`` is the time window of that script's class readout.
``mnist1d_sequences`` wraps the procedural MNIST-1D generator (Greydanus 2020, package ``mnist1d``).
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import torch

__all__ = ["smnist_spikes", "smnist_n_steps", "smnist_readout_window", "mnist1d_sequences", "SMNIST_PIXELS"]

SMNIST_PIXELS = 784
_READOUT_BIN = 28  # official: T = 840 * ext_time steps split into (28 + 2) * ext_time bins -> 28 steps each


def _pos_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _cue_steps(cue_ms: float, dt: float) -> int:
    for name, v, allow_zero in (("cue_ms", cue_ms, True), ("dt", dt, False)):
        ok = (
            isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, bool)
            and math.isfinite(v)
        )
        if not ok or v < 0 or (v == 0 and not allow_zero):
            allowed = "a finite number >= 0" if allow_zero else "a positive finite number"
            raise ValueError(f"{name} must be {allowed}, got {v!r}")
    ratio = cue_ms / dt
    steps = round(ratio)
    if abs(ratio - steps) > 1e-9 * max(1.0, ratio):
        raise ValueError(f"cue_ms/dt must be a whole number of steps, got cue_ms={cue_ms!r}, dt={dt!r}")
    return steps


def smnist_n_steps(ext_time: int = 1, *, cue_ms: float = 56, dt: float = 1.0) -> int:
    """Number of time steps of the sMNIST input: ``(784 + cue_ms / dt) * ext_time``."""
    ext_time = _pos_int("ext_time", ext_time)
    return (SMNIST_PIXELS + _cue_steps(cue_ms, dt)) * ext_time


def smnist_spikes(
    images: torch.Tensor, *, n_thresholds: int = 40, ext_time: int = 1, cue_ms: float = 56, dt: float = 1.0
) -> torch.Tensor:
    """Threshold-crossing spike encoding of sequential MNIST, as in LSNN-official
    ``bin/tutorial_sequential_mnist_with_LSNN.py`` (``get_data_dict`` with ``crs_thr``,
    ``find_onset_offset``).

    The 784 pixels (row-major, in [0, 1]; uint8 input is divided by 255 like TensorFlow's MNIST reader)
    are presented one per time step, each repeated ``ext_time`` times (``np.repeat``), giving a signal
    ``y`` of length ``L = 784 * ext_time``. Thresholds ``np.linspace(0, 1, n_thresholds)``; for every
    threshold ``th < 1``, with ``lower = y < th`` and ``higher = y >= th``:

    - onset channel: spike at step ``t`` (``0 <= t < L - 1``) if ``lower[t] and higher[t + 1]``, i.e. on the
      step *before* the upward crossing;
    - offset channel: spike at ``t`` if ``higher[t] and lower[t + 1]``;

    (so the threshold 0 channels never fire), and for the threshold 1 a single "touch" channel that
    fires at every step with ``y == 1``. Channel order: ``[on(th0), off(th0), on(th1), off(th1), ...,
    touch]`` = ``2 * n_thresholds - 1`` channels (79). Then ``cue_ms / dt * ext_time`` cue steps (official
    ``2 * 28 * ext_time``) are appended, during which the input channels are silent and one extra last
    cue channel fires at every step.

    ``images``: [B, 28, 28] or [B, 784], uint8 (0..255) or float in [0, 1]. Returns float32 spikes
    [T, B, 2 * n_thresholds] (80 by default), ``T = (784 + cue_ms / dt) * ext_time``, on the images' device.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not (images.dim() == 3 and tuple(images.shape[1:]) == (28, 28)) and not (
        images.dim() == 2 and images.shape[1] == SMNIST_PIXELS
    ):
        raise ValueError(f"images must have shape [B, 28, 28] or [B, 784], got {tuple(images.shape)}")
    n_thresholds = _pos_int("n_thresholds", n_thresholds)
    if n_thresholds < 2:
        raise ValueError(f"n_thresholds must be an int >= 2, got {n_thresholds}")
    ext_time = _pos_int("ext_time", ext_time)
    cue = _cue_steps(cue_ms, dt) * ext_time

    x = images.reshape(images.shape[0], SMNIST_PIXELS)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) * (1.0 / 255.0)
    elif x.is_floating_point():
        x = x.to(torch.float32)
        if x.numel() and not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise ValueError(
                f"float images must be in [0, 1], got range [{float(x.min())}, {float(x.max())}]"
            )
    else:
        raise ValueError(
            f"images must be uint8 (0..255) or floating point in [0, 1], got dtype {images.dtype}"
        )
    if ext_time > 1:
        x = torch.repeat_interleave(x, ext_time, dim=1)

    b, length = x.shape
    n_ch = 2 * n_thresholds
    out = torch.zeros(length + cue, b, n_ch, dtype=torch.float32, device=x.device)
    thr = torch.tensor(np.linspace(0.0, 1.0, n_thresholds)[:-1], dtype=torch.float32, device=x.device)
    y = x.t()  # [L, B]
    lower = y[:, :, None] < thr  # [L, B, K-1]
    onset = lower[:-1] & ~lower[1:]
    offset = ~lower[:-1] & lower[1:]
    out[: length - 1, :, 0 : n_ch - 2 : 2] = onset.to(torch.float32)
    out[: length - 1, :, 1 : n_ch - 2 : 2] = offset.to(torch.float32)
    out[:length, :, n_ch - 2] = (y == 1.0).to(torch.float32)
    out[length:, :, n_ch - 1] = 1.0
    return out


def smnist_readout_window(ext_time: int = 1, *, cue_ms: float = 56, dt: float = 1.0) -> slice:
    """Time steps (a slice of T) whose readout is averaged for the sMNIST class decision.

    LSNN-official (``bin/tutorial_sequential_mnist_with_LSNN.py``): ``tf_downsample(out, new_size=(28 + 2) *
    ext_time, axis=1)[:, -1]``, i.e. the mean of the last of ``30 * ext_time`` equal bins of the
    ``840 * ext_time`` steps = the final 28 steps, for every ``ext_time`` (they lie in the cue period).
    Returns ``slice(T - 28, T)`` with ``T = smnist_n_steps(ext_time, cue_ms=cue_ms, dt=dt)``.
    """
    t = smnist_n_steps(ext_time, cue_ms=cue_ms, dt=dt)
    return slice(t - _READOUT_BIN, t)


@functools.lru_cache(maxsize=4)
def _mnist1d_dataset(seed: int) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    # make_dataset seeds the global `random` and `np.random` generators: restore them afterwards
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def mnist1d_sequences(split: str = "train", seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-1D (Greydanus 2020, package ``mnist1d``) as time-major sequences.

    Generated procedurally and offline by ``mnist1d.data.make_dataset(get_dataset_args())`` (never the
    downloading ``get_dataset``), cached per process. ``seed`` is the generator seed; the default 42 is
    mnist1d's own and gives exactly the published ``mnist1d_data.pkl``. Splits: ``"train"`` 4,000,
    ``"test"`` 1,000 sequences of 40 steps. Returns x float32 [40, N, 1] and y int64 [N].
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be one of ['train', 'test'], got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    data = _mnist1d_dataset(int(seed))
    x, y = (data["x"], data["y"]) if split == "train" else (data["x_test"], data["y_test"])
    xs = torch.tensor(x, dtype=torch.float32).t().unsqueeze(-1).contiguous()
    return xs, torch.tensor(y, dtype=torch.int64)
