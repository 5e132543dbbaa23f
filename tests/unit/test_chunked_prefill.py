"""Chunked prefill in the BatchManager (``max_num_batched_tokens``) on tiny random f32
checkpoints: greedy tokens equal to a whole-prompt prefill's for chunk sizes around the prompt
lengths, the logits of a prefill run in chunks equal to a whole one's (Qwen3 attention, GLM's MLA
latents, Qwen3-Coder-Next's Gated DeltaNet states), running sequences decoding between a long
prompt's chunks, prefix caching, cancellation and failures mid-prefill, logprobs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
qwen3 = pytest.importorskip("inference_pio_qwen3_0_6b.model")

from inference_pio.batching import BatchManager  # noqa: E402
from inference_pio.generation import GenerationResult  # noqa: E402
from inference_pio.nn.cuda_batch_graph import BatchGraphDecoder  # noqa: E402
from inference_pio.prefill_chunks import (  # noqa: E402
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    plan,
    resolve_budget,
)
from inference_pio.prefix_pool import PrefixPool  # noqa: E402
from inference_pio.sampling import SamplingParams  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("chunked-prefill")
    cfg = transformers.Qwen3Config(
        **tiny_qwen3_config(num_hidden_layers=2, max_position_embeddings=512)
    )
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    return qwen3.load(d)


def _load_plugin(kind: str, tmp: Path) -> Any:
    """GLM-4.7-Flash (MLA) or Qwen3-Coder-Next (Gated DeltaNet) from its plugin's tiny config."""
    from inference_pio.testing.conformance import save_reference

    if kind == "glm":
        plugin = pytest.importorskip("inference_pio_glm_4_7_flash.model")
        from inference_pio_glm_4_7_flash.testing import TINY

        save_reference(tmp, "Glm4MoeLiteForCausalLM", TINY, "float32", seed=2)
    else:
        plugin = pytest.importorskip("inference_pio_qwen3_coder_next.model")
        from inference_pio_qwen3_coder_next.testing import TINY

        save_reference(tmp, "Qwen3NextForCausalLM", TINY, "float32", seed=1)
    return plugin.load(tmp)


def _manager(
    model: Any, budget: int, pool: PrefixPool | None = None, batch: int = 4
) -> BatchManager:
    return BatchManager(
        model.model,
        model.tokenizer,
        model.eos_ids,
        batch,
        prefix_pool=pool,
        max_num_batched_tokens=budget,
    )


def _params(n: int = 8, **kw: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True, **kw)


def _run(manager: BatchManager, prompts: list[list[int]], n: int = 8) -> list[GenerationResult]:
    for p in prompts:
        manager.submit(p, _params(n))
    return manager.run()


def _prompt(n: int, seed: int = 0) -> list[int]:
    return [(37 * i + 11 * seed + 5) % 500 for i in range(n)]


def _record_calls(
    manager: BatchManager, monkeypatch: pytest.MonkeyPatch
) -> list[list[tuple[int, int]]]:
    """Every forward call the manager makes from now on (until the test ends): (new tokens,
    id of the cache) per sequence; the real forward runs."""
    calls: list[list[tuple[int, int]]] = []
    real = manager.model.forward

    def forward(batch: Any) -> Any:
        calls.append([(len(tokens), id(cache)) for tokens, cache in batch])
        return real(batch)

    monkeypatch.setattr(manager.model, "forward", forward)
    return calls


def test_budget_defaults_and_validation(model: Any) -> None:
    assert _manager(model, 0).max_num_batched_tokens == 0
    default = BatchManager(model.model, model.tokenizer, model.eos_ids, 4)
    assert default.max_num_batched_tokens == DEFAULT_MAX_NUM_BATCHED_TOKENS["cpu"]
    assert resolve_budget(None, "cuda") == DEFAULT_MAX_NUM_BATCHED_TOKENS["cuda"]
    for bad in (-1, True, 2.5, "64"):
        with pytest.raises(ValueError, match="max_num_batched_tokens"):
            _manager(model, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_greedy_tokens_equal_a_whole_prefill(
    model: Any, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts one below, at and one above a chunk (and two chunks) decode the tokens of a
    manager that prefills whole prompts; every forward call stays within the budget except
    for the decode rows' floor of one prefill token."""
    lengths = sorted({max(1, budget + d) for d in (-1, 0, 1)} | {2 * budget + 1, 130, 3})
    prompts = [_prompt(n, seed=n) for n in lengths]
    want = [r.token_ids for r in _run(_manager(model, 0), prompts, 6)]
    manager = _manager(model, budget)
    calls = _record_calls(manager, monkeypatch)
    got = _run(manager, prompts, 6)
    assert [r.token_ids for r in got] == want
    assert manager.prefill_tokens == sum(lengths)
    assert sum(manager.prefill_chunk_sizes) == sum(lengths)
    assert max(manager.prefill_chunk_sizes) <= budget
    # a step's decode rows and chunk: at most the budget together (one prefill token at least)
    assert all(sum(n for n, _ in c) <= max(budget, 1 + 4) for c in calls)
    assert any(n > 1 for c in calls for n, _ in c) or budget == 1


@pytest.mark.parametrize("kind", ["qwen3", "glm", "next"])
def test_chunked_logits_equal_a_whole_prefill(kind: str, model: Any, tmp_path: Path) -> None:
    """A prompt prefilled in chunks of 1, 2, 7, 33 (GLM's expanded MLA form from 32 tokens) and
    the rest gives the logits of its whole prefill, and so does the next decode step (the
    caches hold the same keys and values, latents or recurrent states)."""
    lm = model if kind == "qwen3" else _load_plugin(kind, tmp_path)
    m = lm.model
    prompt = _prompt(90, seed=3)
    whole = m.new_cache(128)
    (ref,) = m.forward([(prompt, whole)])
    ref = ref.tolist()
    chunked = m.new_cache(128)
    start = 0
    for size in (1, 2, 7, 33, 47):
        (row,) = m.forward([(prompt[start : start + size], chunked)])
        start += size
    assert start == len(prompt)
    assert chunked.length == whole.length
    err = math.dist(row.tolist(), ref) / math.hypot(*ref)
    assert err < 1e-5, err
    nxt = [int(max(range(len(ref)), key=ref.__getitem__))]
    (a,) = m.forward([(nxt, whole)])
    (b,) = m.forward([(nxt, chunked)])
    want = a.tolist()
    assert math.dist(b.tolist(), want) / math.hypot(*want) < 1e-5


@pytest.mark.parametrize("kind", ["glm", "next"])
def test_mla_and_deltanet_decode_the_same_tokens_chunked(kind: str, tmp_path: Path) -> None:
    lm = _load_plugin(kind, tmp_path)
    prompts = [_prompt(n, seed=n) for n in (6, 7, 8, 40, 71)]
    want = [r.token_ids for r in _run(_manager(lm, 0), prompts, 5)]
    for budget in (1, 7, 33):
        assert [r.token_ids for r in _run(_manager(lm, budget), prompts, 5)] == want, budget


def test_running_sequences_decode_between_a_long_prompts_chunks(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200-token prompt arriving while a request streams: with a 16-token budget the stream
    gets a token every step (at most 16 tokens computed between two of its tokens) and the
    prompt is prefilled in 15-token chunks between them; without chunking the stream waits for
    the whole prompt."""
    long_prompt = _prompt(200, seed=9)

    def run(budget: int) -> tuple[list[int], list[list[tuple[int, int]]], list[GenerationResult]]:
        manager = _manager(model, budget)
        calls = _record_calls(manager, monkeypatch)
        pieces = 0

        def piece(i: int, text: str) -> None:
            nonlocal pieces
            pieces += 1
            if pieces == 2:  # the long prompt arrives while the first request streams
                manager.submit(long_prompt, _params(4))

        manager.submit(_prompt(5), _params(40), on_piece=piece)
        results = manager.run()
        stream = calls[0][0][1]  # the first call is the first request's prefill
        gaps, since = [], 0  # tokens computed between two decode rows of the stream
        for call in calls[1:]:
            if any(cache == stream for _, cache in call):
                gaps.append(since)
                since = 0
            since += sum(n for n, _ in call)
        return gaps, calls, results

    gaps, calls, results = run(16)
    assert max(gaps) <= 16
    chunk_calls = [c for c in calls if any(n > 1 for n, _ in c)]
    assert [sum(n for n, _ in c) for c in chunk_calls[1:]] == [15] * 13 + [5]
    whole_gaps, _, whole = run(0)
    assert max(whole_gaps) >= 200
    assert [r.token_ids for r in results] == [r.token_ids for r in whole]


class CpuSlots(BatchGraphDecoder):
    """The batch graph decoder's slot bookkeeping (the real methods) over CPU caches, its step
    run through ``model.forward`` on the rows it is given: the CUDA slot path on this machine."""

    def __init__(self, model: Any, slots: int, capacity: int) -> None:  # no CUDA graphs
        self.model, self.slots, self.capacity = model, slots, capacity
        self.caches = [model.new_cache(capacity) for _ in range(slots)]
        self._slot_of = {id(c): i for i, c in enumerate(self.caches)}
        self._free = list(range(slots))
        self.uses = [0] * slots
        self.steps: list[int] = []

    def step(self, batch: Any) -> list[Any]:
        self.steps.append(len(batch))
        rows = self.model.forward([([t], c) for t, c in batch])
        self.last_logits, self.last_slots = rows[0], [self._slot(c) for _, c in batch]
        return rows


def test_prefix_caching_with_chunks(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept prefixes are not prefilled again; a prompt admitted while another with the same
    start is mid-prefill copies what that one's cache holds so far; in graph slots too."""
    system = _prompt(100, seed=4)
    first = [*system, 1, 2]
    reply = _run(_manager(model, 0), [first])[0].token_ids
    wave = [[*first, *reply, 9], [*system, 3, 4], [*system[:30], 7]]
    fresh = [r.token_ids for r in _run(_manager(model, 0), [first, *wave])]
    for slots in (None, CpuSlots(model.model, 4, 256)):
        if slots is not None:
            monkeypatch.setattr(BatchManager, "_graph_decoder", lambda self, s=slots: s)
        manager = _manager(model, 24, PrefixPool(max_bytes=0 if slots else 1 << 30))
        (a,) = _run(manager, [first])
        got = _run(manager, wave)
        assert [r.token_ids for r in [a, *got]] == fresh
        cached = [r.cached_tokens for r in got]
        assert cached[0] == len(first) + len(reply) - 1
        # the others copy their prefix from the kept history (or the running first one's)
        assert cached[1:] == [100, 30]
        assert manager.prefill_tokens == len(first) + sum(
            len(p) - c for p, c in zip(wave, cached, strict=True)
        )
        assert manager.cached_tokens == sum(cached)
        if slots is not None:
            assert slots.steps  # the decode rows went through the slots' steps


def test_a_prompt_mid_prefill_copies_a_running_prefill(model: Any) -> None:
    """Two requests with one long start submitted together: the second is admitted while the
    first is mid-prefill and copies the part the first's cache holds at that step."""
    system = _prompt(60, seed=6)
    prompts = [[*system, 1], [*system, 2, 3]]
    fresh = [r.token_ids for r in _run(_manager(model, 0), prompts)]
    manager = _manager(model, 40, PrefixPool())
    got = _run(manager, prompts)
    assert [r.token_ids for r in got] == fresh
    assert [r.cached_tokens for r in got] == [0, 40]  # one 40-token chunk in when it came


def test_cancelled_mid_prefill(model: Any) -> None:
    """A request cancelled between two of its chunks stops prefilling at once, gets no result,
    and leaves what it prefilled in the pool for the next prompt that starts the same way;
    the request streaming beside it is not disturbed."""
    pool = PrefixPool()
    manager = _manager(model, 20, pool)
    long_prompt = _prompt(150, seed=7)
    finished: list[int] = []
    long_index = -1

    def piece(i: int, text: str) -> None:
        if len(manager.prefill_chunk_sizes) == 4:  # the long prompt is mid-prefill
            manager.cancel(long_index)

    short = manager.submit(_prompt(4), _params(30), on_piece=piece)
    long_index = manager.submit(long_prompt, _params(4), on_finish=lambda i, r: finished.append(i))
    results = manager.run()
    assert len(results) == 1
    assert not finished
    held = manager.prefill_tokens - 4  # what the long prompt prefilled before the cancel
    assert 0 < held < len(long_prompt)
    # a first chunk of 16 beside the short prompt's 4, then 19 a step beside its decode row
    assert (held - 16) % 19 == 0
    assert held == sum(manager.prefill_chunk_sizes) - 4
    assert [len(ids) for ids in pool.token_ids() if ids[:5] == long_prompt[:5]] == [held]
    again = _run(manager, [long_prompt])[0]
    assert again.cached_tokens == held
    assert [results[0].token_ids, again.token_ids] == [
        r.token_ids
        for r in (
            _run(_manager(model, 0), [_prompt(4)], 30)[0],
            _run(_manager(model, 0), [long_prompt])[0],
        )
    ]
    assert short == 0


def _failing_on(manager: BatchManager, poison: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``manager.model.forward`` raises for any call holding the token ``poison`` (a fault
    of one request's data), until the test ends."""
    real = manager.model.forward

    def forward(batch: Any) -> Any:
        if any(poison in tokens for tokens, _ in batch):
            raise RuntimeError("bad chunk")
        return real(batch)

    monkeypatch.setattr(manager.model, "forward", forward)


def test_a_failing_chunk_fails_its_request_alone(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk call holding two prompts fails: each is run again alone, the one that fails
    again gets the error, the other and the streaming request finish as without the fault;
    the pool is not emptied and the failed cache is not kept."""
    pool = PrefixPool()
    manager = _manager(model, 32, pool)
    bad = [*_prompt(45, seed=8), 509, 1, 2, 3]  # token 509 in its second chunk
    good = _prompt(20, seed=2)
    errors: list[tuple[int, str]] = []
    results: dict[int, GenerationResult] = {}

    def on_error(i: int, exc: Exception) -> None:
        errors.append((i, str(exc)))

    def on_finish(i: int, r: GenerationResult) -> None:
        results[i] = r

    _failing_on(manager, 509, monkeypatch)
    calls = _record_calls(manager, monkeypatch)
    ids = [
        manager.submit(p, _params(n), on_finish=on_finish, on_error=on_error)
        for p, n in ((_prompt(3), 12), (bad, 4), (good, 4))
    ]
    manager.run()
    monkeypatch.undo()
    assert errors == [(ids[1], "bad chunk")]
    assert sorted(results) == [ids[0], ids[2]]
    # the call of both prompts' chunks, then each alone
    lengths = [[n for n, _ in c] for c in calls]
    assert lengths[:5] == [[3, 29], [1], [20, 11], [20], [11]]
    fresh = _run(_manager(model, 0), [_prompt(3)], 12)[0].token_ids
    assert results[ids[0]].token_ids == fresh
    assert results[ids[2]].token_ids == _run(_manager(model, 0), [good], 4)[0].token_ids
    assert not any(ids[:45] == bad[:45] for ids in pool.token_ids())
    assert any(ids[:20] == good for ids in pool.token_ids())


def test_a_failing_chunk_in_run_without_on_error_raises(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = _manager(model, 8, PrefixPool())
    _run(manager, [_prompt(30, seed=1)])
    _failing_on(manager, 509, monkeypatch)
    with pytest.raises(RuntimeError, match="bad chunk"):
        _run(manager, [[*_prompt(12), 509]])
    assert manager.prefix_pool is not None
    assert len(manager.prefix_pool) == 0


def test_logprobs_through_chunks(model: Any) -> None:
    """A logprobs request whose prompt is prefilled in chunks gets the entries of a whole
    prefill (the first one from its last chunk's logits)."""
    prompt = _prompt(50, seed=5)
    p = _params(6, logprobs=3)
    whole = _manager(model, 0)
    whole.submit(prompt, p)
    (want,) = whole.run()
    manager = _manager(model, 7)
    manager.submit(_prompt(3), _params(20))  # a decode row beside it
    manager.submit(prompt, p)
    _, got = manager.run()
    assert got.token_ids == want.token_ids
    assert got.logprobs is not None
    assert want.logprobs is not None
    for a, b in zip(got.logprobs, want.logprobs, strict=True):
        assert a.token_id == b.token_id
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


def test_plan_takes_the_oldest_first() -> None:
    class State:
        def __init__(self, n: int, held: int, generated: list[int] | None = None) -> None:
            self.prompt_ids = list(range(n))
            self.generated = generated or []
            self.finished = False
            self.cache = type("C", (), {"length": held})()

    states = [State(10, 4), State(5, 5, [1]), State(30, 0), State(8, 0)]
    chunks = plan([(i, s) for i, s in enumerate(states)], 20)
    assert [(c.owner, c.tokens, c.last) for c in chunks] == [
        (0, list(range(4, 10)), True),
        (2, list(range(14)), False),
    ]


def test_a_cancelled_prefill_counts_its_cache_hit_and_queued_cancels_leave_at_once(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that took a kept prefix and is cancelled mid-prefill still counts the cached
    tokens (counted at its first chunk, as its prefilled ones are per chunk; they came only at
    the last chunk, so never for it); a queued request that is cancelled leaves the queue at
    once (``counts()`` said it was waiting until a slot freed)."""
    pool = PrefixPool()
    manager = _manager(model, 8, pool)
    shared = _prompt(100, seed=3)
    _run(manager, [shared], 1)
    prefilled, cached = manager.prefill_tokens, manager.cached_tokens
    calls = 0
    real = manager.model.forward
    index = -1

    def forward(batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            manager.cancel(index)
        return real(batch)

    monkeypatch.setattr(manager.model, "forward", forward)
    index = manager.submit([*shared, *_prompt(200, seed=4)], _params(4))
    assert manager.run() == []
    assert manager.cached_tokens - cached == len(shared)  # all of it: at least one token is new
    assert 0 < manager.prefill_tokens - prefilled < 200
    queued = _manager(model, 8, None, batch=1)
    queued.submit(_prompt(5), _params(2))
    gone = queued.submit(_prompt(6), _params(2))
    assert queued.counts() == (0, 2)
    queued.cancel(gone)
    assert queued.counts() == (0, 1)
    assert len(queued.run()) == 1
