/* Persistent worker pool.
 *
 * A parallel region has nth tasks (fn(ctx, i, nth) for i < nth). Tasks are not bound to threads:
 * the caller and the workers claim task indices from one atomic ticket, so when the machine is
 * oversubscribed and a worker is not scheduled, the caller runs its tasks instead of waiting a
 * scheduler quantum for it. Batch-1 decode runs hundreds of small regions per token, so idle
 * workers spin briefly on the ticket before sleeping on a condition variable.
 *
 * The ticket packs (generation: 23 bits | nth: 9 bits | next task index: 32 bits). A thread reads
 * the ticket, then fn/ctx, then claims an index with a compare-and-swap on the same ticket value:
 * if the CAS succeeds the generation was still current, so fn/ctx belonged to it (the caller only
 * publishes a new region after every task of the previous one has finished).
 *
 * Cache warming (to_prefetch): between parallel regions the caller runs small single-threaded
 * ops and Python, and during batch-1 decode the memory bus then sits idle while workers spin.
 * to_prefetch(p, n) posts a request that idle workers serve by reading [p, p+n) in chunks, so
 * the first rows of the next weight matrix are in L2/L3 when its GEMV starts. A request is
 * cancelled by the next parallel region (workers check between 4 KiB steps) and replaced by
 * the next request; a request for the same base resumes where the last one stopped. The request (base, len) lives in one of four slots named by a generation that is
 * packed with the claim offset, so a chunk claim (CAS) succeeds only while its slot is
 * current. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define TO_MAX_THREADS 256
#define SPIN_ITERS 20000

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;     /* guards pool (re)configuration */
static pthread_mutex_t g_run_lock = PTHREAD_MUTEX_INITIALIZER; /* one parallel region at a time */
static pthread_mutex_t g_wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;

static pthread_t g_threads[TO_MAX_THREADS];
static int g_nworkers;     /* threads besides the caller */
static int g_nthreads = 0; /* configured total; 0 = not yet chosen */
static _Atomic uint64_t g_ticket;
static atomic_int g_done;     /* tasks finished in the current region */
static atomic_int g_sleepers; /* workers blocked on g_wake */
static atomic_int g_stop;
static to_task_fn g_fn;
static void *g_ctx;
static uint32_t g_gen;        /* generation of the current region (caller side, under g_run_lock) */

#define TICKET(gen, nth, idx) (((uint64_t)(gen) << 41) | ((uint64_t)(nth) << 32) | (uint64_t)(idx))
#define TICKET_NTH(t) ((uint32_t)(((t) >> 32) & 0x1ffu))
#define TICKET_IDX(t) ((uint32_t)((t) & 0xffffffffu))

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline int has_work(uint64_t t) { return TICKET_IDX(t) < TICKET_NTH(t); }

/* ---- cache warming ---- */
#define PF_CHUNK (64 * 1024)
#define PF_STEP 4096
#define PF_GEN_SHIFT 40
#define PF_OFF_MASK ((1ull << PF_GEN_SHIFT) - 1)
typedef struct {
    _Atomic(const char *) base;
    _Atomic int64_t len;
} pf_slot;
static pf_slot g_pf_slots[4];
static volatile uint64_t g_pf_sink; /* keeps the warming loads */
static _Atomic uint64_t g_pf_claim; /* (generation << 40) | next offset */
static uint32_t g_pf_gen;           /* writer side, under g_pf_lock */
static pthread_mutex_t g_pf_lock = PTHREAD_MUTEX_INITIALIZER;

/* Reads one chunk of the current request, if any; returns whether it did any work. */
static int prefetch_some(void) {
    uint64_t c = atomic_load_explicit(&g_pf_claim, memory_order_acquire);
    pf_slot *slot = &g_pf_slots[(c >> PF_GEN_SHIFT) & 3];
    const char *base = atomic_load_explicit(&slot->base, memory_order_relaxed);
    int64_t len = atomic_load_explicit(&slot->len, memory_order_relaxed);
    int64_t off = (int64_t)(c & PF_OFF_MASK);
    if (!base || off >= len) return 0;
    if (!atomic_compare_exchange_strong_explicit(&g_pf_claim, &c, c + PF_CHUNK,
                                                 memory_order_acq_rel, memory_order_acquire))
        return 1;
    int64_t end = off + PF_CHUNK < len ? off + PF_CHUNK : len;
    for (int64_t o = off; o < end; o += PF_STEP) {
        if (has_work(atomic_load_explicit(&g_ticket, memory_order_relaxed))) break;
        int64_t stop = o + PF_STEP < end ? o + PF_STEP : end;
        /* Plain loads, not prefetch instructions: measured on Zen 4, a prefetch loop warms
         * about half as much per microsecond (prefetches are dropped when miss buffers fill). */
        uint64_t acc = 0;
        for (int64_t i = o; i < stop; i += 64) acc += *(const volatile uint64_t *)(base + i);
        g_pf_sink += acc;
    }
    return 1;
}

/* Publishes (base, len) starting at offset off as the current request. */
static void prefetch_publish(const char *base, int64_t len, int64_t off) {
    g_pf_gen = (g_pf_gen + 1) & 0xffffffu;
    pf_slot *slot = &g_pf_slots[g_pf_gen & 3];
    atomic_store_explicit(&slot->base, base, memory_order_relaxed);
    atomic_store_explicit(&slot->len, len, memory_order_relaxed);
    atomic_store_explicit(&g_pf_claim, ((uint64_t)g_pf_gen << PF_GEN_SHIFT) | (uint64_t)off,
                          memory_order_release);
}

/* Claims and runs tasks of the current region until none is left. */
static void run_tasks(void) {
    for (;;) {
        uint64_t t = atomic_load_explicit(&g_ticket, memory_order_acquire);
        if (!has_work(t)) return;
        to_task_fn fn = g_fn;
        void *ctx = g_ctx;
        if (!atomic_compare_exchange_weak_explicit(&g_ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        fn(ctx, (int)TICKET_IDX(t), (int)TICKET_NTH(t));
        atomic_fetch_add_explicit(&g_done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    (void)arg;
    for (;;) {
        int spins = 0;
        while (!has_work(atomic_load_explicit(&g_ticket, memory_order_acquire))) {
            if (atomic_load_explicit(&g_stop, memory_order_relaxed)) return NULL;
            if (prefetch_some()) {
                spins = 0;
                continue;
            }
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            /* Announce the sleep before re-checking the ticket (both seq_cst): the caller
             * publishes the ticket before reading g_sleepers, so one of the two sees the other. */
            pthread_mutex_lock(&g_wake_lock);
            atomic_fetch_add(&g_sleepers, 1);
            while (!has_work(atomic_load(&g_ticket)) && !atomic_load(&g_stop))
                pthread_cond_wait(&g_wake, &g_wake_lock);
            atomic_fetch_sub(&g_sleepers, 1);
            pthread_mutex_unlock(&g_wake_lock);
            spins = 0;
        }
        run_tasks();
    }
}

/* Ends the current request, keeping its base and progress so that it can resume. */
static void prefetch_cancel(void) {
    uint64_t c = atomic_load_explicit(&g_pf_claim, memory_order_acquire);
    pf_slot *cur = &g_pf_slots[(c >> PF_GEN_SHIFT) & 3];
    if ((int64_t)(c & PF_OFF_MASK) >= atomic_load_explicit(&cur->len, memory_order_relaxed))
        return; /* nothing pending */
    pthread_mutex_lock(&g_pf_lock);
    c = atomic_load(&g_pf_claim);
    cur = &g_pf_slots[(c >> PF_GEN_SHIFT) & 3];
    prefetch_publish(atomic_load(&cur->base), 0, (int64_t)(c & PF_OFF_MASK));
    pthread_mutex_unlock(&g_pf_lock);
}

static void wake_sleepers(void) {
    if (atomic_load(&g_sleepers) > 0) { /* the futex wake only when someone sleeps */
        pthread_mutex_lock(&g_wake_lock);
        pthread_cond_broadcast(&g_wake);
        pthread_mutex_unlock(&g_wake_lock);
    }
}

/* Reads one small non-negative integer from a sysfs file; -1 when it cannot. */
static long read_sysfs_long(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    if (fscanf(f, "%ld", &v) != 1) v = -1;
    fclose(f);
    return v;
}

/* Physical cores among the CPUs this process may run on: SMT siblings share a core's load and
 * store units and its memory-level parallelism, so batch-1 decode gains nothing from them (the
 * same default as llama.cpp). Counts distinct (package, core) pairs of the affinity mask from
 * sysfs; falls back to the number of allowed CPUs, then to the online CPUs. */
static long physical_cores(void) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        long allowed = CPU_COUNT(&set);
        long *seen = malloc((size_t)(allowed > 0 ? allowed : 1) * sizeof *seen);
        long n = 0;
        int ok = seen != NULL;
        for (int cpu = 0; ok && cpu < CPU_SETSIZE && n < allowed; cpu++) {
            if (!CPU_ISSET(cpu, &set)) continue;
            char path[128];
            snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
            long core = read_sysfs_long(path);
            snprintf(path, sizeof path,
                     "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
            long pkg = read_sysfs_long(path);
            if (core < 0 || pkg < 0) {
                ok = 0;
                break;
            }
            long key = pkg * 1000003L + core;
            int dup = 0;
            for (long i = 0; i < n && !dup; i++) dup = seen[i] == key;
            if (!dup) seen[n++] = key;
        }
        free(seen);
        if (ok && n > 0) return n;
        if (allowed > 0) return allowed;
    }
#endif
    return online;
}

static int default_threads(void) {
    long n = physical_cores();
    const char *env = getenv("INFERENCE_PIO_NUM_THREADS");
    if (env && atoi(env) > 0) n = atoi(env);
    if (n < 1) n = 1;
    if (n > TO_MAX_THREADS) n = TO_MAX_THREADS;
    return (int)n;
}

static void stop_workers(void) {
    prefetch_cancel(); /* new workers must not pick up a range that may be unmapped by then */
    if (g_nworkers == 0) return;
    atomic_store(&g_stop, 1);
    pthread_mutex_lock(&g_wake_lock);
    pthread_cond_broadcast(&g_wake);
    pthread_mutex_unlock(&g_wake_lock);
    for (int i = 0; i < g_nworkers; i++) pthread_join(g_threads[i + 1], NULL);
    g_nworkers = 0;
    atomic_store(&g_stop, 0);
}

static int start_workers(int n) {
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
    if (nth <= 0) nth = total;
    if (nth > 0x1ff) nth = 0x1ff; /* the ticket holds 9 bits of task count */
    if (nth == 1 || g_nworkers == 0) {
        for (int i = 0; i < nth; i++) fn(ctx, i, nth);
        return;
    }
    pthread_mutex_lock(&g_run_lock);
    prefetch_cancel();
    g_fn = fn;
    g_ctx = ctx;
    g_gen = (g_gen + 1) & 0x7fffffu;
    atomic_store_explicit(&g_done, 0, memory_order_relaxed);
    atomic_store(&g_ticket, TICKET(g_gen, nth, 0)); /* seq_cst: publishes fn/ctx */
    wake_sleepers();
    run_tasks();
    /* Wait for tasks other threads claimed; yield now and then so that, on an oversubscribed
     * machine, a worker holding a task gets this core instead of the caller spinning on it. */
    for (unsigned spins = 1; atomic_load_explicit(&g_done, memory_order_acquire) < nth; spins++) {
        if (spins % 256 == 0)
            sched_yield();
        else
            cpu_relax();
    }
    pthread_mutex_unlock(&g_run_lock);
}

TO_API int to_prefetch(const void *p, int64_t nbytes) {
    TO_CHECK(nbytes >= 0, TO_ERR_INVALID_ARGUMENT, "to_prefetch: nbytes must be >= 0");
    if (!p || nbytes == 0) { /* cancels the current request */
        prefetch_cancel();
        return TO_OK;
    }
    if (g_nworkers == 0) return TO_OK;
    if (nbytes > (int64_t)PF_OFF_MASK) nbytes = (int64_t)PF_OFF_MASK;
    pthread_mutex_lock(&g_pf_lock);
    uint64_t c = atomic_load(&g_pf_claim);
    pf_slot *cur = &g_pf_slots[(c >> PF_GEN_SHIFT) & 3];
    int64_t off = 0;
    if (atomic_load(&cur->base) == (const char *)p) { /* the same range again: resume */
        off = (int64_t)(c & PF_OFF_MASK);
        if (off > nbytes) off = nbytes;
    }
    prefetch_publish(p, nbytes, off);
    pthread_mutex_unlock(&g_pf_lock);
    return TO_OK;
}
