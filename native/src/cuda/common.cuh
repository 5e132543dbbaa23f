/* Shared helpers of libtensor_ops_cuda: thread-local errors, argument checks, the per-device
 * stream, dtype loads/stores. Every toc_ entry point validates its arguments, checks every CUDA
 * call and returns a to_status code; nothing aborts and nothing throws across the C ABI. */
#ifndef TOC_COMMON_CUH
#define TOC_COMMON_CUH

#include <cuda.h> /* CUtensorMap (types only: the encoder comes from the runtime's driver entry point) */
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>

#include "tensor_ops.h"

#define TOC_EXPORT extern "C" TO_API

/* Sets the calling thread's message; returns code. */
int toc_set_error(int code, const char *fmt, ...);
int toc_cuda_error(cudaError_t e, const char *what);
cudaStream_t toc_stream(void);        /* stream of the current device (created on first use) */
int toc_device_ready(void);           /* TO_OK once a device is usable, else an error code */
int toc_max_smem_optin(void);         /* per-block shared memory limit of the current device */
int toc_sm_count(void);
int toc_cc_major(void); /* compute capability major of the current device */
/* A bf16 tensor map of rank 2 or 3 over base (dims innermost first; strides in bytes of dims 1..)
 * for TMA copies (sm_90): boxes of 64 columns (128 bytes, the swizzle span) x box_rows (x 1),
 * 128-byte swizzle, out-of-range elements zero. False where the driver has no tensor-map encoder
 * or the map cannot describe the tensor. */
bool toc_tensor_map_bf16(CUtensorMap *m, const void *base, int rank, const cuuint64_t *dims,
                         const cuuint64_t *strides, unsigned box_rows);
bool toc_tensor_maps_available(void); /* whether the driver has the tensor-map encoder */
/* toc_linear_group's one-launch path for 2-16 rows of bf16 (src/cuda/linear.cu): TO_ERR_UNSUPPORTED,
 * with nothing launched, where the inputs do not qualify */
int toc_gemv_mma_group(const void *x, int count, const void *const *ws, const int64_t *ns, void *const *ys,
                       const int64_t *ldys, int64_t m, int64_t k, int64_t ldx, int x_dtype, int w_dtype,
                       int y_dtype);

/* A per-device scratch buffer that grows on demand (one static TocBuffer per use). Growing waits
 * for the stream before freeing the old buffer, and is refused (TO_ERR_UNSUPPORTED) while the
 * stream is being captured into a graph; a buffer handed out during a capture is never freed
 * (a graph may still point into it: growing then leaves the old one allocated). *out gets at
 * least `bytes` of the current device. */
struct TocBuffer {
    void *p[16];
    size_t size[16];
    bool captured[16];
};
int toc_buffer_reserve(TocBuffer *b, size_t bytes, void **out, const char *what);

/* A release that synchronises or frees (a fused decoder, a graph, pinned memory) must not run while
 * the device's stream is being captured: Python's garbage collector can run a finaliser at any
 * allocation, in the middle of a capture, and a synchronising call there invalidates it. Returns
 * true if the stream is being captured, after queueing release(p) to run when the capture ends
 * (toc_graph_end, toc_graph_abort); false (nothing queued) otherwise. */
bool toc_defer_while_capturing(void (*release)(void *), void *p);

/* Programmatic dependent launch (Hopper or newer; INFERENCE_PIO_CUDA_PDL=0 turns it off, read once). A kernel
 * launched by toc_launch with it on may start while the kernel before it in the stream still
 * runs: such a kernel calls pdl_wait() before it reads anything an earlier kernel wrote or writes
 * anything at all (only weights, which no kernel writes, may be read before), and
 * pdl_launch_dependents() once the kernel after it may start. Both are no-ops in a kernel launched
 * without the attribute. Kernels launched with <<< >>> wait for everything before them, as usual. */
bool toc_pdl_enabled(void);
__device__ __forceinline__ void pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}
/* The start of a kernel launched by toc_launch: its wait, then the next kernel may start (it
 * starts while this one runs and waits for it in turn). Letting the next one start before this one
 * waits (so a kernel could launch two ahead) was slower on an H200: Qwen3-MoE 786 against 827
 * tok/s, GLM-4.7-Flash 1708 against 1740. */
__device__ __forceinline__ void pdl_enter(void) {
    pdl_wait();
    pdl_launch_dependents();
}
/* a GEMV's, after its first weight loads are issued: the next kernel may start first */
__device__ __forceinline__ void pdl_enter_gemv(void) {
    pdl_launch_dependents();
    pdl_wait();
}
/* A cudaLaunchKernelEx configuration on the device's stream with one attribute (*attr must outlive
 * the launch call). */
static inline cudaLaunchConfig_t toc_launch_config(dim3 grid, dim3 block, size_t smem, cudaLaunchAttribute *attr) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = toc_stream();
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}
/* kernel<<<grid, block, smem, toc_stream()>>>(args...), with the PDL attribute when it is on */
template <typename... KArgs, typename... Args>
static inline cudaError_t toc_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args... args) {
    if (!toc_pdl_enabled()) {
        kernel<<<grid, block, smem, toc_stream()>>>(args...);
        return cudaGetLastError();
    }
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    const cudaLaunchConfig_t cfg = toc_launch_config(grid, block, smem, &attr);
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

#define TOC_CHECK(cond, code, ...)                          \
    do {                                                    \
        if (!(cond)) return toc_set_error((code), __VA_ARGS__); \
    } while (0)
#define TOC_CUDA(call, what)                                \
    do {                                                    \
        cudaError_t e_ = (call);                            \
        if (e_ != cudaSuccess) return toc_cuda_error(e_, (what)); \
    } while (0)
/* After a kernel launch: reports launch-configuration errors (execution errors surface at the
 * next synchronisation). */
#define TOC_LAUNCHED(what) TOC_CUDA(cudaGetLastError(), (what))
#define TOC_READY() do { int r_ = toc_device_ready(); if (r_) return r_; } while (0)

static inline int64_t to_dtype_size_cuda(int dt) {
    switch (dt) {
    case TO_F32: case TO_I32: return 4;
    case TO_F16: case TO_BF16: case TO_I16: return 2;
    case TO_I64: case TO_F64: return 8;
    case TO_U8: case TO_BOOL: case TO_I8: case TO_F8_E4M3: return 1;
    default: return -1;
    }
}
static inline int toc_is_act(int dt) { return dt == TO_F32 || dt == TO_BF16; }
static inline int toc_is_wt(int dt) { return dt == TO_F32 || dt == TO_BF16 || dt == TO_F16; }
static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }
static inline int64_t toc_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline unsigned toc_grid(int64_t n, int threads, int64_t cap = 65535LL * 16) {
    int64_t g = toc_cdiv(n, threads);
    if (g < 1) g = 1;
    if (g > cap) g = cap;
    return (unsigned)g;
}

/* ---- shared-memory barriers (mbarrier) and TMA copies (sm_90) ----
 * An mbarrier counts arrivals and, for TMA copies, bytes in flight; a phase completes when both
 * reach zero, and waiting for a phase by its parity also makes the copied bytes visible. */
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
/* after initialising barriers, before any thread or copy uses them */
__device__ __forceinline__ void mbar_init_fence(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n.reg .pred P1;\nMB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@!P1 bra MB_WAIT;\n}\n" ::"r"(bar), "r"(parity)
                 : "memory");
}
/* the producer's arrival, announcing the bytes the phase's copies will deliver */
__device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
/* a box of a 2-D / 3-D tensor map at the given coordinates (innermost first) into shared memory,
 * completing on bar */
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, int c0, int c1, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                 ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar) : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
                 ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}
#endif

/* ---- device-side dtype helpers ---- */
/* 16 bytes read once (weights streamed by a GEMV): no L1 allocation, so L1 keeps what is reused */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ float bf2f(uint16_t v) { return __uint_as_float(((uint32_t)v) << 16); }
__device__ __forceinline__ uint16_t f2bf(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
__device__ __forceinline__ float rbf(float f) { return bf2f(f2bf(f)); }
__device__ __forceinline__ float h2f(uint16_t v) { return __half2float(__ushort_as_half(v)); }
__device__ __forceinline__ float ldf(const void *p, int dt, int64_t i) {
    if (dt == TO_F32) return ((const float *)p)[i];
    if (dt == TO_BF16) return bf2f(((const uint16_t *)p)[i]);
    return h2f(((const uint16_t *)p)[i]);
}
/* The same load for a compile-time dtype: in a loop, a runtime dtype switch around each load makes
 * the compiler convert each value right after its load, so the loads run one after another. */
template <int DT>
__device__ __forceinline__ float ld_as(const void *p, int64_t i) {
    if (DT == TO_F32) return ((const float *)p)[i];
    if (DT == TO_BF16) return bf2f(((const uint16_t *)p)[i]);
    return h2f(((const uint16_t *)p)[i]);
}
__device__ __forceinline__ void stf(void *p, int dt, int64_t i, float v) {
    if (dt == TO_F32) ((float *)p)[i] = v;
    else if (dt == TO_BF16) ((uint16_t *)p)[i] = f2bf(v);
    else ((uint16_t *)p)[i] = __half_as_ushort(__float2half_rn(v));
}
/* Rounds to the storage precision of dt (identity for f32). */
__device__ __forceinline__ float rnd(int dt, float v) {
    if (dt == TO_BF16) return rbf(v);
    if (dt == TO_F16) return __half2float(__float2half_rn(v));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Block-wide sum (blockDim.x a multiple of 32, <= 1024); every thread gets the result. */
__device__ __forceinline__ float block_sum(float v, float *red /* >= 33 floats */) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    t = warp_sum(t);
    return t;
}
__device__ __forceinline__ float block_max(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : -INFINITY;
    return warp_max(t);
}

/* 8 bf16 values packed in 16 bytes -> fp32 */
__device__ __forceinline__ void bf8(uint4 v, float *f) {
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

/* 8 floats -> 8 bf16 packed in 16 bytes (round to nearest even) */
__device__ __forceinline__ uint4 pack_bf8(const float *f) {
    uint32_t u[4];
#pragma unroll
    for (int i = 0; i < 4; i++) u[i] = (uint32_t)f2bf(f[2 * i]) | ((uint32_t)f2bf(f[2 * i + 1]) << 16);
    return make_uint4(u[0], u[1], u[2], u[3]);
}

/* The same roundings in conversion instructions (cvt.rn: f2bf's bits for every value but NaN
 * payloads, which come out canonical), for kernels whose bf16 roundings are on the critical path:
 * two values in one cvt.rn.bf16x2 (lo in the low half), one value there and back, eight packed. */
__device__ __forceinline__ uint32_t bf2_rn(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ float rbf_rn(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
__device__ __forceinline__ uint4 pack_bf8_rn(const float *f) {
    return make_uint4(bf2_rn(f[0], f[1]), bf2_rn(f[2], f[3]), bf2_rn(f[4], f[5]), bf2_rn(f[6], f[7]));
}

/* Packed greedy-argmax key: order-preserving value bits above ~index (ties -> lowest index), for
 * a 64-bit atomicMax; 0 means "nothing yet". */
__device__ __forceinline__ unsigned long long argmax_key(float v, int64_t idx) {
    uint32_t u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (uint32_t)idx);
}

/* RoPE of one pair without FMA contraction; bf16 rounds every product like torch. */
__device__ __forceinline__ void rope_pair_dev(float x1, float x2, float c, float s, bool bf,
                                              float &o1, float &o2) {
    float p1 = __fmul_rn(x1, c), p2 = __fmul_rn(x2, s), p3 = __fmul_rn(x2, c), p4 = __fmul_rn(x1, s);
    if (bf) {
        p1 = rbf(p1);
        p2 = rbf(p2);
        p3 = rbf(p3);
        p4 = rbf(p4);
    }
    o1 = __fsub_rn(p1, p2);
    o2 = __fadd_rn(p3, p4);
}

/* c += A * B on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate). Lane (gid = lane / 4,
 * tig = lane % 4) holds a0 = A[gid][2 tig, +1], a1 = A[gid + 8][2 tig, +1], a2 = A[gid][2 tig + 8,
 * +9], a3 = A[gid + 8][2 tig + 8, +9] (A 16 x 16, the lower column in the low half), b0 = B[2 tig,
 * +1][gid], b1 = B[2 tig + 8, +9][gid] (B 16 x 8), and c0, c1 = C[gid][2 tig, +1], c2, c3 =
 * C[gid + 8][2 tig, +1]. */
__device__ __forceinline__ void mma_bf16_16816(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#endif
