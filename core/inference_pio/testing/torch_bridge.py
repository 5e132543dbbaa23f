"""Copies between torch tensors and Inference-PIO tensors, for tests (imports torch)."""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor

#: Inference-PIO dtype → torch dtype, and back.
TDT: dict[DType, Any] = {
    DType.float32: torch.float32,
    DType.bfloat16: torch.bfloat16,
    DType.float16: torch.float16,
    DType.float64: torch.float64,
    DType.int32: torch.int32,
    DType.int64: torch.int64,
    DType.int16: torch.int16,
    DType.int8: torch.int8,
    DType.uint8: torch.uint8,
    DType.bool: torch.bool,
    DType.float8_e4m3: torch.float8_e4m3fn,
}
PDT: dict[Any, DType] = {v: k for k, v in TDT.items()}


def to_pio(t: Any) -> Tensor:
    """A contiguous native copy of a CPU torch tensor."""
    t = t.contiguous()
    if t.numel() == 0:
        return Tensor.empty(tuple(t.shape), PDT[t.dtype])
    raw = ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())
    return Tensor.frombuffer(bytearray(raw), PDT[t.dtype], tuple(t.shape))


def to_torch(x: Tensor) -> Any:
    """A torch copy of a (CPU) Inference-PIO tensor."""
    if x.numel == 0:
        return torch.empty(tuple(x.shape), dtype=TDT[x.dtype])
    return torch.frombuffer(bytearray(x.tobytes()), dtype=TDT[x.dtype]).reshape(x.shape).clone()


def to_device(t: Any, device: str = "cpu") -> Tensor:
    """A native copy of a torch tensor from any device, placed on ``device``."""
    x = to_pio(t.detach().cpu())
    return x if device == "cpu" else x.to(device)


def from_device(x: Tensor) -> Any:
    """A torch CPU copy of a native tensor on any device, strided or not."""
    return to_torch(x.to("cpu").contiguous())


def rel(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
