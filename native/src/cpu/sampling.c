/* Token sampling from a logits row, and deterministic random fills (synthetic checkpoints).
 *
 * to_sample applies, in this order (the Hugging Face processor order): repetition / frequency /
 * presence penalties over the history counts, temperature (0 = greedy argmax), top-k, softmax,
 * top-p (smallest prefix of the sorted distribution whose mass reaches p, at least one token),
 * min-p (drop tokens below min_p x the top probability), then draws from the renormalised
 * distribution with a counter-based RNG whose 64-bit state the caller keeps. */
#include <float.h>
#include <stdlib.h>

#include "../common/internal.h"

/* ---- RNG: splitmix64 (state advances by a constant; output is a strong mix) ---------------- */
static inline uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline double uniform01(uint64_t *state) { /* [0, 1) with 53 random bits */
    return (double)(splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- max-heap over candidate (logit, id), used for top-k / top-p without a full sort -------- */
typedef struct { float v; int32_t id; } cand;

static inline int cand_less(cand a, cand b) { /* heap order: larger value first, then lower id */
    return a.v < b.v || (a.v == b.v && a.id > b.id);
}
static void sift_down(cand *h, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_less(h[m], h[l])) m = l;
        if (r < n && cand_less(h[m], h[r])) m = r;
        if (m == i) return;
        cand t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

static float load_logit(const void *logits, int dtype, int64_t i) {
    return dtype == TO_F32 ? ((const float *)logits)[i] : to_bf16_to_f32(((const uint16_t *)logits)[i]);
}

TO_API int to_sample(const void *logits, int dtype, int64_t vocab, const int32_t *history_ids,
                     const int32_t *history_counts, int64_t n_history, float temperature,
                     int64_t top_k, float top_p, float min_p, float repetition_penalty,
                     float presence_penalty, float frequency_penalty, uint64_t *rng_state,
                     int64_t *out_token) {
    TO_CHECK_PTR(logits);
    TO_CHECK_PTR(out_token);
    TO_CHECK(dtype == TO_F32 || dtype == TO_BF16, TO_ERR_DTYPE, "to_sample: logits must be f32 or bf16");
    TO_CHECK(vocab > 0 && vocab <= INT32_MAX, TO_ERR_SHAPE, "to_sample: vocab %lld out of range",
             (long long)vocab);
    TO_CHECK(n_history >= 0 && (n_history == 0 || (history_ids && history_counts)),
             TO_ERR_INVALID_ARGUMENT, "to_sample: history arrays are NULL");
    TO_CHECK(temperature >= 0.0f && temperature == temperature, TO_ERR_INVALID_ARGUMENT,
             "to_sample: temperature %g must be >= 0", (double)temperature);
    TO_CHECK(top_k >= 0, TO_ERR_INVALID_ARGUMENT, "to_sample: top_k must be >= 0");
    TO_CHECK(top_p > 0.0f && top_p <= 1.0f, TO_ERR_INVALID_ARGUMENT, "to_sample: top_p %g not in (0, 1]",
             (double)top_p);
    TO_CHECK(min_p >= 0.0f && min_p < 1.0f, TO_ERR_INVALID_ARGUMENT, "to_sample: min_p %g not in [0, 1)",
             (double)min_p);
    TO_CHECK(repetition_penalty > 0.0f, TO_ERR_INVALID_ARGUMENT,
             "to_sample: repetition_penalty must be > 0");
    TO_CHECK(temperature == 0.0f || rng_state != NULL, TO_ERR_INVALID_ARGUMENT,
             "to_sample: rng_state is NULL");

    int penalised = n_history > 0 && (repetition_penalty != 1.0f || presence_penalty != 0.0f ||
                                      frequency_penalty != 0.0f);
    /* Penalties touch only the history tokens: record their adjusted values sparsely. */
    float *adj = NULL;
    if (penalised) {
        adj = malloc((size_t)n_history * sizeof *adj);
        if (!adj) return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_sample: out of memory");
        for (int64_t j = 0; j < n_history; j++) {
            int32_t id = history_ids[j];
            if (id < 0 || id >= vocab) {
                free(adj);
                return to_set_error(TO_ERR_INVALID_ARGUMENT, "to_sample: history id %d outside vocab %lld",
                                    id, (long long)vocab);
            }
            float l = load_logit(logits, dtype, id);
            if (repetition_penalty != 1.0f) l = l > 0 ? l / repetition_penalty : l * repetition_penalty;
            l -= frequency_penalty * (float)history_counts[j] + (history_counts[j] > 0 ? presence_penalty : 0.0f);
            adj[j] = l;
        }
    }

    if (temperature == 0.0f) { /* greedy: first index of the maximum */
        float best = -INFINITY;
        int64_t arg = 0;
        int found = 0;
        for (int64_t i = 0; i < vocab; i++) {
            float l = load_logit(logits, dtype, i);
            if (!found || l > best) { best = l; arg = i; found = 1; }
        }
        if (penalised) { /* re-check penalised tokens (their values changed) */
            best = -INFINITY;
            for (int64_t i = 0; i < vocab; i++) {
                float l = load_logit(logits, dtype, i);
                for (int64_t j = 0; j < n_history; j++) if (history_ids[j] == i) l = adj[j];
                if (i == 0 || l > best) { best = l; arg = i; }
            }
        }
        free(adj);
        *out_token = arg;
        return TO_OK;
    }

    cand *heap = malloc((size_t)vocab * sizeof *heap);
    if (!heap) { free(adj); return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_sample: out of memory"); }
    float inv_t = 1.0f / temperature;
    for (int64_t i = 0; i < vocab; i++) { heap[i].v = load_logit(logits, dtype, i); heap[i].id = (int32_t)i; }
    if (penalised) for (int64_t j = 0; j < n_history; j++) heap[history_ids[j]].v = adj[j];
    free(adj);
    for (int64_t i = 0; i < vocab; i++) heap[i].v *= inv_t;
    /* heapify, then pop candidates in descending order into the tail of the array */
    for (int64_t i = vocab / 2 - 1; i >= 0; i--) sift_down(heap, vocab, i);
    int64_t limit = top_k > 0 && top_k < vocab ? top_k : vocab;
    /* log-sum-exp over the top-k set needs all of it: pop lazily while tracking mass */
    float vmax = heap[0].v;
    /* Normaliser over the top-k candidates: without top-k it is the sum over the whole vocab. */
    double z = 0.0;
    if (limit == vocab) {
        for (int64_t i = 0; i < vocab; i++) z += exp((double)(heap[i].v - vmax));
    }
    /* Pop sorted candidates. With top-k we pop exactly k and compute z from them. */
    int64_t n = vocab, taken = 0;
    cand *sorted = heap + vocab; /* popped items are written backwards from the end */
    double mass = 0.0;
    double p_threshold = (double)min_p; /* relative to the top probability (= exp(0)/z) */
    if (limit < vocab) {
        while (taken < limit) {
            cand top = heap[0];
            heap[0] = heap[--n];
            sift_down(heap, n, 0);
            *(--sorted) = top;
            taken++;
        }
        for (int64_t i = 0; i < taken; i++) z += exp((double)(sorted[taken - 1 - i].v - vmax));
        /* sorted[] is in reverse pop order: reverse to descending */
        for (int64_t i = 0, j = taken - 1; i < j; i++, j--) { cand t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t; }
        int64_t keep = 0;
        for (int64_t i = 0; i < taken; i++) {
            double p = exp((double)(sorted[i].v - vmax)) / z;
            if (i > 0 && (mass >= (double)top_p || p < p_threshold * (1.0 / z))) break;
            mass += p;
            keep++;
        }
        double u = uniform01(rng_state) * mass, acc = 0.0;
        int64_t pick = sorted[0].id;
        for (int64_t i = 0; i < keep; i++) {
            acc += exp((double)(sorted[i].v - vmax)) / z;
            pick = sorted[i].id;
            if (u < acc) break;
        }
        free(heap);
        *out_token = pick;
        return TO_OK;
    }
    /* No top-k: pop only until top-p mass is reached or min-p cuts off. */
    cand *kept = malloc((size_t)(vocab < 4096 ? vocab : 4096) * sizeof *kept);
    int64_t cap = vocab < 4096 ? vocab : 4096, keep = 0;
    if (!kept) { free(heap); return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_sample: out of memory"); }
    while (n > 0) {
        cand top = heap[0];
        double p = exp((double)(top.v - vmax)) / z;
        if (keep > 0 && (mass >= (double)top_p || p < p_threshold * (1.0 / z))) break;
        if (keep == cap) {
            cand *grown = realloc(kept, (size_t)(cap * 2 < vocab ? cap * 2 : vocab) * sizeof *kept);
            if (!grown) { free(kept); free(heap); return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_sample: out of memory"); }
            kept = grown;
            cap = cap * 2 < vocab ? cap * 2 : vocab;
        }
        kept[keep++] = top;
        mass += p;
        heap[0] = heap[--n];
        if (n > 0) sift_down(heap, n, 0);
    }
    double u = uniform01(rng_state) * mass, acc = 0.0;
    int64_t pick = kept[0].id;
    for (int64_t i = 0; i < keep; i++) {
        acc += exp((double)(kept[i].v - vmax)) / z;
        pick = kept[i].id;
        if (u < acc) break;
    }
    free(kept);
    free(heap);
    *out_token = pick;
    return TO_OK;
}

/* ---- deterministic random fill --------------------------------------------------------------- */
typedef struct {
    void *out;
    int64_t n;
    int dtype;
    uint64_t seed;
    float mean, std;
    int dist;
} fill_ctx;

/* Element i draws from its own counter so any thread split gives identical output. */
static float draw(uint64_t seed, int64_t i, int dist) {
    uint64_t s = seed ^ ((uint64_t)i * 0xd1b54a32d192ed03ULL);
    if (dist == 1) return (float)(uniform01(&s) * 2.0 - 1.0);
    /* Box-Muller from two uniforms */
    double u1 = uniform01(&s), u2 = uniform01(&s);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void fill_task(void *p, int ith, int nth) {
    fill_ctx *c = p;
    int64_t b, e;
    to_split_rows(c->n, ith, nth, &b, &e);
    for (int64_t i = b; i < e; i++) {
        float v = c->mean + c->std * draw(c->seed, i, c->dist);
        switch (c->dtype) {
        case TO_F32: ((float *)c->out)[i] = v; break;
        case TO_BF16: ((uint16_t *)c->out)[i] = to_f32_to_bf16(v); break;
        case TO_F16: ((uint16_t *)c->out)[i] = to_f32_to_f16(v); break;
        default: break;
        }
    }
}

TO_API int to_fill_random(void *out, int64_t n, int dtype, uint64_t seed, float mean, float std,
                          int distribution) {
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(n);
    TO_CHECK(dtype == TO_F32 || dtype == TO_BF16 || dtype == TO_F16, TO_ERR_DTYPE,
             "to_fill_random: dtype %d not f32/bf16/f16", dtype);
    TO_CHECK(distribution == 0 || distribution == 1, TO_ERR_INVALID_ARGUMENT,
             "to_fill_random: distribution must be 0 (normal) or 1 (uniform)");
    fill_ctx c = {out, n, dtype, seed, mean, std, distribution};
    to_parallel_run(fill_task, &c, n >= (1 << 16) ? 0 : 1);
    return TO_OK;
}
