"""Image pairs (clean, degraded by weather) for WeatherDiff: synthetic ones made offline with
albumentations 2.x from the photographs shipped with scikit-image, scikit-learn and matplotlib, and
loaders for the published datasets in the layout of the official code.

Özdenizci & Legenstein, "Restoring Vision in Adverse Weather Conditions with Patch-Based Denoising
Diffusion Models", TPAMI 2023 (arXiv:2207.14626); dataset layouts of IGITUGraz/WeatherDiffusion
``datasets/{snow100k,outdoorrain,raindrop,allweather}.py``.

Synthetic weather (:func:`add_weather`, one seeded ``albumentations.Compose`` per kind):

- ``snow``: ``RandomSnow`` (bleach: brightened snow cover) + two ``RandomRain`` layers drawn as short,
  wide, blurred white strokes (flakes) and single-pixel specks;
- ``rain``: ``RandomRain`` streaks (12 px, slanted, blurred) with a darkened sky;
- ``fog``: ``RandomFog`` (white haze particles blended in, then a mild blur);
- ``raindrop``: ``Spatter(mode="rain")``, drops on the lens (closest to the RainDrop dataset).

The photographs are reduced (area interpolation) so that their short side is at most ``short_side``
pixels and split once and for all: :data:`TEST_IMAGES` (astronaut, camera, coffee, china) are never
trained on. Grey photographs are replicated to RGB.

Published datasets (never downloaded; point ``root`` at the directory that holds ``data/`` as in the
official configs' ``data_dir``, or at ``data/`` itself):

============  ==========================================  ====================================
dataset       training pairs                              test list (paths relative to its dir)
============  ==========================================  ====================================
snow100k      data/snow100k/train/{input,gt}/NAME          data/snow100k/snowtest100k_L.txt
outdoor-rain  data/outdoor-rain/train/{input,gt}/           data/outdoor-rain/test1.txt
              (gt = first 7 chars of the input + .png;
              im_0301..im_0350 excluded)
raindrop      data/raindrop/train/{input,gt}/ (gt name:    data/raindrop/test/raindroptesta.txt
              "rain" -> "clean")
allweather    data/allweather/allweather.txt               (its test sets are the three above)
============  ==========================================  ====================================

In the list files every line names an input image; its ground truth is the same path with ``input``
replaced by ``gt`` (as the official loaders do).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .images import optional_module, read_image, split_alpha

__all__ = [
    "WEATHER_KINDS",
    "TRAIN_IMAGES",
    "TEST_IMAGES",
    "DATASETS",
    "WeatherPair",
    "PairFiles",
    "natural_images",
    "add_weather",
    "synthetic_pairs",
    "dataset_files",
    "load_pair",
]

WEATHER_KINDS = ("snow", "rain", "fog", "raindrop")
TRAIN_IMAGES = (
    "chelsea", "rocket", "hubble_deep_field", "motorcycle_left", "motorcycle_right", "flower",
    "grace_hopper", "brick", "grass", "gravel", "moon", "coins",
)  # fmt: skip
TEST_IMAGES = ("astronaut", "camera", "coffee", "china")
DATASETS = ("snow100k", "outdoor-rain", "raindrop", "allweather")
_SPLITS = ("train", "test")


class WeatherPair(NamedTuple):
    """One synthetic pair: uint8 ``[H, W, 3]`` ``clean`` and ``degraded`` images, the source photo's
    ``name`` and the weather ``kind``."""

    name: str
    kind: str
    clean: np.ndarray
    degraded: np.ndarray


class PairFiles(NamedTuple):
    """Paths of a published pair: the weather ``input`` and its ground truth ``gt``."""

    input: Path
    gt: Path


# -- photographs shipped with installed packages -----------------------------------------------------


def _photo(name: str) -> np.ndarray:
    """One shipped photograph as uint8 RGB (offline: files inside the installed wheels)."""
    data = optional_module("skimage.data", "scikit-image")
    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        import matplotlib.cbook as cbook

        Image = optional_module("PIL.Image", "Pillow")
        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            return np.asarray(Image.open(fh).convert("RGB"))
    img = getattr(data, name)()
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]


@functools.lru_cache(maxsize=8)
def _natural_images_cached(split: str, short_side: int) -> tuple[tuple[str, np.ndarray], ...]:
    cv2 = optional_module("cv2", "opencv-python-headless")
    out = []
    for name in TRAIN_IMAGES if split == "train" else TEST_IMAGES:
        img = _photo(name)
        h, w = img.shape[:2]
        scale = short_side / min(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        img = np.ascontiguousarray(img, dtype=np.uint8)
        img.setflags(write=False)
        out.append((name, img))
    return tuple(out)


def natural_images(split: str, *, short_side: int = 256) -> dict[str, np.ndarray]:
    """The shipped photographs of ``split`` ("train": :data:`TRAIN_IMAGES`, "test": :data:`TEST_IMAGES`)
    as read-only uint8 RGB arrays, reduced so that the short side is at most ``short_side``."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 16:
        raise ValueError(f"short_side must be an int >= 16, got {short_side!r}")
    return dict(_natural_images_cached(split, short_side))


# -- synthetic weather -------------------------------------------------------------------------------


def _weather_transform(kind: str):
    A = optional_module("albumentations", "albumentations 2.x")

    if kind == "snow":
        parts = [
            A.RandomSnow(snow_point_range=(0.05, 0.1), brightness_coeff=1.3, method="bleach", p=1.0),
            A.RandomRain(slant_range=(-2, 2), drop_length=1, drop_width=3, drop_color=(235, 235, 235),
                         blur_value=3, brightness_coefficient=1.0, rain_type="default", p=1.0),
            A.RandomRain(slant_range=(-1, 1), drop_length=1, drop_width=1, drop_color=(220, 220, 220),
                         blur_value=1, brightness_coefficient=1.0, rain_type="heavy", p=1.0),
        ]  # fmt: skip
    elif kind == "rain":
        parts = [
            A.RandomRain(slant_range=(-6, 6), drop_length=12, drop_width=1, drop_color=(200, 200, 200),
                         blur_value=3, brightness_coefficient=0.9, rain_type="heavy", p=1.0)
        ]  # fmt: skip
    elif kind == "fog":
        parts = [A.RandomFog(fog_coef_range=(0.2, 0.4), alpha_coef=0.06, p=1.0)]
    elif kind == "raindrop":
        parts = [
            A.Spatter(mode="rain", mean=(0.6, 0.65), std=(0.3, 0.3), gauss_sigma=(1.5, 2.5),
                      cutout_threshold=(0.68, 0.72), intensity=(0.4, 0.6), p=1.0)
        ]  # fmt: skip
    else:
        raise ValueError(f"kind must be one of {WEATHER_KINDS}, got {kind!r}")
    return A.Compose(parts)


def add_weather(image: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """``image`` (uint8 ``[H, W, 3]``, H, W >= 8) with synthetic weather of ``kind``; the same seed gives
    the same drops, flakes and haze."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a uint8 [H, W, 3] array, got {getattr(image, 'shape', image)!r}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image must be at least 8 x 8 pixels for synthetic weather, got {image.shape[:2]}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    transform = _weather_transform(kind)
    transform.set_random_seed(int(seed) % (2**32))
    return np.ascontiguousarray(transform(image=np.ascontiguousarray(image))["image"], dtype=np.uint8)


def _seed(*parts: int) -> int:
    return int(np.random.default_rng([int(p) for p in parts]).integers(0, 2**31 - 1))


def synthetic_pairs(
    split: str,
    *,
    kinds: tuple[str, ...] = WEATHER_KINDS,
    crop: int = 128,
    crops_per_image: int = 1,
    seed: int = 0,
    short_side: int = 256,
) -> list[WeatherPair]:
    """Synthetic weather pairs from the photographs of ``split``.

    For every photograph, ``crops_per_image`` crops of ``crop x crop`` pixels (the first one centred,
    the others at positions drawn from ``seed``; the whole photograph when it is smaller) are degraded by
    every weather kind in ``kinds``, each with its own seed. The held-out split ("test") uses the
    same procedure on :data:`TEST_IMAGES`, with seeds disjoint from the training ones."""
    if not kinds or any(k not in WEATHER_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {WEATHER_KINDS}, got {kinds!r}")
    for name, value in (("crop", crop), ("crops_per_image", crops_per_image)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if crop < 8:
        raise ValueError(f"crop must be >= 8 pixels, got {crop}")
    role = _SPLITS.index(split) if split in _SPLITS else -1
    pairs = []
    for i, (name, img) in enumerate(natural_images(split, short_side=short_side).items()):
        h, w = img.shape[:2]
        ch, cw = min(crop, h), min(crop, w)
        rng = np.random.default_rng([seed, role, i])
        for j in range(crops_per_image):
            if j == 0:
                top, left = (h - ch) // 2, (w - cw) // 2
            else:
                top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            clean = np.ascontiguousarray(img[top : top + ch, left : left + cw])
            for kind in kinds:
                k = WEATHER_KINDS.index(kind)
                degraded = add_weather(clean, kind, _seed(seed, role, i, j, k))
                pairs.append(WeatherPair(name, kind, clean, degraded))
    return pairs


# -- published datasets ------------------------------------------------------------------------------

_WHERE = (
    "neuromorph never downloads datasets: get {name} from its authors (links in the WeatherDiff README, "
    "https://github.com/IGITUGraz/WeatherDiffusion) and lay it out as the official code expects "
    "(see neuromorph.data.weather)."
)


def _data_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data root {str(root)!r} does not exist or is not a directory")
    return root / "data" if (root / "data").is_dir() else root


def _list_file(path: Path, name: str) -> list[PairFiles]:
    if not path.is_file():
        raise ValueError(f"{name}: the list file {str(path)} is missing. " + _WHERE.format(name=name))
    base = path.parent
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        # Lines are relative to the list's directory (or absolute); gt = the path with input -> gt.
        pairs.append(PairFiles(base / line, base / line.replace("input", "gt")))
    if not pairs:
        raise ValueError(f"{name}: the list file {str(path)} names no images")
    return pairs


def _folder_pairs(train_dir: Path, name: str, gt_name) -> list[PairFiles]:
    inputs, gts = train_dir / "input", train_dir / "gt"
    for d in (inputs, gts):
        if not d.is_dir():
            raise ValueError(f"{name}: the folder {str(d)} is missing. " + _WHERE.format(name=name))
    files = sorted(p for p in inputs.iterdir() if p.is_file() and not p.name.startswith("."))
    pairs = [PairFiles(p, gts / gt_name(p.name)) for p in files if gt_name(p.name) is not None]
    if not pairs:
        raise ValueError(f"{name}: no images in {str(inputs)}")
    return pairs


# scenes im_0301 .. im_0350 are left out of training by the official loader
_OUTDOOR_HELD_OUT = frozenset(f"im_{i:04d}" for i in range(301, 351))


def _outdoor_gt(file_name: str) -> str | None:
    """Ground truth of an Outdoor-Rain input: the scene stem, e.g. "im_0042_s80_a04.png" -> "im_0042.png"."""
    stem = file_name[:7]
    if stem in _OUTDOOR_HELD_OUT:
        return None
    return stem + ".png"


def dataset_files(name: str, root: str | os.PathLike, split: str) -> list[PairFiles]:
    """The (input, gt) file pairs of a published dataset's ``split`` ("train" or "test") under ``root``.

    Raises ``ValueError`` naming what is missing and where it should be (see the module doc for the
    layouts); the files themselves are checked when loaded (:func:`load_pair`)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    data = _data_dir(root)
    if name == "snow100k":
        if split == "train":
            return _folder_pairs(data / "snow100k" / "train", name, lambda f: f)
        return _list_file(data / "snow100k" / "snowtest100k_L.txt", name)
    if name == "outdoor-rain":
        if split == "train":
            return _folder_pairs(data / "outdoor-rain" / "train", name, _outdoor_gt)
        return _list_file(data / "outdoor-rain" / "test1.txt", name)
    if name == "raindrop":
        if split == "train":
            return _folder_pairs(data / "raindrop" / "train", name, lambda f: f.replace("rain", "clean"))
        return _list_file(data / "raindrop" / "test" / "raindroptesta.txt", name)
    if split == "test":
        raise ValueError(
            "allweather has no test split of its own: test on snow100k, outdoor-rain or raindrop (split test)"
        )
    return _list_file(data / "allweather" / "allweather.txt", name)


def load_pair(files: PairFiles) -> tuple[np.ndarray, np.ndarray]:
    """Read a published pair -> (clean, degraded) float32 RGB ``[H, W, 3]`` in [0, 1] (alpha dropped,
    grey replicated); ``ValueError`` naming the file if one is missing, unreadable or the sizes differ."""
    for p in files:
        if not p.is_file():
            raise ValueError(f"{str(p)} is missing (named by the dataset's layout or list file)")
    degraded, _ = read_image(files.input)
    clean, _ = read_image(files.gt)
    degraded, clean = split_alpha(degraded)[0], split_alpha(clean)[0]
    if degraded.shape != clean.shape:
        raise ValueError(
            f"{str(files.input)} is {degraded.shape[1]}x{degraded.shape[0]} but its ground truth "
            f"{str(files.gt)} is {clean.shape[1]}x{clean.shape[0]}"
        )
    return clean, degraded
