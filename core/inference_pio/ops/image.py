"""Image resize (Pillow-compatible) and normalisation (C: native/src/cpu/image.c)."""

from __future__ import annotations

from collections.abc import Sequence

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import native_call, require
from inference_pio.tensor import Tensor

#: Resampling filters, numbered as PIL.Image.Resampling.
LANCZOS = 1
BILINEAR = 2
BICUBIC = 3


def image_resize(image: Tensor, size: tuple[int, int], resample: int = BICUBIC) -> Tensor:
    """Resizes to ``size = (out_h, out_w)`` like ``PIL.Image.resize((out_w, out_h), resample)``.

    uint8 images are interleaved ``[H, W, C]`` (Pillow's fixed-point rounding, bit-exact target);
    float32 images are planar ``[C, H, W]`` (same weights in fp64, no rounding or clipping)."""
    require("image", image, dtypes=(DType.uint8, DType.float32), ndim=3, nonempty=True)
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be positive, got {size}")
    if resample not in (LANCZOS, BILINEAR, BICUBIC):
        raise ValueError(
            f"unsupported resample filter {resample} (1 lanczos, 2 bilinear, 3 bicubic)"
        )
    if image.dtype == DType.uint8:
        h, w, c = image.shape
        shape = (out_h, out_w, c)
    else:
        c, h, w = image.shape
        shape = (c, out_h, out_w)
    out = Tensor.empty(shape, image.dtype, image.device)
    native_call(
        image.device,
        "image_resize",
        image.data_ptr,
        out.data_ptr,
        h,
        w,
        c,
        out_h,
        out_w,
        resample,
        image.dtype,
    )
    return out


def image_normalize(
    image: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    rescale: float = 1 / 255,
    out_dtype: DType = DType.float32,
) -> Tensor:
    """uint8 ``[H, W, C]`` -> planar ``[C, H, W]``: ``(pixel*rescale - mean)/std`` per channel,
    computed as HF does, ``(pixel - mean/rescale) / (std/rescale)`` in fp32."""
    import ctypes

    require("image", image, dtypes=(DType.uint8,), ndim=3, nonempty=True)
    h, w, c = image.shape
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values, got {len(mean)} and {len(std)}")
    if any(s == 0 for s in std) or rescale == 0:
        raise ValueError("std and rescale must be non-zero")
    odt = DType.parse(out_dtype)
    if odt not in (DType.float32, DType.bfloat16):
        raise TypeError(f"out_dtype {odt.name} unsupported (float32 or bfloat16)")
    m = (ctypes.c_float * c)(*mean)
    s = (ctypes.c_float * c)(*std)
    out = Tensor.empty((c, h, w), odt, image.device)
    native_call(
        image.device,
        "image_normalize",
        image.data_ptr,
        out.data_ptr,
        h,
        w,
        c,
        ctypes.addressof(m),
        ctypes.addressof(s),
        float(rescale),
        odt,
    )
    return out
