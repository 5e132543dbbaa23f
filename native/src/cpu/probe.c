/* Machine probes for the benchmarks: read bandwidth and the AVX512-BF16 dot-product peak. */
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TO_X86 1
#endif

#include "../common/internal.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    const char *buf;
    int64_t bytes;
    int kind; /* 2 avx512, 1 avx2, 0 scalar */
    double sink[64];
} bw_ctx;

#ifdef TO_X86
__attribute__((target("avx512f"))) static double sum512(const char *p, int64_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i + 256 <= n; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 64));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 128));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 192));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    /* Reduce as unsigned: the lanes wrap on purpose (the sum only keeps the loads alive), and
     * _mm512_reduce_add_epi64 adds signed lanes, which is undefined on overflow (UBSan). */
    uint64_t lanes[8], total = 0;
    _mm512_storeu_si512(lanes, a0);
    for (int i = 0; i < 8; i++) total += lanes[i];
    return (double)total;
}
__attribute__((target("avx2"))) static double sum256(const char *p, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, a0);
    return (double)(t[0] + t[1] + t[2] + t[3]);
}
#endif

static double sum_scalar(const char *p, int64_t n) {
    const uint64_t *q = (const uint64_t *)p;
    uint64_t s0 = 0, s1 = 0;
    for (int64_t i = 0; i + 2 <= n / 8; i += 2) {
        s0 += q[i];
        s1 += q[i + 1];
    }
    return (double)(s0 + s1);
}

static void bw_task(void *vctx, int ith, int nth) {
    bw_ctx *ctx = vctx;
    /* 256-byte aligned slices */
    int64_t units = ctx->bytes / 256, u0, u1;
    to_split_rows(units, ith, nth, &u0, &u1);
    const char *p = ctx->buf + u0 * 256;
    int64_t n = (u1 - u0) * 256;
    double s;
#ifdef TO_X86
    if (ctx->kind == 2)
        s = sum512(p, n);
    else if (ctx->kind == 1)
        s = sum256(p, n);
    else
#endif
        s = sum_scalar(p, n);
    ctx->sink[ith & 63] += s;
}

static void fill_task(void *vctx, int ith, int nth) {
    bw_ctx *ctx = vctx;
    int64_t units = ctx->bytes / 256, u0, u1;
    to_split_rows(units, ith, nth, &u0, &u1);
    char *p = (char *)ctx->buf;
    for (int64_t i = u0 * 256; i < u1 * 256; i++) p[i] = (char)(i * 7);
}

TO_API int to_bench_read_bandwidth(int64_t bytes, int threads, double *gbps) {
    TO_CHECK_PTR(gbps);
    TO_CHECK(bytes >= (1 << 20), TO_ERR_INVALID_ARGUMENT,
             "to_bench_read_bandwidth: bytes must be >= 1 MiB, got %lld", (long long)bytes);
    TO_CHECK(threads >= 1 && threads <= to_get_num_threads(), TO_ERR_INVALID_ARGUMENT,
             "to_bench_read_bandwidth: threads must be in [1, %d] (to_set_num_threads), got %d",
             to_get_num_threads(), threads);
    bytes &= ~(int64_t)255;
    void *buf = NULL;
    int rc = to_alloc((size_t)bytes, &buf);
    if (rc != TO_OK) return rc;
    bw_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.buf = buf;
    ctx.bytes = bytes;
    uint32_t isa = to_isa();
    ctx.kind = (isa & TO_ISA_AVX512F) ? 2 : (isa & TO_ISA_AVX2) ? 1 : 0;
    to_parallel_run(fill_task, &ctx, threads);
    /* Sustained rate: whole passes over the buffer (larger than the last-level cache, so every
     * byte comes from DRAM), best pass of several. Timing single 4 MiB chunks instead reported
     * burst rates about 3x what a model-sized GEMV or torch.sum can sustain on this VM (80 vs
     * 27 GB/s), which made every bandwidth fraction look worse than it is. The buffer is still
     * read in 4 MiB chunks per parallel region, like decode GEMVs. At least 3 passes and 2 GB. */
    int64_t chunk = bytes < ((int64_t)4 << 20) ? bytes : ((int64_t)4 << 20);
    int64_t nchunks = bytes / chunk;
    int64_t passes = (int64_t)(2e9 / (double)(nchunks * chunk)) + 1;
    if (passes < 3) passes = 3;
    double best = 1e30;
    ctx.bytes = chunk;
    for (int64_t r = 0; r < passes; r++) {
        double t0 = now_s();
        for (int64_t c = 0; c < nchunks; c++) {
            ctx.buf = (const char *)buf + c * chunk;
            to_parallel_run(bw_task, &ctx, threads);
        }
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    to_free(buf);
    *gbps = (double)(chunk * nchunks) / best / 1e9;
    return TO_OK;
}

#ifdef TO_X86
typedef struct {
    int64_t iters;
    float sink[64];
} peak_ctx;

__attribute__((target("avx512f,avx512bf16"))) static void peak_task(void *vctx, int ith, int nth) {
    peak_ctx *ctx = vctx;
    /* every chain starts from its own value: chains with equal starts and inputs are one value,
     * which the compiler computed once (a single dependent chain, so the probe read the
     * instruction's latency as 12 instructions: twice the real peak on a Zen 4 core) */
    __m512 c0 = _mm512_set1_ps(0.0f), c1 = _mm512_set1_ps(1.0f), c2 = _mm512_set1_ps(2.0f),
           c3 = _mm512_set1_ps(3.0f), c4 = _mm512_set1_ps(4.0f), c5 = _mm512_set1_ps(5.0f),
           c6 = _mm512_set1_ps(6.0f), c7 = _mm512_set1_ps(7.0f), c8 = _mm512_set1_ps(8.0f),
           c9 = _mm512_set1_ps(9.0f), c10 = _mm512_set1_ps(10.0f), c11 = _mm512_set1_ps(11.0f);
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80 + ith);
    __m512bh b = (__m512bh)_mm512_set1_epi32(0x3c003c00);
    for (int64_t i = 0; i < ctx->iters; i++) {
        /* 12 independent chains: enough to cover latency x throughput on current cores */
        __asm__ volatile("" : "+v"(a), "+v"(b), "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3));
        c0 = _mm512_dpbf16_ps(c0, a, b);
        c1 = _mm512_dpbf16_ps(c1, a, b);
        c2 = _mm512_dpbf16_ps(c2, a, b);
        c3 = _mm512_dpbf16_ps(c3, a, b);
        c4 = _mm512_dpbf16_ps(c4, a, b);
        c5 = _mm512_dpbf16_ps(c5, a, b);
        c6 = _mm512_dpbf16_ps(c6, a, b);
        c7 = _mm512_dpbf16_ps(c7, a, b);
        c8 = _mm512_dpbf16_ps(c8, a, b);
        c9 = _mm512_dpbf16_ps(c9, a, b);
        c10 = _mm512_dpbf16_ps(c10, a, b);
        c11 = _mm512_dpbf16_ps(c11, a, b);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                             _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)));
    ctx->sink[ith & 63] = _mm512_reduce_add_ps(s);
}
#endif

TO_API int to_bench_bf16_peak(int threads, double *gflops) {
    TO_CHECK_PTR(gflops);
    TO_CHECK(threads >= 1 && threads <= to_get_num_threads(), TO_ERR_INVALID_ARGUMENT,
             "to_bench_bf16_peak: threads must be in [1, %d] (to_set_num_threads), got %d",
             to_get_num_threads(), threads);
#ifdef TO_X86
    if (to_isa() & TO_ISA_AVX512_BF16) {
        peak_ctx ctx;
        memset(&ctx, 0, sizeof ctx);
        /* short bursts (1.2 M instructions per thread, ~1 ms), best of many: a shared machine
         * preempts long runs */
        ctx.iters = 100000;
        double best = 1e30;
        for (int r = 0; r < 200; r++) {
            double t0 = now_s();
            to_parallel_run(peak_task, &ctx, threads);
            double t = now_s() - t0;
            if (t < best) best = t;
        }
        *gflops = (double)ctx.iters * 12.0 * 64.0 * threads / best / 1e9;
        return TO_OK;
    }
#endif
    return to_set_error(TO_ERR_UNSUPPORTED, "to_bench_bf16_peak: this CPU has no AVX512-BF16");
}
