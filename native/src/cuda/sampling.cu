/* Token sampling on the device: toc_sample (the twin of to_sample for a logits row in device
 * memory) and toc_decode_sample (the graph decoder's draw after each replayed step, written where
 * the step's own feedback went so that steps chain on the device without a host round trip).
 *
 * Both draw what the host sampler (src/cpu/sampling.c) draws, bit for bit: penalties over the
 * history, temperature, the k best scaled logits (ties: lower id), weights exp(v - max) in
 * double, the smallest prefix whose mass reaches top_p without tokens below min_p of the top
 * weight, u from the same splitmix64 stream; temperature 0 is the first maximum. Without a top-k
 * cut (top_k 0 or >= vocab) the weights are the host's fp32 polynomial and block sums, op for op;
 * the draw walks the vocabulary in id order, or (top-p / min-p) orders the candidates that can be in
 * the nucleus, at most 16384 of them (a wider nucleus returns TO_ERR_UNSUPPORTED, as does
 * 1024 < top_k < vocab: the Python sampler copies such rows to the host).
 *
 * Selection works on 64-bit keys (order-preserving value bits, then ~id, so every key is
 * distinct) in two launches: each block of the first takes a chunk of the vocabulary into shared
 * memory and keeps its chunk's k best by a radix select (8 bits per pass, stopping as soon as a
 * bin is taken whole); one block then selects the k best of those candidates, sorts them
 * (bitonic) and walks them. For Qwen3's 151936 logits and k 20 that is 149 blocks of 1024 keys,
 * then 2980 candidates. */
#include <cfloat>
#include <mutex>

#include "common.cuh"

#define SEL_THREADS 512
#define SEL_CHUNK_MAX 4096
#define FIN_THREADS 1024
#define DS_KMAX 1024
#define DS_TIES 16 /* tokens tied with the k-th value kept beyond k at most (the host's TO_TOPK_TIES_EXTRA) */

/* the host's sample_value: NaN -> -inf, +inf (or an overflow of the scaling) -> FLT_MAX */
__device__ __forceinline__ float ds_sample_value(float x) {
    return x == x ? (x > FLT_MAX ? FLT_MAX : x) : -INFINITY;
}

/* key of the scaled logit: NaN reads as -inf, +inf as FLT_MAX and -0 as +0 (the host compares
 * floats) */
__device__ __forceinline__ unsigned long long ds_key(const void *src, int dt, int64_t i, float inv_t) {
    float v = ds_sample_value(ldf(src, dt, i) * inv_t);
    uint32_t u = __float_as_uint(v);
    if ((u << 1) == 0u) u = 0u;
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (uint32_t)i);
}

__device__ __forceinline__ float ds_value(unsigned long long key) {
    uint32_t u = (uint32_t)(key >> 32);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    return __uint_as_float(u);
}

__device__ __forceinline__ int32_t ds_id(unsigned long long key) {
    return (int32_t)(0xffffffffu - (uint32_t)key);
}

__device__ __forceinline__ uint64_t ds_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct SelShared {
    unsigned hist[256];
    unsigned long long prefix;
    unsigned remaining, done, count;
};

/* The smallest key T such that exactly k of keys[0 .. n) are >= T (keys distinct, 1 <= k); 1
 * when n <= k (every real key is >= 1). keys may be in shared or global memory. Every thread of
 * the block calls it and gets T. */
__device__ unsigned long long kth_threshold(const unsigned long long *keys, int64_t n, int64_t k, SelShared &sh) {
    if (n <= k) return 1ull;
    const int tid = threadIdx.x, lane = tid & 31;
    unsigned long long prefix = 0ull, mask = 0ull;
    unsigned remaining = (unsigned)k;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int j = tid; j < 256; j += blockDim.x) sh.hist[j] = 0u;
        __syncthreads();
        for (int64_t base = 0; base < n; base += blockDim.x) {
            const int64_t i = base + tid;
            unsigned bin = 256u;
            if (i < n) {
                const unsigned long long key = keys[i];
                if ((key & mask) == prefix) bin = (unsigned)(key >> shift) & 255u;
            }
            /* most keys share their high bytes: one atomic per distinct bin and warp */
            const unsigned active = __activemask();
            const unsigned peers = __match_any_sync(active, bin);
            if (bin < 256u && lane == __ffs(peers) - 1) atomicAdd(&sh.hist[bin], __popc(peers));
        }
        __syncthreads();
        if (tid < 32) {
            /* lane l owns the digits 255 - 8l .. 248 - 8l; find the largest digit d whose count
             * with all larger digits reaches `remaining` */
            unsigned h[8], s = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) s += (h[j] = sh.hist[255 - 8 * lane - j]);
            unsigned incl = s;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += t;
            }
            unsigned cum = incl - s, above = 0, hd = 0;
            int d = -1;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                if (d < 0 && cum + h[j] >= remaining) {
                    d = 255 - 8 * lane - j;
                    above = cum;
                    hd = h[j];
                }
                cum += h[j];
            }
            const unsigned found = __ballot_sync(0xffffffffu, d >= 0);
            if (lane == __ffs(found) - 1) {
                sh.prefix = prefix | ((unsigned long long)d << shift);
                sh.remaining = remaining - above;
                sh.done = hd == remaining - above; /* the whole bin is taken */
            }
        }
        __syncthreads();
        prefix = sh.prefix;
        remaining = sh.remaining;
        const unsigned done = sh.done;
        __syncthreads(); /* sh is rewritten by the next pass */
        if (done) break;
        mask |= 255ull << shift;
    }
    return prefix; /* the digits below the last chosen one are zero */
}

struct SelArgs {
    const void *src;
    int dt;
    float inv_t;
    int64_t vocab;
    int k, chunk;
    unsigned long long *cand; /* [gridDim.y rows][gridDim.x, k] */
    int64_t ld;               /* row stride of src in elements (rows = gridDim.y) */
};

/* the k best keys of each chunk (fewer when the chunk is shorter; the rest of its slots 0) */
__global__ void __launch_bounds__(SEL_THREADS) select_chunk_kernel(SelArgs a) {
    __shared__ unsigned long long keys[SEL_CHUNK_MAX];
    __shared__ SelShared sh;
    const int64_t b0 = (int64_t)blockIdx.x * a.chunk, r0 = (int64_t)blockIdx.y * a.ld;
    const int n = (int)min((int64_t)a.chunk, a.vocab - b0);
    const void *row = (const char *)a.src + r0 * (a.dt == TO_F32 ? 4 : 2); /* keys hold ids within the row */
    for (int i = threadIdx.x; i < n; i += blockDim.x) keys[i] = ds_key(row, a.dt, b0 + i, a.inv_t);
    if (threadIdx.x == 0) sh.count = 0u;
    __syncthreads();
    const unsigned long long t = kth_threshold(keys, n, a.k, sh);
    unsigned long long *out = a.cand + ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * a.k;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (keys[i] >= t) out[atomicAdd(&sh.count, 1u)] = keys[i];
    for (int i = n + threadIdx.x; i < a.k; i += blockDim.x) out[i] = 0ull;
}

/* ck[0 .. P) = the keys of keys[0 .. n) that are >= t (there are at most P of them), zeros after,
 * sorted descending (bitonic); sh.count must be 0 on entry. Every thread of the block calls it. */
__device__ void gather_sorted(const unsigned long long *keys, int64_t n, unsigned long long t, unsigned long long *ck,
                              int P, SelShared &sh) {
    const int tid = threadIdx.x;
    for (int j = tid; j < P; j += blockDim.x) ck[j] = 0ull;
    __syncthreads();
    for (int64_t i = tid; i < n; i += blockDim.x) {
        const unsigned long long key = keys[i];
        if (key >= t) ck[atomicAdd(&sh.count, 1u)] = key;
    }
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int j = tid; j < P; j += blockDim.x) {
                const int p = j ^ stride;
                if (p > j) {
                    const bool down = (j & size) == 0;
                    const unsigned long long x = ck[j], y = ck[p];
                    if ((x < y) == down) {
                        ck[j] = y;
                        ck[p] = x;
                    }
                }
            }
            __syncthreads();
        }
    }
}

/* The host's draw_sorted over probabilities p[0 .. n) in candidate order, by a whole warp: every
 * lane runs the sums in the host's order on 32 values fetched at once (the shuffles do not wait
 * on the sums) and gets the same result. warp_walk calls step(i, p[i]) for i = 0, 1, ... in
 * order until it returns false or i reaches n. */
template <class Step>
__device__ __forceinline__ void warp_walk(const double *p, int n, Step step) {
    const int lane = threadIdx.x & 31;
    bool go = true;
    for (int base = 0; base < n && go; base += 32) {
        const double mine = base + lane < n ? p[base + lane] : 0.0;
        for (int h = 0; h < 32 && go; h += 16) { /* 16 at a time: 1024-thread blocks have 64 registers */
            double q[16];
#pragma unroll
            for (int t = 0; t < 16; t++) q[t] = __shfl_sync(0xffffffffu, mine, h + t);
#pragma unroll
            for (int t = 0; t < 16; t++) {
                const int i = base + h + t;
                if (!go || i >= n) break;
                go = step(i, q[t]);
            }
        }
    }
}

/* warp_keep: the smallest prefix whose mass reaches top_p without entries below mpz (the first is
 * always kept); its length, and its mass in *mass_out. */
__device__ int warp_keep(const double *p, int n, double top_p, double mpz, double *mass_out) {
    double mass = 0.0;
    int keep = 0;
    warp_walk(p, n, [&](int i, double v) {
        if (i > 0 && (mass >= top_p || v < mpz)) return false;
        mass += v;
        keep++;
        return true;
    });
    *mass_out = mass;
    return keep;
}

/* warp_pick: u = uniform x mass from *rng (advanced), then the first index whose running sum
 * passes u (else the last kept) */
__device__ int warp_pick(const double *p, int keep, double mass, uint64_t *rng) {
    const int lane = threadIdx.x & 31;
    double u = 0.0;
    if (lane == 0) {
        uint64_t st = *rng;
        u = (double)(ds_splitmix64(&st) >> 11) * (1.0 / 9007199254740992.0) * mass;
        *rng = st;
    }
    u = __shfl_sync(0xffffffffu, u, 0);
    double acc = 0.0;
    int pick = -1;
    warp_walk(p, keep, [&](int i, double v) {
        acc += v;
        if (u < acc) pick = i;
        return pick < 0;
    });
    return pick >= 0 ? pick : keep - 1;
}

struct FinArgs {
    const unsigned long long *cand;
    int64_t n_cand;
    int k;
    int ks; /* keys selected per chunk and overall: k plus room for ties (sel_count) */
    int greedy;
    float top_p, min_p;
    uint64_t *rng;       /* device state, advanced unless greedy */
    int64_t *out_token;  /* toc_sample: the drawn id, or NULL */
    int32_t *counters;   /* toc_decode_sample: [token, position, step, pad], or NULL */
    int32_t *tokens;
    int64_t max_steps;
};

__device__ void finish_write(const FinArgs &a, int32_t pick);

/* the ks best candidates, sorted descending; the k best and the tokens after them tied with the
 * k-th value (the host's rule: at most DS_TIES, id order), then the host sampler's walk by one
 * warp */
__global__ void __launch_bounds__(FIN_THREADS) finish_kernel(FinArgs a) {
    __shared__ unsigned long long ck[DS_KMAX];
    __shared__ double w[DS_KMAX];
    __shared__ SelShared sh;
    __shared__ int n_s;
    const int tid = threadIdx.x, k = a.k, ks = a.ks;
    if (tid == 0) sh.count = 0u;
    const unsigned long long *cand = a.cand + (int64_t)blockIdx.x * a.n_cand; /* row blockIdx.x (greedy rows) */
    const unsigned long long t = kth_threshold(cand, a.n_cand, ks, sh);
    int P = 1;
    while (P < ks) P <<= 1;
    gather_sorted(cand, a.n_cand, t, ck, P, sh);
    const float vmax = ds_value(ck[0]);
    const bool walk = !a.greedy && vmax != -INFINITY;
    if (tid == 0) {
        int n = k;
        const float kv = ds_value(ck[k - 1]);
        if (walk && kv != -INFINITY)
            while (n < ks && ck[n] != 0ull && ds_value(ck[n]) == kv) n++;
        n_s = n;
    }
    __syncthreads();
    const int n = n_s;
    __shared__ double z_s;
    if (walk && tid < n) w[tid] = exp((double)(ds_value(ck[tid]) - vmax));
    __syncthreads();
    if (!walk) {
        if (tid == 0) finish_write(a, ds_id(ck[0]));
        return;
    }
    if (tid == 0) { /* the normaliser in the host's order */
        double z = 0.0;
        for (int i = 0; i < n; i++) z += w[i];
        z_s = z;
    }
    __syncthreads();
    const double z = z_s;
    if (tid < n) w[tid] = w[tid] / z; /* probabilities, as the host divides them */
    __syncthreads();
    if (tid >= 32) return;
    double mass;
    const int keep = warp_keep(w, n, (double)a.top_p, (double)a.min_p / z, &mass);
    const int i = warp_pick(w, keep, mass, a.rng);
    if (tid == 0) finish_write(a, ds_id(ck[i]));
}

__device__ void finish_write(const FinArgs &a, int32_t pick) {
    if (a.out_token) a.out_token[blockIdx.x] = pick;
    if (a.counters) { /* over the step's argmax: the next step's input token and this step's output */
        a.counters[0] = pick;
        const int32_t s = a.counters[2] - 1;
        if (s >= 0 && s < a.max_steps) a.tokens[s] = pick;
    }
}

/* v = ds_sample_value(logits * inv_t), then the penalised values of the history ids (the host's
 * fp32 arithmetic, no contraction) */
__global__ void scale_kernel(const void *logits, int dt, int64_t vocab, float inv_t, float *v) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < vocab; i += (int64_t)gridDim.x * blockDim.x) {
        v[i] = ds_sample_value(__fmul_rn(ldf(logits, dt, i), inv_t));
    }
}

__global__ void penalty_kernel(const void *logits, int dt, const int32_t *ids, const int32_t *counts, int64_t n,
                               float inv_t, float rep, float pres, float freq, float *v) {
    const int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j >= n) return;
    const int32_t id = ids[j];
    float l = ldf(logits, dt, id);
    if (rep != 1.0f) l = l > 0 ? __fdiv_rn(l, rep) : __fmul_rn(l, rep);
    l = __fsub_rn(l, __fadd_rn(__fmul_rn(freq, (float)counts[j]), counts[j] > 0 ? pres : 0.0f));
    v[id] = ds_sample_value(__fmul_rn(l, inv_t));
}

/* ---- no top-k: the whole distribution (the host's exact fp32 weights and block sums) ---- */
#define FD_BLOCK 1024 /* the host's block of weights: exp and sum per block */
#define FD_NCAP_MAX 16384 /* the most nucleus candidates ordered on the device (128 KB of keys) */
#define FD_NCAP_MIN 4096  /* where a block cannot opt in to that much shared memory */

/* the host's exp_shifted element: exp(x - vmax) by the Cephes polynomial, op for op in fp32 */
__device__ __forceinline__ float fd_exp_shifted(float v, float vmax) {
    float x = __fsub_rn(v, vmax);
    x = x > -87.3f ? x : -87.3f;
    const float k = __fsub_rn(__fadd_rn(__fmul_rn(x, 1.44269504f), 12582912.0f), 12582912.0f);
    const float r = __fsub_rn(__fsub_rn(x, __fmul_rn(k, 0.693145751953125f)), __fmul_rn(k, 1.428606765330187e-06f));
    float p = 1.9875691e-4f;
    p = __fadd_rn(__fmul_rn(p, r), 1.3981999e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 8.3334519e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 4.1665795e-2f);
    p = __fadd_rn(__fmul_rn(p, r), 1.6666665e-1f);
    p = __fadd_rn(__fmul_rn(p, r), 5.0000001e-1f);
    p = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
    const float sc = __int_as_float(((int32_t)k + 127) << 23);
    const float res = __fmul_rn(p, sc);
    return x > -87.2f ? res : 0.0f;
}

/* the host's sum_of over n <= FD_BLOCK values in shared memory: 8 running sums, then a fixed tree
 * (one thread) */
__device__ float fd_sum_of(const float *v, int n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
#pragma unroll
        for (int j = 0; j < 8; j++) a[j] = __fadd_rn(a[j], v[i + j]);
    for (; i < n; i++) a[0] = __fadd_rn(a[0], v[i]);
    return __fadd_rn(__fadd_rn(__fadd_rn(a[0], a[1]), __fadd_rn(a[2], a[3])),
                     __fadd_rn(__fadd_rn(a[4], a[5]), __fadd_rn(a[6], a[7])));
}

/* scaled value of element i: ds_sample_value(logits * inv_t) or the penalised buffer */
__device__ __forceinline__ float fd_value(const void *src, int dt, int64_t i, float inv_t) {
    return ds_sample_value(__fmul_rn(ldf(src, dt, i), inv_t));
}

struct FdArgs {
    const void *src;
    int dt;
    float inv_t;
    int64_t vocab;
    float *bmax;  /* [blocks] maxima, then */
    float *w;     /* [vocab] weights exp(v - vmax) */
    float *part;  /* [blocks] the host's block sums */
    unsigned long long *keys; /* [vocab] nucleus candidates (weight bits, ~id) */
    double *pbuf;             /* [ncap] their probabilities in order */
    float top_p, min_p;
    uint64_t *rng;
    int64_t *out_token; /* the id, or -1 where the nucleus is wider than ncap (host) */
    int ncap;           /* keys of dynamic shared memory */
};

__global__ void __launch_bounds__(256) fd_max_kernel(FdArgs a) {
    __shared__ float red[33];
    const int64_t b0 = (int64_t)blockIdx.x * FD_BLOCK;
    float m = -INFINITY;
    for (int64_t i = b0 + threadIdx.x; i < min(b0 + FD_BLOCK, a.vocab); i += blockDim.x)
        m = fmaxf(m, fd_value(a.src, a.dt, i, a.inv_t));
    m = block_max(m, red);
    if (threadIdx.x == 0) a.bmax[blockIdx.x] = m;
}

/* weights of one block and their sum (every block reduces the maxima itself) */
__global__ void __launch_bounds__(256) fd_weight_kernel(FdArgs a) {
    __shared__ float wv[FD_BLOCK];
    __shared__ float red[33];
    const int nb = (int)((a.vocab + FD_BLOCK - 1) / FD_BLOCK);
    float m = -INFINITY;
    for (int b = threadIdx.x; b < nb; b += blockDim.x) m = fmaxf(m, a.bmax[b]);
    const float vmax = block_max(m, red);
    const int64_t b0 = (int64_t)blockIdx.x * FD_BLOCK;
    const int n = (int)min((int64_t)FD_BLOCK, a.vocab - b0);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float w = vmax == -INFINITY ? 0.0f : fd_exp_shifted(fd_value(a.src, a.dt, b0 + i, a.inv_t), vmax);
        wv[i] = w;
        a.w[b0 + i] = w;
    }
    __syncthreads();
    if (threadIdx.x == 0) a.part[blockIdx.x] = fd_sum_of(wv, n);
}

/* z, then the untruncated walk in id order, or the nucleus: candidates >= tau ordered by weight
 * (ties: lower id) and walked as the host's draw_sorted */
__global__ void __launch_bounds__(1024) fd_draw_kernel(FdArgs a) {
    extern __shared__ unsigned long long ck[]; /* [a.ncap] */
    __shared__ SelShared sh;
    __shared__ double z_s;
    __shared__ float tau_s;
    __shared__ int mode_s; /* 0 done (greedy fallback), 1 walk in id order, 2 nucleus */
    const int tid = threadIdx.x;
    const int nb = (int)((a.vocab + FD_BLOCK - 1) / FD_BLOCK);
    if (tid == 0) {
        float vmax = -INFINITY;
        for (int b = 0; b < nb; b++) vmax = fmaxf(vmax, a.bmax[b]);
        double z = 0.0;
        for (int b = 0; b < nb; b++) z += (double)a.part[b];
        z_s = z;
        sh.count = 0u;
        if (vmax == -INFINITY) { /* every value -inf: the first id, no draw */
            *a.out_token = 0;
            mode_s = 0;
        } else if (a.top_p >= 1.0f && a.min_p == 0.0f) {
            mode_s = 1;
            uint64_t st = *a.rng;
            const double u = (double)(ds_splitmix64(&st) >> 11) * (1.0 / 9007199254740992.0) * z;
            *a.rng = st;
            double acc = 0.0;
            int64_t pick = -1;
            for (int b = 0; b < nb && pick < 0; b++) {
                const int64_t b0 = (int64_t)b * FD_BLOCK, b1 = min(b0 + FD_BLOCK, a.vocab);
                const float part = a.part[b];
                if (acc + (double)part <= u && b1 < a.vocab) {
                    acc += (double)part;
                    continue;
                }
                for (int64_t i = b0; i < b1; i++) {
                    const float w = a.w[i];
                    if (w > 0.0f) pick = i;
                    acc += (double)w;
                    if (u < acc && w > 0.0f) break;
                }
            }
            *a.out_token = pick < 0 ? 0 : pick;
        } else {
            mode_s = 2;
            float tau = (float)((1.0 - (double)a.top_p) * z / (double)a.vocab) * 0.999f;
            if (a.min_p * 0.999f > tau) tau = a.min_p * 0.999f;
            tau_s = tau;
        }
    }
    __syncthreads();
    if (mode_s != 2) return;
    const float tau = tau_s;
    const double z = z_s;
    /* candidates as keys (weights are >= 0: their bits order them) */
    for (int64_t i = tid; i < a.vocab; i += blockDim.x) {
        const float w = a.w[i];
        if (w >= tau)
            a.keys[atomicAdd(&sh.count, 1u)] = ((unsigned long long)__float_as_uint(w) << 32) |
                                               (unsigned long long)(0xffffffffu - (uint32_t)i);
    }
    __syncthreads();
    const int64_t n = sh.count;
    __syncthreads();
    const int64_t m = n < a.ncap ? n : a.ncap;
    const unsigned long long t = kth_threshold(a.keys, n, m, sh); /* 1 when all n are kept */
    int P = 1;
    while (P < m) P <<= 1;
    if (tid == 0) sh.count = 0u;
    __syncthreads();
    gather_sorted(a.keys, n, t, ck, P, sh);
    for (int64_t j = tid; j < m; j += blockDim.x) /* probabilities, as the host divides them */
        a.pbuf[j] = (double)__uint_as_float((uint32_t)(ck[j] >> 32)) / z;
    __syncthreads();
    if (tid >= 32) return;
    double mass;
    const int keep = warp_keep(a.pbuf, (int)m, (double)a.top_p, (double)a.min_p / z, &mass);
    if (keep == m && m < n) { /* the nucleus may go on past the candidates kept: the host's job */
        if (tid == 0) *a.out_token = -1;
        return;
    }
    const int i = warp_pick(a.pbuf, keep, mass, a.rng);
    if (tid == 0) *a.out_token = ds_id(ck[i]);
}

/* per-device scratch: candidates, scaled values, history, rng and token (grown outside capture) */
static TocBuffer g_ws;
/* one caller at a time per process: the candidates of a draw must not be overwritten by another
 * thread's launches between its two kernels (the stream orders the rest) */
static std::mutex g_sample_lock;

static int workspace(size_t bytes, char **out) {
    return toc_buffer_reserve(&g_ws, bytes, (void **)out, "sampling workspace");
}

/* nucleus keys fd_draw_kernel orders on the current device (its shared memory opted in once) */
static int draw_capacity(void) {
    static int cap[16];
    int dev = 0;
    cudaGetDevice(&dev);
    int &c = cap[dev & 15];
    if (!c) {
        const int want = FD_NCAP_MAX * 8 + 2048; /* keys + the static part */
        c = toc_max_smem_optin() >= want &&
                    cudaFuncSetAttribute(fd_draw_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         FD_NCAP_MAX * 8) == cudaSuccess
                ? FD_NCAP_MAX
                : FD_NCAP_MIN;
        cudaGetLastError();
    }
    return c;
}

static int chunk_for(int64_t k) {
    int c = 1024;
    while (c < 4 * k && c < SEL_CHUNK_MAX) c <<= 1;
    return c;
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* keys selected per chunk for a top-k draw: k and room for DS_TIES tokens tied with the k-th
 * value (at most DS_KMAX in all); greedy takes exactly k */
static int64_t sel_count(int64_t k, int greedy) {
    if (greedy || k >= DS_KMAX) return k;
    return k + DS_TIES < DS_KMAX ? k + DS_TIES : DS_KMAX;
}

/* the two selection launches over src and the walk; cand has room for cand_bytes(vocab, sel_count(k, greedy)) a row */
static int launch_draw(const void *src, int dt, float inv_t, int64_t vocab, int64_t k, int greedy, float top_p,
                       float min_p, unsigned long long *cand, FinArgs fin, int64_t rows = 1, int64_t ld = 0) {
    const int64_t ks = sel_count(k, greedy);
    const int chunk = chunk_for(ks);
    const int64_t g = toc_cdiv(vocab, chunk);
    SelArgs s = {src, dt, inv_t, vocab, (int)ks, chunk, cand, ld};
    select_chunk_kernel<<<dim3((unsigned)g, (unsigned)rows), SEL_THREADS, 0, toc_stream()>>>(s);
    TOC_LAUNCHED("select_chunk_kernel");
    fin.cand = cand;
    fin.n_cand = g * ks;
    fin.k = (int)k;
    fin.ks = (int)ks;
    fin.greedy = greedy;
    fin.top_p = top_p;
    fin.min_p = min_p;
    finish_kernel<<<(unsigned)rows, FIN_THREADS, 0, toc_stream()>>>(fin);
    TOC_LAUNCHED("finish_kernel");
    return TO_OK;
}

/* the candidates of one row of a draw with sel_count ks */
static size_t cand_bytes(int64_t vocab, int64_t ks) { return align256((size_t)toc_cdiv(vocab, chunk_for(ks)) * ks * 8); }

TOC_EXPORT int toc_sample(const void *logits, int dtype, int64_t vocab, const int32_t *history_ids,
                          const int32_t *history_counts, int64_t n_history, float temperature, int64_t top_k,
                          float top_p, float min_p, float repetition_penalty, float presence_penalty,
                          float frequency_penalty, uint64_t *rng_state, int64_t *out_token) {
    TOC_CHECK(logits && out_token, TO_ERR_INVALID_ARGUMENT, "toc_sample: NULL pointer");
    TOC_CHECK(toc_is_act(dtype), TO_ERR_DTYPE, "toc_sample: logits must be f32 or bf16");
    TOC_CHECK(vocab > 0 && vocab <= 0x7fffffffLL, TO_ERR_SHAPE, "toc_sample: vocab %lld out of range", (long long)vocab);
    TOC_CHECK(n_history >= 0 && (n_history == 0 || (history_ids && history_counts)), TO_ERR_INVALID_ARGUMENT,
              "toc_sample: history arrays are NULL");
    TOC_CHECK(temperature >= 0.0f && temperature == temperature, TO_ERR_INVALID_ARGUMENT,
              "toc_sample: temperature %g must be >= 0", (double)temperature);
    TOC_CHECK(top_k >= 0, TO_ERR_INVALID_ARGUMENT, "toc_sample: top_k must be >= 0");
    TOC_CHECK(top_p > 0.0f && top_p <= 1.0f, TO_ERR_INVALID_ARGUMENT, "toc_sample: top_p %g not in (0, 1]",
              (double)top_p);
    TOC_CHECK(min_p >= 0.0f && min_p < 1.0f, TO_ERR_INVALID_ARGUMENT, "toc_sample: min_p %g not in [0, 1)",
              (double)min_p);
    TOC_CHECK(repetition_penalty > 0.0f, TO_ERR_INVALID_ARGUMENT, "toc_sample: repetition_penalty must be > 0");
    TOC_CHECK(temperature == 0.0f || rng_state != NULL, TO_ERR_INVALID_ARGUMENT, "toc_sample: rng_state is NULL");
    for (int64_t j = 0; j < n_history; j++)
        TOC_CHECK(history_ids[j] >= 0 && history_ids[j] < vocab, TO_ERR_INVALID_ARGUMENT,
                  "toc_sample: history id %d outside vocab %lld", history_ids[j], (long long)vocab);
    const int greedy = temperature == 0.0f;
    const int full = !greedy && (top_k == 0 || top_k >= vocab); /* no top-k cut */
    TOC_CHECK(greedy || full || top_k <= DS_KMAX, TO_ERR_UNSUPPORTED,
              "toc_sample: top_k %lld: the device takes top_k 0 (off), 1..1024 or >= vocab", (long long)top_k);
    TOC_READY();
    std::lock_guard<std::mutex> guard(g_sample_lock);
    const int64_t k = greedy ? 1 : top_k;
    const int penalised = n_history > 0 && (repetition_penalty != 1.0f || presence_penalty != 0.0f ||
                                            frequency_penalty != 0.0f);
    const float inv_t = greedy ? 1.0f : 1.0f / temperature;
    /* layout: candidates | rng, token | values (penalised) | history ids | history counts, then
     * for the whole distribution: block maxima | block sums | weights | nucleus keys */
    const int64_t nb = toc_cdiv(vocab, FD_BLOCK);
    const size_t o_state = full ? 0 : cand_bytes(vocab, sel_count(k, greedy));
    const size_t o_v = o_state + 256;
    const size_t o_ids = o_v + (penalised ? align256((size_t)vocab * 4) : 0);
    const size_t o_counts = o_ids + (penalised ? align256((size_t)n_history * 4) : 0);
    const size_t o_bmax = o_counts + (penalised ? align256((size_t)n_history * 4) : 0);
    const size_t o_part = o_bmax + (full ? align256((size_t)nb * 4) : 0);
    const size_t o_w = o_part + (full ? align256((size_t)nb * 4) : 0);
    const size_t o_keys = o_w + (full ? align256((size_t)vocab * 4) : 0);
    const size_t o_p = o_keys + (full ? align256((size_t)vocab * 8) : 0);
    const size_t total = o_p + (full ? align256((size_t)FD_NCAP_MAX * 8) : 0);
    char *ws = nullptr;
    int rc = workspace(total, &ws);
    if (rc) return rc;
    cudaStream_t st = toc_stream();
    uint64_t *rng_dev = (uint64_t *)(ws + o_state);
    int64_t *tok_dev = (int64_t *)(ws + o_state + 8);
    if (!greedy) TOC_CUDA(cudaMemcpyAsync(rng_dev, rng_state, 8, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync");
    const void *src = logits;
    int src_dt = dtype;
    float src_inv_t = inv_t;
    if (penalised) {
        float *v = (float *)(ws + o_v);
        int32_t *ids = (int32_t *)(ws + o_ids), *counts = (int32_t *)(ws + o_counts);
        TOC_CUDA(cudaMemcpyAsync(ids, history_ids, (size_t)n_history * 4, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync");
        TOC_CUDA(cudaMemcpyAsync(counts, history_counts, (size_t)n_history * 4, cudaMemcpyHostToDevice, st),
                 "cudaMemcpyAsync");
        scale_kernel<<<toc_grid(vocab, 256, 4 * (int64_t)toc_sm_count()), 256, 0, st>>>(logits, dtype, vocab, inv_t, v);
        TOC_LAUNCHED("scale_kernel");
        penalty_kernel<<<toc_grid(n_history, 256), 256, 0, st>>>(logits, dtype, ids, counts, n_history, inv_t,
                                                                   repetition_penalty, presence_penalty,
                                                                   frequency_penalty, v);
        TOC_LAUNCHED("penalty_kernel");
        src = v;
        src_dt = TO_F32;
        src_inv_t = 1.0f;
    }
    if (full) {
        FdArgs f = {src, src_dt, src_inv_t, vocab, (float *)(ws + o_bmax), (float *)(ws + o_w),
                    (float *)(ws + o_part), (unsigned long long *)(ws + o_keys), (double *)(ws + o_p),
                    top_p, min_p, rng_dev, tok_dev, 0};
        fd_max_kernel<<<(unsigned)nb, 256, 0, st>>>(f);
        TOC_LAUNCHED("fd_max_kernel");
        fd_weight_kernel<<<(unsigned)nb, 256, 0, st>>>(f);
        TOC_LAUNCHED("fd_weight_kernel");
        f.ncap = draw_capacity();
        fd_draw_kernel<<<1, 1024, (size_t)f.ncap * 8, st>>>(f);
        TOC_LAUNCHED("fd_draw_kernel");
    } else {
        FinArgs fin = {};
        fin.rng = rng_dev;
        fin.out_token = tok_dev;
        rc = launch_draw(src, src_dt, src_inv_t, vocab, k, greedy, top_p, min_p, (unsigned long long *)ws, fin);
        if (rc) return rc;
    }
    uint64_t back[2];
    TOC_CUDA(cudaMemcpyAsync(back, rng_dev, 16, cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync");
    TOC_CUDA(cudaStreamSynchronize(st), "toc_sample");
    TOC_CHECK((int64_t)back[1] >= 0, TO_ERR_UNSUPPORTED,
              "toc_sample: the nucleus has more than %d candidates; sample this row on the host", draw_capacity());
    if (!greedy) *rng_state = back[0];
    *out_token = (int64_t)back[1];
    return TO_OK;
}

TOC_EXPORT int toc_sample_greedy_rows(const void *logits, int dtype, int64_t rows, int64_t vocab, int64_t ld,
                                     int64_t *out_tokens) {
    TOC_CHECK(logits && out_tokens, TO_ERR_INVALID_ARGUMENT, "toc_sample_greedy_rows: NULL pointer");
    TOC_CHECK(toc_is_act(dtype), TO_ERR_DTYPE, "toc_sample_greedy_rows: logits must be f32 or bf16");
    TOC_CHECK(vocab > 0 && vocab <= 0x7fffffffLL && ld >= vocab, TO_ERR_SHAPE,
              "toc_sample_greedy_rows: vocab %lld / row stride %lld", (long long)vocab, (long long)ld);
    TOC_CHECK(rows >= 0 && rows <= 65535, TO_ERR_SHAPE, "toc_sample_greedy_rows: rows %lld outside 0..65535",
              (long long)rows);
    if (rows == 0) return TO_OK;
    TOC_READY();
    std::lock_guard<std::mutex> guard(g_sample_lock);
    const size_t per = cand_bytes(vocab, 1), o_tok = per * (size_t)rows;
    char *ws = nullptr;
    int rc = workspace(o_tok + align256((size_t)rows * 8), &ws);
    if (rc) return rc;
    FinArgs fin = {};
    fin.out_token = (int64_t *)(ws + o_tok);
    /* candidates of row r at cand + r * n_cand: the rows' chunks are laid out one row after another */
    rc = launch_draw(logits, dtype, 1.0f, vocab, 1, 1, 1.0f, 0.0f, (unsigned long long *)ws, fin, rows, ld);
    if (rc) return rc;
    cudaStream_t st = toc_stream();
    TOC_CUDA(cudaMemcpyAsync(out_tokens, fin.out_token, (size_t)rows * 8, cudaMemcpyDeviceToHost, st),
             "cudaMemcpyAsync");
    TOC_CUDA(cudaStreamSynchronize(st), "toc_sample_greedy_rows");
    return TO_OK;
}

/* The greedy id of a graph step's logits packed for toc_decode_step_end: every block folds its
 * elements' argmax_key (NaN skipped, ties to the lowest id) into *argmax with atomicMax. */
__global__ void decode_argmax_kernel(const void *logits, int dtype, int64_t vocab, unsigned long long *argmax) {
    pdl_enter(); /* launched by toc_launch */
    unsigned long long best = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < vocab; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = ldf(logits, dtype, i);
        if (v == v) {
            const unsigned long long k = argmax_key(v, i);
            if (k > best) best = k;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
        if (other > best) best = other;
    }
    __shared__ unsigned long long red[32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (red[w] > best) best = red[w];
        if (best) atomicMax(argmax, best);
    }
}

TOC_EXPORT int toc_decode_argmax(const void *logits, int dtype, int64_t vocab, void *argmax) {
    TOC_CHECK(logits && argmax && vocab >= 1 && vocab <= 0x7fffffff, TO_ERR_INVALID_ARGUMENT,
              "toc_decode_argmax: bad arguments (vocab %lld)", (long long)vocab);
    TOC_CHECK(toc_is_act(dtype), TO_ERR_DTYPE, "toc_decode_argmax: dtype %d", dtype);
    TOC_READY();
    const int64_t blocks = (vocab + 4095) / 4096;
    TOC_CUDA((toc_launch(decode_argmax_kernel,
        dim3((unsigned)(blocks < 2 * toc_sm_count() ? blocks : 2 * toc_sm_count())), dim3(256), 0, logits, dtype,
        vocab, (unsigned long long *)argmax)), "decode_argmax_kernel");
    return TO_OK;
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
    std::lock_guard<std::mutex> guard(g_sample_lock);
    char *ws = nullptr;
    int rc = workspace(cand_bytes(vocab, sel_count(top_k, 0)), &ws);
    if (rc) return rc;
    FinArgs fin = {};
    fin.rng = rng_state;
    fin.counters = counters;
    fin.tokens = tokens;
    fin.max_steps = max_steps;
    return launch_draw(logits, dtype, 1.0f / temperature, vocab, top_k, 0, top_p, min_p, (unsigned long long *)ws,
                       fin);
}
