"""Native CPU path of the recurrent ALIF layer: plain C (``_alif_cpu.c``) loaded with ctypes.

The Python fused path (``alif_sequence._FusedALIF``) spends most of its time in per-op overhead of
tiny tensor ops and in a dense delayed-input matmul that is 90 % zeros. The C kernels run the same
loops with the same floating-point operations, event-driven over spikes:

``NativeALIF``
    Drop-in for ``_FusedALIF`` (same inputs and outputs): forward loop and BPTT in C. The surrogate
    pseudo-derivative is still evaluated in Python (vectorised over the whole sequence), so every
    :class:`~neuromorph.spikes.Surrogate` works; the refractory mask is rebuilt in C.
``NativeDelayedInput``
    ``(x [T, B, n_in], w_in [n_in, N], delay [n_in, N], n_delay) -> current [T + D, B, N]`` with
    ``current[t + delay[i, j], b, j] += x[t, b, i] * w_in[i, j]``. Gradient to ``w_in`` only: ``x``
    must not require grad (use the dense formulation then).

The library is built on first use with the system C compiler (``$CC`` or ``gcc``; about a second)
into ``${NEUROMORPH_CACHE:-~/.cache/neuromorph}/alif_cpu-<hash>.so``, the hash covering the source,
the compiler flags and the CPU. :func:`available` says whether it could be built and loaded (never
raising; :func:`unavailable_reason` tells why not); ``NEUROMORPH_NATIVE=0`` switches it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

__all__ = [
    "available",
    "unavailable_reason",
    "library_path",
    "alif_forward",
    "alif_backward",
    "delayed_input_forward",
    "delayed_input_backward",
    "NativeALIF",
    "NativeDelayedInput",
]

_SOURCE = Path(__file__).with_name("_alif_cpu.c")
# IEEE semantics: no -ffast-math; no FP contraction (the source places its fma calls explicitly).
_COMMON_FLAGS = ("-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")
_OPT_FLAGS = (("-O3", "-march=native"), ("-O3",))
_SUFFIX = {torch.float32: "_f32", torch.float64: "_f64"}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_path: Path | None = None
_reason: str | None = None
_tried = False


# -- building and loading ------------------------------------------------------------------------------
def _cache_dir() -> Path:
    root = os.environ.get("NEUROMORPH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "neuromorph"


def _cpu_fingerprint() -> str:
    """Machine and CPU feature flags: a ``-march=native`` build must not be reused on another CPU."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    text += "\n" + line.strip()
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        text += "\n" + platform.processor()
    return text


def _compile(compiler: str, tmp: Path) -> str | None:
    """Compile into ``tmp``; ``None`` on success, else the last compiler error."""
    error = None
    for opt in _OPT_FLAGS:
        cmd = [compiler, *_COMMON_FLAGS, *opt, str(_SOURCE), "-o", str(tmp), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{' '.join(cmd)}: {exc}"
        if proc.returncode == 0:
            return None
        error = f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
    return error


def _build_and_load() -> ctypes.CDLL:
    if sys.platform.startswith("win"):
        raise RuntimeError("the native CPU kernels are built for Linux and macOS only")
    if not _SOURCE.is_file():
        raise RuntimeError(f"source {_SOURCE} is missing")
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler found (gcc, cc or $CC)")
    key = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), repr((compiler, _COMMON_FLAGS, _OPT_FLAGS)).encode(), _cpu_fingerprint().encode()):
        key.update(part)
        key.update(b"\0")
    cache = _cache_dir()
    target = cache / f"alif_cpu-{key.hexdigest()[:16]}.so"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".alif_cpu-", suffix=".so", dir=cache)
        os.close(fd)
        tmp = Path(name)
        try:
            error = _compile(compiler, tmp)
            if error is not None:
                raise RuntimeError(error)
            os.replace(tmp, target)  # atomic: a concurrent build of the same source just wins or loses
        finally:
            tmp.unlink(missing_ok=True)
    global _lib_path
    lib = ctypes.CDLL(str(target))
    _declare(lib)
    _lib_path = target
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, f64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double
    signatures = {
        # B, T, N, D, fut, w_all, v0, z0, b0, r0, alpha, rho, beta, thr, n_ref, dt, z, s, a, v, b, r
        "alif_forward": [i64] * 4 + [ptr] * 10 + [i64, f64] + [ptr] * 6,
        # B, T, N, D, g_z, z, s, a, dpsi, z0, r0, w_all, alpha, rho, beta, n_ref, dt, g_fut, g_w
        "alif_backward": [i64] * 4 + [ptr] * 11 + [i64, f64] + [ptr] * 2,
        # T, B, n_in, N, D, x, w_in, delay, fut
        "delayed_input_forward": [i64] * 5 + [ptr] * 4,
        # T, B, n_in, N, D, x, delay, g_fut, g_w_in
        "delayed_input_backward": [i64] * 5 + [ptr] * 4,
    }
    for name, args in signatures.items():
        for suffix in _SUFFIX.values():
            fn = getattr(lib, name + suffix)
            fn.argtypes = args
            fn.restype = ctypes.c_int


def _load() -> ctypes.CDLL | None:
    global _lib, _reason, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            try:
                _lib = _build_and_load()
            except Exception as exc:  # never raise: report through unavailable_reason()
                _lib, _reason = None, f"{type(exc).__name__}: {exc}"
            _tried = True
    return _lib


def _disabled() -> bool:
    return os.environ.get("NEUROMORPH_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def available() -> bool:
    """Whether the native kernels can be used (builds them on the first call; never raises)."""
    return not _disabled() and _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (``None`` when it is True)."""
    if _disabled():
        return "disabled by NEUROMORPH_NATIVE=0"
    return None if _load() is not None else _reason


def library_path() -> Path | None:
    """The loaded shared library (``None`` when unavailable)."""
    return _lib_path if available() else None


def _function(name: str, dtype: torch.dtype):
    lib = _load() if not _disabled() else None
    if lib is None:
        raise RuntimeError(f"native CPU kernels unavailable: {unavailable_reason()}")
    if dtype not in _SUFFIX:
        raise TypeError(f"native CPU kernels support float32 and float64, got {dtype}")
    return getattr(lib, name + _SUFFIX[dtype])


def _check(status: int, name: str) -> None:
    if status == -2:
        raise ValueError(f"{name}: a delay lies outside [0, n_delay)")
    if status != 0:
        raise MemoryError(f"{name}: native kernel failed with status {status}")


# -- tensor wrappers -----------------------------------------------------------------------------------
def _arg(t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """``t`` as a contiguous CPU tensor of ``dtype`` and ``shape`` (broadcasting allowed)."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=dtype)
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor, got device {t.device}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if tuple(t.shape) != shape:
        try:
            t = t.expand(shape)
        except RuntimeError:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}") from None
    return t.detach().contiguous()


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


def alif_forward(fut, w_all, v0, z0, b0, r0, alpha, rho, beta, thr, n_ref: int, dt: float):
    """Run the ALIF recurrence over ``fut`` ``[B, T + D, N]`` **in place** (the recurrent input is added
    to it, ``fut[:, T:]`` is then the pending input). Returns ``z, s, a`` ``[T, B, N]`` and the final
    ``v, b, r`` ``[B, N]``. ``w_all`` ``[N, D * N]``; per-neuron ``alpha, rho, beta, thr``."""
    if fut.dim() != 3 or fut.device.type != "cpu" or not fut.is_contiguous():
        raise ValueError("fut must be a contiguous CPU tensor [B, T + D, N] (it is updated in place)")
    dtype = fut.dtype
    fn = _function("alif_forward", dtype)
    batch, length, n = fut.shape
    if w_all.dim() != 2 or w_all.shape[0] != n or w_all.shape[1] % n or w_all.shape[1] == 0:
        raise ValueError(f"w_all must have shape [N, D * N] with N = {n}, got {tuple(w_all.shape)}")
    n_delay = w_all.shape[1] // n
    n_steps = length - n_delay
    if n_steps < 0:
        raise ValueError(f"fut has {length} steps, fewer than n_delay = {n_delay}")
    w_all = _arg(w_all, dtype, (n, n_delay * n), "w_all")
    v0, z0, b0, r0 = (_arg(t, dtype, (batch, n), name) for t, name in zip((v0, z0, b0, r0), "vzbr"))
    alpha, rho, beta, thr = (
        _arg(t, dtype, (n,), name) for t, name in zip((alpha, rho, beta, thr), ("alpha", "rho", "beta", "thr"))
    )
    z, s, a = (torch.empty(n_steps, batch, n, dtype=dtype) for _ in range(3))
    v, b, r = (torch.empty(batch, n, dtype=dtype) for _ in range(3))
    status = fn(
        batch, n_steps, n, n_delay, _p(fut), _p(w_all), _p(v0), _p(z0), _p(b0), _p(r0),
        _p(alpha), _p(rho), _p(beta), _p(thr), int(n_ref), float(dt),
        _p(z), _p(s), _p(a), _p(v), _p(b), _p(r),
    )  # fmt: skip
    _check(status, "alif_forward")
    return z, s, a, v, b, r


def alif_backward(g_z, z, s, a, dpsi, z0, r0, w_all, alpha, rho, beta, n_ref: int, dt: float, need_w: bool = True):
    """BPTT of :func:`alif_forward`. ``dpsi`` ``[T, B, N]`` is the surrogate derivative of ``s`` divided by
    ``dt`` (the refractory mask is applied here). Returns ``g_fut`` ``[B, T + D, N]`` and ``g_w``
    ``[N, D * N]`` (``None`` unless ``need_w``)."""
    dtype = z.dtype
    fn = _function("alif_backward", dtype)
    n_steps, batch, n = z.shape
    n_delay = w_all.shape[1] // n
    seq = (n_steps, batch, n)
    g_z, z, s, a, dpsi = (_arg(t, dtype, seq, name) for t, name in zip((g_z, z, s, a, dpsi), ("g_z", "z", "s", "a", "dpsi")))
    z0, r0 = _arg(z0, dtype, (batch, n), "z0"), _arg(r0, dtype, (batch, n), "r0")
    w_all = _arg(w_all, dtype, (n, n_delay * n), "w_all")
    alpha, rho, beta = (_arg(t, dtype, (n,), name) for t, name in zip((alpha, rho, beta), ("alpha", "rho", "beta")))
    g_fut = torch.empty(batch, n_steps + n_delay, n, dtype=dtype)
    g_w = torch.empty(n, n_delay * n, dtype=dtype) if need_w else None
    status = fn(
        batch, n_steps, n, n_delay, _p(g_z), _p(z), _p(s), _p(a), _p(dpsi), _p(z0), _p(r0), _p(w_all),
        _p(alpha), _p(rho), _p(beta), int(n_ref), float(dt), _p(g_fut), _p(g_w) if g_w is not None else None,
    )  # fmt: skip
    _check(status, "alif_backward")
    return g_fut, g_w


def _delayed_input_args(x, delay, n_delay: int, n: int):
    if x.dim() != 3:
        raise ValueError(f"x must have shape [T, B, n_in], got {tuple(x.shape)}")
    if int(n_delay) < 1:
        raise ValueError(f"n_delay must be at least 1, got {n_delay}")
    n_in = x.shape[2]
    if not isinstance(delay, torch.Tensor) or delay.device.type != "cpu" or delay.dtype.is_floating_point:
        raise ValueError("delay must be an integer CPU tensor [n_in, N]")
    if tuple(delay.shape) != (n_in, n):
        raise ValueError(f"delay must have shape {(n_in, n)}, got {tuple(delay.shape)}")
    return delay.to(torch.int64).contiguous()


def delayed_input_forward(x, w_in, delay, n_delay: int) -> torch.Tensor:
    """``fut[b, t + delay[i, j], j] += x[t, b, i] * w_in[i, j]``: the input current, batch-major
    ``[B, T + n_delay, N]``."""
    dtype = x.dtype
    fn = _function("delayed_input_forward", dtype)
    n_steps, batch, n_in = x.shape if x.dim() == 3 else (0, 0, 0)
    n = w_in.shape[-1]
    delay = _delayed_input_args(x, delay, n_delay, n)
    x = _arg(x, dtype, (n_steps, batch, n_in), "x")
    w_in = _arg(w_in, dtype, (n_in, n), "w_in")
    fut = torch.empty(batch, n_steps + int(n_delay), n, dtype=dtype)
    status = fn(n_steps, batch, n_in, n, int(n_delay), _p(x), _p(w_in), _p(delay), _p(fut))
    _check(status, "delayed_input_forward")
    return fut


def delayed_input_backward(x, g_fut, delay, n_delay: int) -> torch.Tensor:
    """Gradient of :func:`delayed_input_forward` with respect to ``w_in`` given ``g_fut`` ``[B, T + D, N]``."""
    dtype = x.dtype
    fn = _function("delayed_input_backward", dtype)
    n_steps, batch, n_in = x.shape if x.dim() == 3 else (0, 0, 0)
    n = g_fut.shape[-1]
    delay = _delayed_input_args(x, delay, n_delay, n)
    x = _arg(x, dtype, (n_steps, batch, n_in), "x")
    g_fut = _arg(g_fut, dtype, (batch, n_steps + int(n_delay), n), "g_fut")
    g_w = torch.empty(n_in, n, dtype=dtype)
    status = fn(n_steps, batch, n_in, n, int(n_delay), _p(x), _p(delay), _p(g_fut), _p(g_w))
    _check(status, "delayed_input_backward")
    return g_w


# -- autograd functions --------------------------------------------------------------------------------
class NativeALIF(torch.autograd.Function):
    """Same signature and outputs as ``alif_sequence._FusedALIF``:
    ``(external [T+D, B, N], w_all [N, D*N], v0, z0, b0, r0, pending0 [B, D, N], alpha, rho, beta, thr,
    n_ref, dt, surrogate) -> (z, v, a [T, B, N], v, z, b, r [B, N], pending [B, D, N])``; gradients
    reach ``external`` and ``w_all``."""

    @staticmethod
    def forward(ctx, external, w_all, v0, z0, b0_state, r0, pending0, alpha, rho, beta, thr, n_ref, dt, surrogate):
        n = external.shape[-1]
        n_delay = w_all.shape[1] // n
        n_steps, batch = external.shape[0] - n_delay, external.shape[1]
        fut = torch.empty(batch, n_steps + n_delay, n, dtype=external.dtype)
        fut.copy_(external.transpose(0, 1))
        fut[:, :n_delay] += pending0
        z_seq, s_seq, a_seq, v, b, r = alif_forward(fut, w_all, v0, z0, b0_state, r0, alpha, rho, beta, thr, n_ref, dt)
        pending = fut[:, n_steps:].clone()
        ctx.save_for_backward(w_all, z0, r0, z_seq, s_seq, a_seq, alpha, rho, beta)
        ctx.n_ref, ctx.dt, ctx.surrogate = int(n_ref), float(dt), surrogate
        # v(t) for t < T-1 is recoverable from the next step: v(t) = A(t+1) * (s(t+1) + 1).
        v_seq = torch.empty_like(z_seq)
        if n_steps > 0:
            torch.mul(a_seq[1:], s_seq[1:] + 1.0, out=v_seq[:-1])
            v_seq[-1] = v
        z_last = z_seq[-1].clone() if n_steps > 0 else z0.detach().clone()
        ctx.mark_non_differentiable(v_seq, a_seq, v, z_last, b, r, pending)
        return z_seq, v_seq, a_seq, v, z_last, b, r, pending

    @staticmethod
    def backward(ctx, g_z, *_unused):
        w_all, z0, r0, z_seq, s_seq, a_seq, alpha, rho, beta = ctx.saved_tensors
        if g_z is None:
            g_z = torch.zeros_like(z_seq)
        dpsi = ctx.surrogate.derivative(s_seq)
        if ctx.dt != 1.0:
            dpsi = dpsi / ctx.dt
        g_fut, g_w = alif_backward(
            g_z, z_seq, s_seq, a_seq, dpsi.to(z_seq.dtype), z0, r0, w_all, alpha, rho, beta,
            ctx.n_ref, ctx.dt, need_w=ctx.needs_input_grad[1],
        )  # fmt: skip
        g_current = g_fut.transpose(0, 1) if ctx.needs_input_grad[0] else None
        return (g_current, g_w) + (None,) * 12


class NativeDelayedInput(torch.autograd.Function):
    """``(x [T, B, n_in], w_in [n_in, N], delay [n_in, N] int, n_delay) -> current [T + D, B, N]``, the
    input with per-synapse delays (the dense ``RecurrentSpikingLayer.external_current``); a
    time-major view of a batch-major buffer. Gradient to ``w_in`` only (``x`` must not require grad)."""

    @staticmethod
    def forward(ctx, x, w_in, delay, n_delay):
        if ctx.needs_input_grad[0]:
            raise ValueError("NativeDelayedInput gives no gradient to x; use the dense path when x requires grad")
        fut = delayed_input_forward(x, w_in, delay, n_delay)
        ctx.save_for_backward(x, delay)
        ctx.n_delay = int(n_delay)
        return fut.transpose(0, 1)

    @staticmethod
    def backward(ctx, g_current):
        x, delay = ctx.saved_tensors
        g_w = None
        if ctx.needs_input_grad[1]:
            g_w = delayed_input_backward(x, g_current.transpose(0, 1), delay, ctx.n_delay)
        return None, g_w, None, None
