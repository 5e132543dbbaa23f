/* Pre-tokenizers: hand-written matchers equivalent to the split regexes of Qwen2/Qwen3 and GLM-4.
 *
 * Qwen (digits = 1) and GLM-4 (digits = 3) differ only in the number alternative:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,digits}
 *   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * The regex engine tries the alternatives in order at each position (leftmost-first); the
 * matcher below does the same, resolving the backtracking of the last three by hand. Every
 * character matches some alternative, so consecutive matches cover the text (Split "Isolated"
 * then yields exactly the matches). */
#include "text_internal.h"

#define CP(i, lp) to_utf8_next(s, n, (i), (lp))

static inline int is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

/* Case-insensitive match of code point c against the ASCII lower-case letter want. */
static int fold_eq(uint32_t c, char want) {
    if (c < 0x80) return (char)(c | 0x20u) == want && ((c | 0x20u) >= 'a' && (c | 0x20u) <= 'z');
    for (int k = 0; k < to_uc_nfolds; k++)
        if (to_uc_fold_cp[k] == c) return to_uc_fold_to[k] == want;
    return 0;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d) at s[i] == '\''; returns the end or 0. */
static size_t match_contraction(const uint8_t *s, size_t n, size_t i) {
    size_t j = i + 1, l1, l2;
    if (j >= n) return 0;
    uint32_t c1 = CP(j, &l1);
    if (fold_eq(c1, 's') || fold_eq(c1, 't') || fold_eq(c1, 'm') || fold_eq(c1, 'd')) return j + l1;
    size_t k = j + l1;
    if (k >= n) return 0;
    uint32_t c2 = CP(k, &l2);
    if ((fold_eq(c1, 'r') || fold_eq(c1, 'v')) && fold_eq(c2, 'e')) return k + l2;
    if (fold_eq(c1, 'l') && fold_eq(c2, 'l')) return k + l2;
    return 0;
}

/* End of the run of letters starting at j. */
static size_t letters_from(const uint8_t *s, size_t n, size_t j) {
    size_t l;
    while (j < n) {
        uint32_t c = CP(j, &l);
        if (!(to_uc_class(c) & TO_UC_L)) break;
        j += l;
    }
    return j;
}

size_t to_pretok_next(int kind, const uint8_t *s, size_t n, size_t i) {
    size_t l0, l1, l;
    uint32_t c0 = CP(i, &l0);
    unsigned k0 = to_uc_class(c0);

    /* 1. contractions */
    if (c0 == '\'') {
        size_t e = match_contraction(s, n, i);
        if (e) return e;
    }
    /* 2. [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (k0 & TO_UC_L) return letters_from(s, n, i + l0);
    if (!is_crlf(c0) && !(k0 & TO_UC_N) && i + l0 < n) {
        uint32_t c1 = CP(i + l0, &l1);
        if (to_uc_class(c1) & TO_UC_L) return letters_from(s, n, i + l0 + l1);
    }
    /* 3. \p{N}{1,digits} */
    if (k0 & TO_UC_N) {
        int digits = kind == TO_PRETOK_GLM4 ? 3 : 1;
        size_t j = i + l0;
        for (int d = 1; d < digits && j < n; d++) {
            uint32_t c = CP(j, &l);
            if (!(to_uc_class(c) & TO_UC_N)) break;
            j += l;
        }
        return j;
    }
    /* 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*` */
    size_t j = n; /* start of the [^\s\p{L}\p{N}]+ run, n = no match */
    if (!(k0 & TO_UC_S)) {
        j = i; /* neither L, N nor S here */
    } else if (c0 == ' ' && i + 1 < n) {
        uint32_t c1 = CP(i + 1, &l1);
        if (!(to_uc_class(c1) & (TO_UC_S | TO_UC_L | TO_UC_N))) j = i + 1;
    }
    if (j < n) {
        while (j < n) {
            uint32_t c = CP(j, &l);
            if (to_uc_class(c) & (TO_UC_S | TO_UC_L | TO_UC_N)) break;
            j += l;
        }
        while (j < n && is_crlf(s[j])) j++;
        return j;
    }
    /* c0 is whitespace. Scan the whitespace run [i, end), remembering the end of its last CR/LF
     * and the start of its last character. */
    size_t end = i, after_nl = 0, last_start = i;
    while (end < n) {
        uint32_t c = CP(end, &l);
        if (!(to_uc_class(c) & TO_UC_S)) break;
        last_start = end;
        end += l;
        if (is_crlf(c)) after_nl = end;
    }
    /* 5. \s*[\r\n]+ : greedy \s* backs off to the last CR/LF of the run. */
    if (after_nl) return after_nl;
    /* 6. \s+(?!\S) : the whole run at the end of the text, else all but its last character. */
    if (end == n) return end;
    if (last_start > i) return last_start;
    /* 7. \s+ */
    return end;
}
