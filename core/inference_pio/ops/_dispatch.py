"""Validation helpers shared by every op, and ``native_call``, which runs an op through
:mod:`inference_pio.backend` (the one place that resolves and calls backend functions).

CPU ops are the ``to_<op>`` symbols of libtensor_ops; CUDA ops are the ``toc_<op>`` symbols of
libtensor_ops_cuda with the same arguments (device pointers), loaded lazily on first CUDA use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inference_pio.backend import backend
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.ops._layout import row_grid
from inference_pio.tensor import Tensor


def native_call(device: Device, op: str, *args: Any) -> None:
    """Calls op ``op`` on the backend of ``device``; a C error raises NativeError."""
    backend(device).call(op, *args)


def require_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    return t


def require(
    name: str,
    t: object,
    *,
    dtypes: Iterable[DType] | None = None,
    ndim: int | Iterable[int] | None = None,
    contiguous: bool = True,
    nonempty: bool = False,
    writable: bool = False,
) -> Tensor:
    """Checks one argument; raises TypeError/ValueError naming ``name``."""
    t = require_tensor(name, t)
    if nonempty and t.ndim == 0:  # row-wise ops: a scalar has no row
        raise ValueError(f"{name} must have at least 1 dim, got a 0-d tensor")
    if dtypes is not None:
        allowed = tuple(dtypes)
        if t.dtype not in allowed:
            names = ", ".join(d.name for d in allowed)
            raise TypeError(f"{name} has dtype {t.dtype.name}; expected {names}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in dims:
            wanted = " or ".join(map(str, dims))
            raise ValueError(f"{name} must have {wanted} dims, got shape {t.shape}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if nonempty and t.numel == 0:
        raise ValueError(f"{name} is empty (shape {t.shape})")
    if writable and t.readonly:
        raise ValueError(f"{name} is read-only (borrowed weights); pass a writable tensor")
    return t


def same_device(**tensors: Tensor | None) -> Device:
    """The common device of the given tensors; mixing devices raises ValueError."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    unique = set(devices.values())
    if len(unique) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors are on different devices ({desc}); move them with .to(device)")
    return next(iter(unique))


def out_or_new(
    out: Tensor | None, shape: tuple[int, ...], dtype: DType, device: Device, name: str = "out"
) -> Tensor:
    """``out`` checked against the expected shape/dtype/device, or a new tensor."""
    if out is None:
        return Tensor.empty(shape, dtype, device)
    require(name, out, dtypes=(dtype,), writable=True)
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if out.device != device:
        raise ValueError(f"{name} is on {out.device}, expected {device}")
    return out


def _element_span(t: Tensor) -> tuple[int, int]:
    """First and one-past-last element (of t's storage) that ``t`` can address."""
    lo = hi = t.offset
    for n, s in zip(t.shape, t.strides, strict=True):
        lo += min(0, (n - 1) * s)
        hi += max(0, (n - 1) * s)
    return lo, hi + 1


def _disjoint_columns(a: Tensor, b: Tensor) -> bool:
    """Both rows of one row stride (slices of one fused buffer) in columns that do not meet."""
    try:
        (_,), (lda,) = row_grid("a", a, levels=1)
        (_,), (ldb,) = row_grid("b", b, levels=1)
    except ValueError:
        return False
    if lda != ldb or lda <= 0:
        return False
    ca, cb, wa, wb = a.offset % lda, b.offset % lda, a.shape[-1], b.shape[-1]
    return ca + wa <= lda and cb + wb <= lda and (ca + wa <= cb or cb + wb <= ca)


def require_disjoint(op: str, out: Tensor, **inputs: Tensor | None) -> None:
    """Raises ValueError when ``out`` shares memory with one of ``inputs`` (the kernels write
    ``out`` while they still read their inputs; torch refuses such aliasing too)."""
    for name, t in inputs.items():
        if t is None or t.storage is not out.storage or not t.numel or not out.numel:
            continue
        a0, a1 = (v * out.dtype.itemsize for v in _element_span(out))
        b0, b1 = (v * t.dtype.itemsize for v in _element_span(t))
        same_grid = t.dtype.itemsize == out.dtype.itemsize and _disjoint_columns(out, t)
        if a0 < b1 and b0 < a1 and not same_grid:
            raise ValueError(f"{op}: out overlaps {name}; pass a separate out tensor")


def _same_view(a: Tensor, b: Tensor) -> bool:
    return (
        a.storage is b.storage
        and a.data_ptr == b.data_ptr
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.strides == b.strides
    )


def require_inplace_or_disjoint(op: str, out: Tensor | None, **inputs: Tensor | None) -> None:
    """For element- and row-wise ops: ``out`` may be exactly an input (the same view: in place)
    but must not partially overlap one, whose elements the kernels would read after writing
    them (torch refuses partial overlap too)."""
    if out is None:
        return
    partial = {n: t for n, t in inputs.items() if t is not None and not _same_view(t, out)}
    require_disjoint(op, out, **partial)
