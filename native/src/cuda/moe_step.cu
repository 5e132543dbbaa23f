/* The mixture-of-experts MLP of one token in one cooperative launch (softmax top-k routers: the
 * CUDA-graph decoder's Qwen3-MoE layers, and any single token of the op path on CUDA, Qwen3-Next's
 * shared expert included), instead of five kernels or more (router GEMV, route, the experts' gate /
 * up with SwiGLU, their down projections, combine; the shared expert's GEMVs, gate and sums), each
 * of which paid its own ramp and tail (2.6-7 us apiece on an H200). Three stages behind two grid
 * barriers:
 *
 *  A. every block normalises x itself (RMSNorm, when asked) into shared memory; the router's rows
 *     (and the shared expert's gate row) are spread one per block, so each block streams a few KB;
 *     logits (bf16) to global;
 *  B. every block reads the logits, takes the softmax top-k itself (the same choice everywhere),
 *     then its even share of the (slot, row) pairs of gate / up, the shared expert a slot of its
 *     own: h to global;
 *  C. every block stages h and takes a range of output columns for every slot (the down rows of
 *     its columns, contiguous in each expert's matrix), then combines its columns in expert order,
 *     adds the shared expert times its sigmoid gate and the residual: no third barrier.
 *
 * Roundings are those of the kernels it replaces: toc_gemv_fused (router, SwiGLU),
 * toc_moe_route_softmax, toc_moe_gemv, toc_moe_combine, then sigmoid, mul_rows and add for the
 * shared expert; the products' partial sums run in another order, so a value can differ from that
 * sequence in its last bf16 bit. bf16 activations and weights only. */
#include "common.cuh"
#include "moe.cuh"
#include "step.cuh"

#define MS_THREADS 512
#define MS_WARPS (MS_THREADS / 32)
#define MS_MAX_K 64   /* experts a token, at most (toc_moe_combine's limit) */
#define MS_MAX_E 4096 /* router rows (shared memory) */
#define MS_MAX_GROUPS 64 /* expert groups of the sigmoid router */
#ifndef MS_DOWN_ROWS
#define MS_DOWN_ROWS 4 /* down rows a warp takes at once */
#endif
#ifndef MS_DOWN_U
#define MS_DOWN_U 4 /* ... and 16-byte loads a lane and row in flight */
#endif
#ifndef MS_GU_U
#define MS_GU_U 8 /* 16-byte loads a lane in flight for each of gate and up */
#endif

struct MsArgs {
    const uint16_t *x;  /* [d]: the MLP's input */
    const void *norm_w; /* RMSNorm of x first, or NULL */
    int nwd;
    float eps;
    const uint16_t *router;                 /* [e, d] */
    const unsigned long long *tg, *tu, *td; /* device tables of e pointers: gate, up [inter, d], down [d, inter] */
    const uint16_t *sg, *sgu, *sgd, *sgw;   /* the shared expert: gate, up [si, d], down [d, si], gate row [d]; or NULL */
    int64_t e, d, inter, si;
    int k, renorm;
    /* the sigmoid noaux_tc router (GLM-4.7-Flash) instead of the softmax one: fp32 logits and
     * weights, the correction bias, groups, scaling */
    int sigmoid, n_group, topk_group;
    const float *bias;
    float scaling;
    const uint16_t *res; /* out = res + ..., or NULL */
    void *logits;        /* [e (+ 1: the shared expert's gate)], bf16 (fp32: sigmoid router) */
    int32_t *idx;        /* [k]: the choice, written by block 0 (the other blocks keep their own) */
    void *wts;           /* [k], bf16 (fp32: sigmoid router) */
    uint16_t *h;         /* [k inter (+ si)] */
    uint16_t *out;       /* [d] */
};

__global__ void __launch_bounds__(MS_THREADS, 1) moe_step_kernel(const __grid_constant__ MsArgs a) {
    extern __shared__ __align__(16) float smem[];
    __shared__ float red[33];
    __shared__ double redd[32];
    __shared__ float vals[MS_MAX_K], wsl[MS_MAX_K];
    __shared__ int32_t ids[MS_MAX_K], order[MS_MAX_K];
    __shared__ const uint16_t *gp[MS_MAX_K + 1]; /* each slot's gate, up and down (the shared expert last) */
    __shared__ const uint16_t *up[MS_MAX_K + 1];
    __shared__ const uint16_t *dp[MS_MAX_K + 1];
    __shared__ int64_t hoff[MS_MAX_K + 2]; /* each slot's first element of h; [slots]: h's length */
    __shared__ float gscore[MS_MAX_GROUPS], gval[MS_MAX_GROUPS];
    __shared__ int32_t gids[MS_MAX_GROUPS];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = gridDim.x, k = a.k, sh = a.sg != nullptr, slots = k + sh, gate_row = a.sgw != nullptr;
    const int64_t d = a.d, e = a.e, inter = a.inter, nv = d / 8;
    const int64_t nw = (int64_t)G * MS_WARPS;

    /* ---- A: RMSNorm of x, the router rows (row r on block r % G: every block streams a little) */
    const int64_t rw = (int64_t)warp * G + blockIdx.x; /* this warp's first router row */
    for (int64_t r = rw; r < e + gate_row; r += nw) ms_prefetch_l2(r < e ? a.router + r * d : a.sgw, d * 2);
    float4 *xlo = (float4 *)smem, *xhi = xlo + nv;
    float *p = (float *)(xhi + nv);
    ms_stage_norm(a.x, a.norm_w, a.nwd, a.eps, d, xlo, xhi, red);
    for (int64_t r = rw; r < e + gate_row; r += nw) {
        const uint16_t *row[1] = {r < e ? a.router + r * d : a.sgw};
        float s[1];
        ms_dots<1, 8>(row, nv, xlo, xhi, s);
        if (lane == 0) {
            if (a.sigmoid) ((float *)a.logits)[r] = s[0]; /* the router's fp32 product */
            else ((uint16_t *)a.logits)[r] = f2bf(s[0]);
        }
    }
    ms_grid_sync();

    /* ---- B: the router's choice (toc_moe_route_softmax's or toc_moe_route_sigmoid's), then
     * gate / up with SwiGLU */
    if (a.sigmoid) {
        float *sc = p, *cs = p + e;
        for (int64_t x = tid; x < e; x += MS_THREADS) {
            sc[x] = 1.f / (1.f + expf(-__ldcg((const float *)a.logits + x)));
            cs[x] = sc[x] + a.bias[x];
        }
        __syncthreads();
        if (tid < 32)
            moe_sigmoid_select(sc, cs, e, k, a.n_group, a.topk_group, a.renorm, a.scaling, gscore, gval, gids, ids,
                               vals);
        __syncthreads();
    } else {
        float mx = -INFINITY;
        for (int64_t x = tid; x < e; x += MS_THREADS) {
            p[x] = bf2f(__ldcg((const uint16_t *)a.logits + x));
            mx = fmaxf(mx, p[x]);
        }
        moe_softmax_select(p, e, k, a.renorm, mx, red, redd, vals, ids);
    }
    if (tid < k) { /* slot tid: its weight as stored, its place in (expert, slot) order, its matrices */
        const int j = tid;
        wsl[j] = a.sigmoid ? vals[j] : rbf(vals[j]);
        int rank = 0;
        for (int i = 0; i < k; i++) rank += ids[i] < ids[j] || (ids[i] == ids[j] && i < j);
        order[rank] = j;
        gp[j] = (const uint16_t *)a.tg[ids[j]];
        up[j] = (const uint16_t *)a.tu[ids[j]];
        dp[j] = (const uint16_t *)a.td[ids[j]];
        if (blockIdx.x == 0) {
            a.idx[j] = ids[j];
            if (a.sigmoid) ((float *)a.wts)[j] = vals[j];
            else ((uint16_t *)a.wts)[j] = f2bf(vals[j]);
        }
    } else if (tid == k && sh) {
        gp[k] = a.sg, up[k] = a.sgu, dp[k] = a.sgd;
    }
    if (tid <= slots) hoff[tid] = (int64_t)(tid < k ? tid : k) * inter + (tid > k ? a.si : 0);
    __syncthreads();
    {
        const int64_t P = hoff[slots], gw = (int64_t)blockIdx.x * MS_WARPS + warp;
        const int64_t q1 = (gw + 1) * P / nw;
        for (int64_t q = gw * P / nw; q < q1; q++) {
            const int j = q < (int64_t)k * inter ? (int)(q / inter) : k;
            const int64_t r = q - hoff[j];
            const uint16_t *rows[2] = {gp[j] + r * d, up[j] + r * d};
            float s[2];
            ms_dots<2, MS_GU_U>(rows, nv, xlo, xhi, s);
            if (lane == 0) { /* toc_gemv_fused's SwiGLU: round(round(silu(round(g))) * round(u)) */
                const float g = rbf(s[0]), u = rbf(s[1]);
                a.h[q] = f2bf(rbf(g / (1.0f + expf(-g))) * u);
            }
        }
    }
    /* the shared expert's gate as the sigmoid op rounds it */
    const float sgate = gate_row ? rbf(1.0f / (1.0f + expf(-bf2f(__ldcg((const uint16_t *)a.logits + e))))) : 1.0f;
    /* Requesting this block's down rows into L2 here, before the barrier, measured 1.5-2% slower
     * (Qwen3-MoE, 12 layers, H200): the early blocks' requests slow the late ones' gate / up. */
    ms_grid_sync();

    /* ---- C: stage h, the down rows of columns [o0, o1) for every slot, then the combine */
    const int64_t o0 = (int64_t)blockIdx.x * d / G, o1 = (int64_t)(blockIdx.x + 1) * d / G, nc = o1 - o0;
    const int64_t nh8 = hoff[slots] / 8;
    float4 *hlo = (float4 *)smem, *hhi = hlo + nh8;
    float *ys = (float *)(hhi + nh8); /* [slots, nc] */
    for (int64_t c = tid; c < nh8; c += MS_THREADS) {
        float f[8];
        bf8(__ldcg((const uint4 *)a.h + c), f);
        ms_put8(hlo, hhi, c, f);
    }
    __syncthreads();
    const int64_t ng = (nc + MS_DOWN_ROWS - 1) / MS_DOWN_ROWS; /* row groups a slot */
    for (int64_t g = warp; g < slots * ng; g += MS_WARPS) {
        const int j = (int)(g / ng);
        const int64_t o = o0 + (g - (int64_t)j * ng) * MS_DOWN_ROWS, n = j < k ? inter : a.si;
        const uint16_t *rows[MS_DOWN_ROWS];
#pragma unroll
        for (int r = 0; r < MS_DOWN_ROWS; r++) rows[r] = o + r < o1 ? dp[j] + (o + r) * n : nullptr;
        float s[MS_DOWN_ROWS];
        ms_dots<MS_DOWN_ROWS, MS_DOWN_U>(rows, n / 8, hlo + hoff[j] / 8, hhi + hoff[j] / 8, s);
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < MS_DOWN_ROWS; r++)
                if (o + r < o1) ys[j * nc + (o + r - o0)] = rbf(s[r]);
    }
    __syncthreads();
    for (int64_t t = tid; t < nc; t += MS_THREADS) { /* toc_moe_combine's order and roundings */
        float acc = 0.0f;
        for (int q = 0; q < k; q++) {
            const int j = order[q];
            acc = rbf(__fadd_rn(acc, rbf(__fmul_rn(wsl[j], ys[j * nc + t]))));
        }
        if (sh && gate_row) acc = rbf(__fadd_rn(acc, rbf(__fmul_rn(ys[k * nc + t], sgate)))); /* mul_rows, add */
        else if (sh) acc = rbf(__fadd_rn(acc, ys[k * nc + t]));                                  /* add */
        if (a.res) acc = __fadd_rn(bf2f(__ldcg(a.res + o0 + t)), acc);
        a.out[o0 + t] = f2bf(acc);
    }
}

/* ---- host side */
/* shared memory of a launch: stage A / B (x, probabilities) and C (h, the block's outputs) share it */
static size_t ms_smem(int64_t e, int64_t k, int64_t d, int64_t inter, int64_t si, int grid) {
    const int64_t ab = d * 4 + 2 * e * 4; /* x; the probabilities (sigmoid: scores and corrected scores) */
    const int64_t c = (k * inter + si) * 4 + (k + (si > 0)) * toc_cdiv(d, grid) * 4;
    return (size_t)(ab > c ? ab : c);
}

/* Checks the shapes and the device: TO_OK with the launch's grid and shared memory, or an error
 * saying what does not fit (the caller then takes the kernels it replaces). */
static int ms_plan(int64_t e, int64_t k, int64_t d, int64_t inter, int64_t si, int act_dtype, int *grid,
                   size_t *smem) {
    TOC_CHECK(act_dtype == TO_BF16, TO_ERR_UNSUPPORTED, "toc_moe_step: bf16 activations only");
    TOC_CHECK(e >= 1 && e <= MS_MAX_E && k >= 1 && k <= e && k <= MS_MAX_K, TO_ERR_UNSUPPORTED,
              "toc_moe_step: need 1 <= k <= e, k <= %d and e <= %d (k=%lld, e=%lld)", MS_MAX_K, MS_MAX_E,
              (long long)k, (long long)e);
    TOC_CHECK(d >= 8 && d % 8 == 0 && inter >= 8 && inter % 8 == 0 && si >= 0 && si % 8 == 0, TO_ERR_UNSUPPORTED,
              "toc_moe_step: hidden and intermediate sizes must be multiples of 8 (%lld, %lld, shared %lld)",
              (long long)d, (long long)inter, (long long)si);
    TOC_READY();
    *smem = ms_smem(e, k, d, inter, si, toc_sm_count());
    return ms_plan_launch(moe_step_kernel, MS_THREADS, *smem, grid, "toc_moe_step");
}

/* the sigmoid router's own limits */
static int ms_sigmoid_ok(int64_t e, int64_t k, int64_t n_group, int64_t topk_group) {
    TOC_CHECK(n_group >= 1 && n_group <= MS_MAX_GROUPS && e % n_group == 0 && topk_group >= 1 &&
                  topk_group <= n_group && k <= topk_group * (e / n_group),
              TO_ERR_UNSUPPORTED,
              "toc_moe_step_sigmoid: need n_group (%lld) <= %d dividing e (%lld), 1 <= topk_group (%lld) <= "
              "n_group and k (%lld) within the experts of topk_group groups",
              (long long)n_group, MS_MAX_GROUPS, (long long)e, (long long)topk_group, (long long)k);
    return TO_OK;
}

TOC_EXPORT int toc_moe_step_supported(int64_t e, int64_t k, int64_t d, int64_t inter, int64_t shared_inter,
                                      int act_dtype) {
    int grid = 0;
    size_t smem = 0;
    return ms_plan(e, k, d, inter, shared_inter, act_dtype, &grid, &smem);
}

TOC_EXPORT int toc_moe_step_sigmoid_supported(int64_t e, int64_t k, int64_t n_group, int64_t topk_group, int64_t d,
                                              int64_t inter, int64_t shared_inter, int act_dtype) {
    const int rc = ms_sigmoid_ok(e, k, n_group, topk_group);
    return rc ? rc : toc_moe_step_supported(e, k, d, inter, shared_inter, act_dtype);
}

/* the checks and the launch both entry points share; a has every field but the shapes' checks */
static int ms_run(MsArgs &a, const void *x, const void *norm_w, int norm_dtype, const void *router_w,
                  const void *tab_gate, const void *tab_up, const void *tab_down, const void *shared_gate,
                  const void *shared_up, const void *shared_down, const void *shared_gate_w, int64_t shared_inter,
                  const void *logits, const void *idx, const void *weights, const void *h, const void *out,
                  int act_dtype) {
    TOC_CHECK(x && router_w && tab_gate && tab_up && tab_down && logits && idx && weights && h && out,
              TO_ERR_INVALID_ARGUMENT, "toc_moe_step: NULL pointer");
    const bool sh = shared_gate != NULL;
    TOC_CHECK(sh ? (shared_up && shared_down && shared_inter >= 8) : (shared_inter == 0 && !shared_gate_w),
              TO_ERR_INVALID_ARGUMENT, "toc_moe_step: a shared expert needs its gate, up, down and width together");
    TOC_CHECK(!norm_w || toc_is_wt(norm_dtype), TO_ERR_DTYPE, "toc_moe_step: norm weight dtype %d unsupported",
              norm_dtype);
    TOC_CHECK(aligned16(x) && aligned16(router_w) && aligned16(h) &&
                  (!sh || (aligned16(shared_gate) && aligned16(shared_up) && aligned16(shared_down))) &&
                  (!shared_gate_w || aligned16(shared_gate_w)),
              TO_ERR_INVALID_ARGUMENT, "toc_moe_step: x, the weights and h must be 16-byte aligned");
    int grid = 0;
    size_t smem = 0;
    const int rc = ms_plan(a.e, a.k, a.d, a.inter, sh ? shared_inter : 0, act_dtype, &grid, &smem);
    if (rc) return rc;
    a.x = (const uint16_t *)x;
    a.norm_w = norm_w;
    a.nwd = norm_dtype;
    a.router = (const uint16_t *)router_w;
    a.tg = (const unsigned long long *)tab_gate;
    a.tu = (const unsigned long long *)tab_up;
    a.td = (const unsigned long long *)tab_down;
    if (sh) {
        a.sg = (const uint16_t *)shared_gate, a.sgu = (const uint16_t *)shared_up;
        a.sgd = (const uint16_t *)shared_down, a.sgw = (const uint16_t *)shared_gate_w;
        a.si = shared_inter;
    }
    a.logits = (void *)logits;
    a.idx = (int32_t *)idx;
    a.wts = (void *)weights;
    a.h = (uint16_t *)h;
    a.out = (uint16_t *)out;
    /* With programmatic dependent launch on top of the cooperative one it started during the o_proj
     * GEMV's tail, and measured the same. */
    TOC_CUDA(ms_launch(moe_step_kernel, grid, MS_THREADS, smem, a), "moe_step_kernel");
    return TO_OK;
}

TOC_EXPORT int toc_moe_step(const void *x, const void *norm_w, int norm_dtype, float eps, const void *router_w,
                            int64_t e, int64_t k, int renormalize, const void *tab_gate, const void *tab_up,
                            const void *tab_down, int64_t d, int64_t inter, const void *shared_gate,
                            const void *shared_up, const void *shared_down, const void *shared_gate_w,
                            int64_t shared_inter, const void *res, void *logits, int32_t *idx, void *weights,
                            void *h, void *out, int act_dtype) {
    MsArgs a = {};
    a.eps = eps;
    a.e = e, a.d = d, a.inter = inter;
    a.k = (int)k, a.renorm = renormalize != 0;
    a.res = (const uint16_t *)res;
    return ms_run(a, x, norm_w, norm_dtype, router_w, tab_gate, tab_up, tab_down, shared_gate, shared_up,
                  shared_down, shared_gate_w, shared_inter, logits, idx, weights, h, out, act_dtype);
}

TOC_EXPORT int toc_moe_step_sigmoid(const void *x, const void *norm_w, int norm_dtype, float eps,
                                    const void *router_w, const float *bias, int64_t e, int64_t k, int64_t n_group,
                                    int64_t topk_group, int renormalize, float scaling, const void *tab_gate,
                                    const void *tab_up, const void *tab_down, int64_t d, int64_t inter,
                                    const void *shared_gate, const void *shared_up, const void *shared_down,
                                    int64_t shared_inter, const void *res, float *logits, int32_t *idx,
                                    float *weights, void *h, void *out, int act_dtype) {
    TOC_CHECK(bias, TO_ERR_INVALID_ARGUMENT, "toc_moe_step_sigmoid: NULL bias");
    const int rc = ms_sigmoid_ok(e, k, n_group, topk_group);
    if (rc) return rc;
    MsArgs a = {};
    a.eps = eps;
    a.e = e, a.d = d, a.inter = inter;
    a.k = (int)k, a.renorm = renormalize != 0;
    a.res = (const uint16_t *)res;
    a.sigmoid = 1, a.n_group = (int)n_group, a.topk_group = (int)topk_group, a.bias = bias, a.scaling = scaling;
    return ms_run(a, x, norm_w, norm_dtype, router_w, tab_gate, tab_up, tab_down, shared_gate, shared_up,
                  shared_down, nullptr, shared_inter, logits, idx, weights, h, out, act_dtype);
}
