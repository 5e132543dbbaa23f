"""Elementwise ops (C: native/src/cpu/elementwise.c)."""

from __future__ import annotations

from ctypes import c_float
from typing import Literal

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


def _binary(op: str, a: Tensor, b: Tensor, out: Tensor | None) -> Tensor:
    require("a", a, dtypes=FLOAT_ACT)
    require("b", b, dtypes=(a.dtype,))
    if a.shape != b.shape:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} differ")
    device = same_device(a=a, b=b, out=out)
    result = out_or_new(out, a.shape, a.dtype, device)
    require_inplace_or_disjoint(op, out, a=a, b=b)
    native_call(device, op, a.data_ptr, b.data_ptr, result.data_ptr, a.numel, a.dtype)
    return result


def add(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a + b`` (same shape and dtype, f32 or bf16); ``out`` may alias an input."""
    return _binary("add", a, b, out)


def mul(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a * b`` elementwise."""
    return _binary("mul", a, b, out)


def _unary(op: str, x: Tensor, out: Tensor | None, *extra: object) -> Tensor:
    require("x", x, dtypes=FLOAT_ACT)
    device = same_device(x=x, out=out)
    result = out_or_new(out, x.shape, x.dtype, device)
    require_inplace_or_disjoint(op, out, x=x)
    args = (x.data_ptr, result.data_ptr, x.numel)
    if op == "scale":
        native_call(device, op, *args, c_float(float(extra[0])), x.dtype)  # type: ignore[arg-type]
    elif op == "gelu":
        native_call(device, op, *args, extra[0], x.dtype)
    else:
        native_call(device, op, *args, x.dtype)
    return result


def scale(x: Tensor, s: float, out: Tensor | None = None) -> Tensor:
    """``x * s`` (fp32 scalar, one rounding); ``out`` may be ``x``."""
    return _unary("scale", x, out, s)


def silu(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``x * sigmoid(x)``."""
    return _unary("silu", x, out)


def sigmoid(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``1 / (1 + exp(-x))``."""
    return _unary("sigmoid", x, out)


def exp(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``exp(x)``."""
    return _unary("exp", x, out)


def softplus(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``log1p(exp(x))`` (``x`` itself above 20, like torch's default threshold)."""
    return _unary("softplus", x, out)


def gelu(
    x: Tensor, approximate: Literal["none", "tanh"] = "none", out: Tensor | None = None
) -> Tensor:
    """GELU: exact erf form (``"none"``) or the tanh approximation (``"tanh"``), as torch."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _unary("gelu", x, out, 1 if approximate == "tanh" else 0)


def swiglu(gate: Tensor, up: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """``silu(gate) * up`` (bf16: silu rounded first, like HF's ``act_fn(gate) * up``).

    With ``up=None``, ``gate`` is a fused ``[..., 2*I]`` buffer holding gate then up halves.
    Inputs may be row-strided views (contiguous last dim); the result is ``[..., I]``.
    """
    require("gate", gate, dtypes=FLOAT_ACT, ndim=(1, 2, 3, 4), contiguous=False)
    if up is None:
        if gate.shape[-1] % 2:
            raise ValueError(f"swiglu: fused input needs an even last dim, got {gate.shape}")
        inter = gate.shape[-1] // 2
        g = gate.narrow(-1, 0, inter)
        u = gate.narrow(-1, inter, inter)
    else:
        require("up", up, dtypes=(gate.dtype,), contiguous=False)
        if up.shape != gate.shape:
            raise ValueError(f"swiglu: gate {gate.shape} and up {up.shape} differ")
        g, u = gate, up
    inter = g.shape[-1]
    device = same_device(gate=gate, up=up, out=out)
    result = out_or_new(out, g.shape, g.dtype, device)
    require_inplace_or_disjoint("swiglu", out, gate=g, up=u)
    g, rows, ldg = row_layout("gate", g)
    u, _, ldu = row_layout("up", u)
    native_call(
        device,
        "swiglu",
        g.data_ptr,
        u.data_ptr,
        result.data_ptr,
        rows,
        inter,
        ldg,
        ldu,
        inter,
        g.dtype,
    )
    return result


def add_row(x: Tensor, bias: Tensor, out: Tensor | None = None) -> Tensor:
    """``x + bias`` with ``bias`` (``[dim]``, f32/bf16/f16) broadcast over the rows of ``x``
    (``[..., dim]``); fp32 add, one rounding; ``out`` may be ``x``."""
    require("x", x, dtypes=FLOAT_ACT, ndim=(1, 2, 3, 4))
    require("bias", bias, dtypes=(DType.float32, DType.bfloat16, DType.float16), ndim=1)
    dim = x.shape[-1]
    if bias.shape != (dim,):
        raise ValueError(f"add_row: bias has shape {bias.shape}, expected ({dim},)")
    device = same_device(x=x, bias=bias, out=out)
    result = out_or_new(out, x.shape, x.dtype, device)
    require_inplace_or_disjoint("add_row", out, x=x, bias=bias)
    rows = x.numel // max(dim, 1)
    native_call(
        device,
        "add_row",
        x.data_ptr,
        bias.data_ptr,
        result.data_ptr,
        rows,
        dim,
        x.dtype,
        bias.dtype,
    )
    return result


def mul_rows(x: Tensor, s: Tensor, out: Tensor | None = None) -> Tensor:
    """``x * s[..., None]``: each row of ``x`` (``[..., dim]``) times its scalar in ``s``
    (shape ``x.shape[:-1]``, f32/bf16); ``out`` may be ``x``."""
    require("x", x, dtypes=FLOAT_ACT, ndim=(1, 2, 3, 4))
    require("s", s, dtypes=FLOAT_ACT)
    if s.shape != x.shape[:-1]:
        raise ValueError(f"mul_rows: s has shape {s.shape}, expected {x.shape[:-1]}")
    device = same_device(x=x, s=s, out=out)
    result = out_or_new(out, x.shape, x.dtype, device)
    require_inplace_or_disjoint("mul_rows", out, x=x, s=s)
    dim = x.shape[-1]
    native_call(
        device, "mul_rows", x.data_ptr, s.data_ptr, result.data_ptr, s.numel, dim, x.dtype, s.dtype
    )
    return result
