/* MoE routing helpers: softmax top-k and sigmoid noaux_tc routers, row gather, weighted
 * scatter-add, and grouping of routing entries by expert (counting sort). */
#include <stdlib.h>

#include "../common/internal.h"

static inline float load_f(const void *p, int dtype, int64_t i) {
    return dtype == TO_F32 ? ((const float *)p)[i] : to_bf16_to_f32(((const uint16_t *)p)[i]);
}

/* Inserts (val, id) into the descending list vals/ids of length *len (capacity k); equal values
 * keep the earlier (lower) id first. Experts are offered in increasing id order. */
static inline void topk_insert(float *vals, int32_t *ids, int64_t *len, int64_t k, float val,
                               int32_t id) {
    int64_t n = *len;
    if (n == k && !(val > vals[k - 1])) return;
    int64_t pos = n < k ? n : k - 1;
    while (pos > 0 && val > vals[pos - 1]) {
        vals[pos] = vals[pos - 1];
        ids[pos] = ids[pos - 1];
        pos--;
    }
    vals[pos] = val;
    ids[pos] = id;
    if (n < k) *len = n + 1;
}

/* ---- softmax top-k router ---- */
typedef struct {
    const void *logits;
    int64_t t, e, k;
    int renorm, ldt, wdt;
    int32_t *idx;
    void *w;
    int failed;
} softmax_ctx;

static void softmax_route_rows(softmax_ctx *c, int64_t r0, int64_t r1, float *p) {
    float vals[1024];
    int64_t k = c->k, e = c->e;
    for (int64_t r = r0; r < r1; r++) {
        float mx = -INFINITY;
        for (int64_t x = 0; x < e; x++) {
            p[x] = load_f(c->logits, c->ldt, r * e + x);
            if (p[x] > mx) mx = p[x];
        }
        double sum = 0.0; /* double: the fp32 sum of e terms drifts ~1e-6 from torch's */
        for (int64_t x = 0; x < e; x++) {
            p[x] = expf(p[x] - mx);
            sum += p[x];
        }
        float inv = (float)(1.0 / sum);
        int64_t len = 0;
        int32_t *ids = c->idx + r * k;
        for (int64_t x = 0; x < e; x++) topk_insert(vals, ids, &len, k, p[x] * inv, (int32_t)x);
        if (c->renorm) {
            float s = 0.f;
            for (int64_t j = 0; j < k; j++) s += vals[j];
            for (int64_t j = 0; j < k; j++) vals[j] /= s;
        }
        for (int64_t j = 0; j < k; j++) {
            if (c->wdt == TO_F32) ((float *)c->w)[r * k + j] = vals[j];
            else ((uint16_t *)c->w)[r * k + j] = to_f32_to_bf16(vals[j]);
        }
    }
}

static void softmax_task(void *ctx, int ith, int nth) {
    softmax_ctx *c = ctx;
    int64_t r0, r1;
    to_split_rows(c->t, ith, nth, &r0, &r1);
    if (r0 >= r1) return;
    float *p = malloc((size_t)c->e * sizeof(float));
    if (!p) {
        c->failed = 1;
        return;
    }
    softmax_route_rows(c, r0, r1, p);
    free(p);
}

TO_API int to_moe_route_softmax(const void *logits, int64_t t, int64_t e, int64_t k,
                                int renormalize, int logits_dtype, int32_t *idx, void *weights,
                                int weights_dtype) {
    TO_CHECK_NONNEG(t);
    TO_CHECK(e >= 1 && k >= 1 && k <= e && k <= 1024, TO_ERR_SHAPE,
             "to_moe_route_softmax: need 1 <= k <= e and k <= 1024 (k=%lld, e=%lld)", (long long)k,
             (long long)e);
    TO_CHECK(logits_dtype == TO_F32 || logits_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_moe_route_softmax: logits dtype %d unsupported (f32 or bf16)", logits_dtype);
    TO_CHECK(weights_dtype == TO_F32 || weights_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_moe_route_softmax: weights dtype %d unsupported (f32 or bf16)", weights_dtype);
    if (t == 0) return TO_OK;
    TO_CHECK_PTR(logits);
    TO_CHECK_PTR(idx);
    TO_CHECK_PTR(weights);
    to_report_kernel("moe_route_softmax", "generic-c");
    softmax_ctx c = {logits, t, e, k, renormalize != 0, logits_dtype, weights_dtype, idx, weights, 0};
    int nth = t * e >= 32768 ? to_get_num_threads() : 1;
    if (nth > 1) to_parallel_run(softmax_task, &c, nth);
    else softmax_task(&c, 0, 1);
    if (c.failed) return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_moe_route_softmax: out of memory");
    return TO_OK;
}

/* ---- sigmoid noaux_tc router ---- */
TO_API int to_moe_route_sigmoid(const void *logits, const float *bias, int64_t t, int64_t e,
                                int64_t k, int64_t n_group, int64_t topk_group, int renormalize,
                                float scaling, int logits_dtype, int32_t *idx, float *weights) {
    TO_CHECK_NONNEG(t);
    TO_CHECK(e >= 1 && k >= 1 && k <= e && k <= 1024, TO_ERR_SHAPE,
             "to_moe_route_sigmoid: need 1 <= k <= e and k <= 1024 (k=%lld, e=%lld)", (long long)k,
             (long long)e);
    TO_CHECK(n_group >= 1 && e % n_group == 0 && topk_group >= 1 && topk_group <= n_group,
             TO_ERR_SHAPE,
             "to_moe_route_sigmoid: n_group (%lld) must divide e (%lld), 1 <= topk_group (%lld) <= n_group",
             (long long)n_group, (long long)e, (long long)topk_group);
    TO_CHECK(k <= topk_group * (e / n_group), TO_ERR_SHAPE,
             "to_moe_route_sigmoid: k=%lld exceeds the experts of %lld groups", (long long)k,
             (long long)topk_group);
    TO_CHECK(logits_dtype == TO_F32 || logits_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_moe_route_sigmoid: logits dtype %d unsupported (f32 or bf16)", logits_dtype);
    if (t == 0) return TO_OK;
    TO_CHECK_PTR(logits);
    TO_CHECK_PTR(idx);
    TO_CHECK_PTR(weights);
    to_report_kernel("moe_route_sigmoid", "generic-c");
    float *buf = malloc((size_t)(2 * e + 2 * n_group) * sizeof(float));
    int32_t *gids = malloc((size_t)n_group * sizeof(int32_t));
    if (!buf || !gids) {
        free(buf);
        free(gids);
        return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_moe_route_sigmoid: out of memory");
    }
    float *s = buf, *cs = buf + e, *gscore = cs + e, *gval = gscore + n_group;
    int64_t gsz = e / n_group;
    float vals[1024];
    for (int64_t r = 0; r < t; r++) {
        for (int64_t x = 0; x < e; x++) {
            float l = load_f(logits, logits_dtype, r * e + x);
            s[x] = 1.f / (1.f + expf(-l));
            cs[x] = s[x] + (bias ? bias[x] : 0.f);
        }
        if (n_group > 1 && topk_group < n_group) {
            for (int64_t gi = 0; gi < n_group; gi++) {
                float a = -INFINITY, b = -INFINITY;
                for (int64_t x = gi * gsz; x < (gi + 1) * gsz; x++) {
                    if (cs[x] > a) {
                        b = a;
                        a = cs[x];
                    } else if (cs[x] > b) {
                        b = cs[x];
                    }
                }
                gscore[gi] = gsz >= 2 ? a + b : a;
            }
            int64_t len = 0;
            for (int64_t gi = 0; gi < n_group; gi++)
                topk_insert(gval, gids, &len, topk_group, gscore[gi], (int32_t)gi);
            /* gval reused as a keep flag per group */
            for (int64_t gi = 0; gi < n_group; gi++) gscore[gi] = 0.f;
            for (int64_t j = 0; j < topk_group; j++) gscore[gids[j]] = 1.f;
            for (int64_t gi = 0; gi < n_group; gi++)
                if (gscore[gi] == 0.f)
                    for (int64_t x = gi * gsz; x < (gi + 1) * gsz; x++) cs[x] = -INFINITY;
        }
        int64_t len = 0;
        int32_t *ids = idx + r * k;
        for (int64_t x = 0; x < e; x++) topk_insert(vals, ids, &len, k, cs[x], (int32_t)x);
        float *w = weights + r * k;
        float sum = 0.f;
        for (int64_t j = 0; j < k; j++) {
            w[j] = s[ids[j]];
            sum += w[j];
        }
        if (renormalize) {
            float den = sum + 1e-20f;
            for (int64_t j = 0; j < k; j++) w[j] /= den;
        }
        for (int64_t j = 0; j < k; j++) w[j] *= scaling;
    }
    free(buf);
    free(gids);
    return TO_OK;
}

/* ---- gather ---- */
TO_API int to_moe_gather_rows(const void *src, const int32_t *idx, void *dst, int64_t n_src,
                              int64_t n_idx, int64_t d, int dtype) {
    TO_CHECK_NONNEG(n_src);
    TO_CHECK_NONNEG(n_idx);
    TO_CHECK_NONNEG(d);
    int64_t es = to_dtype_size(dtype);
    TO_CHECK(es > 0, TO_ERR_DTYPE, "to_moe_gather_rows: unknown dtype %d", dtype);
    if (n_idx == 0 || d == 0) return TO_OK;
    TO_CHECK_PTR(src);
    TO_CHECK_PTR(idx);
    TO_CHECK_PTR(dst);
    for (int64_t i = 0; i < n_idx; i++)
        TO_CHECK(idx[i] >= 0 && idx[i] < n_src, TO_ERR_INVALID_ARGUMENT,
                 "to_moe_gather_rows: idx[%lld] = %d outside [0, %lld)", (long long)i, idx[i],
                 (long long)n_src);
    to_report_kernel("moe_gather_rows", "memcpy");
    size_t row = (size_t)(d * es);
    for (int64_t i = 0; i < n_idx; i++)
        memcpy((char *)dst + (size_t)i * row, (const char *)src + (size_t)idx[i] * row, row);
    return TO_OK;
}

/* ---- scatter-add ---- */
typedef struct {
    const void *src;
    const int32_t *idx;
    const void *w;
    void *dst;
    int64_t n, d;
    int sdt, wdt, ddt, round;
} scatter_ctx;

/* one body, compiled for several targets (the compiler vectorises the column loops) */
static inline __attribute__((always_inline)) void scatter_cols(const scatter_ctx *c, int64_t c0,
                                                               int64_t c1) {
    int64_t d = c->d;
    for (int64_t i = 0; i < c->n; i++) {
        float w = c->w ? load_f(c->w, c->wdt, i) : 1.f;
        int64_t o = (int64_t)c->idx[i] * d;
        if (c->sdt == TO_F32 && c->ddt == TO_F32) {
            const float *s = (const float *)c->src + i * d;
            float *y = (float *)c->dst + o;
            for (int64_t x = c0; x < c1; x++) y[x] += w * s[x];
        } else if (c->sdt == TO_BF16 && c->ddt == TO_F32) {
            const uint16_t *s = (const uint16_t *)c->src + i * d;
            float *y = (float *)c->dst + o;
            if (c->round)
                for (int64_t x = c0; x < c1; x++)
                    y[x] += to_bf16_to_f32(to_f32_to_bf16(w * to_bf16_to_f32(s[x])));
            else
                for (int64_t x = c0; x < c1; x++) y[x] += w * to_bf16_to_f32(s[x]);
        } else {
            uint16_t *y = (uint16_t *)c->dst + o;
            for (int64_t x = c0; x < c1; x++) {
                float v = load_f(c->src, c->sdt, i * d + x);
                float p = w * v;
                if (c->round && c->sdt == TO_BF16) p = to_bf16_to_f32(to_f32_to_bf16(p));
                y[x] = to_f32_to_bf16(to_bf16_to_f32(y[x]) + p);
            }
        }
    }
}
__attribute__((optimize("fp-contract=off"))) static void scatter_generic(const scatter_ctx *c, int64_t c0, int64_t c1) { scatter_cols(c, c0, c1); }
#if defined(__x86_64__)
__attribute__((target("avx2,fma"), optimize("fp-contract=off"))) static void scatter_avx2(const scatter_ctx *c, int64_t c0,
                                                             int64_t c1) {
    scatter_cols(c, c0, c1);
}
__attribute__((target("avx512f,avx512bw"), optimize("fp-contract=off"))) static void scatter_avx512(const scatter_ctx *c,
                                                                       int64_t c0, int64_t c1) {
    scatter_cols(c, c0, c1);
}
#endif
typedef void (*scatter_fn)(const scatter_ctx *, int64_t, int64_t);
typedef struct {
    const scatter_ctx *c;
    scatter_fn fn;
} scatter_job;

static void scatter_task(void *ctx, int ith, int nth) {
    scatter_job *j = ctx;
    /* columns in multiples of 64 so threads never share a cache line */
    int64_t blocks = (j->c->d + 63) / 64, b0, b1;
    to_split_rows(blocks, ith, nth, &b0, &b1);
    int64_t c0 = b0 * 64, c1 = b1 * 64 < j->c->d ? b1 * 64 : j->c->d;
    if (c0 < c1) j->fn(j->c, c0, c1);
}

TO_API int to_moe_scatter_add(const void *src, const int32_t *idx, const void *weights, void *dst,
                              int64_t n, int64_t n_dst, int64_t d, int src_dtype,
                              int weights_dtype, int dst_dtype, int round_products) {
    TO_CHECK_NONNEG(n);
    TO_CHECK_NONNEG(n_dst);
    TO_CHECK_NONNEG(d);
    TO_CHECK(src_dtype == TO_F32 || src_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_moe_scatter_add: src dtype %d unsupported (f32 or bf16)", src_dtype);
    TO_CHECK(dst_dtype == TO_F32 || dst_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_moe_scatter_add: dst dtype %d unsupported (f32 or bf16)", dst_dtype);
    TO_CHECK(weights == NULL || weights_dtype == TO_F32 || weights_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_moe_scatter_add: weights dtype %d unsupported (f32 or bf16)", weights_dtype);
    if (n == 0 || d == 0) return TO_OK;
    TO_CHECK_PTR(src);
    TO_CHECK_PTR(idx);
    TO_CHECK_PTR(dst);
    for (int64_t i = 0; i < n; i++)
        TO_CHECK(idx[i] >= 0 && idx[i] < n_dst, TO_ERR_INVALID_ARGUMENT,
                 "to_moe_scatter_add: idx[%lld] = %d outside [0, %lld)", (long long)i, idx[i],
                 (long long)n_dst);
    scatter_ctx c = {src, idx, weights, dst, n, d, src_dtype, weights_dtype, dst_dtype,
                     round_products != 0 && src_dtype == TO_BF16};
    scatter_job j = {&c, scatter_generic};
    const char *name = "generic-c";
#if defined(__x86_64__)
    uint32_t isa = to_isa();
    if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW)) {
        j.fn = scatter_avx512;
        name = "avx512f (auto-vectorised)";
    } else if ((isa & TO_ISA_AVX2) && (isa & TO_ISA_FMA)) {
        j.fn = scatter_avx2;
        name = "avx2 (auto-vectorised)";
    }
#endif
    to_report_kernel("moe_scatter_add", name);
    int nth = n * d >= 65536 && d >= 128 ? to_get_num_threads() : 1;
    if (nth > 1) to_parallel_run(scatter_task, &j, nth);
    else j.fn(&c, 0, d);
    return TO_OK;
}

/* ---- group by expert ---- */
TO_API int to_moe_group_by_expert(const int32_t *idx, int64_t n, int64_t e, int32_t *counts,
                                  int32_t *offsets, int32_t *order) {
    TO_CHECK_NONNEG(n);
    TO_CHECK(e >= 1, TO_ERR_SHAPE, "to_moe_group_by_expert: e must be >= 1");
    TO_CHECK(n < INT32_MAX, TO_ERR_SHAPE, "to_moe_group_by_expert: too many entries");
    TO_CHECK_PTR(counts);
    TO_CHECK_PTR(offsets);
    if (n > 0) {
        TO_CHECK_PTR(idx);
        TO_CHECK_PTR(order);
    }
    for (int64_t p = 0; p < n; p++)
        TO_CHECK(idx[p] >= 0 && idx[p] < e, TO_ERR_INVALID_ARGUMENT,
                 "to_moe_group_by_expert: idx[%lld] = %d outside [0, %lld)", (long long)p, idx[p],
                 (long long)e);
    to_report_kernel("moe_group_by_expert", "counting-sort");
    memset(counts, 0, (size_t)e * sizeof(int32_t));
    for (int64_t p = 0; p < n; p++) counts[idx[p]]++;
    offsets[0] = 0;
    for (int64_t x = 0; x < e; x++) offsets[x + 1] = offsets[x] + counts[x];
    /* fill using offsets as cursors, then restore */
    for (int64_t p = 0; p < n; p++) order[offsets[idx[p]]++] = (int32_t)p;
    for (int64_t x = e; x > 0; x--) offsets[x] = offsets[x - 1];
    offsets[0] = 0;
    return TO_OK;
}
