"""Every C prototype of tensor_ops.h bound through ctypes, declared in one place.

Each entry keeps the C prototype as a comment beside its Python declaration. Add new ops here
when they are added to the header; ``declare`` sets ``restype``/``argtypes`` on the library.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_char_p, c_int, c_int64, c_size_t, c_uint32, c_void_p
from typing import Any

#: Must equal TO_ABI_VERSION in native/include/tensor_ops.h.
ABI_VERSION = 1

Prototype = tuple[Any, list[Any]]

PROTOTYPES: dict[str, Prototype] = {
    # int to_abi_version(void);
    "to_abi_version": (c_int, []),
    # const char *to_version_string(void);
    "to_version_string": (c_char_p, []),
    # const char *to_last_error(void);
    "to_last_error": (c_char_p, []),
    # void to_clear_error(void);
    "to_clear_error": (None, []),
    # int64_t to_dtype_size(int dtype);
    "to_dtype_size": (c_int64, [c_int]),
    # int to_kernel_report(char *buf, size_t cap);
    "to_kernel_report": (c_int, [c_char_p, c_size_t]),
    # uint32_t to_cpu_features(void);
    "to_cpu_features": (c_uint32, []),
    # int to_set_isa_mask(uint32_t mask);
    "to_set_isa_mask": (c_int, [c_uint32]),
    # int to_set_num_threads(int n);
    "to_set_num_threads": (c_int, [c_int]),
    # int to_get_num_threads(void);
    "to_get_num_threads": (c_int, []),
    # int to_add(const void *a, const void *b, void *out, int64_t n, int dtype);
    "to_add": (c_int, [c_void_p, c_void_p, c_void_p, c_int64, c_int]),
    # int to_mul(const void *a, const void *b, void *out, int64_t n, int dtype);
    "to_mul": (c_int, [c_void_p, c_void_p, c_void_p, c_int64, c_int]),
    # int to_cast(const void *src, int src_dtype, void *dst, int dst_dtype, int64_t n);
    "to_cast": (c_int, [c_void_p, c_int, c_void_p, c_int, c_int64]),
    # ---- memory ----
    # int to_alloc(size_t nbytes, void **out);
    "to_alloc": (c_int, [c_size_t, POINTER(c_void_p)]),
    # int to_free(void *ptr);
    "to_free": (c_int, [c_void_p]),
    # int to_memory_stats(int64_t *in_use, int64_t *peak, int64_t *cached);
    "to_memory_stats": (c_int, [POINTER(c_int64), POINTER(c_int64), POINTER(c_int64)]),
    # int to_memory_trim(void);
    "to_memory_trim": (c_int, []),
    # ---- copy ----
    # int to_copy_strided(const void *src, void *dst, int ndim, const int64_t *shape,
    #                     const int64_t *src_strides, int dtype);
    "to_copy_strided": (c_int, [c_void_p, c_void_p, c_int, POINTER(c_int64), POINTER(c_int64), c_int]),
}


def declare(library: ctypes.CDLL) -> None:
    """Sets restype and argtypes of every prototype on ``library``."""
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(library, name)
        fn.restype = restype
        fn.argtypes = argtypes
