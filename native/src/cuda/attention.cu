/* Attention and KV cache on the device (semantics of src/cpu/attention.c).
 *  - split-K kernel (any dtype, any tq, GQA groups share each K/V read): decode and small prefill;
 *    each block covers one query token, one kv head (its group of query heads) and one slice of
 *    the keys; slices are merged by a second kernel.
 *  - flash-style prefill (bf16, head_dim 64 or 128): WMMA tensor-core tiles of 64 queries x 64
 *    keys, online softmax in fp32 (probabilities rounded to bf16 for the P.V product).
 *  - the CUDA-graph decoder's step kernels: q/k RMSNorm + RoPE + cache append in one launch, and
 *    attention whose kv length is read from device memory. */
#include <mma.h>

#include "common.cuh"

using namespace nvcuda;

#define AT_GMAX 8   /* query heads per block */
#define AT_DMAX 8   /* head_dim / 32 slots per lane (head_dim <= 256) */

struct AttnArgs {
    const void *q, *k, *v;
    void *out;
    int64_t tq, nh, nkv, hd, hdv, ldq, ldo, kv_len, khs, kps, vhs, vps, q_pos;
    int causal;
    const int32_t *cu;
    int64_t n_seqs;
    float scale;
    int qd, kd;
    const int32_t *pos_dev; /* graph decode: q_pos = *pos_dev, kv_len = q_pos + tq */
    int nsplit;
    float *ws_o, *ws_ml; /* [tq, nh, nsplit, hdv], [tq, nh, nsplit, 2] when nsplit > 1 */
};

__global__ void __launch_bounds__(128) attn_split_kernel(AttnArgs a) {
    __shared__ float qs[AT_GMAX][AT_DMAX * 32];
    __shared__ float wm[4][AT_GMAX], wl[4][AT_GMAX];
    __shared__ float wacc[4][AT_GMAX][AT_DMAX * 32];
    const int64_t i = blockIdx.z;
    const int64_t G = a.nh / a.nkv;
    const int64_t gchunks = (G + AT_GMAX - 1) / AT_GMAX;
    const int64_t h = blockIdx.y / gchunks, g0 = (blockIdx.y % gchunks) * AT_GMAX;
    const int gc = (int)min((int64_t)AT_GMAX, G - g0);
    const int split = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t q_pos = a.q_pos, kv_len = a.kv_len;
    if (a.pos_dev) {
        q_pos = *a.pos_dev;
        kv_len = q_pos + a.tq;
    }
    /* visible keys [lo, hi) */
    int64_t lo = 0, hi = kv_len;
    if (a.cu) {
        int64_t s = 0;
        while (s + 1 < a.n_seqs && a.cu[s + 1] <= i) s++;
        lo = a.cu[s];
        hi = a.causal ? i + 1 : a.cu[s + 1];
    } else if (a.causal) {
        hi = q_pos + i + 1;
        if (hi > kv_len) hi = kv_len;
    }
    int64_t span = hi > lo ? hi - lo : 0;
    int64_t chunk = (span + a.nsplit - 1) / a.nsplit;
    int64_t s0 = lo + split * chunk, s1 = min(hi, s0 + chunk);
    const int nd = (int)((a.hd + 31) / 32), ndv = (int)((a.hdv + 31) / 32);
    for (int g = 0; g < gc; g++)
        for (int64_t d = threadIdx.x; d < a.hd; d += blockDim.x)
            qs[g][d] = ldf(a.q, a.qd, i * a.ldq + (h * G + g0 + g) * a.hd + d);
    __syncthreads();
    float m[AT_GMAX], l[AT_GMAX], acc[AT_GMAX][AT_DMAX];
#pragma unroll
    for (int g = 0; g < AT_GMAX; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int j = 0; j < AT_DMAX; j++) acc[g][j] = 0.0f;
    }
    for (int64_t p = s0 + warp; p < s1; p += 4) {
        float kr[AT_DMAX], vr[AT_DMAX];
#pragma unroll
        for (int j = 0; j < AT_DMAX; j++) {
            int64_t d = lane + 32 * j;
            kr[j] = (j < nd && d < a.hd) ? ldf(a.k, a.kd, h * a.khs + p * a.kps + d) : 0.0f;
            vr[j] = (j < ndv && d < a.hdv) ? ldf(a.v, a.kd, h * a.vhs + p * a.vps + d) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < AT_GMAX; g++) {
            if (g >= gc) break;
            float dot = 0.0f;
#pragma unroll
            for (int j = 0; j < AT_DMAX; j++)
                if (j < nd && lane + 32 * j < a.hd) dot += qs[g][lane + 32 * j] * kr[j];
            float s = warp_sum(dot) * a.scale;
            float mn = fmaxf(m[g], s);
            float alpha = expf(m[g] - mn), pe = expf(s - mn);
            l[g] = l[g] * alpha + pe;
#pragma unroll
            for (int j = 0; j < AT_DMAX; j++) acc[g][j] = acc[g][j] * alpha + pe * vr[j];
            m[g] = mn;
        }
    }
    /* merge the 4 warps */
    if (lane == 0)
        for (int g = 0; g < gc; g++) {
            wm[warp][g] = m[g];
            wl[warp][g] = l[g];
        }
    for (int g = 0; g < gc; g++)
#pragma unroll
        for (int j = 0; j < AT_DMAX; j++)
            if (j < ndv) wacc[warp][g][lane + 32 * j] = acc[g][j];
    __syncthreads();
    for (int e = threadIdx.x; e < gc * ndv * 32; e += blockDim.x) {
        int g = e / (ndv * 32), d = e % (ndv * 32);
        if (d >= a.hdv) continue;
        float M = -INFINITY;
        for (int w = 0; w < 4; w++) M = fmaxf(M, wm[w][g]);
        float L = 0.0f, O = 0.0f;
        if (M != -INFINITY)
            for (int w = 0; w < 4; w++) {
                float f = expf(wm[w][g] - M);
                L += wl[w][g] * f;
                O += wacc[w][g][d] * f;
            }
        int64_t hq = h * G + g0 + g;
        if (a.nsplit == 1) {
            stf(a.out, a.qd, i * a.ldo + hq * a.hdv + d, L > 0.0f ? O / L : 0.0f);
        } else {
            int64_t slot = (i * a.nh + hq) * a.nsplit + split;
            a.ws_o[slot * a.hdv + d] = O;
            if (d == 0) {
                a.ws_ml[slot * 2] = M;
                a.ws_ml[slot * 2 + 1] = L;
            }
        }
    }
}

__global__ void attn_merge_kernel(AttnArgs a) {
    int64_t row = blockIdx.x; /* i * nh + hq */
    int64_t i = row / a.nh, hq = row - i * a.nh;
    float M = -INFINITY;
    for (int s = 0; s < a.nsplit; s++) M = fmaxf(M, a.ws_ml[(row * a.nsplit + s) * 2]);
    for (int64_t d = threadIdx.x; d < a.hdv; d += blockDim.x) {
        float L = 0.0f, O = 0.0f;
        if (M != -INFINITY)
            for (int s = 0; s < a.nsplit; s++) {
                int64_t slot = row * a.nsplit + s;
                float f = expf(a.ws_ml[slot * 2] - M);
                L += a.ws_ml[slot * 2 + 1] * f;
                O += a.ws_o[slot * a.hdv + d] * f;
            }
        stf(a.out, a.qd, i * a.ldo + hq * a.hdv + d, L > 0.0f ? O / L : 0.0f);
    }
}

static int launch_split(AttnArgs &a) {
    int64_t G = a.nh / a.nkv, gchunks = (G + AT_GMAX - 1) / AT_GMAX;
    dim3 grid((unsigned)a.nsplit, (unsigned)(a.nkv * gchunks), (unsigned)a.tq);
    attn_split_kernel<<<grid, 128, 0, toc_stream()>>>(a);
    TOC_LAUNCHED("attn_split_kernel");
    if (a.nsplit > 1) {
        attn_merge_kernel<<<(unsigned)(a.tq * a.nh), 128, 0, toc_stream()>>>(a);
        TOC_LAUNCHED("attn_merge_kernel");
    }
    return TO_OK;
}

/* ---- flash prefill (bf16, WMMA) ---- */
#define FA_BQ 64
#define FA_BK 64
template <int HD>
struct FaSmem {
    static const int LQ = HD + 8, LS = FA_BK + 4, LP = FA_BK + 8, LO = HD + 4;
    static const size_t q = FA_BQ * LQ * 2, k = FA_BK * LQ * 2, v = FA_BK * LQ * 2,
                        s = 4 * 16 * LS * 4, p = 4 * 16 * LP * 2, o = 4 * 16 * LO * 4,
                        st = FA_BQ * 2 * 4;
    static const size_t total = q + k + v + s + p + o + st;
};

template <int HD>
__global__ void __launch_bounds__(128) flash_prefill_kernel(AttnArgs a) {
    typedef FaSmem<HD> L;
    extern __shared__ __align__(128) unsigned char smem[];
    uint16_t *Qs = (uint16_t *)smem;
    uint16_t *Ks = (uint16_t *)(smem + L::q);
    uint16_t *Vs = (uint16_t *)(smem + L::q + L::k);
    float *Ss = (float *)(smem + L::q + L::k + L::v);
    uint16_t *Ps = (uint16_t *)(smem + L::q + L::k + L::v + L::s);
    float *Os = (float *)(smem + L::q + L::k + L::v + L::s + L::p);
    float *Ms = (float *)(smem + L::q + L::k + L::v + L::s + L::p + L::o);
    float *Ls = Ms + FA_BQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t qt = blockIdx.x, hq = blockIdx.y, h = hq / (a.nh / a.nkv);
    const int64_t i0 = qt * FA_BQ;
    /* load Q */
    for (int c = threadIdx.x; c < FA_BQ * HD / 8; c += 128) {
        int r = c / (HD / 8), cc = (c % (HD / 8)) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (i0 + r < a.tq) v = *(const uint4 *)((const uint16_t *)a.q + (i0 + r) * a.ldq + hq * HD + cc);
        *(uint4 *)(Qs + r * L::LQ + cc) = v;
    }
    for (int e = threadIdx.x; e < 4 * 16 * L::LO; e += 128) Os[e] = 0.0f;
    if (threadIdx.x < FA_BQ) {
        Ms[threadIdx.x] = -INFINITY;
        Ls[threadIdx.x] = 0.0f;
    }
    int64_t last_q = min(a.tq - 1, i0 + FA_BQ - 1);
    int64_t key_end = a.causal ? min(a.kv_len, a.q_pos + last_q + 1) : a.kv_len;
    float *Sw = Ss + warp * 16 * L::LS;
    uint16_t *Pw = Ps + warp * 16 * L::LP;
    float *Ow = Os + warp * 16 * L::LO;
    for (int64_t k0 = 0; k0 < key_end; k0 += FA_BK) {
        __syncthreads();
        for (int c = threadIdx.x; c < FA_BK * HD / 8; c += 128) {
            int r = c / (HD / 8), cc = (c % (HD / 8)) * 8;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (k0 + r < a.kv_len) {
                kv = *(const uint4 *)((const uint16_t *)a.k + h * a.khs + (k0 + r) * a.kps + cc);
                vv = *(const uint4 *)((const uint16_t *)a.v + h * a.vhs + (k0 + r) * a.vps + cc);
            }
            *(uint4 *)(Ks + r * L::LQ + cc) = kv;
            *(uint4 *)(Vs + r * L::LQ + cc) = vv;
        }
        __syncthreads();
        /* S = Q K^T for this warp's 16 rows */
        {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf[FA_BK / 16];
#pragma unroll
            for (int j = 0; j < FA_BK / 16; j++) wmma::fill_fragment(sf[j], 0.0f);
#pragma unroll
            for (int kk = 0; kk < HD; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
                wmma::load_matrix_sync(fa, (const __nv_bfloat16 *)(Qs + warp * 16 * L::LQ + kk), L::LQ);
#pragma unroll
                for (int j = 0; j < FA_BK / 16; j++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
                    wmma::load_matrix_sync(fb, (const __nv_bfloat16 *)(Ks + j * 16 * L::LQ + kk), L::LQ);
                    wmma::mma_sync(sf[j], fa, fb, sf[j]);
                }
            }
#pragma unroll
            for (int j = 0; j < FA_BK / 16; j++)
                wmma::store_matrix_sync(Sw + j * 16, sf[j], L::LS, wmma::mem_row_major);
        }
        __syncwarp();
        /* online softmax: lane pair (2r, 2r+1) owns row r, 32 columns each */
        {
            int r = lane >> 1, half = lane & 1;
            int64_t qi = i0 + warp * 16 + r;
            int64_t limit = a.causal ? min(a.kv_len, a.q_pos + qi + 1) : a.kv_len;
            float mx = -INFINITY;
            for (int c = half * 32; c < half * 32 + 32; c++) {
                float s = Sw[r * L::LS + c] * a.scale;
                if (k0 + c >= limit || qi >= a.tq) s = -INFINITY;
                Sw[r * L::LS + c] = s;
                mx = fmaxf(mx, s);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            int row = warp * 16 + r;
            float mo = Ms[row], mn = fmaxf(mo, mx);
            float alpha = mn == -INFINITY ? 1.0f : expf(mo - mn);
            float sum = 0.0f;
            for (int c = half * 32; c < half * 32 + 32; c++) {
                float s = Sw[r * L::LS + c];
                float p = s == -INFINITY ? 0.0f : rbf(expf(s - mn));
                sum += p;
                Pw[r * L::LP + c] = f2bf(p);
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            for (int c = half * (HD / 2); c < half * (HD / 2) + HD / 2; c++) Ow[r * L::LO + c] *= alpha;
            __syncwarp();
            if (half == 0) {
                Ms[row] = mn;
                Ls[row] = Ls[row] * alpha + sum;
            }
        }
        __syncwarp();
        /* O += P V */
        {
#pragma unroll
            for (int j = 0; j < HD / 16; j++) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
                wmma::load_matrix_sync(of, Ow + j * 16, L::LO, wmma::mem_row_major);
#pragma unroll
                for (int kk = 0; kk < FA_BK; kk += 16) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
                    wmma::load_matrix_sync(fa, (const __nv_bfloat16 *)(Pw + kk), L::LP);
                    wmma::load_matrix_sync(fb, (const __nv_bfloat16 *)(Vs + kk * L::LQ + j * 16), L::LQ);
                    wmma::mma_sync(of, fa, fb, of);
                }
                wmma::store_matrix_sync(Ow + j * 16, of, L::LO, wmma::mem_row_major);
            }
        }
        __syncwarp();
    }
    __syncthreads();
    for (int e = threadIdx.x; e < FA_BQ * HD; e += 128) {
        int r = e / HD, d = e % HD;
        int64_t qi = i0 + r;
        if (qi >= a.tq) continue;
        float l = Ls[r];
        float o = Os[(r / 16) * 16 * L::LO + (r % 16) * L::LO + d];
        ((uint16_t *)a.out)[qi * a.ldo + hq * HD + d] = f2bf(l > 0.0f ? o / l : 0.0f);
    }
}

template <int HD>
static int launch_flash(AttnArgs &a) {
    size_t smem = FaSmem<HD>::total;
    TOC_CHECK((int64_t)smem <= toc_max_smem_optin(), TO_ERR_UNSUPPORTED, "flash attention smem");
    static int configured[16];
    int dev = 0;
    cudaGetDevice(&dev);
    if (!configured[dev & 15]) {
        TOC_CUDA(cudaFuncSetAttribute(flash_prefill_kernel<HD>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 "cudaFuncSetAttribute");
        configured[dev & 15] = 1;
    }
    dim3 grid((unsigned)toc_cdiv(a.tq, FA_BQ), (unsigned)a.nh);
    flash_prefill_kernel<HD><<<grid, 128, smem, toc_stream()>>>(a);
    TOC_LAUNCHED("flash_prefill_kernel");
    return TO_OK;
}

/* attention workspace for split-K (grown outside graph capture) */
static float *g_ws[16];
static size_t g_ws_size[16];
static int workspace(size_t floats, float **out) {
    int dev = 0;
    cudaGetDevice(&dev);
    dev &= 15;
    if (g_ws_size[dev] < floats) {
        if (g_ws[dev]) {
            TOC_CUDA(cudaStreamSynchronize(toc_stream()), "cudaStreamSynchronize");
            cudaFree(g_ws[dev]);
            g_ws[dev] = nullptr;
            g_ws_size[dev] = 0;
        }
        TOC_CUDA(cudaMalloc((void **)&g_ws[dev], floats * 4), "cudaMalloc (attention workspace)");
        g_ws_size[dev] = floats;
    }
    *out = g_ws[dev];
    return TO_OK;
}

static int choose_splits(int64_t tq, int64_t nkv, int64_t G, int64_t span) {
    int64_t blocks = tq * nkv * ((G + AT_GMAX - 1) / AT_GMAX);
    int64_t want = toc_cdiv(2 * toc_sm_count(), blocks);
    int64_t by_len = toc_cdiv(span, 64);
    int64_t s = min(want, by_len);
    if (s < 1) s = 1;
    if (s > 64) s = 64;
    return (int)s;
}

TOC_EXPORT int toc_attention(const void *q, const void *k, const void *v, void *out, int64_t tq,
                             int64_t nh, int64_t nkv, int64_t hd_qk, int64_t hd_v, int64_t ldq,
                             int64_t ldo, int64_t kv_len, int64_t k_head_stride,
                             int64_t k_pos_stride, int64_t v_head_stride, int64_t v_pos_stride,
                             int64_t q_pos, int causal, const int32_t *cu_seqlens, int64_t n_seqs,
                             float scale, int q_dtype, int kv_dtype) {
    TOC_CHECK(tq >= 0 && nh >= 1 && nkv >= 1 && nh % nkv == 0, TO_ERR_INVALID_ARGUMENT,
              "toc_attention: nh %lld must be a positive multiple of nkv %lld", (long long)nh,
              (long long)nkv);
    TOC_CHECK(hd_qk >= 1 && hd_qk <= 32 * AT_DMAX && hd_v >= 1 && hd_v <= 32 * AT_DMAX,
              TO_ERR_UNSUPPORTED, "toc_attention: head dims %lld/%lld (<= %d supported)",
              (long long)hd_qk, (long long)hd_v, 32 * AT_DMAX);
    TOC_CHECK(ldq >= nh * hd_qk && ldo >= nh * hd_v && kv_len >= 0 && q_pos >= 0,
              TO_ERR_INVALID_ARGUMENT, "toc_attention: bad strides or lengths");
    TOC_CHECK(toc_is_act(q_dtype) && toc_is_act(kv_dtype), TO_ERR_DTYPE, "toc_attention: dtypes");
    TOC_CHECK(cu_seqlens || !causal || q_pos + tq <= kv_len, TO_ERR_SHAPE,
              "toc_attention: causal queries at %lld..%lld need kv_len >= %lld (got %lld)",
              (long long)q_pos, (long long)(q_pos + tq - 1), (long long)(q_pos + tq),
              (long long)kv_len);
    TOC_CHECK(!cu_seqlens || (n_seqs >= 1 && tq == kv_len), TO_ERR_INVALID_ARGUMENT,
              "toc_attention: segments need n_seqs >= 1 and tq == kv_len");
    if (tq == 0) return TO_OK;
    TOC_CHECK(q && k && v && out, TO_ERR_INVALID_ARGUMENT, "toc_attention: NULL pointer");
    TOC_READY();
    AttnArgs a = {q, k, v, out, tq, nh, nkv, hd_qk, hd_v, ldq, ldo, kv_len, k_head_stride,
                  k_pos_stride, v_head_stride, v_pos_stride, q_pos, causal, cu_seqlens, n_seqs,
                  scale, q_dtype, kv_dtype, nullptr, 1, nullptr, nullptr};
    bool flash = tq >= 32 && !cu_seqlens && q_dtype == TO_BF16 && kv_dtype == TO_BF16 &&
                 hd_qk == hd_v && (hd_qk == 64 || hd_qk == 128) && ldq % 8 == 0 && ldo % 8 == 0 &&
                 k_head_stride % 8 == 0 && k_pos_stride % 8 == 0 && v_head_stride % 8 == 0 &&
                 v_pos_stride % 8 == 0 && ((uintptr_t)q & 15) == 0 && ((uintptr_t)k & 15) == 0 &&
                 ((uintptr_t)v & 15) == 0;
    if (flash) return hd_qk == 128 ? launch_flash<128>(a) : launch_flash<64>(a);
    a.nsplit = choose_splits(tq, nkv, nh / nkv, cu_seqlens ? tq : kv_len);
    if (a.nsplit > 1) {
        float *ws;
        size_t slots = (size_t)tq * nh * a.nsplit;
        int rc = workspace(slots * (hd_v + 2), &ws);
        if (rc) return rc;
        a.ws_o = ws;
        a.ws_ml = ws + slots * hd_v;
    }
    return launch_split(a);
}

/* Graph decode attention: one new query token at position *pos (device int32), kv_len = *pos + 1,
 * over [nkv, capacity, hd] caches; nsplit fixed at capture time; workspace of at least
 * nh * nsplit * (hd + 2) floats. */
TOC_EXPORT int toc_attention_decode(const void *q, const void *k_cache, const void *v_cache,
                                    void *out, int64_t nh, int64_t nkv, int64_t hd,
                                    int64_t capacity, const int32_t *pos, float scale, int q_dtype,
                                    int kv_dtype, int nsplit, float *workspace_buf) {
    TOC_CHECK(nh >= 1 && nkv >= 1 && nh % nkv == 0 && hd >= 1 && hd <= 32 * AT_DMAX &&
                  capacity >= 1 && nsplit >= 1 && nsplit <= 1024,
              TO_ERR_INVALID_ARGUMENT, "toc_attention_decode: bad sizes");
    TOC_CHECK(toc_is_act(q_dtype) && toc_is_act(kv_dtype), TO_ERR_DTYPE, "toc_attention_decode: dtypes");
    TOC_CHECK(q && k_cache && v_cache && out && pos && (nsplit == 1 || workspace_buf),
              TO_ERR_INVALID_ARGUMENT, "toc_attention_decode: NULL pointer");
    TOC_READY();
    AttnArgs a = {q, k_cache, v_cache, out, 1, nh, nkv, hd, hd, nh * hd, nh * hd, 0,
                  capacity * hd, hd, capacity * hd, hd, 0, 1, nullptr, 0, scale, q_dtype, kv_dtype,
                  pos, nsplit, workspace_buf, workspace_buf ? workspace_buf + (size_t)nh * nsplit * hd : nullptr};
    return launch_split(a);
}

/* ---- kv cache append ---- */
__global__ void kv_append_kernel(const void *src, void *cache, int64_t t, int64_t nkv, int64_t hd,
                                 int64_t max_len, int64_t pos, int sd, int cd) {
    int64_t n = t * nkv * hd;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / (nkv * hd), rem = e - i * nkv * hd, h = rem / hd, d = rem - h * hd;
        stf(cache, cd, (h * max_len + pos + i) * hd + d, ldf(src, sd, e));
    }
}
TOC_EXPORT int toc_kv_cache_append(const void *k_new, const void *v_new, void *k_cache,
                                   void *v_cache, int64_t t, int64_t nkv, int64_t hd_k,
                                   int64_t hd_v, int64_t max_len, int64_t pos, int src_dtype,
                                   int cache_dtype) {
    TOC_CHECK(t >= 0 && nkv >= 1 && hd_k >= 1 && max_len >= 0 && pos >= 0, TO_ERR_INVALID_ARGUMENT,
              "toc_kv_cache_append: bad sizes");
    TOC_CHECK(pos + t <= max_len, TO_ERR_SHAPE, "toc_kv_cache_append: writing %lld tokens at %lld "
              "overflows the cache of %lld positions", (long long)t, (long long)pos, (long long)max_len);
    TOC_CHECK((v_new == NULL) == (v_cache == NULL), TO_ERR_INVALID_ARGUMENT,
              "toc_kv_cache_append: v_new and v_cache must both be given or both be NULL");
    TOC_CHECK(toc_is_act(src_dtype) && toc_is_act(cache_dtype), TO_ERR_DTYPE,
              "toc_kv_cache_append: dtypes");
    if (t == 0) return TO_OK;
    TOC_CHECK(k_new && k_cache, TO_ERR_INVALID_ARGUMENT, "toc_kv_cache_append: NULL pointer");
    TOC_READY();
    kv_append_kernel<<<toc_grid(t * nkv * hd_k, 256), 256, 0, toc_stream()>>>(
        k_new, k_cache, t, nkv, hd_k, max_len, pos, src_dtype, cache_dtype);
    TOC_LAUNCHED("kv_append_kernel");
    if (v_new) {
        TOC_CHECK(hd_v >= 1, TO_ERR_INVALID_ARGUMENT, "toc_kv_cache_append: hd_v");
        kv_append_kernel<<<toc_grid(t * nkv * hd_v, 256), 256, 0, toc_stream()>>>(
            v_new, v_cache, t, nkv, hd_v, max_len, pos, src_dtype, cache_dtype);
        TOC_LAUNCHED("kv_append_kernel");
    }
    return TO_OK;
}

/* ---- graph decode: q/k RMSNorm + NeoX RoPE + cache append, one warp per head ----
 * qkv: one token's [q (nh*hd) | k (nkv*hd) | v (nkv*hd)] of act dtype; q is rotated in place; k/v
 * are written into the caches at *pos. cos/sin: [capacity, hd] tables of act dtype. */
__global__ void qk_rope_append_kernel(void *qkv, const void *qn, const void *kn, int nwd, float eps,
                                      const void *cosb, const void *sinb, const int32_t *pos,
                                      void *kc, void *vc, int64_t nh, int64_t nkv, int64_t hd,
                                      int64_t cap, int ad, int cd) {
    __shared__ float buf[4][256];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t head = (int64_t)blockIdx.x * 4 + warp;
    if (head >= nh + 2 * nkv) return;
    int64_t p = *pos;
    float *row = buf[warp];
    if (head >= nh + nkv) { /* v */
        int64_t h = head - nh - nkv;
        for (int64_t d = lane; d < hd; d += 32)
            stf(vc, cd, (h * cap + p) * hd + d, ldf(qkv, ad, head * hd + d));
        return;
    }
    const void *nw = head < nh ? qn : kn;
    for (int64_t d = lane; d < hd; d += 32) row[d] = ldf(qkv, ad, head * hd + d);
    __syncwarp();
    if (nw) {
        float ss = 0.0f;
        for (int64_t d = lane; d < hd; d += 32) ss += row[d] * row[d];
        ss = warp_sum(ss);
        float r = 1.0f / sqrtf(ss / (float)hd + eps);
        __syncwarp();
        for (int64_t d = lane; d < hd; d += 32) row[d] = rnd(ad, ldf(nw, nwd, d) * rnd(ad, row[d] * r));
        __syncwarp();
    }
    int64_t half = hd / 2;
    bool bf = ad == TO_BF16;
    float o1v[4], o2v[4];
    int cnt = 0;
    for (int64_t i = lane; i < half; i += 32, cnt++) {
        float o1, o2;
        rope_pair_dev(row[i], row[i + half], ldf(cosb, ad, p * hd + i), ldf(sinb, ad, p * hd + i), bf,
                      o1, o2);
        o1v[cnt] = rnd(ad, o1);
        o2v[cnt] = rnd(ad, o2);
    }
    __syncwarp();
    cnt = 0;
    for (int64_t i = lane; i < half; i += 32, cnt++) {
        row[i] = o1v[cnt];
        row[i + half] = o2v[cnt];
    }
    __syncwarp();
    if (head < nh) {
        for (int64_t d = lane; d < hd; d += 32) stf(qkv, ad, head * hd + d, row[d]);
    } else {
        int64_t h = head - nh;
        for (int64_t d = lane; d < hd; d += 32) stf(kc, cd, (h * cap + p) * hd + d, row[d]);
    }
}
TOC_EXPORT int toc_qk_rope_append(void *qkv, const void *q_norm, const void *k_norm, int norm_dtype,
                                  float eps, const void *cos, const void *sin, const int32_t *pos,
                                  void *k_cache, void *v_cache, int64_t nh, int64_t nkv, int64_t hd,
                                  int64_t capacity, int act_dtype, int cache_dtype) {
    TOC_CHECK(nh >= 1 && nkv >= 1 && hd >= 2 && hd % 2 == 0 && hd <= 256 && capacity >= 1,
              TO_ERR_INVALID_ARGUMENT, "toc_qk_rope_append: bad sizes");
    TOC_CHECK(toc_is_act(act_dtype) && toc_is_act(cache_dtype) &&
                  (!(q_norm || k_norm) || toc_is_wt(norm_dtype)),
              TO_ERR_DTYPE, "toc_qk_rope_append: dtypes");
    TOC_CHECK(qkv && cos && sin && pos && k_cache && v_cache, TO_ERR_INVALID_ARGUMENT,
              "toc_qk_rope_append: NULL pointer");
    TOC_READY();
    int64_t heads = nh + 2 * nkv;
    qk_rope_append_kernel<<<(unsigned)toc_cdiv(heads, 4), 128, 0, toc_stream()>>>(
        qkv, q_norm, k_norm, norm_dtype, eps, cos, sin, pos, k_cache, v_cache, nh, nkv, hd, capacity,
        act_dtype, cache_dtype);
    TOC_LAUNCHED("qk_rope_append_kernel");
    return TO_OK;
}

/* ---- graph decode: end of step ----
 * token = the argmax packed by toc_gemv_fused; tok[0] = token; tokens[*step] = token (when
 * *step < max_steps); *step += 1; *pos += 1; the packed argmax is reset to 0. */
__global__ void step_end_kernel(unsigned long long *am, int32_t *tok, int32_t *pos, int32_t *tokens,
                                int32_t *step, int max_steps) {
    unsigned long long v = *am;
    int32_t t = (int32_t)(0xffffffffu - (uint32_t)(v & 0xffffffffu));
    if (v == 0) t = 0;
    tok[0] = t;
    int s = *step;
    if (s < max_steps) tokens[s] = t;
    *step = s + 1;
    *pos = *pos + 1;
    *am = 0;
}
TOC_EXPORT int toc_decode_step_end(void *argmax, int32_t *tok, int32_t *pos, int32_t *tokens,
                                   int32_t *step, int max_steps) {
    TOC_CHECK(argmax && tok && pos && tokens && step && max_steps >= 1, TO_ERR_INVALID_ARGUMENT,
              "toc_decode_step_end: bad arguments");
    TOC_READY();
    step_end_kernel<<<1, 1, 0, toc_stream()>>>((unsigned long long *)argmax, tok, pos, tokens, step,
                                               max_steps);
    TOC_LAUNCHED("step_end_kernel");
    return TO_OK;
}
