/* FP8 block-scaled weights (the "-FP8" checkpoints of Qwen / DeepSeek): W [n, k] stored as
 * float8 e4m3fn bytes plus fp32 scales [ceil(n/bn), ceil(k/bk)] (weight_scale_inv), so that
 * W[i][j] = e4m3(w[i][j]) * scale[i/bn][j/bk].
 *
 * e4m3fn: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, subnormals, no infinities,
 * 0x7f / 0xff are NaN (decoded as torch does: sign | 0x7ff00000), max 448.
 */

#include "../common/internal.h"

/* ==== scalar e4m3 decoding ====================================================================== */
/* Value of byte b: (8 + m) * 2^e / 1024 for normals (e >= 1), m / 512 for subnormals. */
#define E4M3_ABS(b)                                                                                \
    ((((b) >> 3) & 15) == 0 ? (float)((b) & 7) / 512.0f                                            \
                            : (float)(8 + ((b) & 7)) * (float)(1u << (((b) >> 3) & 15)) / 1024.0f)
#define E4M3_VAL(b) (((b) & 0x80) ? -E4M3_ABS(b) : E4M3_ABS(b))
#define R8(b) E4M3_VAL(b), E4M3_VAL((b) + 1), E4M3_VAL((b) + 2), E4M3_VAL((b) + 3),                \
              E4M3_VAL((b) + 4), E4M3_VAL((b) + 5), E4M3_VAL((b) + 6), E4M3_VAL((b) + 7)
#define R64(b) R8(b), R8((b) + 8), R8((b) + 16), R8((b) + 24), R8((b) + 32), R8((b) + 40),       \
               R8((b) + 48), R8((b) + 56)
/* The NaN bytes (0x7f, 0xff) read 480 here; e4m3_to_f32 checks them first. */
static const float E4M3_LUT[256] = {R64(0), R64(64), R64(128), R64(192)};

static inline float nan_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* e4m3 byte -> f32, exact; NaN bytes give torch's NaN bits (sign | 0x7ff00000). */
static inline float e4m3_to_f32(uint8_t b) {
    if ((b & 0x7f) == 0x7f) return nan_bits(((uint32_t)(b & 0x80) << 24) | 0x7ff00000u);
    return E4M3_LUT[b];
}

/* ==== argument checks shared by the entry points ================================================ */
static int out_dtype_ok(int dt) { return dt == TO_F32 || dt == TO_BF16 || dt == TO_F16; }

static inline void store_f(void *out, int dt, int64_t i, float v) {
    if (dt == TO_F32) ((float *)out)[i] = v;
    else if (dt == TO_BF16) ((uint16_t *)out)[i] = to_f32_to_bf16(v);
    else ((uint16_t *)out)[i] = to_f32_to_f16(v);
}

/* ==== dequantization ============================================================================ */
typedef struct {
    const uint8_t *w;
    const float *scale;
    void *out;
    int64_t n, k, bn, bk, sk; /* sk: scale columns = ceil(k / bk) */
    int dt;
} deq_t;

static void deq_rows(const deq_t *a, int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; i++) {
        const uint8_t *wr = a->w + i * a->k;
        const float *sr = a->scale + (i / a->bn) * a->sk;
        int64_t o = i * a->k;
        for (int64_t b = 0, j0 = 0; j0 < a->k; b++, j0 += a->bk) {
            int64_t j1 = j0 + a->bk < a->k ? j0 + a->bk : a->k;
            const float s = sr[b];
            if (a->dt == TO_F32) {
                float *y = (float *)a->out + o;
                for (int64_t j = j0; j < j1; j++) y[j] = e4m3_to_f32(wr[j]) * s;
            } else if (a->dt == TO_BF16) {
                uint16_t *y = (uint16_t *)a->out + o;
                for (int64_t j = j0; j < j1; j++) y[j] = to_f32_to_bf16(e4m3_to_f32(wr[j]) * s);
            } else {
                uint16_t *y = (uint16_t *)a->out + o;
                for (int64_t j = j0; j < j1; j++) y[j] = to_f32_to_f16(e4m3_to_f32(wr[j]) * s);
            }
        }
    }
}

static void deq_task(void *vctx, int ith, int nth) {
    const deq_t *a = vctx;
    int64_t r0, r1;
    to_split_rows(a->n, ith, nth, &r0, &r1);
    deq_rows(a, r0, r1);
}

/* Tasks over n rows of k elements: one when small, else a few per thread. */
static int row_tasks(int64_t n, int64_t k) {
    int64_t nth = to_get_num_threads();
    if (nth <= 1 || n * k < (1 << 16)) return 1;
    int64_t want = nth * 4;
    return (int)(want < n ? want : n);
}

TO_API int to_fp8_dequant(const uint8_t *w, const float *scale, int64_t n, int64_t k,
                          int64_t block_n, int64_t block_k, void *out, int out_dtype) {
    TO_CHECK_NONNEG(n);
    TO_CHECK_NONNEG(k);
    TO_CHECK(block_n >= 1 && block_k >= 1, TO_ERR_INVALID_ARGUMENT,
             "to_fp8_dequant: block sizes must be >= 1, got (%lld, %lld)", (long long)block_n,
             (long long)block_k);
    TO_CHECK(out_dtype_ok(out_dtype), TO_ERR_DTYPE,
             "to_fp8_dequant: out dtype %d not supported (f32, bf16 or f16)", out_dtype);
    if (n == 0 || k == 0) return TO_OK;
    TO_CHECK_PTR(w);
    TO_CHECK_PTR(scale);
    TO_CHECK_PTR(out);
    deq_t a = {w, scale, out, n, k, block_n, block_k, (k + block_k - 1) / block_k, out_dtype};
    int tasks = row_tasks(n, k);
    if (tasks <= 1) deq_rows(&a, 0, n);
    else to_parallel_run(deq_task, &a, tasks);
    return TO_OK;
}

/* ==== linear ==================================================================================== */
/* y[i, j] = sum over k-blocks b of (partial_b(i, j) * scale[j/bn][b]) (+ bias[j]).
 *
 * Every task takes a range of W rows and walks it in blocks of `nb` rows: the block is first
 * decoded once into a per-task scratch panel (rows kp elements apart, zero-padded), as
 * w' = e4m3(w) * 2^-8 -- exact in f32 and in bf16 (4 significant bits, exponents 2^-17 .. 2^0),
 * NaN bytes give NaN -- then every group of up to 4 x rows runs over the panel, two W rows at a
 * time. The SIMD decoder is the f16 trick: ((b & 0x7f) << 7 | (b & 0x80) << 8) is the f16 of
 * e4m3(b) * 2^-8 for normals and subnormals alike (vcvtph2ps converts it exactly); the NaN bytes,
 * which it would turn into 1.875, are patched. A block's partial sum is multiplied by 256 (exact)
 * before its scale, so any finite scale works.
 *
 * For large m each weight is decoded once per task and reused by every row of x. Decode (m <= 16,
 * AVX-512) skips the panel: the gemv kernels decode the weight stream in registers (bf16 x on
 * AVX512-BF16: to exact bf16 e4m3 values and vdpbf16ps, scale used as is). */
typedef struct {
    const void *x;
    const uint8_t *w;
    const float *scale;
    const void *bias;
    void *y;
    int64_t m, n, k, ldx, ldy, bn, bk, sk;
    int64_t kp; /* panel row stride (elements), k rounded up to 32 */
    int64_t nb; /* W rows per panel (even) */
    int xt, bt, yt;
    int level; /* 0 generic, 1 avx2, 2 avx512 f32, 3 avx512-bf16 (bf16 x, bf16 panel) */
} fl_t;

static inline float ld_f(const void *p, int dt, int64_t i) {
    switch (dt) {
    case TO_F32: return ((const float *)p)[i];
    case TO_BF16: return to_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return to_f16_to_f32(((const uint16_t *)p)[i]);
    }
}

static inline void fl_store(const fl_t *a, int64_t i, int64_t j, float v) {
    if (a->bias) v += ld_f(a->bias, a->bt, j);
    if (a->yt == TO_F32) ((float *)a->y)[i * a->ldy + j] = v;
    else ((uint16_t *)a->y)[i * a->ldy + j] = to_f32_to_bf16(v);
}

/* The scales of W row j (one division per row, not per block). */
static inline const float *fl_srow(const fl_t *a, int64_t j) { return a->scale + (j / a->bn) * a->sk; }

/* ---- generic C --------------------------------------------------------------------------------- */
static void decode_generic(const uint8_t *src, float *dst, int64_t k, int64_t kp) {
    for (int64_t t = 0; t < k; t++) dst[t] = e4m3_to_f32(src[t]) * (1.0f / 256.0f);
    for (int64_t t = k; t < kp; t++) dst[t] = 0.0f;
}

static void tile_generic(const fl_t *a, const void *panel, int64_t jb, int64_t j, int nc,
                         int64_t i0, int rx) {
    for (int c = 0; c < nc; c++) {
        const float *wf = (const float *)panel + (j + c - jb) * a->kp;
        for (int r = 0; r < rx; r++) {
            int64_t i = i0 + r;
            const char *xr = (const char *)a->x + (size_t)(i * a->ldx) * (a->xt == TO_F32 ? 4 : 2);
            float tot = 0.0f;
            const float *sr = fl_srow(a, j + c);
            for (int64_t b = 0, t0 = 0; t0 < a->k; b++, t0 += a->bk) {
                int64_t t1 = t0 + a->bk < a->k ? t0 + a->bk : a->k;
                float acc = 0.0f;
                if (a->xt == TO_F32)
                    for (int64_t t = t0; t < t1; t++) acc += ((const float *)xr)[t] * wf[t];
                else
                    for (int64_t t = t0; t < t1; t++)
                        acc += to_bf16_to_f32(((const uint16_t *)xr)[t]) * wf[t];
                tot += (acc * 256.0f) * sr[b]; /* acc * 256 is exact; a scale near FLT_MAX stays finite */
            }
            fl_store(a, i, j + c, tot);
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FP8_X86 1
#define T256 __attribute__((target("avx2,fma,f16c")))
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))
#define T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* Weight bytes prefetched this far ahead of the stream (matmul.c's bf16 row stream found 4 KiB
 * best on Zen 4; the rows of a task are contiguous, so this runs into the next rows). */
#define FP8_PREFETCH_BYTES 4096

/* ---- AVX2 + F16C --------------------------------------------------------------------------------- */
/* 8 bytes -> 8 floats of e4m3 * 2^-8 (NaN bytes -> NaN). */
INLINE T256 __m256 cvt8_256(__m128i b8) {
    __m128i v = _mm_cvtepu8_epi16(b8);
    __m128i t = _mm_slli_epi16(v, 7); /* bits 0..6 -> 7..13, sign -> bit 14 */
    __m128i h = _mm_add_epi16(t, _mm_and_si128(t, _mm_set1_epi16(0x4000))); /* sign -> bit 15 */
    __m256 f = _mm256_cvtph_ps(h);
    __m128i nan = _mm_cmpeq_epi8(_mm_and_si128(b8, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
    __m256 nm = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(nan));
    return _mm256_blendv_ps(f, _mm256_set1_ps(NAN), nm);
}

static T256 void decode_avx2(const uint8_t *src, float *dst, int64_t k, int64_t kp) {
    int64_t t = 0;
    for (; t + 8 <= k; t += 8) {
        _mm_prefetch((const char *)src + t + 2048, _MM_HINT_T0);
        _mm256_storeu_ps(dst + t, cvt8_256(_mm_loadl_epi64((const __m128i *)(src + t))));
    }
    for (; t < k; t++) dst[t] = e4m3_to_f32(src[t]) * (1.0f / 256.0f);
    for (; t < kp; t++) dst[t] = 0.0f;
}

INLINE T256 __m256 ldx8_256(const void *x, int xt, int64_t t) {
    if (xt == TO_F32) return _mm256_loadu_ps((const float *)x + t);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + t));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE T256 float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One W row against rx x rows; block tails of fewer than 8 go through zero-padded copies. */
INLINE T256 void tile256_impl(const fl_t *a, const float *wf, int64_t j, int64_t i0, int rx) {
    const char *xr[4];
    for (int r = 0; r < 4; r++)
        xr[r] = (const char *)a->x + (size_t)((i0 + (r < rx ? r : 0)) * a->ldx) * (a->xt == TO_F32 ? 4 : 2);
    __m256 tot[4];
    for (int r = 0; r < 4; r++) tot[r] = _mm256_setzero_ps();
    const float *sr = fl_srow(a, j);
    for (int64_t b = 0, t0 = 0; t0 < a->k; b++, t0 += a->bk) {
        int64_t t1 = t0 + a->bk < a->k ? t0 + a->bk : a->k, t = t0;
        __m256 acc[4];
        for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
        for (; t + 8 <= t1; t += 8) {
            __m256 wv = _mm256_loadu_ps(wf + t);
            for (int r = 0; r < rx; r++) acc[r] = _mm256_fmadd_ps(ldx8_256(xr[r], a->xt, t), wv, acc[r]);
        }
        if (t < t1) {
            float wt[8] = {0}, xt[8] = {0};
            for (int64_t u = t; u < t1; u++) wt[u - t] = wf[u];
            __m256 wv = _mm256_loadu_ps(wt);
            for (int r = 0; r < rx; r++) {
                for (int64_t u = t; u < t1; u++) xt[u - t] = ld_f(xr[r], a->xt, u);
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xt), wv, acc[r]);
            }
        }
        __m256 sv = _mm256_set1_ps(sr[b]);
        for (int r = 0; r < rx; r++)
            tot[r] = _mm256_fmadd_ps(_mm256_mul_ps(acc[r], _mm256_set1_ps(256.0f)), sv, tot[r]);
    }
    for (int r = 0; r < rx; r++) fl_store(a, i0 + r, j, hsum256(tot[r]));
}

static T256 void tile_avx2(const fl_t *a, const void *panel, int64_t jb, int64_t j, int nc,
                           int64_t i0, int rx) {
    for (int c = 0; c < nc; c++) {
        const float *wf = (const float *)panel + (j + c - jb) * a->kp;
        switch (rx) {
        case 1: tile256_impl(a, wf, j + c, i0, 1); break;
        case 2: tile256_impl(a, wf, j + c, i0, 2); break;
        case 3: tile256_impl(a, wf, j + c, i0, 3); break;
        default: tile256_impl(a, wf, j + c, i0, 4); break;
        }
    }
}

/* ---- AVX-512 ------------------------------------------------------------------------------------- */
/* 16 bytes -> 16 floats of e4m3 * 2^-8 (NaN bytes -> NaN). */
INLINE T512 __m512 cvt16_512(__m128i b16) {
    __m256i v = _mm256_cvtepu8_epi16(b16);
    __m256i t = _mm256_slli_epi16(v, 7);
    __m256i h = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000)));
    __m512 f = _mm512_cvtph_ps(h);
    __mmask16 nan = _mm_cmpeq_epi8_mask(_mm_and_si128(b16, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
    return _mm512_mask_mov_ps(f, nan, _mm512_set1_ps(NAN));
}

/* bf16 == 1: the panel holds bf16 (the top half of each exact f32). */
INLINE T512 void decode512_impl(const uint8_t *src, void *dst, int64_t k, int64_t kp, int bf16) {
    int64_t t = 0;
    for (; t < k; t += 16) {
        _mm_prefetch((const char *)src + t + 2048, _MM_HINT_T0);
        __mmask16 m = k - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - t)) - 1u);
        __m512 f = cvt16_512(_mm_maskz_loadu_epi8(m, src + t)); /* zero bytes past k: 0.0 */
        if (bf16)
            _mm256_storeu_si256((__m256i *)((uint16_t *)dst + t),
                                _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(f), 16)));
        else
            _mm512_storeu_ps((float *)dst + t, f);
    }
    for (; t < kp; t += 16) { /* t is a multiple of 16 here and kp of 32 */
        if (bf16) _mm256_storeu_si256((__m256i *)((uint16_t *)dst + t), _mm256_setzero_si256());
        else _mm512_storeu_ps((float *)dst + t, _mm512_setzero_ps());
    }
}
static T512 void decode_avx512(const uint8_t *src, float *dst, int64_t k, int64_t kp) {
    decode512_impl(src, dst, k, kp, 0);
}
static T512 void decode_avx512_bf16(const uint8_t *src, float *dst, int64_t k, int64_t kp) {
    decode512_impl(src, dst, k, kp, 1);
}

INLINE T512 __m512 ldx16_512(const void *x, int xt, int64_t t, __mmask16 m) {
    if (xt == TO_F32) return _mm512_maskz_loadu_ps(m, (const float *)x + t);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)x + t);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The panel tiles' block epilogue: tot += (acc * 256) * scale per (x row, W row) (acc * 256 is
 * exact; scale * 256 could overflow), and their stores (lanes summed, bias, one rounding). */
INLINE T512 void tiles_scale_add(__m512 tot[4][2], __m512 acc[4][2], float s0, float s1, int rx) {
    const __m512 k256 = _mm512_set1_ps(256.0f), v0 = _mm512_set1_ps(s0), v1 = _mm512_set1_ps(s1);
    for (int r = 0; r < rx; r++) {
        tot[r][0] = _mm512_fmadd_ps(_mm512_mul_ps(acc[r][0], k256), v0, tot[r][0]);
        tot[r][1] = _mm512_fmadd_ps(_mm512_mul_ps(acc[r][1], k256), v1, tot[r][1]);
    }
}

INLINE T512 void tiles_store(const fl_t *a, int64_t i0, int64_t j, int nc, int rx, __m512 tot[4][2]) {
    for (int r = 0; r < rx; r++) {
        fl_store(a, i0 + r, j, _mm512_reduce_add_ps(tot[r][0]));
        if (nc > 1) fl_store(a, i0 + r, j + 1, _mm512_reduce_add_ps(tot[r][1]));
    }
}

/* rx x rows against nc (1 or 2) W rows of an f32 panel. */
INLINE T512 void tile512_impl(const fl_t *a, const float *w0, const float *w1, int64_t j, int nc,
                              int64_t i0, int rx) {
    const char *xr[4];
    for (int r = 0; r < 4; r++)
        xr[r] = (const char *)a->x + (size_t)((i0 + (r < rx ? r : 0)) * a->ldx) * (a->xt == TO_F32 ? 4 : 2);
    if (nc < 2) w1 = w0;
    __m512 tot[4][2];
    for (int r = 0; r < 4; r++) tot[r][0] = tot[r][1] = _mm512_setzero_ps();
    const float *sr0 = fl_srow(a, j), *sr1 = fl_srow(a, nc < 2 ? j : j + 1);
    for (int64_t b = 0, t0 = 0; t0 < a->k; b++, t0 += a->bk) {
        int64_t t1 = t0 + a->bk < a->k ? t0 + a->bk : a->k;
        __m512 acc[4][2];
        for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int64_t t = t0; t < t1; t += 16) {
            __mmask16 m = t1 - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (t1 - t)) - 1u);
            __m512 wa = _mm512_maskz_loadu_ps(m, w0 + t), wb = _mm512_maskz_loadu_ps(m, w1 + t);
            for (int r = 0; r < rx; r++) {
                __m512 xv = ldx16_512(xr[r], a->xt, t, m);
                acc[r][0] = _mm512_fmadd_ps(xv, wa, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(xv, wb, acc[r][1]);
            }
        }
        tiles_scale_add(tot, acc, sr0[b], sr1[b], rx);
    }
    tiles_store(a, i0, j, nc, rx, tot);
}

static T512 void tile_avx512(const fl_t *a, const void *panel, int64_t jb, int64_t j, int nc,
                             int64_t i0, int rx) {
    const float *w0 = (const float *)panel + (j - jb) * a->kp, *w1 = w0 + a->kp;
    switch (rx) {
    case 1: tile512_impl(a, w0, w1, j, nc, i0, 1); break;
    case 2: tile512_impl(a, w0, w1, j, nc, i0, 2); break;
    case 3: tile512_impl(a, w0, w1, j, nc, i0, 3); break;
    default: tile512_impl(a, w0, w1, j, nc, i0, 4); break;
    }
}

/* 32 e4m3 bytes -> 32 floats of e4m3 * 2^-8 (the f16 trick; NaN bytes not patched: the gemv
 * tracks them per W row). */
INLINE T512 void cvt32_f32_nonan(__m256i b, __m512 *lo, __m512 *hi) {
    __m512i h = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(b), 7),
                                 _mm512_set1_epi16((short)0xbf80));
    *lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    *hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}

INLINE T512 __m256i nan_track512(__m256i acc, __m256i b) {
    return _mm256_max_epu8(acc, _mm256_or_si256(b, _mm256_set1_epi8((char)0x80)));
}

/* Up to 4 W rows against rx x rows (f32), the weight stream decoded in registers (the f16
 * trick), each W row streamed after the other with prefetch (one sequential stream per task, as
 * the table gemv): per k-block fp32 FMAs into two registers per x row, then
 * tot += (acc * 256) * scale. A row with a NaN byte gives NaN. */
INLINE T512 void gemv512_impl(const fl_t *a, int64_t j, int nc, int rx) {
    nc = nc < 4 ? nc : 4;
    const float *xr[4];
    for (int r = 0; r < 4; r++) xr[r] = (const float *)a->x + (r < rx ? r : 0) * a->ldx;
    const __m512 k256 = _mm512_set1_ps(256.0f);
    for (int c = 0; c < nc; c++) {
        const uint8_t *w = a->w + (j + c) * a->k;
        const float *sr = fl_srow(a, j + c);
        __m512 tot[4];
        for (int r = 0; r < 4; r++) tot[r] = _mm512_setzero_ps();
        __m256i nan = _mm256_setzero_si256();
        for (int64_t b = 0, t0 = 0; t0 < a->k; b++, t0 += a->bk) {
            const int64_t t1 = t0 + a->bk < a->k ? t0 + a->bk : a->k;
            __m512 acc0[4], acc1[4];
            for (int r = 0; r < 4; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
            for (int64_t t = t0; t < t1; t += 32) {
                _mm_prefetch((const char *)w + t + FP8_PREFETCH_BYTES, _MM_HINT_T0);
                const int64_t left = t1 - t;
                const __mmask32 m = left >= 32 ? 0xffffffffu : (__mmask32)((1u << left) - 1u);
                const __m256i wb = _mm256_maskz_loadu_epi8(m, w + t);
                nan = nan_track512(nan, wb);
                __m512 lo, hi;
                cvt32_f32_nonan(wb, &lo, &hi);
                for (int r = 0; r < rx; r++) {
                    const __m512 x0 = _mm512_maskz_loadu_ps((__mmask16)m, xr[r] + t);
                    const __m512 x1 = _mm512_maskz_loadu_ps((__mmask16)(m >> 16), xr[r] + t + 16);
                    acc0[r] = _mm512_fmadd_ps(x0, lo, acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(x1, hi, acc1[r]);
                }
            }
            const __m512 sc = _mm512_set1_ps(sr[b]);
            for (int r = 0; r < rx; r++)
                tot[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_add_ps(acc0[r], acc1[r]), k256), sc, tot[r]);
        }
        const int bad = _mm256_cmpeq_epi8_mask(nan, _mm256_set1_epi8((char)0xff)) != 0;
        for (int r = 0; r < rx; r++) fl_store(a, r, j + c, bad ? NAN : _mm512_reduce_add_ps(tot[r]));
    }
}

static T512 void gemv_avx512(const fl_t *a, int64_t j, int nc, int rx) {
    switch (rx) {
    case 1: gemv512_impl(a, j, nc, 1); break;
    case 2: gemv512_impl(a, j, nc, 2); break;
    case 3: gemv512_impl(a, j, nc, 3); break;
    default: gemv512_impl(a, j, nc, 4); break;
    }
}

/* ---- AVX512-VBMI + BF16 decode: the e4m3 -> bf16 table in registers ------------------------------
 * bf16(e4m3(u)) for the 128 magnitudes u (NaN for 0x7f) is two 128-entry byte tables, high and
 * low bytes; vpermi2b looks 64 bytes up in each at once (the index's top bit, the sign, is
 * ignored), the sign is or-ed into the high bytes and vpunpck{l,h}bw interleave the two into
 * words. The unpacks work within 128-bit lanes, so the 64 weights come out in the order
 * [lane l: 0..7] then [lane l: 8..15]; x is copied once per call into that order (fl_xperm), so
 * the products pair up. Exact: every e4m3 value (subnormals included) is a bf16. */
#define FP8_LUT_HI_ROW(e) /* high bytes of the 8 normals of exponent e >= 1 */                         \
    (uint8_t)((e + 120) >> 1), (uint8_t)((e + 120) >> 1), (uint8_t)((e + 120) >> 1),                   \
        (uint8_t)((e + 120) >> 1), (uint8_t)((e + 120) >> 1), (uint8_t)((e + 120) >> 1),               \
        (uint8_t)((e + 120) >> 1), (uint8_t)((e + 120) >> 1)
#define FP8_LUT_LO_ROW(e) /* low bytes: exponent's low bit, then the 3 mantissa bits */              \
    (uint8_t)(((e + 120) & 1) << 7 | 0 << 4), (uint8_t)(((e + 120) & 1) << 7 | 1 << 4),               \
        (uint8_t)(((e + 120) & 1) << 7 | 2 << 4), (uint8_t)(((e + 120) & 1) << 7 | 3 << 4),           \
        (uint8_t)(((e + 120) & 1) << 7 | 4 << 4), (uint8_t)(((e + 120) & 1) << 7 | 5 << 4),           \
        (uint8_t)(((e + 120) & 1) << 7 | 6 << 4), (uint8_t)(((e + 120) & 1) << 7 | 7 << 4)
/* subnormals m * 2^-9: 0, 0x3b00, 0x3b80, 0x3bc0, 0x3c00, 0x3c20, 0x3c40, 0x3c60; exponent 15
 * (135 = 0x87: high byte 0x43, low bit 1) ends with the NaN byte 0x7f */
static const uint8_t FP8_LUT_HI[128] __attribute__((aligned(64))) = {
    0, 0x3b, 0x3b, 0x3b, 0x3c, 0x3c, 0x3c, 0x3c, FP8_LUT_HI_ROW(1), FP8_LUT_HI_ROW(2),
    FP8_LUT_HI_ROW(3), FP8_LUT_HI_ROW(4), FP8_LUT_HI_ROW(5), FP8_LUT_HI_ROW(6), FP8_LUT_HI_ROW(7),
    FP8_LUT_HI_ROW(8), FP8_LUT_HI_ROW(9), FP8_LUT_HI_ROW(10), FP8_LUT_HI_ROW(11), FP8_LUT_HI_ROW(12),
    FP8_LUT_HI_ROW(13), FP8_LUT_HI_ROW(14), 67, 67, 67, 67, 67, 67, 67, 0x7f /* NaN */};
static const uint8_t FP8_LUT_LO[128] __attribute__((aligned(64))) = {
    0, 0x00, 0x80, 0xc0, 0x00, 0x20, 0x40, 0x60, FP8_LUT_LO_ROW(1), FP8_LUT_LO_ROW(2),
    FP8_LUT_LO_ROW(3), FP8_LUT_LO_ROW(4), FP8_LUT_LO_ROW(5), FP8_LUT_LO_ROW(6), FP8_LUT_LO_ROW(7),
    FP8_LUT_LO_ROW(8), FP8_LUT_LO_ROW(9), FP8_LUT_LO_ROW(10), FP8_LUT_LO_ROW(11), FP8_LUT_LO_ROW(12),
    FP8_LUT_LO_ROW(13), FP8_LUT_LO_ROW(14), 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0,
    0xc0 /* NaN: 0x7fc0 */};
#define T512VB __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi,fma,f16c")))

/* x rows (bf16) in the unpacked weights' order, zero-padded to a multiple of 64 */
static void fl_xperm(const uint16_t *x, int64_t ldx, int64_t m, int64_t k, int64_t kp64, uint16_t *out) {
    for (int64_t i = 0; i < m; i++) {
        const uint16_t *xi = x + i * ldx;
        uint16_t *o = out + i * kp64;
        for (int64_t c = 0; c < kp64; c += 64)
            for (int half = 0; half < 2; half++)
                for (int l = 0; l < 4; l++)
                    for (int e = 0; e < 8; e++) {
                        int64_t t = c + l * 16 + half * 8 + e;
                        o[c + half * 32 + l * 8 + e] = t < k ? xi[t] : 0;
                    }
    }
}

INLINE T512VB void lut64(__m512i b, __m512i thi0, __m512i thi1, __m512i tlo0, __m512i tlo1,
                         __m512i *wlo, __m512i *whi) {
    /* bit 6 of the index picks the second table: vpermi2b covers 128 entries */
    __m512i hi = _mm512_permutex2var_epi8(thi0, b, thi1);
    __m512i lo = _mm512_permutex2var_epi8(tlo0, b, tlo1);
    hi = _mm512_ternarylogic_epi32(hi, b, _mm512_set1_epi8((char)0x80), 0xf8); /* hi | (b & 0x80) */
    *wlo = _mm512_unpacklo_epi8(lo, hi);
    *whi = _mm512_unpackhi_epi8(lo, hi);
}


/* Up to 4 W rows against rx permuted x rows (a->x, rows a->ldx apart), 64 weights a step. The W
 * rows are streamed one after another (one sequential stream per task, as matmul.c's row512_dp),
 * each k-block into two accumulators per x row (the unpacked low and high halves). */
INLINE T512VB void gemvlut_impl(const fl_t *a, int64_t j, int nc, int rx) {
    nc = nc < 4 ? nc : 4;
    const __m512i thi0 = _mm512_load_si512(FP8_LUT_HI), thi1 = _mm512_load_si512(FP8_LUT_HI + 64);
    const __m512i tlo0 = _mm512_load_si512(FP8_LUT_LO), tlo1 = _mm512_load_si512(FP8_LUT_LO + 64);
    const uint16_t *xr[4];
    for (int r = 0; r < 4; r++) xr[r] = (const uint16_t *)a->x + (r < rx ? r : 0) * a->ldx;
    for (int c = 0; c < nc; c++) {
        const uint8_t *w = a->w + (j + c) * a->k;
        const float *sr = fl_srow(a, j + c);
        __m512 tot[4];
        for (int r = 0; r < 4; r++) tot[r] = _mm512_setzero_ps();
        for (int64_t b = 0, t0 = 0; t0 < a->k; b++, t0 += a->bk) {
            const int64_t t1 = t0 + a->bk < a->k ? t0 + a->bk : a->k;
            __m512 acc0[4], acc1[4];
            for (int r = 0; r < 4; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
            for (int64_t t = t0; t < t1; t += 64) {
                _mm_prefetch((const char *)w + t + FP8_PREFETCH_BYTES, _MM_HINT_T0);
                const int64_t left = t1 - t;
                const __mmask64 m = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
                __m512i wl, wh;
                lut64(_mm512_maskz_loadu_epi8(m, w + t), thi0, thi1, tlo0, tlo1, &wl, &wh);
                for (int r = 0; r < rx; r++) {
                    acc0[r] = _mm512_dpbf16_ps(acc0[r], (__m512bh)_mm512_loadu_si512(xr[r] + t),
                                               (__m512bh)wl);
                    acc1[r] = _mm512_dpbf16_ps(acc1[r], (__m512bh)_mm512_loadu_si512(xr[r] + t + 32),
                                               (__m512bh)wh);
                }
            }
            const __m512 sc = _mm512_set1_ps(sr[b]);
            for (int r = 0; r < rx; r++)
                tot[r] = _mm512_fmadd_ps(_mm512_add_ps(acc0[r], acc1[r]), sc, tot[r]);
        }
        for (int r = 0; r < rx; r++) fl_store(a, r, j + c, _mm512_reduce_add_ps(tot[r]));
    }
}

static T512VB void gemv_lut(const fl_t *a, int64_t j, int nc, int rx) {
    switch (rx) {
    case 1: gemvlut_impl(a, j, nc, 1); break;
    case 2: gemvlut_impl(a, j, nc, 2); break;
    case 3: gemvlut_impl(a, j, nc, 3); break;
    default: gemvlut_impl(a, j, nc, 4); break;
    }
}

/* bf16 x against a bf16 panel with vdpbf16ps (32 k per instruction; exact products, fp32 sums,
 * denormal products and sums flushed to zero as the instruction does). */
INLINE T512BF void tile512bf_impl(const fl_t *a, const uint16_t *w0, const uint16_t *w1, int64_t j,
                                  int nc, int64_t i0, int rx) {
    const uint16_t *xr[4];
    for (int r = 0; r < 4; r++) xr[r] = (const uint16_t *)a->x + (i0 + (r < rx ? r : 0)) * a->ldx;
    if (nc < 2) w1 = w0;
    __m512 tot[4][2];
    for (int r = 0; r < 4; r++) tot[r][0] = tot[r][1] = _mm512_setzero_ps();
    const float *sr0 = fl_srow(a, j), *sr1 = fl_srow(a, nc < 2 ? j : j + 1);
    for (int64_t b = 0, t0 = 0; t0 < a->k; b++, t0 += a->bk) {
        int64_t t1 = t0 + a->bk < a->k ? t0 + a->bk : a->k;
        __m512 acc[4][2];
        for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        int64_t t = t0;
        for (; t + 32 <= t1; t += 32) {
            __m512i wa = _mm512_loadu_si512(w0 + t), wb = _mm512_loadu_si512(w1 + t);
            for (int r = 0; r < rx; r++) {
                __m512i xv = _mm512_loadu_si512(xr[r] + t);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)xv, (__m512bh)wa);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)xv, (__m512bh)wb);
            }
        }
        if (t < t1) {
            __mmask32 m = (__mmask32)((1ull << (t1 - t)) - 1ull);
            __m512i wa = _mm512_maskz_loadu_epi16(m, w0 + t), wb = _mm512_maskz_loadu_epi16(m, w1 + t);
            for (int r = 0; r < rx; r++) {
                __m512i xv = _mm512_maskz_loadu_epi16(m, xr[r] + t);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)xv, (__m512bh)wa);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)xv, (__m512bh)wb);
            }
        }
        tiles_scale_add(tot, acc, sr0[b], sr1[b], rx);
    }
    tiles_store(a, i0, j, nc, rx, tot);
}

static T512BF void tile_avx512_bf16(const fl_t *a, const void *panel, int64_t jb, int64_t j, int nc,
                                    int64_t i0, int rx) {
    const uint16_t *w0 = (const uint16_t *)panel + (j - jb) * a->kp, *w1 = w0 + a->kp;
    switch (rx) {
    case 1: tile512bf_impl(a, w0, w1, j, nc, i0, 1); break;
    case 2: tile512bf_impl(a, w0, w1, j, nc, i0, 2); break;
    case 3: tile512bf_impl(a, w0, w1, j, nc, i0, 3); break;
    default: tile512bf_impl(a, w0, w1, j, nc, i0, 4); break;
    }
}
#endif

/* ---- driver ---------------------------------------------------------------------------------------- */
typedef void (*fl_decode_fn)(const uint8_t *src, float *dst, int64_t k, int64_t kp);
typedef void (*fl_tile_fn)(const fl_t *a, const void *panel, int64_t jb, int64_t j, int nc,
                           int64_t i0, int rx);

typedef void (*fl_gemv_fn)(const fl_t *a, int64_t j, int nc, int rx);

typedef struct {
    const fl_t *a;
    fl_decode_fn decode;
    fl_tile_fn tile;
    fl_gemv_fn gemv; /* m <= FP8_GEMV_M without a panel, or NULL */
    int64_t gemv_rows; /* W rows per gemv call (2, or 4 for the bf16 one) */
    int64_t pairs;  /* ceil(n / 2) */
    size_t panel_bytes;
    int failed;     /* set by a task whose scratch allocation failed */
} fl_ctx;

static void fl_task(void *vctx, int ith, int nth) {
    fl_ctx *ctx = vctx;
    const fl_t *a = ctx->a;
    int64_t p0, p1;
    to_split_rows(ctx->pairs, ith, nth, &p0, &p1);
    if (p0 >= p1) return;
    if (ctx->gemv) {
        int64_t j1 = p1 * 2 < a->n ? p1 * 2 : a->n;
        const int64_t step = ctx->gemv_rows;
        const size_t xsz = a->xt == TO_F32 ? 4 : 2, ysz = a->yt == TO_F32 ? 4 : 2;
        for (int64_t j = p0 * 2; j < j1; j += step) {
            const int nc = (int)(j1 - j >= step ? step : j1 - j);
            /* groups of up to 4 x rows, each computed as it is alone (m <= FP8_GEMV_M: a
             * verification row is bitwise the decode step's) */
            for (int64_t i0 = 0; i0 < a->m; i0 += 4) {
                fl_t g = *a;
                g.m = a->m - i0 < 4 ? a->m - i0 : 4;
                g.x = (const char *)a->x + (size_t)(i0 * a->ldx) * xsz;
                g.y = (char *)a->y + (size_t)(i0 * a->ldy) * ysz;
                ctx->gemv(&g, j, nc, (int)g.m);
            }
        }
        return;
    }
    void *panel = NULL;
    if (to_alloc(ctx->panel_bytes, &panel) != TO_OK) {
        __atomic_store_n(&ctx->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const int64_t esz = a->level == 3 ? 2 : 4;
    int64_t j1 = p1 * 2 < a->n ? p1 * 2 : a->n;
    for (int64_t jb = p0 * 2; jb < j1; jb += a->nb) {
        int64_t je = jb + a->nb < j1 ? jb + a->nb : j1;
        for (int64_t j = jb; j < je; j++)
            ctx->decode(a->w + j * a->k, (float *)((char *)panel + (size_t)((j - jb) * a->kp * esz)),
                        a->k, a->kp);
        for (int64_t i0 = 0; i0 < a->m; i0 += 4) {
            int rx = (int)(a->m - i0 < 4 ? a->m - i0 : 4);
            for (int64_t j = jb; j < je; j += 2) ctx->tile(a, panel, jb, j, je - j >= 2 ? 2 : 1, i0, rx);
        }
    }
    to_free(panel);
}

/* Rows of x up to which the decode kernels (gemv) run, 4 at a time: every row is then computed
 * as in a one-row call, as to_linear's small-call kernels (speculative verification: at most
 * 16 rows). */
#define FP8_GEMV_M 16

static int fl_tasks(int64_t pairs) {
    int64_t nth = to_get_num_threads();
    int64_t want = nth * 4;
    if (want * 8 > pairs) want = pairs / 8; /* at least 16 rows per task */
    if (want < nth) want = nth;
    if (want > pairs) want = pairs;
    return (int)(want < 1 ? 1 : want);
}

static const char *const FL_NAMES[6] = {"generic c", "avx2 f32 panel tiles",
                                        "avx512 f32 panel tiles", "avx512-bf16 panel tiles",
                                        "avx512 f32 gemv", "avx512-vbmi-bf16 table gemv"};

TO_API int to_linear_fp8(const void *x, const uint8_t *w, const float *scale, const void *bias,
                         void *y, int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy,
                         int64_t block_n, int64_t block_k, int x_dtype, int bias_dtype,
                         int y_dtype) {
    TO_CHECK_NONNEG(m);
    TO_CHECK_NONNEG(n);
    TO_CHECK_NONNEG(k);
    TO_CHECK(block_n >= 1 && block_k >= 1, TO_ERR_INVALID_ARGUMENT,
             "to_linear_fp8: block sizes must be >= 1, got (%lld, %lld)", (long long)block_n,
             (long long)block_k);
    TO_CHECK(x_dtype == TO_F32 || x_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_linear_fp8: x dtype %d not supported (f32 or bf16)", x_dtype);
    TO_CHECK(y_dtype == TO_F32 || y_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_linear_fp8: y dtype %d not supported (f32 or bf16)", y_dtype);
    TO_CHECK(bias == NULL || out_dtype_ok(bias_dtype), TO_ERR_DTYPE,
             "to_linear_fp8: bias dtype %d not supported (f32, bf16 or f16)", bias_dtype);
    TO_CHECK(ldx >= k, TO_ERR_SHAPE, "to_linear_fp8: x row stride %lld is smaller than k=%lld",
             (long long)ldx, (long long)k);
    TO_CHECK(ldy >= n, TO_ERR_SHAPE, "to_linear_fp8: y row stride %lld is smaller than n=%lld",
             (long long)ldy, (long long)n);
    if (m == 0 || n == 0) return TO_OK;
    TO_CHECK_PTR(y);
    TO_CHECK(k == 0 || (x != NULL && w != NULL && scale != NULL), TO_ERR_INVALID_ARGUMENT,
             "to_linear_fp8: x, w or scale is NULL");
    fl_t a = {x, w, scale, bias, y, m, n, k, ldx, ldy, block_n, block_k,
              (k + block_k - 1) / block_k, (k + 31) & ~(int64_t)31, 2, x_dtype, bias_dtype,
              y_dtype, 0};
    if (k == 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) fl_store(&a, i, j, 0.0f);
        return TO_OK;
    }
    fl_ctx ctx = {&a, decode_generic, tile_generic, NULL, 2, (n + 1) / 2, 0, 0};
#ifdef FP8_X86
    const uint32_t isa = to_isa();
    const uint32_t need512 = TO_ISA_AVX512F | TO_ISA_AVX512BW | TO_ISA_AVX512VL | TO_ISA_FMA |
                             TO_ISA_F16C;
    const uint32_t need256 = TO_ISA_AVX2 | TO_ISA_FMA | TO_ISA_F16C;
    if ((isa & need512) == need512) {
        if (x_dtype == TO_BF16 && (isa & TO_ISA_AVX512_BF16)) {
            a.level = 3;
            ctx.decode = decode_avx512_bf16;
            ctx.tile = tile_avx512_bf16;
        } else {
            a.level = 2;
            ctx.decode = decode_avx512;
            ctx.tile = tile_avx512;
        }
        /* decode: the table gemv (bf16 x, VBMI), else the f16-trick gemv on x widened to f32 */
        if (m <= FP8_GEMV_M) ctx.gemv = gemv_avx512;
        if (m <= FP8_GEMV_M && a.level == 3 && (isa & TO_ISA_AVX512_VBMI) && block_k % 64 == 0)
            ctx.gemv = gemv_lut; /* the table decode: ~1.5-2x the bf16 one's rate */
        if (ctx.gemv) ctx.gemv_rows = 4;
    } else if ((isa & need256) == need256) {
        a.level = 1;
        ctx.decode = decode_avx2;
        ctx.tile = tile_avx2;
    }
#endif
    static const char *last[2];
    int kernel = ctx.gemv ? 4 : a.level;
#ifdef FP8_X86
    if (ctx.gemv == gemv_lut) kernel = 5;
#endif
    const char *name = FL_NAMES[kernel];
    const int big = m > FP8_GEMV_M;
    if (last[big] != name) {
        to_report_kernel(big ? "linear_fp8 (m > 16)" : "linear_fp8 (m <= 16)", name);
        last[big] = name;
    }
    /* Panel of ~256 KiB (L2) for large m; 2 rows for decode (L1) */
    const int64_t esz = a.level == 3 ? 2 : 4;
    int64_t rows = m <= FP8_GEMV_M ? 2 : (256 * 1024) / (a.kp * esz);
    rows &= ~(int64_t)1;
    a.nb = rows < 2 ? 2 : rows;
    ctx.panel_bytes = (size_t)(a.nb * a.kp * esz);
    void *xf = NULL; /* gemv on bf16 x: x widened to f32 once (exact), not per W row */
    if (ctx.gemv == gemv_avx512 && x_dtype == TO_BF16) {
        int rc = to_alloc((size_t)(m * k) * sizeof(float), &xf);
        if (rc != TO_OK) return rc;
        for (int64_t i = 0; i < m; i++)
            for (int64_t t = 0; t < k; t++)
                ((float *)xf)[i * k + t] = to_bf16_to_f32(((const uint16_t *)x)[i * ldx + t]);
        a.x = xf;
        a.xt = TO_F32;
        a.ldx = k;
    }
#ifdef FP8_X86
    if (ctx.gemv == gemv_lut) {
        const int64_t kp64 = (k + 63) & ~(int64_t)63;
        int rc = to_alloc((size_t)(m * kp64) * sizeof(uint16_t), &xf);
        if (rc != TO_OK) return rc;
        fl_xperm((const uint16_t *)x, ldx, m, k, kp64, (uint16_t *)xf);
        a.x = xf;
        a.ldx = kp64;
    }
#endif
    to_parallel_run(fl_task, &ctx, fl_tasks(ctx.pairs));
    to_free(xf);
    if (ctx.failed)
        return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_linear_fp8: no memory for a %zu-byte panel",
                            ctx.panel_bytes);
    return TO_OK;
}

/* ==== quantization ================================================================================ */
/* f32 -> e4m3fn with round-to-nearest-even, as torch's .to(torch.float8_e4m3fn) (c10's
 * fp8e4m3fn_from_fp32_value): |f| >= 480 and NaN give 0x7f (| sign); callers clamp to 448. */
static inline uint8_t f32_to_e4m3(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    u &= 0x7fffffffu;
    uint8_t r;
    if (u >= (1087u << 20)) {
        r = 0x7f;
    } else if (u < (121u << 23)) { /* below 2^-6: subnormal, rounded by an fp32 add */
        const uint32_t magic = 141u << 23;
        float fm, fv;
        memcpy(&fm, &magic, 4);
        memcpy(&fv, &u, 4);
        float s = fv + fm; /* rounds the subnormal mantissa (RNE) */
        uint32_t su;
        memcpy(&su, &s, 4);
        r = (uint8_t)(su - magic);
    } else {
        uint32_t odd = (u >> 20) & 1u;
        u += ((uint32_t)(7 - 127) << 23) + 0x7ffffu + odd;
        r = (uint8_t)(u >> 20);
    }
    return (uint8_t)(r | sign);
}

typedef struct {
    const void *w;
    uint8_t *out;
    float *scale_inv;
    int64_t n, k, bn, bk, sk;
    int dt;
    float *amax; /* sk floats per task */
} q_t;

static void quant_block_row(const q_t *a, int64_t rb, float *amax) {
    int64_t i0 = rb * a->bn, i1 = i0 + a->bn < a->n ? i0 + a->bn : a->n;
    for (int64_t b = 0; b < a->sk; b++) amax[b] = 0.0f;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t b = 0, t0 = 0; t0 < a->k; b++, t0 += a->bk) {
            int64_t t1 = t0 + a->bk < a->k ? t0 + a->bk : a->k;
            float mx = amax[b];
            for (int64_t t = t0; t < t1; t++) {
                float v = fabsf(ld_f(a->w, a->dt, i * a->k + t));
                if (v > mx || v != v) mx = v; /* NaN propagates, as torch's amax */
                if (mx != mx) break;
            }
            amax[b] = mx;
        }
    float *inv = a->scale_inv + rb * a->sk;
    for (int64_t b = 0; b < a->sk; b++) {
        /* transformers' Fp8Quantize: scale = 448 / amax, stored inverse 1 / scale, both as
         * torch evaluates a scalar divided by a tensor (reciprocal, then times the scalar); a
         * block whose amax is not > 0 (all zeros, or NaN) gets 1 */
        float mx = amax[b];
        inv[b] = mx > 0.0f ? 1.0f / ((1.0f / mx) * 448.0f) : 1.0f;
    }
    for (int64_t i = i0; i < i1; i++)
        for (int64_t b = 0, t0 = 0; t0 < a->k; b++, t0 += a->bk) {
            int64_t t1 = t0 + a->bk < a->k ? t0 + a->bk : a->k;
            const float s = inv[b];
            for (int64_t t = t0; t < t1; t++) {
                float q = ld_f(a->w, a->dt, i * a->k + t) / s;
                q = q < -448.0f ? -448.0f : q > 448.0f ? 448.0f : q; /* NaN stays NaN */
                a->out[i * a->k + t] = f32_to_e4m3(q);
            }
        }
}

static void quant_task(void *vctx, int ith, int nth) {
    const q_t *a = vctx;
    int64_t rows = (a->n + a->bn - 1) / a->bn, r0, r1;
    to_split_rows(rows, ith, nth, &r0, &r1);
    for (int64_t rb = r0; rb < r1; rb++) quant_block_row(a, rb, a->amax + (size_t)ith * a->sk);
}

TO_API int to_fp8_quant(const void *w, int w_dtype, int64_t n, int64_t k, int64_t block_n,
                        int64_t block_k, uint8_t *out, float *scale_inv) {
    TO_CHECK_NONNEG(n);
    TO_CHECK_NONNEG(k);
    TO_CHECK(block_n >= 1 && block_k >= 1, TO_ERR_INVALID_ARGUMENT,
             "to_fp8_quant: block sizes must be >= 1, got (%lld, %lld)", (long long)block_n,
             (long long)block_k);
    TO_CHECK(out_dtype_ok(w_dtype), TO_ERR_DTYPE,
             "to_fp8_quant: weight dtype %d not supported (f32, bf16 or f16)", w_dtype);
    if (n == 0 || k == 0) return TO_OK;
    TO_CHECK_PTR(w);
    TO_CHECK_PTR(out);
    TO_CHECK_PTR(scale_inv);
    int64_t sk = (k + block_k - 1) / block_k, rows = (n + block_n - 1) / block_n;
    int tasks = row_tasks(rows, block_n * k);
    void *amax = NULL;
    int rc = to_alloc((size_t)tasks * (size_t)sk * sizeof(float), &amax);
    if (rc != TO_OK) return rc;
    q_t a = {w, out, scale_inv, n, k, block_n, block_k, sk, w_dtype, amax};
    if (tasks <= 1) quant_task(&a, 0, 1);
    else to_parallel_run(quant_task, &a, tasks);
    to_free(amax);
    return TO_OK;
}
