/* Linear attention: the gated delta rule of Qwen3-Next's Gated DeltaNet (models.md §4.4), in
 * its recurrent form, one token after another, with an fp32 state per value head. Heads run in
 * parallel; each head's arithmetic is sequential and fixed, so results do not depend on the
 * thread count. */
#include <math.h>
#include <stdlib.h>

#include "../common/internal.h"

static inline float dn_load(const void *p, int dtype, int64_t i) {
    return dtype == TO_F32 ? ((const float *)p)[i] : to_bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline float dn_round(int dtype, float v) {
    return dtype == TO_F32 ? v : to_bf16_to_f32(to_f32_to_bf16(v));
}

typedef struct {
    const void *q, *k, *v, *a, *b;
    const float *decay, *dt_bias;
    float *state;
    void *out;
    int64_t t, nk, nv, dk, dv, ldq, ldk, ldv, ldab, ldo;
    int xdt, odt;
    int failed;
} dn_ctx;

static void dn_head(dn_ctx *c, int64_t h, float *qn, float *kn, float *m) {
    const int64_t dk = c->dk, dv = c->dv, hk = h / (c->nv / c->nk);
    float *S = c->state + h * dk * dv; /* [dk][dv] */
    const float qdiv = sqrtf((float)dk);
    for (int64_t i = 0; i < c->t; i++) {
        /* l2-normalised q (then / sqrt(dk)) and k in fp32 */
        float sq = 0.0f, sk = 0.0f;
        for (int64_t x = 0; x < dk; x++) {
            qn[x] = dn_load(c->q, c->xdt, i * c->ldq + hk * dk + x);
            kn[x] = dn_load(c->k, c->xdt, i * c->ldk + hk * dk + x);
            sq += qn[x] * qn[x];
            sk += kn[x] * kn[x];
        }
        const float rq = 1.0f / sqrtf(sq + 1e-6f), rk = 1.0f / sqrtf(sk + 1e-6f);
        for (int64_t x = 0; x < dk; x++) {
            qn[x] = qn[x] * rq / qdiv;
            kn[x] = kn[x] * rk;
        }
        /* gates: beta = sigmoid(b) in the activation dtype, g = decay * softplus(a + dt_bias) */
        const float bv = dn_load(c->b, c->xdt, i * c->ldab + h);
        const float beta = dn_round(c->xdt, 1.0f / (1.0f + expf(-bv)));
        const float av = dn_load(c->a, c->xdt, i * c->ldab + h) + c->dt_bias[h];
        const float sp = av > 20.0f ? av : log1pf(expf(av));
        const float eg = expf(c->decay[h] * sp);
        /* S = exp(g) S; m = S^T k; S += k (beta (v - m))^T; o = S^T q */
        for (int64_t j = 0; j < dv; j++) m[j] = 0.0f;
        for (int64_t x = 0; x < dk; x++) {
            float *row = S + x * dv;
            for (int64_t j = 0; j < dv; j++) {
                row[j] *= eg;
                m[j] += row[j] * kn[x];
            }
        }
        for (int64_t j = 0; j < dv; j++)
            m[j] = (dn_load(c->v, c->xdt, i * c->ldv + h * dv + j) - m[j]) * beta;
        float *o = m + dv;
        for (int64_t j = 0; j < dv; j++) o[j] = 0.0f;
        for (int64_t x = 0; x < dk; x++) {
            float *row = S + x * dv;
            const float kx = kn[x], qx = qn[x];
            for (int64_t j = 0; j < dv; j++) {
                row[j] += kx * m[j];
                o[j] += row[j] * qx;
            }
        }
        for (int64_t j = 0; j < dv; j++) {
            const int64_t at = i * c->ldo + h * dv + j;
            if (c->odt == TO_F32) ((float *)c->out)[at] = o[j];
            else ((uint16_t *)c->out)[at] = to_f32_to_bf16(o[j]);
        }
    }
}

static void dn_task(void *arg, int ith, int nth) {
    dn_ctx *c = arg;
    float *buf = malloc((size_t)(2 * c->dk + 2 * c->dv) * sizeof(float));
    if (!buf) {
        c->failed = 1;
        return;
    }
    for (int64_t h = ith; h < c->nv; h += nth) dn_head(c, h, buf, buf + c->dk, buf + 2 * c->dk);
    free(buf);
}

TO_API int to_gated_delta_rule(const void *q, const void *k, const void *v, const void *a, const void *b,
                               const float *decay, const float *dt_bias, float *state, void *out, int64_t t,
                               int64_t nk, int64_t nv, int64_t dk, int64_t dv, int64_t ldq, int64_t ldk,
                               int64_t ldv, int64_t ldab, int64_t ldo, int x_dtype, int out_dtype) {
    TO_CHECK_NONNEG(t);
    TO_CHECK(nk >= 1 && nv >= 1 && nv % nk == 0, TO_ERR_SHAPE,
             "to_gated_delta_rule: value heads %lld must be a multiple of key heads %lld", (long long)nv,
             (long long)nk);
    TO_CHECK(dk >= 1 && dv >= 1, TO_ERR_SHAPE, "to_gated_delta_rule: head widths must be >= 1");
    TO_CHECK(ldq >= nk * dk && ldk >= nk * dk && ldv >= nv * dv && ldab >= nv && ldo >= nv * dv, TO_ERR_SHAPE,
             "to_gated_delta_rule: a row stride is shorter than its heads");
    TO_CHECK(x_dtype == TO_F32 || x_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_gated_delta_rule: input dtype %d unsupported (f32 or bf16)", x_dtype);
    TO_CHECK(out_dtype == TO_F32 || out_dtype == TO_BF16, TO_ERR_DTYPE,
             "to_gated_delta_rule: output dtype %d unsupported (f32 or bf16)", out_dtype);
    TO_CHECK_PTR(decay);
    TO_CHECK_PTR(dt_bias);
    TO_CHECK_PTR(state);
    if (t == 0) return TO_OK;
    TO_CHECK_PTR(q);
    TO_CHECK_PTR(k);
    TO_CHECK_PTR(v);
    TO_CHECK_PTR(a);
    TO_CHECK_PTR(b);
    TO_CHECK_PTR(out);
    to_report_kernel("gated_delta_rule", "generic-c");
    dn_ctx c = {q, k, v, a, b, decay, dt_bias, state, out, t, nk, nv, dk, dv, ldq, ldk, ldv, ldab, ldo,
                x_dtype, out_dtype, 0};
    int nth = nv > 1 && t * nv * dk * dv >= (1 << 16) ? to_get_num_threads() : 1;
    if (nth > nv) nth = (int)nv;
    if (nth > 1) to_parallel_run(dn_task, &c, nth);
    else dn_task(&c, 0, 1);
    if (c.failed) return to_set_error(TO_ERR_OUT_OF_MEMORY, "to_gated_delta_rule: out of memory");
    return TO_OK;
}
