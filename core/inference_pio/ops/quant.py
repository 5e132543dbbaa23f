"""FP8 block-scaled weights (C: native/src/cpu/fp8.c, native/src/cuda/fp8.cu).

The "-FP8" checkpoints of Qwen and DeepSeek store a weight ``W [n, k]`` as float8 e4m3fn bytes plus
a float32 ``weight_scale_inv [ceil(n/bn), ceil(k/bk)]`` (usually ``bn = bk = 128``):
``W[i, j] = e4m3(w[i, j]) * scale[i // bn, j // bk]``.
"""

from __future__ import annotations

from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import native_call, require, same_device
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
    if bn < 1 or bk < 1:
        raise ValueError(f"{op}: block sizes must be >= 1, got {block}")
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
