// What running code the multiprocessor has not run lately costs (the instruction caches), for the
// fused decode kernel, whose SASS is 117-132 KB a variant (benchmarks/GPU_NOTES.md, thirtieth
// session). Bodies of 16 KB of straight-line code (1024 independent FFMAs with immediates, a
// noinline function each); one block per multiprocessor runs body A, A again, k other bodies,
// then A once more; block 0's times (ns, the best of three launches) with 1 and 16 warps running
// the same code.
//   nvcc -O3 -arch=sm_90a -o /tmp/gic benchmarks/gpu_icache_probe.cu && /tmp/gic
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)
__device__ __forceinline__ unsigned long long now_ns(float &dep) { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t), "+f"(dep) :: "memory"); return t; }
template <int SALT>
__device__ __noinline__ float body(float a, float b) {
    float x0 = a, x1 = b, x2 = a + b, x3 = a - b;
#pragma unroll
    for (int i = 0; i < 256; i++) {
        x0 = fmaf(x0, 1.0001f + (i + SALT * 300) * 1e-7f, 0.5f);
        x1 = fmaf(x1, 0.9999f - (i + SALT * 300) * 1e-7f, 0.25f);
        x2 = fmaf(x2, 1.0002f + (i + SALT * 300) * 2e-7f, 0.125f);
        x3 = fmaf(x3, 0.9998f - (i + SALT * 300) * 2e-7f, 0.0625f);
    }
    return x0 + x1 + x2 + x3;
}
__device__ float run(int s, float a, float v) {
    switch (s) {
    case 0: return body<0>(a, v); case 1: return body<1>(a, v); case 2: return body<2>(a, v); case 3: return body<3>(a, v);
    case 4: return body<4>(a, v); case 5: return body<5>(a, v); case 6: return body<6>(a, v); case 7: return body<7>(a, v);
    case 8: return body<8>(a, v); case 9: return body<9>(a, v); case 10: return body<10>(a, v); case 11: return body<11>(a, v);
    case 12: return body<12>(a, v); case 13: return body<13>(a, v); case 14: return body<14>(a, v); case 15: return body<15>(a, v);
    default: return body<16>(a, v);
    }
}
__global__ void __launch_bounds__(512, 1) k(int kothers, int warps, unsigned long long *out, float *sink) {
    if ((int)(threadIdx.x >> 5) >= warps) return;
    float a = threadIdx.x * 1e-3f, v = 0.0f;
    v += run(16, a, v); /* something else first */
    unsigned long long t0 = now_ns(v); v += run(0, a, v);
    unsigned long long t1 = now_ns(v); v += run(0, a, v);
    unsigned long long t2 = now_ns(v);
    for (int s = 1; s <= kothers; s++) v += run(s, a, v);
    unsigned long long t3 = now_ns(v); v += run(0, a, v);
    unsigned long long t4 = now_ns(v);
    if (threadIdx.x == 0 && blockIdx.x == 0) { out[0] = t1 - t0; out[1] = t2 - t1; out[2] = t3 - t2; out[3] = t4 - t3; }
    sink[blockIdx.x * 512 + threadIdx.x] = v;
}
int main() {
    int nsm; CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    unsigned long long *out; float *sink;
    CK(cudaMalloc(&out, 64)); CK(cudaMalloc(&sink, nsm * 512 * 4));
    printf("16 KB bodies; A first time / A again / k others (per body) / A after them, ns\n");
    for (int warps = 1; warps <= 16; warps *= 16)
        for (int kk = 1; kk <= 15; kk += (kk < 8 ? 1 : 2)) {
            unsigned long long best[4] = {~0ull, ~0ull, ~0ull, ~0ull};
            for (int rep = 0; rep < 3; rep++) {
                k<<<nsm, 512>>>(kk, warps, out, sink);
                CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
                unsigned long long o[4]; CK(cudaMemcpy(o, out, 32, cudaMemcpyDeviceToHost));
                for (int i = 0; i < 4; i++) if (o[i] < best[i]) best[i] = o[i];
            }
            printf("warps %2d, k %2d (%3d KB between): A %6llu, again %6llu, others %6llu each, A after %6llu\n",
                   warps, kk, 16 * kk, best[0], best[1], best[2] / kk, best[3]);
        }
    return 0;
}
