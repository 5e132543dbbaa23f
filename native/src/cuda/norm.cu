/* Norms, rotary embeddings, softmax and the select ops on the device (semantics of
 * src/cpu/norm.c, rope.c, softmax.c, select.c). */
#include <mutex>

#include "common.cuh"

/* ---- rms_norm: one warp per row ---- */
struct RmsArgs {
    const void *x, *w, *z;
    void *out;
    int64_t outer, inner, dim, x_so, x_si, z_so, z_si, o_so, o_si;
    float eps;
    int variant, xd, wd, od;
    const void *add; /* add_rms_norm: x = round(x + add) is stored first (add has x's layout) */
};
/* One row, one warp, lanes strided over the row. With ar, the row is first replaced by the
 * rounded sum x + a (each lane reads back only what it wrote), as toc_add then toc_rms_norm. */
__device__ __forceinline__ void rms_row(char *xr, const char *ar, const char *zr, char *orow, const void *wt,
                                        int64_t dim, float eps, int variant, int xd, int wd, int od) {
    /* Batches of RB elements per lane, every load of a batch before its stores (which the loads
     * could alias, as far as the compiler knows); the sums run in the same order as one by one. */
    constexpr int RB = 4;
    const int lane = threadIdx.x & 31;
    float ss = 0.0f;
    for (int64_t j0 = lane; j0 < dim; j0 += 32 * RB) {
        float v[RB];
#pragma unroll
        for (int u = 0; u < RB; u++) {
            const int64_t j = j0 + 32 * u;
            v[u] = j < dim ? ldf(xr, xd, j) : 0.0f;
        }
        if (ar) {
            float d[RB];
#pragma unroll
            for (int u = 0; u < RB; u++) {
                const int64_t j = j0 + 32 * u;
                d[u] = j < dim ? ldf(ar, xd, j) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < RB; u++) {
                const int64_t j = j0 + 32 * u;
                v[u] = rnd(xd, v[u] + d[u]);
                if (j < dim) stf(xr, xd, j, v[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < RB; u++)
            if (j0 + 32 * u < dim) ss += v[u] * v[u];
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)dim + eps);
    bool nround = xd == TO_BF16 && wd == TO_BF16;
    for (int64_t j0 = lane; j0 < dim; j0 += 32 * RB) {
        float xv[RB], wv[RB], zv[RB];
#pragma unroll
        for (int u = 0; u < RB; u++) {
            const int64_t j = j0 + 32 * u;
            const bool in = j < dim;
            xv[u] = in ? ldf(xr, xd, j) : 0.0f;
            wv[u] = in ? ldf(wt, wd, j) : 0.0f;
            zv[u] = in && variant == TO_RMS_GATED ? ldf(zr, xd, j) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < RB; u++) {
            const int64_t j = j0 + 32 * u;
            float xn = xv[u] * r, w = wv[u], y;
            if (variant == TO_RMS_ZERO_CENTERED) {
                y = xn * (1.0f + w);
            } else {
                y = w * rnd(xd, xn);
                if (variant == TO_RMS_GATED) {
                    if (nround) y = rbf(y);
                    y = y * (zv[u] / (1.0f + expf(-zv[u])));
                }
            }
            if (j < dim) stf(orow, od, j, y);
        }
    }
}
__global__ void rms_norm_kernel(RmsArgs a) {
    pdl_enter(); /* launched by toc_launch */
    int64_t row = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= a.outer * a.inner) return;
    int64_t o = row / a.inner, i = row - o * a.inner;
    const int64_t xo = (o * a.x_so + i * a.x_si) * (a.xd == TO_F32 ? 4 : 2);
    char *xr = (char *)a.x + xo;
    const char *ar = a.add ? (const char *)a.add + xo : nullptr;
    char *orow = (char *)a.out + (o * a.o_so + i * a.o_si) * (a.od == TO_F32 ? 4 : 2);
    const char *zr = a.z ? (const char *)a.z + (o * a.z_so + i * a.z_si) * (a.xd == TO_F32 ? 4 : 2)
                         : nullptr;
    rms_row(xr, ar, zr, orow, a.w, a.dim, a.eps, a.variant, a.xd, a.wd, a.od);
}
/* bf16 rows (dim % 8 == 0, 16-byte aligned rows): `wpr` warps per row (1, 2, 4 or 8, by dim
 * alone: one warp was issue-bound on 2560-wide rows), one 16-byte chunk per thread and step (chunk
 * t + 32 wpr k for the row's thread t), the row held in registers between the two passes. Same
 * arithmetic as rms_row (plain and zero-centred variants), summed in another order: each thread
 * over its chunks, a warp sum, then the row's warps in order through `red`. Every thread of the
 * block must call it when wpr > 1 (block barrier); `live` false: no memory access. */
template <int NV>
__device__ __forceinline__ void rms_row_vec(uint4 *xr, const uint4 *ar, uint4 *orow, const uint4 *w, int64_t dim,
                                            float eps, int variant, bool live, int wpr, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int t = (warp % wpr) * 32 + lane, step = 32 * wpr;
    const int nv = live ? (int)(dim / 8) : 0;
    uint4 xv[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) xv[k] = t + step * k < nv ? xr[t + step * k] : make_uint4(0, 0, 0, 0);
    if (ar) {
        /* every load before the first store (x and a may alias), so the loads are all in flight */
        uint4 av[NV];
#pragma unroll
        for (int k = 0; k < NV; k++) av[k] = t + step * k < nv ? ar[t + step * k] : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int k = 0; k < NV; k++) {
            float f[8], g[8];
            bf8(xv[k], f);
            bf8(av[k], g);
#pragma unroll
            for (int e = 0; e < 8; e++) f[e] = f[e] + g[e];
            xv[k] = pack_bf8(f);
        }
#pragma unroll
        for (int k = 0; k < NV; k++)
            if (t + step * k < nv) xr[t + step * k] = xv[k];
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NV; k++) {
        float f[8];
        bf8(xv[k], f);
#pragma unroll
        for (int e = 0; e < 8; e++) ss += f[e] * f[e];
    }
    ss = warp_sum(ss);
    if (wpr > 1) {
        if (lane == 0) red[warp] = ss;
        __syncthreads();
        const int first = warp - warp % wpr;
        ss = 0.0f;
        for (int i = 0; i < wpr; i++) ss += red[first + i];
    }
    const float r = 1.0f / sqrtf(ss / (float)dim + eps);
    /* the weights loaded together, before the first store (which they could alias, as far as the
     * compiler knows: loads after it would wait one round trip each) */
    uint4 wv[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) wv[k] = t + step * k < nv ? __ldg(w + t + step * k) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const int c = t + step * k;
        if (c < nv) {
            float f[8], wf[8];
            bf8(xv[k], f);
            bf8(wv[k], wf);
#pragma unroll
            for (int e = 0; e < 8; e++)
                f[e] = variant == TO_RMS_ZERO_CENTERED ? f[e] * r * (1.0f + wf[e]) : wf[e] * rbf(f[e] * r);
            orow[c] = pack_bf8(f);
        }
    }
}
/* 256 threads: 8 / wpr rows per block */
template <int NV>
__global__ void __launch_bounds__(256) rms_norm_bf16_kernel(RmsArgs a, int wpr) {
    pdl_enter(); /* launched by toc_launch */
    __shared__ float red[8];
    const int64_t row = blockIdx.x * (int64_t)(8 / wpr) + (threadIdx.x >> 5) / wpr;
    const bool live = row < a.outer * a.inner;
    const int64_t o = live ? row / a.inner : 0, i = live ? row - o * a.inner : 0, xo = o * a.x_so + i * a.x_si;
    rms_row_vec<NV>((uint4 *)((uint16_t *)a.x + xo), a.add ? (const uint4 *)((const uint16_t *)a.add + xo) : nullptr,
                    (uint4 *)((uint16_t *)a.out + o * a.o_so + i * a.o_si), (const uint4 *)a.w, a.dim, a.eps,
                    a.variant, live, wpr, red);
}

/* Warps per row of the vectorised kernel, and its chunks per thread (a template argument). */
static int rms_wpr(int64_t dim) {
    const int64_t nv = dim / 8;
    return nv >= 256 ? 8 : nv >= 128 ? 4 : nv >= 64 ? 2 : 1;
}
static int rms_bf16_chunks(int64_t dim) {
    const int64_t per = toc_cdiv(dim / 8, 32 * rms_wpr(dim));
    return per <= 1 ? 1 : per <= 2 ? 2 : per <= 4 ? 4 : per <= 8 ? 8 : 16;
}
static bool rms_vec(const RmsArgs &a) {
    return a.xd == TO_BF16 && a.wd == TO_BF16 && a.od == TO_BF16 && a.variant != TO_RMS_GATED && a.dim % 8 == 0 &&
           a.dim <= 8 * 256 * 16 && ((uintptr_t)a.x & 15) == 0 && ((uintptr_t)a.out & 15) == 0 &&
           ((uintptr_t)a.w & 15) == 0 && a.x_so % 8 == 0 && a.x_si % 8 == 0 &&
           a.o_so % 8 == 0 && a.o_si % 8 == 0;
}
static int launch_rms(const RmsArgs &a) {
    if (rms_vec(a)) {
        const int wpr = rms_wpr(a.dim);
        const unsigned blocks = (unsigned)toc_cdiv(a.outer * a.inner, 8 / wpr);
        switch (rms_bf16_chunks(a.dim)) {
        case 1: TOC_CUDA((toc_launch(rms_norm_bf16_kernel<1>, dim3(blocks), dim3(256), 0, a, wpr)),
            "rms_norm_bf16_kernel"); break;
        case 2: TOC_CUDA((toc_launch(rms_norm_bf16_kernel<2>, dim3(blocks), dim3(256), 0, a, wpr)),
            "rms_norm_bf16_kernel"); break;
        case 4: TOC_CUDA((toc_launch(rms_norm_bf16_kernel<4>, dim3(blocks), dim3(256), 0, a, wpr)),
            "rms_norm_bf16_kernel"); break;
        case 8: TOC_CUDA((toc_launch(rms_norm_bf16_kernel<8>, dim3(blocks), dim3(256), 0, a, wpr)),
            "rms_norm_bf16_kernel"); break;
        default: TOC_CUDA((toc_launch(rms_norm_bf16_kernel<16>, dim3(blocks), dim3(256), 0, a, wpr)),
            "rms_norm_bf16_kernel");
        }
        return TO_OK;
    }
    const unsigned blocks = (unsigned)toc_cdiv(a.outer * a.inner, 8);
    TOC_CUDA((toc_launch(rms_norm_kernel, dim3(blocks), dim3(256), 0, a)), "rms_norm_kernel");
    return TO_OK;
}

TOC_EXPORT int toc_rms_norm(const void *x, const void *w, const void *z, void *out, int64_t outer,
                            int64_t inner, int64_t dim, int64_t x_so, int64_t x_si, int64_t z_so,
                            int64_t z_si, int64_t o_so, int64_t o_si, float eps, int variant,
                            int x_dtype, int w_dtype, int out_dtype) {
    TOC_CHECK(outer >= 0 && inner >= 0 && dim >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_rms_norm: bad sizes outer=%lld inner=%lld dim=%lld", (long long)outer,
              (long long)inner, (long long)dim);
    TOC_CHECK(variant >= 0 && variant <= 2, TO_ERR_INVALID_ARGUMENT, "toc_rms_norm: variant %d",
              variant);
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_act(out_dtype) && toc_is_wt(w_dtype), TO_ERR_DTYPE,
              "toc_rms_norm: dtypes x=%d w=%d out=%d", x_dtype, w_dtype, out_dtype);
    TOC_CHECK(eps >= 0.0f, TO_ERR_INVALID_ARGUMENT, "toc_rms_norm: eps < 0");
    if (outer * inner == 0) return TO_OK;
    TOC_CHECK(x && w && out, TO_ERR_INVALID_ARGUMENT, "toc_rms_norm: NULL pointer");
    TOC_CHECK(variant != TO_RMS_GATED || z, TO_ERR_INVALID_ARGUMENT, "toc_rms_norm: gated needs z");
    TOC_READY();
    RmsArgs a = {x, w, variant == TO_RMS_GATED ? z : nullptr, out, outer, inner, dim, x_so, x_si,
                 z_so, z_si, o_so, o_si, eps, variant, x_dtype, w_dtype, out_dtype, nullptr};
    return launch_rms(a);
}

/* ---- layer_norm: one block per row ---- */
__global__ void layer_norm_kernel(const void *x, const void *w, const void *b, void *out,
                                  int64_t dim, int64_t ldx, int64_t ldo, float eps, int xd, int wd,
                                  int od) {
    __shared__ float red[33];
    int64_t r = blockIdx.x;
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) s += ldf(x, xd, r * ldx + j);
    float mean = block_sum(s, red) / (float)dim;
    float v = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
        float c = ldf(x, xd, r * ldx + j) - mean;
        v += c * c;
    }
    float rstd = 1.0f / sqrtf(block_sum(v, red) / (float)dim + eps);
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
        float y = (ldf(x, xd, r * ldx + j) - mean) * rstd;
        if (w) y = y * ldf(w, wd, j);
        if (b) y = y + ldf(b, wd, j);
        stf(out, od, r * ldo + j, y);
    }
}
TOC_EXPORT int toc_layer_norm(const void *x, const void *w, const void *b, void *out, int64_t rows,
                              int64_t dim, int64_t ldx, int64_t ldo, float eps, int x_dtype,
                              int w_dtype, int out_dtype) {
    TOC_CHECK(rows >= 0 && dim >= 1 && ldx >= dim && ldo >= dim, TO_ERR_INVALID_ARGUMENT,
              "toc_layer_norm: bad sizes");
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_act(out_dtype) && toc_is_wt(w_dtype), TO_ERR_DTYPE,
              "toc_layer_norm: dtypes");
    TOC_CHECK(eps >= 0.0f, TO_ERR_INVALID_ARGUMENT, "toc_layer_norm: eps < 0");
    if (rows == 0) return TO_OK;
    TOC_CHECK(x && out, TO_ERR_INVALID_ARGUMENT, "toc_layer_norm: NULL pointer");
    TOC_READY();
    layer_norm_kernel<<<(unsigned)rows, 256, 0, toc_stream()>>>(x, w, b, out, dim, ldx, ldo, eps,
                                                                x_dtype, w_dtype, out_dtype);
    TOC_LAUNCHED("layer_norm_kernel");
    return TO_OK;
}

/* ---- rope tables ---- */
__device__ __forceinline__ int64_t ld_pos(const void *p, int dt, int64_t i) {
    return dt == TO_I32 ? ((const int32_t *)p)[i] : ((const int64_t *)p)[i];
}
/* inv_freq (kind 0 only): explicit frequencies in device memory, else 1 / theta^(2i/rot);
 * scale multiplies cos and sin in fp32 before the one rounding to od. */
__global__ void rope_cache_kernel(const void *pos, int pdt, int64_t T, int64_t rot, float theta,
                                  const float *inv_freq, float scale, int kind, int64_t sec_h,
                                  int64_t sec_w, void *cosb, void *sinb, int od) {
    int64_t half = rot / 2, q = rot / 4;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < T * half;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = idx / half, i = idx - t * half;
        float ang;
        if (kind == 0) {
            float inv = inv_freq ? inv_freq[i] : 1.0f / powf(theta, (float)(2 * i) / (float)rot);
            ang = (float)ld_pos(pos, pdt, t) * inv;
        } else if (kind == 1) {
            int axis = 0;
            if (i % 3 == 1 && i < 3 * sec_h) axis = 1;
            else if (i % 3 == 2 && i < 3 * sec_w) axis = 2;
            float inv = 1.0f / powf(theta, (float)(2 * i) / (float)rot);
            ang = (float)ld_pos(pos, pdt, axis * T + t) * inv;
        } else {
            int axis = i < q ? 0 : 1;
            int64_t ii = i % q;
            float inv = 1.0f / powf(theta, (float)(2 * ii) / (float)(rot / 2));
            ang = (float)ld_pos(pos, pdt, axis * T + t) * inv;
        }
        float c = __fmul_rn(cosf(ang), scale), s = __fmul_rn(sinf(ang), scale);
        stf(cosb, od, t * rot + i, c);
        stf(cosb, od, t * rot + i + half, c);
        stf(sinb, od, t * rot + i, s);
        stf(sinb, od, t * rot + i + half, s);
    }
}
static int rope_cache_any(const char *name, const void *positions, int pos_dtype, int64_t T,
                          int64_t rot_dim, float theta, const float *inv_freq, float scale,
                          int kind, int64_t sec_h, int64_t sec_w, void *cos, void *sin,
                          int out_dtype) {
    TOC_CHECK(T >= 0 && rot_dim >= 2 && rot_dim % (kind == 2 ? 4 : 2) == 0 && rot_dim <= 32768,
              TO_ERR_INVALID_ARGUMENT, "%s: T=%lld rot_dim=%lld", name, (long long)T,
              (long long)rot_dim);
    TOC_CHECK(inv_freq || (theta > 0.0f && isfinite(theta)), TO_ERR_INVALID_ARGUMENT,
              "%s: theta must be > 0", name);
    TOC_CHECK(isfinite(scale) && scale > 0.0f, TO_ERR_INVALID_ARGUMENT,
              "%s: scale must be a positive finite number", name);
    TOC_CHECK(pos_dtype == TO_I32 || pos_dtype == TO_I64, TO_ERR_DTYPE, "%s: positions dtype %d",
              name, pos_dtype);
    TOC_CHECK(toc_is_act(out_dtype), TO_ERR_DTYPE, "%s: out dtype %d", name, out_dtype);
    if (T == 0) return TO_OK;
    TOC_CHECK(positions && cos && sin, TO_ERR_INVALID_ARGUMENT, "%s: NULL pointer", name);
    TOC_READY();
    rope_cache_kernel<<<toc_grid(T * rot_dim / 2, 256), 256, 0, toc_stream()>>>(
        positions, pos_dtype, T, rot_dim, theta, inv_freq, scale, kind, sec_h, sec_w, cos, sin,
        out_dtype);
    TOC_LAUNCHED(name);
    return TO_OK;
}
TOC_EXPORT int toc_rope_cache(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                              float theta, void *cos, void *sin, int out_dtype) {
    return rope_cache_any("toc_rope_cache", positions, pos_dtype, T, rot_dim, theta, nullptr, 1.0f,
                          0, 0, 0, cos, sin, out_dtype);
}
TOC_EXPORT int toc_rope_cache_mrope(const void *positions, int pos_dtype, int64_t T,
                                    int64_t rot_dim, float theta, int64_t sec_t, int64_t sec_h,
                                    int64_t sec_w, void *cos, void *sin, int out_dtype) {
    TOC_CHECK(sec_t >= 0 && sec_h >= 0 && sec_w >= 0 && sec_t + sec_h + sec_w == rot_dim / 2,
              TO_ERR_INVALID_ARGUMENT, "toc_rope_cache_mrope: sections must sum to rot_dim/2");
    return rope_cache_any("toc_rope_cache_mrope", positions, pos_dtype, T, rot_dim, theta, nullptr,
                          1.0f, 1, sec_h, sec_w, cos, sin, out_dtype);
}
TOC_EXPORT int toc_rope_cache_2d(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                                 float theta, void *cos, void *sin, int out_dtype) {
    return rope_cache_any("toc_rope_cache_2d", positions, pos_dtype, T, rot_dim, theta, nullptr, 1.0f,
                          2, 0, 0, cos, sin, out_dtype);
}
TOC_EXPORT int toc_rope_cache_freqs(const void *positions, int pos_dtype, int64_t T,
                                    int64_t rot_dim, const float *inv_freq, float scale, void *cos,
                                    void *sin, int out_dtype) {
    TOC_CHECK(inv_freq, TO_ERR_INVALID_ARGUMENT, "toc_rope_cache_freqs: inv_freq is NULL");
    return rope_cache_any("toc_rope_cache_freqs", positions, pos_dtype, T, rot_dim, 0.0f, inv_freq,
                          scale, 0, 0, 0, cos, sin, out_dtype);
}

/* ---- rope_apply: one block per (token, head) row ---- */
__device__ __forceinline__ void rope_pair(float x1, float x2, float c, float s, bool bf, float &o1,
                                          float &o2) {
    float p1 = __fmul_rn(x1, c), p2 = __fmul_rn(x2, s), p3 = __fmul_rn(x2, c), p4 = __fmul_rn(x1, s);
    if (bf) {
        p1 = rbf(p1);
        p2 = rbf(p2);
        p3 = rbf(p3);
        p4 = rbf(p4);
    }
    o1 = __fsub_rn(p1, p2);
    o2 = __fadd_rn(p3, p4);
}
__global__ void rope_apply_kernel(void *x, const void *cosb, const void *sinb, int64_t heads,
                                  int64_t rot, int64_t st, int64_t sh, int mode, int xd, int td) {
    pdl_enter(); /* launched by toc_launch */
    extern __shared__ float tmp[];
    int64_t row = blockIdx.x;
    int64_t t = row / heads, h = row - t * heads;
    char *base = (char *)x + (t * st + h * sh) * (xd == TO_F32 ? 4 : 2);
    int64_t half = rot / 2;
    bool bf = xd == TO_BF16 && td == TO_BF16;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        int64_t i1 = mode == TO_ROPE_NEOX ? i : 2 * i, i2 = mode == TO_ROPE_NEOX ? i + half : 2 * i + 1;
        float c = ldf(cosb, td, t * rot + i), s = ldf(sinb, td, t * rot + i), o1, o2;
        rope_pair(ldf(base, xd, i1), ldf(base, xd, i2), c, s, bf, o1, o2);
        if (mode == TO_ROPE_INTERLEAVED_HF) {
            tmp[i] = o1;
            tmp[i + half] = o2;
        } else {
            stf(base, xd, i1, o1);
            stf(base, xd, i2, o2);
        }
    }
    if (mode == TO_ROPE_INTERLEAVED_HF) {
        __syncthreads();
        for (int64_t i = threadIdx.x; i < rot; i += blockDim.x) stf(base, xd, i, tmp[i]);
    }
}
/* In-place modes (NeoX, interleaved): one warp per (token, head) row, 8 rows per block (the
 * one-block-per-row kernel spends most of its time starting 64-thread blocks). */
__device__ __forceinline__ void rope_row(char *base, const void *cosb, const void *sinb, int64_t t, int64_t rot,
                                         int mode, int xd, int td) {
    /* pairs in batches of 2 per lane, loads before stores (see rms_row) */
    const int lane = threadIdx.x & 31;
    const int64_t half = rot / 2;
    const bool bf = xd == TO_BF16 && td == TO_BF16;
    for (int64_t i0 = lane; i0 < half; i0 += 64) {
        float x1[2], x2[2], c[2], s[2];
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int64_t i = i0 + 32 * u;
            const int64_t i1 = mode == TO_ROPE_NEOX ? i : 2 * i, i2 = mode == TO_ROPE_NEOX ? i + half : 2 * i + 1;
            const bool in = i < half;
            x1[u] = in ? ldf(base, xd, i1) : 0.0f;
            x2[u] = in ? ldf(base, xd, i2) : 0.0f;
            c[u] = in ? ldf(cosb, td, t * rot + i) : 0.0f;
            s[u] = in ? ldf(sinb, td, t * rot + i) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int64_t i = i0 + 32 * u;
            if (i >= half) continue;
            const int64_t i1 = mode == TO_ROPE_NEOX ? i : 2 * i, i2 = mode == TO_ROPE_NEOX ? i + half : 2 * i + 1;
            float o1, o2;
            rope_pair(x1[u], x2[u], c[u], s[u], bf, o1, o2);
            stf(base, xd, i1, o1);
            stf(base, xd, i2, o2);
        }
    }
}
__global__ void rope_apply_rows_kernel(void *x, const void *cosb, const void *sinb, int64_t rows,
                                       int64_t heads, int64_t rot, int64_t st, int64_t sh, int mode,
                                       int xd, int td) {
    pdl_enter(); /* launched by toc_launch */
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int64_t t = row / heads, h = row - t * heads;
    rope_row((char *)x + (t * st + h * sh) * (xd == TO_F32 ? 4 : 2), cosb, sinb, t, rot, mode, xd, td);
}

TOC_EXPORT int toc_rope_apply(void *x, const void *cos, const void *sin, int64_t T, int64_t heads,
                              int64_t head_dim, int64_t rot_dim, int64_t stride_t, int64_t stride_h,
                              int mode, int x_dtype, int table_dtype) {
    TOC_CHECK(T >= 0 && heads >= 0 && head_dim >= 1, TO_ERR_INVALID_ARGUMENT, "toc_rope_apply: sizes");
    TOC_CHECK(mode >= 0 && mode <= 2, TO_ERR_INVALID_ARGUMENT, "toc_rope_apply: unknown mode %d", mode);
    TOC_CHECK(rot_dim >= 2 && rot_dim % 2 == 0 && rot_dim <= head_dim, TO_ERR_INVALID_ARGUMENT,
              "toc_rope_apply: rot_dim %lld must be even, >= 2 and <= head_dim %lld",
              (long long)rot_dim, (long long)head_dim);
    TOC_CHECK(mode != TO_ROPE_INTERLEAVED_HF || rot_dim <= 8192, TO_ERR_UNSUPPORTED,
              "toc_rope_apply: rot_dim > 8192 in the interleaved_hf mode");
    TOC_CHECK(stride_t >= 0 && stride_h >= 0, TO_ERR_INVALID_ARGUMENT, "toc_rope_apply: strides");
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_act(table_dtype), TO_ERR_DTYPE, "toc_rope_apply: dtypes");
    if (T * heads == 0) return TO_OK;
    TOC_CHECK(x && cos && sin, TO_ERR_INVALID_ARGUMENT, "toc_rope_apply: NULL pointer");
    TOC_CHECK(T * heads <= 0x7fffffffLL, TO_ERR_INVALID_ARGUMENT, "toc_rope_apply: too many rows");
    TOC_READY();
    if (mode != TO_ROPE_INTERLEAVED_HF) {
        TOC_CUDA((toc_launch(rope_apply_rows_kernel, dim3((unsigned)toc_cdiv(T * heads, 8)), dim3(256), 0, x, cos,
            sin, T * heads, heads, rot_dim, stride_t, stride_h, mode, x_dtype, table_dtype)),
            "rope_apply_rows_kernel");
        return TO_OK;
    }
    size_t smem = mode == TO_ROPE_INTERLEAVED_HF ? (size_t)rot_dim * 4 : 0;
    TOC_CUDA((toc_launch(rope_apply_kernel, dim3((unsigned)(T * heads)), dim3(64), smem, x, cos, sin, heads,
        rot_dim, stride_t, stride_h, mode, x_dtype, table_dtype)), "rope_apply_kernel");
    return TO_OK;
}

/* ---- softmax: one block per row; a few long rows (logits over a vocabulary) split in chunks ---- */
__global__ void softmax_kernel(const void *x, void *out, int64_t dim, int64_t ldx, int64_t ldo,
                               int log_, int xd, int od) {
    __shared__ float red[33];
    int64_t r = blockIdx.x;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) m = fmaxf(m, ldf(x, xd, r * ldx + j));
    m = block_max(m, red);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) s += expf(ldf(x, xd, r * ldx + j) - m);
    s = block_sum(s, red);
    float ls = logf(s), inv = 1.0f / s;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = ldf(x, xd, r * ldx + j) - m;
        stf(out, od, r * ldo + j, log_ ? v - ls : expf(v) * inv);
    }
}

/* Rows at least this long, at most SM_SPLIT_ROWS of them, run on many blocks a row: block
 * (c, r) reduces chunk c of row r to (max, sum of exp(x - max)), then each block combines its
 * row's partials and writes its chunk (one block a row reads 150k logits ~20x slower). */
#define SM_SPLIT_MIN_DIM 32768
#define SM_SPLIT_ROWS 64
#define SM_CHUNK 4096
__global__ void softmax_partial_kernel(const void *x, float2 *part, int64_t dim, int64_t ldx,
                                       int xd) {
    __shared__ float red[33];
    const int64_t r = blockIdx.y, lo = (int64_t)blockIdx.x * SM_CHUNK;
    const int64_t hi = lo + SM_CHUNK < dim ? lo + SM_CHUNK : dim;
    float m = -INFINITY;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) m = fmaxf(m, ldf(x, xd, r * ldx + j));
    m = block_max(m, red);
    float s = 0.0f;
    if (m != -INFINITY) /* an all -inf chunk adds nothing (exp(-inf - -inf) would be NaN) */
        for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) s += expf(ldf(x, xd, r * ldx + j) - m);
    s = block_sum(s, red);
    if (threadIdx.x == 0) part[r * gridDim.x + blockIdx.x] = make_float2(m, s);
}
__global__ void softmax_finish_kernel(const void *x, void *out, const float2 *part, int64_t dim,
                                      int64_t ldx, int64_t ldo, int log_, int xd, int od) {
    __shared__ float red[33];
    const int64_t r = blockIdx.y, lo = (int64_t)blockIdx.x * SM_CHUNK;
    const int64_t hi = lo + SM_CHUNK < dim ? lo + SM_CHUNK : dim;
    const int nc = (int)gridDim.x;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < nc; c += blockDim.x) m = fmaxf(m, part[r * nc + c].x);
    m = block_max(m, red);
    float s = 0.0f;
    for (int c = threadIdx.x; c < nc; c += blockDim.x) {
        float2 p = part[r * nc + c];
        if (p.x != -INFINITY || p.y != p.y) s += p.y * expf(p.x - m);
    }
    s = block_sum(s, red);
    float ls = logf(s), inv = 1.0f / s;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        float v = ldf(x, xd, r * ldx + j) - m;
        stf(out, od, r * ldo + j, log_ ? v - ls : expf(v) * inv);
    }
}
static TocBuffer g_select_ws;
/* one caller at a time: the partials of one call must not be overwritten by another host
 * thread's launches before its second kernel has read them (as in attention.cu) */
static std::mutex g_select_lock;

TOC_EXPORT int toc_softmax(const void *x, void *out, int64_t rows, int64_t dim, int64_t ldx,
                           int64_t ldo, int log_, int x_dtype, int out_dtype) {
    TOC_CHECK(rows >= 0 && dim >= 1 && ldx >= dim && ldo >= dim, TO_ERR_INVALID_ARGUMENT,
              "toc_softmax: bad sizes");
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_act(out_dtype), TO_ERR_DTYPE, "toc_softmax: dtypes");
    if (rows == 0) return TO_OK;
    TOC_CHECK(x && out, TO_ERR_INVALID_ARGUMENT, "toc_softmax: NULL pointer");
    TOC_READY();
    if (dim >= SM_SPLIT_MIN_DIM && rows <= SM_SPLIT_ROWS) {
        const int64_t nc = toc_cdiv(dim, SM_CHUNK);
        std::lock_guard<std::mutex> hold(g_select_lock);
        void *ws = nullptr;
        if (toc_buffer_reserve(&g_select_ws, (size_t)(rows * nc) * sizeof(float2), &ws, "softmax workspace") ==
            TO_OK) {
            dim3 grid((unsigned)nc, (unsigned)rows);
            softmax_partial_kernel<<<grid, 256, 0, toc_stream()>>>(x, (float2 *)ws, dim, ldx, x_dtype);
            TOC_LAUNCHED("softmax_partial_kernel");
            softmax_finish_kernel<<<grid, 256, 0, toc_stream()>>>(x, out, (const float2 *)ws, dim, ldx, ldo,
                                                                  log_, x_dtype, out_dtype);
            TOC_LAUNCHED("softmax_finish_kernel");
            return TO_OK;
        }
        /* no workspace (growing it inside a capture): the one-block path below */
    }
    softmax_kernel<<<(unsigned)rows, 256, 0, toc_stream()>>>(x, out, dim, ldx, ldo, log_, x_dtype,
                                                             out_dtype);
    TOC_LAUNCHED("softmax_kernel");
    return TO_OK;
}

/* ---- argmax / topk: (value, index) keys ordered by value, then lower index; NaN is largest ---- */
__device__ __forceinline__ bool key_gt(float a, int64_t ia, float b, int64_t ib) {
    bool na = a != a, nb = b != b;
    if (na || nb) {
        if (na && nb) return ia < ib;
        return na;
    }
    if (a != b) return a > b;
    return ia < ib;
}
__global__ void argmax_kernel(const void *x, void *idx, int64_t dim, int xd, int idt,
                              float prev_v, int use_prev) {
    __shared__ float sv[32];
    __shared__ int64_t si[32];
    int64_t r = blockIdx.x;
    float bv = -INFINITY;
    int64_t bi = -1;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = ldf(x, xd, r * dim + j);
        if (bi < 0 || key_gt(v, j, bv, bi)) {
            bv = v;
            bi = j;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi >= 0 && (bi < 0 || key_gt(ov, oi, bv, bi))) {
            bv = ov;
            bi = oi;
        }
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) {
        sv[w] = bv;
        si[w] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < (int)(blockDim.x >> 5); k++)
            if (si[k] >= 0 && (bi < 0 || key_gt(sv[k], si[k], bv, bi))) {
                bv = sv[k];
                bi = si[k];
            }
        if (idt == TO_I32) ((int32_t *)idx)[r] = (int32_t)bi;
        else ((int64_t *)idx)[r] = bi;
    }
}
TOC_EXPORT int toc_argmax(const void *x, void *idx, int64_t rows, int64_t dim, int x_dtype,
                          int idx_dtype) {
    TOC_CHECK(rows >= 0 && dim >= 1, TO_ERR_INVALID_ARGUMENT, "toc_argmax: bad sizes");
    TOC_CHECK(toc_is_act(x_dtype) && (idx_dtype == TO_I32 || idx_dtype == TO_I64), TO_ERR_DTYPE,
              "toc_argmax: dtypes");
    if (rows == 0) return TO_OK;
    TOC_CHECK(x && idx, TO_ERR_INVALID_ARGUMENT, "toc_argmax: NULL pointer");
    TOC_READY();
    argmax_kernel<<<(unsigned)rows, 1024, 0, toc_stream()>>>(x, idx, dim, x_dtype, idx_dtype, 0, 0);
    TOC_LAUNCHED("argmax_kernel");
    return TO_OK;
}

/* The k best keys among n by k successive block-wide selections of the best key strictly after
 * the previous one. load(j, v, id) gives key j (id < 0: no key); store(s, v, id) is called by
 * thread 0 for s = 0..k-1, with id -1 once the keys run out. */
template <class Load, class Store>
__device__ void block_select_k(int64_t n, int64_t k, Load load, Store store) {
    __shared__ float sv[32];
    __shared__ int64_t si[32];
    __shared__ float pv;
    __shared__ int64_t pi;
    if (threadIdx.x == 0) pi = -1;
    __syncthreads();
    for (int64_t s = 0; s < k; s++) {
        const float prev_v = pv;
        const int64_t prev_i = pi;
        if (prev_i == -2) { /* exhausted (uniform: read after a block barrier) */
            if (threadIdx.x == 0) store(s, -INFINITY, -1);
            continue;
        }
        float bv = -INFINITY;
        int64_t bi = -1;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            float v;
            int64_t id;
            load(j, v, id);
            if (id < 0) continue;
            if (prev_i >= 0 && !key_gt(prev_v, prev_i, v, id)) continue;
            if (bi < 0 || key_gt(v, id, bv, bi)) {
                bv = v;
                bi = id;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi >= 0 && (bi < 0 || key_gt(ov, oi, bv, bi))) {
                bv = ov;
                bi = oi;
            }
        }
        int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
        if (lane == 0) {
            sv[w] = bv;
            si[w] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int q = 1; q < (int)(blockDim.x >> 5); q++)
                if (si[q] >= 0 && (bi < 0 || key_gt(sv[q], si[q], bv, bi))) {
                    bv = sv[q];
                    bi = si[q];
                }
            store(s, bv, bi);
            pv = bv;
            pi = bi < 0 ? -2 : bi;
        }
        __syncthreads();
    }
}
__device__ __forceinline__ void store_index(void *idx, int idt, int64_t at, int64_t v) {
    if (idt == TO_I32) ((int32_t *)idx)[at] = (int32_t)v;
    else ((int64_t *)idx)[at] = v;
}
/* one block a row */
__global__ void topk_kernel(const void *x, void *vals, void *idx, int64_t dim, int64_t k, int xd,
                            int idt) {
    const int64_t r = blockIdx.x;
    block_select_k(
        dim, k, [&](int64_t j, float &v, int64_t &id) { v = ldf(x, xd, r * dim + j), id = j; },
        [&](int64_t s, float v, int64_t id) {
            stf(vals, xd, r * k + s, v);
            store_index(idx, idt, r * k + s, id);
        });
}
/* Long rows (a vocabulary's logits), few of them, k small: block (c, r) selects the k best keys
 * of chunk c of row r, then one block a row selects among the chunks' candidates. The union of
 * the chunks' k best holds the row's k best, so the keys and their order are the one-block
 * kernel's. */
#define TOPK_SPLIT_MIN_DIM 16384
#define TOPK_SPLIT_MAX_K 64
#define TOPK_SPLIT_ROWS 64
#define TOPK_CHUNK 2048
__global__ void topk_chunk_kernel(const void *x, float *cv, int64_t *ci, int64_t dim, int64_t k, int xd) {
    const int64_t r = blockIdx.y, c = blockIdx.x, lo = c * TOPK_CHUNK;
    const int64_t n = lo + TOPK_CHUNK < dim ? TOPK_CHUNK : dim - lo;
    const int64_t base = (r * gridDim.x + c) * k;
    block_select_k(
        n, k, [&](int64_t j, float &v, int64_t &id) { v = ldf(x, xd, r * dim + lo + j), id = lo + j; },
        [&](int64_t s, float v, int64_t id) {
            cv[base + s] = v;
            ci[base + s] = id;
        });
}
__global__ void topk_merge_kernel(const float *cv, const int64_t *ci, int64_t nc, void *vals, void *idx,
                                  int64_t k, int xd, int idt) {
    const int64_t r = blockIdx.x, base = r * nc * k;
    block_select_k(
        nc * k, k, [&](int64_t j, float &v, int64_t &id) { v = cv[base + j], id = ci[base + j]; },
        [&](int64_t s, float v, int64_t id) {
            stf(vals, xd, r * k + s, v);
            store_index(idx, idt, r * k + s, id);
        });
}
TOC_EXPORT int toc_topk(const void *x, void *values, void *idx, int64_t rows, int64_t dim, int64_t k,
                        int x_dtype, int idx_dtype) {
    TOC_CHECK(rows >= 0 && dim >= 1 && k >= 1 && k <= dim, TO_ERR_INVALID_ARGUMENT,
              "toc_topk: need 1 <= k <= dim");
    TOC_CHECK(toc_is_act(x_dtype) && (idx_dtype == TO_I32 || idx_dtype == TO_I64), TO_ERR_DTYPE,
              "toc_topk: dtypes");
    if (rows == 0) return TO_OK;
    TOC_CHECK(x && values && idx, TO_ERR_INVALID_ARGUMENT, "toc_topk: NULL pointer");
    TOC_READY();
    if (dim >= TOPK_SPLIT_MIN_DIM && k <= TOPK_SPLIT_MAX_K && rows <= TOPK_SPLIT_ROWS) {
        const int64_t nc = toc_cdiv(dim, TOPK_CHUNK);
        const size_t keys = (size_t)(rows * nc * k);
        std::lock_guard<std::mutex> hold(g_select_lock);
        void *ws = nullptr;
        if (toc_buffer_reserve(&g_select_ws, keys * (sizeof(float) + sizeof(int64_t)), &ws, "topk workspace") ==
            TO_OK) {
            int64_t *ci = (int64_t *)ws; /* 8-byte ids first: aligned */
            float *cv = (float *)(ci + keys);
            topk_chunk_kernel<<<dim3((unsigned)nc, (unsigned)rows), 256, 0, toc_stream()>>>(x, cv, ci, dim, k,
                                                                                          x_dtype);
            TOC_LAUNCHED("topk_chunk_kernel");
            topk_merge_kernel<<<(unsigned)rows, 256, 0, toc_stream()>>>(cv, ci, nc, values, idx, k, x_dtype,
                                                                       idx_dtype);
            TOC_LAUNCHED("topk_merge_kernel");
            return TO_OK;
        }
        /* no workspace (growing it inside a capture): the one-block path below */
    }
    topk_kernel<<<(unsigned)rows, 256, 0, toc_stream()>>>(x, values, idx, dim, k, x_dtype, idx_dtype);
    TOC_LAUNCHED("topk_kernel");
    return TO_OK;
}

/* ---- cumsum: one thread per row (rows are short in the models that use it) ---- */
__global__ void cumsum_kernel(const void *x, void *out, int64_t rows, int64_t dim, int xd, int od) {
    int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (r >= rows) return;
    float acc = 0.0f;
    for (int64_t j = 0; j < dim; j++) {
        acc += ldf(x, xd, r * dim + j);
        stf(out, od, r * dim + j, acc);
    }
}
TOC_EXPORT int toc_cumsum(const void *x, void *out, int64_t rows, int64_t dim, int x_dtype,
                          int out_dtype) {
    TOC_CHECK(rows >= 0 && dim >= 0, TO_ERR_INVALID_ARGUMENT, "toc_cumsum: bad sizes");
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_act(out_dtype), TO_ERR_DTYPE, "toc_cumsum: dtypes");
    if (rows * dim == 0) return TO_OK;
    TOC_CHECK(x && out, TO_ERR_INVALID_ARGUMENT, "toc_cumsum: NULL pointer");
    TOC_READY();
    cumsum_kernel<<<toc_grid(rows, 128), 128, 0, toc_stream()>>>(x, out, rows, dim, x_dtype,
                                                                 out_dtype);
    TOC_LAUNCHED("cumsum_kernel");
    return TO_OK;
}

/* ---- composites, as on the CPU (src/cpu/norm.c, rope.c): the same ops one after the other, so
 * the same results. Each runs as one kernel where its arguments are valid (the row kernels above,
 * chained per row); otherwise the ops run one by one and report the error. ---- */
extern "C" int toc_add(const void *a, const void *b, void *out, int64_t n, int dtype);

TOC_EXPORT int toc_add_rms_norm(void *x, const void *delta, const void *w, void *out, int64_t rows, int64_t dim,
                                float eps, int variant, int x_dtype, int w_dtype, int out_dtype) {
    TOC_CHECK(x && delta, TO_ERR_INVALID_ARGUMENT, "toc_add_rms_norm: NULL pointer");
    TOC_CHECK(rows >= 0, TO_ERR_INVALID_ARGUMENT, "toc_add_rms_norm: rows is negative");
    TOC_CHECK(dim >= 1, TO_ERR_SHAPE, "toc_add_rms_norm: dim must be >= 1 (got %lld)", (long long)dim);
    TOC_CHECK(variant == TO_RMS_PLAIN || variant == TO_RMS_ZERO_CENTERED, TO_ERR_INVALID_ARGUMENT,
              "toc_add_rms_norm: variant %d (plain or zero-centred expected)", variant);
    const RmsArgs a = {x, w, nullptr, out, rows, 1, dim, dim, dim, 0, 0, dim, dim, eps, variant, x_dtype, w_dtype,
                       out_dtype, delta};
    const bool valid = toc_is_act(x_dtype) && toc_is_act(out_dtype) && toc_is_wt(w_dtype) && eps >= 0.0f && w &&
                       out && rows * dim <= 0x7fffffffffffLL;
    if (valid && (!rms_vec(a) || ((uintptr_t)delta & 15) == 0)) {
        if (rows == 0) return TO_OK;
        TOC_READY();
        return launch_rms(a);
    }
    int rc = toc_add(x, delta, x, rows * dim, x_dtype);
    if (rc != TO_OK) return rc;
    return toc_rms_norm(x, w, NULL, out, rows, 1, dim, dim, dim, 0, 0, dim, dim, eps, variant, x_dtype, w_dtype,
                        out_dtype);
}

/* q/k norm + RoPE, one warp per (token, head) row of q then k: the row is normalised in place
 * (as toc_rms_norm's kernel for it would: NV > 0 the vectorised one, one warp per row) and then
 * rotated. */
struct QkArgs {
    char *q, *k;
    const void *qw, *kw, *cos, *sin;
    int64_t T, nh, nkv, hd, rot, q_st, k_st;
    float eps;
    int variant, mode, xd, wd, td;
};
template <int NV>
__global__ void qk_norm_rope_kernel(QkArgs a) {
    pdl_enter(); /* launched by toc_launch */
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
    const int64_t nq = a.T * a.nh;
    if (row >= nq + a.T * a.nkv) return;
    const bool isq = row < nq;
    const int64_t r = isq ? row : row - nq, heads = isq ? a.nh : a.nkv, t = r / heads, h = r - t * heads;
    const int esz = a.xd == TO_F32 ? 4 : 2;
    char *base = isq ? a.q + (t * a.q_st + h * a.hd) * esz : a.k + (t * a.k_st + h * a.hd) * esz;
    const void *w = isq ? a.qw : a.kw;
    if (w) {
        if (NV > 0)
            rms_row_vec<(NV > 0 ? NV : 1)>((uint4 *)base, nullptr, (uint4 *)base, (const uint4 *)w, a.hd, a.eps,
                                           a.variant, true, 1, nullptr);
        else
            rms_row(base, nullptr, nullptr, base, w, a.hd, a.eps, a.variant, a.xd, a.wd, a.xd);
        __syncwarp(); /* the rotation reads elements other lanes normalised */
    }
    rope_row(base, a.cos, a.sin, t, a.rot, a.mode, a.xd, a.td);
}

/* The common case in one pass: bf16 rows, norm weights and tables, both norms, a NeoX rotation of
 * the whole head, head_dim a multiple of 16 up to 256 (one 16-byte chunk per lane, as the
 * vectorised norm takes them, so its sum of squares in the same order). A warp per head row as
 * above, but the normalised row stays in registers (the halves trade chunks by shuffles), every
 * load (row, weights, cos, sin) is issued before the first use, and the bf16 roundings are
 * conversion instructions (rbf_rn, pack_bf8_rn). The arithmetic is rms_row_vec's then
 * rope_row's. */
__global__ void __launch_bounds__(256) qk_norm_rope_bf16_kernel(QkArgs a) {
    pdl_enter(); /* launched by toc_launch */
    const int64_t row = blockIdx.x * 8LL + (threadIdx.x >> 5);
    const int64_t nq = a.T * a.nh;
    if (row >= nq + a.T * a.nkv) return; /* the whole warp: row is the warp's */
    const bool isq = row < nq;
    const int64_t r = isq ? row : row - nq, heads = isq ? a.nh : a.nkv, t = r / heads, h = r - t * heads;
    uint4 *base = (uint4 *)((uint16_t *)(isq ? a.q : a.k) + t * (isq ? a.q_st : a.k_st) + h * a.hd);
    const uint4 *w = (const uint4 *)(isq ? a.qw : a.kw);
    const int lane = threadIdx.x & 31, nv = (int)(a.hd / 8), h2 = nv / 2;
    const bool live = lane < nv, first = lane < h2;
    const int ti = first ? lane : lane - h2; /* the pair's table chunk */
    const uint4 z = make_uint4(0, 0, 0, 0);
    const uint4 xv = live ? base[lane] : z;
    const uint4 wv = live ? __ldg(w + lane) : z;
    const uint4 cv = live ? __ldg((const uint4 *)((const uint16_t *)a.cos + t * a.rot) + ti) : z;
    const uint4 sv = live ? __ldg((const uint4 *)((const uint16_t *)a.sin + t * a.rot) + ti) : z;
    float f[8], g[8];
    bf8(xv, f);
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; e++) ss += f[e] * f[e];
    ss = warp_sum(ss);
    const float rr = 1.0f / sqrtf(ss / (float)a.hd + a.eps);
    bf8(wv, g);
#pragma unroll
    for (int e = 0; e < 8; e++)
        f[e] = a.variant == TO_RMS_ZERO_CENTERED ? f[e] * rr * (1.0f + g[e]) : g[e] * rbf_rn(f[e] * rr);
    const uint4 nrm = pack_bf8_rn(f); /* the normalised chunk as the norm would store it */
    const int src = (first ? lane + h2 : lane - h2) & 31;
    const uint4 pv = make_uint4(__shfl_sync(0xffffffffu, nrm.x, src), __shfl_sync(0xffffffffu, nrm.y, src),
                                __shfl_sync(0xffffffffu, nrm.z, src), __shfl_sync(0xffffffffu, nrm.w, src));
    float own[8], par[8], c[8], sn[8], o[8];
    bf8(nrm, own);
    bf8(pv, par);
    bf8(cv, c);
    bf8(sv, sn);
#pragma unroll
    for (int e = 0; e < 8; e++) {
        const float x1 = first ? own[e] : par[e], x2 = first ? par[e] : own[e];
        const float p1 = rbf_rn(__fmul_rn(x1, c[e])), p2 = rbf_rn(__fmul_rn(x2, sn[e]));
        const float p3 = rbf_rn(__fmul_rn(x2, c[e])), p4 = rbf_rn(__fmul_rn(x1, sn[e]));
        o[e] = first ? __fsub_rn(p1, p2) : __fadd_rn(p3, p4); /* rope_pair's o1 / o2 */
    }
    if (live) base[lane] = pack_bf8_rn(o);
}

/* Whether toc_rms_norm would take the vectorised kernel for these heads (as qk_norm_rope calls it). */
static bool qk_vec(const void *x, const void *w, int64_t hd, int64_t st, int xd, int wd, int variant) {
    RmsArgs a = {x, w, nullptr, (void *)x, 1, 1, hd, st, hd, 0, 0, st, hd, 0.0f, variant, xd, wd, xd, nullptr};
    return rms_vec(a);
}

TOC_EXPORT int toc_qk_norm_rope(void *q, void *k, const void *q_w, const void *k_w, const void *cos,
                                const void *sin, int64_t T, int64_t nh, int64_t nkv, int64_t hd, int64_t rot_dim,
                                int64_t q_st, int64_t k_st, float eps, int variant, int mode, int x_dtype,
                                int w_dtype, int table_dtype) {
    TOC_CHECK(q && k, TO_ERR_INVALID_ARGUMENT, "toc_qk_norm_rope: NULL pointer");
    TOC_CHECK(hd >= 1, TO_ERR_SHAPE, "toc_qk_norm_rope: head_dim must be >= 1");
    TOC_CHECK(q_st >= nh * hd && k_st >= nkv * hd, TO_ERR_SHAPE,
              "toc_qk_norm_rope: token strides %lld/%lld shorter than the heads %lld/%lld", (long long)q_st,
              (long long)k_st, (long long)(nh * hd), (long long)(nkv * hd));
    const bool qv = q_w && qk_vec(q, q_w, hd, q_st, x_dtype, w_dtype, variant);
    const bool kv = k_w && qk_vec(k, k_w, hd, k_st, x_dtype, w_dtype, variant);
    /* one kernel for both only where q's and k's norms take the same kernel, with one warp per
     * head row (heads below 512: the rotation then needs no block barrier) */
    const bool same = (!q_w || !k_w || qv == kv) && (!(qv || kv) || rms_wpr(hd) == 1);
    const bool valid = T >= 0 && nh >= 0 && nkv >= 0 && (variant == TO_RMS_PLAIN || variant == TO_RMS_ZERO_CENTERED) &&
                       toc_is_act(x_dtype) && toc_is_act(table_dtype) && ((!q_w && !k_w) || toc_is_wt(w_dtype)) &&
                       eps >= 0.0f && (mode == TO_ROPE_NEOX || mode == TO_ROPE_INTERLEAVED) && rot_dim >= 2 &&
                       rot_dim % 2 == 0 && rot_dim <= hd && rot_dim <= 8192 && cos && sin &&
                       T * (nh + nkv) <= 0x7fffffffLL && same;
    if (valid) {
        if (T * (nh + nkv) == 0) return TO_OK;
        TOC_READY();
        const QkArgs a = {(char *)q, (char *)k, q_w, k_w, cos, sin, T, nh, nkv, hd, rot_dim, q_st, k_st, eps,
                          variant, mode, x_dtype, w_dtype, table_dtype};
        const unsigned blocks = (unsigned)toc_cdiv(T * (nh + nkv), 8);
        const bool one_pass = qv && kv && x_dtype == TO_BF16 && table_dtype == TO_BF16 && mode == TO_ROPE_NEOX &&
                              rot_dim == hd && hd % 16 == 0 && hd <= 256 && ((uintptr_t)cos & 15) == 0 &&
                              ((uintptr_t)sin & 15) == 0;
        if (one_pass) {
            TOC_CUDA((toc_launch(qk_norm_rope_bf16_kernel, dim3(blocks), dim3(256), 0, a)),
                "qk_norm_rope_bf16_kernel");
        } else if (qv || kv) {
            switch (rms_bf16_chunks(hd)) {
            case 1: TOC_CUDA((toc_launch(qk_norm_rope_kernel<1>, dim3(blocks), dim3(256), 0, a)),
                "qk_norm_rope_kernel"); break;
            case 2: TOC_CUDA((toc_launch(qk_norm_rope_kernel<2>, dim3(blocks), dim3(256), 0, a)),
                "qk_norm_rope_kernel"); break;
            case 4: TOC_CUDA((toc_launch(qk_norm_rope_kernel<4>, dim3(blocks), dim3(256), 0, a)),
                "qk_norm_rope_kernel"); break;
            case 8: TOC_CUDA((toc_launch(qk_norm_rope_kernel<8>, dim3(blocks), dim3(256), 0, a)),
                "qk_norm_rope_kernel"); break;
            default: TOC_CUDA((toc_launch(qk_norm_rope_kernel<16>, dim3(blocks), dim3(256), 0, a)),
                "qk_norm_rope_kernel");
            }
        } else {
            TOC_CUDA((toc_launch(qk_norm_rope_kernel<0>, dim3(blocks), dim3(256), 0, a)), "qk_norm_rope_kernel");
        }
        return TO_OK;
    }
    int rc = TO_OK;
    if (q_w)
        rc = toc_rms_norm(q, q_w, NULL, q, T, nh, hd, q_st, hd, 0, 0, q_st, hd, eps, variant, x_dtype, w_dtype,
                          x_dtype);
    if (rc == TO_OK && k_w)
        rc = toc_rms_norm(k, k_w, NULL, k, T, nkv, hd, k_st, hd, 0, 0, k_st, hd, eps, variant, x_dtype, w_dtype,
                          x_dtype);
    if (rc == TO_OK) rc = toc_rope_apply(q, cos, sin, T, nh, hd, rot_dim, q_st, hd, mode, x_dtype, table_dtype);
    if (rc == TO_OK) rc = toc_rope_apply(k, cos, sin, T, nkv, hd, rot_dim, k_st, hd, mode, x_dtype, table_dtype);
    return rc;
}
