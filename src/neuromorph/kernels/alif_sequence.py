"""A recurrent ALIF population over a whole sequence: eager reference and hand-written BPTT.

The recurrence is the LSNN-official ALIF cell (``neurons/alif.py``) with integer synaptic delays kept,
as in IGITUGraz/LSNN-official, in a buffer of *future* input currents: at step ``t`` the spikes
``z(t-1)`` add ``W_d^T z(t-1)`` to the current of step ``t + d`` for every delay ``d < D``; then
``I(t)`` is read from the buffer and the neuron steps.

    pending(t + d) += W_rec[d]^T z(t-1)      d = 0 .. D-1
    I(t) = external(t) + pending(t)
    (z(t), state(t)) = alif_step(I(t), state(t-1))

Implementations with the same numerics:

``reference``
    A literal per-step loop over :func:`neuromorph.neurons.alif.alif_step` under autograd. Slow
    (autograd records ~20 small ops per step) but obviously right; gradients reach everything,
    including the initial state.
``fused``
    One autograd node for the whole sequence. The forward loop runs without autograd and keeps only
    what the backward needs (scaled voltage ``s(t)``, threshold ``A(t)``, spikes); the backward is the
    hand-derived BPTT below. About 5x faster on CPU for LSNN-sized layers. Gradients flow to the
    external current, the recurrent weights and the initial state (``v``, ``z``, ``b``, pending input),
    and from the spikes and the final state (``v``, ``z``, ``b``, pending), so sequences can be split
    into chunks (``checkpoint_every``) without cutting BPTT; the neuron parameters are constants
    (``auto`` takes ``reference`` when one requires grad).
``triton``
    The fused algorithm with each step's element-wise work as one Triton kernel around the recurrent
    ``addmm`` (``triton_alif.py``); ``auto`` takes it on CUDA.
``native``
    The fused algorithm in plain C (``cpu_native.py``, built on first use), event-driven over spikes,
    about 5x faster than ``fused`` at the store-recall size; differentiates the spikes only (the
    initial and final states are constants, ``auto`` takes ``fused`` when a state requires grad).
    CPU only; the same floating-point operations as ``fused`` (up to the order in which MKL sums
    several spikes reaching one current; the store-recall float32 spikes are bit-identical). ``auto``
    prefers it on CPU.

Backward of the fused path (adjoints ``g``; ``psi`` the pseudo-derivative, ``m`` the not-refractory
mask, ``s(t) = (v(t-1) - A(t)) / A(t)``):

    gz(t)    = dL/dz(t) + [from steps > t, accumulated below; at t = -1 the gradient of z(-1)]
    gs       = gz(t) * m(t) * psi(s(t)) / dt
    gA       = gs * (-(s(t) + 1) / A(t)) - gv(t) * z(t-1) * dt
    gb(t)    = rho * gb(t+1) + beta * gA
    gI(t)    = (1 - alpha) * gv(t)
    gz(t-1) += -A(t) * dt * gv(t) + (1 - rho) * gb(t) + sum_d W_d gI(t + d)
    gv(t-1)  = alpha * gv(t) + gs / A(t)
    dL/dW_d  = sum_t z(t-1)^T gI(t + d)
    dL/dv(-1) = gv(-1),  dL/db(-1) = gb(-1),  dL/dpending[d] = gI(d)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..neurons.alif import ALIFParameters, ALIFState, adaptive_threshold, alif_step
from . import cpu_native

__all__ = [
    "CheckpointedResult",
    "SequenceResult",
    "alif_sequence_checkpointed",
    "alif_sequence",
    "alif_sequence_reference",
    "alif_sequence_fused",
    "alif_sequence_native",
    "alif_sequence_triton",
]


class SequenceResult(NamedTuple):
    """Spikes ``z``, voltages ``v`` and adaptive thresholds ``a``, each ``[T, B, N]``; the final
    neuron state; the pending future currents ``[B, D, N]`` (input to the next chunk)."""

    z: torch.Tensor
    v: torch.Tensor
    a: torch.Tensor
    state: ALIFState
    pending: torch.Tensor


def _decays(p: ALIFParameters, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tau_mem = torch.as_tensor(p.tau_mem, dtype=like.dtype, device=like.device)
    tau_adapt = torch.as_tensor(p.tau_adapt, dtype=like.dtype, device=like.device)
    return torch.exp(-p.dt / tau_mem), torch.exp(-p.dt / tau_adapt)


def alif_sequence_reference(
    external: torch.Tensor,
    w_rec: torch.Tensor,
    state: ALIFState,
    pending: torch.Tensor,
    p: ALIFParameters,
) -> SequenceResult:
    """Eager reference. ``external`` ``[T + D, B, N]``: the external (input) current reaching each
    step, delays already resolved, its last ``D`` rows spilling past the chunk; ``w_rec`` ``[D, N, N]``
    (pre x post per delay); ``pending`` ``[B, D, N]`` future currents carried from the last chunk."""
    n_delay = w_rec.shape[0]
    n_steps, n = external.shape[0] - n_delay, external.shape[-1]
    w_all = w_rec.permute(1, 0, 2).reshape(n, n_delay * n)  # [pre, D*post]
    buffer = pending
    zs, vs, as_ = [], [], []
    for current in external[:n_steps].unbind(0):
        buffer = buffer + (state.z @ w_all).view(-1, n_delay, n)
        buffer = torch.cat([buffer[:, :1] + current.unsqueeze(1), buffer[:, 1:]], dim=1)
        z, new_state = alif_step(buffer[:, 0], state, p)
        as_.append(adaptive_threshold(new_state.b, p))
        buffer = torch.cat([buffer[:, 1:], torch.zeros_like(buffer[:, :1])], dim=1)
        state = new_state
        zs.append(z)
        vs.append(state.v)
    buffer = buffer + external[n_steps:].transpose(0, 1)
    return SequenceResult(torch.stack(zs), torch.stack(vs), torch.stack(as_), state, buffer)


class _Constants(NamedTuple):
    """Per-neuron constants of one run ``[N]`` and the scalar settings."""

    alpha: torch.Tensor
    one_minus_alpha: torch.Tensor
    rho: torch.Tensor
    one_minus_rho: torch.Tensor
    beta: torch.Tensor
    thr: torch.Tensor
    n_ref: int
    dt: float


class TorchSteps:
    """The element-wise work of one step of ``_FusedALIF``, as torch ops (any device). The Triton path
    (``kernels/triton_alif.py``) swaps in one kernel launch per step for each method."""

    @staticmethod
    def forward(cur_t, z_prev, v, b, r, k: _Constants, z_t, s_t, a_t) -> None:
        """b = lerp(b, z_prev, 1 - rho); A = thr + beta b; s = (v - A) / A; z = H(s) (0 while r > 0) / dt;
        r = n_ref on a spike else max(r - 1, 0); v = lerp(v, I, 1 - alpha) - dt A z_prev (in place)."""
        b.lerp_(z_prev, k.one_minus_rho)
        torch.addcmul(k.thr, k.beta, b, out=a_t)
        torch.sub(v, a_t, out=s_t).div_(a_t)
        if k.n_ref > 0:
            torch.add(s_t, r, alpha=-1e30, out=z_t).gt_(0)  # no spike while r > 0
            r.sub_(1).clamp_(min=0).lerp_(torch.full_like(r, float(k.n_ref)), z_t)
        else:
            z_t.copy_(s_t).gt_(0)
        if k.dt != 1.0:
            z_t.div_(k.dt)
        v.lerp_(cur_t, k.one_minus_alpha).addcmul_(a_t, z_prev, value=-k.dt)

    @staticmethod
    def backward(g_z_t, carry, dpsi_t, s_t, a_t, z_prev, gv, gb, g_cur_t, g_prev, k: _Constants) -> None:
        """One adjoint step (module docstring) in place: reads ``carry`` (dL/dz(t) from later steps),
        writes ``g_cur_t`` = dL/dI(t) and, unless ``g_prev`` is None, the local part of dL/dz(t-1)
        into it (the recurrent part is one matrix product the caller adds); updates gv, gb."""
        g_s = torch.add(g_z_t, carry).mul_(dpsi_t)
        inv_a = a_t.reciprocal()
        g_a = torch.mul(g_s, (s_t + 1.0).mul_(inv_a).neg_()).addcmul_(gv, z_prev, value=-k.dt)
        gb.addcmul_(g_a, k.beta)
        torch.mul(gv, k.one_minus_alpha, out=g_cur_t)
        if g_prev is not None:
            torch.mul(gv, a_t, out=g_prev).mul_(-k.dt).addcmul_(gb, k.one_minus_rho)
        gv.mul_(k.alpha).addcmul_(g_s, inv_a)
        gb.mul_(k.rho)


class _FusedALIF(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        external,
        w_all,
        v0,
        z0,
        b0_state,
        r0,
        pending0,
        alpha,
        rho,
        beta,
        thr,
        n_ref,
        dt,
        surrogate,
        steps,
    ):
        n = external.shape[-1]
        n_delay = w_all.shape[1] // n
        n_steps, batch = external.shape[0] - n_delay, external.shape[1]
        dev, dt_ = external.device, external.dtype
        # Future-current buffer laid out [B, T + D, N] so that the D slots a spike reaches form one
        # strided [B, D*N] matrix: the recurrent input of a step is a single in-place addmm.
        fut = torch.zeros(batch, n_steps + n_delay, n, device=dev, dtype=dt_)
        fut.copy_(external.transpose(0, 1))
        fut[:, :n_delay] += pending0
        fut_flat = fut.view(batch, (n_steps + n_delay) * n)
        z_seq = torch.empty(n_steps, batch, n, device=dev, dtype=dt_)
        s_seq = torch.empty_like(z_seq)
        a_seq = torch.empty_like(z_seq)
        v, b, r = v0.detach().clone(), b0_state.detach().clone(), r0.clone()
        k = _Constants(alpha, 1.0 - alpha, rho, 1.0 - rho, beta, thr, int(n_ref), float(dt))
        z_prev = z0.detach()
        for t in range(n_steps):
            fut_flat[:, t * n : (t + n_delay) * n].addmm_(z_prev, w_all)
            steps.forward(fut[:, t], z_prev, v, b, r, k, z_seq[t], s_seq[t], a_seq[t])
            z_prev = z_seq[t]
        pending = fut[:, n_steps:].clone()
        ctx.save_for_backward(w_all, z0, r0, z_seq, s_seq, a_seq)
        ctx.constants, ctx.surrogate, ctx.n_delay, ctx.steps = k, surrogate, n_delay, steps
        # v(t) for t < T-1 is recoverable from the next step: v(t) = A(t+1) * (s(t+1) + 1).
        v_seq = torch.empty_like(z_seq)
        v_seq[:-1] = a_seq[1:] * (s_seq[1:] + 1.0)
        v_seq[-1] = v
        z_last = z_prev.clone()
        ctx.mark_non_differentiable(v_seq, a_seq, r)
        return z_seq, v_seq, a_seq, v, z_last, b, r, pending

    @staticmethod
    def backward(ctx, g_z, _g_v_seq, _g_a_seq, g_v_last, g_z_last, g_b_last, _g_r, g_pending_out):
        w_all, z0, r0, z_seq, s_seq, a_seq = ctx.saved_tensors
        k, n_delay, steps = ctx.constants, ctx.n_delay, ctx.steps
        n_steps, batch, n = z_seq.shape
        if g_z is None:
            g_z = torch.zeros_like(z_seq)
        # The pseudo-derivative (zero while refractory), vectorised over the sequence.
        dpsi = ctx.surrogate.derivative(s_seq) / k.dt
        if k.n_ref > 0:
            dpsi = dpsi * _not_refractory(z_seq * k.dt, r0, k.n_ref)
        z_prev_seq = torch.cat([z0.detach().unsqueeze(0), z_seq[:-1]])
        g_fut = torch.zeros(batch, n_steps + n_delay, n, device=z_seq.device, dtype=z_seq.dtype)
        g_fut_flat = g_fut.view(batch, (n_steps + n_delay) * n)
        w_t = w_all.t().contiguous()  # [D*N, N]
        # The final state is differentiable: its adjoints start the loop (zero when it is unused).
        gv, gb, carry = (
            g.clone() if g is not None else torch.zeros(batch, n, device=z_seq.device, dtype=z_seq.dtype)
            for g in (g_v_last, g_b_last, g_z_last)
        )  # carry: dL/dz(t) from steps > t, so that g_z itself is never copied
        if g_pending_out is not None:
            g_fut[:, n_steps:] = g_pending_out
        g_z0 = torch.zeros_like(gv) if ctx.needs_input_grad[3] else None
        for t in range(n_steps - 1, -1, -1):
            # z(t-1) reaches v(t) (reset), b(t) (adaptation) and the currents of steps t .. t+D-1
            g_prev = carry if t > 0 else g_z0
            steps.backward(
                g_z[t], carry, dpsi[t], s_seq[t], a_seq[t], z_prev_seq[t], gv, gb, g_fut[:, t], g_prev, k
            )
            if g_prev is not None:
                g_prev.addmm_(g_fut_flat[:, t * n : (t + n_delay) * n], w_t)
        g_current = g_fut.transpose(0, 1)
        g_w = None
        if ctx.needs_input_grad[1]:
            g_w = torch.empty_like(w_all)
            zp = z_prev_seq.reshape(n_steps * batch, n)
            gi = g_current.contiguous()  # all T + D slots: the pending output may carry gradients too
            for d in range(n_delay):
                g_w[:, d * n : (d + 1) * n] = zp.t() @ gi[d : d + n_steps].reshape(n_steps * batch, n)
        # After the loop gv = dL/dv(-1) and gb = dL/db(-1): the gradients of the initial state; the
        # input on its way (pending) joined the currents of the first D steps.
        g_v0 = gv if ctx.needs_input_grad[2] else None
        g_b0 = gb if ctx.needs_input_grad[4] else None
        g_pending = g_fut[:, :n_delay].clone() if ctx.needs_input_grad[6] else None
        return (g_current, g_w, g_v0, g_z0, g_b0, None, g_pending) + (None,) * 8


def _not_refractory(z_bin: torch.Tensor, r0: torch.Tensor, n_ref: int) -> torch.Tensor:
    """Mask ``m(t) = 1`` when no spike in the last ``n_ref`` steps and the initial refractory time
    ``r0`` has run out (``r0 <= t``); vectorised over time with a cumulative sum."""
    n_steps = z_bin.shape[0]
    csum = torch.cat([torch.zeros_like(z_bin[:1]), z_bin.cumsum(0)])  # csum[t] = spikes before t
    lo = (torch.arange(n_steps, device=z_bin.device) - n_ref).clamp(min=0)
    recent = csum[:-1] - csum[lo]
    steps = torch.arange(n_steps, device=z_bin.device, dtype=z_bin.dtype).view(-1, 1, 1)
    return ((recent.round() == 0) & (r0.unsqueeze(0) <= steps)).to(z_bin.dtype)


def _apply(function, external, w_rec, state: ALIFState, pending, p: ALIFParameters, *extra) -> SequenceResult:
    """Call a whole-sequence autograd function (``_FusedALIF`` or ``cpu_native.NativeALIF``, which
    share one signature) with per-neuron constants and the delay-major weight matrix. Only the fused
    path differentiates the initial state; the native one gets it detached."""
    n = external.shape[-1]
    n_delay = w_rec.shape[0]
    w_all = w_rec.permute(1, 0, 2).reshape(n, n_delay * n)
    like = external.new_ones(n)
    alpha, rho = (like * d for d in _decays(p, external))
    beta, thr = (
        like * torch.as_tensor(x, dtype=external.dtype, device=external.device) for x in (p.beta, p.threshold)
    )
    initial = (state.v, state.z, state.b, state.refractory.detach(), pending)
    if function is not _FusedALIF:
        initial = tuple(t.detach() for t in initial)
    z, v_seq, a_seq, v, z_last, b, r, fut = function.apply(
        external,
        w_all,
        *initial,
        alpha,
        rho,
        beta,
        thr,
        int(p.n_refractory),
        float(p.dt),
        p.surrogate,
        *extra,
    )
    return SequenceResult(z, v_seq, a_seq, ALIFState(v=v, z=z_last, b=b, refractory=r), fut)


def alif_sequence_fused(
    external: torch.Tensor,
    w_rec: torch.Tensor,
    state: ALIFState,
    pending: torch.Tensor,
    p: ALIFParameters,
) -> SequenceResult:
    """Hand-written BPTT (module docstring); same arguments and numerics as the reference."""
    return _apply(_FusedALIF, external, w_rec, state, pending, p, TorchSteps)


def alif_sequence_native(
    external: torch.Tensor,
    w_rec: torch.Tensor,
    state: ALIFState,
    pending: torch.Tensor,
    p: ALIFParameters,
) -> SequenceResult:
    """The fused algorithm in C (``cpu_native.NativeALIF``): CPU only, float32/float64; same arguments,
    numerics and gradients (external current, recurrent weights) as :func:`alif_sequence_fused`."""
    if not cpu_native.available():
        raise RuntimeError(f"native CPU kernels unavailable: {cpu_native.unavailable_reason()}")
    if not _native_supported(external, w_rec, state, pending):
        raise ValueError("impl='native' needs CPU tensors of one dtype, float32 or float64")
    return _apply(cpu_native.NativeALIF, external, w_rec, state, pending, p)


def alif_sequence_triton(
    external: torch.Tensor,
    w_rec: torch.Tensor,
    state: ALIFState,
    pending: torch.Tensor,
    p: ALIFParameters,
) -> SequenceResult:
    """The fused algorithm with one Triton kernel per step (``triton_alif.py``) around the recurrent
    matrix product: CUDA float32 (or CPU under ``TRITON_INTERPRET=1``); same arguments and gradients."""
    from . import triton_alif

    if not triton_alif.usable(external):
        raise RuntimeError(f"impl='triton' is unavailable here: {triton_alif.unavailable_reason(external)}")
    return _apply(_FusedALIF, external, w_rec, state, pending, p, triton_alif.TritonSteps)


def _triton_preferred(external: torch.Tensor) -> bool:
    if not external.is_cuda:
        return False
    from . import triton_alif

    return triton_alif.usable(external)


def _native_supported(
    external: torch.Tensor, w_rec: torch.Tensor, state: ALIFState, pending: torch.Tensor
) -> bool:
    tensors = (external, w_rec, *state, pending)
    return external.dtype in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.dtype == external.dtype for t in tensors
    )


IMPLEMENTATIONS = ("auto", "reference", "fused", "native", "triton")
# The C backward sums the delayed recurrent adjoint densely without BLAS (B*N*D*N per step); beyond a
# few hundred neurons MKL's multithreaded products in the fused path win. Measured on the 2-core dev
# CPU, fwd+bwd: N=20/D=10 native 7x faster; N=220/D=10 3x faster; N=220/D=1 equal; N=512/D=1 fused
# 1.75x faster; N=1024/D=1 fused 1.85x faster.
NATIVE_MAX_NEURONS = 256


def alif_sequence(
    external: torch.Tensor,
    w_rec: torch.Tensor,
    state: ALIFState,
    pending: torch.Tensor,
    p: ALIFParameters,
    impl: str = "auto",
) -> SequenceResult:
    """Run the population over ``external`` ``[T + D, B, N]`` (see the reference for the layout).
    ``impl="auto"`` takes the reference when gradients must reach a neuron parameter; the fused path
    when they must reach the initial state (Triton steps on CUDA); else Triton on CUDA when it is
    installed, the native C path (``cpu_native``) for CPU tensors of at most ``NATIVE_MAX_NEURONS``
    neurons when it is available, else the fused path."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    needs_param_grad = any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in (p.tau_mem, p.tau_adapt, p.beta, p.threshold)
    )
    needs_state_grad = any(t.requires_grad for t in (*state, pending))
    if impl == "reference" or (impl == "auto" and needs_param_grad):
        return alif_sequence_reference(external, w_rec, state, pending, p)
    if impl == "triton" or (impl == "auto" and _triton_preferred(external)):
        return alif_sequence_triton(external, w_rec, state, pending, p)
    if impl == "native" or (
        impl == "auto"
        and not needs_state_grad
        and external.shape[-1] <= NATIVE_MAX_NEURONS
        and _native_supported(external, w_rec, state, pending)
        and cpu_native.available()
    ):
        return alif_sequence_native(external, w_rec, state, pending, p)
    return alif_sequence_fused(external, w_rec, state, pending, p)


class CheckpointedResult(NamedTuple):
    """Spikes ``[T, B, N]``, the final neuron state and the pending currents ``[B, D, N]`` of
    :func:`alif_sequence_checkpointed` (voltages and thresholds are not kept: that is the point)."""

    z: torch.Tensor
    state: ALIFState
    pending: torch.Tensor


def alif_sequence_checkpointed(
    external: torch.Tensor,
    w_rec: torch.Tensor,
    state: ALIFState,
    pending: torch.Tensor,
    p: ALIFParameters,
    every: int,
    impl: str = "auto",
) -> CheckpointedResult:
    """BPTT in memory that grows with ``T / every`` states instead of ``T`` steps of intermediates.

    The sequence is cut into chunks of ``every`` steps; each chunk runs under
    :func:`torch.utils.checkpoint.checkpoint`, so its forward keeps nothing but its inputs, and the
    backward runs it again to get what its BPTT needs. The state (including the currents still on
    their way through the delays) flows from chunk to chunk with its gradient, so the gradients are
    those of one uncut run (to rounding: the chunk boundary adds the external current in another
    order). Chunks run ``fused`` (``impl="reference"`` to check; the native path cannot pass gradients
    between chunks). The cost: one more forward pass."""
    from torch.utils.checkpoint import checkpoint

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"checkpoint_every must be a positive int (steps per chunk), got {every!r}")
    if impl not in ("auto", "fused", "reference"):
        raise ValueError(f"checkpointed chunks run impl 'auto', 'fused' or 'reference', got {impl!r}")
    chunk_impl = (
        "reference" if impl == "reference" else ("triton" if _triton_preferred(external) else "fused")
    )
    n_delay = w_rec.shape[0]
    n_steps = external.shape[0] - n_delay
    if n_steps < 1:
        raise ValueError(f"external must hold at least one step beyond the {n_delay} delay rows")

    def chunk(ext, w, v, z, b, r, pend, t0: int, t1: int):
        if t1 < n_steps:  # the rows spilling past this chunk belong to the next one
            ext = torch.cat([ext[t0:t1], ext.new_zeros(n_delay, *ext.shape[1:])])
        else:
            ext = ext[t0:]
        run = {"reference": alif_sequence_reference, "fused": alif_sequence_fused}.get(
            chunk_impl, alif_sequence_triton
        )
        out = run(ext, w, ALIFState(v, z, b, r), pend, p)
        return (out.z, *out.state, out.pending)

    zs = []
    v, z, b, r = state
    for t0 in range(0, n_steps, every):
        t1 = min(t0 + every, n_steps)
        z_chunk, v, z, b, r, pending = checkpoint(
            chunk, external, w_rec, v, z, b, r, pending, t0, t1, use_reentrant=False
        )
        zs.append(z_chunk)
    return CheckpointedResult(torch.cat(zs), ALIFState(v, z, b, r), pending)
