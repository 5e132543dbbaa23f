/* Token sampling on the device for the graph decoder: after a replayed step, one block draws the
 * next token from the step's logits with temperature, top-k (1 <= k <= 1024), top-p and min-p,
 * and writes it where the step's own feedback (the greedy argmax) went, so that steps chain on
 * the device without a host round trip per token.
 *
 * The draw is that of the host sampler (src/cpu/sampling.c, top-k path): the k best scaled logits
 * (ties: lower id), weights exp(v - max) in double, the smallest prefix whose mass reaches top_p
 * without tokens below min_p of the top weight, u from the same splitmix64 stream. The k best are
 * found by a radix select over 64-bit keys (order-preserving value bits, then ~id: every key is
 * distinct), 8 bits per pass, then sorted in shared memory. */
#include "common.cuh"

#define DS_THREADS 1024
#define DS_KMAX 1024

__device__ __forceinline__ unsigned long long ds_key(const void *logits, int dt, int64_t i, float inv_t) {
    float v = ldf(logits, dt, i) * inv_t;
    uint32_t u = __float_as_uint(v);
    if (v != v) u = 0u; /* NaN: below every value (the host sampler reads it as -inf) */
    else u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (uint32_t)i);
}

__device__ __forceinline__ float ds_value(unsigned long long key) {
    uint32_t u = (uint32_t)(key >> 32);
    if (u == 0u) return -INFINITY;
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    return __uint_as_float(u);
}

__device__ __forceinline__ uint64_t ds_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct DsArgs {
    const void *logits;
    int dt;
    int64_t vocab;
    int32_t *counters; /* [token, position, step, pad]: the step kernel's feedback */
    int32_t *tokens;
    int64_t max_steps;
    float inv_t, top_p, min_p;
    int k;
    uint64_t *rng; /* device */
};

__global__ void __launch_bounds__(DS_THREADS) decode_sample_kernel(DsArgs a) {
    __shared__ unsigned hist[256];
    __shared__ unsigned long long ck[DS_KMAX];
    __shared__ double w[DS_KMAX];
    __shared__ unsigned long long prefix_s;
    __shared__ unsigned remaining_s, ncand;
    const int tid = threadIdx.x;
    const int64_t V = a.vocab;
    /* radix select of the k-th largest key, most significant byte first */
    unsigned long long prefix = 0ull, mask = 0ull;
    unsigned remaining = (unsigned)a.k;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int j = tid; j < 256; j += DS_THREADS) hist[j] = 0u;
        __syncthreads();
        /* most keys share their high bytes: lanes with the same bin add once (one atomic per
         * distinct bin and warp instead of up to 32 on one address) */
        for (int64_t base = 0; base < V; base += DS_THREADS) {
            const int64_t i = base + tid;
            unsigned bin = 256u;
            if (i < V) {
                const unsigned long long key = ds_key(a.logits, a.dt, i, a.inv_t);
                if ((key & mask) == prefix) bin = (unsigned)(key >> shift) & 255u;
            }
            const unsigned peers = __match_any_sync(0xffffffffu, bin);
            if (bin < 256u && (tid & 31) == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
        }
        __syncthreads();
        if (tid == 0) {
            unsigned cum = 0;
            int d = 255;
            for (; d > 0; d--) {
                if (cum + hist[d] >= remaining) break;
                cum += hist[d];
            }
            prefix_s = prefix | ((unsigned long long)d << shift);
            remaining_s = remaining - cum;
        }
        __syncthreads();
        prefix = prefix_s;
        remaining = remaining_s;
        mask |= 255ull << shift;
    }
    /* the k keys >= the k-th, sorted descending (bitonic, padded with zeros) */
    if (tid == 0) ncand = 0u;
    for (int j = tid; j < DS_KMAX; j += DS_THREADS) ck[j] = 0ull;
    __syncthreads();
    for (int64_t i = tid; i < V; i += DS_THREADS) {
        const unsigned long long key = ds_key(a.logits, a.dt, i, a.inv_t);
        if (key >= prefix) {
            const unsigned s = atomicAdd(&ncand, 1u);
            if (s < DS_KMAX) ck[s] = key;
        }
    }
    __syncthreads();
    for (unsigned size = 2; size <= DS_KMAX; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            const unsigned j = (unsigned)tid, p = j ^ stride;
            if (p > j) {
                const bool up = (j & size) == 0;
                const unsigned long long x = ck[j], y = ck[p];
                if ((x < y) == up) {
                    ck[j] = y;
                    ck[p] = x;
                }
            }
            __syncthreads();
        }
    }
    /* weights of the k candidates (double, like the host), then the walk by one thread */
    const int k = a.k;
    const float vmax = ds_value(ck[0]);
    if (tid < k) w[tid] = exp((double)(ds_value(ck[tid]) - vmax));
    __syncthreads();
    if (tid != 0) return;
    double z = 0.0;
    for (int i = 0; i < k; i++) z += w[i];
    double mass = 0.0;
    int keep = 0;
    for (int i = 0; i < k; i++) {
        const double p = w[i] / z;
        if (i > 0 && (mass >= (double)a.top_p || p < (double)a.min_p / z)) break;
        mass += p;
        keep++;
    }
    uint64_t st = *a.rng;
    const double u = (double)(ds_splitmix64(&st) >> 11) * (1.0 / 9007199254740992.0) * mass;
    *a.rng = st;
    double acc = 0.0;
    int32_t pick = (int32_t)(0xffffffffu - (uint32_t)ck[0]);
    for (int i = 0; i < keep; i++) {
        acc += w[i] / z;
        pick = (int32_t)(0xffffffffu - (uint32_t)ck[i]);
        if (u < acc) break;
    }
    /* over the step's argmax: the next step's input token and this step's output */
    a.counters[0] = pick;
    const int32_t s = a.counters[2] - 1;
    if (s >= 0 && s < a.max_steps) a.tokens[s] = pick;
}

TOC_EXPORT int toc_decode_sample(const void *logits, int dtype, int64_t vocab, int32_t *counters, int32_t *tokens,
                                 int64_t max_steps, float temperature, int64_t top_k, float top_p, float min_p,
                                 uint64_t *rng_state) {
    TOC_CHECK(toc_is_act(dtype), TO_ERR_DTYPE, "toc_decode_sample: logits dtype %d unsupported", dtype);
    TOC_CHECK(vocab >= 2 && vocab <= 0x7fffffffLL, TO_ERR_SHAPE, "toc_decode_sample: vocab %lld out of range",
              (long long)vocab);
    TOC_CHECK(temperature > 0.0f && temperature == temperature, TO_ERR_INVALID_ARGUMENT,
              "toc_decode_sample: temperature %g must be > 0 (greedy runs in the step)", (double)temperature);
    TOC_CHECK(top_k >= 1 && top_k <= DS_KMAX && top_k < vocab, TO_ERR_UNSUPPORTED,
              "toc_decode_sample: top_k %lld outside 1..min(1024, vocab - 1)", (long long)top_k);
    TOC_CHECK(top_p > 0.0f && top_p <= 1.0f, TO_ERR_INVALID_ARGUMENT, "toc_decode_sample: top_p %g not in (0, 1]",
              (double)top_p);
    TOC_CHECK(min_p >= 0.0f && min_p < 1.0f, TO_ERR_INVALID_ARGUMENT, "toc_decode_sample: min_p %g not in [0, 1)",
              (double)min_p);
    TOC_CHECK(logits && counters && tokens && rng_state, TO_ERR_INVALID_ARGUMENT, "toc_decode_sample: NULL pointer");
    TOC_READY();
    DsArgs a = {logits, dtype, vocab, counters, tokens, max_steps, 1.0f / temperature, top_p, min_p, (int)top_k,
                rng_state};
    decode_sample_kernel<<<1, DS_THREADS, 0, toc_stream()>>>(a);
    TOC_LAUNCHED("decode_sample_kernel");
    return TO_OK;
}
