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
