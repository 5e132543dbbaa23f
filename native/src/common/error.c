/* Thread-local last-error message and library information. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

#ifndef TO_VERSION
#define TO_VERSION "0.0.0"
#endif

static _Thread_local char g_last_error[1024];

int to_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
    va_end(ap);
    return code;
}

TO_API const char *to_last_error(void) { return g_last_error; }
TO_API void to_clear_error(void) { g_last_error[0] = '\0'; }
TO_API int to_abi_version(void) { return TO_ABI_VERSION; }
TO_API const char *to_version_string(void) { return TO_VERSION; }

TO_API int64_t to_dtype_size(int dtype) {
    switch (dtype) {
    case TO_F32: case TO_I32: return 4;
    case TO_F16: case TO_BF16: case TO_I16: return 2;
    case TO_I64: case TO_F64: return 8;
    case TO_U8: case TO_BOOL: case TO_I8: case TO_F8_E4M3: return 1;
    default: return -1;
    }
}

/* IEEE half conversions (scalar; used by casts and reference kernels). */
float to_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t to_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);      /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);     /* overflow -> inf */
    if (absu < 0x38800000u) {                                        /* subnormal or zero */
        if (absu < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absu >> 23, m = (absu & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 + (113 - e) - 1 */
        uint32_t half = m >> shift, rem = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u) - 0x38000000u; /* rebias 127 -> 15, RNE */
    return (uint16_t)(sign | (r >> 13));
}
