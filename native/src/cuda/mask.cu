/* Token masks of constrained decoding on the device: toc_mask_logits, the twin of to_mask_logits
 * (src/cpu/mask.c). The mask (llguidance's uint32 bitmask, bit i % 32 of word i / 32 = token i
 * allowed) comes from host memory: it is copied into a per-device workspace on the stream, then
 * one grid-stride kernel writes x or -inf per logit. A pageable source is staged before
 * cudaMemcpyAsync returns, so the caller may refill its mask at once. Not capturable in a graph
 * (the host copy), like toc_image_resize. */
#include <mutex>

#include "common.cuh"

__global__ void mask_logits_kernel(const void *x, void *out, const uint32_t *mask, int64_t rows, int64_t vocab,
                                   int64_t words, int dtype) {
    const int64_t n = rows * vocab;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = k / vocab, i = k - r * vocab;
        const bool ok = i < words * 32 && ((mask[r * words + (i >> 5)] >> (i & 31)) & 1u);
        if (dtype == TO_F32) {
            ((float *)out)[k] = ok ? ((const float *)x)[k] : -INFINITY;
        } else {
            ((uint16_t *)out)[k] = ok ? ((const uint16_t *)x)[k] : (uint16_t)0xff80u; /* bf16 -inf */
        }
    }
}

static std::mutex g_mask_lock;
static TocBuffer g_mask_ws;

TOC_EXPORT int toc_mask_logits(const void *x, void *out, const uint32_t *mask, int64_t rows, int64_t vocab,
                               int64_t mask_words, int dtype) {
    TOC_CHECK(x && out, TO_ERR_INVALID_ARGUMENT, "toc_mask_logits: NULL pointer");
    TOC_CHECK(rows >= 0 && vocab >= 0 && mask_words >= 0, TO_ERR_INVALID_ARGUMENT,
              "toc_mask_logits: negative size (rows %lld, vocab %lld, mask_words %lld)", (long long)rows,
              (long long)vocab, (long long)mask_words);
    TOC_CHECK(dtype == TO_F32 || dtype == TO_BF16, TO_ERR_DTYPE, "toc_mask_logits: dtype %d (f32 or bf16 expected)",
              dtype);
    TOC_CHECK(mask != NULL || rows == 0 || mask_words == 0, TO_ERR_INVALID_ARGUMENT, "toc_mask_logits: mask is NULL");
    TOC_CHECK(mask_words <= (INT64_MAX - 31) / 32 && (rows == 0 || mask_words <= INT64_MAX / 4 / rows), TO_ERR_SHAPE,
              "toc_mask_logits: mask_words too large");
    if (rows == 0 || vocab == 0) return TO_OK;
    TOC_READY();
    cudaStream_t s = toc_stream();
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    TOC_CUDA(cudaStreamIsCapturing(s, &cap), "cudaStreamIsCapturing");
    TOC_CHECK(cap == cudaStreamCaptureStatusNone, TO_ERR_UNSUPPORTED,
              "toc_mask_logits: cannot be captured into a graph (it uploads the host mask)");
    const size_t bytes = (size_t)(rows * mask_words) * 4;
    std::lock_guard<std::mutex> g(g_mask_lock);
    uint32_t *dev_mask = nullptr;
    if (bytes) {
        void *ws = nullptr;
        const int rc = toc_buffer_reserve(&g_mask_ws, bytes, &ws, "mask_logits workspace");
        if (rc) return rc;
        dev_mask = (uint32_t *)ws;
        TOC_CUDA(cudaMemcpyAsync(dev_mask, mask, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
    }
    mask_logits_kernel<<<toc_grid(rows * vocab, 256, 4 * (int64_t)toc_sm_count()), 256, 0, s>>>(
        x, out, dev_mask, rows, vocab, bytes ? mask_words : 0, dtype);
    TOC_LAUNCHED("mask_logits_kernel");
    return TO_OK;
}
