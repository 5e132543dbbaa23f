/* Token masks of constrained decoding (structured outputs): to_mask_logits sets the logits of
 * disallowed tokens to -inf. The mask is a bitmask of uint32 words as llguidance fills it: bit
 * (i % 32) of word i / 32 set = token i allowed. Generic C: one pass over the row, a whole word
 * at a time where its 32 tokens are all allowed or all disallowed (most words of a JSON-grammar
 * mask are), so a 151936-token row costs about a row copy. */
#include "../common/internal.h"

static void mask_row_f32(const float *x, float *out, const uint32_t *mask, int64_t vocab,
                         int64_t words) {
    const float ninf = -INFINITY;
    int64_t covered = words * 32 < vocab ? words * 32 : vocab;
    int64_t i = 0;
    for (int64_t w = 0; i < covered; w++) {
        uint32_t bits = mask[w];
        int64_t end = i + 32 < covered ? i + 32 : covered;
        if (bits == 0xffffffffu) {
            if (out != x) memcpy(out + i, x + i, (size_t)(end - i) * sizeof *out);
        } else if (bits == 0u) {
            for (int64_t j = i; j < end; j++) out[j] = ninf;
        } else {
            for (int64_t j = i; j < end; j++, bits >>= 1) out[j] = (bits & 1u) ? x[j] : ninf;
        }
        i = end;
    }
    for (; i < vocab; i++) out[i] = ninf; /* tokens past the mask are not allowed */
}

static void mask_row_bf16(const uint16_t *x, uint16_t *out, const uint32_t *mask, int64_t vocab,
                          int64_t words) {
    const uint16_t ninf = 0xff80u; /* bf16 -inf */
    int64_t covered = words * 32 < vocab ? words * 32 : vocab;
    int64_t i = 0;
    for (int64_t w = 0; i < covered; w++) {
        uint32_t bits = mask[w];
        int64_t end = i + 32 < covered ? i + 32 : covered;
        if (bits == 0xffffffffu) {
            if (out != x) memcpy(out + i, x + i, (size_t)(end - i) * sizeof *out);
        } else if (bits == 0u) {
            for (int64_t j = i; j < end; j++) out[j] = ninf;
        } else {
            for (int64_t j = i; j < end; j++, bits >>= 1) out[j] = (bits & 1u) ? x[j] : ninf;
        }
        i = end;
    }
    for (; i < vocab; i++) out[i] = ninf;
}

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
