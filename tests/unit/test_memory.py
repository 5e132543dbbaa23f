"""The native pool allocator: statistics, caching, the cache limit, trim, misuse, threads."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from inference_pio import NativeError
from inference_pio._native import check, lib
from inference_pio.dtypes import DType
from inference_pio.memory import memory_stats, set_cache_limit, trim
from inference_pio.tensor import Tensor
from inference_pio.tensor import memory_stats as tensor_memory_stats


def alloc(n: int) -> int:
    out = ctypes.c_void_p()
    check(lib().to_alloc(n, ctypes.byref(out)), "to_alloc")
    assert out.value
    return out.value


def free(ptr: int) -> None:
    check(lib().to_free(ptr), "to_free")


@pytest.fixture(autouse=True)
def clean_pool() -> Iterator[None]:
    old = set_cache_limit(64 << 20)
    trim()
    yield
    set_cache_limit(old)
    trim()


def test_stats_follow_allocations() -> None:
    base = memory_stats()
    assert base["cached"] == 0
    t = Tensor.empty((1000,), "float32")
    s = memory_stats()
    assert s["in_use"] - base["in_use"] == 4000
    assert s["peak"] >= s["in_use"]
    assert s["reserved"] - base["reserved"] == 4096  # 4000 + 64-byte header -> 4 KiB class
    assert tensor_memory_stats() == {k: s[k] for k in ("in_use", "peak", "cached")}
    del t
    s2 = memory_stats()
    assert s2["in_use"] == base["in_use"]
    assert s2["cached"] == 4096
    assert s2["peak"] == s["peak"]
    # same class again: served from the cache, nothing new from the system
    t = Tensor.empty((900,), "float32")
    s3 = memory_stats()
    assert s3["cache_hits"] == s2["cache_hits"] + 1
    assert s3["allocs"] == s2["allocs"] + 1
    assert s3["cached"] == 0
    assert s3["reserved"] == s2["reserved"]
    del t
    trim()
    s4 = memory_stats()
    assert s4["cached"] == 0
    assert s4["reserved"] == base["reserved"]
    assert s4["peak"] == s4["in_use"]


def test_cache_limit_caps_cached_bytes() -> None:
    set_cache_limit(1 << 20)
    big = alloc(3 << 20)  # larger than the limit: released on free, never cached
    before = memory_stats()
    free(big)
    after = memory_stats()
    assert after["cached"] == 0
    assert before["reserved"] - after["reserved"] >= 3 << 20
    ptrs = [alloc(100_000) for _ in range(20)]  # 128 KiB class each
    for p in ptrs:
        free(p)
    s = memory_stats()
    assert s["cached"] <= 1 << 20
    assert s["cached"] == 8 * (128 << 10)
    assert set_cache_limit(200_000) == 1 << 20  # shrinking releases the excess now
    assert memory_stats()["cached"] <= 200_000
    set_cache_limit(0)
    assert memory_stats()["cached"] == 0
    p = alloc(10)
    free(p)
    assert memory_stats()["cached"] == 0
    with pytest.raises(ValueError, match="non-negative"):
        set_cache_limit(-1)
    assert lib().to_memory_set_cache_limit(-5) != 0


def test_large_classes_waste_at_most_a_quarter() -> None:
    for n in (1 << 20, (1 << 20) + 1, 5_000_000, 33_554_433, 123_456_789):
        before = memory_stats()["reserved"]
        p = alloc(n)
        got = memory_stats()["reserved"] - before
        assert n + 64 <= got <= 1.25 * (n + 64) + 64, (n, got)
        free(p)
        trim()


def test_alignment_zero_size_and_uniqueness() -> None:
    ptrs = [alloc(n) for n in (0, 0, 1, 63, 64, 65, 4096, 100_000)]
    assert all(p % 64 == 0 for p in ptrs)
    assert len(set(ptrs)) == len(ptrs)
    ctypes.memset(ptrs[-1], 0xAB, 100_000)  # the whole requested size is writable
    for p in ptrs:
        free(p)
    free(0)  # NULL is ignored


def test_misuse_is_reported_not_fatal() -> None:
    L = lib()
    p = alloc(256)
    free(p)
    with pytest.raises(NativeError, match="freed twice"):
        check(L.to_free(p), "to_free")
    with pytest.raises(NativeError, match="misaligned"):
        check(L.to_free(p + 8), "to_free")
    buf = ctypes.create_string_buffer(512)
    aligned = (ctypes.addressof(buf) + 64 + 63) // 64 * 64
    with pytest.raises(NativeError, match="not allocated by to_alloc"):
        check(L.to_free(aligned), "to_free")
    out = ctypes.c_void_p(1)
    for size in (2**63, 2**64 - 1, 2**64 - 32):
        assert L.to_alloc(size, ctypes.byref(out)) == 4  # TO_ERR_OUT_OF_MEMORY
        assert out.value is None
    assert L.to_alloc(16, None) == 1


def test_threads_keep_counters_consistent() -> None:
    base = memory_stats()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            held: list[int] = []
            for i in range(400):
                held.append(alloc((seed * 977 + i * 131) % 20_000))
                if len(held) > 8:
                    free(held.pop(i % len(held)))
            for p in held:
                free(p)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = memory_stats()
    assert s["in_use"] == base["in_use"]
    assert s["allocs"] - base["allocs"] == 1600
    assert s["cached"] <= s["cache_limit"]
    assert s["reserved"] - base["reserved"] == s["cached"] - base["cached"]


@pytest.mark.parametrize("shape", [(2**62 + 4,), (2**32, 2**32), (2**31, 2**31, 4)])
def test_sizes_that_overflow_size_t_are_refused(shape: tuple[int, ...]) -> None:
    """A byte count of 2**64 or more would wrap in the C allocator's size_t (a tiny block for a
    huge tensor): refused before the call."""
    with pytest.raises(ValueError, match="cannot allocate"):
        Tensor.empty(shape, "float32")


def _vm_flags_of(ptr: int) -> list[str]:
    import re

    with open("/proc/self/smaps") as f:
        smaps = f.read()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):
        lo, hi = (int(x, 16) for x in block.split()[0].split("-"))
        if lo <= ptr < hi:
            line = next(x for x in block.splitlines() if x.startswith("VmFlags:"))
            return line.split()[1:]
    return []


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_kv_caches_ask_for_no_huge_pages() -> None:
    """A KV cache sized for a whole context is written a position at a time: with 2 MiB pages a
    single token made one huge page per head and layer resident (784 MB for Qwen3-0.6B at a
    40960-token capacity); the cache's memory is advised MADV_NOHUGEPAGE ("nh")."""
    from inference_pio.device import CPU
    from inference_pio.nn.attention import KVCache

    cache = KVCache(8, 8192, 128, DType.bfloat16, CPU)  # 16 MiB a tensor
    assert "nh" in _vm_flags_of(cache.k.data_ptr + (4 << 20))
    assert "nh" in _vm_flags_of(cache.v.data_ptr + (4 << 20))


def test_a_checkpoint_larger_than_memory_warns(tmp_path: Any, monkeypatch: Any) -> None:
    """The loader maps weights without copying, so a checkpoint larger than the machine's
    memory loads fine and then reads the disk every token: load_model says so."""
    from inference_pio import loading

    (tmp_path / "model-00001.safetensors").write_bytes(b"\0" * 4096)
    monkeypatch.setattr(loading, "memory_total_bytes", lambda: 1024)
    with pytest.warns(RuntimeWarning, match="exceed this machine's memory"):
        loading.warn_if_larger_than_memory(tmp_path)
    monkeypatch.setattr(loading, "memory_total_bytes", lambda: 1 << 40)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loading.warn_if_larger_than_memory(tmp_path)
