"""Triton kernels of the feed-forward LIF population, fused over time (one launch per direction).

Equations and the BPTT are those of :mod:`neuromorph.kernels.lif_sequence`. Each program owns a block
of ``B * N`` (sample, neuron) pairs and runs the whole time loop over them in registers, reading the
current ``I(t)`` and writing ``z(t)``, ``s(t)`` and the spike bits; the backward runs the adjoint loop
in reverse and writes ``dL/dI``. The pseudo-derivative (any :class:`~neuromorph.spikes.Surrogate`) and
the refractory mask are evaluated in torch over the whole sequence before the backward kernel.

Numerics: the forward uses the operations of ``lif_step`` in the same order with IEEE division and
no fused multiply-add (``enable_fp_fusion=False``), so the spikes equal the reference's. Tests run the
kernels on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional: present with CUDA builds of torch, or installed for the interpreter tests
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the install
    triton = tl = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["usable", "unavailable_reason", "TritonLIF", "BLOCK"]

BLOCK = 128


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(like: torch.Tensor | None = None) -> str | None:
    """Why the Triton path cannot run on tensors like ``like`` (``None`` if it can)."""
    if _IMPORT_ERROR is not None:
        return f"triton is not importable ({_IMPORT_ERROR})"
    if like is not None and not like.is_cuda and not _interpreting():
        return f"tensors are on {like.device}; Triton runs on CUDA (or on CPU with TRITON_INTERPRET=1)"
    if like is not None and like.dtype != torch.float32:
        return f"dtype {like.dtype} is not supported (the kernels are float32)"
    return None


def usable(like: torch.Tensor) -> bool:
    return unavailable_reason(like) is None


def _launch_options() -> dict:
    # No FMA contraction on the GPU (the reference rounds every product); the interpreter never fuses.
    return {} if _interpreting() else {"enable_fp_fusion": False}


if triton is not None:

    @triton.jit
    def _lif_forward_kernel(
        cur_ptr, v0_ptr, z0_ptr, r0_ptr, alpha_ptr, oma_ptr, thr_ptr,
        z_ptr, s_ptr, k_ptr, v_ptr, zl_ptr, r_ptr,
        n_steps, bn, n, n_ref, dt, spike_value,
        REFRACTORY: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < bn
        j = offs % n
        alpha = tl.load(alpha_ptr + j, mask=mask, other=0.0)
        oma = tl.load(oma_ptr + j, mask=mask, other=0.0)
        thr = tl.load(thr_ptr + j, mask=mask, other=1.0)
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
        z_prev = tl.load(z0_ptr + offs, mask=mask, other=0.0)
        r = tl.load(r0_ptr + offs, mask=mask, other=0.0)
        for t in range(n_steps):
            i_t = tl.load(cur_ptr + t * bn + offs, mask=mask, other=0.0)
            s = tl.math.div_rn(v - thr, thr)
            k = s > 0
            if REFRACTORY:
                k = k & (r == 0)
                r = tl.where(k, n_ref * 1.0, tl.maximum(r - 1.0, 0.0))
            z = tl.where(k, spike_value, 0.0)
            v = alpha * v + oma * i_t - (thr * z_prev) * dt
            tl.store(s_ptr + t * bn + offs, s, mask=mask)
            tl.store(z_ptr + t * bn + offs, z, mask=mask)
            tl.store(k_ptr + t * bn + offs, k.to(tl.int8), mask=mask)
            z_prev = z
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(zl_ptr + offs, z_prev, mask=mask)
        tl.store(r_ptr + offs, r, mask=mask)

    @triton.jit
    def _lif_backward_kernel(
        gz_ptr, dpsi_ptr, alpha_ptr, oma_ptr, thr_ptr, gi_ptr, n_steps, bn, n, dt, BLOCK_SIZE: tl.constexpr
    ):
        offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < bn
        j = offs % n
        alpha = tl.load(alpha_ptr + j, mask=mask, other=0.0)
        oma = tl.load(oma_ptr + j, mask=mask, other=0.0)
        thr = tl.load(thr_ptr + j, mask=mask, other=1.0)
        neg_thr_dt = -thr * dt
        inv_thr = tl.math.div_rn(tl.full(thr.shape, 1.0, thr.dtype), thr)
        gv = tl.zeros(thr.shape, thr.dtype)
        gs = tl.zeros(thr.shape, thr.dtype)
        for i in range(n_steps):
            t = n_steps - 1 - i
            g = tl.load(gz_ptr + t * bn + offs, mask=mask, other=0.0)
            d = tl.load(dpsi_ptr + t * bn + offs, mask=mask, other=0.0)
            gz = g + gv * neg_thr_dt
            gv = alpha * gv + gs * inv_thr
            gs = gz * d
            tl.store(gi_ptr + t * bn + offs, gv * oma, mask=mask)


def _spike_value(dt: float) -> float:
    """``1 / dt`` rounded as the reference's float32 division ``z / dt`` rounds it."""
    return float(torch.ones((), dtype=torch.float32) / torch.tensor(dt, dtype=torch.float32))


class TritonLIF(torch.autograd.Function):
    """Same signature and outputs as ``lif_sequence._FusedLIF``."""

    @staticmethod
    def forward(ctx, current, v0, z0, r0, alpha, one_minus_alpha, thr, n_ref, dt, surrogate):
        n_steps, batch, n = current.shape
        bn = batch * n
        current = current.contiguous()
        z_seq, s_seq = torch.empty_like(current), torch.empty_like(current)
        bits = torch.empty(current.shape, dtype=torch.int8, device=current.device)
        v, z_last, r = (torch.empty_like(v0) for _ in range(3))
        grid = (triton.cdiv(bn, BLOCK),)
        _lif_forward_kernel[grid](
            current, v0.contiguous(), z0.contiguous(), r0.contiguous(), alpha, one_minus_alpha, thr,
            z_seq, s_seq, bits, v, z_last, r,
            n_steps, bn, n, int(n_ref), float(dt), _spike_value(dt),
            REFRACTORY=int(n_ref) > 0, BLOCK_SIZE=BLOCK, **_launch_options(),
        )  # fmt: skip
        spikes = bits.view(torch.bool)
        ctx.save_for_backward(spikes, s_seq, r0, alpha, thr)
        ctx.n_ref, ctx.dt, ctx.surrogate = int(n_ref), float(dt), surrogate
        ctx.mark_non_differentiable(v, z_last, r)
        return z_seq, v, z_last, r

    @staticmethod
    def backward(ctx, g_z, *_unused):
        from .lif_sequence import _dpsi

        spikes, s_seq, r0, alpha, thr = ctx.saved_tensors
        if g_z is None:
            return (None,) * 10
        n_steps, batch, n = s_seq.shape
        dpsi = _dpsi(ctx.surrogate, s_seq, spikes, r0, ctx.n_ref, ctx.dt).contiguous()
        g_current = torch.empty_like(s_seq)
        grid = (triton.cdiv(batch * n, BLOCK),)
        _lif_backward_kernel[grid](
            g_z.contiguous(), dpsi, alpha, 1.0 - alpha, thr, g_current, n_steps, batch * n, n, ctx.dt,
            BLOCK_SIZE=BLOCK, **_launch_options(),
        )  # fmt: skip
        return (g_current,) + (None,) * 9
