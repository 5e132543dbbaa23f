/* Host allocator: 64-byte aligned blocks, recycled through power-of-two size classes, with
 * statistics. Blocks carry a small header recording their class so to_free needs no size. */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

#define ALIGN 64
#define NUM_CLASSES 48           /* classes 2^6 .. 2^53 */
#define MAX_CACHED_PER_CLASS 16
#define HEADER ALIGN             /* header occupies one alignment unit before the user pointer */
#define MAGIC 0x70696f6d656d3031ULL

typedef struct block_header {
    uint64_t magic;
    int32_t size_class;
    int32_t pad;
    size_t nbytes; /* requested size (for stats) */
} block_header;

static pthread_mutex_t g_mem_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_free_lists[NUM_CLASSES][MAX_CACHED_PER_CLASS];
static int g_free_count[NUM_CLASSES];
static int64_t g_in_use, g_peak, g_cached;

static int size_class_of(size_t nbytes) {
    size_t need = nbytes + HEADER;
    int c = 0;
    size_t cap = (size_t)ALIGN;
    while (cap < need && c < NUM_CLASSES - 1) {
        cap <<= 1;
        c++;
    }
    return cap >= need ? c : -1;
}

static size_t class_bytes(int c) { return (size_t)ALIGN << c; }

TO_API int to_alloc(size_t nbytes, void **out) {
    TO_CHECK_PTR(out);
    *out = NULL;
    int c = size_class_of(nbytes);
    TO_CHECK(c >= 0, TO_ERR_OUT_OF_MEMORY, "to_alloc: %zu bytes is too large", nbytes);
    void *raw = NULL;
    pthread_mutex_lock(&g_mem_lock);
    if (g_free_count[c] > 0) {
        raw = g_free_lists[c][--g_free_count[c]];
        g_cached -= (int64_t)class_bytes(c);
    }
    pthread_mutex_unlock(&g_mem_lock);
    if (raw == NULL) {
        raw = aligned_alloc(ALIGN, class_bytes(c));
        if (raw == NULL)
            return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_alloc: out of memory allocating %zu bytes",
                                nbytes);
    }
    block_header *h = raw;
    h->magic = MAGIC;
    h->size_class = c;
    h->nbytes = nbytes;
    pthread_mutex_lock(&g_mem_lock);
    g_in_use += (int64_t)nbytes;
    if (g_in_use > g_peak) g_peak = g_in_use;
    pthread_mutex_unlock(&g_mem_lock);
    *out = (char *)raw + HEADER;
    return TO_OK;
}

TO_API int to_free(void *ptr) {
    if (ptr == NULL) return TO_OK;
    block_header *h = (block_header *)((char *)ptr - HEADER);
    TO_CHECK(h->magic == MAGIC, TO_ERR_INVALID_ARGUMENT,
             "to_free: %p was not allocated by to_alloc (or was freed twice)", ptr);
    int c = h->size_class;
    h->magic = 0;
    pthread_mutex_lock(&g_mem_lock);
    g_in_use -= (int64_t)h->nbytes;
    int cached = 0;
    if (g_free_count[c] < MAX_CACHED_PER_CLASS) {
        g_free_lists[c][g_free_count[c]++] = h;
        g_cached += (int64_t)class_bytes(c);
        cached = 1;
    }
    pthread_mutex_unlock(&g_mem_lock);
    if (!cached) free(h);
    return TO_OK;
}

TO_API int to_memory_stats(int64_t *in_use, int64_t *peak, int64_t *cached) {
    pthread_mutex_lock(&g_mem_lock);
    if (in_use) *in_use = g_in_use;
    if (peak) *peak = g_peak;
    if (cached) *cached = g_cached;
    pthread_mutex_unlock(&g_mem_lock);
    return TO_OK;
}

TO_API int to_memory_trim(void) {
    pthread_mutex_lock(&g_mem_lock);
    for (int c = 0; c < NUM_CLASSES; c++) {
        while (g_free_count[c] > 0) free(g_free_lists[c][--g_free_count[c]]);
    }
    g_cached = 0;
    g_peak = g_in_use;
    pthread_mutex_unlock(&g_mem_lock);
    return TO_OK;
}
