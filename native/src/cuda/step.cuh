/* Helpers of the one-launch decode steps (moe_step.cu): cooperative kernels of one
 * block per multiprocessor whose stages are separated by a grid barrier, each block streaming
 * rows of bf16 weights against a vector staged in shared memory. */
#ifndef TOC_STEP_CUH
#define TOC_STEP_CUH

#include <mutex>

#include "common.cuh"

/* The grid barrier's state: arrivals of the current barrier and its generation. A launch leaves
 * the arrivals at 0, so any grid size may come next. Each file that includes this has its own. */
static __device__ unsigned ms_bar[2];

__device__ __forceinline__ unsigned ms_ld_relaxed(const unsigned *p) {
    unsigned v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* Every block's writes before it are visible to every block after it. Thread 0 reads the
 * generation before arriving (it cannot move before this block arrives), the last block to
 * arrive resets the arrivals and releases the next generation; the others poll with relaxed loads,
 * then one acquire load (an acquire invalidates the multiprocessor's L1). */
__device__ __forceinline__ void ms_grid_sync(void) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned gen = ms_ld_relaxed(ms_bar + 1);
        unsigned old;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(ms_bar) : "memory");
        if (old == gridDim.x - 1) {
            asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(ms_bar), "r"(0u) : "memory");
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(ms_bar + 1) : "memory");
        } else {
            while (ms_ld_relaxed(ms_bar + 1) == gen) {
            }
            asm volatile("{ .reg .u32 t; ld.acquire.gpu.global.u32 t, [%0]; }" ::"l"(ms_bar + 1) : "memory");
        }
    }
    __syncthreads();
}

/* bytes [p, p + n) into L2 (weights: nothing writes them), a warp's lanes in turn */
__device__ __forceinline__ void ms_prefetch_l2(const void *p, int64_t n) {
    const char *c = (const char *)p;
    for (int64_t o = (int64_t)(threadIdx.x & 31) * 128; o < n; o += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + o));
}

/* sums[r] = rows[r] . x for R bf16 rows of nv 16-byte chunks (rows[r] NULL: 0), by the whole warp,
 * each lane with R x U loads in flight. x is two float4 arrays (elements 8c .. 8c+3 in lo[c],
 * 8c+4 .. 8c+7 in hi[c]), so a warp's reads of it are conflict-free. Every lane gets the sums. */
template <int R, int U>
__device__ __forceinline__ void ms_dots(const uint16_t *const *rows, int64_t nv, const float4 *lo,
                                        const float4 *hi, float *sums) {
    const int lane = threadIdx.x & 31;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int64_t c0 = lane; c0 < nv; c0 += 32 * U) {
        uint4 v[R][U];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t c = c0 + 32 * u;
                v[r][u] = rows[r] && c < nv ? ld_stream((const uint4 *)rows[r] + c) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t c = c0 + 32 * u;
            if (c >= nv) break;
            const float4 a = lo[c], b = hi[c];
#pragma unroll
            for (int r = 0; r < R; r++) {
                float f[8];
                bf8(v[r][u], f);
                acc[r] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y +
                          f[6] * b.z + f[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) sums[r] = warp_sum(acc[r]);
}

/* 8 bf16 values into the two float4 arrays at chunk c */
__device__ __forceinline__ void ms_put8(float4 *lo, float4 *hi, int64_t c, const float *f) {
    lo[c] = make_float4(f[0], f[1], f[2], f[3]);
    hi[c] = make_float4(f[4], f[5], f[6], f[7]);
}

/* x [d] (bf16, 16-byte aligned, d % 8 == 0) normalised into lo / hi as toc_gemv_fused's staging
 * rounds it: round(w * round(x * r)), r = 1 / sqrt(mean(x^2) + eps); w NULL: x as it is. The
 * whole block; ends with a block barrier. */
__device__ __forceinline__ void ms_stage_norm(const uint16_t *x, const void *w, int wd, float eps, int64_t d,
                                              float4 *lo, float4 *hi, float *red /* 33 */) {
    const int64_t nv = d / 8;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < nv; c += blockDim.x) {
        float f[8];
        bf8(__ldcg((const uint4 *)x + c), f);
#pragma unroll
        for (int i = 0; i < 8; i++) ss += f[i] * f[i];
        ms_put8(lo, hi, c, f);
    }
    if (!w) {
        __syncthreads();
        return;
    }
    ss = block_sum(ss, red);
    const float rr = 1.0f / sqrtf(ss / (float)d + eps);
    for (int64_t c = threadIdx.x; c < nv; c += blockDim.x) {
        const float4 l = lo[c], h = hi[c];
        const float f[8] = {l.x, l.y, l.z, l.w, h.x, h.y, h.z, h.w};
        float g[8];
#pragma unroll
        for (int i = 0; i < 8; i++) g[i] = rbf(ldf(w, wd, c * 8 + i) * rbf(f[i] * rr));
        ms_put8(lo, hi, c, g);
    }
    __syncthreads();
}

/* The launch of a step kernel: one block of `threads` per multiprocessor, `smem` bytes of dynamic
 * shared memory (opted into past 48 KB), cooperative (the grid barriers need every block resident).
 * TO_ERR_UNSUPPORTED where the device cannot. The checks run once per device, kernel and thread
 * count, and again only for more shared memory than passed them (a model decoding op by op plans
 * every layer of every token). */
template <typename Kernel>
static int ms_plan_launch(Kernel kernel, int threads, size_t smem, int *grid, const char *what) {
    TOC_READY();
    int dev = 0;
    TOC_CUDA(cudaGetDevice(&dev), "cudaGetDevice");
    struct Planned {
        const void *kernel;
        int threads;
        size_t smem;
    };
    static Planned planned[16]; /* per device: the kernel last checked and the most shared memory that fit */
    static std::mutex mu;
    {
        std::lock_guard<std::mutex> lock(mu);
        const Planned &pl = planned[dev & 15];
        if (dev < 16 && pl.kernel == (const void *)kernel && pl.threads == threads && smem <= pl.smem) {
            *grid = toc_sm_count();
            return TO_OK;
        }
    }
    int coop = 0;
    TOC_CUDA(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev), "cudaDeviceGetAttribute");
    TOC_CHECK(coop, TO_ERR_UNSUPPORTED, "%s: the device has no cooperative launch", what);
    TOC_CHECK((int64_t)smem <= (int64_t)toc_max_smem_optin() - 4096, TO_ERR_UNSUPPORTED,
              "%s: needs %zu bytes of shared memory a block", what, smem);
    if (smem > 48 * 1024)
        TOC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 "cudaFuncSetAttribute");
    int per_sm = 0;
    TOC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    TOC_CHECK(per_sm >= 1, TO_ERR_UNSUPPORTED, "%s: a block does not fit a multiprocessor", what);
    if (dev < 16) {
        std::lock_guard<std::mutex> lock(mu);
        Planned &pl = planned[dev];
        if (pl.kernel != (const void *)kernel || pl.threads != threads) pl = Planned{(const void *)kernel, threads, 0};
        if (smem > pl.smem) pl.smem = smem;
    }
    *grid = toc_sm_count();
    return TO_OK;
}

/* the cooperative launch itself */
template <typename Kernel, typename Args>
static cudaError_t ms_launch(Kernel kernel, int grid, int threads, size_t smem, const Args &a) {
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    const cudaLaunchConfig_t cfg = toc_launch_config(dim3(grid), dim3(threads), smem, &attr);
    return cudaLaunchKernelEx(&cfg, kernel, a);
}

#endif
