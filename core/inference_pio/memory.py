"""The native host allocator's pool: statistics, trimming and the cache limit.

Blocks from ``to_alloc`` (every CPU :class:`~inference_pio.tensor.Tensor` that owns its memory)
are recycled through size classes; freed blocks stay cached for reuse up to a limit, after which
they go back to the system.
"""

from __future__ import annotations

import ctypes

from inference_pio._native import check, lib
from inference_pio.tensor import Tensor

__all__ = ["advise_sparse", "memory_stats", "set_cache_limit", "trim"]


def memory_stats() -> dict[str, int]:
    """Pool statistics in bytes (and counts).

    ``in_use``: bytes handed out and not yet freed (as requested); ``peak``: the highest
    ``in_use`` since the last :func:`trim`; ``cached``: freed blocks kept for reuse;
    ``reserved``: bytes held from the system (in-use blocks rounded up to their size class, plus
    ``cached``); ``cache_limit``: the most ``cached`` may reach; ``allocs`` / ``cache_hits``:
    allocations so far and how many the cache served.
    """
    L = lib()
    basic = [ctypes.c_int64() for _ in range(3)]
    check(L.to_memory_stats(*(ctypes.byref(v) for v in basic)), "to_memory_stats")
    extra = [ctypes.c_int64() for _ in range(4)]
    check(L.to_memory_counters(*(ctypes.byref(v) for v in extra)), "to_memory_counters")
    names = ("in_use", "peak", "cached", "reserved", "cache_limit", "allocs", "cache_hits")
    return dict(zip(names, (v.value for v in basic + extra), strict=True))


def trim() -> None:
    """Returns every cached block to the system (and malloc's free memory, with glibc) and
    resets ``peak`` to ``in_use``."""
    check(lib().to_memory_trim(), "to_memory_trim")


def set_cache_limit(nbytes: int) -> int:
    """Caps the bytes of freed blocks kept for reuse (0 disables caching); returns the old limit.

    Cached blocks above the new limit are released at once, largest first.
    """
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"cache limit must be a non-negative int, got {nbytes!r}")
    old = memory_stats()["cache_limit"]
    check(lib().to_memory_set_cache_limit(nbytes), "to_memory_set_cache_limit")
    return old


def advise_sparse(t: Tensor) -> None:
    """Marks a CPU tensor's memory as written sparsely (a KV cache sized for a whole context):
    no transparent huge pages, so only the pages written become resident (with 2 MiB pages one
    token's keys made a huge page per head resident). Other devices: nothing to do."""
    if t.device.type == "cpu" and t.numel:
        check(lib().to_memory_advise_sparse(t.data_ptr, t.nbytes), "to_memory_advise_sparse")
