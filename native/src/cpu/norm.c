/* Normalisation ops: RMSNorm (three variants, models.md §1.1) and LayerNorm.
 * Kernels: generic C (reference), AVX2+FMA and AVX-512 (GCC vector extensions, ops_vec.inc);
 * this file includes itself once per instruction set (NORM_PASS). */
#ifndef NORM_PASS
#include "../common/internal.h"

/* Rows per parallel task below which the op stays on the calling thread. */
#define NORM_PAR_MIN_ELEMS 65536

typedef struct {
    const void *x, *w, *z, *b;
    void *out;
    int64_t outer, inner, dim, x_so, x_si, z_so, z_si, o_so, o_si;
    float eps;
    int variant, x_dtype, w_dtype, out_dtype;
} norm_args;

static inline float ld1(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case TO_F32: return ((const float *)p)[i];
    case TO_BF16: return to_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return to_f16_to_f32(((const uint16_t *)p)[i]);
    }
}
static inline void st1(void *p, int dtype, int64_t i, float v) {
    if (dtype == TO_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = to_f32_to_bf16(v);
}
static inline float round_to(int dtype, float v) {
    return dtype == TO_BF16 ? to_bf16_to_f32(to_f32_to_bf16(v)) : v;
}
static inline float silu1(float v) { return v / (1.0f + expf(-v)); }

static size_t esz(int dtype) { return dtype == TO_F32 ? 4 : 2; }

/* ---- generic C reference ---- */
static void rms_row_generic(const norm_args *a, const void *x, const void *z, void *o) {
    int64_t d = a->dim;
    /* The reference path accumulates in double: its result is then the correctly rounded fp32
     * mean, which is what torch's many-lane fp32 reduction approximates best. */
    double ss = 0.0;
    for (int64_t j = 0; j < d; j++) {
        double v = ld1(x, a->x_dtype, j);
        ss += v * v;
    }
    float r = 1.0f / sqrtf((float)(ss / (double)d) + a->eps);
    int nround = a->x_dtype == TO_BF16 && a->w_dtype == TO_BF16;
    for (int64_t j = 0; j < d; j++) {
        float xn = ld1(x, a->x_dtype, j) * r, w = ld1(a->w, a->w_dtype, j), y;
        if (a->variant == TO_RMS_ZERO_CENTERED) {
            y = xn * (1.0f + w);
        } else {
            y = w * round_to(a->x_dtype, xn);
            if (a->variant == TO_RMS_GATED) {
                if (nround) y = round_to(TO_BF16, y);
                y = y * silu1(ld1(z, a->x_dtype, j));
            }
        }
        st1(o, a->out_dtype, j, y);
    }
}

static void ln_row_generic(const norm_args *a, const void *x, void *o) {
    int64_t d = a->dim;
    double s = 0.0, v = 0.0;
    for (int64_t j = 0; j < d; j++) s += ld1(x, a->x_dtype, j);
    float mean = (float)(s / (double)d);
    for (int64_t j = 0; j < d; j++) {
        double c = ld1(x, a->x_dtype, j) - mean;
        v += c * c;
    }
    float rstd = 1.0f / sqrtf((float)(v / (double)d) + a->eps);
    for (int64_t j = 0; j < d; j++) {
        float y = (ld1(x, a->x_dtype, j) - mean) * rstd;
        if (a->w) y = y * ld1(a->w, a->w_dtype, j);
        if (a->b) y = y + ld1(a->b, a->w_dtype, j);
        st1(o, a->out_dtype, j, y);
    }
}

#define NORM_PASS 1
#define TO_PASS_FILE "norm.c"
#include "isa_passes.inc"
#undef TO_PASS_FILE
#undef NORM_PASS

typedef void (*rms_row_fn)(const norm_args *, const void *, const void *, void *);
typedef void (*ln_row_fn)(const norm_args *, const void *, void *);
typedef struct {
    const norm_args *a;
    rms_row_fn rms;
    ln_row_fn ln;
} norm_task;

static void rms_task(void *ctx, int ith, int nth) {
    const norm_task *t = ctx;
    const norm_args *a = t->a;
    int64_t b, e;
    to_split_rows(a->outer * a->inner, ith, nth, &b, &e);
    size_t xs = esz(a->x_dtype), os = esz(a->out_dtype);
    for (int64_t r = b; r < e; r++) {
        int64_t o = r / a->inner, i = r % a->inner;
        const char *x = (const char *)a->x + (size_t)(o * a->x_so + i * a->x_si) * xs;
        const char *z = a->z ? (const char *)a->z + (size_t)(o * a->z_so + i * a->z_si) * xs : NULL;
        char *out = (char *)a->out + (size_t)(o * a->o_so + i * a->o_si) * os;
        t->rms(a, x, z, out);
    }
}

static void ln_task(void *ctx, int ith, int nth) {
    const norm_task *t = ctx;
    const norm_args *a = t->a;
    int64_t b, e;
    to_split_rows(a->outer, ith, nth, &b, &e);
    for (int64_t r = b; r < e; r++)
        t->ln(a, (const char *)a->x + (size_t)(r * a->x_so) * esz(a->x_dtype),
              (char *)a->out + (size_t)(r * a->o_so) * esz(a->out_dtype));
}

static int is_act(int d) { return d == TO_F32 || d == TO_BF16; }
static int is_wt(int d) { return d == TO_F32 || d == TO_BF16 || d == TO_F16; }

static void run_rows(to_task_fn fn, void *ctx, int64_t rows, int64_t dim) {
    if (rows > 1 && rows * dim >= NORM_PAR_MIN_ELEMS && to_get_num_threads() > 1)
        to_parallel_run(fn, ctx, 0);
    else
        fn(ctx, 0, 1);
}

TO_API int to_rms_norm(const void *x, const void *w, const void *z, void *out, int64_t outer,
                       int64_t inner, int64_t dim, int64_t x_so, int64_t x_si, int64_t z_so,
                       int64_t z_si, int64_t o_so, int64_t o_si, float eps, int variant,
                       int x_dtype, int w_dtype, int out_dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(w);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(outer);
    TO_CHECK_NONNEG(inner);
    TO_CHECK(dim >= 1, TO_ERR_SHAPE, "to_rms_norm: dim must be >= 1 (got %lld)", (long long)dim);
    TO_CHECK(variant >= TO_RMS_PLAIN && variant <= TO_RMS_GATED, TO_ERR_INVALID_ARGUMENT,
             "to_rms_norm: unknown variant %d", variant);
    TO_CHECK(variant != TO_RMS_GATED || z != NULL, TO_ERR_INVALID_ARGUMENT,
             "to_rms_norm: the gated variant needs z");
    TO_CHECK(is_act(x_dtype), TO_ERR_DTYPE, "to_rms_norm: x dtype %d (f32 or bf16 expected)", x_dtype);
    TO_CHECK(is_act(out_dtype), TO_ERR_DTYPE, "to_rms_norm: out dtype %d (f32 or bf16 expected)",
             out_dtype);
    TO_CHECK(is_wt(w_dtype), TO_ERR_DTYPE, "to_rms_norm: weight dtype %d (f32, bf16 or f16)", w_dtype);
    TO_CHECK(eps >= 0.0f, TO_ERR_INVALID_ARGUMENT, "to_rms_norm: eps must be >= 0");
    TO_CHECK(x_so >= 0 && x_si >= 0 && o_so >= 0 && o_si >= 0 && z_so >= 0 && z_si >= 0,
             TO_ERR_INVALID_ARGUMENT, "to_rms_norm: strides must be >= 0");
    if (outer == 0 || inner == 0) return TO_OK;
    norm_args a = {x, w, variant == TO_RMS_GATED ? z : NULL, NULL, out, outer, inner, dim,
                   x_so, x_si, z_so, z_si, o_so, o_si, eps, variant, x_dtype, w_dtype, out_dtype};
    norm_task t = {&a, rms_row_generic, NULL};
    uint32_t isa = to_isa();
    const char *kname = "generic";
    if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW) && (isa & TO_ISA_FMA)) {
        t.rms = rms_row_avx512;
        kname = "avx512";
    } else if ((isa & TO_ISA_AVX2) && (isa & TO_ISA_FMA)) {
        t.rms = rms_row_avx2;
        kname = "avx2";
    }
    to_report_kernel("rms_norm", kname);
    run_rows(rms_task, &t, outer * inner, dim);
    return TO_OK;
}

/* Residual add then RMSNorm of the sum (decoder layers: x += attn_out; h = norm(x)). Composed
 * from to_add and to_rms_norm, so its results equal the two ops run one after the other. */
TO_API int to_add_rms_norm(void *x, const void *delta, const void *w, void *out, int64_t rows,
                           int64_t dim, float eps, int variant, int x_dtype, int w_dtype,
                           int out_dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(delta);
    TO_CHECK_NONNEG(rows);
    TO_CHECK(dim >= 1, TO_ERR_SHAPE, "to_add_rms_norm: dim must be >= 1 (got %lld)",
             (long long)dim);
    TO_CHECK(variant == TO_RMS_PLAIN || variant == TO_RMS_ZERO_CENTERED, TO_ERR_INVALID_ARGUMENT,
             "to_add_rms_norm: variant %d (plain or zero-centred expected)", variant);
    int rc = to_add(x, delta, x, rows * dim, x_dtype);
    if (rc != TO_OK) return rc;
    return to_rms_norm(x, w, NULL, out, rows, 1, dim, dim, dim, 0, 0, dim, dim, eps, variant,
                       x_dtype, w_dtype, out_dtype);
}

TO_API int to_layer_norm(const void *x, const void *w, const void *b, void *out, int64_t rows,
                         int64_t dim, int64_t ldx, int64_t ldo, float eps, int x_dtype,
                         int w_dtype, int out_dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(rows);
    TO_CHECK(dim >= 1, TO_ERR_SHAPE, "to_layer_norm: dim must be >= 1 (got %lld)", (long long)dim);
    TO_CHECK(ldx >= dim && ldo >= dim, TO_ERR_SHAPE, "to_layer_norm: ldx/ldo must be >= dim");
    TO_CHECK(is_act(x_dtype), TO_ERR_DTYPE, "to_layer_norm: x dtype %d (f32 or bf16)", x_dtype);
    TO_CHECK(is_act(out_dtype), TO_ERR_DTYPE, "to_layer_norm: out dtype %d (f32 or bf16)", out_dtype);
    TO_CHECK(!(w || b) || is_wt(w_dtype), TO_ERR_DTYPE,
             "to_layer_norm: weight dtype %d (f32, bf16 or f16)", w_dtype);
    TO_CHECK(eps >= 0.0f, TO_ERR_INVALID_ARGUMENT, "to_layer_norm: eps must be >= 0");
    if (rows == 0) return TO_OK;
    norm_args a = {x, w, NULL, b, out, rows, 1, dim, ldx, 0, 0, 0, ldo, 0, eps, 0,
                   x_dtype, w_dtype, out_dtype};
    norm_task t = {&a, NULL, ln_row_generic};
    uint32_t isa = to_isa();
    const char *kname = "generic";
    if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW) && (isa & TO_ISA_FMA)) {
        t.ln = ln_row_avx512;
        kname = "avx512";
    } else if ((isa & TO_ISA_AVX2) && (isa & TO_ISA_FMA)) {
        t.ln = ln_row_avx2;
        kname = "avx2";
    }
    to_report_kernel("layer_norm", kname);
    run_rows(ln_task, &t, rows, dim);
    return TO_OK;
}

#else /* ---------------- per-ISA pass ---------------- */
#include "ops_vec.inc"

static VTGT void K(rms_row)(const norm_args *a, const void *x, const void *z, void *o) {
    int64_t d = a->dim, j = 0;
    int xd = a->x_dtype, wd = a->w_dtype, od = a->out_dtype;
    K(vf) acc0 = K(splat)(0.0f), acc1 = acc0;
    for (; j + 2 * VW <= d; j += 2 * VW) {
        K(vf) v0 = K(ld)(x, xd, j), v1 = K(ld)(x, xd, j + VW);
        acc0 += v0 * v0;
        acc1 += v1 * v1;
    }
    for (; j + VW <= d; j += VW) {
        K(vf) v = K(ld)(x, xd, j);
        acc0 += v * v;
    }
    if (j < d) {
        K(vf) v = K(ldn)(x, xd, j, d - j, 0.0f);
        acc1 += v * v;
    }
    float r = 1.0f / sqrtf(K(hsum)(acc0 + acc1) / (float)d + a->eps);
    int nround = xd == TO_BF16 && wd == TO_BF16;
    for (j = 0; j < d; j += VW) {
        int64_t n = d - j < VW ? d - j : VW;
        K(vf) xn = (n == VW ? K(ld)(x, xd, j) : K(ldn)(x, xd, j, n, 0.0f)) * r;
        K(vf) w = n == VW ? K(ld)(a->w, wd, j) : K(ldn)(a->w, wd, j, n, 0.0f), y;
        if (a->variant == TO_RMS_ZERO_CENTERED) {
            y = xn * (w + 1.0f);
        } else {
            y = w * (xd == TO_BF16 ? K(bf16_round)(xn) : xn);
            if (a->variant == TO_RMS_GATED) {
                if (nround) y = K(bf16_round)(y);
                K(vf) g = n == VW ? K(ld)(z, xd, j) : K(ldn)(z, xd, j, n, 0.0f);
                y = y * (g / (K(vexp)(-g) + 1.0f));
            }
        }
        if (n == VW) K(st)(o, od, j, y);
        else K(stn)(o, od, j, y, n);
    }
}

static VTGT void K(ln_row)(const norm_args *a, const void *x, void *o) {
    int64_t d = a->dim, j;
    int xd = a->x_dtype, wd = a->w_dtype, od = a->out_dtype;
    K(vf) acc = K(splat)(0.0f);
    for (j = 0; j + VW <= d; j += VW) acc += K(ld)(x, xd, j);
    if (j < d) acc += K(ldn)(x, xd, j, d - j, 0.0f);
    float mean = K(hsum)(acc) / (float)d;
    K(vf) vacc = K(splat)(0.0f);
    for (j = 0; j + VW <= d; j += VW) {
        K(vf) c = K(ld)(x, xd, j) - mean;
        vacc += c * c;
    }
    if (j < d) {
        K(vf) c = K(ldn)(x, xd, j, d - j, mean) - mean;
        vacc += c * c;
    }
    float rstd = 1.0f / sqrtf(K(hsum)(vacc) / (float)d + a->eps);
    for (j = 0; j < d; j += VW) {
        int64_t n = d - j < VW ? d - j : VW;
        K(vf) y = ((n == VW ? K(ld)(x, xd, j) : K(ldn)(x, xd, j, n, 0.0f)) - mean) * rstd;
        if (a->w) y = y * (n == VW ? K(ld)(a->w, wd, j) : K(ldn)(a->w, wd, j, n, 1.0f));
        if (a->b) y = y + (n == VW ? K(ld)(a->b, wd, j) : K(ldn)(a->b, wd, j, n, 0.0f));
        if (n == VW) K(st)(o, od, j, y);
        else K(stn)(o, od, j, y, n);
    }
}
#endif
