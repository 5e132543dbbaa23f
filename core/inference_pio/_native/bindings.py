"""Every C prototype of tensor_ops.h bound through ctypes, declared in one place.

Each entry keeps the C prototype as a comment beside its Python declaration. Add new ops here
when they are added to the header; ``declare`` sets ``restype``/``argtypes`` on the library.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    POINTER,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

#: Must equal TO_ABI_VERSION in native/include/tensor_ops.h.
ABI_VERSION = 2

Prototype = tuple[Any, list[Any]]

PROTOTYPES: dict[str, Prototype] = {
    # int to_abi_version(void);
    "to_abi_version": (c_int, []),
    # const char *to_version_string(void);
    "to_version_string": (c_char_p, []),
    # const char *to_last_error(void);
    "to_last_error": (c_char_p, []),
    # void to_clear_error(void);
    "to_clear_error": (None, []),
    # int64_t to_dtype_size(int dtype);
    "to_dtype_size": (c_int64, [c_int]),
    # int to_kernel_report(char *buf, size_t cap);
    "to_kernel_report": (c_int, [c_char_p, c_size_t]),
    # uint32_t to_cpu_features(void);
    "to_cpu_features": (c_uint32, []),
    # int to_set_isa_mask(uint32_t mask);
    "to_set_isa_mask": (c_int, [c_uint32]),
    # int to_set_num_threads(int n);
    "to_set_num_threads": (c_int, [c_int]),
    # int to_get_num_threads(void);
    "to_get_num_threads": (c_int, []),
    # int to_add(const void *a, const void *b, void *out, int64_t n, int dtype);
    "to_add": (c_int, [c_void_p, c_void_p, c_void_p, c_int64, c_int]),
    # int to_mul(const void *a, const void *b, void *out, int64_t n, int dtype);
    "to_mul": (c_int, [c_void_p, c_void_p, c_void_p, c_int64, c_int]),
    # int to_cast(const void *src, int src_dtype, void *dst, int dst_dtype, int64_t n);
    "to_cast": (c_int, [c_void_p, c_int, c_void_p, c_int, c_int64]),
    # ---- memory ----
    # int to_alloc(size_t nbytes, void **out);
    "to_alloc": (c_int, [c_size_t, POINTER(c_void_p)]),
    # int to_free(void *ptr);
    "to_free": (c_int, [c_void_p]),
    # int to_memory_stats(int64_t *in_use, int64_t *peak, int64_t *cached);
    "to_memory_stats": (c_int, [POINTER(c_int64), POINTER(c_int64), POINTER(c_int64)]),
    # int to_memory_trim(void);
    "to_memory_trim": (c_int, []),
    # int to_memory_counters(int64_t *reserved, int64_t *cache_limit, int64_t *allocs,
    #                        int64_t *cache_hits);
    "to_memory_counters": (c_int, [POINTER(c_int64)] * 4),
    # int to_memory_set_cache_limit(int64_t bytes);
    "to_memory_set_cache_limit": (c_int, [c_int64]),
    # int to_memory_advise_sparse(void *ptr, size_t nbytes);
    "to_memory_advise_sparse": (c_int, [c_void_p, c_size_t]),
    # ---- copy ----
    # int to_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape,
    #                     const int64_t *src_strides, int dtype);
    "to_copy_strided": (
        c_int,
        [c_void_p, c_void_p, c_int, POINTER(c_int64), POINTER(c_int64), c_int],
    ),
    # ---- matmul ----
    # int to_linear(const void *x, const void *w, const void *bias, void *y, int64_t m, int64_t n,
    #               int64_t k, int64_t ldx, int64_t ldy, int x_dtype, int w_dtype, int bias_dtype,
    #               int y_dtype);
    "to_linear": (
        c_int,
        [
            c_void_p,
            c_void_p,
            c_void_p,
            c_void_p,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int,
            c_int,
            c_int,
            c_int,
        ],
    ),
    # int to_linear_batched(int count, const void *const *xs, const int64_t *ms,
    #                       const int64_t *ldxs, const void *const *ws, void *const *ys,
    #                       const int64_t *ldys, int64_t n, int64_t k, int x_dtype, int w_dtype,
    #                       int y_dtype);
    "to_linear_batched": (
        c_int,
        [
            c_int,
            POINTER(c_void_p),
            POINTER(c_int64),
            POINTER(c_int64),
            POINTER(c_void_p),
            POINTER(c_void_p),
            POINTER(c_int64),
            c_int64,
            c_int64,
            c_int,
            c_int,
            c_int,
        ],
    ),
    # int to_linear_strided_batched(int count, const void *x, int64_t ldx, int64_t sx,
    #                               const void *w, int64_t sw, void *y, int64_t ldy, int64_t sy,
    #                               int64_t m, int64_t n, int64_t k, int x_dtype, int w_dtype,
    #                               int y_dtype);
    "to_linear_strided_batched": (
        c_int,
        [
            c_int,
            c_void_p,
            c_int64,
            c_int64,
            c_void_p,
            c_int64,
            c_void_p,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int,
            c_int,
            c_int,
        ],
    ),
    # int to_linear_group(const void *x, int count, const void *const *ws, const int64_t *ns,
    #                     void *const *ys, const int64_t *ldys, int64_t m, int64_t k, int64_t ldx,
    #                     int x_dtype, int w_dtype, int y_dtype);
    "to_linear_group": (
        c_int,
        [
            c_void_p,
            c_int,
            POINTER(c_void_p),
            POINTER(c_int64),
            POINTER(c_void_p),
            POINTER(c_int64),
            c_int64,
            c_int64,
            c_int64,
            c_int,
            c_int,
            c_int,
        ],
    ),
    # int to_bench_read_bandwidth(int64_t bytes, int threads, double *gbps);
    "to_bench_read_bandwidth": (c_int, [c_int64, c_int, POINTER(c_double)]),
    # int to_bench_bf16_peak(int threads, double *gflops);
    "to_bench_bf16_peak": (c_int, [c_int, POINTER(c_double)]),
    # ---- sampling ----
    # int to_sample(const void *logits, int dtype, int64_t vocab, const int32_t *history_ids,
    #               const int32_t *history_counts, int64_t n_history, float temperature,
    #               int64_t top_k, float top_p, float min_p, float repetition_penalty,
    #               float presence_penalty, float frequency_penalty, uint64_t *rng_state,
    #               int64_t *out_token);
    "to_sample": (
        c_int,
        [
            c_void_p,
            c_int,
            c_int64,
            c_void_p,
            c_void_p,
            c_int64,
            c_float,
            c_int64,
            c_float,
            c_float,
            c_float,
            c_float,
            c_float,
            POINTER(c_uint64),
            POINTER(c_int64),
        ],
    ),
    # int to_fill_random(void *out, int64_t n, int dtype, uint64_t seed, float mean, float std,
    #                    int distribution);
    "to_fill_random": (c_int, [c_void_p, c_int64, c_int, c_uint64, c_float, c_float, c_int]),
    # ---- tokenizer ----
    # int to_tok_create(int pretok, const uint8_t *tokens, int64_t tokens_len,
    #                   const int64_t *offsets, const int32_t *ids, int64_t n_tokens,
    #                   const int32_t *merges, int64_t n_merges, int flags, to_tokenizer **out);
    "to_tok_create": (
        ctypes.c_int,
        [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
        ],
    ),
    # int to_tok_encode(to_tokenizer *tok, const char *text, int64_t len, int32_t *ids,
    #                   int64_t cap, int64_t *n_ids);
    "to_tok_encode": (
        ctypes.c_int,
        [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.POINTER(ctypes.c_int64),
        ],
    ),
    # int to_tok_pretokenize(int pretok, const char *text, int64_t len, int64_t *ends,
    #                        int64_t cap, int64_t *n_pieces);
    "to_tok_pretokenize": (
        ctypes.c_int,
        [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.POINTER(ctypes.c_int64),
        ],
    ),
    # void to_tok_free(to_tokenizer *tok);
    "to_tok_free": (None, [ctypes.c_void_p]),
    # const char *to_tok_unicode_version(void);
    "to_tok_unicode_version": (ctypes.c_char_p, []),
    # ---- attention ----
    # int to_attention(const void *q, const void *k, const void *v, void *out, int64_t tq,
    #                  int64_t nh, int64_t nkv, int64_t hd_qk, int64_t hd_v, int64_t ldq,
    #                  int64_t ldo, int64_t kv_len, int64_t k_head_stride, int64_t k_pos_stride,
    #                  int64_t v_head_stride, int64_t v_pos_stride, int64_t q_pos, int causal,
    #                  const int32_t *cu_seqlens, int64_t n_seqs, float scale, int q_dtype,
    #                  int kv_dtype);
    "to_attention": (
        ctypes.c_int,
        [ctypes.c_void_p] * 4
        + [ctypes.c_int64] * 13
        + [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_float,
            ctypes.c_int,
            ctypes.c_int,
        ],
    ),
    # int to_kv_cache_append(const void *k_new, const void *v_new, void *k_cache, void *v_cache,
    #                        int64_t t, int64_t nkv, int64_t hd_k, int64_t hd_v, int64_t max_len,
    #                        int64_t pos, int src_dtype, int cache_dtype);
    "to_kv_cache_append": (
        ctypes.c_int,
        [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 6 + [ctypes.c_int, ctypes.c_int],
    ),
    # ---- moe ----
    # int to_moe_route_softmax(const void *logits, int64_t t, int64_t e, int64_t k,
    #                          int renormalize, int logits_dtype, int32_t *idx, void *weights,
    #                          int weights_dtype);
    "to_moe_route_softmax": (
        ctypes.c_int,
        [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ],
    ),
    # int to_moe_route_sigmoid(const void *logits, const float *bias, int64_t t, int64_t e,
    #                          int64_t k, int64_t n_group, int64_t topk_group, int renormalize,
    #                          float scaling, int logits_dtype, int32_t *idx, float *weights);
    "to_moe_route_sigmoid": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p]
        + [ctypes.c_int64] * 5
        + [ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p],
    ),
    # int to_moe_gather_rows(const void *src, const int32_t *idx, void *dst, int64_t n_src,
    #                        int64_t n_idx, int64_t d, int dtype);
    "to_moe_gather_rows": (
        ctypes.c_int,
        [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int],
    ),
    # int to_moe_scatter_add(const void *src, const int32_t *idx, const void *weights, void *dst,
    #                        int64_t n, int64_t n_dst, int64_t d, int src_dtype,
    #                        int weights_dtype, int dst_dtype, int round_products);
    "to_moe_scatter_add": (
        ctypes.c_int,
        [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 4,
    ),
    # int to_moe_group_by_expert(const int32_t *idx, int64_t n, int64_t e, int32_t *counts,
    #                            int32_t *offsets, int32_t *order);
    "to_moe_group_by_expert": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3,
    ),
    # ---- conv ----
    # int to_causal_conv1d(const void *x, const void *w, void *state, void *y, int64_t t,
    #                      int64_t c, int64_t k, int silu, int x_dtype, int w_dtype,
    #                      int state_dtype);
    "to_causal_conv1d": (
        ctypes.c_int,
        [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 4,
    ),
    # int to_gated_delta_rule(const void *q, const void *k, const void *v, const void *a,
    #                         const void *b, const float *decay, const float *dt_bias,
    #                         float *state, void *out, int64_t t, int64_t nk, int64_t nv,
    #                         int64_t dk, int64_t dv, int64_t ldq, int64_t ldk, int64_t ldv,
    #                         int64_t ldab, int64_t ldo, int x_dtype, int out_dtype);
    "to_gated_delta_rule": (
        ctypes.c_int,
        [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 10 + [ctypes.c_int] * 2,
    ),
    # int to_patchify(const void *image, void *out, int64_t c, int64_t h, int64_t w,
    #                 int64_t patch, int64_t temporal, int64_t merge, int in_dtype,
    #                 int out_dtype);
    "to_patchify": (
        ctypes.c_int,
        [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 6 + [ctypes.c_int] * 2,
    ),
    # ---- image ----
    # int to_image_resize(const void *src, void *dst, int64_t h, int64_t w, int64_t c,
    #                     int64_t out_h, int64_t out_w, int filter, int dtype);
    "to_image_resize": (
        ctypes.c_int,
        [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 5 + [ctypes.c_int] * 2,
    ),
    # int to_image_normalize(const uint8_t *src, void *dst, int64_t h, int64_t w, int64_t c,
    #                        const float *mean, const float *std, double rescale, int out_dtype);
    "to_image_normalize": (
        ctypes.c_int,
        [ctypes.c_void_p] * 2
        + [ctypes.c_int64] * 3
        + [ctypes.c_void_p] * 2
        + [ctypes.c_double, ctypes.c_int],
    ),
    # ---- safetensors ----
    # int to_st_open(const char *path, to_st_file **out);
    "to_st_open": (c_int, [c_char_p, POINTER(c_void_p)]),
    # int to_st_retain(to_st_file *f);
    "to_st_retain": (c_int, [c_void_p]),
    # int to_st_close(to_st_file *f);
    "to_st_close": (c_int, [c_void_p]),
    # int to_st_count(const to_st_file *f, int64_t *count);
    "to_st_count": (c_int, [c_void_p, POINTER(c_int64)]),
    # int to_st_tensor_info(const to_st_file *f, int64_t index, const char **name, int *dtype,
    #                       int *ndim, int64_t *shape, const void **data, int64_t *nbytes);
    "to_st_tensor_info": (
        c_int,
        [
            c_void_p,
            c_int64,
            POINTER(c_char_p),
            POINTER(c_int),
            POINTER(c_int),
            POINTER(c_int64),
            POINTER(c_void_p),
            POINTER(c_int64),
        ],
    ),
    # int to_st_find(const to_st_file *f, const char *name, int64_t *index);
    "to_st_find": (c_int, [c_void_p, c_char_p, POINTER(c_int64)]),
    # int to_st_metadata_count(const to_st_file *f, int64_t *count);
    "to_st_metadata_count": (c_int, [c_void_p, POINTER(c_int64)]),
    # int to_st_metadata_item(const to_st_file *f, int64_t index, const char **key,
    #                         const char **value);
    "to_st_metadata_item": (c_int, [c_void_p, c_int64, POINTER(c_char_p), POINTER(c_char_p)]),
    # int to_st_file_info(const to_st_file *f, int64_t *file_size, int64_t *header_size,
    #                     int64_t *data_size);
    "to_st_file_info": (c_int, [c_void_p, POINTER(c_int64), POINTER(c_int64), POINTER(c_int64)]),
    # int to_st_prefetch(const to_st_file *f, int64_t offset, int64_t length, int mode);
    "to_st_prefetch": (c_int, [c_void_p, c_int64, c_int64, c_int]),
    # int to_st_release(const to_st_file *f, const void *ptr, int64_t nbytes);
    "to_st_release": (c_int, [c_void_p, c_void_p, c_int64]),
    # ---- norm ----
    # int to_rms_norm(const void *x, const void *w, const void *z, void *out, int64_t outer,
    #                 int64_t inner, int64_t dim, int64_t x_so, int64_t x_si, int64_t z_so,
    #                 int64_t z_si, int64_t o_so, int64_t o_si, float eps, int variant,
    #                 int x_dtype, int w_dtype, int out_dtype);
    # int to_add_rms_norm(void *x, const void *delta, const void *w, void *out, int64_t rows,
    #                     int64_t dim, float eps, int variant, int x_dtype, int w_dtype,
    #                     int out_dtype);
    "to_add_rms_norm": (
        c_int,
        [c_void_p, c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_float] + [c_int] * 4,
    ),
    # int to_qk_norm_rope(void *q, void *k, const void *q_w, const void *k_w, const void *cos,
    #                     const void *sin, int64_t T, int64_t nh, int64_t nkv, int64_t hd,
    #                     int64_t rot_dim, int64_t q_st, int64_t k_st, float eps, int variant,
    #                     int mode, int x_dtype, int w_dtype, int table_dtype);
    "to_qk_norm_rope": (
        c_int,
        [c_void_p] * 6 + [c_int64] * 7 + [c_float] + [c_int] * 5,
    ),
    "to_rms_norm": (
        c_int,
        [
            c_void_p,
            c_void_p,
            c_void_p,
            c_void_p,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_float,
            c_int,
            c_int,
            c_int,
            c_int,
        ],
    ),
    # int to_layer_norm(const void *x, const void *w, const void *b, void *out, int64_t rows,
    #                   int64_t dim, int64_t ldx, int64_t ldo, float eps, int x_dtype,
    #                   int w_dtype, int out_dtype);
    "to_layer_norm": (
        c_int,
        [
            c_void_p,
            c_void_p,
            c_void_p,
            c_void_p,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_float,
            c_int,
            c_int,
            c_int,
        ],
    ),
    # ---- rope ----
    # int to_rope_cache(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
    #                   float theta, void *cos, void *sin, int out_dtype);
    "to_rope_cache": (
        c_int,
        [c_void_p, c_int, c_int64, c_int64, c_float, c_void_p, c_void_p, c_int],
    ),
    # int to_rope_cache_mrope(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
    #                         float theta, int64_t sec_t, int64_t sec_h, int64_t sec_w, void *cos,
    #                         void *sin, int out_dtype);
    "to_rope_cache_mrope": (
        c_int,
        [
            c_void_p,
            c_int,
            c_int64,
            c_int64,
            c_float,
            c_int64,
            c_int64,
            c_int64,
            c_void_p,
            c_void_p,
            c_int,
        ],
    ),
    # int to_rope_cache_2d(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
    #                      float theta, void *cos, void *sin, int out_dtype);
    "to_rope_cache_2d": (
        c_int,
        [c_void_p, c_int, c_int64, c_int64, c_float, c_void_p, c_void_p, c_int],
    ),
    # int to_rope_apply(void *x, const void *cos, const void *sin, int64_t T, int64_t heads,
    #                   int64_t head_dim, int64_t rot_dim, int64_t stride_t, int64_t stride_h,
    #                   int mode, int x_dtype, int table_dtype);
    "to_rope_apply": (
        c_int,
        [
            c_void_p,
            c_void_p,
            c_void_p,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int,
            c_int,
            c_int,
        ],
    ),
    # int to_rope_cache_freqs(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
    #                         const float *inv_freq, float scale, void *cos, void *sin,
    #                         int out_dtype);
    "to_rope_cache_freqs": (
        c_int,
        [c_void_p, c_int, c_int64, c_int64, c_void_p, c_float, c_void_p, c_void_p, c_int],
    ),
    # ---- elementwise (extended) ----
    # int to_scale(const void *x, void *out, int64_t n, float s, int dtype);
    "to_scale": (c_int, [c_void_p, c_void_p, c_int64, c_float, c_int]),
    # int to_silu(const void *x, void *out, int64_t n, int dtype);
    "to_silu": (c_int, [c_void_p, c_void_p, c_int64, c_int]),
    # int to_sigmoid(const void *x, void *out, int64_t n, int dtype);
    "to_sigmoid": (c_int, [c_void_p, c_void_p, c_int64, c_int]),
    # int to_exp(const void *x, void *out, int64_t n, int dtype);
    "to_exp": (c_int, [c_void_p, c_void_p, c_int64, c_int]),
    # int to_softplus(const void *x, void *out, int64_t n, int dtype);
    "to_softplus": (c_int, [c_void_p, c_void_p, c_int64, c_int]),
    # int to_gelu(const void *x, void *out, int64_t n, int approximate, int dtype);
    "to_gelu": (c_int, [c_void_p, c_void_p, c_int64, c_int, c_int]),
    # int to_swiglu(const void *gate, const void *up, void *out, int64_t rows, int64_t inter,
    #               int64_t ld_gate, int64_t ld_up, int64_t ld_out, int dtype);
    "to_swiglu": (
        c_int,
        [c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64, c_int],
    ),
    # int to_add_row(const void *x, const void *bias, void *out, int64_t rows, int64_t dim,
    #                int dtype, int bias_dtype);
    "to_add_row": (c_int, [c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int, c_int]),
    # int to_mul_rows(const void *x, const void *s, void *out, int64_t rows, int64_t dim,
    #                 int dtype, int s_dtype);
    "to_mul_rows": (c_int, [c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int, c_int]),
    # ---- softmax ----
    # int to_softmax(const void *x, void *out, int64_t rows, int64_t dim, int64_t ldx,
    #                int64_t ldo, int log_, int x_dtype, int out_dtype);
    "to_softmax": (
        c_int,
        [c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int, c_int, c_int],
    ),
    # ---- select ----
    # int to_argmax(const void *x, void *idx, int64_t rows, int64_t dim, int x_dtype,
    #               int idx_dtype);
    "to_argmax": (c_int, [c_void_p, c_void_p, c_int64, c_int64, c_int, c_int]),
    # int to_topk(const void *x, void *values, void *idx, int64_t rows, int64_t dim, int64_t k,
    #             int x_dtype, int idx_dtype);
    "to_topk": (c_int, [c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int, c_int]),
    # int to_cumsum(const void *x, void *out, int64_t rows, int64_t dim, int x_dtype,
    #               int out_dtype);
    "to_cumsum": (c_int, [c_void_p, c_void_p, c_int64, c_int64, c_int, c_int]),
    # int to_where(const void *mask, const void *a, const void *b, void *out, int64_t n,
    #              int dtype);
    "to_where": (c_int, [c_void_p, c_void_p, c_void_p, c_void_p, c_int64, c_int]),
    # int to_embedding(const void *ids, int ids_dtype, int64_t n, const void *table,
    #                  int table_dtype, int64_t vocab, int64_t dim, void *out, int out_dtype);
    "to_embedding": (
        c_int,
        [c_void_p, c_int, c_int64, c_void_p, c_int, c_int64, c_int64, c_void_p, c_int],
    ),
    # ---- fp8 block-scaled weights ----
    # int to_fp8_dequant(const uint8_t *w, const float *scale, int64_t n, int64_t k,
    #                    int64_t block_n, int64_t block_k, void *out, int out_dtype);
    "to_fp8_dequant": (
        c_int,
        [c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64, c_void_p, c_int],
    ),
    # int to_linear_fp8(const void *x, const uint8_t *w, const float *scale, const void *bias,
    #                   void *y, int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy,
    #                   int64_t block_n, int64_t block_k, int x_dtype, int bias_dtype,
    #                   int y_dtype);
    "to_linear_fp8": (
        c_int,
        [c_void_p] * 5 + [c_int64] * 7 + [c_int] * 3,
    ),
    # int to_fp8_quant(const void *w, int w_dtype, int64_t n, int64_t k, int64_t block_n,
    #                  int64_t block_k, uint8_t *out, float *scale_inv);
    "to_fp8_quant": (
        c_int,
        [c_void_p, c_int, c_int64, c_int64, c_int64, c_int64, c_void_p, c_void_p],
    ),
    # ---- structured outputs: token masks ----
    # int to_mask_logits(const void *x, void *out, const uint32_t *mask, int64_t rows,
    #                    int64_t vocab, int64_t mask_words, int dtype);
    "to_mask_logits": (c_int, [c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int]),
}


def declare(library: ctypes.CDLL) -> list[str]:
    """Sets restype and argtypes of every prototype on ``library``.

    Returns the names the library does not export (a stale ``INFERENCE_PIO_LIB`` build); calling
    one of those raises AttributeError naming it. A test checks a fresh build exports them all.
    """
    missing = []
    for name, (restype, argtypes) in PROTOTYPES.items():
        try:
            fn = getattr(library, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    return missing
