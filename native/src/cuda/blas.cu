/* cuBLAS for large GEMMs, loaded with dlopen (no link-time dependency; CI builds without it):
 * cublasGemmEx, and cuBLASLt with a plan kept per shape where the library has it. linear.cu calls
 * toc_blas_gemm_bf16 for bf16 products of more rows than its GEMVs take. */
#include <dlfcn.h>
#include <mutex>
#include <stdlib.h>
#include <string.h>

#include "blas.cuh"
#include "common.cuh"

typedef int (*cublasCreate_t)(void **);
typedef int (*cublasSetStream_t)(void *, cudaStream_t);
typedef int (*cublasGemmEx_t)(void *, int, int, int, int, int, const void *, const void *, int, int,
                              const void *, int, int, const void *, void *, int, int, int, int);
static struct {
    std::once_flag once;
    void *lib = nullptr;
    cublasCreate_t create = nullptr;
    cublasSetStream_t set_stream = nullptr;
    cublasGemmEx_t gemm = nullptr;
    void *handle[16] = {};
    char path[512] = {};
} g_blas;

static void load_cublas(void) {
    const char *env = getenv("INFERENCE_PIO_CUBLAS");
    if (env && !strcmp(env, "0")) return;
    const char *names[] = {env, "libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    for (const char *n : names) {
        if (!n || !*n) continue;
        void *h = dlopen(n, RTLD_NOW | RTLD_LOCAL);
        if (!h) continue;
        g_blas.create = (cublasCreate_t)dlsym(h, "cublasCreate_v2");
        g_blas.set_stream = (cublasSetStream_t)dlsym(h, "cublasSetStream_v2");
        g_blas.gemm = (cublasGemmEx_t)dlsym(h, "cublasGemmEx");
        if (g_blas.create && g_blas.set_stream && g_blas.gemm) {
            g_blas.lib = h;
            strncpy(g_blas.path, n, sizeof g_blas.path - 1);
            return;
        }
        dlclose(h);
    }
}

/* Writes the cuBLAS library in use (or "" when our own GEMM serves) into buf. */
TOC_EXPORT int toc_blas_info(char *buf, size_t cap) {
    TOC_CHECK(buf && cap, TO_ERR_INVALID_ARGUMENT, "toc_blas_info: NULL");
    std::call_once(g_blas.once, load_cublas);
    strncpy(buf, g_blas.path, cap - 1);
    buf[cap - 1] = 0;
    return TO_OK;
}

static void *blas_handle(void) {
    std::call_once(g_blas.once, load_cublas);
    if (!g_blas.lib) return nullptr;
    int dev = 0;
    cudaGetDevice(&dev);
    if (!g_blas.handle[dev & 15]) {
        void *h = nullptr;
        if (g_blas.create(&h) != 0) return nullptr;
        g_blas.handle[dev & 15] = h;
    }
    return g_blas.handle[dev & 15];
}

/* cuBLASLt (libcublas's own dependency, found through its handle): a GEMM's plan (descriptors
 * and the heuristic's first algorithm) is made once per shape and kept, so a repeated shape (every
 * layer of a prefill) costs one cublasLtMatmul instead of cublasGemmEx, which runs the heuristic on
 * every call (~7 us of host time per GEMM on an H200 host). INFERENCE_PIO_CUBLASLT=0 turns it off. */
typedef int (*lt_create_t)(void **);
typedef int (*lt_desc_create_t)(void **, int, int);
typedef int (*lt_set_t)(void *, int, const void *, size_t);
typedef int (*lt_layout_create_t)(void **, int, uint64_t, uint64_t, int64_t);
typedef int (*lt_pref_create_t)(void **);
typedef int (*lt_destroy_t)(void *);
struct LtHeuristic { /* cublasLtMatmulHeuristicResult_t */
    uint64_t algo[8];
    size_t workspace;
    int state;
    float waves;
    int reserved[4];
};
typedef int (*lt_heuristic_t)(void *, void *, void *, void *, void *, void *, void *, int, LtHeuristic *, int *);
typedef int (*lt_matmul_t)(void *, void *, const void *, const void *, void *, const void *, void *,
                           const void *, const void *, void *, void *, void *, const void *, void *, size_t,
                           cudaStream_t);
struct LtPlan {
    bool ok; /* false: cuBLASLt offers no algorithm for this shape (cublasGemmEx serves it) */
    int dev, ytype;
    int64_t n, m, k, ldx, ldy;
    uint32_t align_w, align_x, align_y; /* bytes every row start of w, x, y is aligned to (<= 256) */
    void *desc, *a, *b, *c;
    uint64_t algo[8];
    size_t ws;
};
#define LT_PLANS 64           /* kept plans (a prefill length makes ~5; the oldest is replaced) */
#define LT_WORKSPACE (32 << 20) /* bytes per device, allocated once outside graph capture */
static struct {
    std::once_flag once;
    bool ok = false;
    lt_create_t create;
    lt_desc_create_t desc_create;
    lt_set_t desc_set, pref_set;
    lt_layout_create_t layout_create;
    lt_pref_create_t pref_create;
    lt_destroy_t desc_destroy, layout_destroy, pref_destroy;
    lt_heuristic_t heuristic;
    lt_matmul_t matmul;
    void *handle[16] = {};
    void *ws[16] = {};
    LtPlan plans[LT_PLANS];
    int nplans = 0, next = 0;
    std::mutex mu;
} g_lt;

static void load_cublaslt(void) {
    const char *env = getenv("INFERENCE_PIO_CUBLASLT");
    if ((env && !strcmp(env, "0")) || !g_blas.lib) return;
    void *h = g_blas.lib;
    if (!dlsym(h, "cublasLtMatmul")) { /* not in the handle's scope: by its soname */
        const char *names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
        h = nullptr;
        for (const char *n : names)
            if ((h = dlopen(n, RTLD_NOW | RTLD_LOCAL)) && dlsym(h, "cublasLtMatmul")) break;
        if (!h) return;
    }
#define LT_SYM(field, type, name)                       \
    if (!(g_lt.field = (type)dlsym(h, name))) return;
    LT_SYM(create, lt_create_t, "cublasLtCreate");
    LT_SYM(desc_create, lt_desc_create_t, "cublasLtMatmulDescCreate");
    LT_SYM(desc_set, lt_set_t, "cublasLtMatmulDescSetAttribute");
    LT_SYM(pref_set, lt_set_t, "cublasLtMatmulPreferenceSetAttribute");
    LT_SYM(layout_create, lt_layout_create_t, "cublasLtMatrixLayoutCreate");
    LT_SYM(pref_create, lt_pref_create_t, "cublasLtMatmulPreferenceCreate");
    LT_SYM(desc_destroy, lt_destroy_t, "cublasLtMatmulDescDestroy");
    LT_SYM(layout_destroy, lt_destroy_t, "cublasLtMatrixLayoutDestroy");
    LT_SYM(pref_destroy, lt_destroy_t, "cublasLtMatmulPreferenceDestroy");
    LT_SYM(heuristic, lt_heuristic_t, "cublasLtMatmulAlgoGetHeuristic");
    LT_SYM(matmul, lt_matmul_t, "cublasLtMatmul");
#undef LT_SYM
    g_lt.ok = true;
}

static void lt_free_plan(LtPlan &p) {
    if (p.desc) g_lt.desc_destroy(p.desc);
    if (p.a) g_lt.layout_destroy(p.a);
    if (p.b) g_lt.layout_destroy(p.b);
    if (p.c) g_lt.layout_destroy(p.c);
    p.desc = p.a = p.b = p.c = nullptr;
}

/* Makes the plan of y^T [n, m] = w^T x^T (column-major, as the cublasGemmEx call below); false
 * when cuBLASLt offers no algorithm for it. */
static bool lt_make_plan(LtPlan &p, void *h) {
    const int R_16BF = 14, R_32F = 0, COMPUTE_32F = 68, DESC_TRANSA = 3, DESC_TRANSB = 4, OP_T = 1, OP_N = 0,
              PREF_MAX_WORKSPACE = 1;
    p.desc = p.a = p.b = p.c = nullptr;
    bool ok = g_lt.desc_create(&p.desc, COMPUTE_32F, R_32F) == 0 &&
              g_lt.desc_set(p.desc, DESC_TRANSA, &OP_T, sizeof OP_T) == 0 &&
              g_lt.desc_set(p.desc, DESC_TRANSB, &OP_N, sizeof OP_N) == 0 &&
              g_lt.layout_create(&p.a, R_16BF, (uint64_t)p.k, (uint64_t)p.n, p.k) == 0 &&
              g_lt.layout_create(&p.b, R_16BF, (uint64_t)p.k, (uint64_t)p.m, p.ldx) == 0 &&
              g_lt.layout_create(&p.c, p.ytype, (uint64_t)p.n, (uint64_t)p.m, p.ldy) == 0;
    void *pref = nullptr;
    const uint64_t wsb = LT_WORKSPACE;
    LtHeuristic r[1];
    int got = 0;
    /* the heuristic assumes 256-byte aligned matrices unless told: A is w, B is x, C and D are y */
    const int PREF_ALIGN_A = 5, PREF_ALIGN_B = 6, PREF_ALIGN_C = 7, PREF_ALIGN_D = 8;
    ok = ok && g_lt.pref_create(&pref) == 0 && g_lt.pref_set(pref, PREF_MAX_WORKSPACE, &wsb, sizeof wsb) == 0 &&
         g_lt.pref_set(pref, PREF_ALIGN_A, &p.align_w, sizeof p.align_w) == 0 &&
         g_lt.pref_set(pref, PREF_ALIGN_B, &p.align_x, sizeof p.align_x) == 0 &&
         g_lt.pref_set(pref, PREF_ALIGN_C, &p.align_y, sizeof p.align_y) == 0 &&
         g_lt.pref_set(pref, PREF_ALIGN_D, &p.align_y, sizeof p.align_y) == 0 &&
         g_lt.heuristic(h, p.desc, p.a, p.b, p.c, p.c, pref, 1, r, &got) == 0 && got >= 1 && r[0].state == 0;
    if (pref) g_lt.pref_destroy(pref);
    if (ok) {
        memcpy(p.algo, r[0].algo, sizeof p.algo);
        p.ws = r[0].workspace;
    } else {
        lt_free_plan(p);
    }
    return ok;
}

/* The alignment (a power of two, at most 256 bytes) of every row of a matrix at p with rows of
 * stride_bytes. */
static uint32_t row_alignment(const void *p, int64_t stride_bytes) {
    const uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)stride_bytes | 256u;
    return (uint32_t)(v & (~v + 1)); /* lowest set bit */
}

/* y = w x through a kept cuBLASLt plan; TO_ERR_UNSUPPORTED when cuBLASLt cannot serve it (the
 * caller then uses cublasGemmEx). */
static int lt_gemm(cudaStream_t s, const void *w, const void *x, void *y, int64_t m, int64_t n,
                   int64_t k, int64_t ldx, int64_t ldy, int ytype) {
    std::call_once(g_lt.once, load_cublaslt);
    if (!g_lt.ok) return TO_ERR_UNSUPPORTED;
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev < 0 || dev >= 16) return TO_ERR_UNSUPPORTED;
    std::lock_guard<std::mutex> lock(g_lt.mu);
    if (!g_lt.handle[dev] && g_lt.create(&g_lt.handle[dev]) != 0) {
        g_lt.handle[dev] = nullptr;
        return TO_ERR_UNSUPPORTED;
    }
    if (!g_lt.ws[dev]) {
        cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(s, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone)
            return TO_ERR_UNSUPPORTED; /* no allocation while capturing */
        if (cudaMalloc(&g_lt.ws[dev], LT_WORKSPACE) != cudaSuccess) {
            (void)cudaGetLastError();
            g_lt.ws[dev] = nullptr;
            return TO_ERR_UNSUPPORTED;
        }
    }
    const uint32_t aw = row_alignment(w, k * 2), ax = row_alignment(x, ldx * 2),
                   ay = row_alignment(y, ldy * (ytype == 0 ? 4 : 2));
    LtPlan *p = nullptr;
    for (int i = 0; i < g_lt.nplans && !p; i++) {
        LtPlan &q = g_lt.plans[i];
        if (q.dev == dev && q.n == n && q.m == m && q.k == k && q.ldx == ldx && q.ldy == ldy && q.ytype == ytype &&
            q.align_w == aw && q.align_x == ax && q.align_y == ay)
            p = &q;
    }
    if (!p) { /* a free slot, else the oldest plan's */
        p = &g_lt.plans[g_lt.nplans < LT_PLANS ? g_lt.nplans++ : (g_lt.next++ % LT_PLANS)];
        lt_free_plan(*p); /* (static storage: a never-used slot holds null descriptors) */
        p->dev = dev, p->ytype = ytype, p->n = n, p->m = m, p->k = k, p->ldx = ldx, p->ldy = ldy;
        p->align_w = aw, p->align_x = ax, p->align_y = ay;
        p->ok = lt_make_plan(*p, g_lt.handle[dev]);
    }
    if (!p->ok) return TO_ERR_UNSUPPORTED;
    const float one = 1.0f, zero = 0.0f;
    const int st = g_lt.matmul(g_lt.handle[dev], p->desc, &one, w, p->a, x, p->b, &zero, y, p->c, y, p->c,
                               p->algo, g_lt.ws[dev], p->ws, s);
    TOC_CHECK(st == 0, TO_ERR_CUDA, "toc_linear: cublasLtMatmul failed with status %d", st);
    TOC_LAUNCHED("cublasLtMatmul");
    return TO_OK;
}


bool toc_blas_available(void) { return blas_handle() != nullptr; }

int toc_blas_gemm_bf16(cudaStream_t s, const void *w, const void *x, void *y, int64_t m, int64_t n, int64_t k,
                       int64_t ldx, int64_t ldy, bool y_f32) {
    if (m > 0x7fffffff || n > 0x7fffffff || k > 0x7fffffff || ldx > 0x7fffffff || ldy > 0x7fffffff)
        return TO_ERR_UNSUPPORTED;
    void *h = blas_handle();
    if (!h) return TO_ERR_UNSUPPORTED;
    const int R_16BF = 14, R_32F = 0, COMPUTE_32F = 68, GEMM_DEFAULT = -1, OP_N = 0, OP_T = 1;
    const int yt = y_f32 ? R_32F : R_16BF;
    const int lt = lt_gemm(s, w, x, y, m, n, k, ldx, ldy, yt);
    if (lt != TO_ERR_UNSUPPORTED) return lt;
    /* column-major view: y^T [n, m] = w^T [n, k] (w is k x n col-major) * x^T [k, m] */
    const float one = 1.0f, zero = 0.0f;
    g_blas.set_stream(h, s);
    const int st = g_blas.gemm(h, OP_T, OP_N, (int)n, (int)m, (int)k, &one, w, R_16BF, (int)k, x, R_16BF, (int)ldx,
                               &zero, y, yt, (int)ldy, COMPUTE_32F, GEMM_DEFAULT);
    TOC_CHECK(st == 0, TO_ERR_CUDA, "toc_linear: cublasGemmEx failed with status %d", st);
    TOC_LAUNCHED("cublasGemmEx");
    return TO_OK;
}
