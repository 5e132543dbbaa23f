"""PrefixPool: finished sequences' caches kept with the token ids they hold, so that a new prompt
that starts the same way prefills only the rest (the server's automatic prefix caching: vLLM's
``--enable-prefix-caching``, llama.cpp server's per-slot ``cache_prompt``).

An entry is a cache and the ids of the tokens it holds (its ``length`` first). For a prompt, the
entry sharing the longest usable prefix wins (:meth:`PrefixPool.find`):

- a cache indexed by position (keys and values, MLA latents) can be cut back to any common prefix;
- a cache with a recurrent state (Gated DeltaNet) cannot be rewound: it is used only when the
  prompt extends every token it holds;
- the prompt's last token is never taken from a cache (its logits start the generation).

When the prompt starts with every token of the entry, the new sequence takes the entry's cache
itself (its tokens will be in the new sequence's cache anyway); otherwise the common prefix is
copied into another cache and the entry stays (copying a token's keys and values costs far less
than computing them again).

Entries are *owned* (caches the pool keeps alive, counted against ``max_bytes`` and evicted least
recently used first) or *borrowed* (the free slots of the CUDA batch graph decoder, whose caches
exist anyway: they cost nothing, are held weakly and are dropped when their slot is taken).
Not thread-safe by itself beyond its own lock: the BatchManager's engine thread is its only user.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Default bound on the bytes of the caches a pool keeps (``inference-pio serve``).
DEFAULT_MAX_BYTES = 2 << 30
#: Entries a pool keeps at most, whatever their size (each admission compares the prompt with
#: every entry).
MAX_ENTRIES = 256
#: Host page size: a CPU cache's filled positions are resident in whole pages per head.
_PAGE = 4096


def poolable(cache: Any) -> bool:
    """Whether ``cache`` can be kept and reused: a layered cache of the core's cache types
    (keys and values, MLA latents, Gated DeltaNet states) without a position offset (a Qwen3-VL
    prompt with images shifts the positions of what follows)."""
    from inference_pio.nn.attention import KVCache
    from inference_pio.nn.deltanet import RecurrentState
    from inference_pio.nn.mla import LatentCache

    layers = getattr(cache, "layers", None) or []
    return (
        bool(layers)
        and not getattr(cache, "position_offset", 0)
        and all(isinstance(c, (KVCache, LatentCache, RecurrentState)) for c in layers)
    )


def rewindable(cache: Any) -> bool:
    """Whether ``cache`` can be cut back to fewer tokens (every layer indexed by position)."""
    from inference_pio.nn.attention import KVCache
    from inference_pio.nn.mla import LatentCache

    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(isinstance(c, (KVCache, LatentCache)) for c in layers)


def cache_nbytes(cache: Any) -> int:
    """Memory ``cache`` holds: on the host, the pages its filled positions touch, head by head
    (a KV cache's pages are resident only once written, see
    :func:`~inference_pio.memory.advise_sparse`), on a device
    its whole allocation; recurrent states in full."""
    from inference_pio.nn.deltanet import RecurrentState

    total = 0
    for layer in cache.layers:
        if isinstance(layer, RecurrentState):
            total += layer.conv.nbytes + layer.ssm.nbytes
            continue
        tensors = (layer.k,) if layer.v is layer.k else (layer.k, layer.v)
        for t in tensors:
            if t.device.type != "cpu" or not layer.capacity:
                total += t.nbytes
                continue
            # [heads, capacity, width]: each head's filled rows are resident in whole pages
            heads = t.shape[0]
            row = t.nbytes // (heads * layer.capacity)
            pages = -(-cache.length * row // _PAGE)
            total += heads * min(pages * _PAGE, row * layer.capacity)
    return total


def copy_prefix(src: Any, dst: Any, n: int) -> None:
    """Copies the first ``n`` tokens ``src`` holds into ``dst`` (a cache of the same model and
    device with room for them) and gives ``dst`` that length. A recurrent state is copied whole,
    so ``n`` must then be every token ``src`` holds."""
    if not 0 < n <= src.length:
        raise ValueError(f"copy_prefix: {n} tokens of a cache holding {src.length}")
    if n < src.length and not rewindable(src):
        raise ValueError("copy_prefix: a recurrent state cannot be cut back")
    if n > dst.capacity or not src.copyable_to(dst):
        raise ValueError("copy_prefix: the caches do not match")
    for a, b in zip(src.layers, dst.layers, strict=True):
        a.copy_to(b, n)
    dst.length = n
    dst.position_offset = 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists (slices compare in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _Strong:
    """A strong reference with the call of a weak one."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


@dataclass(eq=False)
class _Entry:
    ids: list[int]
    ref: Callable[[], Any]  # the cache (a weak reference for a borrowed one)
    nbytes: int
    rewindable: bool
    owned: bool
    tag: Any = None  # a borrowed slot's acquisition count when it was kept


@dataclass(frozen=True)
class Match:
    """A prompt's best entry: ``tokens`` of the prompt come from ``cache``; ``covered``: the
    prompt starts with every token the cache holds (the sequence may take the cache itself);
    ``live``: the cache of a running sequence (:func:`find_live`), to copy from, never take."""

    cache: Any
    tokens: int
    covered: bool
    owned: bool
    live: bool = False


def _usable(ids: Sequence[int], back: bool, prompt: Sequence[int]) -> tuple[int, bool]:
    """How many of ``prompt``'s tokens a cache holding ``ids`` gives (0: none), and whether the
    prompt covers all of ``ids``. ``back``: the cache can be cut back."""
    common = common_prefix(ids, prompt)
    covered = common == len(ids)
    n = min(common, len(prompt) - 1)  # the last prompt token always runs (its logits)
    if not back and (not covered or n < len(ids)):
        return 0, covered  # a recurrent state is used only when the prompt extends it
    return max(n, 0), covered


def find_live(prompt: Sequence[int], running: Iterable[tuple[Sequence[int], Any]]) -> Match | None:
    """The running sequence whose cache shares the longest usable prefix with ``prompt``:
    ``running`` gives each one's token ids (prompt and generated) and cache, which holds the
    first ``cache.length`` of them (positions a running sequence never writes again). For
    requests admitted together or while others run (a shared system prompt): the prefix is
    copied before the next step."""
    best: Match | None = None
    for ids, cache in running:
        if not poolable(cache) or cache.length <= 0 or len(ids) < cache.length:
            continue
        n, _ = _usable(ids[: cache.length], rewindable(cache), prompt)
        if n > 0 and (best is None or n > best.tokens):
            best = Match(cache, n, False, False, live=True)
    return best


class PrefixPool:
    """Caches of finished sequences and their token ids, at most ``max_bytes`` of owned caches
    (least recently used evicted first) and :data:`MAX_ENTRIES` entries."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = MAX_ENTRIES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # by id(cache), oldest first
        self._lock = threading.Lock()
        #: Entries dropped to stay within the bounds so far (observability, tests).
        self.evictions = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the owned caches kept now."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def token_ids(self) -> list[list[int]]:
        """The token ids of every entry, least recently used first (observability, tests)."""
        with self._lock:
            return [list(e.ids) for e in self._entries.values()]

    # ---- keeping -------------------------------------------------------------------------------
    def put(self, ids: Sequence[int], cache: Any, owned: bool = True, tag: Any = None) -> bool:
        """Keeps ``cache`` with the ids of the tokens it holds (``ids[:cache.length]``; ids must
        cover them). ``owned=False``: a cache that lives elsewhere (a graph decoder's slot), held
        weakly and not counted; ``tag`` identifies its use (see :meth:`find`'s ``valid``). False
        when it is not kept: not reusable, larger than the bound, or holding nothing that
        another entry does not hold already."""
        n = getattr(cache, "length", 0)
        if n <= 0 or len(ids) < n or not poolable(cache):
            return False
        kept = list(ids[:n])
        back = rewindable(cache)
        size = cache_nbytes(cache) if owned else 0
        if size > self.max_bytes:
            return False
        with self._lock:
            self._entries.pop(id(cache), None)
            for key, e in list(self._entries.items()):
                if not (back and e.rewindable):
                    continue
                if len(e.ids) >= n and e.ids[:n] == kept:
                    return False  # an entry holds all of it already
                if len(e.ids) < n and kept[: len(e.ids)] == e.ids:
                    del self._entries[key]  # this one holds all of that entry
            ref: Callable[[], Any] = _Strong(cache) if owned else weakref.ref(cache)
            self._entries[id(cache)] = _Entry(kept, ref, size, back, owned, tag)
            self._evict()
        return True

    def _evict(self) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        while self._entries and (total > self.max_bytes or len(self._entries) > self.max_entries):
            key = next(
                (k for k, e in self._entries.items() if e.owned or total <= self.max_bytes),
                None,
            )
            if key is None:
                break
            total -= self._entries.pop(key).nbytes
            self.evictions += 1

    def discard(self, cache: Any) -> None:
        """Forgets ``cache`` (its tokens are about to be overwritten)."""
        with self._lock:
            self._entries.pop(id(cache), None)

    def clear(self) -> None:
        """Forgets every entry (the owned caches are freed once nothing else holds them)."""
        with self._lock:
            self._entries.clear()

    # ---- reusing -------------------------------------------------------------------------------
    def find(
        self, prompt: Sequence[int], valid: Callable[[Any, bool, Any], bool] | None = None
    ) -> Match | None:
        """The entry sharing the longest usable prefix with ``prompt`` (the most recently kept
        among equals), or None. Nothing changes. ``valid(cache, owned, tag)`` says whether an
        entry may be used now (default: owned entries only)."""
        best: Match | None = None
        with self._lock:
            for key, e in list(self._entries.items()):
                cache = e.ref()
                if cache is None or cache.length < len(e.ids):
                    del self._entries[key]  # a slot freed with its decoder, or changed
                    continue
                if not (valid(cache, e.owned, e.tag) if valid is not None else e.owned):
                    continue
                n, covered = _usable(e.ids, e.rewindable, prompt)
                if n > 0 and (best is None or n >= best.tokens):
                    best = Match(cache, n, covered, e.owned)
        return best

    def take(self, match: Match, capacity: int, new_cache: Callable[[int], Any]) -> Any:
        """A cache of at least ``capacity`` tokens holding ``match.tokens`` tokens of the prompt
        (an owned entry's ``match``): the entry's cache itself when the prompt covers it and it
        is large enough (the entry leaves the pool), else ``new_cache(capacity)`` with those
        tokens copied in (the entry stays, as most recently used, unless it was covered)."""
        cache = match.cache
        with self._lock:
            if match.covered:
                self._entries.pop(id(cache), None)
            elif id(cache) in self._entries:
                self._entries.move_to_end(id(cache))
        if match.covered and cache.capacity >= capacity:
            cache.length = match.tokens
            return cache
        fresh = new_cache(capacity)
        copy_prefix(cache, fresh, match.tokens)
        return fresh

    def victim(self, free: Iterable[Any]) -> Any:
        """Of the caches ``free`` (a graph decoder's free slots), the one whose tokens matter
        least: one without an entry, else the least recently used; None when ``free`` is empty."""
        caches = list(free)
        with self._lock:
            for c in caches:
                if id(c) not in self._entries:
                    return c
            rank = {k: i for i, k in enumerate(self._entries)}
        return min(caches, key=lambda c: rank.get(id(c), -1), default=None)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_ENTRIES",
    "Match",
    "PrefixPool",
    "cache_nbytes",
    "common_prefix",
    "copy_prefix",
    "find_live",
    "poolable",
    "rewindable",
]
