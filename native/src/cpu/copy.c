/* Strided-to-contiguous copy (materialises views: transpose, narrow, permute). */
#include "../common/internal.h"

#define TO_MAX_DIMS 8

TO_API int to_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape,
                           const int64_t *src_strides, int dtype) {
    TO_CHECK_PTR(src);
    TO_CHECK_PTR(dst);
    TO_CHECK(ndim >= 0 && ndim <= TO_MAX_DIMS, TO_ERR_SHAPE, "to_copy_strided: ndim %d not in [0, %d]",
             ndim, TO_MAX_DIMS);
    TO_CHECK(ndim == 0 || (shape && src_strides), TO_ERR_INVALID_ARGUMENT,
             "to_copy_strided: shape/strides are NULL");
    int64_t es = to_dtype_size(dtype);
    TO_CHECK(es > 0, TO_ERR_DTYPE, "to_copy_strided: unknown dtype %d", dtype);
    int64_t total = 1;
    for (int d = 0; d < ndim; d++) {
        TO_CHECK(shape[d] >= 0, TO_ERR_SHAPE, "to_copy_strided: negative size in dim %d", d);
        total *= shape[d];
    }
    if (total == 0) return TO_OK;
    const char *s = src;
    char *o = dst;
    /* innermost contiguous run */
    int64_t run = 1;
    int inner = ndim;
    while (inner > 0 && src_strides[inner - 1] == run) {
        run *= shape[inner - 1];
        inner--;
    }
    size_t run_bytes = (size_t)(run * es);
    int64_t idx[TO_MAX_DIMS] = {0};
    int64_t outer = total / run;
    for (int64_t i = 0; i < outer; i++) {
        int64_t off = 0;
        for (int d = 0; d < inner; d++) off += idx[d] * src_strides[d];
        memcpy(o, s + off * es, run_bytes);
        o += run_bytes;
        for (int d = inner - 1; d >= 0; d--) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
    }
    return TO_OK;
}
