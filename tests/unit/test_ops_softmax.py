"""Softmax / log-softmax against torch (fp32 math, f32/bf16 in and out)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_pio import ops
from inference_pio._native import lib
from inference_pio.testing.torch_bridge import PDT, to_pio, to_torch


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.view(torch.int16).int() - b.view(torch.int16).int()).abs().max())


@pytest.fixture(params=["simd", "generic"])
def isa(request: pytest.FixtureRequest) -> object:
    if request.param == "generic":
        lib().to_set_isa_mask(0)
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("xdt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("odt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 64), (4, 129), (1, 151936)])
def test_softmax_matches_torch(
    log: bool, xdt: torch.dtype, odt: torch.dtype, shape: tuple[int, int], isa: object
) -> None:
    x = (torch.randn(shape) * 5).to(xdt)
    fn = torch.log_softmax if log else torch.softmax
    ref = fn(x.float(), dim=-1).to(odt)
    ours = ops.log_softmax if log else ops.softmax
    got = to_torch(ours(to_pio(x), out_dtype=PDT[odt]))
    if odt == torch.float32:
        # against fp64 math: torch's own fp32 sum drifts ~1e-5 over a 150k vocabulary
        ref64 = fn(x.double(), dim=-1)
        assert torch.allclose(got.double(), ref64, rtol=1e-5, atol=1e-6 if log else 1e-12)
    else:
        assert ulps(got, ref) <= 1


def test_softmax_strided_rows_in_place_and_masked() -> None:
    x = torch.randn(4, 50)
    x[:, 10] = float("-inf")
    buf = to_pio(x)
    view = buf.narrow(1, 0, 40)  # row stride 50
    ops.softmax(view, out=view)
    got = to_torch(buf)
    assert torch.allclose(got[:, :40], torch.softmax(x[:, :40], -1), rtol=1e-5, atol=1e-9)
    assert float(got[:, 10].abs().max()) == 0.0
    assert torch.equal(got[:, 40:], x[:, 40:])


def test_softmax_nan_propagates() -> None:
    x = torch.randn(2, 40)
    x[1, 3] = float("nan")
    got = to_torch(ops.softmax(to_pio(x)))
    assert not bool(got[0].isnan().any())
    assert bool(got[1].isnan().all())


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(1, 4),
    dim=st.integers(1, 300),
    log=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_softmax_simd_matches_generic(rows: int, dim: int, log: bool, seed: int) -> None:
    x = to_pio(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)) * 4)
    f = ops.log_softmax if log else ops.softmax
    a = to_torch(f(x))
    lib().to_set_isa_mask(0)
    try:
        b = to_torch(f(x))
    finally:
        lib().to_set_isa_mask(0xFFFFFFFF)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_softmax_bad_inputs_raise() -> None:
    with pytest.raises(TypeError):
        ops.softmax(to_pio(torch.arange(6)))
    with pytest.raises(ValueError, match="x\\ is\\ empty"):
        ops.softmax(to_pio(torch.randn(0, 5)))
    with pytest.raises(ValueError, match="the\\ last\\ dim\\ must\\ be\\ contiguou"):
        ops.softmax(to_pio(torch.randn(4, 5)).transpose(0, 1))
    with pytest.raises(TypeError):
        ops.softmax(to_pio(torch.randn(4, 5)), out_dtype="int32")
    with pytest.raises(ValueError, match="out\\ has\\ shape"):
        ops.softmax(to_pio(torch.randn(4, 5)), out=to_pio(torch.randn(4, 6)))
