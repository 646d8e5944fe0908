"""Reading and writing photographs for restoration: grey, grey+alpha, RGB and RGBA, 8 and 16 bits,
PNG and JPEG (also TIFF, BMP, WebP where OpenCV reads them), 1 x 1 up to 4096 x 4096 pixels.

Used by the weather-restoration code (WeatherDiff, Özdenizci & Legenstein, TPAMI 2023,
arXiv:2207.14626); the paper resizes inputs, this module never does: pixels are restored as they are.

- :func:`read_image` checks the header first (format and size, before decoding anything large), decodes
  with OpenCV keeping the bit depth (``IMREAD_UNCHANGED``; Pillow would truncate 16-bit colour PNGs),
  applies the EXIF orientation of JPEGs, and returns float32 ``[H, W, C]`` in [0, 1] with an
  :class:`ImageInfo` (format, bit depth, channels) to write the result in kind.
- :func:`split_alpha` / :func:`merge_alpha` turn any of the layouts into the RGB the model sees (grey is
  replicated) plus the untouched alpha channel, and back.
- :func:`write_image` encodes in memory and writes atomically (temporary file, then rename), so an
  interrupted run never leaves half a file.
- Grey + alpha PNGs stay grey + alpha: OpenCV decodes them as BGRA and cannot encode two channels, so
  the PNG header's colour type is read to fold them back, and they are written by a small PNG encoder
  of our own (:func:`_png_grey_alpha`, colour type 4, 8 or 16 bits).

Anything else (other bit depths, float images, larger images, unreadable files) raises ``ValueError``
naming the file and what is allowed.
"""

from __future__ import annotations

import importlib
import io
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..runs import atomic_write_bytes

__all__ = [
    "optional_module",
    "WEATHER_EXTRA",
    "ImageInfo",
    "MAX_SIDE",
    "FORMATS",
    "read_image",
    "write_image",
    "split_alpha",
    "merge_alpha",
    "encode_image",
]

MAX_SIDE = 4096
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
             ".webp": "WEBP"}  # fmt: skip
_EXIF_ORIENTATION = 0x0112
WEATHER_EXTRA = "pip install 'neuromorph[weather]'"


def optional_module(module: str, package: str):
    """Import ``module`` of the weather-restoration extra (diffusers, albumentations, OpenCV, Pillow,
    scikit-image); if it is not installed, raise ``ImportError`` naming the package and the install line
    instead of a bare ``No module named ...`` deep inside a run."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{package} is needed for weather restoration but cannot be imported ({err}); "
            f"install it with: {WEATHER_EXTRA}"
        ) from err


class ImageInfo(NamedTuple):
    """What a file held: ``format`` (PNG, JPEG, ...), ``bit_depth`` (8 or 16), ``channels`` (1 grey,
    2 grey + alpha, 3 RGB, 4 RGBA), ``height`` and ``width``."""

    format: str
    bit_depth: int
    channels: int
    height: int
    width: int


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1..8) to ``[H, W, ...]`` pixels (Pillow's ``exif_transpose``)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a.swapaxes(0, 1), 2),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_colour_type(data: bytes) -> int | None:
    """The colour type of a PNG's IHDR chunk (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA)."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 25:
        return data[25]
    return None


def _png_grey_alpha(arr: np.ndarray) -> bytes:
    """A PNG (colour type 4) of ``arr`` ``[H, W, 2]`` uint8 or uint16 (grey, alpha); rows unfiltered."""
    h, w, _ = arr.shape
    depth = 8 if arr.dtype == np.uint8 else 16
    raw = np.ascontiguousarray(arr, dtype=np.uint8 if depth == 8 else ">u2").view(np.uint8).reshape(h, -1)
    rows = np.concatenate([np.zeros((h, 1), np.uint8), raw], axis=1)  # filter byte 0 per row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, depth, 4, 0, 0, 0)
    idat = zlib.compress(rows.tobytes(), 6)
    return _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file -> (float32 ``[H, W, C]`` in [0, 1], :class:`ImageInfo`); see module doc."""
    cv2 = optional_module("cv2", "opencv-python-headless")
    pil = optional_module("PIL.Image", "Pillow")
    Image, UnidentifiedImageError = pil, pil.UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"image {str(path)!r} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            fmt, (width, height) = probe.format, probe.size
            orientation = probe.getexif().get(_EXIF_ORIENTATION, 1) if fmt == "JPEG" else 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image {str(path)!r} is not a readable image file ({err})") from None
    except Image.DecompressionBombError:
        raise ValueError(
            f"image {str(path)!r} is far larger than {MAX_SIDE} x {MAX_SIDE} pixels; crop or resize it first"
        ) from None
    if fmt not in FORMATS:
        raise ValueError(f"image {str(path)!r} is {fmt}; allowed formats: {', '.join(FORMATS)}")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise ValueError(
            f"image {str(path)!r} is {width} x {height} pixels; allowed: 1 to {MAX_SIDE} pixels per side "
            "(crop or resize larger images first)"
        )
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"image {str(path)!r} ({fmt}) could not be decoded (truncated or corrupt file?)")
    if arr.dtype == np.uint8:
        depth, scale = 8, 255.0
    elif arr.dtype == np.uint16:
        depth, scale = 16, 65535.0
    else:
        raise ValueError(
            f"image {str(path)!r} has {arr.dtype} pixels; allowed: 8-bit or 16-bit integer images"
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if fmt == "PNG" and _png_colour_type(data) == 4 and arr.shape[2] == 4:
        arr = arr[:, :, [0, 3]]  # grey + alpha, decoded by OpenCV as BGRA with B = G = R
    channels = arr.shape[2]
    if channels == 3:
        arr = arr[:, :, ::-1]  # BGR -> RGB
    elif channels == 4:
        arr = arr[:, :, [2, 1, 0, 3]]  # BGRA -> RGBA
    elif channels not in (1, 2):
        raise ValueError(f"image {str(path)!r} has {channels} channels; allowed: 1, 2, 3 or 4")
    arr = _orient(arr, int(orientation) if isinstance(orientation, int) else 1)
    pixels = np.ascontiguousarray(arr, dtype=np.float32) / np.float32(scale)
    return pixels, ImageInfo(fmt, depth, channels, pixels.shape[0], pixels.shape[1])


def split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``[H, W, C]`` (C = 1..4) -> (RGB ``[H, W, 3]``, alpha ``[H, W, 1]`` or None); grey is replicated."""
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"pixels must be [H, W, C] with C in 1..4, got shape {pixels.shape}")
    c = pixels.shape[2]
    colour = pixels[:, :, : (1 if c <= 2 else 3)]
    alpha = pixels[:, :, c - 1 :] if c in (2, 4) else None
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    return np.ascontiguousarray(colour), alpha


def merge_alpha(rgb: np.ndarray, alpha: np.ndarray | None, channels: int) -> np.ndarray:
    """Inverse of :func:`split_alpha` for an image of ``channels`` channels (grey = mean of R, G, B)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got shape {rgb.shape}")
    colour = rgb.mean(axis=2, keepdims=True) if channels in (1, 2) else rgb
    if channels in (2, 4):
        if alpha is None:
            raise ValueError(f"an image with {channels} channels needs its alpha channel back")
        colour = np.concatenate([colour, alpha], axis=2)
    return colour


def encode_image(pixels: np.ndarray, fmt: str, bit_depth: int) -> bytes:
    """Encode float ``[H, W, C]`` in [0, 1] as ``fmt`` (PNG, JPEG, ...) with ``bit_depth`` 8 or 16
    (JPEG, BMP and WebP are 8-bit only; JPEG quality 95)."""
    cv2 = optional_module("cv2", "opencv-python-headless")

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4) or not np.all(np.isfinite(pixels)):
        raise ValueError(f"pixels must be finite [H, W, C] with C in 1..4, got shape {pixels.shape}")
    if fmt in ("JPEG", "BMP", "WEBP"):
        bit_depth = 8
    if fmt == "JPEG" and pixels.shape[2] in (2, 4):
        raise ValueError("JPEG cannot store an alpha channel; write PNG instead")
    scale, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    arr = np.round(np.clip(pixels, 0.0, 1.0) * scale).astype(dtype)
    c = arr.shape[2]
    if c == 2 and fmt == "PNG":
        return _png_grey_alpha(arr)
    if c == 3:
        arr = arr[:, :, ::-1]
    elif c == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    elif c == 2:  # other formats: OpenCV writes grey + alpha as BGRA
        arr = np.concatenate([arr[:, :, :1]] * 3 + [arr[:, :, 1:]], axis=2)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "JPEG" else []
    ok, buf = cv2.imencode(FORMATS[fmt], np.ascontiguousarray(arr), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr.shape} {arr.dtype} image as {fmt}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, pixels: np.ndarray, *, bit_depth: int = 8) -> Path:
    """Write ``pixels`` (float ``[H, W, C]`` in [0, 1]) atomically to ``path``; the format follows the
    suffix (.png, .jpg/.jpeg, .tif/.tiff, .bmp, .webp). Returns the path."""
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"path {str(path)!r}: unknown image suffix; allowed: {', '.join(sorted(_SUFFIXES))}")
    atomic_write_bytes(path, encode_image(pixels, fmt, bit_depth))
    return path
