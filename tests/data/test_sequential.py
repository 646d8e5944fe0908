"""Tests of neuromorph.data.sequential: sMNIST threshold-crossing spikes and MNIST-1D sequences."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.data import (
    load_mnist,
    mnist1d_sequences,
    smnist_n_steps,
    smnist_readout_window,
    smnist_spikes,
)


# ---------------------------------------------------------------- literal reference (official semantics)
def official_onset_offset(y: np.ndarray, threshold: float) -> np.ndarray:
    """find_onset_offset of bin/tutorial_sequential_mnist_with_LSNN.py, written out plainly."""
    if threshold == 1:
        return (y == threshold).astype(y.dtype)[None]
    on, off = np.zeros_like(y), np.zeros_like(y)
    for t in range(len(y) - 1):
        if y[t] < threshold and y[t + 1] >= threshold:
            on[t] = 1
        if y[t] >= threshold and y[t + 1] < threshold:
            off[t] = 1
    return np.stack([on, off])


def official_spikes(pixels: np.ndarray, n_in: int = 80, ext_time: int = 1) -> np.ndarray:
    """get_data_dict (crs_thr=True): [B, 784] floats in [0, 1] -> [B, T, n_in]."""
    pixels = np.repeat(pixels, ext_time, axis=1)
    stack = []
    for img in pixels:
        s = np.concatenate([official_onset_offset(img, th) for th in np.linspace(0, 1, n_in // 2)])
        stack.append(s.T)
    stack = np.array(stack)
    cue = 2 * 28 * ext_time
    stack = np.pad(stack, ((0, 0), (0, cue), (0, 1)))
    stack[:, -cue:, -1] = 1
    return stack


# ---------------------------------------------------------------- hand-checkable cases
def test_hand_case_three_thresholds():
    img = torch.zeros(1, 784)
    img[0, 10], img[0, 11] = 1.0, 0.5  # 0 -> 1 -> 0.5 -> 0 at pixels 9..12
    s = smnist_spikes(img, n_thresholds=3)  # thresholds 0, 0.5, 1
    # channels: on(0), off(0), on(0.5), off(0.5), touch(1), cue
    assert s.shape == (784 + 56, 1, 6) and s.dtype == torch.float32
    assert torch.nonzero(s[:784, 0, :2]).numel() == 0  # threshold 0 never fires
    assert torch.nonzero(s[:, 0, 2]).flatten().tolist() == [9]  # step *before* the upward crossing
    assert torch.nonzero(s[:, 0, 3]).flatten().tolist() == [11]  # 0.5 counts as "higher": offset at 11
    assert torch.nonzero(s[:, 0, 4]).flatten().tolist() == [10]  # touch: pixel == 1
    assert s[784:, 0, :5].sum() == 0 and torch.all(s[784:, 0, 5] == 1) and s[:784, 0, 5].sum() == 0


def test_hand_case_ext_time_2():
    img = torch.zeros(1, 28, 28)
    img[0, 0, 10], img[0, 0, 11] = 1.0, 0.5
    s = smnist_spikes(img, n_thresholds=3, ext_time=2)
    assert s.shape == ((784 + 56) * 2, 1, 6)
    assert torch.nonzero(s[:, 0, 2]).flatten().tolist() == [19]
    assert torch.nonzero(s[:, 0, 3]).flatten().tolist() == [23]
    assert torch.nonzero(s[:, 0, 4]).flatten().tolist() == [20, 21]
    assert torch.nonzero(s[:, 0, 5]).flatten().tolist() == list(range(1568, 1680))


def test_last_pixel_and_first_pixel_conventions():
    img = torch.zeros(1, 784)
    img[0, 0] = 1.0  # starts high: no onset at the start, offset at step 0
    img[0, 783] = 1.0  # rises on the last pixel: onset at 782, touch at 783
    s = smnist_spikes(img, n_thresholds=2)  # thresholds 0, 1: channels on(0), off(0), touch, cue
    assert s.shape[2] == 4
    assert torch.nonzero(s[:, 0, 2]).flatten().tolist() == [0, 783]
    assert s[:, 0, :2].sum() == 0


def test_defaults_match_official_on_mnist_images():
    x, _ = load_mnist(split="test")
    imgs = torch.from_numpy(x[:6])
    pixels = (x[:6].reshape(6, 784).astype(np.float32) * np.float32(1 / 255)).astype(np.float32)
    for ext in (1, 2):
        ours = smnist_spikes(imgs, ext_time=ext)
        ref = official_spikes(pixels, ext_time=ext)
        assert ours.shape == (840 * ext, 6, 80)
        assert np.array_equal(ours.permute(1, 0, 2).numpy(), ref.astype(np.float32))
    # uint8 input == float input in [0, 1]; [B, 28, 28] == [B, 784]
    assert torch.equal(smnist_spikes(imgs), smnist_spikes(torch.from_numpy(pixels)))
    assert torch.equal(smnist_spikes(imgs), smnist_spikes(imgs.reshape(6, 784)))


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=784, max_size=784), st.integers(2, 8))
def test_random_pixels_match_official(pix, n_thresholds):
    img = np.array(pix, dtype=np.uint8)[None]
    ours = smnist_spikes(torch.from_numpy(img), n_thresholds=n_thresholds).permute(1, 0, 2).numpy()
    ref = official_spikes((img.astype(np.float32) * np.float32(1 / 255)), n_in=2 * n_thresholds)
    assert np.array_equal(ours, ref.astype(np.float32))


def test_cue_and_steps():
    s = smnist_spikes(torch.zeros(2, 784), cue_ms=28, dt=0.5)
    assert s.shape == (784 + 56, 2, 80) == (smnist_n_steps(cue_ms=28, dt=0.5), 2, 80)
    assert smnist_n_steps() == 840 and smnist_n_steps(2) == 1680


def test_readout_window_is_last_of_30_bins():
    assert smnist_readout_window() == slice(812, 840)
    assert smnist_readout_window(2) == slice(1652, 1680)
    for ext in (1, 2, 3):
        t = smnist_n_steps(ext)
        bins = torch.arange(t).reshape(30 * ext, -1)  # tf_downsample(out, (28 + 2) * ext_time)
        assert bins[-1].tolist() == list(range(t))[smnist_readout_window(ext)]


@pytest.mark.parametrize(
    ("images", "kwargs", "pattern"),
    [
        (
            torch.zeros(2, 28, 27),
            {},
            r"images must have shape \[B, 28, 28\] or \[B, 784\], got \(2, 28, 27\)",
        ),
        (torch.zeros(2, 784, dtype=torch.int32), {}, r"images must be uint8 .* got dtype torch.int32"),
        (torch.full((1, 784), 1.5), {}, r"float images must be in \[0, 1\]"),
        (torch.zeros(1, 784), {"n_thresholds": 1}, r"n_thresholds must be an int >= 2, got 1"),
        (torch.zeros(1, 784), {"ext_time": 0}, r"ext_time must be a positive int, got 0"),
        (torch.zeros(1, 784), {"cue_ms": 56, "dt": 5.0}, r"cue_ms/dt must be a whole number"),
        (np.zeros((1, 784)), {}, r"images must be a torch.Tensor"),
    ],
)
def test_smnist_bad_arguments(images, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        smnist_spikes(images, **kwargs)


# ---------------------------------------------------------------- MNIST-1D
@pytest.fixture
def small_mnist1d(monkeypatch):
    """mnist1d with 500 instead of 5,000 samples, so the default test run stays fast."""
    import mnist1d.data

    from neuromorph.data import sequential

    real_args = mnist1d.data.get_dataset_args

    def small_args(as_dict=False):
        args = real_args(as_dict=False)
        args.num_samples = 500
        return args

    monkeypatch.setattr(mnist1d.data, "get_dataset_args", small_args)
    sequential._mnist1d_dataset.cache_clear()
    yield mnist1d.data
    sequential._mnist1d_dataset.cache_clear()


def test_mnist1d_sequences_layout_and_global_rng(small_mnist1d):
    np.random.seed(123)
    random.seed(5)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    x, y = mnist1d_sequences("train")
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert x.shape == (40, 400, 1) and x.dtype == torch.float32
    assert y.shape == (400,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    ref = small_mnist1d.make_dataset(small_mnist1d.get_dataset_args())
    assert np.allclose(x[:, :, 0].T.numpy(), ref["x"].astype(np.float32)) and np.array_equal(
        y.numpy(), ref["y"]
    )
    xt, yt = mnist1d_sequences("test")
    assert xt.shape == (40, 100, 1) and np.array_equal(yt.numpy(), ref["y_test"])
    x2, _ = mnist1d_sequences("train")
    assert torch.equal(x, x2)
    x2[0] = 99.0
    assert torch.equal(x, mnist1d_sequences("train")[0])
    assert not torch.equal(x, mnist1d_sequences("train", seed=1)[0])


def test_mnist1d_bad_arguments():
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'dev'"):
        mnist1d_sequences("dev")
    with pytest.raises(ValueError, match=r"seed must be a non-negative int, got -1"):
        mnist1d_sequences(seed=-1)


@pytest.mark.slow
def test_mnist1d_full_size():
    x, y = mnist1d_sequences("train")
    xt, yt = mnist1d_sequences("test")
    assert x.shape == (40, 4000, 1) and xt.shape == (40, 1000, 1)
    assert np.bincount(np.concatenate([y.numpy(), yt.numpy()])).tolist() == [500] * 10
    allx = torch.cat([x, xt], 1)  # make_dataset normalises train + test to mean 0, std 1
    assert abs(allx.mean().item()) < 1e-4 and abs(allx.std().item() - 1) < 1e-3
