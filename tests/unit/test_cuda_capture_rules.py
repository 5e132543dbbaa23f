"""The host-side rules of captured CUDA decode steps (nn.cuda_capture), checked without a GPU:
which blocks opt in, how a block says so, the scratch a capture swaps in, and the switch."""

from __future__ import annotations

from typing import Any

import pytest

from inference_pio.backend import backend
from inference_pio.dtypes import DType
from inference_pio.nn import cuda_capture
from inference_pio.nn.attention import Attention, Segment
from inference_pio.nn.deltanet import GatedDeltaNet
from inference_pio.nn.mla import MLAttention
from inference_pio.nn.mlp import SwiGLU
from inference_pio.nn.moe import RoutedExperts


class _Flag:
    def __init__(self, flag: Any) -> None:
        self.cuda_capturable = flag


class _Method:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.seen: list[Any] = []

    def cuda_capturable(self, be: Any, act: DType) -> bool:
        self.seen.append((be, act))
        return self.answer


def test_a_block_opts_in_with_true_or_a_method() -> None:
    be = backend("cpu")
    assert cuda_capture.block_capturable(_Flag(True), be, DType.bfloat16)
    for flag in (False, 1, "yes", None):
        assert not cuda_capture.block_capturable(_Flag(flag), be, DType.bfloat16)
    assert not cuda_capture.block_capturable(object(), be, DType.bfloat16)
    yes, no = _Method(True), _Method(False)
    assert cuda_capture.block_capturable(yes, be, DType.float32)
    assert not cuda_capture.block_capturable(no, be, DType.float32)
    assert yes.seen == [(be, DType.float32)]


def test_the_core_blocks_declare_it() -> None:
    for cls in (Attention, MLAttention, GatedDeltaNet, SwiGLU):
        assert cls.cuda_capturable is True
    # the experts answer per backend and dtype: only their device path reads nothing back
    assert callable(RoutedExperts.cuda_capturable)


def test_only_decoder_models_on_cuda_qualify() -> None:
    assert cuda_capture.unsupported_reason(object()) == "not a DecoderModel"


def test_segments_read_the_host_length_unless_given_a_device_one() -> None:
    seg = Segment(0, 1, 7)
    assert seg.past_dev == 0
    assert Segment(0, 1, 1, 1234).past_dev == 1234


def test_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cuda_capture.enabled()
    for off in ("0", "off", "false", "no"):
        monkeypatch.setenv("INFERENCE_PIO_CUDA_CAPTURE", off)
        assert not cuda_capture.enabled()
    monkeypatch.setenv("INFERENCE_PIO_CUDA_CAPTURE", "1")
    assert cuda_capture.enabled()


def test_private_scratch_swaps_and_restores_the_threads_buffers() -> None:
    be = backend("cpu")
    before = be.scratch("capture.test", (2, 3), DType.float32)
    own: dict[Any, Any] = {}
    with be.private_scratch(own):
        inside = be.scratch("capture.test", (2, 3), DType.float32)
        big = be.scratch("capture.big", (64, 3), DType.float32)  # past SCRATCH_MAX_ROWS: kept too
        assert inside is not before
        assert be.scratch("capture.test", (2, 3), DType.float32) is inside
        assert be.scratch("capture.big", (64, 3), DType.float32) is big
    assert set(own.values()) == {inside, big}
    assert be.scratch("capture.test", (2, 3), DType.float32) is before
    assert be.scratch("capture.big", (64, 3), DType.float32) is not big  # no scope outside


def test_a_failed_capture_after_a_failed_fused_fp8_step_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An FP8 model whose fused step could not be created falls back to the captured step; when
    that fails too, later requests decode op by op at once (as for any model), not after another
    capture attempt each (a new cache, a warm-up step and a capture)."""
    import warnings

    from inference_pio.errors import NativeError
    from inference_pio.nn import cuda_graph

    calls = {"fused": 0, "capture": 0}

    def fused_fails(model: Any, cap: int) -> None:
        calls["fused"] += 1
        raise NativeError(3, "toc_decoder_create: out of memory")

    def capture_fails(model: Any, cap: int) -> None:
        calls["capture"] += 1
        raise NativeError(1, "capture failed")

    monkeypatch.setattr(
        cuda_graph, "unsupported_reason", lambda m, fp8_ok=False: None if fp8_ok else "FP8"
    )
    monkeypatch.setattr(cuda_graph, "has_fp8", lambda m: True)
    monkeypatch.setattr(cuda_graph, "fused_unsupported_reason", lambda m: None)
    monkeypatch.setattr(cuda_graph, "_fused_enabled", lambda: True)
    monkeypatch.setattr(cuda_graph, "CudaGraphDecoder", fused_fails)
    monkeypatch.setattr(cuda_capture, "unsupported_reason", lambda m: None)
    monkeypatch.setattr(cuda_capture, "CapturedStepDecoder", capture_fails)

    class Model:
        max_context = 4096

    m = Model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            assert cuda_graph._runner(m, 100) is None  # type: ignore[arg-type]
    assert calls == {"fused": 1, "capture": 1}
