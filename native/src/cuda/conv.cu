/* Causal depthwise conv1d with carried state (Gated DeltaNet), the vision patchify, image
 * normalisation and grouped linears on the device (semantics of src/cpu/conv.c, image.c and
 * matmul.c). */
#include "common.cuh"

#define CONV_KMAX 64

/* ---- causal depthwise conv1d: a thread per (channel, chunk of CONV_ROWS rows) walks its rows in
 * order (products fused into the sum, as the CPU's FMA builds do); an output row reads only the k
 * input rows up to it, so the chunks are independent. Only the first chunk reads the carried
 * state (a chunk is at least k - 1 rows), and its threads write the new state after those reads
 * (a thread touches only its own channel), so nothing races. ---- */
#define CONV_ROWS 16

/* KC: the kernel size when it is known at compile time (the weights and the new state then stay
 * in registers; Qwen3-Next's 4), 0: any size up to CONV_KMAX (arrays on the stack) */
template <int KC>
__global__ void causal_conv1d_kernel(const void *x, const void *w, void *state, void *y, int64_t t, int64_t c,
                                     int k_any, int silu, int xdt, int wdt, int sdt, int64_t rows) {
    pdl_enter(); /* launched by toc_launch */
    const int k = KC ? KC : k_any;
    const int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (ch >= c) return;
    const int64_t i0 = (int64_t)blockIdx.y * rows;
    const int64_t i1 = i0 + rows < t ? i0 + rows : t;
    float wr[KC ? KC : CONV_KMAX];
    for (int j = 0; j < k; j++) wr[j] = ldf(w, wdt, ch * k + j);
    for (int64_t i = i0; i < i1; i++) {
        float acc = 0.f;
        for (int j = 0; j < k; j++) {
            const int64_t r = i - (k - 1) + j;
            if (r >= 0)
                acc = fmaf(wr[j], ldf(x, xdt, r * c + ch), acc);
            else if (state)
                acc = fmaf(wr[j], ldf(state, sdt, (k - 1 + r) * c + ch), acc);
        }
        if (xdt == TO_F32) {
            ((float *)y)[i * c + ch] = silu ? acc / (1.f + expf(-acc)) : acc;
        } else if (silu) {
            const float v = rbf(acc);
            ((uint16_t *)y)[i * c + ch] = f2bf(v / (1.f + expf(-v)));
        } else {
            ((uint16_t *)y)[i * c + ch] = f2bf(acc);
        }
    }
    if (!state || blockIdx.y != 0) return;
    /* new state = the last k - 1 rows of [state; x], read before any is written */
    float ns[KC ? KC : CONV_KMAX];
    for (int s = 0; s < k - 1; s++) {
        const int64_t r = t - (k - 1) + s;
        ns[s] = r < 0 ? ldf(state, sdt, (k - 1 + r) * c + ch) : ldf(x, xdt, r * c + ch);
    }
    for (int s = 0; s < k - 1; s++) stf(state, sdt, s * c + ch, ns[s]);
}

TOC_EXPORT int toc_causal_conv1d(const void *x, const void *w, void *state, void *y, int64_t t, int64_t c, int64_t k,
                                 int silu, int x_dtype, int w_dtype, int state_dtype) {
    TOC_CHECK(t >= 0 && c >= 0, TO_ERR_INVALID_ARGUMENT, "toc_causal_conv1d: negative size");
    TOC_CHECK(k >= 1 && k <= CONV_KMAX, TO_ERR_SHAPE, "toc_causal_conv1d: kernel size %lld outside 1..64",
              (long long)k);
    TOC_CHECK(toc_is_act(x_dtype), TO_ERR_DTYPE, "toc_causal_conv1d: x dtype %d unsupported (f32 or bf16)",
              x_dtype);
    TOC_CHECK(toc_is_wt(w_dtype), TO_ERR_DTYPE, "toc_causal_conv1d: w dtype %d unsupported (f32, bf16 or f16)",
              w_dtype);
    TOC_CHECK(state == NULL || toc_is_act(state_dtype), TO_ERR_DTYPE,
              "toc_causal_conv1d: state dtype %d unsupported (f32 or bf16)", state_dtype);
    if (t == 0 || c == 0) return TO_OK;
    TOC_CHECK(x && w && y, TO_ERR_INVALID_ARGUMENT, "toc_causal_conv1d: NULL pointer");
    TOC_READY();
    int64_t rows = k - 1 > CONV_ROWS ? k - 1 : CONV_ROWS;
    if (toc_cdiv(t, rows) > 65535) rows = toc_cdiv(t, 65535);
    const dim3 grid((unsigned)toc_cdiv(c, 128), (unsigned)toc_cdiv(t, rows));
    if (k == 4)
        TOC_CUDA((toc_launch(causal_conv1d_kernel<4>, dim3(grid), dim3(128), 0, x, w, state, y, t, c, 4, silu != 0,
            x_dtype, w_dtype, state_dtype, rows)), "causal_conv1d_kernel");
    else
        TOC_CUDA((toc_launch(causal_conv1d_kernel<0>, dim3(grid), dim3(128), 0, x, w, state, y, t, c, (int)k,
            silu != 0, x_dtype, w_dtype, state_dtype, rows)), "causal_conv1d_kernel");
    return TO_OK;
}

/* ---- patchify: one thread per output element ---- */
__global__ void patchify_kernel(const void *image, void *out, int64_t c, int64_t h, int64_t w, int64_t patch,
                                int64_t temporal, int64_t merge, int idt, int odt, int64_t total) {
    const int64_t dim = c * temporal * patch * patch, gw = w / patch;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t n = e / dim, v = e - n * dim;
        /* patch n in merge-block order: block row, block col, mh, mw */
        const int64_t mm = merge * merge, blk = n / mm, inb = n - blk * mm;
        const int64_t bpr = gw / merge, bh = blk / bpr, bw = blk - bh * bpr;
        const int64_t mh = inb / merge, mw = inb - mh * merge;
        const int64_t row = bh * merge + mh, col = bw * merge + mw;
        /* element v: [channel][t][py][px] */
        const int64_t pp = patch * patch, ch = v / (temporal * pp), rem = v - ch * temporal * pp;
        const int64_t in_t = rem % pp, py = in_t / patch, px = in_t - py * patch;
        const int64_t src = (ch * h + row * patch + py) * w + col * patch + px;
        const float val = ldf(image, idt, src);
        if (idt == odt && idt == TO_BF16)
            ((uint16_t *)out)[e] = ((const uint16_t *)image)[src];
        else
            stf(out, odt, e, val);
    }
}

TOC_EXPORT int toc_patchify(const void *image, void *out, int64_t c, int64_t h, int64_t w, int64_t patch,
                            int64_t temporal, int64_t merge, int in_dtype, int out_dtype) {
    TOC_CHECK(c >= 1 && patch >= 1 && temporal >= 1 && merge >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_patchify: c, patch, temporal and merge must be >= 1");
    TOC_CHECK(h >= 0 && w >= 0, TO_ERR_INVALID_ARGUMENT, "toc_patchify: negative image size");
    TOC_CHECK(h % (patch * merge) == 0 && w % (patch * merge) == 0, TO_ERR_SHAPE,
              "toc_patchify: image %lldx%lld is not a multiple of patch*merge = %lld", (long long)h, (long long)w,
              (long long)(patch * merge));
    TOC_CHECK(toc_is_act(in_dtype) && toc_is_act(out_dtype), TO_ERR_DTYPE,
              "toc_patchify: dtypes %d -> %d unsupported (f32 or bf16)", in_dtype, out_dtype);
    if (h == 0 || w == 0) return TO_OK;
    TOC_CHECK(image && out, TO_ERR_INVALID_ARGUMENT, "toc_patchify: NULL pointer");
    TOC_READY();
    const int64_t total = (h / patch) * (w / patch) * c * temporal * patch * patch;
    patchify_kernel<<<toc_grid(total, 256), 256, 0, toc_stream()>>>(image, out, c, h, w, patch, temporal, merge,
                                                                    in_dtype, out_dtype, total);
    TOC_LAUNCHED("patchify_kernel");
    return TO_OK;
}

/* ---- image normalisation: u8 [h, w, c] -> planar [c, h, w]; mean and std are host arrays (the
 * same arguments as the CPU op), passed to the kernel by value ---- */
#define IMG_MAX_C 16 /* as on the CPU */
struct ImgNorm {
    float m[IMG_MAX_C], s[IMG_MAX_C];
};

__global__ void image_normalize_kernel(const uint8_t *src, void *dst, int64_t h, int64_t w, int64_t c, ImgNorm p,
                                       int odt) {
    const int64_t total = h * w * c;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t ch = e / (h * w), pix = e - ch * h * w;
        const float v = __fdiv_rn(__fsub_rn((float)src[pix * c + ch], p.m[ch]), p.s[ch]);
        stf(dst, odt, e, v);
    }
}

TOC_EXPORT int toc_image_normalize(const uint8_t *src, void *dst, int64_t h, int64_t w, int64_t c,
                                   const float *mean, const float *std, double rescale, int out_dtype) {
    TOC_CHECK(h >= 0 && w >= 0 && c >= 1, TO_ERR_INVALID_ARGUMENT, "toc_image_normalize: bad sizes");
    TOC_CHECK(c <= IMG_MAX_C, TO_ERR_SHAPE, "toc_image_normalize: channels %lld outside 1..16", (long long)c);
    TOC_CHECK(toc_is_act(out_dtype), TO_ERR_DTYPE, "toc_image_normalize: out dtype %d unsupported", out_dtype);
    TOC_CHECK(rescale != 0.0 && isfinite(rescale), TO_ERR_INVALID_ARGUMENT,
              "toc_image_normalize: rescale must be finite and non-zero");
    TOC_CHECK(mean && std, TO_ERR_INVALID_ARGUMENT, "toc_image_normalize: NULL mean or std");
    if (h == 0 || w == 0) return TO_OK;
    TOC_CHECK(src && dst, TO_ERR_INVALID_ARGUMENT, "toc_image_normalize: NULL pointer");
    TOC_READY();
    ImgNorm p;
    const float f = (float)(1.0 / rescale);
    for (int64_t ch = 0; ch < c; ch++) {
        TOC_CHECK(std[ch] != 0.0f, TO_ERR_INVALID_ARGUMENT, "toc_image_normalize: std[%lld] is zero", (long long)ch);
        p.m[ch] = mean[ch] * f;
        p.s[ch] = std[ch] * f;
    }
    const int64_t total = h * w * c;
    image_normalize_kernel<<<toc_grid(total, 256), 256, 0, toc_stream()>>>(src, dst, h, w, c, p, out_dtype);
    TOC_LAUNCHED("image_normalize_kernel");
    return TO_OK;
}

/* ---- grouped linears: one tensor-core GEMV launch for up to 3 matrices against 2-16 rows of bf16,
 * else one toc_linear per matrix (the CPU op's semantics; the pointer arrays are host arrays of
 * device pointers) ---- */
extern "C" int toc_linear(const void *x, const void *w, const void *bias, void *y, int64_t m, int64_t n, int64_t k,
                          int64_t ldx, int64_t ldy, int x_dtype, int w_dtype, int bias_dtype, int y_dtype);

TOC_EXPORT int toc_linear_group(const void *x, int count, const void *const *ws, const int64_t *ns,
                                void *const *ys, const int64_t *ldys, int64_t m, int64_t k, int64_t ldx, int x_dtype,
                                int w_dtype, int y_dtype) {
    TOC_CHECK(count >= 1 && count <= 8, TO_ERR_INVALID_ARGUMENT, "toc_linear_group: count %d outside 1..8", count);
    TOC_CHECK(ws && ns && ys && ldys, TO_ERR_INVALID_ARGUMENT, "toc_linear_group: NULL array");
    TOC_CHECK(m >= 0 && k >= 0, TO_ERR_INVALID_ARGUMENT, "toc_linear_group: negative size");
    for (int i = 0; i < count; i++)
        TOC_CHECK(ns[i] >= 0 && ldys[i] >= ns[i], TO_ERR_SHAPE,
                  "toc_linear_group: matrix %d has n=%lld and y row stride %lld", i, (long long)ns[i],
                  (long long)ldys[i]);
    TOC_READY();
    /* 2-16 rows of bf16 (batched decode): every matrix in one tensor-core GEMV launch */
    const int rc = toc_gemv_mma_group(x, count, ws, ns, ys, ldys, m, k, ldx, x_dtype, w_dtype, y_dtype);
    if (rc != TO_ERR_UNSUPPORTED) return rc;
    for (int i = 0; i < count; i++) {
        const int rci = toc_linear(x, ws[i], NULL, ys[i], m, ns[i], k, ldx, ldys[i], x_dtype, w_dtype, 0, y_dtype);
        if (rci != TO_OK) return rci;
    }
    return TO_OK;
}
