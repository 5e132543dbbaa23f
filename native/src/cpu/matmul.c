/* Linear layers: y[m, n] = x[m, k] · W[n, k]ᵀ (+ bias[n]).
 *
 * Kernels (one dispatch point, to_linear):
 *  - "dot tiles": up to 4 rows of x against 4 rows of W at a time, both read along k (W in its
 *    safetensors layout, never copied or written). Every W element loaded is used for all rows of
 *    the tile, so M == 1 (decode GEMV) streams W exactly once and small M (2..16) reuses each
 *    loaded W row for every row of x. Threads split N. Variants:
 *      avx512-bf16 dot   x bf16, W bf16: vdpbf16ps (exact bf16 products, fp32 accumulation)
 *      avx512 f32 dot    any other dtype mix: x and W widened to f32 (bf16 by a 16-bit shift,
 *                        f16 by vcvtph2ps), FMA in fp32 -- exact fp32 numerics for f32 x
 *      avx2 f32 dot      same with 8 lanes
 *      generic           plain C, W row widened once and reused for every row of x
 *    For larger M the tiles walk a block of W rows (sized to stay in L2) for every row group.
 *  - "packed GEMM" (x bf16, W bf16, AVX512-BF16, M >= TO_GEMM_MIN_M = 80): x packed once into
 *    row panels of MR=6 bf16 pairs, W packed per (N block of 256, K block of 256) into panels of
 *    NR=64 columns of bf16 pairs, a 6x64 register-blocked vdpbf16ps microkernel (24 accumulators)
 *    with the x pair broadcast from memory; each W sub-panel (32 KiB) stays in L1 while all x
 *    panels stream past it; partial sums in an fp32 buffer across K blocks, then bias and one
 *    rounding. (KC/NC/loop order tuned on Zen 5: ~450-500 GFLOP/s per thread, 82-90% of the
 *    measured vdpbf16ps peak, versus ~400 with x panels outer and KC=512.)
 *    Threads split N blocks (and M when N has too few blocks).
 *  f32 x with bf16 W keeps fp32 activations exact (no rounding of x to bf16): it runs the f32
 *  dot tiles at every M. bf16 speed needs bf16 activations.
 */
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TO_X86 1
#endif

#include "../common/internal.h"

/* Below this many rows the bf16 dot tiles beat the packed GEMM (which pays ~0.2 ns per weight
 * element for packing): measured on Zen 5, dot tiles ~290 GFLOP/s/thread up to m=64, packed GEMM
 * ~250 at m=64, ~310 at m=128, ~400 at m=512. */
#ifndef TO_GEMM_MIN_M
#define TO_GEMM_MIN_M 80
#endif
#define TO_STR2(x) #x
#define TO_STR(x) TO_STR2(x)

typedef struct {
    const void *x, *w, *bias;
    void *y;
    int64_t m, n, k, ldx, ldy;
    int xt, wt, bt, yt;
} lin_t;

static inline float ld_scalar(const void *p, int dt, int64_t i) {
    switch (dt) {
    case TO_F32: return ((const float *)p)[i];
    case TO_BF16: return to_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return to_f16_to_f32(((const uint16_t *)p)[i]);
    }
}

/* y[i, j] = v + bias[j], rounded once to y's dtype. */
static inline void store_out(const lin_t *a, int64_t i, int64_t j, float v) {
    if (a->bias) v += ld_scalar(a->bias, a->bt, j);
    if (a->yt == TO_F32)
        ((float *)a->y)[i * a->ldy + j] = v;
    else
        ((uint16_t *)a->y)[i * a->ldy + j] = to_f32_to_bf16(v);
}

static inline const char *xrow(const lin_t *a, int64_t i) {
    return (const char *)a->x + (size_t)(i * a->ldx) * (a->xt == TO_F32 ? 4 : 2);
}
static inline const char *wrow(const lin_t *a, int64_t j) {
    return (const char *)a->w + (size_t)(j * a->k) * (a->wt == TO_F32 ? 4 : 2);
}

/* Rows of W per block such that the block stays in L2 while every row group of x walks it. */
static int64_t w_block_rows(const lin_t *a) {
    int64_t bytes = a->k * (a->wt == TO_F32 ? 4 : 2);
    int64_t rows = (256 * 1024) / (bytes > 0 ? bytes : 1);
    rows &= ~(int64_t)3;
    return rows < 4 ? 4 : rows;
}

/* ==== generic C ================================================================================ */
typedef struct {
    const lin_t *a;
    float *scratch; /* nth * k floats */
} gen_ctx;

static void generic_task(void *vctx, int ith, int nth) {
    gen_ctx *ctx = vctx;
    const lin_t *a = ctx->a;
    int64_t j0, j1, K = a->k;
    to_split_rows(a->n, ith, nth, &j0, &j1);
    float *wf = ctx->scratch + (size_t)ith * (size_t)(K > 0 ? K : 1);
    for (int64_t j = j0; j < j1; j++) {
        const char *wr = wrow(a, j);
        for (int64_t t = 0; t < K; t++) wf[t] = ld_scalar(wr, a->wt, t);
        for (int64_t i = 0; i < a->m; i++) {
            float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int64_t t = 0;
            if (a->xt == TO_F32) {
                const float *xr = (const float *)xrow(a, i);
                for (; t + 8 <= K; t += 8)
                    for (int u = 0; u < 8; u++) s[u] += xr[t + u] * wf[t + u];
                for (; t < K; t++) s[0] += xr[t] * wf[t];
            } else {
                const uint16_t *xr = (const uint16_t *)xrow(a, i);
                for (; t + 8 <= K; t += 8)
                    for (int u = 0; u < 8; u++) s[u] += to_bf16_to_f32(xr[t + u]) * wf[t + u];
                for (; t < K; t++) s[0] += to_bf16_to_f32(xr[t]) * wf[t];
            }
            store_out(a, i, j, ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
        }
    }
}

/* ==== shared driver of the dot tiles ============================================================ */
typedef void (*tile_fn)(const lin_t *a, int64_t i0, int rx, int64_t j0);

typedef struct {
    const lin_t *a;
    tile_fn tile;
} dot_ctx;

/* Tasks per region for the dot tiles: a few per thread, claimed dynamically, so a thread that
 * streams faster (DRAM is shared and uneven) takes more rows instead of waiting at the end. */
#define TO_DOT_TASKS_PER_THREAD 4
static int tasks_for_groups(int64_t groups) {
    int64_t nth = to_get_num_threads();
    int64_t want = nth * TO_DOT_TASKS_PER_THREAD;
    int64_t min_groups_per_task = 16; /* 64 rows: keeps tiny matrices in one task per thread */
    if (want * min_groups_per_task > groups) want = groups / min_groups_per_task;
    if (want < nth) want = nth;
    return (int)want;
}
static int dot_tasks(const lin_t *a) { return tasks_for_groups((a->n + 3) / 4); }

static void dot_task(void *vctx, int ith, int nth) {
    const dot_ctx *ctx = vctx;
    const lin_t *a = ctx->a;
    int64_t groups = (a->n + 3) / 4, g0, g1;
    to_split_rows(groups, ith, nth, &g0, &g1);
    int64_t nb = w_block_rows(a) / 4;
    for (int64_t gb = g0; gb < g1; gb += nb) {
        int64_t ge = gb + nb < g1 ? gb + nb : g1;
        for (int64_t i0 = 0; i0 < a->m; i0 += 4) {
            int rx = (int)(a->m - i0 < 4 ? a->m - i0 : 4);
            for (int64_t g = gb; g < ge; g++) ctx->tile(a, i0, rx, g * 4);
        }
    }
}

#ifdef TO_X86
/* ==== AVX-512 =================================================================================== */
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))
#define T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

INLINE T512 __m512 ld16_512(const char *p, int64_t off, int dt, __mmask16 m) {
    if (dt == TO_F32) return _mm512_maskz_loadu_ps(m, (const float *)p + off);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + off);
    if (dt == TO_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

INLINE T512 __m512 ld16_512_full(const char *p, int64_t off, int dt) {
    if (dt == TO_F32) return _mm512_loadu_ps((const float *)p + off);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + off));
    if (dt == TO_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* Tile pointers: rows past the end of W repeat the last row (results discarded). */
INLINE void tile_ptrs(const lin_t *a, int64_t i0, int rx, int64_t j0, const char **xr,
                      const char **wr) {
    for (int r = 0; r < 4; r++) xr[r] = xrow(a, i0 + (r < rx ? r : rx - 1));
    for (int c = 0; c < 4; c++) wr[c] = wrow(a, j0 + c < a->n ? j0 + c : a->n - 1);
}

INLINE void tile_store(const lin_t *a, int64_t i0, int rx, int64_t j0, float s[4][4]) {
    for (int r = 0; r < rx; r++)
        for (int c = 0; c < 4; c++)
            if (j0 + c < a->n) store_out(a, i0 + r, j0 + c, s[r][c]);
}

INLINE T512 void tile512_f32_impl(const lin_t *a, int64_t i0, int rx, int64_t j0, int xt, int wt) {
    const char *xr[4], *wr[4];
    tile_ptrs(a, i0, rx, j0, xr, wr);
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t K = a->k, k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[4];
        for (int c = 0; c < 4; c++) wv[c] = ld16_512_full(wr[c], k, wt);
        for (int r = 0; r < rx; r++) {
            __m512 xv = ld16_512_full(xr[r], k, xt);
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        __m512 wv[4];
        for (int c = 0; c < 4; c++) wv[c] = ld16_512(wr[c], k, wt, m);
        for (int r = 0; r < rx; r++) {
            __m512 xv = ld16_512(xr[r], k, xt, m);
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    float s[4][4];
    for (int r = 0; r < rx; r++)
        for (int c = 0; c < 4; c++) s[r][c] = _mm512_reduce_add_ps(acc[r][c]);
    tile_store(a, i0, rx, j0, s);
}

#define TILE512_F32(XT, WT, NAME)                                                                   \
    static T512 void NAME(const lin_t *a, int64_t i0, int rx, int64_t j0) {                        \
        switch (rx) {                                                                              \
        case 1: tile512_f32_impl(a, i0, 1, j0, XT, WT); break;                                     \
        case 2: tile512_f32_impl(a, i0, 2, j0, XT, WT); break;                                     \
        case 3: tile512_f32_impl(a, i0, 3, j0, XT, WT); break;                                     \
        default: tile512_f32_impl(a, i0, 4, j0, XT, WT); break;                                    \
        }                                                                                          \
    }
TILE512_F32(TO_F32, TO_BF16, tile512_f32x_bf16w)
TILE512_F32(TO_F32, TO_F16, tile512_f32x_f16w)
TILE512_F32(TO_F32, TO_F32, tile512_f32x_f32w)
TILE512_F32(TO_BF16, TO_BF16, tile512_bf16x_bf16w)
TILE512_F32(TO_BF16, TO_F16, tile512_bf16x_f16w)
TILE512_F32(TO_BF16, TO_F32, tile512_bf16x_f32w)

static tile_fn pick_tile512(int xt, int wt) {
    if (xt == TO_F32) return wt == TO_BF16 ? tile512_f32x_bf16w : wt == TO_F16 ? tile512_f32x_f16w
                                                                               : tile512_f32x_f32w;
    return wt == TO_BF16 ? tile512_bf16x_bf16w : wt == TO_F16 ? tile512_bf16x_f16w
                                                              : tile512_bf16x_f32w;
}

/* bf16 x bf16 with vdpbf16ps: 32 k per instruction. */
INLINE T512BF void tile512_dp_impl(const lin_t *a, int64_t i0, int rx, int64_t j0) {
    const char *xr[4], *wr[4];
    tile_ptrs(a, i0, rx, j0, xr, wr);
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t K = a->k, k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512i wv[4];
        for (int c = 0; c < 4; c++) wv[c] = _mm512_loadu_si512((const uint16_t *)wr[c] + k);
        for (int r = 0; r < rx; r++) {
            __m512i xv = _mm512_loadu_si512((const uint16_t *)xr[r] + k);
            for (int c = 0; c < 4; c++)
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv, (__m512bh)wv[c]);
        }
    }
    if (k < K) {
        __mmask32 m = (__mmask32)((1ull << (K - k)) - 1ull);
        __m512i wv[4];
        for (int c = 0; c < 4; c++) wv[c] = _mm512_maskz_loadu_epi16(m, (const uint16_t *)wr[c] + k);
        for (int r = 0; r < rx; r++) {
            __m512i xv = _mm512_maskz_loadu_epi16(m, (const uint16_t *)xr[r] + k);
            for (int c = 0; c < 4; c++)
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv, (__m512bh)wv[c]);
        }
    }
    float s[4][4];
    for (int r = 0; r < rx; r++)
        for (int c = 0; c < 4; c++) s[r][c] = _mm512_reduce_add_ps(acc[r][c]);
    tile_store(a, i0, rx, j0, s);
}

static T512BF void tile512_dp(const lin_t *a, int64_t i0, int rx, int64_t j0) {
    switch (rx) {
    case 1: tile512_dp_impl(a, i0, 1, j0); break;
    case 2: tile512_dp_impl(a, i0, 2, j0); break;
    case 3: tile512_dp_impl(a, i0, 3, j0); break;
    default: tile512_dp_impl(a, i0, 4, j0); break;
    }
}

/* Both cache lines of each 128-byte step are prefetched this far ahead in the weight stream
 * (past the row end into the next rows, which are contiguous; a prefetch past the matrix never
 * faults). In-process A/B on the real models with huge-page weights: Qwen3-0.6B decode step 9%
 * faster, Qwen3-4B 3% (median) to 18% (fast-bandwidth periods); 512 bytes ahead was 17% slower,
 * 2-16 KiB all about the same. */
#define TO_GEMV_PREFETCH_BYTES 4096
/* Up to this many x rows the row-stream kernel serves bf16 x bf16 (the x rows are walked four at a
 * time over each L2-resident W block). Batched decode of Qwen3-0.6B, in-process A/B against the
 * 4x4 tile: 8 sequences 21% faster per step, 16: 11%, 32: 4%, 64: even. */
#define TO_ROW_STREAM_MAX_M 32
/* bf16 x bf16 for decode (m <= TO_ROW_STREAM_MAX_M): the tile's four W rows are streamed one
 * after another, so a task reads its W rows as one sequential stream (rows are contiguous) instead
 * of four streams 2-6 KiB apart; measured on Zen 4, one thread streams a 311 MB 1024-wide matrix
 * 8-15% faster this way. Each call takes up to 4 x rows (a few KiB each, in L1/L2). */
INLINE T512BF void row512_dp_impl(const lin_t *a, int64_t i0, int rx, int64_t j0) {
    const char *xr[4], *wr[4];
    tile_ptrs(a, i0, rx, j0, xr, wr);
    float s[4][4];
    int64_t K = a->k, K64 = K & ~(int64_t)63;
    int cols = a->n - j0 < 4 ? (int)(a->n - j0) : 4;
    for (int c = 0; c < cols; c++) {
        const uint16_t *w = (const uint16_t *)wr[c];
        __m512 acc0[4], acc1[4];
        for (int r = 0; r < 4; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k < K64; k += 64) {
            _mm_prefetch((const char *)(w + k) + TO_GEMV_PREFETCH_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)(w + k) + TO_GEMV_PREFETCH_BYTES + 64, _MM_HINT_T0);
            __m512i w0 = _mm512_loadu_si512(w + k), w1 = _mm512_loadu_si512(w + k + 32);
            for (int r = 0; r < rx; r++) {
                const uint16_t *x = (const uint16_t *)xr[r];
                acc0[r] = _mm512_dpbf16_ps(acc0[r], (__m512bh)_mm512_loadu_si512(x + k),
                                           (__m512bh)w0);
                acc1[r] = _mm512_dpbf16_ps(acc1[r], (__m512bh)_mm512_loadu_si512(x + k + 32),
                                           (__m512bh)w1);
            }
        }
        for (; k < K; k += 32) {
            int64_t left = K - k < 32 ? K - k : 32;
            __mmask32 m = (__mmask32)(left == 32 ? 0xffffffffu : ((1u << left) - 1u));
            __m512i w0 = _mm512_maskz_loadu_epi16(m, w + k);
            for (int r = 0; r < rx; r++)
                acc0[r] = _mm512_dpbf16_ps(
                    acc0[r], (__m512bh)_mm512_maskz_loadu_epi16(m, (const uint16_t *)xr[r] + k),
                    (__m512bh)w0);
        }
        for (int r = 0; r < rx; r++) s[r][c] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
    }
    tile_store(a, i0, rx, j0, s);
}

static T512BF void row512_dp(const lin_t *a, int64_t i0, int rx, int64_t j0) {
    switch (rx) {
    case 1: row512_dp_impl(a, i0, 1, j0); break;
    case 2: row512_dp_impl(a, i0, 2, j0); break;
    case 3: row512_dp_impl(a, i0, 3, j0); break;
    default: row512_dp_impl(a, i0, 4, j0); break;
    }
}

/* ---- packed bf16 GEMM ------------------------------------------------------------------------ */
#define GM_MR 6
#define GM_NR 64
#ifndef GM_KC
#define GM_KC 256 /* k per block (even): a 64-column W sub-panel is 32 KiB, fits L1 */
#endif
#ifndef GM_NC
#define GM_NC 256 /* columns per task block (multiple of GM_NR); W block 128 KiB in L2 */
#endif

typedef struct {
    const lin_t *a;
    uint32_t *xp;     /* [ceil(m/MR)][kp2][MR] bf16 pairs */
    int64_t kp2;      /* ceil(k/2) */
    int64_t mpanels;  /* ceil(m/MR) */
    int64_t nblocks;  /* ceil(n/NC) */
    int64_t mchunks;  /* M split: panels per chunk = ceil(mpanels/mchunks) */
    int64_t cstride;  /* floats per thread in cbuf */
    float *cbuf;      /* nth * cstride */
    uint32_t *wbuf;   /* nth * NC * KC/2 */
} gemm_ctx;

static void pack_x_task(void *vctx, int ith, int nth) {
    gemm_ctx *g = vctx;
    const lin_t *a = g->a;
    int64_t p0, p1;
    to_split_rows(g->mpanels, ith, nth, &p0, &p1);
    for (int64_t p = p0; p < p1; p++) {
        uint32_t *dst = g->xp + (size_t)(p * g->kp2 * GM_MR);
        for (int r = 0; r < GM_MR; r++) {
            int64_t i = p * GM_MR + r;
            if (i >= a->m) {
                for (int64_t q = 0; q < g->kp2; q++) dst[q * GM_MR + r] = 0;
                continue;
            }
            const uint16_t *xr = (const uint16_t *)xrow(a, i);
            int64_t q = 0;
            for (; 2 * q + 1 < a->k; q++)
                dst[q * GM_MR + r] = (uint32_t)xr[2 * q] | ((uint32_t)xr[2 * q + 1] << 16);
            if (q < g->kp2) dst[q * GM_MR + r] = xr[2 * q];
        }
    }
}

/* Packs W[j0 : j0+nc, k0 : k0+kc] into panels of NR columns: [nc/NR][kc2][NR] pairs. */
static void pack_w_block(const lin_t *a, uint32_t *dst, int64_t j0, int64_t k0, int64_t kc) {
    int64_t kc2 = (kc + 1) / 2;
    for (int64_t jj = 0; jj < GM_NC; jj++) {
        int64_t j = j0 + jj;
        uint32_t *d = dst + (size_t)((jj / GM_NR) * kc2 * GM_NR + (jj % GM_NR));
        if (j >= a->n) {
            for (int64_t q = 0; q < kc2; q++) d[q * GM_NR] = 0;
            continue;
        }
        const uint16_t *wr = (const uint16_t *)wrow(a, j) + k0;
        int64_t q = 0;
        for (; 2 * q + 1 < kc; q++) {
            uint32_t v;
            memcpy(&v, wr + 2 * q, 4);
            d[q * GM_NR] = v;
        }
        if (q < kc2) d[q * GM_NR] = wr[2 * q];
    }
}

/* c[6][64] (row stride ldc) (+)= xp-panel · wp-panel over kc2 pairs. */
static T512BF void ukr_bf16_6x64(int64_t kc2, const uint32_t *xp, const uint32_t *wp, float *c,
                                 int64_t ldc, int accumulate) {
    __m512 acc[GM_MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < GM_MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t q = 0; q < kc2; q++) {
        const uint32_t *wq = wp + q * GM_NR;
        __m512i w0 = _mm512_loadu_si512(wq), w1 = _mm512_loadu_si512(wq + 16);
        __m512i w2 = _mm512_loadu_si512(wq + 32), w3 = _mm512_loadu_si512(wq + 48);
        const uint32_t *xq = xp + q * GM_MR;
#pragma GCC unroll 6
        for (int r = 0; r < GM_MR; r++) {
            __m512bh xb = (__m512bh)_mm512_set1_epi32((int)xq[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xb, (__m512bh)w0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xb, (__m512bh)w1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], xb, (__m512bh)w2);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], xb, (__m512bh)w3);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < GM_MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            float *cp = c + r * ldc + v * 16;
            __m512 t = acc[r][v];
            if (accumulate) t = _mm512_add_ps(t, _mm512_loadu_ps(cp));
            _mm512_storeu_ps(cp, t);
        }
}

/* y rows [i0, i1), columns [j0, j0+nc) from the fp32 block c (row stride GM_NC), plus bias. */
static T512 void gemm_finalize(const lin_t *a, const float *c, int64_t i0, int64_t i1, int64_t j0,
                               int64_t nc) {
    for (int64_t i = i0; i < i1; i++) {
        const float *cr = c + (i - i0) * GM_NC;
        for (int64_t jj = 0; jj < nc; jj += 16) {
            int64_t left = nc - jj;
            __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
            __m512 v = _mm512_maskz_loadu_ps(m, cr + jj);
            if (a->bias) {
                const char *b = (const char *)a->bias;
                v = _mm512_add_ps(v, a->bt == TO_F32    ? ld16_512(b, j0 + jj, TO_F32, m)
                                     : a->bt == TO_BF16 ? ld16_512(b, j0 + jj, TO_BF16, m)
                                                        : ld16_512(b, j0 + jj, TO_F16, m));
            }
            if (a->yt == TO_F32) {
                _mm512_mask_storeu_ps((float *)a->y + i * a->ldy + j0 + jj, m, v);
            } else {
                /* round to nearest even, NaN kept quiet: same as to_f32_to_bf16 */
                __m512i u = _mm512_castps_si512(v);
                __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
                __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
                r = _mm512_srli_epi32(r, 16);
                __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                r = _mm512_mask_mov_epi32(
                    r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
                _mm256_mask_storeu_epi16((uint16_t *)a->y + i * a->ldy + j0 + jj, m,
                                         _mm512_cvtepi32_epi16(r));
            }
        }
    }
}

static void gemm_task(void *vctx, int ith, int nth) {
    gemm_ctx *g = vctx;
    const lin_t *a = g->a;
    int64_t ntasks = g->nblocks * g->mchunks, t0, t1;
    to_split_rows(ntasks, ith, nth, &t0, &t1);
    float *cbuf = g->cbuf + (size_t)ith * (size_t)g->cstride;
    uint32_t *wbuf = g->wbuf + (size_t)ith * (GM_NC * GM_KC / 2);
    int64_t ppc = (g->mpanels + g->mchunks - 1) / g->mchunks; /* panels per chunk */
    for (int64_t t = t0; t < t1; t++) {
        int64_t nb = t / g->mchunks, mc = t % g->mchunks;
        int64_t j0 = nb * GM_NC, nc = a->n - j0 < GM_NC ? a->n - j0 : GM_NC;
        int64_t p0 = mc * ppc, p1 = p0 + ppc < g->mpanels ? p0 + ppc : g->mpanels;
        if (p0 >= p1) continue;
        int64_t nsub = (nc + GM_NR - 1) / GM_NR;
        for (int64_t k0 = 0; k0 < a->k; k0 += GM_KC) {
            int64_t kc = a->k - k0 < GM_KC ? a->k - k0 : GM_KC, kc2 = (kc + 1) / 2;
            pack_w_block(a, wbuf, j0, k0, kc);
            /* one W sub-panel (kc2 x 64 pairs, 32 KiB at KC=256) stays in L1 while every x
             * panel of the chunk streams past it from L2 */
            for (int64_t s = 0; s < nsub; s++)
                for (int64_t p = p0; p < p1; p++) {
                    const uint32_t *xp = g->xp + (size_t)((p * g->kp2 + k0 / 2) * GM_MR);
                    float *c = cbuf + (p - p0) * GM_MR * GM_NC + s * GM_NR;
                    ukr_bf16_6x64(kc2, xp, wbuf + s * kc2 * GM_NR, c, GM_NC, k0 > 0);
                }
        }
        int64_t i0 = p0 * GM_MR, i1 = p1 * GM_MR < a->m ? p1 * GM_MR : a->m;
        gemm_finalize(a, cbuf, i0, i1, j0, nc);
    }
}

static int run_gemm_bf16(const lin_t *a) {
    int nth = to_get_num_threads();
    gemm_ctx g;
    memset(&g, 0, sizeof g);
    g.a = a;
    g.kp2 = (a->k + 1) / 2;
    g.mpanels = (a->m + GM_MR - 1) / GM_MR;
    g.nblocks = (a->n + GM_NC - 1) / GM_NC;
    g.mchunks = 1;
    if (g.nblocks < 4 * (int64_t)nth) {
        g.mchunks = (4 * (int64_t)nth + g.nblocks - 1) / g.nblocks;
        if (g.mchunks > g.mpanels) g.mchunks = g.mpanels;
    }
    int64_t ppc = (g.mpanels + g.mchunks - 1) / g.mchunks;
    g.cstride = ppc * GM_MR * GM_NC;
    void *xp = NULL, *cb = NULL, *wb = NULL;
    int rc = to_alloc((size_t)(g.mpanels * g.kp2 * GM_MR) * 4, &xp);
    if (rc == TO_OK) rc = to_alloc((size_t)nth * (size_t)g.cstride * 4, &cb);
    if (rc == TO_OK) rc = to_alloc((size_t)nth * (GM_NC * GM_KC / 2) * 4, &wb);
    if (rc == TO_OK) {
        g.xp = xp;
        g.cbuf = cb;
        g.wbuf = wb;
        to_parallel_run(pack_x_task, &g, nth);
        to_parallel_run(gemm_task, &g, nth);
    }
    to_free(xp);
    to_free(cb);
    to_free(wb);
    return rc;
}

/* ==== AVX2 + FMA ================================================================================ */
#define T256 __attribute__((target("avx2,fma,f16c")))

INLINE T256 __m256 ld8_256(const char *p, int64_t off, int dt) {
    if (dt == TO_F32) return _mm256_loadu_ps((const float *)p + off);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + off));
    if (dt == TO_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

INLINE T256 float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE T256 void tile256_impl(const lin_t *a, int64_t i0, int rx, int64_t j0, int xt, int wt) {
    const char *xr[4], *wr[4];
    tile_ptrs(a, i0, rx, j0, xr, wr);
    __m256 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_ps();
    int64_t K = a->k, k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[4];
        for (int c = 0; c < 4; c++) wv[c] = ld8_256(wr[c], k, wt);
        for (int r = 0; r < rx; r++) {
            __m256 xv = ld8_256(xr[r], k, xt);
            for (int c = 0; c < 4; c++) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    float s[4][4];
    for (int r = 0; r < rx; r++)
        for (int c = 0; c < 4; c++) {
            float t = hsum256(acc[r][c]);
            for (int64_t kk = k; kk < K; kk++) t += ld_scalar(xr[r], xt, kk) * ld_scalar(wr[c], wt, kk);
            s[r][c] = t;
        }
    tile_store(a, i0, rx, j0, s);
}

#define TILE256(XT, WT, NAME)                                                                       \
    static T256 void NAME(const lin_t *a, int64_t i0, int rx, int64_t j0) {                        \
        switch (rx) {                                                                              \
        case 1: tile256_impl(a, i0, 1, j0, XT, WT); break;                                         \
        case 2: tile256_impl(a, i0, 2, j0, XT, WT); break;                                         \
        case 3: tile256_impl(a, i0, 3, j0, XT, WT); break;                                         \
        default: tile256_impl(a, i0, 4, j0, XT, WT); break;                                        \
        }                                                                                          \
    }
TILE256(TO_F32, TO_BF16, tile256_f32x_bf16w)
TILE256(TO_F32, TO_F16, tile256_f32x_f16w)
TILE256(TO_F32, TO_F32, tile256_f32x_f32w)
TILE256(TO_BF16, TO_BF16, tile256_bf16x_bf16w)
TILE256(TO_BF16, TO_F16, tile256_bf16x_f16w)
TILE256(TO_BF16, TO_F32, tile256_bf16x_f32w)

static tile_fn pick_tile256(int xt, int wt) {
    if (xt == TO_F32) return wt == TO_BF16 ? tile256_f32x_bf16w : wt == TO_F16 ? tile256_f32x_f16w
                                                                               : tile256_f32x_f32w;
    return wt == TO_BF16 ? tile256_bf16x_bf16w : wt == TO_F16 ? tile256_bf16x_f16w
                                                              : tile256_bf16x_f32w;
}
#endif /* TO_X86 */

/* ==== dispatch ================================================================================== */
/* Records the kernel of each size class, only when it changes (decode calls this per layer). */
static void report(int gemm, const char *kernel) {
    static const char *last[2];
    if (last[gemm] != kernel) {
        to_report_kernel(gemm ? "linear (m >= " TO_STR(TO_GEMM_MIN_M) ")"
                              : "linear (m < " TO_STR(TO_GEMM_MIN_M) ")",
                         kernel);
        last[gemm] = kernel;
    }
}

/* Whether the AVX-512 bf16 dot tiles take an all-bf16 problem on this CPU (the group and batched
 * paths; to_linear dispatches over more instruction sets itself). */
static int bf16_dot_tiles(int x_dtype, int w_dtype, int y_dtype) {
#ifdef TO_X86
    const uint32_t isa = to_isa();
    const uint32_t need512 = TO_ISA_AVX512F | TO_ISA_AVX512BW | TO_ISA_AVX512VL | TO_ISA_FMA |
                             TO_ISA_F16C | TO_ISA_AVX512_BF16;
    return (isa & need512) == need512 && x_dtype == TO_BF16 && w_dtype == TO_BF16 && y_dtype == TO_BF16;
#else
    (void)x_dtype;
    (void)w_dtype;
    (void)y_dtype;
    return 0;
#endif
}

static int fill_bias(const lin_t *a) {
    for (int64_t i = 0; i < a->m; i++)
        for (int64_t j = 0; j < a->n; j++) store_out(a, i, j, 0.0f);
    return TO_OK;
}

static int float_dtype_ok(int dt) { return dt == TO_F32 || dt == TO_BF16 || dt == TO_F16; }

TO_API int to_linear(const void *x, const void *w, const void *bias, void *y, int64_t m, int64_t n,
                     int64_t k, int64_t ldx, int64_t ldy, int x_dtype, int w_dtype, int bias_dtype,
                     int y_dtype) {
    TO_CHECK_NONNEG(m);
    TO_CHECK_NONNEG(n);
    TO_CHECK_NONNEG(k);
    TO_CHECK(x_dtype == TO_F32 || x_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_linear: x dtype %d not supported (f32 or bf16)", x_dtype);
    TO_CHECK(float_dtype_ok(w_dtype), TO_ERR_DTYPE,
             "to_linear: weight dtype %d not supported (bf16, f16 or f32)", w_dtype);
    TO_CHECK(y_dtype == TO_F32 || y_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_linear: y dtype %d not supported (f32 or bf16)", y_dtype);
    TO_CHECK(bias == NULL || float_dtype_ok(bias_dtype), TO_ERR_DTYPE,
             "to_linear: bias dtype %d not supported (f32, bf16 or f16)", bias_dtype);
    TO_CHECK(ldx >= k, TO_ERR_SHAPE,
             "to_linear: x row stride %lld is smaller than k=%lld", (long long)ldx, (long long)k);
    TO_CHECK(ldy >= n, TO_ERR_SHAPE, "to_linear: y row stride %lld is smaller than n=%lld",
             (long long)ldy, (long long)n);
    if (m == 0 || n == 0) return TO_OK;
    TO_CHECK_PTR(y);
    TO_CHECK(k == 0 || (x != NULL && w != NULL), TO_ERR_INVALID_ARGUMENT,
             "to_linear: x or w is NULL");
    lin_t a = {x, w, bias, y, m, n, k, ldx, ldy, x_dtype, w_dtype, bias_dtype, y_dtype};
    if (k == 0) return fill_bias(&a);
    int op = m >= TO_GEMM_MIN_M;
#ifdef TO_X86
    uint32_t isa = to_isa();
    const uint32_t need512 = TO_ISA_AVX512F | TO_ISA_AVX512BW | TO_ISA_AVX512VL | TO_ISA_FMA |
                             TO_ISA_F16C;
    const uint32_t need256 = TO_ISA_AVX2 | TO_ISA_FMA | TO_ISA_F16C;
    if ((isa & need512) == need512) {
        dot_ctx ctx = {&a, NULL};
        if (x_dtype == TO_BF16 && w_dtype == TO_BF16 && (isa & TO_ISA_AVX512_BF16)) {
            if (m >= TO_GEMM_MIN_M) {
                report(op, "avx512-bf16 packed gemm 6x64");
                return run_gemm_bf16(&a);
            }
            if (m <= TO_ROW_STREAM_MAX_M) {
                report(op, "avx512-bf16 row stream");
                ctx.tile = row512_dp;
            } else {
                report(op, "avx512-bf16 dot tiles");
                ctx.tile = tile512_dp;
            }
        } else {
            report(op, "avx512 f32 dot tiles");
            ctx.tile = pick_tile512(x_dtype, w_dtype);
        }
        to_parallel_run(dot_task, &ctx, dot_tasks(&a));
        return TO_OK;
    }
    if ((isa & need256) == need256) {
        report(op, "avx2 f32 dot tiles");
        dot_ctx ctx = {&a, pick_tile256(x_dtype, w_dtype)};
        to_parallel_run(dot_task, &ctx, 0);
        return TO_OK;
    }
#endif
    report(op, "generic c");
    int nth = to_get_num_threads();
    void *scratch = NULL;
    int rc = to_alloc((size_t)nth * (size_t)k * sizeof(float), &scratch);
    if (rc != TO_OK) return rc;
    gen_ctx ctx = {&a, scratch};
    to_parallel_run(generic_task, &ctx, nth);
    to_free(scratch);
    return TO_OK;
}

/* ==== grouped linear: several weight matrices sharing one input, one parallel region ============ */
#define TO_LINEAR_GROUP_MAX 8

typedef struct {
    const lin_t *a;             /* count problems */
    const tile_fn *tiles;       /* the dot tile of each */
    const int64_t *first_group; /* count + 1 prefix sums of ceil(n/4) */
    int count;
} group_ctx;

/* Splits the row groups of all matrices, laid end to end, across the tasks: one parallel region
 * streams every matrix instead of one region (and one tail) per matrix. */
static int group_tasks(const group_ctx *ctx) { return tasks_for_groups(ctx->first_group[ctx->count]); }

static void group_task(void *vctx, int ith, int nth) {
    const group_ctx *ctx = vctx;
    int64_t g0, g1;
    to_split_rows(ctx->first_group[ctx->count], ith, nth, &g0, &g1);
    for (int mi = 0; mi < ctx->count && g0 < g1; mi++) {
        int64_t lo = ctx->first_group[mi], hi = ctx->first_group[mi + 1];
        if (g1 <= lo || g0 >= hi) continue;
        const lin_t *a = &ctx->a[mi];
        int64_t b = (g0 > lo ? g0 : lo) - lo, e = (g1 < hi ? g1 : hi) - lo;
        for (int64_t i0 = 0; i0 < a->m; i0 += 4) {
            int rx = (int)(a->m - i0 < 4 ? a->m - i0 : 4);
            for (int64_t g = b; g < e; g++) ctx->tiles[mi](a, i0, rx, g * 4);
        }
    }
}

TO_API int to_linear_group(const void *x, int count, const void *const *ws, const int64_t *ns,
                           void *const *ys, const int64_t *ldys, int64_t m, int64_t k, int64_t ldx,
                           int x_dtype, int w_dtype, int y_dtype) {
    TO_CHECK(count >= 1 && count <= TO_LINEAR_GROUP_MAX, TO_ERR_INVALID_ARGUMENT,
             "to_linear_group: count %d not in [1, %d]", count, TO_LINEAR_GROUP_MAX);
    TO_CHECK_PTR(ws);
    TO_CHECK_PTR(ns);
    TO_CHECK_PTR(ys);
    TO_CHECK_PTR(ldys);
    TO_CHECK_NONNEG(m);
    TO_CHECK_NONNEG(k);
    for (int i = 0; i < count; i++) {
        TO_CHECK(ns[i] >= 0 && ldys[i] >= ns[i], TO_ERR_SHAPE,
                 "to_linear_group: matrix %d has n=%lld and y row stride %lld", i,
                 (long long)ns[i], (long long)ldys[i]);
    }
    const int simd = bf16_dot_tiles(x_dtype, w_dtype, y_dtype) && m < TO_GEMM_MIN_M && k > 0;
    if (!simd) { /* other dtypes, big m, no AVX512-BF16: one to_linear per matrix */
        for (int i = 0; i < count; i++) {
            int rc = to_linear(x, ws[i], NULL, ys[i], m, ns[i], k, ldx, ldys[i], x_dtype, w_dtype,
                               0, y_dtype);
            if (rc != TO_OK) return rc;
        }
        return TO_OK;
    }
#ifdef TO_X86
    TO_CHECK(ldx >= k, TO_ERR_SHAPE, "to_linear_group: x row stride %lld is smaller than k=%lld",
             (long long)ldx, (long long)k);
    if (m == 0) return TO_OK;
    TO_CHECK_PTR(x);
    lin_t as[TO_LINEAR_GROUP_MAX];
    tile_fn tiles[TO_LINEAR_GROUP_MAX];
    int64_t first[TO_LINEAR_GROUP_MAX + 1] = {0};
    for (int i = 0; i < count; i++) {
        TO_CHECK(ws[i] != NULL && (ys[i] != NULL || ns[i] == 0), TO_ERR_INVALID_ARGUMENT,
                 "to_linear_group: matrix %d has a NULL weight or output", i);
        lin_t a = {x, ws[i], NULL, ys[i], m, ns[i], k, ldx, ldys[i], x_dtype, w_dtype, 0, y_dtype};
        as[i] = a;
        tiles[i] = m <= TO_ROW_STREAM_MAX_M ? row512_dp : tile512_dp;
        first[i + 1] = first[i] + (ns[i] + 3) / 4;
    }
    group_ctx ctx = {as, tiles, first, count};
    report(0, m <= TO_ROW_STREAM_MAX_M ? "avx512-bf16 row stream" : "avx512-bf16 dot tiles");
    to_parallel_run(group_task, &ctx, group_tasks(&ctx));
#endif
    return TO_OK;
}

/* ==== batched linear: many (x_i, W_i) pairs of one shape (a mixture's experts), one region ====== */
TO_API int to_linear_batched(int count, const void *const *xs, const int64_t *ms,
                             const int64_t *ldxs, const void *const *ws, void *const *ys,
                             const int64_t *ldys, int64_t n, int64_t k, int x_dtype, int w_dtype,
                             int y_dtype) {
    TO_CHECK(count >= 0, TO_ERR_INVALID_ARGUMENT, "to_linear_batched: count %d", count);
    if (count == 0) return TO_OK;
    TO_CHECK_PTR(xs);
    TO_CHECK_PTR(ms);
    TO_CHECK_PTR(ldxs);
    TO_CHECK_PTR(ws);
    TO_CHECK_PTR(ys);
    TO_CHECK_PTR(ldys);
    TO_CHECK_NONNEG(n);
    TO_CHECK_NONNEG(k);
    for (int i = 0; i < count; i++) {
        TO_CHECK(ms[i] >= 0 && ldxs[i] >= k && ldys[i] >= n, TO_ERR_SHAPE,
                 "to_linear_batched: problem %d has m=%lld, x stride %lld, y stride %lld "
                 "(n=%lld, k=%lld)",
                 i, (long long)ms[i], (long long)ldxs[i], (long long)ldys[i], (long long)n,
                 (long long)k);
        TO_CHECK(ms[i] == 0 || n == 0 || (ys[i] != NULL && (k == 0 || (xs[i] && ws[i]))),
                 TO_ERR_INVALID_ARGUMENT, "to_linear_batched: problem %d has a NULL pointer", i);
    }
    const int simd = bf16_dot_tiles(x_dtype, w_dtype, y_dtype) && k > 0 && n > 0;
    /* big problems (the packed GEMM), and every problem without the bf16 dot tiles: one
     * to_linear each, the kernel to_linear picks for its rows, so the bits are those of
     * per-problem calls */
    int small = 0;
    for (int i = 0; i < count; i++) {
        if (ms[i] == 0) continue;
        if (simd && ms[i] < TO_GEMM_MIN_M) {
            small++;
            continue;
        }
        int rc = to_linear(xs[i], ws[i], NULL, ys[i], ms[i], n, k, ldxs[i], ldys[i], x_dtype,
                           w_dtype, 0, y_dtype);
        if (rc != TO_OK) return rc;
    }
    if (small == 0) return TO_OK;
#ifdef TO_X86
    lin_t *as = NULL;
    tile_fn *tiles = NULL;
    int64_t *first = NULL;
    int rc = to_alloc((size_t)small * sizeof *as, (void **)&as);
    if (rc == TO_OK) rc = to_alloc((size_t)small * sizeof *tiles, (void **)&tiles);
    if (rc == TO_OK) rc = to_alloc((size_t)(small + 1) * sizeof *first, (void **)&first);
    if (rc == TO_OK) {
        int c = 0;
        first[0] = 0;
        for (int i = 0; i < count; i++) {
            if (ms[i] == 0 || ms[i] >= TO_GEMM_MIN_M) continue;
            lin_t a = {xs[i], ws[i], NULL, ys[i], ms[i], n, k, ldxs[i], ldys[i],
                       x_dtype, w_dtype, 0, y_dtype};
            as[c] = a;
            tiles[c] = ms[i] <= TO_ROW_STREAM_MAX_M ? row512_dp : tile512_dp;
            first[c + 1] = first[c] + (n + 3) / 4;
            c++;
        }
        group_ctx ctx = {as, tiles, first, small};
        report(0, "avx512-bf16 batched dot tiles");
        to_parallel_run(group_task, &ctx, group_tasks(&ctx));
    }
    to_free(as);
    to_free(tiles);
    to_free(first);
    return rc;
#else
    return TO_OK;
#endif
}

/* ==== strided batched linear: problem i at fixed element strides (MLA's per-head maps) ========= */
TO_API int to_linear_strided_batched(int count, const void *x, int64_t ldx, int64_t sx, const void *w,
                                     int64_t sw, void *y, int64_t ldy, int64_t sy, int64_t m,
                                     int64_t n, int64_t k, int x_dtype, int w_dtype, int y_dtype) {
    TO_CHECK(count >= 0 && count <= (1 << 20), TO_ERR_INVALID_ARGUMENT,
             "to_linear_strided_batched: count %d", count);
    TO_CHECK(sx >= 0 && sw >= 0 && sy >= 0, TO_ERR_SHAPE,
             "to_linear_strided_batched: negative stride (x %lld, w %lld, y %lld)", (long long)sx,
             (long long)sw, (long long)sy);
    TO_CHECK(to_dtype_size(x_dtype) > 0 && to_dtype_size(w_dtype) > 0 && to_dtype_size(y_dtype) > 0,
             TO_ERR_DTYPE, "to_linear_strided_batched: dtypes x=%d w=%d y=%d", x_dtype, w_dtype,
             y_dtype);
    if (count == 0) return TO_OK;
    const size_t ex = (size_t)to_dtype_size(x_dtype), ew = (size_t)to_dtype_size(w_dtype),
                 ey = (size_t)to_dtype_size(y_dtype);
    const void **xs = NULL, **ws = NULL;
    void **ys = NULL;
    int64_t *ms = NULL, *ldxs = NULL, *ldys = NULL;
    int rc = to_alloc((size_t)count * sizeof *xs, (void **)&xs);
    if (rc == TO_OK) rc = to_alloc((size_t)count * sizeof *ws, (void **)&ws);
    if (rc == TO_OK) rc = to_alloc((size_t)count * sizeof *ys, (void **)&ys);
    if (rc == TO_OK) rc = to_alloc((size_t)count * 3 * sizeof *ms, (void **)&ms);
    if (rc == TO_OK) {
        ldxs = ms + count;
        ldys = ms + 2 * count;
        for (int i = 0; i < count; i++) {
            xs[i] = x ? (const char *)x + (size_t)i * (size_t)sx * ex : NULL;
            ws[i] = w ? (const char *)w + (size_t)i * (size_t)sw * ew : NULL;
            ys[i] = y ? (char *)y + (size_t)i * (size_t)sy * ey : NULL;
            ms[i] = m, ldxs[i] = ldx, ldys[i] = ldy;
        }
        rc = to_linear_batched(count, xs, ms, ldxs, ws, ys, ldys, n, k, x_dtype, w_dtype, y_dtype);
    }
    to_free((void *)xs);
    to_free((void *)ws);
    to_free(ys);
    to_free(ms);
    return rc;
}
