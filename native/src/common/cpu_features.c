/* CPU feature detection (once, at first use) and the kernel-choice report. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
static uint32_t detect(void) {
    uint32_t a, b, c, d, f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave) return 0;
    uint64_t xcr = xgetbv0();
    int ymm_ok = (xcr & 0x6) == 0x6, zmm_ok = (xcr & 0xe6) == 0xe6;
    if (fma && ymm_ok) f |= TO_ISA_FMA;
    if (f16c && ymm_ok) f |= TO_ISA_F16C;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (((b >> 5) & 1) && ymm_ok) f |= TO_ISA_AVX2;
        if (zmm_ok && ((b >> 16) & 1)) {
            f |= TO_ISA_AVX512F;
            if ((b >> 30) & 1) f |= TO_ISA_AVX512BW;
            if ((b >> 31) & 1) f |= TO_ISA_AVX512VL;
            if ((c >> 11) & 1) f |= TO_ISA_AVX512_VNNI;
            if ((c >> 1) & 1) f |= TO_ISA_AVX512_VBMI;
            __cpuid_count(7, 1, a, b, c, d);
            if ((a >> 5) & 1) f |= TO_ISA_AVX512_BF16;
        }
    }
    return f;
}
#else
static uint32_t detect(void) { return 0; }
#endif

static uint32_t g_detected;
static uint32_t g_mask = 0xffffffffu;
static int g_detected_done;

static void ensure_detected(void) {
    if (!g_detected_done) {
        g_detected = detect();
        g_detected_done = 1;
    }
}

uint32_t to_isa(void) {
    ensure_detected();
    return g_detected & g_mask;
}

TO_API uint32_t to_cpu_features(void) {
    ensure_detected();
    return g_detected;
}

TO_API int to_set_isa_mask(uint32_t mask) {
    g_mask = mask;
    return TO_OK;
}

#define MAX_REPORTS 64
static struct { char op[32]; char kernel[48]; } g_reports[MAX_REPORTS];
static int g_nreports;
/* ops run from several host threads at once; the fork handlers (threadpool.c) hold it across fork */
static pthread_mutex_t g_report_lock = PTHREAD_MUTEX_INITIALIZER;

void to_report_fork_lock(void) { pthread_mutex_lock(&g_report_lock); }
void to_report_fork_unlock(void) { pthread_mutex_unlock(&g_report_lock); }

void to_report_kernel(const char *op, const char *kernel) {
    pthread_mutex_lock(&g_report_lock);
    int i = 0;
    while (i < g_nreports && strcmp(g_reports[i].op, op) != 0) i++;
    if (i < MAX_REPORTS) {
        if (i == g_nreports) {
            snprintf(g_reports[i].op, sizeof g_reports[0].op, "%s", op);
            g_nreports++;
        }
        snprintf(g_reports[i].kernel, sizeof g_reports[0].kernel, "%s", kernel);
    }
    pthread_mutex_unlock(&g_report_lock);
}

TO_API int to_kernel_report(char *buf, size_t cap) {
    TO_CHECK_PTR(buf);
    TO_CHECK(cap > 0, TO_ERR_INVALID_ARGUMENT, "to_kernel_report: cap is 0");
    uint32_t f = to_isa();
    static const struct { uint32_t bit; const char *name; } names[] = {
        {TO_ISA_AVX2, "avx2"}, {TO_ISA_FMA, "fma"}, {TO_ISA_F16C, "f16c"},
        {TO_ISA_AVX512F, "avx512f"}, {TO_ISA_AVX512BW, "avx512bw"}, {TO_ISA_AVX512VL, "avx512vl"},
        {TO_ISA_AVX512_BF16, "avx512_bf16"}, {TO_ISA_AVX512_VNNI, "avx512_vnni"},
        {TO_ISA_AVX512_VBMI, "avx512_vbmi"}};
    size_t off = 0;
    off += (size_t)snprintf(buf + off, cap - off, "isa:");
    for (size_t i = 0; i < sizeof names / sizeof names[0] && off < cap; i++)
        if (f & names[i].bit) off += (size_t)snprintf(buf + off, cap - off, " %s", names[i].name);
    if (off < cap) off += (size_t)snprintf(buf + off, cap - off, "\nthreads: %d", to_get_num_threads());
    pthread_mutex_lock(&g_report_lock);
    for (int i = 0; i < g_nreports && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "\n%s: %s", g_reports[i].op, g_reports[i].kernel);
    pthread_mutex_unlock(&g_report_lock);
    return TO_OK;
}
