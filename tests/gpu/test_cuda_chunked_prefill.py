"""Chunked prefill in the BatchManager on a CUDA model: the decode rows replay the batch graphs
(bf16 Qwen3) while prompts are prefilled chunk by chunk into their graph slots through the op
path; fp32, GLM-4.7-Flash (MLA) and Qwen3-Coder-Next (Gated DeltaNet) run their steps op by
op. Every request decodes the greedy tokens of a manager prefilling whole prompts (bf16: the
fixture scales the LM head up, as the prefix-cache tests do, so that near-ties do not flip)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio import cuda
from inference_pio.batching import BatchManager
from inference_pio.generation import GenerationResult
from inference_pio.prefix_pool import PrefixPool

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file
from tiny_qwen3 import load_tiny_qwen3

from inference_pio.testing.conformance import save_reference

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_tiny_qwen3(tmp_path_factory, request.param, "chunked-cuda")


def _manager(lm: Any, budget: int, pool: PrefixPool | None = None) -> BatchManager:
    return BatchManager(
        lm.model, lm.tokenizer, lm.eos_ids, 4, prefix_pool=pool, max_num_batched_tokens=budget
    )


def _run(manager: BatchManager, lm: Any, prompts: list[list[int]], n: int) -> list[Any]:
    for p in prompts:
        manager.submit(p, lm.sampling_params(max_new_tokens=n, temperature=0, ignore_eos=True))
    return manager.run()


def _prompt(n: int, seed: int) -> list[int]:
    return [(37 * i + 11 * seed + 5) % 500 for i in range(n)]


@pytest.mark.parametrize("budget", [7, 64])
def test_greedy_tokens_equal_a_whole_prefill(lm: Any, budget: int) -> None:
    lengths = [budget - 1, budget, budget + 1, 2 * budget + 1, 300, 3]
    prompts = [_prompt(n, n) for n in lengths]
    want = [r.token_ids for r in _run(_manager(lm, 0), lm, prompts, 20)]
    manager = _manager(lm, budget)
    got = _run(manager, lm, prompts, 20)
    assert [r.token_ids for r in got] == want
    assert max(manager.prefill_chunk_sizes) <= budget
    assert sum(manager.prefill_chunk_sizes) == sum(lengths)
    if lm.model.act_dtype.name == "bfloat16":
        assert getattr(lm.model, "_cuda_batch_graph", None) is not None


def test_a_stream_decodes_between_a_long_prompts_chunks(lm: Any) -> None:
    """serve(): a request decoding alone on the batch-1 path goes back into the batch when a
    300-token prompt arrives after its 5th token, and decodes a step between each of the
    prompt's 31-token chunks; its tokens are those it decodes without the other request."""
    long_prompt = _prompt(300, 5)
    alone = _run(_manager(lm, 0), lm, [_prompt(6, 1)], 400)[0].token_ids

    class OneCharPerToken:  # every token is a streamed piece
        def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
            return "x" * len(ids)

    manager = BatchManager(lm.model, OneCharPerToken(), lm.eos_ids, 4, max_num_batched_tokens=32)
    stop = threading.Event()
    done = threading.Event()
    results: dict[int, GenerationResult] = {}
    marks: dict[str, int] = {}

    pieces = 0

    def on_piece(i: int, text: str) -> None:
        nonlocal pieces
        pieces += 1
        if pieces == 5 and "submitted" not in marks:  # decoding alone by now
            marks["submitted"] = len(manager.decode_batch_sizes)
            manager.submit(
                long_prompt,
                lm.sampling_params(max_new_tokens=1, temperature=0, ignore_eos=True),
                on_finish=on_finish,
            )

    def on_finish(i: int, r: GenerationResult) -> None:
        results[i] = r
        if i == 1:
            marks["prefilled"] = len(manager.decode_batch_sizes)
        if len(results) == 2:
            done.set()

    engine = threading.Thread(target=manager.serve, args=(stop,), daemon=True)
    engine.start()
    try:
        manager.submit(
            _prompt(6, 1),
            lm.sampling_params(max_new_tokens=400, temperature=0, ignore_eos=True),
            on_piece=on_piece,
            on_finish=on_finish,
        )
        assert done.wait(120)
    finally:
        stop.set()
        engine.join(30)
    assert results[0].token_ids == alone
    # ceil(300 / 31) chunk steps, each after a decode step of the stream
    assert marks["prefilled"] - marks["submitted"] >= 9
    assert max(manager.prefill_chunk_sizes) <= 32
    if lm.model.act_dtype.name == "bfloat16":
        assert manager.rejoined >= 1  # it left the batch-1 path for the long prompt


def test_prefix_caching_with_chunks(lm: Any) -> None:
    system = _prompt(80, 7)
    first = [*system, 1, 2]
    manager = _manager(lm, 16, PrefixPool())
    (a,) = _run(manager, lm, [first], 6)
    wave = [[*first, *a.token_ids, 9], [*system, 3, 4], [*system[:40], 5]]
    got = _run(manager, lm, wave, 6)
    assert [r.cached_tokens for r in got] == [len(first) + 5, 80, 40]
    fresh = [_run(_manager(lm, 0), lm, [p], 6)[0].token_ids for p in [first, *wave]]
    assert [r.token_ids for r in [a, *got]] == fresh


@pytest.mark.parametrize("kind", ["glm", "next"])
def test_mla_and_deltanet_continue_across_chunks(kind: str, tmp_path: Path) -> None:
    if kind == "glm":
        plugin = pytest.importorskip("inference_pio_glm_4_7_flash.model")
        tiny = pytest.importorskip("inference_pio_glm_4_7_flash.testing").TINY
        save_reference(tmp_path, "Glm4MoeLiteForCausalLM", tiny, "float32", seed=2)
    else:
        plugin = pytest.importorskip("inference_pio_qwen3_coder_next.model")
        tiny = pytest.importorskip("inference_pio_qwen3_coder_next.testing").TINY
        save_reference(tmp_path, "Qwen3NextForCausalLM", tiny, "float32", seed=1)
    m = plugin.load(tmp_path, device="cuda:0")
    prompts = [_prompt(n, n) for n in (6, 7, 8, 40, 71, 200)]
    want = [r.token_ids for r in _run(_manager(m, 0), m, prompts, 12)]
    for budget in (7, 33):
        got = _run(_manager(m, budget), m, prompts, 12)
        assert [r.token_ids for r in got] == want, budget
