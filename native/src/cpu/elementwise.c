/* Elementwise ops: add, mul, cast. */
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
    for (int64_t i = 0; i < n; i++) store_from_double(dst, dst_dtype, i, load_as_double(src, src_dtype, i));
    return TO_OK;
}
