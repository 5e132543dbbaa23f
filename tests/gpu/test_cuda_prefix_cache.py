"""Prefix caching in the BatchManager on a CUDA model: bf16 decodes in the batch graphs' slots (the
free slots are the kept caches), fp32 in caches of its own (kept in the pool, counted against its
bound); a lone sequence finishes on the batch-1 path and its cache is copied back before it is
kept. Every request decodes the greedy tokens of a manager without the pool."""

from __future__ import annotations

import sys
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

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_tiny_qwen3(tmp_path_factory, request.param, "prefix-cuda")


def _run(manager: BatchManager, lm: Any, prompts: list[list[int]], n: int) -> list[Any]:
    for p in prompts:
        manager.submit(p, lm.sampling_params(max_new_tokens=n, temperature=0, ignore_eos=True))
    return manager.run()


def _fresh(lm: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    manager = BatchManager(lm.model, lm.tokenizer, lm.eos_ids, 4)
    return [_run(manager, lm, [p], n)[0].token_ids for p in prompts]


def test_chat_turns_reuse_what_the_batch1_path_decoded(lm: Any) -> None:
    """One request at a time: each finishes alone on the batch-1 path; the next turn takes the
    first turn's prompt and reply from the kept cache."""
    pool = PrefixPool()
    manager = BatchManager(lm.model, lm.tokenizer, lm.eos_ids, 4, prefix_pool=pool)
    system = [(5 * i + 3) % 500 for i in range(70)]
    first = [*system, 11, 12, 13]
    (a,) = _run(manager, lm, [first], 40)
    assert manager.finished_alone == 1
    nxt = [*first, *a.token_ids, 21, 22]
    branch = [*system, 31, 32, 33]
    b, c = (_run(manager, lm, [p], 40)[0] for p in (nxt, branch))
    assert b.cached_tokens == len(first) + len(a.token_ids) - 1  # the copied-back reply too
    assert c.cached_tokens == len(system)
    assert [r.token_ids for r in (a, b, c)] == _fresh(lm, [first, nxt, branch], 40)
    graphs = getattr(lm.model, "_cuda_batch_graph", None)
    if lm.model.act_dtype.name == "bfloat16":
        assert graphs is not None
        assert pool.nbytes == 0  # the free slots are the kept caches
        assert len(pool) >= 1
    else:
        assert graphs is None  # fp32: the caches are the pool's own
        assert pool.nbytes > 0


def test_concurrent_requests_take_or_copy_kept_prefixes(lm: Any) -> None:
    """Requests admitted together after a first wave: the one extending a kept cache takes it,
    those branching from it get the common part copied into another slot or cache (from the
    first one's, now running)."""
    pool = PrefixPool()
    manager = BatchManager(lm.model, lm.tokenizer, lm.eos_ids, 4, prefix_pool=pool)
    system = [(7 * i + 1) % 500 for i in range(50)]
    wave1 = [[*system, 1, 2], [400, 401, 402, 403]]
    first = _run(manager, lm, wave1, 6)
    wave2 = [
        [*wave1[0], *first[0].token_ids, 9],  # extends the first request's cache
        [*system, 3, 4, 5],  # branches from it
        [*system, 6],  # branches from it too
        [400, 401, 402, 7, 8],  # branches from the second
    ]
    second = _run(manager, lm, wave2, 6)
    assert [r.cached_tokens for r in second] == [len(wave1[0]) + 5, 50, 50, 3]
    want = _fresh(lm, [*wave1, *wave2], 6)
    assert [r.token_ids for r in [*first, *second]] == want


def test_a_failed_step_empties_the_pool(lm: Any) -> None:
    pool = PrefixPool()
    manager = BatchManager(lm.model, lm.tokenizer, lm.eos_ids, 4, prefix_pool=pool)
    prompt = list(range(100, 160))
    _run(manager, lm, [prompt], 4)
    assert len(pool) == 1

    def broken(batch: Any) -> Any:
        raise RuntimeError("simulated device error")

    lm.model.forward = broken
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            _run(manager, lm, [[*prompt, 1]], 4)
    finally:
        del lm.model.forward
    assert len(pool) == 0
    got: list[GenerationResult] = _run(manager, lm, [[*prompt, 1]], 4)
    assert got[0].cached_tokens == 0
    assert got[0].token_ids == _fresh(lm, [[*prompt, 1]], 4)[0]
