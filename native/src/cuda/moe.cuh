/* Top-k selection (softmax and sigmoid noaux_tc routers) and a double-precision block sum shared by
 * the routers of moe.cu and the one-launch mixture-of-experts step of moe_step.cu (the CPU's choice
 * and order, src/cpu/moe.c). */
#ifndef TOC_MOE_CUH
#define TOC_MOE_CUH

#include "common.cuh"

/* The k largest of q[0 .. e) (probabilities: >= 0; NaN ranks below every number) into vals / ids
 * in descending order, equal values by increasing id: the list moe_topk_insert builds from the
 * experts in id order. One warp, k rounds of a warp argmax; a chosen entry of q is overwritten. */
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

/* The softmax top-k router's choice for one row, by the whole block: p[0..e) holds the logits (mx:
 * each thread's maximum of those it stored) and gets their probabilities (max, exp, a double sum);
 * warp 0 takes the top k into vals / ids and thread 0 divides them by their sum where renorm.
 * Every thread calls it; vals and ids are complete on return. red / redd: >= 33 floats / 32
 * doubles of shared memory. */
static __device__ void moe_softmax_select(float *p, int64_t e, int k, bool renorm, float mx, float *red, double *redd,
                                          float *vals, int32_t *ids) {
    mx = block_max(mx, red);
    double part = 0.0;
    for (int64_t x = threadIdx.x; x < e; x += blockDim.x) {
        p[x] = expf(p[x] - mx);
        part += (double)p[x];
    }
    const double sum = block_sum_d(part, redd);
    const float inv = (float)(1.0 / sum);
    for (int64_t x = threadIdx.x; x < e; x += blockDim.x) p[x] *= inv;
    __syncthreads();
    if (threadIdx.x < 32) moe_topk_warp(p, e, k, vals, ids);
    __syncthreads();
    if (threadIdx.x == 0 && renorm) {
        float s = 0.0f;
        for (int j = 0; j < k; j++) s += vals[j];
        for (int j = 0; j < k; j++) vals[j] /= s;
    }
    __syncthreads();
}

/* Inserts (val, id) into the descending list vals/ids of length *len (capacity k); equal values
 * keep the earlier (lower) id first. Experts are offered in increasing id order. */
static __device__ void moe_topk_insert(float *vals, int32_t *ids, int *len, int k, float val, int32_t id) {
    int n = *len;
    if (n == k && !(val > vals[k - 1])) return;
    int pos = n < k ? n : k - 1;
    while (pos > 0 && val > vals[pos - 1]) {
        vals[pos] = vals[pos - 1];
        ids[pos] = ids[pos - 1];
        pos--;
    }
    vals[pos] = val;
    ids[pos] = id;
    if (n < k) *len = n + 1;
}

/* The k largest of keys[0 .. e) (moe_key_of values: numbers in their order, then NaN; 0 for
 * taken) into ids in descending order, equal keys by increasing id: what moe_topk_insert builds
 * from the experts in id order, NaN ranked below every number. One warp, k rounds of a warp
 * argmax over (key, lower id) packed in 64 bits; a chosen key is set to 0. */
static __device__ __forceinline__ uint32_t moe_key_of(float v) {
    const uint32_t u = __float_as_uint(v);
    if (v != v) return 1u;                           /* NaN: below -inf (0x007fffff) */
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* order-preserving for numbers */
}

static __device__ void moe_topk_warp_keys(uint32_t *keys, int64_t e, int k, int32_t *ids) {
    const int lane = threadIdx.x & 31;
    for (int j = 0; j < k; j++) {
        unsigned long long best = 0ull;
        for (int64_t x = lane; x < e; x += 32) {
            const unsigned long long c = ((unsigned long long)keys[x] << 32) | (uint32_t)~(uint32_t)x;
            if (c > best) best = c;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const unsigned long long ob = __shfl_xor_sync(0xffffffffu, best, o);
            if (ob > best) best = ob;
        }
        const int32_t id = (int32_t)~(uint32_t)best;
        if (lane == 0) {
            ids[j] = id;
            keys[id] = 0u;
        }
        __syncwarp();
    }
}

/* The sigmoid noaux_tc choice (src/cpu/moe.c's), by the first warp of a block once s[e] (the
 * sigmoid scores) and cs[e] (plus the correction bias) are in shared memory: the topk_group best
 * of n_group groups (by their two best corrected scores; one thread), the k best corrected scores
 * within them into ids (cs becomes their keys), then (thread 0) w[j] = their scores, renormalised
 * with +1e-20 when asked and times scaling, in fp32. gscore / gval / gids: n_group entries. */
static __device__ void moe_sigmoid_select(const float *s, float *cs, int64_t e, int k, int64_t n_group,
                                          int64_t topk_group, int renorm, float scaling, float *gscore,
                                          float *gval, int32_t *gids, int32_t *ids, float *w) {
    const int64_t gsz = e / n_group;
    if (n_group > 1 && topk_group < n_group && threadIdx.x == 0) {
        for (int64_t gi = 0; gi < n_group; gi++) {
            float a = -INFINITY, b = -INFINITY;
            for (int64_t x = gi * gsz; x < (gi + 1) * gsz; x++) {
                if (cs[x] > a) {
                    b = a;
                    a = cs[x];
                } else if (cs[x] > b) {
                    b = cs[x];
                }
            }
            gscore[gi] = gsz >= 2 ? a + b : a;
        }
        int len = 0;
        for (int64_t gi = 0; gi < n_group; gi++) moe_topk_insert(gval, gids, &len, (int)topk_group, gscore[gi], (int32_t)gi);
        for (int64_t gi = 0; gi < n_group; gi++) gscore[gi] = 0.f;
        for (int64_t j = 0; j < topk_group; j++) gscore[gids[j]] = 1.f;
        for (int64_t gi = 0; gi < n_group; gi++)
            if (gscore[gi] == 0.f)
                for (int64_t x = gi * gsz; x < (gi + 1) * gsz; x++) cs[x] = -INFINITY;
    }
    __syncwarp();
    uint32_t *keys = (uint32_t *)cs; /* the corrected scores, as ordered keys in place */
    for (int64_t x = threadIdx.x; x < e; x += 32) keys[x] = moe_key_of(cs[x]);
    __syncwarp();
    moe_topk_warp_keys(keys, e, k, ids);
    if (threadIdx.x != 0) return;
    float sum = 0.f;
    for (int j = 0; j < k; j++) {
        w[j] = s[ids[j]];
        sum += w[j];
    }
    if (renorm) {
        const float den = sum + 1e-20f;
        for (int j = 0; j < k; j++) w[j] /= den;
    }
    for (int j = 0; j < k; j++) w[j] *= scaling;
}

#endif
