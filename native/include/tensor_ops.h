/*
 * tensor_ops.h - the public C API of libtensor_ops, the compute backend of Inference-PIO.
 *
 * Conventions
 *  - Every entry point returns an int error code (TO_OK == 0) unless documented otherwise, validates
 *    its arguments, and never aborts the process. On failure a thread-local message describing the
 *    problem is available through to_last_error().
 *  - Tensors cross the API as raw pointers plus explicit sizes; all buffers are row-major and
 *    contiguous unless a stride argument says otherwise. Python validates shapes before calling in;
 *    C re-checks what it cheaply can (NULL pointers, negative sizes, unknown dtypes).
 *  - The dtype enum below is mirrored in inference_pio/dtypes.py; a test checks they agree.
 *  - Bump TO_ABI_VERSION whenever a signature or enum value changes; the Python loader refuses a
 *    library whose ABI version differs from the one it was written for.
 */
#ifndef TENSOR_OPS_H
#define TENSOR_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define TO_API __declspec(dllexport)
#else
#define TO_API __attribute__((visibility("default")))
#endif

#define TO_ABI_VERSION 1

/* ---- error codes ------------------------------------------------------------------------ */
typedef enum to_status {
    TO_OK = 0,
    TO_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, negative size, bad option value */
    TO_ERR_SHAPE = 2,            /* sizes that do not fit together */
    TO_ERR_DTYPE = 3,            /* dtype not supported by this op */
    TO_ERR_OUT_OF_MEMORY = 4,
    TO_ERR_IO = 5,               /* open/read/mmap failed */
    TO_ERR_FORMAT = 6,           /* malformed file contents */
    TO_ERR_UNSUPPORTED = 7,      /* valid request this build cannot serve */
    TO_ERR_INTERNAL = 8,
    TO_ERR_CUDA = 9
} to_status;

/* ---- dtypes (values are part of the ABI) ------------------------------------------------ */
typedef enum to_dtype {
    TO_F32 = 0,
    TO_F16 = 1,
    TO_BF16 = 2,
    TO_I32 = 3,
    TO_I64 = 4,
    TO_U8 = 5,
    TO_BOOL = 6,
    TO_I8 = 7,
    TO_F64 = 8,
    TO_I16 = 9,
    TO_F8_E4M3 = 10,
    TO_DTYPE_COUNT = 11
} to_dtype;

/* ---- library information ---------------------------------------------------------------- */
TO_API int to_abi_version(void);                 /* returns TO_ABI_VERSION of the build */
TO_API const char *to_version_string(void);      /* e.g. "0.1.0" */
TO_API const char *to_last_error(void);          /* thread-local; "" when none */
TO_API void to_clear_error(void);
TO_API int64_t to_dtype_size(int dtype);          /* bytes per element, -1 for an unknown dtype */
/* Writes a NUL-terminated, human-readable description of the CPU features found and the kernel
 * chosen for each op into buf (at most cap bytes, truncated). */
TO_API int to_kernel_report(char *buf, size_t cap);
/* Bit set of TO_ISA_* flags detected at load time. */
TO_API uint32_t to_cpu_features(void);
#define TO_ISA_AVX2 (1u << 0)
#define TO_ISA_FMA (1u << 1)
#define TO_ISA_F16C (1u << 2)
#define TO_ISA_AVX512F (1u << 3)
#define TO_ISA_AVX512BW (1u << 4)
#define TO_ISA_AVX512VL (1u << 5)
#define TO_ISA_AVX512_BF16 (1u << 6)
#define TO_ISA_AVX512_VNNI (1u << 7)
/* Restricts kernel selection to the given subset of detected features (for tests/benchmarks of
 * the fallbacks). Pass 0xffffffff to restore. */
TO_API int to_set_isa_mask(uint32_t mask);

/* ---- threads ------------------------------------------------------------------------------- */
TO_API int to_set_num_threads(int n);             /* n <= 0: default (physical cores) */
TO_API int to_get_num_threads(void);

/* ---- elementwise (src/cpu/elementwise.c) ------------------------------------------------- */
/* out[i] = a[i] + b[i] for i < n; a, b, out share `dtype` (f32 or bf16); out may alias a or b. */
TO_API int to_add(const void *a, const void *b, void *out, int64_t n, int dtype);
/* out[i] = a[i] * b[i]. */
TO_API int to_mul(const void *a, const void *b, void *out, int64_t n, int dtype);
/* Converts n elements from src_dtype to dst_dtype (f32/f16/bf16/i32/i64/u8/bool). */
TO_API int to_cast(const void *src, int src_dtype, void *dst, int dst_dtype, int64_t n);

/* ---- memory (src/common/memory.c) -------------------------------------------------------- */
/* 64-byte aligned host allocation served from a size-class pool; *out receives the pointer.
 * nbytes == 0 returns a valid unique pointer. */
TO_API int to_alloc(size_t nbytes, void **out);
/* Returns memory from to_alloc to the pool; NULL is ignored. */
TO_API int to_free(void *ptr);
/* Bytes currently handed out, the peak since the last reset, and bytes cached in the pool. */
TO_API int to_memory_stats(int64_t *in_use, int64_t *peak, int64_t *cached);
/* Releases cached blocks to the system and resets the peak to the current use. */
TO_API int to_memory_trim(void);

/* ---- copy (src/cpu/copy.c) ----------------------------------------------------------------- */
/* Copies a strided view (ndim <= 8, strides in elements, may be negative or 0) into a contiguous
 * destination of the same dtype. */
TO_API int to_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape,
                           const int64_t *src_strides, int dtype);

#ifdef __cplusplus
}
#endif
#endif /* TENSOR_OPS_H */
