"""Selection and indexing ops (C: native/src/cpu/select.c): argmax, top-k, cumsum, where and
embedding lookup."""

from __future__ import annotations

from inference_pio.dtypes import DType
from inference_pio.errors import NativeError
from inference_pio.ops._dispatch import (
    native_call,
    out_or_new,
    require,
    require_inplace_or_disjoint,
    same_device,
)
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)
INDEX = (DType.int32, DType.int64)


def _index_dtype(dtype: DType | str) -> DType:
    dt = DType.parse(dtype)
    if dt not in INDEX:
        raise TypeError(f"index dtype must be int32 or int64, got {dt.name}")
    return dt


def argmax(x: Tensor, index_dtype: DType | str = DType.int64) -> Tensor:
    """Index of the max over the last dim (first among equals; NaN wins, like torch); shape
    ``x.shape[:-1]``."""
    require("x", x, dtypes=FLOAT_ACT, ndim=(1, 2, 3, 4), nonempty=True)
    idt = _index_dtype(index_dtype)
    dim = x.shape[-1]
    out = Tensor.empty(x.shape[:-1], idt, x.device)
    native_call(x.device, "argmax", x.data_ptr, out.data_ptr, x.numel // dim, dim, x.dtype, idt)
    return out


def topk(x: Tensor, k: int, index_dtype: DType | str = DType.int64) -> tuple[Tensor, Tensor]:
    """The ``k`` largest values of each row (last dim), sorted descending, and their indices.
    Among equal values the lower index comes first (torch leaves that order unspecified). NaN
    inputs raise."""
    require("x", x, dtypes=FLOAT_ACT, ndim=(1, 2, 3, 4), nonempty=True)
    idt = _index_dtype(index_dtype)
    dim = x.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dim:
        raise ValueError(f"topk: k must be an int in [1, {dim}], got {k!r}")
    values = Tensor.empty((*x.shape[:-1], k), x.dtype, x.device)
    idx = Tensor.empty((*x.shape[:-1], k), idt, x.device)
    native_call(
        x.device,
        "topk",
        x.data_ptr,
        values.data_ptr,
        idx.data_ptr,
        x.numel // dim,
        dim,
        k,
        x.dtype,
        idt,
    )
    return values, idx


def cumsum(x: Tensor, *, out_dtype: DType | str = DType.float32) -> Tensor:
    """Inclusive prefix sum over the last dim with an fp32 accumulator."""
    require("x", x, dtypes=FLOAT_ACT, ndim=(1, 2, 3, 4))
    dt = DType.parse(out_dtype)
    if dt not in FLOAT_ACT:
        raise TypeError(f"cumsum: out dtype {dt.name} not supported (float32 or bfloat16)")
    out = Tensor.empty(x.shape, dt, x.device)
    dim = x.shape[-1] if x.ndim else 1
    if x.numel:
        native_call(x.device, "cumsum", x.data_ptr, out.data_ptr, x.numel // dim, dim, x.dtype, dt)
    return out


def where(mask: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``mask ? a : b`` elementwise; ``mask`` bool/uint8, ``a`` and ``b`` of one dtype and shape."""
    require("mask", mask, dtypes=(DType.bool, DType.uint8))
    require("a", a)
    require("b", b, dtypes=(a.dtype,))
    if not (mask.shape == a.shape == b.shape):
        raise ValueError(f"where: shapes differ (mask {mask.shape}, a {a.shape}, b {b.shape})")
    device = same_device(mask=mask, a=a, b=b, out=out)
    result = out_or_new(out, a.shape, a.dtype, device)
    require_inplace_or_disjoint("where", out, mask=mask, a=a, b=b)
    native_call(
        device, "where", mask.data_ptr, a.data_ptr, b.data_ptr, result.data_ptr, a.numel, a.dtype
    )
    return result


def embedding(
    ids: Tensor, table: Tensor, out_dtype: DType | str | None = None, out: Tensor | None = None
) -> Tensor:
    """Rows of ``table`` (``[vocab, dim]``, f32/bf16/f16) selected by ``ids`` (int32/int64, any
    shape): result ``[*ids.shape, dim]`` in ``out_dtype`` (default: the table's, f16 -> f32).
    An id outside ``[0, vocab)`` raises ValueError naming it."""
    require("ids", ids, dtypes=INDEX)
    require("table", table, dtypes=(DType.float32, DType.bfloat16, DType.float16), ndim=2)
    if out_dtype is None:
        dt = (
            out.dtype
            if out is not None
            else (DType.float32 if table.dtype == DType.float16 else table.dtype)
        )
    else:
        dt = DType.parse(out_dtype)
    if dt not in FLOAT_ACT:
        raise TypeError(f"embedding: out dtype {dt.name} not supported (float32 or bfloat16)")
    vocab, dim = table.shape
    device = same_device(ids=ids, table=table, out=out)
    result = out_or_new(out, (*ids.shape, dim), dt, device)
    try:
        native_call(
            device,
            "embedding",
            ids.data_ptr,
            ids.dtype,
            ids.numel,
            table.data_ptr,
            table.dtype,
            vocab,
            dim,
            result.data_ptr,
            dt,
        )
    except NativeError as exc:
        raise ValueError(str(exc)) from exc
    return result


__all__ = ["argmax", "cumsum", "embedding", "topk", "where"]
