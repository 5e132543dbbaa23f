"""PrefixPool (the server's prefix caching): which kept cache a prompt takes, what is copied, what
is evicted under the memory bound. Real layer caches (keys and values, recurrent states) on CPU."""

from __future__ import annotations

import ctypes
import gc
import random
from typing import Any

import pytest

from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.nn import KVCache, LayerCache, RecurrentState
from inference_pio.prefix_pool import (
    PrefixPool,
    cache_nbytes,
    common_prefix,
    copy_prefix,
    find_live,
    poolable,
    rewindable,
)

CPU = Device.parse("cpu")
LAYERS, NKV, HD = 2, 2, 8


def _kv(capacity: int, ids: list[int] | None = None, seed: int = 0) -> LayerCache:
    """A two-layer KV cache holding ``len(ids)`` positions of random keys and values."""
    cache = LayerCache(
        [KVCache(NKV, capacity, HD, DType.float32, CPU) for _ in range(LAYERS)], capacity
    )
    rng = random.Random(seed)
    for layer in cache.layers:
        for t in (layer.k, layer.v):
            data = (ctypes.c_float * t.numel)(*(rng.uniform(-1, 1) for _ in range(t.numel)))
            ctypes.memmove(t.data_ptr, data, t.nbytes)
    cache.length = len(ids or [])
    return cache


def _recurrent(n: int) -> LayerCache:
    """A Gated DeltaNet layer's state and a KV layer, as Qwen3-Next's caches, holding n tokens."""
    state = RecurrentState(12, 4, (2, 4, 4), DType.float32, CPU, 64)
    cache = LayerCache([state, KVCache(NKV, 64, HD, DType.float32, CPU)], 64)
    cache.length = n
    return cache


def _positions(cache: LayerCache, n: int) -> list[bytes]:
    """The first n positions of every head of every layer, as bytes."""
    out = []
    for layer in cache.layers:
        for t in (layer.k, layer.v):
            pitch, width = t.shape[1] * HD * 4, n * HD * 4
            out += [ctypes.string_at(t.data_ptr + h * pitch, width) for h in range(NKV)]
    return out


def test_common_prefix_matches_a_brute_force_count() -> None:
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(40))]
        want = 0
        while want < min(len(a), len(b)) and a[want] == b[want]:
            want += 1
        assert common_prefix(a, b) == common_prefix(b, a) == want


def test_the_longest_usable_prefix_wins_and_the_last_prompt_token_runs() -> None:
    pool = PrefixPool()
    short, long_, other = list(range(10)), list(range(30)), [7] * 20
    for ids in (short, other):
        assert pool.put(ids, _kv(64, ids))
    long_cache = _kv(64, long_)
    assert pool.put(long_, long_cache)
    assert len(pool) == 2  # `short` is a prefix of `long_`: that entry says nothing more
    match = pool.find([*range(25), 99])
    assert match is not None
    assert match.cache is long_cache
    assert (match.tokens, match.covered) == (25, False)
    same = pool.find(long_)  # the same prompt again: all but its last token
    assert same is not None
    assert (same.tokens, same.covered) == (29, True)
    assert pool.find([5, 6, 7]) is None  # nothing shared
    assert pool.find([0]) is None  # a one-token prompt: that token always runs
    assert not pool.put(list(range(12)), _kv(64, list(range(12))))  # held by `long_` already
    assert pool.take(same, 64, _kv) is long_cache
    assert long_cache.length == 29  # cut back to what the prompt shares
    assert pool.token_ids() == [other]


def test_taking_a_covered_entry_or_copying_a_shared_prefix() -> None:
    pool = PrefixPool()
    ids = list(range(20))
    kept = _kv(40, ids, seed=3)
    pool.put(ids, kept)
    # a prompt that leaves the kept tokens: their common prefix is copied, the entry stays
    match = pool.find([*range(12), 500, 501])
    assert match is not None
    assert not match.covered
    got = pool.take(match, 30, lambda cap: _kv(cap, seed=9))
    assert got is not kept
    assert got.length == 12
    assert got.capacity == 30
    assert _positions(got, 12) == _positions(kept, 12)
    assert pool.token_ids() == [ids]
    # a prompt that extends them: the sequence takes the kept cache itself
    match = pool.find([*ids, 1, 2, 3])
    assert match is not None
    assert match.covered
    assert pool.take(match, 40, lambda cap: _kv(cap)) is kept
    assert kept.length == 20
    assert len(pool) == 0
    # ... unless it needs a larger cache: then everything is copied into one
    pool.put(ids, kept)
    match = pool.find([*ids, 1])
    assert match is not None
    bigger = pool.take(match, 100, lambda cap: _kv(cap, seed=4))
    assert bigger.capacity == 100
    assert bigger.length == 20
    assert _positions(bigger, 20) == _positions(kept, 20)
    assert len(pool) == 0


def test_a_recurrent_state_is_used_only_when_the_prompt_extends_it() -> None:
    pool = PrefixPool()
    ids = list(range(10))
    cache = _recurrent(10)
    assert poolable(cache)
    assert not rewindable(cache)
    assert pool.put(ids, cache)
    assert pool.find([*range(6), 300, 301]) is None  # would need the state cut back
    assert pool.find(ids) is None  # the same prompt: its last token would be cut back too
    match = pool.find([*ids, 300])
    assert match is not None
    assert (match.tokens, match.covered) == (10, True)
    # a shorter state is not dropped for a longer one (it may still be extended elsewhere)
    assert pool.put([*ids, 1, 2], _recurrent(12))
    assert len(pool) == 2
    with pytest.raises(ValueError, match="cut back"):
        copy_prefix(cache, _recurrent(0), 5)


def _resident(positions: int, capacity: int) -> int:
    """Host bytes a :func:`_kv` cache holds with ``positions`` filled: each head's rows in whole
    4 KiB pages (the pages of a sparse KV cache are resident once written), at most all of them."""
    row = HD * 4
    pages = -(-positions * row // 4096)
    return LAYERS * 2 * NKV * min(pages * 4096, row * capacity)


def test_the_memory_bound_evicts_the_least_recently_used() -> None:
    assert cache_nbytes(_kv(1000, list(range(10)))) == _resident(10, 1000)  # one page a head
    assert cache_nbytes(_kv(1000, list(range(200)))) == _resident(200, 1000)  # two pages a head
    assert _resident(200, 1000) == 2 * _resident(10, 1000)
    per = _resident(20, 64)
    pool = PrefixPool(max_bytes=per * 5 // 2)
    a, b, c = ([k * 100 + i for i in range(20)] for k in range(1, 4))
    pool.put(a, _kv(64, a))
    pool.put(b, _kv(64, b))
    assert pool.nbytes == 2 * per
    used = pool.find([*a[:5], 0])  # `a` used (its prefix copied): `b` is now the oldest
    assert used is not None
    pool.take(used, 64, lambda cap: _kv(cap))
    pool.put(c, _kv(64, c))
    assert pool.token_ids() == [a, c]
    assert pool.evictions == 1
    assert pool.nbytes <= pool.max_bytes
    big = list(range(200))
    assert _resident(200, 512) > pool.max_bytes
    assert not pool.put(big, _kv(512, big))  # larger than the bound
    small = PrefixPool(max_entries=2)
    for k in range(3):
        small.put([k] * 5, _kv(8, [k] * 5))
    assert small.token_ids() == [[1] * 5, [2] * 5]
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixPool(-1)


def test_borrowed_caches_are_free_weak_and_checked() -> None:
    """A graph decoder's free slots: kept at no cost, dropped with their decoder, used only
    while ``valid`` says their tokens are still theirs."""
    pool = PrefixPool(max_bytes=0)
    ids = list(range(8))
    slot = _kv(16, ids)
    assert pool.put(ids, slot, owned=False, tag=1)
    assert pool.nbytes == 0
    assert len(pool) == 1
    assert pool.find([*ids, 1]) is None  # owned entries only by default
    seen: list[Any] = []

    def valid(cache: Any, owned: bool, tag: Any) -> bool:
        seen.append(tag)
        return tag == 1

    match = pool.find([*ids, 1], valid)
    assert match is not None
    assert match.cache is slot
    assert not match.owned
    assert seen == [1]
    free = [_kv(16), slot]
    assert pool.victim(free) is free[0]  # a slot without kept tokens goes first
    assert pool.victim([slot]) is slot
    del slot, match, free
    gc.collect()
    assert pool.find([*ids, 1], valid) is None
    assert len(pool) == 0


def test_what_is_not_kept() -> None:
    pool = PrefixPool()
    shifted = _kv(16, [1, 2, 3])
    shifted.position_offset = 5  # positions after an image prompt
    assert not pool.put([1, 2, 3], shifted)
    assert not pool.put([], _kv(16))  # nothing in it
    assert not pool.put([1], _kv(16, [1, 2, 3]))  # ids that do not say what it holds

    class Plain:  # a cache of a model of its own (no core layer caches)
        length, capacity = 3, 8

    assert not pool.put([1, 2, 3], Plain())
    assert len(pool) == 0


def test_running_sequences_give_what_their_caches_hold() -> None:
    """A running sequence's ids go past its cache (its last token is not fed yet): only the
    positions its cache holds count; its recurrent state only for a prompt extending them."""
    ids = list(range(30))
    running = _kv(64, ids[:20])  # 20 of its 30 ids are in its cache
    match = find_live([*ids[:25], 99], [(ids, running)])
    assert match is not None
    assert (match.tokens, match.live, match.covered) == (20, True, False)
    state = _recurrent(10)
    assert find_live([*ids[:5], 99], [(ids, state)]) is None
    best = find_live([*ids[:12], 99], [(ids, state), (ids[:8], _kv(16, ids[:8]))])
    assert best is not None
    assert (best.cache, best.tokens) == (state, 10)
    assert find_live([1, 2], [([1, 2, 3], _kv(8))]) is None  # nothing in its cache yet
