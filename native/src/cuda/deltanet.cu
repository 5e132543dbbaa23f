/* Gated delta rule on the device (semantics of src/cpu/deltanet.c, models.md §4.4): one block per
 * value head keeps the head's fp32 state [dk][dv] in shared memory for all t tokens; a thread
 * owns state columns (j), so the sums over the key dimension run in the CPU's order. One token
 * (decode) takes dn_step_kernel instead, which spreads the state over more blocks and warps.
 *
 * Tokens go in chunks of up to DN_CHUNK: the block first loads the chunk's q, k, v rows and gates
 * into shared memory (all loads in flight together) and normalises q and k of every token of
 * the chunk (a warp per token), then walks the chunk's tokens with nothing but the state update
 * on the path: a thread's columns depend on no other thread's, so the walk needs no barrier. */
#include "common.cuh"

#define DN_CHUNK 32
#define DN_RUN 16 /* state values of a column loaded together */

__global__ void __launch_bounds__(128) dn_kernel(const void *q, const void *k, const void *v, const void *a,
                                                 const void *b, const float *decay, const float *dt_bias,
                                                 float *state, void *out, int64_t t, int64_t nk, int64_t nv,
                                                 int64_t dk, int64_t dv, int64_t ldq, int64_t ldk, int64_t ldv,
                                                 int64_t ldab, int64_t ldo, int xdt, int odt, int chunk) {
    /* S [dk][dv], then per chunk: qn, kn [chunk][dk], vc [chunk][dv], beta, eg [chunk] */
    extern __shared__ float sm[];
    const int64_t h = blockIdx.x, hk = h / (nv / nk);
    float *S = sm, *qn = sm + dk * dv, *kn = qn + chunk * dk, *vc = kn + chunk * dk;
    float *betas = vc + chunk * dv, *egs = betas + chunk;
    float *Sg = state + h * dk * dv;
    const int64_t ns = dk * dv;
    const bool vec = ns % 4 == 0 && ((uintptr_t)Sg & 15) == 0; /* S is 16-byte aligned (offset 0) */
    if (vec) { /* the state in: many 16-byte loads in flight per thread, not one at a time */
#pragma unroll 8
        for (int64_t e = threadIdx.x; e < ns / 4; e += blockDim.x) ((float4 *)S)[e] = ((const float4 *)Sg)[e];
    } else {
#pragma unroll 8
        for (int64_t e = threadIdx.x; e < ns; e += blockDim.x) S[e] = Sg[e];
    }
    const float qdiv = sqrtf((float)dk);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int64_t i0 = 0; i0 < t; i0 += chunk) {
        const int n = (int)(t - i0 < chunk ? t - i0 : chunk);
        __syncthreads(); /* the previous chunk's inputs are read */
#pragma unroll 4
        for (int64_t e = threadIdx.x; e < n * dk; e += blockDim.x) {
            const int64_t c = e / dk, x = e - c * dk;
            qn[e] = ldf(q, xdt, (i0 + c) * ldq + hk * dk + x);
            kn[e] = ldf(k, xdt, (i0 + c) * ldk + hk * dk + x);
        }
#pragma unroll 4
        for (int64_t e = threadIdx.x; e < n * dv; e += blockDim.x) {
            const int64_t c = e / dv, j = e - c * dv;
            vc[e] = ldf(v, xdt, (i0 + c) * ldv + h * dv + j);
        }
        for (int c = threadIdx.x; c < n; c += blockDim.x) {
            const float bv = ldf(b, xdt, (i0 + c) * ldab + h);
            betas[c] = rnd(xdt, 1.0f / (1.0f + expf(-bv)));
            const float av = ldf(a, xdt, (i0 + c) * ldab + h) + dt_bias[h];
            const float sp = av > 20.0f ? av : log1pf(expf(av));
            egs[c] = expf(decay[h] * sp);
        }
        __syncthreads();
        for (int c = warp; c < n; c += nwarps) { /* l2 norms: a warp per token */
            float sq = 0.0f, sk = 0.0f;
            for (int64_t x = lane; x < dk; x += 32) {
                const float qv = qn[c * dk + x], kv = kn[c * dk + x];
                sq += qv * qv;
                sk += kv * kv;
            }
            sq = warp_sum(sq);
            sk = warp_sum(sk);
            const float rq = 1.0f / sqrtf(sq + 1e-6f), rk = 1.0f / sqrtf(sk + 1e-6f);
            for (int64_t x = lane; x < dk; x += 32) {
                qn[c * dk + x] = __fdiv_rn(qn[c * dk + x] * rq, qdiv);
                kn[c * dk + x] = kn[c * dk + x] * rk;
            }
        }
        __syncthreads();
        for (int c = 0; c < n; c++) {
            const float beta = betas[c], eg = egs[c];
            const float *qc = qn + c * dk, *kc = kn + c * dk;
            for (int j = threadIdx.x; j < (int)dv; j += blockDim.x) {
                /* the column in runs of DN_RUN: a run's state values and inputs are loaded into
                 * registers first (no load waits behind a store), then used in x order */
                float *Sj = S + j;
                const int ndk = (int)dk, ndv = (int)dv;
                float m = 0.0f;
                for (int x0 = 0; x0 < ndk; x0 += DN_RUN) {
                    float sv[DN_RUN], kv[DN_RUN];
#pragma unroll
                    for (int u = 0; u < DN_RUN; u++) {
                        const bool in = x0 + u < ndk;
                        sv[u] = in ? Sj[(x0 + u) * ndv] : 0.0f;
                        kv[u] = in ? kc[x0 + u] : 0.0f;
                    }
#pragma unroll
                    for (int u = 0; u < DN_RUN; u++) {
                        if (x0 + u < ndk) {
                            const float st = sv[u] * eg;
                            Sj[(x0 + u) * ndv] = st;
                            m = __fadd_rn(m, __fmul_rn(st, kv[u]));
                        }
                    }
                }
                const float d = (vc[c * dv + j] - m) * beta;
                float o = 0.0f;
                for (int x0 = 0; x0 < ndk; x0 += DN_RUN) {
                    float sv[DN_RUN], kv[DN_RUN], qv[DN_RUN];
#pragma unroll
                    for (int u = 0; u < DN_RUN; u++) {
                        const bool in = x0 + u < ndk;
                        sv[u] = in ? Sj[(x0 + u) * ndv] : 0.0f;
                        kv[u] = in ? kc[x0 + u] : 0.0f;
                        qv[u] = in ? qc[x0 + u] : 0.0f;
                    }
#pragma unroll
                    for (int u = 0; u < DN_RUN; u++) {
                        if (x0 + u < ndk) {
                            const float st = __fadd_rn(sv[u], __fmul_rn(kv[u], d));
                            Sj[(x0 + u) * ndv] = st;
                            o = __fadd_rn(o, __fmul_rn(st, qv[u]));
                        }
                    }
                }
                stf(out, odt, (i0 + c) * ldo + h * dv + j, o);
            }
        }
    }
    __syncthreads();
    if (vec) {
#pragma unroll 8
        for (int64_t e = threadIdx.x; e < ns / 4; e += blockDim.x) ((float4 *)Sg)[e] = ((const float4 *)S)[e];
    } else {
#pragma unroll 8
        for (int64_t e = threadIdx.x; e < ns; e += blockDim.x) Sg[e] = S[e];
    }
}

/* One token (decode): the state is read and written once, and the sums over the key dimension
 * are the only chains. A block takes 32 state columns of a value head (Qwen3-Next: 128 blocks, not
 * 32), a lane one column, and its 4 warps a quarter of the key rows each, held in registers (every
 * load in flight at once); the quarters' sums are added in a fixed order. So the sums are not in
 * the CPU's order (dn_kernel's): a different rounding, not a different result. */
#define DN1_WARPS 4

template <int RM> /* state rows a warp holds (key dims / 4, at most) */
__global__ void __launch_bounds__(DN1_WARPS * 32) dn_step_kernel(const void *q, const void *k, const void *v,
                                                                 const void *a, const void *b, const float *decay,
                                                                 const float *dt_bias, float *state, void *out,
                                                                 int64_t nk, int64_t nv, int64_t dk, int64_t dv,
                                                                 int xdt, int odt) {
    pdl_enter(); /* launched by toc_launch */
    __shared__ float qs[DN1_WARPS * RM], ks[DN1_WARPS * RM], red[2][DN1_WARPS][32];
    const int64_t h = blockIdx.y, hk = h / (nv / nk);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, ndk = (int)dk, ndv = (int)dv;
    const int64_t j = (int64_t)blockIdx.x * 32 + lane;
    const bool col = j < dv;
    const int per = (ndk + DN1_WARPS - 1) / DN1_WARPS, x0 = w * per;
    const int nr = ndk - x0 < per ? ndk - x0 : per; /* this warp's rows (<= 0: none) */
    float *Sg = state + h * dk * dv + (col ? j : 0); /* a lane past the columns reads column 0 */
    float s[RM];
#pragma unroll
    for (int i = 0; i < RM; i++) /* the column's loads first: they take longest */
        s[i] = Sg[(i < nr ? x0 + i : 0) * ndv];
    const float vj = col ? ldf(v, xdt, h * dv + j) : 0.0f;
    for (int x = threadIdx.x; x < ndk; x += DN1_WARPS * 32) {
        qs[x] = ldf(q, xdt, hk * dk + x);
        ks[x] = ldf(k, xdt, hk * dk + x);
    }
    __syncthreads();
    float sq = 0.0f, sk = 0.0f; /* every warp takes the l2 norms (the order of dn_kernel's) */
    for (int x = lane; x < ndk; x += 32) {
        sq += qs[x] * qs[x];
        sk += ks[x] * ks[x];
    }
    sq = warp_sum(sq);
    sk = warp_sum(sk);
    const float rq = 1.0f / sqrtf(sq + 1e-6f), rk = 1.0f / sqrtf(sk + 1e-6f), qdiv = sqrtf((float)dk);
    __syncthreads(); /* every warp has read the raw values */
    for (int x = threadIdx.x; x < ndk; x += DN1_WARPS * 32) {
        qs[x] = __fdiv_rn(qs[x] * rq, qdiv);
        ks[x] = ks[x] * rk;
    }
    const float beta = rnd(xdt, 1.0f / (1.0f + expf(-ldf(b, xdt, h))));
    const float av = ldf(a, xdt, h) + dt_bias[h];
    const float sp = av > 20.0f ? av : log1pf(expf(av));
    const float eg = expf(decay[h] * sp);
    __syncthreads();
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < RM; i++) {
        if (i < nr) {
            const float st = s[i] * eg;
            s[i] = st;
            m = __fadd_rn(m, __fmul_rn(st, ks[x0 + i]));
        }
    }
    red[0][w][lane] = m;
    __syncthreads();
    m = red[0][0][lane];
#pragma unroll
    for (int u = 1; u < DN1_WARPS; u++) m = __fadd_rn(m, red[0][u][lane]);
    const float d = (vj - m) * beta;
    float o = 0.0f;
#pragma unroll
    for (int i = 0; i < RM; i++) {
        if (i < nr) {
            const float st = __fadd_rn(s[i], __fmul_rn(ks[x0 + i], d));
            if (col) Sg[(x0 + i) * ndv] = st;
            o = __fadd_rn(o, __fmul_rn(st, qs[x0 + i]));
        }
    }
    red[1][w][lane] = o;
    __syncthreads();
    if (w != 0 || !col) return;
    o = red[1][0][lane];
#pragma unroll
    for (int u = 1; u < DN1_WARPS; u++) o = __fadd_rn(o, red[1][u][lane]);
    stf(out, odt, h * dv + j, o);
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
    if (t == 1 && dk <= DN1_WARPS * 64 && dk * dv <= INT32_MAX && nv <= 65535) {
        const dim3 grid((unsigned)((dv + 31) / 32), (unsigned)nv);
        if (dk <= DN1_WARPS * 32)
            TOC_CUDA((toc_launch(dn_step_kernel<32>, dim3(grid), dim3(DN1_WARPS * 32), 0, q, k, v, a, b, decay,
                dt_bias, state, out, nk, nv, dk, dv, x_dtype, out_dtype)), "dn_step_kernel");
        else
            TOC_CUDA((toc_launch(dn_step_kernel<64>, dim3(grid), dim3(DN1_WARPS * 32), 0, q, k, v, a, b, decay,
                dt_bias, state, out, nk, nv, dk, dv, x_dtype, out_dtype)), "dn_step_kernel");
        return TO_OK;
    }
    /* the state, and chunks of as many tokens as fit (DN_CHUNK at most) */
    const int64_t room = toc_max_smem_optin() - (int64_t)(dk * dv) * 4;
    const int64_t per_token = (2 * dk + dv + 2) * 4;
    int64_t chunk = room / per_token;
    if (chunk > DN_CHUNK) chunk = DN_CHUNK;
    if (chunk > t) chunk = t;
    TOC_CHECK(chunk >= 1, TO_ERR_UNSUPPORTED,
              "toc_gated_delta_rule: a %lld x %lld state does not fit shared memory", (long long)dk,
              (long long)dv);
    const size_t smem = (size_t)(dk * dv + chunk * (2 * dk + dv + 2)) * sizeof(float);
    if (smem > 48 * 1024)
        TOC_CUDA(cudaFuncSetAttribute(dn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 "cudaFuncSetAttribute");
    dn_kernel<<<(unsigned)nv, 128, smem, toc_stream()>>>(q, k, v, a, b, decay, dt_bias, state, out, t, nk, nv, dk,
                                                         dv, ldq, ldk, ldv, ldab, ldo, x_dtype, out_dtype,
                                                         (int)chunk);
    TOC_LAUNCHED("dn_kernel");
    return TO_OK;
}
