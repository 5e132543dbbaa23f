"""Softmax and log-softmax over the last dim (C: native/src/cpu/softmax.c), always in fp32."""

from __future__ import annotations

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import (
    native_call,
    out_or_new,
    require,
    require_inplace_or_disjoint,
    same_device,
)
from inference_pio.ops._layout import row_layout
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)


def _softmax(x: Tensor, log: bool, out: Tensor | None, out_dtype: DType | str | None) -> Tensor:
    require("x", x, dtypes=FLOAT_ACT, contiguous=False, nonempty=True)
    dt = (
        DType.parse(out_dtype)
        if out_dtype is not None
        else (out.dtype if out is not None else x.dtype)
    )
    if dt not in FLOAT_ACT:
        raise TypeError(f"softmax: out dtype {dt.name} not supported (float32 or bfloat16)")
    device = same_device(x=x, out=out)
    if out is not None and not out.is_contiguous() and out is not x:
        raise ValueError("out must be contiguous (or x itself)")
    result = out_or_new(out, x.shape, dt, device) if out is not x else x
    if out is x and x.dtype != dt:
        raise TypeError("softmax in place needs out_dtype == x.dtype")
    if result.readonly:
        raise ValueError("out is read-only")
    if out is not None and out is not x:
        require_inplace_or_disjoint("softmax", out, x=x)
    dim = x.shape[-1]
    _, _, ldo = row_layout("out", result, output=True)
    x, rows, ldx = row_layout("x", x)
    native_call(
        device,
        "softmax",
        x.data_ptr,
        result.data_ptr,
        rows,
        dim,
        ldx,
        ldo,
        1 if log else 0,
        x.dtype,
        dt,
    )
    return result


def softmax(
    x: Tensor, *, out: Tensor | None = None, out_dtype: DType | str | None = None
) -> Tensor:
    """Softmax over the last dim computed in fp32, rounded once to ``out_dtype`` (default: x's).
    ``x`` may have row strides (contiguous last dim); ``out=x`` works in place."""
    return _softmax(x, False, out, out_dtype)


def log_softmax(
    x: Tensor, *, out: Tensor | None = None, out_dtype: DType | str | None = None
) -> Tensor:
    """``x - max - log(sum(exp(x - max)))`` over the last dim, in fp32."""
    return _softmax(x, True, out, out_dtype)


__all__ = ["log_softmax", "softmax"]
