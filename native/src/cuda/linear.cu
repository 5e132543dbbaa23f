/* Linear layers on the device: y[i, j] = sum_k x[i, k] * w[j, k] (+ bias[j]).
 *  - 2 <= m <= 16 rows of bf16 x with bf16 weights (batched decode): a GEMV on tensor cores
 *    (gemv_mma_kernel), weights read once at full bandwidth whatever m;
 *  - m <= 8 with bf16 weights otherwise (batch-1 decode): our GEMV, one warp per output row, 16-byte weight loads,
 *    x staged in shared memory as fp32, fp32 accumulation; optional fused prologue (RMSNorm of x)
 *    and epilogues (residual add, SwiGLU of two weight matrices) used by the CUDA-graph decoder.
 *    One plain bf16 row (no norm, SwiGLU or argmax: o_proj and down with their residual, the MoE
 *    experts' down projections) goes to the tensor-core GEMV instead, which streams it faster.
 *  - larger m with bf16 x and w: cuBLAS (loaded with dlopen when the library is present; a
 *    cuBLASLt plan kept per shape, else cublasGemmEx), else our WMMA tensor-core GEMM.
 *  - anything else: a generic fp32 tiled kernel. */
#include <mma.h>
#include <stdlib.h>

#include "blas.cuh"
#include <mutex>

#include "common.cuh"

using namespace nvcuda;

/* ---------------------------------------------------------------------------------------------
 * GEMV */
#define GEMV_MAX_WARPS 16 /* rows per block (one warp each), chosen per launch */
struct GemvArgs {
    const void *x;
    int64_t ldx;
    int xd;
    int m;
    const void *norm_w; /* RMSNorm of each x row first (plain variant), or NULL */
    int nwd;
    float eps;
    const uint16_t *w[3]; /* bf16 weight segments stacked along n (q, k, v), or gate/up */
    int64_t seg[3];       /* rows of each segment */
    int nseg;
    int64_t n, k;
    const void *bias;
    int bd;
    void *y;
    int64_t ldy;
    int yd;
    const void *res; /* y = round(res + round(acc)) */
    int64_t ldr;
    int swiglu; /* w[0] = gate, w[1] = up; y = round(round(silu(round(g))) * round(u)) */
    unsigned long long *argmax; /* packed (value key, ~index) atomicMax of the rounded outputs */
    /* toc_moe_gemv: blockIdx.y is a routing slot whose weights are tab[0] (and tab[1], swiglu)
     * at its expert sel[slot]; its x row is x + slot * ldx_slot, its y row y + slot * ldy_slot.
     * NULL sel: one plain GEMV (w[]). */
    const int32_t *sel;
    const unsigned long long *tab[2];
    int64_t n_experts, ldx_slot, ldy_slot;
    int slots;
};


/* acc[r] += dot(8 bf16 weights in v, x[r, kk .. kk+8]) */
template <int M>
__device__ __forceinline__ void dot8(uint4 v, const float *xs, int64_t k, int64_t kk, float *acc) {
    float f[8];
    bf8(v, f);
#pragma unroll
    for (int r = 0; r < M; r++) {
        const float4 *xp = (const float4 *)(xs + r * k + kk);
        float4 x0 = xp[0], x1 = xp[1];
        acc[r] += f[0] * x0.x + f[1] * x0.y + f[2] * x0.z + f[3] * x0.w + f[4] * x1.x +
                  f[5] * x1.y + f[6] * x1.z + f[7] * x1.w;
    }
}

/* dst[0 .. k) = src[0 .. k) (dtype XD), each thread with 4 loads in flight */
template <int XD>
__device__ __forceinline__ void stage_row(float *dst, const void *src, int64_t k) {
    const int64_t bd = blockDim.x;
    int64_t j = threadIdx.x;
    for (; j + 3 * bd < k; j += 4 * bd) {
        const float t0 = ld_as<XD>(src, j), t1 = ld_as<XD>(src, j + bd);
        const float t2 = ld_as<XD>(src, j + 2 * bd), t3 = ld_as<XD>(src, j + 3 * bd);
        dst[j] = t0;
        dst[j + bd] = t1;
        dst[j + 2 * bd] = t2;
        dst[j + 3 * bd] = t3;
    }
    for (; j < k; j += bd) dst[j] = ld_as<XD>(src, j);
}

/* row[j] = round(w[j] * round(row[j] * rr)) in the activation dtype XD (w of dtype WD) */
template <int XD, int WD>
__device__ __forceinline__ void norm_row(float *row, const void *w, int64_t k, float rr) {
    const int64_t bd = blockDim.x;
    int64_t j = threadIdx.x;
    for (; j + 3 * bd < k; j += 4 * bd) {
        float t[4];
#pragma unroll
        for (int u = 0; u < 4; u++) t[u] = ld_as<WD>(w, j + u * bd);
#pragma unroll
        for (int u = 0; u < 4; u++) row[j + u * bd] = rnd(XD, t[u] * rnd(XD, row[j + u * bd] * rr));
    }
    for (; j < k; j += bd) row[j] = rnd(XD, ld_as<WD>(w, j) * rnd(XD, row[j] * rr));
}

template <int M, int XD>
__global__ void __launch_bounds__(GEMV_MAX_WARPS * 32) gemv_kernel(GemvArgs a) {
    extern __shared__ float xs[]; /* M * k */
    __shared__ float red[33];
    /* the argmax of the block's rows, and how many of its rows are done: one global atomic a
     * block instead of one a row (a 151936-row LM head's rows all hit one address) */
    __shared__ unsigned long long amax;
    __shared__ int adone;
    if (threadIdx.x == 0) {
        amax = 0;
        adone = 0;
    }
    const int64_t k = a.k;
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool live = row < a.n;
    const uint16_t *w0 = nullptr, *w1 = nullptr;
    const uint16_t *base0 = a.w[0], *base1 = a.w[1];
    int64_t xoff = 0, yoff = 0; /* elements */
    if (a.sel) {
        /* the expert ids come from the previous kernel (the router): wait for it first */
        pdl_wait();
        const int32_t e = a.sel[blockIdx.y];
        if (e < 0 || e >= a.n_experts) return; /* the whole block; toc_moe_combine reports it */
        base0 = (const uint16_t *)a.tab[0][e];
        base1 = a.tab[1] ? (const uint16_t *)a.tab[1][e] : nullptr;
        xoff = (int64_t)blockIdx.y * a.ldx_slot;
        yoff = (int64_t)blockIdx.y * a.ldy_slot;
    }
    if (live && a.swiglu) {
        w0 = base0 + row * k;
        w1 = base1 + row * k;
    } else if (live) {
        int64_t rr = row;
        int s = 0;
        while (s < a.nseg - 1 && rr >= a.seg[s]) {
            rr -= a.seg[s];
            s++;
        }
        w0 = (s == 0 ? base0 : a.w[s]) + rr * k;
    }
    /* Each lane keeps 4 (8 with SwiGLU) 16-byte weight loads in flight; the first batch is issued
     * before x is staged, so the staging (and, with PDL, the previous kernel's tail) overlaps the
     * memory latency. Out-of-range slots of a batch load nothing and add nothing. */
    const uint4 *wv = (const uint4 *)w0, *wv1 = (const uint4 *)w1;
    const int64_t nv = k / 8;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 v[4], u[4];
    int64_t c = lane;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        bool in = live && c + 32 * q < nv;
        v[q] = in ? __ldg(wv + c + 32 * q) : zero;
        u[q] = in && w1 ? __ldg(wv1 + c + 32 * q) : zero;
    }
    pdl_enter_gemv(); /* the first weights are requested; x, res and y belong to earlier kernels */
    /* stage x (normalised when asked) */
    for (int r = 0; r < M; r++) {
        if (r >= a.m) {
            for (int64_t j = threadIdx.x; j < k; j += blockDim.x) xs[r * k + j] = 0.0f;
            continue;
        }
        const char *xr = (const char *)a.x + (xoff + r * a.ldx) * (XD == TO_F32 ? 4 : 2);
        stage_row<XD>(xs + r * k, xr, k);
        if (a.norm_w) { /* each thread reads back the elements it staged */
            float ss = 0.0f;
            for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
                const float vv = xs[r * k + j];
                ss += vv * vv;
            }
            ss = block_sum(ss, red);
            const float rr = 1.0f / sqrtf(ss / (float)k + a.eps);
            if (a.nwd == TO_BF16) norm_row<XD, TO_BF16>(xs + r * k, a.norm_w, k, rr);
            else if (a.nwd == TO_F32) norm_row<XD, TO_F32>(xs + r * k, a.norm_w, k, rr);
            else norm_row<XD, TO_F16>(xs + r * k, a.norm_w, k, rr);
        }
    }
    __syncthreads();
    if (!live) return;
    float acc[M], acc2[M];
#pragma unroll
    for (int r = 0; r < M; r++) acc[r] = acc2[r] = 0.0f;
    for (;;) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            if (c + 32 * q < nv) {
                dot8<M>(v[q], xs, k, (c + 32 * q) * 8, acc);
                if (w1) dot8<M>(u[q], xs, k, (c + 32 * q) * 8, acc2);
            }
        }
        c += 128;
        if (c >= nv) break;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            bool in = c + 32 * q < nv;
            v[q] = in ? __ldg(wv + c + 32 * q) : zero;
            u[q] = in && w1 ? __ldg(wv1 + c + 32 * q) : zero;
        }
    }
#pragma unroll
    for (int r = 0; r < M; r++) {
        acc[r] = warp_sum(acc[r]);
        if (w1) acc2[r] = warp_sum(acc2[r]);
    }
    if (lane == 0) {
        unsigned long long key = 0;
#pragma unroll
        for (int r = 0; r < M; r++) {
            if (r >= a.m) break;
            float v = acc[r];
            if (a.bias) v += ldf(a.bias, a.bd, row);
            if (a.swiglu) {
                float g = rnd(a.yd, v), u = rnd(a.yd, acc2[r]);
                v = rnd(a.yd, g / (1.0f + expf(-g))) * u;
            } else if (a.res) {
                v = ldf(a.res, a.yd, r * a.ldr + row) + rnd(a.yd, v);
            }
            stf(a.y, a.yd, yoff + r * a.ldy + row, v);
            if (a.argmax) {
                float rv = rnd(a.yd, v);
                if (rv == rv) {
                    const unsigned long long kr = argmax_key(rv, row);
                    key = kr > key ? kr : key;
                }
            }
        }
        if (a.argmax) { /* the block's last live row publishes the block's maximum */
            atomicMax(&amax, key);
            __threadfence_block();
            const int64_t warps = blockDim.x >> 5;
            const int64_t left = a.n - (int64_t)blockIdx.x * warps;
            const int live_rows = (int)(left < warps ? left : warps);
            if (atomicAdd(&adone, 1) == live_rows - 1) {
                const unsigned long long best = atomicMax(&amax, 0ULL);
                if (best) atomicMax(a.argmax, best);
            }
        }
    }
}

/* a GEMV block's static shared memory (red[33]), and the dynamic part it may take: the opt-in
 * limit less the static part */
#define GEMV_STATIC_SMEM (33 * 4)
static int64_t gemv_smem_limit(void) { return toc_max_smem_optin() - GEMV_STATIC_SMEM; }

static int launch_gemv(const GemvArgs &a) {
    size_t smem = (size_t)((a.m + 0) <= 1 ? 1 : a.m <= 2 ? 2 : a.m <= 4 ? 4 : 8) * a.k * 4;
    TOC_CHECK((int64_t)smem <= gemv_smem_limit(), TO_ERR_UNSUPPORTED, "gemv: x needs %zu bytes of shared memory",
              smem);
    /* rows per block: as many as keep >= 2 blocks per multiprocessor (x is staged once per block) */
    const int64_t slots = a.slots > 1 ? a.slots : 1;
    int64_t warps = a.n * slots / (2 * (int64_t)toc_sm_count());
    if (warps < 4) warps = 4;
    if (warps > GEMV_MAX_WARPS) warps = GEMV_MAX_WARPS;
    unsigned grid = (unsigned)toc_cdiv(a.n, warps);
    int threads = (int)warps * 32;
    /* a block's shared memory past 48 KB (static part included: 4 rows of k 3072 are exactly 48 KB
     * of x) is opted into per kernel, up to the largest size asked */
#define GEMV_CASE(MM)                                                                          \
    {                                                                                          \
        static size_t configured[16];                                                          \
        int dev = 0;                                                                           \
        cudaGetDevice(&dev);                                                                   \
        auto kern = a.xd == TO_F32 ? gemv_kernel<MM, TO_F32> : gemv_kernel<MM, TO_BF16>;       \
        if (smem + GEMV_STATIC_SMEM > 48 * 1024 && smem > configured[dev & 15]) {              \
            TOC_CUDA(cudaFuncSetAttribute(gemv_kernel<MM, TO_F32>,                             \
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), \
                     "cudaFuncSetAttribute");                                                  \
            TOC_CUDA(cudaFuncSetAttribute(gemv_kernel<MM, TO_BF16>,                            \
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), \
                     "cudaFuncSetAttribute");                                                  \
            configured[dev & 15] = smem;                                                       \
        }                                                                                      \
        TOC_CUDA(toc_launch(kern, dim3(grid, (unsigned)slots), dim3(threads), smem, a), "gemv_kernel"); \
    }
    if (a.m <= 1) GEMV_CASE(1)
    else if (a.m <= 2) GEMV_CASE(2)
    else if (a.m <= 4) GEMV_CASE(4)
    else GEMV_CASE(8)
#undef GEMV_CASE
    TOC_LAUNCHED("gemv_kernel");
    return TO_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Small-batch GEMV on tensor cores (1 <= m <= 16 rows of bf16 x, bf16 weights: the BatchManager's
 * decode steps, and single rows of the op path). The scalar GEMV above re-reads m rows of staged x
 * from shared memory for every weight chunk, which for m >= 2 makes it shared-memory bound
 * (Qwen3-4B, 8 rows: 0.5 TB/s of weights on an H200); for one row it streams 1.7-4.0 TB/s against
 * 3.3-4.2 here (4B shapes, H200). Here y^T = W x^T runs on mma.sync m16n8k16 with x as the A operand (its m
 * rows padded with zeros to 16) and 8 weight rows as B: a block owns 8 weight rows and its warps
 * split k. The reduction over k does not depend on the order of k inside an MMA, so each lane
 * loads 16 contiguous bytes of one weight row (8 k values) and the matching 16 bytes of x, and the
 * two MMAs of a 32-wide k step take halves of them (the A and B fragments use the same k order).
 * Weights stream through a ring of GM_U loads per lane (x, small and shared by every block, comes
 * through L1 with them); the warps' partial tiles are summed in a fixed order in shared memory. */
#define GM_WARPS 8
#define GM_U 4
#define GM_SEG 3 /* weight matrices of one launch (toc_linear_group: q/k/v, gate/up) */
struct GemvMmaArgs {
    const uint16_t *x;
    const uint16_t *w0, *w1, *w2;
    void *y0, *y1, *y2;
    int64_t n0, n1, n2, ldy0, ldy1, ldy2;
    int64_t t1, t2, tiles; /* first tile of matrices 1 and 2; tiles of all (8 rows each) */
    const void *bias;      /* single matrix only */
    int bd, yd, m, wpt;    /* wpt: warps per tile, each a k range */
    int64_t k, ldx;
    /* toc_gate_up_swiglu: tiles alternate between w0 (gate) and w1 (up) over the same 8 rows,
     * and y2 [m, ldy2] gets swiglu(gate, up) rounded as the two ops would (n0 = n1 rows) */
    int pair;
    /* toc_linear_strided_batched: blockIdx.y is a problem of one matrix (w0, y0), its x, weights
     * and y at these element strides (0 for one launch of one problem) */
    int64_t sx, sw, sy;
    /* toc_moe_gemv's one-token down projections: problem blockIdx.y takes the weights of expert
     * sel[blockIdx.y] from tab (a device array of n_experts pointers) instead of w0 + y * sw; a
     * problem whose id is out of range writes nothing */
    const int32_t *sel;
    const unsigned long long *tab;
    int64_t n_experts;
    /* single matrix: y = round(res + round(sum)), res [m, ldr] (toc_gemv_fused's residual) */
    const void *res;
    int64_t ldr;
    /* one row of x, RMSNorm(x) * norm_w first (toc_gemv_fused's norm): gemv_mma_kernel<false, true>
     * stages the normalised row once per block in shared memory (k * 2 bytes) */
    const void *norm_w;
    int nwd;
    float eps;
    /* single matrix, one row: packed argmax of the rounded outputs (toc_gemv_fused's; one global
     * atomicMax a block) */
    unsigned long long *argmax;
};
#define GM_NORM_MAX_K (20 * 1024) /* k of a normalised row, at most (40 KB of shared memory) */

/* 16 bytes of x: the staged row in shared memory (NORM) or global memory through L1 */
template <bool NORM>
__device__ __forceinline__ uint4 gm_ldx(const uint16_t *p) {
    return NORM ? *(const uint4 *)p : __ldg((const uint4 *)p);
}

/* tile -> (matrix, its first row), by value (no indexing of the parameter arrays) */
struct GmTile {
    const uint16_t *w;
    void *y;
    int64_t n, ldy, r0;
};
__device__ __forceinline__ GmTile gm_tile(const GemvMmaArgs &a, int64_t t) {
    if (a.pair) return (t & 1) ? GmTile{a.w1, a.y1, a.n1, a.ldy1, (t >> 1) * 8} : GmTile{a.w0, a.y0, a.n0, a.ldy0, (t >> 1) * 8};
    if (t >= a.t2) return GmTile{a.w2, a.y2, a.n2, a.ldy2, (t - a.t2) * 8};
    if (t >= a.t1) return GmTile{a.w1, a.y1, a.n1, a.ldy1, (t - a.t1) * 8};
    return GmTile{a.w0, a.y0, a.n0, a.ldy0, t * 8};
}

/* x row 0 normalised as toc_gemv_fused's scalar staging rounds it (round(w * round(x * r))), into
 * xs [k] bf16; the whole block, then a block barrier */
__device__ __forceinline__ void gm_stage_norm(const GemvMmaArgs &a, uint16_t *xs, float *red) {
    const int64_t nv = a.k / 8;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < nv; c += blockDim.x) {
        const uint4 v = *((const uint4 *)a.x + c);
        float f[8];
        bf8(v, f);
#pragma unroll
        for (int i = 0; i < 8; i++) ss += f[i] * f[i];
        ((uint4 *)xs)[c] = v;
    }
    ss = block_sum(ss, red);
    const float rr = 1.0f / sqrtf(ss / (float)a.k + a.eps);
    for (int64_t c = threadIdx.x; c < nv; c += blockDim.x) {
        float f[8];
        bf8(((const uint4 *)xs)[c], f);
#pragma unroll
        for (int i = 0; i < 8; i++) f[i] = rbf(ldf(a.norm_w, a.nwd, c * 8 + i) * rbf(f[i] * rr));
        ((uint4 *)xs)[c] = pack_bf8(f);
    }
    __syncthreads();
}

template <bool M16, bool NORM>
__global__ void __launch_bounds__(GM_WARPS * 32) gemv_mma_kernel(GemvMmaArgs a) {
    __shared__ float part[GM_WARPS][32][4];
    __shared__ float red[NORM ? 33 : 1];
    __shared__ unsigned long long amax; /* the block's argmax key (a.argmax) */
    extern __shared__ __align__(16) uint16_t gm_xs[]; /* NORM: the normalised row */
    if (threadIdx.x == 0) amax = 0; /* read after the block barrier before the epilogue */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int tpb = GM_WARPS / a.wpt, kp = warp % a.wpt;
    const int64_t tile = (int64_t)blockIdx.x * tpb + warp / a.wpt;
    const GmTile T = gm_tile(a, tile < a.tiles ? tile : 0);
    const int64_t row = T.r0 + gid;
    const int64_t steps = (a.k + 31) / 32;
    const int64_t s0 = steps * kp / a.wpt, s1 = tile < a.tiles ? steps * (kp + 1) / a.wpt : s0;
    const int64_t bz = blockIdx.y; /* the problem of a strided batch */
    const uint16_t *wbase = T.w + bz * a.sw;
    if (a.sel) { /* the expert ids come from the previous kernel: wait for it first */
        pdl_wait();
        const int32_t e = a.sel[bz];
        if (e < 0 || e >= a.n_experts) return; /* the whole block; toc_moe_combine reports it */
        wbase = (const uint16_t *)a.tab[e];
    }
    const uint16_t *wr = wbase + (row < T.n ? row : 0) * a.k + tig * 8;
    const uint16_t *xa = (NORM ? gm_xs : a.x + bz * a.sx + (int64_t)gid * a.ldx) + tig * 8, *xb = xa + 8 * a.ldx;
    const bool wok = row < T.n, aok = gid < a.m, bok = M16 && gid + 8 < a.m;
    const uint4 z = make_uint4(0, 0, 0, 0);
    uint4 wv[GM_U], av[GM_U], bv[GM_U];
#pragma unroll
    for (int u = 0; u < GM_U; u++) {
        const int64_t s = s0 + u, kk = s * 32 + tig * 8;
        wv[u] = s < s1 && kk < a.k && wok ? ld_stream((const uint4 *)(wr + s * 32)) : z;
    }
    /* the first weights are requested; x comes from the previous kernel (toc_launch) */
    pdl_enter_gemv();
    if (NORM) gm_stage_norm(a, gm_xs, red);
#pragma unroll
    for (int u = 0; u < GM_U; u++) {
        const int64_t s = s0 + u, kk = s * 32 + tig * 8;
        const bool in = s < s1 && kk < a.k;
        av[u] = in && aok ? gm_ldx<NORM>(xa + s * 32) : z;
        bv[u] = in && bok ? gm_ldx<NORM>(xb + s * 32) : z;
    }
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 1
    for (int64_t s = s0; s < s1; s += GM_U) {
#pragma unroll
        for (int u = 0; u < GM_U; u++) {
            /* past the range the slots hold zeros: the products add nothing */
            mma_bf16_16816(c, av[u].x, bv[u].x, av[u].y, bv[u].y, wv[u].x, wv[u].y);
            mma_bf16_16816(c, av[u].z, bv[u].z, av[u].w, bv[u].w, wv[u].z, wv[u].w);
            const int64_t t = s + u + GM_U, kk = t * 32 + tig * 8;
            const bool in = t < s1 && kk < a.k;
            wv[u] = in && wok ? ld_stream((const uint4 *)(wr + t * 32)) : z;
            av[u] = in && aok ? gm_ldx<NORM>(xa + t * 32) : z;
            bv[u] = in && bok ? gm_ldx<NORM>(xb + t * 32) : z;
        }
    }
    /* c0, c1: x row gid, weight rows 2 tig, 2 tig + 1; c2, c3: x row gid + 8 */
    *(float4 *)part[warp][lane] = make_float4(c[0], c[1], c[2], c[3]);
    __syncthreads();
    if (a.pair) { /* a gate tile and its up tile: SwiGLU of the two sums, each summed as below */
#pragma unroll 1
        for (int o = threadIdx.x; o < tpb * 64; o += GM_WARPS * 32) {
            const int pp = o >> 7, xr = (o >> 3) & 15, j = o & 7;
            const int l = (xr & 7) * 4 + (j >> 1), e = (xr >> 3) * 2 + (j & 1);
            float g = 0.0f, u = 0.0f;
#pragma unroll 1
            for (int w = 0; w < a.wpt; w++) g += part[2 * pp * a.wpt + w][l][e];
#pragma unroll 1
            for (int w = 0; w < a.wpt; w++) u += part[(2 * pp + 1) * a.wpt + w][l][e];
            const int64_t t = (int64_t)blockIdx.x * tpb + 2 * pp, r = (t >> 1) * 8 + j;
            if (t >= a.tiles || xr >= a.m || r >= a.n0) continue;
            const float gv = rnd(a.yd, g), uv = rnd(a.yd, u); /* as linear_group stores them */
            stf(a.y2, a.yd, xr * a.ldy2 + r, rnd(a.yd, gv / (1.0f + expf(-gv))) * uv); /* as toc_swiglu */
        }
        return;
    }
    /* each output: the tile's warps' partials summed in k order */
    unsigned long long key = 0;
#pragma unroll 1
    for (int o = threadIdx.x; o < tpb * 128; o += GM_WARPS * 32) {
        const int tt = o >> 7, xr = (o >> 3) & 15, j = o & 7; /* tile of the block, x row, weight row */
        const int l = (xr & 7) * 4 + (j >> 1), e = (xr >> 3) * 2 + (j & 1);
        float v = 0.0f;
#pragma unroll 1
        for (int w = 0; w < a.wpt; w++) v += part[tt * a.wpt + w][l][e];
        const int64_t t = (int64_t)blockIdx.x * tpb + tt;
        if (t >= a.tiles || xr >= a.m) continue;
        const GmTile U = gm_tile(a, t);
        const int64_t r = U.r0 + j;
        if (r < U.n) {
            if (a.bias) v += ldf(a.bias, a.bd, r);
            if (a.res) v = ldf(a.res, a.yd, xr * a.ldr + r) + rnd(a.yd, v);
            stf(U.y, a.yd, bz * a.sy + xr * U.ldy + r, v);
            const float rv = rnd(a.yd, v);
            if (a.argmax && xr == 0 && rv == rv) {
                const unsigned long long kr = argmax_key(rv, r);
                key = kr > key ? kr : key;
            }
        }
    }
    if (a.argmax) {
        if (key) atomicMax(&amax, key);
        __syncthreads();
        if (threadIdx.x == 0 && amax) atomicMax(a.argmax, amax);
    }
}

/* warps per tile: a tile's k range is split over 1-8 warps. It depends on k alone, so a matrix
 * gives the same bits alone (toc_linear) and in a group (toc_linear_group), as on the CPU. More
 * warps help small grids (Qwen3-0.6B: k 1024 at 4 warps instead of 2, down's k 3072 at 8 instead
 * of 4: batched step -7%) and cost large ones with short k (Qwen3-4B's k 2560 at 8 warps: LM head
 * 191 -> 216 us at 8 rows), hence steps of k rather than a steps-per-warp minimum. H200 numbers
 * in GPU_NOTES.md; -DGM_WPT_STEPS=16 builds the earlier rule (16 steps of 32 per warp, at least). */
static int gm_wpt(int64_t k) {
#ifdef GM_WPT_STEPS /* the earlier rule: warps of at least this many 32-wide k steps */
    const int64_t per = toc_cdiv(k, 32) / GM_WPT_STEPS;
    return per >= 8 ? 8 : per >= 4 ? 4 : per >= 2 ? 2 : 1;
#else
    return k >= 3072 ? 8 : k >= 1024 ? 4 : k >= 512 ? 2 : 1;
#endif
}
static int launch_gemv_mma(GemvMmaArgs a, unsigned batch = 1) {
    a.t1 = toc_cdiv(a.n0, 8);
    a.t2 = a.t1 + toc_cdiv(a.n1, 8);
    a.tiles = a.pair ? 2 * a.t1 : a.t2 + toc_cdiv(a.n2, 8);
    a.wpt = gm_wpt(a.k);
    const dim3 grid((unsigned)toc_cdiv(a.tiles, GM_WARPS / a.wpt), batch);
    if (a.norm_w) {
        TOC_CHECK(a.m == 1 && a.k <= GM_NORM_MAX_K && a.k % 8 == 0, TO_ERR_UNSUPPORTED,
                  "gemv_mma: a normalised x is one row of k <= %d, k %% 8 == 0", GM_NORM_MAX_K);
        TOC_CUDA(toc_launch(gemv_mma_kernel<false, true>, grid, dim3(GM_WARPS * 32), (size_t)a.k * 2, a),
                 "gemv_mma_kernel");
        return TO_OK;
    }
    TOC_CUDA(toc_launch(a.m > 8 ? gemv_mma_kernel<true, false> : gemv_mma_kernel<false, false>, grid,
                        dim3(GM_WARPS * 32), 0, a), "gemv_mma_kernel");
    return TO_OK;
}

/* Fewest rows the tensor-core GEMV takes. One row too by default: with x in one row of A it still
 * streams the weights faster than the scalar GEMV on the decode shapes (GPU_NOTES.md);
 * INFERENCE_PIO_CUDA_GEMV_MMA1=0 keeps single rows on the scalar GEMV. */
static int gemv_mma_min_rows(void) {
    static int rows = 0;
    if (!rows) {
        const char *e = getenv("INFERENCE_PIO_CUDA_GEMV_MMA1");
        rows = e && e[0] == '0' ? 2 : 1;
    }
    return rows;
}

/* Whether a normalised row (toc_gemv_fused with norm_w) takes the tensor-core GEMV, its RMSNorm
 * staged once per block; INFERENCE_PIO_CUDA_GEMV_MMA_NORM=0 keeps it on the scalar GEMV. */
static bool gemv_mma_norm(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("INFERENCE_PIO_CUDA_GEMV_MMA_NORM");
        on = !(e && e[0] == '0');
    }
    return on == 1;
}

/* toc_linear_group's fast path: up to GM_SEG bf16 matrices against 2-16 rows of bf16 x in one
 * launch; TO_ERR_UNSUPPORTED (nothing launched, no error recorded) where they do not qualify */
int toc_gemv_mma_group(const void *x, int count, const void *const *ws, const int64_t *ns, void *const *ys,
                       const int64_t *ldys, int64_t m, int64_t k, int64_t ldx, int x_dtype, int w_dtype,
                       int y_dtype) {
    if (count < 1 || count > GM_SEG || m < gemv_mma_min_rows() || m > 16 || x_dtype != TO_BF16 || w_dtype != TO_BF16 ||
        !toc_is_act(y_dtype) || !x || k < 8 || k % 8 || ldx < k || ldx % 8 || !aligned16(x))
        return TO_ERR_UNSUPPORTED;
    for (int i = 0; i < count; i++)
        if (!ws[i] || !ys[i] || !aligned16(ws[i]) || ns[i] < 1 || ldys[i] < ns[i]) return TO_ERR_UNSUPPORTED;
    GemvMmaArgs a = {};
    a.x = (const uint16_t *)x;
    a.w0 = (const uint16_t *)ws[0], a.y0 = ys[0], a.n0 = ns[0], a.ldy0 = ldys[0];
    if (count > 1) a.w1 = (const uint16_t *)ws[1], a.y1 = ys[1], a.n1 = ns[1], a.ldy1 = ldys[1];
    if (count > 2) a.w2 = (const uint16_t *)ws[2], a.y2 = ys[2], a.n2 = ns[2], a.ldy2 = ldys[2];
    a.yd = y_dtype, a.m = (int)m, a.k = k, a.ldx = ldx;
    return launch_gemv_mma(a);
}

/* SwiGLU's two matrices and the activation: out = swiglu(x w_gate^T, x w_up^T), with the bits of
 * toc_linear_group then toc_swiglu. Where the tensor-core GEMV takes the rows and a block holds
 * whole tile pairs (k below 4096: 2-8 tiles per block), one launch writes out and gate / up are
 * left alone; otherwise the two ops run, with gate and up as their outputs ([m, inter] each). */
extern "C" int toc_linear_group(const void *x, int count, const void *const *ws, const int64_t *ns, void *const *ys,
                                const int64_t *ldys, int64_t m, int64_t k, int64_t ldx, int x_dtype, int w_dtype,
                                int y_dtype);
extern "C" int toc_swiglu(const void *gate, const void *up, void *out, int64_t rows, int64_t inter, int64_t ld_gate,
                          int64_t ld_up, int64_t ld_out, int dtype);
TOC_EXPORT int toc_gate_up_swiglu(const void *x, const void *w_gate, const void *w_up, void *gate, void *up,
                                  void *out, int64_t m, int64_t inter, int64_t k, int64_t ldx, int x_dtype,
                                  int w_dtype, int y_dtype) {
    TOC_CHECK(m >= 0 && inter >= 0 && k >= 0 && ldx >= k, TO_ERR_INVALID_ARGUMENT,
              "toc_gate_up_swiglu: bad sizes m=%lld inter=%lld k=%lld ldx=%lld", (long long)m, (long long)inter,
              (long long)k, (long long)ldx);
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_wt(w_dtype) && toc_is_act(y_dtype), TO_ERR_DTYPE,
              "toc_gate_up_swiglu: dtypes x=%d w=%d y=%d", x_dtype, w_dtype, y_dtype);
    if (m == 0 || inter == 0) return TO_OK;
    TOC_CHECK(x && w_gate && w_up && gate && up && out, TO_ERR_INVALID_ARGUMENT, "toc_gate_up_swiglu: NULL pointer");
    TOC_READY();
    const bool pair = m >= gemv_mma_min_rows() && m <= 16 && x_dtype == TO_BF16 && w_dtype == TO_BF16 && k >= 8 &&
                      k % 8 == 0 && ldx % 8 == 0 && aligned16(x) && aligned16(w_gate) && aligned16(w_up) &&
                      gm_wpt(k) <= GM_WARPS / 2 && inter <= 0x7fffffffLL * 4;
    if (pair) {
        GemvMmaArgs a = {};
        a.x = (const uint16_t *)x;
        a.w0 = (const uint16_t *)w_gate, a.w1 = (const uint16_t *)w_up;
        a.n0 = a.n1 = inter, a.ldy0 = a.ldy1 = inter;
        a.y2 = out, a.ldy2 = inter;
        a.yd = y_dtype, a.m = (int)m, a.k = k, a.ldx = ldx, a.pair = 1;
        return launch_gemv_mma(a);
    }
    const void *ws[2] = {w_gate, w_up};
    const int64_t ns[2] = {inter, inter};
    void *ys[2] = {gate, up};
    int rc = toc_linear_group(x, 2, ws, ns, ys, ns, m, k, ldx, x_dtype, w_dtype, y_dtype);
    if (rc != TO_OK) return rc;
    return toc_swiglu(gate, up, out, m, inter, inter, inter, inter, y_dtype);
}

/* ---------------------------------------------------------------------------------------------
 * WMMA GEMM (bf16 in, fp32 accumulate): 128x128 tile, k-step 32, 8 warps of 64x32. */
#define GT_M 128
#define GT_N 128
#define GT_K 32
#define GT_LD (GT_K + 8)
__global__ void __launch_bounds__(256) wmma_gemm_kernel(const uint16_t *x, const uint16_t *w,
                                                        float *ytmp, int64_t m, int64_t n, int64_t k,
                                                        int64_t ldx) {
    __shared__ __align__(32) uint16_t xs[GT_M * GT_LD];
    __shared__ __align__(32) uint16_t ws[GT_N * GT_LD];
    int warp = threadIdx.x >> 5;
    int wm = warp >> 2, wn = warp & 3; /* 2 x 4 warps: each 64 rows x 32 cols */
    int64_t m0 = (int64_t)blockIdx.y * GT_M, n0 = (int64_t)blockIdx.x * GT_N;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);
    for (int64_t k0 = 0; k0 < k; k0 += GT_K) {
        /* 128 rows x 32 cols = 512 chunks of 8 per operand; 256 threads x 2 */
        for (int c = threadIdx.x; c < 512; c += 256) {
            int r = c >> 2, cc = (c & 3) * 8;
            uint4 vx = make_uint4(0, 0, 0, 0), vw = make_uint4(0, 0, 0, 0);
            if (m0 + r < m && k0 + cc < k) vx = *(const uint4 *)(x + (m0 + r) * ldx + k0 + cc);
            if (n0 + r < n && k0 + cc < k) vw = *(const uint4 *)(w + (n0 + r) * k + k0 + cc);
            *(uint4 *)(xs + r * GT_LD + cc) = vx;
            *(uint4 *)(ws + r * GT_LD + cc) = vw;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GT_K; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[4];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 4; i++)
                wmma::load_matrix_sync(fa[i], (const __nv_bfloat16 *)(xs + (wm * 64 + i * 16) * GT_LD + kk), GT_LD);
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(fb[j], (const __nv_bfloat16 *)(ws + (wn * 32 + j * 16) * GT_LD + kk), GT_LD);
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }
    /* stage through shared memory (reuse xs/ws as fp32: 16x16 per warp at a time) */
    __shared__ __align__(32) float stage[8][16 * 16];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::store_matrix_sync(stage[warp], acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            int lane = threadIdx.x & 31;
            for (int e = lane; e < 256; e += 32) {
                int64_t r = m0 + wm * 64 + i * 16 + e / 16, cidx = n0 + wn * 32 + j * 16 + e % 16;
                if (r < m && cidx < n) ytmp[r * n + cidx] = stage[warp][e];
            }
            __syncwarp();
        }
}

/* Grouped GEMM of a mixture of experts (prefill and batched decode): rows of x [*, k] grouped by
 * expert; tile t of `tiles` ([n_tiles][3] int32 on the device: expert, first row, rows <= 64)
 * multiplies its rows by that expert's bf16 [n, k] weights (tab: device array of pointers) into
 * the same rows of y [*, n], rounded to bf16 once, as toc_linear would. 64x128 tiles, k-step 32,
 * 8 warps of 32x32 on WMMA; a tile with a bad expert id writes nothing. */
#define GG_M 64
__global__ void __launch_bounds__(256) moe_grouped_gemm_kernel(const uint16_t *x, const int32_t *tiles,
                                                               const unsigned long long *tab, int64_t n_experts,
                                                               uint16_t *y, int64_t n, int64_t k) {
    __shared__ __align__(32) uint16_t xs[GG_M * GT_LD];
    __shared__ __align__(32) uint16_t ws[GT_N * GT_LD];
    __shared__ __align__(32) float stage[8][16 * 16];
    const int32_t e = tiles[3 * blockIdx.y], r0 = tiles[3 * blockIdx.y + 1], rows = tiles[3 * blockIdx.y + 2];
    if (e < 0 || e >= n_experts || rows <= 0) return;
    const uint16_t *w = (const uint16_t *)tab[e];
    const int warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3; /* 2 x 4 warps of 32 x 32 */
    const int64_t n0 = (int64_t)blockIdx.x * GT_N;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);
    /* each thread's share of a k step: one 8-value chunk of x (64 rows x 32 cols) and two of w
     * (128 rows x 32 cols); the next step's are loaded into registers before this step's
     * products, so their latency overlaps the tensor-core work */
    const int xr = threadIdx.x >> 2, cc = (threadIdx.x & 3) * 8;
    const int wr0 = threadIdx.x >> 2, wr1 = (threadIdx.x + 256) >> 2;
    const uint4 z = make_uint4(0, 0, 0, 0);
    auto load_x = [&](int64_t k0) {
        return xr < rows && k0 + cc < k ? *(const uint4 *)(x + ((int64_t)r0 + xr) * k + k0 + cc) : z;
    };
    auto load_w = [&](int wr, int64_t k0) {
        return n0 + wr < n && k0 + cc < k ? __ldg((const uint4 *)(w + (n0 + wr) * k + k0 + cc)) : z;
    };
    uint4 xv = load_x(0), wv0 = load_w(wr0, 0), wv1 = load_w(wr1, 0);
    for (int64_t k0 = 0; k0 < k; k0 += GT_K) {
        *(uint4 *)(xs + xr * GT_LD + cc) = xv;
        *(uint4 *)(ws + wr0 * GT_LD + cc) = wv0;
        *(uint4 *)(ws + wr1 * GT_LD + cc) = wv1;
        __syncthreads();
        if (k0 + GT_K < k) {
            xv = load_x(k0 + GT_K);
            wv0 = load_w(wr0, k0 + GT_K);
            wv1 = load_w(wr1, k0 + GT_K);
        }
#pragma unroll
        for (int kk = 0; kk < GT_K; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(fa[i], (const __nv_bfloat16 *)(xs + (wm * 32 + i * 16) * GT_LD + kk), GT_LD);
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(fb[j], (const __nv_bfloat16 *)(ws + (wn * 32 + j * 16) * GT_LD + kk), GT_LD);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::store_matrix_sync(stage[warp], acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            for (int q = lane; q < 256; q += 32) {
                const int r = wm * 32 + i * 16 + q / 16;
                const int64_t c = n0 + wn * 32 + j * 16 + q % 16;
                if (r < rows && c < n) y[((int64_t)r0 + r) * n + c] = f2bf(stage[warp][q]);
            }
            __syncwarp();
        }
}

TOC_EXPORT int toc_moe_grouped_linear(const void *x, const int32_t *tiles, int64_t n_tiles, const void *tab,
                                      int64_t n_experts, int64_t n, int64_t k, void *y, int act_dtype) {
    TOC_CHECK(n_tiles >= 0 && n_tiles <= 65535 && n_experts >= 1 && n >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_moe_grouped_linear: need 0 <= n_tiles <= 65535, n_experts >= 1, n >= 1");
    TOC_CHECK(k >= 8 && k % 8 == 0, TO_ERR_INVALID_ARGUMENT, "toc_moe_grouped_linear: k must be a multiple of 8");
    TOC_CHECK(act_dtype == TO_BF16, TO_ERR_DTYPE, "toc_moe_grouped_linear: bf16 activations only (dtype %d)",
              act_dtype);
    if (n_tiles == 0) return TO_OK;
    TOC_CHECK(x && tiles && tab && y, TO_ERR_INVALID_ARGUMENT, "toc_moe_grouped_linear: NULL pointer");
    TOC_READY();
    dim3 grid((unsigned)toc_cdiv(n, GT_N), (unsigned)n_tiles);
    moe_grouped_gemm_kernel<<<grid, 256, 0, toc_stream()>>>((const uint16_t *)x, tiles,
                                                            (const unsigned long long *)tab, n_experts,
                                                            (uint16_t *)y, n, k);
    TOC_LAUNCHED("moe_grouped_gemm_kernel");
    return TO_OK;
}

/* y = round(acc (+ bias)) from an fp32 [m, n] buffer */
__global__ void epilogue_kernel(const float *t, const void *bias, int bd, void *y, int64_t m,
                                int64_t n, int64_t ldy, int yd) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < m * n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / n, c = i - r * n;
        float v = t[i];
        if (bias) v += ldf(bias, bd, c);
        stf(y, yd, r * ldy + c, v);
    }
}

/* generic fp32 tiled kernel for every dtype combination */
__global__ void linear_generic_kernel(const void *x, const void *w, const void *bias, void *y,
                                      int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy,
                                      int xd, int wd, int bd, int yd) {
    __shared__ float xt[16][17], wt[16][17];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t r = (int64_t)blockIdx.y * 16 + ty, c = (int64_t)blockIdx.x * 16 + tx;
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < k; k0 += 16) {
        int64_t xr = (int64_t)blockIdx.y * 16 + ty, wr = (int64_t)blockIdx.x * 16 + ty;
        xt[ty][tx] = (xr < m && k0 + tx < k) ? ldf(x, xd, xr * ldx + k0 + tx) : 0.0f;
        wt[ty][tx] = (wr < n && k0 + tx < k) ? ldf(w, wd, wr * k + k0 + tx) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int q = 0; q < 16; q++) acc += xt[ty][q] * wt[tx][q];
        __syncthreads();
    }
    if (r < m && c < n) {
        if (bias) acc += ldf(bias, bd, c);
        stf(y, yd, r * ldy + c, acc);
    }
}

/* fp32 scratch for GEMM epilogues; grown outside graph capture only */
static TocBuffer g_scratch;
/* held from scratch() until the kernel reading it is queued: another host thread's GEMM must not
 * land in the buffer between this call's GEMM and its epilogue (one stream per device) */
static std::mutex g_scratch_lock;
static int scratch(size_t bytes, float **out) {
    return toc_buffer_reserve(&g_scratch, bytes, (void **)out, "linear scratch");
}

TOC_EXPORT int toc_linear(const void *x, const void *w, const void *bias, void *y, int64_t m,
                          int64_t n, int64_t k, int64_t ldx, int64_t ldy, int x_dtype, int w_dtype,
                          int bias_dtype, int y_dtype) {
    TOC_CHECK(m >= 0 && n >= 0 && k >= 0 && ldx >= k && ldy >= n, TO_ERR_INVALID_ARGUMENT,
              "toc_linear: bad sizes m=%lld n=%lld k=%lld ldx=%lld ldy=%lld", (long long)m,
              (long long)n, (long long)k, (long long)ldx, (long long)ldy);
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_wt(w_dtype) && toc_is_act(y_dtype), TO_ERR_DTYPE,
              "toc_linear: dtypes x=%d w=%d y=%d", x_dtype, w_dtype, y_dtype);
    TOC_CHECK(!bias || toc_is_wt(bias_dtype), TO_ERR_DTYPE, "toc_linear: bias dtype %d", bias_dtype);
    if (m == 0 || n == 0) return TO_OK;
    TOC_CHECK(x && w && y, TO_ERR_INVALID_ARGUMENT, "toc_linear: NULL pointer");
    TOC_READY();
    cudaStream_t s = toc_stream();
    bool vec = w_dtype == TO_BF16 && k % 8 == 0 && k > 0 && aligned16(w);
    if (vec && m >= gemv_mma_min_rows() && m <= 16 && x_dtype == TO_BF16 && ldx % 8 == 0 && aligned16(x) && n <= 0x7fffffffLL * 8) {
        GemvMmaArgs a = {};
        a.x = (const uint16_t *)x;
        a.w0 = (const uint16_t *)w, a.y0 = y, a.n0 = n, a.ldy0 = ldy;
        a.bias = bias, a.bd = bias_dtype, a.yd = y_dtype, a.m = (int)m, a.k = k, a.ldx = ldx;
        return launch_gemv_mma(a);
    }
    if (vec && m <= 8 && (int64_t)k * 4 * (m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8) <= gemv_smem_limit()) {
        GemvArgs a = {};
        a.x = x;
        a.ldx = ldx;
        a.xd = x_dtype;
        a.m = (int)m;
        a.w[0] = (const uint16_t *)w;
        a.seg[0] = n;
        a.nseg = 1;
        a.n = n;
        a.k = k;
        a.bias = bias;
        a.bd = bias_dtype;
        a.y = y;
        a.ldy = ldy;
        a.yd = y_dtype;
        return launch_gemv(a);
    }
    std::lock_guard<std::mutex> scratch_guard(g_scratch_lock); /* the paths below use g_scratch */
    if (k == 0) {
        /* y = bias or 0 */
        float *t;
        int rc = scratch((size_t)m * n * 4, &t);
        if (rc) return rc;
        TOC_CUDA(cudaMemsetAsync(t, 0, (size_t)m * n * 4, s), "cudaMemsetAsync");
        epilogue_kernel<<<toc_grid(m * n, 256), 256, 0, s>>>(t, bias, bias_dtype, y, m, n, ldy, y_dtype);
        TOC_LAUNCHED("epilogue_kernel");
        return TO_OK;
    }
    bool bf = x_dtype == TO_BF16 && w_dtype == TO_BF16 && k % 8 == 0 && ldx % 8 == 0 &&
              aligned16(x) && aligned16(w);
    if (bf && m <= 0x7fffffff && n <= 0x7fffffff && k <= 0x7fffffff) {
        if (!bias && y_dtype == TO_BF16 && ldy <= 0x7fffffff) {
            const int rc = toc_blas_gemm_bf16(s, w, x, y, m, n, k, ldx, ldy, false);
            if (rc != TO_ERR_UNSUPPORTED) return rc;
        } else if (toc_blas_available()) {
            float *t;
            int rc = scratch((size_t)m * n * 4, &t);
            if (rc) return rc;
            rc = toc_blas_gemm_bf16(s, w, x, t, m, n, k, ldx, n, true);
            if (rc != TO_ERR_UNSUPPORTED) {
                if (rc) return rc;
                epilogue_kernel<<<toc_grid(m * n, 256), 256, 0, s>>>(t, bias, bias_dtype, y, m, n, ldy, y_dtype);
                TOC_LAUNCHED("epilogue_kernel");
                return TO_OK;
            }
        }
        float *t;
        int rc = scratch((size_t)m * n * 4, &t);
        if (rc) return rc;
        dim3 grid((unsigned)toc_cdiv(n, GT_N), (unsigned)toc_cdiv(m, GT_M));
        TOC_CHECK(grid.y <= 65535, TO_ERR_UNSUPPORTED, "toc_linear: m too large");
        wmma_gemm_kernel<<<grid, 256, 0, s>>>((const uint16_t *)x, (const uint16_t *)w, t, m, n, k, ldx);
        TOC_LAUNCHED("wmma_gemm_kernel");
        epilogue_kernel<<<toc_grid(m * n, 256), 256, 0, s>>>(t, bias, bias_dtype, y, m, n, ldy, y_dtype);
        TOC_LAUNCHED("epilogue_kernel");
        return TO_OK;
    }
    dim3 grid((unsigned)toc_cdiv(n, 16), (unsigned)toc_cdiv(m, 16));
    TOC_CHECK(grid.y <= 65535, TO_ERR_UNSUPPORTED, "toc_linear: m too large");
    linear_generic_kernel<<<grid, dim3(16, 16), 0, s>>>(x, w, bias, y, m, n, k, ldx, ldy, x_dtype,
                                                        w_dtype, bias_dtype, y_dtype);
    TOC_LAUNCHED("linear_generic_kernel");
    return TO_OK;
}

TOC_EXPORT int toc_linear_strided_batched(int count, const void *x, int64_t ldx, int64_t sx, const void *w,
                                          int64_t sw, void *y, int64_t ldy, int64_t sy, int64_t m,
                                          int64_t n, int64_t k, int x_dtype, int w_dtype, int y_dtype) {
    TOC_CHECK(count >= 0 && count <= (1 << 20), TO_ERR_INVALID_ARGUMENT,
              "toc_linear_strided_batched: count %d", count);
    TOC_CHECK(sx >= 0 && sw >= 0 && sy >= 0, TO_ERR_SHAPE,
              "toc_linear_strided_batched: negative stride (x %lld, w %lld, y %lld)", (long long)sx,
              (long long)sw, (long long)sy);
    TOC_CHECK(toc_is_act(x_dtype) && toc_is_wt(w_dtype) && toc_is_act(y_dtype), TO_ERR_DTYPE,
              "toc_linear_strided_batched: dtypes x=%d w=%d y=%d", x_dtype, w_dtype, y_dtype);
    TOC_CHECK(m >= 0 && n >= 0 && k >= 0 && ldx >= k && ldy >= n, TO_ERR_INVALID_ARGUMENT,
              "toc_linear_strided_batched: bad sizes m=%lld n=%lld k=%lld ldx=%lld ldy=%lld",
              (long long)m, (long long)n, (long long)k, (long long)ldx, (long long)ldy);
    if (count == 0 || m == 0 || n == 0) return TO_OK;
    TOC_CHECK(x && w && y, TO_ERR_INVALID_ARGUMENT, "toc_linear_strided_batched: NULL pointer");
    TOC_READY();
    /* toc_linear's choice for every problem: the tensor-core GEMV where it takes them all */
    const bool mma = w_dtype == TO_BF16 && x_dtype == TO_BF16 && k % 8 == 0 && k > 0 && aligned16(w) &&
                     aligned16(x) && (count == 1 || (sw % 8 == 0 && sx % 8 == 0)) && ldx % 8 == 0 &&
                     m >= gemv_mma_min_rows() && m <= 16 && n <= 0x7fffffffLL * 8;
    if (mma) {
        for (int i0 = 0; i0 < count; i0 += 65535) {
            const int c = count - i0 < 65535 ? count - i0 : 65535;
            const int64_t ey = to_dtype_size_cuda(y_dtype);
            GemvMmaArgs a = {};
            a.x = (const uint16_t *)x + (int64_t)i0 * sx;
            a.w0 = (const uint16_t *)w + (int64_t)i0 * sw;
            a.y0 = (char *)y + (int64_t)i0 * sy * ey, a.n0 = n, a.ldy0 = ldy;
            a.yd = y_dtype, a.m = (int)m, a.k = k, a.ldx = ldx;
            a.sx = sx, a.sw = sw, a.sy = sy;
            const int rc = launch_gemv_mma(a, (unsigned)c);
            if (rc) return rc;
        }
        return TO_OK;
    }
    const int64_t ex = to_dtype_size_cuda(x_dtype), ew = to_dtype_size_cuda(w_dtype),
                  ey = to_dtype_size_cuda(y_dtype);
    for (int i = 0; i < count; i++) {
        const int rc = toc_linear((const char *)x + (int64_t)i * sx * ex, (const char *)w + (int64_t)i * sw * ew,
                                  nullptr, (char *)y + (int64_t)i * sy * ey, m, n, k, ldx, ldy, x_dtype, w_dtype,
                                  0, y_dtype);
        if (rc) return rc;
    }
    return TO_OK;
}

/* Fused decode GEMV (batch-1 decode and the CUDA-graph decoder), m rows of x (m <= 8):
 *  y[:, 0:n] = [w0; w1; w2] x  with segments of seg0/seg1/seg2 rows (pass NULL for unused ones),
 *  optionally RMSNorm(x) * norm_w first (plain variant, eps), plus residual (y = res + acc, both
 *  rounded like two separate ops) or swiglu (w0 = gate, w1 = up, n = their rows), and an optional
 *  packed argmax (unsigned 64-bit, atomicMax; reset it to 0 before) of row 0's rounded outputs.
 *  Weights bf16 with k % 8 == 0 and 16-byte aligned rows; x/y/res f32 or bf16. */
TOC_EXPORT int toc_gemv_fused(const void *x, int64_t ldx, int64_t m, const void *norm_w, int norm_dtype,
                              float eps, const void *w0, int64_t seg0, const void *w1, int64_t seg1,
                              const void *w2, int64_t seg2, int64_t k, const void *res, int64_t ldr,
                              int swiglu, void *y, int64_t ldy, int act_dtype, void *argmax) {
    TOC_CHECK(m >= 1 && m <= 8 && k >= 8 && k % 8 == 0 && ldx >= k, TO_ERR_INVALID_ARGUMENT,
              "toc_gemv_fused: need 1 <= m <= 8, k %% 8 == 0, ldx >= k");
    TOC_CHECK(toc_is_act(act_dtype) && (!norm_w || toc_is_wt(norm_dtype)), TO_ERR_DTYPE,
              "toc_gemv_fused: dtypes");
    TOC_CHECK(x && y && w0 && seg0 > 0 && aligned16(w0), TO_ERR_INVALID_ARGUMENT,
              "toc_gemv_fused: x, y, w0 (16-byte aligned) and seg0 > 0 are required");
    TOC_CHECK((!w1 || aligned16(w1)) && (!w2 || aligned16(w2)), TO_ERR_INVALID_ARGUMENT,
              "toc_gemv_fused: weights must be 16-byte aligned");
    TOC_CHECK(!swiglu || (w1 && seg1 == seg0 && !w2), TO_ERR_INVALID_ARGUMENT,
              "toc_gemv_fused: swiglu needs gate (w0) and up (w1) of equal rows");
    TOC_CHECK(!(swiglu && res), TO_ERR_INVALID_ARGUMENT, "toc_gemv_fused: swiglu and residual");
    TOC_READY();
    if (m == 1 && !swiglu && act_dtype == TO_BF16 && gemv_mma_min_rows() <= 1 && aligned16(x) &&
        !(res && w1) && !(argmax && (w1 || res)) && (!norm_w || (gemv_mma_norm() && k <= GM_NORM_MAX_K))) {
        /* one row (q/k/v with their RMSNorm, o_proj and down with their residual, the LM head with
         * its argmax): the tensor-core GEMV streams it faster; segments 1 and 2 write on where
         * segment 0 ends */
        GemvMmaArgs g = {};
        g.x = (const uint16_t *)x, g.ldx = k, g.k = k, g.m = 1, g.yd = act_dtype;
        g.w0 = (const uint16_t *)w0, g.y0 = y, g.n0 = seg0, g.ldy0 = ldy;
        if (w1) g.w1 = (const uint16_t *)w1, g.y1 = (uint16_t *)y + seg0, g.n1 = seg1, g.ldy1 = ldy;
        if (w1 && w2) g.w2 = (const uint16_t *)w2, g.y2 = (uint16_t *)y + seg0 + seg1, g.n2 = seg2, g.ldy2 = ldy;
        g.res = res, g.ldr = ldr;
        g.norm_w = norm_w, g.nwd = norm_dtype, g.eps = eps;
        g.argmax = (unsigned long long *)argmax;
        return launch_gemv_mma(g);
    }
    GemvArgs a = {};
    a.x = x;
    a.ldx = ldx;
    a.xd = act_dtype;
    a.m = (int)m;
    a.norm_w = norm_w;
    a.nwd = norm_dtype;
    a.eps = eps;
    a.w[0] = (const uint16_t *)w0;
    a.seg[0] = seg0;
    a.nseg = 1;
    if (!swiglu && w1) {
        a.w[1] = (const uint16_t *)w1;
        a.seg[1] = seg1;
        a.nseg = 2;
        if (w2) {
            a.w[2] = (const uint16_t *)w2;
            a.seg[2] = seg2;
            a.nseg = 3;
        }
    }
    if (swiglu) a.w[1] = (const uint16_t *)w1;
    a.n = swiglu ? seg0 : seg0 + (a.nseg > 1 ? seg1 : 0) + (a.nseg > 2 ? seg2 : 0);
    a.k = k;
    a.y = y;
    a.ldy = ldy;
    a.yd = act_dtype;
    a.res = res;
    a.ldr = ldr;
    a.swiglu = swiglu;
    a.argmax = (unsigned long long *)argmax;
    return launch_gemv(a);
}

/* Batch-1 decode GEMVs of the experts a router chose, without a host round trip (the CUDA-graph
 * decoder's mixture-of-experts layers): for each of `slots` routing slots, the expert
 * e = sel[slot] (device int32), y[slot * ldy_slot + j] = W_e[j, :] . x_slot for j < n, where W_e
 * is the bf16 [n, k] matrix at tab0[e] (a device array of n_experts pointers) and x_slot the
 * row x + slot * ldx_slot (ldx_slot 0: every slot reads the same row). With tab1 (the up
 * projections), y = swiglu(gate, up) rounded as the two ops would. norm_w: RMSNorm of x first,
 * as toc_gemv_fused. A slot whose expert id is out of range writes nothing (toc_moe_combine
 * reports it). Every expert matrix must be 16-byte aligned (the caller checks; the table is on
 * the device). */
TOC_EXPORT int toc_moe_gemv(const void *x, int64_t ldx_slot, const void *norm_w, int norm_dtype, float eps,
                            const int32_t *sel, int64_t slots, int64_t n_experts, const void *tab0,
                            const void *tab1, int64_t n, int64_t k, void *y, int64_t ldy_slot, int act_dtype) {
    TOC_CHECK(slots >= 1 && slots <= 65535 && n_experts >= 1 && n >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_moe_gemv: need 1 <= slots <= 65535, n_experts >= 1, n >= 1");
    TOC_CHECK(k >= 8 && k % 8 == 0, TO_ERR_INVALID_ARGUMENT, "toc_moe_gemv: k must be a multiple of 8");
    TOC_CHECK(ldx_slot == 0 || ldx_slot >= k, TO_ERR_INVALID_ARGUMENT, "toc_moe_gemv: ldx_slot must be 0 or >= k");
    TOC_CHECK(ldy_slot >= n, TO_ERR_INVALID_ARGUMENT, "toc_moe_gemv: ldy_slot must be >= n");
    TOC_CHECK(toc_is_act(act_dtype) && (!norm_w || toc_is_wt(norm_dtype)), TO_ERR_DTYPE, "toc_moe_gemv: dtypes");
    TOC_CHECK(x && y && sel && tab0, TO_ERR_INVALID_ARGUMENT, "toc_moe_gemv: x, y, sel and tab0 are required");
    TOC_READY();
    if (!norm_w && !tab1 && act_dtype == TO_BF16 && gemv_mma_min_rows() <= 1 && aligned16(x) && ldx_slot % 8 == 0) {
        /* the down projections: on the tensor-core GEMV, one problem per slot */
        GemvMmaArgs g = {};
        g.x = (const uint16_t *)x, g.ldx = k, g.sx = ldx_slot, g.k = k, g.m = 1, g.yd = act_dtype;
        g.y0 = y, g.n0 = n, g.ldy0 = n, g.sy = ldy_slot;
        g.sel = sel, g.tab = (const unsigned long long *)tab0, g.n_experts = n_experts;
        g.w0 = (const uint16_t *)tab0; /* not read: the table gives each problem's weights */
        return launch_gemv_mma(g, (unsigned)slots);
    }
    GemvArgs a = {};
    a.x = x;
    a.ldx = k;
    a.xd = act_dtype;
    a.m = 1;
    a.norm_w = norm_w;
    a.nwd = norm_dtype;
    a.eps = eps;
    a.seg[0] = n;
    a.nseg = 1;
    a.n = n;
    a.k = k;
    a.y = y;
    a.ldy = n;
    a.yd = act_dtype;
    a.swiglu = tab1 != NULL;
    a.sel = sel;
    a.tab[0] = (const unsigned long long *)tab0;
    a.tab[1] = (const unsigned long long *)tab1;
    a.n_experts = n_experts;
    a.ldx_slot = ldx_slot;
    a.ldy_slot = ldy_slot;
    a.slots = (int)slots;
    return launch_gemv(a);
}
