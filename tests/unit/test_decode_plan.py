"""Batch-1 CPU decode plans (nn.decode_plan): replayed steps equal the normal path bitwise."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio.checkpoint import Checkpoint  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.nn import dense  # noqa: E402
from inference_pio.nn.decode_plan import Call, DecodePlan  # noqa: E402
from inference_pio.nn.decoder import DecoderModel  # noqa: E402
from inference_pio.tensor import Tensor  # noqa: E402
from inference_pio.testing.conformance import prompt, save_reference  # noqa: E402
from inference_pio.testing.tiny import tiny_qwen3_config  # noqa: E402

CONFIG = tiny_qwen3_config()


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DecoderModel:
    path: Path = tmp_path_factory.mktemp(f"plan-{request.param}")
    save_reference(path, "Qwen3ForCausalLM", CONFIG, request.param, seed=5)
    ck = Checkpoint.open(path)
    return dense.build(ck.weights, dense.DenseConfig.from_hf(ck.config))


def decode(model: DecoderModel, ids: list[int], steps: int, plan: bool) -> list[bytes]:
    import os

    old = os.environ.get("INFERENCE_PIO_DECODE_PLAN")
    os.environ["INFERENCE_PIO_DECODE_PLAN"] = "1" if plan else "0"
    try:
        cache = model.new_cache(len(ids) + steps)
        (logits,) = model.forward([(ids, cache)])
        out = [logits.tobytes()]
        for i in range(steps):
            tok = (ids[-1] * 7 + i * 13) % CONFIG["vocab_size"]
            (logits,) = model.forward([([tok], cache)])
            assert logits.shape == (CONFIG["vocab_size"],)
            out.append(logits.tobytes())
        assert cache.length == len(ids) + steps
        if plan:
            assert cache.plan is not None
            assert cache.plan.ready
        return out
    finally:
        if old is None:
            del os.environ["INFERENCE_PIO_DECODE_PLAN"]
        else:
            os.environ["INFERENCE_PIO_DECODE_PLAN"] = old


@pytest.mark.parametrize("prompt_len", [1, 9, 70])
def test_replay_is_bitwise_the_normal_path(model: DecoderModel, prompt_len: int) -> None:
    ids = prompt(prompt_len, 11)
    assert decode(model, ids, 20, plan=True) == decode(model, ids, 20, plan=False)


def test_returned_logits_survive_later_steps(model: DecoderModel) -> None:
    cache = model.new_cache(32)
    model.forward([(prompt(5, 2), cache)])
    kept = [model.forward([([i + 1], cache)])[0] for i in range(8)]
    snapshot = [t.tobytes() for t in kept]
    model.forward([([3], cache)])
    assert [t.tobytes() for t in kept] == snapshot
    assert len(set(snapshot)) == len(snapshot)


def test_other_thread_takes_the_normal_path(model: DecoderModel) -> None:
    ids = prompt(6, 4)
    want = decode(model, ids, 8, plan=False)
    cache = model.new_cache(len(ids) + 8)
    got = [model.forward([(ids, cache)])[0].tobytes()]
    toks = [(ids[-1] * 7 + i * 13) % CONFIG["vocab_size"] for i in range(8)]
    for tok in toks[:5]:  # records, then replays, on this thread
        got.append(model.forward([([tok], cache)])[0].tobytes())
    result: list[bytes] = []
    worker = threading.Thread(
        target=lambda: result.extend(model.forward([([t], cache)])[0].tobytes() for t in toks[5:])
    )
    worker.start()
    worker.join()
    assert got + result == want


def test_replay_validates_token_and_capacity(model: DecoderModel) -> None:
    cache = model.new_cache(8)
    model.forward([(prompt(3, 1), cache)])
    for i in range(4):
        model.forward([([i + 1], cache)])
    assert cache.plan is not None
    assert cache.plan.ready
    with pytest.raises(ValueError, match="vocabulary"):
        model.forward([([CONFIG["vocab_size"]], cache)])
    model.forward([([5], cache)])
    with pytest.raises(ValueError, match="capacity"):
        model.forward([([6], cache)])
    assert cache.length == 8


def fake_calls(length: int, step: int = 1, extra: float = 0.5) -> list[Call]:
    return [("a", len, (1, 2, extra)), ("b", len, (10, length * step, length * step + 1))]


def new_plan() -> DecodePlan:
    return DecodePlan(
        Tensor.empty((1,), DType.int32),
        Tensor.empty((1,), DType.int32),
        Tensor.empty((1, 4), DType.float32),
    )


def test_plan_refuses_arguments_not_linear_in_the_length() -> None:
    plan = new_plan()
    plan.add_recording(4, fake_calls(4, step=2))
    plan.add_recording(5, fake_calls(5, step=2))
    assert plan.refused
    assert not plan.ready

    plan = new_plan()
    plan.add_recording(4, fake_calls(4))
    plan.add_recording(5, fake_calls(5))
    assert plan.ready
    plan.add_recording(6, fake_calls(6, extra=0.25))  # the verification step disagrees
    assert plan.refused
    assert not plan.ready

    plan = new_plan()
    for n in (4, 5, 6):
        plan.add_recording(n, fake_calls(n))
    assert plan.ready


def test_blocks_that_do_not_declare_replayable_are_never_replayed(tmp_path: Path) -> None:
    """A plugin block whose calls may depend on the data (an MoE router picking experts) could
    repeat itself for three steps by chance; without ``replayable = True`` no plan is made."""
    save_reference(tmp_path, "Qwen3ForCausalLM", CONFIG, "float32", seed=9)
    ck = Checkpoint.open(tmp_path)
    cfg = dense.DenseConfig.from_hf(ck.config)
    want = decode(dense.build(ck.weights, cfg), prompt(4, 3), 8, plan=True)

    class OpaqueMlp:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, be: Any, x: Any, out: Any) -> Any:
            return self.inner(be, x, out)

    m = dense.build(ck.weights, cfg)
    for layer in m.layers:
        layer.mlp = OpaqueMlp(layer.mlp)
    model = DecoderModel(m.embed, m.layers, m.norm, m.lm_head, m.rotary, m.act_dtype, m.max_context)
    assert not model.replayable
    ids = prompt(4, 3)
    cache = model.new_cache(len(ids) + 8)
    got = [model.forward([(ids, cache)])[0].tobytes()]
    for i in range(8):
        tok = (ids[-1] * 7 + i * 13) % CONFIG["vocab_size"]
        got.append(model.forward([([tok], cache)])[0].tobytes())
    assert cache.plan is None
    assert got == want
