/* Host allocator: 64-byte aligned blocks recycled through size classes, with statistics.
 *
 * Each block starts with a one-alignment-unit header recording its class, so to_free needs no
 * size. Classes are powers of two from 64 B to 1 MiB, then four steps per octave (1.25, 1.5, 1.75,
 * 2 x 2^k) so a large request wastes at most 25% instead of up to 100%.
 *
 * Freed blocks are cached per class for reuse, but the pool never holds more than the cache limit
 * (default TO_MEMORY_DEFAULT_CACHE_LIMIT, see to_memory_set_cache_limit) in cached blocks: a freed
 * block that does not fit under the limit goes straight back to the system, so huge temporaries
 * are not kept forever. to_memory_trim releases everything cached.
 *
 * Thread safety: one mutex guards the free lists and the counters; the system allocator is called
 * outside it except in trim/limit changes. Double frees and foreign pointers are detected (under
 * the lock) through a magic word in the header, as far as the header is readable: a pointer that
 * was never allocated here is checked for alignment first, but cannot be fully validated. */
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "internal.h"

#define ALIGN 64
#define HEADER ALIGN            /* header occupies one alignment unit before the user pointer */
#define SMALL_CLASSES 15        /* 2^6 .. 2^20 */
#define STEPS_PER_OCTAVE 4
#define MAX_OCTAVE 46           /* largest class 2^46 (64 TiB): far beyond any host */
#define NUM_CLASSES (SMALL_CLASSES + (MAX_OCTAVE - 20) * STEPS_PER_OCTAVE)
#define MAX_CACHED_PER_CLASS 16
#define MAGIC 0x70696f6d656d3031ULL
#define FREED 0x70696f6672656564ULL

typedef struct block_header {
    uint64_t magic;
    int32_t size_class;
    int32_t pad;
    size_t nbytes; /* requested size (for stats) */
} block_header;

static pthread_mutex_t g_mem_lock = PTHREAD_MUTEX_INITIALIZER;

void to_mem_fork_lock(void) { pthread_mutex_lock(&g_mem_lock); }
void to_mem_fork_unlock(void) { pthread_mutex_unlock(&g_mem_lock); }
static void *g_free_lists[NUM_CLASSES][MAX_CACHED_PER_CLASS];
static int g_free_count[NUM_CLASSES];
static int64_t g_in_use, g_peak, g_cached, g_reserved, g_allocs, g_hits;
static int64_t g_cache_limit = TO_MEMORY_DEFAULT_CACHE_LIMIT;

static size_t class_bytes(int c) {
    if (c < SMALL_CLASSES) return (size_t)ALIGN << c;
    int j = c - SMALL_CLASSES;
    size_t base = (size_t)1 << (20 + j / STEPS_PER_OCTAVE);
    return base + (size_t)(j % STEPS_PER_OCTAVE + 1) * (base / STEPS_PER_OCTAVE);
}

/* Blocks of at least this size ask for transparent huge pages: weights converted at load time
 * and large activations are streamed whole, and 4 KiB pages cost a TLB walk and a prefetcher
 * restart every 4 KiB (a bf16 GEMV streams 5-20% faster from huge pages, measured on Zen 4). */
#define HUGE_PAGE ((uintptr_t)2 << 20)
#define HUGE_MIN_BLOCK ((size_t)4 << 20)

static void advise_huge_pages(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
    /* from the first huge page past the block's header: writing the header must not make a
     * 2 MiB page resident in a block that will be written sparsely (to_memory_advise_sparse) */
    uintptr_t a = ((uintptr_t)p + HEADER + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    uintptr_t e = ((uintptr_t)p + n) & ~(HUGE_PAGE - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE); /* advisory */
#else
    (void)p;
    (void)n;
#endif
}

/* Blocks of at least this size are mapped from the system directly and unmapped when released:
 * through malloc they would come from its heap once its mmap threshold has risen (it grows with
 * every large block freed), and freed heap blocks under a cached one stay resident. */
#define MMAP_MIN_BLOCK ((size_t)1 << 20)

static void *sys_alloc(size_t cb) {
    if (cb < MMAP_MIN_BLOCK) return aligned_alloc(ALIGN, cb);
    void *p = mmap(NULL, cb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p; /* page-aligned, so ALIGN-aligned */
}

static void sys_free(void *p, size_t cb) {
    if (cb < MMAP_MIN_BLOCK) free(p);
    else munmap(p, cb);
}

/* Smallest class holding nbytes plus the header, or -1 when none does. */
static int size_class_of(size_t nbytes) {
    if (nbytes > class_bytes(NUM_CLASSES - 1) - HEADER) return -1;
    size_t need = nbytes + HEADER;
    int c = 0;
    while (class_bytes(c) < need) c++;
    return c;
}

TO_API int to_alloc(size_t nbytes, void **out) {
    TO_CHECK_PTR(out);
    *out = NULL;
    int c = size_class_of(nbytes);
    TO_CHECK(c >= 0, TO_ERR_OUT_OF_MEMORY, "to_alloc: %zu bytes is too large", nbytes);
    size_t cb = class_bytes(c);
    void *raw = NULL;
    int fresh = 0;
    pthread_mutex_lock(&g_mem_lock);
    if (g_free_count[c] > 0) {
        raw = g_free_lists[c][--g_free_count[c]];
        g_cached -= (int64_t)cb;
        g_hits++;
    }
    pthread_mutex_unlock(&g_mem_lock);
    if (raw == NULL) {
        raw = sys_alloc(cb);
        if (raw == NULL)
            return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_alloc: out of memory allocating %zu bytes",
                                nbytes);
        fresh = 1;
        if (cb >= HUGE_MIN_BLOCK) advise_huge_pages(raw, cb); /* before the first touch */
    }
    block_header *h = raw;
    h->size_class = c;
    h->nbytes = nbytes;
    pthread_mutex_lock(&g_mem_lock);
    h->magic = MAGIC;
    g_allocs++;
    if (fresh) g_reserved += (int64_t)cb; /* blocks obtained from the system, not yet returned */
    g_in_use += (int64_t)nbytes;
    if (g_in_use > g_peak) g_peak = g_in_use;
    pthread_mutex_unlock(&g_mem_lock);
    *out = (char *)raw + HEADER;
    return TO_OK;
}

TO_API int to_free(void *ptr) {
    if (ptr == NULL) return TO_OK;
    TO_CHECK(((uintptr_t)ptr % ALIGN) == 0 && (uintptr_t)ptr > HEADER, TO_ERR_INVALID_ARGUMENT,
             "to_free: %p was not allocated by to_alloc (misaligned)", ptr);
    block_header *h = (block_header *)((char *)ptr - HEADER);
    pthread_mutex_lock(&g_mem_lock);
    if (h->magic != MAGIC || h->size_class < 0 || h->size_class >= NUM_CLASSES) {
        int twice = h->magic == FREED;
        pthread_mutex_unlock(&g_mem_lock);
        return to_set_error(TO_ERR_INVALID_ARGUMENT, "to_free: %p %s", ptr,
                            twice ? "was freed twice" : "was not allocated by to_alloc");
    }
    int c = h->size_class;
    size_t cb = class_bytes(c);
    h->magic = FREED;
    g_in_use -= (int64_t)h->nbytes;
    int cached = 0;
    if (g_free_count[c] < MAX_CACHED_PER_CLASS && g_cached + (int64_t)cb <= g_cache_limit) {
        g_free_lists[c][g_free_count[c]++] = h;
        g_cached += (int64_t)cb;
        cached = 1;
    } else {
        g_reserved -= (int64_t)cb;
    }
    pthread_mutex_unlock(&g_mem_lock);
    if (!cached) sys_free(h, cb);
    return TO_OK;
}

/* Frees cached blocks, largest classes first, until at most `keep` bytes stay cached.
 * Called with the lock held. */
static void shrink_cache_locked(int64_t keep) {
    for (int c = NUM_CLASSES - 1; c >= 0 && g_cached > keep; c--) {
        while (g_free_count[c] > 0 && g_cached > keep) {
            sys_free(g_free_lists[c][--g_free_count[c]], class_bytes(c));
            g_cached -= (int64_t)class_bytes(c);
            g_reserved -= (int64_t)class_bytes(c);
        }
    }
}

TO_API int to_memory_stats(int64_t *in_use, int64_t *peak, int64_t *cached) {
    pthread_mutex_lock(&g_mem_lock);
    if (in_use) *in_use = g_in_use;
    if (peak) *peak = g_peak;
    if (cached) *cached = g_cached;
    pthread_mutex_unlock(&g_mem_lock);
    return TO_OK;
}

TO_API int to_memory_counters(int64_t *reserved, int64_t *cache_limit, int64_t *allocs,
                              int64_t *cache_hits) {
    pthread_mutex_lock(&g_mem_lock);
    if (reserved) *reserved = g_reserved;
    if (cache_limit) *cache_limit = g_cache_limit;
    if (allocs) *allocs = g_allocs;
    if (cache_hits) *cache_hits = g_hits;
    pthread_mutex_unlock(&g_mem_lock);
    return TO_OK;
}

TO_API int to_memory_set_cache_limit(int64_t bytes) {
    TO_CHECK_NONNEG(bytes);
    pthread_mutex_lock(&g_mem_lock);
    g_cache_limit = bytes;
    shrink_cache_locked(bytes);
    pthread_mutex_unlock(&g_mem_lock);
    return TO_OK;
}

TO_API int to_memory_trim(void) {
    pthread_mutex_lock(&g_mem_lock);
    shrink_cache_locked(0);
    g_peak = g_in_use;
    pthread_mutex_unlock(&g_mem_lock);
#ifdef __GLIBC__
    malloc_trim(0); /* and what malloc keeps of the small blocks (and Python's frees) */
#endif
    return TO_OK;
}

TO_API int to_memory_advise_sparse(void *ptr, size_t nbytes) {
    TO_CHECK_PTR(ptr);
#ifdef MADV_NOHUGEPAGE
    /* a cache written a position at a time: with 2 MiB pages, one token's keys would make a
     * huge page per head resident */
    uintptr_t a = ((uintptr_t)ptr + 4095) & ~(uintptr_t)4095;
    uintptr_t e = ((uintptr_t)ptr + nbytes) & ~(uintptr_t)4095;
    if (e > a) (void)madvise((void *)a, e - a, MADV_NOHUGEPAGE); /* advisory */
#else
    (void)nbytes;
#endif
    return TO_OK;
}
