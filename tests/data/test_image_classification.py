"""Image-classification loaders of robust-conversion: CIFAR binary records and SVHN .mat files written
here by hand, the MNIST / Fashion-MNIST paths, and clear errors for missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuromorph.data.image_classification import FASHION_MNIST_DIR, dataset_shape, load_images


def _cifar_records(labels, label_bytes: int, seed: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    head = np.zeros((len(labels), label_bytes), dtype=np.uint8)
    head[:, -1] = labels
    if label_bytes == 2:
        head[:, 0] = 99  # coarse label, ignored
    return np.concatenate([head, pixels], 1).tobytes(), pixels.reshape(-1, 3, 32, 32)


def test_cifar10_binary_batches_are_read_in_order(tmp_path: Path):
    base = tmp_path / "cifar-10-batches-bin"
    base.mkdir()
    expected = []
    for i in range(1, 6):
        raw, pix = _cifar_records([i, 9 - i], 1, i)
        (base / f"data_batch_{i}.bin").write_bytes(raw)
        expected.append(pix)
    raw, test_pix = _cifar_records([3], 1, 9)
    (base / "test_batch.bin").write_bytes(raw)
    x, y = load_images("cifar10", tmp_path, "train")
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8
    assert y.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    np.testing.assert_array_equal(x, np.concatenate(expected))
    xt, yt = load_images("cifar10", base, "test")  # the subdirectory itself works too
    np.testing.assert_array_equal(xt, test_pix)
    assert yt.tolist() == [3]


def test_cifar100_uses_the_fine_label(tmp_path: Path):
    for split in ("train", "test"):
        raw, _ = _cifar_records([42, 7], 2, 0)
        (tmp_path / f"{split}.bin").write_bytes(raw)
    x, y = load_images("cifar100", tmp_path, "train")
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [42, 7]
    assert dataset_shape("cifar100") == (3, 32, 32, 100)


def test_svhn_mat_is_transposed_and_label_10_is_zero(tmp_path: Path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [5], [10]], dtype=np.uint8)})
    images, labels = load_images("svhn", tmp_path, "test")
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 1, 5, 0]
    np.testing.assert_array_equal(images[2, 1], x[:, :, 1, 2])


def test_mnist_subset_and_fashion_mnist():
    x, y = load_images("mnist", None, "test")
    assert x.shape == (1000, 1, 28, 28) and y.shape == (1000,)
    if Path(FASHION_MNIST_DIR).is_dir():
        xf, yf = load_images("fashion-mnist", None, "test")
        assert xf.shape == (10000, 1, 28, 28) and set(np.unique(yf)) == set(range(10))


def test_missing_files_and_bad_names_are_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="needs data.root"):
        load_images("cifar10", None)
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin.*binary version"):
        load_images("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_images("svhn", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_images("cifar100", tmp_path / "nope")
    (tmp_path / "train.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a multiple"):
        load_images("cifar100", tmp_path)
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_images("imagenet", tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_images("mnist", None, "val")
