"""Backend.scratch and its per-call scope: which buffers are kept, for how long, per thread; a
prefill's layers share one set of activation buffers and give the same logits as without."""

from __future__ import annotations

import contextlib
import math
import random
import threading
from collections.abc import Iterator

import pytest

from inference_pio.backend import Backend
from inference_pio.dtypes import DType
from inference_pio.memory import memory_stats
from inference_pio.nn import dense
from inference_pio.nn.decoder import DecoderModel
from inference_pio.tensor import Tensor
from inference_pio.testing.tiny import tiny_qwen3_config

BIG = Backend.SCRATCH_MAX_ROWS + 1


def _twice_same(be: Backend, shape: tuple[int, ...]) -> bool:
    """Whether two scratch requests of one key get the same buffer."""
    return be.scratch("b", shape, DType.float32) is be.scratch("b", shape, DType.float32)


def test_small_buffers_are_kept_without_a_scope() -> None:
    be = Backend("cpu")
    a = be.scratch("s", (4, 8), DType.float32)
    assert be.scratch("s", (4, 8), DType.float32) is a
    assert be.scratch("s", (4, 9), DType.float32) is not a  # the key holds the shape
    assert be.scratch("s", (4, 8), DType.bfloat16) is not a  # and the dtype


def test_large_buffers_are_fresh_outside_a_scope() -> None:
    be = Backend("cpu")
    a = be.scratch("b", (BIG, 8), DType.float32)
    assert be.scratch("b", (BIG, 8), DType.float32) is not a


def test_large_buffers_are_kept_inside_a_scope_then_released() -> None:
    be = Backend("cpu")
    before = memory_stats()["in_use"]
    with be.scratch_scope():
        a = be.scratch("b", (BIG, 1024), DType.float32)
        assert be.scratch("b", (BIG, 1024), DType.float32) is a
        assert be.scratch("c", (BIG, 1024), DType.float32) is not a
        with be.scratch_scope():  # nested: the same scope
            assert be.scratch("b", (BIG, 1024), DType.float32) is a
        assert be.scratch("b", (BIG, 1024), DType.float32) is a
        held = memory_stats()["in_use"]
        assert held >= before + 2 * BIG * 1024 * 4
        del a
    assert memory_stats()["in_use"] < held  # the scope's buffers went back to the pool
    assert not _twice_same(be, (BIG, 1024))


def test_scope_ends_on_error() -> None:
    be = Backend("cpu")

    def fail() -> None:
        with be.scratch_scope():
            assert _twice_same(be, (BIG, 8))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert not _twice_same(be, (BIG, 8))


def test_scope_is_per_thread() -> None:
    be = Backend("cpu")
    seen: list[bool] = []

    def other() -> None:  # no scope in this thread: fresh buffers
        seen.append(_twice_same(be, (BIG, 8)))

    with be.scratch_scope():
        mine = be.scratch("b", (BIG, 8), DType.float32)
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert be.scratch("b", (BIG, 8), DType.float32) is mine
    assert seen == [False]


def _model() -> DecoderModel:
    """Three layers of the tiny Qwen3 config with seeded random fp32 weights."""
    cfg = dense.DenseConfig.from_hf(tiny_qwen3_config(num_hidden_layers=3))
    rng = random.Random(5)
    weights = {}
    for name, (shape, kind) in sorted(dense.weight_plan(cfg).items()):
        base, std = (1.0, 0.1) if kind == "norm" else (0.0, 0.05)
        vals = [base + std * rng.gauss(0.0, 1.0) for _ in range(math.prod(shape))]
        weights[name] = Tensor.from_list(vals, DType.float32).reshape(shape)
    return dense.build(weights, cfg)


@contextlib.contextmanager
def _fresh_buffers(self: Backend) -> Iterator[None]:
    """A scratch_scope that keeps nothing: every large buffer is allocated anew (the behaviour
    before scopes existed)."""
    yield


@pytest.mark.parametrize("n", [BIG, 40])
def test_prefill_logits_match_fresh_buffers(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same prefill (then two decode steps) with the layers sharing scoped buffers and with
    every large buffer fresh gives the same logits bit for bit."""
    tokens = [(7 * i + 3) % 500 for i in range(n)]

    def run() -> list[list[float]]:
        model = _model()
        cache = model.new_cache(n + 2)
        out = [model.forward([(tokens, cache)])[0].tolist()]
        out += [model.forward([([t], cache)])[0].tolist() for t in (11, 12)]
        return out

    shared = run()
    monkeypatch.setattr(Backend, "scratch_scope", _fresh_buffers)
    assert run() == shared
