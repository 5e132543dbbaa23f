/* Gated delta rule on the device (semantics of src/cpu/deltanet.c, models.md §4.4): one block per
 * value head keeps the head's fp32 state [dk][dv] in shared memory for all t tokens; a thread
 * owns state columns (j), so the sums over the key dimension run in the CPU's order. */
#include "common.cuh"

__global__ void __launch_bounds__(128) dn_kernel(const void *q, const void *k, const void *v, const void *a,
                                                 const void *b, const float *decay, const float *dt_bias,
                                                 float *state, void *out, int64_t t, int64_t nk, int64_t nv,
                                                 int64_t dk, int64_t dv, int64_t ldq, int64_t ldk, int64_t ldv,
                                                 int64_t ldab, int64_t ldo, int xdt, int odt) {
    extern __shared__ float sm[]; /* S [dk][dv], qn [dk], kn [dk], gates [2] */
    __shared__ float red[33];
    const int64_t h = blockIdx.x, hk = h / (nv / nk);
    float *S = sm, *qn = sm + dk * dv, *kn = qn + dk, *gates = kn + dk;
    float *Sg = state + h * dk * dv;
    for (int64_t e = threadIdx.x; e < dk * dv; e += blockDim.x) S[e] = Sg[e];
    const float qdiv = sqrtf((float)dk);
    for (int64_t i = 0; i < t; i++) {
        float sq = 0.0f, sk = 0.0f;
        for (int64_t x = threadIdx.x; x < dk; x += blockDim.x) {
            const float qv = ldf(q, xdt, i * ldq + hk * dk + x), kv = ldf(k, xdt, i * ldk + hk * dk + x);
            qn[x] = qv;
            kn[x] = kv;
            sq += qv * qv;
            sk += kv * kv;
        }
        sq = block_sum(sq, red);
        sk = block_sum(sk, red);
        if (threadIdx.x == 0) {
            const float bv = ldf(b, xdt, i * ldab + h);
            gates[0] = rnd(xdt, 1.0f / (1.0f + expf(-bv)));
            const float av = ldf(a, xdt, i * ldab + h) + dt_bias[h];
            const float sp = av > 20.0f ? av : log1pf(expf(av));
            gates[1] = expf(decay[h] * sp);
        }
        __syncthreads();
        const float rq = 1.0f / sqrtf(sq + 1e-6f), rk = 1.0f / sqrtf(sk + 1e-6f);
        for (int64_t x = threadIdx.x; x < dk; x += blockDim.x) {
            qn[x] = __fdiv_rn(qn[x] * rq, qdiv);
            kn[x] = kn[x] * rk;
        }
        __syncthreads();
        const float beta = gates[0], eg = gates[1];
        for (int64_t j = threadIdx.x; j < dv; j += blockDim.x) {
            float m = 0.0f;
            for (int64_t x = 0; x < dk; x++) {
                const float s = S[x * dv + j] * eg;
                S[x * dv + j] = s;
                m = __fadd_rn(m, __fmul_rn(s, kn[x]));
            }
            const float d = (ldf(v, xdt, i * ldv + h * dv + j) - m) * beta;
            float o = 0.0f;
            for (int64_t x = 0; x < dk; x++) {
                const float s = __fadd_rn(S[x * dv + j], __fmul_rn(kn[x], d));
                S[x * dv + j] = s;
                o = __fadd_rn(o, __fmul_rn(s, qn[x]));
            }
            stf(out, odt, i * ldo + h * dv + j, o);
        }
        __syncthreads();
    }
    for (int64_t e = threadIdx.x; e < dk * dv; e += blockDim.x) Sg[e] = S[e];
}

TOC_EXPORT int toc_gated_delta_rule(const void *q, const void *k, const void *v, const void *a, const void *b,
                                    const float *decay, const float *dt_bias, float *state, void *out, int64_t t,
                                    int64_t nk, int64_t nv, int64_t dk, int64_t dv, int64_t ldq, int64_t ldk,
                                    int64_t ldv, int64_t ldab, int64_t ldo, int x_dtype, int out_dtype) {
    TOC_CHECK(t >= 0, TO_ERR_INVALID_ARGUMENT, "toc_gated_delta_rule: t is negative");
    TOC_CHECK(nk >= 1 && nv >= 1 && nv % nk == 0, TO_ERR_SHAPE,
              "toc_gated_delta_rule: value heads %lld must be a multiple of key heads %lld", (long long)nv,
              (long long)nk);
    TOC_CHECK(dk >= 1 && dv >= 1, TO_ERR_SHAPE, "toc_gated_delta_rule: head widths must be >= 1");
    TOC_CHECK(ldq >= nk * dk && ldk >= nk * dk && ldv >= nv * dv && ldab >= nv && ldo >= nv * dv, TO_ERR_SHAPE,
              "toc_gated_delta_rule: a row stride is shorter than its heads");
    TOC_CHECK((x_dtype == TO_F32 || x_dtype == TO_BF16) && (out_dtype == TO_F32 || out_dtype == TO_BF16),
              TO_ERR_DTYPE, "toc_gated_delta_rule: dtypes %d / %d unsupported (f32 or bf16)", x_dtype, out_dtype);
    TOC_CHECK(decay && dt_bias && state, TO_ERR_INVALID_ARGUMENT, "toc_gated_delta_rule: NULL pointer");
    if (t == 0) return TO_OK;
    TOC_CHECK(q && k && v && a && b && out, TO_ERR_INVALID_ARGUMENT, "toc_gated_delta_rule: NULL pointer");
    TOC_READY();
    const size_t smem = (size_t)(dk * dv + 2 * dk + 2) * sizeof(float);
    TOC_CHECK((int64_t)smem <= toc_max_smem_optin() - 33 * 4, TO_ERR_UNSUPPORTED,
              "toc_gated_delta_rule: a %lld x %lld state does not fit shared memory", (long long)dk,
              (long long)dv);
    if (smem > 48 * 1024)
        TOC_CUDA(cudaFuncSetAttribute(dn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 "cudaFuncSetAttribute");
    dn_kernel<<<(unsigned)nv, 128, smem, toc_stream()>>>(q, k, v, a, b, decay, dt_bias, state, out, t, nk, nv, dk,
                                                         dv, ldq, ldk, ldv, ldab, ldo, x_dtype, out_dtype);
    TOC_LAUNCHED("dn_kernel");
    return TO_OK;
}
