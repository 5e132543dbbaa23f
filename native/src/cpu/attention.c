/* Scaled dot-product attention (GQA, causal with a start position, packed bidirectional segments)
 * and the KV-cache append.
 *
 * Algorithm: flash-style online softmax. A work item is (kv head, block of query tokens, key
 * range). Its rows are the block's tokens x the query heads sharing the kv head, so every key/value
 * tile (converted to fp32 once if the cache is bf16) is reused by all of them. Visible keys of one
 * row are always an interval [lo, hi), so masks never need -inf scores. Scores, softmax and the
 * P.V accumulation are fp32; the output is rounded once. Decode (few rows, few kv heads) splits
 * the key range across threads and merges the partial (max, sum, acc) triples at the end.
 * Items are handed out dynamically (atomic counter), most expensive (latest causal) blocks first.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "../common/internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TO_X86 1
#endif

/* ---- kernels ------------------------------------------------------------------------------- */
typedef struct {
    const char *name;
    /* s[j] = scale * <q, k + j*ldk> for j < n (rows of d floats) */
    void (*scores)(const float *q, const float *k, int64_t ldk, int n, int64_t d, float scale,
                   float *s);
    /* s[j] = exp(s[j] - m) for j < n; returns the sum */
    float (*expsum)(float *s, int n, float m);
    /* acc[0:d] = acc * c + sum_j p[j] * v[j*ldv : +d] */
    void (*pv)(float *acc, float c, const float *p, const float *v, int64_t ldv, int n, int64_t d);
    void (*cvt)(const uint16_t *src, float *dst, int64_t n);
    /* decode over a bf16 cache (NULL where the ISA lacks them): s[r * 16 + j] = scale * <q_r, k_j>
     * for r < rows, j < n <= 16, straight from the cache, with bf16 queries (dscores_bq: rows of
     * ldq bf16) or fp32 queries (dscores_fq: rows of ldq floats in run_decode's order) */
    void (*dscores_bq)(const void *q, int64_t ldq, int64_t rows, const uint16_t *k, int64_t kps,
                       int n, int64_t hd, float scale, float *s);
    void (*dscores_fq)(const void *q, int64_t ldq, int64_t rows, const uint16_t *k, int64_t kps,
                       int n, int64_t hd, float scale, float *s);
} attn_kernels;

static void scores_c(const float *q, const float *k, int64_t ldk, int n, int64_t d, float scale,
                     float *s) {
    for (int j = 0; j < n; j++) {
        const float *kr = k + j * ldk;
        float a = 0.f;
        for (int64_t i = 0; i < d; i++) a += q[i] * kr[i];
        s[j] = a * scale;
    }
}
static float expsum_c(float *s, int n, float m) {
    float sum = 0.f;
    for (int j = 0; j < n; j++) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    return sum;
}
static void pv_c(float *acc, float c, const float *p, const float *v, int64_t ldv, int n,
                 int64_t d) {
    if (c != 1.f)
        for (int64_t i = 0; i < d; i++) acc[i] *= c;
    for (int j = 0; j < n; j++) {
        const float *vr = v + j * ldv;
        float pj = p[j];
        for (int64_t i = 0; i < d; i++) acc[i] += pj * vr[i];
    }
}
static void cvt_c(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = to_bf16_to_f32(src[i]);
}
static const attn_kernels k_generic = {"generic-c", scores_c, expsum_c, pv_c, cvt_c, NULL, NULL};

#ifdef TO_X86
/* ---- AVX2 + FMA ---- */
#define T2 __attribute__((target("avx2,fma")))
T2 static inline float hsum256(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}
/* exp for x <= 0 (clamped at -87; NaN stays NaN, as in torch): 2^n * p(r), degree-6 polynomial on |r| <= ln2/2 */
T2 static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x); /* this operand order keeps a NaN */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.f / 720.f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
T2 static void scores_avx2(const float *q, const float *k, int64_t ldk, int n, int64_t d,
                           float scale, float *s) {
    int64_t d8 = d & ~(int64_t)7;
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *k0 = k + j * ldk, *k1 = k0 + ldk, *k2 = k1 + ldk, *k3 = k2 + ldk;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = 0; i < d8; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
        }
        float r0 = hsum256(a0), r1 = hsum256(a1), r2 = hsum256(a2), r3 = hsum256(a3);
        for (int64_t i = d8; i < d; i++) {
            r0 += q[i] * k0[i];
            r1 += q[i] * k1[i];
            r2 += q[i] * k2[i];
            r3 += q[i] * k3[i];
        }
        s[j] = r0 * scale;
        s[j + 1] = r1 * scale;
        s[j + 2] = r2 * scale;
        s[j + 3] = r3 * scale;
    }
    for (; j < n; j++) {
        const float *kr = k + j * ldk;
        __m256 a = _mm256_setzero_ps();
        for (int64_t i = 0; i < d8; i += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kr + i), a);
        float r = hsum256(a);
        for (int64_t i = d8; i < d; i++) r += q[i] * kr[i];
        s[j] = r * scale;
    }
}
T2 static float expsum_avx2(float *s, int n, float m) {
    __m256 mv = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum256(acc);
    for (; j < n; j++) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    return sum;
}
T2 static void pv_avx2(float *acc, float c, const float *p, const float *v, int64_t ldv, int n,
                       int64_t d) {
    int64_t i = 0;
    __m256 cv = _mm256_set1_ps(c);
    for (; i + 32 <= d; i += 32) {
        __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(acc + i), cv);
        __m256 a1 = _mm256_mul_ps(_mm256_loadu_ps(acc + i + 8), cv);
        __m256 a2 = _mm256_mul_ps(_mm256_loadu_ps(acc + i + 16), cv);
        __m256 a3 = _mm256_mul_ps(_mm256_loadu_ps(acc + i + 24), cv);
        for (int j = 0; j < n; j++) {
            const float *vr = v + j * ldv + i;
            __m256 pj = _mm256_set1_ps(p[j]);
            a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr), a0);
            a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8), a1);
            a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 16), a2);
            a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 24), a3);
        }
        _mm256_storeu_ps(acc + i, a0);
        _mm256_storeu_ps(acc + i + 8, a1);
        _mm256_storeu_ps(acc + i + 16, a2);
        _mm256_storeu_ps(acc + i + 24, a3);
    }
    for (; i + 8 <= d; i += 8) {
        __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(acc + i), cv);
        for (int j = 0; j < n; j++)
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + j * ldv + i), a0);
        _mm256_storeu_ps(acc + i, a0);
    }
    for (; i < d; i++) {
        float a = acc[i] * c;
        for (int j = 0; j < n; j++) a += p[j] * v[j * ldv + i];
        acc[i] = a;
    }
}
T2 static void cvt_avx2(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
    }
    for (; i < n; i++) dst[i] = to_bf16_to_f32(src[i]);
}
static const attn_kernels k_avx2 = {"avx2-fma", scores_avx2, expsum_avx2, pv_avx2, cvt_avx2, NULL, NULL};

/* ---- AVX-512F ---- */
#define T5 __attribute__((target("avx512f")))
T5 static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x); /* this operand order keeps a NaN */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.f / 720.f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}
T5 static void scores_avx512(const float *q, const float *k, int64_t ldk, int n, int64_t d,
                             float scale, float *s) {
    int64_t d16 = d & ~(int64_t)15;
    __mmask16 tm = (__mmask16)((1u << (d - d16)) - 1u);
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *k0 = k + j * ldk, *k1 = k0 + ldk, *k2 = k1 + ldk, *k3 = k2 + ldk;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = 0; i < d16; i += 16) {
            __m512 qv = _mm512_loadu_ps(q + i);
            a0 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + i), a0);
            a1 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k1 + i), a1);
            a2 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k2 + i), a2);
            a3 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k3 + i), a3);
        }
        if (tm) {
            __m512 qv = _mm512_maskz_loadu_ps(tm, q + d16);
            a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tm, k0 + d16), a0);
            a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tm, k1 + d16), a1);
            a2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tm, k2 + d16), a2);
            a3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tm, k3 + d16), a3);
        }
        s[j] = _mm512_reduce_add_ps(a0) * scale;
        s[j + 1] = _mm512_reduce_add_ps(a1) * scale;
        s[j + 2] = _mm512_reduce_add_ps(a2) * scale;
        s[j + 3] = _mm512_reduce_add_ps(a3) * scale;
    }
    for (; j < n; j++) {
        const float *kr = k + j * ldk;
        __m512 a = _mm512_setzero_ps();
        for (int64_t i = 0; i < d16; i += 16)
            a = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(kr + i), a);
        if (tm)
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, q + d16),
                                _mm512_maskz_loadu_ps(tm, kr + d16), a);
        s[j] = _mm512_reduce_add_ps(a) * scale;
    }
}
T5 static float expsum_avx512(float *s, int n, float m) {
    __m512 mv = _mm512_set1_ps(m), acc = _mm512_setzero_ps();
    int j = 0;
    for (; j < n; j += 16) {
        __mmask16 mk = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1u);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), mv));
        _mm512_mask_storeu_ps(s + j, mk, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(mk, e));
    }
    return _mm512_reduce_add_ps(acc);
}
T5 static void pv_avx512(float *acc, float c, const float *p, const float *v, int64_t ldv, int n,
                         int64_t d) {
    int64_t i = 0;
    __m512 cv = _mm512_set1_ps(c);
    for (; i + 64 <= d; i += 64) {
        __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(acc + i), cv);
        __m512 a1 = _mm512_mul_ps(_mm512_loadu_ps(acc + i + 16), cv);
        __m512 a2 = _mm512_mul_ps(_mm512_loadu_ps(acc + i + 32), cv);
        __m512 a3 = _mm512_mul_ps(_mm512_loadu_ps(acc + i + 48), cv);
        for (int j = 0; j < n; j++) {
            const float *vr = v + j * ldv + i;
            __m512 pj = _mm512_set1_ps(p[j]);
            a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr), a0);
            a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 16), a1);
            a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 32), a2);
            a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 48), a3);
        }
        _mm512_storeu_ps(acc + i, a0);
        _mm512_storeu_ps(acc + i + 16, a1);
        _mm512_storeu_ps(acc + i + 32, a2);
        _mm512_storeu_ps(acc + i + 48, a3);
    }
    for (; i < d; i += 16) {
        __mmask16 mk = d - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (d - i)) - 1u);
        __m512 a0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, acc + i), cv);
        for (int j = 0; j < n; j++)
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(mk, v + j * ldv + i),
                                 a0);
        _mm512_mask_storeu_ps(acc + i, mk, a0);
    }
}
T5 static void cvt_avx512(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)));
    }
    for (; i < n; i++) dst[i] = to_bf16_to_f32(src[i]);
}
static const attn_kernels k_avx512 = {"avx512f",  scores_avx512, expsum_avx512, pv_avx512,
                                      cvt_avx512, NULL,          NULL};

/* ---- decode over a bf16 cache (AVX-512BW, with or without AVX512_BF16) ----------------------
 * One pass over the keys of a work item in tiles of DTK keys, straight from the cache (no fp32
 * copies): every row's scores for 8 keys at a time (two rows share each loaded key chunk; the 8
 * per-key partial vectors are transposed-and-summed into one vector of scores), an online softmax
 * per row over the tile, then P.V with up to 8 rows sharing each loaded value chunk. bf16 values
 * become fp32 with one unpack (a zero low half): a 32-value chunk gives the fp32 vectors
 * lo = x[0:4,8:12,16:20,24:28] and hi = x[4:8,12:16,20:24,28:32]; the accumulators and (for the
 * fp32 score kernel) the queries are kept in that order and put back in natural order once.
 * Scores: vdpbf16ps on bf16 queries (exact products, fp32 sums) or fp32 FMA on fp32 queries.
 * Used for blocks whose rows all see the same keys (one query token, or no causal mask). */
#define DTK 16
#define TD __attribute__((target("avx512f,avx512bw,avx512vl")))
#define TB __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* position of x[i] of a 32-value chunk in the unpacked (lo | hi) order */
static inline int64_t dperm(int64_t i) {
    int64_t c = i & ~(int64_t)31, w = i & 31, lane = w >> 3, k = w & 7;
    return c + (k < 4 ? lane * 4 + k : 16 + lane * 4 + (k - 4));
}
static inline __mmask32 dmask32(int64_t left) {
    return left >= 32 ? (__mmask32)0xffffffffu : left <= 0 ? (__mmask32)0 : (__mmask32)((1u << left) - 1u);
}

/* lane u of the result: the sum of a[u]'s 16 lanes (u < 8) */
TD static inline __m256 dreduce8(const __m512 a[8]) {
    __m512 b[4], cc[2];
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        cc[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 f = _mm512_add_ps(_mm512_shuffle_f32x4(cc[0], cc[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(cc[0], cc[1], _MM_SHUFFLE(3, 1, 3, 1)));
    f = _mm512_shuffle_f32x4(f, f, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm256_add_ps(_mm512_castps512_ps256(f),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
}

/* the 8 key rows of keys j0.. (the last one repeated past n) and zeroed sums for two rows */
TD static inline void dkeys8(const uint16_t *k, int64_t kps, int j0, int n, const uint16_t **kp,
                          __m512 *a, __m512 *b) {
    for (int u = 0; u < 8; u++) {
        kp[u] = k + (int64_t)(j0 + u < n ? j0 + u : n - 1) * kps;
        a[u] = b[u] = _mm512_setzero_ps();
    }
}

/* the scaled sums of keys j0.. (those below n) into rows r and r1 of s (r1 last: it may be r) */
TD static inline void dstore8(float *s, int64_t r, int64_t r1, int j0, int n, const __m512 *a,
                              const __m512 *b, __m256 sc) {
    const __m256 ra = _mm256_mul_ps(dreduce8(a), sc), rb = _mm256_mul_ps(dreduce8(b), sc);
    const __mmask8 keep = n - j0 >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (n - j0)) - 1u);
    _mm256_mask_storeu_ps(s + r1 * DTK + j0, keep, rb);
    _mm256_mask_storeu_ps(s + r * DTK + j0, keep, ra);
}

/* s[r * DTK + j] = scale * <q_r, k_j> for r < rows, j < n; q: rows of ldq (>= hd rounded up to
 * 32) bf16 values, zero past hd; k: bf16 rows of stride kps */
TB static void dscores_bf16(const void *qv, int64_t ldq, int64_t rows, const uint16_t *k,
                            int64_t kps, int n, int64_t hd, float scale, float *s) {
    const uint16_t *q = qv;
    const __m256 sc = _mm256_set1_ps(scale);
    for (int64_t r = 0; r < rows; r += 2) {
        const int64_t r1 = r + 1 < rows ? r + 1 : r;
        const uint16_t *q0 = q + r * ldq, *q1 = q + r1 * ldq;
        for (int j0 = 0; j0 < n; j0 += 8) {
            const uint16_t *kp[8];
            __m512 a[8], b[8];
            dkeys8(k, kps, j0, n, kp, a, b);
            for (int64_t i = 0; i < hd; i += 32) {
                const __mmask32 m = dmask32(hd - i);
                const __m512bh x0 = (__m512bh)_mm512_loadu_si512(q0 + i);
                const __m512bh x1 = (__m512bh)_mm512_loadu_si512(q1 + i);
                for (int u = 0; u < 8; u++) {
                    const __m512bh kv = (__m512bh)_mm512_maskz_loadu_epi16(m, kp[u] + i);
                    a[u] = _mm512_dpbf16_ps(a[u], x0, kv);
                    b[u] = _mm512_dpbf16_ps(b[u], x1, kv);
                }
            }
            dstore8(s, r, r1, j0, n, a, b, sc);
        }
    }
}

/* as dscores_bf16 with fp32 queries stored in the unpacked order (rows of ldq floats, zero past
 * hd) and fp32 FMA */
TD static void dscores_f32(const void *qv, int64_t ldq, int64_t rows, const uint16_t *k,
                           int64_t kps, int n, int64_t hd, float scale, float *s) {
    const float *q = qv;
    const __m256 sc = _mm256_set1_ps(scale);
    const __m512i z = _mm512_setzero_si512();
    for (int64_t r = 0; r < rows; r += 2) {
        const int64_t r1 = r + 1 < rows ? r + 1 : r;
        const float *q0 = q + r * ldq, *q1 = q + r1 * ldq;
        for (int j0 = 0; j0 < n; j0 += 8) {
            const uint16_t *kp[8];
            __m512 a[8], b[8];
            dkeys8(k, kps, j0, n, kp, a, b);
            for (int64_t i = 0; i < hd; i += 32) {
                const __mmask32 m = dmask32(hd - i);
                const __m512 x0l = _mm512_loadu_ps(q0 + i), x0h = _mm512_loadu_ps(q0 + i + 16);
                const __m512 x1l = _mm512_loadu_ps(q1 + i), x1h = _mm512_loadu_ps(q1 + i + 16);
                for (int u = 0; u < 8; u++) {
                    const __m512i kv = _mm512_maskz_loadu_epi16(m, kp[u] + i);
                    const __m512 kl = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, kv));
                    const __m512 kh = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, kv));
                    a[u] = _mm512_fmadd_ps(x0l, kl, _mm512_fmadd_ps(x0h, kh, a[u]));
                    b[u] = _mm512_fmadd_ps(x1l, kl, _mm512_fmadd_ps(x1h, kh, b[u]));
                }
            }
            dstore8(s, r, r1, j0, n, a, b, sc);
        }
    }
}

/* acc[r] = acc[r] * corr[r] + sum_{j < n} p[r * DTK + j] v_j for R rows (acc rows of lda floats
 * in the unpacked order, v bf16 rows of stride vps and hdv values) */
TD static inline __attribute__((always_inline)) void dpv_rows(float *acc, int64_t lda,
                                                               const float *p, const float *corr,
                                                               const uint16_t *v, int64_t vps,
                                                               int n, int64_t hdv, const int R) {
    const __m512i z = _mm512_setzero_si512();
    for (int64_t i = 0; i < hdv; i += 32) {
        const __mmask32 m = dmask32(hdv - i);
        __m512 lo[8], hi[8];
        for (int r = 0; r < R; r++) {
            const __m512 cr = _mm512_set1_ps(corr[r]);
            lo[r] = _mm512_mul_ps(_mm512_loadu_ps(acc + r * lda + i), cr);
            hi[r] = _mm512_mul_ps(_mm512_loadu_ps(acc + r * lda + i + 16), cr);
        }
        const uint16_t *vp = v + i;
        for (int j = 0; j < n; j++, vp += vps) {
            const __m512i x = _mm512_maskz_loadu_epi16(m, vp);
            const __m512 vl = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, x));
            const __m512 vh = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, x));
            for (int r = 0; r < R; r++) {
                const __m512 pr = _mm512_set1_ps(p[r * DTK + j]);
                lo[r] = _mm512_fmadd_ps(pr, vl, lo[r]);
                hi[r] = _mm512_fmadd_ps(pr, vh, hi[r]);
            }
        }
        for (int r = 0; r < R; r++) {
            _mm512_storeu_ps(acc + r * lda + i, lo[r]);
            _mm512_storeu_ps(acc + r * lda + i + 16, hi[r]);
        }
    }
}
TD static void dpv(float *acc, int64_t lda, int64_t rows, const float *p, const float *corr,
                   const uint16_t *v, int64_t vps, int n, int64_t hdv) {
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8)
        dpv_rows(acc + r * lda, lda, p + r * DTK, corr + r, v, vps, n, hdv, 8);
    if (r + 4 <= rows) {
        dpv_rows(acc + r * lda, lda, p + r * DTK, corr + r, v, vps, n, hdv, 4);
        r += 4;
    }
    if (r + 2 <= rows) {
        dpv_rows(acc + r * lda, lda, p + r * DTK, corr + r, v, vps, n, hdv, 2);
        r += 2;
    }
    if (r < rows) dpv_rows(acc + r * lda, lda, p + r * DTK, corr + r, v, vps, n, hdv, 1);
}

/* online softmax of one tile (n keys, all visible): p = exp(s - m) (0 past n), corr = the
 * accumulators' rescale factor; m, l updated. NaN scores stay NaN in p, hence in l and acc. */
TD static void dsoftmax(float *s, int64_t rows, int n, float *m, float *l, float *corr) {
    const __mmask16 vm = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
    for (int64_t r = 0; r < rows; r++) {
        const __m512 sv = _mm512_maskz_loadu_ps(vm, s + r * DTK);
        const float mx = _mm512_mask_reduce_max_ps(vm, sv);
        float cr = 1.f;
        if (mx > m[r]) {
            cr = expf(m[r] - mx);
            m[r] = mx;
        }
        const __m512 e = _mm512_maskz_mov_ps(vm, exp512(_mm512_sub_ps(sv, _mm512_set1_ps(m[r]))));
        _mm512_storeu_ps(s + r * DTK, e);
        l[r] = l[r] * cr + _mm512_reduce_add_ps(e);
        corr[r] = cr;
    }
}
static const attn_kernels k_avx512bw = {"avx512bw",    scores_avx512, expsum_avx512, pv_avx512,
                                        cvt_avx512,    NULL,          dscores_f32};
static const attn_kernels k_avx512bf16 = {"avx512-bf16", scores_avx512, expsum_avx512, pv_avx512,
                                          cvt_avx512,    dscores_bf16,  dscores_f32};

/* A block's tiles with its rows as the vector dimension (prefill: 16 or more rows). Scores are a
 * small GEMM, S^T[j][r] = sum_d K[j][d] Q^T[d][r] (broadcast key values times 16 rows of the
 * transposed queries: no horizontal sums), the online softmax runs over 16 rows at once with
 * per-row visibility masks, and P.V adds each key's value row to two rows' accumulators at a
 * time. Same state as the row path (acc, running max and sum per row); R = rows padded to 16. */
T5 static void scores_blocked(const float *kt, int64_t n4, int64_t hd, const float *qt, int64_t R,
                              float scale, float *st) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t r0 = 0; r0 < R; r0 += 32) {
        const int two = r0 + 16 < R;
        for (int64_t j0 = 0; j0 < n4; j0 += 4) {
            const float *k0 = kt + j0 * hd, *k1 = k0 + hd, *k2 = k1 + hd, *k3 = k2 + hd;
            __m512 a00 = _mm512_setzero_ps(), a10 = a00, a20 = a00, a30 = a00;
            __m512 a01 = a00, a11 = a00, a21 = a00, a31 = a00;
            if (two) {
                for (int64_t d = 0; d < hd; d++) {
                    const __m512 q0 = _mm512_loadu_ps(qt + d * R + r0), q1 = _mm512_loadu_ps(qt + d * R + r0 + 16);
                    const __m512 b0 = _mm512_set1_ps(k0[d]), b1 = _mm512_set1_ps(k1[d]);
                    const __m512 b2 = _mm512_set1_ps(k2[d]), b3 = _mm512_set1_ps(k3[d]);
                    a00 = _mm512_fmadd_ps(b0, q0, a00), a01 = _mm512_fmadd_ps(b0, q1, a01);
                    a10 = _mm512_fmadd_ps(b1, q0, a10), a11 = _mm512_fmadd_ps(b1, q1, a11);
                    a20 = _mm512_fmadd_ps(b2, q0, a20), a21 = _mm512_fmadd_ps(b2, q1, a21);
                    a30 = _mm512_fmadd_ps(b3, q0, a30), a31 = _mm512_fmadd_ps(b3, q1, a31);
                }
                _mm512_storeu_ps(st + (j0 + 0) * R + r0 + 16, _mm512_mul_ps(a01, sc));
                _mm512_storeu_ps(st + (j0 + 1) * R + r0 + 16, _mm512_mul_ps(a11, sc));
                _mm512_storeu_ps(st + (j0 + 2) * R + r0 + 16, _mm512_mul_ps(a21, sc));
                _mm512_storeu_ps(st + (j0 + 3) * R + r0 + 16, _mm512_mul_ps(a31, sc));
            } else {
                for (int64_t d = 0; d < hd; d++) {
                    const __m512 q0 = _mm512_loadu_ps(qt + d * R + r0);
                    a00 = _mm512_fmadd_ps(_mm512_set1_ps(k0[d]), q0, a00);
                    a10 = _mm512_fmadd_ps(_mm512_set1_ps(k1[d]), q0, a10);
                    a20 = _mm512_fmadd_ps(_mm512_set1_ps(k2[d]), q0, a20);
                    a30 = _mm512_fmadd_ps(_mm512_set1_ps(k3[d]), q0, a30);
                }
            }
            _mm512_storeu_ps(st + (j0 + 0) * R + r0, _mm512_mul_ps(a00, sc));
            _mm512_storeu_ps(st + (j0 + 1) * R + r0, _mm512_mul_ps(a10, sc));
            _mm512_storeu_ps(st + (j0 + 2) * R + r0, _mm512_mul_ps(a20, sc));
            _mm512_storeu_ps(st + (j0 + 3) * R + r0, _mm512_mul_ps(a30, sc));
        }
    }
}

/* online softmax of one tile (keys t0 .. t0 + n) for every row vector: st becomes P^T (0 where a
 * key is not visible to a row), corr the rows' rescale factors; mv / lv updated */
T5 static void softmax_blocked(float *st, int64_t n, int64_t R, int64_t t0, const int32_t *lo,
                               const int32_t *hi, float *mv, float *lv, float *corr) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t r0 = 0; r0 < R; r0 += 16) {
        const __m512i lov = _mm512_loadu_si512(lo + r0), hiv = _mm512_loadu_si512(hi + r0);
        /* every key of the tile visible to all 16 rows (no causal edge, no segment edge): no masks */
        const int all = _mm512_reduce_max_epi32(lov) <= t0 && _mm512_reduce_min_epi32(hiv) >= t0 + n;
        __m512 mx = ninf;
        if (all) {
            for (int64_t j = 0; j < n; j++) mx = _mm512_max_ps(mx, _mm512_loadu_ps(st + j * R + r0));
        } else {
            for (int64_t j = 0; j < n; j++) {
                const __m512i jv = _mm512_set1_epi32((int32_t)(t0 + j));
                const __mmask16 vis = _mm512_cmpge_epi32_mask(jv, lov) & _mm512_cmplt_epi32_mask(jv, hiv);
                mx = _mm512_mask_max_ps(mx, vis, mx, _mm512_loadu_ps(st + j * R + r0));
            }
        }
        const __m512 mo = _mm512_loadu_ps(mv + r0), mn = _mm512_max_ps(mo, mx);
        const __mmask16 valid = _mm512_cmp_ps_mask(mn, ninf, _CMP_GT_OQ);
        const __m512 ms = _mm512_maskz_mov_ps(valid, mn); /* rows with nothing visible yet: 0 */
        const __m512 cr = exp512(_mm512_sub_ps(mo, ms));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; j++) {
            __mmask16 vis = (__mmask16)0xffff;
            if (!all) {
                const __m512i jv = _mm512_set1_epi32((int32_t)(t0 + j));
                vis = _mm512_cmpge_epi32_mask(jv, lov) & _mm512_cmplt_epi32_mask(jv, hiv);
            }
            const __m512 e = _mm512_maskz_mov_ps(vis, exp512(_mm512_sub_ps(_mm512_loadu_ps(st + j * R + r0), ms)));
            _mm512_storeu_ps(st + j * R + r0, e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_storeu_ps(mv + r0, mn);
        _mm512_storeu_ps(lv + r0, _mm512_fmadd_ps(_mm512_loadu_ps(lv + r0), cr, sum));
        _mm512_storeu_ps(corr + r0, cr);
    }
}

/* acc[r] = acc[r] * corr[r] + sum_j P^T[j][r] v[j] for r < rows (two rows at a time) */
T5 static void pv_blocked(float *acc, int64_t rows, int64_t hdv, const float *pt, int64_t R,
                          const float *corr, const float *v, int64_t ldv, int64_t n) {
    for (int64_t r = 0; r < rows; r += 2) {
        const int64_t r1 = r + 1 < rows ? r + 1 : r; /* an odd last row pairs with itself */
        float *x0 = acc + r * hdv, *x1 = acc + r1 * hdv;
        const __m512 c0 = _mm512_set1_ps(corr[r]), c1 = _mm512_set1_ps(corr[r1]);
        for (int64_t i = 0; i < hdv; i += 64) {
            __mmask16 mk[4];
            for (int u = 0; u < 4; u++) {
                const int64_t left = hdv - i - 16 * u;
                mk[u] = left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
            }
            __m512 a0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[0], x0 + i), c0);
            __m512 a1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[1], x0 + i + 16), c0);
            __m512 a2 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[2], x0 + i + 32), c0);
            __m512 a3 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[3], x0 + i + 48), c0);
            __m512 b0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[0], x1 + i), c1);
            __m512 b1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[1], x1 + i + 16), c1);
            __m512 b2 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[2], x1 + i + 32), c1);
            __m512 b3 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[3], x1 + i + 48), c1);
            for (int64_t j = 0; j < n; j++) {
                const float *vr = v + j * ldv + i;
                const __m512 p0 = _mm512_set1_ps(pt[j * R + r]), p1 = _mm512_set1_ps(pt[j * R + r1]);
                const __m512 v0 = _mm512_maskz_loadu_ps(mk[0], vr), v1 = _mm512_maskz_loadu_ps(mk[1], vr + 16);
                const __m512 v2 = _mm512_maskz_loadu_ps(mk[2], vr + 32), v3 = _mm512_maskz_loadu_ps(mk[3], vr + 48);
                a0 = _mm512_fmadd_ps(p0, v0, a0), a1 = _mm512_fmadd_ps(p0, v1, a1);
                a2 = _mm512_fmadd_ps(p0, v2, a2), a3 = _mm512_fmadd_ps(p0, v3, a3);
                b0 = _mm512_fmadd_ps(p1, v0, b0), b1 = _mm512_fmadd_ps(p1, v1, b1);
                b2 = _mm512_fmadd_ps(p1, v2, b2), b3 = _mm512_fmadd_ps(p1, v3, b3);
            }
            /* x1 first: when r1 == r the row's own sums (a) are the ones kept */
            _mm512_mask_storeu_ps(x1 + i, mk[0], b0), _mm512_mask_storeu_ps(x1 + i + 16, mk[1], b1);
            _mm512_mask_storeu_ps(x1 + i + 32, mk[2], b2), _mm512_mask_storeu_ps(x1 + i + 48, mk[3], b3);
            _mm512_mask_storeu_ps(x0 + i, mk[0], a0), _mm512_mask_storeu_ps(x0 + i + 16, mk[1], a1);
            _mm512_mask_storeu_ps(x0 + i + 32, mk[2], a2), _mm512_mask_storeu_ps(x0 + i + 48, mk[3], a3);
        }
    }
}
#endif

static const attn_kernels *pick_kernels(void) {
#ifdef TO_X86
    uint32_t isa = to_isa();
    if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW) && (isa & TO_ISA_AVX512VL))
        return (isa & TO_ISA_AVX512_BF16) ? &k_avx512bf16 : &k_avx512bw;
    if (isa & TO_ISA_AVX512F) return &k_avx512;
    if ((isa & TO_ISA_AVX2) && (isa & TO_ISA_FMA)) return &k_avx2;
#endif
    return &k_generic;
}

/* ---- driver -------------------------------------------------------------------------------- */
typedef struct {
    int64_t q0, q1; /* query tokens */
    int64_t seg_lo, seg_hi; /* key interval of the segment (no segments: 0, kv_len) */
} qblock;

typedef struct {
    const attn_kernels *kern;
    const void *q, *k, *v;
    void *out;
    int64_t tq, nh, nkv, g, hd, hdv, ldq, ldo, kv_len, khs, kps, vhs, vps, q_pos;
    int causal, segmented, q_dtype, kv_dtype;
    int blocked; /* the AVX-512 kernels: blocks of 16+ rows take run_blocked */
    float scale;
    const qblock *blocks;
    int64_t nblocks, nsplit, bq, bk, max_rows;
    int64_t n_items;
    float *partial; /* nsplit > 1: [nkv][nsplit][rows][hdv + 2] */
    atomic_llong next;
    atomic_int failed;
} attn_ctx;

/* visible keys [lo, hi) of query token i in block b */
static inline void row_range(const attn_ctx *c, const qblock *b, int64_t i, int64_t *lo,
                             int64_t *hi) {
    *lo = b->seg_lo;
    if (!c->causal) *hi = b->seg_hi;
    else if (c->segmented) *hi = i + 1;
    else *hi = c->q_pos + i + 1;
}

#ifdef TO_X86
/* rows padded to whole vectors, and key tiles to whole groups of 4 (run_blocked's layout) */
static inline int64_t blk_rows(const attn_ctx *c) { return (c->max_rows + 15) & ~(int64_t)15; }
static inline int64_t blk_keys(const attn_ctx *c) { return (c->bk + 3) & ~(int64_t)3; }

/* A work item's key range [k_beg, k_end) for its rows with the row-vector kernels (see
 * scores_blocked); leaves the same running max, sum and accumulators as the row path. `area`:
 * hd * R + bk4 * R + 5 * R floats. kt holds bk4 key rows. */
T5 static void run_blocked(attn_ctx *c, const qblock *b, int64_t hk, int64_t rows, int64_t k_beg,
                           int64_t k_end, float *acc, float *mrow, float *lrow, float *kt, float *vt,
                           float *area) {
    const int64_t g = c->g, hd = c->hd, hdv = c->hdv, bk = c->bk, R = blk_rows(c);
    float *qt = area, *st = qt + hd * R, *mv = st + blk_keys(c) * R, *lv = mv + R, *corr = lv + R;
    int32_t *lo = (int32_t *)(corr + R), *hi = lo + R;
    for (int64_t r = 0; r < R; r++) {
        mv[r] = -INFINITY;
        lv[r] = 0.f;
        if (r >= rows) { /* padding: zero queries that see no key */
            lo[r] = hi[r] = 0;
            for (int64_t d = 0; d < hd; d++) qt[d * R + r] = 0.f;
            continue;
        }
        int64_t i = b->q0 + r / g, h = hk * g + r % g, l, e;
        row_range(c, b, i, &l, &e);
        lo[r] = (int32_t)l;
        hi[r] = (int32_t)e;
        if (c->q_dtype == TO_F32) {
            const float *qp = (const float *)c->q + i * c->ldq + h * hd;
            for (int64_t d = 0; d < hd; d++) qt[d * R + r] = qp[d];
        } else {
            const uint16_t *qp = (const uint16_t *)c->q + i * c->ldq + h * hd;
            for (int64_t d = 0; d < hd; d++) qt[d * R + r] = to_bf16_to_f32(qp[d]);
        }
    }
    memset(acc, 0, (size_t)(rows * hdv) * 4);
    const int f32 = c->kv_dtype == TO_F32, esz = f32 ? 4 : 2;
    const char *kbase = (const char *)c->k + hk * c->khs * esz;
    const char *vbase = (const char *)c->v + hk * c->vhs * esz;
    for (int64_t t0 = k_beg; t0 < k_end; t0 += bk) {
        const int64_t n = k_end - t0 < bk ? k_end - t0 : bk, n4 = (n + 3) & ~(int64_t)3;
        for (int64_t j = 0; j < n; j++) {
            if (f32) memcpy(kt + j * hd, (const float *)kbase + (t0 + j) * c->kps, (size_t)hd * 4);
            else cvt_avx512((const uint16_t *)kbase + (t0 + j) * c->kps, kt + j * hd, hd);
        }
        memset(kt + n * hd, 0, (size_t)((n4 - n) * hd) * 4);
        const float *vtile = vt;
        int64_t ldv = hdv;
        if (f32) {
            vtile = (const float *)vbase + t0 * c->vps;
            ldv = c->vps;
        } else {
            for (int64_t j = 0; j < n; j++)
                cvt_avx512((const uint16_t *)vbase + (t0 + j) * c->vps, vt + j * hdv, hdv);
        }
        scores_blocked(kt, n4, hd, qt, R, c->scale, st);
        softmax_blocked(st, n, R, t0, lo, hi, mv, lv, corr);
        pv_blocked(acc, rows, hdv, st, R, corr, vtile, ldv, n);
    }
    for (int64_t r = 0; r < rows; r++) {
        mrow[r] = mv[r];
        lrow[r] = lv[r];
    }
}

/* run_decode's scratch: queries (rows of hd rounded up to 32), accumulators (rows of hdv rounded
 * up to 32, unpacked order), probabilities (rows of DTK) and rescale factors */
static inline int64_t dec_floats(const attn_ctx *c) {
    return c->max_rows * (((c->hd + 31) & ~(int64_t)31) + ((c->hdv + 31) & ~(int64_t)31) + DTK + 1);
}

/* A work item's key range [k_beg, k_end) over a bf16 cache for rows that all see every key of the
 * range (see the decode kernels above); leaves the same running max, sum and accumulators (natural
 * order) as the row path. */
TD static void run_decode(attn_ctx *c, const qblock *b, int64_t hk, int64_t rows, int64_t k_beg,
                          int64_t k_end, float *acc, float *mrow, float *lrow, float *area) {
    const int64_t g = c->g, hd = c->hd, hdv = c->hdv;
    const int64_t hd32 = (hd + 31) & ~(int64_t)31, hdv32 = (hdv + 31) & ~(int64_t)31;
    const int bq = c->q_dtype == TO_BF16 && c->kern->dscores_bq;
    float *qbuf = area, *accp = qbuf + c->max_rows * hd32, *ps = accp + c->max_rows * hdv32;
    float *corr = ps + c->max_rows * DTK;
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = b->q0 + r / g, h = hk * g + r % g;
        if (bq) {
            uint16_t *d = (uint16_t *)qbuf + r * hd32;
            memcpy(d, (const uint16_t *)c->q + i * c->ldq + h * hd, (size_t)hd * 2);
            memset(d + hd, 0, (size_t)(hd32 - hd) * 2);
        } else {
            float *d = qbuf + r * hd32;
            memset(d, 0, (size_t)hd32 * 4);
            if (c->q_dtype == TO_F32) {
                const float *qp = (const float *)c->q + i * c->ldq + h * hd;
                for (int64_t x = 0; x < hd; x++) d[dperm(x)] = qp[x];
            } else {
                const uint16_t *qp = (const uint16_t *)c->q + i * c->ldq + h * hd;
                for (int64_t x = 0; x < hd; x++) d[dperm(x)] = to_bf16_to_f32(qp[x]);
            }
        }
        memset(accp + r * hdv32, 0, (size_t)hdv32 * 4);
        mrow[r] = -INFINITY;
        lrow[r] = 0.f;
    }
    const uint16_t *kbase = (const uint16_t *)c->k + hk * c->khs;
    const uint16_t *vbase = (const uint16_t *)c->v + hk * c->vhs;
    for (int64_t t0 = k_beg; t0 < k_end; t0 += DTK) {
        const int n = (int)(k_end - t0 < DTK ? k_end - t0 : DTK);
        if (bq) c->kern->dscores_bq(qbuf, hd32, rows, kbase + t0 * c->kps, c->kps, n, hd, c->scale, ps);
        else c->kern->dscores_fq(qbuf, hd32, rows, kbase + t0 * c->kps, c->kps, n, hd, c->scale, ps);
        dsoftmax(ps, rows, n, mrow, lrow, corr);
        dpv(accp, hdv32, rows, ps, corr, vbase + t0 * c->vps, c->vps, n, hdv);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t x = 0; x < hdv; x++) acc[r * hdv + x] = accp[r * hdv32 + dperm(x)];
}
#endif

static size_t base_floats(const attn_ctx *c) {
    size_t n = (size_t)(c->max_rows * (c->hd + c->hdv + 2) + c->bk * (c->hd + c->hdv + 1) + 16);
#ifdef TO_X86
    if (c->blocked) /* kt padded to bk4 rows, then run_blocked's area after s */
        n += (size_t)(4 * c->hd + (c->hd + blk_keys(c) + 5) * blk_rows(c));
#endif
    return n;
}

static void run_item(attn_ctx *c, int64_t item, float *scratch) {
    int64_t per_block = c->nkv * c->nsplit;
    int64_t bi = c->nblocks - 1 - item / per_block; /* latest (most expensive) blocks first */
    int64_t hk = (item % per_block) / c->nsplit, split = item % c->nsplit;
    const qblock *b = &c->blocks[bi];
    int64_t g = c->g, hd = c->hd, hdv = c->hdv, bk = c->bk;
    int64_t ntok = b->q1 - b->q0, rows = ntok * g;
    float *qf = scratch;                          /* rows * hd */
    float *acc = qf + c->max_rows * hd;           /* rows * hdv */
    float *mrow = acc + c->max_rows * hdv;        /* rows */
    float *lrow = mrow + c->max_rows;             /* rows */
    float *kt = lrow + c->max_rows;               /* bk * hd */
    float *vt = kt + (c->blocked ? (bk + 3) & ~(int64_t)3 : bk) * hd; /* bk * hdv */
    float *s = vt + bk * hdv;                     /* bk */
    int64_t lo_blk, hi_blk, lo_tmp, hi_tmp;
    row_range(c, b, b->q0, &lo_blk, &hi_tmp);
    row_range(c, b, b->q1 - 1, &lo_tmp, &hi_blk);
    if (hi_tmp > hi_blk) hi_blk = hi_tmp;
    /* this split's share of the key interval, in whole tiles */
    int64_t span = hi_blk > lo_blk ? hi_blk - lo_blk : 0;
    int64_t ntiles = (span + bk - 1) / bk;
    int64_t t_per = (ntiles + c->nsplit - 1) / c->nsplit;
    int64_t k_beg = lo_blk + split * t_per * bk, k_end = k_beg + t_per * bk;
    if (k_end > hi_blk) k_end = hi_blk;
    if (k_beg > hi_blk) k_beg = hi_blk;

#ifdef TO_X86
    /* one query token (decode), or rows that all see the whole key range: straight from a bf16
     * cache */
    if (c->kern->dscores_fq && c->kv_dtype == TO_BF16 && (ntok == 1 || (!c->causal && rows < 16))) {
        run_decode(c, b, hk, rows, k_beg, k_end, acc, mrow, lrow, scratch + base_floats(c));
        goto done;
    }
    if (c->blocked && rows >= 16) {
        run_blocked(c, b, hk, rows, k_beg, k_end, acc, mrow, lrow, kt, vt, s + bk);
        goto done;
    }
#endif
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = b->q0 + r / g, h = hk * g + r % g;
        const char *qp = (const char *)c->q + (i * c->ldq + h * hd) * (c->q_dtype == TO_F32 ? 4 : 2);
        if (c->q_dtype == TO_F32) memcpy(qf + r * hd, qp, (size_t)hd * 4);
        else c->kern->cvt((const uint16_t *)qp, qf + r * hd, hd);
        memset(acc + r * hdv, 0, (size_t)hdv * 4);
        mrow[r] = -INFINITY;
        lrow[r] = 0.f;
    }
    int esz = c->kv_dtype == TO_F32 ? 4 : 2;
    const char *kbase = (const char *)c->k + hk * c->khs * esz;
    const char *vbase = (const char *)c->v + hk * c->vhs * esz;
    for (int64_t t0 = k_beg; t0 < k_end; t0 += bk) {
        int n = (int)(k_end - t0 < bk ? k_end - t0 : bk);
        const float *ktile, *vtile;
        int64_t ldk, ldv;
        if (c->kv_dtype == TO_F32) {
            ktile = (const float *)kbase + t0 * c->kps;
            vtile = (const float *)vbase + t0 * c->vps;
            ldk = c->kps;
            ldv = c->vps;
        } else {
            for (int j = 0; j < n; j++) {
                c->kern->cvt((const uint16_t *)kbase + (t0 + j) * c->kps, kt + j * hd, hd);
                c->kern->cvt((const uint16_t *)vbase + (t0 + j) * c->vps, vt + j * hdv, hdv);
            }
            ktile = kt;
            vtile = vt;
            ldk = hd;
            ldv = hdv;
        }
        for (int64_t r = 0; r < rows; r++) {
            int64_t lo, hi;
            row_range(c, b, b->q0 + r / g, &lo, &hi);
            int64_t ja = lo > t0 ? lo - t0 : 0, jb = hi - t0 < n ? hi - t0 : n;
            if (jb <= ja) continue;
            int m = (int)(jb - ja);
            c->kern->scores(qf + r * hd, ktile + ja * ldk, ldk, m, hd, c->scale, s);
            float mx = s[0];
            for (int j = 1; j < m; j++) mx = s[j] > mx ? s[j] : mx;
            float corr = 1.f;
            if (mx > mrow[r]) {
                corr = expf(mrow[r] - mx);
                mrow[r] = mx;
                lrow[r] *= corr;
            }
            lrow[r] += c->kern->expsum(s, m, mrow[r]);
            c->kern->pv(acc + r * hdv, corr, s, vtile + ja * ldv, ldv, m, hdv);
        }
    }
#ifdef TO_X86
done:
#endif
    if (c->nsplit > 1) {
        float *part = c->partial + ((hk * c->nsplit + split) * c->max_rows) * (hdv + 2);
        for (int64_t r = 0; r < rows; r++) {
            float *pr = part + r * (hdv + 2);
            pr[0] = mrow[r];
            pr[1] = lrow[r];
            memcpy(pr + 2, acc + r * hdv, (size_t)hdv * 4);
        }
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = b->q0 + r / g, h = hk * g + r % g;
        float inv = lrow[r] > 0.f ? 1.f / lrow[r] : lrow[r] == lrow[r] ? 0.f : NAN; /* NaN stays */
        const float *a = acc + r * hdv;
        if (c->q_dtype == TO_F32) {
            float *o = (float *)c->out + i * c->ldo + h * hdv;
            for (int64_t x = 0; x < hdv; x++) o[x] = a[x] * inv;
        } else {
            uint16_t *o = (uint16_t *)c->out + i * c->ldo + h * hdv;
            for (int64_t x = 0; x < hdv; x++) o[x] = to_f32_to_bf16(a[x] * inv);
        }
    }
}

static size_t scratch_floats(const attn_ctx *c) {
    size_t n = base_floats(c);
#ifdef TO_X86
    if (c->kern->dscores_fq) n += (size_t)dec_floats(c); /* run_decode's area after the rest */
#endif
    return n;
}

static void attn_task(void *ctx, int ith, int nth) {
    attn_ctx *c = ctx;
    float *scratch = malloc(scratch_floats(c) * sizeof(float));
    if (!scratch) {
        atomic_store(&c->failed, 1);
        return;
    }
    for (;;) {
        long long it = atomic_fetch_add(&c->next, 1);
        if (it >= c->n_items) break;
        run_item(c, it, scratch);
    }
    free(scratch);
}

/* merges the nsplit partial results of every row (decode split-K) */
static void merge_partials(attn_ctx *c) {
    const qblock *b = &c->blocks[0];
    int64_t rows = (b->q1 - b->q0) * c->g, hdv = c->hdv;
    for (int64_t hk = 0; hk < c->nkv; hk++) {
        for (int64_t r = 0; r < rows; r++) {
            float M = -INFINITY, L = 0.f;
            for (int64_t s = 0; s < c->nsplit; s++) {
                float m = c->partial[((hk * c->nsplit + s) * c->max_rows + r) * (hdv + 2)];
                if (m > M) M = m;
            }
            int64_t i = b->q0 + r / c->g, h = hk * c->g + r % c->g;
            float *o32 = c->q_dtype == TO_F32 ? (float *)c->out + i * c->ldo + h * hdv : NULL;
            uint16_t *o16 = c->q_dtype == TO_F32 ? NULL : (uint16_t *)c->out + i * c->ldo + h * hdv;
            float tmp[1024];
            float *a = hdv <= 1024 ? tmp : NULL;
            float *heap = NULL;
            if (!a) a = heap = malloc((size_t)hdv * 4);
            if (!a) {
                atomic_store(&c->failed, 1);
                return;
            }
            memset(a, 0, (size_t)hdv * 4);
            for (int64_t s = 0; s < c->nsplit; s++) {
                const float *pr = c->partial + ((hk * c->nsplit + s) * c->max_rows + r) * (hdv + 2);
                if (pr[1] <= 0.f) continue;
                float w = expf(pr[0] - M);
                L += pr[1] * w;
                for (int64_t x = 0; x < hdv; x++) a[x] += pr[2 + x] * w;
            }
            float inv = L > 0.f ? 1.f / L : L == L ? 0.f : NAN;
            for (int64_t x = 0; x < hdv; x++) {
                if (o32) o32[x] = a[x] * inv;
                else o16[x] = to_f32_to_bf16(a[x] * inv);
            }
            free(heap);
        }
    }
}

TO_API int to_attention(const void *q, const void *k, const void *v, void *out, int64_t tq,
                        int64_t nh, int64_t nkv, int64_t hd_qk, int64_t hd_v, int64_t ldq,
                        int64_t ldo, int64_t kv_len, int64_t k_head_stride, int64_t k_pos_stride,
                        int64_t v_head_stride, int64_t v_pos_stride, int64_t q_pos, int causal,
                        const int32_t *cu_seqlens, int64_t n_seqs, float scale, int q_dtype,
                        int kv_dtype) {
    TO_CHECK_NONNEG(tq);
    TO_CHECK_NONNEG(kv_len);
    TO_CHECK_NONNEG(q_pos);
    TO_CHECK_NONNEG(k_head_stride);
    TO_CHECK_NONNEG(k_pos_stride);
    TO_CHECK_NONNEG(v_head_stride);
    TO_CHECK_NONNEG(v_pos_stride);
    TO_CHECK(nh >= 1 && nkv >= 1 && nh % nkv == 0, TO_ERR_SHAPE,
             "to_attention: nh (%lld) must be a positive multiple of nkv (%lld)", (long long)nh,
             (long long)nkv);
    TO_CHECK(hd_qk >= 1 && hd_v >= 1, TO_ERR_SHAPE, "to_attention: head dims must be positive");
    TO_CHECK(ldq >= nh * hd_qk && ldo >= nh * hd_v, TO_ERR_SHAPE,
             "to_attention: ldq/ldo smaller than nh*hd");
    TO_CHECK(q_dtype == TO_F32 || q_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_attention: q dtype %d unsupported (f32 or bf16)", q_dtype);
    TO_CHECK(kv_dtype == TO_F32 || kv_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_attention: kv dtype %d unsupported (f32 or bf16)", kv_dtype);
    TO_CHECK(isfinite(scale), TO_ERR_INVALID_ARGUMENT, "to_attention: scale is not finite");
    if (tq == 0) return TO_OK;
    TO_CHECK_PTR(q);
    TO_CHECK_PTR(out);
    if (kv_len > 0) {
        TO_CHECK_PTR(k);
        TO_CHECK_PTR(v);
    }
    int segmented = cu_seqlens != NULL;
    if (segmented) {
        TO_CHECK(n_seqs >= 1, TO_ERR_SHAPE, "to_attention: n_seqs must be >= 1 with cu_seqlens");
        TO_CHECK(tq == kv_len && q_pos == 0, TO_ERR_SHAPE,
                 "to_attention: segments need tq == kv_len and q_pos == 0");
        TO_CHECK(cu_seqlens[0] == 0 && cu_seqlens[n_seqs] == tq, TO_ERR_SHAPE,
                 "to_attention: cu_seqlens must run from 0 to tq (%lld)", (long long)tq);
        for (int64_t s = 0; s < n_seqs; s++)
            TO_CHECK(cu_seqlens[s + 1] >= cu_seqlens[s], TO_ERR_SHAPE,
                     "to_attention: cu_seqlens is not non-decreasing at %lld", (long long)s);
    } else if (causal) {
        TO_CHECK(q_pos + tq <= kv_len, TO_ERR_SHAPE,
                 "to_attention: causal queries at positions %lld..%lld need kv_len >= %lld, got %lld",
                 (long long)q_pos, (long long)(q_pos + tq - 1), (long long)(q_pos + tq),
                 (long long)kv_len);
    }

    attn_ctx c;
    memset(&c, 0, sizeof c);
    c.kern = pick_kernels();
#ifdef TO_X86
    c.blocked = c.kern == &k_avx512 || c.kern == &k_avx512bw || c.kern == &k_avx512bf16;
#endif
    to_report_kernel("attention", c.kern->name);
    c.q = q, c.k = k, c.v = v, c.out = out;
    c.tq = tq, c.nh = nh, c.nkv = nkv, c.g = nh / nkv, c.hd = hd_qk, c.hdv = hd_v;
    c.ldq = ldq, c.ldo = ldo, c.kv_len = kv_len;
    c.khs = k_head_stride, c.kps = k_pos_stride, c.vhs = v_head_stride, c.vps = v_pos_stride;
    c.q_pos = q_pos, c.causal = causal != 0, c.segmented = segmented;
    c.q_dtype = q_dtype, c.kv_dtype = kv_dtype, c.scale = scale;
    int64_t hmax = hd_qk > hd_v ? hd_qk : hd_v;
    c.bk = 8192 / hmax;
    if (c.bk > 64) c.bk = 64;
    if (c.bk < 8) c.bk = 8;
    c.bq = 64 / c.g;
    if (c.bq < 1) c.bq = 1;
    c.max_rows = c.bq * c.g;

    /* query blocks, never crossing a segment boundary */
    int64_t nseg = segmented ? n_seqs : 1;
    int64_t cap = tq / c.bq + nseg + 1;
    qblock *blocks = malloc((size_t)cap * sizeof(qblock));
    if (!blocks) return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_attention: out of memory");
    int64_t nb = 0;
    for (int64_t s = 0; s < nseg; s++) {
        int64_t a = segmented ? cu_seqlens[s] : 0, e = segmented ? cu_seqlens[s + 1] : tq;
        int64_t klo = segmented ? a : 0, khi = segmented ? e : kv_len;
        for (int64_t x = a; x < e; x += c.bq) {
            blocks[nb].q0 = x;
            blocks[nb].q1 = x + c.bq < e ? x + c.bq : e;
            blocks[nb].seg_lo = klo;
            blocks[nb].seg_hi = khi;
            nb++;
        }
    }
    c.blocks = blocks;
    c.nblocks = nb;

    int nth = to_get_num_threads();
    double work = (double)tq * (double)nh * (double)(kv_len + 1) * (double)(hd_qk + hd_v);
    if (causal && !segmented && tq > 1) work *= 0.5;
    if (work < 65536.0) nth = 1;
    c.nsplit = 1;
    int64_t items = nb * nkv;
    if (nb == 1 && nth > 1 && items < 2 * nth) {
        int64_t ntiles = (kv_len + c.bk - 1) / c.bk;
        int64_t want = (2 * nth + items - 1) / items;
        int64_t most = ntiles / 2;
        c.nsplit = want < most ? want : most;
        if (c.nsplit < 1) c.nsplit = 1;
    }
    c.n_items = nb * nkv * c.nsplit;
    if (c.nsplit > 1) {
        c.partial = malloc((size_t)(nkv * c.nsplit * c.max_rows * (hd_v + 2)) * sizeof(float));
        if (!c.partial) {
            free(blocks);
            return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_attention: out of memory");
        }
    }
    atomic_init(&c.next, 0);
    atomic_init(&c.failed, 0);
    if (nth > c.n_items) nth = (int)c.n_items;
    if (nth <= 1) attn_task(&c, 0, 1);
    else to_parallel_run(attn_task, &c, nth);
    if (c.nsplit > 1 && !atomic_load(&c.failed)) merge_partials(&c);
    free(c.partial);
    free(blocks);
    if (atomic_load(&c.failed))
        return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_attention: out of scratch memory");
    return TO_OK;
}

/* ---- KV cache append ----------------------------------------------------------------------- */
static void copy_rows(const void *src, void *dst, int64_t n, int src_dtype, int dst_dtype) {
    if (src_dtype == dst_dtype) {
        memcpy(dst, src, (size_t)n * (src_dtype == TO_F32 ? 4 : 2));
    } else if (src_dtype == TO_F32) {
        const float *s = src;
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = to_f32_to_bf16(s[i]);
    } else {
        const uint16_t *s = src;
        float *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = to_bf16_to_f32(s[i]);
    }
}

TO_API int to_kv_cache_append(const void *k_new, const void *v_new, void *k_cache, void *v_cache,
                              int64_t t, int64_t nkv, int64_t hd_k, int64_t hd_v, int64_t max_len,
                              int64_t pos, int src_dtype, int cache_dtype) {
    TO_CHECK_NONNEG(t);
    TO_CHECK_NONNEG(pos);
    TO_CHECK_NONNEG(max_len);
    TO_CHECK(nkv >= 1 && hd_k >= 1, TO_ERR_SHAPE, "to_kv_cache_append: nkv and hd_k must be >= 1");
    TO_CHECK((v_new == NULL) == (v_cache == NULL), TO_ERR_INVALID_ARGUMENT,
             "to_kv_cache_append: v_new and v_cache must both be given or both be NULL");
    TO_CHECK(v_new == NULL || hd_v >= 1, TO_ERR_SHAPE, "to_kv_cache_append: hd_v must be >= 1");
    TO_CHECK(src_dtype == TO_F32 || src_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_kv_cache_append: source dtype %d unsupported (f32 or bf16)", src_dtype);
    TO_CHECK(cache_dtype == TO_F32 || cache_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_kv_cache_append: cache dtype %d unsupported (f32 or bf16)", cache_dtype);
    TO_CHECK(pos + t <= max_len, TO_ERR_SHAPE,
             "to_kv_cache_append: writing %lld tokens at position %lld overflows the cache of %lld",
             (long long)t, (long long)pos, (long long)max_len);
    if (t == 0) return TO_OK;
    TO_CHECK_PTR(k_new);
    TO_CHECK_PTR(k_cache);
    int ss = src_dtype == TO_F32 ? 4 : 2, cs = cache_dtype == TO_F32 ? 4 : 2;
    for (int64_t i = 0; i < t; i++) {
        for (int64_t h = 0; h < nkv; h++) {
            copy_rows((const char *)k_new + ((i * nkv + h) * hd_k) * ss,
                      (char *)k_cache + ((h * max_len + pos + i) * hd_k) * cs, hd_k, src_dtype,
                      cache_dtype);
            if (v_new)
                copy_rows((const char *)v_new + ((i * nkv + h) * hd_v) * ss,
                          (char *)v_cache + ((h * max_len + pos + i) * hd_v) * cs, hd_v, src_dtype,
                          cache_dtype);
        }
    }
    return TO_OK;
}
