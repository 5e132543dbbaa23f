// Does a multiprocessor's own weight stream delay its latency-critical reads, or does everybody's?
// (benchmarks/GPU_NOTES.md, thirtieth session.)
//
// One persistent block per multiprocessor. Block 0's first lane times chains of dependent reads of
// 4 lines that only this chain touches, all L2 hits (a barrier counter or a freshly written input
// vector is read the same way), while the other blocks and / or the other warps of block 0 stream
// a 2 GB buffer the way the fused decode kernel streams its weights. The chain runs three ways:
// `ld.global.cg`, a 16-byte TMA bulk copy into shared memory per hop, and `atom.global.add` of 0.
// Stream kinds: reg (8 x 16-byte `ld.global.nc` a lane, the fused kernel's register ring),
// cpasync (8 x 16-byte `cp.async` a lane into shared memory, then a wait for all 8: in bursts),
// tma (one thread keeps 4 x 32 KB `cp.async.bulk` copies in flight into shared memory).
// Placements: alone (nothing streams), others (33, 66, 99 or all other blocks stream), all (the
// same plus the probe block's other warps), own (only the probe block's other warps).
//   nvcc -O3 -arch=sm_90a -o /tmp/grp benchmarks/gpu_return_path.cu && /tmp/grp
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)

constexpr int NT = 512;
constexpr int TMA_SLOT = 32 * 1024, TMA_SLOTS = 4;

struct Params {
    const uint4 *big;        // streamed
    size_t big16;            // its 16-byte chunks
    const unsigned *hot;     // hot chain (word indices)
    int nhops;
    int others, own;         // who streams
    int nstream;             // blocks 1..nstream stream when others is set
    int kind;                // 0 reg, 1 cp.async, 2 tma
    int *done;
    unsigned long long *out; // [0] hot ns, [1] TMA ns, [2] bytes streamed, [3] t0, [4] t1, [5] sink, [6] atom ns
};

__device__ __forceinline__ unsigned long long now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned ldcg_u32(const unsigned *p) {
    unsigned v;
    asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ uint4 ldnc(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ int done_flag(const int *p) {
    int v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* stream this block's slice (all threads from t0 on, or only the TMA thread) until *done */
__device__ void stream(const Params &P, int t0, unsigned char *smem) {
    const int tid = threadIdx.x;
    const size_t per = P.big16 / gridDim.x;
    const uint4 *base = P.big + per * blockIdx.x;
    unsigned acc = 0;
    unsigned long long bytes = 0;
    if (P.kind == 2) {
        if (tid != NT - 32) return;
        __shared__ __align__(8) unsigned long long mb[TMA_SLOTS];
        unsigned mba = (unsigned)__cvta_generic_to_shared(mb);
        for (int s = 0; s < TMA_SLOTS; s++)
            asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(mba + 8 * s));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        unsigned phase[TMA_SLOTS] = {0, 0, 0, 0};
        const size_t nslot = per * 16 / TMA_SLOT;
        size_t k = 0;
        for (int it = 0;; it++) {
            const int s = it % TMA_SLOTS;
            if (it >= TMA_SLOTS) { /* wait for this slot's previous copy */
                unsigned ok = 0;
                while (!ok)
                    asm volatile("{.reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p;}"
                                 : "=r"(ok) : "r"(mba + 8 * s), "r"(phase[s]) : "memory");
                phase[s] ^= 1;
                bytes += TMA_SLOT;
                if (done_flag(P.done)) {
                    /* drain the other slots' copies before the block exits */
                    for (int q = 0; q < TMA_SLOTS; q++) {
                        unsigned ok2 = q == s;
                        while (!ok2)
                            asm volatile("{.reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p;}"
                                         : "=r"(ok2) : "r"(mba + 8 * q), "r"(phase[q]) : "memory");
                    }
                    break;
                }
            }
            const char *src = (const char *)base + (k % nslot) * TMA_SLOT;
            k++;
            unsigned dst = (unsigned)__cvta_generic_to_shared(smem + s * TMA_SLOT);
            asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(mba + 8 * s), "r"(TMA_SLOT) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                         ::"r"(dst), "l"(src), "r"(TMA_SLOT), "r"(mba + 8 * s) : "memory");
        }
        atomicAdd(P.out + 2, bytes);
        return;
    }
    if (tid < t0) return;
    const int n = NT - t0, me = tid - t0;
    const size_t rounds = per / ((size_t)n * 8);
    if (P.kind == 0) { /* a continuous ring: unit j is reloaded as soon as it is consumed */
        uint4 v[8];
        size_t r = 0;
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = ldnc(base + (size_t)j * n + me);
        for (;;) {
            r++;
            const uint4 *p = base + (r % rounds) * (size_t)n * 8 + me;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                acc ^= v[j].x ^ v[j].w;
                v[j] = ldnc(p + (size_t)j * n);
            }
            bytes += 8 * 16;
            int d = 0;
            if ((tid & 31) == 0) d = done_flag(P.done);
            if (__shfl_sync(0xffffffffu, d, 0)) break;
        }
#pragma unroll
        for (int j = 0; j < 8; j++) acc ^= v[j].y;
    } else {
        for (size_t r = 0;; r++) {
            const uint4 *p = base + (r % rounds) * (size_t)n * 8 + me;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                unsigned dst = (unsigned)__cvta_generic_to_shared(smem + ((size_t)j * NT + tid) * 16);
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(p + (size_t)j * n) : "memory");
            }
            asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
            bytes += 8 * 16;
            int d = 0;
            if ((tid & 31) == 0) d = done_flag(P.done);
            if (__shfl_sync(0xffffffffu, d, 0)) break;
        }
    }
    if (acc == 0x12345678u) P.out[5] = acc;
    atomicAdd(P.out + 2, bytes);
}

__global__ void __launch_bounds__(NT, 1) probe_kernel(Params P) {
    extern __shared__ __align__(128) unsigned char smem[];
    const bool probe_block = blockIdx.x == 0;
    if (!probe_block) {
        if (P.others && (int)blockIdx.x <= P.nstream) stream(P, 0, smem);
        return;
    }
    if (threadIdx.x >= 32) {
        if (P.own) stream(P, 32, smem);
        return;
    }
    if (threadIdx.x != 0) return;
    /* let the streams ramp up */
    const unsigned long long ts = now_ns();
    unsigned long long t = ts;
    while (t - ts < 30000) t = now_ns();
    unsigned i = 0;
    for (int h = 0; h < 64; h++) i = ldcg_u32(P.hot + i); /* warm */
    __syncwarp(1);
    unsigned long long a = now_ns();
    for (int h = 0; h < P.nhops; h++) i = ldcg_u32(P.hot + i);
    unsigned long long b = now_ns();
    /* the same chain through the TMA unit: a 16-byte bulk copy into shared memory per hop */
    __shared__ __align__(128) unsigned tbuf[4];
    __shared__ __align__(8) unsigned long long tmb;
    const unsigned mba = (unsigned)__cvta_generic_to_shared(&tmb), dst = (unsigned)__cvta_generic_to_shared(tbuf);
    asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(mba));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    unsigned ph = 0, j = 0;
    for (int h = 0; h < P.nhops; h++) {
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], 16;" ::"r"(mba) : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 16, [%2];"
                     ::"r"(dst), "l"(P.hot + j), "r"(mba) : "memory");
        unsigned ok = 0;
        while (!ok)
            asm volatile("{.reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p;}"
                         : "=r"(ok) : "r"(mba), "r"(ph) : "memory");
        ph ^= 1;
        j = *(volatile unsigned *)tbuf;
    }
    unsigned long long c = now_ns();
    /* and by atomics (add 0), which go to L2 without an L1 lookup */
    unsigned k = 0;
    for (int h = 0; h < P.nhops; h++)
        asm volatile("atom.global.add.u32 %0, [%1], 0;" : "=r"(k) : "l"(P.hot + k) : "memory");
    unsigned long long d = now_ns();
    P.out[0] = b - a + (i == 0xffffffffu);
    P.out[1] = c - b + (j == 0xffffffffu);
    P.out[6] = d - c + (k == 0xffffffffu);
    P.out[3] = ts + 30000;
    P.out[4] = d;
    __threadfence();
    atomicExch(P.done, 1);
}

int main() {
    int dev = 0, nsm = 0;
    CK(cudaSetDevice(dev));
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    printf("device: %s, %d SMs\n", prop.name, nsm);
    const size_t big_bytes = (size_t)2 << 30;
    const int nhops = 4000;
    uint4 *big;
    unsigned *hot;
    int *done;
    unsigned long long *out;
    CK(cudaMalloc(&big, big_bytes));
    CK(cudaMemset(big, 1, big_bytes));
    CK(cudaMalloc(&hot, 4096));
    CK(cudaMalloc(&done, 4));
    CK(cudaMalloc(&out, 64));
    /* hot chain: 4 lines in a cycle (words 0, 32, 64, 96) */
    std::vector<unsigned> h(1024, 0);
    h[0] = 32, h[32] = 64, h[64] = 96, h[96] = 0;
    CK(cudaMemcpy(hot, h.data(), 4096, cudaMemcpyHostToDevice));
    const int smem = 200 * 1024;
    CK(cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const char *kinds[3] = {"reg", "cpasync", "tma"};
    const char *places[4] = {"alone", "others", "all", "own"};
    printf("| stream | placement | streaming SMs | L2 hit ns (ld.cg) | by TMA | by atom | streamed GB/s |\n|---|---|---|---|---|---|---|\n");
    const int counts[4] = {33, 66, 99, nsm - 1};
    for (int rep = 0; rep < 2; rep++)
        for (int kind = 0; kind < 3; kind++)
            for (int pl = 0; pl < 4; pl++)
                for (int ci = 0; ci < 4; ci++) {
                    if (kind > 0 && pl == 0) continue;
                    if ((pl == 0 || pl == 3) && ci < 3) continue;
                    Params P{};
                    P.big = big, P.big16 = big_bytes / 16, P.hot = hot;
                    P.nhops = nhops, P.others = pl == 1 || pl == 2, P.own = pl == 2 || pl == 3, P.kind = kind;
                    P.nstream = counts[ci];
                    P.done = done, P.out = out;
                    CK(cudaMemset(done, 0, 4));
                    CK(cudaMemset(out, 0, 64));
                    probe_kernel<<<nsm, NT, smem>>>(P);
                    CK(cudaGetLastError());
                    CK(cudaDeviceSynchronize());
                    unsigned long long o[8];
                    CK(cudaMemcpy(o, out, 64, cudaMemcpyDeviceToHost));
                    double gbs = o[4] > o[3] ? (double)o[2] / (double)(o[4] - o[3]) : 0.0;
                    const int nst = (P.others ? counts[ci] : 0) + (P.own ? 1 : 0);
                    printf("| %s | %s | %d | %.0f | %.0f | %.0f | %.0f |\n", pl == 0 ? "-" : kinds[kind], places[pl], nst,
                           (double)o[0] / nhops, (double)o[1] / nhops, (double)o[6] / nhops, gbs);
                }
    return 0;
}
