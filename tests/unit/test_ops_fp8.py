"""FP8 block-scaled weights (ops.quant) against torch.

dequantize_fp8: bitwise torch's ``w8.to(float32) * scale`` expanded over the blocks for float32
out (NaN bytes included, compared as bits), torch's rounding of that product for bf16 / f16.
"""

from __future__ import annotations

import pytest
import torch

from inference_pio import NativeError, ops
from inference_pio._native import check, lib
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor
from inference_pio.testing.torch_bridge import TDT, to_pio, to_torch


def expand(scale: torch.Tensor, n: int, k: int, block: tuple[int, int]) -> torch.Tensor:
    bn, bk = block
    return scale.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:n, :k]


def reference(w8: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    n, k = w8.shape
    return w8.to(torch.float32) * expand(scale, n, k, block)


def random_fp8(
    n: int, k: int, block: tuple[int, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every byte value equally likely (NaNs and subnormals included), scales over decades."""
    g = torch.Generator().manual_seed(seed)
    w8 = torch.randint(0, 256, (n, k), generator=g, dtype=torch.uint8).view(torch.float8_e4m3fn)
    sn, sk = -(-n // block[0]), -(-k // block[1])
    scale = torch.exp2(torch.randint(-20, 10, (sn, sk), generator=g).float()) * (
        1 + torch.rand(sn, sk, generator=g)
    )
    return w8, scale


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    view = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    return torch.equal(a.view(view[a.dtype]), b.view(view[b.dtype]))


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, with NaN where the other has NaN (bf16/f16: torch's NaN payload is canonical)."""
    nan = torch.isnan(b)
    return torch.equal(torch.isnan(a), nan) and torch.equal(a[~nan], b[~nan])


@pytest.fixture
def threads() -> object:
    saved = lib().to_get_num_threads()
    yield
    lib().to_set_num_threads(saved)


def test_every_byte_value_decodes_like_torch() -> None:
    w8 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).reshape(16, 16)
    scale = torch.ones(1, 1)
    out = to_torch(ops.dequantize_fp8(to_pio(w8), to_pio(scale), (16, 16), DType.float32))
    ref = reference(w8, scale, (16, 16))
    assert same_bits(out, ref)
    assert torch.isnan(out).sum() == 2  # 0x7f and 0xff
    # subnormals (exponent bits 0) and the largest finite value
    flat = out.flatten()
    assert flat[1].item() == 2.0**-9
    assert flat[7].item() == 7 * 2.0**-9
    assert flat[0x7E].item() == 448.0
    assert flat[0xFE].item() == -448.0


@pytest.mark.parametrize(
    ("n", "k", "block"),
    [
        (1, 1, (128, 128)),
        (7, 13, (128, 128)),
        (130, 257, (128, 128)),  # partial edge blocks in both dims
        (256, 384, (128, 128)),
        (33, 70, (16, 32)),
        (31, 29, (3, 5)),
        (64, 64, (1, 1)),
        (5, 300, (2, 256)),
    ],
)
@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16, DType.float16])
def test_dequant_vs_torch(n: int, k: int, block: tuple[int, int], dtype: DType) -> None:
    w8, scale = random_fp8(n, k, block, seed=n * 1000 + k)
    out = to_torch(ops.dequantize_fp8(to_pio(w8), to_pio(scale), block, dtype))
    ref = reference(w8, scale, block)
    assert out.dtype == TDT[dtype]
    if dtype == DType.float32:
        assert same_bits(out, ref)
    else:
        assert same_values(out, ref.to(TDT[dtype]))


def test_dequant_bits_do_not_depend_on_threads(threads: object) -> None:
    w8, scale = random_fp8(300, 700, (128, 128), seed=3)
    outs = []
    for t in (1, 2, 3):
        lib().to_set_num_threads(t)
        outs.append(to_torch(ops.dequantize_fp8(to_pio(w8), to_pio(scale), dtype="bfloat16")))
    assert same_bits(outs[0], outs[1])
    assert same_bits(outs[0], outs[2])


def test_dequant_special_scales() -> None:
    w8 = torch.tensor([[0x00, 0x08, 0x80, 0x7E]], dtype=torch.uint8).view(torch.float8_e4m3fn)
    for s in (float("inf"), float("nan"), 0.0, -1.5, 3e38):
        scale = torch.tensor([[s]])
        out = to_torch(ops.dequantize_fp8(to_pio(w8), to_pio(scale), (1, 4), DType.float32))
        assert same_values(out, reference(w8, scale, (1, 4)))


def test_dequant_empty() -> None:
    w = Tensor.empty((0, 5), DType.float8_e4m3)
    s = Tensor.empty((0, 1), DType.float32)
    assert ops.dequantize_fp8(w, s).shape == (0, 5)


def test_dequant_validation() -> None:
    w8, scale = random_fp8(130, 200, (128, 128), seed=1)
    w, s = to_pio(w8), to_pio(scale)
    with pytest.raises(ValueError, match=r"expected \(2, 2\)"):
        ops.dequantize_fp8(w, to_pio(scale[:1]))
    with pytest.raises(ValueError, match=r"expected \(3, 4\)"):
        ops.dequantize_fp8(w, s, block=(64, 64))
    with pytest.raises(TypeError, match="float8_e4m3"):
        ops.dequantize_fp8(to_pio(w8.view(torch.uint8)), s)
    with pytest.raises(TypeError, match="float32"):
        ops.dequantize_fp8(w, to_pio(scale.to(torch.bfloat16)))
    with pytest.raises(ValueError, match="dims"):
        ops.dequantize_fp8(to_pio(w8.flatten()), s)
    with pytest.raises(ValueError, match="contiguous"):
        ops.dequantize_fp8(w.transpose(0, 1), to_pio(scale.t().contiguous()))
    with pytest.raises(ValueError, match="block sizes"):
        ops.dequantize_fp8(w, s, block=(0, 128))
    with pytest.raises(TypeError, match="block"):
        ops.dequantize_fp8(w, s, block=[128, 128])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not supported"):
        ops.dequantize_fp8(w, s, dtype=DType.int32)


def test_dequant_c_errors() -> None:
    f = lib().to_fp8_dequant
    buf = Tensor.empty((4,), DType.float32)
    p = buf.data_ptr
    assert f(p, p, 2, 2, 0, 1, p, 0) != 0
    assert b"block sizes" in lib().to_last_error()
    assert f(p, p, -1, 2, 1, 1, p, 0) != 0
    assert f(p, p, 2, 2, 1, 1, p, 4) != 0  # int64 out
    assert f(None, p, 2, 2, 1, 1, p, 0) != 0
    assert f(p, None, 2, 2, 1, 1, p, 0) != 0
    assert f(p, p, 2, 2, 1, 1, None, 0) != 0
    assert f(None, None, 0, 2, 1, 1, None, 0) == 0  # empty: nothing to read or write
    rc = f(p, p, 2, 2, 0, 1, p, 0)
    with pytest.raises(NativeError, match="block sizes"):
        check(rc, "to_fp8_dequant")
