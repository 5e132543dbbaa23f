/* Persistent worker pool. Batch-1 decode runs hundreds of small ops per token, so workers spin
 * briefly on an atomic generation counter before sleeping on a condition variable; the calling
 * thread always takes task 0 itself. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define TO_MAX_THREADS 256
#define SPIN_ITERS 20000

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;  /* guards pool (re)configuration */
static pthread_mutex_t g_run_lock = PTHREAD_MUTEX_INITIALIZER; /* one parallel region at a time */
static pthread_mutex_t g_wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;

static pthread_t g_threads[TO_MAX_THREADS];
static int g_nworkers;         /* threads besides the caller */
static int g_nthreads = 0;     /* configured total; 0 = not yet chosen */
static atomic_uint g_generation;
static atomic_int g_pending;
static atomic_int g_stop;
static to_task_fn g_fn;
static void *g_ctx;
static int g_nth;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static unsigned g_start_generation; /* generation when the workers were created */

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg; /* 1..g_nworkers */
    /* Not atomic_load(&g_generation): a run started before this thread first executes would
     * already have bumped it, and the worker would wait for the next one (deadlock). */
    unsigned seen = g_start_generation;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&g_generation, memory_order_acquire)) == seen) {
            if (atomic_load(&g_stop)) return NULL;
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&g_wake_lock);
            while (atomic_load(&g_generation) == seen && !atomic_load(&g_stop))
                pthread_cond_wait(&g_wake, &g_wake_lock);
            pthread_mutex_unlock(&g_wake_lock);
        }
        seen = gen;
        if (atomic_load(&g_stop)) return NULL;
        if (id < g_nth) g_fn(g_ctx, id, g_nth);
        atomic_fetch_sub_explicit(&g_pending, 1, memory_order_acq_rel);
    }
}

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    const char *env = getenv("INFERENCE_PIO_NUM_THREADS");
    if (env && atoi(env) > 0) n = atoi(env);
    if (n < 1) n = 1;
    if (n > TO_MAX_THREADS) n = TO_MAX_THREADS;
    return (int)n;
}

static void stop_workers(void) {
    if (g_nworkers == 0) return;
    atomic_store(&g_stop, 1);
    pthread_mutex_lock(&g_wake_lock);
    atomic_fetch_add(&g_generation, 1);
    pthread_cond_broadcast(&g_wake);
    pthread_mutex_unlock(&g_wake_lock);
    for (int i = 0; i < g_nworkers; i++) pthread_join(g_threads[i + 1], NULL);
    g_nworkers = 0;
    atomic_store(&g_stop, 0);
}

static int start_workers(int n) {
    g_start_generation = atomic_load(&g_generation);
    for (int i = 1; i < n; i++) {
        if (pthread_create(&g_threads[i], NULL, worker_main, (void *)(intptr_t)i) != 0) {
            g_nworkers = i - 1;
            return to_set_error(TO_ERR_INTERNAL, "could not start worker thread %d", i);
        }
        g_nworkers = i;
    }
    return TO_OK;
}

TO_API int to_set_num_threads(int n) {
    if (n <= 0) n = default_threads();
    if (n > TO_MAX_THREADS) n = TO_MAX_THREADS;
    pthread_mutex_lock(&g_run_lock);
    pthread_mutex_lock(&g_lock);
    int rc = TO_OK;
    if (n != g_nthreads) {
        stop_workers();
        g_nthreads = n;
        rc = start_workers(n);
        if (rc != TO_OK) g_nthreads = g_nworkers + 1;
    }
    pthread_mutex_unlock(&g_lock);
    pthread_mutex_unlock(&g_run_lock);
    return rc;
}

TO_API int to_get_num_threads(void) {
    if (g_nthreads == 0) to_set_num_threads(0);
    return g_nthreads;
}

void to_parallel_run(to_task_fn fn, void *ctx, int nth) {
    int total = to_get_num_threads();
    if (nth <= 0 || nth > total) nth = total;
    if (nth == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&g_run_lock);
    g_fn = fn;
    g_ctx = ctx;
    g_nth = nth;
    atomic_store(&g_pending, g_nworkers);
    pthread_mutex_lock(&g_wake_lock);
    atomic_fetch_add_explicit(&g_generation, 1, memory_order_release);
    pthread_cond_broadcast(&g_wake);
    pthread_mutex_unlock(&g_wake_lock);
    fn(ctx, 0, nth);
    while (atomic_load_explicit(&g_pending, memory_order_acquire) > 0) cpu_relax();
    pthread_mutex_unlock(&g_run_lock);
}
