"""The BatchManager with a PrefixPool (the server's automatic prefix caching) on tiny random f32
checkpoints: a prompt sharing a kept prefix prefills only the rest (counted by the manager), and
every request decodes the greedy tokens of a manager without the pool; concurrent requests,
cancellation, failures and the memory bound leave it correct."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
qwen3 = pytest.importorskip("inference_pio_qwen3_0_6b.model")

from inference_pio.batching import BatchManager  # noqa: E402
from inference_pio.generation import GenerationResult  # noqa: E402
from inference_pio.nn.cuda_batch_graph import BatchGraphDecoder  # noqa: E402
from inference_pio.prefix_pool import PrefixPool  # noqa: E402
from inference_pio.sampling import SamplingParams  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("prefix-caching")
    cfg = transformers.Qwen3Config(**tiny_qwen3_config(num_hidden_layers=2))
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    return qwen3.load(d)


def _manager(model: Any, pool: PrefixPool | None, batch: int = 4) -> BatchManager:
    return BatchManager(model.model, model.tokenizer, model.eos_ids, batch, prefix_pool=pool)


def _params(n: int = 8) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True)


def _run(manager: BatchManager, prompts: list[list[int]], n: int = 8) -> list[GenerationResult]:
    for p in prompts:
        manager.submit(p, _params(n))
    return manager.run()


def _fresh(model: Any, prompts: list[list[int]], n: int = 8) -> list[list[int]]:
    return [r.token_ids for r in _run(_manager(model, None), prompts, n)]


def test_a_shared_prefix_is_prefilled_once(model: Any) -> None:
    manager = _manager(model, PrefixPool())
    system = list(range(40, 100))  # a long shared system prompt
    first = [*system, 1, 2, 3]
    (a,) = _run(manager, [first])
    assert a.cached_tokens == 0
    assert manager.prefill_tokens == len(first)
    second = [*system, 7, 8]
    (b,) = _run(manager, [second])
    assert b.cached_tokens == len(system)  # the system prompt came from the kept cache
    assert manager.prefill_tokens == len(first) + 2
    assert manager.cached_tokens == len(system)
    # a chat's next turn: the history, the reply and a new message
    turn2 = [*first, *a.token_ids, 9, 10, 11]
    (c,) = _run(manager, [turn2])
    assert c.cached_tokens == len(first) + len(a.token_ids) - 1  # the last reply token never ran
    # the same prompt again: all but its last token
    (d,) = _run(manager, [turn2])
    assert d.cached_tokens == len(turn2) - 1
    assert [r.token_ids for r in (a, b, c, d)] == _fresh(model, [first, second, turn2, turn2])


def test_requests_admitted_together_share_a_prefix(model: Any) -> None:
    """The first request of a step takes the kept cache it extends; the others, admitted in the
    same step, copy the shared part from that request's cache (or from one that is running)."""
    manager = _manager(model, PrefixPool())
    system = list(range(300, 360))
    first = [*system, 1, 2]
    (a,) = _run(manager, [first])
    wave = [[*first, *a.token_ids, 3], [*system, 7, 8], [*system, 9]]
    got = _run(manager, wave)
    assert [r.cached_tokens for r in got] == [len(first) + 7, len(system), len(system)]
    assert [r.token_ids for r in got] == _fresh(model, wave)


def test_prompts_that_branch_keep_both_histories(model: Any) -> None:
    """A prompt leaving a kept history early gets the common part copied: the long history
    stays kept for its own next turn."""
    pool = PrefixPool()
    manager = _manager(model, pool)
    history = list(range(100, 180))
    (a,) = _run(manager, [history])
    branch = [*history[:30], 5, 6, 7]
    (b,) = _run(manager, [branch])
    assert b.cached_tokens == 30
    nxt = [*history, *a.token_ids, 1, 2]
    (c,) = _run(manager, [nxt])
    assert c.cached_tokens == len(history) + len(a.token_ids) - 1
    assert [r.token_ids for r in (a, b, c)] == _fresh(model, [history, branch, nxt])


def test_concurrent_requests_with_shared_and_unshared_prefixes(model: Any) -> None:
    """serve() with requests from several threads, more than max_batch_size: every answer
    equals its answer without the pool, and later ones took their shared prefixes from it."""
    system = list(range(200, 260))
    prompts = [[*system, i, i + 1] if i % 2 else [300 + i, *range(20, 40)] for i in range(10)]
    lengths = [3 + 2 * (i % 4) for i in range(10)]
    want = []
    for p, n in zip(prompts, lengths, strict=True):
        (r,) = _run(_manager(model, None), [p], n)
        want.append(r.token_ids)
    pool = PrefixPool()
    manager = _manager(model, pool, batch=3)
    results: dict[int, GenerationResult] = {}
    done = threading.Event()
    lock = threading.Lock()

    def finish(i: int, result: GenerationResult) -> None:
        with lock:
            results[i] = result
            if len(results) == len(prompts):
                done.set()

    stop = threading.Event()
    engine = threading.Thread(target=manager.serve, args=(stop,), daemon=True)
    index: dict[int, int] = {}

    def submit(k: int) -> None:
        i = manager.submit(prompts[k], _params(lengths[k]), on_finish=finish)
        with lock:
            index[i] = k

    # the first wave queued before the engine starts, so that it decodes as one batch of 3 (with
    # the engine already running, a thread scheduled late made batches of 2 at most now and then)
    for k in range(0, 4):
        submit(k)
    engine.start()
    try:
        while len(results) < len(index) and not done.wait(0.05):
            pass
        # the second wave, from threads, finds the first's caches
        threads = [threading.Thread(target=submit, args=(k,)) for k in range(4, 10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert done.wait(60)
    finally:
        stop.set()
        engine.join(10)
    got = {index[i]: r for i, r in results.items()}
    assert [got[k].token_ids for k in range(len(prompts))] == want
    assert all(got[k].cached_tokens >= len(system) for k in range(4, 10) if k % 2)
    assert max(manager.decode_batch_sizes) == 3
    assert manager.cached_tokens == sum(r.cached_tokens for r in got.values())
    assert manager.prefill_tokens + manager.cached_tokens == sum(map(len, prompts))


def test_a_cancelled_request_leaves_its_prefix(model: Any) -> None:
    pool = PrefixPool()
    manager = _manager(model, pool)
    prompt = list(range(10, 60))
    stop = threading.Event()
    cancelled = threading.Event()

    def piece(i: int, text: str) -> None:
        manager.cancel(i)  # the client goes away after its first piece
        cancelled.set()

    engine = threading.Thread(target=manager.serve, args=(stop,), daemon=True)
    engine.start()
    try:
        manager.submit(prompt, _params(30), on_piece=piece)
        assert cancelled.wait(10)
        for _ in range(100):
            if len(pool):
                break
            threading.Event().wait(0.05)
    finally:
        stop.set()
        engine.join(10)
    (kept,) = pool.token_ids()
    assert kept[: len(prompt)] == prompt
    assert len(kept) < len(prompt) + 30
    (again,) = _run(manager, [[*prompt, 1]])
    assert again.cached_tokens == len(prompt)
    assert again.token_ids == _fresh(model, [[*prompt, 1]])[0]


def test_failures_do_not_poison_the_pool(model: Any) -> None:
    """A request whose callback fails is not kept; a step that fails empties the pool (what it
    wrote is not trusted), and the requests after it decode as without the pool."""
    pool = PrefixPool()
    manager = _manager(model, pool)
    prompt = list(range(60, 120))
    errors: list[Exception] = []

    def bad_piece(i: int, text: str) -> None:
        raise RuntimeError("client bug")

    manager.submit(prompt, _params(), on_piece=bad_piece, on_error=lambda i, e: errors.append(e))
    manager.submit([1, 2, 3], _params())
    manager.run()
    assert [str(e) for e in errors] == ["client bug"]
    assert pool.token_ids() == [[1, 2, 3, *_fresh(model, [[1, 2, 3]])[0][:7]]]
    _run(manager, [prompt])
    assert len(pool) == 2
    real = manager.model.forward
    calls = 0

    def failing(batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:  # a decode step of the request below
            raise RuntimeError("simulated device error")
        return real(batch)

    manager.model.forward = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            _run(manager, [[*prompt, 5, 6]])
    finally:
        del manager.model.forward
    assert len(pool) == 0
    after = [[*prompt, 5, 6], [*prompt, 7]]
    results = [_run(manager, [p])[0] for p in after]
    assert results[0].cached_tokens == 0
    assert results[1].cached_tokens == len(prompt)
    assert [r.token_ids for r in results] == _fresh(model, after)


def test_a_small_memory_bound_evicts_and_stays_correct(model: Any) -> None:
    per_token = sum(c.k.nbytes + c.v.nbytes for c in model.model.new_cache(1).layers)
    pool = PrefixPool(max_bytes=100 * per_token)
    manager = _manager(model, pool)
    prompts = [[k, *range(20 + k, 60 + k)] for k in range(5)]  # 41 tokens, 48 kept each
    results = [_run(manager, [p])[0] for p in prompts]
    assert pool.nbytes <= pool.max_bytes
    assert len(pool) == 2
    assert pool.evictions == 3
    again = [_run(manager, [[*p, 1]])[0] for p in (prompts[4], prompts[0])]
    assert [r.cached_tokens for r in again] == [len(prompts[4]), 0]  # prompts[0] was evicted
    assert [r.token_ids for r in results + again] == _fresh(
        model, [*prompts, [*prompts[4], 1], [*prompts[0], 1]]
    )


def test_a_recurrent_state_is_reused_only_when_extended(tmp_path: Path) -> None:
    """Qwen3-Coder-Next (Gated DeltaNet + attention): a next turn continues from the kept
    state; a prompt that leaves the kept tokens is prefilled whole."""
    next_model = pytest.importorskip("inference_pio_qwen3_coder_next.model")
    from inference_pio.testing.conformance import save_reference
    from inference_pio_qwen3_coder_next.testing import TINY

    save_reference(tmp_path, "Qwen3NextForCausalLM", TINY, "float32", seed=1)
    m = next_model.load(tmp_path)
    manager = _manager(m, PrefixPool())
    first = list(range(5, 40))
    (a,) = _run(manager, [first])
    nxt = [*first, *a.token_ids, 3, 4]
    (b,) = _run(manager, [nxt])
    assert b.cached_tokens == len(first) + len(a.token_ids) - 1
    branch = [*first[:20], 1, 2]
    (c,) = _run(manager, [branch])
    assert c.cached_tokens == 0
    assert [r.token_ids for r in (a, b, c)] == _fresh(m, [first, nxt, branch])


class CpuSlots(BatchGraphDecoder):
    """The batch graph decoder's slot bookkeeping (acquire, release, reuse counts: the real
    methods) over CPU caches, its step run through ``model.forward``: the CUDA slot path of
    prefix caching, on this machine."""

    def __init__(self, model: Any, slots: int, capacity: int) -> None:  # no CUDA graphs
        self.model, self.slots, self.capacity = model, slots, capacity
        self.caches = [model.new_cache(capacity) for _ in range(slots)]
        self._slot_of = {id(c): i for i, c in enumerate(self.caches)}
        self._free = list(range(slots))
        self.uses = [0] * slots

    def step(self, batch: Any) -> list[Any]:
        rows = self.model.forward([([t], c) for t, c in batch])
        self.last_logits, self.last_slots = rows[0], [self._slot(c) for _, c in batch]
        return rows


def test_graph_slots_are_the_kept_caches(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With batch graph slots, finished sequences stay in their free slots (no memory counted):
    a prompt extending one takes that slot, one branching from it gets the prefix copied into
    another; a slot taken by another request no longer offers what it held."""
    system = list(range(100, 150))
    first = [*system, 1, 2]
    others = [[300 + i, 301, 302] for i in range(3)]
    reply = _fresh(model, [first])[0]
    wave = [[*first, *reply, 9], [*system, 3, 4], [400, 401]]
    fresh = _fresh(model, [first, *wave, [*system, 5], [*system, 6]])
    slots = CpuSlots(model.model, 3, 128)
    monkeypatch.setattr(BatchManager, "_graph_decoder", lambda self: slots)
    pool = PrefixPool(max_bytes=0)  # nothing owned: only the slots
    manager = _manager(model, pool, batch=3)
    (a,) = _run(manager, [first])
    assert len(pool) == 1
    assert pool.nbytes == 0
    got = _run(manager, wave)
    assert [r.cached_tokens for r in got] == [len(first) + 7, 50, 0]
    (b,) = _run(manager, [[*system, 5]])  # copied from a free slot into another
    assert b.cached_tokens == 50
    assert sum(slots.uses) == 5  # one slot per request
    _run(manager, others)  # every slot filled with other tokens
    (c,) = _run(manager, [[*system, 6]])
    assert c.cached_tokens == 0  # what the slots held was overwritten
    assert [r.token_ids for r in [a, *got, b, c]] == fresh
