/* Image preprocessing: antialiased separable resize with Pillow's semantics (support widened by
 * the downscale factor, per-output-pixel normalised weights, horizontal pass first, 22-bit fixed
 * point with rounding and clipping for uint8), and normalisation to planar float. */
#include <stdlib.h>

#include "../common/internal.h"

#define PREC_BITS 22 /* 32 - 8 - 2, as Pillow */

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
static double filt_lanczos(double x) {
    return (x > -3.0 && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0;
}

typedef struct {
    int64_t ksize;
    int64_t *bounds; /* [out][2]: first input index, count */
    double *k;       /* [out][ksize] */
} coeffs;

/* weights of every output position along one axis */
static int make_coeffs(int64_t in_size, int64_t out_size, int filter, coeffs *cf) {
    double (*fn)(double) = filter == TO_RESAMPLE_BILINEAR ? filt_bilinear
                           : filter == TO_RESAMPLE_BICUBIC ? filt_bicubic
                                                           : filt_lanczos;
    double support0 = filter == TO_RESAMPLE_BILINEAR ? 1.0 : filter == TO_RESAMPLE_BICUBIC ? 2.0 : 3.0;
    double scale = (double)in_size / (double)out_size;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = support0 * fscale;
    int64_t ksize = (int64_t)ceil(support) * 2 + 1;
    cf->ksize = ksize;
    cf->bounds = malloc((size_t)out_size * 2 * sizeof(int64_t));
    cf->k = malloc((size_t)(out_size * ksize) * sizeof(double));
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
static void free_coeffs(coeffs *cf) {
    free(cf->bounds);
    free(cf->k);
}
static int32_t *fixed_coeffs(const coeffs *cf, int64_t n_out) {
    int32_t *kk = malloc((size_t)(n_out * cf->ksize) * sizeof(int32_t));
    if (!kk) return NULL;
    for (int64_t i = 0; i < n_out * cf->ksize; i++) {
        double v = cf->k[i] * (double)(1 << PREC_BITS);
        kk[i] = (int32_t)(v < 0 ? -0.5 + v : 0.5 + v);
    }
    return kk;
}
static inline uint8_t clip8(int64_t v) {
    v >>= PREC_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* u8 interleaved: out rows [0, rows) from input rows [row0, row0 + rows) */
static void horiz_u8(const uint8_t *src, int64_t w, int64_t c, int64_t row0, int64_t rows,
                     uint8_t *dst, int64_t out_w, const coeffs *cf, const int32_t *kk) {
    for (int64_t y = 0; y < rows; y++) {
        const uint8_t *in = src + (row0 + y) * w * c;
        uint8_t *o = dst + y * out_w * c;
        for (int64_t x = 0; x < out_w; x++) {
            int64_t xmin = cf->bounds[2 * x], xn = cf->bounds[2 * x + 1];
            const int32_t *k = kk + x * cf->ksize;
            for (int64_t ch = 0; ch < c; ch++) {
                int64_t ss = 1 << (PREC_BITS - 1);
                for (int64_t i = 0; i < xn; i++) ss += (int64_t)in[(xmin + i) * c + ch] * k[i];
                o[x * c + ch] = clip8(ss);
            }
        }
    }
}
static void vert_u8(const uint8_t *src, int64_t w, int64_t c, int64_t row_shift, uint8_t *dst,
                    int64_t out_h, const coeffs *cf, const int32_t *kk) {
    int64_t n = w * c;
    for (int64_t y = 0; y < out_h; y++) {
        int64_t ymin = cf->bounds[2 * y] - row_shift, yn = cf->bounds[2 * y + 1];
        const int32_t *k = kk + y * cf->ksize;
        uint8_t *o = dst + y * n;
        for (int64_t x = 0; x < n; x++) {
            int64_t ss = 1 << (PREC_BITS - 1);
            for (int64_t i = 0; i < yn; i++) ss += (int64_t)src[(ymin + i) * n + x] * k[i];
            o[x] = clip8(ss);
        }
    }
}

/* f32 planar, one channel plane */
static void horiz_f32(const float *src, int64_t w, int64_t row0, int64_t rows, float *dst,
                      int64_t out_w, const coeffs *cf) {
    for (int64_t y = 0; y < rows; y++) {
        const float *in = src + (row0 + y) * w;
        for (int64_t x = 0; x < out_w; x++) {
            int64_t xmin = cf->bounds[2 * x], xn = cf->bounds[2 * x + 1];
            const double *k = cf->k + x * cf->ksize;
            double ss = 0.0;
            for (int64_t i = 0; i < xn; i++) ss += in[xmin + i] * k[i];
            dst[y * out_w + x] = (float)ss;
        }
    }
}
static void vert_f32(const float *src, int64_t w, int64_t row_shift, float *dst, int64_t out_h,
                     const coeffs *cf) {
    for (int64_t y = 0; y < out_h; y++) {
        int64_t ymin = cf->bounds[2 * y] - row_shift, yn = cf->bounds[2 * y + 1];
        const double *k = cf->k + y * cf->ksize;
        for (int64_t x = 0; x < w; x++) {
            double ss = 0.0;
            for (int64_t i = 0; i < yn; i++) ss += src[(ymin + i) * w + x] * k[i];
            dst[y * w + x] = (float)ss;
        }
    }
}

TO_API int to_image_resize(const void *src, void *dst, int64_t h, int64_t w, int64_t c,
                           int64_t out_h, int64_t out_w, int filter, int dtype) {
    TO_CHECK(h >= 1 && w >= 1 && c >= 1 && out_h >= 1 && out_w >= 1, TO_ERR_SHAPE,
             "to_image_resize: sizes must be >= 1 (%lldx%lldx%lld -> %lldx%lld)", (long long)h,
             (long long)w, (long long)c, (long long)out_h, (long long)out_w);
    TO_CHECK(filter == TO_RESAMPLE_BILINEAR || filter == TO_RESAMPLE_BICUBIC ||
                 filter == TO_RESAMPLE_LANCZOS,
             TO_ERR_INVALID_ARGUMENT, "to_image_resize: unknown filter %d", filter);
    TO_CHECK(dtype == TO_U8 || dtype == TO_F32, TO_ERR_DTYPE,
             "to_image_resize: dtype %d unsupported (u8 [h,w,c] or f32 [c,h,w])", dtype);
    TO_CHECK_PTR(src);
    TO_CHECK_PTR(dst);
    to_report_kernel("image_resize", "generic-c (pillow fixed point)");
    int need_h = out_w != w, need_v = out_h != h;
    int64_t esz = dtype == TO_U8 ? 1 : 4;
    if (!need_h && !need_v) {
        memcpy(dst, src, (size_t)(h * w * c * esz));
        return TO_OK;
    }
    coeffs ch = {0, NULL, NULL}, cv = {0, NULL, NULL};
    int32_t *kh = NULL, *kv = NULL;
    void *tmp = NULL;
    int rc = TO_OK;
    if (make_coeffs(w, out_w, filter, &ch) || make_coeffs(h, out_h, filter, &cv)) {
        rc = to_set_error(TO_ERR_OUT_OF_MEMORY, "to_image_resize: out of memory");
        goto done;
    }
    /* rows of the input the vertical pass reads */
    int64_t y0 = need_v ? cv.bounds[0] : 0;
    int64_t y1 = need_v ? cv.bounds[2 * out_h - 2] + cv.bounds[2 * out_h - 1] : h;
    if (dtype == TO_U8) {
        kh = fixed_coeffs(&ch, out_w);
        kv = fixed_coeffs(&cv, out_h);
        if (!kh || !kv) {
            rc = to_set_error(TO_ERR_OUT_OF_MEMORY, "to_image_resize: out of memory");
            goto done;
        }
        if (need_h && need_v) {
            tmp = malloc((size_t)((y1 - y0) * out_w * c));
            if (!tmp) {
                rc = to_set_error(TO_ERR_OUT_OF_MEMORY, "to_image_resize: out of memory");
                goto done;
            }
            horiz_u8(src, w, c, y0, y1 - y0, tmp, out_w, &ch, kh);
            vert_u8(tmp, out_w, c, y0, dst, out_h, &cv, kv);
        } else if (need_h) {
            horiz_u8(src, w, c, 0, h, dst, out_w, &ch, kh);
        } else {
            vert_u8(src, w, c, 0, dst, out_h, &cv, kv);
        }
    } else {
        if (need_h && need_v) {
            tmp = malloc((size_t)((y1 - y0) * out_w) * sizeof(float));
            if (!tmp) {
                rc = to_set_error(TO_ERR_OUT_OF_MEMORY, "to_image_resize: out of memory");
                goto done;
            }
        }
        for (int64_t p = 0; p < c; p++) {
            const float *in = (const float *)src + p * h * w;
            float *o = (float *)dst + p * out_h * out_w;
            if (need_h && need_v) {
                horiz_f32(in, w, y0, y1 - y0, tmp, out_w, &ch);
                vert_f32(tmp, out_w, y0, o, out_h, &cv);
            } else if (need_h) {
                horiz_f32(in, w, 0, h, o, out_w, &ch);
            } else {
                vert_f32(in, w, 0, o, out_h, &cv);
            }
        }
    }
done:
    free(tmp);
    free(kh);
    free(kv);
    free_coeffs(&ch);
    free_coeffs(&cv);
    return rc;
}

TO_API int to_image_normalize(const uint8_t *src, void *dst, int64_t h, int64_t w, int64_t c,
                              const float *mean, const float *std, double rescale, int out_dtype) {
    TO_CHECK_NONNEG(h);
    TO_CHECK_NONNEG(w);
    TO_CHECK(c >= 1 && c <= 16, TO_ERR_SHAPE, "to_image_normalize: channels %lld outside 1..16",
             (long long)c);
    TO_CHECK(out_dtype == TO_F32 || out_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_image_normalize: output dtype %d unsupported (f32 or bf16)", out_dtype);
    TO_CHECK(rescale != 0.0 && isfinite(rescale), TO_ERR_INVALID_ARGUMENT,
             "to_image_normalize: rescale must be finite and non-zero");
    TO_CHECK_PTR(mean);
    TO_CHECK_PTR(std);
    if (h == 0 || w == 0) return TO_OK;
    TO_CHECK_PTR(src);
    TO_CHECK_PTR(dst);
    float m[16], s[16];
    for (int64_t ch = 0; ch < c; ch++) {
        TO_CHECK(std[ch] != 0.f, TO_ERR_INVALID_ARGUMENT, "to_image_normalize: std[%lld] is 0",
                 (long long)ch);
        float inv = (float)(1.0 / rescale); /* HF: tensor(mean) * (1.0 / rescale), fp32 */
        m[ch] = mean[ch] * inv;
        s[ch] = std[ch] * inv;
    }
    to_report_kernel("image_normalize", "generic-c");
    int64_t hw = h * w;
    for (int64_t ch = 0; ch < c; ch++) {
        for (int64_t i = 0; i < hw; i++) {
            float v = ((float)src[i * c + ch] - m[ch]) / s[ch];
            if (out_dtype == TO_F32) ((float *)dst)[ch * hw + i] = v;
            else ((uint16_t *)dst)[ch * hw + i] = to_f32_to_bf16(v);
        }
    }
    return TO_OK;
}
