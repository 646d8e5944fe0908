/* Native CPU step of DEEP R (loaded with ctypes by ``cpu_native.py``; used by ``sparse/deep_r.py``).
 *
 * The Python step of ``DeepR`` does the same work in numpy; it is the reference that these functions
 * reproduce bit for bit (tests/sparse/test_deep_r_native.py). They exist because one DEEP R step on the
 * paper's MNIST MLP touches only K ~ 3,500 connections: the arithmetic is a few microseconds and the
 * Python version's time went into per-call overhead (tens of numpy calls per step).
 *
 * Randomness is counter-based, so that it is a pure function of (seed, step, lane, j) and needs no
 * generator state: value j of stream (seed, step, lane) is SplitMix64's output (Steele, Lea, Flood,
 * OOPSLA 2014; Stafford's mix13 finalizer) at Weyl state base + (j + 1) * gamma, with base =
 * mix(seed ^ c1) ^ mix((step << 16 | lane) ^ c2). ``sparse/deep_r_random.py`` is the same generator in
 * numpy (and says why not Philox). Lanes: 0 the first try of the
 * normal draw of slot k (value k), 1 every further uniform the draw of slot k needs (values k * 1024 +
 * r), 2 the global split of reconnections, 256 + i the candidate positions of tensor i.
 *
 * Normals: ziggurat of Marsaglia & Tsang (J. Stat. Softw. 5(8), 2000), 128 layers; the layer index is
 * the low 7 bits and the 32-bit signed value the high 32 bits of one 64-bit draw (separate bits, which
 * avoids the original's layer/value correlation). Its tables are computed in Python (``math``, i.e. the
 * same libm) and passed in.
 *
 * Every function returns >= 0 on success; -1 when memory runs out, -2 when a slot's normal draw ran
 * out of its 1024 extra uniforms (probability below 1e-1000), -3 when a tensor needs the exact draw
 * (fewer than a quarter of its allowed connections dormant): nothing was changed, the caller falls
 * back to Python.
 *
 * The file includes itself twice to instantiate the float (``_f32``) and double (``_f64``) versions.
 */
#ifndef NM_REAL

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NM_LANE_NORMAL 0u
#define NM_LANE_NORMAL_MORE 1u
#define NM_LANE_SPLIT 2u
#define NM_LANE_DRAW 256u
#define NM_NORMAL_MORE 1024

#define NM_GAMMA 0x9E3779B97F4A7C15ull

static inline uint64_t nm_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    uint64_t base;
} nm_stream;

static nm_stream nm_stream_of(uint64_t seed, uint64_t step, uint32_t lane) {
    nm_stream s;
    s.base = nm_mix(seed ^ 0x6A09E667F3BCC909ull) ^ nm_mix(((step << 16) | lane) ^ 0xBB67AE8584CAA73Bull);
    return s;
}

static inline uint64_t nm_value(const nm_stream *s, uint64_t j) { return nm_mix(s->base + (j + 1) * NM_GAMMA); }

/* Uniform in [0, 1) (53 bits) and in (0, 1] (for logarithms). */
static double nm_u01(uint64_t v) { return (double)(v >> 11) * 0x1.0p-53; }
static double nm_u01_open0(uint64_t v) { return (double)((v >> 11) + 1) * 0x1.0p-53; }

/* The ziggurat's slow path for the first draw v of slot k (rejected by the fast test). */
static int nm_normal_slow(uint64_t v, uint64_t k, const nm_stream *more, const uint32_t *kn,
                          const double *wn, const double *fn, double *out) {
    const double r = 3.442620;
    uint64_t j = k * NM_NORMAL_MORE, end = j + NM_NORMAL_MORE;
    for (;;) {
        int iz = (int)(v & 127u);
        int32_t hz = (int32_t)(uint32_t)(v >> 32);
        double x = hz * wn[iz];
        if (iz == 0) { /* the tail beyond r */
            double y;
            do {
                if (j + 2 > end) return -2;
                x = -log(nm_u01_open0(nm_value(more, j++))) / r;
                y = -log(nm_u01_open0(nm_value(more, j++)));
            } while (y + y < x * x);
            *out = hz > 0 ? r + x : -r - x;
            return 0;
        }
        if (j + 1 > end) return -2;
        if (fn[iz] + nm_u01(nm_value(more, j++)) * (fn[iz - 1] - fn[iz]) < exp(-.5 * x * x)) {
            *out = x;
            return 0;
        }
        if (j + 1 > end) return -2;
        v = nm_value(more, j++);
        iz = (int)(v & 127u);
        hz = (int32_t)(uint32_t)(v >> 32);
        int64_t ahz = hz < 0 ? -(int64_t)hz : (int64_t)hz;
        if (ahz < (int64_t)kn[iz]) {
            *out = hz * wn[iz];
            return 0;
        }
    }
}

/* Values start .. start + n - 1 of a stream, in a loop without dependences (pipelined). */
#define NM_CHUNK 256
static void nm_first_values(const nm_stream *s, uint64_t start, int64_t n, uint64_t *out) {
    for (int64_t q = 0; q < n; q++) out[q] = nm_value(s, start + (uint64_t)q);
}

/* Standard normal of slot k from its first value v (the fast test, else the slow path). */
static inline int nm_normal(uint64_t v, uint64_t k, const nm_stream *more, const uint32_t *kn,
                            const double *wn, const double *fn, double *out) {
    int iz = (int)(v & 127u);
    int32_t hz = (int32_t)(uint32_t)(v >> 32);
    int64_t ahz = hz < 0 ? -(int64_t)hz : (int64_t)hz;
    if (ahz < (int64_t)kn[iz]) {
        *out = hz * wn[iz];
        return 0;
    }
    return nm_normal_slow(v, k, more, kn, wn, fn, out);
}

/* n standard normals of slots 0..n-1 (double), for the Python step. */
int deep_r_normals(int64_t n, uint64_t seed, uint64_t step, const uint32_t *kn, const double *wn,
                   const double *fn, double *out) {
    nm_stream first = nm_stream_of(seed, step, NM_LANE_NORMAL);
    nm_stream more = nm_stream_of(seed, step, NM_LANE_NORMAL_MORE);
    uint64_t vals[NM_CHUNK];
    for (int64_t c = 0; c < n; c += NM_CHUNK) {
        int64_t m = n - c < NM_CHUNK ? n - c : NM_CHUNK;
        nm_first_values(&first, (uint64_t)c, m, vals);
        for (int64_t q = 0; q < m; q++)
            if (nm_normal(vals[q], (uint64_t)(c + q), &more, kn, wn, fn, out + c + q)) return -2;
    }
    return 0;
}

#define NM_REAL float
#define NM_FMA fmaf
#define NM_NAME(x) x##_f32
#include "_deep_r_cpu.c" /* this file, again */
#undef NM_REAL
#undef NM_FMA
#undef NM_NAME

#define NM_REAL double
#define NM_FMA fma
#define NM_NAME(x) x##_f64
#include "_deep_r_cpu.c" /* this file, again */
#undef NM_REAL
#undef NM_FMA
#undef NM_NAME

#else /* ---------------------------------------------------------------- template body */

#define R NM_REAL

/* theta's gradient: out[k] = sign[k] * grad_i[index[k]] for the slots k of tensor i (grad_i = 0 when
 * its address is 0: no gradient). Slots are grouped by tensor (counts). */
int NM_NAME(deep_r_gather)(int64_t n_t, const int64_t *counts, const int64_t *grads, const int64_t *index,
                           const R *sign, R *out) {
    int64_t k = 0;
    for (int64_t i = 0; i < n_t; i++) {
        const R *g = (const R *)(intptr_t)grads[i];
        int64_t end = k + counts[i];
        if (!g) {
            for (; k < end; k++) out[k] = 0;
            continue;
        }
        for (; k < end; k++) out[k] = sign[k] * g[index[k]];
    }
    return 0;
}

/* After the optimizer's step, or fused with plain SGD (sgd = 1: theta += (R)(-lr) * g with g = sign *
 * grad_i[index], as torch's ``add_(g, alpha=-lr)``: one fused multiply-add when fma = 1, as torch's
 * vectorised CPU kernel on FMA hardware): theta += (R)z * (R)noise_scale (when noise_scale > 0),
 * theta -= (R)l1_lr (when > 0); a slot with theta <= 0 dies (listed in died, its weight set to 0),
 * every other slot's weight is sign * theta. Returns the number of deaths. */
int64_t NM_NAME(deep_r_post)(int64_t n_t, const int64_t *counts, R *theta, const R *sign, const int64_t *index,
                             const int64_t *weights, int64_t sgd, const int64_t *grads, double lr, int64_t fma_,
                             double noise_scale, double l1_lr, uint64_t seed, uint64_t step,
                             const uint32_t *kn, const double *wn, const double *fn, int64_t *died) {
    nm_stream first = nm_stream_of(seed, step, NM_LANE_NORMAL);
    nm_stream more = nm_stream_of(seed, step, NM_LANE_NORMAL_MORE);
    const R scale = (R)noise_scale, shrink = (R)l1_lr;
    int64_t K = 0, n_died = 0;
    for (int64_t i = 0; i < n_t; i++) K += counts[i];
    uint64_t vals[NM_CHUNK];
    for (int64_t c = 0, i = 0, stop = 0; c < K; c += NM_CHUNK) {
        int64_t m = K - c < NM_CHUNK ? K - c : NM_CHUNK;
        /* the gradient and weight entries of the chunk are scattered over the tensors: ask for their
         * cache lines first (independent misses overlap), then compute */
        for (int64_t q = 0, i2 = i, stop2 = stop; q < m; q++) {
            while (c + q >= stop2) stop2 += counts[i2++];
            const R *g = (const R *)(intptr_t)(sgd ? grads[i2 - 1] : 0);
            if (g) __builtin_prefetch(g + index[c + q], 0, 0);
            __builtin_prefetch((R *)(intptr_t)weights[i2 - 1] + index[c + q], 1, 0);
        }
        if (noise_scale > 0) nm_first_values(&first, (uint64_t)c, m, vals);
        for (int64_t q = 0; q < m; q++) {
            int64_t k = c + q;
            while (k >= stop) stop += counts[i++]; /* slot k belongs to tensor i - 1 */
            R *w = (R *)(intptr_t)weights[i - 1];
            R th = theta[k];
            if (sgd) {
                const R *g = (const R *)(intptr_t)grads[i - 1];
                const R d = g ? sign[k] * g[index[k]] : (R)0, a = (R)(-lr);
                th = fma_ ? NM_FMA(d, a, th) : th + d * a;
            }
            if (noise_scale > 0) {
                double z;
                if (nm_normal(vals[q], (uint64_t)k, &more, kn, wn, fn, &z)) return -2;
                R n = (R)z;
                n = n * scale;
                th = th + n;
            }
            if (l1_lr > 0) th = th - shrink;
            theta[k] = th;
            if (th <= 0) {
                died[n_died++] = k;
                w[index[k]] = 0;
            } else {
                w[index[k]] = sign[k] * th;
            }
        }
    }
    return n_died;
}

/* Reconnections after n_died deaths (slots died[], ascending): the dead connections become dormant;
 * gained[i] reconnections per tensor (= lost[i] for per-tensor budgets, else drawn one by one with
 * probability proportional to split_w among tensors that still have room); each tensor's new positions
 * are the first distinct dormant candidates floor(u * n_allowed) of its lane (mapped through allowed);
 * they take the dead slots in order, theta = epsilon, weight sign * epsilon. When connections moved
 * between tensors, slots are regrouped by tensor (stable) and perm (length K) receives the permutation
 * (new slot s held old slot perm[s]); returns 1 then, else 0. counts is updated. */
int64_t NM_NAME(deep_r_rewire)(int64_t n_died, const int64_t *died, int64_t n_t, int64_t *counts,
                               int64_t *index, R *sign, R *theta, const int64_t *active_ptrs,
                               const int64_t *allowed_ptrs, const int64_t *n_allowed,
                               const int64_t *sign_tables, const int64_t *weights, int64_t global,
                               const double *split_w, double epsilon, uint64_t seed, uint64_t step,
                               int64_t *perm) {
    int64_t K = 0;
    for (int64_t i = 0; i < n_t; i++) K += counts[i];
    int64_t *lost = calloc((size_t)(3 * n_t), sizeof(int64_t));
    if (!lost) return -1;
    int64_t *gained = lost + n_t, *after = lost + 2 * n_t;
    /* owner of each dead slot: tensor boundaries at the cumulative counts */
    for (int64_t q = 0, i = 0, stop = counts[0]; q < n_died; q++) {
        while (died[q] >= stop) stop += counts[++i];
        lost[i]++;
    }
    for (int64_t i = 0; i < n_t; i++) after[i] = counts[i] - lost[i];
    if (!global) {
        for (int64_t i = 0; i < n_t; i++) gained[i] = lost[i];
    } else {
        nm_stream split = nm_stream_of(seed, step, NM_LANE_SPLIT);
        for (int64_t j = 0; j < n_died; j++) {
            double total = 0;
            int64_t last = -1;
            for (int64_t i = 0; i < n_t; i++)
                if (n_allowed[i] - after[i] - gained[i] > 0 && split_w[i] > 0) {
                    total += split_w[i];
                    last = i;
                }
            if (last < 0) { /* no weighted tensor has room: any tensor with room (weights all 0) */
                for (int64_t i = 0; i < n_t && last < 0; i++)
                    if (n_allowed[i] - after[i] - gained[i] > 0) last = i;
                gained[last]++;
                continue;
            }
            double t = nm_u01(nm_value(&split, (uint64_t)j)) * total, cum = 0;
            int64_t pick = last;
            for (int64_t i = 0; i < n_t; i++)
                if (n_allowed[i] - after[i] - gained[i] > 0 && split_w[i] > 0) {
                    cum += split_w[i];
                    if (t < cum) {
                        pick = i;
                        break;
                    }
                }
            gained[pick]++;
        }
    }
    for (int64_t i = 0; i < n_t; i++) /* the exact draw is Python's: change nothing */
        if (gained[i] && 4 * (n_allowed[i] - after[i]) < n_allowed[i]) {
            free(lost);
            return -3;
        }
    /* deaths: dormant, weight 0 */
    for (int64_t q = 0, i = 0, stop = counts[0]; q < n_died; q++) {
        while (died[q] >= stop) stop += counts[++i];
        uint8_t *active = (uint8_t *)(intptr_t)active_ptrs[i];
        R *w = (R *)(intptr_t)weights[i];
        active[index[died[q]]] = 0;
        w[index[died[q]]] = 0;
    }
    /* births, tensor by tensor, into the dead slots in order */
    int moved = 0;
    int64_t q = 0;
    const R eps = (R)epsilon;
    for (int64_t i = 0; i < n_t; i++) {
        if (gained[i] != lost[i]) moved = 1;
        if (!gained[i]) continue;
        nm_stream draw = nm_stream_of(seed, step, NM_LANE_DRAW + (uint32_t)i);
        uint8_t *active = (uint8_t *)(intptr_t)active_ptrs[i];
        const int64_t *allowed = (const int64_t *)(intptr_t)allowed_ptrs[i];
        const int8_t *table = (const int8_t *)(intptr_t)sign_tables[i];
        R *w = (R *)(intptr_t)weights[i];
        int64_t n = n_allowed[i];
        for (uint64_t j = 0, got = 0; got < (uint64_t)gained[i]; j++) {
            int64_t cand = (int64_t)(nm_u01(nm_value(&draw, j)) * (double)n);
            if (cand > n - 1) cand = n - 1;
            int64_t pos = allowed ? allowed[cand] : cand;
            if (active[pos]) continue;
            active[pos] = 1;
            int64_t slot = died[q++];
            index[slot] = pos;
            sign[slot] = (R)table[pos];
            theta[slot] = eps;
            w[pos] = sign[slot] * eps;
            got++;
        }
    }
    if (!moved) {
        for (int64_t i = 0; i < n_t; i++) counts[i] = after[i] + gained[i];
        free(lost);
        return 0;
    }
    /* regroup: stable counting sort of the slots by owner */
    int32_t *owner = malloc((size_t)K * sizeof(int32_t));
    int64_t *tmp_i = malloc((size_t)K * sizeof(int64_t));
    R *tmp_r = malloc((size_t)K * sizeof(R));
    if (!owner || !tmp_i || !tmp_r) {
        free(owner);
        free(tmp_i);
        free(tmp_r);
        free(lost);
        return -1;
    }
    for (int64_t i = 0, k = 0; i < n_t; i++)
        for (int64_t c = 0; c < counts[i]; c++) owner[k++] = (int32_t)i;
    q = 0;
    for (int64_t i = 0; i < n_t; i++)
        for (int64_t c = 0; c < gained[i]; c++) owner[died[q++]] = (int32_t)i;
    for (int64_t i = 0, start = 0; i < n_t; i++) { /* start of each tensor's new block */
        int64_t size = after[i] + gained[i];
        after[i] = start; /* reused as the running write position */
        start += size;
        counts[i] = size;
    }
    for (int64_t k = 0; k < K; k++) perm[after[owner[k]]++] = k;
    for (int64_t s = 0; s < K; s++) tmp_i[s] = index[perm[s]];
    memcpy(index, tmp_i, (size_t)K * sizeof(int64_t));
    for (int64_t s = 0; s < K; s++) tmp_r[s] = sign[perm[s]];
    memcpy(sign, tmp_r, (size_t)K * sizeof(R));
    for (int64_t s = 0; s < K; s++) tmp_r[s] = theta[perm[s]];
    memcpy(theta, tmp_r, (size_t)K * sizeof(R));
    free(owner);
    free(tmp_i);
    free(tmp_r);
    free(lost);
    return 1;
}

#undef R
#endif
