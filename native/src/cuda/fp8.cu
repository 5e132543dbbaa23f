/* FP8 block-scaled weights on the device (the CUDA twins of src/cpu/fp8.c): W [n, k] as e4m3fn
 * bytes plus fp32 scales [ceil(n/bn), ceil(k/bk)], W[i][j] = e4m3(w[i][j]) * scale[i/bn][j/bk].
 * The e4m3 conversion is in fp8.cuh. */
#include "common.cuh"
#include "fp8.cuh"

/* One byte -> its exact value as f32 with the CPU's NaN bits (sign | 0x7ff00000). */
__device__ __forceinline__ float fp8_exact(uint32_t b) {
    if ((b & 0x7fu) == 0x7fu) return __uint_as_float(((b & 0x80u) << 24) | 0x7ff00000u);
    float2 f = fp8x2_to_float2(b);
    return f.x * FP8_FOLD; /* exact: a power of two */
}

/* f16 with the CPU's NaN (sign | 0x7e00); RNE otherwise, as to_f32_to_f16 */
__device__ __forceinline__ uint16_t f2h_cpu(float v) {
    uint32_t u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7e00u);
    return __half_as_ushort(__float2half_rn(v));
}

/* ==== dequantization ============================================================================ */
__global__ void fp8_dequant_kernel(const uint8_t *__restrict__ w, const float *__restrict__ scale, int64_t n,
                                   int64_t k, int64_t bn, int64_t bk, int64_t sk, void *out, int dt) {
    for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
        const float *sr = scale + (i / bn) * sk;
        for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < k; j += (int64_t)gridDim.x * blockDim.x) {
            const uint32_t b = w[i * k + j];
            /* a NaN byte keeps the CPU's NaN bits (x86 multiplies keep the NaN operand's payload;
             * the GPU's would give its canonical NaN) */
            const float e = fp8_exact(b);
            float v = (b & 0x7fu) == 0x7fu ? e : __fmul_rn(e, sr[j / bk]);
            int64_t o = i * k + j;
            if (dt == TO_F32) ((float *)out)[o] = v;
            else if (dt == TO_BF16) ((uint16_t *)out)[o] = f2bf(v);
            else ((uint16_t *)out)[o] = f2h_cpu(v);
        }
    }
}

static int launch_dequant(const uint8_t *w, const float *scale, int64_t n, int64_t k, int64_t bn, int64_t bk,
                          void *out, int dt) {
    unsigned gx = toc_grid(k, 256, 64), gy = (unsigned)(n < 65535 ? n : 65535);
    fp8_dequant_kernel<<<dim3(gx, gy), 256, 0, toc_stream()>>>(w, scale, n, k, bn, bk, toc_cdiv(k, bk), out, dt);
    TOC_LAUNCHED("fp8_dequant_kernel");
    return TO_OK;
}

TOC_EXPORT int toc_fp8_dequant(const uint8_t *w, const float *scale, int64_t n, int64_t k, int64_t block_n,
                               int64_t block_k, void *out, int out_dtype) {
    TOC_CHECK(n >= 0 && k >= 0, TO_ERR_INVALID_ARGUMENT, "toc_fp8_dequant: negative size n=%lld k=%lld",
              (long long)n, (long long)k);
    TOC_CHECK(block_n >= 1 && block_k >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_fp8_dequant: block sizes must be >= 1, got (%lld, %lld)", (long long)block_n,
              (long long)block_k);
    TOC_CHECK(toc_is_wt(out_dtype), TO_ERR_DTYPE, "toc_fp8_dequant: out dtype %d not supported (f32, bf16 or f16)",
              out_dtype);
    if (n == 0 || k == 0) return TO_OK;
    TOC_CHECK(w && scale && out, TO_ERR_INVALID_ARGUMENT, "toc_fp8_dequant: NULL pointer");
    TOC_READY();
    return launch_dequant(w, scale, n, k, block_n, block_k, out, out_dtype);
}

/* ==== GEMV (m <= 16) ============================================================================= */
/* One warp per output column j, all m rows of x: each lane takes 16 weight bytes at a time (one
 * 16-byte load; four in flight) and, per x row, sums their 16 products in fp32, multiplies that
 * chunk sum by the chunk's block scale and adds it to the row's fp32 total (the weight bytes are
 * read once; every chunk lies in one k-block because block_k % 16 == 0). Lanes are then summed
 * (shuffles), bias added, one rounding. Needs k % 16 == 0, block_k % 16 == 0, w 16-byte aligned;
 * VX: x rows 16-byte aligned too (read 8 bf16 / 4 floats a load). */
template <int MT, int XT, bool VX>
__device__ __forceinline__ void fp8_chunk(const uint4 q, int64_t t, const void *__restrict__ x, int64_t ldx, int m,
                                          float s, float (&tot)[MT]) {
    float wf[16];
    fp8x16_to_float(q, wf);
#pragma unroll
    for (int r = 0; r < MT; r++) {
        if (r >= m) break;
        float xv[16];
        if (XT == TO_F32) {
            const float *xr = (const float *)x + r * ldx + t;
            if (VX) {
#pragma unroll
                for (int v = 0; v < 4; v++) {
                    const float4 f = *reinterpret_cast<const float4 *>(xr + 4 * v);
                    xv[4 * v] = f.x, xv[4 * v + 1] = f.y, xv[4 * v + 2] = f.z, xv[4 * v + 3] = f.w;
                }
            } else {
#pragma unroll
                for (int e = 0; e < 16; e++) xv[e] = xr[e];
            }
        } else {
            const uint16_t *xr = (const uint16_t *)x + r * ldx + t;
            if (VX) {
#pragma unroll
                for (int v = 0; v < 2; v++) {
                    const uint4 h = *reinterpret_cast<const uint4 *>(xr + 8 * v);
                    const uint32_t hw[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        xv[8 * v + 2 * e] = __uint_as_float(hw[e] << 16);
                        xv[8 * v + 2 * e + 1] = __uint_as_float(hw[e] & 0xffff0000u);
                    }
                }
            } else {
#pragma unroll
                for (int e = 0; e < 16; e++) xv[e] = bf2f(xr[e]);
            }
        }
        float part = 0.0f;
#pragma unroll
        for (int e = 0; e < 16; e++) part = fmaf(xv[e], wf[e], part);
        tot[r] = fmaf(part, s, tot[r]);
    }
}

template <int MT, int XT, bool VX>
__global__ void __launch_bounds__(256) fp8_gemv_kernel(const void *__restrict__ x, int64_t ldx, int m,
                                                       const uint8_t *__restrict__ w, const float *__restrict__ scale,
                                                       int64_t n, int64_t k, int64_t bn, int64_t bk, int64_t sk,
                                                       const void *bias, int bd, void *y, int64_t ldy, int yd) {
    const int lane = threadIdx.x & 31;
    const int64_t j = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    if (j >= n) return;
    const uint8_t *wr = w + j * k;
    const float *sr = scale + (j / bn) * sk;
    const uint32_t bk32 = (uint32_t)bk; /* k < 2^31 (checked by the caller) */
    float tot[MT];
#pragma unroll
    for (int r = 0; r < MT; r++) tot[r] = 0.0f;
    constexpr int64_t STEP = 32 * 16;
    int64_t t = (int64_t)lane * 16;
    for (; t + 3 * STEP < k; t += 4 * STEP) {
        uint4 q[4];
#pragma unroll
        for (int u = 0; u < 4; u++) q[u] = __ldg(reinterpret_cast<const uint4 *>(wr + t + u * STEP));
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int64_t tu = t + u * STEP;
            fp8_chunk<MT, XT, VX>(q[u], tu, x, ldx, m, sr[(uint32_t)tu / bk32] * FP8_FOLD, tot);
        }
    }
    for (; t < k; t += STEP)
        fp8_chunk<MT, XT, VX>(__ldg(reinterpret_cast<const uint4 *>(wr + t)), t, x, ldx, m,
                              sr[(uint32_t)t / bk32] * FP8_FOLD, tot);
#pragma unroll
    for (int r = 0; r < MT; r++) {
        if (r >= m) break;
        float v = tot[r];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) {
            if (bias) v += ldf(bias, bd, j);
            stf(y, yd, r * ldy + j, v);
        }
    }
}

template <int MT, bool VX>
static void launch_gemv_vx(const void *x, int64_t ldx, int m, const uint8_t *w, const float *scale, int64_t n,
                           int64_t k, int64_t bn, int64_t bk, const void *bias, int bd, void *y, int64_t ldy,
                           int xd, int yd) {
    const unsigned grid = (unsigned)toc_cdiv(n, 8);
    const int64_t sk = toc_cdiv(k, bk);
    if (xd == TO_F32)
        fp8_gemv_kernel<MT, TO_F32, VX><<<grid, 256, 0, toc_stream()>>>(x, ldx, m, w, scale, n, k, bn, bk, sk, bias,
                                                                         bd, y, ldy, yd);
    else
        fp8_gemv_kernel<MT, TO_BF16, VX><<<grid, 256, 0, toc_stream()>>>(x, ldx, m, w, scale, n, k, bn, bk, sk,
                                                                          bias, bd, y, ldy, yd);
}

template <int MT>
static void launch_gemv_mt(const void *x, int64_t ldx, int m, const uint8_t *w, const float *scale, int64_t n,
                           int64_t k, int64_t bn, int64_t bk, const void *bias, int bd, void *y, int64_t ldy,
                           int xd, int yd) {
    /* x read 16 bytes at a time where every row start is 16-byte aligned */
    const bool vx = aligned16(x) && (ldx * (xd == TO_F32 ? 4 : 2)) % 16 == 0;
    if (vx) launch_gemv_vx<MT, true>(x, ldx, m, w, scale, n, k, bn, bk, bias, bd, y, ldy, xd, yd);
    else launch_gemv_vx<MT, false>(x, ldx, m, w, scale, n, k, bn, bk, bias, bd, y, ldy, xd, yd);
}

/* the bf16 linear of src/cuda/linear.cu (the prefill path below) */
extern "C" int toc_linear(const void *x, const void *w, const void *bias, void *y, int64_t m, int64_t n, int64_t k,
                          int64_t ldx, int64_t ldy, int x_dtype, int w_dtype, int bias_dtype, int y_dtype);

/* bf16 scratch for the dequantized weight of the large-m path */
static TocBuffer g_fp8_scratch;

TOC_EXPORT int toc_linear_fp8(const void *x, const uint8_t *w, const float *scale, const void *bias, void *y,
                              int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy, int64_t block_n,
                              int64_t block_k, int x_dtype, int bias_dtype, int y_dtype) {
    TOC_CHECK(m >= 0 && n >= 0 && k >= 0 && ldx >= k && ldy >= n, TO_ERR_INVALID_ARGUMENT,
              "toc_linear_fp8: bad sizes m=%lld n=%lld k=%lld ldx=%lld ldy=%lld", (long long)m, (long long)n,
              (long long)k, (long long)ldx, (long long)ldy);
    TOC_CHECK(block_n >= 1 && block_k >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_linear_fp8: block sizes must be >= 1, got (%lld, %lld)", (long long)block_n,
              (long long)block_k);
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_act(y_dtype), TO_ERR_DTYPE, "toc_linear_fp8: dtypes x=%d y=%d",
              x_dtype, y_dtype);
    TOC_CHECK(!bias || toc_is_wt(bias_dtype), TO_ERR_DTYPE, "toc_linear_fp8: bias dtype %d", bias_dtype);
    if (m == 0 || n == 0) return TO_OK;
    TOC_CHECK(y && (k == 0 || (x && w && scale)), TO_ERR_INVALID_ARGUMENT, "toc_linear_fp8: NULL pointer");
    TOC_READY();
    const bool gemv = m <= 16 && k > 0 && k % 16 == 0 && block_k % 16 == 0 && aligned16(w) && n <= 0x7fffffffLL * 8 &&
                      k < (1LL << 31) && block_k < (1LL << 31);
    if (gemv) {
        const int mi = (int)m;
        if (m <= 1) launch_gemv_mt<1>(x, ldx, mi, w, scale, n, k, block_n, block_k, bias, bias_dtype, y, ldy, x_dtype, y_dtype);
        else if (m <= 4) launch_gemv_mt<4>(x, ldx, mi, w, scale, n, k, block_n, block_k, bias, bias_dtype, y, ldy, x_dtype, y_dtype);
        else launch_gemv_mt<16>(x, ldx, mi, w, scale, n, k, block_n, block_k, bias, bias_dtype, y, ldy, x_dtype, y_dtype);
        TOC_LAUNCHED("fp8_gemv_kernel");
        return TO_OK;
    }
    if (k == 0) return toc_linear(x, NULL, bias, y, m, n, 0, ldx, ldy, x_dtype, TO_BF16, bias_dtype, y_dtype);
    /* Prefill (and shapes the GEMV does not take): W dequantized to bf16 (e4m3 * scale rounded
     * once) in a scratch buffer, then the bf16 linear (tensor cores / cuBLAS). The scratch is
     * reused in stream order, so one call's weight is consumed before the next call rewrites it. */
    void *wb = NULL;
    int rc = toc_buffer_reserve(&g_fp8_scratch, (size_t)n * (size_t)k * 2, &wb, "linear_fp8 scratch");
    if (rc) return rc;
    rc = launch_dequant(w, scale, n, k, block_n, block_k, wb, TO_BF16);
    if (rc) return rc;
    return toc_linear(x, wb, bias, y, m, n, k, ldx, ldy, x_dtype, TO_BF16, bias_dtype, y_dtype);
}
