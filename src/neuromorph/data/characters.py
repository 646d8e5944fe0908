"""Few-shot character classes: KanjiVG stroke characters rendered by simulated drawers (the embedded
Omniglot stand-in), and a loader for the real Omniglot from a directory the user names.

Omniglot (Lake, Salakhutdinov, Tenenbaum, Science 2015) has 1,623 characters of 50 alphabets, each drawn
once by 20 people; few-shot learning uses the 30 "background" alphabets for meta-training and the 20
"evaluation" alphabets for meta-testing, with 90-degree rotations as extra classes (Santoro et al. 2016;
MAML; the L2L-PCM code, papers.md section 4.3). Omniglot ships in no package (datasets.md section 5), so
the default here renders KanjiVG (Ulrich Apel, CC BY-SA 3.0; package ``kanjivg``) stroke-order SVGs:

- an *alphabet* is a KanjiVG radical group (``kvg:radical="general"``) with at least
  ``min_alphabet_size`` characters; meta-train and meta-test alphabets (hence characters) are disjoint;
- a *drawer* ``d`` of character ``c`` is a deterministic function of ``(seed, c, d)``: a random affine
  map of the whole character (rotation, scale, shear, shift), a random shift, rotation and scale of each
  stroke about its centre, jitter of every Bezier control point, and a random pen width. Drawings are
  rendered at 4x the size and box-filtered to ``size x size`` (anti-aliased strokes, values in [0, 1],
  1 = ink, as Omniglot after inversion);
- ``samples_per_class`` is the number of drawers (20 as Omniglot by default), so K + Q larger than that
  is refused as it would be on Omniglot.

Rendered drawings are cached in memory per pool (a pure speed-up: the drawing of (c, d) never changes).
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import pathlib
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .. import _validate

__all__ = [
    "Character",
    "strokes",
    "kanjivg_characters",
    "split_by_alphabet",
    "render_character",
    "RenderedCharacters",
    "OmniglotCharacters",
    "load_omniglot",
]

_VIEW = 109.0  # KanjiVG viewBox
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TOKEN = re.compile(r"[MmCcSsLlZz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_GROUP = re.compile(r"<g\b[^>]*>")
_PATH_D = re.compile(r"<path\b[^>]*\bd=\"([^\"]+)\"")


class Character(NamedTuple):
    """One KanjiVG character: Unicode code point, alphabet (its radical), the SVG path data of its
    strokes in KanjiVG units (0..109; parsed to Bezier segments by :func:`strokes` when drawn)."""

    code: int
    alphabet: str
    paths: tuple[str, ...]


def strokes(character: Character) -> tuple[np.ndarray, ...]:
    """The strokes of ``character`` as cubic Bezier segments ``[n_segments, 4, 2]``."""
    return tuple(_parse_path_cached(d) for d in character.paths)


@functools.lru_cache(maxsize=65536)
def _parse_path_cached(d: str) -> np.ndarray:
    out = _parse_path(d)
    out.setflags(write=False)
    return out


def _parse_path(d: str) -> np.ndarray:
    """SVG path data (M/m, C/c, S/s, L/l, Z) -> cubic segments ``[n, 4, 2]``."""
    tokens = _TOKEN.findall(d)
    segments: list[np.ndarray] = []
    pos = np.zeros(2)
    start = np.zeros(2)
    last_ctrl: np.ndarray | None = None
    cmd = ""
    i = 0

    def nums(k: int) -> np.ndarray:
        nonlocal i
        vals = np.array([float(t) for t in tokens[i : i + k]])
        if len(vals) != k:
            raise ValueError(f"malformed SVG path data {d[:40]!r}")
        i += k
        return vals

    while i < len(tokens):
        if tokens[i].isalpha():
            cmd = tokens[i]
            i += 1
            if cmd in "Zz":
                segments.append(np.stack([pos, pos, start, start]))
                pos = start.copy()
                continue
        rel = cmd.islower()
        base = pos if rel else np.zeros(2)
        c = cmd.upper()
        if c == "M":
            pos = base + nums(2)
            start = pos.copy()
            cmd = "l" if rel else "L"  # further pairs are line-tos
            last_ctrl = None
        elif c == "L":
            end = base + nums(2)
            segments.append(np.stack([pos, pos, end, end]))
            pos, last_ctrl = end, None
        elif c == "C":
            v = nums(6).reshape(3, 2) + base
            segments.append(np.stack([pos, v[0], v[1], v[2]]))
            pos, last_ctrl = v[2], v[1]
        elif c == "S":
            v = nums(4).reshape(2, 2) + base
            c1 = 2 * pos - last_ctrl if last_ctrl is not None else pos
            segments.append(np.stack([pos, c1, v[0], v[1]]))
            pos, last_ctrl = v[1], v[0]
        else:
            raise ValueError(f"unsupported SVG path command {cmd!r} in {d[:40]!r}")
    return np.array(segments, dtype=np.float64).reshape(-1, 4, 2)


def _radical(svg: str) -> str | None:
    fallback = None
    for tag in _GROUP.findall(svg):
        kind = re.search(r'kvg:radical="([^"]+)"', tag)
        element = re.search(r'kvg:element="([^"]+)"', tag)
        if kind and element:
            if kind.group(1) == "general":
                return element.group(1)
            fallback = fallback or element.group(1)
    return fallback


@functools.lru_cache(maxsize=8)
def kanjivg_characters(*, max_strokes: int = 12, min_alphabet_size: int = 20) -> tuple[Character, ...]:
    """Every base KanjiVG character (no variant files) that has a radical and at most ``max_strokes``
    strokes, in alphabets (radical groups) of at least ``min_alphabet_size`` such characters; sorted by
    (alphabet, code point). ``ValueError`` if the ``kanjivg`` package is not installed."""
    _validate.positive_int("max_strokes", max_strokes)
    _validate.positive_int("min_alphabet_size", min_alphabet_size)
    try:
        folder = importlib.resources.files("kanji")
    except ModuleNotFoundError:
        raise ValueError(
            "the KanjiVG characters need the package 'kanjivg' (pip install kanjivg==20260714)"
        ) from None
    chars: list[Character] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        name = entry.name
        if not name.endswith(".svg") or "-" in name:
            continue
        svg = entry.read_text(encoding="utf-8")
        if not 0 < svg.count("<path") <= max_strokes:
            continue
        radical = _radical(svg)
        if radical is None:
            continue
        chars.append(Character(int(name[:-4], 16), radical, tuple(_PATH_D.findall(svg))))
    sizes: dict[str, int] = {}
    for c in chars:
        sizes[c.alphabet] = sizes.get(c.alphabet, 0) + 1
    kept = [c for c in chars if sizes[c.alphabet] >= min_alphabet_size]
    return tuple(sorted(kept, key=lambda c: (c.alphabet, c.code)))


def split_by_alphabet(
    characters: Sequence[Character], *, test_fraction: float = 0.4, seed: int = 0
) -> tuple[list[Character], list[Character]]:
    """Meta-train and meta-test characters from disjoint alphabets (as Omniglot's background/evaluation
    split): a seeded ``test_fraction`` of the alphabets (at least one each side) goes to meta-test."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    alphabets = sorted({c.alphabet for c in characters})
    if len(alphabets) < 2:
        raise ValueError(f"need at least 2 alphabets to split, got {len(alphabets)}")
    order = np.random.default_rng([seed, 7]).permutation(len(alphabets))
    n_test = min(max(1, round(test_fraction * len(alphabets))), len(alphabets) - 1)
    test = {alphabets[i] for i in order[:n_test]}
    return [c for c in characters if c.alphabet not in test], [c for c in characters if c.alphabet in test]


def _bezier_points(segments: np.ndarray, per_segment: int = 8) -> np.ndarray:
    t = np.linspace(0.0, 1.0, per_segment)[:, None]
    b = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])  # [4, P, 1]
    pts = np.einsum("kpo,skd->spd", b, segments)  # [S, P, 2]
    return pts.reshape(-1, 2)


def render_character(character: Character, rng: np.random.Generator, *, size: int = 28) -> np.ndarray:
    """One drawing of ``character`` by the drawer ``rng`` describes: ``float32 [size, size]`` in [0, 1]."""
    from PIL import Image, ImageDraw

    _validate.positive_int("size", size)
    scale_up = 4
    big = size * scale_up
    angle = math.radians(rng.normal(0.0, 6.0))
    sx, sy = rng.uniform(0.85, 1.05, size=2)
    shear = rng.normal(0.0, 0.08)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    affine = rot @ np.array([[sx, shear], [0.0, sy]])
    shift = rng.normal(0.0, 2.5, size=2)
    center = np.array([_VIEW / 2, _VIEW / 2])
    margin = 0.08 * big
    unit = (big - 2 * margin) / _VIEW
    width = max(1, int(round(rng.uniform(2.6, 4.2) * unit)))
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    for segments in strokes(character):
        ctrl = segments + rng.normal(0.0, 1.2, size=segments.shape)  # wobble of every control point
        c0 = ctrl.reshape(-1, 2).mean(0)
        a = math.radians(rng.normal(0.0, 4.0))
        s = rng.uniform(0.9, 1.1)
        local = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        ctrl = (ctrl - c0) @ local.T + c0 + rng.normal(0.0, 1.8, size=2)
        pts = _bezier_points(ctrl)
        pts = (pts - center) @ affine.T + center + shift
        xy = pts * unit + margin
        draw.line([tuple(p) for p in xy], fill=255, width=width, joint="curve")
        r = width / 2
        for p in (xy[0], xy[-1]):  # round caps
            draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=255)
    small = img.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


class RenderedCharacters:
    """A :class:`~neuromorph.meta.tasks.ClassPool` of KanjiVG characters drawn by ``drawers`` simulated
    people each; with ``rotations`` every character gives 4 classes (0, 90, 180, 270 degrees).

    Class ``c`` is character ``c // 4`` rotated by ``90 * (c % 4)`` degrees (``c`` itself without
    rotations). Samples are ``float32 [1, size, size]``."""

    def __init__(
        self,
        characters: Sequence[Character],
        *,
        drawers: int = 20,
        rotations: bool = True,
        size: int = 28,
        seed: int = 0,
    ) -> None:
        _validate.positive_int("drawers", drawers)
        _validate.positive_int("size", size)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.characters = list(characters)
        if not self.characters:
            raise ValueError("characters must not be empty")
        self.drawers, self.rotations, self.size, self.seed = drawers, bool(rotations), size, seed
        self.n_classes = len(self.characters) * (4 if self.rotations else 1)
        self.samples_per_class: int | None = drawers
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def drawing(self, index: int, drawer: int) -> np.ndarray:
        """Drawer ``drawer``'s drawing of character ``index`` (unrotated), ``[size, size]``."""
        key = (index, drawer)
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, self.characters[index].code, drawer])
            self._cache[key] = render_character(self.characters[index], rng, size=self.size)
        return self._cache[key]

    def draw(self, cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
        if not 0 <= cls < self.n_classes:
            raise ValueError(f"cls must be in [0, {self.n_classes}), got {cls}")
        if n > self.drawers:
            raise ValueError(f"asked for {n} drawings of a class; it has {self.drawers} drawers")
        index, turns = (cls // 4, cls % 4) if self.rotations else (cls, 0)
        who = rng.choice(self.drawers, size=n, replace=False)
        out = np.stack([np.rot90(self.drawing(index, int(d)), turns) for d in who])
        return np.ascontiguousarray(out[:, None])


class OmniglotCharacters:
    """A :class:`~neuromorph.meta.tasks.ClassPool` over loaded Omniglot images ``[C, 20, size, size]``
    (1 = ink), with optional 90-degree rotations as extra classes (class ``c`` = character ``c // 4``
    rotated ``c % 4`` times)."""

    def __init__(self, images: np.ndarray, *, rotations: bool = True, names: Sequence[str] = ()) -> None:
        if not isinstance(images, np.ndarray) or images.ndim != 4 or 0 in images.shape:
            shape = getattr(images, "shape", type(images).__name__)
            raise ValueError(f"images must be an array [characters, drawers, H, W], got {shape}")
        self.images = images.astype(np.float32, copy=False)
        self.rotations = bool(rotations)
        self.names = list(names)
        self.n_classes = images.shape[0] * (4 if self.rotations else 1)
        self.samples_per_class: int | None = images.shape[1]

    def draw(self, cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
        if not 0 <= cls < self.n_classes:
            raise ValueError(f"cls must be in [0, {self.n_classes}), got {cls}")
        index, turns = (cls // 4, cls % 4) if self.rotations else (cls, 0)
        who = rng.choice(self.images.shape[1], size=n, replace=False)
        out = np.stack([np.rot90(self.images[index, int(d)], turns) for d in who])
        return np.ascontiguousarray(out[:, None])


_OMNIGLOT_SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}


def load_omniglot(root: str | pathlib.Path, split: str, *, size: int = 28) -> OmniglotCharacters:
    """Omniglot's ``images_background`` (``split="background"``, meta-train) or ``images_evaluation``
    (``"evaluation"``, meta-test) from ``root`` in the layout of github.com/brendenlake/omniglot
    (``root/images_background/<alphabet>/<character>/*.png``, 105x105, black ink on white), resized to
    ``size`` and inverted (1 = ink). Without rotations; wrap with ``OmniglotCharacters(p.images)`` to
    add them. ``ValueError`` saying what is missing and where to put it."""
    if split not in _OMNIGLOT_SPLITS:
        raise ValueError(f"split must be one of {sorted(_OMNIGLOT_SPLITS)}, got {split!r}")
    _validate.positive_int("size", size)
    from PIL import Image

    folder = pathlib.Path(root) / _OMNIGLOT_SPLITS[split]
    hint = (
        f"Omniglot not found: expected {folder}/<alphabet>/<character>/*.png (unzip images_background.zip "
        f"and images_evaluation.zip from https://github.com/brendenlake/omniglot/tree/master/python into "
        f"{pathlib.Path(root)}, then pass data_root={pathlib.Path(root)})"
    )
    if not folder.is_dir():
        raise ValueError(hint)
    chars = sorted(
        p for a in sorted(folder.iterdir()) if a.is_dir() for p in sorted(a.iterdir()) if p.is_dir()
    )
    if not chars:
        raise ValueError(f"{hint}; {folder} has no <alphabet>/<character> folders")
    counts = {len(list(c.glob("*.png"))) for c in chars}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            f"Omniglot at {folder}: every character folder must hold the same number (>= 1) of PNG "
            f"drawings; found counts {sorted(counts)}"
        )
    images = np.empty((len(chars), counts.pop(), size, size), dtype=np.float32)
    for i, c in enumerate(chars):
        for j, png in enumerate(sorted(c.glob("*.png"))):
            with Image.open(png) as im:
                gray = im.convert("L").resize((size, size), Image.BOX)
            images[i, j] = 1.0 - np.asarray(gray, dtype=np.float32) / 255.0
    names = [f"{c.parent.name}/{c.name}" for c in chars]
    return OmniglotCharacters(images, rotations=False, names=names)
