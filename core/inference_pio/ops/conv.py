"""Causal depthwise conv1d with carried state and vision patchify (C: native/src/cpu/conv.c)."""

from __future__ import annotations

import ctypes

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import (
    native_call,
    out_or_new,
    require,
    require_disjoint,
    same_device,
)
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    state: Tensor | None = None,
    *,
    silu: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Depthwise causal conv over time: ``x [T, C]``, ``weight [C, K]`` (or ``[C, 1, K]``).

    ``state [K-1, C]`` holds the previous K-1 inputs (oldest first; None = zeros) and is updated
    in place to the last K-1 inputs. ``silu`` applies SiLU after rounding to x's dtype (HF order).
    Works for decode (T = 1) and prefill (T > 1); returns ``[T, C]`` in x's dtype."""
    require("x", x, dtypes=FLOAT_ACT, ndim=2)
    require("weight", weight, dtypes=(DType.float32, DType.bfloat16, DType.float16), ndim=(2, 3))
    t, c = x.shape
    if weight.ndim == 3:
        if weight.shape[1] != 1:
            raise ValueError(f"depthwise weight must be [C, 1, K], got {weight.shape}")
        weight = weight.reshape(weight.shape[0], weight.shape[2])
    if weight.shape[0] != c:
        raise ValueError(f"weight {weight.shape} does not match {c} channels")
    k = weight.shape[1]
    if not 1 <= k <= 64:
        raise ValueError(f"kernel size {k} outside 1..64")
    if state is not None:
        require("state", state, dtypes=FLOAT_ACT, ndim=2, writable=True)
        if state.shape != (k - 1, c):
            raise ValueError(f"state has shape {state.shape}, expected {(k - 1, c)}")
    device = same_device(x=x, weight=weight, state=state, out=out)
    result = out_or_new(out, (t, c), x.dtype, device)
    if out is not None:
        require_disjoint("causal_conv1d", result, x=x, weight=weight, state=state)
    native_call(
        device,
        "causal_conv1d",
        x.data_ptr,
        weight.data_ptr,
        ctypes.c_void_p(state.data_ptr if state is not None else None),
        result.data_ptr,
        t,
        c,
        k,
        int(silu),
        x.dtype,
        weight.dtype,
        state.dtype if state is not None else DType.float32,
    )
    return result


def patchify(
    image: Tensor,
    *,
    patch: int = 16,
    temporal: int = 2,
    merge: int = 2,
    out_dtype: DType | None = None,
) -> Tensor:
    """Qwen-VL patchify: ``image [C, H, W]`` -> ``[(H/patch)*(W/patch), C*temporal*patch*patch]``
    in 2x2 merge-block order, each vector ``[channel][t][py][px]`` with the frame repeated in
    every temporal slot (equivalent to HF's reshape/permute of ``pixel_values``)."""
    require("image", image, dtypes=FLOAT_ACT, ndim=3, nonempty=True)
    c, h, w = image.shape
    if min(patch, temporal, merge) < 1:
        raise ValueError("patch, temporal and merge must be >= 1")
    if h % (patch * merge) or w % (patch * merge):
        raise ValueError(f"image {h}x{w} is not a multiple of patch*merge = {patch * merge}")
    odt = image.dtype if out_dtype is None else DType.parse(out_dtype)
    if odt not in FLOAT_ACT:
        raise TypeError(f"out_dtype {odt.name} unsupported (float32 or bfloat16)")
    out = Tensor.empty(
        ((h // patch) * (w // patch), c * temporal * patch * patch), odt, image.device
    )
    native_call(
        image.device,
        "patchify",
        image.data_ptr,
        out.data_ptr,
        c,
        h,
        w,
        patch,
        temporal,
        merge,
        image.dtype,
        odt,
    )
    return out
