/* Kernel playground for to_linear: a plain reference, then every kernel version the dispatcher
 * can pick (forced through to_set_isa_mask), each checked against the reference, with timings;
 * plus the machine probes (read bandwidth, AVX512-BF16 peak).
 *
 * Build against your library build dir and run:
 *   gcc -O2 -I native/include native/bench/bench_matmul.c -L$B -ltensor_ops -Wl,-rpath,$B -lm \
 *       -o /tmp/bench_matmul && /tmp/bench_matmul [threads]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensor_ops.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static float frand(void) { return (float)rand() / (float)RAND_MAX * 2.0f - 1.0f; }

/* reference: double accumulation over bf16 operands */
static void reference(const uint16_t *x, const uint16_t *w, float *y, int64_t m, int64_t n,
                      int64_t k) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t t = 0; t < k; t++) s += (double)bf2f(x[i * k + t]) * bf2f(w[j * k + t]);
            y[i * n + j] = (float)s;
        }
}

static const struct {
    const char *name;
    uint32_t mask;
} VERSIONS[] = {
    {"generic c", 0},
    {"avx2 f32 dot", TO_ISA_AVX2 | TO_ISA_FMA | TO_ISA_F16C},
    {"avx512 f32 dot", TO_ISA_AVX2 | TO_ISA_FMA | TO_ISA_F16C | TO_ISA_AVX512F | TO_ISA_AVX512BW |
                           TO_ISA_AVX512VL},
    {"avx512-bf16 (dot / packed gemm)", 0xffffffffu},
};

static void run_shape(int64_t m, int64_t n, int64_t k, int xt, int check_all) {
    /* GEMV weights rotate over >= 256 MB of copies so that they come from DRAM, as in decode */
    int64_t copies = m < 8 ? ((int64_t)256 << 20) / (n * k * 2) + 1 : 1;
    uint16_t *x = malloc((size_t)(m * k) * 2), *w = malloc((size_t)(copies * n * k) * 2);
    float *xf = malloc((size_t)(m * k) * 4), *y = malloc((size_t)(m * n) * 4);
    float *ref = malloc((size_t)(m * n) * 4);
    for (int64_t i = 0; i < m * k; i++) {
        x[i] = f2bf(frand());
        xf[i] = bf2f(x[i]);
    }
    for (int64_t i = 0; i < copies * n * k; i++) w[i] = f2bf(frand() * 0.05f);
    int do_ref = (double)m * n * k < 4e9;
    if (do_ref) reference(x, w, ref, m, n, k);
    double bytes = (double)n * k * 2, flops = 2.0 * m * n * k;
    printf("m=%-4lld n=%-6lld k=%-5lld x=%s\n", (long long)m, (long long)n, (long long)k,
           xt == TO_BF16 ? "bf16" : "f32");
    for (size_t v = 0; v < sizeof VERSIONS / sizeof VERSIONS[0]; v++) {
        if (!check_all && v + 1 < sizeof VERSIONS / sizeof VERSIONS[0] && v != 2) continue;
        to_set_isa_mask(VERSIONS[v].mask);
        const void *xp = xt == TO_BF16 ? (const void *)x : (const void *)xf;
        double best = 1e30;
        int reps = 0;
        double t_end = now_s() + 0.4;
        while (reps < 3 || (now_s() < t_end && reps < 200)) {
            double t0 = now_s();
            const uint16_t *wc = w + (size_t)((reps + 1) % copies * n * k);
            int rc = to_linear(xp, wc, NULL, y, m, n, k, k, n, xt, TO_BF16, 0, TO_F32);
            double t = now_s() - t0;
            if (rc) {
                printf("  error %s\n", to_last_error());
                break;
            }
            if (t < best) best = t;
            reps++;
        }
        to_linear(xp, w, NULL, y, m, n, k, k, n, xt, TO_BF16, 0, TO_F32);
        double err = 0, nrm = 0;
        if (do_ref)
            for (int64_t i = 0; i < m * n; i++) {
                err += (double)(y[i] - ref[i]) * (y[i] - ref[i]);
                nrm += (double)ref[i] * ref[i];
            }
        printf("  %-32s %9.3f ms  %7.2f GB/s  %8.1f GFLOP/s  rel.err %.2e\n", VERSIONS[v].name,
               best * 1e3, bytes / best / 1e9, flops / best / 1e9, do_ref ? sqrt(err / nrm) : -1.0);
    }
    to_set_isa_mask(0xffffffffu);
    free(x), free(w), free(xf), free(y), free(ref);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    to_set_num_threads(threads);
    threads = to_get_num_threads();
    printf("threads %d\n", threads);
    for (int t = 1; t <= threads; t++) {
        double g = 0, p = 0;
        to_bench_read_bandwidth((int64_t)512 << 20, t, &g);
        int rc = to_bench_bf16_peak(t, &p);
        printf("read bandwidth %d thread(s): %.2f GB/s   bf16 vdpbf16ps peak: %.1f GFLOP/s%s\n", t,
               g, p, rc ? " (unsupported)" : "");
    }
    /* correctness over odd shapes, all versions */
    run_shape(3, 67, 1000, TO_BF16, 1);
    run_shape(33, 130, 67, TO_BF16, 1);
    run_shape(1, 2048, 1024, TO_F32, 1);
    /* decode and prefill shapes */
    run_shape(1, 2048, 1024, TO_BF16, 1);
    run_shape(1, 3072, 1024, TO_BF16, 0);
    run_shape(1, 1024, 3072, TO_BF16, 0);
    run_shape(1, 151936, 1024, TO_BF16, 0);
    run_shape(1, 9728, 2560, TO_BF16, 0);
    run_shape(1, 2560, 9728, TO_BF16, 0);
    run_shape(4, 3072, 1024, TO_BF16, 0);
    run_shape(16, 3072, 1024, TO_BF16, 0);
    run_shape(512, 2048, 1024, TO_BF16, 0);
    run_shape(512, 3072, 1024, TO_BF16, 0);
    run_shape(512, 1024, 3072, TO_BF16, 0);
    return 0;
}
