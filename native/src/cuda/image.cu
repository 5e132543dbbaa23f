/* Antialiased separable image resize on the device (semantics of src/cpu/image.c, i.e. Pillow's
 * Image.resize). The weights of each axis are computed on the host exactly as the CPU op computes
 * them (fp64, then Pillow's 22-bit fixed point for u8) and uploaded with their bounds into a
 * per-device workspace that also holds the intermediate image. Two kernels, horizontal then
 * vertical, run one thread per output element, summing its taps in the CPU's order: u8 sums
 * integers (bit-exact), f32 sums fp64 products without FMA contraction, as the x86-64 CPU build
 * does (bit-exact there). The upload comes from pageable host memory, so the op refuses to run
 * while the stream is being captured into a graph. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>

#include "common.cuh"

#define PREC_BITS 22 /* 32 - 8 - 2, as Pillow */

/* ---- host: weights, a port of make_coeffs / fixed_coeffs of src/cpu/image.c ---- */
static double filt_bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}
static double filt_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}
static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}
static double filt_lanczos(double x) { return (x > -3.0 && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }

struct Coeffs {
    int64_t ksize = 0;
    int64_t *bounds = nullptr; /* [out][2]: first input index, count */
    double *k = nullptr;       /* [out][ksize] */
    ~Coeffs() {
        free(bounds);
        free(k);
    }
};

static int make_coeffs(int64_t in_size, int64_t out_size, int filter, Coeffs *cf) {
    double (*fn)(double) = filter == TO_RESAMPLE_BILINEAR  ? filt_bilinear
                           : filter == TO_RESAMPLE_BICUBIC ? filt_bicubic
                                                           : filt_lanczos;
    double support0 = filter == TO_RESAMPLE_BILINEAR ? 1.0 : filter == TO_RESAMPLE_BICUBIC ? 2.0 : 3.0;
    double scale = (double)in_size / (double)out_size;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = support0 * fscale;
    int64_t ksize = (int64_t)ceil(support) * 2 + 1;
    cf->ksize = ksize;
    cf->bounds = (int64_t *)malloc((size_t)out_size * 2 * sizeof(int64_t));
    cf->k = (double *)malloc((size_t)(out_size * ksize) * sizeof(double));
    if (!cf->bounds || !cf->k) return -1;
    double ss = 1.0 / fscale;
    for (int64_t o = 0; o < out_size; o++) {
        double center = ((double)o + 0.5) * scale;
        int64_t xmin = (int64_t)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int64_t xmax = (int64_t)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = cf->k + o * ksize, ww = 0.0;
        int64_t x = 0;
        for (; x < xmax; x++) {
            k[x] = fn(((double)(x + xmin) - center + 0.5) * ss);
            ww += k[x];
        }
        if (ww != 0.0)
            for (x = 0; x < xmax; x++) k[x] /= ww;
        for (x = xmax; x < ksize; x++) k[x] = 0.0;
        cf->bounds[2 * o] = xmin;
        cf->bounds[2 * o + 1] = xmax;
    }
    return 0;
}

/* Copies the bounds and the weights (fixed point for u8) of one axis into the upload block. */
static void pack_axis(const Coeffs &cf, int64_t n_out, bool fixed, char *bounds, char *weights) {
    memcpy(bounds, cf.bounds, (size_t)n_out * 2 * sizeof(int64_t));
    if (!fixed) {
        memcpy(weights, cf.k, (size_t)(n_out * cf.ksize) * sizeof(double));
        return;
    }
    int32_t *kk = (int32_t *)weights;
    for (int64_t i = 0; i < n_out * cf.ksize; i++) {
        double v = cf.k[i] * (double)(1 << PREC_BITS);
        kk[i] = (int32_t)(v < 0 ? -0.5 + v : 0.5 + v);
    }
}

/* ---- device: the two passes ---- */
template <typename T> struct Px;
template <> struct Px<uint8_t> { /* Pillow's fixed point: rounding bias, shift, clip */
    typedef int32_t K;
    typedef int64_t Acc;
    static __device__ __forceinline__ Acc init() { return (int64_t)1 << (PREC_BITS - 1); }
    static __device__ __forceinline__ Acc mac(Acc s, uint8_t v, K k) { return s + (int64_t)v * k; }
    static __device__ __forceinline__ uint8_t out(Acc s) {
        s >>= PREC_BITS;
        return (uint8_t)(s < 0 ? 0 : s > 255 ? 255 : s);
    }
};
template <> struct Px<float> { /* fp64 products and sums, each rounded (no FMA), as the CPU */
    typedef double K;
    typedef double Acc;
    static __device__ __forceinline__ Acc init() { return 0.0; }
    static __device__ __forceinline__ Acc mac(Acc s, float v, K k) { return __dadd_rn(s, __dmul_rn((double)v, k)); }
    static __device__ __forceinline__ float out(Acc s) { return __double2float_rn(s); }
};

/* dst [planes][rows][out_w][c] from rows row0.. of src [planes][h][w][c] (u8: one plane of c
 * interleaved channels; f32: c planes of one channel) */
template <typename T>
__global__ void resize_h_kernel(const T *__restrict__ src, T *__restrict__ dst, int64_t planes, int64_t h,
                                int64_t row0, int64_t rows, int64_t w, int64_t c, int64_t out_w,
                                const int64_t *__restrict__ bounds, const typename Px<T>::K *__restrict__ k,
                                int64_t ksize) {
    const int64_t total = planes * rows * out_w * c;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t ch = e % c, t = e / c, x = t % out_w, pr = t / out_w, p = pr / rows, r = pr - p * rows;
        const T *in = src + ((p * h + row0 + r) * w + bounds[2 * x]) * c + ch;
        const typename Px<T>::K *kx = k + x * ksize;
        typename Px<T>::Acc s = Px<T>::init();
        for (int64_t i = 0, n = bounds[2 * x + 1]; i < n; i++) s = Px<T>::mac(s, in[i * c], kx[i]);
        dst[e] = Px<T>::out(s);
    }
}

/* dst [planes][out_h][n] from src [planes][rows][n] whose first row is input row row_shift */
template <typename T>
__global__ void resize_v_kernel(const T *__restrict__ src, T *__restrict__ dst, int64_t planes, int64_t rows,
                                int64_t row_shift, int64_t n, int64_t out_h, const int64_t *__restrict__ bounds,
                                const typename Px<T>::K *__restrict__ k, int64_t ksize) {
    const int64_t total = planes * out_h * n;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t x = e % n, t = e / n, y = t % out_h, p = t / out_h;
        const T *in = src + (p * rows + bounds[2 * y] - row_shift) * n + x;
        const typename Px<T>::K *ky = k + y * ksize;
        typename Px<T>::Acc s = Px<T>::init();
        for (int64_t i = 0, m = bounds[2 * y + 1]; i < m; i++) s = Px<T>::mac(s, in[i * n], ky[i]);
        dst[e] = Px<T>::out(s);
    }
}

struct Plan { /* device pointers into the workspace, and the input rows the vertical pass reads */
    const int64_t *bh, *bv;
    const void *kh, *kv;
    int64_t ksh, ksv, y0, y1;
    void *tmp;
};

template <typename T>
static int launch(const T *src, T *dst, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                  const Plan &pl) {
    typedef typename Px<T>::K K;
    const bool planar = sizeof(T) == 4; /* f32 is [c, h, w], u8 is [h, w, c] */
    const int64_t planes = planar ? c : 1, cc = planar ? 1 : c;
    const bool need_h = out_w != w, need_v = out_h != h;
    cudaStream_t s = toc_stream();
    const int64_t rows = need_v ? pl.y1 - pl.y0 : h; /* rows of the intermediate */
    T *mid = need_v ? (T *)pl.tmp : dst;
    if (need_h) {
        const int64_t total = planes * rows * out_w * cc;
        resize_h_kernel<T><<<toc_grid(total, 256), 256, 0, s>>>(src, mid, planes, h, need_v ? pl.y0 : 0, rows, w,
                                                                cc, out_w, pl.bh, (const K *)pl.kh, pl.ksh);
        TOC_LAUNCHED("resize_h_kernel");
    }
    if (need_v) {
        const int64_t n = (need_h ? out_w : w) * cc, total = planes * out_h * n;
        resize_v_kernel<T><<<toc_grid(total, 256), 256, 0, s>>>(need_h ? mid : src, dst, planes,
                                                                need_h ? rows : h, need_h ? pl.y0 : 0, n, out_h,
                                                                pl.bv, (const K *)pl.kv, pl.ksv);
        TOC_LAUNCHED("resize_v_kernel");
    }
    return TO_OK;
}

/* weights + intermediate, per device; grown outside graph capture (the op refuses capture) */
static std::mutex g_ws_lock;
static TocBuffer g_ws;
static int workspace(size_t bytes, char **out) {
    return toc_buffer_reserve(&g_ws, bytes, (void **)out, "image_resize workspace");
}

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

struct HostBlock {
    char *p = nullptr;
    ~HostBlock() { free(p); }
};

TOC_EXPORT int toc_image_resize(const void *src, void *dst, int64_t h, int64_t w, int64_t c, int64_t out_h,
                                int64_t out_w, int filter, int dtype) {
    TOC_CHECK(h >= 1 && w >= 1 && c >= 1 && out_h >= 1 && out_w >= 1, TO_ERR_SHAPE,
              "toc_image_resize: sizes must be >= 1 (%lldx%lldx%lld -> %lldx%lld)", (long long)h, (long long)w,
              (long long)c, (long long)out_h, (long long)out_w);
    TOC_CHECK(filter == TO_RESAMPLE_BILINEAR || filter == TO_RESAMPLE_BICUBIC || filter == TO_RESAMPLE_LANCZOS,
              TO_ERR_INVALID_ARGUMENT, "toc_image_resize: unknown filter %d", filter);
    TOC_CHECK(dtype == TO_U8 || dtype == TO_F32, TO_ERR_DTYPE,
              "toc_image_resize: dtype %d unsupported (u8 [h,w,c] or f32 [c,h,w])", dtype);
    TOC_CHECK(src, TO_ERR_INVALID_ARGUMENT, "toc_image_resize: src is NULL");
    TOC_CHECK(dst, TO_ERR_INVALID_ARGUMENT, "toc_image_resize: dst is NULL");
    TOC_READY();
    cudaStream_t s = toc_stream();
    const bool u8 = dtype == TO_U8, need_h = out_w != w, need_v = out_h != h;
    const size_t esz = u8 ? 1 : 4;
    if (!need_h && !need_v) {
        TOC_CUDA(cudaMemcpyAsync(dst, src, (size_t)(h * w * c) * esz, cudaMemcpyDeviceToDevice, s),
                 "cudaMemcpyAsync");
        return TO_OK;
    }
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    TOC_CUDA(cudaStreamIsCapturing(s, &cap), "cudaStreamIsCapturing");
    TOC_CHECK(cap == cudaStreamCaptureStatusNone, TO_ERR_UNSUPPORTED,
              "toc_image_resize: cannot be captured into a graph (it uploads host-computed weights)");
    Coeffs ch, cv;
    TOC_CHECK(!make_coeffs(w, out_w, filter, &ch) && !make_coeffs(h, out_h, filter, &cv), TO_ERR_OUT_OF_MEMORY,
              "toc_image_resize: out of memory");
    const int64_t y0 = need_v ? cv.bounds[0] : 0;
    const int64_t y1 = need_v ? cv.bounds[2 * out_h - 2] + cv.bounds[2 * out_h - 1] : h;
    /* upload block: bounds h | bounds v | weights h | weights v, then the intermediate image */
    const size_t kb = u8 ? sizeof(int32_t) : sizeof(double);
    const size_t o_bv = (size_t)out_w * 16, o_kh = o_bv + (size_t)out_h * 16;
    const size_t o_kv = o_kh + align_up((size_t)(out_w * ch.ksize) * kb, 8);
    const size_t n_up = o_kv + (size_t)(out_h * cv.ksize) * kb, o_tmp = align_up(n_up, 256);
    const size_t tmp_bytes = need_h && need_v ? (size_t)((y1 - y0) * out_w * c) * esz : 0;
    HostBlock host;
    host.p = (char *)malloc(n_up);
    TOC_CHECK(host.p, TO_ERR_OUT_OF_MEMORY, "toc_image_resize: out of memory");
    pack_axis(ch, out_w, u8, host.p, host.p + o_kh);
    pack_axis(cv, out_h, u8, host.p + o_bv, host.p + o_kv);

    std::lock_guard<std::mutex> g(g_ws_lock);
    char *ws = nullptr;
    const int rc = workspace(o_tmp + tmp_bytes, &ws);
    if (rc) return rc;
    /* a pageable source is staged before cudaMemcpyAsync returns, so host may be freed after */
    TOC_CUDA(cudaMemcpyAsync(ws, host.p, n_up, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
    const Plan pl = {(const int64_t *)ws, (const int64_t *)(ws + o_bv), ws + o_kh, ws + o_kv, ch.ksize,
                     cv.ksize, y0, y1, ws + o_tmp};
    if (u8) return launch((const uint8_t *)src, (uint8_t *)dst, h, w, c, out_h, out_w, pl);
    return launch((const float *)src, (float *)dst, h, w, c, out_h, out_w, pl);
}
