/* Selection and indexing ops: argmax (generic, AVX2, AVX-512), top-k (bounded heap), cumsum,
 * where and embedding lookup (generic C). */
#ifndef SELECT_PASS
#include <stdlib.h>

#include "../common/internal.h"

static inline float ldv(const void *p, int d, int64_t i) {
    switch (d) {
    case TO_F32: return ((const float *)p)[i];
    case TO_BF16: return to_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return to_f16_to_f32(((const uint16_t *)p)[i]);
    }
}
static inline void stv(void *p, int d, int64_t i, float v) {
    if (d == TO_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = to_f32_to_bf16(v);
}
static inline void st_idx(void *p, int d, int64_t i, int64_t v) {
    if (d == TO_I32) ((int32_t *)p)[i] = (int32_t)v;
    else ((int64_t *)p)[i] = v;
}
static int is_act(int d) { return d == TO_F32 || d == TO_BF16; }

/* ---------------- argmax ---------------- */
static int64_t argmax_row_generic(const void *x, int xd, int64_t d) {
    int64_t best = 0;
    float m = ldv(x, xd, 0);
    if (m != m) return 0;
    for (int64_t j = 1; j < d; j++) {
        float v = ldv(x, xd, j);
        if (v != v) return j;
        if (v > m) {
            m = v;
            best = j;
        }
    }
    return best;
}

#define SELECT_PASS 1
#define TO_PASS_FILE "select.c"
#include "isa_passes.inc"
#undef TO_PASS_FILE
#undef SELECT_PASS

TO_API int to_argmax(const void *x, void *idx, int64_t rows, int64_t dim, int x_dtype,
                     int idx_dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(idx);
    TO_CHECK_NONNEG(rows);
    TO_CHECK(dim >= 1, TO_ERR_SHAPE, "to_argmax: dim must be >= 1 (got %lld)", (long long)dim);
    TO_CHECK(is_act(x_dtype), TO_ERR_DTYPE, "to_argmax: x dtype %d (f32 or bf16 expected)", x_dtype);
    TO_CHECK(idx_dtype == TO_I32 || idx_dtype == TO_I64, TO_ERR_DTYPE,
             "to_argmax: index dtype %d (int32 or int64 expected)", idx_dtype);
    TO_CHECK(idx_dtype == TO_I64 || dim <= INT32_MAX, TO_ERR_SHAPE, "to_argmax: dim too large for int32");
    int64_t (*fn)(const void *, int, int64_t) = argmax_row_generic;
    const char *kname = "generic";
    uint32_t isa = to_isa();
    if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW)) {
        fn = argmax_row_avx512;
        kname = "avx512";
    } else if (isa & TO_ISA_AVX2) {
        fn = argmax_row_avx2;
        kname = "avx2";
    }
    to_report_kernel("argmax", kname);
    size_t es = x_dtype == TO_F32 ? 4 : 2;
    for (int64_t r = 0; r < rows; r++)
        st_idx(idx, idx_dtype, r, fn((const char *)x + (size_t)(r * dim) * es, x_dtype, dim));
    return TO_OK;
}

/* ---------------- top-k ---------------- */
typedef struct {
    float v;
    int64_t i;
} vi_pair;

/* a ranks before b: larger value, or equal value and lower index. */
static inline int better(vi_pair a, vi_pair b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

/* Min-heap on `better` (the worst element at the root). */
static void sift_down(vi_pair *h, int64_t n, int64_t p) {
    for (;;) {
        int64_t l = 2 * p + 1, r = l + 1, w = p;
        if (l < n && better(h[w], h[l])) w = l;
        if (r < n && better(h[w], h[r])) w = r;
        if (w == p) return;
        vi_pair t = h[p];
        h[p] = h[w];
        h[w] = t;
        p = w;
    }
}
static void sift_up(vi_pair *h, int64_t c) {
    while (c > 0) {
        int64_t p = (c - 1) / 2;
        if (!better(h[p], h[c])) return;
        vi_pair t = h[p];
        h[p] = h[c];
        h[c] = t;
        c = p;
    }
}

TO_API int to_topk(const void *x, void *values, void *idx, int64_t rows, int64_t dim, int64_t k,
                   int x_dtype, int idx_dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(values);
    TO_CHECK_PTR(idx);
    TO_CHECK_NONNEG(rows);
    TO_CHECK(k >= 1 && k <= dim, TO_ERR_SHAPE, "to_topk: k = %lld must be in [1, dim = %lld]",
             (long long)k, (long long)dim);
    TO_CHECK(is_act(x_dtype), TO_ERR_DTYPE, "to_topk: x dtype %d (f32 or bf16 expected)", x_dtype);
    TO_CHECK(idx_dtype == TO_I32 || idx_dtype == TO_I64, TO_ERR_DTYPE,
             "to_topk: index dtype %d (int32 or int64 expected)", idx_dtype);
    TO_CHECK(idx_dtype == TO_I64 || dim <= INT32_MAX, TO_ERR_SHAPE, "to_topk: dim too large for int32");
    if (rows == 0) return TO_OK;
    vi_pair *h = malloc((size_t)k * sizeof *h);
    TO_CHECK(h != NULL, TO_ERR_OUT_OF_MEMORY, "to_topk: cannot allocate %lld entries", (long long)k);
    to_report_kernel("topk", "generic (heap)");
    size_t es = x_dtype == TO_F32 ? 4 : 2;
    for (int64_t r = 0; r < rows; r++) {
        const void *row = (const char *)x + (size_t)(r * dim) * es;
        int64_t n = 0;
        for (int64_t j = 0; j < dim; j++) {
            float v = ldv(row, x_dtype, j);
            if (v != v) {
                free(h);
                return to_set_error(TO_ERR_INVALID_ARGUMENT, "to_topk: NaN at row %lld, index %lld",
                                    (long long)r, (long long)j);
            }
            if (n < k) {
                h[n] = (vi_pair){v, j};
                sift_up(h, n++);
            } else if (v > h[0].v) { /* equal values keep the earlier (lower) index */
                h[0] = (vi_pair){v, j};
                sift_down(h, k, 0);
            }
        }
        /* heap sort: repeatedly move the worst to the end -> best first */
        for (int64_t m = k; m > 1; m--) {
            vi_pair t = h[0];
            h[0] = h[m - 1];
            h[m - 1] = t;
            sift_down(h, m - 1, 0);
        }
        for (int64_t j = 0; j < k; j++) {
            stv(values, x_dtype, r * k + j, h[j].v);
            st_idx(idx, idx_dtype, r * k + j, h[j].i);
        }
    }
    free(h);
    return TO_OK;
}

/* ---------------- cumsum ---------------- */
TO_API int to_cumsum(const void *x, void *out, int64_t rows, int64_t dim, int x_dtype,
                     int out_dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(rows);
    TO_CHECK_NONNEG(dim);
    TO_CHECK(is_act(x_dtype) && is_act(out_dtype), TO_ERR_DTYPE,
             "to_cumsum: dtypes %d -> %d (f32 or bf16 expected)", x_dtype, out_dtype);
    to_report_kernel("cumsum", "generic");
    for (int64_t r = 0; r < rows; r++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < dim; j++) {
            acc += ldv(x, x_dtype, r * dim + j);
            stv(out, out_dtype, r * dim + j, acc);
        }
    }
    return TO_OK;
}

/* ---------------- where ---------------- */
TO_API int to_where(const void *mask, const void *a, const void *b, void *out, int64_t n,
                    int dtype) {
    TO_CHECK_PTR(mask);
    TO_CHECK_PTR(a);
    TO_CHECK_PTR(b);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(n);
    int64_t es = to_dtype_size(dtype);
    TO_CHECK(es == 1 || es == 2 || es == 4 || es == 8, TO_ERR_DTYPE, "to_where: unsupported dtype %d",
             dtype);
    const uint8_t *m = mask;
    to_report_kernel("where", "generic");
    switch (es) {
#define WHERE_CASE(SZ, T)                                                                          \
    case SZ: {                                                                                     \
        const T *pa = a, *pb = b;                                                                  \
        T *po = out;                                                                               \
        for (int64_t i = 0; i < n; i++) po[i] = m[i] ? pa[i] : pb[i];                              \
        break;                                                                                     \
    }
        WHERE_CASE(1, uint8_t)
        WHERE_CASE(2, uint16_t)
        WHERE_CASE(4, uint32_t)
        WHERE_CASE(8, uint64_t)
#undef WHERE_CASE
    }
    return TO_OK;
}

/* ---------------- embedding ---------------- */
TO_API int to_embedding(const void *ids, int ids_dtype, int64_t n, const void *table,
                        int table_dtype, int64_t vocab, int64_t dim, void *out, int out_dtype) {
    TO_CHECK_PTR(ids);
    TO_CHECK_PTR(table);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(n);
    TO_CHECK_NONNEG(vocab);
    TO_CHECK_NONNEG(dim);
    TO_CHECK(ids_dtype == TO_I32 || ids_dtype == TO_I64, TO_ERR_DTYPE,
             "to_embedding: ids dtype %d (int32 or int64 expected)", ids_dtype);
    TO_CHECK(table_dtype == TO_F32 || table_dtype == TO_BF16 || table_dtype == TO_F16, TO_ERR_DTYPE,
             "to_embedding: table dtype %d (f32, bf16 or f16 expected)", table_dtype);
    TO_CHECK(is_act(out_dtype), TO_ERR_DTYPE, "to_embedding: out dtype %d (f32 or bf16 expected)",
             out_dtype);
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids_dtype == TO_I32 ? ((const int32_t *)ids)[i] : ((const int64_t *)ids)[i];
        TO_CHECK(id >= 0 && id < vocab, TO_ERR_INVALID_ARGUMENT,
                 "to_embedding: id %lld at position %lld is out of range [0, %lld)", (long long)id,
                 (long long)i, (long long)vocab);
    }
    to_report_kernel("embedding", "generic");
    size_t tes = table_dtype == TO_F32 ? 4 : 2, oes = out_dtype == TO_F32 ? 4 : 2;
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids_dtype == TO_I32 ? ((const int32_t *)ids)[i] : ((const int64_t *)ids)[i];
        const char *src = (const char *)table + (size_t)(id * dim) * tes;
        char *dst = (char *)out + (size_t)(i * dim) * oes;
        if (table_dtype == out_dtype) memcpy(dst, src, (size_t)dim * tes);
        else
            for (int64_t j = 0; j < dim; j++) stv(dst, out_dtype, j, ldv(src, table_dtype, j));
    }
    return TO_OK;
}

#else /* ---------------- per-ISA pass ---------------- */
#include "ops_vec.inc"

/* Pass 1: max and NaN detection; pass 2: first index equal to the max. */
static VTGT int64_t K(argmax_row)(const void *x, int xd, int64_t d) {
    K(vf) vm = K(splat)(-INFINITY);
    K(vi) nan = {0};
    int64_t j;
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
    if (anynan) return argmax_row_generic(x, xd, d);
    float m = K(hmax)(vm);
    for (j = 0; j + VW <= d; j += VW) {
        K(vi) eq = K(ld)(x, xd, j) == m;
        int hit = 0;
        for (int l = 0; l < VW; l++) hit |= eq[l] != 0;
        if (hit)
            for (int l = 0; l < VW; l++)
                if (eq[l]) return j + l;
    }
    for (; j < d; j++)
        if (ldv(x, xd, j) == m) return j;
    return 0; /* unreachable: m comes from x */
}
#endif
