"""Facts about the loaded native libraries (version, CPU features, chosen kernels, CUDA)."""

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


def _cuda_version(v: int) -> str:
    """CUDA's integer version (13000) as text ("13.0"); "" for 0 (no driver)."""
    return f"{v // 1000}.{v % 1000 // 10}" if v > 0 else ""


def cuda_info() -> dict[str, Any]:
    """Whether CUDA can be used here: the CUDA library, driver and runtime versions, cuBLAS and
    every device, or why not (no library built, no driver, no device)."""
    from inference_pio import cuda

    path = cuda.library_path()
    if not cuda.is_available():
        return {
            "available": False,
            "reason": cuda.unavailable_reason(),
            "library": str(path) if path else None,
        }
    driver, runtime = ctypes.c_int(), ctypes.c_int()
    cuda.check(
        cuda.lib().toc_driver_version(ctypes.byref(driver), ctypes.byref(runtime)),
        "toc_driver_version",
    )
    devices = []
    for i in range(cuda.device_count()):
        d = cuda.device_info(f"cuda:{i}")
        major, minor = d["compute_capability"]
        devices.append(
            {
                "device": f"cuda:{i}",
                "name": d["name"],
                "total_memory": d["total_memory"],
                "multiprocessors": d["multiprocessors"],
                "compute_capability": f"{major}.{minor}",
            }
        )
    return {
        "available": True,
        "library": str(path),
        "driver": _cuda_version(driver.value),
        "runtime": _cuda_version(runtime.value),
        "cublas": cuda.blas_library() or None,
        "devices": devices,
    }
