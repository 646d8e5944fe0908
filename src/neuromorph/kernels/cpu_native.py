"""Native CPU kernels: plain C loaded with ctypes: the recurrent ALIF / LIF layers (``_alif_cpu.c``)
and the DEEP R step (``_deep_r_cpu.c``, used by ``sparse/deep_r.py``; see that file).

The Python fused path (``alif_sequence._FusedALIF``) spends most of its time in per-op overhead of
tiny tensor ops and in a dense delayed-input matmul that is 90 % zeros. The C kernels run the same
loops with the same floating-point operations, event-driven over spikes:

``NativeALIF``
    Drop-in for ``_FusedALIF`` (same inputs and outputs): forward loop and BPTT in C. The surrogate
    pseudo-derivative is evaluated in Python, vectorised over the whole sequence, so that every
    :class:`~neuromorph.spikes.Surrogate` works; only the default :class:`~neuromorph.spikes.Triangle`
    is computed in C (the same operations). The refractory mask is rebuilt in C.
``NativeDelayedInput``
    ``(x [T, B, n_in], w_in [n_in, N], delay [n_in, N], n_delay) -> current [T + D, B, N]`` with
    ``current[t + delay[i, j], b, j] += x[t, b, i] * w_in[i, j]``. Gradient to ``w_in`` only: ``x``
    must not require grad (use the dense formulation then).

The library is built on first use with the system C compiler (``$CC`` or ``gcc``; about a second)
into ``${NEUROMORPH_CACHE:-~/.cache/neuromorph}/alif_cpu-<hash>.so``, the hash covering the sources,
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

from ..spikes import Triangle

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
    "NativeLIF",
]

# one library from every C source of the package: the ALIF/LIF kernels and the DEEP R step
_SOURCES = (Path(__file__).with_name("_alif_cpu.c"), Path(__file__).with_name("_deep_r_cpu.c"))
# IEEE results: no -ffast-math, no FP contraction (the source places its fma calls explicitly);
# -fno-math-errno / -fno-trapping-math (as torch's own build) only let loops with selects vectorise.
_COMMON_FLAGS = ("-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")
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
        cmd = [compiler, *_COMMON_FLAGS, *opt, *map(str, _SOURCES), "-o", str(tmp), "-lm"]
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
    for source in _SOURCES:
        if not source.is_file():
            raise RuntimeError(f"source {source} is missing")
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler found (gcc, cc or $CC)")
    key = hashlib.sha256()
    for part in (
        *(source.read_bytes() for source in _SOURCES),
        repr((compiler, _COMMON_FLAGS, _OPT_FLAGS)).encode(),
        _cpu_fingerprint().encode(),
    ):
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
    i64, u64, ptr, f64 = ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_double
    signatures = {
        # B, T, N, D, ext, ext_st, ext_sb, pending0, w_all, v0, z0, b0, r0, alpha, rho, beta, thr,
        # n_ref, dt, z, s, a, v_seq, v, b, r, pending
        "alif_forward": [i64] * 4 + [ptr, i64, i64] + [ptr] * 10 + [i64, f64] + [ptr] * 8,
        # B, T, N, D, g_z, z, s, a, dpsi, tri_gamma, tri_width, z0, r0, w_all, alpha, rho, beta,
        # n_ref, dt, g_fut, g_w
        "alif_backward": [i64] * 4 + [ptr] * 5 + [f64, f64] + [ptr] * 6 + [i64, f64] + [ptr] * 2,
        # B, T, N, cur, v0, z0, r0, alpha, oma, thr, n_ref, dt, z, s, spikes, v, z_last, r
        "lif_forward": [i64] * 3 + [ptr] * 7 + [i64, f64] + [ptr] * 6,
        # B, T, N, g_z, dpsi, s, tri_gamma, tri_width, alpha, oma, thr, dt, g_cur
        "lif_backward": [i64] * 3 + [ptr] * 3 + [f64, f64] + [ptr] * 3 + [f64, ptr],
        # T, B, n_in, N, D, x, w_in, delay, fut
        "delayed_input_forward": [i64] * 5 + [ptr] * 4,
        # T, B, n_in, N, D, x, delay, g_fut, g_st, g_sb, g_w_in
        "delayed_input_backward": [i64] * 5 + [ptr] * 3 + [i64, i64, ptr],
        # DEEP R (_deep_r_cpu.c): n_t, counts, grads, index, sign, out
        "deep_r_gather": [i64] + [ptr] * 5,
        # n_t, counts, theta, sign, index, weights, sgd, grads, lr, fma, noise_scale, l1_lr, seed, step,
        # kn, wn, fn, died
        "deep_r_post": [i64] + [ptr] * 5 + [i64, ptr, f64, i64, f64, f64, u64, u64] + [ptr] * 4,
        # n_died, died, n_t, counts, index, sign, theta, active, allowed, n_allowed, sign_tables,
        # weights, global, split_w, epsilon, seed, step, perm
        "deep_r_rewire": [i64, ptr, i64] + [ptr] * 9 + [i64, ptr, f64, u64, u64, ptr],
    }
    returns = {"deep_r_post": i64, "deep_r_rewire": i64}
    for name, args in signatures.items():
        for suffix in _SUFFIX.values():
            fn = getattr(lib, name + suffix)
            fn.argtypes = args
            fn.restype = returns.get(name, ctypes.c_int)
    # n, seed, step, kn, wn, fn, out
    lib.deep_r_normals.argtypes = [i64, u64, u64] + [ptr] * 4
    lib.deep_r_normals.restype = ctypes.c_int


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


def _args(dtype: torch.dtype, shape: tuple[int, ...], **tensors) -> list[torch.Tensor]:
    return [_arg(t, dtype, shape, name) for name, t in tensors.items()]


def _rows(t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, int, int], name: str) -> torch.Tensor:
    """Like :func:`_arg` but only the last dimension must be contiguous: the kernels take the other two
    strides, so that a transposed view needs no copy."""
    if (
        not isinstance(t, torch.Tensor)
        or t.device.type != "cpu"
        or t.dtype != dtype
        or tuple(t.shape) != shape
    ):
        return _arg(t, dtype, shape, name)
    return t.detach() if t.stride(-1) == 1 else t.detach().contiguous()


def alif_forward(external, pending0, w_all, v0, z0, b0, r0, alpha, rho, beta, thr, n_ref: int, dt: float):
    """Run the ALIF recurrence over ``external`` ``[T + D, B, N]`` (any strides) with the input already
    on its way ``pending0`` ``[B, D, N]``. ``w_all`` ``[N, D * N]``; per-neuron ``alpha, rho, beta, thr``.
    Returns ``z, s, a, v`` ``[T, B, N]`` (``v`` as ``_FusedALIF`` reports it: ``A(t+1) * (s(t+1) + 1)``
    but for the last step), the final ``v, b, r`` ``[B, N]`` and the pending input ``[B, D, N]``."""
    if external.dim() != 3:
        raise ValueError(f"external must have shape [T + D, B, N], got {tuple(external.shape)}")
    dtype = external.dtype
    fn = _function("alif_forward", dtype)
    length, batch, n = external.shape
    if w_all.dim() != 2 or w_all.shape[0] != n or w_all.shape[1] % n or w_all.shape[1] == 0:
        raise ValueError(f"w_all must have shape [N, D * N] with N = {n}, got {tuple(w_all.shape)}")
    n_delay = w_all.shape[1] // n
    n_steps = length - n_delay
    if n_steps < 0:
        raise ValueError(f"external has {length} steps, fewer than n_delay = {n_delay}")
    external = _rows(external, dtype, (length, batch, n), "external")
    pending0 = _arg(pending0, dtype, (batch, n_delay, n), "pending0")
    w_all = _arg(w_all, dtype, (n, n_delay * n), "w_all")
    v0, z0, b0, r0 = _args(dtype, (batch, n), v0=v0, z0=z0, b0=b0, r0=r0)
    alpha, rho, beta, thr = _args(dtype, (n,), alpha=alpha, rho=rho, beta=beta, thr=thr)
    z, s, a, v_seq = (torch.empty(n_steps, batch, n, dtype=dtype) for _ in range(4))
    v, b, r = (torch.empty(batch, n, dtype=dtype) for _ in range(3))
    pending = torch.empty(batch, n_delay, n, dtype=dtype)
    status = fn(
        batch, n_steps, n, n_delay, _p(external), external.stride(0), external.stride(1), _p(pending0),
        _p(w_all), _p(v0), _p(z0), _p(b0), _p(r0), _p(alpha), _p(rho), _p(beta), _p(thr),
        int(n_ref), float(dt), _p(z), _p(s), _p(a), _p(v_seq), _p(v), _p(b), _p(r), _p(pending),
    )  # fmt: skip
    _check(status, "alif_forward")
    return z, s, a, v_seq, v, b, r, pending


def alif_backward(
    g_z,
    z,
    s,
    a,
    dpsi,
    z0,
    r0,
    w_all,
    alpha,
    rho,
    beta,
    n_ref: int,
    dt: float,
    need_w: bool = True,
    triangle=None,
):
    """BPTT of :func:`alif_forward`. ``dpsi`` ``[T, B, N]`` is the surrogate derivative of ``s`` divided by
    ``dt`` (the refractory mask is applied here); or pass ``dpsi=None, triangle=(gamma, width)`` to have
    the :class:`~neuromorph.spikes.Triangle` derivative computed in the kernel (same operations).
    Returns ``g_fut`` ``[T + D, B, N]`` and ``g_w`` ``[N, D * N]`` (``None`` unless ``need_w``)."""
    dtype = z.dtype
    fn = _function("alif_backward", dtype)
    n_steps, batch, n = z.shape
    n_delay = w_all.shape[1] // n
    seq = (n_steps, batch, n)
    g_z, z, s, a = _args(dtype, seq, g_z=g_z, z=z, s=s, a=a)
    if dpsi is not None:
        dpsi, (gamma, width) = _arg(dpsi, dtype, seq, "dpsi"), (0.0, 1.0)
    elif triangle is not None:
        gamma, width = (float(v) for v in triangle)
    else:
        raise ValueError("pass dpsi or triangle=(gamma, width)")
    z0, r0 = _args(dtype, (batch, n), z0=z0, r0=r0)
    w_all = _arg(w_all, dtype, (n, n_delay * n), "w_all")
    alpha, rho, beta = _args(dtype, (n,), alpha=alpha, rho=rho, beta=beta)
    g_fut = torch.empty(n_steps + n_delay, batch, n, dtype=dtype)
    g_w = torch.empty(n, n_delay * n, dtype=dtype) if need_w else None
    status = fn(
        batch, n_steps, n, n_delay, _p(g_z), _p(z), _p(s), _p(a), _p(dpsi) if dpsi is not None else None,
        gamma, width, _p(z0), _p(r0), _p(w_all), _p(alpha), _p(rho), _p(beta), int(n_ref), float(dt),
        _p(g_fut), _p(g_w) if g_w is not None else None,
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
    """``current[t + delay[i, j], b, j] += x[t, b, i] * w_in[i, j]``: the input current
    ``[T + n_delay, B, N]``."""
    dtype = x.dtype
    fn = _function("delayed_input_forward", dtype)
    n_steps, batch, n_in = x.shape if x.dim() == 3 else (0, 0, 0)
    n = w_in.shape[-1]
    delay = _delayed_input_args(x, delay, n_delay, n)
    x = _arg(x, dtype, (n_steps, batch, n_in), "x")
    w_in = _arg(w_in, dtype, (n_in, n), "w_in")
    current = torch.empty(n_steps + int(n_delay), batch, n, dtype=dtype)
    status = fn(n_steps, batch, n_in, n, int(n_delay), _p(x), _p(w_in), _p(delay), _p(current))
    _check(status, "delayed_input_forward")
    return current


def delayed_input_backward(x, g_current, delay, n_delay: int) -> torch.Tensor:
    """Gradient of :func:`delayed_input_forward` with respect to ``w_in`` given ``g_current``
    ``[T + D, B, N]`` (any strides)."""
    dtype = x.dtype
    fn = _function("delayed_input_backward", dtype)
    n_steps, batch, n_in = x.shape if x.dim() == 3 else (0, 0, 0)
    n = g_current.shape[-1]
    delay = _delayed_input_args(x, delay, n_delay, n)
    x = _arg(x, dtype, (n_steps, batch, n_in), "x")
    g = _rows(g_current, dtype, (n_steps + int(n_delay), batch, n), "g_current")
    g_w = torch.empty(n_in, n, dtype=dtype)
    status = fn(
        n_steps, batch, n_in, n, int(n_delay), _p(x), _p(delay), _p(g), g.stride(0), g.stride(1), _p(g_w)
    )
    _check(status, "delayed_input_backward")
    return g_w


# -- autograd functions --------------------------------------------------------------------------------
class NativeALIF(torch.autograd.Function):
    """Same signature and outputs as ``alif_sequence._FusedALIF``:
    ``(external [T+D, B, N], w_all [N, D*N], v0, z0, b0, r0, pending0 [B, D, N], alpha, rho, beta, thr,
    n_ref, dt, surrogate) -> (z, v, a [T, B, N], v, z, b, r [B, N], pending [B, D, N])``; gradients
    reach ``external`` and ``w_all``."""

    @staticmethod
    def forward(
        ctx, external, w_all, v0, z0, b0_state, r0, pending0, alpha, rho, beta, thr, n_ref, dt, surrogate
    ):
        n = external.shape[-1]
        n_delay = w_all.shape[1] // n
        n_steps = external.shape[0] - n_delay
        z_seq, s_seq, a_seq, v_seq, v, b, r, pending = alif_forward(
            external, pending0, w_all, v0, z0, b0_state, r0, alpha, rho, beta, thr, n_ref, dt
        )
        ctx.save_for_backward(w_all, z0, r0, z_seq, s_seq, a_seq, alpha, rho, beta)
        ctx.n_ref, ctx.dt, ctx.surrogate = int(n_ref), float(dt), surrogate
        z_last = z_seq[-1].clone() if n_steps > 0 else z0.detach().clone()
        ctx.mark_non_differentiable(v_seq, a_seq, v, z_last, b, r, pending)
        return z_seq, v_seq, a_seq, v, z_last, b, r, pending

    @staticmethod
    def backward(ctx, g_z, *_unused):
        w_all, z0, r0, z_seq, s_seq, a_seq, alpha, rho, beta = ctx.saved_tensors
        if g_z is None:
            g_z = torch.zeros_like(z_seq)
        surrogate, dpsi, triangle = ctx.surrogate, None, None
        if type(surrogate) is Triangle:  # same operations, without five [T, B, N] temporaries
            triangle = (surrogate.gamma, surrogate.width)
        else:
            dpsi = surrogate.derivative(s_seq)
            if ctx.dt != 1.0:
                dpsi = dpsi / ctx.dt
            dpsi = dpsi.to(z_seq.dtype)
        g_fut, g_w = alif_backward(
            g_z, z_seq, s_seq, a_seq, dpsi, z0, r0, w_all, alpha, rho, beta, ctx.n_ref, ctx.dt,
            need_w=ctx.needs_input_grad[1], triangle=triangle,
        )  # fmt: skip
        return (g_fut if ctx.needs_input_grad[0] else None, g_w) + (None,) * 12


class NativeDelayedInput(torch.autograd.Function):
    """``(x [T, B, n_in], w_in [n_in, N], delay [n_in, N] int, n_delay) -> current [T + D, B, N]``, the
    input with per-synapse delays (the dense ``RecurrentSpikingLayer.external_current``). Gradient to
    ``w_in`` only (``x`` must not require grad)."""

    @staticmethod
    def forward(ctx, x, w_in, delay, n_delay):
        if ctx.needs_input_grad[0]:
            raise ValueError(
                "NativeDelayedInput gives x no gradient; use the dense path when x requires grad"
            )
        current = delayed_input_forward(x, w_in, delay, n_delay)
        ctx.save_for_backward(x, delay)
        ctx.n_delay = int(n_delay)
        return current

    @staticmethod
    def backward(ctx, g_current):
        x, delay = ctx.saved_tensors
        g_w = None
        if ctx.needs_input_grad[1]:
            g_w = delayed_input_backward(x, g_current, delay, ctx.n_delay)
        return None, g_w, None, None


def lif_forward(current, v0, z0, r0, alpha, one_minus_alpha, thr, n_ref: int, dt: float):
    """The feed-forward LIF loop of ``lif_sequence._FusedLIF`` in C: ``current`` ``[T, B, N]``, state
    ``[B, N]``, per-neuron constants ``[N]``. Returns ``z, s`` ``[T, B, N]``, the spikes as ``bool`` and the
    final ``v, z, r``."""
    dtype = current.dtype
    fn = _function("lif_forward", dtype)
    n_steps, batch, n = current.shape
    current = _arg(current, dtype, (n_steps, batch, n), "current")
    v0, z0, r0 = _args(dtype, (batch, n), v0=v0, z0=z0, r0=r0)
    alpha, oma, thr = _args(dtype, (n,), alpha=alpha, one_minus_alpha=one_minus_alpha, thr=thr)
    z, s = torch.empty_like(current), torch.empty_like(current)
    spikes = torch.empty(current.shape, dtype=torch.bool)
    v, z_last, r = (torch.empty(batch, n, dtype=dtype) for _ in range(3))
    status = fn(
        batch, n_steps, n, _p(current), _p(v0), _p(z0), _p(r0), _p(alpha), _p(oma), _p(thr), int(n_ref),
        float(dt), _p(z), _p(s), _p(spikes), _p(v), _p(z_last), _p(r),
    )  # fmt: skip
    _check(status, "lif_forward")
    return z, s, spikes, v, z_last, r


def lif_backward(g_z, dpsi, s, alpha, one_minus_alpha, thr, dt: float, triangle=None) -> torch.Tensor:
    """BPTT of :func:`lif_forward`: ``dL/dI`` ``[T, B, N]`` from ``dL/dz`` and ``dpsi`` (the masked
    pseudo-derivative over ``dt``); or ``dpsi=None, triangle=(gamma, width)`` to evaluate the
    :class:`~neuromorph.spikes.Triangle` derivative of ``s`` in the kernel (no refractory mask)."""
    dtype = s.dtype
    fn = _function("lif_backward", dtype)
    shape = tuple(s.shape)
    g_z, s = _args(dtype, shape, g_z=g_z, s=s)
    if dpsi is not None:
        dpsi, (gamma, width) = _arg(dpsi, dtype, shape, "dpsi"), (0.0, 1.0)
    elif triangle is not None:
        gamma, width = (float(v) for v in triangle)
    else:
        raise ValueError("pass dpsi or triangle=(gamma, width)")
    alpha, oma, thr = _args(dtype, (shape[2],), alpha=alpha, one_minus_alpha=one_minus_alpha, thr=thr)
    g_cur = torch.empty(shape, dtype=dtype)
    status = fn(
        shape[1], shape[0], shape[2], _p(g_z), _p(dpsi) if dpsi is not None else None, _p(s), gamma, width,
        _p(alpha), _p(oma), _p(thr), float(dt), _p(g_cur),
    )  # fmt: skip
    _check(status, "lif_backward")
    return g_cur


class NativeLIF(torch.autograd.Function):
    """Same signature and outputs as ``lif_sequence._FusedLIF``, the loops in C."""

    @staticmethod
    def forward(ctx, current, v0, z0, r0, alpha, one_minus_alpha, thr, n_ref, dt, surrogate):
        z, s, spikes, v, z_last, r = lif_forward(current, v0, z0, r0, alpha, one_minus_alpha, thr, n_ref, dt)
        ctx.save_for_backward(spikes, s, r0, alpha, one_minus_alpha, thr)
        ctx.n_ref, ctx.dt, ctx.surrogate = int(n_ref), float(dt), surrogate
        ctx.mark_non_differentiable(v, z_last, r)
        return z, v, z_last, r

    @staticmethod
    def backward(ctx, g_z, *_unused):
        from .lif_sequence import _dpsi

        spikes, s, r0, alpha, one_minus_alpha, thr = ctx.saved_tensors
        if g_z is None:
            return (None,) * 10
        if type(ctx.surrogate) is Triangle and ctx.n_ref == 0:  # in the kernel: no [T, B, N] temporaries
            dpsi, triangle = None, (ctx.surrogate.gamma, ctx.surrogate.width)
        else:
            dpsi, triangle = _dpsi(ctx.surrogate, s, spikes, r0, ctx.n_ref, ctx.dt), None
        g_cur = lif_backward(g_z, dpsi, s, alpha, one_minus_alpha, thr, ctx.dt, triangle=triangle)
        return (g_cur,) + (None,) * 9


# -- the DEEP R step (_deep_r_cpu.c; sparse/deep_r.py calls these on numpy arrays) ------------------------
def deep_r_function(name: str, dtype: torch.dtype):
    """The ctypes function ``name`` (``deep_r_gather``, ``deep_r_post``, ``deep_r_rewire``) for
    ``dtype``; arguments are addresses of C-contiguous arrays (see ``_deep_r_cpu.c``)."""
    return _function(name, dtype)


def deep_r_normals(n: int, seed: int, step: int, kn, wn, fn, out) -> int:
    """``n`` standard normals of DEEP R's step (seed, step) into the float64 array ``out``; 0 on success."""
    lib = _load() if not _disabled() else None
    if lib is None:
        raise RuntimeError(f"native CPU kernels unavailable: {unavailable_reason()}")
    if out.dtype.itemsize != 8 or out.size < n or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous float64 array of at least {n} entries")
    return lib.deep_r_normals(n, seed, step, kn.ctypes.data, wn.ctypes.data, fn.ctypes.data, out.ctypes.data)
