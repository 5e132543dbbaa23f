"""Normalisation ops (C: native/src/cpu/norm.c): RMSNorm (three variants) and LayerNorm."""

from __future__ import annotations

from ctypes import c_float
from typing import Literal

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import (
    native_call,
    require,
    require_inplace_or_disjoint,
    same_device,
)
from inference_pio.ops._layout import require_disjoint_rows, row_grid, row_layout
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)
WEIGHT_DTYPES = (DType.float32, DType.bfloat16, DType.float16)

RmsVariant = Literal["plain", "zero_centered", "gated"]
_VARIANTS: dict[str, int] = {"plain": 0, "zero_centered": 1, "gated": 2}


def _output(name: str, x: Tensor, out: Tensor | None, out_dtype: DType | str | None) -> Tensor:
    dtype = (
        DType.parse(out_dtype)
        if out_dtype is not None
        else (out.dtype if out is not None else x.dtype)
    )
    if dtype not in FLOAT_ACT:
        raise TypeError(f"{name}: out dtype {dtype.name} not supported (float32 or bfloat16)")
    if out is None:
        return Tensor.empty(x.shape, dtype, x.device)
    require("out", out, dtypes=(dtype,), contiguous=False, writable=True)
    if out.shape != x.shape:
        raise ValueError(f"{name}: out has shape {out.shape}, expected {x.shape}")
    return out


def rms_norm(
    x: Tensor,
    weight: Tensor,
    eps: float = 1e-6,
    *,
    variant: RmsVariant = "plain",
    gate: Tensor | None = None,
    out: Tensor | None = None,
    out_dtype: DType | str | None = None,
) -> Tensor:
    """RMSNorm over the last dim (models.md §1.1).

    ``variant``: ``"plain"`` (``w * round(x*r)``), ``"zero_centered"`` (``(x*r)*(1+w)`` in fp32)
    or ``"gated"`` (``round(w*round(x*r)) * silu(gate)``, ``gate`` shaped like ``x``). ``x`` may
    be a strided view (e.g. heads of a fused projection) as long as its last dim is contiguous;
    ``out=x`` normalises in place. Output dtype: ``out_dtype``, else ``out``'s, else ``x``'s.
    """
    require("x", x, dtypes=FLOAT_ACT, contiguous=False, nonempty=True)
    require("weight", weight, dtypes=WEIGHT_DTYPES, ndim=1)
    if variant not in _VARIANTS:
        raise ValueError(
            f"rms_norm: unknown variant {variant!r}; expected one of {sorted(_VARIANTS)}"
        )
    dim = x.shape[-1]
    if weight.shape != (dim,):
        raise ValueError(f"rms_norm: weight has shape {weight.shape}, expected ({dim},)")
    if eps < 0:
        raise ValueError(f"rms_norm: eps must be >= 0, got {eps}")
    if variant == "gated":
        if gate is None:
            raise ValueError("rms_norm: variant 'gated' needs gate")
        require("gate", gate, dtypes=(x.dtype,), contiguous=False)
        if gate.shape != x.shape:
            raise ValueError(f"rms_norm: gate has shape {gate.shape}, expected {x.shape}")
    elif gate is not None:
        raise ValueError(f"rms_norm: gate is only used by variant 'gated', not {variant!r}")
    device = same_device(x=x, weight=weight, gate=gate, out=out)
    result = _output("rms_norm", x, out, out_dtype)
    require_inplace_or_disjoint("rms_norm", out, x=x, weight=weight, gate=gate)
    (n_o, n_i), (x_so, x_si) = row_grid("x", x)
    (_, _), (o_so, o_si) = _matching_grid("out", result, n_o, n_i)
    require_disjoint_rows("out", (n_o, n_i), (o_so, o_si), dim)
    z_so = z_si = 0
    if gate is not None:
        (_, _), (z_so, z_si) = _matching_grid("gate", gate, n_o, n_i)
    native_call(
        device,
        "rms_norm",
        x.data_ptr,
        weight.data_ptr,
        gate.data_ptr if gate is not None else None,
        result.data_ptr,
        n_o,
        n_i,
        dim,
        x_so,
        x_si,
        z_so,
        z_si,
        o_so,
        o_si,
        c_float(eps),
        _VARIANTS[variant],
        x.dtype,
        weight.dtype,
        result.dtype,
    )
    return result


def _matching_grid(name: str, t: Tensor, n_o: int, n_i: int) -> tuple[list[int], list[int]]:
    """Row strides of ``t`` expressed on the (n_o, n_i) grid of x (same shape as x)."""
    counts, strides = row_grid(name, t)
    if counts == [n_o, n_i]:
        return counts, strides
    # Same shape, different merging: rebuild strides for x's grid from t's flat row index.
    if counts[0] == 1 and n_i > 0 and counts[1] == n_o * n_i:
        return [n_o, n_i], [strides[1] * n_i, strides[1]]
    raise ValueError(
        f"{name}: its layout (strides {t.strides}) is not compatible with x's rows; "
        "call .contiguous()"
    )


def layer_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float = 1e-6,
    *,
    out: Tensor | None = None,
    out_dtype: DType | str | None = None,
) -> Tensor:
    """LayerNorm over the last dim with fp32 statistics: ``(x-mean)*rsqrt(var+eps)*w + b``.

    ``weight``/``bias`` may be None (1/0); when both are given they share a dtype.
    """
    require("x", x, dtypes=FLOAT_ACT, contiguous=False, nonempty=True)
    dim = x.shape[-1]
    wdtype = DType.float32
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            require(name, t, dtypes=WEIGHT_DTYPES, ndim=1)
            if t.shape != (dim,):
                raise ValueError(f"layer_norm: {name} has shape {t.shape}, expected ({dim},)")
            wdtype = t.dtype
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        raise TypeError(
            f"layer_norm: weight ({weight.dtype.name}) and bias ({bias.dtype.name}) "
            "must share a dtype"
        )
    if eps < 0:
        raise ValueError(f"layer_norm: eps must be >= 0, got {eps}")
    device = same_device(x=x, weight=weight, bias=bias, out=out)
    result = _output("layer_norm", x, out, out_dtype)
    require_inplace_or_disjoint("layer_norm", out, x=x, weight=weight, bias=bias)
    _, _, ldo = row_layout("out", result, output=True)
    x, rows, ldx = row_layout("x", x)
    native_call(
        device,
        "layer_norm",
        x.data_ptr,
        weight.data_ptr if weight is not None else None,
        bias.data_ptr if bias is not None else None,
        result.data_ptr,
        rows,
        dim,
        ldx,
        ldo,
        c_float(eps),
        x.dtype,
        wdtype,
        result.dtype,
    )
    return result


__all__ = ["layer_norm", "rms_norm"]
