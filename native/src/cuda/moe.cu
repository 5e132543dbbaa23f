/* MoE routing helpers on the device (semantics of src/cpu/moe.c): softmax top-k and sigmoid
 * noaux_tc routers, row gather, weighted scatter-add, grouping of routing entries by expert.
 *
 * Indices live in device memory, so they are checked by the kernels: an index outside its range
 * is never followed (the row is skipped, or written as zeros), and it raises a flag that the
 * entry point reads back after the launch and reports as TO_ERR_INVALID_ARGUMENT. While the
 * stream is being captured into a CUDA graph the read-back is left out (no synchronisation is
 * allowed there); the kernels stay in bounds either way. */
#include "common.cuh"
#include "moe.cuh"

#define MOE_MAX_E 4096 /* experts per router row (shared memory) */
#define MOE_MAX_K 1024

__device__ int moe_bad_index; /* set by a kernel that met an index outside its range */

/* Reads back and clears the flag: TO_OK, or the error naming `what`. */
static int moe_check_indices(const char *what) {
    cudaStream_t s = toc_stream();
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    TOC_CUDA(cudaStreamIsCapturing(s, &cap), "cudaStreamIsCapturing");
    if (cap != cudaStreamCaptureStatusNone) return TO_OK;
    int bad = 0;
    TOC_CUDA(cudaMemcpyFromSymbolAsync(&bad, moe_bad_index, sizeof bad, 0, cudaMemcpyDeviceToHost, s),
             "cudaMemcpyFromSymbolAsync");
    TOC_CUDA(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    if (bad) {
        const int zero = 0;
        TOC_CUDA(cudaMemcpyToSymbolAsync(moe_bad_index, &zero, sizeof zero, 0, cudaMemcpyHostToDevice, s),
                 "cudaMemcpyToSymbolAsync");
        TOC_CUDA(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        return toc_set_error(TO_ERR_INVALID_ARGUMENT, "%s: an index lies outside its range", what);
    }
    return TO_OK;
}

/* ---- softmax top-k router: one block per row; the top k by one warp (the CPU's choice and
 * order: ties keep the lower id), the renormalisation by one thread in the CPU's order ---- */
__global__ void __launch_bounds__(256) moe_route_softmax_kernel(const void *logits, int64_t e, int k, int renorm,
                                                                int ldt, int32_t *idx, void *w, int wdt) {
    pdl_enter(); /* launched by toc_launch */
    extern __shared__ float sm[]; /* p[e], vals[k] */
    __shared__ double redd[32];
    __shared__ float redf[33];
    float *p = sm, *vals = sm + e;
    __shared__ int32_t ids_s[MOE_MAX_K];
    const int64_t r = blockIdx.x;
    float mx = -INFINITY;
    for (int64_t x = threadIdx.x; x < e; x += blockDim.x) {
        p[x] = ldf(logits, ldt, r * e + x);
        mx = fmaxf(mx, p[x]);
    }
    moe_softmax_select(p, e, k, renorm != 0, mx, redf, redd, vals, ids_s);
    if (threadIdx.x == 0) {
        for (int j = 0; j < k; j++) {
            idx[r * k + j] = ids_s[j];
            if (wdt == TO_F32)
                ((float *)w)[r * k + j] = vals[j];
            else
                ((uint16_t *)w)[r * k + j] = f2bf(vals[j]);
        }
    }
}

TOC_EXPORT int toc_moe_route_softmax(const void *logits, int64_t t, int64_t e, int64_t k, int renormalize,
                                     int logits_dtype, int32_t *idx, void *weights, int weights_dtype) {
    TOC_CHECK(t >= 0, TO_ERR_INVALID_ARGUMENT, "toc_moe_route_softmax: t is negative");
    TOC_CHECK(e >= 1 && k >= 1 && k <= e && k <= MOE_MAX_K, TO_ERR_SHAPE,
              "toc_moe_route_softmax: need 1 <= k <= e and k <= 1024 (k=%lld, e=%lld)", (long long)k,
              (long long)e);
    TOC_CHECK(e <= MOE_MAX_E, TO_ERR_UNSUPPORTED, "toc_moe_route_softmax: at most %d experts on the device",
              MOE_MAX_E);
    TOC_CHECK(toc_is_act(logits_dtype), TO_ERR_DTYPE, "toc_moe_route_softmax: logits dtype %d unsupported",
              logits_dtype);
    TOC_CHECK(toc_is_act(weights_dtype), TO_ERR_DTYPE, "toc_moe_route_softmax: weights dtype %d unsupported",
              weights_dtype);
    if (t == 0) return TO_OK;
    TOC_CHECK(logits && idx && weights, TO_ERR_INVALID_ARGUMENT, "toc_moe_route_softmax: NULL pointer");
    TOC_READY();
    const size_t smem = (size_t)(e + k) * sizeof(float);
    TOC_CUDA((toc_launch(moe_route_softmax_kernel, dim3((unsigned)t), dim3(256), smem, logits, e, (int)k,
        renormalize != 0, logits_dtype, idx, weights, weights_dtype)), "moe_route_softmax_kernel");
    return TO_OK;
}

/* ---- sigmoid noaux_tc router: one block per row; the group stage (when groups are dropped) by
 * one thread, the top k by one warp ---- */
__global__ void __launch_bounds__(256) moe_route_sigmoid_kernel(const void *logits, const float *bias, int64_t e,
                                                                int k, int64_t n_group, int64_t topk_group,
                                                                int renorm, float scaling, int ldt, int32_t *idx,
                                                                float *weights) {
    pdl_enter(); /* launched by toc_launch */
    extern __shared__ float sm[]; /* s[e], cs[e], gscore[n_group], gval[n_group], gids[n_group] */
    __shared__ int32_t ids_s[MOE_MAX_K];
    float *s = sm, *cs = sm + e, *gscore = cs + e, *gval = gscore + n_group;
    int32_t *gids = (int32_t *)(gval + n_group);
    const int64_t r = blockIdx.x;
    for (int64_t x = threadIdx.x; x < e; x += blockDim.x) {
        const float l = ldf(logits, ldt, r * e + x);
        s[x] = 1.f / (1.f + expf(-l));
        cs[x] = s[x] + (bias ? bias[x] : 0.f);
    }
    __syncthreads();
    if (threadIdx.x >= 32) return;
    moe_sigmoid_select(s, cs, e, k, n_group, topk_group, renorm, scaling, gscore, gval, gids, ids_s,
                       weights + r * k);
    if (threadIdx.x == 0)
        for (int j = 0; j < k; j++) idx[r * k + j] = ids_s[j];
}

TOC_EXPORT int toc_moe_route_sigmoid(const void *logits, const float *bias, int64_t t, int64_t e, int64_t k,
                                     int64_t n_group, int64_t topk_group, int renormalize, float scaling,
                                     int logits_dtype, int32_t *idx, float *weights) {
    TOC_CHECK(t >= 0, TO_ERR_INVALID_ARGUMENT, "toc_moe_route_sigmoid: t is negative");
    TOC_CHECK(e >= 1 && k >= 1 && k <= e && k <= MOE_MAX_K, TO_ERR_SHAPE,
              "toc_moe_route_sigmoid: need 1 <= k <= e and k <= 1024 (k=%lld, e=%lld)", (long long)k,
              (long long)e);
    TOC_CHECK(n_group >= 1 && e % n_group == 0 && topk_group >= 1 && topk_group <= n_group, TO_ERR_SHAPE,
              "toc_moe_route_sigmoid: n_group (%lld) must divide e (%lld), 1 <= topk_group (%lld) <= n_group",
              (long long)n_group, (long long)e, (long long)topk_group);
    TOC_CHECK(k <= topk_group * (e / n_group), TO_ERR_SHAPE,
              "toc_moe_route_sigmoid: k=%lld exceeds the experts of %lld groups", (long long)k,
              (long long)topk_group);
    TOC_CHECK(e <= MOE_MAX_E, TO_ERR_UNSUPPORTED, "toc_moe_route_sigmoid: at most %d experts on the device",
              MOE_MAX_E);
    TOC_CHECK(toc_is_act(logits_dtype), TO_ERR_DTYPE, "toc_moe_route_sigmoid: logits dtype %d unsupported",
              logits_dtype);
    if (t == 0) return TO_OK;
    TOC_CHECK(logits && idx && weights, TO_ERR_INVALID_ARGUMENT, "toc_moe_route_sigmoid: NULL pointer");
    TOC_READY();
    const size_t smem = (size_t)(2 * e + 2 * n_group) * sizeof(float) + (size_t)n_group * sizeof(int32_t);
    TOC_CUDA((toc_launch(moe_route_sigmoid_kernel, dim3((unsigned)t), dim3(256), smem, logits, bias, e, (int)k,
        n_group, topk_group, renormalize != 0, scaling, logits_dtype, idx, weights)), "moe_route_sigmoid_kernel");
    return TO_OK;
}

/* ---- gather: one block per destination row, 16-byte copies where the rows allow ---- */
__global__ void moe_gather_kernel(const char *src, const int32_t *idx, char *dst, int64_t n_src, int64_t row,
                                  int vec) {
    const int64_t i = blockIdx.x;
    const int32_t s = idx[i];
    const bool ok = s >= 0 && s < n_src;
    if (!ok && threadIdx.x == 0) atomicExch(&moe_bad_index, 1);
    char *d = dst + i * row;
    if (vec) {
        const uint4 *a = (const uint4 *)(src + (ok ? (int64_t)s : 0) * row);
        for (int64_t c = threadIdx.x; c < row / 16; c += blockDim.x)
            ((uint4 *)d)[c] = ok ? a[c] : make_uint4(0, 0, 0, 0);
    } else {
        const char *a = src + (ok ? (int64_t)s : 0) * row;
        for (int64_t c = threadIdx.x; c < row; c += blockDim.x) d[c] = ok ? a[c] : 0;
    }
}

TOC_EXPORT int toc_moe_gather_rows(const void *src, const int32_t *idx, void *dst, int64_t n_src, int64_t n_idx,
                                   int64_t d, int dtype) {
    TOC_CHECK(n_src >= 0 && n_idx >= 0 && d >= 0, TO_ERR_INVALID_ARGUMENT,
              "toc_moe_gather_rows: negative size (n_src=%lld, n_idx=%lld, d=%lld)", (long long)n_src,
              (long long)n_idx, (long long)d);
    const int64_t es = to_dtype_size_cuda(dtype);
    TOC_CHECK(es > 0, TO_ERR_DTYPE, "toc_moe_gather_rows: unknown dtype %d", dtype);
    if (n_idx == 0 || d == 0) return TO_OK;
    TOC_CHECK(src && idx && dst, TO_ERR_INVALID_ARGUMENT, "toc_moe_gather_rows: NULL pointer");
    TOC_CHECK(n_idx <= 0x7fffffffLL, TO_ERR_SHAPE, "toc_moe_gather_rows: too many rows");
    TOC_READY();
    const int64_t row = d * es;
    const int vec = row % 16 == 0 && ((uintptr_t)src | (uintptr_t)dst) % 16 == 0;
    moe_gather_kernel<<<(unsigned)n_idx, 128, 0, toc_stream()>>>((const char *)src, idx, (char *)dst, n_src, row,
                                                                  vec);
    TOC_LAUNCHED("moe_gather_kernel");
    return moe_check_indices("toc_moe_gather_rows");
}

/* ---- scatter-add: one thread per column walks the entries in order (the CPU's order, so the
 * same roundings; products and sums without FMA contraction, like the CPU build) ---- */
__global__ void moe_scatter_kernel(const void *src, const int32_t *idx, const void *w, void *dst, int64_t n,
                                   int64_t n_dst, int64_t d, int sdt, int wdt, int ddt, int round) {
    const int64_t x = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (x >= d) return;
    for (int64_t i = 0; i < n; i++) {
        const int32_t r = idx[i];
        if (r < 0 || r >= n_dst) {
            if (x == 0) atomicExch(&moe_bad_index, 1);
            continue;
        }
        const float wi = w ? ldf(w, wdt, i) : 1.f;
        float p = __fmul_rn(wi, ldf(src, sdt, i * d + x));
        if (round) p = rbf(p);
        const int64_t o = (int64_t)r * d + x;
        if (ddt == TO_F32)
            ((float *)dst)[o] = __fadd_rn(((float *)dst)[o], p);
        else
            ((uint16_t *)dst)[o] = f2bf(__fadd_rn(bf2f(((uint16_t *)dst)[o]), p));
    }
}

TOC_EXPORT int toc_moe_scatter_add(const void *src, const int32_t *idx, const void *weights, void *dst, int64_t n,
                                   int64_t n_dst, int64_t d, int src_dtype, int weights_dtype, int dst_dtype,
                                   int round_products) {
    TOC_CHECK(n >= 0 && n_dst >= 0 && d >= 0, TO_ERR_INVALID_ARGUMENT, "toc_moe_scatter_add: negative size");
    TOC_CHECK(toc_is_act(src_dtype), TO_ERR_DTYPE, "toc_moe_scatter_add: src dtype %d unsupported", src_dtype);
    TOC_CHECK(toc_is_act(dst_dtype), TO_ERR_DTYPE, "toc_moe_scatter_add: dst dtype %d unsupported", dst_dtype);
    TOC_CHECK(weights == NULL || toc_is_act(weights_dtype), TO_ERR_DTYPE,
              "toc_moe_scatter_add: weights dtype %d unsupported", weights_dtype);
    if (n == 0 || d == 0) return TO_OK;
    TOC_CHECK(src && idx && dst, TO_ERR_INVALID_ARGUMENT, "toc_moe_scatter_add: NULL pointer");
    TOC_READY();
    const int round = round_products != 0 && src_dtype == TO_BF16;
    moe_scatter_kernel<<<toc_grid(d, 128), 128, 0, toc_stream()>>>(src, idx, weights, dst, n, n_dst, d, src_dtype,
                                                                   weights_dtype, dst_dtype, round);
    TOC_LAUNCHED("moe_scatter_kernel");
    return moe_check_indices("toc_moe_scatter_add");
}

/* ---- group by expert: a stable counting sort in one block (counts by shared atomics, the
 * prefix sums and the placement in entry order by one thread over shared cursors) ---- */
__global__ void __launch_bounds__(1024) moe_group_kernel(const int32_t *idx, int64_t n, int64_t e, int32_t *counts,
                                                         int32_t *offsets, int32_t *order) {
    extern __shared__ int32_t cur[]; /* e */
    for (int64_t x = threadIdx.x; x < e; x += blockDim.x) cur[x] = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
        const int32_t x = idx[p];
        if (x >= 0 && x < e)
            atomicAdd(&cur[x], 1);
        else
            atomicExch(&moe_bad_index, 1);
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    int32_t o = 0;
    for (int64_t x = 0; x < e; x++) {
        counts[x] = cur[x];
        offsets[x] = o;
        const int32_t c = cur[x];
        cur[x] = o;
        o += c;
    }
    offsets[e] = o;
    for (int64_t p = 0; p < n; p++) {
        const int32_t x = idx[p];
        if (x >= 0 && x < e) order[cur[x]++] = (int32_t)p;
    }
}

TOC_EXPORT int toc_moe_group_by_expert(const int32_t *idx, int64_t n, int64_t e, int32_t *counts, int32_t *offsets,
                                       int32_t *order) {
    TOC_CHECK(n >= 0, TO_ERR_INVALID_ARGUMENT, "toc_moe_group_by_expert: n is negative");
    TOC_CHECK(e >= 1, TO_ERR_SHAPE, "toc_moe_group_by_expert: e must be >= 1");
    TOC_CHECK(n < 0x7fffffffLL, TO_ERR_SHAPE, "toc_moe_group_by_expert: too many entries");
    TOC_CHECK((size_t)e * 4 <= 48 * 1024, TO_ERR_UNSUPPORTED, "toc_moe_group_by_expert: at most %d experts",
              48 * 1024 / 4);
    TOC_CHECK(counts && offsets && (n == 0 || (idx && order)), TO_ERR_INVALID_ARGUMENT,
              "toc_moe_group_by_expert: NULL pointer");
    TOC_READY();
    moe_group_kernel<<<1, 1024, (size_t)e * 4, toc_stream()>>>(idx, n, e, counts, offsets, order);
    TOC_LAUNCHED("moe_group_kernel");
    return moe_check_indices("toc_moe_group_by_expert");
}

/* ---- combine (decode): each token's expert outputs in ascending expert order, as the zeroed
 * output, toc_moe_scatter_add with rounded products and the residual add would give them; one
 * thread per (token, column) sorts its token's k slots by (expert, slot) itself ---- */
#define MOE_COMBINE_MAX_K 64
template <int KM> /* k <= KM: the products stay in registers when KM is small */
__global__ void moe_combine_kernel(const void *y, const int32_t *idx, const void *w, const void *res, void *out,
                                   int64_t e, int k, int64_t d, int ydt, int wdt, int odt) {
    pdl_enter(); /* launched by toc_launch */
    __shared__ int32_t order[KM]; /* the token's slots by (expert, slot) */
    __shared__ int32_t valid[KM];
    const int64_t x = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t t = blockIdx.y;
    if (threadIdx.x < k) { /* slot j's place: the slots before it in (expert, slot) order */
        const int j = threadIdx.x;
        const int32_t ej = idx[t * k + j];
        int rank = 0;
        for (int i = 0; i < k; i++) {
            const int32_t ei = idx[t * k + i];
            rank += ei < ej || (ei == ej && i < j);
        }
        order[rank] = j;
        valid[rank] = ej >= 0 && ej < e;
        if (!(ej >= 0 && ej < e) && blockIdx.x == 0) atomicExch(&moe_bad_index, 1);
    }
    __syncthreads();
    if (x >= d) return;
    /* every load first (independent, so they overlap), then the sum in that order */
    float pr[KM];
#pragma unroll
    for (int q = 0; q < KM; q++) {
        pr[q] = 0.0f;
        if (q < k) {
            const int j = order[q];
            pr[q] = rnd(ydt, __fmul_rn(ldf(w, wdt, t * k + j), ldf(y, ydt, (t * k + j) * d + x)));
        }
    }
    const float r0 = res ? ldf(res, odt, t * d + x) : 0.0f;
    float acc = 0.0f;
#pragma unroll
    for (int q = 0; q < KM; q++)
        if (q < k && valid[q]) acc = rnd(odt, __fadd_rn(acc, pr[q]));
    if (res) acc = rnd(odt, __fadd_rn(r0, acc));
    stf(out, odt, t * d + x, acc);
}

TOC_EXPORT int toc_moe_combine(const void *y, const int32_t *idx, const void *weights, const void *res, void *out,
                               int64_t t, int64_t k, int64_t e, int64_t d, int y_dtype, int weights_dtype,
                               int out_dtype) {
    TOC_CHECK(t >= 0 && d >= 0 && e >= 1, TO_ERR_INVALID_ARGUMENT, "toc_moe_combine: negative size or no experts");
    TOC_CHECK(k >= 1 && k <= MOE_COMBINE_MAX_K, TO_ERR_UNSUPPORTED, "toc_moe_combine: need 1 <= k <= %d (k=%lld)",
              MOE_COMBINE_MAX_K, (long long)k);
    TOC_CHECK(t <= 65535, TO_ERR_UNSUPPORTED, "toc_moe_combine: at most 65535 tokens (t=%lld)", (long long)t);
    TOC_CHECK(toc_is_act(y_dtype) && toc_is_act(weights_dtype) && toc_is_act(out_dtype), TO_ERR_DTYPE,
              "toc_moe_combine: dtypes (%d, %d, %d) unsupported", y_dtype, weights_dtype, out_dtype);
    if (t == 0 || d == 0) return TO_OK;
    TOC_CHECK(y && idx && weights && out, TO_ERR_INVALID_ARGUMENT, "toc_moe_combine: NULL pointer");
    TOC_READY();
    const dim3 grid((unsigned)toc_cdiv(d, 128), (unsigned)t);
    if (k <= 8)
        TOC_CUDA((toc_launch(moe_combine_kernel<8>, dim3(grid), dim3(128), 0, y, idx, weights, res, out, e, (int)k,
            d, y_dtype, weights_dtype, out_dtype)), "moe_combine_kernel");
    else if (k <= 16)
        TOC_CUDA((toc_launch(moe_combine_kernel<16>, dim3(grid), dim3(128), 0, y, idx, weights, res, out, e, (int)k,
            d, y_dtype, weights_dtype, out_dtype)), "moe_combine_kernel");
    else
        TOC_CUDA((toc_launch(moe_combine_kernel<MOE_COMBINE_MAX_K>, dim3(grid), dim3(128), 0, y, idx, weights, res,
            out, e, (int)k, d, y_dtype, weights_dtype, out_dtype)), "moe_combine_kernel");
    return moe_check_indices("toc_moe_combine");
}

/* ---- a routing plan on the device (prefill and batched decode: nothing comes back to the host
 * but the index check): counts per expert, offsets, the entries sorted by expert (stable),
 * each sorted entry's token and each entry's sorted position, and the tiles of at most
 * tile_rows rows of one expert for toc_moe_grouped_linear (unused tiles have 0 rows) ---- */
__global__ void moe_count_kernel(const int32_t *idx, int64_t n, int64_t e, int32_t *counts) {
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n; p += (int64_t)gridDim.x * blockDim.x) {
        const int32_t x = idx[p];
        if (x >= 0 && x < e)
            atomicAdd(&counts[x], 1);
        else
            atomicExch(&moe_bad_index, 1);
    }
}

__global__ void __launch_bounds__(1024) moe_plan_kernel(const int32_t *counts, int64_t e, int tile_rows,
                                                        int32_t *offsets, int32_t *tiles, int64_t max_tiles) {
    extern __shared__ int32_t cs[]; /* e */
    __shared__ int32_t used;
    for (int64_t x = threadIdx.x; x < e; x += blockDim.x) cs[x] = counts[x];
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t o = 0;
        int64_t t = 0;
        for (int64_t x = 0; x < e; x++) {
            offsets[x] = o;
            const int32_t c = cs[x];
            for (int32_t r = 0; r < c && t < max_tiles; r += tile_rows, t++) {
                tiles[3 * t] = (int32_t)x;
                tiles[3 * t + 1] = o + r;
                tiles[3 * t + 2] = c - r < tile_rows ? c - r : tile_rows;
            }
            o += c;
        }
        offsets[e] = o;
        used = (int32_t)t;
    }
    __syncthreads();
    for (int64_t t = used + threadIdx.x; t < max_tiles; t += blockDim.x) {
        tiles[3 * t] = 0;
        tiles[3 * t + 1] = 0;
        tiles[3 * t + 2] = 0;
    }
}

/* one block per expert walks the entries in order: a stable placement by ballots */
__global__ void __launch_bounds__(1024) moe_place_kernel(const int32_t *idx, int64_t n, int k, const int32_t *offsets,
                                                         int32_t *order, int32_t *tokens, int32_t *inverse) {
    __shared__ int32_t wc[32];
    const int32_t x = (int32_t)blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int32_t pos = offsets[x];
    for (int64_t c0 = 0; c0 < n; c0 += blockDim.x) {
        const int64_t p = c0 + threadIdx.x;
        const bool hit = p < n && idx[p] == x;
        const unsigned b = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) wc[warp] = __popc(b);
        __syncthreads();
        int32_t before = 0, all = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) {
            if (w < warp) before += wc[w];
            all += wc[w];
        }
        if (hit) {
            const int32_t q = pos + before + __popc(b & ((1u << lane) - 1u));
            order[q] = (int32_t)p;
            tokens[q] = (int32_t)(p / k);
            inverse[p] = q;
        }
        pos += all;
        __syncthreads();
    }
}

TOC_EXPORT int toc_moe_plan(const int32_t *idx, int64_t n, int64_t e, int64_t k, int64_t tile_rows, int32_t *counts,
                            int32_t *offsets, int32_t *order, int32_t *tokens, int32_t *inverse, int32_t *tiles,
                            int64_t max_tiles) {
    TOC_CHECK(n >= 0 && n < 0x7fffffffLL && k >= 1 && e >= 1 && e <= MOE_MAX_E && tile_rows >= 1 && max_tiles >= 0,
              TO_ERR_INVALID_ARGUMENT, "toc_moe_plan: bad sizes (n=%lld, e=%lld, k=%lld)", (long long)n,
              (long long)e, (long long)k);
    TOC_CHECK(max_tiles >= n / tile_rows + e || max_tiles >= n, TO_ERR_INVALID_ARGUMENT,
              "toc_moe_plan: max_tiles %lld cannot hold the tiles of %lld entries", (long long)max_tiles,
              (long long)n);
    TOC_CHECK(counts && offsets && (n == 0 || (idx && order && tokens && inverse)) && (max_tiles == 0 || tiles),
              TO_ERR_INVALID_ARGUMENT, "toc_moe_plan: NULL pointer");
    TOC_READY();
    cudaStream_t s = toc_stream();
    TOC_CUDA(cudaMemsetAsync(counts, 0, (size_t)e * 4, s), "cudaMemsetAsync");
    if (n > 0) {
        moe_count_kernel<<<(unsigned)(toc_cdiv(n, 256) < 1024 ? toc_cdiv(n, 256) : 1024), 256, 0, s>>>(idx, n, e, counts);
        TOC_LAUNCHED("moe_count_kernel");
    }
    moe_plan_kernel<<<1, 1024, (size_t)e * 4, s>>>(counts, e, (int)tile_rows, offsets, tiles, max_tiles);
    TOC_LAUNCHED("moe_plan_kernel");
    if (n > 0) {
        const int threads = n >= 1024 ? 1024 : (int)toc_cdiv(n, 32) * 32;
        moe_place_kernel<<<(unsigned)e, threads, 0, s>>>(idx, n, (int)k, offsets, order, tokens, inverse);
        TOC_LAUNCHED("moe_place_kernel");
    }
    return moe_check_indices("toc_moe_plan");
}
