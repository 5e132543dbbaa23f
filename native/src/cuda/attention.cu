/* Attention and KV cache on the device (semantics of src/cpu/attention.c).
 *  - split-K kernel (any dtype, any tq, GQA groups share each K/V read): decode and small prefill;
 *    each block covers one query token, one kv head (its group of query heads) and one slice of
 *    the keys; slices are merged by a second kernel. Each warp loads the K/V rows of 4 keys
 *    before using any (the cache dtype is a template argument: a dtype switch around each load
 *    made the compiler wait for each load in turn), with 16-byte vector loads for bf16 rows of
 *    64/128/256; H200, 8 kv heads x 128 over 4096 keys: 17 us against 105 us before.
 *  - flash prefill (bf16, head_dim 64 or 128): FlashAttention-2 style, mma.sync tensor-core tiles
 *    of 64 queries x 64 keys with everything per query row in registers, online softmax in fp32
 *    (probabilities rounded to bf16 for the P.V product); on Hopper (a 90a build) the same
 *    algorithm with wgmma over 128-query blocks (flash_wgmma_kernel), 1.2-1.35x faster on an H200.
 *  - the CUDA-graph decoder's step kernels: q/k RMSNorm + RoPE + cache append in one launch, and
 *    attention whose kv length is read from device memory. */
#include <stdlib.h>

#include <mutex>

#include "common.cuh"

#define AT_GMAX 8   /* query heads per block */
#define AT_DMAX 8   /* head_dim / 32 slots per lane (head_dim <= 256) */
/* Wide heads (absorbed MLA: a [latent | rope key] of 576 values, 512 of them values, one kv head
 * shared by every query head): 18 slots a lane, 2 query heads a block (shared memory and
 * registers of a block scale with both). */
#define AT_DMAX_WIDE 18
#define AT_GMAX_WIDE 2

struct AttnArgs {
    const void *q, *k, *v;
    void *out;
    int64_t tq, nh, nkv, hd, hdv, ldq, ldo, kv_len, khs, kps, vhs, vps, q_pos;
    int causal;
    const int32_t *cu;
    int64_t n_seqs;
    float scale;
    int qd, kd;
    const int32_t *pos_dev; /* graph decode: q_pos = *pos_dev, kv_len = min(q_pos + tq, kv_len) */
    int nsplit;
    float *ws_o, *ws_ml; /* [tq, nh, nsplit, hdv], [tq, nh, nsplit, 2] when nsplit > 1 */
    /* batched decode (toc_attention_decode_batch): query row i is sequence i's new token, over its
     * own cache (base pointers, capacity) holding lens[i] + 1 keys; NULL otherwise */
    const unsigned long long *kp, *vp;
    const int64_t *caps, *lens;
    int batch_unaligned; /* some cache of the batch is not 16-byte aligned: no vector loads */
    const int32_t *lens32; /* toc_attention_decode_batch_dev: the lengths as int32 (lens is NULL) */
    /* batched decode with the append folded in (new rows [tq, nkv * hd] already in the cache
     * dtype): the new key/value are read from here, and one block per row and kv head writes
     * them to the cache; NULL: a kernel appended them before */
    const void *kn, *vn;
};

/* Batched decode: cached tokens of sequence i before its new one, or -1 where that leaves no room
 * for the new token (the row is then skipped: no append, zeros out). The host checks the lengths
 * it passes; a captured graph reads them from device memory, so the kernels check them too. */
__device__ __forceinline__ int64_t batch_len(const AttnArgs &a, int64_t i) {
    const int64_t n = a.lens32 ? (int64_t)a.lens32[i] : a.lens[i];
    return n >= 0 && n < a.caps[i] ? n : -1;
}

/* ND: head_dim / 32 slots per lane (2, 4 or 8); each warp takes AT_U keys per step, their K/V
 * rows loaded before any of them is used, so that the loads of a warp overlap */
#define AT_U 4
/* VEC (bf16, head_dim == 32 * ND for q/k and v, rows 16-byte aligned): lane l holds elements
 * l * ND .. l * ND + ND - 1 of each row and loads them with one vector load; otherwise lane l holds
 * elements l + 32 j (any head_dim, any alignment) */
template <int ND>
__device__ __forceinline__ void ld_bf_vec(const uint16_t *p, float *out) {
    if (ND == 8) {
        bf8(*(const uint4 *)p, out);
    } else if (ND == 4) {
        const uint2 v = *(const uint2 *)p;
        out[0] = __uint_as_float(v.x << 16);
        out[1] = __uint_as_float(v.x & 0xffff0000u);
        out[2] = __uint_as_float(v.y << 16);
        out[3] = __uint_as_float(v.y & 0xffff0000u);
    } else {
        const uint32_t v = *(const uint32_t *)p;
        out[0] = __uint_as_float(v << 16);
        out[1] = __uint_as_float(v & 0xffff0000u);
    }
}
/* dst[r * ld + c] = src[src0 + r * width + c] as float for c < width (0 for width <= c < ld), rows
 * < nrows, with the dtype branch outside the loop: ldf's runtime switch converts each value right
 * after its load, which runs a thread's loads one after another (see ld_as). */
template <int NT, int DT>
__device__ __forceinline__ void stage_q_as(float *dst, int nrows, int ld, int width, const void *src, int64_t src0) {
    const int n = nrows * ld;
#pragma unroll 4
    for (int e = threadIdx.x; e < n; e += NT) {
        const int r = e / ld, c = e - r * ld;
        dst[e] = c < width ? ld_as<DT>(src, src0 + (int64_t)r * width + c) : 0.0f;
    }
}
template <int NT>
__device__ __forceinline__ void stage_q(float *dst, int nrows, int ld, int width, const void *src, int dt, int64_t src0) {
    if (dt == TO_BF16) stage_q_as<NT, TO_BF16>(dst, nrows, ld, width, src, src0);
    else stage_q_as<NT, TO_F32>(dst, nrows, ld, width, src, src0);
}

template <int ND, int KD, bool VEC, int GM = AT_GMAX>
__global__ void __launch_bounds__(128) attn_split_kernel(AttnArgs a) {
    pdl_enter(); /* launched by toc_launch */
    __shared__ float qs[GM][ND * 32];
    __shared__ float wm[4][GM], wl[4][GM];
    __shared__ float wacc[4][GM][ND * 32];
    const int64_t i = blockIdx.z;
    const int64_t G = a.nh / a.nkv;
    const int64_t gchunks = (G + GM - 1) / GM;
    const int64_t h = blockIdx.y / gchunks, g0 = (blockIdx.y % gchunks) * GM;
    const int gc = (int)min((int64_t)GM, G - g0);
    const int split = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t q_pos = a.q_pos, kv_len = a.kv_len;
    if (a.pos_dev) { /* keys past the caches' a.kv_len positions are never read */
        q_pos = *a.pos_dev;
        kv_len = min(q_pos + a.tq, a.kv_len);
    }
    const void *kbase = a.k, *vbase = a.v;
    int64_t khs = a.khs, vhs = a.vhs;
    const bool batch = a.lens || a.lens32;
    if (batch) {
        kbase = (const void *)a.kp[i];
        vbase = (const void *)a.vp[i];
        khs = vhs = a.caps[i] * a.hd;
        kv_len = batch_len(a, i) + 1; /* 0 for a skipped row */
    }
    /* visible keys [lo, hi) */
    int64_t lo = 0, hi = kv_len;
    if (batch) {
    } else if (a.cu) {
        int64_t s = 0;
        while (s + 1 < a.n_seqs && a.cu[s + 1] <= i) s++;
        lo = a.cu[s];
        hi = a.causal ? i + 1 : a.cu[s + 1];
    } else if (a.causal) {
        hi = q_pos + i + 1;
        if (hi > kv_len) hi = kv_len;
    }
    int64_t span = hi > lo ? hi - lo : 0;
    int64_t chunk = (span + a.nsplit - 1) / a.nsplit;
    int64_t s0 = lo + split * chunk, s1 = min(hi, s0 + chunk);
    /* folded append: key `fresh` comes from the new rows, and the block of its slice that holds
     * the first query heads writes it to the cache (nothing in this launch reads it there) */
    const int64_t fresh = a.kn ? hi - 1 : -1, nrow = (i * a.nkv + h) * a.hd;
    if (fresh >= s0 && fresh < s1 && g0 == 0)
        for (int64_t d = threadIdx.x; d < a.hd; d += blockDim.x) {
            stf((void *)kbase, a.kd, h * khs + fresh * a.kps + d, ld_as<KD>(a.kn, nrow + d));
            stf((void *)vbase, a.kd, h * vhs + fresh * a.vps + d, ld_as<KD>(a.vn, nrow + d));
        }
    const int ndv = (int)((a.hdv + 31) / 32);
    if (ND > AT_DMAX) { /* the wide path's registers have no room for the unrolled staging */
        for (int g = 0; g < gc; g++)
            for (int64_t d = threadIdx.x; d < 32 * ND; d += blockDim.x) /* zeros past head_dim */
                qs[g][d] = d < a.hd ? ldf(a.q, a.qd, i * a.ldq + (h * G + g0 + g) * a.hd + d) : 0.0f;
    } else {
        stage_q<128>(&qs[0][0], gc, 32 * ND, (int)a.hd, a.q, a.qd, i * a.ldq + (h * G + g0) * a.hd);
    }
    __syncthreads();
    float m[GM], l[GM], acc[GM][ND];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int j = 0; j < ND; j++) acc[g][j] = 0.0f;
    }
    for (int64_t p = s0 + warp * AT_U; p < s1; p += 4 * AT_U) {
        float kr[AT_U][ND], vr[AT_U][ND];
#pragma unroll
        for (int u = 0; u < AT_U; u++) {
            const bool ok = p + u < s1;
            if (VEC) {
                const int64_t q = ok ? p + u : s0; /* s0 < s1: a row that exists */
                const bool nw = q == fresh;
                ld_bf_vec<ND>(nw ? (const uint16_t *)a.kn + nrow + lane * ND
                                 : (const uint16_t *)kbase + h * khs + q * a.kps + lane * ND,
                              kr[u]);
                ld_bf_vec<ND>(nw ? (const uint16_t *)a.vn + nrow + lane * ND
                                 : (const uint16_t *)vbase + h * vhs + q * a.vps + lane * ND,
                              vr[u]);
#pragma unroll
                for (int j = 0; j < ND; j++) vr[u][j] = ok ? vr[u][j] : 0.0f; /* weight 0, and no NaN */
            } else {
                const bool nw = p + u == fresh;
#pragma unroll
                for (int j = 0; j < ND; j++) {
                    const int64_t d = lane + 32 * j;
                    kr[u][j] = (ok && d < a.hd)
                                   ? (nw ? ld_as<KD>(a.kn, nrow + d) : ld_as<KD>(kbase, h * khs + (p + u) * a.kps + d))
                                   : 0.0f;
                    vr[u][j] = (ok && d < a.hdv)
                                   ? (nw ? ld_as<KD>(a.vn, nrow + d) : ld_as<KD>(vbase, h * vhs + (p + u) * a.vps + d))
                                   : 0.0f;
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (g >= gc) break;
            float s[AT_U];
#pragma unroll
            for (int u = 0; u < AT_U; u++) {
                float dot = 0.0f;
#pragma unroll
                for (int j = 0; j < ND; j++) dot += qs[g][VEC ? lane * ND + j : lane + 32 * j] * kr[u][j];
                s[u] = dot;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
#pragma unroll
                for (int u = 0; u < AT_U; u++) s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);
            float mn = m[g];
#pragma unroll
            for (int u = 0; u < AT_U; u++) {
                s[u] = p + u < s1 ? s[u] * a.scale : -INFINITY;
                mn = fmaxf(mn, s[u]);
            }
            const float alpha = expf(m[g] - mn); /* key p is visible: mn is finite */
            float pe[AT_U], lsum = 0.0f;
#pragma unroll
            for (int u = 0; u < AT_U; u++) lsum += (pe[u] = expf(s[u] - mn));
            l[g] = l[g] * alpha + lsum;
#pragma unroll
            for (int j = 0; j < ND; j++) {
                float o = acc[g][j] * alpha;
#pragma unroll
                for (int u = 0; u < AT_U; u++) o += pe[u] * vr[u][j];
                acc[g][j] = o;
            }
            m[g] = mn;
        }
    }
    /* merge the 4 warps */
#pragma unroll
    for (int g = 0; g < GM; g++) { /* unrolled: the register arrays stay in registers */
        if (g >= gc) break;
        if (lane == 0) {
            wm[warp][g] = m[g];
            wl[warp][g] = l[g];
        }
#pragma unroll
        for (int j = 0; j < ND; j++) {
            if (VEC) wacc[warp][g][lane * ND + j] = acc[g][j];
            else if (j < ndv) wacc[warp][g][lane + 32 * j] = acc[g][j];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < gc * ndv * 32; e += blockDim.x) {
        int g = e / (ndv * 32), d = e % (ndv * 32);
        if (d >= a.hdv) continue;
        float M = -INFINITY;
        for (int w = 0; w < 4; w++) M = fmaxf(M, wm[w][g]);
        float L = 0.0f, O = 0.0f;
        if (M != -INFINITY)
            for (int w = 0; w < 4; w++) {
                float f = expf(wm[w][g] - M);
                L += wl[w][g] * f;
                O += wacc[w][g][d] * f;
            }
        int64_t hq = h * G + g0 + g;
        if (a.nsplit == 1) {
            stf(a.out, a.qd, i * a.ldo + hq * a.hdv + d, L > 0.0f ? O / L : 0.0f);
        } else {
            int64_t slot = (i * a.nh + hq) * a.nsplit + split;
            a.ws_o[slot * a.hdv + d] = O;
            if (d == 0) {
                a.ws_ml[slot * 2] = M;
                a.ws_ml[slot * 2 + 1] = L;
            }
        }
    }
}

/* Each slice's factor exp(m_s - M) is computed once into shared memory, then every dim sums its
 * slices with independent loads (the same sums in the same order as one loop per dim). */
#define AT_MERGE_MAX 1024 /* slices per row, at most */
__global__ void attn_merge_kernel(AttnArgs a) {
    pdl_enter(); /* launched by toc_launch */
    __shared__ float fs[AT_MERGE_MAX];
    int64_t row = blockIdx.x; /* i * nh + hq */
    int64_t i = row / a.nh, hq = row - i * a.nh;
    const float *ml = a.ws_ml + row * a.nsplit * 2;
    float M = -INFINITY;
    for (int s = 0; s < a.nsplit; s++) M = fmaxf(M, ml[s * 2]);
    for (int s = threadIdx.x; s < a.nsplit; s += blockDim.x) fs[s] = M != -INFINITY ? expf(ml[s * 2] - M) : 0.0f;
    __syncthreads();
    float L = 0.0f;
    for (int s = 0; s < a.nsplit; s++) L += ml[s * 2 + 1] * fs[s];
    const float *wo = a.ws_o + row * a.nsplit * a.hdv;
    for (int64_t d = blockIdx.y * blockDim.x + threadIdx.x; d < a.hdv; d += (int64_t)blockDim.x * gridDim.y) {
        float O = 0.0f;
        for (int s = 0; s < a.nsplit; s++) O += wo[s * a.hdv + d] * fs[s];
        stf(a.out, a.qd, i * a.ldo + hq * a.hdv + d, L > 0.0f ? O / L : 0.0f);
    }
}

/* the merge of the slices' partials: a block a query row and head, and 128 of its value dims */
static int launch_merge(const AttnArgs &a) {
    dim3 grid((unsigned)(a.tq * a.nh), (unsigned)((a.hdv + 127) / 128));
    TOC_CUDA((toc_launch(attn_merge_kernel, dim3(grid), dim3(128), 0, a)), "attn_merge_kernel");
    return TO_OK;
}

/* ---- decode of wide heads ----
 * Absorbed MLA (GLM-4.7-Flash: one kv head, key rows of 576 values whose first 512 are the values,
 * 20 query heads): block (split, kv head, query) stages the G query heads of its kv head in shared
 * memory and walks its key slice in tiles of AW_KEYS keys. Each warp scores its keys against every
 * head (a key row is read once for all G heads), a warp per head updates that head's running max
 * and sum over the tile, then each thread adds the tile's P.V to its AW_DV dims of every head.
 * Partials go to the workspace (attn_merge_kernel) or, with one slice, normalised to out. */
#define AW_THREADS 256
#define AW_KEYS 32
#define AW_GMAX 32 /* query heads per kv head */
#define AW_DV 3    /* value dims per thread: hd_v <= 768 */
/* The key (and value) rows of each tile are staged in shared memory by cp.async, two tiles in
 * flight (bf16 caches, rows of whole 16-byte chunks, 16-byte aligned): the scores and P.V read
 * shared memory, and the next tile's rows load while this one is computed. Values that are the
 * leading part of the key rows (a.v == a.k with the same strides: absorbed MLA) are read from the
 * key tile. Other wide heads take the split kernel's wide path. */
/* 16-byte asynchronous copy global -> shared (L2 only; valid false: zero-fill) */
__device__ __forceinline__ void fa_cp16(void *dst, const void *src, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    const int n = valid ? 16 : 0; /* 0: zero-fill */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(n) : "memory");
}
/* four 8 x 8 bf16 matrices from shared memory (lanes 8m .. 8m + 7 address matrix m's rows) */
__device__ __forceinline__ void fa_ldm_x4(uint32_t *r, const void *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void fa_ldm_x4_t(uint32_t *r, const void *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__host__ __device__ __forceinline__ bool wide_shared_v(const AttnArgs &a) {
    return a.v == a.k && a.vps == a.kps && a.vhs == a.khs && a.hdv <= a.hd;
}
/* bytes before the staged tiles (16-byte aligned for cp.async) */
__host__ __device__ __forceinline__ size_t wide_tiles_at(int64_t G, int64_t hd) {
    return ((size_t)(G * hd + G * AW_KEYS + 3 * G) * sizeof(float) + 15) & ~(size_t)15;
}
static size_t wide_staged_smem(const AttnArgs &a) {
    const int64_t G = a.nh / a.nkv;
    const int64_t rows = a.hd + (wide_shared_v(a) ? 0 : a.hdv); /* bf16 values a key stages */
    return wide_tiles_at(G, a.hd) + (size_t)2 * AW_KEYS * rows * 2;
}
/* Wide heads whose rows the wide-head kernels can stage (bf16, whole 16-byte chunks, aligned). */
static bool wide_rows_ok(const AttnArgs &a) {
    const int64_t G = a.nh / a.nkv;
    const bool shape = !a.cu && !a.lens && !a.lens32 && !a.kn && (a.hd > 32 * AT_DMAX || a.hdv > 32 * AT_DMAX) &&
                       G <= AW_GMAX && a.hd <= 32 * AT_DMAX_WIDE && a.hdv <= AW_DV * AW_THREADS;
    const bool vec = a.kd == TO_BF16 && a.hd % 8 == 0 && a.hdv % 8 == 0 && a.kps % 8 == 0 && a.khs % 8 == 0 &&
                     a.vps % 8 == 0 && a.vhs % 8 == 0 && ((uintptr_t)a.k & 15) == 0 && ((uintptr_t)a.v & 15) == 0;
    return shape && vec;
}
/* Whether the wide-head kernel takes a's attention (pointers, dtypes and strides set). */
static bool wide_ok(const AttnArgs &a) {
    return wide_rows_ok(a) && (int64_t)wide_staged_smem(a) <= toc_max_smem_optin();
}
/* The keys [s0, s1) that slice `split` of query row i covers (the length read on the device
 * where a.pos_dev is set). */
__device__ __forceinline__ void wide_slice(const AttnArgs &a, int64_t i, int split, int64_t &s0, int64_t &s1) {
    int64_t q_pos = a.q_pos, kv_len = a.kv_len;
    if (a.pos_dev) {
        q_pos = *a.pos_dev;
        kv_len = min(q_pos + a.tq, a.kv_len);
    }
    int64_t hi = a.causal ? min(q_pos + i + 1, kv_len) : kv_len;
    if (hi < 0) hi = 0;
    const int64_t chunk = (hi + a.nsplit - 1) / a.nsplit;
    s0 = min(hi, (int64_t)split * chunk);
    s1 = min(hi, s0 + chunk);
}
/* A thread's 16-byte chunks of a tile of rows `width` chunks wide: row r, chunk c, then nthreads
 * chunks on each step (no division per chunk: a runtime divisor costs ~20 instructions) */
struct ChunkWalk {
    int r, c, rstep, cstep, width;
    __device__ ChunkWalk(int tid, int nthreads, int w)
        : r(tid / w), c(tid - (tid / w) * w), rstep(nthreads / w), cstep(nthreads - (nthreads / w) * w), width(w) {}
    __device__ __forceinline__ void next() {
        r += rstep;
        c += cstep;
        if (c >= width) {
            c -= width;
            r++;
        }
    }
};
/* Head g's running max and sum after a tile whose maximum is mn (at least the old one) and whose
 * probabilities exp(s - mn) sum to sum; alpha[g] rescales the head's output accumulated so far */
__device__ __forceinline__ void wide_running(float *mrun, float *lrun, float *alpha, int g, float mn, float sum) {
    const float mo = mrun[g], al = mo == -INFINITY ? 0.0f : expf(mo - mn);
    alpha[g] = al;
    lrun[g] = lrun[g] * al + sum;
    mrun[g] = mn;
}
/* Waits for the tile being computed: with the next one issued, all but the newest group */
__device__ __forceinline__ void wait_tile(bool next_issued) {
    if (next_issued) asm volatile("cp.async.wait_group 1;" ::: "memory");
    else asm volatile("cp.async.wait_group 0;" ::: "memory");
}
__global__ void __launch_bounds__(AW_THREADS) attn_wide_kernel(AttnArgs a) {
    extern __shared__ float aw_sm[];
    const int G = (int)(a.nh / a.nkv);
    const bool vshared = wide_shared_v(a); /* the host sized the tiles by the same test */
    float *qs = aw_sm;                   /* [G][hd] */
    float *P = qs + G * a.hd;            /* [G][AW_KEYS] scores, then probabilities */
    float *mrun = P + G * AW_KEYS, *lrun = mrun + G, *alpha = lrun + G;
    const int kp = (int)a.hd, vp = vshared ? 0 : (int)a.hdv; /* staged bf16 per key */
    uint16_t *tiles = (uint16_t *)((char *)aw_sm + wide_tiles_at(G, a.hd)); /* [2][AW_KEYS][kp + vp] */
    const int64_t i = blockIdx.z, h = blockIdx.y;
    const int split = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t s0, s1;
    wide_slice(a, i, split, s0, s1);
    const uint16_t *kb = (const uint16_t *)a.k + h * a.khs, *vb = (const uint16_t *)a.v + h * a.vhs;
    const int kc = kp / 8, vc = vp / 8; /* 16-byte chunks a key */
    auto issue = [&](int64_t t0, int buf) {
        const int nt = (int)min((int64_t)AW_KEYS, s1 - t0);
        uint16_t *dst = tiles + (size_t)buf * AW_KEYS * (kp + vp);
        for (ChunkWalk w(threadIdx.x, AW_THREADS, kc + vc); w.r < nt; w.next()) {
            const int r = w.r, c = w.c;
            const uint16_t *src = c < kc ? kb + (t0 + r) * a.kps + 8 * c : vb + (t0 + r) * a.vps + 8 * (c - kc);
            fa_cp16(dst + (size_t)r * (kp + vp) + 8 * c, src, true);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    };
    if (s0 < s1) issue(s0, 0);
    stage_q<AW_THREADS>(qs, G, (int)a.hd, (int)a.hd, a.q, a.qd, i * a.ldq + h * G * a.hd);
    for (int g = threadIdx.x; g < G; g += AW_THREADS) {
        mrun[g] = -INFINITY;
        lrun[g] = 0.0f;
    }
    float acc[AW_GMAX][AW_DV];
#pragma unroll
    for (int g = 0; g < AW_GMAX; g++)
#pragma unroll
        for (int c = 0; c < AW_DV; c++) acc[g][c] = 0.0f;
    const int npair = (int)(a.hd / 2); /* bf16 pairs of a key row */
    __syncthreads(); /* the running max and sum are set (an empty slice writes them as they are) */
    int buf = 0;
    for (int64_t t0 = s0; t0 < s1; t0 += AW_KEYS, buf ^= 1) {
        const int nt = (int)min((int64_t)AW_KEYS, s1 - t0);
        if (t0 + AW_KEYS < s1) issue(t0 + AW_KEYS, buf ^ 1);
        wait_tile(t0 + AW_KEYS < s1);
        __syncthreads();
        const uint16_t *kt = tiles + (size_t)buf * AW_KEYS * (kp + vp);
        /* scores: warp w takes keys 2w, 2w + 1, 2w + 16, ...; lane l the pairs l, l + 32, ... */
        for (int j = warp * 2; j < nt; j += 2 * (AW_THREADS / 32)) {
            float2 kr[2][(32 * AT_DMAX_WIDE) / 64];
#pragma unroll
            for (int u = 0; u < 2; u++)
#pragma unroll
                for (int c = 0; c < (32 * AT_DMAX_WIDE) / 64; c++) {
                    const int pr = lane + 32 * c;
                    const uint32_t w = (pr < npair && j + u < nt)
                                           ? *(const uint32_t *)(kt + (size_t)(j + u) * (kp + vp) + 2 * pr)
                                           : 0u;
                    kr[u][c] = make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
                }
            for (int g = 0; g < G; g++) {
                const float2 *qg = (const float2 *)(qs + g * a.hd);
                float s[2] = {0.0f, 0.0f};
#pragma unroll
                for (int c = 0; c < (32 * AT_DMAX_WIDE) / 64; c++) {
                    const int pr = lane + 32 * c;
                    const float2 qv = pr < npair ? qg[pr] : make_float2(0.0f, 0.0f);
                    s[0] += qv.x * kr[0][c].x + qv.y * kr[0][c].y;
                    s[1] += qv.x * kr[1][c].x + qv.y * kr[1][c].y;
                }
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) {
                    s[0] += __shfl_xor_sync(0xffffffffu, s[0], o);
                    s[1] += __shfl_xor_sync(0xffffffffu, s[1], o);
                }
                if (lane == 0) {
                    P[g * AW_KEYS + j] = s[0] * a.scale;
                    if (j + 1 < nt) P[g * AW_KEYS + j + 1] = s[1] * a.scale;
                }
            }
        }
        __syncthreads();
        for (int g = warp; g < G; g += AW_THREADS / 32) {
            const float sv = lane < nt ? P[g * AW_KEYS + lane] : -INFINITY;
            const float mn = fmaxf(mrun[g], warp_max(sv));
            const float pe = lane < nt ? expf(sv - mn) : 0.0f;
            const float sum = warp_sum(pe);
            P[g * AW_KEYS + lane] = pe;
            __syncwarp();
            if (lane == 0) wide_running(mrun, lrun, alpha, g, mn, sum);
        }
        __syncthreads();
#pragma unroll
        for (int g = 0; g < AW_GMAX; g++) {
            if (g >= G) break;
            const float al = alpha[g];
#pragma unroll
            for (int c = 0; c < AW_DV; c++) acc[g][c] *= al;
        }
        const uint16_t *vt = kt + (vshared ? 0 : kp);
        for (int j = 0; j < nt; j++) {
            float vr[AW_DV];
#pragma unroll
            for (int c = 0; c < AW_DV; c++) {
                const int d = threadIdx.x + AW_THREADS * c;
                vr[c] = d < a.hdv ? __uint_as_float((uint32_t)vt[(size_t)j * (kp + vp) + d] << 16) : 0.0f;
            }
#pragma unroll
            for (int g = 0; g < AW_GMAX; g++) {
                if (g >= G) break;
                const float p = P[g * AW_KEYS + j];
#pragma unroll
                for (int c = 0; c < AW_DV; c++) acc[g][c] += p * vr[c];
            }
        }
        __syncthreads(); /* P, alpha and this tile's buffer are rewritten next */
    }
#pragma unroll
    for (int g = 0; g < AW_GMAX; g++) {
        if (g >= G) break;
        const int64_t hq = h * G + g;
        const float M = mrun[g], L = lrun[g];
#pragma unroll
        for (int c = 0; c < AW_DV; c++) {
            const int64_t d = threadIdx.x + AW_THREADS * c;
            if (d >= a.hdv) continue;
            if (a.nsplit == 1) {
                stf(a.out, a.qd, i * a.ldo + hq * a.hdv + d, L > 0.0f ? acc[g][c] / L : 0.0f);
            } else {
                const int64_t slot = (i * a.nh + hq) * a.nsplit + split;
                a.ws_o[slot * a.hdv + d] = acc[g][c];
                if (d == 0) {
                    a.ws_ml[slot * 2] = M;
                    a.ws_ml[slot * 2 + 1] = L;
                }
            }
        }
    }
}

static int launch_wide(AttnArgs &a) {
    const size_t smem = wide_staged_smem(a);
    static size_t configured[16];
    int dev = 0;
    cudaGetDevice(&dev);
    if (configured[dev & 15] < smem) {
        TOC_CUDA(cudaFuncSetAttribute(attn_wide_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 "cudaFuncSetAttribute");
        configured[dev & 15] = smem;
    }
    dim3 grid((unsigned)a.nsplit, (unsigned)a.nkv, (unsigned)a.tq);
    attn_wide_kernel<<<grid, AW_THREADS, smem, toc_stream()>>>(a);
    TOC_LAUNCHED("attn_wide_kernel");
    return a.nsplit > 1 ? launch_merge(a) : TO_OK;
}

/* ---- decode of wide heads on tensor cores ----
 * Absorbed MLA with a bf16 query (the values the leading hdv columns of the key rows): block
 * (split, kv head, query) holds its G query heads (padded to NT x 8 rows, zeros) in shared memory
 * and walks its key slice in tiles of WM_KEYS keys staged by cp.async (two in flight). The products
 * are transposed so that the heads are the narrow n side of mma.sync m16n8k16 (8 heads a block of
 * columns, not 16 rows: GLM's 20 heads pad to 24, not 32):
 *   S^T = K Q^T  (keys x heads; warp w the keys 16 (w % 4) .., quarter w / 4 of the row's columns,
 *                 the four parts added in the softmax),
 *   online softmax per head in fp32 (a warp a head), P rounded to bf16 and summed as rounded (as
 *   the flash kernels),
 *   O^T = alpha O^T + V^T P^T  (value dims x heads; warp w the dims 16 w .., 16 (w + 16) .., in
 *                 registers).
 * 16 warps: with 8 a tile took ~1700 instructions a warp at ~5 cycles each (the latency of
 * dependent mma / ldmatrix / shuffles, two warps a scheduler). 
 * Partials go to the workspace (attn_merge_kernel) or, with one slice, normalised to out. */
#define WM_THREADS 512
#define WM_WARPS (WM_THREADS / 32)
#define WM_NP (WM_WARPS / 4) /* parts of a key row's columns in S^T (4 blocks of 16 keys) */
#define WM_KEYS 64
#define WM_SLD (WM_KEYS + 4) /* score row pitch (floats): the fragment stores hit distinct banks */
#define WM_PLD (WM_KEYS + 8) /* probability row pitch (bf16; odd 16-byte chunks: no ldmatrix conflicts) */
#define WM_MPW 2             /* value row blocks of 16 a warp, at most: hdv <= 512 */
static size_t wide_mma_smem(const AttnArgs &a, int nt) {
    const size_t R = 8 * (size_t)nt, ldk = (size_t)a.hd + 8;
    return (R * ldk + 2 * (size_t)WM_KEYS * ldk) * 2 + WM_NP * R * WM_SLD * 4 + R * WM_PLD * 2 + 3 * 32 * 4;
}
static int wide_mma_nt(const AttnArgs &a) { return (int)((a.nh / a.nkv + 7) / 8); }
static bool wide_mma_ok(const AttnArgs &a) {
    return wide_rows_ok(a) && a.qd == TO_BF16 && wide_shared_v(a) && a.nh / a.nkv <= 32 && a.hd % 32 == 0 &&
           a.hdv % 16 == 0 && a.hdv <= 16 * WM_WARPS * WM_MPW &&
           (int64_t)wide_mma_smem(a, wide_mma_nt(a)) <= toc_max_smem_optin();
}
template <int NT>
__global__ void __launch_bounds__(WM_THREADS) attn_wide_mma_kernel(AttnArgs a) {
    pdl_enter(); /* launched by toc_launch */
    extern __shared__ __align__(128) unsigned char wm_sm[];
    constexpr int R = 8 * NT;
    const int G = (int)(a.nh / a.nkv), hd = (int)a.hd, hdv = (int)a.hdv, LDK = hd + 8, kc8 = hd / 8;
    const int nmt = hdv / 16; /* value row blocks of 16 */
    uint16_t *Qs = (uint16_t *)wm_sm;              /* [R][LDK] */
    uint16_t *Ks = Qs + R * LDK;                   /* [2][WM_KEYS][LDK] */
    float *St = (float *)(Ks + 2 * WM_KEYS * LDK);       /* [WM_NP parts][R heads][WM_SLD keys] */
    uint16_t *Pb = (uint16_t *)(St + WM_NP * R * WM_SLD); /* [R heads][WM_PLD keys] */
    float *mrun = (float *)(Pb + R * WM_PLD), *lrun = mrun + 32, *alpha = lrun + 32;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int64_t i = blockIdx.z, h = blockIdx.y;
    const int split = blockIdx.x;
    int64_t s0, s1;
    wide_slice(a, i, split, s0, s1);
    const uint16_t *kb = (const uint16_t *)a.k + h * a.khs;
    auto issue = [&](int64_t t0, int buf) { /* keys past the slice zero-filled (P is 0 there) */
        uint16_t *dst = Ks + buf * WM_KEYS * LDK;
        for (ChunkWalk w(tid, WM_THREADS, kc8); w.r < WM_KEYS; w.next()) {
            const bool ok = t0 + w.r < s1;
            fa_cp16(dst + w.r * LDK + 8 * w.c, kb + (ok ? t0 + w.r : s0) * a.kps + 8 * w.c, ok);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    };
    /* the query heads (rows past G zero), committed with the first tile */
    const uint16_t *qg = (const uint16_t *)a.q + i * a.ldq + h * G * hd;
    const bool qvec = ((uintptr_t)qg & 15) == 0;
    for (int e = tid; e < R * kc8; e += WM_THREADS) { /* once a block: the divisions stay */
        const int r = e / kc8, c = e - r * kc8;
        uint16_t *d = Qs + r * LDK + 8 * c;
        if (qvec) {
            fa_cp16(d, qg + (r < G ? r : 0) * hd + 8 * c, r < G);
        } else {
#pragma unroll
            for (int u = 0; u < 8; u++) d[u] = r < G ? qg[r * hd + 8 * c + u] : (uint16_t)0;
        }
    }
    if (s0 < s1) issue(s0, 0);
    else asm volatile("cp.async.commit_group;" ::: "memory");
    for (int e = tid; e < R * WM_PLD; e += WM_THREADS) Pb[e] = 0; /* rows past G stay 0 */
    if (tid < 32) {
        mrun[tid] = -INFINITY;
        lrun[tid] = 0.0f;
        alpha[tid] = 0.0f;
    }
    float o[WM_MPW][NT][4];
#pragma unroll
    for (int m = 0; m < WM_MPW; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
    const int nk = hd / 16; /* 16-column chunks of a row */
    int buf = 0;
    for (int64_t t0 = s0; t0 < s1; t0 += WM_KEYS, buf ^= 1) {
        const int nt = (int)min((int64_t)WM_KEYS, s1 - t0);
        if (t0 + WM_KEYS < s1) issue(t0 + WM_KEYS, buf ^ 1);
        wait_tile(t0 + WM_KEYS < s1);
        __syncthreads();
        const uint16_t *kt = Ks + buf * WM_KEYS * LDK;
        { /* S^T = K Q^T: keys 16 (warp % 4) .. + 15, part warp / 4 of the row's 16-column chunks */
            const int mk = (warp & 3) * 16, part = warp >> 2;
            const int kc0 = part * nk / WM_NP, kc1 = (part + 1) * nk / WM_NP;
            float s[NT][4];
#pragma unroll
            for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const uint16_t *ar = kt + (mk + (lane & 15)) * LDK + (lane >> 4) * 8;
            const uint16_t *br = Qs + (lane & 7) * LDK + (lane >> 3) * 8;
            int kc = kc0;
            for (; kc + 1 < kc1; kc += 2) {
                uint32_t a0[4], a1[4];
                fa_ldm_x4(a0, ar + kc * 16);
                fa_ldm_x4(a1, ar + kc * 16 + 16);
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    uint32_t b[4];
                    fa_ldm_x4(b, br + n * 8 * LDK + kc * 16);
                    mma_bf16_16816(s[n], a0[0], a0[1], a0[2], a0[3], b[0], b[1]);
                    mma_bf16_16816(s[n], a1[0], a1[1], a1[2], a1[3], b[2], b[3]);
                }
            }
            if (kc < kc1) { /* an odd count of chunks: the last one alone */
                uint32_t a0[4];
                fa_ldm_x4(a0, ar + kc * 16);
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    uint32_t b[4];
                    fa_ldm_x4(b, br + n * 8 * LDK + kc * 16); /* b[2], b[3] unused */
                    mma_bf16_16816(s[n], a0[0], a0[1], a0[2], a0[3], b[0], b[1]);
                }
            }
            float *sh = St + part * R * WM_SLD;
#pragma unroll
            for (int n = 0; n < NT; n++) {
                float *c = sh + (n * 8 + 2 * tig) * WM_SLD + mk + gid;
                c[0] = s[n][0];
                c[WM_SLD] = s[n][1];
                c[8] = s[n][2];
                c[WM_SLD + 8] = s[n][3];
            }
        }
        __syncthreads();
        /* online softmax, a warp a head: lane l the keys l and l + 32 */
        for (int g = warp; g < G; g += WM_WARPS) {
            float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
            for (int p = 0; p < WM_NP; p++) {
                v0 += St[(p * R + g) * WM_SLD + lane];
                v1 += St[(p * R + g) * WM_SLD + lane + 32];
            }
            v0 = lane < nt ? v0 * a.scale : -INFINITY;
            v1 = lane + 32 < nt ? v1 * a.scale : -INFINITY;
            const float mn = fmaxf(mrun[g], warp_max(fmaxf(v0, v1)));
            const uint16_t p0 = f2bf(lane < nt ? expf(v0 - mn) : 0.0f);
            const uint16_t p1 = f2bf(lane + 32 < nt ? expf(v1 - mn) : 0.0f);
            const float sum = warp_sum(bf2f(p0) + bf2f(p1));
            Pb[g * WM_PLD + lane] = p0;
            Pb[g * WM_PLD + lane + 32] = p1;
            if (lane == 0) wide_running(mrun, lrun, alpha, g, mn, sum);
        }
        __syncthreads();
        { /* O^T = alpha O^T + V^T P^T: warp w the value dims 16 w .. + 15, 16 (w + WM_WARPS) .. */
            uint32_t pb[NT][8]; /* B fragments of P^T: heads n * 8 .., keys 16 kc .. */
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const uint16_t *pr = Pb + (n * 8 + (lane & 7)) * WM_PLD + (lane >> 3) * 8;
                fa_ldm_x4(pb[n], pr);
                fa_ldm_x4(pb[n] + 4, pr + 32);
            }
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const float a0 = alpha[n * 8 + 2 * tig], a1 = alpha[n * 8 + 2 * tig + 1];
#pragma unroll
                for (int m = 0; m < WM_MPW; m++) {
                    o[m][n][0] *= a0;
                    o[m][n][1] *= a1;
                    o[m][n][2] *= a0;
                    o[m][n][3] *= a1;
                }
            }
            /* A = V^T from the key rows (transposed): lanes 0-7 / 8-15 / 16-23 / 24-31 address
             * (keys 0-7, dims 0-7) / (keys 0-7, dims 8-15) / (keys 8-15, dims 0-7) / (8-15, 8-15) */
            const uint16_t *vr = kt + ((lane & 7) + ((lane >> 4) & 1) * 8) * LDK + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int m = 0; m < WM_MPW; m++) {
                if (warp + m * WM_WARPS >= nmt) break;
                const int d0 = (warp + m * WM_WARPS) * 16;
#pragma unroll
                for (int kc = 0; kc < WM_KEYS / 16; kc++) {
                    uint32_t av[4];
                    fa_ldm_x4_t(av, vr + kc * 16 * LDK + d0);
#pragma unroll
                    for (int n = 0; n < NT; n++)
                        mma_bf16_16816(o[m][n], av[0], av[1], av[2], av[3], pb[n][2 * kc], pb[n][2 * kc + 1]);
                }
            }
        }
        __syncthreads(); /* the scores, P and this tile's buffer are rewritten next */
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory"); /* an empty slice's query copies */
    __syncthreads();
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int r = n * 8 + 2 * tig + e; /* the head */
            if (r >= G) continue;
            const int64_t hq = h * G + r;
            const float M = mrun[r], L = lrun[r], rl = L > 0.0f ? 1.0f / L : 0.0f;
            const int64_t slot = (i * a.nh + hq) * a.nsplit + split;
#pragma unroll
            for (int m = 0; m < WM_MPW; m++) {
                if (warp + m * WM_WARPS >= nmt) break;
                const int64_t d = (int64_t)(warp + m * WM_WARPS) * 16 + gid;
                const float v0 = o[m][n][e], v1 = o[m][n][2 + e]; /* dims d and d + 8 */
                if (a.nsplit == 1) {
                    stf(a.out, a.qd, i * a.ldo + hq * a.hdv + d, v0 * rl);
                    stf(a.out, a.qd, i * a.ldo + hq * a.hdv + d + 8, v1 * rl);
                } else {
                    a.ws_o[slot * a.hdv + d] = v0;
                    a.ws_o[slot * a.hdv + d + 8] = v1;
                    if (d == 0) {
                        a.ws_ml[slot * 2] = M;
                        a.ws_ml[slot * 2 + 1] = L;
                    }
                }
            }
        }
}

static int launch_wide_mma(AttnArgs &a) {
    const int nt = wide_mma_nt(a);
    const size_t smem = wide_mma_smem(a, nt);
    static size_t configured[4][16];
    void (*const kernels[4])(AttnArgs) = {attn_wide_mma_kernel<1>, attn_wide_mma_kernel<2>, attn_wide_mma_kernel<3>,
                                          attn_wide_mma_kernel<4>};
    int dev = 0;
    cudaGetDevice(&dev);
    if (configured[nt - 1][dev & 15] < smem) {
        TOC_CUDA(cudaFuncSetAttribute(kernels[nt - 1], cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 "cudaFuncSetAttribute");
        configured[nt - 1][dev & 15] = smem;
    }
    dim3 grid((unsigned)a.nsplit, (unsigned)a.nkv, (unsigned)a.tq);
    TOC_CUDA(toc_launch(kernels[nt - 1], grid, dim3(WM_THREADS), smem, a), "attn_wide_mma_kernel");
    return a.nsplit > 1 ? launch_merge(a) : TO_OK;
}

static int launch_split(AttnArgs &a) {
    const int64_t nd = ((a.hd > a.hdv ? a.hd : a.hdv) + 31) / 32;
    const int64_t gm = nd > AT_DMAX ? AT_GMAX_WIDE : AT_GMAX;
    int64_t G = a.nh / a.nkv, gchunks = (G + gm - 1) / gm;
    dim3 grid((unsigned)a.nsplit, (unsigned)(a.nkv * gchunks), (unsigned)a.tq);
    if (wide_mma_ok(a)) return launch_wide_mma(a);
    if (wide_ok(a)) return launch_wide(a);
    void (*kern)(AttnArgs);
    if (nd > AT_DMAX) { /* wide heads: elementwise loads, any alignment */
        kern = a.kd == TO_BF16 ? attn_split_kernel<AT_DMAX_WIDE, TO_BF16, false, AT_GMAX_WIDE>
                               : attn_split_kernel<AT_DMAX_WIDE, TO_F32, false, AT_GMAX_WIDE>;
    } else {
        const bool vec = a.kd == TO_BF16 && a.hd == a.hdv && (a.hd == 64 || a.hd == 128 || a.hd == 256) &&
                         a.khs % 8 == 0 && a.kps % 8 == 0 && a.vhs % 8 == 0 && a.vps % 8 == 0 &&
                         ((uintptr_t)a.k & 15) == 0 && ((uintptr_t)a.v & 15) == 0 && !a.batch_unaligned;
        if (vec)
            kern = a.hd == 64    ? attn_split_kernel<2, TO_BF16, true>
                   : a.hd == 128 ? attn_split_kernel<4, TO_BF16, true>
                                 : attn_split_kernel<AT_DMAX, TO_BF16, true>;
        else if (a.kd == TO_BF16)
            kern = nd <= 2   ? attn_split_kernel<2, TO_BF16, false>
                   : nd <= 4 ? attn_split_kernel<4, TO_BF16, false>
                             : attn_split_kernel<AT_DMAX, TO_BF16, false>;
        else
            kern = nd <= 2   ? attn_split_kernel<2, TO_F32, false>
                   : nd <= 4 ? attn_split_kernel<4, TO_F32, false>
                             : attn_split_kernel<AT_DMAX, TO_F32, false>;
    }
    TOC_CUDA(toc_launch(kern, grid, dim3(128), 0, a), "attn_split_kernel");
    return a.nsplit > 1 ? launch_merge(a) : TO_OK;
}

/* ---- flash prefill (bf16, mma.sync) ----
 * FlashAttention-2 layout: a block of 4 warps owns 64 queries of one query head, each warp 16 rows
 * held in registers (Q fragments, the fp32 output accumulator, the row max and sum); key/value
 * tiles of 64 rows stream through a two-stage cp.async ring in shared memory. S = Q K^T and
 * O += P V run on m16n8k16 bf16 tensor-core MMAs; the score fragments become the A operand of the
 * P V product in registers. Online softmax in fp32; the probabilities are rounded to bf16 for the
 * P V product (and summed as rounded), as in the op-by-op path. Causal: tiles past the block's last
 * query are skipped, the diagonal ones masked. Every head's heaviest query tile runs first
 * (fa_tile). */
#define FA_BQ 64
#define FA_BK 64
#define FA_THREADS 128
template <int HD>
struct Fa2Smem {
    static const int LD = HD + 8; /* row pitch in bf16 (16-byte aligned rows, no ldmatrix conflicts) */
    static const size_t q = (size_t)FA_BQ * LD * 2, kv = (size_t)FA_BK * LD * 2;
    static const size_t total = q + 4 * kv; /* Q, then (K, V) x 2 stages */
};

__device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
    return (uint32_t)f2bf(lo) | ((uint32_t)f2bf(hi) << 16);
}
/* the four lanes of a quad hold one query row's scores: their max and their sum */
__device__ __forceinline__ float fa_quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float fa_quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
/* 2^x on the special-function unit (0 for -inf; results below 2^-126 flush to 0) */
__device__ __forceinline__ float fa_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
/* the two halves of a bf2_rn result, as floats */
__device__ __forceinline__ float fa_lo(uint32_t p) { return __uint_as_float(p << 16); }
__device__ __forceinline__ float fa_hi(uint32_t p) { return __uint_as_float(p & 0xffff0000u); }
/* P of an 8-key block from four exponents (log2 units; rows gid: e0, e1 and gid + 8: e2, e3),
 * rounded to bf16 as the op-by-op path does, packed into the A-fragment halves lo / hi; the
 * rounded values are added to the row sums */
__device__ __forceinline__ void fa_p8e(float e0, float e1, float e2, float e3, float &sum0, float &sum1,
                                       uint32_t &lo, uint32_t &hi) {
    lo = bf2_rn(fa_ex2(e0), fa_ex2(e1));
    hi = bf2_rn(fa_ex2(e2), fa_ex2(e3));
    sum0 += fa_lo(lo) + fa_hi(lo);
    sum1 += fa_lo(hi) + fa_hi(hi);
}
/* the same from scores in log2 units (c0 .. c3) less the row maxima b0 / b1 */
__device__ __forceinline__ void fa_p8(float c0, float c1, float c2, float c3, float b0, float b1, float &sum0,
                                      float &sum1, uint32_t &lo, uint32_t &hi) {
    fa_p8e(c0 - b0, c1 - b0, c2 - b1, c3 - b1, sum0, sum1, lo, hi);
}

/* A prefill block's work: query head hq = blockIdx.x (kv head h), queries i0 .. i0 + BQ - 1 of
 * its tile and the key tiles of BK keys those queries see. Blocks start in the order of their
 * linear index, x fastest: every head's heaviest (last) tile first, the lightest last, so no
 * heavy block starts near the end (with the head as y, the last head's heavy tiles started after
 * 31 / 32 of the work of 32 heads and ran on alone). */
struct FaTile {
    int64_t hq, h, i0;
    int ntiles;
};
__device__ __forceinline__ FaTile fa_tile(const AttnArgs &a, int BQ, int BK) {
    FaTile f;
    const int64_t qt = gridDim.y - 1 - blockIdx.y;
    f.hq = blockIdx.x;
    f.h = f.hq / (a.nh / a.nkv);
    f.i0 = qt * BQ;
    const int64_t last_q = min(a.tq - 1, f.i0 + BQ - 1);
    const int64_t key_end = a.causal ? min(a.kv_len, a.q_pos + last_q + 1) : a.kv_len;
    f.ntiles = (int)((key_end + BK - 1) / BK);
    return f;
}

template <int HD>
__global__ void __launch_bounds__(FA_THREADS) flash_prefill_kernel(AttnArgs a) {
    typedef Fa2Smem<HD> L;
    constexpr int LD = L::LD, KC = HD / 16, NB = FA_BK / 8, ONB = HD / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    uint16_t *Qs = (uint16_t *)smem;
    uint16_t *KVs = (uint16_t *)(smem + L::q); /* stage s: K at 2s, V at 2s+1 (FA_BK x LD each) */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const FaTile ft = fa_tile(a, FA_BQ, FA_BK);
    const int64_t hq = ft.hq, h = ft.h, i0 = ft.i0;
    const int ntiles = ft.ntiles;
    const uint16_t *kg = (const uint16_t *)a.k + h * a.khs, *vg = (const uint16_t *)a.v + h * a.vhs;

    auto load_tile = [&](int t, int stage) {
        uint16_t *Ks = KVs + (size_t)(2 * stage) * FA_BK * LD, *Vs = Ks + FA_BK * LD;
        const int64_t k0 = (int64_t)t * FA_BK;
        for (int c = tid; c < FA_BK * HD / 8; c += FA_THREADS) {
            const int r = c / (HD / 8), cc = (c % (HD / 8)) * 8;
            const bool ok = k0 + r < a.kv_len;
            const int64_t kr = ok ? k0 + r : 0;
            fa_cp16(Ks + r * LD + cc, kg + kr * a.kps + cc, ok);
            fa_cp16(Vs + r * LD + cc, vg + kr * a.vps + cc, ok);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    };
    /* Q tile (rows past tq zero-filled) and the first K/V tile */
    for (int c = tid; c < FA_BQ * HD / 8; c += FA_THREADS) {
        const int r = c / (HD / 8), cc = (c % (HD / 8)) * 8;
        const bool ok = i0 + r < a.tq;
        fa_cp16(Qs + r * LD + cc, (const uint16_t *)a.q + (ok ? i0 + r : 0) * a.ldq + hq * HD + cc, ok);
    }
    if (ntiles > 0) load_tile(0, 0);
    else asm volatile("cp.async.commit_group;" ::: "memory");

    float o[ONB][4];
#pragma unroll
    for (int j = 0; j < ONB; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* rows gid and gid + 8 */
    uint32_t qf[KC][4];
    const int64_t qi0 = i0 + warp * 16 + gid, qi1 = qi0 + 8;
    const float sl2 = a.scale * 1.4426950408889634f; /* scores in log2 units */

    for (int t = 0; t < ntiles; t++) {
        const int stage = t & 1;
        if (t + 1 < ntiles) load_tile(t + 1, stage ^ 1);
        else asm volatile("cp.async.commit_group;" ::: "memory");
        asm volatile("cp.async.wait_group 1;" ::: "memory");
        __syncthreads();
        if (t == 0) {
#pragma unroll
            for (int kc = 0; kc < KC; kc++)
                fa_ldm_x4(qf[kc], Qs + (warp * 16 + (lane & 15)) * LD + kc * 16 + (lane >> 4) * 8);
        }
        const uint16_t *Ks = KVs + (size_t)(2 * stage) * FA_BK * LD, *Vs = Ks + FA_BK * LD;
        /* S = Q K^T: NB blocks of 8 keys */
        float s[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; nb++) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
#pragma unroll
            for (int nb = 0; nb < NB; nb += 2) {
                uint32_t b[4];
                const int m = lane >> 3;
                fa_ldm_x4(b, Ks + (nb * 8 + (m >> 1) * 8 + (lane & 7)) * LD + kc * 16 + (m & 1) * 8);
                mma_bf16_16816(s[nb], qf[kc][0], qf[kc][1], qf[kc][2], qf[kc][3], b[0], b[1]);
                mma_bf16_16816(s[nb + 1], qf[kc][0], qf[kc][1], qf[kc][2], qf[kc][3], b[2], b[3]);
            }
        }
        /* scale, mask, row max */
        const int64_t k0 = (int64_t)t * FA_BK;
        const bool need_mask = k0 + FA_BK > a.kv_len || (a.causal && k0 + FA_BK - 1 > a.q_pos + i0 + warp * 16);
        const int64_t lim0 = a.causal ? min(a.kv_len, a.q_pos + qi0 + 1) : a.kv_len;
        const int64_t lim1 = a.causal ? min(a.kv_len, a.q_pos + qi1 + 1) : a.kv_len;
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int nb = 0; nb < NB; nb++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int64_t j = k0 + nb * 8 + 2 * tig + e;
                float v0 = s[nb][e] * sl2, v1 = s[nb][2 + e] * sl2;
                if (need_mask) {
                    if (j >= lim0) v0 = -INFINITY;
                    if (j >= lim1) v1 = -INFINITY;
                }
                s[nb][e] = v0;
                s[nb][2 + e] = v1;
                mx0 = fmaxf(mx0, v0);
                mx1 = fmaxf(mx1, v1);
            }
        }
        mx0 = fa_quad_max(mx0);
        mx1 = fa_quad_max(mx1);
        const float b0 = mx0 == -INFINITY ? 0.0f : mx0, b1 = mx1 == -INFINITY ? 0.0f : mx1;
        const float al0 = exp2f(m0 - b0), al1 = exp2f(m1 - b1); /* 0 on the first tile */
        m0 = mx0;
        m1 = mx1;
        /* P (bf16, as A fragments) and the row sums of the rounded values */
        uint32_t pf[FA_BK / 16][4];
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int nb = 0; nb < NB; nb++)
            fa_p8(s[nb][0], s[nb][1], s[nb][2], s[nb][3], b0, b1, sum0, sum1, pf[nb >> 1][(nb & 1) * 2],
                  pf[nb >> 1][(nb & 1) * 2 + 1]);
        sum0 = fa_quad_sum(sum0);
        sum1 = fa_quad_sum(sum1);
        l0 = l0 * al0 + sum0;
        l1 = l1 * al1 + sum1;
#pragma unroll
        for (int j = 0; j < ONB; j++) {
            o[j][0] *= al0;
            o[j][1] *= al0;
            o[j][2] *= al1;
            o[j][3] *= al1;
        }
        /* O += P V: key chunks of 16, output blocks of 8 dims */
#pragma unroll
        for (int kc = 0; kc < FA_BK / 16; kc++) {
#pragma unroll
            for (int j = 0; j < ONB; j += 2) {
                uint32_t b[4];
                const int m = lane >> 3;
                fa_ldm_x4_t(b, Vs + (kc * 16 + (m & 1) * 8 + (lane & 7)) * LD + j * 8 + (m >> 1) * 8);
                mma_bf16_16816(o[j], pf[kc][0], pf[kc][1], pf[kc][2], pf[kc][3], b[0], b[1]);
                mma_bf16_16816(o[j + 1], pf[kc][0], pf[kc][1], pf[kc][2], pf[kc][3], b[2], b[3]);
            }
        }
        __syncthreads(); /* this stage is refilled next iteration */
    }
    /* out = O / l */
    const float r0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, r1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    uint16_t *out = (uint16_t *)a.out;
#pragma unroll
    for (int j = 0; j < ONB; j++) {
        const int d = j * 8 + 2 * tig;
        if (qi0 < a.tq)
            *(uint32_t *)(out + qi0 * a.ldo + hq * HD + d) = fa_pack(o[j][0] * r0, o[j][1] * r0);
        if (qi1 < a.tq)
            *(uint32_t *)(out + qi1 * a.ldo + hq * HD + d) = fa_pack(o[j][2] * r1, o[j][3] * r1);
    }
}

/* ---- flash prefill on Hopper (sm_90a: wgmma) ----
 * The same tiling idea as above with warpgroup MMAs: a block of FW_NWG warpgroups owns 64 x
 * FW_NWG queries of one query head; each warpgroup computes S = Q K^T for its 64 queries over a
 * 64-key tile with wgmma (Q and K from shared memory), the online softmax on the accumulator
 * registers (each warp holds 16 query rows, the mma.sync fragment layout), then O += P V with P
 * from registers and V from shared memory (transposed operand). Tiles are copied by TMA (one
 * thread issues them; each stage completes on an mbarrier) into the 128-byte-swizzled layout that
 * wgmma reads. With FW_WS (the default) that thread is in a producer warpgroup of its own, which
 * refills a stage once every consumer thread has arrived on the stage's "empty" mbarrier, so the
 * consumer warpgroups never meet at a block barrier (H200, q [8192, 32, 128], GQA 4, causal:
 * 2.11-2.12 ms against 2.20 with the block barrier per tile; 1.15 ms since the block order, the
 * short softmax of unmasked tiles and the lazy rescale, benchmarks/GPU_NOTES.md). Rounding as the
 * kernel above: P rounded to bf16, the row sums of the rounded values. */
#ifndef FW_NWG
#define FW_NWG 2
#endif
#define FW_BK 64
#ifndef FW_WS
/* warp specialization: a producer warpgroup of its own issues the copies and refills a stage once
 * every consumer thread has arrived on its "empty" mbarrier (no block barrier per tile); registers
 * move from it to the consumers with setmaxnreg */
#define FW_WS 1
#endif
#define FW_THREADS (128 * (FW_NWG + FW_WS))
#ifndef FW_LAZY
#define FW_LAZY 1 /* O is rescaled only where a row maximum of the warp changed */
#endif
#ifndef FW_PLAIN
#define FW_PLAIN 1 /* unmasked tiles take the short softmax (see step below); 0: every tile masks */
#endif
#ifndef FW_ST
#define FW_ST 4 /* key/value tiles in the shared-memory ring (at least 4: tiles t - 1 .. t + 1 in use) */
#endif
template <int HD>
struct FwSmem {
    static const size_t q = (size_t)64 * FW_NWG * HD * 2, kv = (size_t)FW_BK * HD * 2;
    /* Q, then (K, V) x FW_ST stages (1 KB aligned), then mbarriers: full per stage, Q, empty per stage */
    static const size_t total = 1024 + q + 2 * FW_ST * kv + 8 * (2 * FW_ST + 1);
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* shared-memory matrix descriptor, 128-byte swizzle */
__device__ __forceinline__ uint64_t fw_desc(uint32_t a, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((a >> 4) & 0x3fff) | ((uint64_t)((lbo >> 4) & 0x3fff) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3fff) << 32) | (1ull << 62);
}
__device__ __forceinline__ void fw_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void fw_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void fw_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }

#define FW_R8(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define FW_R32(d) FW_R8(d, 0), FW_R8(d, 8), FW_R8(d, 16), FW_R8(d, 24)
#define FW_R64(d) FW_R32(d), FW_R8(d, 32), FW_R8(d, 40), FW_R8(d, 48), FW_R8(d, 56)
#define FW_L32 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define FW_L64 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31," \
               "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"

/* d (64 x 64, fp32) += A (64 x 16, smem) * B (64 x 16, smem, K-major)^T */
__device__ __forceinline__ void fw_ss64(float *d, uint64_t da, uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FW_L32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : FW_R32(d)
                 : "l"(da), "l"(db));
}
#define FW_W32(d) "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), \
    "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), \
    "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), \
    "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
/* d = A * B^T (the first k step: d is written, not read) */
__device__ __forceinline__ void fw_ss64_first(float *d, uint64_t da, uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FW_L32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : FW_W32(d)
                 : "l"(da), "l"(db));
}
/* d (64 x N, fp32) += A (64 x 16, registers) * B (16 x N, smem, N contiguous: transposed operand) */
__device__ __forceinline__ void fw_rs64(float *d, const uint32_t *a, uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FW_L32 ", {%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
                 : FW_R32(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
__device__ __forceinline__ void fw_rs128(float *d, const uint32_t *a, uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FW_L64 ", {%64,%65,%66,%67}, %68, 1, 1, 1, 1;\n"
                 : FW_R64(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
#endif

template <int HD>
__global__ void __launch_bounds__(FW_THREADS, 1)
    flash_wgmma_kernel(AttnArgs a, const __grid_constant__ CUtensorMap qmap, const __grid_constant__ CUtensorMap kmap,
                       const __grid_constant__ CUtensorMap vmap) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef FwSmem<HD> L;
    constexpr int BQ = 64 * FW_NWG, NB = FW_BK / 8;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    /* 128-byte swizzle: a tile of R rows is HD / 64 regions of R x 128 bytes (region = 64 columns);
     * 16-byte chunk c of row r sits at region c / 8, byte r * 128 + ((c % 8) ^ (r % 8)) * 16. The
     * hardware applies the XOR on address bits, so regions are 1024-byte aligned. */
    const uint32_t s0 = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023u) & ~1023u;
    const uint32_t Qs = s0, KVs = s0 + (uint32_t)L::q; /* stage s: K at 2s, V at 2s + 1 */
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, gid = lane >> 2,
              tig = lane & 3;
    const FaTile ft = fa_tile(a, BQ, FW_BK);
    const int64_t hq = ft.hq, h = ft.h, i0 = ft.i0;
    const int ntiles = ft.ntiles;
    /* copies by TMA (one thread), each completing on its stage's mbarrier; the tensor maps give
     * rows past the keys (and queries past tq) as zeros */
    const uint32_t bars = KVs + 2u * FW_ST * (uint32_t)L::kv, qbar = bars + 8u * FW_ST;
    const uint32_t ebars = qbar + 8u; /* empty[stage] (FW_WS): every consumer thread arrives once per use */
    if (tid == 0) {
#pragma unroll 1
        for (int st = 0; st <= FW_ST; st++) mbar_init(bars + 8u * st, 1);
#pragma unroll 1
        for (int st = 0; st < FW_ST; st++) mbar_init(ebars + 8u * st, 128 * FW_NWG);
        mbar_init_fence();
    }
    __syncthreads();
    auto load_tile = [&](int t, int stage) { /* thread 0 */
        const uint32_t Ks = KVs + (uint32_t)(2 * stage) * (uint32_t)L::kv, Vs = Ks + (uint32_t)L::kv;
        const uint32_t bar = bars + 8u * stage;
        mbar_expect(bar, 2u * FW_BK * HD * 2);
#pragma unroll
        for (int r = 0; r < HD / 64; r++) {
            tma_load_3d(Ks + r * FW_BK * 128, &kmap, r * 64, t * FW_BK, (int)h, bar);
            tma_load_3d(Vs + r * FW_BK * 128, &vmap, r * 64, t * FW_BK, (int)h, bar);
        }
    };
    const int nt2 = (ntiles + 1) & ~1;
#if FW_WS
    if (wg == FW_NWG) { /* the producer warpgroup: Q, then every tile once its stage is empty */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (tid == 128 * FW_NWG) {
            mbar_expect(qbar, (uint32_t)BQ * HD * 2);
#pragma unroll
            for (int r = 0; r < HD / 64; r++)
                tma_load_2d(Qs + r * BQ * 128, &qmap, (int)(hq * HD) + r * 64, (int)i0, qbar);
#pragma unroll 1
            for (int t = 0; t < nt2; t++) {
                if (t >= FW_ST) mbar_wait(ebars + 8u * (t % FW_ST), ((t / FW_ST) - 1) & 1);
                load_tile(t, t % FW_ST);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
#else
    if (tid == 0) {
        mbar_expect(qbar, (uint32_t)BQ * HD * 2);
#pragma unroll
        for (int r = 0; r < HD / 64; r++) tma_load_2d(Qs + r * BQ * 128, &qmap, (int)(hq * HD) + r * 64, (int)i0, qbar);
#pragma unroll 1
        for (int p = 0; p < FW_ST - 2 && p < nt2; p++) load_tile(p, p);
    }
#endif

    float o[HD / 2];
#pragma unroll
    for (int j = 0; j < HD / 2; j++) o[j] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* rows gid and gid + 8 of the warp */
    const int64_t qi0 = i0 + 64 * wg + 16 * warp + gid, qi1 = qi0 + 8;
    const float sl2 = a.scale * 1.4426950408889634f;
    const uint32_t Qw = Qs + (uint32_t)wg * 64 * 128; /* this warpgroup's 64 rows (in each region) */

    /* S = Q K^T of tile t into sacc (issued, not waited for) */
    auto issue_s = [&](float *sacc, int t) {
        const uint32_t Ks = KVs + (uint32_t)(2 * (t % FW_ST)) * (uint32_t)L::kv;
        /* descriptors first: no register of a wgmma in flight is defined after the first */
        uint64_t da[HD / 16], db[HD / 16];
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            da[ks] = fw_desc(Qw + (ks >> 2) * BQ * 128 + (ks & 3) * 32, 16, 1024);
            db[ks] = fw_desc(Ks + (ks >> 2) * FW_BK * 128 + (ks & 3) * 32, 16, 1024);
        }
        fw_fence();
        fw_ss64_first(sacc, da[0], db[0]);
#pragma unroll
        for (int ks = 1; ks < HD / 16; ks++) fw_ss64(sacc, da[ks], db[ks]);
        fw_commit();
    };
    /* tile t: without FW_WS, after a block barrier the copies of tile t + FW_ST - 2 are issued
     * into the stage of tile t - 2 (its P V finished before the barrier). Once tile t + 1 has
     * landed its S is issued; the softmax of tile t runs while it and the P V of tile t - 1 are on
     * the tensor cores, and the P V of tile t runs into the next step. The tiles are counted up to an even
     * number (nt2) and the steps have no branches around a wgmma, so that ptxas keeps them
     * asynchronous: a tile past the keys is fully masked and adds nothing, and the S issued after
     * the last tile (over a stage no copy is writing) is never read. */
    auto step = [&](int t, float *sc, float *sn, uint32_t (*pf)[4]) {
#if !FW_WS
        __syncthreads(); /* every P V of tile t - 2 has finished: its stage is free */
        const int nt = t + FW_ST - 2;
        if (tid == 0 && nt < nt2) load_tile(nt, nt % FW_ST);
#endif
        if (t + 1 < nt2) mbar_wait(bars + 8u * ((t + 1) % FW_ST), ((t + 1) / FW_ST) & 1);
        issue_s(sn, t + 1);
        /* scale, mask, row max (sc[4 nb + e]: row gid (e < 2) or gid + 8, key 8 nb + 2 tig + (e & 1)) */
        const int64_t k0 = (int64_t)t * FW_BK;
        const bool need_mask = k0 + FW_BK > a.kv_len || (a.causal && k0 + FW_BK - 1 > a.q_pos + i0 + 64 * wg + 16 * warp);
        const int64_t lim0 = a.causal ? min(a.kv_len, a.q_pos + qi0 + 1) : a.kv_len;
        const int64_t lim1 = a.causal ? min(a.kv_len, a.q_pos + qi1 + 1) : a.kv_len;
        /* the keys of this lane's entries that rows gid / gid + 8 see, counted from its first
         * entry's key (entry i: 8 (i >> 2) + (i & 1) on); int: keys stay below 2^31 here */
        const int64_t jb = k0 + 2 * tig;
        const int see0 = (int)max((int64_t)-1, min(lim0 - jb, (int64_t)FW_BK));
        const int see1 = (int)max((int64_t)-1, min(lim1 - jb, (int64_t)FW_BK));
        /* the scaled, masked score of accumulator entry i, computed where it is used (sc is only
         * read: registers that a wgmma wrote are not redefined while others are in flight; a copy
         * of the tile's scores would not fit the 168 registers) */
        auto score = [&](int i) {
            const int j = 8 * (i >> 2) + (i & 1);
            return need_mask && j >= ((i & 2) ? see1 : see0) ? -INFINITY : sc[i] * sl2;
        };
        /* tiles off the diagonal and inside the keys (all but one or two per block): no masks,
         * the row maxima of the raw scores scaled once (the same value: rounding a product by a
         * positive constant keeps the order), each exponent one FFMA */
        const bool plain = FW_PLAIN && !need_mask && sl2 > 0.0f;
        float mx0 = m0, mx1 = m1;
        if (plain) {
            float r0 = sc[0], r1 = sc[2];
#pragma unroll
            for (int nb = 0; nb < NB; nb++) {
                r0 = fmaxf(r0, fmaxf(sc[4 * nb], sc[4 * nb + 1]));
                r1 = fmaxf(r1, fmaxf(sc[4 * nb + 2], sc[4 * nb + 3]));
            }
            mx0 = fmaxf(mx0, r0 * sl2);
            mx1 = fmaxf(mx1, r1 * sl2);
        } else {
#pragma unroll
            for (int nb = 0; nb < NB; nb++) {
                mx0 = fmaxf(mx0, fmaxf(score(4 * nb), score(4 * nb + 1)));
                mx1 = fmaxf(mx1, fmaxf(score(4 * nb + 2), score(4 * nb + 3)));
            }
        }
        mx0 = fa_quad_max(mx0);
        mx1 = fa_quad_max(mx1);
        const float b0 = mx0 == -INFINITY ? 0.0f : mx0, b1 = mx1 == -INFINITY ? 0.0f : mx1;
        const float al0 = exp2f(m0 - b0), al1 = exp2f(m1 - b1);
        m0 = mx0;
        m1 = mx1;
        float sum0 = 0.0f, sum1 = 0.0f;
        if (plain) {
#pragma unroll
            for (int nb = 0; nb < NB; nb++)
                fa_p8e(fmaf(sc[4 * nb], sl2, -b0), fmaf(sc[4 * nb + 1], sl2, -b0), fmaf(sc[4 * nb + 2], sl2, -b1),
                       fmaf(sc[4 * nb + 3], sl2, -b1), sum0, sum1, pf[nb >> 1][(nb & 1) * 2],
                       pf[nb >> 1][(nb & 1) * 2 + 1]);
        } else {
#pragma unroll
            for (int nb = 0; nb < NB; nb++)
                fa_p8(score(4 * nb), score(4 * nb + 1), score(4 * nb + 2), score(4 * nb + 3), b0, b1, sum0, sum1,
                      pf[nb >> 1][(nb & 1) * 2], pf[nb >> 1][(nb & 1) * 2 + 1]);
        }
        sum0 = fa_quad_sum(sum0);
        sum1 = fa_quad_sum(sum1);
        l0 = l0 * al0 + sum0;
        l1 = l1 * al1 + sum1;
        fw_wait0(); /* S of tile t + 1 and P V of tile t - 1 ran during the softmax (waiting for the
                     * P V alone, wait_group 1, made ptxas serialize every wgmma) */
#if FW_WS
        if (t >= 1) mbar_arrive(ebars + 8u * ((t - 1) % FW_ST)); /* this thread is done with tile t - 1 */
#endif
        /* a factor of exactly 1 (no row maximum of the warp moved) changes nothing */
        if (!FW_LAZY || __any_sync(0xffffffffu, al0 != 1.0f || al1 != 1.0f)) {
#pragma unroll
            for (int j = 0; j < HD / 8; j++) {
                o[4 * j] *= al0;
                o[4 * j + 1] *= al0;
                o[4 * j + 2] *= al1;
                o[4 * j + 3] *= al1;
            }
        }
        /* O += P V: 16 keys (2 KB of each region) per step; regions FW_BK * 128 bytes apart */
        const uint32_t Vs = KVs + (uint32_t)(2 * (t % FW_ST) + 1) * (uint32_t)L::kv;
        uint64_t dv[FW_BK / 16];
#pragma unroll
        for (int kk = 0; kk < FW_BK / 16; kk++) dv[kk] = fw_desc(Vs + kk * 16 * 128, FW_BK * 128, 1024);
        fw_fence();
#pragma unroll
        for (int kk = 0; kk < FW_BK / 16; kk++) {
            if (HD == 128) fw_rs128(o, pf[kk], dv[kk]);
            else fw_rs64(o, pf[kk], dv[kk]);
        }
        fw_commit();
    };

    float sa[32], sb[32]; /* S of even / odd tiles */
    uint32_t pa[FW_BK / 16][4], pb[FW_BK / 16][4]; /* P of even / odd tiles: the A operand of a P V
                                                    * in flight is not overwritten */
    mbar_wait(qbar, 0); /* also with no keys: no copy may land after the block has exited */
    if (ntiles > 0) {
        mbar_wait(bars, 0);
        issue_s(sa, 0);
        fw_wait0();
    }
#pragma unroll 1
    for (int t = 0; t < nt2; t += 2) {
        step(t, sa, sb, pa);
        step(t + 1, sb, sa, pb);
    }
    fw_wait0();
    const float r0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, r1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    uint16_t *out = (uint16_t *)a.out;
#pragma unroll
    for (int j = 0; j < HD / 8; j++) {
        const int d = j * 8 + 2 * tig;
        if (qi0 < a.tq) *(uint32_t *)(out + qi0 * a.ldo + hq * HD + d) = fa_pack(o[4 * j] * r0, o[4 * j + 1] * r0);
        if (qi1 < a.tq) *(uint32_t *)(out + qi1 * a.ldo + hq * HD + d) = fa_pack(o[4 * j + 2] * r1, o[4 * j + 3] * r1);
    }
#else
    (void)a;
#endif
}

/* whether this build has the wgmma kernel (a CUDA architecture list with 90a) and the device runs
 * it (compute capability 9.0); INFERENCE_PIO_CUDA_FLASH_WGMMA=0 keeps the mma.sync kernel */
static bool use_wgmma_flash(void) {
#if defined(TOC_HAVE_SM90A)
    const char *e = getenv("INFERENCE_PIO_CUDA_FLASH_WGMMA"); /* read per call: tests switch it */
    return !(e && e[0] == '0') && toc_cc_major() == 9 && toc_tensor_maps_available();
#else
    return false;
#endif
}

/* launches the wgmma kernel, or leaves *done false where its tensor maps cannot describe the
 * operands (the mma.sync kernel runs then) */
template <int HD>
static int launch_flash_wgmma(AttnArgs &a, bool *done) {
    size_t smem = FwSmem<HD>::total;
    CUtensorMap qm, km, vm;
    *done = false;
    if (a.tq >= (1ll << 31) - 256 || a.kv_len >= (1ll << 31) - 256) return TO_OK; /* int coordinates */
    {
        const cuuint64_t qd[2] = {(cuuint64_t)a.ldq, (cuuint64_t)a.tq}, qs[1] = {(cuuint64_t)a.ldq * 2};
        const cuuint64_t kd[3] = {(cuuint64_t)HD, (cuuint64_t)(a.kv_len > 0 ? a.kv_len : 1), (cuuint64_t)a.nkv},
                         ks[2] = {(cuuint64_t)a.kps * 2, (cuuint64_t)a.khs * 2};
        const cuuint64_t vs[2] = {(cuuint64_t)a.vps * 2, (cuuint64_t)a.vhs * 2};
        if (!(toc_tensor_map_bf16(&qm, a.q, 2, qd, qs, 64 * FW_NWG) &&
              toc_tensor_map_bf16(&km, a.k, 3, kd, ks, FW_BK) && toc_tensor_map_bf16(&vm, a.v, 3, kd, vs, FW_BK)))
            return TO_OK;
    }
    *done = true;
    TOC_CHECK((int64_t)smem <= toc_max_smem_optin(), TO_ERR_UNSUPPORTED, "flash attention smem");
    static int configured[16];
    int dev = 0;
    cudaGetDevice(&dev);
    if (!configured[dev & 15]) {
        TOC_CUDA(cudaFuncSetAttribute(flash_wgmma_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 "cudaFuncSetAttribute");
        configured[dev & 15] = 1;
    }
    TOC_CHECK(toc_cdiv(a.tq, 64 * FW_NWG) <= 65535, TO_ERR_UNSUPPORTED,
              "flash attention: %lld queries in one call (at most %d)", (long long)a.tq, 65535 * 64 * FW_NWG);
    dim3 grid((unsigned)a.nh, (unsigned)toc_cdiv(a.tq, 64 * FW_NWG));
    flash_wgmma_kernel<HD><<<grid, FW_THREADS, smem, toc_stream()>>>(a, qm, km, vm);
    TOC_LAUNCHED("flash_wgmma_kernel");
    return TO_OK;
}

template <int HD>
static int launch_flash(AttnArgs &a) {
    size_t smem = Fa2Smem<HD>::total;
    TOC_CHECK((int64_t)smem <= toc_max_smem_optin(), TO_ERR_UNSUPPORTED, "flash attention smem");
    static int configured[16];
    int dev = 0;
    cudaGetDevice(&dev);
    if (!configured[dev & 15]) {
        TOC_CUDA(cudaFuncSetAttribute(flash_prefill_kernel<HD>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 "cudaFuncSetAttribute");
        configured[dev & 15] = 1;
    }
    TOC_CHECK(toc_cdiv(a.tq, FA_BQ) <= 65535, TO_ERR_UNSUPPORTED,
              "flash attention: %lld queries in one call (at most %d)", (long long)a.tq, 65535 * FA_BQ);
    dim3 grid((unsigned)a.nh, (unsigned)toc_cdiv(a.tq, FA_BQ));
    flash_prefill_kernel<HD><<<grid, FA_THREADS, smem, toc_stream()>>>(a);
    TOC_LAUNCHED("flash_prefill_kernel");
    return TO_OK;
}

/* attention workspace for split-K (grown outside graph capture) */
static TocBuffer g_ws;
/* one caller at a time: the split partials / tables written into g_ws by one launch must not be
 * overwritten by another host thread's launches before the merge reads them (as in sampling.cu) */
static std::mutex g_ws_lock;
static int workspace(size_t floats, float **out) {
    return toc_buffer_reserve(&g_ws, floats * 4, (void **)out, "attention workspace");
}

/* query heads a block of the split kernels takes (all of a kv head's in the wide-head kernel) */
static int64_t heads_per_block(const AttnArgs &a) {
    if (wide_mma_ok(a) || wide_ok(a)) return a.nh / a.nkv;
    return a.hd > 32 * AT_DMAX || a.hdv > 32 * AT_DMAX ? AT_GMAX_WIDE : AT_GMAX;
}

static int choose_splits(int64_t tq, int64_t nkv, int64_t G, int64_t span, int64_t gm = AT_GMAX) {
    int64_t blocks = tq * nkv * ((G + gm - 1) / gm);
    int64_t want = toc_cdiv(2 * toc_sm_count(), blocks);
    int64_t by_len = toc_cdiv(span, 64);
    int64_t s = min(want, by_len);
    if (s < 1) s = 1;
    if (s > 64) s = 64;
    return (int)s;
}

TOC_EXPORT int toc_attention(const void *q, const void *k, const void *v, void *out, int64_t tq,
                             int64_t nh, int64_t nkv, int64_t hd_qk, int64_t hd_v, int64_t ldq,
                             int64_t ldo, int64_t kv_len, int64_t k_head_stride,
                             int64_t k_pos_stride, int64_t v_head_stride, int64_t v_pos_stride,
                             int64_t q_pos, int causal, const int32_t *cu_seqlens, int64_t n_seqs,
                             float scale, int q_dtype, int kv_dtype) {
    TOC_CHECK(tq >= 0 && nh >= 1 && nkv >= 1 && nh % nkv == 0, TO_ERR_INVALID_ARGUMENT,
              "toc_attention: nh %lld must be a positive multiple of nkv %lld", (long long)nh,
              (long long)nkv);
    TOC_CHECK(hd_qk >= 1 && hd_qk <= 32 * AT_DMAX_WIDE && hd_v >= 1 && hd_v <= 32 * AT_DMAX_WIDE,
              TO_ERR_UNSUPPORTED, "toc_attention: head dims %lld/%lld (<= %d supported)",
              (long long)hd_qk, (long long)hd_v, 32 * AT_DMAX_WIDE);
    TOC_CHECK(ldq >= nh * hd_qk && ldo >= nh * hd_v && kv_len >= 0 && q_pos >= 0,
              TO_ERR_INVALID_ARGUMENT, "toc_attention: bad strides or lengths");
    TOC_CHECK(toc_is_act(q_dtype) && toc_is_act(kv_dtype), TO_ERR_DTYPE, "toc_attention: dtypes");
    TOC_CHECK(cu_seqlens || !causal || q_pos + tq <= kv_len, TO_ERR_SHAPE,
              "toc_attention: causal queries at %lld..%lld need kv_len >= %lld (got %lld)",
              (long long)q_pos, (long long)(q_pos + tq - 1), (long long)(q_pos + tq),
              (long long)kv_len);
    TOC_CHECK(!cu_seqlens || (n_seqs >= 1 && tq == kv_len), TO_ERR_INVALID_ARGUMENT,
              "toc_attention: segments need n_seqs >= 1 and tq == kv_len");
    if (tq == 0) return TO_OK;
    TOC_CHECK(q && k && v && out, TO_ERR_INVALID_ARGUMENT, "toc_attention: NULL pointer");
    TOC_READY();
    AttnArgs a = {q, k, v, out, tq, nh, nkv, hd_qk, hd_v, ldq, ldo, kv_len, k_head_stride,
                  k_pos_stride, v_head_stride, v_pos_stride, q_pos, causal, cu_seqlens, n_seqs,
                  scale, q_dtype, kv_dtype, nullptr, 1, nullptr, nullptr};
    bool flash = tq >= 32 && !cu_seqlens && q_dtype == TO_BF16 && kv_dtype == TO_BF16 &&
                 hd_qk == hd_v && (hd_qk == 64 || hd_qk == 128) && ldq % 8 == 0 && ldo % 8 == 0 &&
                 k_head_stride % 8 == 0 && k_pos_stride % 8 == 0 && v_head_stride % 8 == 0 &&
                 v_pos_stride % 8 == 0 && ((uintptr_t)q & 15) == 0 && ((uintptr_t)k & 15) == 0 &&
                 ((uintptr_t)v & 15) == 0;
    if (flash && use_wgmma_flash()) {
        bool done = false;
        const int rc = hd_qk == 128 ? launch_flash_wgmma<128>(a, &done) : launch_flash_wgmma<64>(a, &done);
        if (rc || done) return rc;
    }
    if (flash) return hd_qk == 128 ? launch_flash<128>(a) : launch_flash<64>(a);
    if (tq > 65535) { /* the split kernels put the query in gridDim.z (at most 65535) */
        TOC_CHECK(!cu_seqlens, TO_ERR_UNSUPPORTED,
                  "toc_attention: %lld packed queries in one call (at most 65535 on this path)", (long long)tq);
        const int64_t qes = q_dtype == TO_F32 ? 4 : 2;
        for (int64_t i0 = 0; i0 < tq; i0 += 65535) {
            const int64_t nq = tq - i0 < 65535 ? tq - i0 : 65535;
            const int rc = toc_attention((const char *)q + i0 * ldq * qes, k, v, (char *)out + i0 * ldo * qes, nq, nh,
                                         nkv, hd_qk, hd_v, ldq, ldo, kv_len, k_head_stride, k_pos_stride,
                                         v_head_stride, v_pos_stride, q_pos + i0, causal, nullptr, 0, scale, q_dtype,
                                         kv_dtype);
            if (rc) return rc;
        }
        return TO_OK;
    }
    a.nsplit = choose_splits(tq, nkv, nh / nkv, cu_seqlens ? tq : kv_len, heads_per_block(a));
    std::unique_lock<std::mutex> guard(g_ws_lock, std::defer_lock);
    if (a.nsplit > 1) {
        guard.lock();
        float *ws;
        size_t slots = (size_t)tq * nh * a.nsplit;
        int rc = workspace(slots * (hd_v + 2), &ws);
        if (rc) return rc;
        a.ws_o = ws;
        a.ws_ml = ws + slots * hd_v;
    }
    return launch_split(a);
}

/* Graph decode attention: one new query token at position *pos (device int32), kv_len = *pos + 1,
 * over [nkv, capacity, hd] caches; nsplit fixed at capture time; workspace of at least
 * nh * nsplit * (hd + 2) floats. */
TOC_EXPORT int toc_attention_decode(const void *q, const void *k_cache, const void *v_cache,
                                    void *out, int64_t nh, int64_t nkv, int64_t hd,
                                    int64_t capacity, const int32_t *pos, float scale, int q_dtype,
                                    int kv_dtype, int nsplit, float *workspace_buf) {
    TOC_CHECK(nh >= 1 && nkv >= 1 && nh % nkv == 0 && hd >= 1 && hd <= 32 * AT_DMAX &&
                  capacity >= 1 && nsplit >= 1 && nsplit <= 1024,
              TO_ERR_INVALID_ARGUMENT, "toc_attention_decode: bad sizes");
    TOC_CHECK(toc_is_act(q_dtype) && toc_is_act(kv_dtype), TO_ERR_DTYPE, "toc_attention_decode: dtypes");
    TOC_CHECK(q && k_cache && v_cache && out && pos && (nsplit == 1 || workspace_buf),
              TO_ERR_INVALID_ARGUMENT, "toc_attention_decode: NULL pointer");
    TOC_READY();
    AttnArgs a = {q, k_cache, v_cache, out, 1, nh, nkv, hd, hd, nh * hd, nh * hd, capacity,
                  capacity * hd, hd, capacity * hd, hd, 0, 1, nullptr, 0, scale, q_dtype, kv_dtype,
                  pos, nsplit, workspace_buf, workspace_buf ? workspace_buf + (size_t)nh * nsplit * hd : nullptr};
    return launch_split(a);
}

/* toc_attention for a captured graph: causal, the tq queries at positions *pos .. *pos + tq - 1
 * (device int32, read when the kernels run) over keys [0, *pos + tq) of caches holding max_len
 * positions. The key slices per query head are chosen from max_len, at most what `workspace`
 * (workspace_floats floats) holds: tq * nh * (hd_v + 2) floats a slice. */
TOC_EXPORT int toc_attention_dev(const void *q, const void *k, const void *v, void *out, int64_t tq, int64_t nh,
                                 int64_t nkv, int64_t hd_qk, int64_t hd_v, int64_t ldq, int64_t ldo,
                                 int64_t max_len, int64_t k_head_stride, int64_t k_pos_stride,
                                 int64_t v_head_stride, int64_t v_pos_stride, const int32_t *pos, float scale,
                                 int q_dtype, int kv_dtype, float *workspace_buf, int64_t workspace_floats) {
    TOC_CHECK(tq >= 1 && nh >= 1 && nkv >= 1 && nh % nkv == 0 && max_len >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_attention_dev: bad sizes (tq %lld, heads %lld/%lld, max_len %lld)", (long long)tq,
              (long long)nh, (long long)nkv, (long long)max_len);
    TOC_CHECK(hd_qk >= 1 && hd_qk <= 32 * AT_DMAX_WIDE && hd_v >= 1 && hd_v <= 32 * AT_DMAX_WIDE,
              TO_ERR_UNSUPPORTED, "toc_attention_dev: head dims %lld/%lld (<= %d supported)",
              (long long)hd_qk, (long long)hd_v, 32 * AT_DMAX_WIDE);
    TOC_CHECK(ldq >= nh * hd_qk && ldo >= nh * hd_v && workspace_floats >= 0, TO_ERR_INVALID_ARGUMENT,
              "toc_attention_dev: bad strides");
    TOC_CHECK(toc_is_act(q_dtype) && toc_is_act(kv_dtype), TO_ERR_DTYPE, "toc_attention_dev: dtypes");
    TOC_CHECK(q && k && v && out && pos, TO_ERR_INVALID_ARGUMENT, "toc_attention_dev: NULL pointer");
    TOC_READY();
    AttnArgs a = {q, k, v, out, tq, nh, nkv, hd_qk, hd_v, ldq, ldo, max_len, k_head_stride,
                  k_pos_stride, v_head_stride, v_pos_stride, 0, 1, nullptr, 0, scale, q_dtype, kv_dtype,
                  pos, 1, nullptr, nullptr};
    int nsplit = choose_splits(tq, nkv, nh / nkv, max_len, heads_per_block(a));
    const int64_t per = tq * nh * (hd_v + 2);
    if (!workspace_buf || nsplit > workspace_floats / per) nsplit = workspace_buf ? (int)(workspace_floats / per) : 1;
    if (nsplit > AT_MERGE_MAX) nsplit = AT_MERGE_MAX;
    if (nsplit < 1) nsplit = 1;
    a.nsplit = nsplit;
    if (nsplit > 1) {
        a.ws_o = workspace_buf;
        a.ws_ml = workspace_buf + (size_t)tq * nh * nsplit * hd_v;
    }
    return launch_split(a);
}

/* ---- batched decode: one new token for each of n sequences, each with its own cache ---- */
__global__ void kv_append_batch_kernel(const void *k_new, const void *v_new, AttnArgs a, int src_dtype) {
    pdl_enter(); /* launched by toc_launch */
    const int64_t row = a.nkv * a.hd, total = a.tq * row;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t s = e / row, rem = e - s * row, h = rem / a.hd, d = rem - h * a.hd;
        const int64_t len = batch_len(a, s);
        if (len < 0) continue;
        const int64_t dst = (h * a.caps[s] + len) * a.hd + d;
        stf((void *)a.kp[s], a.kd, dst, ldf(k_new, src_dtype, e));
        stf((void *)a.vp[s], a.kd, dst, ldf(v_new, src_dtype, e));
    }
}

/* both batched decode entries: every row's new key/value appended to its cache, then attention
 * (one launch fewer where the new rows already have the cache dtype: the attention appends them) */
static int launch_batch_decode(AttnArgs &a, const void *k_new, const void *v_new, int act_dtype) {
    if (act_dtype == a.kd && (((uintptr_t)k_new | (uintptr_t)v_new) & 15) == 0) {
        a.kn = k_new, a.vn = v_new;
        return launch_split(a);
    }
    TOC_CUDA((toc_launch(kv_append_batch_kernel, dim3(toc_grid(a.tq * a.nkv * a.hd, 256,
        4 * (int64_t)toc_sm_count())), dim3(256), 0, k_new, v_new, a, act_dtype)), "kv_append_batch_kernel");
    return launch_split(a);
}

TOC_EXPORT int toc_attention_decode_batch(const void *q, const void *k_new, const void *v_new, void *out, int64_t n,
                                          int64_t nh, int64_t nkv, int64_t hd, void *const *k_caches,
                                          void *const *v_caches, const int64_t *capacities, const int64_t *lengths,
                                          float scale, int act_dtype, int cache_dtype) {
    TOC_CHECK(n >= 1 && nh >= 1 && nkv >= 1 && nh % nkv == 0 && hd >= 1 && hd <= 32 * AT_DMAX,
              TO_ERR_INVALID_ARGUMENT, "toc_attention_decode_batch: bad sizes (n %lld, heads %lld/%lld, hd %lld)",
              (long long)n, (long long)nh, (long long)nkv, (long long)hd);
    TOC_CHECK(toc_is_act(act_dtype) && toc_is_act(cache_dtype), TO_ERR_DTYPE, "toc_attention_decode_batch: dtypes");
    TOC_CHECK(q && k_new && v_new && out && k_caches && v_caches && capacities && lengths, TO_ERR_INVALID_ARGUMENT,
              "toc_attention_decode_batch: NULL pointer");
    int64_t max_keys = 1;
    bool aligned = true;
    for (int64_t s = 0; s < n; s++) {
        TOC_CHECK(k_caches[s] && v_caches[s], TO_ERR_INVALID_ARGUMENT, "toc_attention_decode_batch: NULL cache %lld",
                  (long long)s);
        TOC_CHECK(lengths[s] >= 0 && lengths[s] < capacities[s], TO_ERR_SHAPE,
                  "toc_attention_decode_batch: sequence %lld has %lld of %lld cache slots filled: no room for one more",
                  (long long)s, (long long)lengths[s], (long long)capacities[s]);
        if (lengths[s] + 1 > max_keys) max_keys = lengths[s] + 1;
        aligned = aligned && ((uintptr_t)k_caches[s] & 15) == 0 && ((uintptr_t)v_caches[s] & 15) == 0 &&
                  (capacities[s] * hd) % 8 == 0;
    }
    TOC_READY();
    const int64_t G = nh / nkv;
    const int nsplit = choose_splits(n, nkv, G, max_keys);
    /* split partials, then the tables (8-byte aligned) */
    const size_t part = nsplit > 1 ? (size_t)n * nh * nsplit * (hd + 2) : 0;
    const size_t table_floats = (size_t)n * 8; /* 4 x 8 bytes per sequence */
    std::lock_guard<std::mutex> guard(g_ws_lock);
    float *ws = nullptr;
    int rc = workspace(((part + 1) & ~(size_t)1) + table_floats, &ws);
    if (rc) return rc;
    unsigned long long *table = (unsigned long long *)(ws + ((part + 1) & ~(size_t)1));
    /* one upload: k pointers | v pointers | capacities | lengths */
    unsigned long long host[4 * 64];
    unsigned long long *staging = n <= 64 ? host : (unsigned long long *)malloc((size_t)n * 32);
    TOC_CHECK(staging, TO_ERR_OUT_OF_MEMORY, "toc_attention_decode_batch: out of memory");
    for (int64_t s = 0; s < n; s++) {
        staging[s] = (unsigned long long)(uintptr_t)k_caches[s];
        staging[n + s] = (unsigned long long)(uintptr_t)v_caches[s];
        staging[2 * n + s] = (unsigned long long)capacities[s];
        staging[3 * n + s] = (unsigned long long)lengths[s];
    }
    cudaError_t e = cudaMemcpyAsync(table, staging, (size_t)n * 32, cudaMemcpyHostToDevice, toc_stream());
    if (staging != host) free(staging);
    TOC_CUDA(e, "cudaMemcpyAsync (attention tables)");
    AttnArgs a = {q, k_caches[0], v_caches[0], out, n, nh, nkv, hd, hd,
                  nh * hd, nh * hd, 0, 0, hd, 0, hd, 0, 0, nullptr, 0, scale, act_dtype, cache_dtype, nullptr,
                  nsplit, nsplit > 1 ? ws : nullptr, nsplit > 1 ? ws + (size_t)n * nh * nsplit * hd : nullptr,
                  table, table + n, (const int64_t *)(table + 2 * n), (const int64_t *)(table + 3 * n),
                  aligned ? 0 : 1};
    return launch_batch_decode(a, k_new, v_new, act_dtype);
}

/* The same for a captured graph (the BatchManager's decode steps on the GPU): every per-sequence
 * value lives in device memory, so the graph replays with new lengths. k_ptrs / v_ptrs /
 * capacities: n cache base pointers and capacities (fixed while the graph lives); lengths: n int32
 * cached-token counts, written before each replay (a row whose length leaves no room is skipped and
 * gets zeros). nsplit key slices per row (fixed at capture; slices past a row's keys are empty)
 * and a workspace of n * nh * nsplit * (hd + 2) floats when nsplit > 1. flags bit 0: every cache is
 * 16-byte aligned with capacity * hd a multiple of 8 (vector loads). */
TOC_EXPORT int toc_attention_decode_batch_dev(const void *q, const void *k_new, const void *v_new, void *out,
                                              int64_t n, int64_t nh, int64_t nkv, int64_t hd,
                                              const uint64_t *k_ptrs, const uint64_t *v_ptrs,
                                              const int64_t *capacities, const int32_t *lengths, float scale,
                                              int act_dtype, int cache_dtype, int nsplit, float *workspace_buf,
                                              int flags) {
    TOC_CHECK(n >= 1 && nh >= 1 && nkv >= 1 && nh % nkv == 0 && hd >= 1 && hd <= 32 * AT_DMAX && nsplit >= 1 &&
                  nsplit <= 1024,
              TO_ERR_INVALID_ARGUMENT,
              "toc_attention_decode_batch_dev: bad sizes (n %lld, heads %lld/%lld, hd %lld, nsplit %d)", (long long)n,
              (long long)nh, (long long)nkv, (long long)hd, nsplit);
    TOC_CHECK(toc_is_act(act_dtype) && toc_is_act(cache_dtype), TO_ERR_DTYPE, "toc_attention_decode_batch_dev: dtypes");
    TOC_CHECK(q && k_new && v_new && out && k_ptrs && v_ptrs && capacities && lengths &&
                  (nsplit == 1 || workspace_buf),
              TO_ERR_INVALID_ARGUMENT, "toc_attention_decode_batch_dev: NULL pointer");
    TOC_READY();
    AttnArgs a = {q, nullptr, nullptr, out, n, nh, nkv, hd, hd,
                  nh * hd, nh * hd, 0, 0, hd, 0, hd, 0, 0, nullptr, 0, scale, act_dtype, cache_dtype, nullptr,
                  nsplit, nsplit > 1 ? workspace_buf : nullptr,
                  nsplit > 1 ? workspace_buf + (size_t)n * nh * nsplit * hd : nullptr,
                  (const unsigned long long *)k_ptrs, (const unsigned long long *)v_ptrs, capacities, nullptr,
                  (flags & 1) ? 0 : 1, lengths};
    return launch_batch_decode(a, k_new, v_new, act_dtype);
}

/* ---- kv cache append ---- */
/* pos_dev (graph capture): the first slot is read from the device, rows past max_len skipped */
__global__ void kv_append_kernel(const void *src, void *cache, int64_t t, int64_t nkv, int64_t hd,
                                 int64_t max_len, int64_t pos, const int32_t *pos_dev, int sd, int cd) {
    if (pos_dev) pos = *pos_dev;
    int64_t n = t * nkv * hd;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / (nkv * hd), rem = e - i * nkv * hd, h = rem / hd, d = rem - h * hd;
        if (pos < 0 || pos + i >= max_len) continue;
        stf(cache, cd, (h * max_len + pos + i) * hd + d, ldf(src, sd, e));
    }
}
/* The same for rows of whole 16-byte chunks in one dtype (bf16 heads of 8k values): a block per
 * token row, a thread per chunk, no 64-bit division per element (the kernel above spent 28 us on a
 * 4 MB copy, Qwen3-4B's keys of 2048 tokens). */
__global__ void kv_append16_kernel(const uint4 *src, uint4 *cache, int64_t t, int nkv, int cpr, int64_t max_len,
                                   int64_t pos, const int32_t *pos_dev) {
    pdl_enter(); /* launched by toc_launch */
    if (pos_dev) pos = *pos_dev;
    const int rc = nkv * cpr;
    for (int64_t i = blockIdx.x; i < t; i += gridDim.x)
        for (int c = threadIdx.x; c < rc; c += blockDim.x) {
            if (pos < 0 || pos + i >= max_len) break;
            const int h = c / cpr, d = c - h * cpr;
            cache[((int64_t)h * max_len + pos + i) * cpr + d] = src[i * rc + c];
        }
}
static void kv_append_launch(const void *src, void *cache, int64_t t, int64_t nkv, int64_t hd, int64_t max_len,
                             int64_t pos, const int32_t *pos_dev, int sd, int cd) {
    const int64_t esz = sd == TO_F32 ? 4 : 2, cpr = hd * esz / 16;
    if (sd == cd && (hd * esz) % 16 == 0 && ((uintptr_t)src & 15) == 0 && ((uintptr_t)cache & 15) == 0 &&
        nkv * cpr <= (1 << 20)) {
        const int rc = (int)(nkv * cpr), threads = rc >= 256 ? 256 : (rc + 31) / 32 * 32;
        /* an error is the stream's last error, which the callers check (TOC_LAUNCHED) */
        (void)toc_launch(kv_append16_kernel, dim3((unsigned)(t < 65536 ? t : 65536)), dim3(threads), 0,
                         (const uint4 *)src, (uint4 *)cache, t, nkv, cpr, max_len, pos, pos_dev);
    } else {
        kv_append_kernel<<<toc_grid(t * nkv * hd, 256), 256, 0, toc_stream()>>>(src, cache, t, nkv, hd, max_len, pos,
                                                                               pos_dev, sd, cd);
    }
}
TOC_EXPORT int toc_kv_cache_append(const void *k_new, const void *v_new, void *k_cache,
                                   void *v_cache, int64_t t, int64_t nkv, int64_t hd_k,
                                   int64_t hd_v, int64_t max_len, int64_t pos, int src_dtype,
                                   int cache_dtype) {
    TOC_CHECK(t >= 0 && nkv >= 1 && hd_k >= 1 && max_len >= 0 && pos >= 0, TO_ERR_INVALID_ARGUMENT,
              "toc_kv_cache_append: bad sizes");
    TOC_CHECK(pos + t <= max_len, TO_ERR_SHAPE, "toc_kv_cache_append: writing %lld tokens at %lld "
              "overflows the cache of %lld positions", (long long)t, (long long)pos, (long long)max_len);
    TOC_CHECK((v_new == NULL) == (v_cache == NULL), TO_ERR_INVALID_ARGUMENT,
              "toc_kv_cache_append: v_new and v_cache must both be given or both be NULL");
    TOC_CHECK(toc_is_act(src_dtype) && toc_is_act(cache_dtype), TO_ERR_DTYPE,
              "toc_kv_cache_append: dtypes");
    if (t == 0) return TO_OK;
    TOC_CHECK(k_new && k_cache, TO_ERR_INVALID_ARGUMENT, "toc_kv_cache_append: NULL pointer");
    TOC_READY();
    kv_append_launch(k_new, k_cache, t, nkv, hd_k, max_len, pos, nullptr, src_dtype, cache_dtype);
    TOC_LAUNCHED("kv_append_kernel");
    if (v_new) {
        TOC_CHECK(hd_v >= 1, TO_ERR_INVALID_ARGUMENT, "toc_kv_cache_append: hd_v");
        kv_append_launch(v_new, v_cache, t, nkv, hd_v, max_len, pos, nullptr, src_dtype, cache_dtype);
        TOC_LAUNCHED("kv_append_kernel");
    }
    return TO_OK;
}

/* toc_kv_cache_append for a captured graph: the first slot is *pos (device int32), read when the
 * kernels run; rows that would land at or past max_len are skipped. */
TOC_EXPORT int toc_kv_cache_append_dev(const void *k_new, const void *v_new, void *k_cache, void *v_cache,
                                       int64_t t, int64_t nkv, int64_t hd_k, int64_t hd_v, int64_t max_len,
                                       const int32_t *pos, int src_dtype, int cache_dtype) {
    TOC_CHECK(t >= 0 && nkv >= 1 && hd_k >= 1 && max_len >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_kv_cache_append_dev: bad sizes");
    TOC_CHECK((v_new == NULL) == (v_cache == NULL), TO_ERR_INVALID_ARGUMENT,
              "toc_kv_cache_append_dev: v_new and v_cache must both be given or both be NULL");
    TOC_CHECK(toc_is_act(src_dtype) && toc_is_act(cache_dtype), TO_ERR_DTYPE,
              "toc_kv_cache_append_dev: dtypes");
    TOC_CHECK(!v_new || hd_v >= 1, TO_ERR_INVALID_ARGUMENT, "toc_kv_cache_append_dev: hd_v");
    if (t == 0) return TO_OK;
    TOC_CHECK(k_new && k_cache && pos, TO_ERR_INVALID_ARGUMENT, "toc_kv_cache_append_dev: NULL pointer");
    TOC_READY();
    kv_append_launch(k_new, k_cache, t, nkv, hd_k, max_len, 0, pos, src_dtype, cache_dtype);
    TOC_LAUNCHED("kv_append_kernel");
    if (v_new) {
        kv_append_launch(v_new, v_cache, t, nkv, hd_v, max_len, 0, pos, src_dtype, cache_dtype);
        TOC_LAUNCHED("kv_append_kernel");
    }
    return TO_OK;
}

/* ---- graph decode: q/k RMSNorm + NeoX RoPE + cache append, one warp per head ----
 * qkv: one token's [q (nh*hd) | k (nkv*hd) | v (nkv*hd)] of act dtype; q is rotated in place; k/v
 * are written into the caches at *pos. cos/sin: [capacity, hd] tables of act dtype. */
__global__ void qk_rope_append_kernel(void *qkv, const void *qn, const void *kn, int nwd, float eps,
                                      const void *cosb, const void *sinb, const int32_t *pos,
                                      void *kc, void *vc, int64_t nh, int64_t nkv, int64_t hd,
                                      int64_t cap, int ad, int cd) {
    pdl_enter(); /* launched by toc_launch */
    __shared__ float buf[4][256];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t head = (int64_t)blockIdx.x * 4 + warp;
    if (head >= nh + 2 * nkv) return;
    int64_t p = *pos;
    float *row = buf[warp];
    if (head >= nh + nkv) { /* v */
        int64_t h = head - nh - nkv;
        for (int64_t d = lane; d < hd; d += 32)
            stf(vc, cd, (h * cap + p) * hd + d, ldf(qkv, ad, head * hd + d));
        return;
    }
    const void *nw = head < nh ? qn : kn;
    for (int64_t d = lane; d < hd; d += 32) row[d] = ldf(qkv, ad, head * hd + d);
    __syncwarp();
    if (nw) {
        float ss = 0.0f;
        for (int64_t d = lane; d < hd; d += 32) ss += row[d] * row[d];
        ss = warp_sum(ss);
        float r = 1.0f / sqrtf(ss / (float)hd + eps);
        __syncwarp();
        for (int64_t d = lane; d < hd; d += 32) row[d] = rnd(ad, ldf(nw, nwd, d) * rnd(ad, row[d] * r));
        __syncwarp();
    }
    int64_t half = hd / 2;
    bool bf = ad == TO_BF16;
    float o1v[4], o2v[4];
    int cnt = 0;
    for (int64_t i = lane; i < half; i += 32, cnt++) {
        float o1, o2;
        rope_pair_dev(row[i], row[i + half], ldf(cosb, ad, p * hd + i), ldf(sinb, ad, p * hd + i), bf,
                      o1, o2);
        o1v[cnt] = rnd(ad, o1);
        o2v[cnt] = rnd(ad, o2);
    }
    __syncwarp();
    cnt = 0;
    for (int64_t i = lane; i < half; i += 32, cnt++) {
        row[i] = o1v[cnt];
        row[i + half] = o2v[cnt];
    }
    __syncwarp();
    if (head < nh) {
        for (int64_t d = lane; d < hd; d += 32) stf(qkv, ad, head * hd + d, row[d]);
    } else {
        int64_t h = head - nh;
        for (int64_t d = lane; d < hd; d += 32) stf(kc, cd, (h * cap + p) * hd + d, row[d]);
    }
}
TOC_EXPORT int toc_qk_rope_append(void *qkv, const void *q_norm, const void *k_norm, int norm_dtype,
                                  float eps, const void *cos, const void *sin, const int32_t *pos,
                                  void *k_cache, void *v_cache, int64_t nh, int64_t nkv, int64_t hd,
                                  int64_t capacity, int act_dtype, int cache_dtype) {
    TOC_CHECK(nh >= 1 && nkv >= 1 && hd >= 2 && hd % 2 == 0 && hd <= 256 && capacity >= 1,
              TO_ERR_INVALID_ARGUMENT, "toc_qk_rope_append: bad sizes");
    TOC_CHECK(toc_is_act(act_dtype) && toc_is_act(cache_dtype) &&
                  (!(q_norm || k_norm) || toc_is_wt(norm_dtype)),
              TO_ERR_DTYPE, "toc_qk_rope_append: dtypes");
    TOC_CHECK(qkv && cos && sin && pos && k_cache && v_cache, TO_ERR_INVALID_ARGUMENT,
              "toc_qk_rope_append: NULL pointer");
    TOC_READY();
    int64_t heads = nh + 2 * nkv;
    TOC_CUDA((toc_launch(qk_rope_append_kernel, dim3((unsigned)toc_cdiv(heads, 4)), dim3(128), 0, qkv, q_norm,
        k_norm, norm_dtype, eps, cos, sin, pos, k_cache, v_cache, nh, nkv, hd, capacity, act_dtype, cache_dtype)),
        "qk_rope_append_kernel");
    return TO_OK;
}

/* ---- graph decode: end of step ----
 * token = the argmax packed by toc_gemv_fused; tok[0] = token; tokens[*step] = token (when
 * *step < max_steps); *step += 1; *pos += 1; the packed argmax is reset to 0. */
__global__ void step_end_kernel(unsigned long long *am, int32_t *tok, int32_t *pos, int32_t *tokens,
                                int32_t *step, int max_steps) {
    pdl_enter(); /* launched by toc_launch */
    unsigned long long v = *am;
    int32_t t = (int32_t)(0xffffffffu - (uint32_t)(v & 0xffffffffu));
    if (v == 0) t = 0;
    tok[0] = t;
    int s = *step;
    if (s < max_steps) tokens[s] = t;
    *step = s + 1;
    *pos = *pos + 1;
    *am = 0;
}
TOC_EXPORT int toc_decode_step_end(void *argmax, int32_t *tok, int32_t *pos, int32_t *tokens,
                                   int32_t *step, int max_steps) {
    TOC_CHECK(argmax && tok && pos && tokens && step && max_steps >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_decode_step_end: bad arguments");
    TOC_READY();
    TOC_CUDA((toc_launch(step_end_kernel, dim3(1), dim3(1), 0, (unsigned long long *)argmax, tok, pos, tokens, step,
        max_steps)), "step_end_kernel");
    return TO_OK;
}
