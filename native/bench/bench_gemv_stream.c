/* Kernel playground for the batch-1 bf16 GEMV's memory access pattern (AVX512-BF16 only).
 *
 * Streams a DRAM-sized bf16 matrix W[n, k] against one bf16 vector with several access patterns,
 * each checked against a double-precision reference, and prints GB/s:
 *   tile4     four W rows at once (four streams 2k bytes apart), the older dot tile
 *   row       one W row after another (one sequential stream per thread), to_linear's kernel
 *   row+pf D  the same with both cache lines of each 128-byte step prefetched D bytes ahead
 *   row2      two W rows interleaved
 * Rows are split into chunks of 64 claimed dynamically by the threads, like the library's tasks.
 * The matrix is anonymous memory, with or without MADV_HUGEPAGE, to show what 4 KiB pages cost.
 *
 *   gcc -O2 -pthread native/bench/bench_gemv_stream.c -o /tmp/bench_gemv_stream -lm
 *   /tmp/bench_gemv_stream [k=1024] [threads=2] [huge=1] [mbytes=600]
 *
 * Rerun it a few times: on a shared VM the bandwidth itself moves by 10-40% between runs, so only
 * differences that repeat mean something (to_linear's choices came from in-model A/B runs).
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define T512BF __attribute__((target("avx512f,avx512bw,avx512bf16")))
#define CHUNK 64

static int64_t N, K;
static uint16_t *W, *X;
static float *Y;
static int PFD;
static atomic_long next_row;

typedef void (*kern_fn)(int64_t j0, int64_t j1);

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static T512BF void k_tile4(int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const uint16_t *w0 = W + j * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        for (int64_t k = 0; k < K; k += 32) {
            __m512bh x = (__m512bh)_mm512_loadu_si512(X + k);
            a0 = _mm512_dpbf16_ps(a0, x, (__m512bh)_mm512_loadu_si512(w0 + k));
            a1 = _mm512_dpbf16_ps(a1, x, (__m512bh)_mm512_loadu_si512(w1 + k));
            a2 = _mm512_dpbf16_ps(a2, x, (__m512bh)_mm512_loadu_si512(w2 + k));
            a3 = _mm512_dpbf16_ps(a3, x, (__m512bh)_mm512_loadu_si512(w3 + k));
        }
        Y[j] = _mm512_reduce_add_ps(a0);
        Y[j + 1] = _mm512_reduce_add_ps(a1);
        Y[j + 2] = _mm512_reduce_add_ps(a2);
        Y[j + 3] = _mm512_reduce_add_ps(a3);
    }
}

static T512BF inline void row_impl(int64_t j0, int64_t j1, int prefetch) {
    for (int64_t j = j0; j < j1; j++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        const uint16_t *w = W + j * K;
        for (int64_t k = 0; k < K; k += 64) {
            if (prefetch) {
                _mm_prefetch((const char *)(w + k) + PFD, _MM_HINT_T0);
                _mm_prefetch((const char *)(w + k) + PFD + 64, _MM_HINT_T0);
            }
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(X + k),
                                  (__m512bh)_mm512_loadu_si512(w + k));
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(X + k + 32),
                                  (__m512bh)_mm512_loadu_si512(w + k + 32));
        }
        Y[j] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}
static T512BF void k_row(int64_t j0, int64_t j1) { row_impl(j0, j1, 0); }
static T512BF void k_row_pf(int64_t j0, int64_t j1) { row_impl(j0, j1, 1); }

static T512BF void k_row2(int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j += 2) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
        const uint16_t *w0 = W + j * K, *w1 = w0 + K;
        for (int64_t k = 0; k < K; k += 64) {
            __m512bh x0 = (__m512bh)_mm512_loadu_si512(X + k);
            __m512bh x1 = (__m512bh)_mm512_loadu_si512(X + k + 32);
            a0 = _mm512_dpbf16_ps(a0, x0, (__m512bh)_mm512_loadu_si512(w0 + k));
            a1 = _mm512_dpbf16_ps(a1, x1, (__m512bh)_mm512_loadu_si512(w0 + k + 32));
            b0 = _mm512_dpbf16_ps(b0, x0, (__m512bh)_mm512_loadu_si512(w1 + k));
            b1 = _mm512_dpbf16_ps(b1, x1, (__m512bh)_mm512_loadu_si512(w1 + k + 32));
        }
        Y[j] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        Y[j + 1] = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1));
    }
}

static kern_fn g_kern;

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        long j0 = atomic_fetch_add(&next_row, CHUNK);
        if (j0 >= N) return NULL;
        long j1 = j0 + CHUNK < N ? j0 + CHUNK : N;
        g_kern(j0, j1);
    }
}

static double run(kern_fn f, int threads) {
    pthread_t t[64];
    g_kern = f;
    atomic_store(&next_row, 0);
    double t0 = now_s();
    for (int i = 1; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
    worker(NULL);
    for (int i = 1; i < threads; i++) pthread_join(t[i], NULL);
    return now_s() - t0;
}

int main(int argc, char **argv) {
    K = argc > 1 ? atol(argv[1]) : 1024;
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    int huge = argc > 3 ? atoi(argv[3]) : 1;
    long mbytes = argc > 4 ? atol(argv[4]) : 600;
    if (!__builtin_cpu_supports("avx512bf16")) {
        fprintf(stderr, "needs AVX512-BF16\n");
        return 1;
    }
    if (K < 64 || K % 64 || threads < 1 || threads > 64) {
        fprintf(stderr, "k must be a multiple of 64; 1 <= threads <= 64\n");
        return 1;
    }
    N = (mbytes << 20) / (K * 2) / CHUNK * CHUNK;
    size_t bytes = (size_t)N * (size_t)K * 2;
    W = mmap(NULL, bytes + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (W == MAP_FAILED) return 1;
    if (huge) madvise(W, bytes, MADV_HUGEPAGE);
    X = aligned_alloc(64, (size_t)K * 2);
    Y = malloc((size_t)N * sizeof(float));
    srand(1);
    for (int64_t k = 0; k < K; k++) /* +-[2^-16, 1): varied exponents, so fp32 sums round */
        X[k] = (uint16_t)((rand() & 1 ? 0x8000 : 0) | (0x3780 + rand() % 0x800));
    for (size_t i = 0; i < (size_t)N * (size_t)K; i++)
        W[i] = (uint16_t)((rand() & 1 ? 0xbf00 : 0x3f00) | (rand() % 128)); /* +-[0.5, 1) */
    printf("W %lld x %lld bf16 (%.0f MB), %d threads, %s pages\n", (long long)N, (long long)K,
           bytes / 1e6, threads, huge ? "huge" : "4 KiB");
    struct {
        const char *name;
        kern_fn f;
        int pfd;
    } variants[] = {
        {"tile4", k_tile4, 0},
        {"row", k_row, 0},
        {"row+pf 1024", k_row_pf, 1024},
        {"row+pf 4096", k_row_pf, 4096},
        {"row+pf 16384", k_row_pf, 16384},
        {"row2", k_row2, 0},
    };
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        PFD = variants[v].pfd;
        double best = 1e30;
        for (int r = 0; r < 6; r++) {
            double s = run(variants[v].f, threads);
            if (s < best) best = s;
        }
        /* self-check a sample of rows against a double reference */
        double worst = 0.0;
        for (int64_t j = 0; j < N; j += N / 97 + 1) {
            double ref = 0.0, mag = 0.0;
            for (int64_t k = 0; k < K; k++) {
                double p = (double)bf2f(W[j * K + k]) * (double)bf2f(X[k]);
                ref += p;
                mag += fabs(p);
            }
            double err = fabs((double)Y[j] - ref) / (mag > 0 ? mag : 1.0);
            if (err > worst) worst = err;
        }
        printf("  %-13s %6.1f GB/s   max error %.1e of sum|products|%s\n", variants[v].name,
               bytes / best / 1e9, worst, worst > 1e-5 ? "  WRONG" : "");
    }
    return 0;
}
