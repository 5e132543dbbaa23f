"""FP8 block-scaled weights (C: native/src/cpu/fp8.c, native/src/cuda/fp8.cu).

The "-FP8" checkpoints of Qwen and DeepSeek store a weight ``W [n, k]`` as float8 e4m3fn bytes plus
a float32 ``weight_scale_inv [ceil(n/bn), ceil(k/bk)]`` (usually ``bn = bk = 128``):
``W[i, j] = e4m3(w[i, j]) * scale[i // bn, j // bk]``.
"""

from __future__ import annotations

from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import native_call, require, same_device
from inference_pio.ops.matmul import (
    FLOAT_ACT,
    _row_stride,
    _rows,
    check_x_and_bias,
    linear_output,
)
from inference_pio.tensor import Tensor

#: Output dtypes of :func:`dequantize_fp8`.
DEQUANT_DTYPES = (DType.float32, DType.bfloat16, DType.float16)


def _block(op: str, block: object) -> tuple[int, int]:
    if (
        not isinstance(block, tuple)
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in block)
    ):
        raise TypeError(f"{op}: block must be a tuple of two ints, got {block!r}")
    bn, bk = block
    if not (1 <= bn < 1 << 31 and 1 <= bk < 1 << 31):  # C reads int64: 2**64 + 1 would be 1
        raise ValueError(f"{op}: block sizes must be in 1..2**31-1, got {block}")
    return bn, bk


def scale_shape(n: int, k: int, block: tuple[int, int]) -> tuple[int, int]:
    """Shape of the scale tensor of an ``[n, k]`` weight with ``block = (bn, bk)``."""
    bn, bk = block
    return (-(-n // bn), -(-k // bk))


def _check_fp8(op: str, weight: Tensor, scale: Tensor, block: object) -> tuple[int, int, Device]:
    """Validates an fp8 weight and its scales; returns the block sizes and the device."""
    require("weight", weight, dtypes=(DType.float8_e4m3,), ndim=2)
    require("scale", scale, dtypes=(DType.float32,), ndim=2)
    bn, bk = _block(op, block)
    n, k = weight.shape
    expected = scale_shape(n, k, (bn, bk))
    if scale.shape != expected:
        raise ValueError(
            f"{op}: scale has shape {scale.shape}, expected {expected} "
            f"(ceil({n}/{bn}), ceil({k}/{bk})) for weight {weight.shape} and block {(bn, bk)}"
        )
    device = same_device(weight=weight, scale=scale)
    return bn, bk, device


def dequantize_fp8(
    weight: Tensor,
    scale: Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: DType | str = DType.bfloat16,
) -> Tensor:
    """``e4m3(weight) * scale`` expanded over ``block``, as a new ``[n, k]`` tensor of ``dtype``.

    ``weight [n, k]`` float8_e4m3 and ``scale [ceil(n/bn), ceil(k/bk)]`` float32, both contiguous
    and on one device. The fp32 product is rounded once to ``dtype`` (float32, bfloat16 or
    float16); NaN bytes (0x7f, 0xff) give NaN.
    """
    bn, bk, device = _check_fp8("dequantize_fp8", weight, scale, block)
    out_dtype = DType.parse(dtype)
    if out_dtype not in DEQUANT_DTYPES:
        names = ", ".join(d.name for d in DEQUANT_DTYPES)
        raise TypeError(f"dequantize_fp8: dtype {out_dtype.name} not supported ({names})")
    n, k = weight.shape
    out = Tensor.empty((n, k), out_dtype, device)
    if n == 0 or k == 0:
        return out
    native_call(
        device,
        "fp8_dequant",
        weight.data_ptr,
        scale.data_ptr,
        n,
        k,
        bn,
        bk,
        out.data_ptr,
        out_dtype,
    )
    return out


def quantize_fp8(weight: Tensor, block: tuple[int, int] = (128, 128)) -> tuple[Tensor, Tensor]:
    """Block-scaled fp8 version of ``weight [n, k]`` (float32, bfloat16 or float16, contiguous):
    ``(w8 [n, k] float8_e4m3, scale [ceil(n/bn), ceil(k/bk)] float32)``.

    Scales as transformers' ``Fp8Quantize``: ``1 / (448 / amax)`` per block (1 for an all-zero
    block); ``w8 = e4m3(clamp(weight / scale, -448, 448))`` rounded to nearest even.
    """
    require("weight", weight, dtypes=DEQUANT_DTYPES, ndim=2)
    bn, bk = _block("quantize_fp8", block)
    n, k = weight.shape
    device = weight.device
    w8 = Tensor.empty((n, k), DType.float8_e4m3, device)
    scale = Tensor.empty(scale_shape(n, k, (bn, bk)), DType.float32, device)
    if n == 0 or k == 0:
        return w8, scale
    native_call(
        device,
        "fp8_quant",
        weight.data_ptr,
        weight.dtype,
        n,
        k,
        bn,
        bk,
        w8.data_ptr,
        scale.data_ptr,
    )
    return w8, scale


def linear_fp8(
    x: Tensor,
    weight: Tensor,
    scale: Tensor,
    bias: Tensor | None = None,
    block: tuple[int, int] = (128, 128),
    out: Tensor | None = None,
    out_dtype: DType | str | None = None,
) -> Tensor:
    """``y = x · Wᵀ (+ bias)`` with ``W = dequantize_fp8(weight, scale, block)``, never expanded.

    ``x [..., K]`` float32 or bfloat16 (rows may be strided, last dim contiguous); ``weight
    [N, K]`` float8_e4m3 and ``scale [ceil(N/bn), ceil(K/bk)]`` float32, contiguous (may be
    read-only); ``bias [N]`` float32/bfloat16/float16 or None. Per output, each k-block's partial
    dot product (fp32) is multiplied by its scale and added to an fp32 total; the result is
    rounded once to ``out_dtype`` (else ``out``'s dtype, else ``x``'s). ``out`` may be a
    row-strided view but must not overlap the inputs. Same checks as :func:`ops.linear`.
    """
    require("x", x, dtypes=FLOAT_ACT, contiguous=False)
    bn, bk, _ = _check_fp8("linear_fp8", weight, scale, block)
    n, k = weight.shape
    check_x_and_bias("linear_fp8", x, bias, n, k, weight.shape)
    device = same_device(x=x, weight=weight, scale=scale, bias=bias, out=out)
    out = linear_output(
        "linear_fp8", x, n, out, out_dtype, device, weight=weight, scale=scale, bias=bias
    )
    m = x.numel // k if k else _rows(x.shape[:-1])
    if m == 0 or n == 0:
        return out
    ldx = _row_stride("x", x, m, k)
    ldy = _row_stride("out", out, m, n)
    native_call(
        device,
        "linear_fp8",
        x.data_ptr,
        weight.data_ptr,
        scale.data_ptr,
        bias.data_ptr if bias is not None else None,
        out.data_ptr,
        m,
        n,
        k,
        ldx,
        ldy,
        bn,
        bk,
        x.dtype,
        bias.dtype if bias is not None else 0,
        out.dtype,
    )
    return out
