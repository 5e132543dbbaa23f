"""argmax, top-k, cumsum, where and embedding lookup against torch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_pio import ops
from inference_pio._native import lib
from inference_pio.testing.torch_bridge import PDT, to_pio, to_torch


@pytest.fixture(params=["simd", "generic"])
def isa(request: pytest.FixtureRequest) -> object:
    if request.param == "generic":
        lib().to_set_isa_mask(0)
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 17), (4, 1000), (1, 151936)])
def test_argmax_matches_torch(dt: torch.dtype, shape: tuple[int, int], isa: object) -> None:
    x = torch.randn(shape).to(dt)
    if shape[-1] > 10:  # ties: torch returns the first index of the max
        x[0, 5] = x[0, 9] = 50.0
    got = to_torch(ops.argmax(to_pio(x)))
    assert torch.equal(got, torch.argmax(x, -1))
    got32 = to_torch(ops.argmax(to_pio(x), "int32"))
    assert torch.equal(got32.long(), torch.argmax(x, -1))


def test_argmax_nan_and_inf(isa: object) -> None:
    x = torch.randn(3, 40)
    x[0, 7] = float("nan")
    x[0, 20] = float("nan")
    x[1, :] = float("-inf")
    x[2, 33] = float("inf")
    assert torch.equal(to_torch(ops.argmax(to_pio(x))), torch.argmax(x, -1))


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("dim", "k"), [(1, 1), (10, 3), (64, 64), (1000, 50), (151936, 300)])
def test_topk_matches_torch_on_distinct_values(dt: torch.dtype, dim: int, k: int) -> None:
    rows = 2 if dim < 100000 else 1
    # distinct values (also after bf16 rounding): a permutation of a grid exactly representable
    base = torch.arange(dim, dtype=torch.float32)
    if dt == torch.bfloat16:
        base = base % 256 + (base // 256) * 1024  # still distinct? use exponent spread instead
        base = torch.tensor([float(v) for v in range(dim)]) if dim <= 256 else base
    x = torch.stack([base[torch.randperm(dim)] for _ in range(rows)]).to(dt)
    if dt == torch.bfloat16 and dim > 256:
        x = torch.stack([torch.randn(dim) for _ in range(rows)]).to(dt)
    vals, idx = ops.topk(to_pio(x), k)
    rv, ri = torch.topk(x, k, dim=-1)
    tv, ti = to_torch(vals), to_torch(idx)
    assert torch.equal(tv, rv)
    # duplicate bf16 values: torch's order among ties is unspecified, check gathered values
    assert torch.equal(torch.gather(x, -1, ti), rv)
    if len(set(x[0].float().tolist())) == dim:
        assert torch.equal(ti, ri)


def test_topk_ties_lower_index_first() -> None:
    x = torch.tensor([[1.0, 3.0, 2.0, 3.0, 3.0, 0.5]])
    v, i = ops.topk(to_pio(x), 4, "int32")
    assert to_torch(v).tolist() == [[3.0, 3.0, 3.0, 2.0]]
    assert to_torch(i).tolist() == [[1, 3, 4, 2]]


@pytest.mark.parametrize("xdt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("odt", [torch.float32, torch.bfloat16])
def test_cumsum(xdt: torch.dtype, odt: torch.dtype) -> None:
    x = torch.rand(3, 257).to(xdt)
    ref = torch.cumsum(x.float(), -1).to(odt)
    got = to_torch(ops.cumsum(to_pio(x), out_dtype=PDT[odt]))
    assert torch.allclose(got.float(), ref.float(), rtol=1e-5 if odt == torch.float32 else 8e-3)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16, torch.int64, torch.uint8])
def test_where(dt: torch.dtype) -> None:
    m = torch.rand(5, 33) > 0.5
    a = (torch.randn(5, 33) * 100).to(dt)
    b = (torch.randn(5, 33) * 100).to(dt)
    assert torch.equal(to_torch(ops.where(to_pio(m), to_pio(a), to_pio(b))), torch.where(m, a, b))
    assert torch.equal(
        to_torch(ops.where(to_pio(m.to(torch.uint8)), to_pio(a), to_pio(b))), torch.where(m, a, b)
    )


@pytest.mark.parametrize("tdt", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("odt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("idt", [torch.int32, torch.int64])
def test_embedding(tdt: torch.dtype, odt: torch.dtype, idt: torch.dtype) -> None:
    table = torch.randn(100, 24).to(tdt)
    ids = torch.tensor([[0, 99, 5], [5, 7, 42]], dtype=idt)
    ref = torch.nn.functional.embedding(ids.long(), table).to(odt)
    got = to_torch(ops.embedding(to_pio(ids), to_pio(table), PDT[odt]))
    assert got.shape == (2, 3, 24)
    assert torch.equal(got, ref)


def test_embedding_rejects_out_of_range_ids() -> None:
    table = to_pio(torch.randn(10, 4))
    with pytest.raises(ValueError, match=r"id 10 at position 2"):
        ops.embedding(to_pio(torch.tensor([1, 2, 10])), table)
    with pytest.raises(ValueError, match=r"id -1"):
        ops.embedding(to_pio(torch.tensor([-1], dtype=torch.int32)), table)


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(1, 3),
    dim=st.integers(1, 300),
    bf16=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_argmax_simd_matches_generic(rows: int, dim: int, bf16: bool, seed: int) -> None:
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    x = to_pio(x.to(torch.bfloat16) if bf16 else x)
    a = to_torch(ops.argmax(x))
    lib().to_set_isa_mask(0)
    try:
        b = to_torch(ops.argmax(x))
    finally:
        lib().to_set_isa_mask(0xFFFFFFFF)
    assert torch.equal(a, b)


def test_select_bad_inputs_raise() -> None:
    x = to_pio(torch.randn(3, 8))
    with pytest.raises(ValueError, match="k\\ must\\ be\\ an\\ int\\ in"):
        ops.topk(x, 0)
    with pytest.raises(ValueError, match="k\\ must\\ be\\ an\\ int\\ in"):
        ops.topk(x, 9)
    with pytest.raises(TypeError):
        ops.argmax(x, "float32")
    with pytest.raises(ValueError, match="x is empty"):
        ops.argmax(to_pio(torch.randn(3, 0)))
    nan = torch.randn(2, 5)
    nan[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        ops.topk(to_pio(nan), 2)
    with pytest.raises(ValueError, match="shapes\\ differ"):
        ops.where(to_pio(torch.ones(3, 8, dtype=torch.bool)), x, to_pio(torch.randn(3, 7)))
    with pytest.raises(TypeError):
        ops.where(to_pio(torch.ones(3, 8)), x, x)
    with pytest.raises(TypeError):
        ops.embedding(to_pio(torch.ones(3)), x)
    with pytest.raises(TypeError):
        ops.cumsum(to_pio(torch.arange(4)))
