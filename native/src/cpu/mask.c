/* Token masks of constrained decoding (structured outputs): to_mask_logits sets the logits of
 * disallowed tokens to -inf. The mask is a bitmask of uint32 words as llguidance fills it: bit
 * (i % 32) of word i / 32 set = token i allowed. Generic C: one pass over the row, a whole word
 * at a time where its 32 tokens are all allowed or all disallowed (most words of a JSON-grammar
 * mask are) and one disallowed token at a time elsewhere. */
#include "../common/internal.h"

/* Row r: copied (unless in place), then -inf written over its disallowed tokens: a whole word
 * of 32 at a time where none is allowed, else one per clear bit (count-trailing-zeros), so the
 * cost follows the disallowed tokens, not the row. */
#define MASK_ROW(name, T, NINF)                                                                    \
    static void name(const T *x, T *out, const uint32_t *mask, int64_t vocab, int64_t words) {     \
        const T ninf = (NINF);                                                                     \
        if (out != x) memcpy(out, x, (size_t)vocab * sizeof *out);                                 \
        int64_t covered = words * 32 < vocab ? words * 32 : vocab;                                 \
        for (int64_t w = 0, i = 0; i < covered; w++, i += 32) {                                    \
            uint32_t bits = mask[w];                                                               \
            int64_t n = covered - i < 32 ? covered - i : 32;                                       \
            if (bits == 0xffffffffu) continue;                                                     \
            if (bits == 0u) {                                                                      \
                for (int64_t j = 0; j < n; j++) out[i + j] = ninf;                                 \
                continue;                                                                          \
            }                                                                                      \
            uint32_t clear = ~bits;                                                                \
            if (n < 32) clear &= (1u << n) - 1u;                                                   \
            while (clear) {                                                                        \
                out[i + __builtin_ctz(clear)] = ninf;                                              \
                clear &= clear - 1u;                                                               \
            }                                                                                      \
        }                                                                                          \
        for (int64_t j = covered; j < vocab; j++) out[j] = ninf; /* past the mask: disallowed */ \
    }

MASK_ROW(mask_row_f32, float, -INFINITY)
MASK_ROW(mask_row_bf16, uint16_t, 0xff80u) /* bf16 -inf */

TO_API int to_mask_logits(const void *x, void *out, const uint32_t *mask, int64_t rows,
                          int64_t vocab, int64_t mask_words, int dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(out);
    TO_CHECK_NONNEG(rows);
    TO_CHECK_NONNEG(vocab);
    TO_CHECK_NONNEG(mask_words);
    TO_CHECK(dtype == TO_F32 || dtype == TO_BF16, TO_ERR_DTYPE,
             "to_mask_logits: dtype %d (f32 or bf16 expected)", dtype);
    TO_CHECK(mask != NULL || rows == 0 || mask_words == 0, TO_ERR_INVALID_ARGUMENT,
             "to_mask_logits: mask is NULL");
    TO_CHECK(mask_words <= (INT64_MAX - 31) / 32, TO_ERR_SHAPE, "to_mask_logits: mask_words too large");
    to_report_kernel("mask_logits", "generic");
    for (int64_t r = 0; r < rows; r++) {
        const uint32_t *m = mask ? mask + r * mask_words : NULL;
        int64_t words = m ? mask_words : 0;
        if (dtype == TO_F32)
            mask_row_f32((const float *)x + r * vocab, (float *)out + r * vocab, m, vocab, words);
        else
            mask_row_bf16((const uint16_t *)x + r * vocab, (uint16_t *)out + r * vocab, m, vocab,
                          words);
    }
    return TO_OK;
}
