/* Fused batch-1 decode step: one cooperative kernel computes a whole token of a dense pre-norm
 * decoder (the Qwen3 layout; see to_decoder_desc in tensor_ops.h).
 *
 * Why one kernel: at batch 1 every weight is read once per token, and a step of small GEMVs is
 * bound by launch gaps and by the memory latency at the start of each kernel, not by bandwidth
 * (Qwen3-0.6B has ~170 kernels per token in the multi-kernel graph). Here the grid holds one block
 * per multiprocessor for the whole step and stages are separated by grid-wide barriers; each
 * stage issues its first weight loads *before* waiting at the barrier (weights never depend on
 * activations), so the latency of the next stage overlaps the tail of the previous one.
 *
 * Stages per layer (a barrier after each):
 *   qkv      RMSNorm(x) staged in shared memory, [q; k; v] rows split evenly over the blocks
 *   attention one (kv head, key slice) unit per block: q/k RMSNorm + NeoX RoPE of the new token,
 *            cache append, online softmax over the slice; the last slice of a kv head to finish
 *            merges the slices (no extra kernel or barrier)
 *   o_proj   + residual add (x2 = x + o)
 *   gate/up  RMSNorm(x2), SwiGLU of the two rows (h)
 *   down     + residual add (x = x2 + d)
 * then RMSNorm + LM head with a packed greedy argmax, and the token feedback (next token, position,
 * step) in block 0. Rounding follows the op-by-op path: every intermediate that the separate ops
 * store is rounded to the activation dtype at the same point.
 *
 * GEMV work split: a block owns a contiguous range of output rows; a "unit" is 32 consecutive
 * 16-byte chunks of one row (one per lane). Warps take units round-robin, DK_U at a time, with the
 * next batch loaded while the current one is computed; unit sums go to shared memory and each row
 * is summed in a fixed order, so results are deterministic. */
#include <new>

#include "common.cuh"

#define DK_THREADS 512
#define DK_WARPS (DK_THREADS / 32)
#define DK_U 8        /* units (one 16-byte load per lane each) in flight per warp */
#define DK_PART 8192  /* unit sums per row batch (floats of shared memory) */
#define DK_GMAX 8     /* query heads per kv head (kernels for up to 2, 4 and 8) */
#define DK_DMAX 8     /* head_dim / 32 (kernels for up to 2, 4 and 8) */

enum { DK_PLAIN = 0, DK_RES = 1, DK_SWIGLU = 2, DK_ARGMAX = 3 };

struct DkState {
    to_decoder_desc d;
    const to_decoder_layer *layers; /* device copy */
    void *x, *x2, *qkv, *attn, *h;  /* activations (act dtype) */
    float *ws;                      /* attention slices: [nh][nsplit][hd] then [nh][nsplit][2] */
    unsigned long long *bar;        /* [0] arrivals, [1] count at the end of the last launch */
    unsigned *att_cnt;              /* [nkv] finished slices */
    unsigned long long *argmax;
    int nsplit;
    int kmax; /* floats of the staging area */
    unsigned long long *prof; /* see DkSync */
    int prof_first;
};

struct DkGemv {
    const uint16_t *w0, *w1, *w2; /* row segments (q, k, v) or gate/up */
    int64_t s0, s1;               /* rows of w0, of w1 */
    int64_t n;                    /* output rows */
    int64_t k;
    int mode;
    const void *src; /* input vector */
    const void *norm;
    float eps;
    void *y;
    const void *res;
};

/* Everything the step reads and writes besides the weights is bf16 (activations, KV cache, norm
 * weights, embedding): no dtype switches, so the kernel's code stays small enough for the
 * instruction cache (a dtype-generic version was ~250 KB and ran each stage from cold cache).
 * Activations written by other blocks in this launch are read through L2 (ld.global.cg), never
 * from a possibly stale L1 line of an earlier stage. */
__device__ __forceinline__ float ldcg(const void *p, int64_t i) {
    return bf2f(__ldcg((const unsigned short *)p + i));
}
__device__ __forceinline__ float ldw(const void *p, int64_t i) {
    return bf2f(__ldg((const unsigned short *)p + i));
}
__device__ __forceinline__ void stb(void *p, int64_t i, float v) { ((uint16_t *)p)[i] = f2bf(v); }

/* Grid barrier: a 64-bit arrival counter that only grows. A launch starts from the count saved in
 * bar[1] by the previous launch (after its last barrier, so every block has read it before it can
 * change); barrier i of this launch completes when the count reaches base + i * gridDim.x. One
 * fire-and-forget add and a polling read per block; nothing to reset between launches. */
struct DkSync {
    unsigned long long *count;
    unsigned long long target;
    unsigned long long *prof; /* profiling: [block][2 * DK_PROF] arrival/departure times, or NULL */
    int n, first;             /* barriers passed; first one recorded */
};
#define DK_PROF 8

__device__ __forceinline__ unsigned long long dk_now(void) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ unsigned long long dk_load_acquire(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void dk_sync(DkSync &s) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const int slot = s.n - s.first;
        const bool rec = s.prof && slot >= 0 && slot < DK_PROF;
        if (rec) s.prof[(size_t)blockIdx.x * 2 * DK_PROF + 2 * slot] = dk_now();
        s.target += gridDim.x;
        __threadfence();
        asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(s.count) : "memory");
        while (dk_load_acquire(s.count) < s.target) {
        }
        if (rec) s.prof[(size_t)blockIdx.x * 2 * DK_PROF + 2 * slot + 1] = dk_now();
        s.n++;
    }
    __syncthreads();
}


/* Weight row of block-local virtual row vr of the current row batch (rb0, nrb rows). */
__device__ __forceinline__ const uint16_t *dk_row(int mode, const uint16_t *w0, const uint16_t *w1,
                                                  const uint16_t *w2, int64_t s0, int64_t s1,
                                                  int64_t k, int64_t rb0, int64_t nrb, int64_t vr) {
    if (mode == DK_SWIGLU) return vr < nrb ? w0 + (rb0 + vr) * k : w1 + (rb0 + vr - nrb) * k;
    int64_t r = rb0 + vr;
    if (r < s0) return w0 + r * k;
    r -= s0;
    if (r < s1) return w1 + r * k;
    return w2 + (r - s1) * k;
}

/* Row pointer of virtual row vr and the first virtual row after it in another segment (kept out
 * of line: the loader calls it only when it crosses a segment). */
__device__ __noinline__ const uint16_t *dk_seek(const DkGemv &g, int64_t rb0, int64_t nrb, int64_t vr,
                                                int *bound) {
    int64_t end;
    if (g.mode == DK_SWIGLU) {
        end = vr < nrb ? nrb : 2 * nrb;
    } else {
        const int64_t r = rb0 + vr;
        end = (r < g.s0 ? g.s0 : r < g.s0 + g.s1 ? g.s0 + g.s1 : g.n) - rb0;
        if (end > nrb) end = nrb;
    }
    *bound = (int)end;
    return dk_row(g.mode, g.w0, g.w1, g.w2, g.s0, g.s1, g.k, rb0, nrb, vr);
}

/* One GEMV stage. sync: the barrier to pass after the first weight loads (NULL at the start of the
 * kernel). write_x: block 0 also stores the staged input into st.x (the embedding of layer 0).
 * Each warp takes a contiguous range of units, so its loads walk each row in order and the unit
 * indices advance without divisions. */
__device__ __noinline__ void dk_gemv(const DkState &st, const DkGemv &gp, float *smem, DkSync *sync,
                                     bool write_x) {
    const DkGemv g = gp; /* fields in registers, not re-read through the stack */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t k = g.k;
    const int nv = (int)(k / 8), G = (nv + 31) / 32;
    const int64_t nb = gridDim.x, b = blockIdx.x;
    const int64_t r0 = g.n * b / nb, r1 = g.n * (b + 1) / nb, nr = r1 - r0;
    const int mult = g.mode == DK_SWIGLU ? 2 : 1;
    int per = DK_PART / (G * mult);
    if (per < 1) per = 1;
    float *xs = smem;
    float *part = smem + st.kmax;
    float *red = part + DK_PART;
    unsigned long long *redk = (unsigned long long *)(red + 64);

    int64_t rb0 = r0;
    int nrb = (int)(nr < per ? nr : per);
    /* loader state of this warp: next unit (lu < lend), its row and 32-chunk group */
    int lu = 0, lend = 0, lvr = 0, lgi = 0, lbound = 0;
    const uint16_t *lrow = nullptr;
    auto start_batch = [&]() {
        const int units = nrb * mult * G;
        lu = (int)((int64_t)units * warp / DK_WARPS);
        lend = (int)((int64_t)units * (warp + 1) / DK_WARPS);
        lvr = lu / G;
        lgi = lu - lvr * G;
        lrow = lu < lend ? dk_seek(g, rb0, nrb, lvr, &lbound) : nullptr;
    };
    /* the next unit of this warp's range (zeros past its end); advances the loader */
    auto load_next = [&]() {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (lu < lend) {
            const int c = lgi * 32 + lane;
            if (c < nv) v = __ldg((const uint4 *)lrow + c);
            if (++lgi == G) {
                lgi = 0;
                ++lvr;
                lrow += k;
                if (lvr == lbound && lu + 1 < lend) lrow = dk_seek(g, rb0, nrb, lvr, &lbound);
            }
        }
        ++lu;
        return v;
    };
    auto load = [&](uint4 *v) {
#pragma unroll
        for (int q = 0; q < DK_U; q++) v[q] = load_next();
    };
    uint4 cur[DK_U];
    start_batch();
    int cu0 = lu; /* first unit of cur */
    load(cur);
    /* before the barrier as well: for a residual stage, the residual of this thread's output row
     * (written two barriers ago) */
    const bool res_pre = g.mode == DK_RES && nr <= per && nr <= DK_THREADS;
    const float resv = res_pre && tid < nr ? ldcg(g.res, r0 + tid) : 0.0f;
    if (sync) dk_sync(*sync);

    /* stage the input (RMSNorm'd when asked): each thread normalises the elements it loaded */
    if (g.norm) {
        float ss = 0.0f;
        for (int64_t j = tid; j < k; j += DK_THREADS) {
            const float v = rbf(ldcg(g.src, j));
            if (write_x && b == 0) stb(st.x, j, v);
            xs[j] = v;
            ss += v * v;
        }
        ss = block_sum(ss, red);
        const float rr = 1.0f / sqrtf(ss / (float)k + g.eps);
        for (int64_t j = tid; j < k; j += DK_THREADS)
            xs[j] = rbf(ldw(g.norm, j) * rbf(xs[j] * rr));
    } else {
        for (int64_t j = tid; j < k; j += DK_THREADS) xs[j] = rbf(ldcg(g.src, j));
    }
    __syncthreads();

    unsigned long long best = 0;
    while (nrb > 0) {
        int cgi = cu0 < lend ? cu0 % G : 0; /* group of cur's first unit */
        /* a ring of DK_U loads per lane: each slot is refilled with the unit DK_U ahead as soon
         * as it has been used, so DK_U loads stay in flight */
        while (cu0 < lend) {
#pragma unroll
            for (int q = 0; q < DK_U; q++) {
                if (cu0 + q < lend) { /* warp-uniform */
                    const int c = cgi * 32 + lane;
                    float a = 0.0f;
                    if (c < nv) {
                        float f[8];
                        bf8(cur[q], f);
                        const float4 *xp = (const float4 *)(xs + c * 8);
                        const float4 x0 = xp[0], x1 = xp[1];
                        a = f[0] * x0.x + f[1] * x0.y + f[2] * x0.z + f[3] * x0.w + f[4] * x1.x +
                            f[5] * x1.y + f[6] * x1.z + f[7] * x1.w;
                    }
                    a = warp_sum(a);
                    if (lane == 0) part[cu0 + q] = a;
                    if (++cgi == G) cgi = 0;
                }
                cur[q] = load_next(); /* refill: the loader runs DK_U units ahead */
            }
            cu0 += DK_U;
        }
        __syncthreads();
        for (int vr = tid; vr < nrb; vr += DK_THREADS) {
            const int64_t row = rb0 + vr;
            float acc = 0.0f;
            for (int gi = 0; gi < G; gi++) acc += part[vr * G + gi];
            if (g.mode == DK_SWIGLU) {
                float acc2 = 0.0f;
                for (int gi = 0; gi < G; gi++) acc2 += part[(vr + nrb) * G + gi];
                const float gv = rbf(acc), uv = rbf(acc2);
                stb(g.y, row, rbf(gv / (1.0f + __expf(-gv))) * uv);
            } else if (g.mode == DK_RES) {
                stb(g.y, row, (res_pre ? resv : ldcg(g.res, row)) + rbf(acc));
            } else {
                stb(g.y, row, acc);
                if (g.mode == DK_ARGMAX) {
                    const float rv = rbf(acc);
                    if (rv == rv) {
                        const unsigned long long key = argmax_key(rv, row);
                        if (key > best) best = key;
                    }
                }
            }
        }
        __syncthreads(); /* part is reused by the next row batch */
        rb0 += nrb;
        nrb = (int)(r1 - rb0 < per ? r1 - rb0 : per);
        if (nrb > 0) {
            start_batch();
            cu0 = lu;
            load(cur);
        }
    }
    if (g.mode == DK_ARGMAX) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
            if (other > best) best = other;
        }
        if (lane == 0) redk[warp] = best;
        __syncthreads();
        if (tid == 0) {
            for (int w = 1; w < DK_WARPS; w++)
                if (redk[w] > best) best = redk[w];
            if (best) atomicMax(st.argmax, best);
        }
    }
}

/* One head of the new token in a warp: row[hd] = RoPE(RMSNorm(src[off..off+hd])) rounded to the
 * act dtype (the q/k path of toc_qk_rope_append). All of its loads are issued first. */
__device__ __noinline__ void dk_head(const DkState &st, const void *src, int64_t off, const void *nw, float eps,
                        int64_t p, float *row) {
    const int hd = st.d.head_dim, lane = threadIdx.x & 31;
    const int half = hd / 2;
    float cs[4], sn[4], wv[8];
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const int i = lane + 32 * c;
        cs[c] = i < half ? ldw(st.d.rope_cos, p * hd + i) : 0.0f;
        sn[c] = i < half ? ldw(st.d.rope_sin, p * hd + i) : 0.0f;
    }
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const int d = lane + 32 * c;
        wv[c] = nw && d < hd ? ldw(nw, d) : 0.0f;
    }
    for (int d = lane; d < hd; d += 32) row[d] = ldcg(src, off + d);
    __syncwarp();
    if (nw) {
        float ss = 0.0f;
        for (int d = lane; d < hd; d += 32) ss += row[d] * row[d];
        ss = warp_sum(ss);
        const float r = 1.0f / sqrtf(ss / (float)hd + eps);
        __syncwarp();
#pragma unroll
        for (int c = 0; c < 8; c++) {
            const int d = lane + 32 * c;
            if (d < hd) row[d] = rbf(wv[c] * rbf(row[d] * r));
        }
        __syncwarp();
    }
    const bool bf = true;
    float o1v[4], o2v[4];
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const int i = lane + 32 * c;
        if (i < half) {
            float o1, o2;
            rope_pair_dev(row[i], row[i + half], cs[c], sn[c], bf, o1, o2);
            o1v[c] = rbf(o1);
            o2v[c] = rbf(o2);
        }
    }
    __syncwarp();
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const int i = lane + 32 * c;
        if (i < half) {
            row[i] = o1v[c];
            row[i + half] = o2v[c];
        }
    }
    __syncwarp();
}

/* Attention of the new token at position p over keys [0, p]; see the file comment. GM >= query
 * heads per kv head, ND >= head_dim / 32 (registers hold GM x ND accumulators per lane). The keys
 * are cut into slices of at least DK_MIN_SLICE, so a short context needs no merge; the first keys
 * of each warp are loaded before the new token's q/k are computed. */
#define DK_MIN_SLICE 64
template <int GM, int ND>
__device__ __noinline__ void dk_attention(const DkState &st, const to_decoder_layer &ly, int64_t p,
                                          float *smem) {
    const int nh = st.d.n_heads, nkv = st.d.n_kv_heads, hd = st.d.head_dim, G = nh / nkv;
    const int ns = st.nsplit, nd = hd / 32;
    const int64_t cap = st.d.capacity, kv_len = p + 1;
    int64_t chunk = (kv_len + ns - 1) / ns;
    if (chunk < DK_MIN_SLICE) chunk = DK_MIN_SLICE;
    const int nact = (int)((kv_len + chunk - 1) / chunk); /* slices with keys */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    float *qs = smem;                /* [G][hd] */
    float *kn = qs + G * hd;         /* [hd] new key (as stored in the cache) */
    float *vn = kn + hd;             /* [hd] new value */
    float *wm = vn + hd;             /* [DK_WARPS][G] */
    float *wl = wm + DK_WARPS * G;   /* [DK_WARPS][G] */
    float *wacc = wl + DK_WARPS * G; /* [DK_WARPS][G][hd] */
    __shared__ int last;
    const float scale = st.d.attn_scale;
    constexpr int KEYS = 2; /* keys in flight per warp */
    float *ws_o = st.ws, *ws_ml = st.ws + (size_t)nh * ns * hd;
    for (int unit = blockIdx.x; unit < nkv * ns; unit += gridDim.x) {
        const int h = unit / ns, s = unit - h * ns;
        if (s >= nact) continue; /* block-uniform */
        const int64_t s0 = (int64_t)s * chunk, s1 = min(kv_len, s0 + chunk);
        const bool has_new = s1 == kv_len;
        const int64_t qkv_k = (int64_t)nh * hd + (int64_t)h * hd, qkv_v = qkv_k + (int64_t)nkv * hd;
        const char *kbase = (const char *)ly.k_cache, *vbase = (const char *)ly.v_cache;
        float kr[KEYS][ND], vr[KEYS][ND];
        auto load = [&](int64_t base) {
#pragma unroll
            for (int i = 0; i < KEYS; i++) {
                const int64_t pk = base + (int64_t)DK_WARPS * i;
#pragma unroll
                for (int j = 0; j < ND; j++) {
                    kr[i][j] = vr[i][j] = 0.0f;
                    if (j < nd && pk < s1 && pk != p) {
                        const int64_t off = ((int64_t)h * cap + pk) * hd + lane + 32 * j;
                        kr[i][j] = ldcg(kbase, off);
                        vr[i][j] = ldcg(vbase, off);
                    }
                }
            }
        };
        int64_t base = s0 + warp;
        load(base);
        if (warp < G) {
            dk_head(st, st.qkv, (int64_t)(h * G + warp) * hd, ly.q_norm, ly.qk_eps, p, qs + warp * hd);
        } else if (warp == G && has_new) {
            dk_head(st, st.qkv, qkv_k, ly.k_norm, ly.qk_eps, p, kn);
            for (int d = lane; d < hd; d += 32) {
                stb(ly.k_cache, ((int64_t)h * cap + p) * hd + d, kn[d]);
                kn[d] = rbf(kn[d]);
            }
        } else if (warp == G + 1 && has_new) {
            for (int d = lane; d < hd; d += 32) {
                const float v = ldcg(st.qkv, qkv_v + d);
                stb(ly.v_cache, ((int64_t)h * cap + p) * hd + d, v);
                vn[d] = rbf(v);
            }
        }
        __syncthreads();
        float m[GM], l[GM], acc[GM][ND];
#pragma unroll
        for (int g = 0; g < GM; g++) {
            m[g] = -INFINITY;
            l[g] = 0.0f;
#pragma unroll
            for (int j = 0; j < ND; j++) acc[g][j] = 0.0f;
        }
        while (base < s1) {
#pragma unroll
            for (int i = 0; i < KEYS; i++) {
                const int64_t pk = base + (int64_t)DK_WARPS * i;
                if (pk >= s1) break; /* warp-uniform */
                if (pk == p) {
#pragma unroll
                    for (int j = 0; j < ND; j++) {
                        kr[i][j] = j < nd ? kn[lane + 32 * j] : 0.0f;
                        vr[i][j] = j < nd ? vn[lane + 32 * j] : 0.0f;
                    }
                }
#pragma unroll
                for (int g = 0; g < GM; g++) {
                    if (g >= G) break;
                    float dot = 0.0f;
#pragma unroll
                    for (int j = 0; j < ND; j++)
                        if (j < nd) dot += qs[g * hd + lane + 32 * j] * kr[i][j];
                    const float sc = warp_sum(dot) * scale;
                    const float mn = fmaxf(m[g], sc);
                    const float alpha = __expf(m[g] - mn), pe = __expf(sc - mn);
                    l[g] = l[g] * alpha + pe;
#pragma unroll
                    for (int j = 0; j < ND; j++) acc[g][j] = acc[g][j] * alpha + pe * vr[i][j];
                    m[g] = mn;
                }
            }
            base += (int64_t)DK_WARPS * KEYS;
            if (base < s1) load(base);
        }
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (g >= G) break;
            if (lane == 0) {
                wm[warp * G + g] = m[g];
                wl[warp * G + g] = l[g];
            }
#pragma unroll
            for (int j = 0; j < ND; j++)
                if (j < nd) wacc[(warp * G + g) * hd + lane + 32 * j] = acc[g][j];
        }
        __syncthreads();
        for (int e = tid; e < G * hd; e += DK_THREADS) {
            const int g = e / hd, d = e - g * hd;
            float M = -INFINITY;
#pragma unroll 1
            for (int w = 0; w < DK_WARPS; w++) M = fmaxf(M, wm[w * G + g]);
            float L = 0.0f, O = 0.0f;
            if (M != -INFINITY)
#pragma unroll 1
                for (int w = 0; w < DK_WARPS; w++) {
                    const float f = __expf(wm[w * G + g] - M);
                    L += wl[w * G + g] * f;
                    O += wacc[(w * G + g) * hd + d] * f;
                }
            const int64_t hq = (int64_t)h * G + g;
            if (nact == 1) {
                stb(st.attn, hq * hd + d, L > 0.0f ? O / L : 0.0f);
            } else {
                const int64_t slot = hq * ns + s;
                ws_o[slot * hd + d] = O;
                if (d == 0) {
                    ws_ml[slot * 2] = M;
                    ws_ml[slot * 2 + 1] = L;
                }
            }
        }
        if (nact > 1) {
            /* the last slice of kv head h to finish merges its slices */
            __threadfence();
            __syncthreads();
            if (tid == 0) last = atomicAdd(&st.att_cnt[h], 1u) == (unsigned)nact - 1;
            __syncthreads();
            if (last) {
                __threadfence();
                for (int e = tid; e < G * hd; e += DK_THREADS) {
                    const int g = e / hd, d = e - g * hd;
                    const int64_t hq = (int64_t)h * G + g;
                    float M = -INFINITY;
                    for (int t = 0; t < nact; t++) M = fmaxf(M, __ldcg(ws_ml + (hq * ns + t) * 2));
                    float L = 0.0f, O = 0.0f;
                    if (M != -INFINITY)
                        for (int t = 0; t < nact; t++) {
                            const int64_t slot = hq * ns + t;
                            const float f = __expf(__ldcg(ws_ml + slot * 2) - M);
                            L += __ldcg(ws_ml + slot * 2 + 1) * f;
                            O += __ldcg(ws_o + slot * hd + d) * f;
                        }
                    stb(st.attn, hq * hd + d, L > 0.0f ? O / L : 0.0f);
                }
                if (tid == 0) atomicExch(&st.att_cnt[h], 0u);
            }
        }
        __syncthreads(); /* shared memory is reused by the next unit */
    }
}

template <int GM, int ND>
__global__ void __launch_bounds__(DK_THREADS, 1) decoder_step_kernel(DkState st) {
    extern __shared__ __align__(16) float smem[];
    const to_decoder_desc &d = st.d;
    DkSync sync;
    sync.count = st.bar;
    sync.target = threadIdx.x == 0 ? __ldcg(st.bar + 1) : 0ull;
    sync.prof = st.prof;
    sync.n = 0;
    sync.first = st.prof_first;
    const int32_t tok = __ldcg(d.counters), pos = __ldcg(d.counters + 1);
    if (pos < 0 || pos >= d.capacity) return; /* every block returns: no barrier is left waiting */
    const int64_t hid = d.hidden, nq = (int64_t)d.n_heads * d.head_dim,
                  nkvd = (int64_t)d.n_kv_heads * d.head_dim;
    const int esz = 2;
    const bool tok_ok = tok >= 0 && tok < d.vocab;
    /* an out-of-range id reads row 0 (the host validates ids; the feedback is always in range) */
    const void *erow = (const char *)d.embed + (tok_ok ? (int64_t)tok : 0) * hid * esz;
    const int skip = d.profile_skip;
    /* a stage left out for profiling still passes its barrier */
    auto gemv = [&](int bit, const DkGemv &g, DkSync *s, bool wx) {
        if (skip & bit) {
            if (s) dk_sync(*s);
        } else {
            dk_gemv(st, g, smem, s, wx);
        }
    };
    for (int li = 0; li < d.n_layers; li++) {
        const to_decoder_layer ly = st.layers[li];
        DkGemv g;
        g.w0 = (const uint16_t *)ly.q_proj;
        g.w1 = (const uint16_t *)ly.k_proj;
        g.w2 = (const uint16_t *)ly.v_proj;
        g.s0 = nq;
        g.s1 = nkvd;
        g.n = nq + 2 * nkvd;
        g.k = hid;
        g.mode = DK_PLAIN;
        g.src = li == 0 ? erow : st.x;
        g.norm = ly.input_norm;
        g.eps = ly.input_eps;
        g.y = st.qkv;
        g.res = nullptr;
        gemv(1, g, li == 0 ? nullptr : &sync, li == 0);
        dk_sync(sync);
        if (!(skip & 2)) dk_attention<GM, ND>(st, ly, pos, smem);

        g.w0 = (const uint16_t *)ly.o_proj;
        g.s0 = hid;
        g.s1 = 0;
        g.n = hid;
        g.k = nq;
        g.mode = DK_RES;
        g.src = st.attn;
        g.norm = nullptr;
        g.y = st.x2;
        g.res = st.x;
        gemv(4, g, &sync, false);

        g.w0 = (const uint16_t *)ly.gate_proj;
        g.w1 = (const uint16_t *)ly.up_proj;
        g.s0 = g.s1 = d.intermediate;
        g.n = d.intermediate;
        g.k = hid;
        g.mode = DK_SWIGLU;
        g.src = st.x2;
        g.norm = ly.post_norm;
        g.eps = ly.post_eps;
        g.y = st.h;
        g.res = nullptr;
        gemv(8, g, &sync, false);

        g.w0 = (const uint16_t *)ly.down_proj;
        g.s0 = hid;
        g.s1 = 0;
        g.n = hid;
        g.k = d.intermediate;
        g.mode = DK_RES;
        g.src = st.h;
        g.norm = nullptr;
        g.y = st.x;
        g.res = st.x2;
        gemv(16, g, &sync, false);
    }
    DkGemv g;
    g.w0 = (const uint16_t *)d.lm_head;
    g.w1 = g.w2 = nullptr;
    g.s0 = d.vocab;
    g.s1 = 0;
    g.n = d.vocab;
    g.k = hid;
    g.mode = DK_ARGMAX;
    g.src = st.x;
    g.norm = d.final_norm;
    g.eps = d.final_eps;
    g.y = d.logits;
    g.res = nullptr;
    gemv(32, g, d.n_layers > 0 ? &sync : nullptr, d.n_layers == 0);
    dk_sync(sync);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        /* token feedback: next token, tokens[step], step + 1, position + 1, argmax reset */
        unsigned long long v = *(volatile unsigned long long *)st.argmax;
        int32_t t = v ? (int32_t)(0xffffffffu - (uint32_t)(v & 0xffffffffu)) : 0;
        d.counters[0] = t;
        int32_t s = d.counters[2];
        if (s < d.max_steps) d.tokens[s] = t;
        d.counters[2] = s + 1;
        d.counters[1] = pos + 1;
        *st.argmax = 0;
        st.bar[1] = sync.target; /* where the next launch's barriers start */
    }
}

/* ---------------------------------------------------------------------------------------------
 * Host side */
typedef void (*DkKernel)(DkState);
static DkKernel dk_pick(int G, int hd) {
    const int gi = G <= 2 ? 0 : G <= 4 ? 1 : 2, di = hd <= 64 ? 0 : hd <= 128 ? 1 : 2;
    static const DkKernel table[3][3] = {
        {decoder_step_kernel<2, 2>, decoder_step_kernel<2, 4>, decoder_step_kernel<2, 8>},
        {decoder_step_kernel<4, 2>, decoder_step_kernel<4, 4>, decoder_step_kernel<4, 8>},
        {decoder_step_kernel<8, 2>, decoder_step_kernel<8, 4>, decoder_step_kernel<8, 8>},
    };
    return table[gi][di];
}

struct TocDecoder {
    DkState st;
    DkKernel kernel;
    int dev;
    unsigned grid;
    size_t smem;
    void *allocs[4];
};

static int dk_free_all(TocDecoder *dec) {
    for (void *&p : dec->allocs)
        if (p) {
            toc_free(p);
            p = nullptr;
        }
    return TO_OK;
}

TOC_EXPORT int toc_decoder_create(const to_decoder_desc *desc, const to_decoder_layer *layers,
                                  void **out) {
    TOC_CHECK(desc && layers && out, TO_ERR_INVALID_ARGUMENT, "toc_decoder_create: NULL argument");
    *out = nullptr;
    const to_decoder_desc &d = *desc;
    TOC_CHECK(d.n_layers >= 1 && d.hidden >= 8 && d.hidden % 8 == 0 && d.n_heads >= 1 &&
                  d.n_kv_heads >= 1 && d.n_heads % d.n_kv_heads == 0 &&
                  d.n_heads / d.n_kv_heads <= DK_GMAX && d.head_dim >= 32 && d.head_dim % 32 == 0 &&
                  d.head_dim <= 32 * DK_DMAX && d.intermediate >= 8 && d.intermediate % 8 == 0 &&
                  d.vocab >= 1 && d.capacity >= 1 && d.max_steps >= 1,
              TO_ERR_UNSUPPORTED,
              "toc_decoder_create: unsupported shape (need hidden and intermediate %% 8 == 0, "
              "head_dim a multiple of 32 up to %d, at most %d query heads per kv head)",
              32 * DK_DMAX, DK_GMAX);
    TOC_CHECK(d.act_dtype == TO_BF16 && d.cache_dtype == TO_BF16 && d.norm_dtype == TO_BF16 &&
                  d.embed_dtype == TO_BF16,
              TO_ERR_DTYPE, "toc_decoder_create: activations, cache, norms and embedding must be bf16 (act=%d cache=%d norm=%d embed=%d)",
              d.act_dtype, d.cache_dtype, d.norm_dtype, d.embed_dtype);
    TOC_CHECK(d.embed && d.final_norm && d.lm_head && d.rope_cos && d.rope_sin && d.counters &&
                  d.tokens && d.logits && ((uintptr_t)d.lm_head & 15) == 0,
              TO_ERR_INVALID_ARGUMENT,
              "toc_decoder_create: NULL or misaligned model pointer (the LM head must be 16-byte aligned)");
    for (int i = 0; i < d.n_layers; i++) {
        const to_decoder_layer &l = layers[i];
        const void *w[7] = {l.q_proj, l.k_proj, l.v_proj, l.o_proj, l.gate_proj, l.up_proj, l.down_proj};
        for (const void *p : w)
            TOC_CHECK(p && ((uintptr_t)p & 15) == 0, TO_ERR_INVALID_ARGUMENT,
                      "toc_decoder_create: layer %d: weights must be non-NULL and 16-byte aligned", i);
        TOC_CHECK(l.input_norm && l.post_norm && l.k_cache && l.v_cache, TO_ERR_INVALID_ARGUMENT,
                  "toc_decoder_create: layer %d: NULL norm or cache", i);
    }
    TOC_READY();
    int dev = 0;
    TOC_CUDA(cudaGetDevice(&dev), "cudaGetDevice");
    int coop = 0;
    TOC_CUDA(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev), "cudaDeviceGetAttribute");
    TOC_CHECK(coop, TO_ERR_UNSUPPORTED, "toc_decoder_create: the device has no cooperative launch");

    const int64_t nq = (int64_t)d.n_heads * d.head_dim, nkvd = (int64_t)d.n_kv_heads * d.head_dim;
    int64_t kmax = d.hidden;
    if (nq > kmax) kmax = nq;
    if (d.intermediate > kmax) kmax = d.intermediate;
    kmax = (kmax + 3) / 4 * 4;
    const int64_t G = d.n_heads / d.n_kv_heads;
    const int64_t gemv_floats = kmax + DK_PART + 64 + 2 * DK_WARPS;
    const int64_t att_floats = G * d.head_dim + 2 * d.head_dim + 2 * DK_WARPS * G + DK_WARPS * G * d.head_dim;
    TOC_CHECK(2 * toc_cdiv(kmax, 256) <= DK_PART, TO_ERR_UNSUPPORTED,
              "toc_decoder_create: input width %lld is too large", (long long)kmax);
    const size_t smem = (size_t)(gemv_floats > att_floats ? gemv_floats : att_floats) * 4;
    TOC_CHECK((int64_t)smem <= toc_max_smem_optin(), TO_ERR_UNSUPPORTED,
              "toc_decoder_create: needs %zu bytes of shared memory per block (device allows %d)",
              smem, toc_max_smem_optin());
    const DkKernel kernel = dk_pick((int)G, d.head_dim);
    TOC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)smem),
             "cudaFuncSetAttribute");
    int per_sm = 0;
    TOC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, DK_THREADS, smem),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    TOC_CHECK(per_sm >= 1, TO_ERR_UNSUPPORTED, "toc_decoder_create: the step kernel does not fit a multiprocessor");

    TocDecoder *dec = new (std::nothrow) TocDecoder();
    TOC_CHECK(dec, TO_ERR_OUT_OF_MEMORY, "toc_decoder_create: out of host memory");
    dec->dev = dev;
    dec->kernel = kernel;
    dec->grid = (unsigned)toc_sm_count();
    dec->smem = smem;
    DkState &st = dec->st;
    st.d = d;
    st.kmax = (int)kmax;
    int ns = (int)(dec->grid / d.n_kv_heads); /* one (kv head, slice) unit per block */
    if (ns > d.capacity) ns = d.capacity;
    if (ns < 1) ns = 1;
    st.nsplit = ns;
    const int asz = d.act_dtype == TO_F32 ? 4 : 2;
    const size_t act_bytes = (size_t)(2 * d.hidden + nq + 2 * nkvd + nq + d.intermediate + 64) * asz;
    const size_t ws_bytes = (size_t)d.n_heads * ns * (d.head_dim + 2) * 4;
    const size_t ctl_bytes = 256 + (size_t)d.n_kv_heads * 4;
    const size_t lay_bytes = (size_t)d.n_layers * sizeof(to_decoder_layer);
    int rc = toc_malloc(act_bytes + 256, &dec->allocs[0]);
    if (!rc) rc = toc_malloc(ws_bytes, &dec->allocs[1]);
    if (!rc) rc = toc_malloc(ctl_bytes, &dec->allocs[2]);
    if (!rc) rc = toc_malloc(lay_bytes, &dec->allocs[3]);
    if (rc) {
        dk_free_all(dec);
        delete dec;
        return rc;
    }
    char *a = (char *)dec->allocs[0];
    auto take = [&](int64_t n) {
        void *p = a;
        a += ((size_t)n * asz + 15) / 16 * 16;
        return p;
    };
    st.x = take(d.hidden);
    st.x2 = take(d.hidden);
    st.qkv = take(nq + 2 * nkvd);
    st.attn = take(nq);
    st.h = take(d.intermediate);
    st.ws = (float *)dec->allocs[1];
    char *ctl = (char *)dec->allocs[2];
    st.bar = (unsigned long long *)ctl;
    st.argmax = (unsigned long long *)(ctl + 64);
    st.att_cnt = (unsigned *)(ctl + 256);
    st.layers = (const to_decoder_layer *)dec->allocs[3];
    cudaStream_t s = toc_stream();
    cudaError_t e = cudaMemsetAsync(dec->allocs[2], 0, ctl_bytes, s);
    if (e == cudaSuccess) e = cudaMemcpyAsync(dec->allocs[3], layers, lay_bytes, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) {
        dk_free_all(dec);
        delete dec;
        return toc_cuda_error(e, "toc_decoder_create: setting up device state");
    }
    *out = dec;
    return TO_OK;
}

TOC_EXPORT int toc_decoder_step(void *decoder) {
    TOC_CHECK(decoder, TO_ERR_INVALID_ARGUMENT, "toc_decoder_step: NULL decoder");
    TocDecoder *dec = (TocDecoder *)decoder;
    TOC_READY();
    int dev = 0;
    TOC_CUDA(cudaGetDevice(&dev), "cudaGetDevice");
    TOC_CHECK(dev == dec->dev, TO_ERR_INVALID_ARGUMENT,
              "toc_decoder_step: decoder belongs to cuda:%d, current device is cuda:%d", dec->dev, dev);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(dec->grid);
    cfg.blockDim = dim3(DK_THREADS);
    cfg.dynamicSmemBytes = dec->smem;
    cfg.stream = toc_stream();
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    TOC_CUDA(cudaLaunchKernelEx(&cfg, dec->kernel, dec->st), "toc_decoder_step: launch");
    return TO_OK;
}

TOC_EXPORT int toc_decoder_info(void *decoder, int64_t *grid, int64_t *threads, int64_t *smem_bytes,
                                int64_t *kv_splits) {
    TOC_CHECK(decoder, TO_ERR_INVALID_ARGUMENT, "toc_decoder_info: NULL decoder");
    const TocDecoder *dec = (const TocDecoder *)decoder;
    if (grid) *grid = dec->grid;
    if (threads) *threads = DK_THREADS;
    if (smem_bytes) *smem_bytes = (int64_t)dec->smem;
    if (kv_splits) *kv_splits = dec->st.nsplit;
    return TO_OK;
}

/* Profiling: runs one step synchronously (outside any graph) and writes, for each block, the
 * arrival and departure times (ns, %globaltimer) of barriers first .. first + 7 of the step into
 * out[block * 16 + 2 * i], out[... + 1]; out holds grid * 16 values. The step advances the
 * counters like any other. */
TOC_EXPORT int toc_decoder_profile(void *decoder, int first, int64_t *out) {
    TOC_CHECK(decoder && out && first >= 0, TO_ERR_INVALID_ARGUMENT, "toc_decoder_profile: arguments");
    TocDecoder *dec = (TocDecoder *)decoder;
    TOC_READY();
    const size_t n = (size_t)dec->grid * 2 * DK_PROF;
    void *buf = nullptr;
    int rc = toc_malloc(n * 8, &buf);
    if (rc) return rc;
    cudaStream_t s = toc_stream();
    DkState st = dec->st;
    st.prof = (unsigned long long *)buf;
    st.prof_first = first;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(dec->grid);
    cfg.blockDim = dim3(DK_THREADS);
    cfg.dynamicSmemBytes = dec->smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaError_t e = cudaMemsetAsync(buf, 0, n * 8, s);
    if (e == cudaSuccess) e = cudaLaunchKernelEx(&cfg, dec->kernel, st);
    if (e == cudaSuccess) e = cudaMemcpyAsync(out, buf, n * 8, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    toc_free(buf);
    if (e != cudaSuccess) return toc_cuda_error(e, "toc_decoder_profile");
    return TO_OK;
}

TOC_EXPORT int toc_decoder_destroy(void *decoder) {
    if (!decoder) return TO_OK;
    TocDecoder *dec = (TocDecoder *)decoder;
    cudaStreamSynchronize(toc_stream());
    dk_free_all(dec);
    delete dec;
    return TO_OK;
}
