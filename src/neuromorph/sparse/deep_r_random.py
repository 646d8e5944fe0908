"""The random numbers of a DEEP R step: counter-based, a pure function of (seed, step, lane, j).

Value j of the stream (seed, step, lane) is the output of SplitMix64 (Steele, Lea & Flood, OOPSLA 2014:
the generator of Java's SplittableRandom; Stafford's "mix13" finalizer) at Weyl state ``base + (j + 1)
* gamma``, with

    base = mix(seed ^ c1) ^ mix((step << 16 | lane) ^ c2),   gamma = 0x9E3779B97F4A7C15,

so a stream is an ordinary SplitMix64 sequence (which passes BigCrush) and different (step, lane) of one
seed start at different states (mix is a bijection). Philox4x32-10 was the first choice; it cost 7 ns per
value on the 2-core EPYC against 1.6 ns for SplitMix64, and the noise is a sizeable part of the step.

No generator state exists, so step n of a resumed run draws exactly what the uninterrupted run drew,
and the native C step (``kernels/_deep_r_cpu.c``) draws the same numbers as this numpy version without
sharing anything with it. Lanes:

- ``LANE_NORMAL`` (value k) and ``LANE_NORMAL_MORE`` (values k * 1024 + r): the standard normal of slot k,
  by the ziggurat of Marsaglia & Tsang (J. Stat. Softw. 5(8), 2000; 128 layers; layer = low 7 bits,
  value = high 32 bits of one draw). 99 % of draws take one value from ``LANE_NORMAL``; the rest take
  more from ``LANE_NORMAL_MORE``.
- ``LANE_SPLIT``: the tensor of each reconnection under a global budget.
- ``LANE_DRAW + i``: the candidate positions of tensor i; ``LANE_EXACT + i``: sort keys of the exact
  draw of tensor i (when fewer than a quarter of its connections are dormant).

Uniforms are ``(v >> 11) * 2**-53`` in [0, 1) (``(v >> 11) + 1`` for logarithms, in (0, 1]).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "LANE_NORMAL",
    "LANE_NORMAL_MORE",
    "LANE_SPLIT",
    "LANE_DRAW",
    "LANE_EXACT",
    "MAX_TENSORS",
    "NORMAL_MORE",
    "mix",
    "stream_base",
    "values",
    "uniforms",
    "normals",
    "ziggurat_tables",
    "check_seed_step",
]

LANE_NORMAL, LANE_NORMAL_MORE, LANE_SPLIT = 0, 1, 2
LANE_DRAW, LANE_EXACT = 256, 32768
MAX_TENSORS = LANE_EXACT - LANE_DRAW  # lanes are 16 bits: LANE_EXACT + i < 65536 as well
NORMAL_MORE = 1024  # extra values reserved per slot for rejected normal draws
MAX_STEP = 2**48

_GAMMA = 0x9E3779B97F4A7C15


def check_seed_step(seed: int, step: int) -> tuple[int, int]:
    """``(seed mod 2**64, step)``; ``step`` must be an int in [0, 2**48)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < MAX_STEP:
        raise ValueError(f"step must be an int in [0, 2**48), got {step!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return int(seed) % 2**64, int(step)


def mix(z: np.ndarray) -> np.ndarray:
    """Stafford's mix13 finalizer (SplitMix64's output function) on uint64 arrays (wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stream_base(seed: int, step: int, lane: int) -> np.uint64:
    """The Weyl base of the stream (seed, step, lane)."""
    seed, step = check_seed_step(seed, step)
    if not 0 <= lane < 2**16:
        raise ValueError(f"lane must be in [0, 65536), got {lane}")
    a = mix(np.array([seed ^ 0x6A09E667F3BCC909], dtype=np.uint64))
    b = mix(np.array([((step << 16) | lane) ^ 0xBB67AE8584CAA73B], dtype=np.uint64))
    return (a ^ b)[0]


def values(seed: int, step: int, lane: int, j: np.ndarray) -> np.ndarray:
    """Values ``j`` (uint64 indices) of the stream (seed, step, lane), as uint64."""
    j = np.asarray(j, dtype=np.uint64)
    return mix(stream_base(seed, step, lane) + (j + np.uint64(1)) * np.uint64(_GAMMA))


def uniforms(seed: int, step: int, lane: int, start: int, n: int) -> np.ndarray:
    """Uniforms in [0, 1) from values ``start .. start + n - 1`` of the stream (float64)."""
    v = values(seed, step, lane, np.arange(start, start + n, dtype=np.uint64))
    return (v >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _u01(v: int) -> float:
    return (v >> 11) * 2.0**-53


def _u01_open0(v: int) -> float:
    return ((v >> 11) + 1) * 2.0**-53


_TABLES: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``kn`` (uint32), ``wn``, ``fn`` (float64) of the 128-layer ziggurat (Marsaglia & Tsang's zigset)."""
    global _TABLES
    if _TABLES is None:
        dn = tn = 3.442619855899
        vn, m1 = 9.91256303526217e-3, 2147483648.0
        kn, wn, fn = np.zeros(128, np.uint32), np.zeros(128), np.zeros(128)
        q = vn / math.exp(-0.5 * dn * dn)
        kn[0], kn[1] = int((dn / q) * m1), 0
        wn[0], wn[127] = q / m1, dn / m1
        fn[0], fn[127] = 1.0, math.exp(-0.5 * dn * dn)
        for i in range(126, 0, -1):
            dn = math.sqrt(-2.0 * math.log(vn / dn + math.exp(-0.5 * dn * dn)))
            kn[i + 1] = int((dn / tn) * m1)
            tn = dn
            fn[i] = math.exp(-0.5 * dn * dn)
            wn[i] = dn / m1
        for t in (kn, wn, fn):
            t.flags.writeable = False
        _TABLES = (kn, wn, fn)
    return _TABLES


def _layer_value(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    iz = (v & np.uint64(127)).astype(np.intp)
    hz = (v >> np.uint64(32)).astype(np.uint32).view(np.int32).astype(np.int64)
    return iz, hz


def _slow(v: int, k: int, seed: int, step: int) -> float:
    """The ziggurat's slow path of slot k after its first value v was rejected (as the C code)."""
    kn, wn, fn = ziggurat_tables()
    r = 3.442620
    j, end = k * NORMAL_MORE, (k + 1) * NORMAL_MORE

    def more() -> int:
        nonlocal j
        if j >= end:
            raise RuntimeError(f"the normal draw of slot {k} ran out of its {NORMAL_MORE} extra values")
        out = int(values(seed, step, LANE_NORMAL_MORE, np.array([j], np.uint64))[0])
        j += 1
        return out

    while True:
        iz = v & 127
        hz = (v >> 32) & 0xFFFFFFFF
        hz = hz - 2**32 if hz >= 2**31 else hz
        x = hz * float(wn[iz])
        if iz == 0:
            while True:
                x = -math.log(_u01_open0(more())) / r
                y = -math.log(_u01_open0(more()))
                if not y + y < x * x:
                    break
            return r + x if hz > 0 else -r - x
        if float(fn[iz]) + _u01(more()) * (float(fn[iz - 1]) - float(fn[iz])) < math.exp(-0.5 * x * x):
            return x
        v = more()
        iz = v & 127
        hz = (v >> 32) & 0xFFFFFFFF
        hz = hz - 2**32 if hz >= 2**31 else hz
        if abs(hz) < int(kn[iz]):
            return hz * float(wn[iz])


def normals(seed: int, step: int, n: int) -> np.ndarray:
    """The standard normals of slots ``0 .. n - 1`` at (seed, step), float64 (numpy; the C step and
    ``kernels.cpu_native.deep_r_normals`` give the same numbers)."""
    seed, step = check_seed_step(seed, step)
    kn, wn, _ = ziggurat_tables()
    v = values(seed, step, LANE_NORMAL, np.arange(n, dtype=np.uint64))
    iz, hz = _layer_value(v)
    out = hz * wn[iz]  # int64 * float64: the C code's int32 * double, exactly
    for k in np.flatnonzero(np.abs(hz) >= kn[iz].astype(np.int64)).tolist():
        out[k] = _slow(int(v[k]), k, seed, step)
    return out
