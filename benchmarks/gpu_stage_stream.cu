// How close to the read bandwidth can a chain of dependent GEMVs get on one GPU?
// (benchmarks/GPU_NOTES.md, fourteenth session.)
//
// A synthetic batch-1 decode token of Qwen3-4B's weight shapes: 36 layers of four GEMV stages
// (q/k/v 6144 x 2560, o 2560 x 4096, gate/up 19456 x 2560, down 2560 x 9728; bf16), then the LM
// head (151936 x 2560): 8.05 GB per token, 145 stages, each stage's input the previous stage's
// output (fp32, written by every block), so a grid-wide barrier separates the stages. Nothing
// else: no attention, norms or residuals, so this is a ceiling for the fused decode kernel's
// structure. One persistent block per multiprocessor; kernels (one table row each):
//   direct_kernel  the fused kernel's structure: each warp owns a contiguous run of the block's
//                  rows in 512-byte units and keeps U loads per lane in flight in a register
//                  ring, the first U issued before the stage's barrier wait
//   chain_kernel   a producer warp copies the block's contiguous byte range into a shared-memory
//                  ring with TMA bulk copies; it waits for a stage's input only once `gate`
//                  pieces of the stage are issued (0: no run-ahead, 1000: only the ring limits it)
//   mma_kernel     the register ring with the products on tensor cores (mma.sync; units of 8 rows
//                  x 32 columns, or contiguous units when tiled, timing only)
//   dyn_kernel     rows handed out at run time from a counter per stage instead of a static split
// Modes (argv[2]; none: the table of kernels): l2pf, curve, balance, steal, steal16, tail, btail, thr (chain_kernel's
// run-ahead allowed only once all but thr blocks reached the barrier), slots (chain_kernel's copy
// size at the same ring bytes).
//   nvcc -O3 -arch=sm_90a -o /tmp/gss benchmarks/gpu_stage_stream.cu && /tmp/gss
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)

struct Stage {
    const uint16_t *w; // [n][k] bf16
    const float *in;   // [k]
    float *out;        // [n]
    int n, k;
};

struct Params {
    const Stage *st;
    int nst;
    int slot;   // bytes per ring slot (multiple of 512)
    int nslot;  // slots
    int gate;   // pieces of a stage the producer may issue before the stage's input is ready
    unsigned long long *bar;
    int maxk;   // floats of the input area
    int maxrows;
    unsigned long long *prof; // [block][4 stages of layer 1][5 stamps] or NULL
    unsigned *ctr;            // [stage] rows handed out (dyn_kernel), zero at launch
    const float *pre;         // direct_kernel: NULL (even split) or the prefix of row shares by rank [G + 1]
    const int *rank_of_sm;    // [SM id] the rank of the multiprocessor in pre
    unsigned long long *tl;   // direct_kernel: NULL or [block][stage][2] (barrier seen + staged, weights done)
    int *smid;                // [block] the multiprocessor it ran on (when tl is set)
    int pf = 0;               // direct_kernel: bytes per warp of the stage's weights after its first
                              // U loads prefetched into L2 before the barrier wait (0: none)
    int pfd = 0;              // direct_kernel: keep that prefetch running pf bytes ahead of the loads
    int thr = 0;              // chain_kernel: pieces past `gate` wait only until all but thr blocks
                              // have arrived at the stage's barrier (0: until it completes)
};
__device__ __forceinline__ int sm_id(void) {
    int v;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(v));
    return v;
}

__device__ __forceinline__ unsigned long long now_ns(void) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mb_init(uint64_t *b, unsigned n) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(n) : "memory");
}
__device__ __forceinline__ void mb_expect(uint64_t *b, unsigned tx) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(tx) : "memory");
}
__device__ __forceinline__ void mb_arrive(uint64_t *b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mb_wait(uint64_t *b, unsigned parity) {
    asm volatile(
        "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra W;\n}\n" ::"r"(smem_u32(b)),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void bulk_g2s(void *dst, const void *src, unsigned bytes, uint64_t *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(b))
                 : "memory");
}
__device__ __forceinline__ unsigned long long ld_relaxed(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned long long ld_acquire(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
// a bulk prefetch of global memory into L2 (sm_90; nothing on older GPUs): bytes a multiple of 16
__device__ __forceinline__ void l2_prefetch(const void *p, unsigned bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void cbar(int nthreads) { asm volatile("bar.sync 1, %0;" ::"r"(nthreads) : "memory"); }

__device__ __forceinline__ float dot8(uint4 w, uint4 x) {
    const __nv_bfloat162 *a = (const __nv_bfloat162 *)&w, *b = (const __nv_bfloat162 *)&x;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 fa = __bfloat1622float2(a[i]), fb = __bfloat1622float2(b[i]);
        s += fa.x * fb.x + fa.y * fb.y;
    }
    return s;
}
__device__ __forceinline__ uint4 ldnc(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// stage s's input is ready once every block has arrived s times (one thread polls, then the
// block syncs); a block arrives after its stage's outputs are written
__device__ __forceinline__ void grid_wait(const Params &P, int s) {
    if (s == 0) return;
    if (threadIdx.x == 0) {
        while (ld_relaxed(P.bar) < (unsigned long long)s * gridDim.x) {
        }
        (void)ld_acquire(P.bar);
    }
    __syncthreads();
}
__device__ __forceinline__ void grid_arrive(const Params &P) {
    __syncthreads();
    if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(P.bar) : "memory");
}

// the stage's input (fp32, written by every block) into shared memory as bf16: all of a thread's
// loads issued before its first store (one L2 round trip, not one per element)
__device__ __forceinline__ void stage_x(const float *in, uint16_t *xs, int k, int t, int nt) {
    for (int i0 = t * 4; i0 < k; i0 += nt * 4 * 8) {
        float4 v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * nt * 4;
            v[u] = i < k ? __ldcg((const float4 *)(in + i)) : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * nt * 4;
            if (i < k) {
                const float f[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
                for (int c = 0; c < 4; c++) xs[i + c] = __bfloat16_as_ushort(__float2bfloat16(f[c] / (1.0f + fabsf(f[c]))));
            }
        }
    }
}

// rows [r0, r1) of an n-row matrix for block b of G
__device__ __forceinline__ void rows_of(int n, int b, int G, int &r0, int &r1) {
    r0 = (int)((long long)n * b / G);
    r1 = (int)((long long)n * (b + 1) / G);
}

// The start of stage s in the register-ring kernels, after the first loads are issued: block b's
// stamps of layer 1 (returned: NULL unless profiling and thread 0), the barrier, the staged
// input and zeroed row sums.
__device__ __forceinline__ unsigned long long *stage_open(const Params &P, const Stage &S, int s, int b, uint16_t *xs,
                                                         float *racc, int nr, int nt) {
    unsigned long long *pr = P.prof && s >= 4 && s < 8 && threadIdx.x == 0 ? P.prof + ((size_t)b * 4 + (s - 4)) * 5 : nullptr;
    if (pr) pr[0] = now_ns();
    grid_wait(P, s);
    stage_x(S.in, xs, S.k, threadIdx.x, nt);
    for (int i = threadIdx.x; i < nr; i += nt) racc[i] = 0.0f;
    if (pr) pr[1] = now_ns();
    return pr;
}

// The end of stage s in the register-ring kernels: stamps, the block's row sums stored, arrival.
__device__ __forceinline__ void stage_close(const Params &P, const Stage &S, unsigned long long *pr,
                                            const float *racc, int r0, int nr, int nt) {
    if (pr) pr[3] = now_ns();
    __syncthreads();
    for (int i = threadIdx.x; i < nr; i += nt) __stcg(S.out + r0 + i, racc[i]);
    __syncthreads();
    if (pr) pr[4] = now_ns();
    if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(P.bar) : "memory");
}

template <int NCW>
__global__ void __launch_bounds__(32 * (NCW + 1), 1) chain_kernel(const Params P) {
    extern __shared__ __align__(1024) unsigned char sm[];
    unsigned char *ring = sm;
    uint16_t *xs = (uint16_t *)(sm + (size_t)P.nslot * P.slot);
    float *racc = (float *)(xs + P.maxk);
    uint64_t *full = (uint64_t *)(racc + P.maxrows);
    uint64_t *empty = full + P.nslot;
    const int G = gridDim.x, b = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (threadIdx.x == 0) {
        for (int i = 0; i < P.nslot; i++) {
            mb_init(&full[i], 1);
            mb_init(&empty[i], NCW);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == NCW) { // producer
        if (lane != 0) return;
        unsigned it = 0;
        for (int s = 0; s < P.nst; s++) {
            const Stage S = P.st[s];
            int r0, r1;
            rows_of(S.n, b, G, r0, r1);
            const char *src = (const char *)(S.w + (size_t)r0 * S.k);
            const size_t bytes = (size_t)(r1 - r0) * S.k * 2;
            int piece = 0;
            for (size_t o = 0; o < bytes; o += P.slot, piece++, it++) {
                if (piece == P.gate && s > 0) {
                    while (ld_relaxed(P.bar) + (unsigned long long)P.thr < (unsigned long long)s * G) {
                    }
                }
                const unsigned slot = it % P.nslot, round = it / P.nslot;
                if (round > 0) mb_wait(&empty[slot], (round - 1) & 1);
                const unsigned nb = (unsigned)((bytes - o) < (size_t)P.slot ? (bytes - o) : P.slot);
                mb_expect(&full[slot], nb);
                bulk_g2s(ring + (size_t)slot * P.slot, src + o, nb, &full[slot]);
            }
        }
        return;
    }
    // consumers
    const int ct = threadIdx.x, NC = NCW * 32;
    unsigned it = 0;
    for (int s = 0; s < P.nst; s++) {
        const Stage S = P.st[s];
        int r0, r1;
        rows_of(S.n, b, G, r0, r1);
        const int nr = r1 - r0, k = S.k;
        if (s > 0) {
            if (ct == 0) {
                while (ld_relaxed(P.bar) < (unsigned long long)s * G) {
                }
                (void)ld_acquire(P.bar);
            }
            cbar(NC);
        }
        stage_x(S.in, xs, k, ct, NC);
        for (int i = ct; i < nr; i += NC) racc[i] = 0.0f;
        cbar(NC);
        const size_t bytes = (size_t)nr * k * 2;
        const uint32_t e0 = (uint32_t)r0 * (uint32_t)k; // first element of the block's range
        for (size_t o = 0; o < bytes; o += P.slot, it++) {
            const unsigned slot = it % P.nslot, round = it / P.nslot;
            const unsigned nb = (unsigned)((bytes - o) < (size_t)P.slot ? (bytes - o) : P.slot);
            const int ng = (int)(nb / 512); // groups of 256 elements (one 16-byte chunk per lane)
            const int g0 = ng * warp / NCW, g1 = ng * (warp + 1) / NCW;
            mb_wait(&full[slot], round & 1);
            const unsigned char *base = ring + (size_t)slot * P.slot;
            // the warp's groups [g0, g1) are contiguous: walk them row run by row run
            const uint32_t eb = e0 + (uint32_t)(o / 2) + (uint32_t)g0 * 256u;
            int row = (int)(eb / (uint32_t)k), col = (int)(eb - (uint32_t)row * (uint32_t)k);
            for (int g = g0; g < g1;) {
                const int run = min(g1 - g, (k - col) >> 8);
                const uint4 *wp = (const uint4 *)(base + (size_t)g * 512) + lane;
                const uint16_t *xp = xs + col + lane * 8;
                float a0 = 0.0f, a1 = 0.0f;
                int j = 0;
                for (; j + 4 <= run; j += 4) {
                    uint4 wv[4], xv[4];
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        wv[u] = wp[(j + u) * 32];
                        xv[u] = *(const uint4 *)(xp + (j + u) * 256);
                    }
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        float &acc = (u & 1) ? a1 : a0;
                        acc += dot8(wv[u], xv[u]);
                    }
                }
                for (; j < run; j++) a0 += dot8(wp[j * 32], *(const uint4 *)(xp + j * 256));
                float acc = a0 + a1;
#pragma unroll
                for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
                if (lane == 0) atomicAdd(&racc[row - r0], acc);
                g += run;
                col += run * 256;
                if (col == k) {
                    col = 0;
                    row++;
                }
            }
            __syncwarp();
            if (lane == 0) mb_arrive(&empty[slot]);
        }
        cbar(NC);
        for (int i = ct; i < nr; i += NC) __stcg(S.out + r0 + i, racc[i]);
        cbar(NC);
        if (ct == 0) asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(P.bar) : "memory");
    }
}


// The fused decode kernel's structure, for calibration: no producer; each warp owns a contiguous
// run of groups of the block's range for the whole stage and keeps U 16-byte loads per lane in
// flight in a register ring; the first U are issued before the stage's barrier wait.
template <int NW, int U>
__global__ void __launch_bounds__(32 * NW, 1) direct_kernel(const Params P) {
    extern __shared__ __align__(1024) unsigned char sm[];
    uint16_t *xs = (uint16_t *)sm;
    float *racc = (float *)(xs + P.maxk);
    const int G = gridDim.x, b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rank = P.pre ? P.rank_of_sm[sm_id()] : b;
    if (P.tl && threadIdx.x == 0) P.smid[b] = sm_id();
    for (int s = 0; s < P.nst; s++) {
        const Stage S = P.st[s];
        int r0, r1;
        if (P.pre) {
            r0 = __float2int_rn((float)S.n * P.pre[rank]);
            r1 = __float2int_rn((float)S.n * P.pre[rank + 1]);
        } else {
            rows_of(S.n, b, G, r0, r1);
        }
        const int nr = r1 - r0, k = S.k;
        const int ng = (int)((size_t)nr * k / 256);
        const int g0 = (int)((long long)ng * warp / NW), g1 = (int)((long long)ng * (warp + 1) / NW);
        const char *wb = (const char *)(S.w + (size_t)r0 * k) + lane * 16;
        uint4 ring[U];
#pragma unroll
        for (int u = 0; u < U; u++) ring[u] = g0 + u < g1 ? ldnc(wb + (size_t)(g0 + u) * 512) : make_uint4(0, 0, 0, 0);
        const int pfg = P.pf / 512; // prefetch distance in groups
        if (pfg && lane == 0 && g0 + U < g1)
            l2_prefetch(wb + (size_t)(g0 + U) * 512, (unsigned)(min(pfg, g1 - g0 - U) * 512));
        unsigned long long *pr = stage_open(P, S, s, b, xs, racc, nr, 32 * NW);
        if (P.tl && threadIdx.x == 0) P.tl[((size_t)b * P.nst + s) * 2] = now_ns();
        __syncthreads();
        if (pr) pr[2] = now_ns();
        const uint32_t eb = (uint32_t)g0 * 256u;
        int row = (int)(eb / (uint32_t)k), col = (int)(eb - (uint32_t)row * (uint32_t)k);
        float acc = 0.0f;
        for (int g = g0; g < g1; g += U) {
            if (P.pfd && lane == 0 && ((g - g0) & 15) == 0) { // the next 16 groups pf bytes ahead
                const int a = g + U + pfg < g1 ? g + U + pfg : g1, z = a + 16 < g1 ? a + 16 : g1;
                if (z > a) l2_prefetch(wb + (size_t)a * 512, (unsigned)((z - a) * 512));
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (g + u < g1) {
                    acc += dot8(ring[u], *(const uint4 *)(xs + col + lane * 8));
                    ring[u] = g + u + U < g1 ? ldnc(wb + (size_t)(g + u + U) * 512) : make_uint4(0, 0, 0, 0);
                    col += 256;
                    if (col == k) {
#pragma unroll
                        for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
                        if (lane == 0) atomicAdd(&racc[row], acc);
                        acc = 0.0f;
                        col = 0;
                        row++;
                    }
                }
            }
        }
        if (col != 0) {
#pragma unroll
            for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
            if (lane == 0) atomicAdd(&racc[row], acc);
        }
        if (pr) pr[3] = now_ns();
        __syncthreads();
        if (P.tl && threadIdx.x == 0) P.tl[((size_t)b * P.nst + s) * 2 + 1] = now_ns();
        for (int i = threadIdx.x; i < nr; i += 32 * NW) __stcg(S.out + r0 + i, racc[i]);
        __syncthreads();
        if (pr) pr[4] = now_ns();
        if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(P.bar) : "memory");
    }
}

// The register-ring kernel with the products on tensor cores: a unit is 8 rows x 32 columns (lane
// gid, tig loads 16 bytes of row gid at column 8 tig), which is the B operand of two m16n8k16
// MMAs once the 16 k slots of each are mapped to columns 8 tig + 0..3 and 8 tig + 4..7; A is x
// in every row, read as 16 bytes per lane. No conversions and no per-unit reductions.
__device__ __forceinline__ void mma16816(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <int NW, int U, bool TILED>
__global__ void __launch_bounds__(32 * NW, 1) mma_kernel(const Params P) {
    extern __shared__ __align__(1024) unsigned char sm[];
    uint16_t *xs = (uint16_t *)sm;
    float *racc = (float *)(xs + P.maxk);
    const int G = gridDim.x, b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    for (int s = 0; s < P.nst; s++) {
        const Stage S = P.st[s];
        int r0, r1;
        rows_of(S.n, b, G, r0, r1);
        const int nr = r1 - r0, k = S.k, KC = k / 32;
        const int noct = (nr + 7) / 8, nu = noct * KC;
        const int u0 = (int)((long long)nu * warp / NW), u1 = (int)((long long)nu * (warp + 1) / NW);
        // this lane's pointer for unit u: row r0 + 8 (u / KC) + gid, column 32 (u % KC) + 8 tig
        auto addr = [&](int u) -> const uint4 * {
            // TILED: the weights as if stored unit by unit (512 contiguous bytes per unit; timing
            // only, the products then do not match the row-major check)
            if (TILED) return (const uint4 *)(S.w + (size_t)r0 * k) + (size_t)u * 32 + lane;
            const int oct = u / KC, kc = u - oct * KC;
            const int row = oct * 8 + gid;
            return row < nr ? (const uint4 *)(S.w + (size_t)(r0 + row) * k + kc * 32 + tig * 8) : nullptr;
        };
        uint4 ring[U];
#pragma unroll
        for (int q = 0; q < U; q++) {
            const uint4 *a = u0 + q < u1 ? addr(u0 + q) : nullptr;
            ring[q] = a ? ldnc(a) : make_uint4(0, 0, 0, 0);
        }
        grid_wait(P, s);
        stage_x(S.in, xs, k, threadIdx.x, 32 * NW);
        for (int i = threadIdx.x; i < nr; i += 32 * NW) racc[i] = 0.0f;
        __syncthreads();
        int oct = u0 / KC, kc = u0 - oct * KC;
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int u = u0; u < u1; u += U) {
#pragma unroll
            for (int q = 0; q < U; q++) {
                if (u + q < u1) {
                    const uint4 xv = *(const uint4 *)(xs + kc * 32 + tig * 8);
                    mma16816(c, xv.x, xv.x, xv.y, xv.y, ring[q].x, ring[q].y);
                    mma16816(c, xv.z, xv.z, xv.w, xv.w, ring[q].z, ring[q].w);
                    const uint4 *a = u + q + U < u1 ? addr(u + q + U) : nullptr;
                    ring[q] = a ? ldnc(a) : make_uint4(0, 0, 0, 0);
                    if (++kc == KC) {
                        if (gid == 0) {
                            const int rr = oct * 8 + 2 * tig;
                            if (rr < nr) atomicAdd(&racc[rr], c[0]);
                            if (rr + 1 < nr) atomicAdd(&racc[rr + 1], c[1]);
                        }
                        c[0] = c[1] = c[2] = c[3] = 0.0f;
                        kc = 0;
                        oct++;
                    }
                }
            }
        }
        if (kc != 0 && gid == 0) {
            const int rr = oct * 8 + 2 * tig;
            if (rr < nr) atomicAdd(&racc[rr], c[0]);
            if (rr + 1 < nr) atomicAdd(&racc[rr + 1], c[1]);
        }
        __syncthreads();
        for (int i = threadIdx.x; i < nr; i += 32 * NW) __stcg(S.out + r0 + i, racc[i]);
        grid_arrive(P);
    }
}

// Rows handed out at run time: each warp claims RC rows at a time from the stage's counter
// (claimed one chunk ahead, so the claim's round trip overlaps the products) and writes each
// finished row itself; no static split, so no block waits for a slower multiprocessor's share.
template <int NW, int U, int RC>
__global__ void __launch_bounds__(32 * NW, 1) dyn_kernel(const Params P) {
    extern __shared__ __align__(1024) unsigned char sm[];
    uint16_t *xs = (uint16_t *)sm;
    const int lane = threadIdx.x & 31;
    for (int s = 0; s < P.nst; s++) {
        const Stage S = P.st[s];
        const int k = S.k, KU = k / 256, nch = (S.n + RC - 1) / RC;
        unsigned *ctr = P.ctr + s;
        auto claim = [&]() -> int {
            int c = 0;
            if (lane == 0) c = (int)atomicAdd(ctr, 1u);
            return __shfl_sync(0xffffffffu, c, 0);
        };
        // loader: chunk lc, unit lu (of RC * KU); next chunk ln claimed ahead
        int lc = claim(), ln = claim(), lu = 0;
        auto next_load = [&]() -> uint4 {
            uint4 v = make_uint4(0, 0, 0, 0);
            if (lc < nch) {
                const int row = lc * RC + lu / KU;
                if (row < S.n) v = ldnc(S.w + (size_t)row * k + (lu % KU) * 256 + lane * 8);
                if (++lu == RC * KU) {
                    lu = 0;
                    lc = ln;
                    ln = lc < nch ? claim() : nch;
                }
            }
            return v;
        };
        uint4 ring[U];
        int cc = lc, cu = 0; // consumer: chunk, unit
#pragma unroll
        for (int q = 0; q < U; q++) ring[q] = next_load();
        grid_wait(P, s);
        stage_x(S.in, xs, k, threadIdx.x, 32 * NW);
        __syncthreads();
        // the consumer's chunk sequence is the loader's, U units behind: keep the chunks claimed
        // since in a small queue (chunks are at least U units long, so two are enough)
        int qn = -1; // the chunk after cc, once the loader has moved past cc
        float acc = 0.0f;
        int lcs = lc; // loader chunk seen
        while (cc < nch) {
#pragma unroll
            for (int q = 0; q < U; q++) {
                if (cc < nch) {
                    acc += dot8(ring[q], *(const uint4 *)(xs + (cu % KU) * 256 + lane * 8));
                    ring[q] = next_load();
                    if (lc != lcs) { // the loader entered a new chunk
                        if (qn < 0) qn = lc;
                        lcs = lc;
                    }
                    if (++cu % KU == 0) {
#pragma unroll
                        for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
                        const int row = cc * RC + cu / KU - 1;
                        if (lane == 0 && row < S.n) __stcg(S.out + row, acc);
                        acc = 0.0f;
                        if (cu == RC * KU) {
                            cu = 0;
                            cc = qn < 0 ? nch : qn;
                            qn = lc != cc ? lc : -1;
                        }
                    }
                }
            }
        }
        grid_arrive(P);
    }
}

// A static split with a dynamic tail: the first (100 - PCT)% of a stage's rows are split over the
// blocks as in direct_kernel, the last PCT% are handed out one row at a time from the stage's
// counter. Each warp streams its static units, then claimed rows, through one register ring; a
// claim is issued one row ahead and its result read only when the loader reaches that row, so the
// atomic's round trip overlaps the loads (dyn_kernel reads its claim at once and stalls on it).
// Each ring slot carries its unit's row and column, so the products need no queue of segments.
// SPLIT: one counter per stage and warp index (each on its own 128-byte line, ctr sized
// nst x NW x 32); warp w of every block claims the tail rows ns + d NW + w, so 132 claimants share
// an address instead of 2112 (the sixteenth session's one counter serialized them).
template <int NW, int U, int PCT, bool SPLIT = false>
__global__ void __launch_bounds__(32 * NW, 1) steal_kernel(const Params P) {
    extern __shared__ __align__(1024) unsigned char sm[];
    uint16_t *xs = (uint16_t *)sm;
    float *racc = (float *)(xs + P.maxk);
    const int G = gridDim.x, b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int s = 0; s < P.nst; s++) {
        const Stage S = P.st[s];
        const int k = S.k, ku = k / 256;
        const int nd = (int)((long long)S.n * PCT / 100), ns = S.n - nd;
        int r0, r1;
        rows_of(ns, b, G, r0, r1);
        const int nr = r1 - r0, ng = nr * ku;
        const int g0 = (int)((long long)ng * warp / NW), g1 = (int)((long long)ng * (warp + 1) / NW);
        int lrow = r0 + g0 / ku, lcu = g0 % ku, lrem = g1 - g0; // loader position, units left in segment
        unsigned *const cp = SPLIT ? P.ctr + ((size_t)s * NW + warp) * 32 : P.ctr + s;
        int claim_raw = 0;
        if (lane == 0 && nd > 0) claim_raw = (int)atomicAdd(cp, 1u);
        bool done = false;
        auto next = [&](uint4 &v, int &tag) {
            if (lrem == 0 && !done) {
                const int d = __shfl_sync(0xffffffffu, claim_raw, 0);
                const long long tr = SPLIT ? (long long)d * NW + warp : d; // tail row index
                if (tr >= nd) {
                    done = true;
                } else {
                    lrow = ns + (int)tr;
                    lcu = 0;
                    lrem = ku;
                    if (lane == 0) claim_raw = (int)atomicAdd(cp, 1u);
                }
            }
            // the load always issues (a past-the-end slot reads the stage's first unit again) and
            // writes its register directly: a zero on a separate path made the register a merge,
            // and the move at the merge waited for the load (the first form of this kernel read
            // 244 tok/s with no dynamic tail at all, against 436 for direct_kernel)
            const size_t off = done ? 0 : (size_t)lrow * k * 2 + lcu * 512;
            v = ldnc((const char *)S.w + off + lane * 16);
            tag = done ? -1 : (lrow << 6) | lcu;
            if (!done) {
                lrem--;
                if (++lcu == ku) {
                    lcu = 0;
                    lrow++;
                }
            }
        };
        uint4 ring[U];
        int tag[U];
#pragma unroll
        for (int u = 0; u < U; u++) next(ring[u], tag[u]);
        unsigned long long *pr = stage_open(P, S, s, b, xs, racc, nr, 32 * NW);
        __syncthreads();
        if (pr) pr[2] = now_ns();
        float acc = 0.0f;
        int cur = -1;
        auto flush = [&]() {
            if (cur < 0) return;
#pragma unroll
            for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
            if (lane == 0) {
                if (cur < ns) atomicAdd(&racc[cur - r0], acc);
                else __stcg(S.out + cur, acc);
            }
            acc = 0.0f;
        };
        bool more = true;
        while (more) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int t = tag[u];
                if (t < 0) {
                    more = false;
                } else if (more) {
                    const int row = t >> 6, cu = t & 63;
                    if (row != cur) {
                        flush();
                        cur = row;
                    }
                    acc += dot8(ring[u], *(const uint4 *)(xs + cu * 256 + lane * 8));
                    next(ring[u], tag[u]);
                }
            }
        }
        flush();
        if (pr) pr[3] = now_ns();
        __syncthreads();
        for (int i = threadIdx.x; i < nr; i += 32 * NW) __stcg(S.out + r0 + i, racc[i]);
        __syncthreads();
        if (pr) pr[4] = now_ns();
        if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(P.bar) : "memory");
    }
}

// The products of the dynamic-tail kernels: the ring's units in order, each row's sum reduced
// at the row's end or its segment's end (static rows into racc; claimed rows into out, stored
// where one warp owns the row, added where warps share it); enter() moves the cursor on.
struct Cursor {
    int ce, cend, row, cc; // unit, end of its segment, its row and unit in the row
    bool cstatic, cdone;
};
template <int U, bool ADD_TAIL, class Next, class Enter>
__device__ __forceinline__ void consume(uint4 (&ring)[U], Cursor &c, const uint16_t *xs, float *racc, int r0,
                                        float *out, int ku, int lane, Next &next, Enter &enter) {
    float acc = 0.0f;
    while (!c.cdone) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (!c.cdone) {
                acc += dot8(ring[u], *(const uint4 *)(xs + c.cc * 256 + lane * 8));
                next(ring[u]);
                ++c.ce;
                if (++c.cc == ku || c.ce == c.cend) {
#pragma unroll
                    for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
                    if (lane == 0) {
                        if (c.cstatic) atomicAdd(&racc[c.row - r0], acc);
                        else if (ADD_TAIL) atomicAdd(out + c.row, acc);
                        else __stcg(out + c.row, acc);
                    }
                    acc = 0.0f;
                    if (c.cc == ku) {
                        c.cc = 0;
                        c.row++;
                    }
                    if (c.ce == c.cend) enter(c);
                }
            }
        }
    }
}

// The loader of the dynamic-tail kernels: the next unit of the warp's current segment (zeros
// once done); at a segment's end, enter(l) sets the next one or l.ldone. The load always writes
// its register directly (a zero on a separate path made the register a merge, and the move at
// the merge waited for the load).
struct Segment {
    int le, lend; // next unit, end of the segment
    bool ldone;
};
template <class Enter>
__device__ __forceinline__ uint4 load_unit(Segment &l, const char *wl, Enter &enter) {
    if (l.le == l.lend && !l.ldone) enter(l); // warp-uniform
    const uint4 v = l.le < l.lend ? ldnc(wl + (size_t)l.le * 512) : make_uint4(0, 0, 0, 0);
    l.le += l.le < l.lend;
    return v;
}

// The dynamic tail with direct_kernel's loop: a warp's work is a run of segments of contiguous
// units (its static share, then claimed rows), the loader walks them through the register ring
// with one pointer and a count and the consumer follows with a row and a unit-in-row, so the hot
// path costs what direct_kernel's does. Tail rows ns + d NW + w come from the counter of warp
// index w (ctr: a 128-byte line per stage and warp index); a claim is issued when the loader
// enters a segment and read (shuffled) when it leaves it. steal_kernel's per-unit tags, branches
// and merges cost ~45% of the rate with no tail at all (its PCT 0 read 222-244 tok/s against 436).
template <int NW, int U, int PCT>
__global__ void __launch_bounds__(32 * NW, 1) tail_kernel(const Params P) {
    extern __shared__ __align__(1024) unsigned char sm[];
    uint16_t *xs = (uint16_t *)sm;
    float *racc = (float *)(xs + P.maxk);
    const int G = gridDim.x, b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int s = 0; s < P.nst; s++) {
        const Stage S = P.st[s];
        const int k = S.k, ku = k / 256;
        const int nd = PCT ? (int)((long long)S.n * PCT / 100) : 0, ns = S.n - nd;
        int r0, r1;
        rows_of(ns, b, G, r0, r1);
        const int nr = r1 - r0, ng = nr * ku;
        const int g0 = (int)((long long)ng * warp / NW), g1 = (int)((long long)ng * (warp + 1) / NW);
        const char *wl = (const char *)S.w + lane * 16;
        unsigned *const cp = P.ctr + ((size_t)s * NW + warp) * 32;
        int claim = 0;
        if (PCT && lane == 0) claim = (int)atomicAdd(cp, 1u);
        Segment seg = {r0 * ku + g0, r0 * ku + g1, PCT == 0};
        int qrow = -1; // first row of the segment the loader entered last
        auto claim_row = [&](Segment &l) {
            const int d = __shfl_sync(0xffffffffu, claim, 0);
            const int tr = d * NW + warp;
            if (tr < nd) {
                qrow = ns + tr;
                l.le = qrow * ku;
                l.lend = l.le + ku;
                if (lane == 0) claim = (int)atomicAdd(cp, 1u);
            } else {
                l.ldone = true;
            }
        };
        auto next = [&](uint4 &v) { v = load_unit(seg, wl, claim_row); };
        uint4 ring[U];
        Cursor c = {r0 * ku + g0, r0 * ku + g1, r0 + g0 / ku, g0 % ku, true, false};
        c.cdone = c.ce == c.cend; // no static share: the first claimed row (taken below, after the loads)
#pragma unroll
        for (int u = 0; u < U; u++) next(ring[u]);
        auto enter = [&](Cursor &c) { // the row the loader claimed next, or the end
            if (qrow >= 0) {
                c = {qrow * ku, qrow * ku + ku, qrow, 0, false, false};
                qrow = -1;
            } else {
                c.cdone = true;
            }
        };
        if (c.cdone) enter(c);
        unsigned long long *pr = stage_open(P, S, s, b, xs, racc, nr, 32 * NW);
        __syncthreads();
        if (pr) pr[2] = now_ns();
        consume<U, false>(ring, c, xs, racc, r0, S.out, ku, lane, next, enter);
        stage_close(P, S, pr, racc, r0, nr, 32 * NW);
    }
}

// Dynamic tails claimed per block: the tail (the last nd rows, whole chunks of CU units) is cut
// into chunks; warp w of a block takes units [w SU, (w + 1) SU) of each chunk the block claims
// (SU = CU / NW; a slice that crosses a row adds to both) and adds its slices' sums to the rows
// with global atomics (the tail rows start at zero: each stage writes its own buffer, zeroed
// before the launch). An extra warp claims: its lane 0 keeps eight claims in flight (blocks use
// counter b % NCTR, which hands out chunks d NCTR + b % NCTR) and publishes chunk ids in shared
// memory, tagged with the stage and the block's chunk number, LEAD chunks ahead of warp 0's
// loader (which writes the chunk number it entered there). The first version, `btail_kernel`
// (warp 0's lane 0 claiming and publishing inside the ring's loop: 68 KB of code against 39),
// is in the history at commit 94057d7 (the `btail` mode of 6b0acc2 times both).
template <int NW, int U, int PCT, int CU>
__global__ void __launch_bounds__(32 * (NW + 1), 1) btail2_kernel(const Params P) {
    constexpr int SU = CU / NW, QN = 128, NCTR = 8, LEAD = 6;
    extern __shared__ __align__(1024) unsigned char sm[];
    uint16_t *xs = (uint16_t *)sm;
    float *racc = (float *)(xs + P.maxk);
    volatile unsigned long long *cq = (volatile unsigned long long *)(racc + P.maxrows); // [QN]
    volatile int *prog = (volatile int *)(cq + QN);                                      // warp 0's chunk
    const int G = gridDim.x, b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int NT = 32 * NW; // worker threads
    for (int s = 0; s < P.nst; s++) {
        const Stage S = P.st[s];
        const int k = S.k, ku = k / 256;
        // nd: whole chunks of CU units (CU = 2 NW; ku is even)
        const int nd = PCT ? (int)((long long)S.n * PCT / 100) / (8 * NW) * (8 * NW) : 0, ns = S.n - nd;
        const int T0 = ns * ku, nch = nd * ku / CU;
        const unsigned long long tag0 = (unsigned long long)(s + 1) << 40;
        int r0, r1;
        rows_of(ns, b, G, r0, r1);
        const int nr = r1 - r0;
        if (warp == NW) { // the claimer
            unsigned *const cp = P.ctr + ((size_t)s * NCTR + b % NCTR) * 32;
            unsigned c[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (PCT && lane == 0)
#pragma unroll
                for (int j = 0; j < 8; j++) c[j] = atomicAdd(cp, 1u);
            if (s > 0) __syncthreads(); // grid_wait's
            __syncthreads();            // input staged
            if (PCT && lane == 0) {
                for (int pub = 0;; pub++) {
                    if (pub >= LEAD)
                        while (*prog < pub - LEAD) {
                        }
                    const unsigned long long id = (unsigned long long)c[0] * NCTR + b % NCTR;
                    const bool none = id >= (unsigned long long)nch;
                    cq[pub % QN] = tag0 | ((unsigned long long)pub << 24) | (none ? 0xffffffull : id);
                    if (none) break; // the counter only grows: every later claim is past the end too
#pragma unroll
                    for (int j = 0; j < 7; j++) c[j] = c[j + 1];
                    c[7] = atomicAdd(cp, 1u);
                }
            }
            __syncthreads(); // products done
            __syncthreads(); // outputs stored
            if (threadIdx.x == NT) *prog = -1000000;
            continue;
        }
        const int ng = nr * ku;
        const int g0 = (int)((long long)ng * warp / NW), g1 = (int)((long long)ng * (warp + 1) / NW);
        const char *wl = (const char *)S.w + lane * 16;
        auto chunk_id = [&](int i) -> int {
            const unsigned long long want = tag0 | ((unsigned long long)i << 24);
            unsigned long long v;
            do {
                v = cq[i % QN];
            } while ((v & ~0xffffffull) != want);
            const int id = (int)(v & 0xffffff);
            return id == 0xffffff ? nch : id;
        };
        Segment seg = {r0 * ku + g0, r0 * ku + g1, PCT == 0};
        int lci = 0; // the loader's next chunk number
        auto next_chunk = [&](Segment &l) {
            if (warp == 0 && lane == 0) *prog = lci;
            const int id = chunk_id(lci++);
            if (id < nch) {
                l.le = T0 + id * CU + warp * SU;
                l.lend = l.le + SU;
            } else {
                l.ldone = true;
            }
        };
        auto next = [&](uint4 &v) { v = load_unit(seg, wl, next_chunk); };
        uint4 ring[U];
        Cursor c = {r0 * ku + g0, r0 * ku + g1, r0 + g0 / ku, g0 % ku, true, false};
        c.cdone = PCT == 0 && c.ce == c.cend;
        int cci = 0;
        auto enter = [&](Cursor &c) {
            const int id = PCT ? chunk_id(cci++) : nch;
            if (id < nch) {
                c.ce = T0 + id * CU + warp * SU;
                c.cend = c.ce + SU;
                c.row = c.ce / ku;
                c.cc = c.ce - c.row * ku;
                c.cstatic = false;
            } else {
                c.cdone = true;
            }
        };
        // the first U loads may need the first chunk ids: those are published after the staging,
        // so a warp whose static share is shorter than U issues only its static loads here
        const int pre = min(U, g1 - g0);
#pragma unroll
        for (int u = 0; u < U; u++)
            if (u < pre) next(ring[u]);
        grid_wait(P, s);
        stage_x(S.in, xs, S.k, threadIdx.x, NT);
        for (int i = threadIdx.x; i < nr; i += NT) racc[i] = 0.0f;
        __syncthreads();
#pragma unroll
        for (int u = 0; u < U; u++)
            if (u >= pre) next(ring[u]);
        if (c.ce == c.cend && !c.cdone) enter(c);
        consume<U, true>(ring, c, xs, racc, r0, S.out, ku, lane, next, enter);
        __syncthreads();
        for (int i = threadIdx.x; i < nr; i += NT) __stcg(S.out + r0 + i, racc[i]);
        __syncthreads();
        if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(P.bar) : "memory");
    }
}

// plain read probe: every 16-byte chunk once, 8 loads in flight per thread
__global__ void read_probe(const uint4 *a, size_t n, unsigned *sink) {
    unsigned x = 0;
    const size_t T = (size_t)gridDim.x * blockDim.x;
    for (size_t i0 = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i0 < n; i0 += 8 * T) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const size_t i = i0 + u * T;
            if (i < n) asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w) : "l"(a + i));
            else v[u] = make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 8; u++) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (x == 0x12345678u) *sink = x;
}

__global__ void fill(uint16_t *w, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
        const float f = ((int)(h & 0xffff) - 32768) * (1.0f / 32768.0f) * 0.05f;
        w[i] = __bfloat16_as_ushort(__float2bfloat16(f));
    }
}

// CPU check of one stage's output for block-row samples (fp64 over the same staged inputs)
static double check_stage(const Stage &S_h, const std::vector<float> &in_prev, const std::vector<float> &out_dev,
                          const uint16_t *w_dev) {
    std::vector<uint16_t> row(S_h.k);
    double worst = 0;
    for (int t = 0; t < 16; t++) {
        const int r = (int)((long long)S_h.n * t / 16 + t * 7) % S_h.n;
        CK(cudaMemcpy(row.data(), w_dev + (size_t)r * S_h.k, S_h.k * 2, cudaMemcpyDeviceToHost));
        double ref = 0, mag = 0;
        for (int c = 0; c < S_h.k; c++) {
            uint32_t u = (uint32_t)row[c] << 16;
            float wf;
            memcpy(&wf, &u, 4);
            const float v = in_prev[c], x = __bfloat162float(__float2bfloat16(v / (1.0f + fabsf(v))));
            ref += (double)wf * x;
            mag += fabs((double)wf * x);
        }
        const double err = fabs(ref - out_dev[r]) / (mag + 1e-30);
        if (err > worst) worst = err;
    }
    return worst;
}

struct Shape { int n, k; };

// stages reading consecutive matrices of W with these shapes, each stage's input the previous
// one's output (two activation buffers of maxn floats, alternating); *used: elements of W used
static std::vector<Stage> chain_of(const std::vector<Shape> &sh, const uint16_t *W, float *act, int maxn, size_t *used) {
    std::vector<Stage> v;
    size_t o = 0;
    for (size_t i = 0; i < sh.size(); i++) {
        Stage s;
        s.w = W + o;
        o += (size_t)sh[i].n * sh[i].k;
        s.n = sh[i].n;
        s.k = sh[i].k;
        s.in = act + (i % 2) * maxn;
        s.out = act + ((i + 1) % 2) * maxn;
        v.push_back(s);
    }
    *used = o;
    return v;
}

// one timed cooperative launch of direct_kernel<16, 8> (barrier counter reset first), ms
static float timed_direct(Params P, int sms, size_t smem, cudaEvent_t e0, cudaEvent_t e1) {
    void *args[] = {(void *)&P};
    CK(cudaMemset(P.bar, 0, 8));
    CK(cudaEventRecord(e0));
    CK(cudaLaunchCooperativeKernel((void *)direct_kernel<16, 8>, dim3(sms), dim3(512), args, smem, 0));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    return ms;
}

int main(int argc, char **argv) {
    const int layers = argc > 1 ? atoi(argv[1]) : 36;
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs\n", prop.name, sms);
    const int H = 2560, QKV = 6144, QO = 4096, I = 9728, V = 151936;
    std::vector<Shape> shapes;
    for (int l = 0; l < layers; l++) {
        shapes.push_back({QKV, H});
        shapes.push_back({H, QO});
        shapes.push_back({2 * I, H});
        shapes.push_back({H, I});
    }
    shapes.push_back({V, H});
    size_t total = 0;
    for (auto &s : shapes) total += (size_t)s.n * s.k;
    uint16_t *W;
    CK(cudaMalloc(&W, total * 2));
    fill<<<4 * sms, 512>>>(W, total, 1234u);
    float *act;
    const int maxn = std::max(V, layers * 39424); // the "curve" mode's single stage of every layer
    CK(cudaMalloc(&act, sizeof(float) * (size_t)maxn * 2));
    std::vector<float> h0(maxn);
    for (int i = 0; i < maxn; i++) h0[i] = (float)((i * 37 % 101) - 50) * 0.02f;
    CK(cudaMemcpy(act, h0.data(), sizeof(float) * maxn, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(act + maxn, h0.data(), sizeof(float) * maxn, cudaMemcpyHostToDevice));
    size_t off = 0;
    const std::vector<Stage> st = chain_of(shapes, W, act, maxn, &off);
    Stage *st_d;
    CK(cudaMalloc(&st_d, sizeof(Stage) * st.size()));
    CK(cudaMemcpy(st_d, st.data(), sizeof(Stage) * st.size(), cudaMemcpyHostToDevice));
    unsigned long long *bar;
    CK(cudaMalloc(&bar, 8));
    unsigned *sink;
    CK(cudaMalloc(&sink, 4));
    unsigned *ctr;
    const size_t nctr = st.size() * 16 * 32; // steal_kernel<.., SPLIT>: a line per stage and warp
    CK(cudaMalloc(&ctr, 4 * nctr));
    CK(cudaDeviceSynchronize());
    const double gb = total * 2.0 / 1e9;
    printf("weights per token %.3f GB, %zu stages\n", gb, st.size());

    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    // read probe over the same bytes
    float best_probe = 1e30f;
    for (int r = 0; r < 5; r++) {
        CK(cudaEventRecord(e0));
        read_probe<<<4 * sms, 512>>>((const uint4 *)W, total * 2 / 16, sink);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (ms < best_probe) best_probe = ms;
    }
    const double probe_bw = gb / (best_probe / 1e3);
    printf("read probe: %.3f ms, %.0f GB/s\n", best_probe, probe_bw);

    if (argc > 2 && strcmp(argv[2], "l2pf") == 0) {
        // The register ring with an L2 bulk prefetch of each warp's next bytes issued before the
        // barrier wait (pf bytes per warp), alone or kept pf ahead of the loads (pfd); alternating
        const int pfs[][2] = {{0, 0}, {2048, 0}, {4096, 0}, {8192, 0}, {16384, 0}, {4096, 1}, {16384, 1}};
        const int nv = sizeof(pfs) / sizeof(pfs[0]);
        const int maxrows = ((V + sms - 1) / sms + 4) / 4 * 4;
        const size_t smem = 2 * (size_t)I + 4 * (size_t)maxrows + 64;
        CK(cudaFuncSetAttribute(direct_kernel<16, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        std::vector<float> best(nv, 1e30f);
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < nv; c++) {
                Params P;
                P.st = st_d; P.nst = (int)st.size(); P.slot = 0; P.nslot = 0; P.gate = 8; P.bar = bar; P.maxk = I;
                P.maxrows = maxrows; P.prof = nullptr; P.ctr = ctr;
                P.pre = nullptr; P.rank_of_sm = nullptr; P.tl = nullptr; P.smid = nullptr;
                P.pf = pfs[c][0]; P.pfd = pfs[c][1];
                for (int q = 0; q < 3; q++) best[c] = std::min(best[c], timed_direct(P, sms, smem, e0, e1));
            }
        printf("\n| L2 prefetch per warp | kept ahead | ms/token | tok/s | of probe |\n|---|---|---|---|---|\n");
        for (int c = 0; c < nv; c++)
            printf("| %d KB | %s | %.3f | %.1f | %.1f%% |\n", pfs[c][0] / 1024, pfs[c][1] ? "yes" : "no", best[c], 1e3 / best[c],
                   100.0 * (gb / (best[c] / 1e3)) / probe_bw);
        return 0;
    }
    if (argc > 2 && strcmp(argv[2], "curve") == 0) {
        // The same bytes cut into fewer stages: 4 per layer (the real dependencies), 2 (q/k/v with
        // o, gate/up with down: what split-K folding would leave), 1, and one stage for all layers;
        // the LM head stays its own stage. Rows of 2560 elements in the merged stages (timing only).
        const int cfgs[4] = {4, 2, 1, 0};
        std::vector<Stage *> devs(4);
        std::vector<int> nsts(4);
        for (int c = 0; c < 4; c++) {
            std::vector<Shape> sh;
            if (cfgs[c] == 4) sh.assign(shapes.begin(), shapes.end() - 1);
            else if (cfgs[c] == 2) for (int l = 0; l < layers; l++) { sh.push_back({10240, H}); sh.push_back({29184, H}); }
            else if (cfgs[c] == 1) for (int l = 0; l < layers; l++) sh.push_back({39424, H});
            else sh.push_back({39424 * layers, H});
            sh.push_back({V, H});
            size_t o2 = 0;
            const std::vector<Stage> v = chain_of(sh, W, act, maxn, &o2);
            if (o2 != total) { printf("curve: bytes differ\n"); return 1; }
            CK(cudaMalloc(&devs[c], sizeof(Stage) * v.size()));
            CK(cudaMemcpy(devs[c], v.data(), sizeof(Stage) * v.size(), cudaMemcpyHostToDevice));
            nsts[c] = (int)v.size();
        }
        const int maxrows = ((39424 * layers + sms - 1) / sms + 4) / 4 * 4;
        const size_t smem = 2 * (size_t)I + 4 * (size_t)maxrows + 64;
        CK(cudaFuncSetAttribute(direct_kernel<16, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        auto launch = [&](int c) -> float {
            Params P;
            P.st = devs[c]; P.nst = nsts[c]; P.slot = 0; P.nslot = 0; P.gate = 8; P.bar = bar; P.maxk = I;
            P.maxrows = maxrows; P.prof = nullptr; P.ctr = ctr;
            P.pre = nullptr; P.rank_of_sm = nullptr; P.tl = nullptr; P.smid = nullptr;
            return timed_direct(P, sms, smem, e0, e1);
        };
        std::vector<float> best(4, 1e30f);
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) {
                launch(c);
                for (int q = 0; q < 3; q++) best[c] = std::min(best[c], launch(c));
            }
        printf("\n| stages per layer | grid barriers per token | ms/token | tok/s | of probe | us per barrier over the single stage |\n|---|---|---|---|---|---|\n");
        for (int c = 0; c < 4; c++)
            printf("| %d | %d | %.3f | %.1f | %.1f%% | %.2f |\n", cfgs[c], nsts[c] - 1, best[c], 1e3 / best[c],
                   100.0 * (gb / (best[c] / 1e3)) / probe_bw, nsts[c] > 2 ? (best[c] - best[3]) * 1e3 / (nsts[c] - 2) : 0.0);
        return 0;
    }
    if (argc > 2 && strcmp(argv[2], "balance") == 0) {
        // Row shares per multiprocessor from measured finish times: is a slow block slow because of
        // its SM (then a static split by SM can even out the stages' ends) or at random?
        const int nst = (int)st.size();
        unsigned long long *tl;
        int *smid_d, *rank_d;
        float *pre_d;
        CK(cudaMalloc(&tl, 8 * (size_t)sms * nst * 2));
        CK(cudaMalloc(&smid_d, 4 * sms));
        CK(cudaMalloc(&rank_d, 4 * 1024));
        CK(cudaMalloc(&pre_d, 4 * (sms + 1)));
        Params P;
        P.st = st_d; P.nst = nst; P.slot = 0; P.nslot = 0; P.gate = 8; P.bar = bar; P.maxk = I;
        P.maxrows = ((V + sms - 1) / sms * 3 / 2 + 4) / 4 * 4; P.prof = nullptr; P.ctr = ctr;
        P.pre = nullptr; P.rank_of_sm = rank_d; P.tl = tl; P.smid = smid_d;
        const size_t smem = 2 * (size_t)P.maxk + 4 * (size_t)P.maxrows + 64;
        CK(cudaFuncSetAttribute(direct_kernel<16, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        std::vector<double> w(sms, 1.0), prev_e;
        std::vector<int> rank(1024, 0);
        std::vector<unsigned long long> h((size_t)sms * nst * 2);
        std::vector<int> sid(sms);
        auto launch = [&](bool weighted, bool record) -> float {
            Params Q = P;
            Q.pre = weighted ? pre_d : nullptr;
            Q.tl = record ? tl : nullptr;
            return timed_direct(Q, sms, smem, e0, e1);
        };
        auto set_pre = [&]() {
            std::vector<float> pre(sms + 1);
            double tot = 0;
            for (double x : w) tot += x;
            double c = 0;
            pre[0] = 0.0f;
            for (int i = 0; i < sms; i++) { c += w[i]; pre[i + 1] = (float)(c / tot); }
            pre[sms] = 1.0f;
            CK(cudaMemcpy(pre_d, pre.data(), 4 * (sms + 1), cudaMemcpyHostToDevice));
        };
        // ranks: the order of the blocks of a first launch
        launch(false, true);
        CK(cudaMemcpy(sid.data(), smid_d, 4 * sms, cudaMemcpyDeviceToHost));
        for (int b = 0; b < sms; b++) rank[sid[b]] = b;
        CK(cudaMemcpy(rank_d, rank.data(), 4 * 1024, cudaMemcpyHostToDevice));
        set_pre();
        printf("\n| iteration | shares | ms/token (best of 3) | of probe | mean over stages of (last - mean) finish, us | max share / min share | corr with previous |\n|---|---|---|---|---|---|---|\n");
        for (int it = 0; it < 9; it++) {
            const bool weighted = it >= 2 && it < 8;
            float best = 1e30f;
            for (int r = 0; r < 3; r++) best = std::min(best, launch(weighted, false));
            launch(weighted, true);
            CK(cudaMemcpy(h.data(), tl, 8 * h.size(), cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(sid.data(), smid_d, 4 * sms, cudaMemcpyDeviceToHost));
            std::vector<double> e(sms, 0.0); // by rank: summed finish offsets
            double tail = 0;
            for (int s2 = 1; s2 < nst; s2++) {
                unsigned long long open0 = ~0ull;
                for (int b = 0; b < sms; b++) open0 = std::min(open0, h[((size_t)b * nst + s2) * 2]);
                double mean = 0, mx = 0;
                for (int b = 0; b < sms; b++) {
                    const double f = (h[((size_t)b * nst + s2) * 2 + 1] - open0) / 1e3;
                    e[rank[sid[b]]] += f;
                    mean += f / sms;
                    mx = std::max(mx, f);
                }
                tail += (mx - mean) / (nst - 1);
            }
            double corr = 0;
            if (!prev_e.empty()) {
                double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
                for (int i = 0; i < sms; i++) { ma += e[i] / sms; mb += prev_e[i] / sms; }
                for (int i = 0; i < sms; i++) { sab += (e[i] - ma) * (prev_e[i] - mb); saa += (e[i] - ma) * (e[i] - ma); sbb += (prev_e[i] - mb) * (prev_e[i] - mb); }
                corr = sab / sqrt(saa * sbb + 1e-30);
            }
            prev_e = e;
            double wmax = 0, wmin = 1e30;
            for (double x : w) { wmax = std::max(wmax, x); wmin = std::min(wmin, x); }
            printf("| %d | %s | %.3f | %.1f%% | %.2f | %.3f | %.2f |\n", it, weighted ? "measured" : "even", best,
                   100.0 * (gb / (best / 1e3)) / probe_bw, tail, weighted ? wmax / wmin : 1.0, corr);
            if (it >= 1 && it < 7) { // new shares from this run's finish offsets (even runs: from scratch)
                double me = 0;
                for (double x : e) me += x / sms;
                for (int i = 0; i < sms; i++) w[i] *= pow(me / e[i], 0.7);
                set_pre();
            }
        }
        // alternate even and measured shares
        for (int r = 0; r < 3; r++) {
            float be = 1e30f, bm = 1e30f;
            for (int q = 0; q < 3; q++) { be = std::min(be, launch(false, false)); bm = std::min(bm, launch(true, false)); }
            printf("alternating round %d: even %.3f ms (%.1f tok/s), measured shares %.3f ms (%.1f tok/s)\n", r, be, 1e3 / be, bm, 1e3 / bm);
        }
        { // the last stage (LM head) of the weighted split is right
            launch(true, false);
            const Stage &L = st.back();
            std::vector<float> in_prev(L.k), out(L.n);
            CK(cudaMemcpy(in_prev.data(), L.in, 4 * (size_t)L.k, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(out.data(), L.out, 4 * (size_t)L.n, cudaMemcpyDeviceToHost));
            printf("weighted split LM head check %.1e\n", check_stage(L, in_prev, out, L.w));
        }
        return 0;
    }
    if (argc > 2 && strcmp(argv[2], "btail") == 0) {
        // btail2_kernel (dynamic tails claimed per block) against direct_kernel, both on a chain
        // whose stages write their own buffers (zeroed before every launch), alternating
        const int nst = (int)st.size();
        float *acts;
        CK(cudaMalloc(&acts, sizeof(float) * (size_t)maxn * (nst + 1)));
        std::vector<Stage> sb = st;
        for (int i = 0; i < nst; i++) {
            sb[i].in = acts + (size_t)i * maxn;
            sb[i].out = acts + (size_t)(i + 1) * maxn;
        }
        CK(cudaMemcpy(acts, h0.data(), sizeof(float) * maxn, cudaMemcpyHostToDevice));
        Stage *sb_d;
        CK(cudaMalloc(&sb_d, sizeof(Stage) * nst));
        CK(cudaMemcpy(sb_d, sb.data(), sizeof(Stage) * nst, cudaMemcpyHostToDevice));
        struct BV { const char *name; void (*k)(const Params); int threads; };
        const BV bvs[] = {{"direct_kernel", direct_kernel<16, 8>, 512},
                          {"direct_kernel, 15 warps", direct_kernel<15, 8>, 480},
                          {"btail2 (15 workers + claimer) 0%", btail2_kernel<15, 8, 0, 30>, 512},
                          {"btail2 5%, 30-unit chunks", btail2_kernel<15, 8, 5, 30>, 512},
                          {"btail2 10%, 30-unit chunks", btail2_kernel<15, 8, 10, 30>, 512},
                          {"btail2 20%, 30-unit chunks", btail2_kernel<15, 8, 20, 30>, 512},
                          {"btail2 10%, 60-unit chunks", btail2_kernel<15, 8, 10, 60>, 512}};
        const int nb = sizeof(bvs) / sizeof(bvs[0]);
        Params P;
        P.st = sb_d; P.nst = nst; P.slot = 0; P.nslot = 0; P.gate = 8; P.bar = bar; P.maxk = I;
        P.maxrows = ((V + sms - 1) / sms + 4) / 4 * 4; P.prof = nullptr; P.ctr = ctr;
        P.pre = nullptr; P.rank_of_sm = nullptr; P.tl = nullptr; P.smid = nullptr;
        const size_t smem = 2 * (size_t)P.maxk + 4 * (size_t)P.maxrows + 8 * 128 + 64;
        for (int i = 0; i < nb; i++) CK(cudaFuncSetAttribute(bvs[i].k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        std::vector<float> best(nb, 1e30f);
        std::vector<double> chk(nb, 0);
        for (int r = 0; r < 3; r++)
            for (int i = 0; i < nb; i++)
                for (int q = 0; q < 4; q++) {
                    CK(cudaMemset(acts + maxn, 0, sizeof(float) * (size_t)maxn * nst));
                    CK(cudaMemset(bar, 0, 8));
                    CK(cudaMemset(ctr, 0, 4 * nctr));
                    void *args[] = {(void *)&P};
                    CK(cudaEventRecord(e0));
                    CK(cudaLaunchCooperativeKernel((void *)bvs[i].k, dim3(sms), dim3(bvs[i].threads), args, smem, 0));
                    CK(cudaEventRecord(e1));
                    CK(cudaEventSynchronize(e1));
                    float ms;
                    CK(cudaEventElapsedTime(&ms, e0, e1));
                    if (q > 0) best[i] = std::min(best[i], ms);
                    if (r == 0 && q == 0) { // check two stages: a layer's down and the LM head
                        for (int si : {nst - 3, nst - 1}) {
                            const Stage &L = sb[si];
                            std::vector<float> in_prev(L.k), out(L.n);
                            CK(cudaMemcpy(in_prev.data(), L.in, 4 * (size_t)L.k, cudaMemcpyDeviceToHost));
                            CK(cudaMemcpy(out.data(), L.out, 4 * (size_t)L.n, cudaMemcpyDeviceToHost));
                            chk[i] = std::max(chk[i], check_stage(L, in_prev, out, L.w));
                            // and the whole last 30% of the LM head's rows (the tail) against direct's rows: every row present
                            if (si == nst - 1) {
                                int zeros = 0;
                                for (int rr = 0; rr < L.n; rr++) zeros += out[rr] == 0.0f;
                                if (zeros > 16) printf("%s: %d zero rows in the LM head\n", bvs[i].name, zeros);
                            }
                        }
                    }
                }
        printf("\n| kernel | ms/token | tok/s | of probe | check |\n|---|---|---|---|---|\n");
        for (int i = 0; i < nb; i++)
            printf("| %s | %.3f | %.1f | %.1f%% | %.1e |\n", bvs[i].name, best[i], 1e3 / best[i], 100.0 * (gb / (best[i] / 1e3)) / probe_bw, chk[i]);
        return 0;
    }
    // ncw 0: direct_kernel<16, U = gate>; -1 / -2: mma_kernel<16, U = gate, tiled>; -3:
    // dyn_kernel<16, 8, RC = gate>
    struct Var { int ncw, slot, nslot, gate, thr = 0; };
    std::vector<Var> vars = {
        {0, 0, 0, 8},       {0, 0, 0, 6},       {0, 0, 0, 12},      {0, 0, 0, 16},      {16, 32768, 5, 0},  {16, 32768, 5, 2}, {16, 32768, 5, 1000},
        {16, 65536, 3, 1},  {16, 65536, 3, 1000}, {8, 65536, 3, 1000}, {-1, 0, 0, 8},   {-2, 0, 0, 6},
        {-3, 0, 0, 1},      {0, 0, 0, 8},
    };
    // argv[2] == "steal": the register ring against the static split with a dynamic tail
    // (ncw -4: steal_kernel<16, 8, PCT = gate>), alternating
    // argv[2] == "steal16": the dynamic tail claimed from a counter per warp index (ncw -5:
    // steal_kernel<16, 8, PCT = gate, true>), alternating
    if (argc > 2 && strcmp(argv[2], "steal16") == 0) {
        vars.clear();
        for (int r = 0; r < 3; r++)
            for (int g : {0, 1, 3, 10}) vars.push_back(g ? Var{-5, 0, 0, g} : Var{0, 0, 0, 8});
    }
    // argv[2] == "tail": tail_kernel<16, 8, PCT = gate> (ncw -6; PCT 0 must read as direct_kernel)
    if (argc > 2 && strcmp(argv[2], "tail") == 0) {
        vars.clear();
        for (int r = 0; r < 3; r++)
            for (int g : {-1, 0, 3, 6, 10, 20}) vars.push_back(g < 0 ? Var{0, 0, 0, 8} : Var{-6, 0, 0, g});
    }
    if (argc > 2 && strcmp(argv[2], "steal") == 0)
        vars = {{0, 0, 0, 8}, {-4, 0, 0, 5}, {-4, 0, 0, 10}, {-4, 0, 0, 20}, {-4, 0, 0, 100},
                {0, 0, 0, 8}, {-4, 0, 0, 5}, {-4, 0, 0, 10}, {-4, 0, 0, 20}, {-4, 0, 0, 100}};
    // argv[2] == "thr": the TMA ring whose pieces past the gate wait only until all but thr blocks
    // reached the barrier (the early blocks' run-ahead confined to the stage's tail), alternating
    if (argc > 2 && strcmp(argv[2], "thr") == 0) {
        vars.clear();
        for (int r = 0; r < 3; r++) {
            vars.push_back({0, 0, 0, 8});
            for (int t : {0, 4, 16, 48, 132}) vars.push_back({16, 65536, 3, 1, t});
            for (int t : {0, 8, 32}) vars.push_back({16, 32768, 6, 2, t});
        }
    }
    // argv[2] == "slots": the TMA ring's copy size at the same ring bytes (192 KB) and the same
    // bytes ahead of the barrier (64 KB), alternating
    if (argc > 2 && strcmp(argv[2], "slots") == 0) {
        vars.clear();
        for (int r = 0; r < 3; r++) {
            vars.push_back({0, 0, 0, 8});
            vars.push_back({16, 8192, 24, 8});
            vars.push_back({16, 16384, 12, 4});
            vars.push_back({16, 32768, 6, 2});
            vars.push_back({16, 65536, 3, 1});
        }
    }
    printf("| consumer warps | slot KB | slots | gate (pieces) | thr | ms/token | GB/s | of probe | tok/s | check |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (const Var &v : vars) {
        Params P;
        P.st = st_d;
        P.nst = (int)st.size();
        P.slot = v.slot;
        P.nslot = v.nslot;
        P.gate = v.gate;
        P.thr = v.thr;
        P.bar = bar;
        P.maxk = I;
        P.maxrows = ((V + sms - 1) / sms + 4) / 4 * 4; // keeps the mbarriers 8-byte aligned
        P.prof = nullptr;
        P.pre = nullptr; P.rank_of_sm = nullptr; P.tl = nullptr; P.smid = nullptr;
        P.ctr = ctr;
        const size_t smem = (size_t)std::max(v.nslot, 0) * v.slot + 2 * (size_t)P.maxk + 4 * (size_t)P.maxrows + 16 * v.nslot + 64;
        void (*kern)(const Params) = v.ncw == 4 ? chain_kernel<4> : v.ncw == 8 ? chain_kernel<8> : chain_kernel<16>;
        int nthreads = 32 * (v.ncw + 1);
        if (v.ncw == 0) {
            kern = v.gate == 6    ? direct_kernel<16, 6>
                   : v.gate == 12 ? direct_kernel<16, 12>
                   : v.gate == 16 ? direct_kernel<16, 16>
                                  : direct_kernel<16, 8>;
            nthreads = 512;
        } else if (v.ncw == -1) {
            kern = mma_kernel<16, 8, false>;
            nthreads = 512;
        } else if (v.ncw == -3) {
            kern = v.gate == 1 ? dyn_kernel<16, 8, 1> : v.gate == 2 ? dyn_kernel<16, 8, 2> : dyn_kernel<16, 8, 4>;
            nthreads = 512;
        } else if (v.ncw == -4) {
            kern = v.gate == 5 ? steal_kernel<16, 8, 5> : v.gate == 10 ? steal_kernel<16, 8, 10> : v.gate == 20 ? steal_kernel<16, 8, 20> : steal_kernel<16, 8, 100>;
            nthreads = 512;
        } else if (v.ncw == -6) {
            kern = v.gate == 0    ? tail_kernel<16, 8, 0>
                   : v.gate == 3  ? tail_kernel<16, 8, 3>
                   : v.gate == 6  ? tail_kernel<16, 8, 6>
                   : v.gate == 10 ? tail_kernel<16, 8, 10>
                                  : tail_kernel<16, 8, 20>;
            nthreads = 512;
        } else if (v.ncw == -5) {
            kern = v.gate == 3    ? steal_kernel<16, 8, 3, true>
                   : v.gate == 1  ? steal_kernel<16, 8, 0, true>
                   : v.gate == 6  ? steal_kernel<16, 8, 6, true>
                   : v.gate == 10 ? steal_kernel<16, 8, 10, true>
                                  : steal_kernel<16, 8, 20, true>;
            nthreads = 512;
        } else if (v.ncw == -2) {
            kern = v.gate == 6 ? mma_kernel<16, 6, true> : v.gate == 12 ? mma_kernel<16, 12, true> : v.gate == 16 ? mma_kernel<16, 16, true> : mma_kernel<16, 8, true>;
            nthreads = 512;
        }
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        void *args[] = {(void *)&P};
        float best = 1e30f;
        double chk = 0;
        for (int r = 0; r < 6; r++) {
            CK(cudaMemset(bar, 0, 8));
            CK(cudaMemset(ctr, 0, 4 * nctr));
            CK(cudaEventRecord(e0));
            CK(cudaLaunchCooperativeKernel((void *)kern, dim3(sms), dim3(nthreads), args, smem, 0));
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (r > 0 && ms < best) best = ms;
        }
        { // check the last stage (LM head) against the CPU from its input
            const Stage &L = st.back();
            std::vector<float> in_prev(L.k), out(L.n);
            CK(cudaMemcpy(in_prev.data(), L.in, 4 * (size_t)L.k, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(out.data(), L.out, 4 * (size_t)L.n, cudaMemcpyDeviceToHost));
            chk = check_stage(L, in_prev, out, L.w);
        }
        const double bw = gb / (best / 1e3);
        printf("| %d | %d | %d | %d | %d | %.3f | %.0f | %.1f%% | %.1f | %.1e |\n", v.ncw, v.slot / 1024, v.nslot, v.gate, v.thr, best, bw,
               100.0 * bw / probe_bw, 1e3 / best, chk);
    }
    if (argc > 2 && (strcmp(argv[2], "thr") == 0 || strcmp(argv[2], "slots") == 0)) return 0;
    const bool s16 = argc > 2 && strcmp(argv[2], "steal16") == 0;
    const bool tailm = argc > 2 && strcmp(argv[2], "tail") == 0;
    for (int sk = 0; sk < 2; sk++) { // stamps of the register ring (sk 0) and steal_kernel<16, 8, 10> (sk 1), layer 1 (thread 0 of every block)
        void (*kern)(const Params) =
            sk ? (tailm ? tail_kernel<16, 8, 10> : s16 ? steal_kernel<16, 8, 10, true> : steal_kernel<16, 8, 10>) : direct_kernel<16, 8>;
        unsigned long long *prof;
        CK(cudaMalloc(&prof, sizeof(unsigned long long) * sms * 20));
        Params P;
        P.st = st_d; P.nst = (int)st.size(); P.slot = 0; P.nslot = 0; P.gate = 8; P.bar = bar; P.maxk = I;
        P.maxrows = ((V + sms - 1) / sms + 4) / 4 * 4; P.prof = prof;
        P.pre = nullptr; P.rank_of_sm = nullptr; P.tl = nullptr; P.smid = nullptr;
        const size_t smem = 2 * (size_t)P.maxk + 4 * (size_t)P.maxrows + 64;
        P.ctr = ctr;
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        void *args[] = {(void *)&P};
        for (int r = 0; r < 3; r++) {
            CK(cudaMemset(bar, 0, 8));
            CK(cudaMemset(ctr, 0, 4 * nctr));
            CK(cudaLaunchCooperativeKernel((void *)kern, dim3(sms), dim3(512), args, smem, 0));
        }
        CK(cudaDeviceSynchronize());
        std::vector<unsigned long long> h((size_t)sms * 20);
        CK(cudaMemcpy(h.data(), prof, 8 * h.size(), cudaMemcpyDeviceToHost));
        const char *names[4] = {"qkv", "o", "gate/up", "down"};
        printf("\n%s, layer 1, us (mean / max over blocks): after issue->wait done | staging | weights | row sums+out\n",
               sk ? "static split + 10%% dynamic tail" : "register ring");
        for (int st4 = 0; st4 < 4; st4++) {
            double m[4] = {0, 0, 0, 0}, mx[4] = {0, 0, 0, 0};
            for (int bb = 0; bb < sms; bb++) {
                const unsigned long long *q = &h[((size_t)bb * 4 + st4) * 5];
                for (int j = 0; j < 4; j++) {
                    const double d = (q[j + 1] - q[j]) / 1e3;
                    m[j] += d / sms;
                    if (d > mx[j]) mx[j] = d;
                }
            }
            printf("%-8s %5.2f/%5.2f | %5.2f/%5.2f | %5.2f/%5.2f | %5.2f/%5.2f\n", names[st4], m[0], mx[0], m[1], mx[1], m[2], mx[2], m[3], mx[3]);
            // skew: when each block saw the barrier open (stamp 1) and finished its weights
            // (stamp 3), relative to the first block to see it open
            unsigned long long open0 = ~0ull;
            for (int bb = 0; bb < sms; bb++) open0 = std::min(open0, h[((size_t)bb * 4 + st4) * 5 + 1]);
            double o_mean = 0, o_max = 0, f_min = 1e30, f_mean = 0, f_max = 0;
            for (int bb = 0; bb < sms; bb++) {
                const double o = (h[((size_t)bb * 4 + st4) * 5 + 1] - open0) / 1e3, f = (h[((size_t)bb * 4 + st4) * 5 + 3] - open0) / 1e3;
                o_mean += o / sms; o_max = std::max(o_max, o);
                f_mean += f / sms; f_max = std::max(f_max, f); f_min = std::min(f_min, f);
            }
            printf("         barrier seen +%.2f mean / +%.2f max; weights done %.2f min / %.2f mean / %.2f max\n", o_mean, o_max, f_min, f_mean, f_max);
        }
        unsigned long long a = ~0ull, z = 0;
        for (int bb = 0; bb < sms; bb++) { a = std::min(a, h[(size_t)bb * 20 + 0]); z = std::max(z, h[(size_t)bb * 20 + 19]); }
        printf("layer 1 from the first qkv issue to the last down arrival: %.2f us\n", (z - a) / 1e3);
    }
    return 0;
}
