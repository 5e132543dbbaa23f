"""Token masks of constrained decoding (C: native/src/cpu/mask.c, src/cuda/mask.cu):
``mask_logits`` sets the logits of disallowed tokens to -inf."""

from __future__ import annotations

import ctypes
from array import array
from typing import Any

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import (
    native_call,
    out_or_new,
    require,
    require_inplace_or_disjoint,
    same_device,
)
from inference_pio.tensor import Tensor

#: A host bitmask: uint32 words (``ctypes.c_uint32 * n``, or ``array("I")``).
HostMask = Any


def _mask_words(mask: HostMask) -> tuple[int, int]:
    """The address and length (in uint32 words) of a host bitmask."""
    if isinstance(mask, ctypes.Array) and mask._type_ is ctypes.c_uint32:
        return ctypes.addressof(mask), len(mask)
    if isinstance(mask, array) and mask.typecode in "IL" and mask.itemsize == 4:
        address, n = mask.buffer_info()
        return address, n
    raise TypeError(
        "mask must be a host buffer of uint32 words (ctypes.c_uint32 * n or array('I')), "
        f"got {type(mask).__name__}"
    )


def mask_logits(x: Tensor, mask: HostMask, out: Tensor | None = None) -> Tensor:
    """``x`` ([vocab] or [rows, vocab], f32/bf16, contiguous, CPU or CUDA) with the logits of
    disallowed tokens set to -inf. ``mask``: ``rows * words`` uint32 words in host memory,
    llguidance's layout (bit ``i % 32`` of word ``i // 32`` of a row set = token ``i``
    allowed); tokens at or past ``32 * words`` are disallowed. ``out`` may be ``x`` (in place);
    otherwise a new tensor."""
    require("x", x, dtypes=(DType.float32, DType.bfloat16), ndim=(1, 2), nonempty=True)
    address, n = _mask_words(mask)
    rows = x.shape[0] if x.ndim == 2 else 1
    vocab = x.shape[-1]
    if rows == 0 or n % rows or n == 0:
        raise ValueError(
            f"mask_logits: the mask has {n} words, not a positive multiple of the {rows} rows"
        )
    device = same_device(x=x, out=out)
    result = out_or_new(out, x.shape, x.dtype, device)
    require_inplace_or_disjoint("mask_logits", out, x=x)
    native_call(
        device, "mask_logits", x.data_ptr, result.data_ptr, address, rows, vocab, n // rows, x.dtype
    )
    return result


__all__ = ["HostMask", "mask_logits"]
