/* Elementwise ops, casts, strided copies and embedding lookups on the device (same semantics as
 * src/cpu/elementwise.c, copy.c and the select ops: fp32 arithmetic, one rounding per result). */
#include "common.cuh"

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

enum { OP_ADD, OP_MUL };
enum { U_SCALE, U_SILU, U_SIGMOID, U_EXP, U_SOFTPLUS, U_GELU, U_GELU_TANH };

template <int OP>
__global__ void binary_kernel(const void *a, const void *b, void *out, int64_t n, int dt) {
    pdl_enter(); /* launched by toc_launch */
    GRID_STRIDE(i, n) {
        float x = ldf(a, dt, i), y = ldf(b, dt, i);
        stf(out, dt, i, OP == OP_ADD ? x + y : x * y);
    }
}

/* bf16, n % 8 == 0, 16-byte aligned: 8 elements per thread and step */
template <int OP>
__global__ void binary_bf16_kernel(const uint4 *a, const uint4 *b, uint4 *out, int64_t n8) {
    pdl_enter(); /* launched by toc_launch */
    GRID_STRIDE(i, n8) {
        float x[8], y[8];
        bf8(a[i], x);
        bf8(b[i], y);
#pragma unroll
        for (int e = 0; e < 8; e++) x[e] = OP == OP_ADD ? x[e] + y[e] : x[e] * y[e];
        out[i] = pack_bf8(x);
    }
}

__global__ void unary_kernel(const void *x, void *out, int64_t n, int op, float s, int dt) {
    pdl_enter(); /* launched by toc_launch */
    GRID_STRIDE(i, n) {
        float v = ldf(x, dt, i), r;
        switch (op) {
        case U_SCALE: r = v * s; break;
        case U_SILU: r = v / (1.0f + expf(-v)); break;
        case U_SIGMOID: r = 1.0f / (1.0f + expf(-v)); break;
        case U_EXP: r = expf(v); break;
        case U_SOFTPLUS: r = v > 20.0f ? v : log1pf(expf(v)); break;
        case U_GELU: r = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); break;
        default: {
            float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
            r = 0.5f * v * (1.0f + tanhf(u));
        }
        }
        stf(out, dt, i, r);
    }
}

static int binary(const char *name, int op, const void *a, const void *b, void *out, int64_t n,
                  int dt) {
    TOC_CHECK(n >= 0, TO_ERR_INVALID_ARGUMENT, "%s: n = %lld", name, (long long)n);
    TOC_CHECK(toc_is_act(dt), TO_ERR_DTYPE, "%s: dtype %d (f32 or bf16 expected)", name, dt);
    if (n == 0) return TO_OK;
    TOC_CHECK(a && b && out, TO_ERR_INVALID_ARGUMENT, "%s: NULL pointer", name);
    TOC_READY();
    if (dt == TO_BF16 && n % 8 == 0 && (((uintptr_t)a | (uintptr_t)b | (uintptr_t)out) & 15) == 0) {
        const uint4 *a4 = (const uint4 *)a, *b4 = (const uint4 *)b;
        uint4 *o4 = (uint4 *)out;
        if (op == OP_ADD)
            TOC_CUDA((toc_launch(binary_bf16_kernel<OP_ADD>, dim3(toc_grid(n / 8, 256)), dim3(256), 0, a4, b4, o4,
                n / 8)), "binary_bf16_kernel");
        else
            TOC_CUDA((toc_launch(binary_bf16_kernel<OP_MUL>, dim3(toc_grid(n / 8, 256)), dim3(256), 0, a4, b4, o4,
                n / 8)), "binary_bf16_kernel");
        return TO_OK;
    }
    if (op == OP_ADD)
        TOC_CUDA((toc_launch(binary_kernel<OP_ADD>, dim3(toc_grid(n, 256)), dim3(256), 0, a, b, out, n, dt)),
            "binary_kernel");
    else
        TOC_CUDA((toc_launch(binary_kernel<OP_MUL>, dim3(toc_grid(n, 256)), dim3(256), 0, a, b, out, n, dt)),
            "binary_kernel");
    return TO_OK;
}

TOC_EXPORT int toc_add(const void *a, const void *b, void *out, int64_t n, int dtype) {
    return binary("toc_add", OP_ADD, a, b, out, n, dtype);
}
TOC_EXPORT int toc_mul(const void *a, const void *b, void *out, int64_t n, int dtype) {
    return binary("toc_mul", OP_MUL, a, b, out, n, dtype);
}

static int unary(const char *name, int op, const void *x, void *out, int64_t n, float s, int dt) {
    TOC_CHECK(n >= 0, TO_ERR_INVALID_ARGUMENT, "%s: n = %lld", name, (long long)n);
    TOC_CHECK(toc_is_act(dt), TO_ERR_DTYPE, "%s: dtype %d (f32 or bf16 expected)", name, dt);
    if (n == 0) return TO_OK;
    TOC_CHECK(x && out, TO_ERR_INVALID_ARGUMENT, "%s: NULL pointer", name);
    TOC_READY();
    TOC_CUDA((toc_launch(unary_kernel, dim3(toc_grid(n, 256)), dim3(256), 0, x, out, n, op, s, dt)), "unary_kernel");
    return TO_OK;
}
TOC_EXPORT int toc_scale(const void *x, void *out, int64_t n, float s, int dtype) {
    return unary("toc_scale", U_SCALE, x, out, n, s, dtype);
}
TOC_EXPORT int toc_silu(const void *x, void *out, int64_t n, int dtype) {
    return unary("toc_silu", U_SILU, x, out, n, 0, dtype);
}
TOC_EXPORT int toc_sigmoid(const void *x, void *out, int64_t n, int dtype) {
    return unary("toc_sigmoid", U_SIGMOID, x, out, n, 0, dtype);
}
TOC_EXPORT int toc_exp(const void *x, void *out, int64_t n, int dtype) {
    return unary("toc_exp", U_EXP, x, out, n, 0, dtype);
}
TOC_EXPORT int toc_softplus(const void *x, void *out, int64_t n, int dtype) {
    return unary("toc_softplus", U_SOFTPLUS, x, out, n, 0, dtype);
}
TOC_EXPORT int toc_gelu(const void *x, void *out, int64_t n, int approximate, int dtype) {
    TOC_CHECK(approximate == 0 || approximate == 1, TO_ERR_INVALID_ARGUMENT,
              "toc_gelu: approximate %d", approximate);
    return unary("toc_gelu", approximate ? U_GELU_TANH : U_GELU, x, out, n, 0, dtype);
}

/* ---- swiglu ---- */
__global__ void swiglu_kernel(const void *g, const void *u, void *o, int64_t rows, int64_t inter,
                              int64_t lg, int64_t lu, int64_t lo, int dt) {
    pdl_enter(); /* launched by toc_launch */
    int64_t n = rows * inter;
    GRID_STRIDE(i, n) {
        int64_t r = i / inter, j = i - r * inter;
        float gv = ldf(g, dt, r * lg + j), uv = ldf(u, dt, r * lu + j);
        float act = rnd(dt, gv / (1.0f + expf(-gv)));
        stf(o, dt, r * lo + j, act * uv);
    }
}
/* bf16, inter % 8 == 0, 16-byte aligned rows: 8 elements per thread and step */
__global__ void swiglu_bf16_kernel(const uint16_t *g, const uint16_t *u, uint16_t *o, int64_t rows,
                                   int64_t inter, int64_t lg, int64_t lu, int64_t lo) {
    pdl_enter(); /* launched by toc_launch */
    const int64_t nv = inter / 8;
    GRID_STRIDE(i, rows * nv) {
        const int64_t r = i / nv, j = (i - r * nv) * 8;
        float gf[8], uf[8];
        bf8(*(const uint4 *)(g + r * lg + j), gf);
        bf8(*(const uint4 *)(u + r * lu + j), uf);
#pragma unroll
        for (int e = 0; e < 8; e++) gf[e] = rbf(gf[e] / (1.0f + expf(-gf[e]))) * uf[e];
        *(uint4 *)(o + r * lo + j) = pack_bf8(gf);
    }
}
TOC_EXPORT int toc_swiglu(const void *gate, const void *up, void *out, int64_t rows, int64_t inter,
                          int64_t ld_gate, int64_t ld_up, int64_t ld_out, int dtype) {
    TOC_CHECK(rows >= 0 && inter >= 0 && ld_gate >= inter && ld_up >= inter && ld_out >= inter,
              TO_ERR_INVALID_ARGUMENT, "toc_swiglu: bad sizes/strides");
    TOC_CHECK(toc_is_act(dtype), TO_ERR_DTYPE, "toc_swiglu: dtype %d", dtype);
    if (rows == 0 || inter == 0) return TO_OK;
    TOC_CHECK(gate && up && out, TO_ERR_INVALID_ARGUMENT, "toc_swiglu: NULL pointer");
    TOC_READY();
    if (dtype == TO_BF16 && inter % 8 == 0 && ld_gate % 8 == 0 && ld_up % 8 == 0 && ld_out % 8 == 0 &&
        ((uintptr_t)gate & 15) == 0 && ((uintptr_t)up & 15) == 0 && ((uintptr_t)out & 15) == 0) {
        TOC_CUDA((toc_launch(swiglu_bf16_kernel, dim3(toc_grid(rows * inter / 8, 256)), dim3(256), 0,
            (const uint16_t *)gate, (const uint16_t *)up, (uint16_t *)out, rows, inter, ld_gate, ld_up, ld_out)),
            "swiglu_bf16_kernel");
        return TO_OK;
    }
    TOC_CUDA((toc_launch(swiglu_kernel, dim3(toc_grid(rows * inter, 256)), dim3(256), 0, gate, up, out, rows, inter,
        ld_gate, ld_up, ld_out, dtype)), "swiglu_kernel");
    return TO_OK;
}

/* ---- row ops ---- */
__global__ void add_row_kernel(const void *x, const void *b, void *o, int64_t rows, int64_t dim,
                               int dt, int bdt, int mul_rows) {
    pdl_enter(); /* launched by toc_launch */
    GRID_STRIDE(i, rows * dim) {
        int64_t r = i / dim, j = i - r * dim;
        float v = ldf(x, dt, i);
        stf(o, dt, i, mul_rows ? v * ldf(b, bdt, r) : v + ldf(b, bdt, j));
    }
}
TOC_EXPORT int toc_add_row(const void *x, const void *bias, void *out, int64_t rows, int64_t dim,
                           int dtype, int bias_dtype) {
    TOC_CHECK(rows >= 0 && dim >= 0, TO_ERR_INVALID_ARGUMENT, "toc_add_row: bad sizes");
    TOC_CHECK(toc_is_act(dtype) && toc_is_wt(bias_dtype), TO_ERR_DTYPE, "toc_add_row: dtypes %d/%d",
              dtype, bias_dtype);
    if (rows * dim == 0) return TO_OK;
    TOC_CHECK(x && bias && out, TO_ERR_INVALID_ARGUMENT, "toc_add_row: NULL pointer");
    TOC_READY();
    TOC_CUDA((toc_launch(add_row_kernel, dim3(toc_grid(rows * dim, 256)), dim3(256), 0, x, bias, out, rows, dim,
        dtype, bias_dtype, 0)), "add_row_kernel");
    return TO_OK;
}
TOC_EXPORT int toc_mul_rows(const void *x, const void *s, void *out, int64_t rows, int64_t dim,
                            int dtype, int s_dtype) {
    TOC_CHECK(rows >= 0 && dim >= 0, TO_ERR_INVALID_ARGUMENT, "toc_mul_rows: bad sizes");
    TOC_CHECK(toc_is_act(dtype) && toc_is_act(s_dtype), TO_ERR_DTYPE, "toc_mul_rows: dtypes %d/%d",
              dtype, s_dtype);
    if (rows * dim == 0) return TO_OK;
    TOC_CHECK(x && s && out, TO_ERR_INVALID_ARGUMENT, "toc_mul_rows: NULL pointer");
    TOC_READY();
    TOC_CUDA((toc_launch(add_row_kernel, dim3(toc_grid(rows * dim, 256)), dim3(256), 0, x, s, out, rows, dim, dtype,
        s_dtype, 1)), "add_row_kernel");
    return TO_OK;
}

/* ---- cast ---- */
static int cast_ok(int dt) {
    return dt == TO_F32 || dt == TO_F16 || dt == TO_BF16 || dt == TO_I32 || dt == TO_I64 ||
           dt == TO_U8 || dt == TO_BOOL;
}
__device__ __forceinline__ double ld_any(const void *p, int dt, int64_t i) {
    switch (dt) {
    case TO_F32: return ((const float *)p)[i];
    case TO_F16: return h2f(((const uint16_t *)p)[i]);
    case TO_BF16: return bf2f(((const uint16_t *)p)[i]);
    case TO_I32: return ((const int32_t *)p)[i];
    case TO_I64: return (double)((const int64_t *)p)[i];
    default: return ((const uint8_t *)p)[i];
    }
}
__global__ void cast_kernel(const void *src, int sdt, void *dst, int ddt, int64_t n) {
    pdl_enter(); /* launched by toc_launch */
    GRID_STRIDE(i, n) {
        if (sdt == TO_I64 && ddt == TO_I32) {
            ((int32_t *)dst)[i] = (int32_t)((const int64_t *)src)[i];
            continue;
        }
        if (sdt == TO_I32 && ddt == TO_I64) {
            ((int64_t *)dst)[i] = ((const int32_t *)src)[i];
            continue;
        }
        if (sdt == TO_I64 && (ddt == TO_F32 || ddt == TO_F16 || ddt == TO_BF16)) { /* one rounding, as torch */
            const float f = (float)((const int64_t *)src)[i];
            if (ddt == TO_F32) ((float *)dst)[i] = f;
            else if (ddt == TO_F16) ((uint16_t *)dst)[i] = __half_as_ushort(__float2half_rn(f));
            else ((uint16_t *)dst)[i] = f2bf(f);
            continue;
        }
        double v = ld_any(src, sdt, i);
        switch (ddt) {
        case TO_F32: ((float *)dst)[i] = (float)v; break;
        case TO_F16: ((uint16_t *)dst)[i] = __half_as_ushort(__float2half_rn((float)v)); break;
        case TO_BF16: ((uint16_t *)dst)[i] = f2bf((float)v); break;
        case TO_I32: ((int32_t *)dst)[i] = (int32_t)v; break;
        case TO_I64: ((int64_t *)dst)[i] = (int64_t)v; break;
        case TO_BOOL: ((uint8_t *)dst)[i] = v != 0.0; break;
        default: ((uint8_t *)dst)[i] = (uint8_t)(int)v; break;
        }
    }
}
TOC_EXPORT int toc_cast(const void *src, int src_dtype, void *dst, int dst_dtype, int64_t n) {
    TOC_CHECK(n >= 0, TO_ERR_INVALID_ARGUMENT, "toc_cast: n = %lld", (long long)n);
    TOC_CHECK(cast_ok(src_dtype) && cast_ok(dst_dtype), TO_ERR_DTYPE, "toc_cast: dtypes %d -> %d",
              src_dtype, dst_dtype);
    if (n == 0) return TO_OK;
    TOC_CHECK(src && dst, TO_ERR_INVALID_ARGUMENT, "toc_cast: NULL pointer");
    TOC_READY();
    TOC_CUDA((toc_launch(cast_kernel, dim3(toc_grid(n, 256)), dim3(256), 0, src, src_dtype, dst, dst_dtype, n)),
        "cast_kernel");
    return TO_OK;
}

/* ---- strided copy ---- */
struct StridedArgs {
    int ndim;
    int64_t shape[8], strides[8];
};
template <typename T>
__global__ void copy_strided_kernel(const T *src, T *dst, int64_t n, StridedArgs a) {
    pdl_enter(); /* launched by toc_launch */
    GRID_STRIDE(i, n) {
        int64_t rem = i, off = 0;
        for (int d = a.ndim - 1; d >= 0; d--) {
            int64_t c = rem % a.shape[d];
            rem /= a.shape[d];
            off += c * a.strides[d];
        }
        dst[i] = src[off];
    }
}
TOC_EXPORT int toc_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape,
                                const int64_t *src_strides, int dtype) {
    TOC_CHECK(ndim >= 0 && ndim <= 8, TO_ERR_INVALID_ARGUMENT, "toc_copy_strided: ndim %d", ndim);
    TOC_CHECK(ndim == 0 || (shape && src_strides), TO_ERR_INVALID_ARGUMENT,
              "toc_copy_strided: NULL shape/strides");
    StridedArgs a;
    a.ndim = ndim;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        TOC_CHECK(shape[d] >= 0, TO_ERR_INVALID_ARGUMENT, "toc_copy_strided: negative shape");
        a.shape[d] = shape[d];
        a.strides[d] = src_strides[d];
        n *= shape[d];
    }
    int64_t es = to_dtype_size_cuda(dtype);
    TOC_CHECK(es > 0, TO_ERR_DTYPE, "toc_copy_strided: dtype %d", dtype);
    if (n == 0) return TO_OK;
    TOC_CHECK(src && dst, TO_ERR_INVALID_ARGUMENT, "toc_copy_strided: NULL pointer");
    TOC_READY();
    unsigned g = toc_grid(n, 256);
    if (es == 1) TOC_CUDA((toc_launch(copy_strided_kernel<uint8_t>, dim3(g), dim3(256), 0, (const uint8_t *)src,
        (uint8_t *)dst, n, a)), "copy_strided_kernel");
    else if (es == 2) TOC_CUDA((toc_launch(copy_strided_kernel<uint16_t>, dim3(g), dim3(256), 0,
        (const uint16_t *)src, (uint16_t *)dst, n, a)), "copy_strided_kernel");
    else if (es == 4) TOC_CUDA((toc_launch(copy_strided_kernel<uint32_t>, dim3(g), dim3(256), 0,
        (const uint32_t *)src, (uint32_t *)dst, n, a)), "copy_strided_kernel");
    else TOC_CUDA((toc_launch(copy_strided_kernel<uint64_t>, dim3(g), dim3(256), 0, (const uint64_t *)src,
        (uint64_t *)dst, n, a)), "copy_strided_kernel");
    return TO_OK;
}

/* ---- where ---- */
template <typename T>
__global__ void where_kernel(const uint8_t *m, const T *a, const T *b, T *o, int64_t n) {
    GRID_STRIDE(i, n) o[i] = m[i] ? a[i] : b[i];
}
TOC_EXPORT int toc_where(const void *mask, const void *a, const void *b, void *out, int64_t n,
                         int dtype) {
    TOC_CHECK(n >= 0, TO_ERR_INVALID_ARGUMENT, "toc_where: n");
    int64_t es = to_dtype_size_cuda(dtype);
    TOC_CHECK(es == 1 || es == 2 || es == 4 || es == 8, TO_ERR_DTYPE, "toc_where: dtype %d", dtype);
    if (n == 0) return TO_OK;
    TOC_CHECK(mask && a && b && out, TO_ERR_INVALID_ARGUMENT, "toc_where: NULL pointer");
    TOC_READY();
    unsigned g = toc_grid(n, 256);
    cudaStream_t s = toc_stream();
    const uint8_t *m = (const uint8_t *)mask;
    if (es == 1) where_kernel<uint8_t><<<g, 256, 0, s>>>(m, (const uint8_t *)a, (const uint8_t *)b, (uint8_t *)out, n);
    else if (es == 2) where_kernel<uint16_t><<<g, 256, 0, s>>>(m, (const uint16_t *)a, (const uint16_t *)b, (uint16_t *)out, n);
    else if (es == 4) where_kernel<uint32_t><<<g, 256, 0, s>>>(m, (const uint32_t *)a, (const uint32_t *)b, (uint32_t *)out, n);
    else where_kernel<uint64_t><<<g, 256, 0, s>>>(m, (const uint64_t *)a, (const uint64_t *)b, (uint64_t *)out, n);
    TOC_LAUNCHED("where_kernel");
    return TO_OK;
}

/* ---- embedding ----
 * The ids live on the device, so an id outside [0, vocab) cannot be reported without a
 * synchronisation: its row is written as zeros (Python validates ids before calling). */
__global__ void embedding_kernel(const void *ids, int idt, int64_t n, const void *table, int tdt,
                                 int64_t vocab, int64_t dim, void *out, int odt) {
    pdl_enter(); /* launched by toc_launch */
    int64_t r = blockIdx.x;
    if (r >= n) return;
    int64_t id = idt == TO_I32 ? ((const int32_t *)ids)[r] : ((const int64_t *)ids)[r];
    bool ok = id >= 0 && id < vocab;
    if (tdt == TO_BF16 && odt == TO_BF16 && ok && (dim % 8) == 0 && (((uintptr_t)table | (uintptr_t)out) & 15) == 0) {
        const uint4 *src = (const uint4 *)((const uint16_t *)table + id * dim);
        uint4 *dst = (uint4 *)((uint16_t *)out + r * dim);
        for (int64_t j = threadIdx.x; j < dim / 8; j += blockDim.x) dst[j] = src[j];
        return;
    }
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x)
        stf(out, odt, r * dim + j, ok ? ldf(table, tdt, id * dim + j) : 0.0f);
}
TOC_EXPORT int toc_embedding(const void *ids, int ids_dtype, int64_t n, const void *table,
                             int table_dtype, int64_t vocab, int64_t dim, void *out, int out_dtype) {
    TOC_CHECK(n >= 0 && vocab >= 0 && dim >= 0, TO_ERR_INVALID_ARGUMENT, "toc_embedding: sizes");
    TOC_CHECK(ids_dtype == TO_I32 || ids_dtype == TO_I64, TO_ERR_DTYPE, "toc_embedding: ids dtype %d",
              ids_dtype);
    TOC_CHECK(toc_is_wt(table_dtype) && toc_is_act(out_dtype), TO_ERR_DTYPE,
              "toc_embedding: table dtype %d, out dtype %d", table_dtype, out_dtype);
    if (n == 0 || dim == 0) return TO_OK;
    TOC_CHECK(ids && table && out, TO_ERR_INVALID_ARGUMENT, "toc_embedding: NULL pointer");
    TOC_CHECK(n <= 0x7fffffff, TO_ERR_INVALID_ARGUMENT, "toc_embedding: too many ids");
    TOC_READY();
    TOC_CUDA((toc_launch(embedding_kernel, dim3((unsigned)n), dim3(128), 0, ids, ids_dtype, n, table, table_dtype,
        vocab, dim, out, out_dtype)), "embedding_kernel");
    return TO_OK;
}
