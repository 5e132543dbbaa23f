"""Causal depthwise conv1d with state (Gated DeltaNet) and vision patchify against torch/HF."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference_pio import ops
from inference_pio._native import lib
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor
from inference_pio.testing.torch_bridge import TDT, to_pio, to_torch


@pytest.fixture(params=["simd", "generic"])
def isa(request: pytest.FixtureRequest) -> object:
    if request.param == "generic":
        lib().to_set_isa_mask(0)
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


def ref_conv(x: torch.Tensor, w: torch.Tensor, state: torch.Tensor, silu: bool) -> torch.Tensor:
    """HF order: conv1d in fp32 over [state; x], rounded to x's dtype, then SiLU."""
    u = torch.cat([state.float(), x.float()], 0).t()[None]  # [1, C, K-1+T]
    y = F.conv1d(u, w.float()[:, None, :], groups=w.shape[0])[0].t()[-x.shape[0] :]
    assert y.shape[0] == x.shape[0]
    y = y.to(x.dtype)
    return F.silu(y.float()).to(x.dtype) if silu else y


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize(("t", "c", "k"), [(1, 8192, 4), (2, 33, 4), (70, 300, 4), (5, 17, 3)])
def test_causal_conv1d_with_state(dtype: DType, t: int, c: int, k: int, isa: object) -> None:
    tdt = TDT[dtype]
    x = torch.randn(t, c).to(tdt)
    w = torch.randn(c, 1, k).to(tdt)
    state0 = torch.randn(k - 1, c).to(tdt)
    st = to_pio(state0)
    y = ops.causal_conv1d(to_pio(x), to_pio(w), st, silu=True)
    ref = ref_conv(x, w[:, 0], state0, True)
    if dtype == DType.float32:
        torch.testing.assert_close(to_torch(y), ref, rtol=1e-5, atol=1e-5)
    else:  # fp32 sum order may flip a bf16 rounding: at most 1 ulp
        diff = (to_torch(y).view(torch.int16).int() - ref.view(torch.int16).int()).abs()
        assert int(diff.max()) <= 1
        assert float((diff == 0).float().mean()) > 0.97
    assert torch.equal(to_torch(st), torch.cat([state0, x], 0)[-(k - 1) :])


def test_conv1d_prefill_then_decode_matches_full() -> None:
    c, k, t = 40, 4, 9
    x = torch.randn(t, c)
    w = torch.randn(c, k)
    st = to_pio(torch.zeros(k - 1, c))
    parts = [to_torch(ops.causal_conv1d(to_pio(x[:6]), to_pio(w), st))]
    for i in range(6, t):
        parts.append(to_torch(ops.causal_conv1d(to_pio(x[i : i + 1]), to_pio(w), st)))
    full = to_torch(ops.causal_conv1d(to_pio(x), to_pio(w)))  # no state: zero history
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        full, ref_conv(x, w, torch.zeros(k - 1, c), False), rtol=1e-5, atol=1e-5
    )


def hf_patchify(img: torch.Tensor, p: int = 16, tp: int = 2, m: int = 2) -> torch.Tensor:
    c, h, w = img.shape
    patches = img[None].repeat(tp, 1, 1, 1)
    gh, gw = h // p, w // p
    patches = patches.reshape(1, tp, c, gh // m, m, p, gw // m, m, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(gh * gw, c * tp * p * p)


@pytest.mark.parametrize(("h", "w"), [(32, 32), (64, 96), (96, 32)])
def test_patchify(h: int, w: int) -> None:
    img = torch.randn(3, h, w)
    out = ops.patchify(to_pio(img))
    assert out.shape == ((h // 16) * (w // 16), 1536)
    assert torch.equal(to_torch(out), hf_patchify(img))
    out16 = ops.patchify(to_pio(img), out_dtype=DType.bfloat16)
    assert torch.equal(to_torch(out16), hf_patchify(img).bfloat16())
    small = torch.randn(2, 12, 18)
    assert torch.equal(
        to_torch(ops.patchify(to_pio(small), patch=3, temporal=1, merge=2)),
        hf_patchify(small, 3, 1, 2),
    )


def test_conv_bad_inputs() -> None:
    x = to_pio(torch.randn(3, 8))
    with pytest.raises(ValueError, match="channels"):
        ops.causal_conv1d(x, to_pio(torch.randn(7, 4)))
    with pytest.raises(ValueError, match="state"):
        ops.causal_conv1d(x, to_pio(torch.randn(8, 4)), to_pio(torch.randn(4, 8)))
    with pytest.raises(ValueError, match="contiguous"):
        ops.causal_conv1d(to_pio(torch.randn(8, 3)).transpose(0, 1), to_pio(torch.randn(8, 4)))
    ro = Tensor.frombuffer(bytes(3 * 8 * 4), DType.float32, (3, 8))
    ro.storage.readonly = True
    with pytest.raises(ValueError, match="read-only"):
        ops.causal_conv1d(x, to_pio(torch.randn(8, 4)), ro)
    with pytest.raises(ValueError, match="multiple"):
        ops.patchify(to_pio(torch.randn(3, 48, 32)))
    with pytest.raises(ValueError, match=r"empty|contiguous"):
        ops.patchify(to_pio(torch.randn(3, 0, 32)))
