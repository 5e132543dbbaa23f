"""Copying one sequence's cache into another (LayerCache.copy_into): what the BatchManager does
to move a lone sequence to the batch-1 graph decoder and back. Key / value caches and latent
rows copy their first ``length`` positions of every head, recurrent states copy whole; anything
that does not match is refused before a byte moves."""

from __future__ import annotations

import random

import pytest

from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.nn.attention import KVCache, copy_positions
from inference_pio.nn.decoder import LayerCache
from inference_pio.nn.deltanet import RecurrentState
from inference_pio.nn.mla import LatentCache
from inference_pio.tensor import Tensor

CPU = Device.parse("cpu")


def _fill(t: Tensor, seed: int) -> None:
    rng = random.Random(seed)
    vals = [rng.uniform(-4, 4) for _ in range(t.numel)]
    t.copy_(Tensor.from_list(vals, DType.float32).to(t.dtype).reshape(t.shape))


def _heads(t: Tensor, n: int) -> list[list[list[float]]]:
    """The first n positions of every head of t [heads, capacity, width]."""
    return [head[:n] for head in t.to(DType.float32).tolist()]


def _caches(capacity: int, dtype: DType, seed: int) -> LayerCache:
    kv = KVCache(3, capacity, 8, dtype, CPU)
    lat = LatentCache(capacity, 12, dtype, CPU)
    rec = RecurrentState(32, 4, (2, 4, 8), dtype, CPU, capacity)
    for i, t in enumerate([kv.k, kv.v, lat.k, rec.conv, rec.ssm]):
        _fill(t, seed * 10 + i)
    return LayerCache([kv, lat, rec], capacity)  # type: ignore[list-item]


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize(("cap_src", "cap_dst", "length"), [(16, 64, 11), (64, 16, 16), (8, 8, 0)])
def test_copy_into_copies_what_the_cache_holds(
    dtype: DType, cap_src: int, cap_dst: int, length: int
) -> None:
    src, dst = _caches(cap_src, dtype, 1), _caches(cap_dst, dtype, 2)
    src.length, src.position_offset = length, -3
    (kv_d, lat_d, rec_d) = dst.layers
    kv_tail = [head[length:] for head in kv_d.k.to(DType.float32).tolist()]
    src.copy_into(dst)
    assert (dst.length, dst.position_offset) == (length, -3)
    kv_s, lat_s, rec_s = src.layers
    for a, b in ((kv_s.k, kv_d.k), (kv_s.v, kv_d.v), (lat_s.k, lat_d.k)):  # type: ignore[attr-defined]
        assert _heads(b, length) == _heads(a, length)
    assert lat_d.v is lat_d.k  # type: ignore[attr-defined]
    # positions past the length are not written
    assert [head[length:] for head in kv_d.k.to(DType.float32).tolist()] == kv_tail  # type: ignore[attr-defined]
    for a, b in ((rec_s.conv, rec_d.conv), (rec_s.ssm, rec_d.ssm)):  # type: ignore[attr-defined]
        assert b.tolist() == a.tolist()


def test_what_does_not_match_is_refused() -> None:
    src, dst = _caches(16, DType.float32, 1), _caches(8, DType.float32, 2)
    src.length = 9
    with pytest.raises(ValueError, match="do not fit"):
        src.copy_into(dst)
    swapped = LayerCache(list(reversed(dst.layers)), 8)
    src.length = 4
    assert not src.copyable_to(swapped)
    with pytest.raises(ValueError, match="do not match"):
        src.copy_into(swapped)
    narrow = LayerCache(
        [KVCache(3, 8, 4, DType.float32, CPU), *dst.layers[1:]],  # head_dim 4, not 8
        8,
    )
    with pytest.raises(ValueError, match="copy_positions"):
        src.copy_into(narrow)
    other_dtype = _caches(16, DType.bfloat16, 3)
    with pytest.raises(ValueError, match="bfloat16"):
        src.copy_into(other_dtype)


def test_a_cache_without_copy_to_is_not_copyable() -> None:
    """A plugin's own layer cache opts in by defining copy_to; without it the BatchManager keeps
    the sequence where it is."""

    class Own:
        pass

    a, b = LayerCache([Own()], 4), LayerCache([Own()], 4)  # type: ignore[list-item]
    assert not a.copyable_to(b)
    with pytest.raises(ValueError, match="cannot be copied"):
        a.copy_into(b)


def test_copy_positions_checks_its_bounds() -> None:
    s = Tensor.zeros((2, 4, 3), DType.float32)
    d = Tensor.zeros((2, 6, 3), DType.float32)
    with pytest.raises(ValueError, match="5 positions"):
        copy_positions(s, d, 5)
    with pytest.raises(ValueError, match="3 dims"):
        copy_positions(s.reshape(8, 3), d, 1)
    with pytest.raises(ValueError, match="into"):
        copy_positions(s, Tensor.zeros((3, 6, 3), DType.float32), 1)
