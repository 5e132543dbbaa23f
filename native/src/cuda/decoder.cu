/* Fused batch-1 decode step: one cooperative kernel computes a whole token of a dense pre-norm
 * decoder (the Qwen3 layout; see to_decoder_desc in tensor_ops.h).
 *
 * Why one kernel: at batch 1 every weight is read once per token, and a step of small GEMVs is
 * bound by launch gaps and by the memory latency at the start of each kernel, not by bandwidth
 * (Qwen3-0.6B has ~170 kernels per token in the multi-kernel graph). Here the grid holds one block
 * per multiprocessor for the whole step and stages are separated by grid-wide barriers. A barrier
 * is split into arrive and wait, and each stage issues its first weight loads in between (weights
 * never depend on activations), so their latency overlaps the barrier; the attention stage copies
 * its cached keys and values into shared memory there.
 *
 * Stages per layer (a barrier after each):
 *   qkv      RMSNorm(x) staged in shared memory, [q; k; v] rows split evenly over the blocks
 *   attention one (kv head, query-head group, key slice) unit per block, a group being as few
 *            query heads as the grid allows (one each for Qwen3-0.6B and 4B on 132 SMs):
 *            q/k RMSNorm + NeoX RoPE of the new token, cache append (group 0), scores (one
 *            thread per key) and softmax + P.V over shared-memory tiles of keys and values; the
 *            last unit of a kv head to finish merges the slices (no extra kernel or barrier)
 *   o_proj   + residual add (x2 = x + o; each block computes x for its rows, see dk_resid)
 *   gate/up + down  RMSNorm(x2), SwiGLU of the block's rows (h, in shared memory), then the
 *            block's share of down split over the intermediate dimension: W_down[:, rows] h from a
 *            transposed copy of down_proj made at creation (one contiguous run of rows per block),
 *            added to an fp32 sum with vector atomics. The next stage stages x = x2 + d (d the sum
 *            rounded to bf16). This saves a barrier and a stage per layer (+3% / +1.4% tok/s for
 *            Qwen3-0.6B / 4B on an H200).
 * then RMSNorm + LM head with a packed greedy argmax, and the token feedback (next token, position,
 * step) in block 0. For contexts of at most one key tile, attention and o_proj are one stage
 * (dk_att_o): 3 barriers per layer instead of 4. That step is a second instantiation of the kernel
 * (FOLD), launched before the other in every step; each returns at once for the other's steps. Rounding follows the op-by-op path: every intermediate that the separate ops
 * store is rounded to the activation dtype at the same point. The down sums are the one place where
 * the order of float additions varies from run to run (atomics), so the last bits of d can too.
 *
 * FP8 weights (desc.weight_dtype TO_F8_E4M3, the F8 instantiations): the qkv and gate/up stages
 * and the down share read e4m3 bytes with 128 x 128 block scales (a unit's 16-byte chunk is 16
 * weights; its fp32 dot times its block scale, loaded with the weights), the transposed down copy
 * is FP8 with transposed scales, o_proj is dequantized to a bf16 copy at creation (the folded
 * attention reads it in bf16), the LM head stays bf16. Their inputs are staged as bf16.
 *
 * GEMV work split: a block owns a contiguous range of output rows; a "unit" is 32 consecutive
 * 16-byte chunks of one row (one per lane). Each warp takes a contiguous range of units
 * and keeps DK_U of them in flight in a register ring; a lane sums a whole row run before one warp
 * reduction, run sums go to shared memory and each row is summed in a fixed order.
 *
 * Code size matters: each stage runs once per layer, and machine code that does not stay in the
 * instruction cache is fetched again every time (a 250 KB first version spent most of each stage
 * on that; now ~120 KB), so loops that are not hot stay rolled and helpers stay out of line.
 *
 * Nothing lives on the stack if it can be helped: every barrier ends with an acquire, which
 * invalidates L1, so a stack value is read back from L2 after each barrier. That rules out
 * loop-indexed local arrays, structs whose address an out-of-line helper takes (pass and return
 * by value instead) and output pointers to locals; the 384-thread kernel has no stack frame
 * (removing 256 B of it gave +9% for Qwen3-0.6B), the 512-thread one spills 48 B (72 B folded). Each stage
 * function has one call site in the step loop and is inlined: no calling-convention saves around
 * it (+6% for both models on an H200 against out-of-line stages). */
#include <memory>
#include <new>

#include "common.cuh"
#include "fp8.cuh"

/* Threads per block: the template parameter NT (384 or 512, chosen per model when the decoder is
 * created) of every device function that needs it; these macros name it there. 384 threads get
 * 168 registers each and no spills, 512 get 128: on an H200 Qwen3-0.6B decodes 8% faster with 384,
 * Qwen3-4B 4% faster with 512 (more weight loads in flight for its longer stages). */
#define DK_THREADS NT
#define DK_WARPS (NT / 32)
#define DK_LWARPS (NT / 32 - 1) /* warps of the down share and attention tile copies (not the barrier warp's) */
#define DK_BAR_T (NT - 32)      /* the barrier thread (lane 0 of the last warp) */
#define DK_MAX_THREADS 512
#ifndef DK_SMALL_LAYER
#define DK_SMALL_LAYER (512 * 1024) /* bytes of a layer's weights per block: at most this, 384 threads */
#endif
/* units (one 16-byte load per lane each) in flight per warp: 6 in the 384-thread kernel
 * (Qwen3-0.6B on an H200: 1105 tok/s against 1094 with 8, 1097 with 7, 1072 with 5), 8 in the
 * 512-thread one */
#ifndef DK_U384
#define DK_U384 6
#endif
#ifndef DK_U512
#define DK_U512 8
#endif
#define DK_U (NT == 384 ? DK_U384 : DK_U512)
/* the same for FP8 weights (16 weights a load); deeper rings were slower (H200, Qwen3-4B FP8 at
 * 384 threads: 6 / 8 / 10 in flight 416.1 / 404.8 / 375.8 tok/s) */
#ifndef DK_UF384
#define DK_UF384 6
#endif
#ifndef DK_UF512
#define DK_UF512 8
#endif
/* attention slices merged per batch of loads (see the merge in dk_attention): H200 after 4096
 * tokens, 16 against 8: Qwen3-0.6B (384 threads) 932.7 against 913.0 tok/s; Qwen3-4B (512, where
 * 16 spill) 313.5 against 314.3 */
#ifndef DK_MERGE_B384
#define DK_MERGE_B384 16
#endif
#ifndef DK_MERGE_B512
#define DK_MERGE_B512 8
#endif
#define DK_MERGE_B (NT == 384 ? DK_MERGE_B384 : DK_MERGE_B512)
#define DK_PART 8192  /* unit sums per row batch (floats of shared memory) */
#define DK_GMAX 8     /* query heads per kv head, at most */
#ifndef DK_ATT_MMA
#define DK_ATT_MMA 1 /* the split attention's scores on tensor cores (0: one lane per key) */
#endif
#define DK_DMAX 8     /* head_dim / 32, at most */
#define DK_ATT_SMEM (160 * 1024) /* shared memory for attention tiles (keys, values, scores) */
#ifndef DK_FOLD
#define DK_FOLD 1 /* attention folded into o_proj for short contexts (dk_att_o); 0: never */
#endif
#ifndef DK_FOLD_SMEM
#define DK_FOLD_SMEM 0 /* shared memory of the folded kernel if more than the other kernel's */
#endif
#ifndef DK_FASTNORM
#define DK_FASTNORM 384 /* GEMV staging of kernels of at most this many threads: a normed input stays
                         * in registers until its scale is known (0: never) */
#endif
#ifndef DK_QS_LONG
#define DK_QS_LONG 1 /* contexts longer than a tile: query heads together, keys split (see dk_attention) */
#endif
#ifndef DK_CHUNK_MIN
#define DK_CHUNK_MIN 128 /* keys per slice of a long context, at least (0: a tile) */
#endif
/* The GEMV input is staged in shared memory as bf16 (one 16-byte load per unit and lane, then 8
 * conversions) in kernels of at least DK_XBF_THREADS threads, as floats (two 16-byte loads, no
 * conversions) in the others. The products are the same. H200, three alternating rounds: Qwen3-4B
 * (512 threads) 375.6 against 371.9 tok/s with floats; Qwen3-0.6B (384) 1208.7 against 1216.5. */
#ifndef DK_XBF_THREADS
#define DK_XBF_THREADS 512
#endif
#define DK_XBF (NT >= DK_XBF_THREADS)
/* FP8 stages stage their input as bf16 at every thread count (H200, FP8 weights, 384 threads:
 * Qwen3-0.6B 1236.6 against 1184.0 tok/s with floats, Qwen3-4B 421.9 against 414.6) */
#ifndef DK_F8_XBF
#define DK_F8_XBF 1
#endif
#ifndef DK_FOLD_FIRST
#define DK_FOLD_FIRST (64 * 1024) /* o_proj bytes a folding block requests before its scores */
#endif

enum { DK_PLAIN = 0, DK_RES = 1, DK_SWIGLU = 2, DK_ARGMAX = 3 };

struct DkState {
    to_decoder_desc d;
    const to_decoder_layer *layers; /* device copy */
    void *x2, *qkv, *attn;          /* activations (bf16) */
    void *xres;                     /* fold: x, the layer's input before its norm (bf16) */
    float *dacc;                    /* [2][hidden] down_proj sums of even / odd layers (fp32) */
    float *oacc;                    /* [2][hidden] o_proj sums of even / odd layers (fp32, fold) */
    const uint16_t *wdt;            /* down_proj transposed: [layer][intermediate][hidden] (F8: bytes) */
    const float *wdts;              /* F8: its scales, [layer][ceil(intermediate / 128)][ceil(hidden / 128)] */
    float *ws;                      /* attention slices: [nh][nsplit][hd] then [nh][nsplit][2] */
    unsigned long long *bar;        /* [0] arrivals, [1] count at the end of the last launch */
    unsigned *att_cnt;              /* [nkv] finished slices */
    int *fold_ran;                  /* whether the folded kernel computed the current step */
    unsigned long long *argmax;
    int nsplit;
    int qsplit; /* blocks per kv head's query heads (each takes G / qsplit of them) */
    int nsplit_long; /* key slices per kv head for contexts longer than a tile (query heads
                      * together), or 0: those split like short ones */
    int tk;   /* keys per attention tile in shared memory */
    int fold_keys; /* attention folded into o_proj for contexts of at most this many keys (0: never) */
    int frep;      /* fold: blocks per query head (each takes hidden / frep rows of o_proj) */
    int fsmem;     /* fold: bytes of shared memory the stage may use */
    int kmax; /* floats of the staging area */
    unsigned long long *prof; /* profiling record [block][DK_PROF_STRIDE], or NULL */
    int prof_first;
};

struct DkGemv {
    const uint16_t *w0, *w1, *w2; /* row segments (q, k, v) or gate/up */
    const float *c0, *c1, *c2;    /* F8: their block scales (128 x 128 blocks) */
    int64_t s0, s1;               /* rows of w0, of w1 */
    int64_t n;                    /* output rows */
    int64_t k;
    int mode;
    const void *src;  /* input vector */
    const float *src2; /* or NULL: the input is src + round(src2) (the residual add of down) */
    void *xout;        /* or NULL: this block's share of the input (before the norm) is stored here */
    const void *norm;
    float eps;
    void *y;
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
__shared__ unsigned long long dk_target; /* the count that completes the next barrier */
__shared__ int dk_nbar;                  /* barriers passed (for the profiling record) */
#define DK_PROF 8
/* profiling record per block (u64): [0, 16) barrier arrival/departure pairs; layer 1 only, by
 * thread 0: [16 + 4 * stage + i] for stage qkv, attention, o_proj, gate/up (with down): after its
 * barrier, after staging its input, after its (gate/up) weights, at its end; for attention (blocks
 * that run a unit): after its barrier, with the new token's heads and first tile ready, after the
 * scores and P.V of its first unit, at its end */
#define DK_PROF_STRIDE 64
#define DK_PROF_SMID 48 /* [48]: the multiprocessor (%smid) that ran the block */
/* stamps builds, by the barrier thread: [50 + i] when its poll first read barrier i's target,
 * [58 + i] (i < 6) right after its arrival's release */
#define DK_PROF_SEEN 50
#define DK_PROF_REL 58

__device__ __forceinline__ unsigned long long dk_now(void) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* profiling stamp idx of layer 1 (see DK_PROF_STRIDE), thread 0; compiled in only with
 * -DDK_STAGE_STAMPS=1 (the checks alone make the kernel spill registers) */
#ifndef DK_STAGE_STAMPS
#define DK_STAGE_STAMPS 0
#endif
__device__ __forceinline__ void dk_stamp(unsigned long long *prof, int li, int idx) {
#if DK_STAGE_STAMPS
    if (prof && li == 1 && threadIdx.x == 0) prof[(size_t)blockIdx.x * DK_PROF_STRIDE + idx] = dk_now();
#else
    (void)prof, (void)li, (void)idx;
#endif
}

__device__ __forceinline__ unsigned long long dk_load_relaxed(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned long long dk_load_acquire(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

/* A barrier in two halves: arrive (after this block's writes of the stage) and wait. Work that
 * depends on no other block of this stage (weight loads, cached keys and values of earlier
 * tokens) goes between them. The barrier thread's warp issues its share of the GEMV weight loads
 * there too (its acquire may then wait for them, which measured cheaper than a warp fewer loading);
 * the attention tile copies and the down share leave it out. */
template <int NT>
__device__ __forceinline__ void dk_arrive(const DkState &st) {
    __syncthreads();
    if (threadIdx.x == DK_BAR_T) {
        const int slot = dk_nbar - st.prof_first;
        if (st.prof && slot >= 0 && slot < DK_PROF) st.prof[(size_t)blockIdx.x * DK_PROF_STRIDE + 2 * slot] = dk_now();
        dk_target += gridDim.x;
        /* release: the block's writes (ordered before by __syncthreads) become visible first */
        asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(st.bar) : "memory");
#if DK_STAGE_STAMPS
        if (st.prof && slot >= 0 && DK_PROF_REL + slot < DK_PROF_STRIDE)
            st.prof[(size_t)blockIdx.x * DK_PROF_STRIDE + DK_PROF_REL + slot] = dk_now();
#endif
    }
}
template <int NT>
__device__ __forceinline__ void dk_wait(const DkState &st) {
    if (threadIdx.x == DK_BAR_T) {
        const unsigned long long target = dk_target;
        const int slot = dk_nbar++ - st.prof_first;
        /* poll with relaxed loads, then one acquire load. An acquire load at GPU scope
         * invalidates the multiprocessor's L1 (CCTL.IVALL); polling with acquire loads did that
         * on every iteration (this is 0.7% faster on an H200). Leaving out the last acquire too
         * gained ~2% more when the kernel still had a stack (it stayed in L1), but the reads after the
         * barrier would then be ordered only in practice (all of them go to L2), not by the
         * PTX memory model, so it is not done. */
        while (dk_load_relaxed(st.bar) < target) {
        }
#if DK_STAGE_STAMPS
        if (st.prof && slot >= 0 && slot < DK_PROF) st.prof[(size_t)blockIdx.x * DK_PROF_STRIDE + DK_PROF_SEEN + slot] = dk_now();
#endif
        (void)dk_load_acquire(st.bar); /* reads >= target: synchronizes with every arrival */
        if (st.prof && slot >= 0 && slot < DK_PROF) st.prof[(size_t)blockIdx.x * DK_PROF_STRIDE + 2 * slot + 1] = dk_now();
    }
    __syncthreads();
}
template <int NT>
__device__ __forceinline__ void dk_sync(const DkState &st) {
    dk_arrive<NT>(st);
    dk_wait<NT>(st);
}

/* Weight loads (read once per step) bypass L1, which keeps the layer descriptors and what the
 * stages share: ld_stream (common.cuh). */

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
 * of line: the loader calls it only when it crosses a segment). Returned by value: an output
 * through a pointer would keep the loader's bound on the stack. */
struct DkSeek {
    const uint16_t *row;
    int bound;
};
__device__ __noinline__ DkSeek dk_seek(int mode, const uint16_t *w0, const uint16_t *w1, const uint16_t *w2,
                                       int64_t s0, int64_t s1, int64_t n, int64_t k, int64_t rb0, int64_t nrb,
                                       int64_t vr) {
    int64_t end;
    if (mode == DK_SWIGLU) {
        end = vr < nrb ? nrb : 2 * nrb;
    } else {
        const int64_t r = rb0 + vr;
        end = (r < s0 ? s0 : r < s0 + s1 ? s0 + s1 : n) - rb0;
        if (end > nrb) end = nrb;
    }
    return DkSeek{dk_row(mode, w0, w1, w2, s0, s1, k, rb0, nrb, vr), (int)end};
}



/* Per-warp split of a block's row batch: units [lu, lend) of rb0.. (a unit is 32 16-byte chunks
 * of one row). Every warp loads, the barrier warp too: its loads in flight when its thread
 * passes a barrier cost less than a sixteenth fewer loads (+1.8% / +0.7% tok/s for Qwen3-4B /
 * 0.6B on an H200 against leaving it out). */
template <int NT>
__device__ __forceinline__ void dk_warp_units(int64_t nrb, int mult, int G, int warp, int *lu, int *lend) {
    const int64_t units = nrb * mult * G;
    *lu = (int)(units * warp / DK_WARPS);
    *lend = (int)(units * (warp + 1) / DK_WARPS);
}

enum { DK_QKV = 0, DK_O = 1, DK_GU = 2, DK_LM = 4 };

/* The GEMV of stage `which` of layer li (DK_LM: the LM head). src of layer 0's qkv: the token's
 * embedding row. */
__device__ __forceinline__ DkGemv dk_make(const DkState &st, int li, int which, const void *erow, bool fold) {
    const to_decoder_desc &d = st.d;
    const int64_t hid = d.hidden, nq = (int64_t)d.n_heads * d.head_dim,
                  nkvd = (int64_t)d.n_kv_heads * d.head_dim;
    DkGemv g;
    g.w1 = g.w2 = nullptr;
    g.c0 = g.c1 = g.c2 = nullptr;
    g.s1 = 0;
    g.norm = nullptr;
    g.eps = 0.0f;
    g.src2 = nullptr;
    g.xout = nullptr;
    g.n = g.s0 = hid;
    if (which == DK_LM) {
        g.w0 = (const uint16_t *)d.lm_head;
        g.n = g.s0 = d.vocab;
        g.k = hid;
        g.mode = DK_ARGMAX;
        g.src = st.x2;
        g.src2 = st.dacc + (size_t)((d.n_layers - 1) & 1) * hid;
        g.norm = d.final_norm;
        g.eps = d.final_eps;
        g.y = d.logits;
        return g;
    }
    const to_decoder_layer &ly = st.layers[li];
    if (which == DK_QKV) {
        g.w0 = (const uint16_t *)ly.q_proj;
        g.w1 = (const uint16_t *)ly.k_proj;
        g.w2 = (const uint16_t *)ly.v_proj;
        g.c0 = ly.q_scale, g.c1 = ly.k_scale, g.c2 = ly.v_scale;
        g.s0 = nq;
        g.s1 = nkvd;
        g.n = nq + 2 * nkvd;
        g.k = hid;
        g.mode = DK_PLAIN;
        g.src = li == 0 ? erow : st.x2;
        g.src2 = li == 0 ? nullptr : st.dacc + (size_t)((li - 1) & 1) * hid;
        g.xout = fold ? st.xres : nullptr; /* x, for the gate/up staging */
        g.norm = ly.input_norm;
        g.eps = ly.input_eps;
        g.y = st.qkv;
    } else if (which == DK_O) {
        g.w0 = (const uint16_t *)ly.o_proj;
        g.k = nq;
        g.mode = DK_RES;
        g.src = st.attn;
        g.y = st.x2;
    } else { /* DK_GU: gate/up, SwiGLU, then this block's share of down (dk_gu_down) */
        g.w0 = (const uint16_t *)ly.gate_proj;
        g.w1 = (const uint16_t *)ly.up_proj;
        g.c0 = ly.gate_scale, g.c1 = ly.up_scale;
        g.s0 = g.s1 = g.n = d.intermediate;
        g.k = hid;
        g.mode = DK_SWIGLU;
        if (fold) { /* x2 = x + round(o sums) (dk_att_o), stored for the next layer */
            g.src = st.xres;
            g.src2 = st.oacc + (size_t)(li & 1) * hid;
            g.xout = st.x2;
        } else {
            g.src = st.x2;
        }
        g.norm = ly.post_norm;
        g.eps = ly.post_eps;
        g.y = nullptr; /* h stays in shared memory */
    }
    return g;
}

/* v + round(d) rounded to bf16, per element (8 values; d as two float4): the residual add of
 * down, x = x2 + bf16(sum) */
__device__ __forceinline__ uint4 dk_add_res(uint4 v, float4 d0, float4 d1) {
    float f[8];
    bf8(v, f);
    const float d[8] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
#pragma unroll
    for (int e = 0; e < 8; e++) f[e] = rbf(f[e] + rbf(d[e]));
    return pack_bf8(f);
}

/* Adds 4 floats to global memory (relaxed, no return). */
__device__ __forceinline__ void dk_red4(float *p, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.relaxed.gpu.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y),
                 "f"(v.z), "f"(v.w)
                 : "memory");
#else
    atomicAdd(p, v.x);
    atomicAdd(p + 1, v.y);
    atomicAdd(p + 2, v.z);
    atomicAdd(p + 3, v.w);
#endif
}

/* SwiGLU of a gate/up row batch (nrb rows, unit sums in part: gate rows then up rows, G per row),
 * rounded like the op path, into hs. */
template <int NT>
__device__ __forceinline__ void dk_swiglu_rows(const float *part, float *hs, int nrb, int G) {
#pragma unroll 1
    for (int vr = threadIdx.x; vr < nrb; vr += DK_THREADS) {
        float a = 0.0f, a2 = 0.0f;
#pragma unroll 4
        for (int gi = 0; gi < G; gi++) a += part[vr * G + gi];
#pragma unroll 4
        for (int gi = 0; gi < G; gi++) a2 += part[(vr + nrb) * G + gi];
        const float gv = rbf(a), uv = rbf(a2);
        hs[vr] = rbf(rbf(gv / (1.0f + __expf(-gv))) * uv);
    }
}

/* The end of the gate/up stage: this block's rows r0 .. r0 + nr of the intermediate have their
 * SwiGLU outputs in hs, except the last row batch (hs[lb0 ..], lnb rows), whose unit sums are
 * still in part. Computes those, then the block's share of down, dacc[li & 1] += W_down[:, r0 ..
 * r0 + nr] h, read from the transposed copy (those rows of wdt are contiguous). Each loading lane
 * owns one 8-column chunk and a phase of the rows (R phases in parallel) and keeps DK_U loads in
 * flight; the phases are summed in shared memory (part is free by then) and the block adds its
 * sums to dacc with vector atomics. The first loads are issued before the last SwiGLU, so their
 * latency overlaps it. Skip bit 16 (profiling) leaves the down share out. */
template <int NT, bool F8>
__device__ __noinline__ void dk_gu_down(const DkState &st, int li, float *part, float *hs, int64_t r0, int nr,
                                        int lb0, int lnb, int G) {
    constexpr int CW = F8 ? 16 : 8; /* columns of a 16-byte chunk */
    constexpr int U = F8 ? (NT == 384 ? DK_UF384 : DK_UF512) : DK_U; /* loads in flight per lane */
    const int tid = threadIdx.x;
    const int64_t hid = st.d.hidden;
    const int nc = (int)(hid / CW), NL = DK_LWARPS * 32;
    const bool down = !(st.d.profile_skip & 16);
    const uint4 *wt = F8 ? (const uint4 *)((const uint8_t *)st.wdt + ((size_t)li * st.d.intermediate + r0) * hid)
                         : (const uint4 *)(st.wdt + ((size_t)li * st.d.intermediate + r0) * hid);
    /* F8: the transposed scales of this layer, [intermediate / 128][hidden / 128] (rounded up) */
    const int64_t hb = (hid + 127) >> 7;
    const float *sct = F8 ? st.wdts + (size_t)li * ((st.d.intermediate + 127) >> 7) * hb : nullptr;
    float *dsum = st.dacc + (size_t)(li & 1) * hid;
    for (int c0 = 0; c0 < nc; c0 += NL) {
        const int ncw = nc - c0 < NL ? nc - c0 : NL, R = NL / ncw;
        const bool act = down && tid < R * ncw;
        const int ph = act ? tid / ncw : 0, cc = tid - ph * ncw;
        const int nrow = act && ph < nr ? (nr - ph + R - 1) / R : 0;
        const uint4 *wp = wt + (int64_t)ph * nc + c0 + cc;
        const int64_t step = (int64_t)R * nc;
        uint4 cur[U];
        float csc[U]; /* F8: the scale of each loaded chunk (row block, column block) */
        auto scale_of = [&](int j) {
            return __ldg(sct + ((r0 + ph + (int64_t)j * R) >> 7) * hb + ((c0 + cc) >> 3)) * FP8_FOLD;
        };
#pragma unroll
        for (int u = 0; u < U; u++) {
            cur[u] = u < nrow ? ld_stream(wp + u * step) : make_uint4(0, 0, 0, 0);
            if constexpr (F8) csc[u] = u < nrow ? scale_of(u) : 0.0f;
        }
        if (c0 == 0) {
            dk_swiglu_rows<NT>(part, hs + lb0, lnb, G);
            __syncthreads(); /* hs is complete; part is free */
        }
        if (!down) return;
        float acc[CW] = {};
#pragma unroll 1
        for (int j = 0; j < nrow; j += U) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (j + u < nrow) {
                    if constexpr (F8) {
                        float f[16];
                        fp8x16_to_float(cur[u], f);
                        const float hv = hs[ph + (j + u) * R] * csc[u];
#pragma unroll
                        for (int e = 0; e < 16; e++) acc[e] += hv * f[e];
                    } else {
                        float f[8];
                        bf8(cur[u], f);
                        const float hv = hs[ph + (j + u) * R];
#pragma unroll
                        for (int e = 0; e < 8; e++) acc[e] += hv * f[e];
                    }
                }
                const int nx = j + u + U;
                cur[u] = nx < nrow ? ld_stream(wp + nx * step) : make_uint4(0, 0, 0, 0);
                if constexpr (F8) csc[u] = nx < nrow ? scale_of(nx) : 0.0f;
            }
        }
        constexpr int Q = CW / 4; /* float4 per chunk */
        float4 *p4 = (float4 *)part;
        if (act) {
#pragma unroll
            for (int q = 0; q < Q; q++)
                p4[Q * tid + q] = make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
        }
        __syncthreads();
#pragma unroll 1
        for (int i = tid; i < Q * ncw; i += DK_THREADS) { /* i: a float4 of the pass's columns */
            float4 t = p4[i];
#pragma unroll 1
            for (int r = 1; r < R; r++) {
                const float4 o = p4[r * Q * ncw + i];
                t.x += o.x, t.y += o.y, t.z += o.z, t.w += o.w;
            }
            dk_red4(dsum + (int64_t)c0 * CW + 4 * i, t);
        }
        __syncthreads(); /* part is reused by the next pass */
    }
}

/* Chunk c of a staged GEMV input, f (8 values), RMSNorm'd with scale rr and the weights wv (8 bf16)
 * like the separate ops (w * bf16(x * rr)), stored in the staging layout (bf16, or floats of bf16
 * values in two halves). */
template <int NT, bool XB>
__device__ __forceinline__ void dk_norm_store(float *f, uint4 wv, float rr, uint4 *xs16, float4 *xlo, float4 *xhi, int c) {
    float w[8];
    bf8(wv, w);
#pragma unroll
    for (int e = 0; e < 8; e++) f[e] = w[e] * rbf(f[e] * rr);
    if (XB) {
        xs16[c] = pack_bf8(f);
    } else {
        xlo[c] = make_float4(rbf(f[0]), rbf(f[1]), rbf(f[2]), rbf(f[3]));
        xhi[c] = make_float4(rbf(f[4]), rbf(f[5]), rbf(f[6]), rbf(f[7]));
    }
}

/* The residual stream of layer li at row r, as the qkv stage staged it: the embedding row for
 * layer 0, else x2 + bf16(the down sums of layer li - 1). Its inputs are final before the layer's
 * first barrier, so the o_proj stage computes its rows' residual itself, before its barrier: no
 * block stores the whole vector for the others, and o_proj depends on no particular block's qkv
 * stage (the same speed as that store on an H200). */
__device__ __forceinline__ float dk_resid(const DkState &st, int li, const void *erow, int64_t r) {
    if (li == 0) return ldw(erow, r);
    const float d = __ldcg(st.dacc + (size_t)((li - 1) & 1) * st.d.hidden + r);
    return rbf(ldcg(st.x2, r) + rbf(d));
}

/* One GEMV stage. sync: whether a barrier is passed after the first weight loads (not at the start of the
 * kernel); the stage is g = dk_make(st, li, which, erow). Each warp takes a
 * contiguous range of units, so its loads walk each row in order, the unit indices advance without
 * divisions, and a lane can sum a whole row run before one warp reduction. */
template <int NT, bool FOLD, bool F8>
__device__ __forceinline__ void dk_gemv(const DkState &st, int li, int which, const void *erow, float *smem,
                                        bool sync) {
    constexpr int U = F8 ? (NT == 384 ? DK_UF384 : DK_UF512) : DK_U; /* loads in flight per lane */
    constexpr bool XB = DK_XBF || (F8 && DK_F8_XBF);                  /* input staged as bf16 */
    if (sync) dk_arrive<NT>(st); /* first: nothing below is written by this stage */
    const DkGemv g = dk_make(st, li, which, erow, FOLD);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int pb = 16 + 4 * (which == DK_QKV ? 0 : which + 1); /* profiling stamps */
    const int64_t k = g.k;
    /* nv: 16-byte chunks of the input (bf16), nwc: of a weight row (bf16, or FP8: 16 weights) */
    const int nv = (int)(k / 8), nwc = F8 ? (int)(k / 16) : nv, G = (nwc + 31) / 32;
    const int64_t nb = gridDim.x, b = blockIdx.x;
    const int64_t r0 = g.n * b / nb, r1 = g.n * (b + 1) / nb, nr = r1 - r0;
    const int mult = g.mode == DK_SWIGLU ? 2 : 1;
    int per = DK_PART / (G * mult);
    if (per < 1) per = 1;
    /* the staged input (values of bf16), read by the products without bank conflicts */
    float4 *xlo = (float4 *)smem, *xhi = xlo + nv;
    uint4 *xs16 = (uint4 *)smem; /* XB: the staged input as bf16, chunk c in xs16[c];
                                  * otherwise as floats, chunk c's first four in xlo[c], the rest in xhi[c] */
    float *part = smem + st.kmax;
    float *red = part + DK_PART;
    unsigned long long *redk = (unsigned long long *)(red + 64);
    float *hs = red + 64 + 2 * DK_WARPS; /* SwiGLU outputs of a row batch (DK_PART / 2 floats) */

    int64_t rb0 = r0;
    int nrb = (int)(nr < per ? nr : per);
    /* loader state of this warp: next unit (lu < lend), its row and 32-chunk group */
    int lu = 0, lend = 0, lvr = 0, lgi = 0, lbound = 0;
    const uint16_t *lrow = nullptr;
    /* F8: the row's bytes, the scales of its 128-row block and its row in its segment */
    const uint8_t *lrow8 = nullptr;
    const float *lsrow = nullptr;
    int lrs = 0;
    const int64_t kb = (k + 127) >> 7; /* F8: scales per row block */
    /* F8: dk_seek in units of two bytes (k % 16 == 0), then the row's scales */
    auto seek8 = [&]() {
        const DkSeek sk = dk_seek(g.mode, g.w0, g.w1, g.w2, g.s0, g.s1, g.n, g.k / 2, rb0, nrb, lvr);
        lrow8 = (const uint8_t *)sk.row;
        lbound = sk.bound;
        const int64_t r = rb0 + lvr;
        const int seg = g.mode == DK_SWIGLU ? (lvr < nrb ? 0 : 1) : r < g.s0 ? 0 : r < g.s0 + g.s1 ? 1 : 2;
        lrs = (int)(g.mode == DK_SWIGLU ? r - (seg ? nrb : 0) : r - (seg >= 1 ? g.s0 : 0) - (seg == 2 ? g.s1 : 0));
        lsrow = (seg == 0 ? g.c0 : seg == 1 ? g.c1 : g.c2) + (int64_t)(lrs >> 7) * kb;
    };
    auto start_batch = [&]() {
        dk_warp_units<NT>(nrb, mult, G, warp, &lu, &lend);
        lvr = lu / G;
        lgi = lu - lvr * G;
        if (lu < lend) {
            if constexpr (F8) {
                seek8();
            } else {
                const DkSeek sk = dk_seek(g.mode, g.w0, g.w1, g.w2, g.s0, g.s1, g.n, g.k, rb0, nrb, lvr);
                lrow = sk.row;
                lbound = sk.bound;
            }
        } else {
            lrow = nullptr;
        }
    };
    /* the next unit of this warp's range (zeros past its end); advances the loader */
    auto load_next = [&]() {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (lu < lend) {
            const int c = lgi * 32 + lane;
            if (c < nv) v = ld_stream((const uint4 *)lrow + c);
            if (++lgi == G) {
                lgi = 0;
                ++lvr;
                lrow += k;
                if (lvr == lbound && lu + 1 < lend) {
                    const DkSeek sk = dk_seek(g.mode, g.w0, g.w1, g.w2, g.s0, g.s1, g.n, g.k, rb0, nrb, lvr);
                    lrow = sk.row;
                    lbound = sk.bound;
                }
            }
        }
        ++lu;
        return v;
    };
    /* F8: load_next with the chunk's block scale (0 past the range, like the weights) */
    auto load_next8 = [&](float &sc) {
        uint4 v = make_uint4(0, 0, 0, 0);
        sc = 0.0f;
        if (lu < lend) {
            const int c = lgi * 32 + lane;
            if (c < nwc) {
                v = ld_stream((const uint4 *)lrow8 + c);
                sc = __ldg(lsrow + (c >> 3)) * FP8_FOLD; /* 8 chunks of 16 per 128-column block */
            }
            if (++lgi == G) {
                lgi = 0;
                ++lvr;
                lrow8 += k;
                if ((++lrs & 127) == 0) lsrow += kb;
                if (lvr == lbound && lu + 1 < lend) seek8();
            }
        }
        ++lu;
        return v;
    };
    float csc[U]; /* F8: the scales of cur's chunks */
    auto load = [&](uint4 *v) {
#pragma unroll
        for (int q = 0; q < U; q++) {
            if constexpr (F8) v[q] = load_next8(csc[q]);
            else v[q] = load_next();
        }
    };
    /* resident in registers from before the barrier: the residual of this thread's output row
     * (written two barriers ago) and the norm weights of its first input chunk (one variable,
     * not an array: a loop-indexed array lives on the stack, which the barrier's acquire
     * evicts from L1) */
    const bool res_pre = g.mode == DK_RES && nr <= per && tid < nr && tid < DK_BAR_T;
    float resv = 0.0f;
    const uint4 *src = (const uint4 *)g.src, *nw = (const uint4 *)g.norm;
    uint4 cur[U];
    unsigned long long best = 0;
    /* each row batch: the warp's first U units are loaded, then (first batch only) the
     * barrier is passed and the input staged, then the ring runs */
    for (bool first = true;; first = false) {
        start_batch();
        int cu0 = lu; /* first unit of cur */
        load(cur);
        if (first) {
            if (res_pre) resv = dk_resid(st, li, erow, r0 + tid);
            const uint4 nw0 = nw && tid < nv && tid < DK_BAR_T ? __ldg(nw + tid) : make_uint4(0, 0, 0, 0);
            if (sync) dk_wait<NT>(st);
            dk_stamp(st.prof, li, pb);
            if (g.mode == DK_SWIGLU) {
                /* layer li + 1 adds its down sums where layer li - 1 did, read by now (qkv staging) */
                float *dz = st.dacc + (size_t)((li + 1) & 1) * k;
#pragma unroll 1
                for (int64_t e = b * DK_THREADS + tid; e < k; e += nb * DK_THREADS) dz[e] = 0.0f;
                if (FOLD) { /* likewise the o_proj sums */
                    float *oz = st.oacc + (size_t)((li + 1) & 1) * k;
#pragma unroll 1
                    for (int64_t e = b * DK_THREADS + tid; e < k; e += nb * DK_THREADS) oz[e] = 0.0f;
                }
            }

            /* stage the input (RMSNorm'd when asked); the first chunk's load is issued at once.
             * Where every thread stages one chunk at most (fast), a normed input keeps it in
             * registers until the norm's scale is known and is stored once, normed. */
            const uint4 x0 = tid < nv ? __ldcg(src + tid) : make_uint4(0, 0, 0, 0);
            const float4 *s2 = (const float4 *)g.src2;
            const bool fast = NT <= DK_FASTNORM && nw && nv <= DK_THREADS;
            uint4 vk = make_uint4(0, 0, 0, 0); /* fast: this thread's chunk */
            float ss = 0.0f;
#pragma unroll 1
            for (int c = tid; c < nv; c += DK_THREADS) {
                float4 d0, d1;
                if (s2) { /* issued before the wait for xv[i]: the two loads overlap */
                    d0 = __ldcg(s2 + 2 * c);
                    d1 = __ldcg(s2 + 2 * c + 1);
                }
                uint4 v = c == tid ? x0 : __ldcg(src + c);
                if (s2) v = dk_add_res(v, d0, d1);
                if (fast) {
                    vk = v;
                } else if (XB) {
                    xs16[c] = v;
                } else {
                    float f[8];
                    bf8(v, f);
                    xlo[c] = make_float4(f[0], f[1], f[2], f[3]);
                    xhi[c] = make_float4(f[4], f[5], f[6], f[7]);
                }
                if (nw) {
                    float f[8];
                    bf8(v, f);
#pragma unroll
                    for (int e = 0; e < 8; e++) ss += f[e] * f[e];
                }
            }
            if (FOLD && g.xout) { /* this block's share of the input before the norm, for a later
                                    * stage: the chunks this thread staged (exact: bf16 values) */
                const int xc0 = (int)(nv * b / nb), xc1 = (int)(nv * (b + 1) / nb);
#pragma unroll 1
                for (int c = tid; c < xc1; c += DK_THREADS)
                    if (c >= xc0) {
                        if (fast) {
                            ((uint4 *)g.xout)[c] = vk; /* c == tid */
                        } else if (XB) {
                            ((uint4 *)g.xout)[c] = xs16[c];
                        } else {
                            const float4 lo = xlo[c], hi = xhi[c];
                            const float f[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
                            ((uint4 *)g.xout)[c] = pack_bf8(f);
                        }
                    }
            }
            if (fast) {
                /* block_sum without its leading barrier: red was last read before the barriers
                 * that ended the previous stage */
                ss = warp_sum(ss);
                if (lane == 0) red[warp] = ss;
                __syncthreads();
                ss = warp_sum(lane < DK_WARPS ? red[lane] : 0.0f);
                const float rr = 1.0f / sqrtf(ss / (float)k + g.eps);
                if (tid < nv) {
                    float f[8];
                    bf8(vk, f);
                    dk_norm_store<NT, XB>(f, tid < DK_BAR_T ? nw0 : __ldg(nw + tid), rr, xs16, xlo, xhi, tid);
                }
            } else if (nw) {
                ss = block_sum(ss, red);
                const float rr = 1.0f / sqrtf(ss / (float)k + g.eps);
#pragma unroll 1
                for (int c = tid; c < nv; c += DK_THREADS) {
                    float f[8];
                    if (XB) {
                        bf8(xs16[c], f);
                    } else {
                        const float4 lo = xlo[c], hi = xhi[c];
                        f[0] = lo.x, f[1] = lo.y, f[2] = lo.z, f[3] = lo.w, f[4] = hi.x, f[5] = hi.y, f[6] = hi.z, f[7] = hi.w;
                    }
                    dk_norm_store<NT, XB>(f, c == tid && tid < DK_BAR_T ? nw0 : __ldg(nw + c), rr, xs16, xlo, xhi, c);
                }
            }
            __syncthreads();
            dk_stamp(st.prof, li, pb + 1);
        }

        int cgi = cu0 < lend ? cu0 % G : 0; /* group of cur's first unit */
        float acc = 0.0f;                   /* this lane's sum over the current row run */
        /* a ring of U loads per lane: each slot is refilled with the unit U ahead as soon
         * as it has been used, so U loads stay in flight */
        while (cu0 < lend) {
#pragma unroll
            for (int q = 0; q < U; q++) {
                /* no branch around a unit: past the range end or the row's last chunk the loaded
                 * weights are zeros, so the products add nothing (x is read at a valid index) */
                const int u = cu0 + q, c = cgi * 32 + lane;
                if constexpr (F8) {
                    /* 16 weights: input chunks 2c and 2c + 1, a half at a time (fewer live
                     * registers); the chunk's dot times its block scale */
                    const int cx = c < nwc ? 2 * c : 0;
                    const uint32_t wd[4] = {cur[q].x, cur[q].y, cur[q].z, cur[q].w};
                    float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        float xf[8];
                        if (XB) {
                            bf8(xs16[cx + h], xf);
                        } else {
                            const float4 lo = xlo[cx + h], hi = xhi[cx + h];
                            xf[0] = lo.x, xf[1] = lo.y, xf[2] = lo.z, xf[3] = lo.w;
                            xf[4] = hi.x, xf[5] = hi.y, xf[6] = hi.z, xf[7] = hi.w;
                        }
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const uint32_t w = wd[2 * h + e];
                            const float2 a = fp8x2_to_float2(w & 0xffffu), b = fp8x2_to_float2(w >> 16);
                            d0 = fmaf(a.x, xf[4 * e], d0);
                            d1 = fmaf(a.y, xf[4 * e + 1], d1);
                            d0 = fmaf(b.x, xf[4 * e + 2], d0);
                            d1 = fmaf(b.y, xf[4 * e + 3], d1);
                        }
                    }
                    acc = fmaf(d0 + d1, csc[q], acc);
                    cur[q] = load_next8(csc[q]);
                } else {
                const int cx = c < nv ? c : 0;
                float f[8];
                bf8(cur[q], f);
                float4 xa, xb;
                if (XB) {
                    float xf[8];
                    bf8(xs16[cx], xf);
                    xa = make_float4(xf[0], xf[1], xf[2], xf[3]);
                    xb = make_float4(xf[4], xf[5], xf[6], xf[7]);
                } else {
                    xa = xlo[cx];
                    xb = xhi[cx];
                }
                acc += f[0] * xa.x + f[1] * xa.y + f[2] * xa.z + f[3] * xa.w + f[4] * xb.x + f[5] * xb.y +
                       f[6] * xb.z + f[7] * xb.w;
                cur[q] = load_next(); /* refill before the row end: the loader runs U units ahead */
                }
                /* one warp reduction per row run; the other units of the run hold 0 (warp-uniform:
                 * u and cgi are the same in every lane) */
                float a = 0.0f;
                if (cgi == G - 1 || u == lend - 1) {
                    a = warp_sum(acc);
                    acc = 0.0f;
                }
                if (lane == 0 && u < lend) part[u] = a;
                if (++cgi == G) cgi = 0;
            }
            cu0 += U;
        }
        __syncthreads();
        if (rb0 == r0) dk_stamp(st.prof, li, pb + 2);
        if (g.mode == DK_SWIGLU) {
            if (rb0 + nrb >= r1) break; /* the last batch's SwiGLU is done in dk_gu_down */
            dk_swiglu_rows<NT>(part, hs + (rb0 - r0), nrb, G);
        }
#pragma unroll 1
        for (int vr = tid; vr < (g.mode == DK_SWIGLU ? 0 : nrb); vr += DK_THREADS) {
            const int64_t row = rb0 + vr;
            float acc = 0.0f;
#pragma unroll 4
            for (int gi = 0; gi < G; gi++) acc += part[vr * G + gi];
            if (g.mode == DK_RES) {
                stb(g.y, row, (res_pre ? resv : dk_resid(st, li, erow, row)) + rbf(acc));
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
        if (nrb <= 0) break;
    }
    if (g.mode == DK_SWIGLU) dk_gu_down<NT, F8>(st, li, part, hs, r0, (int)nr, (int)(rb0 - r0), nrb, G);
    if (g.mode == DK_ARGMAX) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
            if (other > best) best = other;
        }
        if (lane == 0) redk[warp] = best;
        __syncthreads();
        if (tid == 0) {
#pragma unroll 1
            for (int w = 1; w < DK_WARPS; w++)
                if (redk[w] > best) best = redk[w];
            if (best) atomicMax(st.argmax, best);
        }
    }
    dk_stamp(st.prof, li, pb + 3);
}

/* What a head of the new token needs besides its activations, loaded before the barrier: the
 * head's norm weights (lane l: dims 8l..8l+7) and the RoPE cos/sin of position p (lane l: pairs
 * 4l..4l+3). */
struct DkHeadPre {
    uint4 w;
    uint2 cs, sn;
};

__device__ __forceinline__ DkHeadPre dk_head_pre(const DkState &st, const void *nw, int64_t p) {
    const int hd = st.d.head_dim, lane = threadIdx.x & 31;
    DkHeadPre hp;
    hp.w = nw && 8 * lane < hd ? __ldg((const uint4 *)nw + lane) : make_uint4(0, 0, 0, 0);
    const bool rope = 4 * lane < hd / 2;
    hp.cs = rope ? __ldg((const uint2 *)((const uint16_t *)st.d.rope_cos + p * hd) + lane) : make_uint2(0, 0);
    hp.sn = rope ? __ldg((const uint2 *)((const uint16_t *)st.d.rope_sin + p * hd) + lane) : make_uint2(0, 0);
    return hp;
}

/* One head of the new token in a warp: row[hd] = RoPE(RMSNorm(src[off..off+hd])) rounded to bf16
 * (the q/k path of toc_qk_rope_append); one 16-byte load per lane. */
__device__ __noinline__ void dk_head(const DkState &st, const void *src, int64_t off, bool norm, float eps,
                                     const DkHeadPre hp, float *row) {
    const int hd = st.d.head_dim, lane = threadIdx.x & 31, half = hd / 2;
    const bool mine = 8 * lane < hd;
    float v[8];
    bf8(mine ? __ldcg((const uint4 *)((const uint16_t *)src + off) + lane) : make_uint4(0, 0, 0, 0), v);
    if (norm) {
        float ss = 0.0f, w[8];
#pragma unroll
        for (int e = 0; e < 8; e++) ss += v[e] * v[e];
        ss = warp_sum(ss);
        const float r = 1.0f / sqrtf(ss / (float)hd + eps);
        bf8(hp.w, w);
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = rbf(w[e] * rbf(v[e] * r));
    }
    float4 *r4 = (float4 *)row;
    if (mine) {
        r4[2 * lane] = make_float4(v[0], v[1], v[2], v[3]);
        r4[2 * lane + 1] = make_float4(v[4], v[5], v[6], v[7]);
    }
    __syncwarp();
    /* lane l < hd / 8 rotates float4s l and hd / 8 + l in place: no other lane reads them, so no
     * barrier between the reads and the writes (the rotated values held across a __syncwarp were
     * spilled, and the spill reload went to L2 after the barrier's L1 invalidation) */
    if (4 * lane < half) {
        const float4 x1 = r4[lane], x2 = r4[half / 4 + lane];
        float4 o1, o2;
        const float c[4] = {bf2f(hp.cs.x & 0xffff), bf2f(hp.cs.x >> 16), bf2f(hp.cs.y & 0xffff), bf2f(hp.cs.y >> 16)};
        const float sn[4] = {bf2f(hp.sn.x & 0xffff), bf2f(hp.sn.x >> 16), bf2f(hp.sn.y & 0xffff), bf2f(hp.sn.y >> 16)};
        rope_pair_dev(x1.x, x2.x, c[0], sn[0], true, o1.x, o2.x);
        rope_pair_dev(x1.y, x2.y, c[1], sn[1], true, o1.y, o2.y);
        rope_pair_dev(x1.z, x2.z, c[2], sn[2], true, o1.z, o2.z);
        rope_pair_dev(x1.w, x2.w, c[3], sn[3], true, o1.w, o2.w);
        o1 = make_float4(rbf(o1.x), rbf(o1.y), rbf(o1.z), rbf(o1.w));
        o2 = make_float4(rbf(o2.x), rbf(o2.y), rbf(o2.z), rbf(o2.w));
        r4[lane] = o1;
        r4[half / 4 + lane] = o2;
    }
    __syncwarp();
}

/* P.V over keys [j0, j1) for one pair of dims: ls += P[j], (a0, a1) += P[j] v_j, the
 * probabilities P[j] = exp(S[j] - m) computed once per key and head beforehand (dk_probs; every
 * thread of a head used to compute each exp itself: hd / 2 times over); vp points at the pair in
 * key 0's value row (stride: pairs per row). */
__device__ __forceinline__ void dk_pv(const float *P, const uint32_t *vp, int stride, int j0, int j1, float &a0,
                                      float &a1, float &ls) {
#pragma unroll 2
    for (int j = j0; j < j1; j++) {
        const float pj = P[j];
        const uint32_t v2 = vp[j * stride];
        ls += pj;
        a0 += pj * __uint_as_float(v2 << 16);
        a1 += pj * __uint_as_float(v2 & 0xffff0000u);
    }
}

/* S[g * stride + j] = exp(S[g * stride + j] - m[g]) for heads g < ng and keys j < n, in place,
 * spread over the block's threads (the caller synchronises before and after). */
__device__ __forceinline__ void dk_probs(float *S, const float *m, int ng, int n, int stride) {
#pragma unroll 1
    for (int e = threadIdx.x; e < ng * n; e += blockDim.x) {
        const int g = e / n, j = e - g * n;
        S[g * stride + j] = __expf(S[g * stride + j] - m[g]);
    }
}

/* Asynchronous 16-byte copy global -> shared (L2 only); dk_cp_wait completes this thread's. */
__device__ __forceinline__ void dk_cp16(void *smem_dst, const void *src) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem_dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void dk_cp_wait(void) {
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
}

/* Shared-memory layout of the attention stage (bytes from the start of the dynamic area), sized
 * on the host for tiles of DkState::tk keys. */
struct DkAttLayout {
    int ks, vs, qs, s, kn, vn, st, wm, ls, op; /* offsets */
    int kstride;                       /* bf16 elements per cached key row (hd + 8: no bank conflicts) */
};
__host__ __device__ inline DkAttLayout dk_att_layout(int hd, int G, int tk, int nt, int *total) {
    DkAttLayout L;
    const int pairs = G * hd / 2;
    L.kstride = hd + 8;
    int o = 0;
    L.ks = o, o += tk * L.kstride * 2;
    L.vs = o, o += tk * hd * 2;
    L.qs = o, o += G * hd * 4;
    L.s = o, o += (G * tk > hd ? G * tk : hd) * 4; /* scores; first the new key row (scratch) */
    L.kn = o, o += hd * 2;
    L.vn = o, o += hd * 2;
    L.st = o, o += 4 * DK_GMAX * 4; /* running max, running sum, rescale factor, new max per head */
    L.wm = o, o += (nt / 32) * DK_GMAX * 4; /* tile max per warp and head */
    L.ls = o, o += 32 * DK_GMAX * 4;       /* tile sum per key group and head */
    L.op = o, o += (pairs > nt ? pairs : nt) * 2 * 4;
    *total = o;
    return L;
}

/* Copies the cached keys and values [t0, t1) of kv head h, except position p (not written yet),
 * into the shared tiles (asynchronous; dk_cp_wait completes it). Called by all threads; the
 * barrier warp issues none. */
template <int NT>
__device__ __noinline__ void dk_att_tile_load(const DkState &st, const to_decoder_layer &ly, const DkAttLayout L,
                                                 char *sm, int h, int64_t t0, int64_t t1, int64_t p) {
    const int hd = st.d.head_dim, cpr = hd / 8;
    const int64_t cap = st.d.capacity;
    const int n = (int)(t1 - t0) * cpr; /* at most a tile */
    const uint4 *kc = (const uint4 *)ly.k_cache + ((int64_t)h * cap + t0) * cpr;
    const uint4 *vc = (const uint4 *)ly.v_cache + ((int64_t)h * cap + t0) * cpr;
#pragma unroll 1
    for (int c = threadIdx.x < DK_BAR_T ? (int)threadIdx.x : n; c < n; c += DK_BAR_T) {
        const int j = c / cpr, e = c - j * cpr;
        if (t0 + j == p) continue;
        dk_cp16(sm + L.ks + (j * L.kstride + e * 8) * 2, kc + c);
        dk_cp16(sm + L.vs + (j * hd + e * 8) * 2, vc + c);
    }
}

/* Attention of the new token at position p over keys [0, p], after the barrier `sync` (passed
 * here: the cached keys and values of this block's first slice are copied into shared memory
 * before it, since they do not depend on this step). Units are (kv head, group of Gb = G / qsplit
 * query heads, key slice): splitting the query heads shortens the serial work of each block
 * (H200, with down folded into gate/up: Qwen3-4B 294 -> 305 tok/s, 0.6B unchanged). Every group
 * computes the new key and value rows; group 0 appends them to the cache. A slice is processed in
 * tiles of st.tk keys with an online softmax:
 *   scores  one lane per key, the Gb query heads against the key row (q broadcast from shared)
 *   softmax warp g < Gb: tile max, rescale factor, probabilities, running sum
 *   P.V     one thread per (key group, query head, pair of dims), results kept in registers
 * Slices are at least a tile long, so a context of up to one tile needs no merge; otherwise the
 * last slice of a kv head to finish merges them (no extra kernel or barrier). */
template <int NT>
__device__ __forceinline__ void dk_attention(const DkState &st, const to_decoder_layer &ly, int64_t p, float *smem,
                                          bool run, int li) {
    /* arrive first: the loads below (descriptors, layer pointers) overlap the barrier */
    dk_arrive<NT>(st);
    const int nh = st.d.n_heads, nkv = st.d.n_kv_heads, hd = st.d.head_dim, G = nh / nkv;
    const int64_t cap = st.d.capacity, kv_len = p + 1;
    const int tk = st.tk;
    /* where the short split would give a block more than one tile, a block takes all query
     * heads of its kv head and a shorter key slice instead: the keys and values are read once,
     * not once per query-head group, and every slice is one tile copied before the barrier (up
     * to nsplit_long tiles of keys). H100, tok/s Qwen3-0.6B / 4B after 4096 keys: 797 / 245
     * against 721 / 230; after 8192: 632 / 217 against 559 / 191; after 1024 keys the short
     * split is faster (941 / 276 against 920 / 273). */
    const bool lng = st.nsplit_long > 0 && kv_len > (int64_t)st.nsplit * tk;
    const int ns = lng ? st.nsplit_long : st.nsplit, QS = lng ? 1 : st.qsplit, Gb = G / QS,
              nunits = nkv * QS * ns;
    int64_t chunk = (kv_len + ns - 1) / ns;
    const int cmin = lng && DK_CHUNK_MIN > 0 && DK_CHUNK_MIN < tk ? DK_CHUNK_MIN : tk;
    if (chunk < cmin) chunk = cmin;
    const int nact = (int)((kv_len + chunk - 1) / chunk); /* slices with keys */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int total;
    const DkAttLayout L = dk_att_layout(hd, Gb, tk, DK_THREADS, &total);
    char *sm = (char *)smem;
    float *qs = (float *)(sm + L.qs), *S = (float *)(sm + L.s), *mrun = (float *)(sm + L.st);
    float *lrun = mrun + DK_GMAX, *alph = lrun + DK_GMAX, *mnew = alph + DK_GMAX, *op = (float *)(sm + L.op);
    float *wmx = (float *)(sm + L.wm), *lsum = (float *)(sm + L.ls);
    uint16_t *ks = (uint16_t *)(sm + L.ks), *vs = (uint16_t *)(sm + L.vs);
    uint16_t *kn = (uint16_t *)(sm + L.kn), *vn = (uint16_t *)(sm + L.vn);
    __shared__ int last;
    const float scale = st.d.attn_scale;
    float *ws_o = st.ws, *ws_ml = st.ws + (size_t)nh * ns * hd;
    const bool qk_norm = ly.q_norm != nullptr;
    const int pairs = Gb * hd / 2, hp2 = hd / 2;
    const int kgs = pairs < DK_THREADS ? DK_THREADS / pairs : 1; /* key groups of P.V */

    /* before the barrier: the first unit's first tile and the new token's head constants */
    const int u0 = blockIdx.x;
    const bool pre = run && u0 < nunits && u0 % ns < nact;
    DkHeadPre hpre;
    if (pre) {
        const int h = u0 / (QS * ns);
        const int64_t s0 = (int64_t)(u0 % ns) * chunk;
        dk_att_tile_load<NT>(st, ly, L, sm, h, s0, min(kv_len, s0 + tk), p);
        if (warp <= Gb) hpre = dk_head_pre(st, warp < Gb ? ly.q_norm : ly.k_norm, p);
    }
    dk_wait<NT>(st);
    if (!run) return;
    dk_stamp(st.prof, li, 20);
    /* units: (kv head h, query-head group qg, key slice s); a group is Gb query heads */
    for (int unit = u0; unit < nunits; unit += gridDim.x) {
        const int h = unit / (QS * ns), qg = unit / ns - h * QS, s = unit % ns, g0 = qg * Gb;
        if (s >= nact) continue; /* block-uniform */
        const int64_t s0 = (int64_t)s * chunk, s1 = min(kv_len, s0 + chunk);
        const bool has_new = s1 == kv_len;
        if (unit != u0 && warp <= Gb) hpre = dk_head_pre(st, warp < Gb ? ly.q_norm : ly.k_norm, p);
        const int64_t qkv_k = (int64_t)nh * hd + (int64_t)h * hd, qkv_v = qkv_k + (int64_t)nkv * hd;
        /* the new token's key and value rows: every group computes them, group 0 appends them */
        if (warp < Gb || (warp == Gb && has_new)) { /* one call site */
            /* the new key row goes to S as scratch (not in use yet) */
            dk_head(st, st.qkv, warp < Gb ? (int64_t)(h * G + g0 + warp) * hd : qkv_k, qk_norm, ly.qk_eps, hpre,
                    warp < Gb ? qs + warp * hd : S);
        }
        if (warp == Gb && has_new) {
            const float *kf = S;
#pragma unroll 1
            for (int d = lane; d < hd; d += 32) {
                const uint16_t b = f2bf(kf[d]);
                if (qg == 0) ((uint16_t *)ly.k_cache)[((int64_t)h * cap + p) * hd + d] = b;
                kn[d] = b;
            }
        } else if (warp == Gb + 1 && has_new) {
            uint16_t b[DK_DMAX];
#pragma unroll
            for (int c = 0; c < DK_DMAX; c++) {
                const int d = lane + 32 * c;
                b[c] = d < hd ? __ldcg((const uint16_t *)st.qkv + qkv_v + d) : 0;
            }
#pragma unroll
            for (int c = 0; c < DK_DMAX; c++) {
                const int d = lane + 32 * c;
                if (d < hd) {
                    if (qg == 0) ((uint16_t *)ly.v_cache)[((int64_t)h * cap + p) * hd + d] = b[c];
                    vn[d] = b[c];
                }
            }
        }
        if (tid < Gb) {
            mrun[tid] = -INFINITY;
            lrun[tid] = 0.0f;
        }
        float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}}; /* pairs tid and tid + DK_THREADS */
        for (int64_t t0 = s0; t0 < s1; t0 += tk) {
            const int64_t t1 = min(s1, t0 + tk);
            const int n = (int)(t1 - t0);
            if (t0 != s0 || unit != u0) dk_att_tile_load<NT>(st, ly, L, sm, h, t0, t1, p);
            dk_cp_wait();
            __syncthreads();
            if (t0 == s0 && unit == u0) dk_stamp(st.prof, li, 21);
            if (p >= t0 && p < t1) { /* the new token's row */
#pragma unroll 1
                for (int d = tid; d < hd; d += DK_THREADS) {
                    ks[(p - t0) * L.kstride + d] = kn[d];
                    vs[(p - t0) * hd + d] = vn[d];
                }
                __syncthreads();
            }
            /* scores; each warp leaves the tile max of its keys per head */
            if (DK_ATT_MMA && hd % 16 == 0 && Gb >= 4) {
                /* on tensor cores: a warp takes 16 keys at a time, A = the Gb query rows (bf16
                 * values: dk_head rounded them, so the conversion is exact) padded to 16 rows,
                 * B = the keys (a 32-bit load of two dims per lane; rows hd + 8 apart: no bank
                 * conflicts), fp32 products; lane (gid, tig) gets head gid's scores of keys
                 * 2 tig, 2 tig + 1 of each half. Past the tile's n keys the last key is read and
                 * its score dropped. H200 after 4096 keys: Qwen3-4B (4 query heads a kv head)
                 * 311.5 against 300.1 tok/s; Qwen3-0.6B (2) 902 against 910, so fewer heads keep
                 * the lane loop, whose work grows with them. */
                const int gid = lane >> 2, tig = lane & 3;
                const bool hrow = gid < Gb;
                const float *qrow = qs + (hrow ? gid : 0) * hd;
                float hm = -INFINITY;
#pragma unroll 1
                for (int kb = warp * 16; kb < n; kb += DK_WARPS * 16) {
                    float c[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
                    const uint16_t *k0r = ks + min(kb + gid, n - 1) * L.kstride + 2 * tig;
                    const uint16_t *k1r = ks + min(kb + 8 + gid, n - 1) * L.kstride + 2 * tig;
#pragma unroll 2
                    for (int k0 = 0; k0 < hd; k0 += 16) {
                        uint32_t a0 = 0, a2 = 0;
                        if (hrow) {
                            const float2 x = *(const float2 *)(qrow + k0 + 2 * tig);
                            const float2 y = *(const float2 *)(qrow + k0 + 8 + 2 * tig);
                            a0 = (__float_as_uint(x.x) >> 16) | (__float_as_uint(x.y) & 0xffff0000u);
                            a2 = (__float_as_uint(y.x) >> 16) | (__float_as_uint(y.y) & 0xffff0000u);
                        }
                        mma_bf16_16816(c[0], a0, 0u, a2, 0u, *(const uint32_t *)(k0r + k0),
                                       *(const uint32_t *)(k0r + k0 + 8));
                        mma_bf16_16816(c[1], a0, 0u, a2, 0u, *(const uint32_t *)(k1r + k0),
                                       *(const uint32_t *)(k1r + k0 + 8));
                    }
                    if (hrow) {
#pragma unroll
                        for (int h8 = 0; h8 < 2; h8++)
#pragma unroll
                            for (int e = 0; e < 2; e++) {
                                const int j = kb + 8 * h8 + 2 * tig + e;
                                if (j < n) {
                                    const float v = c[h8][e] * scale;
                                    S[gid * tk + j] = v;
                                    hm = fmaxf(hm, v);
                                }
                            }
                    }
                }
                hm = fmaxf(hm, __shfl_xor_sync(0xffffffffu, hm, 1));
                hm = fmaxf(hm, __shfl_xor_sync(0xffffffffu, hm, 2));
                if (hrow && tig == 0) wmx[warp * DK_GMAX + gid] = hm;
            } else {
                /* one lane per key (a tile holds at most DK_THREADS keys) and one query head at a
                 * time (the key row is re-read from shared memory: the loop stays small for the
                 * instruction cache) */
                const int j = warp * 32 + lane;
                const bool ok = j < n;
                const uint4 *kr = (const uint4 *)(ks + (ok ? j : 0) * L.kstride);
#pragma unroll 1
                for (int g = 0; g < Gb; g++) {
                    const float4 *q4 = (const float4 *)(qs + g * hd);
                    float sc = 0.0f;
                    if (warp * 32 < n) {
#pragma unroll 2
                        for (int c = 0; c < hd / 8; c++) {
                            float kf[8];
                            bf8(kr[c], kf);
                            const float4 a = q4[2 * c], b = q4[2 * c + 1];
                            sc += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + b.x * kf[4] +
                                  b.y * kf[5] + b.z * kf[6] + b.w * kf[7];
                        }
                    }
                    sc = ok ? sc * scale : -INFINITY;
                    if (ok) S[g * tk + j] = sc;
                    sc = warp_max(sc);
                    if (lane == 0) wmx[warp * DK_GMAX + g] = sc;
                }
            }
            __syncthreads();
            /* the new running max and rescale factor per head, then the tile's probabilities once
             * per key and head */
            if (tid < Gb) {
                const float mo = mrun[tid];
                float mn = mo;
#pragma unroll 4
                for (int w = 0; w < DK_WARPS; w++) mn = fmaxf(mn, wmx[w * DK_GMAX + tid]);
                alph[tid] = mo == -INFINITY ? 0.0f : __expf(mo - mn);
                mnew[tid] = mn;
            }
            __syncthreads();
            dk_probs(S, mnew, Gb, n, tk);
            __syncthreads();
            /* P.V: thread -> (key group, query head, pair of dims) */
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int id = tid + r * DK_THREADS;
                if (id < kgs * pairs) {
                    const int kg = id / pairs, pi = id - kg * pairs, g = pi / hp2, dp = pi - g * hp2;
                    const int j0 = n * kg / kgs, j1 = n * (kg + 1) / kgs;
                    const float a = alph[g];
                    const uint32_t *vp = (const uint32_t *)vs + dp;
                    float a0 = acc[r][0] * a, a1 = acc[r][1] * a, ls = 0.0f;
                    dk_pv(S + g * tk, vp, hp2, j0, j1, a0, a1, ls);
                    acc[r][0] = a0;
                    acc[r][1] = a1;
                    if (dp == 0) lsum[kg * DK_GMAX + g] = ls;
                }
            }
            __syncthreads();
            if (tid < Gb) { /* the running sum and max of head tid */
                float ls = 0.0f;
#pragma unroll 1
                for (int kg = 0; kg < kgs; kg++) ls += lsum[kg * DK_GMAX + tid];
                lrun[tid] = lrun[tid] * alph[tid] + ls;
                mrun[tid] = mnew[tid];
            }
            __syncthreads(); /* the tile, S and the factors are reused */
        }
        if (unit == u0) dk_stamp(st.prof, li, 22);
        /* sum the key groups in a fixed order */
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int id = tid + r * DK_THREADS;
            if (id < kgs * pairs) {
                op[2 * id] = acc[r][0];
                op[2 * id + 1] = acc[r][1];
            }
        }
        __syncthreads();
#pragma unroll 1
        for (int e = tid; e < Gb * hd; e += DK_THREADS) {
            const int g = e / hd;
            float O = 0.0f;
#pragma unroll 1
            for (int kg = 0; kg < kgs; kg++) O += op[kg * pairs * 2 + e];
            const float M = mrun[g], Ls = lrun[g];
            const int64_t hq = (int64_t)h * G + g0 + g;
            const int d = e - g * hd;
            if (nact == 1) {
                stb(st.attn, hq * hd + d, Ls > 0.0f ? O / Ls : 0.0f);
            } else {
                const int64_t slot = hq * ns + s;
                ws_o[slot * hd + d] = O;
                if (d == 0) {
                    ws_ml[slot * 2] = M;
                    ws_ml[slot * 2 + 1] = Ls;
                }
            }
        }
        if (nact > 1) {
            /* the last slice of kv head h to finish merges its slices */
            __threadfence();
            __syncthreads();
            /* the last of the kv head's nact x QS units merges all its query heads */
            if (tid == 0) last = atomicAdd(&st.att_cnt[h], 1u) == (unsigned)(nact * QS) - 1;
            __syncthreads();
            if (last) {
                __threadfence();
#pragma unroll 1
                for (int e = tid; e < G * hd; e += DK_THREADS) {
                    /* the slices' (max, sum) pairs and values are read DK_MERGE_B slices at a time, all
                     * loads of a batch in flight together, and merged online (the running max
                     * rescales what is summed so far): one L2 round trip per batch. The
                     * merge is on the stage's critical path; a pass for the max and another for
                     * the sums took twice the round trips (H200, Qwen3-4B after 4096 tokens: the
                     * merging block's tail was 5.2 us against 1.6 for the others). */
                    const int g = e / hd, d = e - g * hd;
                    const int64_t hq = (int64_t)h * G + g;
                    float M = -INFINITY, Lsum = 0.0f, O = 0.0f;
#pragma unroll 1
                    for (int t0 = 0; t0 < nact; t0 += DK_MERGE_B) {
                        float2 ml[DK_MERGE_B];
                        float o[DK_MERGE_B];
#pragma unroll
                        for (int i = 0; i < DK_MERGE_B; i++) {
                            const int64_t slot = hq * ns + t0 + i;
                            const bool in = t0 + i < nact;
                            ml[i] = in ? __ldcg((const float2 *)(ws_ml + slot * 2)) : make_float2(-INFINITY, 0.0f);
                            o[i] = in ? __ldcg(ws_o + slot * hd + d) : 0.0f;
                        }
                        float Mb = M;
#pragma unroll
                        for (int i = 0; i < DK_MERGE_B; i++) Mb = fmaxf(Mb, ml[i].x);
                        if (Mb == -INFINITY) continue; /* nothing seen yet: no keys in these slices */
                        const float r = __expf(M - Mb); /* 0 while M is -inf */
                        Lsum *= r;
                        O *= r;
#pragma unroll
                        for (int i = 0; i < DK_MERGE_B; i++) {
                            const float f = __expf(ml[i].x - Mb);
                            Lsum += ml[i].y * f;
                            O += o[i] * f;
                        }
                        M = Mb;
                    }
                    stb(st.attn, hq * hd + d, Lsum > 0.0f ? O / Lsum : 0.0f);
                }
                if (tid == 0) atomicExch(&st.att_cnt[h], 0u);
            }
        }
        __syncthreads(); /* shared memory is reused by the next unit */
    }
    dk_stamp(st.prof, li, 23);
}

/* ---------------------------------------------------------------------------------------------
 * Attention folded into o_proj (contexts of at most st.fold_keys keys, one key tile): block b
 * takes query head hq = b / R and rows [hidden r / R, hidden (r + 1) / R) of o_proj (r = b mod R,
 * R = st.frep blocks per head), restricted to the head's hd columns. Each block computes its
 * head's attention itself (the R blocks of a head compute the same values) and multiplies the
 * result into its rows right away; the rows' sums are added to oacc with atomics and the gate/up
 * staging adds them to the residual (x2 = x + round(o)). This removes a grid barrier, the o_proj
 * staging and its row sums, and the attention stage in which most blocks had nothing to do. The
 * o_proj weights do not depend on the step: they are copied into shared memory (cp.async) from the
 * barrier on (the first DK_FOLD_FIRST bytes by the warps that do not read the new token's q, k and
 * v rows; measured +2% for Qwen3-0.6B against issuing them once those rows were read), so they
 * stream while the attention runs; rows that do
 * not fit go into the key tile once the scores are done, and any rest into registers before P.V
 * (512-thread kernel) or through shared memory after the products (384). The folded kernel takes
 * all shared memory only where every row fits beside a full key tile: otherwise the L1 left to
 * the other stages' loads in flight is worth more (see the host side). The products run on CUDA
 * cores, one thread per row. */
struct DkFoldLayout {
    int ks, vs, qs, s, kn, vn, wm, ls, op, xo, w; /* byte offsets */
    int kstride; /* bf16 per key row and per weight row (hd + 8: no bank conflicts) */
    int wrows;   /* weight rows in the area at w (a multiple of 16) */
    int krows;   /* weight rows that fit the key tile once the scores are done (a multiple of 16) */
};
__host__ __device__ inline DkFoldLayout dk_fold_layout(int hd, int64_t kv, int nt, int smem) {
    DkFoldLayout L;
    L.kstride = hd + 8;
    const int kvn = (int)kv, rowb = L.kstride * 2;
    int o = 0;
    L.ks = o, o += kvn * rowb;
    L.vs = o, o += kvn * hd * 2;
    L.qs = o, o += hd * 4;
    L.s = o, o += ((kvn > hd ? kvn : hd) * 4 + 15) / 16 * 16; /* scores; first the new key row */
    L.kn = o, o += hd * 2;
    L.vn = o, o += hd * 2;
    L.wm = o, o += (nt / 32) * 4;
    L.ls = o, o += 32 * 4;
    o = (o + 15) / 16 * 16;
    L.op = o, o += 2 * nt * 4; /* P.V partials: key groups x hd */
    L.xo = o, o += hd * 4; /* the head's output (floats of bf16 values) */
    L.w = o;
    L.wrows = smem > o ? (smem - o) / rowb / 16 * 16 : 0;
    L.krows = kvn / 16 * 16;
    return L;
}

/* Copies weight rows [r0, r0 + n) of o_proj, the head's columns [c0, c0 + hd), into the rows of a
 * shared area (pitch kstride); asynchronous, issued by the threads from `first` on, committed as
 * one group by every thread (an empty one below `first`). */
template <int NT>
__device__ __forceinline__ void dk_fold_copy(const to_decoder_layer &ly, int64_t nq, int hd, int kstride,
                                             char *area, int64_t r0, int n, int64_t c0, int first = 0) {
    const int cpr = hd / 8;
    const uint16_t *w = (const uint16_t *)ly.o_proj + r0 * nq + c0;
#pragma unroll 1
    for (int c = (int)threadIdx.x - first; c >= 0 && c < n * cpr; c += DK_THREADS - first) {
        const int r = c / cpr, e = c - r * cpr;
        dk_cp16(area + (r * kstride + e * 8) * 2, w + (int64_t)r * nq + e * 8);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

/* oacc[i] += (row i < n of the area) . xo for the head's share of o: one thread per row (rows are
 * kstride apart, so the 8 lanes of a shared-memory phase read 8 different bank groups; xo, as
 * floats, is broadcast), four partial sums so that the products are not one dependent chain.
 * Measured no faster: the products on tensor cores (mma.sync), and vector atomics of four rows. */
template <int NT>
__device__ __forceinline__ void dk_fold_rows(const char *area, int n, int kstride, int hd, const float *xo,
                                             float *oacc) {
    const float4 *x4 = (const float4 *)xo;
#pragma unroll 1
    for (int r = threadIdx.x; r < n; r += DK_THREADS) {
        const uint4 *w = (const uint4 *)(area + (size_t)r * kstride * 2);
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma unroll 4
        for (int c = 0; c < hd / 8; c++) {
            float f[8];
            bf8(w[c], f);
            const float4 x = x4[2 * c], y = x4[2 * c + 1];
            a0 += f[0] * x.x + f[4] * y.x;
            a1 += f[1] * x.y + f[5] * y.y;
            a2 += f[2] * x.z + f[6] * y.z;
            a3 += f[3] * x.w + f[7] * y.w;
        }
        atomicAdd(oacc + r, (a0 + a1) + (a2 + a3));
    }
}

/* The rows of a folding block that fit in neither shared area come straight from global memory:
 * a row takes 16 lanes (hd <= 128) or 32, one 16-byte chunk each, and a warp has DK_FOLD_TU row
 * slots loaded at once (dk_tail_load, issued before P.V so that they arrive meanwhile);
 * dk_tail_rows then sums each row over its lanes and adds it to oacc. */
#ifndef DK_FOLD_TU
#define DK_FOLD_TU 8
#endif
struct DkTail {
    uint4 v[DK_FOLD_TU];
};
template <int NT>
__device__ __forceinline__ int dk_tail_row(int hd, int r0, int u) {
    const int lane = threadIdx.x & 31, lpr = hd <= 128 ? 16 : 32;
    return r0 + ((threadIdx.x >> 5) * DK_FOLD_TU + u) * (32 / lpr) + lane / lpr;
}
template <int NT>
__device__ __forceinline__ DkTail dk_tail_load(const to_decoder_layer &ly, int64_t nq, int hd, int64_t grow0, int64_t c0,
                                               int r0, int r1) {
    const int lpr = hd <= 128 ? 16 : 32, c = (threadIdx.x & 31) % lpr;
    DkTail t;
#pragma unroll
    for (int u = 0; u < DK_FOLD_TU; u++) {
        const int r = dk_tail_row<NT>(hd, r0, u);
        t.v[u] = r < r1 && c < hd / 8 ? ld_stream((const uint4 *)((const uint16_t *)ly.o_proj + (grow0 + r) * nq + c0) + c)
                                      : make_uint4(0, 0, 0, 0);
    }
    return t;
}
template <int NT>
__device__ __forceinline__ void dk_tail_rows(const DkTail &t, int hd, const float *xo, float *oacc, int r0, int r1) {
    const int lpr = hd <= 128 ? 16 : 32, lane = threadIdx.x & 31, c = lane % lpr;
    const float4 *x4 = (const float4 *)xo;
    const int cc = c < hd / 8 ? c : 0;
    const float4 xa = x4[2 * cc], xb = x4[2 * cc + 1];
#pragma unroll
    for (int u = 0; u < DK_FOLD_TU; u++) {
        float f[8];
        bf8(t.v[u], f);
        float a = f[0] * xa.x + f[1] * xa.y + f[2] * xa.z + f[3] * xa.w + f[4] * xb.x + f[5] * xb.y + f[6] * xb.z +
                  f[7] * xb.w;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            if (o < lpr) a += __shfl_xor_sync(0xffffffffu, a, o);
        const int r = dk_tail_row<NT>(hd, r0, u);
        if (c == 0 && r < r1) atomicAdd(oacc + r, a);
    }
}

template <int NT>
__device__ __forceinline__ void dk_att_o(const DkState &st, const to_decoder_layer &ly, int li, int64_t p, float *smem,
                                         int skip) {
    dk_arrive<NT>(st);
    const int nh = st.d.n_heads, nkv = st.d.n_kv_heads, hd = st.d.head_dim, G = nh / nkv, R = st.frep;
    const int64_t kv = p + 1, hid = st.d.hidden, cap = st.d.capacity, nq = (int64_t)nh * hd;
    const int b = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const bool active = b < nh * R;
    const int hq = b / R, rr = b - hq * R, h = hq / G;
    const DkFoldLayout L = dk_fold_layout(hd, kv, DK_THREADS, st.fsmem);
    char *sm = (char *)smem;
    float *qs = (float *)(sm + L.qs), *S = (float *)(sm + L.s), *wm = (float *)(sm + L.wm);
    float *lsm = (float *)(sm + L.ls), *op = (float *)(sm + L.op);
    uint16_t *ks = (uint16_t *)(sm + L.ks), *vs = (uint16_t *)(sm + L.vs);
    uint16_t *kn = (uint16_t *)(sm + L.kn), *vn = (uint16_t *)(sm + L.vn);
    float *xo = (float *)(sm + L.xo);
    const int64_t row0 = hid * rr / R, nrows = hid * (rr + 1) / R - row0;
    float *oacc = st.oacc + (size_t)(li & 1) * hid + row0;
    /* before the barrier: the cached keys and values (asynchronous) and the head constants */
    DkHeadPre hpre;
    if (active) {
        DkAttLayout AL;
        AL.ks = L.ks, AL.vs = L.vs, AL.kstride = L.kstride;
        dk_att_tile_load<NT>(st, ly, AL, sm, h, 0, kv, p);
        asm volatile("cp.async.commit_group;" ::: "memory");
        if (warp < 2) hpre = dk_head_pre(st, warp == 0 ? ly.q_norm : ly.k_norm, p);
    }
    dk_wait<NT>(st);
    if (!active) return;
    dk_stamp(st.prof, li, 20);
    /* the first DK_FOLD_FIRST bytes of the o_proj rows stream into shared memory at once, issued
     * by the warps that do not read the new token's rows (the others commit an empty group) */
    const int na = (int)(nrows < L.wrows ? nrows : L.wrows);
    int n1 = DK_FOLD_FIRST / (hd * 2);
    if (n1 > na) n1 = na;
    const int64_t c0 = (int64_t)hq * hd;
    dk_fold_copy<NT>(ly, nq, hd, L.kstride, sm + L.w, row0, n1, c0, 3 * 32); /* warps 0-2: below */
    /* the new token's rows: warp 0 the query head, warp 1 the key (appended by one block per kv
     * head), warp 2 the value */
    const bool app = hq % G == 0 && rr == 0;
    const int64_t qkv_k = nq + (int64_t)h * hd, qkv_v = qkv_k + (int64_t)nkv * hd;
    if (warp < 2) dk_head(st, st.qkv, warp == 0 ? (int64_t)hq * hd : qkv_k, ly.q_norm != nullptr, ly.qk_eps, hpre,
                          warp == 0 ? qs : S);
    if (warp == 1) {
#pragma unroll 1
        for (int d = lane; d < hd; d += 32) {
            const uint16_t v = f2bf(S[d]);
            if (app) ((uint16_t *)ly.k_cache)[((int64_t)h * cap + p) * hd + d] = v;
            kn[d] = v;
        }
    } else if (warp == 2) {
#pragma unroll 1
        for (int d = lane; d < hd; d += 32) {
            const uint16_t v = __ldcg((const uint16_t *)st.qkv + qkv_v + d);
            if (app) ((uint16_t *)ly.v_cache)[((int64_t)h * cap + p) * hd + d] = v;
            vn[d] = v;
        }
    }
    __syncthreads();
    asm volatile("cp.async.wait_group 1;" ::: "memory"); /* the keys and values */
    if (tid < hd) {
        ks[p * L.kstride + tid] = kn[tid];
        vs[p * hd + tid] = vn[tid];
    }
    __syncthreads();
    dk_stamp(st.prof, li, 21);
    const bool att = !(skip & 2);
    /* scores, one thread per key */
    {
        const int j = tid;
        float sc = -INFINITY;
        if (att && warp * 32 < kv) {
            const uint4 *kr = (const uint4 *)(ks + (j < kv ? j : 0) * L.kstride);
            const float4 *q4 = (const float4 *)qs;
            float a = 0.0f;
#pragma unroll 2
            for (int c = 0; c < hd / 8; c++) {
                float kf[8];
                bf8(kr[c], kf);
                const float4 x = q4[2 * c], y = q4[2 * c + 1];
                a += x.x * kf[0] + x.y * kf[1] + x.z * kf[2] + x.w * kf[3] + y.x * kf[4] + y.y * kf[5] +
                     y.z * kf[6] + y.w * kf[7];
            }
            if (j < kv) {
                sc = a * st.d.attn_scale;
                S[j] = sc;
            }
        }
        sc = warp_max(sc);
        if (lane == 0) wm[warp] = sc;
    }
    __syncthreads();
    /* the rest of the rows that fit the weight area (not at the barrier: more copies there stall
     * the issuing warps, and the heads' __syncthreads waits for them), then the key tile (free now) */
    if (na > n1) dk_fold_copy<NT>(ly, nq, hd, L.kstride, sm + L.w + n1 * L.kstride * 2, row0 + n1, na - n1, c0);
    const int nbk = (int)(nrows - na < L.krows ? nrows - na : L.krows);
    if (nbk > 0) dk_fold_copy<NT>(ly, nq, hd, L.kstride, sm + L.ks, row0 + na, nbk, c0);
    /* the first batch of the rows beyond both areas, into registers (the 512-thread kernel; the
     * 384-thread one copies them into shared memory after the products, see below) */
    const int TB = DK_WARPS * DK_FOLD_TU * (hd <= 128 ? 2 : 1); /* rows per tail batch */
    const int t0 = na + nbk;
    DkTail tail;
    if (NT == 512) tail = dk_tail_load<NT>(ly, nq, hd, row0, c0, t0, (int)min((int64_t)t0 + TB, nrows));
    /* the probabilities, once per key, then P.V: thread -> (key group, pair of dims) */
    if (att) {
        float m = -INFINITY;
#pragma unroll 4
        for (int w = 0; w < DK_WARPS; w++) m = fmaxf(m, wm[w]);
        dk_probs(S, &m, 1, (int)kv, 0);
    }
    __syncthreads();
    const int pairs = hd / 2, kgs = DK_THREADS / pairs;
    if (att && tid < kgs * pairs) {
        const int kg = tid / pairs, dp = tid - kg * pairs;
        const int j0 = (int)(kv * kg / kgs), j1 = (int)(kv * (kg + 1) / kgs);
        const uint32_t *vp = (const uint32_t *)vs + dp;
        float a0 = 0.0f, a1 = 0.0f, ls = 0.0f;
        dk_pv(S, vp, pairs, j0, j1, a0, a1, ls);
        op[kg * hd + 2 * dp] = a0;
        op[kg * hd + 2 * dp + 1] = a1;
        if (dp == 0) lsm[kg] = ls;
    }
    __syncthreads();
    if (tid < hd) { /* the head's output, rounded like the op path's attention output */
        float O = 0.0f, Ls = 0.0f;
#pragma unroll 1
        for (int kg = 0; kg < kgs; kg++) {
            O += op[kg * hd + tid];
            Ls += lsm[kg];
        }
        xo[tid] = rbf(Ls > 0.0f ? O / Ls : 0.0f);
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncthreads();
    dk_stamp(st.prof, li, 22);
    if (skip & 4) return;
    dk_fold_rows<NT>(sm + L.w, na, L.kstride, hd, xo, oacc);
    if (nbk > 0) dk_fold_rows<NT>(sm + L.ks, nbk, L.kstride, hd, xo, oacc + na);
    if (NT == 512) { /* the rows beyond both areas, a batch of TB at a time from registers */
#pragma unroll 1
        for (int r = t0; r < nrows; r += TB) {
            if (r > t0) tail = dk_tail_load<NT>(ly, nq, hd, row0, c0, r, (int)min((int64_t)r + TB, nrows));
            dk_tail_rows<NT>(tail, hd, xo, oacc, r, (int)min((int64_t)r + TB, nrows));
        }
    } else { /* a shared-memory batch at a time (the registers are what the 384-thread kernel's
              * code generation is sensitive to: +1.8% for Qwen3-0.6B on an H100 without this) */
#pragma unroll 1
        for (int64_t r = t0; r < nrows && L.wrows > 0; r += L.wrows) {
            const int n = (int)(nrows - r < L.wrows ? nrows - r : L.wrows);
            __syncthreads();
            dk_fold_copy<NT>(ly, nq, hd, L.kstride, sm + L.w, row0 + r, n, c0);
            asm volatile("cp.async.wait_group 0;" ::: "memory");
            __syncthreads();
            dk_fold_rows<NT>(sm + L.w, n, L.kstride, hd, xo, oacc + r);
        }
    }
    dk_stamp(st.prof, li, 23);
}

/* The step kernel. With FOLD it computes steps whose context fits st.fold_keys (attention folded
 * into o_proj, dk_att_o) and returns at once for longer ones; without, it computes the others
 * (and every step where nothing folds). Both run in every step, the folded one first: each is
 * compiled on its own, so the folded stage costs the other no registers. */
template <int NT, bool FOLD, bool F8>
__global__ void __launch_bounds__(DK_THREADS, 1) decoder_step_kernel(const __grid_constant__ DkState st) {
    extern __shared__ __align__(16) float smem[];
    const to_decoder_desc &d = st.d;
    {
        const int32_t p0 = __ldcg(d.counters + 1);
        if (FOLD) {
            if ((int64_t)p0 + 1 > st.fold_keys) { /* not this kernel's step: the other one runs */
                if (blockIdx.x == 0 && threadIdx.x == 0) *st.fold_ran = 0;
                return;
            }
        } else if (st.fold_keys > 0 && __ldcg(st.fold_ran)) {
            return; /* the folded kernel computed this step */
        }
    }
    if (st.prof && threadIdx.x == 0) { /* profiling: which multiprocessor ran this block */
        unsigned sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        st.prof[(size_t)blockIdx.x * DK_PROF_STRIDE + DK_PROF_SMID] = sm;
    }
    if (threadIdx.x == DK_BAR_T) { /* the barrier state: the barrier thread's alone */
        dk_target = __ldcg(st.bar + 1);
        dk_nbar = 0;
    }
    const int32_t tok = __ldcg(d.counters), pos = __ldcg(d.counters + 1);
    if (pos < 0 || pos >= d.capacity) return; /* every block returns: no barrier is left waiting */
    const bool tok_ok = tok >= 0 && tok < d.vocab;
    /* an out-of-range id reads row 0 (the host validates ids; the feedback is always in range) */
    const void *erow = (const char *)d.embed + (tok_ok ? (int64_t)tok : 0) * d.hidden * 2;
    const int skip = d.profile_skip;
    /* a stage left out for profiling still passes its barrier */
    /* stages in order: per layer qkv, attention, o_proj, gate/up (+ down), then the LM head; one
     * call site each, so that the stage functions are inlined (no calling-convention saves) */
    const int nsteps = 4 * d.n_layers + 1;
#pragma unroll 1
    for (int s = 0; s < nsteps; s++) {
        const int li = s >> 2, stage = s & 3;
        if (s < nsteps - 1 && stage == 1) {
            if (FOLD)
                dk_att_o<NT>(st, st.layers[li], li, pos, smem, skip);
            else
                dk_attention<NT>(st, st.layers[li], pos, smem, !(skip & 2), li);
            continue;
        }
        if (FOLD && s < nsteps - 1 && stage == 2) continue; /* o_proj ran with the attention */
        const bool lm = s == nsteps - 1;
        const int which = lm ? DK_LM : stage == 0 ? DK_QKV : stage == 2 ? DK_O : DK_GU;
        const int bit = lm ? 32 : stage == 0 ? 1 : stage == 2 ? 4 : 8;
        if (skip & bit) {
            if (s > 0) dk_sync<NT>(st);
        } else {
            if (F8 && (which == DK_QKV || which == DK_GU)) /* FP8 projections; o_proj and the LM head bf16 */
                dk_gemv<NT, FOLD, true>(st, li, which, erow, smem, s > 0);
            else
                dk_gemv<NT, FOLD, false>(st, lm ? 0 : li, which, erow, smem, s > 0);
        }
    }
    dk_sync<NT>(st);
    /* the last layer's down sums are read: zero them (the next step's layer 0 starts from zero) */
    for (int64_t e = (int64_t)blockIdx.x * DK_THREADS + threadIdx.x; e < d.hidden; e += (int64_t)gridDim.x * DK_THREADS)
        st.dacc[(size_t)((d.n_layers - 1) & 1) * d.hidden + e] = 0.0f;
    if (FOLD) /* likewise the o_proj sums */
        for (int64_t e = (int64_t)blockIdx.x * DK_THREADS + threadIdx.x; e < d.hidden; e += (int64_t)gridDim.x * DK_THREADS)
            st.oacc[(size_t)((d.n_layers - 1) & 1) * d.hidden + e] = 0.0f;
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
        if (FOLD) *st.fold_ran = 1; /* the other kernel skips this step */
    }
    if (blockIdx.x == 0 && threadIdx.x == DK_BAR_T) {
        st.bar[1] = dk_target; /* where the next launch's barriers start */
    }
}

/* ---------------------------------------------------------------------------------------------
 * Host side */
typedef void (*DkKernel)(const DkState);

/* src/cuda/fp8.cu: FP8 o_proj dequantized to bf16 at creation */
extern "C" int toc_fp8_dequant(const uint8_t *w, const float *scale, int64_t n, int64_t k, int64_t block_n,
                               int64_t block_k, void *out, int out_dtype);

struct TocDecoder {
    DkState st;
    DkKernel kernel;
    DkKernel kernel_fold; /* or NULL: launched before kernel in every step (see decoder_step_kernel) */
    int threads;
    int dev;
    unsigned grid;
    size_t smem;
    void *allocs[7]; /* activations, workspace, control, layers, down_proj transposed, F8: its
                      * scales transposed, bf16 o_proj copies */
};

/* out[c][r] = in[r][c] for a rows x cols matrix (32 x 32 tiles through shared memory). */
template <typename T>
__global__ void dk_transpose_kernel(const T *in, T *out, int64_t rows, int64_t cols) {
    __shared__ T t[32][33];
    const int64_t r0 = (int64_t)blockIdx.y * 32, c0 = (int64_t)blockIdx.x * 32;
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
        const int64_t r = r0 + i, c = c0 + threadIdx.x;
        if (r < rows && c < cols) t[i][threadIdx.x] = in[r * cols + c];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
        const int64_t c = c0 + i, r = r0 + threadIdx.x;
        if (c < cols && r < rows) out[c * rows + r] = t[threadIdx.x][i];
    }
}

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
                  d.tokens && d.logits && ((uintptr_t)d.lm_head & 15) == 0 &&
                  ((uintptr_t)d.embed & 15) == 0 && ((uintptr_t)d.final_norm & 15) == 0 &&
                  ((uintptr_t)d.rope_cos & 15) == 0 && ((uintptr_t)d.rope_sin & 15) == 0,
              TO_ERR_INVALID_ARGUMENT,
              "toc_decoder_create: NULL or misaligned model pointer (the embedding, LM head, final "
              "norm and RoPE tables must be 16-byte aligned)");
    TOC_CHECK(d.weight_dtype == 0 || d.weight_dtype == TO_BF16 || d.weight_dtype == TO_F8_E4M3, TO_ERR_DTYPE,
              "toc_decoder_create: weight_dtype must be 0, bf16 or f8_e4m3, not %d", d.weight_dtype);
    const bool f8 = d.weight_dtype == TO_F8_E4M3;
    TOC_CHECK(!f8 || d.hidden % 16 == 0, TO_ERR_UNSUPPORTED,
              "toc_decoder_create: FP8 weights need hidden %% 16 == 0, got %d", d.hidden);
    for (int i = 0; i < d.n_layers; i++) {
        const to_decoder_layer &l = layers[i];
        const void *w[7] = {l.q_proj, l.k_proj, l.v_proj, l.o_proj, l.gate_proj, l.up_proj, l.down_proj};
        for (const void *p : w)
            TOC_CHECK(p && ((uintptr_t)p & 15) == 0, TO_ERR_INVALID_ARGUMENT,
                      "toc_decoder_create: layer %d: weights must be non-NULL and 16-byte aligned", i);
        const float *sc[7] = {l.q_scale, l.k_scale, l.v_scale, l.o_scale, l.gate_scale, l.up_scale, l.down_scale};
        for (const float *p : sc)
            TOC_CHECK(f8 ? p && ((uintptr_t)p & 3) == 0 : !p, TO_ERR_INVALID_ARGUMENT,
                      "toc_decoder_create: layer %d: %s", i,
                      f8 ? "FP8 weights need every projection's scales (non-NULL, 4-byte aligned)"
                         : "scales given for bf16 weights (weight_dtype is not f8_e4m3)");
        TOC_CHECK(l.input_norm && l.post_norm && l.k_cache && l.v_cache &&
                      ((uintptr_t)l.input_norm & 15) == 0 && ((uintptr_t)l.post_norm & 15) == 0 &&
                      ((uintptr_t)l.k_cache & 15) == 0 && ((uintptr_t)l.v_cache & 15) == 0 &&
                      ((uintptr_t)l.q_norm & 15) == 0 && ((uintptr_t)l.k_norm & 15) == 0,
                  TO_ERR_INVALID_ARGUMENT,
                  "toc_decoder_create: layer %d: NULL or misaligned (not 16-byte) norm or cache", i);
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
    const int64_t gemv_bytes = (kmax + DK_PART + 64 + 2 * (DK_MAX_THREADS / 32) + DK_PART / 2) * 4;
    TOC_CHECK(2 * toc_cdiv(kmax, 256) <= DK_PART, TO_ERR_UNSUPPORTED,
              "toc_decoder_create: input width %lld is too large", (long long)kmax);
    /* attention tiles: as many keys as fit 160 KB (at most 512, a multiple of 16) */
    const int smem_cap = toc_max_smem_optin();
    const int att_budget = smem_cap < DK_ATT_SMEM ? smem_cap : DK_ATT_SMEM;
    /* query heads of a kv head are split over up to G blocks (each block then scores and sums
     * fewer heads); the split divides G and keeps every (kv head, group) unit on its own block */
    int qsplit = 1;
    const int grid_sms = toc_sm_count();
    for (int q = (int)G; q >= 1; q--)
        if (G % q == 0 && (int64_t)d.n_kv_heads * q <= grid_sms) {
            qsplit = q;
            break;
        }
    /* threads per block: 384 where each block's share of a layer's weights is small (short
     * stages gain from fewer warps and no register spills), else 512 (more loads in flight) */
    TOC_CHECK(d.threads == 0 || d.threads == 384 || d.threads == 512, TO_ERR_INVALID_ARGUMENT,
              "toc_decoder_create: threads must be 0 (chosen here), 384 or 512, not %d", d.threads);
    const int64_t wsz = f8 ? 1 : 2; /* bytes per weight (o_proj is read in bf16 either way) */
    const int64_t layer_bytes = (int64_t)d.hidden * (nq + 2 * nkvd) * wsz + (int64_t)d.hidden * nq * 2 +
                                3 * (int64_t)d.hidden * d.intermediate * wsz;
    /* FP8 weights: 384 (the 512-thread FP8 kernels spill their larger ring state) */
    int nt = d.threads ? d.threads : f8 || layer_bytes / grid_sms <= DK_SMALL_LAYER ? 384 : 512;
    if ((G / qsplit) * d.head_dim / 2 > 2 * nt) { /* P.V: two (head, dim pair) per thread */
        TOC_CHECK(d.threads == 0, TO_ERR_UNSUPPORTED,
                  "toc_decoder_create: %d threads are too few for %lld query heads of dim %d per block",
                  d.threads, (long long)(G / qsplit), d.head_dim);
        nt = 512;
    }
    /* contexts longer than a tile put all G query heads on a block (the tile is sized for that)
     * where P.V has two (head, dim pair) per thread for them */
    const bool qs_long = DK_QS_LONG && G * d.head_dim / 2 <= 2 * nt;
    /* keys per tile: the most that fit the budget, in steps of 16 (the tensor-core scores take
     * 16 keys at a time). Steps of 32 gave Qwen3-4B tiles of 256 keys, so after 4096 tokens
     * each of its 16 key slices (257-264 keys) took a second tile of a few keys: one more copy
     * round trip and softmax pass on the stage's critical path; 272 fit. */
    int tk = nt, att_bytes = 0; /* scores: one thread per key of a tile */
    for (; tk >= 32; tk -= 16) {
        dk_att_layout(d.head_dim, qs_long ? (int)G : (int)G / qsplit, tk, nt, &att_bytes);
        if (att_bytes <= att_budget) break;
    }
    TOC_CHECK(tk >= 32, TO_ERR_UNSUPPORTED, "toc_decoder_create: attention tiles do not fit shared memory");
    TOC_CHECK(d.attn_tile >= 0 && d.attn_splits >= 0, TO_ERR_INVALID_ARGUMENT,
              "toc_decoder_create: attn_tile and attn_splits must be >= 0");
    if (d.attn_tile > 0 && d.attn_tile < tk) tk = d.attn_tile;
    size_t smem = (size_t)(gemv_bytes > att_bytes ? gemv_bytes : att_bytes);
    /* attention folded into o_proj (see dk_att_o) for contexts of one key tile, when every query
     * head has a block and the stage's shared memory holds the tile and 16 weight rows at least */
    const int grid_n = toc_sm_count(), frep = grid_n / d.n_heads;
    const DkKernel kernel = f8 ? (nt == 384 ? decoder_step_kernel<384, false, true> : decoder_step_kernel<512, false, true>)
                               : (nt == 384 ? decoder_step_kernel<384, false, false> : decoder_step_kernel<512, false, false>);
    const DkKernel kernel_fold = f8 ? (nt == 384 ? decoder_step_kernel<384, true, true> : decoder_step_kernel<512, true, true>)
                                    : (nt == 384 ? decoder_step_kernel<384, true, false> : decoder_step_kernel<512, true, false>);
    int fold_keys = 0, fsmem = 0;
    {
        cudaFuncAttributes fa;
        TOC_CUDA(cudaFuncGetAttributes(&fa, kernel_fold), "cudaFuncGetAttributes");
        /* shared memory of the folded kernel: all of it where a block's o_proj rows fit beside a
         * full key tile (Qwen3-0.6B: all rows arrive during the attention), else as much as the
         * other kernel's (Qwen3-4B): what is not shared memory is L1, which also holds the data
         * of the weight loads in flight (227 KB made the other stages 1.8% slower on an H200),
         * and the rows that do not fit come from global memory after the attention */
        const int full = smem_cap - (int)fa.sharedSizeBytes;
        const int64_t rows = frep >= 1 ? (d.hidden + frep - 1) / frep : 0;
        const DkFoldLayout lf = dk_fold_layout(d.head_dim, tk, nt, full);
        fsmem = lf.wrows >= rows ? full : (int)smem;
        if (DK_FOLD_SMEM) fsmem = DK_FOLD_SMEM < full ? DK_FOLD_SMEM : full;
        if (DK_FOLD && frep >= 1 && fsmem >= (int)smem)
            for (int kv = tk; kv >= 32 && !fold_keys; kv -= 32)
                if (dk_fold_layout(d.head_dim, kv, nt, fsmem).wrows >= 16) fold_keys = kv;
    }
    TOC_CHECK((int64_t)smem <= smem_cap, TO_ERR_UNSUPPORTED,
              "toc_decoder_create: needs %zu bytes of shared memory per block (device allows %d)",
              smem, smem_cap);
    TOC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)smem),
             "cudaFuncSetAttribute");
    if (fold_keys)
        TOC_CUDA(cudaFuncSetAttribute(kernel_fold, cudaFuncAttributeMaxDynamicSharedMemorySize, fsmem),
                 "cudaFuncSetAttribute");
    int per_sm = 0;
    TOC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, nt, smem),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    TOC_CHECK(per_sm >= 1, TO_ERR_UNSUPPORTED, "toc_decoder_create: the step kernel does not fit a multiprocessor");
    if (fold_keys) {
        TOC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel_fold, nt, (size_t)fsmem),
                 "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
        if (per_sm < 1) fold_keys = 0; /* the folded kernel does not fit: the other one computes every step */
    }

    TocDecoder *dec = new (std::nothrow) TocDecoder();
    TOC_CHECK(dec, TO_ERR_OUT_OF_MEMORY, "toc_decoder_create: out of host memory");
    dec->dev = dev;
    dec->kernel = kernel;
    dec->kernel_fold = fold_keys ? kernel_fold : nullptr;
    dec->threads = nt;
    dec->grid = (unsigned)toc_sm_count();
    dec->smem = smem;
    DkState &st = dec->st;
    st.d = d;
    st.kmax = (int)kmax;
    st.tk = tk;
    st.qsplit = qsplit;
    st.fold_keys = fold_keys;
    st.frep = frep > 0 ? frep : 1;
    st.fsmem = fsmem;
    /* key slices per (kv head, query-head group): one unit per block, at most capacity and
     * attn_splits */
    auto splits = [&](int64_t groups) {
        int64_t n = dec->grid / (d.n_kv_heads * groups);
        if (n > d.capacity) n = d.capacity;
        if (d.attn_splits > 0 && n > d.attn_splits) n = d.attn_splits;
        return (int)(n < 1 ? 1 : n);
    };
    st.nsplit = splits(qsplit);
    st.nsplit_long = qs_long ? splits(1) : 0;
    const int ns = st.nsplit > st.nsplit_long ? st.nsplit : st.nsplit_long; /* workspace slots */
    const int asz = d.act_dtype == TO_F32 ? 4 : 2;
    const size_t act_bytes = (size_t)(2 * d.hidden + nq + 2 * nkvd + nq + 64) * asz; /* x2, xres, ... */
    const size_t ws_bytes = (size_t)d.n_heads * ns * (d.head_dim + 2) * 4;
    const size_t cnt_bytes = ((size_t)d.n_kv_heads * 4 + 15) / 16 * 16;
    const size_t ctl_bytes = 256 + cnt_bytes + 4 * (size_t)d.hidden * 4; /* + dacc, oacc */
    const size_t lay_bytes = (size_t)d.n_layers * sizeof(to_decoder_layer);
    const size_t wdt_bytes = (size_t)d.n_layers * d.intermediate * d.hidden * wsz;
    const int64_t hb = (d.hidden + 127) / 128, ib = (d.intermediate + 127) / 128;
    const size_t wdts_bytes = f8 ? (size_t)d.n_layers * ib * hb * 4 : 0;
    const size_t obf_bytes = f8 ? (size_t)d.n_layers * d.hidden * nq * 2 : 0;
    int rc = toc_malloc(act_bytes + 256, &dec->allocs[0]);
    if (!rc) rc = toc_malloc(ws_bytes, &dec->allocs[1]);
    if (!rc) rc = toc_malloc(ctl_bytes, &dec->allocs[2]);
    if (!rc) rc = toc_malloc(lay_bytes, &dec->allocs[3]);
    if (!rc) rc = toc_malloc(wdt_bytes, &dec->allocs[4]);
    if (!rc && f8) rc = toc_malloc(wdts_bytes, &dec->allocs[5]);
    if (!rc && f8) rc = toc_malloc(obf_bytes, &dec->allocs[6]);
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
    st.x2 = take(d.hidden);
    st.xres = take(d.hidden);
    st.qkv = take(nq + 2 * nkvd);
    st.attn = take(nq);
    st.ws = (float *)dec->allocs[1];
    char *ctl = (char *)dec->allocs[2];
    st.bar = (unsigned long long *)ctl;
    st.argmax = (unsigned long long *)(ctl + 64);
    st.fold_ran = (int *)(ctl + 128);
    st.att_cnt = (unsigned *)(ctl + 256);
    st.dacc = (float *)(ctl + 256 + cnt_bytes);
    st.oacc = st.dacc + 2 * d.hidden;
    st.layers = (const to_decoder_layer *)dec->allocs[3];
    st.wdt = (const uint16_t *)dec->allocs[4];
    st.wdts = (const float *)dec->allocs[5];
    cudaStream_t s = toc_stream();
    /* the device copy of the layers; FP8 layers point o_proj at its bf16 copy (the step reads
     * o_proj in bf16: dk_att_o and the o_proj stage) */
    std::unique_ptr<to_decoder_layer[]> host(new (std::nothrow) to_decoder_layer[d.n_layers]);
    if (!host) {
        dk_free_all(dec);
        delete dec;
        return toc_set_error(TO_ERR_OUT_OF_MEMORY, "toc_decoder_create: out of host memory");
    }
    for (int i = 0; i < d.n_layers; i++) {
        host[i] = layers[i];
        if (f8) {
            host[i].o_proj = (const uint16_t *)dec->allocs[6] + (size_t)i * d.hidden * nq;
            host[i].o_scale = nullptr;
        }
    }
    cudaError_t e = cudaMemsetAsync(dec->allocs[2], 0, ctl_bytes, s);
    if (e == cudaSuccess) e = cudaMemcpyAsync(dec->allocs[3], host.get(), lay_bytes, cudaMemcpyHostToDevice, s);
    /* the transposed copy of each down_proj ([hidden][intermediate] -> [intermediate][hidden]):
     * a block's share of down is then a contiguous run of rows (dk_gu_down); FP8: its scales
     * transposed too, and o_proj dequantized to bf16 */
    for (int i = 0; i < d.n_layers && e == cudaSuccess; i++) {
        const dim3 grid((unsigned)toc_cdiv(d.intermediate, 32), (unsigned)toc_cdiv(d.hidden, 32));
        if (f8) {
            dk_transpose_kernel<uint8_t><<<grid, dim3(32, 8), 0, s>>>(
                (const uint8_t *)layers[i].down_proj, (uint8_t *)dec->allocs[4] + (size_t)i * d.intermediate * d.hidden,
                d.hidden, d.intermediate);
            const dim3 sgrid((unsigned)toc_cdiv(ib, 32), (unsigned)toc_cdiv(hb, 32));
            dk_transpose_kernel<float><<<sgrid, dim3(32, 8), 0, s>>>(layers[i].down_scale,
                                                                    (float *)dec->allocs[5] + (size_t)i * ib * hb, hb, ib);
            e = cudaGetLastError();
            if (e == cudaSuccess &&
                toc_fp8_dequant((const uint8_t *)layers[i].o_proj, layers[i].o_scale, d.hidden, nq, 128, 128,
                                (void *)host[i].o_proj, TO_BF16) != TO_OK)
                e = cudaErrorUnknown;
        } else {
            dk_transpose_kernel<uint16_t><<<grid, dim3(32, 8), 0, s>>>(
                (const uint16_t *)layers[i].down_proj, (uint16_t *)dec->allocs[4] + (size_t)i * d.intermediate * d.hidden,
                d.hidden, d.intermediate);
        }
        if (e == cudaSuccess) e = cudaGetLastError();
    }
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
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    cudaLaunchConfig_t cfg = toc_launch_config(dim3(dec->grid), dim3(dec->threads), dec->smem, &attr);
    if (dec->kernel_fold) {
        cfg.dynamicSmemBytes = (size_t)dec->st.fsmem;
        TOC_CUDA(cudaLaunchKernelEx(&cfg, dec->kernel_fold, dec->st), "toc_decoder_step: launch");
        cfg.dynamicSmemBytes = dec->smem;
    }
    TOC_CUDA(cudaLaunchKernelEx(&cfg, dec->kernel, dec->st), "toc_decoder_step: launch");
    return TO_OK;
}

TOC_EXPORT int toc_decoder_info(void *decoder, int64_t *grid, int64_t *threads, int64_t *smem_bytes,
                                int64_t *kv_splits, int64_t *fold_keys) {
    TOC_CHECK(decoder, TO_ERR_INVALID_ARGUMENT, "toc_decoder_info: NULL decoder");
    const TocDecoder *dec = (const TocDecoder *)decoder;
    if (grid) *grid = dec->grid;
    if (threads) *threads = dec->threads;
    if (smem_bytes) *smem_bytes = (int64_t)dec->smem;
    if (kv_splits) *kv_splits = dec->st.nsplit;
    if (fold_keys) *fold_keys = dec->st.fold_keys;
    return TO_OK;
}

/* Profiling: runs one step synchronously (outside any graph) and writes, for each block, a record
 * of 64 times (ns, %globaltimer; see DK_PROF_STRIDE): the arrival and departure at barriers
 * first .. first + 7 of the step in out[block * 64 + 2 * i], out[... + 1], then layer 1's stage
 * stamps; out holds grid * 64 values. The step advances the counters like any other. */
TOC_EXPORT int toc_decoder_profile(void *decoder, int first, int64_t *out) {
    TOC_CHECK(decoder && out && first >= 0, TO_ERR_INVALID_ARGUMENT, "toc_decoder_profile: arguments");
    TocDecoder *dec = (TocDecoder *)decoder;
    TOC_READY();
    const size_t n = (size_t)dec->grid * DK_PROF_STRIDE;
    void *buf = nullptr;
    int rc = toc_malloc(n * 8, &buf);
    if (rc) return rc;
    cudaStream_t s = toc_stream();
    DkState st = dec->st;
    st.prof = (unsigned long long *)buf;
    st.prof_first = first;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(dec->grid);
    cfg.blockDim = dim3(dec->threads);
    cfg.dynamicSmemBytes = dec->smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaError_t e = cudaMemsetAsync(buf, 0, n * 8, s);
    if (e == cudaSuccess && dec->kernel_fold) {
        cfg.dynamicSmemBytes = (size_t)dec->st.fsmem;
        e = cudaLaunchKernelEx(&cfg, dec->kernel_fold, st);
        cfg.dynamicSmemBytes = dec->smem;
    }
    if (e == cudaSuccess) e = cudaLaunchKernelEx(&cfg, dec->kernel, st);
    if (e == cudaSuccess) e = cudaMemcpyAsync(out, buf, n * 8, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    toc_free(buf);
    if (e != cudaSuccess) return toc_cuda_error(e, "toc_decoder_profile");
    return TO_OK;
}

static void decoder_destroy_now(void *decoder) {
    TocDecoder *dec = (TocDecoder *)decoder;
    cudaStreamSynchronize(toc_stream());
    dk_free_all(dec);
    delete dec;
}
TOC_EXPORT int toc_decoder_destroy(void *decoder) {
    if (!decoder) return TO_OK;
    if (toc_defer_while_capturing(decoder_destroy_now, decoder)) return TO_OK; /* it synchronises */
    decoder_destroy_now(decoder);
    return TO_OK;
}
