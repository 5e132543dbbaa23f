// Does an L2 prefetch make later loads hit L2? (benchmarks/GPU_NOTES.md, thirteenth session.)
// Times a read of buffer A (8-32 MB; block b reads the slice it prefetched) after: L2 flushed
// (cold); A read once before (warm); A bulk-prefetched (cp.async.bulk.prefetch.L2, 16 KB or 4 KB
// pieces) or line-prefetched (prefetch.global.L2), then 20 us idle; prefetched, then 20 or 50 MB
// of B streamed (normal or evict-first loads); warm, then 50 MB of B streamed evict-first.
//   nvcc -O3 -arch=sm_90 -o /tmp/l2pf benchmarks/gpu_l2_prefetch.cu && /tmp/l2pf
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

__device__ __forceinline__ uint4 ldnc(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ uint4 ldnc_ef(const uint4 *p) {
    uint4 v; unsigned long long pol;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(pol));
    return v;
}
// block b reads its own slice (as the prefetch kernels assign them)
__global__ void readk(const uint4 *a, size_t n, int ef, unsigned *sink) {
    unsigned x = 0;
    const size_t per = n / gridDim.x, T = blockDim.x;
    const uint4 *s = a + per * blockIdx.x;
    for (size_t i0 = threadIdx.x; i0 < per; i0 += 8 * T) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) { size_t i = i0 + u * T; v[u] = i < per ? (ef ? ldnc_ef(s + i) : ldnc(s + i)) : make_uint4(0,0,0,0); }
#pragma unroll
        for (int u = 0; u < 8; u++) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (x == 0x12345678) *sink = x;
}
// each block prefetches its contiguous slice in pieces of `piece` bytes, issued by lanes 0 of warps
__global__ void pfk(const char *a, size_t bytes, unsigned piece) {
    size_t per = bytes / gridDim.x / 16 * 16;
    const char *s = a + per * blockIdx.x;
    int w = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0)
        for (size_t o = (size_t)w * piece; o < per; o += (size_t)(blockDim.x / 32) * piece) {
            unsigned n = (unsigned)((per - o) < piece ? (per - o) : piece);
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(s + o), "r"(n & ~15u) : "memory");
        }
}
// line-wise prefetch.global.L2
__global__ void pfl(const char *a, size_t bytes) {
    size_t per = bytes / gridDim.x / 16 * 16;
    const char *s = a + per * blockIdx.x;
    for (size_t i = threadIdx.x * (size_t)128; i < per; i += (size_t)blockDim.x * 128)
        asm volatile("prefetch.global.L2 [%0];" :: "l"(s + i));
}
__global__ void spin(long long ns) { long long t0; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0)); long long t; do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns); }

int main() {
    int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    int l2; cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0);
    printf("SMs %d, L2 %d MB\n", sms, l2 >> 20);
    const size_t MB = 1 << 20, nB = 64 * MB, nC = 512 * MB;
    char *A, *B, *C; unsigned *sink;
    CK(cudaMalloc(&A, 64 * MB)); CK(cudaMalloc(&B, nB)); CK(cudaMalloc(&C, nC)); CK(cudaMalloc(&sink, 4));
    cudaMemset(A, 1, 64 * MB); cudaMemset(B, 2, nB); cudaMemset(C, 3, nC);
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    auto flush = [&]() { readk<<<sms, 512>>>((const uint4 *)C, nC / 16, 0, sink); };
    auto timeA = [&](size_t bytes) { float ms; cudaEventRecord(e0); readk<<<sms, 512>>>((const uint4 *)A, bytes / 16, 0, sink); cudaEventRecord(e1); cudaEventSynchronize(e1); cudaEventElapsedTime(&ms, e0, e1); return ms * 1e3f; };
    for (size_t szA : {8 * MB, 16 * MB, 24 * MB, 32 * MB}) {
        printf("A = %zu MB:\n", szA / MB);
        for (int rep = 0; rep < 2; rep++) {
            flush(); float cold = timeA(szA);
            flush(); readk<<<sms, 512>>>((const uint4 *)A, szA / 16, 0, sink); float warm = timeA(szA);
            flush(); pfk<<<sms, 512>>>(A, szA, 16384); spin<<<1, 1>>>(20000); float pf = timeA(szA);
            flush(); pfk<<<sms, 512>>>(A, szA, 4096); spin<<<1, 1>>>(20000); float pf4 = timeA(szA);
            flush(); pfl<<<sms, 512>>>(A, szA); spin<<<1, 1>>>(20000); float pfline = timeA(szA);
            flush(); pfk<<<sms, 512>>>(A, szA, 16384); readk<<<sms, 512>>>((const uint4 *)B, 20 * MB / 16, 0, sink); float pfB = timeA(szA);
            flush(); pfk<<<sms, 512>>>(A, szA, 16384); readk<<<sms, 512>>>((const uint4 *)B, 20 * MB / 16, 1, sink); float pfBef = timeA(szA);
            flush(); pfk<<<sms, 512>>>(A, szA, 16384); readk<<<sms, 512>>>((const uint4 *)B, 50 * MB / 16, 1, sink); float pfB50ef = timeA(szA);
            flush(); readk<<<sms, 512>>>((const uint4 *)A, szA / 16, 0, sink); readk<<<sms, 512>>>((const uint4 *)B, 50 * MB / 16, 1, sink); float wB50ef = timeA(szA);
            CK(cudaDeviceSynchronize());
            printf("  us: cold %.1f (%.0f GB/s) warm %.1f (%.0f GB/s) | bulk-pf16K %.1f  bulk-pf4K %.1f  line-pf %.1f | pf16K+B20 %.1f  +B20ef %.1f  +B50ef %.1f | warm+B50ef %.1f\n",
                   cold, szA / cold / 1e3, warm, szA / warm / 1e3, pf, pf4, pfline, pfB, pfBef, pfB50ef, wB50ef);
        }
    }
    return 0;
}
