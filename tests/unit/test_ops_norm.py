"""RMSNorm (three variants) and LayerNorm against torch / the HF reference modules."""

from __future__ import annotations

import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_pio import ops
from inference_pio._native import lib
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor
from inference_pio.testing.torch_bridge import rel, to_pio, to_torch


def ulp_bf16_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    ia = a.contiguous().view(torch.int16).int()
    ib = b.contiguous().view(torch.int16).int()
    return int((ia - ib).abs().max())


@pytest.fixture(params=["simd", "generic"])
def isa(request: pytest.FixtureRequest) -> object:
    if request.param == "generic":
        lib().to_set_isa_mask(0)
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


def ref_rms(
    x: torch.Tensor, w: torch.Tensor, eps: float, variant: str, z: torch.Tensor | None = None
) -> torch.Tensor:
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
    from transformers.models.qwen3_next.modeling_qwen3_next import (
        Qwen3NextRMSNorm,
        Qwen3NextRMSNormGated,
    )

    dim = x.shape[-1]
    m: torch.nn.Module
    if variant == "plain":
        m = Qwen3RMSNorm(dim, eps=eps)
    elif variant == "zero_centered":
        m = Qwen3NextRMSNorm(dim, eps=eps)
    else:
        m = Qwen3NextRMSNormGated(dim, eps=eps)
    with torch.no_grad():
        m.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
        return m(x) if z is None else m(x, gate=z)


VARIANTS = ["plain", "zero_centered", "gated"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 64), (2, 128), (4, 300), (1, 2048)])
def test_rms_norm_matches_hf(
    variant: str, dt: torch.dtype, shape: tuple[int, int], isa: object
) -> None:
    g = torch.Generator().manual_seed(zlib.crc32(repr((variant, shape)).encode()))
    x = (torch.randn(shape, generator=g) * 3).to(dt)
    w = (
        torch.randn(shape[-1], generator=g) * 0.5 + (1.0 if variant != "zero_centered" else 0.0)
    ).to(dt)
    z = torch.randn(shape, generator=g).to(dt) if variant == "gated" else None
    ref = ref_rms(x, w, 1e-6, variant, z)
    got = ops.rms_norm(
        to_pio(x),
        to_pio(w),
        1e-6,
        variant=variant,  # type: ignore[arg-type]
        gate=to_pio(z) if z is not None else None,
    )
    out = to_torch(got)
    assert out.dtype == ref.dtype
    if dt == torch.float32:
        assert rel(out, ref) < 2e-6
    else:
        # fp32 sum order differs from torch; allow one bf16 ulp on rare ties.
        assert ulp_bf16_diff(out, ref) <= 1
        assert rel(out, ref) < 4e-3


def test_rms_norm_weight_f32_with_bf16_x_and_out_dtype() -> None:
    x = torch.randn(6, 96).bfloat16()
    w = torch.randn(96)
    ref = w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    got = to_torch(ops.rms_norm(to_pio(x), to_pio(w), 1e-5, out_dtype="float32"))
    assert rel(got, ref) < 2e-6


@pytest.mark.parametrize("variant", ["plain", "zero_centered"])
def test_rms_norm_per_head_in_place_on_fused_view(variant: str, isa: object) -> None:
    T, heads, hd = 5, 3, 40
    fused = torch.randn(T, heads * hd * 2 + 17).bfloat16()
    w = (torch.randn(hd) * 0.3 + 1).bfloat16()
    buf = to_pio(fused)
    # q occupies channels [17, 17 + heads*hd) of each token, heads contiguous inside a token.
    q = Tensor(buf.storage, (T, heads, hd), DType.bfloat16, (fused.shape[1], hd, 1), 17)
    ops.rms_norm(q, to_pio(w), 1e-6, variant=variant, out=q)  # type: ignore[arg-type]
    after = to_torch(buf)
    ref = ref_rms(fused[:, 17 : 17 + heads * hd].reshape(T, heads, hd), w, 1e-6, variant)
    assert ulp_bf16_diff(after[:, 17 : 17 + heads * hd].reshape(T, heads, hd), ref) <= 1
    assert torch.equal(after[:, :17], fused[:, :17])
    assert torch.equal(after[:, 17 + heads * hd :], fused[:, 17 + heads * hd :])


def test_rms_norm_head_stride_interleaved_q_gate() -> None:
    """Per-head q of Qwen3-Next gated attention: q and gate interleaved per head."""
    T, heads, hd = 3, 4, 32
    qg = torch.randn(T, heads, 2 * hd)
    w = torch.randn(hd) * 0.1
    buf = to_pio(qg)
    q = Tensor(buf.storage, (T, heads, hd), DType.float32, (heads * 2 * hd, 2 * hd, 1), 0)
    out = ops.rms_norm(q, to_pio(w), 1e-6, variant="zero_centered")
    ref = ref_rms(qg[..., :hd], w, 1e-6, "zero_centered")
    assert rel(to_torch(out), ref) < 2e-6


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(1, 9),
    dim=st.integers(1, 200),
    variant=st.sampled_from(VARIANTS),
    bf16=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_rms_norm_simd_matches_generic(
    rows: int, dim: int, variant: str, bf16: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    dt = torch.bfloat16 if bf16 else torch.float32
    x = to_pio(torch.randn(rows, dim, generator=g).to(dt))
    w = to_pio(torch.randn(dim, generator=g).to(dt))
    z = to_pio(torch.randn(rows, dim, generator=g).to(dt)) if variant == "gated" else None
    a = to_torch(ops.rms_norm(x, w, variant=variant, gate=z))  # type: ignore[arg-type]
    lib().to_set_isa_mask(0)
    try:
        b = to_torch(ops.rms_norm(x, w, variant=variant, gate=z))  # type: ignore[arg-type]
    finally:
        lib().to_set_isa_mask(0xFFFFFFFF)
    if bf16:
        assert ulp_bf16_diff(a, b) <= 1
    else:
        assert rel(a, b) < 1e-6


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (4, 33), (3, 1024), (2, 4096), (7, 100)])
def test_layer_norm_matches_torch(dt: torch.dtype, shape: tuple[int, int], isa: object) -> None:
    g = torch.Generator().manual_seed(shape[0] * 10_000 + shape[1])
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dt)
    w = torch.randn(shape[-1], generator=g).to(dt)
    b = torch.randn(shape[-1], generator=g).to(dt)
    ref = torch.nn.functional.layer_norm(x, (shape[-1],), w, b, 1e-6)
    got = to_torch(ops.layer_norm(to_pio(x), to_pio(w), to_pio(b), 1e-6))
    if dt == torch.float32:
        assert rel(got, ref) < 5e-6
    else:
        # one bf16 ulp, except where w * x_hat + b cancels to almost nothing: there both sides
        # are the float error of that sum (~1e-7 of operands near 1), not a bf16 rounding
        tiny = ref.float().abs() < 1e-4
        assert ulp_bf16_diff(got[~tiny], ref[~tiny]) <= 1
        assert (got.float() - ref.float())[tiny].abs().max().item() <= 1e-6 if tiny.any() else True
    none = to_torch(ops.layer_norm(to_pio(x), None, None, 1e-6))
    assert rel(none, torch.nn.functional.layer_norm(x.float(), (shape[-1],), eps=1e-6)) < 1e-2


def test_norm_bad_inputs_raise() -> None:
    x = to_pio(torch.randn(4, 8))
    w = to_pio(torch.ones(8))
    with pytest.raises(ValueError, match="weight\\ has\\ shape"):
        ops.rms_norm(x, to_pio(torch.ones(7)))
    with pytest.raises(TypeError):
        ops.rms_norm(to_pio(torch.ones(4, 8, dtype=torch.int32)), w)
    with pytest.raises(ValueError, match="variant"):
        ops.rms_norm(x, w, variant="gated")
    with pytest.raises(ValueError, match="unknown\\ variant"):
        ops.rms_norm(x, w, variant="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x\\ is\\ empty"):
        ops.rms_norm(to_pio(torch.randn(0, 8)), w)
    with pytest.raises(ValueError, match="the\\ last\\ dim\\ must\\ be\\ contiguou"):
        ops.rms_norm(x.transpose(0, 1), to_pio(torch.ones(4)))
    with pytest.raises(ValueError, match="out\\ has\\ shape"):
        ops.rms_norm(x, w, out=to_pio(torch.randn(4, 9)))
    ro = Tensor.frombuffer(bytes(32 * 4), DType.float32, (4, 8))
    ro.storage.readonly = True
    with pytest.raises(ValueError, match="out\\ is\\ read\\-only"):
        ops.rms_norm(x, w, out=ro)
    with pytest.raises(ValueError, match="eps\\ must\\ be\\ >=\\ 0,\\ got\\ \\-1\\.0"):
        ops.rms_norm(x, w, -1.0)
    with pytest.raises(TypeError):
        ops.rms_norm(x, w, gate=None, out_dtype="int32")
    with pytest.raises(ValueError, match="weight\\ has\\ shape"):
        ops.layer_norm(x, to_pio(torch.ones(3)), None)
    with pytest.raises(TypeError):
        ops.layer_norm(x, to_pio(torch.ones(8)), to_pio(torch.ones(8).bfloat16()))
    with pytest.raises(TypeError):
        ops.layer_norm("x", None, None)  # type: ignore[arg-type]
