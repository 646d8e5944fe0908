"""Weather pairs: synthetic (albumentations on shipped photographs) and the published layouts; image I/O
for grey / RGB / RGBA, 8 / 16 bit, PNG / JPEG, 1 x 1 .. 4096 x 4096."""

import numpy as np
import pytest

from neuromorph.data.images import (
    MAX_SIDE,
    encode_image,
    merge_alpha,
    read_image,
    split_alpha,
    write_image,
)
from neuromorph.data.weather import (
    TEST_IMAGES,
    TRAIN_IMAGES,
    WEATHER_KINDS,
    add_weather,
    dataset_files,
    load_pair,
    natural_images,
    synthetic_pairs,
)


def _y(x):
    return x.astype(np.float64) @ [0.299, 0.587, 0.114]


def test_held_out_split_is_fixed_and_disjoint():
    assert set(TRAIN_IMAGES).isdisjoint(TEST_IMAGES)
    test = natural_images("test", short_side=64)
    assert list(test) == list(TEST_IMAGES)
    for img in test.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) == 64
        assert not img.flags.writeable


@pytest.mark.parametrize("kind", WEATHER_KINDS)
def test_each_weather_kind_degrades_reproducibly(kind):
    img = natural_images("test", short_side=64)["astronaut"][:48, :48].copy()
    a = add_weather(img, kind, seed=3)
    b = add_weather(img, kind, seed=3)
    c = add_weather(img, kind, seed=4)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, img)
    assert not np.array_equal(a, c)
    if kind in ("snow", "rain"):  # bright flakes / streaks: many pixels get brighter than they were
        assert (_y(a) > _y(img) + 20).mean() > 0.01


def test_synthetic_pairs_shapes_seeds_and_split():
    pairs = synthetic_pairs("test", kinds=("rain", "snow"), crop=32, seed=0, short_side=64)
    assert len(pairs) == 2 * len(TEST_IMAGES)
    assert {p.name for p in pairs} == set(TEST_IMAGES)
    for p in pairs:
        assert p.clean.shape == p.degraded.shape == (32, 32, 3)
    again = synthetic_pairs("test", kinds=("rain", "snow"), crop=32, seed=0, short_side=64)
    assert all(np.array_equal(a.degraded, b.degraded) for a, b in zip(pairs, again, strict=True))
    train = synthetic_pairs("train", kinds=("rain",), crop=32, crops_per_image=2, seed=0, short_side=64)
    assert len(train) == 2 * len(TRAIN_IMAGES)
    with pytest.raises(ValueError, match="kinds"):
        synthetic_pairs("test", kinds=("hail",))
    with pytest.raises(ValueError, match="split"):
        natural_images("val")


def test_add_weather_refuses_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        add_weather(np.zeros((16, 16, 3), np.float32), "rain", 0)
    with pytest.raises(ValueError, match="8 x 8"):
        add_weather(np.zeros((4, 16, 3), np.uint8), "rain", 0)
    with pytest.raises(ValueError, match="kind"):
        add_weather(np.zeros((16, 16, 3), np.uint8), "hail", 0)


# -- published layouts ------------------------------------------------------------------------------


def _png(path, value=0.5, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.full((*size, 3), value, np.float32))


def test_published_layouts_are_read_as_the_official_loaders_do(tmp_path):
    root = tmp_path
    d = root / "data"
    _png(d / "snow100k/train/input/a.jpg")
    _png(d / "snow100k/train/gt/a.jpg")
    (d / "snow100k/test/input").mkdir(parents=True)
    _png(d / "snow100k/test/input/x.png")
    _png(d / "snow100k/test/gt/x.png")
    (d / "snow100k/snowtest100k_L.txt").write_text("test/input/x.png\n\n")
    _png(d / "outdoor-rain/train/input/im_0001_s80_a04.png")
    _png(d / "outdoor-rain/train/gt/im_0001.png")
    _png(d / "outdoor-rain/train/input/im_0301_s80_a04.png")  # excluded by the official loader
    _png(d / "raindrop/train/input/12_rain.png")
    _png(d / "raindrop/train/gt/12_clean.png")
    (d / "allweather").mkdir()
    (d / "allweather/allweather.txt").write_text("../snow100k/train/input/a.jpg\n")

    snow = dataset_files("snow100k", root, "train")
    assert [(p.input.name, p.gt.parent.name) for p in snow] == [("a.jpg", "gt")]
    test = dataset_files("snow100k", root, "test")
    assert test[0].gt == d / "snow100k" / "test/gt/x.png"
    rain = dataset_files("outdoor-rain", root / "data", "train")  # root may be data/ itself
    assert [p.gt.name for p in rain] == ["im_0001.png"]
    drops = dataset_files("raindrop", root, "train")
    assert drops[0].gt.name == "12_clean.png"
    clean, degraded = load_pair(drops[0])
    assert clean.shape == degraded.shape == (8, 8, 3)
    allw = dataset_files("allweather", root, "train")
    assert allw[0].gt.name == "a.jpg" and "gt" in allw[0].gt.parts


def test_missing_datasets_are_named_with_where_to_put_them(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        dataset_files("snow100k", tmp_path / "nope", "train")
    with pytest.raises(ValueError, match=r"snow100k.*train.*input.*missing.*never downloads"):
        dataset_files("snow100k", tmp_path, "train")
    with pytest.raises(ValueError, match=r"raindroptesta\.txt is missing"):
        dataset_files("raindrop", tmp_path, "test")
    with pytest.raises(ValueError, match="no test split"):
        dataset_files("allweather", tmp_path, "test")
    with pytest.raises(ValueError, match="dataset must be one of"):
        dataset_files("rain100h", tmp_path, "train")


# -- image files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("depth", [8, 16])
def test_png_round_trip_keeps_channels_and_bit_depth(tmp_path, channels, depth):
    rng = np.random.default_rng(channels * depth)
    scale = 255 if depth == 8 else 65535
    pixels = (rng.integers(0, scale + 1, size=(5, 7, channels)) / scale).astype(np.float32)
    path = write_image(tmp_path / "x.png", pixels, bit_depth=depth)
    back, info = read_image(path)
    assert info.format == "PNG" and info.bit_depth == depth and (info.height, info.width) == (5, 7)
    assert info.channels == channels  # grey + alpha stays grey + alpha
    expected = merge_alpha(*split_alpha(pixels), info.channels)
    assert np.array_equal(np.round(back * scale), np.round(expected * scale))


@pytest.mark.parametrize("depth", [8, 16])
def test_grey_alpha_png_is_a_standard_png_other_readers_agree_with(tmp_path, depth):
    import cv2
    from PIL import Image

    scale = 255 if depth == 8 else 65535
    grey = np.arange(12).reshape(3, 4) * (scale // 11)
    alpha = scale - grey
    pixels = (np.stack([grey, alpha], axis=2) / scale).astype(np.float32)
    path = write_image(tmp_path / "la.png", pixels, bit_depth=depth)
    bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # an independent decoder
    assert bgra.shape == (3, 4, 4) and bgra.dtype == (np.uint8 if depth == 8 else np.uint16)
    assert np.array_equal(bgra[..., 0], grey) and np.array_equal(bgra[..., 3], alpha)
    if depth == 8:
        with Image.open(path) as im:
            assert im.mode == "LA"
            assert np.array_equal(np.asarray(im), np.stack([grey, alpha], axis=2))


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_is_read_as_8_bit(tmp_path, channels):
    pixels = np.full((9, 4, channels), 0.5, np.float32)
    path = write_image(tmp_path / "x.jpg", pixels)
    back, info = read_image(path)
    assert info.format == "JPEG" and info.bit_depth == 8 and info.channels == channels
    assert np.allclose(back, 0.5, atol=3 / 255)
    with pytest.raises(ValueError, match="alpha"):
        encode_image(np.zeros((2, 2, 4), np.float32), "JPEG", 8)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = 255  # top-left marker in a 2-row, 3-column image
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "o.jpg"
    img.save(path, quality=100, exif=exif)
    back, info = read_image(path)
    assert (info.height, info.width) == (3, 2)
    assert back[0, 1].mean() > 0.8  # the marker moved to the top-right corner


def test_one_pixel_and_largest_images_are_read(tmp_path):
    write_image(tmp_path / "one.png", np.ones((1, 1, 1), np.float32))
    back, info = read_image(tmp_path / "one.png")
    assert back.shape == (1, 1, 1) and info.channels == 1
    big = np.zeros((MAX_SIDE, 1, 3), np.float32)
    write_image(tmp_path / "tall.png", big)
    assert read_image(tmp_path / "tall.png")[0].shape == (MAX_SIDE, 1, 3)


def test_bad_image_files_are_refused_clearly(tmp_path):
    from PIL import Image

    with pytest.raises(ValueError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        read_image(tmp_path / "text.png")
    Image.new("L", (MAX_SIDE + 1, 1)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match=r"4097 x 1 pixels; allowed: 1 to 4096"):
        read_image(tmp_path / "wide.png")
    Image.new("F", (4, 4)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="8-bit or 16-bit"):
        read_image(tmp_path / "float.tif")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.gif")
    with pytest.raises(ValueError, match="allowed formats"):
        read_image(tmp_path / "x.gif")
    good = write_image(tmp_path / "t.png", np.zeros((32, 32, 3), np.float32))
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match="trunc.png"):
        read_image(tmp_path / "trunc.png")
    with pytest.raises(ValueError, match="suffix"):
        write_image(tmp_path / "x.xyz", np.zeros((2, 2, 3), np.float32))


def test_write_image_is_atomic(tmp_path, monkeypatch):
    import os

    target = tmp_path / "out.png"
    write_image(target, np.zeros((4, 4, 3), np.float32))
    before = target.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")  # the write fails half-way: the old file must stay as it was

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_image(target, np.ones((4, 4, 3), np.float32))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary file left


def test_a_missing_optional_package_is_named_with_its_install_line(monkeypatch):
    import sys

    from neuromorph.data.images import WEATHER_EXTRA, optional_module

    monkeypatch.setitem(sys.modules, "albumentations", None)  # import of a None entry fails
    with pytest.raises(ImportError, match="albumentations 2.x.*neuromorph\\[weather\\]"):
        optional_module("albumentations", "albumentations 2.x")
    with pytest.raises(ImportError, match="albumentations"):
        add_weather(np.zeros((16, 16, 3), np.uint8), "snow", seed=0)
    assert "neuromorph[weather]" in WEATHER_EXTRA
