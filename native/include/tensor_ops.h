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

#define TO_ABI_VERSION 2

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
#define TO_ISA_AVX512_VBMI (1u << 8)
/* Restricts kernel selection to the given subset of detected features (for tests/benchmarks of
 * the fallbacks). Pass 0xffffffff to restore. */
TO_API int to_set_isa_mask(uint32_t mask);

/* ---- threads ------------------------------------------------------------------------------- */
/* n <= 0: the default, INFERENCE_PIO_NUM_THREADS if set, else the physical cores (distinct
 * package/core pairs in sysfs) among the CPUs of the process affinity mask. fork() is safe while
 * other threads run ops (pthread_atfork: the region in flight finishes first); the child starts
 * its own workers, as many as the parent had, on its first parallel op. */
TO_API int to_set_num_threads(int n);
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
/* Bytes held from the system (handed out + cached, in whole size classes), the cache limit, the
 * number of to_alloc calls and how many of them were served from the cache. */
TO_API int to_memory_counters(int64_t *reserved, int64_t *cache_limit, int64_t *allocs,
                              int64_t *cache_hits);
/* At most `bytes` of freed blocks stay cached (excess is released now and on later frees). */
TO_API int to_memory_set_cache_limit(int64_t bytes);
/* Advice for a block written sparsely (a KV cache sized for a whole context): no transparent
 * huge pages, so only the 4 KiB pages written become resident. */
TO_API int to_memory_advise_sparse(void *ptr, size_t nbytes);
#define TO_MEMORY_DEFAULT_CACHE_LIMIT ((int64_t)512 << 20)

/* ---- copy (src/cpu/copy.c) ----------------------------------------------------------------- */
/* Copies a strided view (ndim <= 8, strides in elements, may be negative or 0) into a contiguous
 * destination of the same dtype. */
TO_API int to_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape,
                           const int64_t *src_strides, int dtype);

/* ---- matmul (src/cpu/matmul.c, probes in src/cpu/probe.c) ----------------------------------- */
/* Linear layer: y[i, j] = sum_k x[i, k] * w[j, k] (+ bias[j]) for i < m, j < n, k < k.
 *  x     m rows of k elements, row i at x + i*ldx elements (ldx >= k); x_dtype f32 or bf16.
 *  w     [n, k] contiguous (safetensors layout [out, in]); w_dtype bf16, f16 or f32. Read only:
 *        may be a read-only mmapped buffer; only the dtype's natural alignment is assumed.
 *  bias  NULL (no bias) or n elements of bias_dtype (f32, bf16 or f16; ignored when bias is NULL).
 *  y     m rows of n elements, row i at y + i*ldy elements (ldy >= n); y_dtype f32 or bf16.
 *        y must not overlap x, w or bias.
 * Products and sums in fp32, bias added in fp32, one rounding to y_dtype at the end. With bf16 x
 * and bf16 w the result is exact-product fp32 accumulation (order of summation unspecified; the
 * AVX512-BF16 kernels flush denormal products/sums to zero, as vdpbf16ps does). f32 x is used at
 * full fp32 precision (w is widened to f32, x is never rounded to bf16). Each output is summed
 * in the same order whatever the thread count. Uses the thread pool: do not call from inside a
 * to_parallel_run task. m == 0 or n == 0 is a no-op; k == 0 gives y = bias (or 0). */
TO_API int to_linear(const void *x, const void *w, const void *bias, void *y, int64_t m, int64_t n,
                     int64_t k, int64_t ldx, int64_t ldy, int x_dtype, int w_dtype, int bias_dtype,
                     int y_dtype);
/* Several linears sharing one input in one parallel region (q/k/v, gate/up): for i < count,
 * ys[i][r, j] = sum_k x[r, k] * ws[i][j, k] with ws[i] [ns[i], k] contiguous, no bias, rows of
 * ys[i] ldys[i] apart. Same numerics as to_linear; count <= 8. Dtype mixes and sizes without a
 * grouped kernel run one to_linear per matrix. */
TO_API int to_linear_group(const void *x, int count, const void *const *ws, const int64_t *ns,
                           void *const *ys, const int64_t *ldys, int64_t m, int64_t k, int64_t ldx,
                           int x_dtype, int w_dtype, int y_dtype);
/* Many linears of one shape, each with its own input (a mixture's experts over their rows), in
 * one parallel region: for i < count, ys[i][r, j] = sum_k xs[i][r, k] * ws[i][j, k] for
 * r < ms[i], with ws[i] [n, k] contiguous, rows of xs[i] ldxs[i] apart and of ys[i] ldys[i]. Each
 * problem gets the bits of its own to_linear call (the same kernel for its rows). */
TO_API int to_linear_batched(int count, const void *const *xs, const int64_t *ms,
                             const int64_t *ldxs, const void *const *ws, void *const *ys,
                             const int64_t *ldys, int64_t n, int64_t k, int x_dtype, int w_dtype,
                             int y_dtype);
/* Many linears of one shape at fixed element strides (per-head maps of MLA): for i < count,
 * y_i = x_i W_i^T with x_i = x + i * sx, W_i = w + i * sw ([n, k] contiguous), y_i = y + i * sy,
 * m rows each (x rows ldx apart, y rows ldy apart); sx may be 0 (one shared input). Each problem
 * gets the bits of its own to_linear call. The CUDA twin runs the batch as one launch where
 * to_linear would take the tensor-core GEMV (bf16, m <= 16, 16-byte aligned problems), else one
 * toc_linear per problem. */
TO_API int to_linear_strided_batched(int count, const void *x, int64_t ldx, int64_t sx, const void *w,
                                     int64_t sw, void *y, int64_t ldy, int64_t sy, int64_t m,
                                     int64_t n, int64_t k, int x_dtype, int w_dtype, int y_dtype);
/* Probe: sums a `bytes`-sized buffer (allocated and filled once per call, then read in whole
 * passes of 4 MiB chunks, >= 3 passes and 2 GB in total) with `threads` threads
 * (<= to_get_num_threads()) using the widest vector loads available; writes the best pass's
 * sustained read bandwidth in GB/s (1e9 bytes/s) to *gbps. With bytes well above the last-level
 * cache this is DRAM bandwidth. bytes >= 1 MiB. */
TO_API int to_bench_read_bandwidth(int64_t bytes, int threads, double *gbps);
/* Probe: register-only loop of independent AVX512-BF16 vdpbf16ps (zmm) on `threads` threads;
 * writes GFLOP/s (one multiply-add = 2 flops, 32 per instruction per lane set => 64 flops per
 * instruction) to *gflops. TO_ERR_UNSUPPORTED when the CPU lacks AVX512-BF16. */
TO_API int to_bench_bf16_peak(int threads, double *gflops);

/* ---- fp8 block-scaled weights (src/cpu/fp8.c) ---------------------------------------------- */
/* The "-FP8" checkpoint format of Qwen / DeepSeek: a weight W [n, k] stored as float8 e4m3fn
 * bytes w (TO_F8_E4M3: 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, subnormals, no
 * infinities, 0x7f / 0xff are NaN, max 448) plus fp32 scales `scale`
 * [ceil(n/block_n), ceil(k/block_k)] row-major (the checkpoint's weight_scale_inv; edge blocks
 * may be partial): W[i][j] = e4m3(w[i][j]) * scale[i/block_n][j/block_k].
 *
 * Dequantizes W into out [n, k] contiguous of out_dtype (f32, bf16 or f16): the fp32 product
 * e4m3(w) * scale, rounded once (RNE) to out_dtype, so f32 out is bitwise torch's
 * w.to(float32) * scale. NaN bytes decode to torch's NaN (sign | 0x7ff00000) and give NaN.
 * block_n, block_k >= 1. Threads split the rows. n == 0 or k == 0 is a no-op. */
TO_API int to_fp8_dequant(const uint8_t *w, const float *scale, int64_t n, int64_t k,
                          int64_t block_n, int64_t block_k, void *out, int out_dtype);

/* Linear layer on an fp8 weight: y[i, j] = sum_k x[i, k] * W[j, k] (+ bias[j]) with W as above
 * (w [n, k] e4m3 bytes, scale [ceil(n/block_n), ceil(k/block_k)] fp32). The contract of
 * to_linear otherwise: x f32/bf16 with rows ldx apart (ldx >= k), bias NULL or n values of
 * f32/bf16/f16, y f32/bf16 with rows ldy apart (ldy >= n), not overlapping x, w, scale or bias;
 * w and scale are read only (may be mmapped). Numerics, per output: for each k-block b in order,
 * its partial dot product sum_{k in b} x * e4m3(w) in fp32 (in SIMD lanes, order unspecified) is
 * multiplied by the block's scale and added to the fp32 total with one fused multiply-add (per
 * lane; the lanes are summed at the end; plain multiply and add in the generic C kernel), then
 * bias in fp32 and one rounding to y_dtype. The kernels that decode w as e4m3(w) * 2^-8 (exact)
 * multiply each partial sum by 256 (exact) before its scale, so any finite scale works. A NaN
 * weight byte gives NaN outputs in its row on every kernel. bf16 x on AVX512-BF16 CPUs multiplies
 * with vdpbf16ps (denormal products and sums flushed to zero, as to_linear). Each output is summed
 * in the same order whatever the thread count. Kernels: decode (m <= 16, AVX-512: 4 x rows a
 * pass, each row computed as in a one-row call, so a row's bits do not depend on m) decodes the
 * weight stream in registers: with bf16 x on AVX512-BF16 + VBMI CPUs (Zen 4, Sapphire Rapids)
 * through two 128-entry byte tables (vpermi2b, exact bf16 of every e4m3 value, NaN included; x is
 * copied once into the unpacked weights' order), each task streaming its W rows one after
 * another with prefetch, at the bf16 kernel's bytes per second (half its time per row); else
 * the f16 trick on x widened to f32. Prefill (m > 16) decodes a panel of W
 * rows once per task (f32, or bf16 for bf16 x on AVX512-BF16) and runs every group of 4 x rows
 * over it.
 * Uses the thread pool: do not call from inside a to_parallel_run task. m == 0 or n == 0 is a
 * no-op; k == 0 gives y = bias (or 0). */
TO_API int to_linear_fp8(const void *x, const uint8_t *w, const float *scale, const void *bias,
                         void *y, int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy,
                         int64_t block_n, int64_t block_k, int x_dtype, int bias_dtype,
                         int y_dtype);

/* Quantizes w [n, k] contiguous (w_dtype f32, bf16 or f16) to the format above, as transformers'
 * Fp8Quantize (integrations/finegrained_fp8.py) computes the scales: per block, amax = max |w|
 * (NaN if the block holds one), scale_inv = 1 / ((1 / amax) * 448) in fp32, three roundings, as
 * torch evaluates transformers' 1.0 / (448 / amax) (a scalar over a tensor is reciprocal times
 * the scalar); 1 for a block whose amax is not > 0 (all zeros, or NaN). out [n, k] =
 * e4m3 RNE of clamp(w / scale_inv, -448, 448) in fp32 -- bitwise torch's
 * (w.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn) (transformers multiplies by
 * 448 / amax instead, which can differ by one step where the quotient is a rounding tie); NaN
 * gives 0x7f | sign. scale_inv [ceil(n/block_n), ceil(k/block_k)]. Threads split the block rows. */
TO_API int to_fp8_quant(const void *w, int w_dtype, int64_t n, int64_t k, int64_t block_n,
                        int64_t block_k, uint8_t *out, float *scale_inv);
/* CUDA twins (src/cuda/fp8.cu): toc_fp8_dequant gives the CPU's bits (NaN included) for every
 * out dtype. toc_linear_fp8, m <= 16 with k % 16 == 0, block_k % 16 == 0 and w 16-byte aligned:
 * a GEMV (one warp per output, the weight bytes read once; e4m3 converted by
 * cvt.rn.f16x2.e4m3x2 on sm_89+, the f16 bit trick on sm_80) whose scale is applied per 16-byte
 * chunk: each lane's 16-product fp32 sum times the scale is added to its fp32 total, then the
 * lanes are summed -- the same value as the CPU up to summation order. Otherwise (prefill) the
 * weight is dequantized to bf16 (e4m3 * scale rounded once: one extra rounding per weight) into a
 * scratch buffer that grows on demand (not while a graph is being captured: TO_ERR_UNSUPPORTED)
 * and toc_linear runs on it. No toc_fp8_quant: quantize on the host. */

/* ---- tokenizer (src/text/) ------------------------------------------------------------- */
/* Byte-level BPE with the pre-tokenizers of Qwen2/Qwen3 and GLM-4 (hand-written matchers of their
 * split regexes over Unicode classes generated at build time). Python handles normalization,
 * added/special tokens and decoding; C pre-tokenizes UTF-8 text and runs the merge loop. */
#define TO_PRETOK_QWEN2 0 /* ...|\p{N}|...      one digit per pre-token */
#define TO_PRETOK_GLM4 1  /* ...|\p{N}{1,3}|... up to three digits */
#define TO_TOK_IGNORE_MERGES 1 /* a pre-token found whole in the vocab is one token */
typedef struct to_tokenizer to_tokenizer;
/* Builds a tokenizer. Vocab entry k has the raw bytes tokens[offsets[k] .. offsets[k+1]) (not
 * the byte-level-mapped string) and id ids[k]; offsets has n_tokens + 1 entries, from 0 to
 * tokens_len. merges holds n_merges triples (left id, right id, merged id); the rank of a merge is
 * its index, and a later duplicate pair replaces an earlier one (as in tokenizers). */
TO_API int to_tok_create(int pretok, const uint8_t *tokens, int64_t tokens_len,
                         const int64_t *offsets, const int32_t *ids, int64_t n_tokens,
                         const int32_t *merges, int64_t n_merges, int flags, to_tokenizer **out);
/* Pre-tokenizes and encodes len bytes of UTF-8 text (encoded surrogates accepted; other
 * ill-formed bytes are single "other" characters) into ids; *n_ids receives the count. One text
 * gives at most len ids, so cap must be >= len. Thread-safe. */
TO_API int to_tok_encode(to_tokenizer *tok, const char *text, int64_t len, int32_t *ids,
                         int64_t cap, int64_t *n_ids);
/* Pre-tokenizer alone: ends[k] is the byte offset where piece k ends; cap must be >= len. */
TO_API int to_tok_pretokenize(int pretok, const char *text, int64_t len, int64_t *ends,
                              int64_t cap, int64_t *n_pieces);
TO_API void to_tok_free(to_tokenizer *tok);          /* NULL is fine */
TO_API const char *to_tok_unicode_version(void);     /* Unicode version of the class tables */

/* ---- sampling and random fills (src/cpu/sampling.c) ---------------------------------------- */
/* Draws one token id from a logits row (f32 or bf16, length vocab). Penalties use the history
 * (distinct ids and their counts). temperature 0 = greedy (first maximum; the Python API also
 * decodes greedily below 1e-5, where 1/temperature overflows); top_k 0 = off;
 * top_p in (0, 1]; min_p in [0, 1). rng_state is advanced (keep it per sequence for reproducible
 * sampling). */
TO_API int to_sample(const void *logits, int dtype, int64_t vocab, const int32_t *history_ids,
                     const int32_t *history_counts, int64_t n_history, float temperature,
                     int64_t top_k, float top_p, float min_p, float repetition_penalty,
                     float presence_penalty, float frequency_penalty, uint64_t *rng_state,
                     int64_t *out_token);
/* Fills n elements (f32/bf16/f16) with mean + std * N(0,1) (distribution 0) or
 * mean + std * U(-1,1) (distribution 1); element i depends only on (seed, i). */
TO_API int to_fill_random(void *out, int64_t n, int dtype, uint64_t seed, float mean, float std,
                          int distribution);

/* ---- norm (src/cpu/norm.c) ------------------------------------------------------------------ */
/* RMSNorm variants (models.md §1.1). r = rsqrt(mean(x_f32^2 over dim) + eps), all in fp32.
 *  TO_RMS_PLAIN          y = w * round_x(x*r)                 (Qwen3, GLM, Qwen3-VL text)
 *  TO_RMS_ZERO_CENTERED  y = (x*r) * (1 + w)  in fp32          (Qwen3-Next norms, q/k norms)
 *  TO_RMS_GATED          n = w * round_x(x*r); if x and w are both bf16, n is rounded to bf16;
 *                        y = n * silu(z_f32)                   (Qwen3-Next GDN output norm)
 * round_x() rounds to x_dtype (identity for f32); y is computed in fp32 and rounded once to
 * out_dtype. The rows form a 3-D grid [outer, inner, dim]: row (o, i) of x starts at
 * x + o*x_so + i*x_si elements (likewise z with z_so/z_si and out with o_so/o_si); the dim
 * elements of a row are contiguous. This covers [rows, dim] (inner = 1) and per-head norms on
 * views of fused projection buffers [T, heads, hd]. out may equal x (in place, same strides).
 * z is used only by TO_RMS_GATED (may be NULL otherwise) and has x_dtype.
 * x_dtype, out_dtype: f32 or bf16; w_dtype: f32, bf16 or f16. */
#define TO_RMS_PLAIN 0
#define TO_RMS_ZERO_CENTERED 1
#define TO_RMS_GATED 2
TO_API int to_rms_norm(const void *x, const void *w, const void *z, void *out, int64_t outer,
                       int64_t inner, int64_t dim, int64_t x_so, int64_t x_si, int64_t z_so,
                       int64_t z_si, int64_t o_so, int64_t o_si, float eps, int variant,
                       int x_dtype, int w_dtype, int out_dtype);
/* Residual add then RMSNorm: x[r] = x[r] + delta[r] (in place, rounded to x_dtype), then
 * out[r] = rms_norm(x[r]) for rows x dim contiguous rows. variant: plain or zero-centred. */
TO_API int to_add_rms_norm(void *x, const void *delta, const void *w, void *out, int64_t rows,
                           int64_t dim, float eps, int variant, int x_dtype, int w_dtype,
                           int out_dtype);
/* LayerNorm over the last dim: y = (x - mean) * rsqrt(var + eps) * w + b, biased variance,
 * statistics and affine in fp32, one rounding to out_dtype. w and/or b may be NULL (1 / 0).
 * Row i of x at x + i*ldx, of out at out + i*ldo (elements); out may equal x when ldo == ldx.
 * x_dtype, out_dtype f32/bf16; w_dtype (for w and b) f32/bf16/f16. */
TO_API int to_layer_norm(const void *x, const void *w, const void *b, void *out, int64_t rows,
                         int64_t dim, int64_t ldx, int64_t ldo, float eps, int x_dtype,
                         int w_dtype, int out_dtype);

/* ---- rope (src/cpu/rope.c) ------------------------------------------------------------------ */
/* Cos/sin tables have T rows of rot_dim elements in HF's duplicated layout: for frequency
 * i < rot_dim/2, cos[t, i] == cos[t, i + rot_dim/2] = cos(angle[t, i]). The angle is
 * float32(position) * inv_freq[i] computed in fp32, inv_freq[i] = 1 / theta^(2i/rot_dim) (fp32),
 * cos/sin rounded once to out_dtype (f32 or bf16). positions: pos_dtype TO_I32 or TO_I64. */
TO_API int to_rope_cache(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                         float theta, void *cos, void *sin, int out_dtype);
/* Qwen3-VL interleaved MRoPE (models.md §6.5): positions [3, T] (rows t, h, w). Frequency
 * i < rot_dim/2 takes the H position when i % 3 == 1 and i < 3*sec_h, the W position when
 * i % 3 == 2 and i < 3*sec_w, the T position otherwise. sec_t + sec_h + sec_w == rot_dim/2. */
TO_API int to_rope_cache_mrope(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                               float theta, int64_t sec_t, int64_t sec_h, int64_t sec_w, void *cos,
                               void *sin, int out_dtype);
/* 2-D axial vision rope (models.md §6.3): positions [2, T] (row, col); q = rot_dim/4 frequencies
 * inv_freq[i] = 1 / theta^(2i/(rot_dim/2)); angle j < rot_dim/2 is row*inv_freq[j] for j < q and
 * col*inv_freq[j-q] otherwise, duplicated to rot_dim. rot_dim % 4 == 0. */
TO_API int to_rope_cache_2d(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                            float theta, void *cos, void *sin, int out_dtype);
/* Rotates x in place: x is [T, heads, head_dim] with element (t, h, c) at x + t*stride_t +
 * h*stride_h + c; only channels c < rot_dim are rotated (partial rotary), the rest untouched.
 * cos/sin: [T, rot_dim] contiguous tables of table_dtype (f32/bf16) as built above.
 *  TO_ROPE_NEOX         pairs (c, c + rot_dim/2)   (rotate_half)
 *  TO_ROPE_INTERLEAVED  pairs (2i, 2i+1), results written back in place (layout kept)
 *  TO_ROPE_INTERLEAVED_HF  same rotation, output de-interleaved like HF ([even'.., odd'..])
 * Rounding: with bf16 x and a bf16 table every step rounds to bf16 like torch
 * (round(round(x*cos) + round(-y*sin))); otherwise the rotation is done in fp32 (each product
 * and the sum rounded to fp32, no FMA) and rounded once to x_dtype. rot_dim even, <= head_dim,
 * and <= 8192 for TO_ROPE_INTERLEAVED_HF. */
#define TO_ROPE_NEOX 0
#define TO_ROPE_INTERLEAVED 1
#define TO_ROPE_INTERLEAVED_HF 2
TO_API int to_rope_apply(void *x, const void *cos, const void *sin, int64_t T, int64_t heads,
                         int64_t head_dim, int64_t rot_dim, int64_t stride_t, int64_t stride_h,
                         int mode, int x_dtype, int table_dtype);

/* Attention's q/k preparation in one call: per-head RMSNorm of q [T, nh, hd] with q_w and of
 * k [T, nkv, hd] with k_w (either weight may be NULL: no norm), then to_rope_apply on both, all
 * in place. Heads are contiguous within a token; q_st/k_st are the token strides (elements). */
TO_API int to_qk_norm_rope(void *q, void *k, const void *q_w, const void *k_w, const void *cos,
                           const void *sin, int64_t T, int64_t nh, int64_t nkv, int64_t hd,
                           int64_t rot_dim, int64_t q_st, int64_t k_st, float eps, int variant,
                           int mode, int x_dtype, int w_dtype, int table_dtype);

/* Rope tables from explicit frequencies (scaled rope: linear, YaRN, llama3, computed in Python
 * like transformers): cos/sin [T, rot_dim] in the duplicated layout above with
 * angle[t, i] = float32(position) * inv_freq[i] (fp32), then cos(angle) * scale and
 * sin(angle) * scale in fp32 (YaRN's attention factor; 1.0 otherwise), rounded once to out_dtype.
 * inv_freq: rot_dim/2 finite fp32 values; scale > 0 and finite; rot_dim even, <= 32768.
 * toc_rope_cache_freqs takes the same arguments with positions, inv_freq and the tables in device
 * memory. to_rope_cache is this builder with inv_freq[i] = 1 / theta^(2i/rot_dim) and scale 1. */
TO_API int to_rope_cache_freqs(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                               const float *inv_freq, float scale, void *cos, void *sin,
                               int out_dtype);

/* ---- elementwise, extended (src/cpu/elementwise.c) ------------------------------------------ */
/* Unary ops on n contiguous elements, dtype f32 or bf16 for x and out (same dtype), computed in
 * fp32 and rounded once; out may alias x. */
TO_API int to_scale(const void *x, void *out, int64_t n, float s, int dtype); /* x * s */
TO_API int to_silu(const void *x, void *out, int64_t n, int dtype);           /* x*sigmoid(x) */
TO_API int to_sigmoid(const void *x, void *out, int64_t n, int dtype);
TO_API int to_exp(const void *x, void *out, int64_t n, int dtype);
/* softplus with beta 1, threshold 20 (torch): x > 20 ? x : log1p(exp(x)). */
TO_API int to_softplus(const void *x, void *out, int64_t n, int dtype);
/* approximate = 0: exact 0.5*x*(1+erf(x/sqrt2)); 1: tanh approximation. */
TO_API int to_gelu(const void *x, void *out, int64_t n, int approximate, int dtype);
/* SwiGLU: out[r, j] = silu(gate[r, j]) * up[r, j] for r < rows, j < inter; row r of gate at
 * gate + r*ld_gate, of up at up + r*ld_up, of out at out + r*ld_out (elements). A fused
 * [rows, 2*inter] buffer (gate first) is gate = buf, up = buf + inter, ld = 2*inter.
 * bf16: silu(gate) is rounded to bf16 before the multiply, as HF's act_fn(gate) * up. */
TO_API int to_swiglu(const void *gate, const void *up, void *out, int64_t rows, int64_t inter,
                     int64_t ld_gate, int64_t ld_up, int64_t ld_out, int dtype);
/* out[r, j] = x[r, j] + bias[j] (rows x dim, contiguous); bias_dtype f32/bf16/f16; out may
 * alias x. Computed in fp32, rounded once to dtype. */
TO_API int to_add_row(const void *x, const void *bias, void *out, int64_t rows, int64_t dim,
                      int dtype, int bias_dtype);
/* out[r, j] = x[r, j] * s[r] (rows x dim, contiguous); s_dtype f32/bf16; out may alias x. */
TO_API int to_mul_rows(const void *x, const void *s, void *out, int64_t rows, int64_t dim,
                       int dtype, int s_dtype);

/* ---- softmax (src/cpu/softmax.c) ------------------------------------------------------------ */
/* Softmax (log_ = 0) or log-softmax (log_ = 1) over the last dim of [rows, dim], in fp32 with the
 * max subtracted; x_dtype f32/bf16, out_dtype f32/bf16; row i of x at x + i*ldx, of out at
 * out + i*ldo. out may equal x when the dtypes and strides match. dim >= 1. */
TO_API int to_softmax(const void *x, void *out, int64_t rows, int64_t dim, int64_t ldx,
                      int64_t ldo, int log_, int x_dtype, int out_dtype);

/* ---- select (src/cpu/select.c) -------------------------------------------------------------- */
/* Index of the maximum of each row of [rows, dim] (first index among equal maxima, NaN counts
 * as the maximum, like torch.argmax); x_dtype f32/bf16; idx_dtype TO_I32/TO_I64. dim >= 1. */
TO_API int to_argmax(const void *x, void *idx, int64_t rows, int64_t dim, int x_dtype,
                     int idx_dtype);
/* The k largest values of each row, sorted descending, with their indices; among equal values
 * the lower index comes first. values: [rows, k] of x_dtype, idx: [rows, k] of idx_dtype.
 * 1 <= k <= dim. NaN inputs are rejected (TO_ERR_INVALID_ARGUMENT). */
TO_API int to_topk(const void *x, void *values, void *idx, int64_t rows, int64_t dim, int64_t k,
                   int x_dtype, int idx_dtype);
/* Inclusive prefix sum over the last dim with an fp32 accumulator, rounded per element to
 * out_dtype; x_dtype/out_dtype f32/bf16. */
TO_API int to_cumsum(const void *x, void *out, int64_t rows, int64_t dim, int x_dtype,
                     int out_dtype);
/* out[i] = mask[i] ? a[i] : b[i]; mask u8/bool (nonzero = true); a, b, out of `dtype`
 * (any dtype of to_dtype_size 1, 2, 4 or 8). */
TO_API int to_where(const void *mask, const void *a, const void *b, void *out, int64_t n,
                    int dtype);
/* Embedding lookup: out[i, :] = table[ids[i], :] for i < n; ids TO_I32/TO_I64, table [vocab, dim]
 * of table_dtype f32/bf16/f16, out [n, dim] of out_dtype f32/bf16. An id outside [0, vocab)
 * returns TO_ERR_INVALID_ARGUMENT naming the id and its position (out is then unspecified). */
TO_API int to_embedding(const void *ids, int ids_dtype, int64_t n, const void *table,
                        int table_dtype, int64_t vocab, int64_t dim, void *out, int out_dtype);

/* ---- attention (src/cpu/attention.c) -------------------------------------------------------- */
/* Scaled dot-product attention with GQA, fp32 scores/softmax/accumulation, one rounding at the end.
 *  q    tq tokens; head j of token i at q + i*ldq + j*hd_qk elements (ldq >= nh*hd_qk); q_dtype
 *       f32 or bf16. out: same layout with hd_v and ldo (ldo >= nh*hd_v), dtype q_dtype; out must
 *       not overlap q, k or v.
 *  k, v kv_len keys of nkv heads, kv_dtype f32 or bf16; key p of kv head h at
 *       k + h*k_head_stride + p*k_pos_stride (rows of hd_qk contiguous elements), same for v with
 *       hd_v. The KV cache layout is [nkv, max_len, hd] (head_stride = max_len*hd, pos_stride = hd:
 *       each head's keys are one contiguous stream for decode); fresh [T, nkv, hd] projections
 *       use head_stride = hd, pos_stride = nkv*hd. v may alias k (absorbed MLA: v = the first
 *       hd_v channels of the latent rows, hd_v <= hd_qk).
 *  GQA: query head j uses kv head j / (nh/nkv); nh % nkv == 0.
 *  Masking, without segments (cu_seqlens == NULL): causal != 0: query i (absolute position
 *       q_pos + i) sees keys 0..q_pos+i, which requires q_pos + tq <= kv_len; causal == 0: every
 *       query sees all kv_len keys. With segments: cu_seqlens holds n_seqs+1 increasing int32 offsets
 *       from 0 to tq == kv_len (packed sequences, q_pos must be 0); query i of segment s sees the
 *       keys of segment s only (all of them, or those up to i when causal).
 *  Batched decode: the caller loops over sequences (each with its own cache and length).
 *  Rows with no visible key (impossible for valid masks) give zeros. */
TO_API int to_attention(const void *q, const void *k, const void *v, void *out, int64_t tq,
                        int64_t nh, int64_t nkv, int64_t hd_qk, int64_t hd_v, int64_t ldq,
                        int64_t ldo, int64_t kv_len, int64_t k_head_stride, int64_t k_pos_stride,
                        int64_t v_head_stride, int64_t v_pos_stride, int64_t q_pos, int causal,
                        const int32_t *cu_seqlens, int64_t n_seqs, float scale, int q_dtype,
                        int kv_dtype);
/* Writes t new tokens into a [nkv, max_len, hd] cache at positions pos..pos+t-1:
 * k_cache[h, pos+i, :] = k_new[i, h, :] (k_new [t, nkv, hd_k] contiguous), same for v with hd_v.
 * v_new and v_cache may both be NULL (a K-only latent cache). src_dtype and cache_dtype are f32 or
 * bf16 (converted with round-to-nearest-even). pos + t > max_len is TO_ERR_SHAPE. */
TO_API int to_kv_cache_append(const void *k_new, const void *v_new, void *k_cache, void *v_cache,
                              int64_t t, int64_t nkv, int64_t hd_k, int64_t hd_v, int64_t max_len,
                              int64_t pos, int src_dtype, int cache_dtype);

/* ---- moe (src/cpu/moe.c) ------------------------------------------------------------------- */
/* Softmax top-k router (Qwen3-MoE/Next): per token p = softmax(logits) in fp32 over e experts,
 * top-k sorted descending (ties: lower expert id first), optionally divided by their sum (no eps);
 * idx [t, k] int32, weights [t, k] of weights_dtype (f32, or bf16 rounded once at the end).
 * logits [t, e] f32 or bf16. 1 <= k <= e. */
TO_API int to_moe_route_softmax(const void *logits, int64_t t, int64_t e, int64_t k,
                                int renormalize, int logits_dtype, int32_t *idx, void *weights,
                                int weights_dtype);
/* Sigmoid noaux_tc router (GLM-4.7-Flash): s = sigmoid(logits) (fp32), selection scores
 * c = s + bias (bias [e] f32, NULL = zeros); groups: c viewed [n_group, e/n_group], group score = sum
 * of its top-2 (top-1 if a group has one expert), only the topk_group best groups stay eligible;
 * idx = top-k of c among eligible experts (sorted by c descending, ties lower id); weights = s[idx],
 * divided by (sum + 1e-20) when renormalize, times scaling. weights [t, k] f32. */
TO_API int to_moe_route_sigmoid(const void *logits, const float *bias, int64_t t, int64_t e,
                                int64_t k, int64_t n_group, int64_t topk_group, int renormalize,
                                float scaling, int logits_dtype, int32_t *idx, float *weights);
/* dst[i, :] = src[idx[i], :] for i < n_idx; rows of d elements of dtype (any dtype); every idx
 * must lie in [0, n_src). */
TO_API int to_moe_gather_rows(const void *src, const int32_t *idx, void *dst, int64_t n_src,
                              int64_t n_idx, int64_t d, int dtype);
/* dst[idx[i], :] += w[i] * src[i, :] for i < n, in order of i (deterministic). src f32/bf16;
 * weights NULL (= 1) or n values of weights_dtype f32/bf16; dst [n_dst, d] f32 (fp32
 * accumulation) or bf16 (rounded after every add, like torch index_add_ on bf16). With
 * round_products != 0 each product w*src is first rounded to src_dtype (HF grouped_mm order). */
TO_API int to_moe_scatter_add(const void *src, const int32_t *idx, const void *weights, void *dst,
                              int64_t n, int64_t n_dst, int64_t d, int src_dtype,
                              int weights_dtype, int dst_dtype, int round_products);
/* Groups n routing entries idx[p] (p = token*k + slot) by expert (counting sort, stable):
 * counts[x] = entries for expert x; offsets [e+1] exclusive prefix sums; order[offsets[x] ..
 * offsets[x+1]) = the positions p routed to x in increasing order. Every idx in [0, e). */
TO_API int to_moe_group_by_expert(const int32_t *idx, int64_t n, int64_t e, int32_t *counts,
                                  int32_t *offsets, int32_t *order);

/* ---- conv (src/cpu/conv.c) ----------------------------------------------------------------- */
/* Causal depthwise conv1d with carried state (Gated DeltaNet): x [t, c], w [c, k] (from [c, 1, k]),
 * y [t, c]: y[i, ch] = sum_j w[ch, j] * u[i-(k-1)+j, ch], where u is the input preceded by the
 * k-1 rows of state [k-1, c] (oldest first; NULL = zeros). The state is updated in place to the
 * last k-1 inputs. silu != 0 applies SiLU after rounding the conv result to x_dtype. x, y dtype
 * x_dtype (f32/bf16); w f32/bf16/f16; state f32/bf16. y must not overlap x or state. */
TO_API int to_causal_conv1d(const void *x, const void *w, void *state, void *y, int64_t t,
                            int64_t c, int64_t k, int silu, int x_dtype, int w_dtype,
                            int state_dtype);
/* Gated delta rule (Qwen3-Next Gated DeltaNet, models.md §4.4), recurrent form: for each of the t
 * tokens (row strides ldq/ldk/ldv/ldab/ldo) and each value head h (key head h / (nv/nk)):
 * q, k l2-normalised in fp32 (eps 1e-6 on the sum of squares), q / sqrt(dk);
 * beta = sigmoid(b[h]) rounded to x_dtype; g = decay[h] * softplus(a[h] + dt_bias[h]) (fp32,
 * softplus(x) = x above 20); S = exp(g) S; m = S^T k; S += k (beta (v - m))^T; out = S^T q.
 * q, k [t, nk, dk], v [t, nv, dv], a, b [t, nv] in x_dtype (f32/bf16); decay (= -exp(A_log)),
 * dt_bias [nv] f32; state [nv, dk, dv] f32, read and updated in place; out [t, nv, dv] out_dtype. */
TO_API int to_gated_delta_rule(const void *q, const void *k, const void *v, const void *a, const void *b,
                               const float *decay, const float *dt_bias, float *state, void *out, int64_t t,
                               int64_t nk, int64_t nv, int64_t dk, int64_t dv, int64_t ldq, int64_t ldk,
                               int64_t ldv, int64_t ldab, int64_t ldo, int x_dtype, int out_dtype);
/* Vision patchify (Qwen2/3-VL): image [c, h, w] (f32/bf16), h and w multiples of patch*merge ->
 * out [(h/patch)*(w/patch), c*temporal*patch*patch] (out_dtype f32/bf16) in merge-block order
 * (block row, block col, mh, mw); each vector is ordered [channel][t][py][px] with the single
 * frame repeated in every temporal slot. */
TO_API int to_patchify(const void *image, void *out, int64_t c, int64_t h, int64_t w,
                       int64_t patch, int64_t temporal, int64_t merge, int in_dtype,
                       int out_dtype);

/* ---- image (src/cpu/image.c) --------------------------------------------------------------- */
#define TO_RESAMPLE_LANCZOS 1
#define TO_RESAMPLE_BILINEAR 2 /* same numbers as PIL.Image.Resampling */
#define TO_RESAMPLE_BICUBIC 3
/* Antialiased separable resize matching Pillow's Image.resize (support scaled by the downscale
 * factor, Keys cubic a = -0.5, horizontal pass first). dtype u8: interleaved [h, w, c] with Pillow's
 * 22-bit fixed-point rounding and clipping (bit-exact target); dtype f32: planar [c, h, w] in
 * fp32 without rounding or clipping. */
TO_API int to_image_resize(const void *src, void *dst, int64_t h, int64_t w, int64_t c,
                           int64_t out_h, int64_t out_w, int filter, int dtype);
/* u8 [h, w, c] -> planar [c, h, w] of out_dtype (f32/bf16):
 * out = (pixel - m) / s with m = mean[ch] * f, s = std[ch] * f, f = (float)(1.0 / rescale), all fp32:
 * HF's fused form of (pixel*rescale - mean)/std (rescale 1/255, mean = std = 0.5 gives
 * (pixel - 127.5)/127.5). rescale is a double so that 1/rescale is exact as in Python. */
TO_API int to_image_normalize(const uint8_t *src, void *dst, int64_t h, int64_t w, int64_t c,
                              const float *mean, const float *std, double rescale, int out_dtype);

/* ---- structured outputs: token masks (src/cpu/mask.c) ----------------------------------------- */
/* out[r, i] = x[r, i] where token i is allowed in row r, else -inf: bit (i % 32) of
 * mask[r * mask_words + i / 32] set (llguidance's bitmask layout); tokens at or past
 * 32 * mask_words are not allowed, mask words past the vocabulary are ignored. x and out are
 * [rows, vocab] contiguous, both f32 or both bf16; out may be x (in place), else the two must not
 * overlap. mask is host memory (toc_mask_logits copies it to the device). */
TO_API int to_mask_logits(const void *x, void *out, const uint32_t *mask, int64_t rows,
                          int64_t vocab, int64_t mask_words, int dtype);

/* ---- safetensors (src/common/safetensors.c) ---- */
/* A safetensors file mapped read-only (mmap MAP_PRIVATE) with its header fully validated at open:
 * strict JSON (UTF-8, escapes, no duplicate keys, no trailing garbage, bounded nesting), known
 * dtypes, non-negative shapes with overflow-checked sizes, data_offsets matching the byte sizes,
 * and byte ranges that tile the data region exactly (overlaps, holes and trailing bytes are
 * rejected). Errors name the file and the tensor: TO_ERR_IO (cannot open/stat/map, not a regular
 * file), TO_ERR_FORMAT (malformed contents), TO_ERR_DTYPE (a valid safetensors dtype this library
 * has no enum value for, e.g. U32), TO_ERR_UNSUPPORTED (more than TO_ST_MAX_DIMS dimensions).
 * Tensors are indexed 0..count-1 in byte order of their names. Strings and data pointers returned
 * stay valid until the last reference to the handle is closed. Output pointers may be NULL. */
typedef struct to_st_file to_st_file;
#define TO_ST_MAX_DIMS 8
#define TO_ST_MAX_HEADER 100000000 /* bytes of JSON */
#define TO_ST_WILLNEED 1           /* to_st_prefetch: madvise(MADV_WILLNEED), returns at once */
#define TO_ST_TOUCH 2              /* to_st_prefetch: read one byte per page (faults pages in) */
TO_API int to_st_open(const char *path, to_st_file **out); /* *out holds one reference */
TO_API int to_st_retain(to_st_file *f);                   /* adds a reference (thread-safe) */
TO_API int to_st_close(to_st_file *f); /* drops a reference; unmaps at zero; NULL is ignored */
TO_API int to_st_count(const to_st_file *f, int64_t *count);
/* shape receives TO_ST_MAX_DIMS entries (unused ones 0); data points into the mapping. */
TO_API int to_st_tensor_info(const to_st_file *f, int64_t index, const char **name, int *dtype,
                             int *ndim, int64_t *shape, const void **data, int64_t *nbytes);
/* *index = -1 and TO_ERR_INVALID_ARGUMENT when no tensor has that name. */
TO_API int to_st_find(const to_st_file *f, const char *name, int64_t *index);
/* __metadata__ entries, sorted by key. */
TO_API int to_st_metadata_count(const to_st_file *f, int64_t *count);
TO_API int to_st_metadata_item(const to_st_file *f, int64_t index, const char **key,
                               const char **value);
TO_API int to_st_file_info(const to_st_file *f, int64_t *file_size, int64_t *header_size,
                           int64_t *data_size);
/* Prefetches bytes [offset, offset + length) of the data region (mode TO_ST_WILLNEED or
 * TO_ST_TOUCH); call it chunk by chunk to report load progress. */
TO_API int to_st_prefetch(const to_st_file *f, int64_t offset, int64_t length, int mode);
/* Drops this process's pages of [ptr, ptr + nbytes) (a tensor's data, inside the data region)
 * with madvise(MADV_DONTNEED): a weight copied or converted at load (FP8 quantized or
 * dequantized) stops counting towards the resident memory; the mapping reads the file again
 * if it is touched later. Whole pages only; advisory (no error when the kernel declines). */
TO_API int to_st_release(const to_st_file *f, const void *ptr, int64_t nbytes);

/* ---- CUDA runtime (src/cuda/) ---- */
/* libtensor_ops_cuda is a separate library (loaded on first CUDA use, RPATH $ORIGIN, cuBLAS
 * dlopen'ed when present). Every to_<op> with a device kernel has a toc_<op> twin with the same
 * arguments taking device pointers: toc_add, toc_mul, toc_cast, toc_copy_strided, toc_linear,
 * toc_rms_norm, toc_layer_norm, toc_rope_cache(_mrope/_2d), toc_rope_apply, toc_scale, toc_silu,
 * toc_sigmoid, toc_exp, toc_softplus, toc_gelu, toc_swiglu, toc_add_row, toc_mul_rows,
 * toc_softmax, toc_argmax, toc_topk, toc_cumsum, toc_where, toc_embedding, toc_attention,
 * toc_kv_cache_append, toc_add_rms_norm, toc_qk_norm_rope, toc_linear_group,
 * toc_linear_strided_batched, toc_causal_conv1d, toc_fp8_dequant, toc_linear_fp8,
 * toc_patchify, toc_image_normalize (mean and std stay host arrays), toc_moe_route_softmax,
 * toc_moe_route_sigmoid (at most 4096 experts), toc_moe_gather_rows, toc_moe_scatter_add and
 * toc_moe_group_by_expert (indices are checked on the device; an out-of-range one is skipped and
 * reported after the launch, except while a graph is being captured). toc_image_resize uploads
 * weights computed on the host, so it refuses graph capture. toc_sample takes the logits on the
 * device and everything else on the host (history, rng_state, out_token), like to_sample, and
 * draws the host's tokens for top_k 0, 1..1024 or >= vocab with any temperature, top-p, min-p and
 * penalties; TO_ERR_UNSUPPORTED (rng_state untouched: sample on the host) for 1024 < top_k < vocab
 * and for a top-p / min-p nucleus of more than 16384 candidates. Work runs in order on one stream per device (the calling thread's current
 * device); errors are thread-local in the CUDA library (toc_last_error), and kernel execution
 * errors surface at the next synchronising call. GPU-specific deviations: toc_embedding writes
 * zeros for an out-of-range id (Python validates ids), toc_topk does not reject NaN. */
TO_API int toc_abi_version(void);
TO_API const char *toc_last_error(void);
TO_API void toc_clear_error(void);
/* Distinguishes "no NVIDIA driver", "no CUDA device" and "driver too old" in the message. */
TO_API int toc_device_count(int *count);
TO_API int toc_driver_version(int *driver, int *runtime);
TO_API int toc_set_device(int dev); /* current device of the calling thread (initialised once) */
TO_API int toc_get_device(int *dev);
TO_API int toc_device_info(int dev, char *name, size_t cap, int64_t *total_mem, int *sm_count,
                           int *cc_major, int *cc_minor);
TO_API int toc_synchronize(void);
/* Caching device allocator (per device; blocks rounded to 512 B / 2 MiB, reused in stream order). */
TO_API int toc_malloc(size_t nbytes, void **out);
TO_API int toc_free(void *ptr);
TO_API int toc_memory_stats(int64_t *in_use, int64_t *peak, int64_t *cached, int64_t *n_malloc);
TO_API int toc_memory_trim(void);
TO_API int toc_host_alloc(size_t nbytes, void **out); /* pinned host memory */
TO_API int toc_host_free(void *ptr);
/* kind 1 host->device, 2 device->host, 3 device->device; blocking != 0 waits for the stream. */
TO_API int toc_memcpy(void *dst, const void *src, size_t nbytes, int kind, int blocking);
/* height rows of width bytes, src rows spitch bytes apart, dst rows dpitch apart (kind as above),
 * asynchronous on the device's stream. */
TO_API int toc_memcpy2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                        size_t height, int kind);
TO_API int toc_memset(void *dst, int value, size_t nbytes);
/* CUDA graphs: capture the toc_ calls made between begin and end; replay `times` times.
 * toc_graph_destroy, toc_host_free and toc_decoder_destroy called while the stream is being
 * captured (a finaliser run by a garbage collector) release when the capture ends. */
TO_API int toc_graph_begin(void);
TO_API int toc_graph_end(void **exec_out);
TO_API int toc_graph_abort(void);
TO_API int toc_graph_launch(void *exec, int times);
TO_API int toc_graph_destroy(void *exec);
TO_API int toc_bench_copy_bandwidth(int64_t bytes, int iters, double *gbps); /* read + written */
TO_API int toc_bench_read_bandwidth(int64_t bytes, int iters, double *gbps);  /* read only: best of two patterns */
TO_API int toc_blas_info(char *buf, size_t cap);
TO_API int toc_fill_random(void *out, int64_t n, int dtype, uint64_t seed, float mean, float std,
                           int distribution); /* 0 normal, 1 uniform; not the CPU's values */
/* Decode kernels of the CUDA-graph decoder (see src/cuda/linear.cu and attention.cu). toc_gemv_fused
 * on one bf16 row without SwiGLU (the argmax of one matrix without a residual included) runs on
 * the tensor-core GEMV, its RMSNorm (if any)
 * staged once per block (k <= 20480; INFERENCE_PIO_CUDA_GEMV_MMA_NORM=0 keeps normalised rows on
 * the scalar GEMV). */
TO_API int toc_gemv_fused(const void *x, int64_t ldx, int64_t m, const void *norm_w, int norm_dtype,
                          float eps, const void *w0, int64_t seg0, const void *w1, int64_t seg1,
                          const void *w2, int64_t seg2, int64_t k, const void *res, int64_t ldr,
                          int swiglu, void *y, int64_t ldy, int act_dtype, void *argmax);
/* Mixture-of-experts decode without a host round trip (src/cuda/linear.cu, moe.cu): the GEMVs of
 * the experts a router chose, read from the device (sel[slot]; tab0 / tab1 are device arrays of
 * n_experts bf16 [n, k] weight pointers; tab1 given: y = swiglu(tab0 x, tab1 x)); then each
 * token's k expert outputs y [t * k, d] weighted and added in ascending expert order (rounded as
 * toc_moe_scatter_add with round_products into a zeroed output), plus res [t, d] when given. */
TO_API int toc_moe_gemv(const void *x, int64_t ldx_slot, const void *norm_w, int norm_dtype, float eps,
                        const int32_t *sel, int64_t slots, int64_t n_experts, const void *tab0,
                        const void *tab1, int64_t n, int64_t k, void *y, int64_t ldy_slot, int act_dtype);
/* One token's softmax top-k mixture-of-experts MLP in one cooperative launch (src/cuda/moe_step.cu;
 * the CUDA-graph decoder's Qwen3-MoE layers and single tokens of the op path): xn = x, or
 * RMSNorm(x) * norm_w when norm_w is given; logits [e] = router_w xn; the k experts of
 * toc_moe_route_softmax (weights renormalised when asked; idx [k] int32 and weights [k] written);
 * h = swiglu(gate_e xn, up_e xn) per chosen expert; y = their down projections weighted and added in
 * expert order (toc_moe_combine's roundings). With a shared expert (shared_gate / shared_up
 * [shared_inter, d], shared_down [d, shared_inter], shared_gate_w [1, d]; all NULL and
 * shared_inter 0 for none): y = y + sigmoid(shared_gate_w xn) * shared(xn), each op rounded (its
 * gate logit is logits[e]). out [d] = y, plus res [d] when given. tab_gate / tab_up / tab_down:
 * device arrays of e pointers to bf16 [inter, d] / [inter, d] / [d, inter] matrices (16-byte
 * aligned; the caller checks). bf16 activations only; logits [e + 1 with a shared expert], idx,
 * weights and h [k * inter + shared_inter] are scratch the call writes.
 * toc_moe_step_supported: TO_OK where the shapes and the device allow the launch (else the error
 * says why, and the kernels it replaces remain). */
TO_API int toc_moe_step(const void *x, const void *norm_w, int norm_dtype, float eps, const void *router_w,
                        int64_t e, int64_t k, int renormalize, const void *tab_gate, const void *tab_up,
                        const void *tab_down, int64_t d, int64_t inter, const void *shared_gate,
                        const void *shared_up, const void *shared_down, const void *shared_gate_w,
                        int64_t shared_inter, const void *res, void *logits, int32_t *idx, void *weights,
                        void *h, void *out, int act_dtype);
TO_API int toc_moe_step_supported(int64_t e, int64_t k, int64_t d, int64_t inter, int64_t shared_inter,
                                  int act_dtype);
/* toc_moe_step with the sigmoid noaux_tc router of toc_moe_route_sigmoid (GLM-4.7-Flash): logits
 * [e] and weights [k] in fp32, the experts chosen by sigmoid score + bias (fp32 [e]) within the
 * topk_group best of n_group groups (n_group <= 64), the scores renormalised (+1e-20) when asked and
 * times scaling; a shared expert, if any, is added ungated (y = y + shared(xn), rounded). */
TO_API int toc_moe_step_sigmoid(const void *x, const void *norm_w, int norm_dtype, float eps, const void *router_w,
                                const float *bias, int64_t e, int64_t k, int64_t n_group, int64_t topk_group,
                                int renormalize, float scaling, const void *tab_gate, const void *tab_up,
                                const void *tab_down, int64_t d, int64_t inter, const void *shared_gate,
                                const void *shared_up, const void *shared_down, int64_t shared_inter,
                                const void *res, float *logits, int32_t *idx, float *weights, void *h, void *out,
                                int act_dtype);
TO_API int toc_moe_step_sigmoid_supported(int64_t e, int64_t k, int64_t n_group, int64_t topk_group, int64_t d,
                                          int64_t inter, int64_t shared_inter, int act_dtype);
/* Prefill / batched decode: rows of x [*, k] grouped by expert, tile t of tiles ([n_tiles][3]
 * int32 on the device: expert, first row, rows <= 64) times that expert's [n, k] weights (tab as
 * above) into the same rows of y [*, n]; bf16 only. */
TO_API int toc_moe_grouped_linear(const void *x, const int32_t *tiles, int64_t n_tiles, const void *tab,
                                  int64_t n_experts, int64_t n, int64_t k, void *y, int act_dtype);
/* The routing plan of toc_moe_grouped_linear on the device: counts [e], offsets [e + 1], the
 * entries of idx [n] stably sorted by expert (order [n]), their tokens (entry / k) and each
 * entry's sorted position (inverse [n]), and tiles [max_tiles][3] of at most tile_rows rows
 * (unused ones have 0 rows; max_tiles >= n / tile_rows + e). */
TO_API int toc_moe_plan(const int32_t *idx, int64_t n, int64_t e, int64_t k, int64_t tile_rows, int32_t *counts,
                        int32_t *offsets, int32_t *order, int32_t *tokens, int32_t *inverse, int32_t *tiles,
                        int64_t max_tiles);
TO_API int toc_moe_combine(const void *y, const int32_t *idx, const void *weights, const void *res, void *out,
                           int64_t t, int64_t k, int64_t e, int64_t d, int y_dtype, int weights_dtype,
                           int out_dtype);
TO_API int toc_qk_rope_append(void *qkv, const void *q_norm, const void *k_norm, int norm_dtype,
                              float eps, const void *cos, const void *sin, const int32_t *pos,
                              void *k_cache, void *v_cache, int64_t nh, int64_t nkv, int64_t hd,
                              int64_t capacity, int act_dtype, int cache_dtype);
TO_API int toc_attention_decode(const void *q, const void *k_cache, const void *v_cache, void *out,
                                int64_t nh, int64_t nkv, int64_t hd, int64_t capacity,
                                const int32_t *pos, float scale, int q_dtype, int kv_dtype,
                                int nsplit, float *workspace);
/* Decode attention for n sequences with one new token each, every sequence with its own cache
 * ([nkv, capacity, hd], act/cache dtypes as toc_attention): row s of k_new / v_new ([n, nkv * hd])
 * is appended at position lengths[s] of cache s, then row s of q ([n, nh * hd]) attends to the
 * lengths[s] + 1 keys; out [n, nh * hd]. k_caches, v_caches, capacities and lengths are host
 * arrays of n entries (the device pointers of each sequence's caches), checked and uploaded by
 * the call: the BatchManager's decode step makes one call per layer instead of two per sequence. */
TO_API int toc_attention_decode_batch(const void *q, const void *k_new, const void *v_new, void *out,
                                      int64_t n, int64_t nh, int64_t nkv, int64_t hd,
                                      void *const *k_caches, void *const *v_caches,
                                      const int64_t *capacities, const int64_t *lengths, float scale,
                                      int act_dtype, int cache_dtype);
/* toc_attention_decode_batch for a captured graph (the BatchManager's decode steps): k_ptrs,
 * v_ptrs (uint64) and capacities (int64) are device arrays of n entries, fixed while the graph
 * lives; lengths (int32, device) is written before each replay, and a row whose length leaves no
 * room for its new token is skipped (zeros out, nothing appended). nsplit key slices per row with a
 * workspace of n * nh * nsplit * (hd + 2) floats when nsplit > 1; flags bit 0: every cache is
 * 16-byte aligned and capacity * hd is a multiple of 8. */
TO_API int toc_attention_decode_batch_dev(const void *q, const void *k_new, const void *v_new,
                                          void *out, int64_t n, int64_t nh, int64_t nkv, int64_t hd,
                                          const uint64_t *k_ptrs, const uint64_t *v_ptrs,
                                          const int64_t *capacities, const int32_t *lengths,
                                          float scale, int act_dtype, int cache_dtype, int nsplit,
                                          float *workspace, int flags);
/* Ops of a decode step captured as it runs op by op (any layer mix; nn.cuda_capture): the cache
 * slot is read from the device when the kernels run, so one graph replays for every token.
 * toc_kv_cache_append_dev is toc_kv_cache_append with the first slot *pos (rows at or past max_len
 * are skipped); toc_attention_dev is toc_attention, causal, with the tq queries at *pos ..
 * *pos + tq - 1 over keys [0, *pos + tq) of caches of max_len positions, in key slices chosen
 * from max_len that fit `workspace` (tq * nh * (hd_v + 2) floats a slice; NULL: one slice).
 * toc_decode_argmax folds the greedy id of the logits (NaN skipped, ties to the lowest id) into
 * the packed word toc_decode_step_end reads (atomicMax; the word starts at 0 and step_end resets
 * it). */
TO_API int toc_kv_cache_append_dev(const void *k_new, const void *v_new, void *k_cache, void *v_cache,
                                   int64_t t, int64_t nkv, int64_t hd_k, int64_t hd_v, int64_t max_len,
                                   const int32_t *pos, int src_dtype, int cache_dtype);
TO_API int toc_attention_dev(const void *q, const void *k, const void *v, void *out, int64_t tq,
                             int64_t nh, int64_t nkv, int64_t hd_qk, int64_t hd_v, int64_t ldq,
                             int64_t ldo, int64_t max_len, int64_t k_head_stride,
                             int64_t k_pos_stride, int64_t v_head_stride, int64_t v_pos_stride,
                             const int32_t *pos, float scale, int q_dtype, int kv_dtype,
                             float *workspace, int64_t workspace_floats);
TO_API int toc_decode_argmax(const void *logits, int dtype, int64_t vocab, void *argmax);
TO_API int toc_decode_step_end(void *argmax, int32_t *tok, int32_t *pos, int32_t *tokens,
                               int32_t *step, int max_steps);
/* SwiGLU's two matrices and its activation in one call (src/cuda/linear.cu): out = swiglu(x gate^T,
 * x up^T) with the bits of toc_linear_group then toc_swiglu (x [m, ldx], weights [inter, k], out
 * [m, inter] of y_dtype). For 1-16 bf16 rows with k below 4096 one tensor-core launch writes out;
 * otherwise the two ops run with gate and up ([m, inter] each, y_dtype) as their outputs. out may
 * be gate. */
TO_API int toc_gate_up_swiglu(const void *x, const void *w_gate, const void *w_up, void *gate,
                              void *up, void *out, int64_t m, int64_t inter, int64_t k, int64_t ldx,
                              int x_dtype, int w_dtype, int y_dtype);
/* Greedy tokens of `rows` logits rows (row r at logits + r * ld elements, f32 or bf16) in one pair
 * of launches and one copy back (the BatchManager's decode steps): out_tokens[r] is exactly
 * toc_sample's greedy id of row r (NaN reads as -inf, ties to the lowest id). rows <= 65535. */
TO_API int toc_sample_greedy_rows(const void *logits, int dtype, int64_t rows, int64_t vocab,
                                  int64_t ld, int64_t *out_tokens);
/* Draws the next token on the device after a graph decode step (src/cuda/sampling.cu): toc_sample's
 * draw (temperature > 0, 1 <= top_k <= min(1024, vocab - 1), top_p, min_p; no penalties) on the
 * step's logits, with the 64-bit RNG state in device memory, no host synchronisation; writes the token
 * over the step's feedback: counters[0] (the next input) and tokens[counters[2] - 1]. */
TO_API int toc_decode_sample(const void *logits, int dtype, int64_t vocab, int32_t *counters,
                             int32_t *tokens, int64_t max_steps, float temperature, int64_t top_k,
                             float top_p, float min_p, uint64_t *rng_state);

/* Fused batch-1 decode step (src/cuda/decoder.cu): one cooperative kernel runs a whole token of a
 * dense pre-norm decoder in the Qwen3 layout (RMSNorm, q/k per-head RMSNorm or none, NeoX RoPE over
 * the full head, GQA attention over a static KV cache, SwiGLU MLP, final RMSNorm, LM head with a
 * greedy argmax). Weights bf16 [out, in] (or the layers' projections block-scaled FP8, see
 * weight_dtype), 16-byte aligned; hidden and intermediate multiples of 8;
 * head_dim a multiple of 32 up to 256; at most 8 query heads per kv head. Per step it reads the
 * token and position from counters[0..1] (int32 on the device), appends k/v at that position,
 * writes the logits (act dtype), then sets counters[0] = argmax, tokens[counters[2]] = argmax (when
 * counters[2] < max_steps), counters[2] += 1 and counters[1] += 1, so the step can be captured once
 * in a CUDA graph and replayed per token. */
typedef struct to_decoder_layer {
    const void *q_proj, *k_proj, *v_proj, *o_proj, *gate_proj, *up_proj, *down_proj;
    const void *input_norm, *post_norm; /* RMSNorm weights of norm_dtype */
    const void *q_norm, *k_norm;        /* per-head RMSNorm weights, or NULL for none */
    void *k_cache, *v_cache;            /* [n_kv_heads, capacity, head_dim] of cache_dtype */
    float input_eps, post_eps, qk_eps, reserved;
    /* weight_dtype TO_F8_E4M3: the fp32 block scales [ceil(out / 128), ceil(in / 128)] of the seven
     * projections above (e4m3 bytes then); NULL for bf16 weights */
    const float *q_scale, *k_scale, *v_scale, *o_scale, *gate_scale, *up_scale, *down_scale;
} to_decoder_layer;

typedef struct to_decoder_desc {
    const void *embed;      /* [vocab, hidden] of embed_dtype */
    const void *final_norm; /* [hidden] of norm_dtype */
    const void *lm_head;    /* bf16 [vocab, hidden] */
    const void *rope_cos, *rope_sin; /* [capacity, head_dim] of act_dtype */
    int32_t *counters;      /* [token, position, step, unused] */
    int32_t *tokens;        /* [max_steps] */
    void *logits;           /* [vocab] of act_dtype */
    int32_t n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab, capacity;
    int32_t act_dtype, norm_dtype, cache_dtype, embed_dtype, max_steps;
    int32_t profile_skip; /* 0; for profiling only, stages left out (results then wrong): bit 0 qkv,
                             1 attention, 2 o_proj, 3 gate/up, 4 down (the down share inside
                             the gate/up stage), 5 LM head */
    int32_t attn_tile;    /* 0; else keys per attention tile in shared memory (at most what fits) */
    int32_t attn_splits;  /* 0; else at most this many key slices per kv head (else one unit per
                             block); both are for testing the multi-tile and merge paths */
    int32_t threads;      /* 0: threads per block chosen by the library (384 where a block's share
                             of a layer's weights is at most 512 KB, else 512); or 384 or 512 */
    float attn_scale, final_eps;
    int32_t weight_dtype; /* of the layers' projections: 0 or TO_BF16, or TO_F8_E4M3 (block-scaled
                             FP8, 128 x 128 blocks, hidden % 16 == 0; the LM head stays bf16) */
    int32_t reserved2;
} to_decoder_desc;

/* Validates the description, allocates the decoder's device state (activations, attention
 * workspace, barrier counters, a device copy of layers, and a transposed copy of every down_proj:
 * n_layers * intermediate * hidden values of the weight dtype, with transposed scales for FP8; FP8
 * layers also get a bf16 copy of each o_proj, which the step reads in bf16) and returns it in *out. */
TO_API int toc_decoder_create(const to_decoder_desc *desc, const to_decoder_layer *layers, void **out);
/* Launches one step on the current stream (capturable in a CUDA graph). */
TO_API int toc_decoder_step(void *decoder);
/* Launch shape (any output may be NULL); fold_keys: the longest context (keys, the new one
 * included) whose step runs attention folded into o_proj (3 grid barriers per layer instead of
 * 4), 0 if none does. */
TO_API int toc_decoder_info(void *decoder, int64_t *grid, int64_t *threads, int64_t *smem_bytes,
                            int64_t *kv_splits, int64_t *fold_keys);
/* Profiling: one synchronous step recording each block's arrival/departure times (ns) at barriers
 * first .. first + 7 into out[block * 64 + 2 * i (+ 1)], then layer 1's stage stamps (grid * 64
 * values; layout in decoder.cu, DK_PROF_STRIDE). */
TO_API int toc_decoder_profile(void *decoder, int first, int64_t *out);
TO_API int toc_decoder_destroy(void *decoder);

#ifdef __cplusplus
}
#endif
#endif /* TENSOR_OPS_H */
