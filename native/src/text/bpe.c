/* Byte-level BPE: the tokenizer object, the merge loop and the public to_tok_* API.
 *
 * The merge loop reproduces Hugging Face tokenizers' BPE (model/bpe/word.rs) exactly: a heap of
 * candidate merges ordered by (rank, position); a popped candidate is applied only if its left
 * symbol is still alive, has a right neighbour, and the current pair still maps to the same
 * merged id. Words of up to TOK_CACHE_WORD bytes are cached (direct-mapped, one mutex). */
#include <pthread.h>
#include <stdlib.h>

#include "text_internal.h"

#define TOK_CACHE_SLOTS (1u << 15)
#define TOK_CACHE_WORD 30
#define TOK_CACHE_IDS 14

typedef struct { uint64_t key; int32_t rank, new_id; } merge_slot; /* key 0 = empty */
typedef struct { uint64_t hash; int64_t off; int32_t len, id; } vocab_slot;  /* len -1 = empty */
typedef struct {
    uint64_t hash;
    uint8_t wlen, nids;
    uint8_t word[TOK_CACHE_WORD];
    int32_t ids[TOK_CACHE_IDS];
} cache_slot;

struct to_tokenizer {
    int pretok, flags;
    int32_t byte_id[256];
    merge_slot *merges;
    uint64_t merge_mask;
    vocab_slot *vocab;
    uint64_t vocab_mask;
    uint8_t *blob;
    cache_slot *cache;
    pthread_mutex_t cache_lock;
};

typedef struct { int32_t rank, pos, new_id; } cand;
typedef struct {
    int32_t *id, *prev, *next, *alive;
    cand *heap;
    size_t cap, heap_cap, nheap;
} scratch;

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}
static inline uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t k = 0; k < n; k++) { h ^= p[k]; h *= 0x100000001b3ULL; }
    return h | 1u; /* never 0 */
}
static inline uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1u; /* +1: never 0 for valid ids */
}
static inline const merge_slot *merge_find(const to_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = pair_key(a, b);
    for (uint64_t h = mix64(key) & t->merge_mask;; h = (h + 1) & t->merge_mask) {
        const merge_slot *m = &t->merges[h];
        if (m->key == key) return m;
        if (m->key == 0) return NULL;
    }
}
static int32_t vocab_find(const to_tokenizer *t, const uint8_t *w, size_t n) {
    uint64_t hash = hash_bytes(w, n);
    for (uint64_t h = mix64(hash) & t->vocab_mask;; h = (h + 1) & t->vocab_mask) {
        const vocab_slot *v = &t->vocab[h];
        if (v->len < 0) return -1;
        if (v->hash == hash && (size_t)v->len == n && memcmp(t->blob + v->off, w, n) == 0)
            return v->id;
    }
}
static uint64_t table_size(int64_t n) {
    uint64_t s = 16;
    while (s < (uint64_t)n * 2u) s <<= 1;
    return s;
}

TO_API void to_tok_free(to_tokenizer *t) {
    if (!t) return;
    free(t->merges);
    free(t->vocab);
    free(t->blob);
    free(t->cache);
    pthread_mutex_destroy(&t->cache_lock);
    free(t);
}

TO_API const char *to_tok_unicode_version(void) { return to_uc_version; }

TO_API int to_tok_create(int pretok, const uint8_t *tokens, int64_t tokens_len,
                         const int64_t *offsets, const int32_t *ids, int64_t n_tokens,
                         const int32_t *merges, int64_t n_merges, int flags, to_tokenizer **out) {
    TO_CHECK_PTR(out);
    *out = NULL;
    TO_CHECK(pretok == TO_PRETOK_QWEN2 || pretok == TO_PRETOK_GLM4, TO_ERR_INVALID_ARGUMENT,
             "to_tok_create: unknown pre-tokenizer %d", pretok);
    TO_CHECK((flags & ~TO_TOK_IGNORE_MERGES) == 0, TO_ERR_INVALID_ARGUMENT,
             "to_tok_create: unknown flags 0x%x", (unsigned)flags);
    TO_CHECK_NONNEG(tokens_len);
    TO_CHECK_NONNEG(n_tokens);
    TO_CHECK_NONNEG(n_merges);
    TO_CHECK(n_tokens < INT32_MAX && n_merges < INT32_MAX, TO_ERR_INVALID_ARGUMENT,
             "to_tok_create: too many tokens or merges");
    TO_CHECK(tokens_len == 0 || tokens, TO_ERR_INVALID_ARGUMENT, "to_tok_create: tokens is NULL");
    TO_CHECK_PTR(offsets);
    TO_CHECK(n_tokens == 0 || ids, TO_ERR_INVALID_ARGUMENT, "to_tok_create: ids is NULL");
    TO_CHECK(n_merges == 0 || merges, TO_ERR_INVALID_ARGUMENT, "to_tok_create: merges is NULL");
    TO_CHECK(offsets[0] == 0 && offsets[n_tokens] == tokens_len, TO_ERR_INVALID_ARGUMENT,
             "to_tok_create: offsets must run from 0 to tokens_len (%lld)", (long long)tokens_len);
    for (int64_t k = 0; k < n_tokens; k++) {
        TO_CHECK(offsets[k + 1] > offsets[k], TO_ERR_INVALID_ARGUMENT,
                 "to_tok_create: token %lld is empty or offsets decrease", (long long)k);
        TO_CHECK(ids[k] >= 0, TO_ERR_INVALID_ARGUMENT, "to_tok_create: token %lld has id %d",
                 (long long)k, ids[k]);
    }
    for (int64_t k = 0; k < 3 * n_merges; k++)
        TO_CHECK(merges[k] >= 0, TO_ERR_INVALID_ARGUMENT,
                 "to_tok_create: merge %lld has a negative id", (long long)(k / 3));

    to_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_tok_create: out of memory");
    pthread_mutex_init(&t->cache_lock, NULL);
    t->pretok = pretok;
    t->flags = flags;
    uint64_t ms = table_size(n_merges), vs = table_size(n_tokens);
    t->merges = calloc(ms, sizeof *t->merges);
    t->vocab = malloc(vs * sizeof *t->vocab);
    t->blob = malloc(tokens_len ? (size_t)tokens_len : 1);
    t->cache = calloc(TOK_CACHE_SLOTS, sizeof *t->cache);
    if (!t->merges || !t->vocab || !t->blob || !t->cache) {
        to_tok_free(t);
        return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_tok_create: out of memory");
    }
    t->merge_mask = ms - 1;
    t->vocab_mask = vs - 1;
    if (tokens_len) memcpy(t->blob, tokens, (size_t)tokens_len);
    for (uint64_t k = 0; k < vs; k++) t->vocab[k].len = -1;
    for (int k = 0; k < 256; k++) t->byte_id[k] = -1;
    for (int64_t k = 0; k < n_tokens; k++) {
        const uint8_t *w = t->blob + offsets[k];
        size_t n = (size_t)(offsets[k + 1] - offsets[k]);
        uint64_t hash = hash_bytes(w, n);
        uint64_t h = mix64(hash) & t->vocab_mask;
        for (;; h = (h + 1) & t->vocab_mask) { /* a later duplicate replaces an earlier one */
            vocab_slot *v = &t->vocab[h];
            if (v->len < 0 || (v->hash == hash && (size_t)v->len == n &&
                               memcmp(t->blob + v->off, w, n) == 0)) break;
        }
        t->vocab[h] = (vocab_slot){hash, offsets[k], (int32_t)n, ids[k]};
        if (n == 1) t->byte_id[w[0]] = ids[k];
    }
    for (int64_t k = 0; k < n_merges; k++) {
        uint64_t key = pair_key(merges[3 * k], merges[3 * k + 1]);
        uint64_t h = mix64(key) & t->merge_mask;
        while (t->merges[h].key != 0 && t->merges[h].key != key) h = (h + 1) & t->merge_mask;
        t->merges[h] = (merge_slot){key, (int32_t)k, merges[3 * k + 2]};
    }
    *out = t;
    return TO_OK;
}

/* ---- merge loop --------------------------------------------------------------------------- */
static inline int cand_less(cand a, cand b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}
static int heap_push(scratch *sc, cand c) {
    if (sc->nheap == sc->heap_cap) {
        size_t nc = sc->heap_cap ? sc->heap_cap * 2 : 64;
        cand *h = realloc(sc->heap, nc * sizeof *h);
        if (!h) return -1;
        sc->heap = h;
        sc->heap_cap = nc;
    }
    size_t i = sc->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(c, sc->heap[p])) break;
        sc->heap[i] = sc->heap[p];
        i = p;
    }
    sc->heap[i] = c;
    return 0;
}
static cand heap_pop(scratch *sc) {
    cand top = sc->heap[0], last = sc->heap[--sc->nheap];
    size_t i = 0, n = sc->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_less(sc->heap[c + 1], sc->heap[c])) c++;
        if (!cand_less(sc->heap[c], last)) break;
        sc->heap[i] = sc->heap[c];
        i = c;
    }
    if (n) sc->heap[i] = last;
    return top;
}
static int scratch_reserve(scratch *sc, size_t n) {
    if (n <= sc->cap) return 0;
    size_t nc = sc->cap ? sc->cap : 256;
    while (nc < n) nc *= 2;
    int32_t *p[4];
    for (int k = 0; k < 4; k++) {
        int32_t **slot = k == 0 ? &sc->id : k == 1 ? &sc->prev : k == 2 ? &sc->next : &sc->alive;
        p[k] = realloc(*slot, nc * sizeof(int32_t));
        if (!p[k]) return -1;
        *slot = p[k];
    }
    sc->cap = nc;
    return 0;
}

/* Appends the BPE tokens of word w[0..n) to out; returns the count or -1 (out of memory). */
static int64_t bpe_word(const to_tokenizer *t, scratch *sc, const uint8_t *w, size_t n,
                        int32_t *out) {
    if (scratch_reserve(sc, n)) return -1;
    int32_t m = 0;
    for (size_t k = 0; k < n; k++) {
        int32_t id = t->byte_id[w[k]];
        if (id < 0) continue; /* no unk token: HF drops characters missing from the vocab */
        sc->id[m] = id;
        sc->prev[m] = m - 1;
        sc->next[m] = m + 1;
        sc->alive[m] = 1;
        m++;
    }
    if (m == 0) return 0;
    sc->next[m - 1] = -1;
    sc->nheap = 0;
    for (int32_t k = 0; k + 1 < m; k++) {
        const merge_slot *ms = merge_find(t, sc->id[k], sc->id[k + 1]);
        if (ms && heap_push(sc, (cand){ms->rank, k, ms->new_id})) return -1;
    }
    while (sc->nheap) {
        cand top = heap_pop(sc);
        int32_t p = top.pos;
        if (!sc->alive[p]) continue;
        int32_t r = sc->next[p];
        if (r < 0) continue;
        const merge_slot *ms = merge_find(t, sc->id[p], sc->id[r]);
        if (!ms || ms->new_id != top.new_id) continue;
        sc->id[p] = top.new_id;
        sc->alive[r] = 0;
        sc->next[p] = sc->next[r];
        if (sc->next[r] >= 0) sc->prev[sc->next[r]] = p;
        int32_t q = sc->prev[p];
        if (q >= 0) {
            const merge_slot *mq = merge_find(t, sc->id[q], sc->id[p]);
            if (mq && heap_push(sc, (cand){mq->rank, q, mq->new_id})) return -1;
        }
        int32_t nx = sc->next[p];
        if (nx >= 0) {
            const merge_slot *mn = merge_find(t, sc->id[p], sc->id[nx]);
            if (mn && heap_push(sc, (cand){mn->rank, p, mn->new_id})) return -1;
        }
    }
    int64_t cnt = 0;
    for (int32_t k = 0; k >= 0; k = sc->next[k]) out[cnt++] = sc->id[k];
    return cnt;
}

/* Tokens of one pre-token, through the cache. */
static int64_t encode_word(to_tokenizer *t, scratch *sc, const uint8_t *w, size_t n,
                           int32_t *out) {
    if (t->flags & TO_TOK_IGNORE_MERGES) {
        int32_t id = vocab_find(t, w, n);
        if (id >= 0) { out[0] = id; return 1; }
    }
    if (n == 1) {
        int32_t id = t->byte_id[w[0]];
        if (id < 0) return 0;
        out[0] = id;
        return 1;
    }
    uint64_t hash = 0;
    cache_slot *slot = NULL;
    if (n <= TOK_CACHE_WORD) {
        hash = hash_bytes(w, n);
        slot = &t->cache[mix64(hash) & (TOK_CACHE_SLOTS - 1)];
        /* trylock: a word whose slot is busy is encoded without the cache (same ids), and a
         * child forked while another thread held the lock never waits for it */
        if (pthread_mutex_trylock(&t->cache_lock) == 0) {
            if (slot->hash == hash && slot->wlen == n && memcmp(slot->word, w, n) == 0) {
                int64_t cnt = slot->nids;
                memcpy(out, slot->ids, (size_t)cnt * sizeof(int32_t));
                pthread_mutex_unlock(&t->cache_lock);
                return cnt;
            }
            pthread_mutex_unlock(&t->cache_lock);
        }
    }
    int64_t cnt = bpe_word(t, sc, w, n, out);
    if (slot && cnt >= 0 && cnt <= TOK_CACHE_IDS && pthread_mutex_trylock(&t->cache_lock) == 0) {
        slot->hash = hash;
        slot->wlen = (uint8_t)n;
        slot->nids = (uint8_t)cnt;
        memcpy(slot->word, w, n);
        memcpy(slot->ids, out, (size_t)cnt * sizeof(int32_t));
        pthread_mutex_unlock(&t->cache_lock);
    }
    return cnt;
}

TO_API int to_tok_encode(to_tokenizer *t, const char *text, int64_t len, int32_t *ids,
                         int64_t cap, int64_t *n_ids) {
    TO_CHECK_PTR(t);
    TO_CHECK_PTR(n_ids);
    *n_ids = 0;
    TO_CHECK_NONNEG(len);
    TO_CHECK(len == 0 || text, TO_ERR_INVALID_ARGUMENT, "to_tok_encode: text is NULL");
    TO_CHECK(len == 0 || ids, TO_ERR_INVALID_ARGUMENT, "to_tok_encode: ids is NULL");
    TO_CHECK(cap >= len, TO_ERR_SHAPE,
             "to_tok_encode: cap (%lld) must be at least len (%lld), the most ids one text gives",
             (long long)cap, (long long)len);
    const uint8_t *s = (const uint8_t *)text;
    size_t n = (size_t)len, i = 0;
    int64_t total = 0;
    scratch sc = {0};
    int rc = TO_OK;
    while (i < n) {
        size_t e = to_pretok_next(t->pretok, s, n, i);
        int64_t cnt = encode_word(t, &sc, s + i, e - i, ids + total);
        if (cnt < 0) { rc = to_set_error(TO_ERR_OUT_OF_MEMORY, "to_tok_encode: out of memory"); break; }
        total += cnt;
        i = e;
    }
    free(sc.id); free(sc.prev); free(sc.next); free(sc.alive); free(sc.heap);
    *n_ids = rc == TO_OK ? total : 0;
    return rc;
}

TO_API int to_tok_pretokenize(int pretok, const char *text, int64_t len, int64_t *ends,
                              int64_t cap, int64_t *n_pieces) {
    TO_CHECK_PTR(n_pieces);
    *n_pieces = 0;
    TO_CHECK(pretok == TO_PRETOK_QWEN2 || pretok == TO_PRETOK_GLM4, TO_ERR_INVALID_ARGUMENT,
             "to_tok_pretokenize: unknown pre-tokenizer %d", pretok);
    TO_CHECK_NONNEG(len);
    TO_CHECK(len == 0 || text, TO_ERR_INVALID_ARGUMENT, "to_tok_pretokenize: text is NULL");
    TO_CHECK(len == 0 || ends, TO_ERR_INVALID_ARGUMENT, "to_tok_pretokenize: ends is NULL");
    TO_CHECK(cap >= len, TO_ERR_SHAPE, "to_tok_pretokenize: cap (%lld) must be at least len (%lld)",
             (long long)cap, (long long)len);
    const uint8_t *s = (const uint8_t *)text;
    size_t n = (size_t)len, i = 0;
    int64_t k = 0;
    while (i < n) {
        i = to_pretok_next(pretok, s, n, i);
        ends[k++] = (int64_t)i;
    }
    *n_pieces = k;
    return TO_OK;
}
