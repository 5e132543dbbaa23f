/* to_sample over random configurations (vocab sizes, logit scales, -inf and NaN logits, every
 * truncation path, penalties): the status is OK, the id lies in the vocabulary, a finite logit is
 * never passed over for a -inf or NaN one, top-k is respected, a token below the min-p cut is never
 * drawn, and greedy returns the first maximum. Run under the sanitizers by the native sanitize
 * session. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tensor_ops.h"

static int failures;
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: expectation failed: %s: ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            if (++failures > 10) exit(1);                                                          \
        }                                                                                          \
    } while (0)

static uint64_t rs = 12345;
static double rnd(void) { /* xorshift64*, [0, 1) */
    rs ^= rs >> 12;
    rs ^= rs << 25;
    rs ^= rs >> 27;
    return (double)((rs * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
}

int main(void) {
    for (int it = 0; it < 4000; it++) {
        const int64_t V = 1 + (int64_t)(rnd() * (rnd() < 0.5 ? 50 : 3000));
        float *l = malloc((size_t)V * sizeof *l);
        const int mode = (int)(rnd() * 5);
        const double scale = mode == 0 ? 0.0 : mode == 1 ? 1.0 : mode == 2 ? 20.0 : 200.0;
        int any_finite = 0;
        for (int64_t i = 0; i < V; i++) {
            l[i] = (float)((rnd() - 0.5) * scale);
            if (mode == 4 && rnd() < 0.3) l[i] = rnd() < 0.5 ? -INFINITY : NAN;
            any_finite |= isfinite(l[i]) != 0;
        }
        const float temp = rnd() < 0.2 ? 0.0f : (float)(0.05 + 2 * rnd());
        const int64_t top_k = rnd() < 0.5 ? 0 : (int64_t)(rnd() * (double)V * 1.2);
        const float top_p = rnd() < 0.4 ? 1.0f : (float)(1e-6 + 0.999 * rnd());
        const float min_p = rnd() < 0.6 ? 0.0f : (float)(0.99 * rnd());
        const int penalised = rnd() < 0.3;
        int32_t ids[4] = {0, (int32_t)(V / 2), (int32_t)(V - 1), (int32_t)(V / 3)}, counts[4] = {1, 2, 0, 3};
        uint64_t state = (uint64_t)it;
        int64_t tok = -1;
        const int rc = to_sample(l, TO_F32, V, penalised ? ids : NULL, penalised ? counts : NULL,
                                 penalised ? 4 : 0, temp, top_k, top_p, min_p, penalised ? 1.3f : 1.0f,
                                 penalised ? 0.5f : 0.0f, 0.0f, &state, &tok);
        EXPECT(rc == TO_OK, "it %d: rc %d (%s)", it, rc, to_last_error());
        EXPECT(tok >= 0 && tok < V, "it %d: token %lld outside vocab %lld", it, (long long)tok, (long long)V);
        if (rc != TO_OK || tok < 0 || tok >= V) {
            free(l);
            continue;
        }
        if (!penalised) {
            if (any_finite) EXPECT(isfinite(l[tok]), "it %d: drew a non-finite logit", it);
            if (temp == 0.0f && any_finite) { /* the first maximum */
                int64_t first = 0;
                while (!isfinite(l[first]) || l[first] != l[first]) first++;
                for (int64_t i = 0; i < V; i++)
                    if (l[i] == l[i] && l[i] > l[first]) first = i;
                EXPECT(tok == first, "it %d: greedy %lld, first maximum %lld", it, (long long)tok,
                       (long long)first);
            }
            if (temp > 0.0f && top_k > 0 && top_k < V && any_finite) {
                int64_t better = 0;
                for (int64_t i = 0; i < V; i++) better += l[i] > l[tok];
                EXPECT(better < top_k, "it %d: %lld logits beat the draw with top_k %lld", it,
                       (long long)better, (long long)top_k);
            }
            if (temp > 0.0f && min_p > 0.0f && any_finite) { /* p >= min_p * p_max (with slack) */
                float mx = -INFINITY;
                for (int64_t i = 0; i < V; i++)
                    if (l[i] > mx) mx = l[i];
                const double rel = exp(((double)l[tok] - mx) / temp);
                EXPECT(rel >= min_p * 0.999 || l[tok] == mx, "it %d: p/p_max %g below min_p %g", it, rel,
                       (double)min_p);
            }
        }
        free(l);
    }
    /* the same seed gives the same draws */
    float l[64];
    for (int i = 0; i < 64; i++) l[i] = (float)(i % 7);
    int64_t a[8], b[8];
    uint64_t s1 = 9, s2 = 9;
    for (int i = 0; i < 8; i++) {
        EXPECT(to_sample(l, TO_F32, 64, NULL, NULL, 0, 1.0f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, &s1, &a[i]) == TO_OK,
               "seeded draw");
        EXPECT(to_sample(l, TO_F32, 64, NULL, NULL, 0, 1.0f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, &s2, &b[i]) == TO_OK,
               "seeded draw");
        EXPECT(a[i] == b[i], "draw %d differs for the same seed", i);
    }
    if (failures) {
        printf("test_sampling: %d failed\n", failures);
        return 1;
    }
    printf("test_sampling: ok\n");
    return 0;
}
