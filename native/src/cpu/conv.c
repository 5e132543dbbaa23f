/* Convolutions: causal depthwise conv1d with carried state (Gated DeltaNet) and the vision
 * patchify (Qwen2/3-VL conv3d patch embedding = patchify + linear). */
#include <stdlib.h>

#include "../common/internal.h"

static inline float load_any(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case TO_F32: return ((const float *)p)[i];
    case TO_BF16: return to_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return to_f16_to_f32(((const uint16_t *)p)[i]);
    }
}
static inline void store_act(void *p, int dtype, int64_t i, float v) {
    if (dtype == TO_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = to_f32_to_bf16(v);
}

/* ---- causal depthwise conv1d ---- */
typedef struct {
    const void *x;
    const float *wt; /* [k][c] fp32 */
    void *state, *y;
    int64_t t, c, k;
    int silu, xdt, sdt;
    int failed;
} conv1d_ctx;

/* input row r (r < 0: state row k-1+r) of channels [c0, c1) widened into buf */
static inline __attribute__((always_inline)) void conv_rows(const conv1d_ctx *cx, int64_t c0,
                                                            int64_t c1, float *acc, float *row) {
    int64_t c = cx->c, k = cx->k, n = c1 - c0;
    for (int64_t i = 0; i < cx->t; i++) {
        for (int64_t x = 0; x < n; x++) acc[x] = 0.f;
        for (int64_t j = 0; j < k; j++) {
            int64_t r = i - (k - 1) + j;
            const float *w = cx->wt + j * c + c0;
            if (r >= 0) {
                if (cx->xdt == TO_F32) {
                    const float *src = (const float *)cx->x + r * c + c0;
                    for (int64_t x = 0; x < n; x++) acc[x] += w[x] * src[x];
                } else {
                    const uint16_t *src = (const uint16_t *)cx->x + r * c + c0;
                    for (int64_t x = 0; x < n; x++) acc[x] += w[x] * to_bf16_to_f32(src[x]);
                }
            } else if (cx->state) {
                int64_t sr = k - 1 + r;
                if (cx->sdt == TO_F32) {
                    const float *src = (const float *)cx->state + sr * c + c0;
                    for (int64_t x = 0; x < n; x++) acc[x] += w[x] * src[x];
                } else {
                    const uint16_t *src = (const uint16_t *)cx->state + sr * c + c0;
                    for (int64_t x = 0; x < n; x++) acc[x] += w[x] * to_bf16_to_f32(src[x]);
                }
            }
        }
        if (cx->xdt == TO_F32) {
            float *dst = (float *)cx->y + i * c + c0;
            for (int64_t x = 0; x < n; x++) dst[x] = acc[x];
            if (cx->silu)
                for (int64_t x = 0; x < n; x++) dst[x] = dst[x] / (1.f + expf(-dst[x]));
        } else {
            uint16_t *dst = (uint16_t *)cx->y + i * c + c0;
            if (cx->silu) {
                for (int64_t x = 0; x < n; x++) row[x] = to_bf16_to_f32(to_f32_to_bf16(acc[x]));
                for (int64_t x = 0; x < n; x++) dst[x] = to_f32_to_bf16(row[x] / (1.f + expf(-row[x])));
            } else {
                for (int64_t x = 0; x < n; x++) dst[x] = to_f32_to_bf16(acc[x]);
            }
        }
    }
    /* new state = last k-1 rows of [state; x] */
    if (!cx->state) return;
    int es = cx->sdt == TO_F32 ? 4 : 2;
    for (int64_t s = 0; s < k - 1; s++) {
        int64_t r = cx->t - (k - 1) + s; /* source row in the concatenation, relative to x */
        char *dst = (char *)cx->state + (s * c + c0) * es;
        if (r < 0) {
            /* from the old state row k-1+r (> s, so already-read rows are not overwritten) */
            memmove(dst, (char *)cx->state + ((k - 1 + r) * c + c0) * es, (size_t)(n * es));
        } else {
            for (int64_t x = 0; x < n; x++) {
                float v = load_any(cx->x, cx->xdt, r * c + c0 + x);
                if (cx->sdt == TO_F32) ((float *)dst)[x] = v;
                else ((uint16_t *)dst)[x] = to_f32_to_bf16(v);
            }
        }
    }
}

static void conv_generic(const conv1d_ctx *cx, int64_t c0, int64_t c1, float *a, float *r) {
    conv_rows(cx, c0, c1, a, r);
}
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static void conv_avx2(const conv1d_ctx *cx, int64_t c0,
                                                          int64_t c1, float *a, float *r) {
    conv_rows(cx, c0, c1, a, r);
}
__attribute__((target("avx512f,avx512bw"))) static void conv_avx512(const conv1d_ctx *cx,
                                                                    int64_t c0, int64_t c1,
                                                                    float *a, float *r) {
    conv_rows(cx, c0, c1, a, r);
}
#endif
typedef void (*conv_fn)(const conv1d_ctx *, int64_t, int64_t, float *, float *);
typedef struct {
    conv1d_ctx *cx;
    conv_fn fn;
} conv_job;

static void conv_task(void *ctx, int ith, int nth) {
    conv_job *j = ctx;
    int64_t blocks = (j->cx->c + 63) / 64, b0, b1;
    to_split_rows(blocks, ith, nth, &b0, &b1);
    int64_t c0 = b0 * 64, c1 = b1 * 64 < j->cx->c ? b1 * 64 : j->cx->c;
    if (c0 >= c1) return;
    float *buf = malloc((size_t)(2 * (c1 - c0)) * sizeof(float));
    if (!buf) {
        j->cx->failed = 1;
        return;
    }
    j->fn(j->cx, c0, c1, buf, buf + (c1 - c0));
    free(buf);
}

TO_API int to_causal_conv1d(const void *x, const void *w, void *state, void *y, int64_t t,
                            int64_t c, int64_t k, int silu, int x_dtype, int w_dtype,
                            int state_dtype) {
    TO_CHECK_NONNEG(t);
    TO_CHECK_NONNEG(c);
    TO_CHECK(k >= 1 && k <= 64, TO_ERR_SHAPE, "to_causal_conv1d: kernel size %lld outside 1..64",
             (long long)k);
    TO_CHECK(x_dtype == TO_F32 || x_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_causal_conv1d: x dtype %d unsupported (f32 or bf16)", x_dtype);
    TO_CHECK(w_dtype == TO_F32 || w_dtype == TO_BF16 || w_dtype == TO_F16, TO_ERR_DTYPE,
             "to_causal_conv1d: w dtype %d unsupported (f32, bf16 or f16)", w_dtype);
    TO_CHECK(state == NULL || state_dtype == TO_F32 || state_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_causal_conv1d: state dtype %d unsupported (f32 or bf16)", state_dtype);
    if (t == 0 || c == 0) return TO_OK;
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(w);
    TO_CHECK_PTR(y);
    float *wt = malloc((size_t)(k * c) * sizeof(float));
    if (!wt) return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_causal_conv1d: out of memory");
    for (int64_t ch = 0; ch < c; ch++)
        for (int64_t j = 0; j < k; j++) wt[j * c + ch] = load_any(w, w_dtype, ch * k + j);
    conv1d_ctx cx = {x, wt, state, y, t, c, k, silu != 0, x_dtype, state_dtype, 0};
    conv_job job = {&cx, conv_generic};
    const char *name = "generic-c";
#if defined(__x86_64__)
    uint32_t isa = to_isa();
    if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW)) {
        job.fn = conv_avx512;
        name = "avx512f (auto-vectorised)";
    } else if ((isa & TO_ISA_AVX2) && (isa & TO_ISA_FMA)) {
        job.fn = conv_avx2;
        name = "avx2 (auto-vectorised)";
    }
#endif
    to_report_kernel("causal_conv1d", name);
    int nth = t * c * k >= (1 << 17) && c >= 128 ? to_get_num_threads() : 1;
    if (nth > 1) to_parallel_run(conv_task, &job, nth);
    else conv_task(&job, 0, 1);
    free(wt);
    if (cx.failed) return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_causal_conv1d: out of memory");
    return TO_OK;
}

/* ---- patchify ---- */
TO_API int to_patchify(const void *image, void *out, int64_t c, int64_t h, int64_t w,
                       int64_t patch, int64_t temporal, int64_t merge, int in_dtype,
                       int out_dtype) {
    TO_CHECK(c >= 1 && patch >= 1 && temporal >= 1 && merge >= 1, TO_ERR_INVALID_ARGUMENT,
             "to_patchify: c, patch, temporal and merge must be >= 1");
    TO_CHECK_NONNEG(h);
    TO_CHECK_NONNEG(w);
    TO_CHECK(h % (patch * merge) == 0 && w % (patch * merge) == 0, TO_ERR_SHAPE,
             "to_patchify: image %lldx%lld is not a multiple of patch*merge = %lld", (long long)h,
             (long long)w, (long long)(patch * merge));
    TO_CHECK(in_dtype == TO_F32 || in_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_patchify: input dtype %d unsupported (f32 or bf16)", in_dtype);
    TO_CHECK(out_dtype == TO_F32 || out_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_patchify: output dtype %d unsupported (f32 or bf16)", out_dtype);
    if (h == 0 || w == 0) return TO_OK;
    TO_CHECK_PTR(image);
    TO_CHECK_PTR(out);
    to_report_kernel("patchify", "generic-c");
    int64_t gh = h / patch, gw = w / patch, dim = c * temporal * patch * patch;
    int64_t idx = 0;
    int same = in_dtype == out_dtype;
    int es = in_dtype == TO_F32 ? 4 : 2;
    for (int64_t bh = 0; bh < gh / merge; bh++)
        for (int64_t bw = 0; bw < gw / merge; bw++)
            for (int64_t mh = 0; mh < merge; mh++)
                for (int64_t mw = 0; mw < merge; mw++, idx++) {
                    int64_t row = bh * merge + mh, col = bw * merge + mw, o = idx * dim;
                    for (int64_t ch = 0; ch < c; ch++)
                        for (int64_t tt = 0; tt < temporal; tt++)
                            for (int64_t py = 0; py < patch; py++, o += patch) {
                                int64_t src = (ch * h + row * patch + py) * w + col * patch;
                                if (same) {
                                    memcpy((char *)out + o * es, (const char *)image + src * es,
                                           (size_t)(patch * es));
                                } else {
                                    for (int64_t px = 0; px < patch; px++)
                                        store_act(out, out_dtype, o + px,
                                                  load_any(image, in_dtype, src + px));
                                }
                            }
                }
    return TO_OK;
}
