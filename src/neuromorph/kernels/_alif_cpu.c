/* Native CPU kernels of the recurrent ALIF layer (loaded with ctypes by ``cpu_native.py``).
 *
 * A port of ``_FusedALIF`` in ``alif_sequence.py`` (equations and the hand-derived backward are in
 * its docstring) plus the input projection with per-synapse delays, both event-driven: only non-zero
 * presynaptic values (spikes) add anything, which is exact since skipped terms are exact zeros.
 *
 * Numerics follow the torch ops of the Python fused path one by one, so that the float32 results are
 * bit-identical where possible: torch's CPU ``lerp`` and ``addcmul`` use a fused multiply-add, so do
 * we (explicit ``fma``; the file is compiled with ``-ffp-contract=off`` and without ``-ffast-math``),
 * and a (sparse) matrix product is summed in the reduction order of a GEMM, then added to its target.
 *
 * Layouts (all C-contiguous): the future-current buffer ``fut`` and its adjoint are batch-major
 * ``[B, T + D, N]`` so that the ``D`` slots a spike reaches are ``D * N`` consecutive numbers;
 * ``w_all`` is ``[N_pre, D * N_post]`` (delay-major columns); sequences are time-major ``[T, B, N]``.
 * Every function returns 0, or -1 when memory runs out, -2 for a delay outside ``[0, D)``.
 *
 * The file includes itself twice to instantiate the float (``_f32``) and double (``_f64``) versions.
 */
#ifndef NM_REAL

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NM_REAL float
#define NM_FMA fmaf
#define NM_NAME(x) x##_f32
#include "_alif_cpu.c" /* this file, again */
#undef NM_REAL
#undef NM_FMA
#undef NM_NAME

#define NM_REAL double
#define NM_FMA fma
#define NM_NAME(x) x##_f64
#include "_alif_cpu.c" /* this file, again */
#undef NM_REAL
#undef NM_FMA
#undef NM_NAME

#else /* ---------------------------------------------------------------- template body */

#define R NM_REAL

/* torch.lerp on CPU: fma(w, end - start, start) for |w| < 0.5, else fma(w - 1, end - start, end). */
static inline R NM_NAME(lerp)(R start, R end, R w) {
    const R diff = end - start;
    return (w < (R)0.5 && w > (R)-0.5) ? NM_FMA(w, diff, start) : NM_FMA(w - (R)1, diff, end);
}

/* Non-zeros of each row of w_all [n, m]: row k holds (col[p], val[p]) for p in ptr[k] .. ptr[k+1]. */
typedef struct {
    int32_t *ptr, *col;
    R *val;
} NM_NAME(csr);

static int NM_NAME(csr_build)(NM_NAME(csr) * c, const R *w, int64_t n, int64_t m) {
    int64_t nnz = 0;
    for (int64_t p = 0; p < n * m; ++p) nnz += (w[p] != 0);
    c->ptr = malloc((size_t)(n + 1) * sizeof(int32_t));
    c->col = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(int32_t));
    c->val = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(R));
    if (!c->ptr || !c->col || !c->val) return -1;
    int64_t q = 0;
    for (int64_t k = 0; k < n; ++k) {
        c->ptr[k] = (int32_t)q;
        for (int64_t p = 0; p < m; ++p) {
            if (w[k * m + p] != 0) {
                c->col[q] = (int32_t)p;
                c->val[q++] = w[k * m + p];
            }
        }
    }
    c->ptr[n] = (int32_t)q;
    return 0;
}

static void NM_NAME(csr_free)(NM_NAME(csr) * c) {
    free(c->ptr);
    free(c->col);
    free(c->val);
}

/* target[idx[p]] += sum over the active rows of x * w, each sum taken first (in row order, with fma, as
 * a GEMM accumulates) and then added, so that the result equals ``target += x @ W`` of a BLAS GEMM.
 * ``acc`` is an all-zero scratch of the target's size and is left all-zero. Rows: ``n_act`` entries of
 * ``act`` with multipliers ``x[act[a]]``; entries ``ptr[k] .. ptr[k+1]`` of ``idx``/``val``. */
static inline void NM_NAME(scatter_rows)(R *restrict target, R *restrict acc, const R *restrict x,
                                         const int32_t *restrict act, int n_act, const int32_t *restrict ptr,
                                         const int32_t *restrict idx, const R *restrict val) {
    if (n_act == 1) {
        const int32_t k = act[0];
        const R xk = x[k];
        for (int32_t p = ptr[k]; p < ptr[k + 1]; ++p) target[idx[p]] += xk * val[p];
        return;
    }
    for (int a = 0; a < n_act; ++a) {
        const int32_t k = act[a];
        const R xk = x[k];
        for (int32_t p = ptr[k]; p < ptr[k + 1]; ++p) acc[idx[p]] = NM_FMA(xk, val[p], acc[idx[p]]);
    }
    for (int a = 0; a < n_act; ++a) {
        const int32_t k = act[a];
        for (int32_t p = ptr[k]; p < ptr[k + 1]; ++p) {
            const int32_t o = idx[p];
            if (acc[o] != 0) { /* a sum of exactly zero adds nothing */
                target[o] += acc[o];
                acc[o] = 0;
            }
        }
    }
}

static inline int NM_NAME(active)(const R *restrict x, int64_t n, int32_t *restrict act) {
    int n_act = 0;
    for (int64_t k = 0; k < n; ++k)
        if (x[k] != 0) act[n_act++] = (int32_t)k;
    return n_act;
}

/* Forward over T steps. fut [B, T+D, N] holds the external current (and pending input); the
 * recurrent input is added to it in place, so that fut[:, T:] is the pending input of the next chunk.
 * Outputs z_seq, s_seq, a_seq [T, B, N] and the final v, b, r [B, N]. */
int NM_NAME(alif_forward)(int64_t B, int64_t T, int64_t N, int64_t D, R *restrict fut, const R *restrict w_all,
                          const R *restrict v0, const R *restrict z0, const R *restrict b0, const R *restrict r0,
                          const R *restrict alpha, const R *restrict rho, const R *restrict beta,
                          const R *restrict thr, int64_t n_ref, double dt, R *restrict z_seq, R *restrict s_seq,
                          R *restrict a_seq, R *restrict v_out, R *restrict b_out, R *restrict r_out) {
    const int64_t DN = D * N;
    NM_NAME(csr) w = {0};
    R *acc = calloc((size_t)(DN > 0 ? DN : 1), sizeof(R));
    R *work = malloc((size_t)(5 * N + 1) * sizeof(R));
    int32_t *act = malloc((size_t)(N + 1) * sizeof(int32_t));
    int status = (!acc || !work || !act) ? -1 : NM_NAME(csr_build)(&w, w_all, N, DN);
    if (status == 0) {
        R *v = work, *b = work + N, *r = work + 2 * N, *oma = work + 3 * N, *omr = work + 4 * N;
        for (int64_t j = 0; j < N; ++j) {
            oma[j] = (R)1 - alpha[j];
            omr[j] = (R)1 - rho[j];
        }
        const R rdt = (R)dt, neg_dt = (R)(-dt), nref = (R)n_ref;
        const int scale = (dt != 1.0);
        for (int64_t bi = 0; bi < B; ++bi) {
            memcpy(v, v0 + bi * N, (size_t)N * sizeof(R));
            memcpy(b, b0 + bi * N, (size_t)N * sizeof(R));
            memcpy(r, r0 + bi * N, (size_t)N * sizeof(R));
            R *fb = fut + bi * (T + D) * N;
            const R *zp = z0 + bi * N;
            for (int64_t t = 0; t < T; ++t) {
                R *win = fb + t * N;
                const int n_act = NM_NAME(active)(zp, N, act);
                if (n_act) NM_NAME(scatter_rows)(win, acc, zp, act, n_act, w.ptr, w.col, w.val);
                const int64_t o = (t * B + bi) * N;
                R *restrict zt = z_seq + o, *restrict st = s_seq + o, *restrict at = a_seq + o;
                for (int64_t j = 0; j < N; ++j) {
                    const R bj = NM_NAME(lerp)(b[j], zp[j], omr[j]);
                    const R a = NM_FMA(beta[j], bj, thr[j]);
                    const R s = (v[j] - a) / a;
                    R z;
                    if (n_ref > 0) {
                        const int spike = (s > 0) && (r[j] == 0);
                        const R rj = r[j] - (R)1;
                        r[j] = spike ? nref : (rj > 0 ? rj : (R)0);
                        z = spike ? (R)1 : (R)0;
                    } else {
                        z = (s > 0) ? (R)1 : (R)0;
                    }
                    if (scale) z = z / rdt;
                    const R vj = NM_NAME(lerp)(v[j], win[j], oma[j]);
                    v[j] = NM_FMA(neg_dt * a, zp[j], vj);
                    b[j] = bj;
                    zt[j] = z;
                    st[j] = s;
                    at[j] = a;
                }
                zp = zt;
            }
            memcpy(v_out + bi * N, v, (size_t)N * sizeof(R));
            memcpy(b_out + bi * N, b, (size_t)N * sizeof(R));
            memcpy(r_out + bi * N, r, (size_t)N * sizeof(R));
        }
    }
    NM_NAME(csr_free)(&w);
    free(acc);
    free(work);
    free(act);
    return status;
}

/* Backward (BPTT) of alif_forward. g_z, z_seq, s_seq, a_seq and dpsi (the pseudo-derivative of s
 * divided by dt, without the refractory mask: that is rebuilt here from z_seq and r0) are [T, B, N].
 * Writes g_fut [B, T+D, N] (the adjoint of fut, i.e. of the external current) and, when g_w is not
 * NULL, g_w [N, D*N] (the adjoint of w_all; accumulated in double). */
int NM_NAME(alif_backward)(int64_t B, int64_t T, int64_t N, int64_t D, const R *restrict g_z,
                           const R *restrict z_seq, const R *restrict s_seq, const R *restrict a_seq,
                           const R *restrict dpsi, const R *restrict z0, const R *restrict r0,
                           const R *restrict w_all, const R *restrict alpha, const R *restrict rho,
                           const R *restrict beta, int64_t n_ref, double dt, R *restrict g_fut,
                           R *restrict g_w) {
    const int64_t DN = D * N;
    NM_NAME(csr) w = {0};
    R *work = malloc((size_t)(9 * N + 1) * sizeof(R));
    int32_t *act = malloc((size_t)(N + 1) * sizeof(int32_t));
    unsigned char *free_to_spike = malloc((size_t)(T * N + 1));
    double *gw_acc = g_w ? calloc((size_t)(N * DN + 1), sizeof(double)) : NULL;
    int status = (!work || !act || !free_to_spike || (g_w && !gw_acc)) ? -1 : NM_NAME(csr_build)(&w, w_all, N, DN);
    if (status == 0) {
        R *gv = work, *gb = work + N, *gcur = work + 2 * N, *gnext = work + 3 * N, *gs = work + 4 * N;
        R *inv = work + 5 * N, *oma = work + 6 * N, *omr = work + 7 * N, *r = work + 8 * N;
        for (int64_t j = 0; j < N; ++j) {
            oma[j] = (R)1 - alpha[j];
            omr[j] = (R)1 - rho[j];
        }
        const R neg_dt = (R)(-dt);
        for (int64_t bi = 0; bi < B; ++bi) {
            R *gfb = g_fut + bi * (T + D) * N;
            memset(gfb + T * N, 0, (size_t)DN * sizeof(R));
            if (n_ref > 0) { /* not refractory at t  <=>  refractory counter before step t is 0 */
                memcpy(r, r0 + bi * N, (size_t)N * sizeof(R));
                for (int64_t t = 0; t < T; ++t) {
                    const R *zt = z_seq + (t * B + bi) * N;
                    for (int64_t j = 0; j < N; ++j) {
                        free_to_spike[t * N + j] = (r[j] == 0);
                        const R rj = r[j] - (R)1;
                        r[j] = (zt[j] != 0) ? (R)n_ref : (rj > 0 ? rj : (R)0);
                    }
                }
            }
            for (int64_t j = 0; j < N; ++j) gv[j] = gb[j] = 0;
            if (T > 0) memcpy(gcur, g_z + ((T - 1) * B + bi) * N, (size_t)N * sizeof(R));
            for (int64_t t = T - 1; t >= 0; --t) {
                const int64_t o = (t * B + bi) * N;
                const R *zp = t > 0 ? z_seq + o - B * N : z0 + bi * N;
                const R *at = a_seq + o, *st = s_seq + o, *dp = dpsi + o;
                R *win = gfb + t * N;
                for (int64_t j = 0; j < N; ++j) {
                    const R m = (n_ref > 0) ? (R)free_to_spike[t * N + j] : (R)1;
                    const R g_s = gcur[j] * (dp[j] * m);
                    const R inv_a = (R)1 / at[j];
                    const R c = -(st[j] + (R)1) * inv_a;
                    const R g_a = NM_FMA(neg_dt * gv[j], zp[j], g_s * c);
                    gb[j] = NM_FMA(g_a, beta[j], gb[j]);
                    win[j] = gv[j] * oma[j];
                    gs[j] = g_s;
                    inv[j] = inv_a;
                }
                if (t > 0) {
                    const R *gzp = g_z + o - B * N;
                    for (int64_t j = 0; j < N; ++j) {
                        R g = NM_FMA(neg_dt * gv[j], at[j], gzp[j]);
                        gnext[j] = NM_FMA(gb[j], omr[j], g);
                    }
                    for (int64_t k = 0; k < N; ++k) { /* + (g_fut window) @ w_all^T, zeros skipped */
                        R sum = 0;
                        for (int32_t p = w.ptr[k]; p < w.ptr[k + 1]; ++p) sum = NM_FMA(win[w.col[p]], w.val[p], sum);
                        gnext[k] += sum;
                    }
                }
                if (gw_acc) { /* g_w[k, :] += z(t-1)[k] * window, for the neurons that spiked */
                    const int n_act = NM_NAME(active)(zp, N, act);
                    for (int a = 0; a < n_act; ++a) {
                        const double zk = (double)zp[act[a]];
                        double *row = gw_acc + (int64_t)act[a] * DN;
                        for (int64_t p = 0; p < DN; ++p) row[p] += zk * (double)win[p];
                    }
                }
                for (int64_t j = 0; j < N; ++j) {
                    gv[j] = NM_FMA(gs[j], inv[j], gv[j] * alpha[j]);
                    gb[j] = gb[j] * rho[j];
                }
                R *tmp = gcur;
                gcur = gnext;
                gnext = tmp;
            }
        }
        if (g_w)
            for (int64_t p = 0; p < N * DN; ++p) g_w[p] = (R)gw_acc[p];
    }
    NM_NAME(csr_free)(&w);
    free(work);
    free(act);
    free(free_to_spike);
    free(gw_acc);
    return status;
}

/* Offsets d_ij * N + j of the synapses of w_in [n_in, N]; -2 when a delay lies outside [0, D). */
static int NM_NAME(delay_offsets)(const int64_t *delay, int64_t n_in, int64_t N, int64_t D, int32_t *off) {
    for (int64_t i = 0; i < n_in; ++i)
        for (int64_t j = 0; j < N; ++j) {
            const int64_t d = delay[i * N + j];
            if (d < 0 || d >= D) return -2;
            off[i * N + j] = (int32_t)(d * N + j);
        }
    return 0;
}

/* fut[b, t + d_ij, j] += x[t, b, i] * w_in[i, j] over the non-zero x; fut [B, T+D, N] is overwritten.
 * Summed as the dense path (``x @ W_all`` per step, then the delays added in increasing order). */
int NM_NAME(delayed_input_forward)(int64_t T, int64_t B, int64_t n_in, int64_t N, int64_t D, const R *restrict x,
                                   const R *restrict w_in, const int64_t *restrict delay, R *restrict fut) {
    const int64_t DN = D * N;
    int32_t *off = malloc((size_t)(n_in * N + 1) * sizeof(int32_t));
    int32_t *ptr = malloc((size_t)(n_in + 1) * sizeof(int32_t));
    int32_t *act = malloc((size_t)(n_in + 1) * sizeof(int32_t));
    R *acc = calloc((size_t)(DN + 1), sizeof(R));
    int status = (!off || !ptr || !act || !acc) ? -1 : NM_NAME(delay_offsets)(delay, n_in, N, D, off);
    if (status == 0) {
        for (int64_t i = 0; i <= n_in; ++i) ptr[i] = (int32_t)(i * N);
        memset(fut, 0, (size_t)(B * (T + D) * N) * sizeof(R));
        for (int64_t bi = 0; bi < B; ++bi) {
            /* Backwards in time: a slot then receives its delays in increasing order, as the dense sum. */
            for (int64_t t = T - 1; t >= 0; --t) {
                const R *xr = x + (t * B + bi) * n_in;
                const int n_act = NM_NAME(active)(xr, n_in, act);
                if (n_act) NM_NAME(scatter_rows)(fut + (bi * (T + D) + t) * N, acc, xr, act, n_act, ptr, off, w_in);
            }
        }
    }
    free(off);
    free(ptr);
    free(act);
    free(acc);
    return status;
}

/* g_w_in[i, j] = sum over the non-zero x of x[t, b, i] * g_fut[b, t + d_ij, j] (accumulated in double). */
int NM_NAME(delayed_input_backward)(int64_t T, int64_t B, int64_t n_in, int64_t N, int64_t D, const R *restrict x,
                                    const int64_t *restrict delay, const R *restrict g_fut, R *restrict g_w_in) {
    int32_t *off = malloc((size_t)(n_in * N + 1) * sizeof(int32_t));
    int32_t *act = malloc((size_t)(n_in + 1) * sizeof(int32_t));
    double *acc = calloc((size_t)(n_in * N + 1), sizeof(double));
    int status = (!off || !act || !acc) ? -1 : NM_NAME(delay_offsets)(delay, n_in, N, D, off);
    if (status == 0) {
        for (int64_t bi = 0; bi < B; ++bi) {
            for (int64_t t = 0; t < T; ++t) {
                const R *xr = x + (t * B + bi) * n_in;
                const R *g = g_fut + (bi * (T + D) + t) * N;
                const int n_act = NM_NAME(active)(xr, n_in, act);
                for (int a = 0; a < n_act; ++a) {
                    const int64_t i = act[a];
                    const double xi = (double)xr[i];
                    const int32_t *oi = off + i * N;
                    double *ai = acc + i * N;
                    for (int64_t j = 0; j < N; ++j) ai[j] += xi * (double)g[oi[j]];
                }
            }
        }
        for (int64_t p = 0; p < n_in * N; ++p) g_w_in[p] = (R)acc[p];
    }
    free(off);
    free(act);
    free(acc);
    return status;
}

#undef R
#endif
