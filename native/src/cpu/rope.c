/* Rotary position embeddings (models.md §1.3, §6.3, §6.5): cos/sin table builders (1-D, Qwen3-VL
 * interleaved MRoPE, 2-D axial vision rope) and in-place application in NeoX (rotate_half) or
 * interleaved (GPT-J) pairing with partial rotary. The half-rotation is vectorised (AVX2 /
 * AVX-512, GCC vector extensions); the interleaved pairing uses the generic kernel. Rounding
 * follows torch op by op, so products and sums are kept apart (no FMA contraction: see BARRIER).
 * This file includes itself once per instruction set (ROPE_PASS). */
#ifndef ROPE_PASS
#include "../common/internal.h"

#define ROPE_PAR_MIN_ELEMS 65536
#define ROPE_HF_MAX_ROT 8192

static inline float ld_tab(const void *p, int dtype, int64_t i) {
    return dtype == TO_F32 ? ((const float *)p)[i] : to_bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline float rnd_bf16(float v) { return to_bf16_to_f32(to_f32_to_bf16(v)); }
static inline float ld_act(const void *p, int dtype, int64_t i) { return ld_tab(p, dtype, i); }
static inline void st_act(void *p, int dtype, int64_t i, float v) {
    if (dtype == TO_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = to_f32_to_bf16(v);
}

/* ---- tables ---- */
static int64_t ld_pos(const void *p, int dtype, int64_t i) {
    return dtype == TO_I32 ? ((const int32_t *)p)[i] : ((const int64_t *)p)[i];
}

/* inv_freq[i] = 1 / theta^(float(2i) / float(d)), all fp32 like HF's _compute_default_rope_parameters. */
static float inv_freq(float theta, int64_t i, int64_t d) {
    float e = (float)(2 * i) / (float)d;
    return 1.0f / powf(theta, e);
}

typedef struct {
    const void *pos;
    int pos_dtype, out_dtype, kind; /* kind: 0 = 1-D, 1 = MRoPE, 2 = 2-D axial */
    int64_t T, rot, sec_h, sec_w;
    const float *inv; /* rot/2 (kind 0/1) or rot/4 (kind 2) frequencies */
    float scale;      /* attention factor: multiplies cos and sin in fp32 before rounding */
    void *cos, *sin;
} cache_args;

static void cache_task(void *ctx, int ith, int nth) {
    const cache_args *a = ctx;
    int64_t b, e, half = a->rot / 2, q = a->rot / 4;
    to_split_rows(a->T, ith, nth, &b, &e);
    for (int64_t t = b; t < e; t++) {
        for (int64_t i = 0; i < half; i++) {
            float ang;
            if (a->kind == 0) {
                ang = (float)ld_pos(a->pos, a->pos_dtype, t) * a->inv[i];
            } else if (a->kind == 1) {
                int axis = 0;
                if (i % 3 == 1 && i < 3 * a->sec_h) axis = 1;
                else if (i % 3 == 2 && i < 3 * a->sec_w) axis = 2;
                ang = (float)ld_pos(a->pos, a->pos_dtype, axis * a->T + t) * a->inv[i];
            } else {
                int axis = i < q ? 0 : 1;
                ang = (float)ld_pos(a->pos, a->pos_dtype, axis * a->T + t) * a->inv[i % q];
            }
            float c = cosf(ang) * a->scale, s = sinf(ang) * a->scale;
            st_act(a->cos, a->out_dtype, t * a->rot + i, c);
            st_act(a->cos, a->out_dtype, t * a->rot + i + half, c);
            st_act(a->sin, a->out_dtype, t * a->rot + i, s);
            st_act(a->sin, a->out_dtype, t * a->rot + i + half, s);
        }
    }
}

static int check_cache(const char *fn, const void *positions, int pos_dtype, int64_t T,
                       int64_t rot_dim, int64_t mult, void *cos, void *sin, int out_dtype) {
    TO_CHECK(positions != NULL || T == 0, TO_ERR_INVALID_ARGUMENT, "%s: positions is NULL", fn);
    TO_CHECK(cos != NULL && sin != NULL, TO_ERR_INVALID_ARGUMENT, "%s: cos/sin is NULL", fn);
    TO_CHECK(T >= 0, TO_ERR_INVALID_ARGUMENT, "%s: T is negative (%lld)", fn, (long long)T);
    TO_CHECK(pos_dtype == TO_I32 || pos_dtype == TO_I64, TO_ERR_DTYPE,
             "%s: positions dtype %d (int32 or int64 expected)", fn, pos_dtype);
    TO_CHECK(out_dtype == TO_F32 || out_dtype == TO_BF16, TO_ERR_DTYPE,
             "%s: table dtype %d (f32 or bf16 expected)", fn, out_dtype);
    TO_CHECK(rot_dim >= mult && rot_dim % mult == 0 && rot_dim <= 32768, TO_ERR_SHAPE,
             "%s: rot_dim %lld must be a positive multiple of %lld", fn, (long long)rot_dim,
             (long long)mult);
    return TO_OK;
}

/* The one table builder: every entry point ends here with its frequencies. */
static int run_cache(const char *kernel, const void *positions, int pos_dtype, int64_t T,
                     int64_t rot_dim, const float *inv, float scale, int kind, int64_t sec_h,
                     int64_t sec_w, void *cos, void *sin, int out_dtype) {
    if (T == 0) return TO_OK;
    cache_args a = {positions, pos_dtype, out_dtype, kind,  T,   rot_dim,
                    sec_h,     sec_w,     inv,       scale, cos, sin};
    to_report_kernel(kernel, "generic");
    if (T > 1 && T * rot_dim >= 16384 && to_get_num_threads() > 1) to_parallel_run(cache_task, &a, 0);
    else cache_task(&a, 0, 1);
    return TO_OK;
}

static int build_cache(const char *fn, const void *positions, int pos_dtype, int64_t T,
                       int64_t rot_dim, float theta, int kind, int64_t sec_h, int64_t sec_w,
                       void *cos, void *sin, int out_dtype) {
    int rc = check_cache(fn, positions, pos_dtype, T, rot_dim, kind == 2 ? 4 : 2, cos, sin,
                         out_dtype);
    if (rc != TO_OK) return rc;
    TO_CHECK(theta > 0.0f && isfinite(theta), TO_ERR_INVALID_ARGUMENT, "%s: theta must be > 0", fn);
    if (T == 0) return TO_OK;
    int64_t nf = kind == 2 ? rot_dim / 4 : rot_dim / 2;
    float inv[16384];
    for (int64_t i = 0; i < nf; i++) inv[i] = inv_freq(theta, i, kind == 2 ? rot_dim / 2 : rot_dim);
    return run_cache(kind == 0 ? "rope_cache" : kind == 1 ? "rope_cache_mrope" : "rope_cache_2d",
                     positions, pos_dtype, T, rot_dim, inv, 1.0f, kind, sec_h, sec_w, cos, sin,
                     out_dtype);
}

TO_API int to_rope_cache(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                         float theta, void *cos, void *sin, int out_dtype) {
    return build_cache("to_rope_cache", positions, pos_dtype, T, rot_dim, theta, 0, 0, 0, cos, sin,
                       out_dtype);
}

TO_API int to_rope_cache_freqs(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                               const float *inv_freq, float scale, void *cos, void *sin,
                               int out_dtype) {
    const char *fn = "to_rope_cache_freqs";
    int rc = check_cache(fn, positions, pos_dtype, T, rot_dim, 2, cos, sin, out_dtype);
    if (rc != TO_OK) return rc;
    TO_CHECK(inv_freq != NULL, TO_ERR_INVALID_ARGUMENT, "%s: inv_freq is NULL", fn);
    TO_CHECK(isfinite(scale) && scale > 0.0f, TO_ERR_INVALID_ARGUMENT,
             "%s: scale must be a positive finite number", fn);
    for (int64_t i = 0; i < rot_dim / 2; i++)
        TO_CHECK(isfinite(inv_freq[i]), TO_ERR_INVALID_ARGUMENT,
                 "%s: inv_freq[%lld] is not finite", fn, (long long)i);
    return run_cache("rope_cache_freqs", positions, pos_dtype, T, rot_dim, inv_freq, scale, 0, 0, 0,
                     cos, sin, out_dtype);
}

TO_API int to_rope_cache_mrope(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                               float theta, int64_t sec_t, int64_t sec_h, int64_t sec_w, void *cos,
                               void *sin, int out_dtype) {
    TO_CHECK(sec_t >= 0 && sec_h >= 0 && sec_w >= 0 && rot_dim % 2 == 0 &&
                 sec_t + sec_h + sec_w == rot_dim / 2,
             TO_ERR_SHAPE, "to_rope_cache_mrope: sections %lld+%lld+%lld must sum to rot_dim/2 = %lld",
             (long long)sec_t, (long long)sec_h, (long long)sec_w, (long long)(rot_dim / 2));
    return build_cache("to_rope_cache_mrope", positions, pos_dtype, T, rot_dim, theta, 1, sec_h,
                       sec_w, cos, sin, out_dtype);
}

TO_API int to_rope_cache_2d(const void *positions, int pos_dtype, int64_t T, int64_t rot_dim,
                            float theta, void *cos, void *sin, int out_dtype) {
    return build_cache("to_rope_cache_2d", positions, pos_dtype, T, rot_dim, theta, 2, 0, 0, cos,
                       sin, out_dtype);
}

/* ---- apply ---- */
typedef struct {
    void *x;
    const void *cos, *sin;
    int64_t T, heads, hd, rot, st, sh;
    int mode, xd, td;
} apply_args;

/* Keeps the compiler from fusing a product into a following add (FMA) so that rounding matches
 * torch's separate mul and add kernels. */
#define BARRIER(v) __asm__("" : "+x"(v))

/* One head row: generic kernel for every mode and dtype. */
static void rope_row_generic(const apply_args *a, void *row, int64_t t) {
    int64_t half = a->rot / 2;
    const int64_t toff = t * a->rot;
    int bf = a->xd == TO_BF16 && a->td == TO_BF16;
    float tmp[ROPE_HF_MAX_ROT];
    for (int64_t i = 0; i < half; i++) {
        int64_t i1, i2;
        if (a->mode == TO_ROPE_NEOX) {
            i1 = i;
            i2 = i + half;
        } else {
            i1 = 2 * i;
            i2 = 2 * i + 1;
        }
        float x1 = ld_act(row, a->xd, i1), x2 = ld_act(row, a->xd, i2);
        float c = ld_tab(a->cos, a->td, toff + i), s = ld_tab(a->sin, a->td, toff + i);
        float p1 = x1 * c, p2 = x2 * s, p3 = x2 * c, p4 = x1 * s;
        BARRIER(p1);
        BARRIER(p2);
        BARRIER(p3);
        BARRIER(p4);
        if (bf) {
            p1 = rnd_bf16(p1);
            p2 = rnd_bf16(p2);
            p3 = rnd_bf16(p3);
            p4 = rnd_bf16(p4);
        }
        float o1 = p1 - p2, o2 = p3 + p4;
        if (a->mode == TO_ROPE_INTERLEAVED_HF) {
            tmp[i] = o1;
            tmp[i + half] = o2;
        } else {
            st_act(row, a->xd, i1, o1);
            st_act(row, a->xd, i2, o2);
        }
    }
    if (a->mode == TO_ROPE_INTERLEAVED_HF)
        for (int64_t i = 0; i < a->rot; i++) st_act(row, a->xd, i, tmp[i]);
}

typedef void (*rope_row_fn)(const apply_args *, void *, int64_t);
typedef struct {
    const apply_args *a;
    rope_row_fn fn;
} apply_task_t;

static void apply_task(void *ctx, int ith, int nth) {
    const apply_task_t *t = ctx;
    const apply_args *a = t->a;
    int64_t b, e;
    size_t es = a->xd == TO_F32 ? 4 : 2;
    to_split_rows(a->T * a->heads, ith, nth, &b, &e);
    for (int64_t r = b; r < e; r++) {
        int64_t tt = r / a->heads, h = r % a->heads;
        t->fn(a, (char *)a->x + (size_t)(tt * a->st + h * a->sh) * es, tt);
    }
}

#define ROPE_PASS 1
#define VW 16
#define VTGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define K(name) name##_avx512
#include "rope.c"
#undef VW
#undef VTGT
#undef K
#define VW 8
#define VTGT __attribute__((target("avx2,fma")))
#define K(name) name##_avx2
#include "rope.c"
#undef VW
#undef VTGT
#undef K
#undef ROPE_PASS

TO_API int to_rope_apply(void *x, const void *cos, const void *sin, int64_t T, int64_t heads,
                         int64_t head_dim, int64_t rot_dim, int64_t stride_t, int64_t stride_h,
                         int mode, int x_dtype, int table_dtype) {
    TO_CHECK_PTR(x);
    TO_CHECK_PTR(cos);
    TO_CHECK_PTR(sin);
    TO_CHECK_NONNEG(T);
    TO_CHECK_NONNEG(heads);
    TO_CHECK(mode == TO_ROPE_NEOX || mode == TO_ROPE_INTERLEAVED || mode == TO_ROPE_INTERLEAVED_HF,
             TO_ERR_INVALID_ARGUMENT, "to_rope_apply: unknown mode %d", mode);
    TO_CHECK(rot_dim >= 2 && rot_dim % 2 == 0 && rot_dim <= head_dim, TO_ERR_SHAPE,
             "to_rope_apply: rot_dim %lld must be even, >= 2 and <= head_dim %lld",
             (long long)rot_dim, (long long)head_dim);
    TO_CHECK(mode != TO_ROPE_INTERLEAVED_HF || rot_dim <= ROPE_HF_MAX_ROT, TO_ERR_UNSUPPORTED,
             "to_rope_apply: rot_dim %lld > %d in the interleaved_hf mode", (long long)rot_dim,
             ROPE_HF_MAX_ROT);
    TO_CHECK(stride_t >= 0 && stride_h >= 0, TO_ERR_INVALID_ARGUMENT,
             "to_rope_apply: strides must be >= 0");
    TO_CHECK(x_dtype == TO_F32 || x_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_rope_apply: x dtype %d (f32 or bf16 expected)", x_dtype);
    TO_CHECK(table_dtype == TO_F32 || table_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_rope_apply: table dtype %d (f32 or bf16 expected)", table_dtype);
    if (T == 0 || heads == 0) return TO_OK;
    apply_args a = {x, cos, sin, T, heads, head_dim, rot_dim, stride_t, stride_h, mode, x_dtype,
                    table_dtype};
    apply_task_t task = {&a, rope_row_generic};
    const char *kname = "generic";
    uint32_t isa = to_isa();
    if (mode == TO_ROPE_NEOX) {
        if ((isa & TO_ISA_AVX512F) && (isa & TO_ISA_AVX512BW)) {
            task.fn = rope_neox_avx512;
            kname = "avx512 (neox), generic (interleaved)";
        } else if (isa & TO_ISA_AVX2) {
            task.fn = rope_neox_avx2;
            kname = "avx2 (neox), generic (interleaved)";
        }
    }
    to_report_kernel("rope_apply", kname);
    if (T * heads > 1 && T * heads * rot_dim >= ROPE_PAR_MIN_ELEMS && to_get_num_threads() > 1)
        to_parallel_run(apply_task, &task, 0);
    else
        apply_task(&task, 0, 1);
    return TO_OK;
}

/* Per-head RMSNorm (when the weight is given) then RoPE, in place, on q [T, nh, hd] and
 * k [T, nkv, hd] (token strides q_st, k_st; heads contiguous). Composed from to_rms_norm and
 * to_rope_apply, so its results equal the four ops run one after the other. */
TO_API int to_qk_norm_rope(void *q, void *k, const void *q_w, const void *k_w, const void *cos,
                           const void *sin, int64_t T, int64_t nh, int64_t nkv, int64_t hd,
                           int64_t rot_dim, int64_t q_st, int64_t k_st, float eps, int variant,
                           int mode, int x_dtype, int w_dtype, int table_dtype) {
    TO_CHECK_PTR(q);
    TO_CHECK_PTR(k);
    TO_CHECK(hd >= 1, TO_ERR_SHAPE, "to_qk_norm_rope: head_dim must be >= 1");
    TO_CHECK(q_st >= nh * hd && k_st >= nkv * hd, TO_ERR_SHAPE,
             "to_qk_norm_rope: token strides %lld/%lld shorter than the heads %lld/%lld",
             (long long)q_st, (long long)k_st, (long long)(nh * hd), (long long)(nkv * hd));
    int rc = TO_OK;
    if (q_w)
        rc = to_rms_norm(q, q_w, NULL, q, T, nh, hd, q_st, hd, 0, 0, q_st, hd, eps, variant,
                         x_dtype, w_dtype, x_dtype);
    if (rc == TO_OK && k_w)
        rc = to_rms_norm(k, k_w, NULL, k, T, nkv, hd, k_st, hd, 0, 0, k_st, hd, eps, variant,
                         x_dtype, w_dtype, x_dtype);
    if (rc == TO_OK)
        rc = to_rope_apply(q, cos, sin, T, nh, hd, rot_dim, q_st, hd, mode, x_dtype, table_dtype);
    if (rc == TO_OK)
        rc = to_rope_apply(k, cos, sin, T, nkv, hd, rot_dim, k_st, hd, mode, x_dtype, table_dtype);
    return rc;
}

#else /* ---------------- per-ISA pass ---------------- */
#include "ops_vec.inc"

#define VBARRIER(v) __asm__("" : "+v"(v))

static VTGT void K(rope_neox)(const apply_args *a, void *row, int64_t t) {
    int64_t half = a->rot / 2, toff = t * a->rot;
    int bf = a->xd == TO_BF16 && a->td == TO_BF16;
    for (int64_t i = 0; i < half; i += VW) {
        int64_t n = half - i < VW ? half - i : VW;
        K(vf) x1, x2, c, s;
        if (n == VW) {
            x1 = K(ld)(row, a->xd, i);
            x2 = K(ld)(row, a->xd, i + half);
            c = K(ld)(a->cos, a->td, toff + i);
            s = K(ld)(a->sin, a->td, toff + i);
        } else {
            x1 = K(ldn)(row, a->xd, i, n, 0.0f);
            x2 = K(ldn)(row, a->xd, i + half, n, 0.0f);
            c = K(ldn)(a->cos, a->td, toff + i, n, 0.0f);
            s = K(ldn)(a->sin, a->td, toff + i, n, 0.0f);
        }
        K(vf) p1 = x1 * c, p2 = x2 * s, p3 = x2 * c, p4 = x1 * s;
        VBARRIER(p1);
        VBARRIER(p2);
        VBARRIER(p3);
        VBARRIER(p4);
        if (bf) {
            p1 = K(bf16_round)(p1);
            p2 = K(bf16_round)(p2);
            p3 = K(bf16_round)(p3);
            p4 = K(bf16_round)(p4);
        }
        K(vf) o1 = p1 - p2, o2 = p3 + p4;
        if (n == VW) {
            K(st)(row, a->xd, i, o1);
            K(st)(row, a->xd, i + half, o2);
        } else {
            K(stn)(row, a->xd, i, o1, n);
            K(stn)(row, a->xd, i + half, o2, n);
        }
    }
}
#endif
