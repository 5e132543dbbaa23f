/* CUDA runtime of libtensor_ops_cuda: errors, devices, the per-device stream, a caching device
 * allocator with statistics, pinned host buffers, copies, memset, CUDA graphs, probes. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common.cuh"

/* ---- errors ---- */
static thread_local char g_err[1024];

int toc_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

int toc_cuda_error(cudaError_t e, const char *what) {
    int code = e == cudaErrorMemoryAllocation ? TO_ERR_OUT_OF_MEMORY : TO_ERR_CUDA;
    return toc_set_error(code, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

TOC_EXPORT const char *toc_last_error(void) { return g_err; }
TOC_EXPORT void toc_clear_error(void) { g_err[0] = 0; }
TOC_EXPORT int toc_abi_version(void) { return TO_ABI_VERSION; }

/* ---- devices ---- */
#define TOC_MAX_DEVICES 16
static std::mutex g_dev_lock;
static cudaStream_t g_streams[TOC_MAX_DEVICES];
static int g_smem_optin[TOC_MAX_DEVICES];
static int g_sms[TOC_MAX_DEVICES];
static int g_cc_major[TOC_MAX_DEVICES];
static thread_local int t_device = -1;

/* Number of CUDA devices; distinguishes a missing driver from a machine without devices. */
TOC_EXPORT int toc_device_count(int *count) {
    TOC_CHECK(count, TO_ERR_INVALID_ARGUMENT, "toc_device_count: count is NULL");
    *count = 0;
    int drv = 0;
    cudaError_t e = cudaDriverGetVersion(&drv);
    if (e != cudaSuccess || drv == 0)
        return toc_set_error(TO_ERR_CUDA, "no NVIDIA driver: the CUDA driver library (libcuda.so) "
                                          "was not found or could not be loaded");
    int n = 0;
    e = cudaGetDeviceCount(&n);
    if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0))
        return toc_set_error(TO_ERR_CUDA, "no CUDA device: the NVIDIA driver (version %d) sees no GPU",
                             drv);
    if (e == cudaErrorInsufficientDriver)
        return toc_set_error(TO_ERR_CUDA, "NVIDIA driver too old: driver supports CUDA %d.%d, this "
                             "library was built with CUDA %d.%d", drv / 1000, (drv % 1000) / 10,
                             CUDART_VERSION / 1000, (CUDART_VERSION % 1000) / 10);
    if (e != cudaSuccess) return toc_cuda_error(e, "cudaGetDeviceCount");
    *count = n;
    return TO_OK;
}

TOC_EXPORT int toc_driver_version(int *driver, int *runtime) {
    TOC_CHECK(driver && runtime, TO_ERR_INVALID_ARGUMENT, "toc_driver_version: NULL argument");
    *driver = 0;
    *runtime = CUDART_VERSION;
    cudaDriverGetVersion(driver);
    return TO_OK;
}

static int init_device(int dev) {
    std::lock_guard<std::mutex> g(g_dev_lock);
    if (g_streams[dev]) return TO_OK;
    TOC_CUDA(cudaSetDevice(dev), "cudaSetDevice");
    cudaStream_t s;
    TOC_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    int optin = 0, sms = 0;
    TOC_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
             "cudaDeviceGetAttribute");
    TOC_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
             "cudaDeviceGetAttribute");
    int major = 0;
    TOC_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
             "cudaDeviceGetAttribute");
    g_smem_optin[dev] = optin;
    g_sms[dev] = sms;
    g_cc_major[dev] = major;
    g_streams[dev] = s;
    return TO_OK;
}

/* Makes dev the calling thread's current device (initialises it on first use). */
TOC_EXPORT int toc_set_device(int dev) {
    int n = 0;
    int rc = toc_device_count(&n);
    if (rc) return rc;
    TOC_CHECK(dev >= 0 && dev < n && dev < TOC_MAX_DEVICES, TO_ERR_INVALID_ARGUMENT,
              "cuda:%d does not exist (%d CUDA device%s)", dev, n, n == 1 ? "" : "s");
    rc = init_device(dev);
    if (rc) return rc;
    TOC_CUDA(cudaSetDevice(dev), "cudaSetDevice");
    t_device = dev;
    return TO_OK;
}

TOC_EXPORT int toc_get_device(int *dev) {
    TOC_CHECK(dev, TO_ERR_INVALID_ARGUMENT, "toc_get_device: NULL");
    *dev = t_device < 0 ? 0 : t_device;
    return TO_OK;
}

int toc_device_ready(void) {
    if (t_device >= 0) return TO_OK;
    return toc_set_device(0);
}
cudaStream_t toc_stream(void) { return g_streams[t_device < 0 ? 0 : t_device]; }
int toc_max_smem_optin(void) { return g_smem_optin[t_device < 0 ? 0 : t_device]; }
int toc_sm_count(void) { return g_sms[t_device < 0 ? 0 : t_device]; }
int toc_cc_major(void) { return g_cc_major[t_device < 0 ? 0 : t_device]; }
typedef CUresult (*TocEncodeTiled)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                   const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
/* the driver's tensor-map encoder, through the runtime (no link against libcuda); NULL if absent */
static TocEncodeTiled toc_encoder(void) {
    static TocEncodeTiled fn = nullptr;
    static std::once_flag once;
    std::call_once(once, [] {
        cudaDriverEntryPointQueryResult q;
        void *p = nullptr;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (TocEncodeTiled)p;
        else
            (void)cudaGetLastError();
    });
    return fn;
}
bool toc_tensor_maps_available(void) { return toc_encoder() != nullptr; }
bool toc_tensor_map_bf16(CUtensorMap *m, const void *base, int rank, const cuuint64_t *dims,
                         const cuuint64_t *strides, unsigned box_rows) {
    TocEncodeTiled enc = toc_encoder();
    if (!enc) return false;
    const cuuint32_t box[3] = {64, box_rows, 1}, es[3] = {1, 1, 1};
    return enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, (cuuint32_t)rank, (void *)base, dims, strides, box, es,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* programmatic dependent launch: on for Hopper or newer unless INFERENCE_PIO_CUDA_PDL=0 */
bool toc_pdl_enabled(void) {
    static int env = -1;
    if (env < 0) {
        const char *e = getenv("INFERENCE_PIO_CUDA_PDL");
        env = !(e && e[0] == '0');
    }
    return env && toc_cc_major() >= 9;
}

/* name: at least cap bytes; total_mem in bytes; bus width in bits; mem clock in kHz. */
TOC_EXPORT int toc_device_info(int dev, char *name, size_t cap, int64_t *total_mem, int *sm_count,
                               int *cc_major, int *cc_minor) {
    int n = 0;
    int rc = toc_device_count(&n);
    if (rc) return rc;
    TOC_CHECK(dev >= 0 && dev < n, TO_ERR_INVALID_ARGUMENT, "cuda:%d does not exist", dev);
    cudaDeviceProp p;
    TOC_CUDA(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
    if (name && cap) {
        strncpy(name, p.name, cap - 1);
        name[cap - 1] = 0;
    }
    if (total_mem) *total_mem = (int64_t)p.totalGlobalMem;
    if (sm_count) *sm_count = p.multiProcessorCount;
    if (cc_major) *cc_major = p.major;
    if (cc_minor) *cc_minor = p.minor;
    return TO_OK;
}

TOC_EXPORT int toc_synchronize(void) {
    TOC_READY();
    TOC_CUDA(cudaStreamSynchronize(toc_stream()), "cudaStreamSynchronize");
    return TO_OK;
}

/* ---- caching allocator ----
 * Blocks are rounded to 512 bytes (small) or 2 MiB (>= 1 MiB) and kept per device in a size-ordered
 * free list after toc_free. All work runs on the device's one stream, so a freed block can be
 * handed out again at once: later work on that stream is ordered after earlier uses. */
struct Pool {
    std::multimap<size_t, void *> free_blocks;
    std::unordered_map<void *, size_t> live;  /* ptr -> rounded size */
    int64_t in_use = 0, peak = 0, cached = 0, n_malloc = 0;
};
static std::mutex g_pool_lock;
static Pool g_pools[TOC_MAX_DEVICES];
static std::unordered_map<void *, int> g_owner; /* ptr -> device */

static size_t round_size(size_t n) {
    if (n < ((size_t)1 << 20)) return (n + 511) & ~(size_t)511;
    size_t g = (size_t)2 << 20;
    return (n + g - 1) / g * g;
}

static void release_cached(Pool &p, int dev) {
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(dev);
    for (auto &kv : p.free_blocks) {
        cudaFree(kv.second);
        g_owner.erase(kv.second);
    }
    p.free_blocks.clear();
    p.cached = 0;
    cudaSetDevice(prev);
}

TOC_EXPORT int toc_malloc(size_t nbytes, void **out) {
    TOC_CHECK(out, TO_ERR_INVALID_ARGUMENT, "toc_malloc: out is NULL");
    *out = NULL;
    TOC_READY();
    int dev = t_device;
    size_t sz = round_size(nbytes ? nbytes : 1);
    std::lock_guard<std::mutex> g(g_pool_lock);
    Pool &p = g_pools[dev];
    auto it = p.free_blocks.lower_bound(sz);
    if (it != p.free_blocks.end() && it->first <= sz + sz / 4 + 4096) {
        void *ptr = it->second;
        size_t bs = it->first;
        p.free_blocks.erase(it);
        p.cached -= (int64_t)bs;
        p.live[ptr] = bs;
        p.in_use += (int64_t)bs;
        if (p.in_use > p.peak) p.peak = p.in_use;
        *out = ptr;
        return TO_OK;
    }
    void *ptr = NULL;
    cudaError_t e = cudaMalloc(&ptr, sz);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        cudaStreamSynchronize(toc_stream());
        release_cached(p, dev);
        e = cudaMalloc(&ptr, sz);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return toc_set_error(e == cudaErrorMemoryAllocation ? TO_ERR_OUT_OF_MEMORY : TO_ERR_CUDA,
                             "cuda:%d: cannot allocate %zu bytes (%s); %zu of %zu bytes free, %lld "
                             "in use by inference_pio", dev, sz, cudaGetErrorString(e), fr, tot,
                             (long long)p.in_use);
    }
    p.live[ptr] = sz;
    g_owner[ptr] = dev;
    p.n_malloc++;
    p.in_use += (int64_t)sz;
    if (p.in_use > p.peak) p.peak = p.in_use;
    *out = ptr;
    return TO_OK;
}

TOC_EXPORT int toc_free(void *ptr) {
    if (!ptr) return TO_OK;
    std::lock_guard<std::mutex> g(g_pool_lock);
    auto o = g_owner.find(ptr);
    TOC_CHECK(o != g_owner.end(), TO_ERR_INVALID_ARGUMENT, "toc_free: %p was not allocated by "
              "toc_malloc", ptr);
    Pool &p = g_pools[o->second];
    auto it = p.live.find(ptr);
    TOC_CHECK(it != p.live.end(), TO_ERR_INVALID_ARGUMENT, "toc_free: %p freed twice", ptr);
    size_t bs = it->second;
    p.live.erase(it);
    p.in_use -= (int64_t)bs;
    p.cached += (int64_t)bs;
    p.free_blocks.emplace(bs, ptr);
    return TO_OK;
}

/* Bytes handed out, the peak since the last reset, bytes cached in the free lists, and the number
 * of cudaMalloc calls made (of the current device). */
TOC_EXPORT int toc_memory_stats(int64_t *in_use, int64_t *peak, int64_t *cached,
                                int64_t *n_malloc) {
    TOC_READY();
    std::lock_guard<std::mutex> g(g_pool_lock);
    Pool &p = g_pools[t_device];
    if (in_use) *in_use = p.in_use;
    if (peak) *peak = p.peak;
    if (cached) *cached = p.cached;
    if (n_malloc) *n_malloc = p.n_malloc;
    return TO_OK;
}

/* Returns cached blocks to the driver and resets the peak to the current use. */
TOC_EXPORT int toc_memory_trim(void) {
    TOC_READY();
    TOC_CUDA(cudaStreamSynchronize(toc_stream()), "cudaStreamSynchronize");
    std::lock_guard<std::mutex> g(g_pool_lock);
    Pool &p = g_pools[t_device];
    release_cached(p, t_device);
    p.peak = p.in_use;
    return TO_OK;
}

/* ---- pinned host memory ---- */
TOC_EXPORT int toc_host_alloc(size_t nbytes, void **out) {
    TOC_CHECK(out, TO_ERR_INVALID_ARGUMENT, "toc_host_alloc: out is NULL");
    *out = NULL;
    TOC_READY();
    TOC_CUDA(cudaMallocHost(out, nbytes ? nbytes : 1), "cudaMallocHost");
    return TO_OK;
}
static void host_free_now(void *ptr) { cudaFreeHost(ptr); }
TOC_EXPORT int toc_host_free(void *ptr) {
    if (!ptr) return TO_OK;
    if (toc_defer_while_capturing(host_free_now, ptr)) return TO_OK; /* cudaFreeHost synchronises */
    TOC_CUDA(cudaFreeHost(ptr), "cudaFreeHost");
    return TO_OK;
}

/* ---- copies ----
 * kind: 1 host->device, 2 device->host, 3 device->device. Ordered on the device's stream;
 * blocking != 0 waits for completion (required before reading a device->host result from pageable
 * memory). Asynchronous host copies need pinned host memory (toc_host_alloc) to overlap. */
TOC_EXPORT int toc_memcpy(void *dst, const void *src, size_t nbytes, int kind, int blocking) {
    TOC_CHECK(kind >= 1 && kind <= 3, TO_ERR_INVALID_ARGUMENT, "toc_memcpy: kind %d", kind);
    if (nbytes == 0) return TO_OK;
    TOC_CHECK(dst && src, TO_ERR_INVALID_ARGUMENT, "toc_memcpy: NULL pointer");
    TOC_READY();
    cudaMemcpyKind k = kind == 1 ? cudaMemcpyHostToDevice
                       : kind == 2 ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
    TOC_CUDA(cudaMemcpyAsync(dst, src, nbytes, k, toc_stream()), "cudaMemcpyAsync");
    if (blocking) TOC_CUDA(cudaStreamSynchronize(toc_stream()), "cudaStreamSynchronize");
    return TO_OK;
}

TOC_EXPORT int toc_memcpy2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                            size_t height, int kind) {
    TOC_CHECK(kind >= 1 && kind <= 3, TO_ERR_INVALID_ARGUMENT, "toc_memcpy2d: kind %d", kind);
    if (width == 0 || height == 0) return TO_OK;
    TOC_CHECK(dst && src, TO_ERR_INVALID_ARGUMENT, "toc_memcpy2d: NULL pointer");
    TOC_CHECK(width <= dpitch && width <= spitch, TO_ERR_INVALID_ARGUMENT,
              "toc_memcpy2d: width %zu exceeds a pitch (%zu, %zu)", width, dpitch, spitch);
    TOC_READY();
    cudaMemcpyKind k = kind == 1 ? cudaMemcpyHostToDevice
                       : kind == 2 ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
    TOC_CUDA(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, k, toc_stream()), "cudaMemcpy2DAsync");
    return TO_OK;
}

TOC_EXPORT int toc_memset(void *dst, int value, size_t nbytes) {
    if (nbytes == 0) return TO_OK;
    TOC_CHECK(dst, TO_ERR_INVALID_ARGUMENT, "toc_memset: NULL pointer");
    TOC_READY();
    TOC_CUDA(cudaMemsetAsync(dst, value, nbytes, toc_stream()), "cudaMemsetAsync");
    return TO_OK;
}

/* ---- releases deferred past a capture (see common.cuh) ---- */
static std::mutex g_deferred_lock;
static std::vector<std::pair<void (*)(void *), void *>> g_deferred;

bool toc_defer_while_capturing(void (*release)(void *), void *p) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(toc_stream(), &cs) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    if (cs == cudaStreamCaptureStatusNone) return false;
    std::lock_guard<std::mutex> g(g_deferred_lock);
    g_deferred.emplace_back(release, p);
    return true;
}

static void run_deferred(void) {
    std::vector<std::pair<void (*)(void *), void *>> todo;
    {
        std::lock_guard<std::mutex> g(g_deferred_lock);
        todo.swap(g_deferred);
    }
    for (auto &d : todo) d.first(d.second);
}

/* ---- CUDA graphs ----
 * toc_graph_begin starts capturing the device stream: toc_ calls made until toc_graph_end are
 * recorded, not run (they must not synchronise). toc_graph_end instantiates the graph;
 * toc_graph_launch replays it `times` times back to back on the stream. Relaxed mode: a step
 * captured as it runs op by op (nn.cuda_capture) allocates its buffers as it goes, and the caching
 * allocator's cudaMalloc touches no stream. */
TOC_EXPORT int toc_graph_begin(void) {
    TOC_READY();
    TOC_CUDA(cudaStreamBeginCapture(toc_stream(), cudaStreamCaptureModeRelaxed),
             "cudaStreamBeginCapture");
    return TO_OK;
}

TOC_EXPORT int toc_graph_end(void **exec_out) {
    TOC_CHECK(exec_out, TO_ERR_INVALID_ARGUMENT, "toc_graph_end: NULL");
    *exec_out = NULL;
    TOC_READY();
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(toc_stream(), &graph);
    run_deferred();
    if (e != cudaSuccess) {
        cudaGetLastError();
        return toc_cuda_error(e, "cudaStreamEndCapture (an op failed or synchronised during capture)");
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) return toc_cuda_error(e, "cudaGraphInstantiate");
    *exec_out = (void *)exec;
    return TO_OK;
}

/* Ends a capture that failed part-way, discarding it. */
TOC_EXPORT int toc_graph_abort(void) {
    TOC_READY();
    cudaStreamCaptureStatus st;
    if (cudaStreamIsCapturing(toc_stream(), &st) == cudaSuccess &&
        st != cudaStreamCaptureStatusNone) {
        cudaGraph_t graph = NULL;
        cudaStreamEndCapture(toc_stream(), &graph);
        if (graph) cudaGraphDestroy(graph);
    }
    cudaGetLastError();
    run_deferred();
    return TO_OK;
}

TOC_EXPORT int toc_graph_launch(void *exec, int times) {
    TOC_CHECK(exec, TO_ERR_INVALID_ARGUMENT, "toc_graph_launch: NULL graph");
    TOC_CHECK(times >= 0, TO_ERR_INVALID_ARGUMENT, "toc_graph_launch: times %d", times);
    TOC_READY();
    for (int i = 0; i < times; i++)
        TOC_CUDA(cudaGraphLaunch((cudaGraphExec_t)exec, toc_stream()), "cudaGraphLaunch");
    return TO_OK;
}

static void graph_destroy_now(void *exec) { cudaGraphExecDestroy((cudaGraphExec_t)exec); }
TOC_EXPORT int toc_graph_destroy(void *exec) {
    if (!exec) return TO_OK;
    if (toc_defer_while_capturing(graph_destroy_now, exec)) return TO_OK;
    TOC_CUDA(cudaGraphExecDestroy((cudaGraphExec_t)exec), "cudaGraphExecDestroy");
    return TO_OK;
}

/* ---- probes ---- */
__global__ void copy_kernel(const uint4 *__restrict__ src, uint4 *__restrict__ dst, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

/* Device-to-device copy bandwidth of a 16-byte-vector kernel over `bytes` (>= 1 MiB), counting bytes
 * read plus bytes written (GB/s = 1e9 B/s), best of `iters` timed runs after a warm-up. */
TOC_EXPORT int toc_bench_copy_bandwidth(int64_t bytes, int iters, double *gbps) {
    TOC_CHECK(gbps && bytes >= (1 << 20) && iters >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_bench_copy_bandwidth: bytes >= 1 MiB, iters >= 1, gbps non-NULL");
    TOC_READY();
    void *a = NULL, *b = NULL;
    int64_t n = bytes / 16;
    TOC_CUDA(cudaMalloc(&a, n * 16), "cudaMalloc");
    cudaError_t e = cudaMalloc(&b, n * 16);
    if (e != cudaSuccess) {
        cudaFree(a);
        return toc_cuda_error(e, "cudaMalloc");
    }
    cudaMemsetAsync(a, 1, n * 16, toc_stream());
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    unsigned grid = (unsigned)(toc_sm_count() * 8);
    float best = 1e30f;
    for (int it = 0; it <= iters; it++) {
        cudaEventRecord(e0, toc_stream());
        copy_kernel<<<grid, 512, 0, toc_stream()>>>((const uint4 *)a, (uint4 *)b, n);
        cudaEventRecord(e1, toc_stream());
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        if (it > 0 && ms < best) best = ms;
    }
    e = cudaGetLastError();
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    if (e != cudaSuccess) return toc_cuda_error(e, "copy_kernel");
    *gbps = 2.0 * (double)(n * 16) / (best * 1e-3) / 1e9;
    return TO_OK;
}

/* Grid-stride read with 8 independent 16-byte loads in flight per thread (4 blocks of 512 threads
 * per multiprocessor): ~4.6 TB/s on an H200, where one load in flight per thread read ~3.9-4.2. */
__global__ void read_kernel(const uint4 *a, int64_t n, unsigned *sink) {
    unsigned acc = 0;
    const int64_t T = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i0 < n; i0 += 8 * T) {
        uint4 v[8];
#pragma unroll
        for (int q = 0; q < 8; q++) v[q] = i0 + q * T < n ? ld_stream(a + i0 + q * T) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int q = 0; q < 8; q++) acc ^= v[q].x ^ v[q].y ^ v[q].z ^ v[q].w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc; /* keeps the loads; practically never stores */
}

/* The read pattern of the fused decode step: one block per multiprocessor owns a contiguous range,
 * each warp a contiguous part of it in 512-byte units (16 bytes a lane), 8 units in flight per
 * warp (one block per multiprocessor, 64 KB in flight each). On an H200 this reads ~4.3-4.4 TB/s. */
__global__ void read_kernel_ranges(const uint4 *a, int64_t units, unsigned *sink) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int64_t b0 = units * blockIdx.x / gridDim.x, b1 = units * (blockIdx.x + 1) / gridDim.x;
    const int64_t u0 = b0 + (b1 - b0) * warp / nw, u1 = b0 + (b1 - b0) * (warp + 1) / nw;
    unsigned acc = 0;
    for (int64_t u = u0; u < u1; u += 8) {
        uint4 v[8];
#pragma unroll
        for (int q = 0; q < 8; q++) v[q] = u + q < u1 ? __ldcs(a + (u + q) * 32 + lane) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int q = 0; q < 8; q++) acc ^= v[q].x ^ v[q].y ^ v[q].z ^ v[q].w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;
}

/* Device read bandwidth: kernels that only read `bytes` (>= 1 MiB), GB/s of bytes read, best of
 * `iters` timed runs (of TOC_BW_REPS launches each) after a warm-up, best of two access patterns
 * (a grid-stride loop and the decode step's per-block ranges): the ceiling of a batch-1 GEMV. */
TOC_EXPORT int toc_bench_read_bandwidth(int64_t bytes, int iters, double *gbps) {
    TOC_CHECK(gbps && bytes >= (1 << 20) && iters >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_bench_read_bandwidth: bytes >= 1 MiB, iters >= 1, gbps non-NULL");
    TOC_READY();
    void *a = NULL;
    int64_t n = bytes / 16;
    TOC_CUDA(cudaMalloc(&a, n * 16 + 64), "cudaMalloc");
    cudaMemsetAsync(a, 1, n * 16 + 64, toc_stream());
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const unsigned sms = (unsigned)toc_sm_count();
    double best = 0.0; /* GB/s */
    /* each timed run is TOC_BW_REPS launches back to back: a single launch's start and drain
     * (~20 us on an H200) would count as ~4% of a 2 GiB read */
    enum { TOC_BW_REPS = 8 };
    for (int it = 0; it <= 2 * iters + 1; it++) {
        const bool ranges = it > iters;
        cudaEventRecord(e0, toc_stream());
        for (int r = 0; r < TOC_BW_REPS; r++) {
            if (ranges)
                read_kernel_ranges<<<sms, 512, 0, toc_stream()>>>((const uint4 *)a, n / 32, (unsigned *)((char *)a + n * 16));
            else
                read_kernel<<<sms * 4, 512, 0, toc_stream()>>>((const uint4 *)a, n, (unsigned *)((char *)a + n * 16));
        }
        cudaEventRecord(e1, toc_stream());
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        /* the ranges kernel reads whole 512-byte units; the first run of each kernel is a warm-up */
        const double gb = (double)TOC_BW_REPS * (double)(ranges ? n / 32 * 512 : n * 16) / 1e9;
        if (it != 0 && it != iters + 1 && ms > 0 && gb / (ms * 1e-3) > best) best = gb / (ms * 1e-3);
    }
    cudaError_t e = cudaGetLastError();
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    if (e != cudaSuccess) return toc_cuda_error(e, "read_kernel");
    *gbps = best;
    return TO_OK;
}

/* ---- random fill (device): splitmix64 counter hash + Box-Muller. distribution 0 = normal(mean,
 * std), 1 = uniform[mean - std, mean + std). Values differ from the CPU to_fill_random. */
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
__global__ void fill_random_kernel(void *out, int64_t n, int dt, uint64_t seed, float mean,
                                   float std, int dist) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t h = mix64(seed ^ mix64((uint64_t)i));
        float u1 = ((h >> 40) + 1) * (1.0f / 16777217.0f), u2 = ((h >> 16) & 0xffffff) * (1.0f / 16777216.0f);
        float v = dist == 0 ? mean + std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2)
                            : mean + std * (2.0f * u2 - 1.0f);
        stf(out, dt, i, v);
    }
}
TOC_EXPORT int toc_fill_random(void *out, int64_t n, int dtype, uint64_t seed, float mean,
                               float std, int distribution) {
    TOC_CHECK(n >= 0 && (out || n == 0), TO_ERR_INVALID_ARGUMENT, "toc_fill_random: bad args");
    TOC_CHECK(toc_is_wt(dtype), TO_ERR_DTYPE, "toc_fill_random: dtype %d", dtype);
    TOC_CHECK(distribution == 0 || distribution == 1, TO_ERR_INVALID_ARGUMENT,
              "toc_fill_random: distribution %d", distribution);
    if (n == 0) return TO_OK;
    TOC_READY();
    fill_random_kernel<<<toc_grid(n, 256, 8192), 256, 0, toc_stream()>>>(out, n, dtype, seed, mean,
                                                                          std, distribution);
    TOC_LAUNCHED("fill_random_kernel");
    return TO_OK;
}

int toc_buffer_reserve(TocBuffer *b, size_t bytes, void **out, const char *what) {
    int dev = 0;
    TOC_CUDA(cudaGetDevice(&dev), "cudaGetDevice");
    dev &= 15;
    if (b->size[dev] < bytes) {
        cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        TOC_CUDA(cudaStreamIsCapturing(toc_stream(), &cs), "cudaStreamIsCapturing");
        TOC_CHECK(cs == cudaStreamCaptureStatusNone, TO_ERR_UNSUPPORTED,
                  "%s: the workspace must grow to %zu bytes while a graph is being captured (run the op once "
                  "before capturing)", what, bytes);
        if (b->p[dev]) {
            TOC_CUDA(cudaStreamSynchronize(toc_stream()), "cudaStreamSynchronize");
            if (!b->captured[dev]) cudaFree(b->p[dev]); /* else a graph may replay into it */
            b->p[dev] = nullptr;
            b->size[dev] = 0;
            b->captured[dev] = false;
        }
        TOC_CUDA(cudaMalloc(&b->p[dev], bytes), what);
        b->size[dev] = bytes;
    } else {
        cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        TOC_CUDA(cudaStreamIsCapturing(toc_stream(), &cs), "cudaStreamIsCapturing");
        if (cs != cudaStreamCaptureStatusNone) b->captured[dev] = true;
    }
    *out = b->p[dev];
    return TO_OK;
}
