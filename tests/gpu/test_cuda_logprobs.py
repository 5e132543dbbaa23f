"""Logprobs on CUDA against the CPU: the computation on device rows, and every generation path
of a CUDA model (batch-1 fused graph step, captured / op-by-op steps of an f32 model, batch graph
rows, a lone sequence finishing on the batch-1 graph) on tiny random Qwen3 checkpoints. As in
test_cuda_model.py the bf16 fixture's logits are scaled x8 so that greedy tokens agree between
devices despite rounding."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio import cuda, ops  # noqa: E402
from inference_pio.batching import BatchManager  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.logprobs import TokenLogprob, token_logprobs  # noqa: E402
from inference_pio.sampling import SamplingParams  # noqa: E402
from inference_pio.tensor import Tensor  # noqa: E402
from inference_pio.testing.conformance import save_reference  # noqa: E402

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load

DEVICE = "cuda:0"
TINY = dict(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=1e6,
    tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-6,
)  # fmt: skip
PROMPT = [17, 300, 42, 99, 5, 250]


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
def test_device_rows_equal_host_rows(dtype: DType) -> None:
    """log_softmax + top-k on the device: the host's ids (ties: lower id first) and values."""
    g = torch.Generator().manual_seed(int(dtype))
    for vocab in (50, 151936):
        row = (torch.randn(vocab, generator=g) * 5).tolist()
        row[1::7] = [row[0]] * len(row[1::7])  # ties
        row[3::11] = [-math.inf] * len(row[3::11])
        host = Tensor.from_list(row, DType.float32).to(dtype)
        dev = host.to(DEVICE)
        for token in (0, 3, vocab - 1):
            a = token_logprobs(host, token, 20)
            b = token_logprobs(dev, token, 20)
            assert a.token_id == b.token_id
            assert b.logprob == pytest.approx(a.logprob, abs=1e-5) or a.logprob == b.logprob
            assert [i for i, _ in b.top] == [i for i, _ in a.top]
            assert [v for _, v in b.top] == pytest.approx([v for _, v in a.top], abs=1e-5)


def host_rows(cpu_model: Any, prompt: list[int], tokens: list[int]) -> list[list[float]]:
    """The CPU model's log-softmax rows after ``prompt + tokens[:j]`` (teacher-forced)."""
    cache = cpu_model.model.new_cache(len(prompt) + len(tokens) + 1)
    (row,) = cpu_model.model.forward([(prompt, cache)])
    out = []
    for t in tokens:
        out.append(ops.log_softmax(row, out_dtype=DType.float32).tolist())
        (row,) = cpu_model.model.forward([([t], cache)])
    return out


def compare(entries: list[TokenLogprob], rows: list[list[float]], tol: float) -> None:
    """Each entry's chosen and top-k values against the CPU rows: relative error of all values
    below ``tol``; the top k are the row's k best (by value), the first one the greedy token."""
    ours, ref = [], []
    for e, row in zip(entries, rows, strict=True):
        ours.append(e.logprob)
        ref.append(row[e.token_id])
        for i, v in e.top:
            ours.append(v)
            ref.append(row[i])
        if e.top:  # the k ids are the row's k best, up to rounding
            kth = sorted(row, reverse=True)[len(e.top) - 1]
            assert min(row[i] for i, _ in e.top) >= kth - tol * max(1.0, abs(kth))
    a = torch.tensor(ours, dtype=torch.float64)
    b = torch.tensor(ref, dtype=torch.float64)
    assert float((a - b).norm() / b.norm()) < tol


@pytest.fixture(scope="module", params=["bfloat16", "float32"])
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(CUDA model, CPU model, relative tolerance): bf16 takes the fused batch-1 graph step, f32
    the captured or op-by-op step."""
    d: Path = tmp_path_factory.mktemp(f"logprobs-{request.param}")
    save_reference(d, "Qwen3ForCausalLM", TINY, request.param, seed=11, logit_scale=8.0)
    tol = 2e-2 if request.param == "bfloat16" else 1e-3
    return load(d, device=DEVICE), load(d), tol


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0}, {"temperature": 0.8, "top_k": 20, "seed": 4}]
)
def test_batch1_generation(models: Any, sampling: dict[str, Any]) -> None:
    """A single generation (CausalLM._stream_fn: the batch-1 graph loop) with logprobs: the same
    tokens as without (the fast path), one entry per token, equal to the CPU's rows."""
    gpu, cpu, tol = models
    fast = gpu.generate(PROMPT, max_new_tokens=40, ignore_eos=True, **sampling)
    got = gpu.generate(PROMPT, max_new_tokens=40, ignore_eos=True, logprobs=5, **sampling)
    assert got.token_ids == fast.token_ids
    assert got.logprobs is not None
    assert [e.token_id for e in got.logprobs] == got.token_ids
    compare(got.logprobs, host_rows(cpu, PROMPT, got.token_ids), tol)
    if sampling["temperature"] == 0:
        assert got.token_ids == cpu.generate(PROMPT, max_new_tokens=40, ignore_eos=True).token_ids
        assert all(e.top[0][0] == e.token_id for e in got.logprobs)
    runner = vars(gpu.model).get("_cuda_graph_decoder")
    if DEVICE.startswith("cuda") and gpu.model.act_dtype == DType.bfloat16:
        assert runner is not None
        assert runner.fused  # the fused step's logits row served the logprobs


def test_batch_graph_rows_and_the_lone_sequence(models: Any) -> None:
    """The BatchManager on CUDA: rows of the batch graphs' last_logits for requests with
    logprobs (the greedy device argmax for the others), then the last sequence alone on the
    batch-1 graph; every request gets its solo tokens and the CPU's logprobs."""
    gpu, cpu, tol = models
    greedy = {"temperature": 0, "ignore_eos": True}
    requests = [
        ([3, 4, 5, 6], SamplingParams(max_new_tokens=48, logprobs=3, **greedy)),
        ([7, 8], SamplingParams(max_new_tokens=8, **greedy)),
        ([9, 10, 11], SamplingParams(max_new_tokens=8, logprobs=0, **greedy)),
    ]
    manager = BatchManager(gpu.model, gpu.tokenizer, gpu.eos_ids, max_batch_size=4)
    for ids, params in requests:
        manager.submit(ids, params)
    results = manager.run()
    assert max(manager.decode_batch_sizes) == 3
    if DEVICE.startswith("cuda"):
        assert manager.finished_alone == 1  # the 48-token request ended on the batch-1 graph
    for (ids, params), got in zip(requests, results, strict=True):
        solo = gpu.generate(
            ids, max_new_tokens=params.max_new_tokens, temperature=0, ignore_eos=True
        )
        assert got.token_ids == solo.token_ids
        if params.logprobs is None:
            assert got.logprobs is None
            continue
        assert got.logprobs is not None
        assert len(got.logprobs) == len(got.token_ids)
        compare(got.logprobs, host_rows(cpu, ids, got.token_ids), tol)
