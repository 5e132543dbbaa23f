"""The CUDA backend: lazy loading of ``libtensor_ops_cuda``, device memory and copies.

The library sits next to ``libtensor_ops`` and is loaded on first CUDA use only, so CPU-only
machines never need it. :func:`is_available` / :func:`unavailable_reason` say why CUDA cannot be
used ("library not built", "no NVIDIA driver", "no CUDA device"). Every op ``to_<op>`` of the CPU
library has a ``toc_<op>`` twin with the same arguments (device pointers); :func:`function` returns
it. Device memory comes from the library's caching allocator (:func:`memory_stats`); all work runs
in order on one stream per device, and copies to the host synchronise with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from ctypes import POINTER, c_char_p, c_float, c_int, c_int64, c_size_t, c_uint64, c_void_p
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference_pio._native.bindings import ABI_VERSION, PROTOTYPES, Prototype
from inference_pio.device import Device
from inference_pio.errors import InferencePioError, NativeError

if TYPE_CHECKING:
    from inference_pio.tensor import Storage, Tensor

LIBRARY_NAME = "libtensor_ops_cuda.so"

#: Runtime functions of libtensor_ops_cuda (tensor_ops.h, "CUDA runtime" section).
CUDA_PROTOTYPES: dict[str, Prototype] = {
    # int toc_abi_version(void);
    "toc_abi_version": (c_int, []),
    # const char *toc_last_error(void);
    "toc_last_error": (c_char_p, []),
    # void toc_clear_error(void);
    "toc_clear_error": (None, []),
    # int toc_device_count(int *count);
    "toc_device_count": (c_int, [POINTER(c_int)]),
    # int toc_driver_version(int *driver, int *runtime);
    "toc_driver_version": (c_int, [POINTER(c_int), POINTER(c_int)]),
    # int toc_set_device(int dev);
    "toc_set_device": (c_int, [c_int]),
    # int toc_get_device(int *dev);
    "toc_get_device": (c_int, [POINTER(c_int)]),
    # int toc_device_info(int dev, char *name, size_t cap, int64_t *total_mem, int *sm_count,
    #                     int *cc_major, int *cc_minor);
    "toc_device_info": (
        c_int,
        [
            c_int,
            c_char_p,
            c_size_t,
            POINTER(c_int64),
            POINTER(c_int),
            POINTER(c_int),
            POINTER(c_int),
        ],
    ),
    # int toc_synchronize(void);
    "toc_synchronize": (c_int, []),
    # int toc_malloc(size_t nbytes, void **out);
    "toc_malloc": (c_int, [c_size_t, POINTER(c_void_p)]),
    # int toc_free(void *ptr);
    "toc_free": (c_int, [c_void_p]),
    # int toc_memory_stats(int64_t *in_use, int64_t *peak, int64_t *cached, int64_t *n_malloc);
    "toc_memory_stats": (c_int, [POINTER(c_int64)] * 4),
    # int toc_memory_trim(void);
    "toc_memory_trim": (c_int, []),
    # int toc_host_alloc(size_t nbytes, void **out);
    "toc_host_alloc": (c_int, [c_size_t, POINTER(c_void_p)]),
    # int toc_host_free(void *ptr);
    "toc_host_free": (c_int, [c_void_p]),
    # int toc_memcpy(void *dst, const void *src, size_t nbytes, int kind, int blocking);
    "toc_memcpy": (c_int, [c_void_p, c_void_p, c_size_t, c_int, c_int]),
    # int toc_memcpy2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
    #                  size_t height, int kind);
    "toc_memcpy2d": (c_int, [c_void_p, c_size_t, c_void_p, c_size_t, c_size_t, c_size_t, c_int]),
    # int toc_memset(void *dst, int value, size_t nbytes);
    "toc_memset": (c_int, [c_void_p, c_int, c_size_t]),
    # int toc_graph_begin(void);
    "toc_graph_begin": (c_int, []),
    # int toc_graph_end(void **exec_out);
    "toc_graph_end": (c_int, [POINTER(c_void_p)]),
    # int toc_graph_abort(void);
    "toc_graph_abort": (c_int, []),
    # int toc_graph_launch(void *exec, int times);
    "toc_graph_launch": (c_int, [c_void_p, c_int]),
    # int toc_graph_destroy(void *exec);
    "toc_graph_destroy": (c_int, [c_void_p]),
    # int toc_bench_copy_bandwidth(int64_t bytes, int iters, double *gbps);
    "toc_bench_copy_bandwidth": (c_int, [c_int64, c_int, POINTER(ctypes.c_double)]),
    # int toc_bench_read_bandwidth(int64_t bytes, int iters, double *gbps);
    "toc_bench_read_bandwidth": (c_int, [c_int64, c_int, POINTER(ctypes.c_double)]),
    # int toc_blas_info(char *buf, size_t cap);
    "toc_blas_info": (c_int, [c_char_p, c_size_t]),
    # int toc_gemv_fused(const void *x, int64_t ldx, int64_t m, const void *norm_w, int norm_dtype,
    #                    float eps, const void *w0, int64_t seg0, const void *w1, int64_t seg1,
    #                    const void *w2, int64_t seg2, int64_t k, const void *res, int64_t ldr,
    #                    int swiglu, void *y, int64_t ldy, int act_dtype, void *argmax);
    "toc_gemv_fused": (
        c_int,
        [
            c_void_p,
            c_int64,
            c_int64,
            c_void_p,
            c_int,
            c_float,
            c_void_p,
            c_int64,
            c_void_p,
            c_int64,
            c_void_p,
            c_int64,
            c_int64,
            c_void_p,
            c_int64,
            c_int,
            c_void_p,
            c_int64,
            c_int,
            c_void_p,
        ],
    ),
    # int toc_moe_gemv(const void *x, int64_t ldx_slot, const void *norm_w, int norm_dtype,
    #                  float eps, const int32_t *sel, int64_t slots, int64_t n_experts,
    #                  const void *tab0, const void *tab1, int64_t n, int64_t k, void *y,
    #                  int64_t ldy_slot, int act_dtype);
    "toc_moe_gemv": (
        c_int,
        [
            c_void_p,
            c_int64,
            c_void_p,
            c_int,
            c_float,
            c_void_p,
            c_int64,
            c_int64,
            c_void_p,
            c_void_p,
            c_int64,
            c_int64,
            c_void_p,
            c_int64,
            c_int,
        ],
    ),
    # int toc_moe_step(const void *x, const void *norm_w, int norm_dtype, float eps,
    #                  const void *router_w, int64_t e, int64_t k, int renormalize,
    #                  const void *tab_gate, const void *tab_up, const void *tab_down, int64_t d,
    #                  int64_t inter, const void *shared_gate, const void *shared_up,
    #                  const void *shared_down, const void *shared_gate_w, int64_t shared_inter,
    #                  const void *res, void *logits, int32_t *idx, void *weights, void *h,
    #                  void *out, int act_dtype);
    "toc_moe_step": (
        c_int,
        [c_void_p, c_void_p, c_int, c_float, c_void_p, c_int64, c_int64, c_int]
        + [c_void_p] * 3  # the expert tables
        + [c_int64, c_int64]
        + [c_void_p] * 4  # the shared expert
        + [c_int64]
        + [c_void_p] * 6  # res, logits, idx, weights, h, out
        + [c_int],
    ),
    # int toc_moe_step_supported(int64_t e, int64_t k, int64_t d, int64_t inter,
    #                            int64_t shared_inter, int act_dtype);
    "toc_moe_step_supported": (c_int, [c_int64] * 5 + [c_int]),
    # int toc_moe_step_sigmoid(const void *x, const void *norm_w, int norm_dtype, float eps,
    #                          const void *router_w, const float *bias, int64_t e, int64_t k,
    #                          int64_t n_group, int64_t topk_group, int renormalize, float scaling,
    #                          const void *tab_gate, const void *tab_up, const void *tab_down,
    #                          int64_t d, int64_t inter, const void *shared_gate,
    #                          const void *shared_up, const void *shared_down, int64_t shared_inter,
    #                          const void *res, float *logits, int32_t *idx, float *weights,
    #                          void *h, void *out, int act_dtype);
    "toc_moe_step_sigmoid": (
        c_int,
        [c_void_p, c_void_p, c_int, c_float, c_void_p, c_void_p]
        + [c_int64] * 4
        + [c_int, c_float]
        + [c_void_p] * 3  # the expert tables
        + [c_int64, c_int64]
        + [c_void_p] * 3  # the shared expert
        + [c_int64]
        + [c_void_p] * 6  # res, logits, idx, weights, h, out
        + [c_int],
    ),
    # int toc_moe_step_sigmoid_supported(int64_t e, int64_t k, int64_t n_group,
    #                                    int64_t topk_group, int64_t d, int64_t inter,
    #                                    int64_t shared_inter, int act_dtype);
    "toc_moe_step_sigmoid_supported": (c_int, [c_int64] * 7 + [c_int]),
    # int toc_moe_grouped_linear(const void *x, const int32_t *tiles, int64_t n_tiles,
    #                            const void *tab, int64_t n_experts, int64_t n, int64_t k, void *y,
    #                            int act_dtype);
    "toc_moe_grouped_linear": (
        c_int,
        [c_void_p, c_void_p, c_int64, c_void_p, c_int64, c_int64, c_int64, c_void_p, c_int],
    ),
    # int toc_moe_plan(const int32_t *idx, int64_t n, int64_t e, int64_t k, int64_t tile_rows,
    #                  int32_t *counts, int32_t *offsets, int32_t *order, int32_t *tokens,
    #                  int32_t *inverse, int32_t *tiles, int64_t max_tiles);
    "toc_moe_plan": (
        c_int,
        [c_void_p, c_int64, c_int64, c_int64, c_int64, *([c_void_p] * 6), c_int64],
    ),
    # int toc_moe_combine(const void *y, const int32_t *idx, const void *weights, const void *res,
    #                     void *out, int64_t t, int64_t k, int64_t e, int64_t d, int y_dtype,
    #                     int weights_dtype, int out_dtype);
    "toc_moe_combine": (
        c_int,
        [
            c_void_p,
            c_void_p,
            c_void_p,
            c_void_p,
            c_void_p,
            c_int64,
            c_int64,
            c_int64,
            c_int64,
            c_int,
            c_int,
            c_int,
        ],
    ),
    # int toc_attention_decode(const void *q, const void *k_cache, const void *v_cache, void *out,
    #                          int64_t nh, int64_t nkv, int64_t hd, int64_t capacity,
    #                          const int32_t *pos, float scale, int q_dtype, int kv_dtype,
    #                          int nsplit, float *workspace);
    "toc_attention_decode": (
        c_int,
        [c_void_p] * 4 + [c_int64] * 4 + [c_void_p, c_float, c_int, c_int, c_int, c_void_p],
    ),
    # int toc_attention_decode_batch(const void *q, const void *k_new, const void *v_new,
    #                                void *out, int64_t n, int64_t nh, int64_t nkv, int64_t hd,
    #                                void *const *k_caches, void *const *v_caches,
    #                                const int64_t *capacities, const int64_t *lengths,
    #                                float scale, int act_dtype, int cache_dtype);
    "toc_attention_decode_batch": (
        c_int,
        [c_void_p] * 4 + [c_int64] * 4 + [c_void_p] * 4 + [c_float, c_int, c_int],
    ),
    # int toc_attention_decode_batch_dev(const void *q, const void *k_new, const void *v_new,
    #                                    void *out, int64_t n, int64_t nh, int64_t nkv, int64_t hd,
    #                                    const uint64_t *k_ptrs, const uint64_t *v_ptrs,
    #                                    const int64_t *capacities, const int32_t *lengths,
    #                                    float scale, int act_dtype, int cache_dtype, int nsplit,
    #                                    float *workspace, int flags);
    "toc_attention_decode_batch_dev": (
        c_int,
        [c_void_p] * 4
        + [c_int64] * 4
        + [c_void_p] * 4
        + [c_float, c_int, c_int, c_int, c_void_p, c_int],
    ),
    # int toc_qk_rope_append(void *qkv, const void *q_norm, const void *k_norm, int norm_dtype,
    #                        float eps, const void *cos, const void *sin, const int32_t *pos,
    #                        void *k_cache, void *v_cache, int64_t nh, int64_t nkv, int64_t hd,
    #                        int64_t capacity, int act_dtype, int cache_dtype);
    "toc_qk_rope_append": (
        c_int,
        [c_void_p, c_void_p, c_void_p, c_int, c_float]
        + [c_void_p] * 5
        + [c_int64] * 4
        + [c_int, c_int],
    ),
    # int toc_kv_cache_append_dev(const void *k_new, const void *v_new, void *k_cache,
    #                             void *v_cache, int64_t t, int64_t nkv, int64_t hd_k, int64_t hd_v,
    #                             int64_t max_len, const int32_t *pos, int src_dtype,
    #                             int cache_dtype);
    "toc_kv_cache_append_dev": (c_int, [c_void_p] * 4 + [c_int64] * 5 + [c_void_p, c_int, c_int]),
    # int toc_attention_dev(const void *q, const void *k, const void *v, void *out, int64_t tq,
    #                       int64_t nh, int64_t nkv, int64_t hd_qk, int64_t hd_v, int64_t ldq,
    #                       int64_t ldo, int64_t max_len, int64_t k_head_stride,
    #                       int64_t k_pos_stride, int64_t v_head_stride, int64_t v_pos_stride,
    #                       const int32_t *pos, float scale, int q_dtype, int kv_dtype,
    #                       float *workspace, int64_t workspace_floats);
    "toc_attention_dev": (
        c_int,
        [c_void_p] * 4 + [c_int64] * 12 + [c_void_p, c_float, c_int, c_int, c_void_p, c_int64],
    ),
    # int toc_decode_argmax(const void *logits, int dtype, int64_t vocab, void *argmax);
    "toc_decode_argmax": (c_int, [c_void_p, c_int, c_int64, c_void_p]),
    # int toc_decode_step_end(void *argmax, int32_t *tok, int32_t *pos, int32_t *tokens,
    #                         int32_t *step, int max_steps);
    "toc_decode_step_end": (c_int, [c_void_p] * 5 + [c_int]),
    # int toc_decode_sample(const void *logits, int dtype, int64_t vocab, int32_t *counters,
    #                       int32_t *tokens, int64_t max_steps, float temperature, int64_t top_k,
    #                       float top_p, float min_p, uint64_t *rng_state);
    "toc_decode_sample": (
        c_int,
        [
            c_void_p,
            c_int,
            c_int64,
            c_void_p,
            c_void_p,
            c_int64,
            c_float,
            c_int64,
            c_float,
            c_float,
            c_void_p,
        ],
    ),
    # int toc_gate_up_swiglu(const void *x, const void *w_gate, const void *w_up, void *gate,
    #                        void *up, void *out, int64_t m, int64_t inter, int64_t k, int64_t ldx,
    #                        int x_dtype, int w_dtype, int y_dtype);
    "toc_gate_up_swiglu": (c_int, [c_void_p] * 6 + [c_int64] * 4 + [c_int] * 3),
    # int toc_sample_greedy_rows(const void *logits, int dtype, int64_t rows, int64_t vocab,
    #                            int64_t ld, int64_t *out_tokens);
    "toc_sample_greedy_rows": (c_int, [c_void_p, c_int, c_int64, c_int64, c_int64, c_void_p]),
    # int toc_decoder_create(const to_decoder_desc *desc, const to_decoder_layer *layers,
    #                        void **out);
    "toc_decoder_create": (c_int, [c_void_p, c_void_p, POINTER(c_void_p)]),
    # int toc_decoder_step(void *decoder);
    "toc_decoder_step": (c_int, [c_void_p]),
    # int toc_decoder_info(void *decoder, int64_t *grid, int64_t *threads, int64_t *smem_bytes,
    #                      int64_t *kv_splits, int64_t *fold_keys);
    "toc_decoder_info": (c_int, [c_void_p] + [POINTER(c_int64)] * 5),
    # int toc_decoder_profile(void *decoder, int first, int64_t *out);
    "toc_decoder_profile": (c_int, [c_void_p, c_int, POINTER(c_int64)]),
    # int toc_decoder_destroy(void *decoder);
    "toc_decoder_destroy": (c_int, [c_void_p]),
    # int toc_fill_random(void *out, int64_t n, int dtype, uint64_t seed, float mean, float std,
    #                     int distribution);
    "toc_fill_random": (c_int, [c_void_p, c_int64, c_int, c_uint64, c_float, c_float, c_int]),
}

#: CPU ops whose CUDA twin takes the same arguments (every ``to_<op>`` with a device kernel).
_HOST_ONLY = {
    "to_abi_version",
    "to_version_string",
    "to_last_error",
    "to_clear_error",
    "to_dtype_size",
    "to_kernel_report",
    "to_cpu_features",
    "to_set_isa_mask",
    "to_set_num_threads",
    "to_get_num_threads",
    "to_alloc",
    "to_free",
    "to_memory_stats",
    "to_memory_trim",
    "to_bench_read_bandwidth",
    "to_bench_bf16_peak",
    "to_fill_random",
}
OP_PROTOTYPES: dict[str, Prototype] = {
    "toc_" + name[3:]: proto
    for name, proto in PROTOTYPES.items()
    if name.startswith("to_")
    and name not in _HOST_ONLY
    and not name.startswith(("to_tok_", "to_st_", "to_memory_"))
}

H2D, D2H, D2D = 1, 2, 3


class CudaUnavailableError(InferencePioError, RuntimeError):
    """CUDA cannot be used here; the message says why (the command line prints it as one error
    line)."""


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None
_local = threading.local()


def library_path() -> Path | None:
    """Where libtensor_ops_cuda.so was found (next to libtensor_ops), or None."""
    from inference_pio._native.loader import candidate_paths

    for p in candidate_paths(LIBRARY_NAME):
        if p.is_file():
            return p
    return None


def _declare(lib: ctypes.CDLL) -> None:
    for table in (CUDA_PROTOTYPES, OP_PROTOTYPES):
        for name, (restype, argtypes) in table.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                continue
            fn.restype = restype
            fn.argtypes = argtypes


def _try_load() -> None:
    global _lib, _reason
    path = library_path()
    if path is None:
        _reason = (
            f"library not built: {LIBRARY_NAME} was not found next to libtensor_ops "
            "(build with a CUDA compiler: TENSOR_OPS_CUDA=ON)"
        )
        return
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        _reason = f"cannot load {path}: {exc}"
        return
    lib.toc_abi_version.restype = c_int
    if lib.toc_abi_version() != ABI_VERSION:
        _reason = f"{path} has ABI version {lib.toc_abi_version()}, expected {ABI_VERSION}; rebuild"
        return
    _declare(lib)
    n = c_int()
    if lib.toc_device_count(ctypes.byref(n)) != 0:
        _reason = lib.toc_last_error().decode("utf-8", "replace")
        return
    _lib = lib


def _ensure_loaded() -> None:
    if _lib is None and _reason is None:
        with _lock:
            if _lib is None and _reason is None:
                _try_load()


def is_available() -> bool:
    """True when the CUDA library loads and sees at least one device."""
    _ensure_loaded()
    return _lib is not None


def unavailable_reason() -> str | None:
    """Why CUDA is unavailable (library not built, no NVIDIA driver, no CUDA device), else None."""
    _ensure_loaded()
    return _reason


def lib() -> ctypes.CDLL:
    """The loaded CUDA library; raises CudaUnavailableError with the reason otherwise."""
    _ensure_loaded()
    if _lib is None:
        raise CudaUnavailableError(f"CUDA is not available: {_reason}")
    return _lib


def check(rc: int, function: str = "") -> None:
    """Raises NativeError with the CUDA library's message when ``rc`` is not 0."""
    if rc != 0:
        msg = lib().toc_last_error().decode("utf-8", "replace")
        raise NativeError(rc, msg, function)


def set_device(device: Device | str) -> Device:
    """Makes ``device`` current for this thread (validates its index)."""
    dev = Device.parse(device)
    if dev.type != "cuda":
        raise ValueError(f"{dev} is not a CUDA device")
    if getattr(_local, "device", None) != dev.index:
        check(lib().toc_set_device(dev.index), "toc_set_device")
        _local.device = dev.index
    return dev


def device_count() -> int:
    """Number of CUDA devices (0 when CUDA is unavailable)."""
    if not is_available():
        return 0
    n = c_int()
    check(lib().toc_device_count(ctypes.byref(n)), "toc_device_count")
    return n.value


def device_info(device: Device | str = "cuda:0") -> dict[str, Any]:
    """Name, memory, multiprocessors and compute capability of a device."""
    dev = Device.parse(device)
    buf = ctypes.create_string_buffer(256)
    mem, sms, major, minor = c_int64(), c_int(), c_int(), c_int()
    check(
        lib().toc_device_info(
            dev.index,
            buf,
            256,
            ctypes.byref(mem),
            ctypes.byref(sms),
            ctypes.byref(major),
            ctypes.byref(minor),
        ),
        "toc_device_info",
    )
    return {
        "name": buf.value.decode(),
        "total_memory": mem.value,
        "multiprocessors": sms.value,
        "compute_capability": (major.value, minor.value),
    }


def function(op: str, device: Device | str) -> Any:
    """The ctypes function ``toc_<op>`` (same arguments as ``to_<op>``) for ``device``."""
    set_device(device)
    name = "toc_" + op
    try:
        return getattr(lib(), name)
    except AttributeError:
        raise NotImplementedError(f"op {op!r} has no CUDA kernel in {library_path()}") from None


def synchronize(device: Device | str = "cuda:0") -> None:
    """Waits for all work queued on the device's stream."""
    set_device(device)
    check(lib().toc_synchronize(), "toc_synchronize")


# ---- memory -------------------------------------------------------------------------------------
class _DeviceBlock:
    """Owner of a toc_malloc block: returns it to the caching allocator when collected."""

    __slots__ = ("device", "ptr")

    def __init__(self, ptr: int, device: int) -> None:
        self.ptr = ptr
        self.device = device

    def __del__(self) -> None:
        if self.ptr and _lib is not None:
            with contextlib.suppress(Exception):  # interpreter shutdown
                _lib.toc_free(self.ptr)
            self.ptr = 0


_capture_local = threading.local()


@contextlib.contextmanager
def keep_allocations(kept: list[Storage]) -> Iterator[None]:
    """Within the block, every device allocation of the calling thread is also appended to
    ``kept``, so none of it returns to the caching allocator while ``kept`` lives: a captured
    CUDA graph keeps pointers to buffers its Python code made and dropped (nn.cuda_capture)."""
    prev = getattr(_capture_local, "kept", None)
    _capture_local.kept = kept
    try:
        yield
    finally:
        _capture_local.kept = prev


def allocate_storage(nbytes: int, device: Device) -> Storage:
    """Uninitialised device memory of ``nbytes`` from the caching allocator."""
    from inference_pio.tensor import Storage

    dev = set_device(device)
    out = c_void_p()
    check(lib().toc_malloc(nbytes, ctypes.byref(out)), "toc_malloc")
    ptr = out.value or 0
    storage = Storage(ptr, nbytes, dev, _DeviceBlock(ptr, dev.index))
    kept: list[Storage] | None = getattr(_capture_local, "kept", None)
    if kept is not None:
        kept.append(storage)
    return storage


def memory_stats(device: Device | str = "cuda:0") -> dict[str, int]:
    """Caching allocator statistics: bytes in use, peak, cached, and cudaMalloc calls made."""
    set_device(device)
    vals = [c_int64() for _ in range(4)]
    check(lib().toc_memory_stats(*(ctypes.byref(v) for v in vals)), "toc_memory_stats")
    return {
        "in_use": vals[0].value,
        "peak": vals[1].value,
        "cached": vals[2].value,
        "mallocs": vals[3].value,
    }


def empty_cache(device: Device | str = "cuda:0") -> None:
    """Returns cached blocks to the driver and resets the peak."""
    set_device(device)
    check(lib().toc_memory_trim(), "toc_memory_trim")


class PinnedBuffer:
    """Page-locked host memory (fast, asynchronous host<->device copies)."""

    def __init__(self, nbytes: int, device: Device | str = "cuda:0") -> None:
        set_device(device)
        out = c_void_p()
        check(lib().toc_host_alloc(nbytes, ctypes.byref(out)), "toc_host_alloc")
        self.ptr = out.value or 0
        self.nbytes = nbytes

    def __del__(self) -> None:
        if getattr(self, "ptr", 0) and _lib is not None:
            with contextlib.suppress(Exception):
                _lib.toc_host_free(self.ptr)
            self.ptr = 0


def memcpy(dst: int, src: int, nbytes: int, kind: int, blocking: bool = True) -> None:
    """Raw copy on the current device's stream (kind H2D, D2H or D2D)."""
    check(lib().toc_memcpy(dst, src, nbytes, kind, int(blocking)), "toc_memcpy")


def memcpy2d(
    dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: int
) -> None:
    """``height`` rows of ``width`` bytes, ``spitch`` / ``dpitch`` bytes apart, queued on the
    current device's stream (kind H2D, D2H or D2D; pageable host memory is staged first)."""
    check(lib().toc_memcpy2d(dst, dpitch, src, spitch, width, height, kind), "toc_memcpy2d")


def copy_to_device(t: Tensor, device: Device) -> Tensor:
    """``t`` copied to ``device`` (CPU <-> CUDA; contiguous result)."""
    from inference_pio.tensor import Tensor

    dev = Device.parse(device)
    src_dev = t.device
    if src_dev.type == "cuda" and dev.type == "cuda" and src_dev != dev:
        raise ValueError(
            f"copies between CUDA devices ({src_dev} -> {dev}) are not supported; "
            "go through the CPU"
        )
    src = t.contiguous()
    if dev.type == "cuda":
        out = Tensor.empty(src.shape, src.dtype, dev)
        if src.nbytes:
            memcpy(out.data_ptr, src.data_ptr, src.nbytes, H2D, blocking=False)
        return out
    set_device(src_dev)
    out = Tensor.empty(src.shape, src.dtype)
    if src.nbytes:
        memcpy(out.data_ptr, src.data_ptr, src.nbytes, D2H, blocking=True)
    return out


def contiguous(t: Tensor) -> Tensor:
    """A contiguous device copy of a strided device view."""
    from inference_pio.tensor import Tensor

    set_device(t.device)
    out = Tensor.empty(t.shape, t.dtype, t.device)
    if t.numel:
        shape = (c_int64 * t.ndim)(*t.shape)
        strides = (c_int64 * t.ndim)(*t.strides)
        check(
            lib().toc_copy_strided(t.data_ptr, out.data_ptr, t.ndim, shape, strides, t.dtype),
            "toc_copy_strided",
        )
    return out


def clone(t: Tensor) -> Tensor:
    """A device copy of a contiguous device tensor."""
    from inference_pio.tensor import Tensor

    set_device(t.device)
    out = Tensor.empty(t.shape, t.dtype, t.device)
    if t.nbytes:
        memcpy(out.data_ptr, t.data_ptr, t.nbytes, D2D, blocking=False)
    return out


def memset_zero(t: Tensor) -> None:
    """Fills a contiguous device tensor with zero bytes."""
    set_device(t.device)
    if t.nbytes:
        check(lib().toc_memset(t.data_ptr, 0, t.nbytes), "toc_memset")


def copy_bandwidth(
    nbytes: int = 2 << 30, iters: int = 10, device: Device | str = "cuda:0"
) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    set_device(device)
    out = ctypes.c_double()
    check(
        lib().toc_bench_copy_bandwidth(nbytes, iters, ctypes.byref(out)), "toc_bench_copy_bandwidth"
    )
    return out.value


def read_bandwidth(
    nbytes: int = 2 << 30, iters: int = 10, device: Device | str = "cuda:0"
) -> float:
    """Measured device read bandwidth in GB/s: the best of two read-only kernels (a grid-stride
    loop with 8 loads in flight per thread, and per-block ranges with 8 loads in flight per lane
    as the fused decode step reads its weights), the ceiling of a batch-1 GEMV."""
    set_device(device)
    out = ctypes.c_double()
    check(
        lib().toc_bench_read_bandwidth(nbytes, iters, ctypes.byref(out)), "toc_bench_read_bandwidth"
    )
    return out.value


def blas_library() -> str:
    """The cuBLAS library used for large matrix products, or "" (our own WMMA GEMM)."""
    buf = ctypes.create_string_buffer(512)
    check(lib().toc_blas_info(buf, 512), "toc_blas_info")
    return buf.value.decode()


__all__ = [
    "CudaUnavailableError",
    "PinnedBuffer",
    "allocate_storage",
    "blas_library",
    "clone",
    "contiguous",
    "copy_bandwidth",
    "copy_to_device",
    "device_count",
    "device_info",
    "empty_cache",
    "function",
    "is_available",
    "lib",
    "memory_stats",
    "memset_zero",
    "set_device",
    "synchronize",
    "unavailable_reason",
]
