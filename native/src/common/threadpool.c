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
 * publishes a new region after every task of the previous one has finished). */
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

/* Thread count to restore in a forked child (its workers did not survive the fork). */
static int g_threads_before_fork;

TO_API int to_get_num_threads(void) {
    if (g_nthreads == 0) to_set_num_threads(g_threads_before_fork);
    return g_nthreads;
}

/* fork() while another thread runs a parallel region or allocates: the child would inherit
 * locks held by threads it does not have and block forever on its first op. The handlers hold
 * every lock across the fork (the region in flight finishes first), release them in the
 * parent, and in the child (whose only thread is the one that forked) release them and forget
 * the workers, which the next region restarts. */
static void fork_prepare(void) {
    pthread_mutex_lock(&g_run_lock);
    pthread_mutex_lock(&g_lock);
    to_mem_fork_lock();
    to_report_fork_lock();
    pthread_mutex_lock(&g_wake_lock);
}

static void fork_parent(void) {
    pthread_mutex_unlock(&g_wake_lock);
    to_report_fork_unlock();
    to_mem_fork_unlock();
    pthread_mutex_unlock(&g_lock);
    pthread_mutex_unlock(&g_run_lock);
}

static void fork_child(void) {
    pthread_mutex_unlock(&g_wake_lock);
    pthread_cond_init(&g_wake, NULL); /* no worker waits on it here */
    to_report_fork_unlock();
    to_mem_fork_unlock();
    g_threads_before_fork = g_nthreads;
    g_nthreads = 0;
    g_nworkers = 0;
    atomic_store(&g_ticket, 0);
    atomic_store(&g_done, 0);
    atomic_store(&g_sleepers, 0);
    atomic_store(&g_stop, 0);
    pthread_mutex_unlock(&g_lock);
    pthread_mutex_unlock(&g_run_lock);
}

__attribute__((constructor)) static void register_fork_handlers(void) {
    pthread_atfork(fork_prepare, fork_parent, fork_child);
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
