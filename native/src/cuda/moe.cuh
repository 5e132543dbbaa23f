/* Top-k selection and a double-precision block sum shared by the routers of moe.cu and the
 * one-launch mixture-of-experts step of moe_step.cu (the CPU's choice and order, src/cpu/moe.c). */
#ifndef TOC_MOE_CUH
#define TOC_MOE_CUH

#include "common.cuh"

/* The k largest of q[0 .. e) (probabilities: >= 0; NaN ranks below every number) into vals / ids
 * in descending order, equal values by increasing id: the list moe.cu's moe_topk_insert builds from
 * the experts in id order. One warp, k rounds of a warp argmax; a chosen entry of q is overwritten. */
static __device__ void moe_topk_warp(float *q, int64_t e, int k, float *vals, int32_t *ids) {
    const int lane = threadIdx.x & 31;
    for (int j = 0; j < k; j++) {
        float bv = -3.0f; /* taken entries hold -2 */
        int32_t bi = 0x7fffffff;
        for (int64_t x = lane; x < e; x += 32) {
            float v = q[x];
            if (v != v) v = -1.0f;
            if (v > bv) { /* ids rise along a lane: the first of equal values stays */
                bv = v;
                bi = (int32_t)x;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            vals[j] = q[bi];
            ids[j] = bi;
            q[bi] = -2.0f;
        }
        __syncwarp();
    }
}

static __device__ double block_sum_d(double v, double *red /* >= 32 */) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    double t = lane < nw ? red[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

#endif
