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
};

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
                    while (ld_relaxed(P.bar) < (unsigned long long)s * G) {
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
    for (int s = 0; s < P.nst; s++) {
        const Stage S = P.st[s];
        int r0, r1;
        rows_of(S.n, b, G, r0, r1);
        const int nr = r1 - r0, k = S.k;
        const int ng = (int)((size_t)nr * k / 256);
        const int g0 = (int)((long long)ng * warp / NW), g1 = (int)((long long)ng * (warp + 1) / NW);
        const char *wb = (const char *)(S.w + (size_t)r0 * k) + lane * 16;
        uint4 ring[U];
#pragma unroll
        for (int u = 0; u < U; u++) ring[u] = g0 + u < g1 ? ldnc(wb + (size_t)(g0 + u) * 512) : make_uint4(0, 0, 0, 0);
        unsigned long long *pr = P.prof && s >= 4 && s < 8 && threadIdx.x == 0 ? P.prof + ((size_t)b * 4 + (s - 4)) * 5 : nullptr;
        if (pr) pr[0] = now_ns();
        grid_wait(P, s);
        stage_x(S.in, xs, k, threadIdx.x, 32 * NW);
        for (int i = threadIdx.x; i < nr; i += 32 * NW) racc[i] = 0.0f;
        if (pr) pr[1] = now_ns();
        __syncthreads();
        if (pr) pr[2] = now_ns();
        const uint32_t eb = (uint32_t)g0 * 256u;
        int row = (int)(eb / (uint32_t)k), col = (int)(eb - (uint32_t)row * (uint32_t)k);
        float acc = 0.0f;
        for (int g = g0; g < g1; g += U) {
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

int main(int argc, char **argv) {
    const int layers = argc > 1 ? atoi(argv[1]) : 36;
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs\n", prop.name, sms);
    const int H = 2560, QKV = 6144, QO = 4096, I = 9728, V = 151936;
    struct Shape { int n, k; };
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
    const int maxn = V;
    CK(cudaMalloc(&act, sizeof(float) * (size_t)maxn * 2));
    std::vector<float> h0(maxn);
    for (int i = 0; i < maxn; i++) h0[i] = (float)((i * 37 % 101) - 50) * 0.02f;
    CK(cudaMemcpy(act, h0.data(), sizeof(float) * maxn, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(act + maxn, h0.data(), sizeof(float) * maxn, cudaMemcpyHostToDevice));
    std::vector<Stage> st;
    size_t off = 0;
    for (size_t i = 0; i < shapes.size(); i++) {
        Stage s;
        s.w = W + off;
        off += (size_t)shapes[i].n * shapes[i].k;
        s.n = shapes[i].n;
        s.k = shapes[i].k;
        s.in = act + (i % 2) * maxn;
        s.out = act + ((i + 1) % 2) * maxn;
        st.push_back(s);
    }
    Stage *st_d;
    CK(cudaMalloc(&st_d, sizeof(Stage) * st.size()));
    CK(cudaMemcpy(st_d, st.data(), sizeof(Stage) * st.size(), cudaMemcpyHostToDevice));
    unsigned long long *bar;
    CK(cudaMalloc(&bar, 8));
    unsigned *sink;
    CK(cudaMalloc(&sink, 4));
    unsigned *ctr;
    CK(cudaMalloc(&ctr, 4 * st.size()));
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

    // ncw 0: direct_kernel<16, U = gate>; -1 / -2: mma_kernel<16, U = gate, tiled>; -3:
    // dyn_kernel<16, 8, RC = gate>
    struct Var { int ncw, slot, nslot, gate; };
    std::vector<Var> vars = {
        {0, 0, 0, 8},       {0, 0, 0, 6},       {0, 0, 0, 12},      {0, 0, 0, 16},      {16, 32768, 5, 0},  {16, 32768, 5, 2}, {16, 32768, 5, 1000},
        {16, 65536, 3, 1},  {16, 65536, 3, 1000}, {8, 65536, 3, 1000}, {-1, 0, 0, 8},   {-2, 0, 0, 6},
        {-3, 0, 0, 1},      {0, 0, 0, 8},
    };
    printf("| consumer warps | slot KB | slots | gate (pieces) | ms/token | GB/s | of probe | tok/s | check |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (const Var &v : vars) {
        Params P;
        P.st = st_d;
        P.nst = (int)st.size();
        P.slot = v.slot;
        P.nslot = v.nslot;
        P.gate = v.gate;
        P.bar = bar;
        P.maxk = I;
        P.maxrows = ((V + sms - 1) / sms + 4) / 4 * 4; // keeps the mbarriers 8-byte aligned
        P.prof = nullptr;
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
            CK(cudaMemset(ctr, 0, 4 * st.size()));
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
        printf("| %d | %d | %d | %d | %.3f | %.0f | %.1f%% | %.1f | %.1e |\n", v.ncw, v.slot / 1024, v.nslot, v.gate, best, bw,
               100.0 * bw / probe_bw, 1e3 / best, chk);
    }
    { // stamps of the register-ring kernel, layer 1 (thread 0 of every block)
        unsigned long long *prof;
        CK(cudaMalloc(&prof, sizeof(unsigned long long) * sms * 20));
        Params P;
        P.st = st_d; P.nst = (int)st.size(); P.slot = 0; P.nslot = 0; P.gate = 8; P.bar = bar; P.maxk = I;
        P.maxrows = ((V + sms - 1) / sms + 4) / 4 * 4; P.prof = prof;
        const size_t smem = 2 * (size_t)P.maxk + 4 * (size_t)P.maxrows + 64;
        CK(cudaFuncSetAttribute(direct_kernel<16, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        void *args[] = {(void *)&P};
        for (int r = 0; r < 3; r++) {
            CK(cudaMemset(bar, 0, 8));
            CK(cudaLaunchCooperativeKernel((void *)direct_kernel<16, 8>, dim3(sms), dim3(512), args, smem, 0));
        }
        CK(cudaDeviceSynchronize());
        std::vector<unsigned long long> h((size_t)sms * 20);
        CK(cudaMemcpy(h.data(), prof, 8 * h.size(), cudaMemcpyDeviceToHost));
        const char *names[4] = {"qkv", "o", "gate/up", "down"};
        printf("\nregister ring, layer 1, us (mean / max over blocks): after issue->wait done | staging | weights | row sums+out\n");
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
        }
        unsigned long long a = ~0ull, z = 0;
        for (int bb = 0; bb < sms; bb++) { a = std::min(a, h[(size_t)bb * 20 + 0]); z = std::max(z, h[(size_t)bb * 20 + 19]); }
        printf("layer 1 from the first qkv issue to the last down arrival: %.2f us\n", (z - a) / 1e3);
    }
    return 0;
}
