// How long do a decode step's products take once their weights are in shared memory?
// (benchmarks/GPU_NOTES.md, thirtieth session.)
//
// One block of 512 threads per multiprocessor; block 0's time per pass (ns) over rows already in
// shared memory, six passes (the first with a cold instruction cache):
//   k   21 rows x 4096 columns (Qwen3-4B's o_proj share of one of 124 blocks) and 9 x 2048
//       (Qwen3-0.6B), rows at a pitch of one 16-byte chunk more than their length:
//         mma        m16n8k16 tensor-core products, a unit (row tile, 16 columns) per iteration
//                    with an integer division per unit (exp/split-roles' first version)
//         cuda-core  units of 32 chunks of a row, 8 lanes' conversions and multiply-adds
//         mma, half the SMs streaming   the first, while half the blocks read HBM
//         mma, one division a job       a warp takes a row tile and a range of its columns, four
//                    accumulators (exp/split-roles' kept version)
//   kf  640 and 512 rows x 128 columns at a pitch of 136 (the folded stage's weight area):
//         fold rows, CUDA cores    dk_fold_rows: one thread a row, four partial sums
//         fold rows, tensor cores  a warp a row tile, A and B (the input in every column) by
//                    ldmatrix
//   nvcc -O3 -arch=sm_90a -o /tmp/gpp benchmarks/gpu_products_probe.cu && /tmp/gpp
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)
constexpr int NT = 512, NW = NT / 32;
__device__ __forceinline__ unsigned long long now_ns() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
__device__ __forceinline__ void mma16816(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void bf8(uint4 v, float *f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) { f[2 * i] = __uint_as_float(w[i] << 16); f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); }
}
__global__ void __launch_bounds__(NT, 1) k(int mode, int nr, int cpr, int passes, unsigned long long *out, float *sink, const uint4 *big, size_t per16) {
    extern __shared__ __align__(16) unsigned char sm[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, pitch = cpr + 1;
    uint4 *W = (uint4 *)sm, *xs = W + (size_t)nr * pitch;
    float *rs = (float *)(xs + cpr);
    if (mode == 2 && blockIdx.x >= gridDim.x / 2) { /* stream HBM for a while */
        const uint4 *b = big + per16 * blockIdx.x; unsigned acc = 0;
        for (int r = 0; r < 40; r++) for (size_t i = tid; i < per16; i += NT) acc ^= __ldg(b + i).x;
        if (acc == 1234567) sink[0] = acc;
        return;
    }
    for (int i = tid; i < nr * pitch + cpr; i += NT) W[i] = make_uint4(0x3f803f80u ^ (i & 7), 0x3f803f80u, 0x3c003c00u, 0x3f803f80u);
    for (int r = tid; r < nr; r += NT) rs[r] = 0.0f;
    __syncthreads();
    const int nq = cpr * 8, ks = nq / 16, units = (nr + 15) / 16 * ks;
    const int u0 = units * warp / NW, u1 = units * (warp + 1) / NW;
    const int gid = lane >> 2, tig = lane & 3, lm = lane >> 3, lr = (lane & 7) + 8 * (lm & 1);
    const uint16_t *x16 = (const uint16_t *)xs;
    for (int pass = 0; pass < passes; pass++) {
        __syncthreads();
        const unsigned long long t0 = now_ns();
        if (mode == 3) {
            const int ntile = (nr + 15) / 16, kparts = ntile >= NW ? 1 : NW / ntile;
            for (int job = warp; job < ntile * kparts; job += NW) {
                const int t = job / kparts, kp = job - t * kparts;
                const int kb = ks * kp / kparts, ke = ks * (kp + 1) / kparts;
                const int row = min(t * 16 + lr, nr - 1);
                unsigned sa = (unsigned)__cvta_generic_to_shared(W + (size_t)row * pitch + 2 * kb + (lm >> 1));
                const uint32_t *xb = (const uint32_t *)(x16 + 16 * kb + 2 * tig);
                float c[4][4] = {};
                int k = kb;
#pragma unroll 1
                for (; k + 4 <= ke; k += 4) {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        uint32_t a0, a1, a2, a3;
                        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(sa + 32 * j));
                        mma16816(c[j], a0, a1, a2, a3, xb[8 * j], xb[8 * j + 4]);
                    }
                    sa += 128; xb += 32;
                }
                for (; k < ke; k++) {
                    uint32_t a0, a1, a2, a3;
                    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(sa));
                    mma16816(c[0], a0, a1, a2, a3, xb[0], xb[4]);
                    sa += 32; xb += 8;
                }
                const float s0 = (c[0][0] + c[1][0]) + (c[2][0] + c[3][0]), s2 = (c[0][2] + c[1][2]) + (c[2][2] + c[3][2]);
                const int ra = t * 16 + gid, rb = ra + 8;
                if (tig == 0) { if (ra < nr) atomicAdd(rs + ra, s0); if (rb < nr) atomicAdd(rs + rb, s2); }
            }
        } else if (mode != 1) {
            float c[4] = {0, 0, 0, 0};
            for (int u = u0; u < u1; u++) {
                const int t = u / ks, k0 = (u - t * ks) * 16;
                const int row = min(t * 16 + lr, nr - 1);
                const unsigned sa = (unsigned)__cvta_generic_to_shared(W + (size_t)row * pitch + (k0 >> 3) + (lm >> 1));
                uint32_t a0, a1, a2, a3;
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(sa));
                const uint32_t b0 = *(const uint32_t *)(x16 + k0 + 2 * tig), b1 = *(const uint32_t *)(x16 + k0 + 8 + 2 * tig);
                mma16816(c, a0, a1, a2, a3, b0, b1);
                if (u == u1 - 1 || k0 + 16 == nq) {
                    const int ra = t * 16 + gid, rb = ra + 8;
                    if (tig == 0) { if (ra < nr) atomicAdd(rs + ra, c[0]); if (rb < nr) atomicAdd(rs + rb, c[2]); }
                    c[0] = c[1] = c[2] = c[3] = 0.0f;
                }
            }
        } else {
            const int G = (cpr + 31) / 32, un = nr * G, v0 = un * warp / NW, v1 = un * (warp + 1) / NW;
            float acc = 0.0f;
            for (int u = v0; u < v1; u++) {
                const int r = u / G, gi = u - r * G, c = gi * 32 + lane;
                if (c < cpr) { float f[8], x[8]; bf8(W[r * pitch + c], f); bf8(xs[c], x);
#pragma unroll
                    for (int e = 0; e < 8; e++) acc += f[e] * x[e]; }
                if (gi == G - 1 || u == v1 - 1) {
                    float a = acc;
                    for (int o = 16; o; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                    acc = 0.0f; if (lane == 0) atomicAdd(rs + r, a);
                }
            }
        }
        __syncthreads();
        const unsigned long long t1 = now_ns();
        if (tid == 0 && blockIdx.x == 0) out[pass] = t1 - t0;
    }
    if (tid < nr) sink[blockIdx.x * 32 + tid] = rs[tid];
}

// The folded stage's products: n rows x hd columns at a pitch of hd + 8 bf16, one head's output.
__global__ void __launch_bounds__(NT, 1) kf(int mode, int n, int hd, int passes, unsigned long long *out, float *sink) {
    extern __shared__ __align__(16) unsigned char sm[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, ks = hd + 8;
    uint16_t *A = (uint16_t *)sm;
    float *xo = (float *)(sm + (size_t)n * ks * 2);
    uint16_t *xb = (uint16_t *)(xo + hd);
    float *rs = (float *)(xb + hd);
    for (int i = tid; i < n * ks; i += NT) A[i] = 0x3f80 ^ (i & 15);
    for (int i = tid; i < hd; i += NT) { xo[i] = 1.0f; xb[i] = 0x3f80; }
    for (int r = tid; r < n; r += NT) rs[r] = 0.0f;
    __syncthreads();
    for (int pass = 0; pass < passes; pass++) {
        __syncthreads();
        const unsigned long long t0 = now_ns();
        if (mode == 0) { /* dk_fold_rows */
            const float4 *x4 = (const float4 *)xo;
            for (int r = tid; r < n; r += NT) {
                const uint4 *w = (const uint4 *)(A + (size_t)r * ks);
                float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma unroll 4
                for (int c = 0; c < hd / 8; c++) {
                    float f[8]; bf8(w[c], f);
                    const float4 x = x4[2 * c], y = x4[2 * c + 1];
                    a0 += f[0] * x.x + f[4] * y.x; a1 += f[1] * x.y + f[5] * y.y;
                    a2 += f[2] * x.z + f[6] * y.z; a3 += f[3] * x.w + f[7] * y.w;
                }
                atomicAdd(rs + r, (a0 + a1) + (a2 + a3));
            }
        } else { /* tensor cores: a warp takes row tiles, all hd / 16 steps of a tile; B by ldmatrix */
            const int gid = lane >> 2, tig = lane & 3, lm = lane >> 3, lr = (lane & 7) + 8 * (lm & 1);
            const int ntile = (n + 15) / 16, kst = hd / 16;
            /* B: every row address points at the input; matrices m = 16-column halves j */
            for (int t = warp; t < ntile; t += NW) {
                const int row = min(t * 16 + lr, n - 1);
                const unsigned sa = (unsigned)__cvta_generic_to_shared(A + (size_t)row * ks + 8 * (lm >> 1));
                float c[2][4] = {};
#pragma unroll
                for (int k = 0; k < 16; k += 2) {
                    if (k >= kst) break;
                    uint32_t b[4];
                    const unsigned sb = (unsigned)__cvta_generic_to_shared(xb + 16 * k + 8 * lm);
                    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(sb));
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        if (k + j >= kst) break;
                        uint32_t a0, a1, a2, a3;
                        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(sa + 32 * (k + j)));
                        mma16816(c[j], a0, a1, a2, a3, b[2 * j], b[2 * j + 1]);
                    }
                }
                const int ra = t * 16 + gid, rb = ra + 8;
                if (tig == 0) { if (ra < n) rs[ra] += c[0][0] + c[1][0]; if (rb < n) rs[rb] += c[0][2] + c[1][2]; }
            }
        }
        __syncthreads();
        const unsigned long long t1 = now_ns();
        if (tid == 0 && blockIdx.x == 0) out[pass] = t1 - t0;
    }
    if (tid < 32) sink[blockIdx.x * 32 + tid] = rs[tid];
}
int main() {
    int nsm; CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    unsigned long long *out; float *sink; uint4 *big;
    const size_t bigb = (size_t)1 << 30;
    CK(cudaMalloc(&out, 64 * 8)); CK(cudaMalloc(&sink, nsm * 32 * 4)); CK(cudaMalloc(&big, bigb)); CK(cudaMemset(big, 0, bigb));
    const int smem = 200 * 1024;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const char *names[4] = {"mma", "cuda-core", "mma, half the SMs streaming", "mma, one division a job"};
    const int shapes[2][2] = {{21, 512}, {9, 256}};
    for (int sh = 0; sh < 2; sh++)
        for (int mode = 0; mode < 4; mode++) {
            const int passes = 6;
            k<<<nsm, NT, smem>>>(mode, shapes[sh][0], shapes[sh][1], passes, out, sink, big, bigb / 16 / nsm);
            CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
            unsigned long long o[64]; CK(cudaMemcpy(o, out, 64 * 8, cudaMemcpyDeviceToHost));
            printf("%d rows x %d: %-28s ns per pass:", shapes[sh][0], shapes[sh][1] * 8, names[mode]);
            for (int p = 0; p < passes; p++) printf(" %llu", o[p]);
            printf("\n");
        }
    const char *fn[2] = {"fold rows, CUDA cores", "fold rows, tensor cores"};
    const int fsh[2] = {640, 512};
    CK(cudaFuncSetAttribute(kf, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    for (int sh = 0; sh < 2; sh++)
        for (int mode = 0; mode < 2; mode++) {
            kf<<<nsm, NT, smem>>>(mode, fsh[sh], 128, 6, out, sink);
            CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
            unsigned long long o[64]; CK(cudaMemcpy(o, out, 64 * 8, cudaMemcpyDeviceToHost));
            printf("%d rows x 128: %-28s ns per pass:", fsh[sh], fn[mode]);
            for (int p = 0; p < 6; p++) printf(" %llu", o[p]);
            printf("\n");
        }
    return 0;
}
