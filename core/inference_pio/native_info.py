"""Facts about the loaded native library (version, CPU features, chosen kernels)."""

from __future__ import annotations

import ctypes
from typing import Any

from inference_pio._native import check, lib, library_path


def kernel_report() -> str:
    """Which instruction sets were detected and which kernel each op dispatches to."""
    buf = ctypes.create_string_buffer(8192)
    check(lib().to_kernel_report(buf, len(buf)), "to_kernel_report")
    return buf.value.decode()


def native_info() -> dict[str, Any]:
    """Version, ABI, path, thread count and kernel report of libtensor_ops."""
    library = lib()
    return {
        "path": str(library_path()),
        "version": library.to_version_string().decode(),
        "abi_version": library.to_abi_version(),
        "threads": library.to_get_num_threads(),
        "kernel_report": kernel_report(),
    }
