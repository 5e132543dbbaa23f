/* Internal helpers shared by every kernel file: error reporting, dtype conversions, threads. */
#ifndef TO_INTERNAL_H
#define TO_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tensor_ops.h"

/* Records a formatted error message for the calling thread and returns `code`. */
int to_set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define TO_CHECK(cond, code, ...)                                                                  \
    do {                                                                                           \
        if (!(cond)) return to_set_error((code), __VA_ARGS__);                                     \
    } while (0)
#define TO_CHECK_PTR(p) TO_CHECK((p) != NULL, TO_ERR_INVALID_ARGUMENT, "%s: " #p " is NULL", __func__)
#define TO_CHECK_NONNEG(n)                                                                         \
    TO_CHECK((n) >= 0, TO_ERR_INVALID_ARGUMENT, "%s: " #n " is negative (%lld)", __func__,        \
             (long long)(n))

/* ---- bf16 / f16 <-> f32 -------------------------------------------------------------------- */
static inline float to_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Round-to-nearest-even, NaN preserved (quiet). Matches torch's float -> bfloat16. */
static inline uint16_t to_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float to_f16_to_f32(uint16_t h);
uint16_t to_f32_to_f16(float f);

/* ---- CPU features (common/cpu_features.c) ------------------------------------------------ */
uint32_t to_isa(void); /* detected features & user mask */

/* ---- thread pool (common/threadpool.c) --------------------------------------------------- */
/* fn(ctx, ith, nth) is called once for each ith in [0, nth) across the pool; the caller thread
 * takes part. Tasks are claimed dynamically, so nth may exceed the thread count (finer tasks
 * balance uneven work; at most 511). nth <= 0 uses the current thread count. Returns when all
 * calls have finished. */
typedef void (*to_task_fn)(void *ctx, int ith, int nth);
void to_parallel_run(to_task_fn fn, void *ctx, int nth);
/* fork(): the allocator's lock, taken before the fork and released after it in both processes
 * (called by the thread pool's pthread_atfork handlers, which order it after the pool's locks) */
void to_mem_fork_lock(void);
void to_mem_fork_unlock(void);
/* Rows [*begin, *end) of n for worker ith of nth: contiguous blocks of ceil(n/nth). */
static inline void to_split_rows(int64_t n, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t per = (n + nth - 1) / nth;
    int64_t b = per * ith, e = b + per;
    *begin = b < n ? b : n;
    *end = e < n ? e : n;
}

/* Kernel registry for to_kernel_report(): each dispatch point records its choice. */
void to_report_kernel(const char *op, const char *kernel);
/* the report table's lock, held across fork by the thread pool's handlers */
void to_report_fork_lock(void);
void to_report_fork_unlock(void);

#endif
