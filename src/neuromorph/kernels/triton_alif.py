"""Triton kernels of the recurrent ALIF population: one fused element-wise kernel per step around the
recurrent matrix product.

The recurrence needs the spikes of step ``t - 1`` before step ``t`` can start, so the sequence cannot
be fused over time as the feed-forward LIF is (``triton_lif.py``); the recurrent input is a cuBLAS
``addmm`` and everything else of a step (adaptation, threshold, spike, refractory counter, voltage) is
one kernel launch, forward and backward. That replaces the ~10 launches per step of the torch
``_FusedALIF`` loop with 2, which is what a launch-bound GPU loop pays for.

The kernels plug into ``alif_sequence._FusedALIF`` as its step object (``TritonSteps`` in place of
``TorchSteps``): the time loop, the saved tensors, the state gradients and the weight gradient are
shared. Forward numerics follow ``alif_step`` (products and sums in its order, IEEE division, no FMA
contraction); the torch step uses ``lerp``/``addcmul``, so the two agree to rounding, as the fused
path agrees with the reference. Tests run the kernels on CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch

from .triton_lif import BLOCK, _launch_options, _spike_value, triton, unavailable_reason, usable

__all__ = ["TritonSteps", "usable", "unavailable_reason"]

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _alif_forward_step(
        cur_ptr, cur_sb, zp_ptr, v_ptr, b_ptr, r_ptr,
        alpha_ptr, oma_ptr, rho_ptr, omr_ptr, beta_ptr, thr_ptr,
        z_ptr, s_ptr, a_ptr, bn, n, n_ref, dt, spike_value,
        REFRACTORY: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < bn
        j = offs % n
        row = offs // n
        cur = tl.load(cur_ptr + row * cur_sb + j, mask=mask, other=0.0)
        zp = tl.load(zp_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        b = tl.load(b_ptr + offs, mask=mask, other=0.0)
        alpha = tl.load(alpha_ptr + j, mask=mask, other=0.0)
        oma = tl.load(oma_ptr + j, mask=mask, other=0.0)
        rho = tl.load(rho_ptr + j, mask=mask, other=0.0)
        omr = tl.load(omr_ptr + j, mask=mask, other=0.0)
        beta = tl.load(beta_ptr + j, mask=mask, other=0.0)
        thr = tl.load(thr_ptr + j, mask=mask, other=1.0)
        b = rho * b + omr * zp
        a = thr + beta * b
        s = tl.math.div_rn(v - a, a)
        k = s > 0
        if REFRACTORY:
            r = tl.load(r_ptr + offs, mask=mask, other=0.0)
            k = k & (r == 0)
            tl.store(r_ptr + offs, tl.where(k, n_ref * 1.0, tl.maximum(r - 1.0, 0.0)), mask=mask)
        z = tl.where(k, spike_value, 0.0)
        v = (alpha * v + oma * cur) - (a * zp) * dt
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(b_ptr + offs, b, mask=mask)
        tl.store(z_ptr + offs, z, mask=mask)
        tl.store(s_ptr + offs, s, mask=mask)
        tl.store(a_ptr + offs, a, mask=mask)

    @triton.jit
    def _alif_backward_step(
        gz_ptr, carry_ptr, dpsi_ptr, s_ptr, a_ptr, zp_ptr, gv_ptr, gb_ptr, gc_ptr, gc_sb, gp_ptr,
        alpha_ptr, oma_ptr, rho_ptr, omr_ptr, beta_ptr, bn, n, dt,
        HAS_PREV: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < bn
        j = offs % n
        row = offs // n
        g_s = tl.load(gz_ptr + offs, mask=mask, other=0.0) + tl.load(carry_ptr + offs, mask=mask, other=0.0)
        g_s = g_s * tl.load(dpsi_ptr + offs, mask=mask, other=0.0)
        s = tl.load(s_ptr + offs, mask=mask, other=0.0)
        a = tl.load(a_ptr + offs, mask=mask, other=1.0)
        zp = tl.load(zp_ptr + offs, mask=mask, other=0.0)
        gv = tl.load(gv_ptr + offs, mask=mask, other=0.0)
        gb = tl.load(gb_ptr + offs, mask=mask, other=0.0)
        alpha = tl.load(alpha_ptr + j, mask=mask, other=0.0)
        oma = tl.load(oma_ptr + j, mask=mask, other=0.0)
        rho = tl.load(rho_ptr + j, mask=mask, other=0.0)
        omr = tl.load(omr_ptr + j, mask=mask, other=0.0)
        beta = tl.load(beta_ptr + j, mask=mask, other=0.0)
        inv_a = tl.math.div_rn(tl.full(a.shape, 1.0, a.dtype), a)
        g_a = g_s * (-((s + 1.0) * inv_a)) + gv * zp * (-dt)
        gb = gb + g_a * beta
        tl.store(gc_ptr + row * gc_sb + j, gv * oma, mask=mask)
        if HAS_PREV:
            tl.store(gp_ptr + offs, gv * a * (-dt) + gb * omr, mask=mask)
        tl.store(gv_ptr + offs, alpha * gv + g_s * inv_a, mask=mask)
        tl.store(gb_ptr + offs, gb * rho, mask=mask)


def _row_stride(t: torch.Tensor) -> int:
    """``t`` ``[B, N]`` must have unit stride along N; its batch stride is passed to the kernel."""
    if t.stride(1) != 1:
        raise ValueError(f"expected a [B, N] view with contiguous rows, got strides {t.stride()}")
    return t.stride(0)


class TritonSteps:
    """Drop-in for ``alif_sequence.TorchSteps`` (same methods, in-place semantics)."""

    @staticmethod
    def forward(cur_t, z_prev, v, b, r, k, z_t, s_t, a_t) -> None:
        bn, n = v.numel(), v.shape[-1]
        _alif_forward_step[(triton.cdiv(bn, BLOCK),)](
            cur_t, _row_stride(cur_t), z_prev.contiguous(), v, b, r,
            k.alpha, k.one_minus_alpha, k.rho, k.one_minus_rho, k.beta, k.thr,
            z_t, s_t, a_t, bn, n, int(k.n_ref), float(k.dt), _spike_value(k.dt),
            REFRACTORY=k.n_ref > 0, BLOCK_SIZE=BLOCK, **_launch_options(),
        )  # fmt: skip

    @staticmethod
    def backward(g_z_t, carry, dpsi_t, s_t, a_t, z_prev, gv, gb, g_cur_t, g_prev, k) -> None:
        bn, n = gv.numel(), gv.shape[-1]
        _alif_backward_step[(triton.cdiv(bn, BLOCK),)](
            g_z_t.contiguous(), carry, dpsi_t.contiguous(), s_t, a_t, z_prev.contiguous(), gv, gb,
            g_cur_t, _row_stride(g_cur_t), g_prev if g_prev is not None else gv,
            k.alpha, k.one_minus_alpha, k.rho, k.one_minus_rho, k.beta, bn, n, float(k.dt),
            HAS_PREV=g_prev is not None, BLOCK_SIZE=BLOCK, **_launch_options(),
        )  # fmt: skip
