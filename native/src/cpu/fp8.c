/* FP8 block-scaled weights (the "-FP8" checkpoints of Qwen / DeepSeek): W [n, k] stored as
 * float8 e4m3fn bytes plus fp32 scales [ceil(n/bn), ceil(k/bk)] (weight_scale_inv), so that
 * W[i][j] = e4m3(w[i][j]) * scale[i/bn][j/bk].
 *
 * e4m3fn: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, subnormals, no infinities,
 * 0x7f / 0xff are NaN (decoded as torch does: sign | 0x7ff00000), max 448.
 */
#include <stdlib.h>

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
