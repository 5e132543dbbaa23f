/* Internal declarations of the tokenizer (src/text/): Unicode classes, pre-tokenizer, BPE. */
#ifndef TO_TEXT_INTERNAL_H
#define TO_TEXT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../common/internal.h"

/* ---- generated tables (build dir: to_unicode_tables.c, see native/tools) ------------------ */
extern const char to_uc_version[];
extern const uint16_t to_uc_stage1[0x1100];
extern const uint8_t to_uc_stage2[];
extern const int to_uc_nfolds;
extern const uint32_t to_uc_fold_cp[];
extern const char to_uc_fold_to[];

#define TO_UC_L 1u /* \p{L} */
#define TO_UC_N 2u /* \p{N} */
#define TO_UC_S 4u /* \s (White_Space) */

static inline unsigned to_uc_class(uint32_t cp) {
    if (cp >= 0x110000u) return 0;
    return to_uc_stage2[((size_t)to_uc_stage1[cp >> 8] << 8) | (cp & 0xffu)];
}

/* Decodes one code point at s[i] (i < n). Accepts UTF-8 and encoded surrogates (WTF-8, which
 * Python's surrogatepass produces); any other ill-formed byte is returned as a 1-byte code point
 * 0xFFFFFFFF of no class. Stores the byte length in *len (>= 1). */
static inline uint32_t to_utf8_next(const uint8_t *s, size_t n, size_t i, size_t *len) {
    uint8_t b0 = s[i];
    if (b0 < 0x80) { *len = 1; return b0; }
    size_t need;
    uint32_t cp, min;
    if (b0 >= 0xc2 && b0 <= 0xdf) { need = 1; cp = b0 & 0x1fu; min = 0x80; }
    else if (b0 >= 0xe0 && b0 <= 0xef) { need = 2; cp = b0 & 0x0fu; min = 0x800; }
    else if (b0 >= 0xf0 && b0 <= 0xf4) { need = 3; cp = b0 & 0x07u; min = 0x10000; }
    else { *len = 1; return 0xffffffffu; }
    if (i + need >= n) { *len = 1; return 0xffffffffu; }
    for (size_t k = 1; k <= need; k++) {
        uint8_t b = s[i + k];
        if ((b & 0xc0u) != 0x80u) { *len = 1; return 0xffffffffu; }
        cp = (cp << 6) | (b & 0x3fu);
    }
    if (cp < min || cp > 0x10ffffu) { *len = 1; return 0xffffffffu; }
    *len = need + 1;
    return cp;
}

/* ---- pre-tokenizer (pretok.c) ------------------------------------------------------------ */
/* Returns the end of the pre-token that starts at s[i] (i < n), per the pattern `kind`
 * (TO_PRETOK_*). Always > i. */
size_t to_pretok_next(int kind, const uint8_t *s, size_t n, size_t i);

#endif
