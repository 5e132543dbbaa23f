/* Token sampling from a logits row, and deterministic random fills (synthetic checkpoints).
 *
 * to_sample applies, in this order (the Hugging Face processor order): repetition / frequency /
 * presence penalties over the history counts, temperature (0 = greedy argmax), top-k, softmax,
 * top-p (smallest prefix of the sorted distribution whose mass reaches p, at least one token),
 * min-p (drop tokens below min_p x the top probability), then draws from the renormalised
 * distribution with a counter-based RNG whose 64-bit state the caller keeps.
 *
 * Cost (Qwen3's 151936 entries, 2 cores, bf16 logits, with the Python call): top-k 20 + top-p 73
 * us, top-p 0.95 alone 275 us, no truncation 192 us, greedy 75 us; a version that heap-ordered the
 * whole vocabulary took 1200 / 1638 / 18067 / 91 us (benchmarks/benchmark_kernels.py). The
 * scaled logits go into one float buffer (penalties written over the history ids); top-k keeps a
 * k-entry min-heap and skips 256-entry blocks whose maximum cannot enter it; otherwise the
 * weights exp(v - max) are computed in a vectorised loop, tokens whose weight is below what the
 * nucleus could need ((1 - top_p) x sum / vocab, or min_p) are left out, and only the rest is
 * ordered; with neither top-p nor min-p the draw walks the vocabulary in id order. */
#include <float.h>
#include <stdlib.h>

#include "../common/internal.h"

/* Tokens tied with the k-th value that a top-k draw keeps beyond k: at most TO_TOPK_TIES_EXTRA,
 * and TO_TOPK_TIES_MAX candidates in all (the CUDA sampler selects k + 16, up to 1024, per chunk;
 * the same rule on both, so their draws stay equal). */
#define TO_TOPK_TIES_EXTRA 16
#define TO_TOPK_TIES_MAX 1024

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

/* ---- candidates (scaled logit or weight, id) ------------------------------------------------ */
typedef struct { float v; int32_t id; } cand;

static inline int cand_less(cand a, cand b) { /* heap order: larger value first, then lower id */
    return a.v < b.v || (a.v == b.v && a.id > b.id);
}
/* max-heap (cand_less) or, with min != 0, min-heap of the same order */
static void sift_down(cand *h, int64_t n, int64_t i, int min) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && (min ? cand_less(h[l], h[m]) : cand_less(h[m], h[l]))) m = l;
        if (r < n && (min ? cand_less(h[r], h[m]) : cand_less(h[m], h[r]))) m = r;
        if (m == i) return;
        cand t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

/* v[i] = exp(v[i] - vmax) in fp32 (relative error < 2e-7, 0 below -87.2): the Cephes expf
 * polynomial after a round-to-nearest range reduction, branch-free so that the loop vectorises
 * (no-trapping-math lets the compiler turn the selects into masks) */
__attribute__((optimize("no-trapping-math"))) static void exp_shifted(float *v, int64_t n, float vmax) {
    for (int64_t i = 0; i < n; i++) {
        float x = v[i] - vmax;
        x = x > -87.3f ? x : -87.3f;
        const float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
        const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
        float p = 1.9875691e-4f;
        p = p * r + 1.3981999e-3f;
        p = p * r + 8.3334519e-3f;
        p = p * r + 4.1665795e-2f;
        p = p * r + 1.6666665e-1f;
        p = p * r + 5.0000001e-1f;
        p = p * r * r + r + 1.0f;
        const int32_t e = ((int32_t)k + 127) << 23;
        float sc;
        memcpy(&sc, &e, 4);
        const float res = p * sc;
        v[i] = x > -87.2f ? res : 0.0f;
    }
}

/* A scaled logit as the sampler reads it: NaN -> -inf, +inf (or an overflow of the scaling) ->
 * FLT_MAX, so that the largest value is finite, the weights exp(v - vmax) are never NaN and the
 * +inf entries share the mass (the CUDA sampler does the same). */
static inline float sample_value(float x) { return x == x ? (x > FLT_MAX ? FLT_MAX : x) : -INFINITY; }

/* v[i] = sample_value(logits[i] * inv_t) */
static void load_scaled(const void *logits, int dtype, int64_t vocab, float inv_t, float *v) {
    if (dtype == TO_F32) {
        const float *l = logits;
        for (int64_t i = 0; i < vocab; i++) {
            v[i] = sample_value(l[i] * inv_t);
        }
    } else {
        const uint16_t *l = logits;
        for (int64_t i = 0; i < vocab; i++) {
            v[i] = sample_value(to_bf16_to_f32(l[i]) * inv_t);
        }
    }
}

static float max_of(const float *v, int64_t n) {
    float m0 = -INFINITY, m1 = -INFINITY, m2 = -INFINITY, m3 = -INFINITY;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        m0 = v[i] > m0 ? v[i] : m0;
        m1 = v[i + 1] > m1 ? v[i + 1] : m1;
        m2 = v[i + 2] > m2 ? v[i + 2] : m2;
        m3 = v[i + 3] > m3 ? v[i + 3] : m3;
    }
    for (; i < n; i++) m0 = v[i] > m0 ? v[i] : m0;
    m0 = m1 > m0 ? m1 : m0;
    m2 = m3 > m2 ? m3 : m2;
    return m2 > m0 ? m2 : m0;
}

/* sum of v[0 .. n) in fp32 with 8 partial sums (the same value for the same block every time) */
static float sum_of(const float *v, int64_t n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) a[j] += v[i + j];
    for (; i < n; i++) a[0] += v[i];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* The k largest (v desc, id asc) of v[0 .. n) into out[0 .. k), sorted (k < n): a min-heap of the best k
 * so far; blocks whose maximum cannot enter it are skipped after one vectorised pass. */
static void top_k_select(const float *v, int64_t n, int64_t k, cand *out) {
    int64_t len = 0;
    const int64_t B = 256;
    for (int64_t b0 = 0; b0 < n; b0 += B) {
        const int64_t b1 = b0 + B < n ? b0 + B : n;
        if (len == k && !(max_of(v + b0, b1 - b0) > out[0].v)) continue;
        for (int64_t i = b0; i < b1; i++) {
            const cand c = {v[i], (int32_t)i};
            if (len < k) {
                out[len++] = c;
                if (len == k)
                    for (int64_t j = k / 2 - 1; j >= 0; j--) sift_down(out, k, j, 1);
            } else if (c.v > out[0].v) { /* a later id never displaces an equal value */
                out[0] = c;
                sift_down(out, k, 0, 1);
            }
        }
    }
    /* heap sort: pop the minimum to the end, leaving out[] in descending order */
    for (int64_t m = len; m > 1; m--) {
        cand t = out[0]; out[0] = out[m - 1]; out[m - 1] = t;
        sift_down(out, m - 1, 0, 1);
    }
}

/* Draws from sorted candidates c[0 .. n) with weights exp(v - vmax) (v already weights when
 * is_w): the smallest prefix whose mass reaches top_p of z, without those below min_p of the
 * top weight (the first is always kept). */
static int64_t draw_sorted(const cand *c, int64_t n, int is_w, float vmax, double z, float top_p,
                           float min_p, uint64_t *rng) {
    double mass = 0.0;
    int64_t keep = 0;
    for (int64_t i = 0; i < n; i++) {
        const double w = is_w ? (double)c[i].v : exp((double)(c[i].v - vmax));
        const double p = w / z;
        if (i > 0 && (mass >= (double)top_p || p < (double)min_p / z)) break;
        mass += p;
        keep++;
    }
    const double u = uniform01(rng) * mass;
    double acc = 0.0;
    int64_t pick = c[0].id;
    for (int64_t i = 0; i < keep; i++) {
        acc += (is_w ? (double)c[i].v : exp((double)(c[i].v - vmax))) / z;
        pick = c[i].id;
        if (u < acc) break;
    }
    return pick;
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
    for (int64_t j = 0; j < n_history; j++)
        TO_CHECK(history_ids[j] >= 0 && history_ids[j] < vocab, TO_ERR_INVALID_ARGUMENT,
                 "to_sample: history id %d outside vocab %lld", history_ids[j], (long long)vocab);

    const int penalised = n_history > 0 && (repetition_penalty != 1.0f || presence_penalty != 0.0f ||
                                            frequency_penalty != 0.0f);
    const float inv_t = temperature > 0.0f ? 1.0f / temperature : 1.0f;
    /* the scaled logits, with the penalties applied to the history tokens (scaled after) */
    float *v = malloc((size_t)vocab * sizeof *v);
    if (!v) return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_sample: out of memory");
    load_scaled(logits, dtype, vocab, inv_t, v);
    if (penalised)
        for (int64_t j = 0; j < n_history; j++) {
            const int32_t id = history_ids[j];
            float l = dtype == TO_F32 ? ((const float *)logits)[id]
                                      : to_bf16_to_f32(((const uint16_t *)logits)[id]);
            if (repetition_penalty != 1.0f) l = l > 0 ? l / repetition_penalty : l * repetition_penalty;
            l -= frequency_penalty * (float)history_counts[j] + (history_counts[j] > 0 ? presence_penalty : 0.0f);
            v[id] = sample_value(l * inv_t);
        }
    const float vmax = max_of(v, vocab);
    if (temperature == 0.0f || vmax == -INFINITY) { /* greedy: first index of the maximum */
        int64_t arg = 0;
        while (arg < vocab && !(v[arg] == vmax)) arg++;
        free(v);
        *out_token = arg < vocab ? arg : 0;
        return TO_OK;
    }

    int64_t pick;
    if (top_k > 0 && top_k < vocab) {
        /* top-k: the k best, sorted, then every other token tied with the k-th value (as
         * transformers and vLLM keep them), in id order, at most TO_TOPK_TIES_EXTRA of them and
         * TO_TOPK_TIES_MAX candidates in all; the normaliser over them */
        const int64_t room = top_k >= TO_TOPK_TIES_MAX ? 0
                             : top_k + TO_TOPK_TIES_EXTRA <= TO_TOPK_TIES_MAX ? TO_TOPK_TIES_EXTRA
                                                                               : TO_TOPK_TIES_MAX - top_k;
        cand *c = malloc((size_t)(top_k + room) * sizeof *c);
        if (!c) { free(v); return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_sample: out of memory"); }
        top_k_select(v, vocab, top_k, c);
        int64_t n = top_k;
        const float kth = c[top_k - 1].v;
        if (kth != -INFINITY) /* lower ids win ties in top_k_select: the rest come after c[k-1] */
            for (int64_t i = c[top_k - 1].id + 1; i < vocab && n < top_k + room; i++)
                if (v[i] == kth) c[n++] = (cand){v[i], (int32_t)i};
        double z = 0.0;
        for (int64_t i = 0; i < n; i++) z += exp((double)(c[i].v - vmax));
        pick = draw_sorted(c, n, 0, vmax, z, top_p, min_p, rng_state);
        free(c);
    } else {
        /* weights w = exp(v - vmax) (the top one is 1) and their sum over the vocabulary */
        double z = 0.0;
        const int64_t B = 1024;
        for (int64_t b0 = 0; b0 < vocab; b0 += B) {
            const int64_t b1 = b0 + B < vocab ? b0 + B : vocab;
            exp_shifted(v + b0, b1 - b0, vmax);
            z += (double)sum_of(v + b0, b1 - b0);
        }
        if (top_p >= 1.0f && min_p == 0.0f) {
            /* the whole distribution: no order needed */
            const double u = uniform01(rng_state) * z;
            double acc = 0.0;
            pick = -1;
            for (int64_t b0 = 0; b0 < vocab && pick < 0; b0 += B) {
                const int64_t b1 = b0 + B < vocab ? b0 + B : vocab;
                const float part = sum_of(v + b0, b1 - b0);
                if (acc + (double)part <= u && b1 < vocab) {
                    acc += (double)part;
                    continue;
                }
                for (int64_t i = b0; i < b1; i++) {
                    if (v[i] > 0.0f) pick = i;
                    acc += (double)v[i];
                    if (u < acc && v[i] > 0.0f) break;
                }
            }
            if (pick < 0) pick = 0; /* not reached: the block holding u has a positive weight */
        } else {
            /* Only weights >= (1 - top_p) z / vocab can be in the nucleus (the others sum to
             * less than (1 - top_p) z), and none below min_p (the top weight is 1): the rest is
             * left out before ordering. */
            float tau = (float)((1.0 - (double)top_p) * z / (double)vocab) * 0.999f;
            if (min_p * 0.999f > tau) tau = min_p * 0.999f;
            int64_t n = 0;
            for (int64_t i = 0; i < vocab; i++) n += v[i] >= tau;
            cand *c = malloc((size_t)(n > 0 ? n : 1) * sizeof *c);
            if (!c) { free(v); return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_sample: out of memory"); }
            n = 0;
            for (int64_t i = 0; i < vocab; i++)
                if (v[i] >= tau) c[n++] = (cand){v[i], (int32_t)i};
            if (n == 0) { /* not reached (the top weight is 1 >= tau); never an unset candidate */
                free(c);
                free(v);
                return to_set_error(TO_ERR_INTERNAL, "to_sample: no candidate (weights not finite)");
            }
            /* pop in descending order until the nucleus is complete, into the array's tail */
            for (int64_t j = n / 2 - 1; j >= 0; j--) sift_down(c, n, j, 0);
            double mass = 0.0;
            int64_t m = n, kept = 0;
            while (m > 0) {
                const cand top = c[0];
                const double p = (double)top.v / z;
                if (kept > 0 && (mass >= (double)top_p || p < (double)min_p / z)) break;
                mass += p;
                kept++;
                c[0] = c[--m];
                if (m > 0) sift_down(c, m, 0, 0);
                c[m] = top; /* the popped ones sit at c[n - 1], c[n - 2], ... */
            }
            /* c[n - kept .. n) holds the nucleus in ascending order: reverse it in place */
            cand *s = c + n - kept;
            for (int64_t i = 0, j = kept - 1; i < j; i++, j--) { cand t = s[i]; s[i] = s[j]; s[j] = t; }
            pick = draw_sorted(s, kept, 1, 0.0f, z, top_p, min_p, rng_state);
            free(c);
        }
    }
    free(v);
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
