"""Finds, loads and version-checks libtensor_ops.

Search order: ``$INFERENCE_PIO_LIB`` (a path to a library file), then ``lib/`` next to this module
(wheel and in-place builds), then ``inference_pio/_native/lib`` under each ``sys.path`` entry
(editable installs, where CMake's output lives in site-packages while the sources stay in the
checkout).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

from inference_pio._native.bindings import ABI_VERSION, declare
from inference_pio.errors import NativeError, NativeLibraryError

LIBRARY_NAME = "libtensor_ops.so"
_ENV_VAR = "INFERENCE_PIO_LIB"


class NativeLibrary(ctypes.CDLL):
    """The loaded ``libtensor_ops`` with its prototypes declared (see bindings.py)."""


_lock = threading.Lock()
_lib: NativeLibrary | None = None


def candidate_paths(name: str = LIBRARY_NAME) -> list[Path]:
    """Every place the library named ``name`` is looked for, in order."""
    env = os.environ.get(_ENV_VAR)
    if env and name == LIBRARY_NAME:
        return [Path(env)]
    if env:
        # A sibling library (e.g. the CUDA one) is looked for next to an overridden main library.
        return [Path(env).with_name(name)]
    here = Path(__file__).resolve().parent / "lib" / name
    paths = [here]
    for entry in sys.path:
        if not entry:  # the working directory: never load a library from wherever one stands
            continue
        p = Path(entry) / "inference_pio" / "_native" / "lib" / name
        if p not in paths:
            paths.append(p)
    return paths


def library_path(name: str = LIBRARY_NAME) -> Path:
    """The path of the library that ``lib()`` loads; raises NativeLibraryError if none exists."""
    paths = candidate_paths(name)
    for p in paths:
        if p.is_file():
            return p
    where = "\n  ".join(str(p) for p in paths)
    hint = (
        f"${_ENV_VAR} points to a missing file"
        if os.environ.get(_ENV_VAR)
        else "reinstall inference-pio (pip install -e .) so CMake builds it"
    )
    raise NativeLibraryError(f"{name} not found; looked in:\n  {where}\n{hint}")


def lib() -> NativeLibrary:
    """Loads libtensor_ops once (thread-safe) and returns it."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            path = library_path()
            try:
                loaded = NativeLibrary(str(path))
            except OSError as exc:
                raise NativeLibraryError(f"cannot load {path}: {exc}") from exc
            found = loaded.to_abi_version()
            if found != ABI_VERSION:
                raise NativeLibraryError(
                    f"{path} has ABI version {found}, this inference_pio needs {ABI_VERSION}; "
                    "rebuild the native library"
                )
            declare(loaded)
            _lib = loaded
    return _lib


def last_error() -> str:
    """The calling thread's last C error message."""
    raw: bytes = lib().to_last_error()
    return raw.decode("utf-8", "replace")


def check(rc: int, function: str = "") -> None:
    """Raises NativeError with the C message when ``rc`` is not TO_OK."""
    if rc != 0:
        raise NativeError(rc, last_error(), function)
