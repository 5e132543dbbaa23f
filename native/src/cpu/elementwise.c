/* Elementwise ops: add, mul, cast, scale, activations (silu, sigmoid, exp, softplus, gelu),
 * swiglu, bias-row add and per-row scaling. Unary ops, swiglu, add_row and mul_rows have a
 * generic C kernel and AVX2 / AVX-512 kernels (GCC vector extensions, ops_vec.inc); this file
 * includes itself once per instruction set (ELEM_PASS). bf16 ops compute in fp32 and round once,
 * like torch. */
#ifndef ELEM_PASS
#include "../common/internal.h"

typedef float (*binop_fn)(float, float);
static float op_add(float a, float b) { return a + b; }
static float op_mul(float a, float b) { return a * b; }

static int binary(const char *name, binop_fn op, const void *a, const void *b, void *out,
                  int64_t n, int dtype) {
    TO_CHECK_PTR(a);
    TO_CHECK_PTR(b);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(n);
    switch (dtype) {
    case TO_F32: {
        const float *x = a, *y = b;
        float *z = out;
        for (int64_t i = 0; i < n; i++) z[i] = op(x[i], y[i]);
        return TO_OK;
    }
    case TO_BF16: {
        const uint16_t *x = a, *y = b;
        uint16_t *z = out;
        for (int64_t i = 0; i < n; i++)
            z[i] = to_f32_to_bf16(op(to_bf16_to_f32(x[i]), to_bf16_to_f32(y[i])));
        return TO_OK;
    }
    default:
        return to_set_error(TO_ERR_DTYPE, "%s: unsupported dtype %d (f32 or bf16 expected)", name,
                            dtype);
    }
}

TO_API int to_add(const void *a, const void *b, void *out, int64_t n, int dtype) {
    return binary("to_add", op_add, a, b, out, n, dtype);
}

TO_API int to_mul(const void *a, const void *b, void *out, int64_t n, int dtype) {
    return binary("to_mul", op_mul, a, b, out, n, dtype);
}

static double load_as_double(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case TO_F32: return ((const float *)p)[i];
    case TO_F16: return to_f16_to_f32(((const uint16_t *)p)[i]);
    case TO_BF16: return to_bf16_to_f32(((const uint16_t *)p)[i]);
    case TO_I32: return ((const int32_t *)p)[i];
    case TO_I64: return (double)((const int64_t *)p)[i];
    case TO_U8: return ((const uint8_t *)p)[i];
    case TO_BOOL: return ((const uint8_t *)p)[i] != 0;
    default: return 0.0;
    }
}

static void store_from_double(void *p, int dtype, int64_t i, double v) {
    switch (dtype) {
    case TO_F32: ((float *)p)[i] = (float)v; break;
    case TO_F16: ((uint16_t *)p)[i] = to_f32_to_f16((float)v); break;
    case TO_BF16: ((uint16_t *)p)[i] = to_f32_to_bf16((float)v); break;
    case TO_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case TO_I64: ((int64_t *)p)[i] = (int64_t)v; break;
    case TO_U8: ((uint8_t *)p)[i] = (uint8_t)(int64_t)v; break;
    case TO_BOOL: ((uint8_t *)p)[i] = v != 0.0; break;
    default: break;
    }
}

static int castable(int dtype) {
    return dtype == TO_F32 || dtype == TO_F16 || dtype == TO_BF16 || dtype == TO_I32 ||
           dtype == TO_I64 || dtype == TO_U8 || dtype == TO_BOOL;
}

TO_API int to_cast(const void *src, int src_dtype, void *dst, int dst_dtype, int64_t n) {
    TO_CHECK_PTR(src);
    TO_CHECK_PTR(dst);
    TO_CHECK_NONNEG(n);
    TO_CHECK(castable(src_dtype), TO_ERR_DTYPE, "to_cast: unsupported source dtype %d", src_dtype);
    TO_CHECK(castable(dst_dtype), TO_ERR_DTYPE, "to_cast: unsupported target dtype %d", dst_dtype);
    if (src_dtype == TO_F32 && dst_dtype == TO_BF16) {
        const float *s = src;
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = to_f32_to_bf16(s[i]);
        return TO_OK;
    }
    if (src_dtype == TO_BF16 && dst_dtype == TO_F32) {
        const uint16_t *s = src;
        float *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = to_bf16_to_f32(s[i]);
        return TO_OK;
    }
    if (src_dtype == TO_I64 && (dst_dtype == TO_F32 || dst_dtype == TO_F16 || dst_dtype == TO_BF16)) {
        /* int64 -> float rounds once (as torch); through double it could round twice */
        const int64_t *s = src;
        for (int64_t i = 0; i < n; i++) {
            const float f = (float)s[i];
            if (dst_dtype == TO_F32) ((float *)dst)[i] = f;
            else if (dst_dtype == TO_F16) ((uint16_t *)dst)[i] = to_f32_to_f16(f);
            else ((uint16_t *)dst)[i] = to_f32_to_bf16(f);
        }
        return TO_OK;
    }
    for (int64_t i = 0; i < n; i++) store_from_double(dst, dst_dtype, i, load_as_double(src, src_dtype, i));
    return TO_OK;
}

/* ---------------- unary activations ---------------- */
enum { U_SCALE, U_SILU, U_SIGMOID, U_EXP, U_SOFTPLUS, U_GELU_TANH, U_GELU_ERF, U_COUNT };
static const char *const U_NAMES[U_COUNT] = {"scale", "silu", "sigmoid", "exp", "softplus",
                                             "gelu_tanh", "gelu_erf"};
#define GELU_BETA 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_KAPPA 0.044715f

static inline float unary1(int op, float x, float s) {
    switch (op) {
    case U_SCALE: return x * s;
    case U_SILU: return x / (1.0f + expf(-x));
    case U_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case U_EXP: return expf(x);
    case U_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
    case U_GELU_TANH: {
        float inner = GELU_BETA * (x + GELU_KAPPA * x * x * x);
        return 0.5f * x * (1.0f + tanhf(inner));
    }
    default: return x * 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    }
}

static inline float ldf(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case TO_F32: return ((const float *)p)[i];
    case TO_BF16: return to_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return to_f16_to_f32(((const uint16_t *)p)[i]);
    }
}
static inline void stf(void *p, int dtype, int64_t i, float v) {
    if (dtype == TO_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = to_f32_to_bf16(v);
}

typedef struct {
    const void *x, *y;
    void *out;
    int64_t n, rows, dim, ldx, ldy, ldo;
    float s;
    int op, dtype, dtype2;
} ew_args;

static void unary_generic(const ew_args *a, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) stf(a->out, a->dtype, i, unary1(a->op, ldf(a->x, a->dtype, i), a->s));
}

static void swiglu_rows_generic(const ew_args *a, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++)
        for (int64_t j = 0; j < a->dim; j++) {
            float g = ldf(a->x, a->dtype, r * a->ldx + j);
            float act = g / (1.0f + expf(-g));
            if (a->dtype == TO_BF16) act = to_bf16_to_f32(to_f32_to_bf16(act));
            stf(a->out, a->dtype, r * a->ldo + j, act * ldf(a->y, a->dtype, r * a->ldy + j));
        }
}

/* op 0: add bias row; op 1: multiply by per-row scalar. */
static void rowop_generic(const ew_args *a, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
        float sr = a->op == 1 ? ldf(a->y, a->dtype2, r) : 0.0f;
        for (int64_t j = 0; j < a->dim; j++) {
            float v = ldf(a->x, a->dtype, r * a->dim + j);
            v = a->op == 1 ? v * sr : v + ldf(a->y, a->dtype2, j);
            stf(a->out, a->dtype, r * a->dim + j, v);
        }
    }
}

#define ELEM_PASS 1
#define TO_PASS_FILE "elementwise.c"
#include "isa_passes.inc"
#undef TO_PASS_FILE
#undef ELEM_PASS

typedef void (*range_fn)(const ew_args *, int64_t, int64_t);
typedef struct {
    const ew_args *a;
    range_fn fn;
    int64_t total;
} ew_task;

static void ew_task_run(void *ctx, int ith, int nth) {
    const ew_task *t = ctx;
    int64_t b, e;
    to_split_rows(t->total, ith, nth, &b, &e);
    if (b < e) t->fn(t->a, b, e);
}

/* Runs fn over [0, total) (elements or rows); threads only when the work is large. */
static void ew_run(const ew_args *a, range_fn fn, int64_t total, int64_t elems) {
    ew_task t = {a, fn, total};
    if (total > 1 && elems >= (1 << 16) && to_get_num_threads() > 1) to_parallel_run(ew_task_run, &t, 0);
    else if (total > 0) fn(a, 0, total);
}

static int simd_level(void) {
    uint32_t isa = to_isa();
    if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW) && (isa & TO_ISA_FMA)) return 2;
    if ((isa & TO_ISA_AVX2) && (isa & TO_ISA_FMA)) return 1;
    return 0;
}
static const char *const LEVEL_NAMES[3] = {"generic", "avx2", "avx512"};

static int unary(const char *fname, int op, const void *x, void *out, int64_t n, float s, int dtype) {
    TO_CHECK(x != NULL && out != NULL, TO_ERR_INVALID_ARGUMENT, "%s: x or out is NULL", fname);
    TO_CHECK(n >= 0, TO_ERR_INVALID_ARGUMENT, "%s: n is negative (%lld)", fname, (long long)n);
    TO_CHECK(dtype == TO_F32 || dtype == TO_BF16, TO_ERR_DTYPE,
             "%s: unsupported dtype %d (f32 or bf16 expected)", fname, dtype);
    ew_args a = {x, NULL, out, n, 0, 0, 0, 0, 0, s, op, dtype, dtype};
    int lvl = simd_level();
    /* softplus and exact gelu need log1p / erf: generic kernel only. */
    if (op == U_SOFTPLUS || op == U_GELU_ERF) lvl = 0;
    range_fn fn = lvl == 2 ? unary_avx512 : lvl == 1 ? unary_avx2 : unary_generic;
    to_report_kernel(U_NAMES[op], LEVEL_NAMES[lvl]);
    ew_run(&a, fn, n, n);
    return TO_OK;
}

TO_API int to_scale(const void *x, void *out, int64_t n, float s, int dtype) {
    return unary("to_scale", U_SCALE, x, out, n, s, dtype);
}
TO_API int to_silu(const void *x, void *out, int64_t n, int dtype) {
    return unary("to_silu", U_SILU, x, out, n, 0.0f, dtype);
}
TO_API int to_sigmoid(const void *x, void *out, int64_t n, int dtype) {
    return unary("to_sigmoid", U_SIGMOID, x, out, n, 0.0f, dtype);
}
TO_API int to_exp(const void *x, void *out, int64_t n, int dtype) {
    return unary("to_exp", U_EXP, x, out, n, 0.0f, dtype);
}
TO_API int to_softplus(const void *x, void *out, int64_t n, int dtype) {
    return unary("to_softplus", U_SOFTPLUS, x, out, n, 0.0f, dtype);
}
TO_API int to_gelu(const void *x, void *out, int64_t n, int approximate, int dtype) {
    TO_CHECK(approximate == 0 || approximate == 1, TO_ERR_INVALID_ARGUMENT,
             "to_gelu: approximate must be 0 (erf) or 1 (tanh), got %d", approximate);
    return unary("to_gelu", approximate ? U_GELU_TANH : U_GELU_ERF, x, out, n, 0.0f, dtype);
}

TO_API int to_swiglu(const void *gate, const void *up, void *out, int64_t rows, int64_t inter,
                     int64_t ld_gate, int64_t ld_up, int64_t ld_out, int dtype) {
    TO_CHECK_PTR(gate);
    TO_CHECK_PTR(up);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(rows);
    TO_CHECK_NONNEG(inter);
    TO_CHECK(ld_gate >= inter && ld_up >= inter && ld_out >= inter, TO_ERR_SHAPE,
             "to_swiglu: row strides (%lld, %lld, %lld) must be >= inter (%lld)", (long long)ld_gate,
             (long long)ld_up, (long long)ld_out, (long long)inter);
    TO_CHECK(dtype == TO_F32 || dtype == TO_BF16, TO_ERR_DTYPE,
             "to_swiglu: unsupported dtype %d (f32 or bf16 expected)", dtype);
    ew_args a = {gate, up, out, 0, rows, inter, ld_gate, ld_up, ld_out, 0.0f, 0, dtype, dtype};
    int lvl = simd_level();
    range_fn fn = lvl == 2 ? swiglu_rows_avx512 : lvl == 1 ? swiglu_rows_avx2 : swiglu_rows_generic;
    to_report_kernel("swiglu", LEVEL_NAMES[lvl]);
    if (inter > 0) ew_run(&a, fn, rows, rows * inter);
    return TO_OK;
}

static int rowop(const char *fname, int op, const void *x, const void *y, void *out, int64_t rows,
                 int64_t dim, int dtype, int dtype2) {
    TO_CHECK(x != NULL && y != NULL && out != NULL, TO_ERR_INVALID_ARGUMENT, "%s: NULL pointer", fname);
    TO_CHECK(rows >= 0 && dim >= 0, TO_ERR_INVALID_ARGUMENT, "%s: negative size", fname);
    TO_CHECK(dtype == TO_F32 || dtype == TO_BF16, TO_ERR_DTYPE,
             "%s: unsupported dtype %d (f32 or bf16 expected)", fname, dtype);
    TO_CHECK(dtype2 == TO_F32 || dtype2 == TO_BF16 || (op == 0 && dtype2 == TO_F16), TO_ERR_DTYPE,
             "%s: unsupported %s dtype %d", fname, op == 0 ? "bias" : "scale", dtype2);
    ew_args a = {x, y, out, 0, rows, dim, 0, 0, 0, 0.0f, op, dtype, dtype2};
    int lvl = simd_level();
    range_fn fn = lvl == 2 ? rowop_avx512 : lvl == 1 ? rowop_avx2 : rowop_generic;
    to_report_kernel(op == 0 ? "add_row" : "mul_rows", LEVEL_NAMES[lvl]);
    if (dim > 0) ew_run(&a, fn, rows, rows * dim);
    return TO_OK;
}

TO_API int to_add_row(const void *x, const void *bias, void *out, int64_t rows, int64_t dim,
                      int dtype, int bias_dtype) {
    return rowop("to_add_row", 0, x, bias, out, rows, dim, dtype, bias_dtype);
}

TO_API int to_mul_rows(const void *x, const void *s, void *out, int64_t rows, int64_t dim,
                       int dtype, int s_dtype) {
    return rowop("to_mul_rows", 1, x, s, out, rows, dim, dtype, s_dtype);
}

#else /* ---------------- per-ISA pass ---------------- */
#include "ops_vec.inc"

static inline VTGT K(vf) K(unary_v)(int op, K(vf) x, float s) {
    switch (op) {
    case U_SCALE: return x * s;
    case U_SILU: return x / (K(vexp)(-x) + 1.0f);
    case U_SIGMOID: return 1.0f / (K(vexp)(-x) + 1.0f);
    case U_EXP: return K(vexp)(x);
    default: { /* U_GELU_TANH: 0.5 * (1 + tanh(u)) == 1 / (1 + exp(-2u)), no cancellation */
        K(vf) inner = (x + x * x * x * GELU_KAPPA) * GELU_BETA;
        return x / (K(vexp)(inner * -2.0f) + 1.0f);
    }
    }
}

static VTGT void K(unary)(const ew_args *a, int64_t b, int64_t e) {
    int64_t i = b;
    for (; i + VW <= e; i += VW) K(st)(a->out, a->dtype, i, K(unary_v)(a->op, K(ld)(a->x, a->dtype, i), a->s));
    if (i < e)
        K(stn)(a->out, a->dtype, i, K(unary_v)(a->op, K(ldn)(a->x, a->dtype, i, e - i, 0.0f), a->s), e - i);
}

static VTGT void K(swiglu_rows)(const ew_args *a, int64_t b, int64_t e) {
    int d = a->dtype;
    for (int64_t r = b; r < e; r++) {
        const int64_t go = r * a->ldx, uo = r * a->ldy, oo = r * a->ldo;
        for (int64_t j = 0; j < a->dim; j += VW) {
            int64_t n = a->dim - j < VW ? a->dim - j : VW;
            K(vf) g = n == VW ? K(ld)(a->x, d, go + j) : K(ldn)(a->x, d, go + j, n, 0.0f);
            K(vf) u = n == VW ? K(ld)(a->y, d, uo + j) : K(ldn)(a->y, d, uo + j, n, 0.0f);
            K(vf) act = g / (K(vexp)(-g) + 1.0f);
            if (d == TO_BF16) act = K(bf16_round)(act);
            if (n == VW) K(st)(a->out, d, oo + j, act * u);
            else K(stn)(a->out, d, oo + j, act * u, n);
        }
    }
}

static VTGT void K(rowop)(const ew_args *a, int64_t b, int64_t e) {
    int d = a->dtype;
    for (int64_t r = b; r < e; r++) {
        float sr = a->op == 1 ? ldf(a->y, a->dtype2, r) : 0.0f;
        const int64_t off = r * a->dim;
        for (int64_t j = 0; j < a->dim; j += VW) {
            int64_t n = a->dim - j < VW ? a->dim - j : VW;
            K(vf) v = n == VW ? K(ld)(a->x, d, off + j) : K(ldn)(a->x, d, off + j, n, 0.0f);
            if (a->op == 1) v = v * sr;
            else v = v + (n == VW ? K(ld)(a->y, a->dtype2, j) : K(ldn)(a->y, a->dtype2, j, n, 0.0f));
            if (n == VW) K(st)(a->out, d, off + j, v);
            else K(stn)(a->out, d, off + j, v, n);
        }
    }
}
#endif
