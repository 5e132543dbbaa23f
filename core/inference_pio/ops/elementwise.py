"""Elementwise ops (C: native/src/cpu/elementwise.c)."""

from __future__ import annotations

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import native_call, out_or_new, require, same_device
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)


def _binary(op: str, a: Tensor, b: Tensor, out: Tensor | None) -> Tensor:
    require("a", a, dtypes=FLOAT_ACT)
    require("b", b, dtypes=(a.dtype,))
    if a.shape != b.shape:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} differ")
    device = same_device(a=a, b=b, out=out)
    result = out_or_new(out, a.shape, a.dtype, device)
    native_call(device, op, a.data_ptr, b.data_ptr, result.data_ptr, a.numel, a.dtype)
    return result


def add(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a + b`` (same shape and dtype, f32 or bf16); ``out`` may alias an input."""
    return _binary("add", a, b, out)


def mul(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a * b`` elementwise."""
    return _binary("mul", a, b, out)
