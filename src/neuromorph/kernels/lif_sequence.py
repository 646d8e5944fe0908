"""A feed-forward LIF population over a whole sequence: eager reference and hand-written BPTT.

The neuron is the LSNN-official LIF (``neurons/lif.py``) driven by a given current ``I`` ``[T, B, N]``
(a feed-forward layer computes it for all steps at once, ``I = x @ W``); with ``alpha = exp(-dt/tau)``:

    s(t) = (v(t-1) - thr) / thr
    z(t) = H(s(t)) * m(t) / dt                      m(t) = 0 while refractory
    v(t) = alpha * v(t-1) + (1 - alpha) * I(t) - thr * z(t-1) * dt

Implementations with the same numerics (same floating-point operations, so the same spikes):

``reference``
    The per-step loop over :func:`neuromorph.neurons.lif.lif_step` under autograd; gradients reach
    everything, including the initial state and the parameters.
``fused``
    One autograd node for the sequence: the forward loop runs without autograd and keeps only the
    scaled voltages ``s(t)`` (float) and the spikes (``bool``, a quarter of a float); the backward is the
    hand-derived BPTT below, each step a few element-wise ops. Works on every device.
``native``
    The fused loops in C (``cpu_native.NativeLIF``, built on first use): CPU, float32/float64; the
    same operations, hence the same spikes, at a fraction of the per-op overhead. ``auto`` prefers it
    on CPU.
``triton``
    The same forward and backward as two Triton kernels fused over time (``kernels/triton_lif.py``):
    one launch per direction for the whole sequence. CUDA tensors (or any device under
    ``TRITON_INTERPRET=1``, which the tests use on CPU).

BPTT (adjoints ``g``; ``psi`` the pseudo-derivative; ``gv(t) = dL/dv(t)``, ``gv(T-1) = 0`` because the
returned final state is detached, as in the recurrent kernel):

    gv(t)  = alpha * gv(t+1) + gs(t+1) / thr
    gz(t)  = dL/dz(t) - thr * dt * gv(t+1)
    gs(t)  = gz(t) * m(t) * psi(s(t)) / dt
    dL/dI(t) = (1 - alpha) * gv(t)
"""

from __future__ import annotations

import math

import torch

from ..neurons.lif import LIFParameters, LIFState, lif_step
from . import cpu_native
from .alif_sequence import _not_refractory

__all__ = [
    "LIF_IMPLEMENTATIONS",
    "lif_sequence",
    "lif_sequence_reference",
    "lif_sequence_fused",
    "lif_sequence_native",
    "lif_sequence_triton",
]

LIF_IMPLEMENTATIONS = ("auto", "reference", "fused", "native", "triton")


def _per_neuron(value, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    n = like.shape[-1]
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, n)):
        raise ValueError(
            f"{name} must be a number or have {n} entries (one per neuron), got {tuple(t.shape)}"
        )
    return t.expand(n).contiguous()


def lif_constants(p: LIFParameters, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-neuron ``alpha``, ``1 - alpha`` and ``thr`` computed with the operations of ``lif_step``."""
    if isinstance(p.tau_mem, torch.Tensor):
        alpha = _per_neuron(torch.exp(-p.dt / p.tau_mem.to(like.device, like.dtype)), like, "tau_mem")
        one_minus_alpha = 1.0 - alpha
    else:  # lif_step works in Python floats here: round 1 - alpha once, as its scalar product does
        alpha_f = math.exp(-p.dt / p.tau_mem)
        alpha, one_minus_alpha = (_per_neuron(x, like, "tau_mem") for x in (alpha_f, 1.0 - alpha_f))
    return alpha, one_minus_alpha, _per_neuron(p.threshold, like, "threshold")


def lif_sequence_reference(
    current: torch.Tensor, state: LIFState, p: LIFParameters
) -> tuple[torch.Tensor, LIFState]:
    """Eager reference: ``current`` ``[T, B, N]`` through ``lif_step``; returns ``(z [T, B, N], state)``."""
    zs = []
    for i_t in current.unbind(0):
        z, state = lif_step(i_t, state, p)
        zs.append(z)
    return torch.stack(zs), state


class _FusedLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, v0, z0, r0, alpha, one_minus_alpha, thr, n_ref, dt, surrogate):
        n_steps = current.shape[0]
        z_seq = torch.empty_like(current)
        s_seq = torch.empty_like(current)
        spikes = torch.empty(current.shape, dtype=torch.bool, device=current.device)
        scaled = current * one_minus_alpha  # (1 - alpha) * I(t), the same product as lif_step's
        v, r, z_prev = v0.clone(), r0.clone(), z0
        thr_dt = thr * dt if dt != 1.0 else thr
        decay = torch.empty_like(v)
        for t in range(n_steps):
            s_t, z_t, k_t = s_seq[t], z_seq[t], spikes[t]
            torch.sub(v, thr, out=s_t).div_(thr)
            torch.gt(s_t, 0, out=k_t)
            if n_ref > 0:
                k_t.logical_and_(r == 0)
                r.sub_(1).clamp_(min=0).masked_fill_(k_t, float(n_ref))
            z_t.copy_(k_t)
            if dt != 1.0:
                z_t.div_(dt)
            # v = alpha * v + (1 - alpha) * I - (thr * z_prev) * dt, in lif_step's order of operations
            torch.mul(alpha, v, out=decay)
            torch.add(decay, scaled[t], out=v)
            if dt != 1.0:
                v.sub_(thr * z_prev * dt)
            else:
                v.sub_(thr_dt * z_prev)
            z_prev = z_t
        ctx.save_for_backward(spikes, s_seq, r0, alpha, thr)
        ctx.n_ref, ctx.dt, ctx.surrogate = int(n_ref), float(dt), surrogate
        z_last = z_prev.clone() if n_steps else z0.clone()
        ctx.mark_non_differentiable(v, z_last, r)
        return z_seq, v, z_last, r

    @staticmethod
    def backward(ctx, g_z, *_unused):
        spikes, s_seq, r0, alpha, thr = ctx.saved_tensors
        dt, n_ref = ctx.dt, ctx.n_ref
        if g_z is None:
            return (None,) * 10
        dpsi = _dpsi(ctx.surrogate, s_seq, spikes, r0, n_ref, dt)
        return (_lif_backward_loop(g_z, dpsi, alpha, thr, dt),) + (None,) * 9


def _dpsi(surrogate, s_seq, spikes, r0, n_ref: int, dt: float) -> torch.Tensor:
    """``m(t) * psi(s(t)) / dt`` for the whole sequence, vectorised."""
    dpsi = surrogate.derivative(s_seq).to(s_seq.dtype)
    if dt != 1.0:
        dpsi = dpsi / dt
    if n_ref > 0:
        dpsi = dpsi * _not_refractory(spikes.to(s_seq.dtype), r0, n_ref)
    return dpsi


def _lif_backward_loop(g_z, dpsi, alpha, thr, dt: float) -> torch.Tensor:
    n_steps = dpsi.shape[0]
    g_current = torch.empty_like(dpsi)
    one_minus_alpha = 1.0 - alpha
    inv_thr = thr.reciprocal()
    neg_thr_dt = -thr * dt
    gv = torch.zeros_like(dpsi[0])
    gs = torch.zeros_like(gv)
    for t in range(n_steps - 1, -1, -1):
        # gz(t) uses gv(t+1) (still in gv), then gv becomes gv(t) = alpha gv(t+1) + gs(t+1) / thr
        gz = torch.addcmul(g_z[t], gv, neg_thr_dt)
        gv.mul_(alpha).addcmul_(gs, inv_thr)
        torch.mul(gz, dpsi[t], out=gs)
        torch.mul(gv, one_minus_alpha, out=g_current[t])
    return g_current


def _check(current: torch.Tensor, state: LIFState) -> None:
    if not isinstance(current, torch.Tensor) or current.dim() != 3:
        shape = tuple(current.shape) if isinstance(current, torch.Tensor) else type(current).__name__
        raise ValueError(f"current must be a tensor [T, B, N], got {shape}")
    if current.shape[0] == 0:
        raise ValueError(f"current must have at least one time step, got shape {tuple(current.shape)}")
    if not current.is_floating_point():
        raise ValueError(f"current must be floating point, got dtype {current.dtype}")
    want = tuple(current.shape[1:])
    for name, t in zip(LIFState._fields, state, strict=True):
        if tuple(t.shape) != want:
            raise ValueError(
                f"state.{name} must have shape {want} ([B, N] of the current), got {tuple(t.shape)}"
            )
        if t.device != current.device or t.dtype != current.dtype:
            raise ValueError(
                f"state.{name} is {t.dtype} on {t.device} but the current is {current.dtype} on "
                f"{current.device}; move the state with .to()"
            )


def _apply(
    function, current: torch.Tensor, state: LIFState, p: LIFParameters
) -> tuple[torch.Tensor, LIFState]:
    alpha, one_minus_alpha, thr = lif_constants(p, current)
    z, v, z_last, r = function.apply(
        current.contiguous(),
        *(t.detach() for t in state),
        alpha,
        one_minus_alpha,
        thr,
        int(p.n_refractory),
        float(p.dt),
        p.surrogate,
    )
    return z, LIFState(v=v, z=z_last, refractory=r)


def lif_sequence_fused(
    current: torch.Tensor, state: LIFState, p: LIFParameters
) -> tuple[torch.Tensor, LIFState]:
    """Hand-written BPTT (module docstring): same arguments, spikes and gradients (to the current) as
    the reference; the initial state and the parameters are constants."""
    _check(current, state)
    return _apply(_FusedLIF, current, state, p)


def _native_ok(current: torch.Tensor) -> bool:
    return current.device.type == "cpu" and current.dtype in (torch.float32, torch.float64)


def lif_sequence_native(
    current: torch.Tensor, state: LIFState, p: LIFParameters
) -> tuple[torch.Tensor, LIFState]:
    """The fused algorithm in C (``cpu_native.NativeLIF``): CPU float32/float64 only."""
    _check(current, state)
    if not cpu_native.available():
        raise RuntimeError(f"native CPU kernels unavailable: {cpu_native.unavailable_reason()}")
    if not _native_ok(current):
        raise ValueError(
            f"impl='native' needs a float32/float64 CPU current, got {current.dtype} on {current.device}"
        )
    return _apply(cpu_native.NativeLIF, current, state, p)


def lif_sequence_triton(
    current: torch.Tensor, state: LIFState, p: LIFParameters
) -> tuple[torch.Tensor, LIFState]:
    """The fused algorithm as Triton kernels (``kernels/triton_lif.py``)."""
    from . import triton_lif

    _check(current, state)
    if not triton_lif.usable(current):
        raise RuntimeError(f"impl='triton' is unavailable here: {triton_lif.unavailable_reason(current)}")
    return _apply(triton_lif.TritonLIF, current, state, p)


def _needs_reference(state: LIFState, p: LIFParameters) -> bool:
    return any(t.requires_grad for t in state) or any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in (p.tau_mem, p.threshold)
    )


def lif_sequence(
    current: torch.Tensor, state: LIFState, p: LIFParameters, impl: str = "auto"
) -> tuple[torch.Tensor, LIFState]:
    """Run a LIF population over ``current`` ``[T, B, N]`` from ``state``; returns ``(z, final state)``.

    ``impl="auto"`` takes the reference when gradients must reach the initial state or the parameters;
    else the native C loops on CPU (when they could be built), Triton on CUDA (when installed), else
    the fused path. The final state of a fast path is
    detached (truncated BPTT at call boundaries)."""
    if impl not in LIF_IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {LIF_IMPLEMENTATIONS}, got {impl!r}")
    _check(current, state)
    if impl == "reference" or (impl == "auto" and _needs_reference(state, p)):
        return lif_sequence_reference(current, state, p)
    if impl == "triton":
        return lif_sequence_triton(current, state, p)
    if impl == "native" or (impl == "auto" and _native_ok(current) and cpu_native.available()):
        return lif_sequence_native(current, state, p)
    if impl == "auto" and current.is_cuda:
        from . import triton_lif

        if triton_lif.usable(current):
            return _apply(triton_lif.TritonLIF, current, state, p)
    return _apply(_FusedLIF, current, state, p)
