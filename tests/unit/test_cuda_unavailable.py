"""Without a usable GPU, CUDA reports why and device tensors fail with that reason."""

from __future__ import annotations

import pytest

from inference_pio import cuda
from inference_pio.tensor import Tensor

pytestmark = pytest.mark.skipif(cuda.is_available(), reason="a CUDA device is available here")


def test_reason_is_clear() -> None:
    reason = cuda.unavailable_reason()
    assert reason
    assert any(
        key in reason
        for key in (
            "library not built",
            "no NVIDIA driver",
            "no CUDA device",
            "cannot load",
            "driver too old",
        )
    )
    assert cuda.device_count() == 0


def test_cuda_tensor_raises_with_reason() -> None:
    with pytest.raises(cuda.CudaUnavailableError, match="CUDA is not available"):
        Tensor.empty((4,), "float32", "cuda:0")
    with pytest.raises(cuda.CudaUnavailableError):
        Tensor.zeros((2,), "float32").to("cuda")


def test_cpu_library_still_loads() -> None:
    t = Tensor.from_list([1.0, 2.0])
    assert t.tolist() == [1.0, 2.0]


def test_graph_decoder_rejects_unknown_or_essential_skips() -> None:
    """Profiling may leave out any kernel class but the token feedback (checked before any GPU
    work, so this runs everywhere)."""
    from inference_pio.nn.cuda_graph import CudaGraphDecoder

    for bad in (["step_end"], ["no_such_kernel"]):
        with pytest.raises(ValueError, match="cannot skip"):
            CudaGraphDecoder(None, 8, skip=bad)  # type: ignore[arg-type]
