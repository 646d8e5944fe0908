/* Native CPU kernels of the recurrent ALIF layer (loaded with ctypes by ``cpu_native.py``).
 *
 * A port of ``_FusedALIF`` in ``alif_sequence.py`` (equations and the hand-derived backward are in
 * its docstring) plus the input projection with per-synapse delays. Inputs are event-driven: only
 * non-zero presynaptic values (spikes) add anything, which is exact since skipped terms are zeros.
 *
 * Numerics follow the torch ops of the Python fused path one by one: torch's CPU ``lerp`` and
 * ``addcmul`` use a fused multiply-add, so do we (explicit ``fma``; compiled with ``-ffp-contract=off``
 * and without ``-ffast-math``), and a (sparse) matrix product is summed first (over the reduction index,
 * with fma) and then added to its target, as MKL's sgemm does at the store-recall sizes; float32 spikes
 * are then bit-identical there. (MKL's order depends on sizes and dtype; elsewhere the results agree to
 * rounding.)
 *
 * Layouts are C-contiguous unless strides are passed: sequences ``[T, B, N]`` and the future-current
 * buffer and its adjoint ``[T + D, B, N]`` are time-major (loops run over time outside and over batch x
 * neuron inside, vectorised); ``w_all`` is ``[N_pre, D * N_post]`` (delay-major columns).
 * Every function returns 0, or -1 when memory runs out, -2 for a delay outside ``[0, D)``.
 *
 * The file includes itself twice to instantiate the float (``_f32``) and double (``_f64``) versions.
 */
#ifndef NM_REAL

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#define NM_GW_BLOCK 32 /* steps summed in working precision before a flush into double */
#if defined(__GNUC__) && !defined(__clang__)
#define NM_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define NM_NO_VECTORIZE
#endif

#if defined(__AVX__) && defined(__FMA__) /* explicit SIMD where the auto-vectoriser picks gathers */
#define NM_SIMD 1
#else
#define NM_SIMD 0
#endif

#define NM_REAL float
#define NM_F32 1
#define NM_FMA fmaf
#define NM_FABS fabsf
#define NM_NAME(x) x##_f32
#include "_alif_cpu.c" /* this file, again */
#undef NM_REAL
#undef NM_F32
#undef NM_FMA
#undef NM_FABS
#undef NM_NAME

#define NM_REAL double
#define NM_F32 0
#define NM_FMA fma
#define NM_FABS fabs
#define NM_NAME(x) x##_f64
#include "_alif_cpu.c" /* this file, again */
#undef NM_REAL
#undef NM_F32
#undef NM_FMA
#undef NM_FABS
#undef NM_NAME

#else /* ---------------------------------------------------------------- template body */

#define R NM_REAL
#if NM_SIMD && NM_F32
#define NM_V __m256
#define NM_VL 8
#define NM_VLOAD _mm256_loadu_ps
#define NM_VSTORE _mm256_storeu_ps
#define NM_VFMA _mm256_fmadd_ps
#define NM_VSET1 _mm256_set1_ps
#define NM_VZERO _mm256_setzero_ps
#elif NM_SIMD
#define NM_V __m256d
#define NM_VL 4
#define NM_VLOAD _mm256_loadu_pd
#define NM_VSTORE _mm256_storeu_pd
#define NM_VFMA _mm256_fmadd_pd
#define NM_VSET1 _mm256_set1_pd
#define NM_VZERO _mm256_setzero_pd
#endif

/* torch.lerp on CPU: fma(w, end - start, start) for |w| < 0.5, else fma(w - 1, end - start, end). */
static inline R NM_NAME(lerp)(R start, R end, R w) {
    const R diff = end - start;
    const int small = (w < (R)0.5) & (w > (R)-0.5);
    return NM_FMA(small ? w : w - (R)1, diff, small ? start : end);
}

/* Indices of the non-zero entries of x[0:n] into act (room for n + 1); returns their number. */
static inline int NM_NAME(active)(const R *restrict x, int64_t n, int32_t *restrict act) {
    int n_act = 0;
    int64_t k = 0;
#if defined(__AVX__) && NM_F32
    for (; k + 8 <= n; k += 8) {
        const __m256 nonzero = _mm256_cmp_ps(_mm256_loadu_ps(x + k), _mm256_setzero_ps(), _CMP_NEQ_UQ);
        unsigned m = (unsigned)_mm256_movemask_ps(nonzero);
        for (; m; m &= m - 1) act[n_act++] = (int32_t)(k + __builtin_ctz(m));
    }
#elif defined(__AVX__)
    for (; k + 4 <= n; k += 4) {
        const __m256d nonzero = _mm256_cmp_pd(_mm256_loadu_pd(x + k), _mm256_setzero_pd(), _CMP_NEQ_UQ);
        unsigned m = (unsigned)_mm256_movemask_pd(nonzero);
        for (; m; m &= m - 1) act[n_act++] = (int32_t)(k + __builtin_ctz(m));
    }
#endif
    for (; k < n; ++k) {
        act[n_act] = (int32_t)k;
        n_act += (x[k] != 0);
    }
    return n_act;
}

/* Sparse rows: row k holds entries ptr[k] .. ptr[k+1] with value val[p], a column col[p] (the index into
 * a dense row) and a target offset tgt[p] (where that column lands in the output buffer). */
typedef struct {
    int32_t *ptr, *col;
    int64_t *tgt;
    R *val;
} NM_NAME(rows);

static void NM_NAME(rows_free)(NM_NAME(rows) * s) {
    free(s->ptr);
    free(s->col);
    free(s->tgt);
    free(s->val);
}

/* Non-zeros of w_all [n, D * m] (column d * m + j lands at d * slot + j). */
static int NM_NAME(rows_from_dense)(NM_NAME(rows) * s, const R *w, int64_t n, int64_t D, int64_t m,
                                    int64_t slot) {
    const int64_t cols = D * m;
    int64_t nnz = 0;
    for (int64_t p = 0; p < n * cols; ++p) nnz += (w[p] != 0);
    s->ptr = malloc((size_t)(n + 1) * sizeof(int32_t));
    s->col = malloc((size_t)(nnz + 1) * sizeof(int32_t));
    s->tgt = malloc((size_t)(nnz + 1) * sizeof(int64_t));
    s->val = malloc((size_t)(nnz + 1) * sizeof(R));
    if (!s->ptr || !s->col || !s->tgt || !s->val) return -1;
    int64_t q = 0;
    for (int64_t k = 0; k < n; ++k) {
        s->ptr[k] = (int32_t)q;
        for (int64_t c = 0; c < cols; ++c) {
            if (w[k * cols + c] != 0) {
                s->col[q] = (int32_t)c;
                s->tgt[q] = (c / m) * slot + c % m;
                s->val[q++] = w[k * cols + c];
            }
        }
    }
    s->ptr[n] = (int32_t)q;
    return 0;
}

/* w_in [n, m] with one delay per entry (entry (i, j) -> column delay * m + j, target delay * slot + j);
 * -2 when a delay lies outside [0, D). */
static int NM_NAME(rows_from_delays)(NM_NAME(rows) * s, const R *w, const int64_t *delay, int64_t n,
                                     int64_t D, int64_t m, int64_t slot) {
    s->ptr = malloc((size_t)(n + 1) * sizeof(int32_t));
    s->col = malloc((size_t)(n * m + 1) * sizeof(int32_t));
    s->tgt = malloc((size_t)(n * m + 1) * sizeof(int64_t));
    s->val = malloc((size_t)(n * m + 1) * sizeof(R));
    if (!s->ptr || !s->col || !s->tgt || !s->val) return -1;
    for (int64_t i = 0; i <= n; ++i) s->ptr[i] = (int32_t)(i * m);
    for (int64_t p = 0; p < n * m; ++p) {
        const int64_t d = delay[p], j = p % m;
        if (d < 0 || d >= D) return -2;
        s->col[p] = (int32_t)(d * m + j);
        s->tgt[p] = d * slot + j;
        s->val[p] = w ? w[p] : (R)0;
    }
    return 0;
}

/* out += x @ W over the active rows k of a sparse W (act: the n_act indices with x[k] != 0); entry p of
 * row k sits in column col[p] and lands at out[tgt[p]]. Each column sum is taken first (in row order,
 * with fma, as a GEMM accumulates; acc: an all-zero scratch with one entry per column, left all-zero)
 * and then added, so that the result equals ``out += x @ W`` of a GEMM, whose terms with x[k] == 0 or a
 * zero weight add exact zeros. */
static inline void NM_NAME(add_rows)(R *restrict out, R *restrict acc, const R *restrict x,
                                     const int32_t *restrict act, int n_act, const NM_NAME(rows) * s) {
    if (n_act == 1) {
        const int32_t k = act[0];
        const R xk = x[k];
        for (int32_t p = s->ptr[k]; p < s->ptr[k + 1]; ++p) out[s->tgt[p]] += xk * s->val[p];
        return;
    }
    for (int a = 0; a < n_act; ++a) {
        const int32_t k = act[a];
        const R xk = x[k];
        for (int32_t p = s->ptr[k]; p < s->ptr[k + 1]; ++p)
            acc[s->col[p]] = NM_FMA(xk, s->val[p], acc[s->col[p]]);
    }
    for (int a = 0; a < n_act; ++a) { /* a column met again adds its (consumed) zero: exact */
        const int32_t k = act[a];
        for (int32_t p = s->ptr[k]; p < s->ptr[k + 1]; ++p) {
            out[s->tgt[p]] += acc[s->col[p]];
            acc[s->col[p]] = 0;
        }
    }
}

/* Per-neuron parameters repeated over the batch: P[q * BN + b * N + j] = param_q[j]. */
static R *NM_NAME(per_element)(int64_t B, int64_t N, int n_params, const R *const *params) {
    R *P = malloc((size_t)(n_params * B * N + 1) * sizeof(R));
    if (!P) return NULL;
    for (int q = 0; q < n_params; ++q)
        for (int64_t b = 0; b < B; ++b) memcpy(P + (q * B + b) * N, params[q], (size_t)N * sizeof(R));
    return P;
}

/* dst [B, N] = ext[s] (+ pending0[:, s] for s < D). */
static void NM_NAME(init_slot)(R *restrict dst, const R *restrict ext, int64_t ext_st, int64_t ext_sb,
                               const R *restrict pending0, int64_t s, int64_t B, int64_t N, int64_t D) {
    for (int64_t b = 0; b < B; ++b) {
        const R *src = ext + s * ext_st + b * ext_sb;
        if (s < D) {
            const R *pend = pending0 + (b * D + s) * N;
            for (int64_t j = 0; j < N; ++j) dst[b * N + j] = src[j] + pend[j];
        } else {
            memcpy(dst + b * N, src, (size_t)N * sizeof(R));
        }
    }
}

/* One step of n neurons (flattened batch x neuron), the operations of ``_FusedALIF.forward``:
 * b = lerp(b, z_prev, 1 - rho); A = thr + beta * b; s = (v - A) / A; z = H(s) (0 while r > 0) / dt;
 * r = n_ref on a spike, else max(r - 1, 0); v = lerp(v, I, 1 - alpha) - dt * A * z_prev. */
static void NM_NAME(neuron_step)(int64_t n, const R *restrict zp, const R *restrict current,
                                 const R *restrict oma, const R *restrict omr, const R *restrict beta,
                                 const R *restrict thr, R neg_dt, R nref, R spike_value, int refractory,
                                 R *restrict v, R *restrict b, R *restrict r, R *restrict zt, R *restrict st,
                                 R *restrict at, R *restrict v_prev) {
    for (int64_t e = 0; e < n; ++e) {
        const R be = NM_NAME(lerp)(b[e], zp[e], omr[e]);
        const R a = NM_FMA(beta[e], be, thr[e]);
        const R s = (v[e] - a) / a;
        if (v_prev) v_prev[e] = (s + (R)1) * a; /* v(t-1) as the fused path reports it: A(t) * (s(t) + 1) */
        if (refractory) { /* unswitched by the compiler */
            const R re = r[e] - (R)1, rdec = re > 0 ? re : (R)0;
            const int spike = (s > 0) && (r[e] == 0);
            r[e] = spike ? nref : rdec;
            zt[e] = spike ? spike_value : (R)0;
        } else {
            zt[e] = (s > 0) ? spike_value : (R)0;
        }
        const R ve = NM_NAME(lerp)(v[e], current[e], oma[e]);
        v[e] = NM_FMA(neg_dt * a, zp[e], ve);
        b[e] = be;
        st[e] = s;
        at[e] = a;
    }
}

#define NM_SLIDE 64 /* the forward keeps D + NM_SLIDE slots of future current, shifted every NM_SLIDE steps */

/* Forward over T steps. ext[s, b, j] = ext[s * ext_st + b * ext_sb + j] (s < T + D) is the external
 * current and pending0 [B, D, N] the input already on its way. Outputs z_seq, s_seq, a_seq [T, B, N],
 * v_seq [T, B, N] (unless NULL; v(t) as the fused path reports it), the final v, b, r [B, N] and the
 * input then on its way, pending [B, D, N]. */
int NM_NAME(alif_forward)(int64_t B, int64_t T, int64_t N, int64_t D, const R *restrict ext, int64_t ext_st,
                          int64_t ext_sb, const R *restrict pending0, const R *restrict w_all,
                          const R *restrict v0, const R *restrict z0, const R *restrict b0,
                          const R *restrict r0, const R *alpha, const R *rho, const R *beta, const R *thr,
                          int64_t n_ref, double dt, R *restrict z_seq, R *restrict s_seq, R *restrict a_seq,
                          R *restrict v_seq, R *restrict v, R *restrict b, R *restrict r, R *restrict pending) {
    const int64_t BN = B * N;
    NM_NAME(rows) w = {0};
    R *acc = calloc((size_t)(D * N + 1), sizeof(R));
    R *fut = malloc((size_t)((D + NM_SLIDE) * BN + 1) * sizeof(R)); /* slots base .. base + D + SLIDE - 1 */
    int32_t *act = malloc((size_t)(N + 1) * sizeof(int32_t));
    R *oma = malloc((size_t)(2 * N + 1) * sizeof(R)), *omr = oma ? oma + N : NULL;
    if (oma)
        for (int64_t j = 0; j < N; ++j) {
            oma[j] = (R)1 - alpha[j];
            omr[j] = (R)1 - rho[j];
        }
    const R *params[4] = {oma, omr, beta, thr};
    R *P = oma ? NM_NAME(per_element)(B, N, 4, params) : NULL;
    int status = (!acc || !fut || !act || !P) ? -1 : NM_NAME(rows_from_dense)(&w, w_all, N, D, N, BN);
    if (status == 0) {
        const R *restrict p_oma = P, *restrict p_omr = P + BN;
        const R *restrict p_beta = P + 2 * BN, *restrict p_thr = P + 3 * BN;
        const R neg_dt = (R)(-dt), nref = (R)n_ref;
        const R spike_value = (dt != 1.0) ? (R)1 / (R)dt : (R)1; /* z = H(.) / dt */
        const int refractory = (n_ref > 0);
        int64_t base = 0;
        memcpy(v, v0, (size_t)BN * sizeof(R));
        memcpy(b, b0, (size_t)BN * sizeof(R));
        memcpy(r, r0, (size_t)BN * sizeof(R));
        for (int64_t s = 0; s + 1 < D; ++s)
            NM_NAME(init_slot)(fut + s * BN, ext, ext_st, ext_sb, pending0, s, B, N, D);
        for (int64_t t = 0; t <= T; ++t) {
            if (t + D - 1 - base >= D + NM_SLIDE) { /* slide: slots t .. t + D - 2 to the front */
                memmove(fut, fut + (t - base) * BN, (size_t)((D - 1) * BN) * sizeof(R));
                base = t;
            }
            R *restrict last = fut + (t + D - 1 - base) * BN;
            NM_NAME(init_slot)(last, ext, ext_st, ext_sb, pending0, t + D - 1, B, N, D);
            if (t == T) break;
            R *restrict ft = fut + (t - base) * BN;
            const R *restrict zp = t > 0 ? z_seq + (t - 1) * BN : z0;
            for (int64_t bi = 0; bi < B; ++bi) { /* recurrent input of the spikes z(t-1) */
                const int n_act = NM_NAME(active)(zp + bi * N, N, act);
                if (n_act) NM_NAME(add_rows)(ft + bi * N, acc, zp + bi * N, act, n_act, &w);
            }
            NM_NAME(neuron_step)(BN, zp, ft, p_oma, p_omr, p_beta, p_thr, neg_dt, nref, spike_value,
                                 refractory, v, b, r, z_seq + t * BN, s_seq + t * BN, a_seq + t * BN,
                                 (v_seq && t > 0) ? v_seq + (t - 1) * BN : NULL);
        }
        if (v_seq && T > 0) memcpy(v_seq + (T - 1) * BN, v, (size_t)BN * sizeof(R));
        for (int64_t bi = 0; bi < B; ++bi)
            for (int64_t d = 0; d < D; ++d)
                memcpy(pending + (bi * D + d) * N, fut + (T + d - base) * BN + bi * N, (size_t)N * sizeof(R));
    }
    NM_NAME(rows_free)(&w);
    free(acc);
    free(fut);
    free(act);
    free(oma);
    free(P);
    return status;
}

/* Adjoint of one step, part 1 (operations of ``_FusedALIF.backward``): g_s = gz * dpsi;
 * g_A = g_s * (-(s + 1) / A) - dt * gv * z_prev; gb += beta * g_A; g_fut(t) = (1 - alpha) * gv. */
static void NM_NAME(adjoint_step)(int64_t n, const R *restrict gz, const R *restrict dm, const R *restrict at,
                                  const R *restrict st, const R *restrict zp, const R *restrict beta,
                                  const R *restrict oma, R neg_dt, const R *restrict gv, R *restrict gb,
                                  R *restrict gf, R *restrict gs, R *restrict inv) {
    for (int64_t e = 0; e < n; ++e) {
        const R g_s = gz[e] * dm[e];
        const R inv_a = (R)1 / at[e];
        const R c = -(st[e] + (R)1) * inv_a;
        const R g_a = NM_FMA(neg_dt * gv[e], zp[e], g_s * c);
        gb[e] = NM_FMA(g_a, beta[e], gb[e]);
        gf[e] = gv[e] * oma[e];
        gs[e] = g_s;
        inv[e] = inv_a;
    }
}

/* gz(t-1) = dL/dz(t-1) - dt * A(t) * gv(t) + (1 - rho) * gb(t)   (recurrent part added by the caller) */
static void NM_NAME(adjoint_prev)(int64_t n, const R *restrict gb, const R *restrict omr,
                                  const R *restrict gv, const R *restrict at, const R *restrict gzp, R neg_dt,
                                  R *restrict gnext) {
    for (int64_t e = 0; e < n; ++e) gnext[e] = NM_FMA(gb[e], omr[e], NM_FMA(neg_dt * gv[e], at[e], gzp[e]));
}

/* gv(t-1) = alpha * gv(t) + g_s / A(t); gb <- rho * gb */
static void NM_NAME(adjoint_decay)(int64_t n, const R *restrict gs, const R *restrict inv,
                                   const R *restrict alpha, const R *restrict rho, R *restrict gv,
                                   R *restrict gb) {
    for (int64_t e = 0; e < n; ++e) {
        gv[e] = NM_FMA(gs[e], inv[e], gv[e] * alpha[e]);
        gb[e] = gb[e] * rho[e];
    }
}

/* spikes.Triangle.derivative(s) (/ dt): gamma * clamp(1 - |s| / width, min=0), clamp keeping NaN. */
static void NM_NAME(triangle)(int64_t n, const R *restrict st, R gamma, R width, int scale, R dt,
                              R *restrict dm) {
    for (int64_t e = 0; e < n; ++e) {
        const R u = (R)1 - NM_FABS(st[e]) / width;
        const R d = gamma * (u < 0 ? (R)0 : u);
        dm[e] = scale ? d / dt : d;
    }
}

static void NM_NAME(mask)(int64_t n, const unsigned char *restrict m, R *restrict dm) {
    for (int64_t e = 0; e < n; ++e) dm[e] = dm[e] * (R)m[e];
}

/* m = (r == 0) (free to spike at this step); r = n_ref after a spike, else max(r - 1, 0). */
static void NM_NAME(refractory_step)(int64_t n, const R *restrict zt, R nref, R *restrict r,
                                     unsigned char *restrict m) {
    for (int64_t e = 0; e < n; ++e) {
        m[e] = (r[e] == 0);
        const R re = r[e] - (R)1;
        r[e] = (zt[e] != 0) ? nref : (re > 0 ? re : (R)0);
    }
}

/* out[q] = sum_p val[p] * taps[p][q] for q < n, each sum in order p = 0, 1, ... with fma (a GEMM's). */
static void NM_NAME(dot_taps)(int64_t n, int64_t n_taps, const R **taps, const R *restrict val,
                              R *restrict out) {
    int64_t q0 = 0;
#if NM_SIMD
    for (; q0 + 4 * NM_VL <= n; q0 += 4 * NM_VL) { /* four accumulators held in registers */
        NM_V a0 = NM_VZERO(), a1 = NM_VZERO(), a2 = NM_VZERO(), a3 = NM_VZERO();
        for (int64_t p = 0; p < n_taps; ++p) {
            const R *src = taps[p] + q0;
            const NM_V wv = NM_VSET1(val[p]);
            a0 = NM_VFMA(NM_VLOAD(src), wv, a0);
            a1 = NM_VFMA(NM_VLOAD(src + NM_VL), wv, a1);
            a2 = NM_VFMA(NM_VLOAD(src + 2 * NM_VL), wv, a2);
            a3 = NM_VFMA(NM_VLOAD(src + 3 * NM_VL), wv, a3);
        }
        NM_VSTORE(out + q0, a0);
        NM_VSTORE(out + q0 + NM_VL, a1);
        NM_VSTORE(out + q0 + 2 * NM_VL, a2);
        NM_VSTORE(out + q0 + 3 * NM_VL, a3);
    }
    for (; q0 + NM_VL <= n; q0 += NM_VL) {
        NM_V a0 = NM_VZERO();
        for (int64_t p = 0; p < n_taps; ++p) a0 = NM_VFMA(NM_VLOAD(taps[p] + q0), NM_VSET1(val[p]), a0);
        NM_VSTORE(out + q0, a0);
    }
#endif
    for (int64_t q = q0; q < n; ++q) {
        R a = 0;
        for (int64_t p = 0; p < n_taps; ++p) a = NM_FMA(taps[p][q], val[p], a);
        out[q] = a;
    }
}

/* row[c] += sum_e z[e] * win[e][c] for c < n (events e in order, with fma). */
static void NM_NAME(add_windows)(int64_t n, int64_t n_ev, const R *restrict z, const R *const *win,
                                 R *restrict row) {
    int64_t c0 = 0;
#if NM_SIMD
    for (; c0 + 4 * NM_VL <= n; c0 += 4 * NM_VL) {
        NM_V a0 = NM_VLOAD(row + c0), a1 = NM_VLOAD(row + c0 + NM_VL);
        NM_V a2 = NM_VLOAD(row + c0 + 2 * NM_VL), a3 = NM_VLOAD(row + c0 + 3 * NM_VL);
        for (int64_t e = 0; e < n_ev; ++e) {
            const R *src = win[e] + c0;
            const NM_V ze = NM_VSET1(z[e]);
            a0 = NM_VFMA(ze, NM_VLOAD(src), a0);
            a1 = NM_VFMA(ze, NM_VLOAD(src + NM_VL), a1);
            a2 = NM_VFMA(ze, NM_VLOAD(src + 2 * NM_VL), a2);
            a3 = NM_VFMA(ze, NM_VLOAD(src + 3 * NM_VL), a3);
        }
        NM_VSTORE(row + c0, a0);
        NM_VSTORE(row + c0 + NM_VL, a1);
        NM_VSTORE(row + c0 + 2 * NM_VL, a2);
        NM_VSTORE(row + c0 + 3 * NM_VL, a3);
    }
    for (; c0 + NM_VL <= n; c0 += NM_VL) {
        NM_V a0 = NM_VLOAD(row + c0);
        for (int64_t e = 0; e < n_ev; ++e) a0 = NM_VFMA(NM_VSET1(z[e]), NM_VLOAD(win[e] + c0), a0);
        NM_VSTORE(row + c0, a0);
    }
#endif
    for (int64_t c = c0; c < n; ++c) {
        R a = row[c];
        for (int64_t e = 0; e < n_ev; ++e) a = NM_FMA(z[e], win[e][c], a);
        row[c] = a;
    }
}

/* Backward (BPTT) of alif_forward. g_z, z_seq, s_seq, a_seq [T, B, N]. The pseudo-derivative of s
 * divided by dt, without the refractory mask (rebuilt here from z_seq and r0): dpsi [T, B, N], or, when
 * dpsi is NULL, the triangle tri_gamma * max(0, 1 - |s| / tri_width) / dt computed here with the
 * operations of ``spikes.Triangle.derivative``. Writes g_fut [T + D, B, N] (the adjoint of fut, that is
 * of the external current) and, when g_w is not NULL, g_w [N, D * N] (the adjoint of w_all). */
int NM_NAME(alif_backward)(int64_t B, int64_t T, int64_t N, int64_t D, const R *restrict g_z,
                           const R *restrict z_seq, const R *restrict s_seq, const R *restrict a_seq,
                           const R *restrict dpsi, double tri_gamma, double tri_width, const R *restrict z0,
                           const R *restrict r0, const R *restrict w_all, const R *alpha, const R *rho,
                           const R *beta, int64_t n_ref, double dt, R *restrict g_fut, R *restrict g_w) {
    const int64_t BN = B * N, DN = D * N, L = D + NM_SLIDE;
    NM_NAME(rows) w = {0};
    R *work = malloc((size_t)(9 * BN + D * BN + 2 * N + 1) * sizeof(R));
    R *gwin = g_w ? malloc((size_t)(B * L * N + 1) * sizeof(R)) : NULL; /* [B, L, N] recent g_fut, per row */
    int32_t *act = malloc((size_t)(N + 1) * sizeof(int32_t));
    int32_t *n_ev = malloc((size_t)(N + 1) * sizeof(int32_t));
    R *ev_z = malloc((size_t)(BN + 1) * sizeof(R));                  /* per neuron: spikes of the step */
    const R **ev_win = malloc((size_t)(BN + 1) * sizeof(const R *)); /* ... and their g_fut windows */
    const R **taps = malloc((size_t)(N * D * N + 1) * sizeof(const R *)); /* per non-zero of w_all */
    const R **slot_of = malloc((size_t)(D + 1) * sizeof(const R *));
    int32_t *tap_d = malloc((size_t)(N * D * N + 1) * sizeof(int32_t)); /* delay and post of each tap */
    int32_t *tap_j = malloc((size_t)(N * D * N + 1) * sizeof(int32_t));
    unsigned char *free_to_spike = n_ref > 0 ? malloc((size_t)(T * BN + 1)) : NULL;
    R *gw_work = g_w ? calloc((size_t)(N * DN + 1), sizeof(R)) : NULL;
    double *gw_sum = g_w ? calloc((size_t)(N * DN + 1), sizeof(double)) : NULL;
    R *oma = work ? work + 9 * BN + D * BN : NULL, *omr = oma ? oma + N : NULL;
    if (oma)
        for (int64_t j = 0; j < N; ++j) {
            oma[j] = (R)1 - alpha[j];
            omr[j] = (R)1 - rho[j];
        }
    const R *params[5] = {oma, omr, beta, alpha, rho};
    R *P = oma ? NM_NAME(per_element)(B, N, 5, params) : NULL;
    int status = (!work || !act || !n_ev || !ev_z || !ev_win || !taps || !slot_of || !tap_d || !tap_j ||
                  (n_ref > 0 && !free_to_spike) ||
                  (g_w && (!gw_work || !gw_sum || !gwin)) || !P)
                     ? -1
                     : NM_NAME(rows_from_dense)(&w, w_all, N, D, N, BN);
    if (status == 0) {
        R *restrict gv = work, *restrict gb = work + BN;
        R *restrict gcur = work + 2 * BN, *restrict gnext = work + 3 * BN;
        R *restrict gs = work + 4 * BN, *restrict inv = work + 5 * BN, *restrict gf = work + 6 * BN;
        R *restrict acc_t = work + 7 * BN; /* [N, B] */
        R *restrict dm = work + 8 * BN;    /* masked pseudo-derivative of the step */
        R *restrict ring = work + 9 * BN;  /* D slots of the adjoint of fut, each [N, B] */
        const R *restrict p_oma = P, *restrict p_omr = P + BN, *restrict p_beta = P + 2 * BN;
        const R *restrict p_alpha = P + 3 * BN, *restrict p_rho = P + 4 * BN;
        const R neg_dt = (R)(-dt), rdt = (R)dt, gamma = (R)tri_gamma, width = (R)tri_width;
        for (int32_t p = 0; p < w.ptr[N]; ++p) {
            tap_d[p] = w.col[p] / (int32_t)N;
            tap_j[p] = w.col[p] % (int32_t)N;
        }
        if (free_to_spike) { /* not refractory at t  <=>  the refractory counter before step t is 0 */
            R *restrict r = gv;
            memcpy(r, r0, (size_t)BN * sizeof(R));
            for (int64_t t = 0; t < T; ++t) {
                const R *restrict zt = z_seq + t * BN;
                unsigned char *restrict m = free_to_spike + t * BN;
                NM_NAME(refractory_step)(BN, zt, (R)n_ref, r, m);
            }
        }
        memset(gv, 0, (size_t)BN * sizeof(R));
        memset(gb, 0, (size_t)BN * sizeof(R));
        memset(ring, 0, (size_t)(D * BN) * sizeof(R));
        memset(g_fut + T * BN, 0, (size_t)(D * BN) * sizeof(R));
        if (gwin) memset(gwin, 0, (size_t)(B * L * N) * sizeof(R));
        int64_t base = T + D - L; /* slot of gwin position 0 */
        if (T > 0) memcpy(gcur, g_z + (T - 1) * BN, (size_t)BN * sizeof(R));
        for (int64_t t = T - 1; t >= 0; --t) {
            const R *restrict zp = t > 0 ? z_seq + (t - 1) * BN : z0;
            const R *restrict at = a_seq + t * BN, *restrict st = s_seq + t * BN;
            if (dpsi)
                memcpy(dm, dpsi + t * BN, (size_t)BN * sizeof(R));
            else
                NM_NAME(triangle)(BN, st, gamma, width, dt != 1.0, rdt, dm);
            if (free_to_spike) NM_NAME(mask)(BN, free_to_spike + t * BN, dm);
            NM_NAME(adjoint_step)(BN, gcur, dm, at, st, zp, p_beta, p_oma, neg_dt, gv, gb, gf, gs, inv);
            memcpy(g_fut + t * BN, gf, (size_t)BN * sizeof(R));
            { /* g_fut(t), transposed, into ring slot t % D */
                R *restrict slot = ring + (t % D) * BN;
                for (int64_t bi = 0; bi < B; ++bi)
                    for (int64_t j = 0; j < N; ++j) slot[j * B + bi] = gf[bi * N + j];
            }
            if (g_w) { /* and into the batch-major windows: slot s of row b at gwin[(b * L + s - base) * N] */
                if (t < base) { /* slide: slots t + 1 .. t + D - 1 to the top */
                    const int64_t new_base = t + D - L;
                    for (int64_t bi = 0; bi < B; ++bi)
                        memmove(gwin + (bi * L + t + 1 - new_base) * N, gwin + (bi * L + t + 1 - base) * N,
                                (size_t)((D - 1) * N) * sizeof(R));
                    base = new_base;
                }
                for (int64_t bi = 0; bi < B; ++bi)
                    memcpy(gwin + (bi * L + t - base) * N, gf + bi * N, (size_t)N * sizeof(R));
            }
            if (t > 0) {
                NM_NAME(adjoint_prev)(BN, gb, p_omr, gv, at, g_z + (t - 1) * BN, neg_dt, gnext);
                /* + (g_fut window) @ w_all^T: for each presynaptic k, the sum over the non-zero
                 * w_all[k, d*N+j] of w * g_fut[t + d][j], vectorised over the batch (ring slots: [N, B]). */
                for (int64_t d = 0; d < D; ++d) slot_of[d] = ring + ((t + d) % D) * BN;
                for (int32_t p = 0; p < w.ptr[N]; ++p) taps[p] = slot_of[tap_d[p]] + tap_j[p] * B;
                for (int64_t k = 0; k < N; ++k)
                    NM_NAME(dot_taps)(B, w.ptr[k + 1] - w.ptr[k], taps + w.ptr[k], w.val + w.ptr[k],
                                      acc_t + k * B);
                for (int64_t bi = 0; bi < B; ++bi)
                    for (int64_t k = 0; k < N; ++k) gnext[bi * N + k] += acc_t[k * B + bi];
            }
            if (g_w) { /* g_w[k, :] += z(t-1)[b, k] * g_fut[b, t : t + D, :] for the spikes of z(t-1) */
                for (int64_t k = 0; k < N; ++k) n_ev[k] = 0;
                for (int64_t bi = 0; bi < B; ++bi) {
                    const int n_act = NM_NAME(active)(zp + bi * N, N, act);
                    for (int a = 0; a < n_act; ++a) {
                        const int32_t k = act[a];
                        ev_z[k * B + n_ev[k]] = zp[bi * N + k];
                        ev_win[k * B + n_ev[k]++] = gwin + (bi * L + t - base) * N;
                    }
                }
                for (int64_t k = 0; k < N; ++k)
                    if (n_ev[k])
                        NM_NAME(add_windows)(DN, n_ev[k], ev_z + k * B, (const R *const *)(ev_win + k * B),
                                             gw_work + k * DN);
                if (t % NM_GW_BLOCK == 0) {
                    for (int64_t p = 0; p < N * DN; ++p) gw_sum[p] += (double)gw_work[p];
                    memset(gw_work, 0, (size_t)(N * DN) * sizeof(R));
                }
            }
            NM_NAME(adjoint_decay)(BN, gs, inv, p_alpha, p_rho, gv, gb);
            R *tmp = gcur;
            gcur = gnext;
            gnext = tmp;
        }
        if (g_w)
            for (int64_t p = 0; p < N * DN; ++p) g_w[p] = (R)gw_sum[p];
    }
    NM_NAME(rows_free)(&w);
    free(work);
    free(act);
    free(n_ev);
    free(ev_z);
    free(ev_win);
    free(taps);
    free(gwin);
    free(slot_of);
    free(tap_d);
    free(tap_j);
    free(free_to_spike);
    free(gw_work);
    free(gw_sum);
    free(P);
    return status;
}

/* fut[t + d_ij, b, j] += x[t, b, i] * w_in[i, j] over the non-zero x; fut [T + D, B, N] is overwritten.
 * Summed as the dense path: per step ``x @ W_all`` (W_all [n_in, D * N]), the delays added in order. */
int NM_NAME(delayed_input_forward)(int64_t T, int64_t B, int64_t n_in, int64_t N, int64_t D,
                                   const R *restrict x, const R *restrict w_in, const int64_t *restrict delay,
                                   R *restrict fut) {
    const int64_t BN = B * N, DN = D * N;
    NM_NAME(rows) w = {0};
    int32_t *act = malloc((size_t)(n_in + 1) * sizeof(int32_t));
    R *acc = calloc((size_t)(DN + 1), sizeof(R));
    int status = (!act || !acc) ? -1 : NM_NAME(rows_from_delays)(&w, w_in, delay, n_in, D, N, BN);
    if (status == 0) {
        memset(fut, 0, (size_t)((T + D) * BN) * sizeof(R));
        /* Backwards in time: each slot then receives its delays in increasing order, as the dense sum. */
        for (int64_t t = T - 1; t >= 0; --t) {
            for (int64_t bi = 0; bi < B; ++bi) {
                const R *xr = x + (t * B + bi) * n_in;
                const int n_act = NM_NAME(active)(xr, n_in, act);
                if (n_act) NM_NAME(add_rows)(fut + t * BN + bi * N, acc, xr, act, n_act, &w);
            }
        }
    }
    NM_NAME(rows_free)(&w);
    free(act);
    free(acc);
    return status;
}

/* acc[j] += x * g[idx[j]], j < n: scalar on purpose (gathers are slow on many x86 cores). */
NM_NO_VECTORIZE static void NM_NAME(gather_add)(int64_t n, R x, const R *restrict g,
                                               const int64_t *restrict idx, R *restrict acc) {
    for (int64_t j = 0; j < n; ++j) acc[j] = NM_FMA(x, g[idx[j]], acc[j]);
}

/* g_w_in[i, j] = sum over the non-zero x of x[t, b, i] * g[t + d_ij, b, j], where
 * g[s, b, j] = g_fut[s * g_st + b * g_sb + j]; partial sums over NM_GW_BLOCK steps, then in double. */
int NM_NAME(delayed_input_backward)(int64_t T, int64_t B, int64_t n_in, int64_t N, int64_t D,
                                    const R *restrict x, const int64_t *restrict delay,
                                    const R *restrict g_fut, int64_t g_st, int64_t g_sb, R *restrict g_w_in) {
    NM_NAME(rows) w = {0};
    int32_t *act = malloc((size_t)(n_in + 1) * sizeof(int32_t));
    R *part = calloc((size_t)(n_in * N + 1), sizeof(R)); /* sums over NM_GW_BLOCK steps */
    double *sum = calloc((size_t)(n_in * N + 1), sizeof(double));
    int status = (!act || !part || !sum) ? -1 : NM_NAME(rows_from_delays)(&w, NULL, delay, n_in, D, N, g_st);
    if (status == 0) {
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t bi = 0; bi < B; ++bi) {
                const R *xr = x + (t * B + bi) * n_in;
                const R *restrict g = g_fut + t * g_st + bi * g_sb;
                const int n_act = NM_NAME(active)(xr, n_in, act);
                for (int a = 0; a < n_act; ++a) {
                    const int64_t i = act[a];
                    NM_NAME(gather_add)(N, xr[i], g, w.tgt + i * N, part + i * N);
                }
            }
            if (t % NM_GW_BLOCK == NM_GW_BLOCK - 1 || t == T - 1) {
                for (int64_t p = 0; p < n_in * N; ++p) sum[p] += (double)part[p];
                memset(part, 0, (size_t)(n_in * N) * sizeof(R));
            }
        }
        for (int64_t p = 0; p < n_in * N; ++p) g_w_in[p] = (R)sum[p];
    }
    NM_NAME(rows_free)(&w);
    free(act);
    free(part);
    free(sum);
    return status;
}

/* Feed-forward LIF population over T steps (``lif_sequence._FusedLIF``, the operations of ``lif_step``):
 * s = (v - thr) / thr; k = s > 0 (and r == 0); z = k / dt; v = (alpha * v + (1 - alpha) * I) - (thr * z_prev) * dt.
 * cur, z_seq, s_seq [T, B, N]; spikes [T, B, N] bytes; v0, z0, r0 and v, z_last, r [B, N]. */
int NM_NAME(lif_forward)(int64_t B, int64_t T, int64_t N, const R *restrict cur, const R *restrict v0,
                         const R *restrict z0, const R *restrict r0, const R *restrict alpha,
                         const R *restrict oma, const R *restrict thr, int64_t n_ref, double dt,
                         R *restrict z_seq, R *restrict s_seq, unsigned char *restrict spikes, R *restrict v,
                         R *restrict z_last, R *restrict r) {
    const int64_t BN = B * N;
    const R dt_r = (R)dt, nref = (R)n_ref;
    const R spike_value = (R)1 / dt_r; /* z = H(.) / dt, rounded as torch's division of 1 by dt */
    memcpy(v, v0, (size_t)BN * sizeof(R));
    memcpy(r, r0, (size_t)BN * sizeof(R));
    memcpy(z_last, z0, (size_t)BN * sizeof(R));
    for (int64_t t = 0; t < T; ++t) {
        const R *restrict it = cur + t * BN;
        const R *restrict zp = t > 0 ? z_seq + (t - 1) * BN : z0;
        R *restrict zt = z_seq + t * BN, *restrict st = s_seq + t * BN;
        unsigned char *restrict kt = spikes + t * BN;
        for (int64_t bi = 0; bi < B; ++bi) {
            const int64_t o = bi * N;
            for (int64_t j = 0; j < N; ++j) {
                const int64_t e = o + j;
                const R s = (v[e] - thr[j]) / thr[j];
                int k = s > 0;
                if (n_ref > 0) {
                    const R re = r[e] - (R)1, rdec = re > 0 ? re : (R)0;
                    k = k && (r[e] == 0);
                    r[e] = k ? nref : rdec;
                }
                const R sc = it[e] * oma[j];
                const R dec = alpha[j] * v[e];
                const R reset = (thr[j] * zp[e]) * dt_r;
                v[e] = (dec + sc) - reset;
                st[e] = s;
                zt[e] = k ? spike_value : (R)0;
                kt[e] = (unsigned char)k;
            }
        }
    }
    if (T > 0) memcpy(z_last, z_seq + (T - 1) * BN, (size_t)BN * sizeof(R));
    return 0;
}

/* BPTT of ``lif_forward`` (``lif_sequence._lif_backward_loop``): with gv = dL/dv(t+1) and gs(t+1) held,
 * gz = g_z(t) + gv * (-thr dt); gv = alpha gv + gs / thr; gs = gz * dpsi(t); g_cur(t) = (1 - alpha) gv. */
int NM_NAME(lif_backward)(int64_t B, int64_t T, int64_t N, const R *restrict g_z, const R *restrict dpsi,
                          const R *restrict s_seq, double tri_gamma, double tri_width, const R *restrict alpha, const R *restrict oma, const R *restrict thr, double dt,
                          R *restrict g_cur) {
    const int64_t BN = B * N;
    R *gv = calloc((size_t)(2 * BN + 2 * N + 1), sizeof(R));
    if (!gv) return -1;
    R *gs = gv + BN, *neg = gv + 2 * BN, *inv = neg + N;
    for (int64_t j = 0; j < N; ++j) {
        neg[j] = -thr[j] * (R)dt;
        inv[j] = (R)1 / thr[j];
    }
    const R gamma = (R)tri_gamma, width = (R)tri_width, dt_r = (R)dt;
    for (int64_t t = T - 1; t >= 0; --t) {
        const R *restrict gzt = g_z + t * BN;
        const R *restrict dpt = dpsi ? dpsi + t * BN : NULL, *restrict st = s_seq + t * BN;
        R *restrict gc = g_cur + t * BN;
        for (int64_t bi = 0; bi < B; ++bi) {
            const int64_t o = bi * N;
            for (int64_t j = 0; j < N; ++j) {
                const int64_t e = o + j;
                R d;
                if (dpt) {
                    d = dpt[e];
                } else { /* spikes.Triangle.derivative(s) / dt, no refractory mask */
                    const R u = (R)1 - NM_FABS(st[e]) / width;
                    d = gamma * (u < 0 ? (R)0 : u);
                    if (dt != 1.0) d = d / dt_r;
                }
                const R gz = NM_FMA(gv[e], neg[j], gzt[e]);
                const R g = NM_FMA(gs[e], inv[j], alpha[j] * gv[e]);
                gv[e] = g;
                gs[e] = gz * d;
                gc[e] = g * oma[j];
            }
        }
    }
    free(gv);
    return 0;
}

#undef R
#if NM_SIMD
#undef NM_V
#undef NM_VL
#undef NM_VLOAD
#undef NM_VSTORE
#undef NM_VFMA
#undef NM_VSET1
#undef NM_VZERO
#endif
#endif
