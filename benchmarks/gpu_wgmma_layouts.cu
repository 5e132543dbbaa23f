// Pins down the wgmma shared-memory layouts that flash_wgmma_kernel (native/src/cuda/attention.cu)
// relies on, against a CPU product (benchmarks/GPU_NOTES.md, thirteenth session): with the 128-byte
// swizzle, K-major A and B take SBO 1024 and a k step of 16 advances the start address by 32 bytes
// (T3); a transposed (MN-major) B of 128 columns in two 64-column regions takes LBO = the region
// stride and SBO 1024 (T4, and the swapped values fail). Also checks the accumulator and register-A
// fragment layouts (those of mma.sync m16n8k16, per warp of the warpgroup).
//   nvcc -O2 -gencode arch=compute_90a,code=sm_90a -o /tmp/wgl benchmarks/gpu_wgmma_layouts.cu && /tmp/wgl
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <cuda_runtime.h>
__host__ __device__ inline float bf2f(uint16_t v) { uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f; }
__host__ __device__ inline uint16_t f2bf(float f) { uint32_t u; memcpy(&u, &f, 4); return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); }
__device__ inline uint64_t desc(const void *p, int lbo, int sbo, int sw) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    return (uint64_t)((a >> 4) & 0x3fff) | ((uint64_t)((lbo >> 4) & 0x3fff) << 16) | ((uint64_t)((sbo >> 4) & 0x3fff) << 32) | ((uint64_t)sw << 62);
}
// 128B swizzle: element (r, e) of a region of 64-element rows
__host__ __device__ inline int sw_off(int r, int e) { return r * 128 + ((((e / 8) ^ (r & 7))) * 16) + (e % 8) * 2; }
#define R32(d) "+f"(d[0]),"+f"(d[1]),"+f"(d[2]),"+f"(d[3]),"+f"(d[4]),"+f"(d[5]),"+f"(d[6]),"+f"(d[7]),"+f"(d[8]),"+f"(d[9]),"+f"(d[10]),"+f"(d[11]),"+f"(d[12]),"+f"(d[13]),"+f"(d[14]),"+f"(d[15]),"+f"(d[16]),"+f"(d[17]),"+f"(d[18]),"+f"(d[19]),"+f"(d[20]),"+f"(d[21]),"+f"(d[22]),"+f"(d[23]),"+f"(d[24]),"+f"(d[25]),"+f"(d[26]),"+f"(d[27]),"+f"(d[28]),"+f"(d[29]),"+f"(d[30]),"+f"(d[31])
#define L32 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
// T3: D[64][64] = A[64][64] * B[64][64]^T, K-major SW128, 4 k-steps
__global__ void t3(const uint16_t *A, const uint16_t *B, float *D, int lbo, int sbo) {
    __shared__ __align__(1024) uint16_t sa[64 * 64], sb[64 * 64];
    int t = threadIdx.x;
    for (int i = t; i < 64 * 64; i += 128) { int r = i / 64, e = i % 64; sa[sw_off(r, e) / 2] = A[i]; sb[sw_off(r, e) / 2] = B[i]; }
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    float d[32];
    for (int i = 0; i < 32; i++) d[i] = 0.f;
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
    for (int ks = 0; ks < 4; ks++) {
        uint64_t da = desc((char *)sa + 32 * ks, lbo, sbo, 1), db = desc((char *)sb + 32 * ks, lbo, sbo, 1);
        asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " L32 ", %32, %33, 1, 1, 1, 0, 0;\n" : R32(d) : "l"(da), "l"(db));
    }
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    int w = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
    for (int j = 0; j < 8; j++) {
        D[(16 * w + g) * 64 + 8 * j + 2 * q] = d[4 * j]; D[(16 * w + g) * 64 + 8 * j + 2 * q + 1] = d[4 * j + 1];
        D[(16 * w + g + 8) * 64 + 8 * j + 2 * q] = d[4 * j + 2]; D[(16 * w + g + 8) * 64 + 8 * j + 2 * q + 1] = d[4 * j + 3];
    }
}
// T4: D[64][128] = A[64][32] (regs, 2 k-steps) * V[32 k][128 n]: V in two 64-column SW128 regions of 32 rows (4096 B apart)
__global__ void t4(const uint16_t *A, const uint16_t *V, float *D, int lbo, int sbo) {
    __shared__ __align__(1024) uint16_t sv[32 * 128];
    int t = threadIdx.x;
    for (int i = t; i < 32 * 128; i += 128) { int k = i / 128, n = i % 128; sv[((n / 64) * 32 * 128 + sw_off(k, n % 64)) / 2] = V[i]; }
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    int w = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
    float d[64];
    for (int i = 0; i < 64; i++) d[i] = 0.f;
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
    for (int kk = 0; kk < 2; kk++) {
        auto pk = [&](int r, int c) { return (uint32_t)A[r * 32 + c] | ((uint32_t)A[r * 32 + c + 1] << 16); };
        uint32_t a0 = pk(16 * w + g, 16 * kk + 2 * q), a1 = pk(16 * w + g + 8, 16 * kk + 2 * q), a2 = pk(16 * w + g, 16 * kk + 2 * q + 8), a3 = pk(16 * w + g + 8, 16 * kk + 2 * q + 8);
        uint64_t dv = desc((char *)sv + kk * 16 * 128, lbo, sbo, 1);
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
            "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
            "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
            "{%64,%65,%66,%67}, %68, 1, 1, 1, 1;\n"
            : R32(d), "+f"(d[32]),"+f"(d[33]),"+f"(d[34]),"+f"(d[35]),"+f"(d[36]),"+f"(d[37]),"+f"(d[38]),"+f"(d[39]),"+f"(d[40]),"+f"(d[41]),"+f"(d[42]),"+f"(d[43]),"+f"(d[44]),"+f"(d[45]),"+f"(d[46]),"+f"(d[47]),
              "+f"(d[48]),"+f"(d[49]),"+f"(d[50]),"+f"(d[51]),"+f"(d[52]),"+f"(d[53]),"+f"(d[54]),"+f"(d[55]),"+f"(d[56]),"+f"(d[57]),"+f"(d[58]),"+f"(d[59]),"+f"(d[60]),"+f"(d[61]),"+f"(d[62]),"+f"(d[63])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(dv));
    }
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    for (int j = 0; j < 16; j++) {
        D[(16 * w + g) * 128 + 8 * j + 2 * q] = d[4 * j]; D[(16 * w + g) * 128 + 8 * j + 2 * q + 1] = d[4 * j + 1];
        D[(16 * w + g + 8) * 128 + 8 * j + 2 * q] = d[4 * j + 2]; D[(16 * w + g + 8) * 128 + 8 * j + 2 * q + 1] = d[4 * j + 3];
    }
}
int main() {
    static uint16_t hA[64 * 64], hB[64 * 64], hV[32 * 128]; static float hD[64 * 128];
    unsigned s = 1;
    auto rnd = [&]() { s = s * 1103515245u + 12345u; return f2bf(((s >> 16) % 17 - 8) / 4.0f); };
    for (auto &x : hA) x = rnd();
    for (auto &x : hB) x = rnd();
    for (auto &x : hV) x = rnd();
    uint16_t *dA, *dB, *dV; float *dD;
    cudaMalloc(&dA, sizeof hA); cudaMalloc(&dB, sizeof hB); cudaMalloc(&dV, sizeof hV); cudaMalloc(&dD, sizeof hD);
    cudaMemcpy(dA, hA, sizeof hA, cudaMemcpyHostToDevice); cudaMemcpy(dB, hB, sizeof hB, cudaMemcpyHostToDevice); cudaMemcpy(dV, hV, sizeof hV, cudaMemcpyHostToDevice);
    int c3[][2] = {{16, 1024}};
    for (auto &c : c3) {
        t3<<<1, 128>>>(dA, dB, dD, c[0], c[1]);
        cudaError_t e = cudaDeviceSynchronize(); if (e) { printf("t3 err %s\n", cudaGetErrorString(e)); return 1; }
        cudaMemcpy(hD, dD, 64 * 64 * 4, cudaMemcpyDeviceToHost);
        double err = 0; for (int m = 0; m < 64; m++) for (int n = 0; n < 64; n++) { float r = 0; for (int k = 0; k < 64; k++) r += bf2f(hA[m * 64 + k]) * bf2f(hB[n * 64 + k]); err = fmax(err, fabs(r - hD[m * 64 + n])); }
        printf("T3 SW128 K-major lbo %d sbo %d: max err %g\n", c[0], c[1], err);
    }
    int c4[][2] = {{4096, 1024}, {1024, 4096}};
    for (auto &c : c4) {
        t4<<<1, 128>>>(dA, dV, dD, c[0], c[1]);
        cudaError_t e = cudaDeviceSynchronize(); if (e) { printf("t4 err %s\n", cudaGetErrorString(e)); return 1; }
        cudaMemcpy(hD, dD, 64 * 128 * 4, cudaMemcpyDeviceToHost);
        double err = 0; for (int m = 0; m < 64; m++) for (int n = 0; n < 128; n++) { float r = 0; for (int k = 0; k < 32; k++) r += bf2f(hA[m * 32 + k]) * bf2f(hV[k * 128 + n]); err = fmax(err, fabs(r - hD[m * 128 + n])); }
        printf("T4 SW128 MN-major lbo %d sbo %d: max err %g\n", c[0], c[1], err);
    }
    return 0;
}
