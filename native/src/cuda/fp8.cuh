/* e4m3 -> float conversion shared by the FP8 kernels (fp8.cu, the fused decoder's FP8 weights).
 *
 * sm_89 and newer have cvt.rn.f16x2.e4m3x2 (exact, NaN to NaN); the sm_80 build uses the bit trick
 * ((b & 0x7f) << 7 | (b & 0x80) << 8 is the f16 of e4m3(b) * 2^-8 for normals and subnormals; NaN
 * bytes are patched), with the 2^8 folded into the scale (FP8_FOLD). */
#pragma once
#include "common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define FP8_HW_CVT 1
#define FP8_FOLD 1.0f /* the hardware conversion gives the value itself */
#else
#define FP8_HW_CVT 0
#define FP8_FOLD 256.0f /* the bit trick gives value * 2^-8 */
#endif

/* Two e4m3 bytes (low byte first) -> two floats of value / FP8_FOLD (NaN bytes give NaN). */
__device__ __forceinline__ float2 fp8x2_to_float2(uint32_t two) {
#if FP8_HW_CVT
    uint32_t h;
    asm("{\n\t.reg .b16 a;\n\tcvt.u16.u32 a, %1;\n\tcvt.rn.f16x2.e4m3x2 %0, a;\n\t}" : "=r"(h) : "r"(two));
    return __half22float2(*reinterpret_cast<const __half2 *>(&h));
#else
    uint32_t v = __byte_perm(two, 0, 0x4140); /* byte 0 -> half 0, byte 1 -> half 1 */
    uint32_t h = ((v & 0x007f007fu) << 7) | ((v & 0x00800080u) << 8);
    float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&h));
    if ((two & 0x7fu) == 0x7fu) f.x = __int_as_float(0x7fc00000);
    if ((two & 0x7f00u) == 0x7f00u) f.y = __int_as_float(0x7fc00000);
    return f;
#endif
}


/* The 16 e4m3 bytes of a 16-byte load -> 16 floats of value / FP8_FOLD, in memory order. */
__device__ __forceinline__ void fp8x16_to_float(const uint4 q, float (&f)[16]) {
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 a = fp8x2_to_float2(words[e] & 0xffffu), b = fp8x2_to_float2(words[e] >> 16);
        f[4 * e] = a.x, f[4 * e + 1] = a.y, f[4 * e + 2] = b.x, f[4 * e + 3] = b.y;
    }
}
