/* Softmax and log-softmax over the last dim, in fp32 (max subtracted; softmax multiplies by the
 * reciprocal of the sum like torch's vectorised CPU kernel). Kernels: generic C, AVX2, AVX-512
 * (GCC vector extensions, ops_vec.inc); this file includes itself once per ISA (SOFTMAX_PASS).
 * Three passes over each row (max, sum of exp, write) so that out may alias x for any dtypes. */
#ifndef SOFTMAX_PASS
#include "../common/internal.h"

typedef struct {
    const void *x;
    void *out;
    int64_t rows, dim, ldx, ldo;
    int log_, xd, od;
} sm_args;

static inline float ldx1(const void *p, int d, int64_t i) {
    return d == TO_F32 ? ((const float *)p)[i] : to_bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline void sto1(void *p, int d, int64_t i, float v) {
    if (d == TO_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = to_f32_to_bf16(v);
}

static void sm_row_generic(const sm_args *a, const void *x, void *o) {
    float m = -INFINITY;
    int64_t d = a->dim;
    for (int64_t j = 0; j < d; j++) {
        float v = ldx1(x, a->xd, j);
        m = v > m || v != v ? v : m;
    }
    double sd = 0.0; /* sequential fp32 sums lose ~1e-5 over a 150k vocabulary */
    for (int64_t j = 0; j < d; j++) sd += expf(ldx1(x, a->xd, j) - m);
    float s = (float)sd;
    if (a->log_) {
        float ls = logf(s);
        for (int64_t j = 0; j < d; j++) sto1(o, a->od, j, ldx1(x, a->xd, j) - m - ls);
    } else {
        float inv = 1.0f / s;
        for (int64_t j = 0; j < d; j++) sto1(o, a->od, j, expf(ldx1(x, a->xd, j) - m) * inv);
    }
}

#define SOFTMAX_PASS 1
#define TO_PASS_FILE "softmax.c"
#include "isa_passes.inc"
#undef TO_PASS_FILE
#undef SOFTMAX_PASS

typedef void (*sm_row_fn)(const sm_args *, const void *, void *);
typedef struct {
    const sm_args *a;
    sm_row_fn fn;
} sm_task;

static void sm_run(void *ctx, int ith, int nth) {
    const sm_task *t = ctx;
    const sm_args *a = t->a;
    int64_t b, e;
    to_split_rows(a->rows, ith, nth, &b, &e);
    size_t xs = a->xd == TO_F32 ? 4 : 2, os = a->od == TO_F32 ? 4 : 2;
    for (int64_t r = b; r < e; r++)
        t->fn(a, (const char *)a->x + (size_t)(r * a->ldx) * xs, (char *)a->out + (size_t)(r * a->ldo) * os);
}

TO_API int to_softmax(const void *x, void *out, int64_t rows, int64_t dim, int64_t ldx,
                      int64_t ldo, int log_, int x_dtype, int out_dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(rows);
    TO_CHECK(dim >= 1, TO_ERR_SHAPE, "to_softmax: dim must be >= 1 (got %lld)", (long long)dim);
    TO_CHECK(ldx >= dim && ldo >= dim, TO_ERR_SHAPE, "to_softmax: ldx/ldo must be >= dim");
    TO_CHECK(log_ == 0 || log_ == 1, TO_ERR_INVALID_ARGUMENT, "to_softmax: log_ must be 0 or 1");
    TO_CHECK(x_dtype == TO_F32 || x_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_softmax: x dtype %d (f32 or bf16 expected)", x_dtype);
    TO_CHECK(out_dtype == TO_F32 || out_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_softmax: out dtype %d (f32 or bf16 expected)", out_dtype);
    if (rows == 0) return TO_OK;
    sm_args a = {x, out, rows, dim, ldx, ldo, log_, x_dtype, out_dtype};
    sm_task t = {&a, sm_row_generic};
    uint32_t isa = to_isa();
    const char *kname = "generic";
    if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW) && (isa & TO_ISA_FMA)) {
        t.fn = sm_row_avx512;
        kname = "avx512";
    } else if ((isa & TO_ISA_AVX2) && (isa & TO_ISA_FMA)) {
        t.fn = sm_row_avx2;
        kname = "avx2";
    }
    to_report_kernel(log_ ? "log_softmax" : "softmax", kname);
    if (rows > 1 && rows * dim >= 32768 && to_get_num_threads() > 1) to_parallel_run(sm_run, &t, 0);
    else sm_run(&t, 0, 1);
    return TO_OK;
}

#else /* ---------------- per-ISA pass ---------------- */
#include "ops_vec.inc"

static VTGT void K(sm_row)(const sm_args *a, const void *x, void *o) {
    int64_t d = a->dim, j;
    int xd = a->xd, od = a->od;
    K(vf) vm = K(splat)(-INFINITY);
    K(vi) nan = {0};
    for (j = 0; j + VW <= d; j += VW) {
        K(vf) v = K(ld)(x, xd, j);
        nan |= v != v;
        vm = K(vmax)(v, vm);
    }
    if (j < d) {
        K(vf) v = K(ldn)(x, xd, j, d - j, -INFINITY);
        nan |= v != v;
        vm = K(vmax)(v, vm);
    }
    int anynan = 0;
    for (int l = 0; l < VW; l++) anynan |= nan[l] != 0;
    if (anynan) { /* NaN propagates to the whole row, as in torch */
        for (j = 0; j < d; j++) {
            if (od == TO_F32) ((float *)o)[j] = NAN;
            else ((uint16_t *)o)[j] = 0x7fc0;
        }
        return;
    }
    float m = K(hmax)(vm);
    /* fp32 lanes summed in blocks of 64 vectors, blocks added in double: large vocabularies
     * stay at ~1e-6 relative error. */
    K(vf) vs = K(splat)(0.0f);
    double sd = 0.0;
    int cnt = 0;
    for (j = 0; j + VW <= d; j += VW) {
        vs += K(vexp)(K(ld)(x, xd, j) - m);
        if (++cnt == 64) {
            sd += K(hsum)(vs);
            vs = K(splat)(0.0f);
            cnt = 0;
        }
    }
    sd += K(hsum)(vs);
    for (; j < d; j++) {
        float v = xd == TO_F32 ? ((const float *)x)[j] : to_bf16_to_f32(((const uint16_t *)x)[j]);
        K(vf) e = K(vexp)(K(splat)(v - m));
        sd += e[0];
    }
    float s = (float)sd;
    if (a->log_) {
        float ls = logf(s);
        for (j = 0; j < d; j += VW) {
            int64_t n = d - j < VW ? d - j : VW;
            K(vf) v = n == VW ? K(ld)(x, xd, j) : K(ldn)(x, xd, j, n, 0.0f);
            v = (v - m) - ls;
            if (n == VW) K(st)(o, od, j, v);
            else K(stn)(o, od, j, v, n);
        }
    } else {
        float inv = 1.0f / s;
        for (j = 0; j < d; j += VW) {
            int64_t n = d - j < VW ? d - j : VW;
            K(vf) v = n == VW ? K(ld)(x, xd, j) : K(ldn)(x, xd, j, n, 0.0f);
            v = K(vexp)(v - m) * inv;
            if (n == VW) K(st)(o, od, j, v);
            else K(stn)(o, od, j, v, n);
        }
    }
}
#endif
