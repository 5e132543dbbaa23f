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
from inference_pio.testing.fp8 import expand_scales, random_fp8_weight
from inference_pio.testing.torch_bridge import TDT, to_pio, to_torch


def reference(w8: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    n, k = w8.shape
    return w8.to(torch.float32) * expand_scales(scale, n, k, block)


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


# ---- linear_fp8 ---------------------------------------------------------------------------------
FULL = 0xFFFFFFFF
AVX2 = (1 << 0) | (1 << 1) | (1 << 2)
AVX512 = AVX2 | (1 << 3) | (1 << 4) | (1 << 5)
AVX512_BF16 = AVX512 | (1 << 6)  # without VBMI: bf16 panels, the f32 gemv on widened x
ISAS = {"generic": 0, "avx2": AVX2, "avx512": AVX512, "avx512bf16": AVX512_BF16, "best": FULL}


@pytest.fixture
def restore() -> object:
    saved = lib().to_get_num_threads()
    yield
    lib().to_set_isa_mask(FULL)
    lib().to_set_num_threads(saved)


SHAPES = [
    (1, 5, 7, (128, 128)),
    (1, 130, 257, (128, 128)),  # partial blocks
    (3, 67, 300, (16, 32)),
    (1, 33, 70, (3, 5)),  # odd block_n: the two rows of a kernel's pair have different scales
    (2, 9, 40, (1, 8)),
    (4, 256, 512, (128, 128)),
    (5, 33, 129, (3, 5)),
    (16, 64, 1000, (128, 128)),
    (33, 130, 257, (64, 128)),
    (100, 9, 70, (1, 1)),
    (2, 70, 200, (32, 64)),  # the table gemv (block_k % 64 == 0) with a partial last chunk
    (1, 5, 4096, (128, 128)),
]


@pytest.mark.parametrize("isa", ["best", "avx512bf16", "avx512", "avx2", "generic"])
@pytest.mark.parametrize(
    ("xd", "yd"),
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
    ],
)
def test_linear_fp8_vs_torch(restore: object, isa: str, xd: torch.dtype, yd: torch.dtype) -> None:
    lib().to_set_isa_mask(ISAS[isa])
    for i, (m, n, k, block) in enumerate(SHAPES):
        w8, scale = random_fp8_weight(n, k, block, seed=i)
        g = torch.Generator().manual_seed(100 + i)
        x = torch.randn(m, k, generator=g).to(xd)
        bias = torch.randn(n, generator=g).to(torch.bfloat16) if i % 2 else None
        ref = torch.nn.functional.linear(
            x.double(),
            reference(w8, scale, block).double(),
            None if bias is None else bias.double(),
        )
        y = ops.linear_fp8(
            to_pio(x),
            to_pio(w8),
            to_pio(scale),
            None if bias is None else to_pio(bias),
            block=block,
            out_dtype=DType.float32 if yd == torch.float32 else DType.bfloat16,
        )
        out = to_torch(y)
        assert out.dtype == yd
        err = float((out.double() - ref).norm() / ref.norm())
        assert err < (1e-5 if yd == torch.float32 else 1e-2), (isa, m, n, k, block, err)


def test_linear_fp8_matches_dequant_then_linear(restore: object) -> None:
    """Against the existing f32 linear on the dequantized weight (a different summation order)."""
    w8, scale = random_fp8_weight(300, 700, (128, 128), seed=7)
    x = torch.randn(20, 700).to(torch.bfloat16)
    wf = ops.dequantize_fp8(to_pio(w8), to_pio(scale), dtype=DType.float32)
    ref = to_torch(ops.linear(to_pio(x), wf, out_dtype=DType.float32))
    out = to_torch(ops.linear_fp8(to_pio(x), to_pio(w8), to_pio(scale), out_dtype=DType.float32))
    assert float((out - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize("m", [1, 4, 16, 130])
def test_linear_fp8_bits_do_not_depend_on_threads(restore: object, m: int) -> None:
    w8, scale = random_fp8_weight(301, 520, (128, 128), seed=m)
    x = to_pio(torch.randn(m, 520).to(torch.bfloat16))
    w, s = to_pio(w8), to_pio(scale)
    outs = []
    for t in (1, 2, 3):
        lib().to_set_num_threads(t)
        outs.append(to_torch(ops.linear_fp8(x, w, s, out_dtype=DType.float32)))
    assert same_bits(outs[0], outs[1])
    assert same_bits(outs[0], outs[2])


@pytest.mark.parametrize("isa", ["best", "avx512bf16", "avx512", "avx2", "generic"])
def test_linear_fp8_nan_weight_gives_nan_on_every_kernel(restore: object, isa: str) -> None:
    lib().to_set_isa_mask(ISAS[isa])
    w8, scale = random_fp8_weight(8, 200, (128, 128), seed=1)
    raw = w8.view(torch.uint8).clone()
    raw[3, 150] = 0x7F
    raw[5, 7] = 0xFF
    for m in (1, 6):
        x = torch.randn(m, 200).to(torch.bfloat16)
        out = to_torch(
            ops.linear_fp8(to_pio(x), to_pio(raw.view(torch.float8_e4m3fn)), to_pio(scale))
        )
        nan_cols = torch.isnan(out).all(0)
        assert nan_cols.tolist() == [j in (3, 5) for j in range(8)]
        assert not torch.isnan(out[:, [0, 1, 2, 4, 6, 7]]).any()


def test_linear_fp8_strided_rows_and_out() -> None:
    w8, scale = random_fp8_weight(40, 64, (32, 32), seed=2)
    base = torch.randn(6, 100).to(torch.bfloat16)
    x = to_pio(base).narrow(1, 10, 64)  # rows 100 apart
    buf = Tensor.zeros((6, 50), DType.float32)
    out = buf.narrow(1, 5, 40)
    ops.linear_fp8(x, to_pio(w8), to_pio(scale), block=(32, 32), out=out)
    ref = base[:, 10:74].double() @ reference(w8, scale, (32, 32)).double().T
    got = to_torch(buf)
    assert float((got[:, 5:45].double() - ref).norm() / ref.norm()) < 1e-5
    assert not got[:, :5].any()
    assert not got[:, 45:].any()


def test_linear_fp8_validation() -> None:
    w8, scale = random_fp8_weight(40, 64, (128, 128), seed=3)
    w, s = to_pio(w8), to_pio(scale)
    x = to_pio(torch.randn(2, 64))
    with pytest.raises(ValueError, match="features"):
        ops.linear_fp8(to_pio(torch.randn(2, 63)), w, s)
    with pytest.raises(ValueError, match=r"expected \(2, 1\)"):
        ops.linear_fp8(x, w, s, block=(32, 128))
    with pytest.raises(TypeError, match="float8_e4m3"):
        ops.linear_fp8(x, to_pio(torch.randn(40, 64)), s)
    with pytest.raises(ValueError, match="bias has shape"):
        ops.linear_fp8(x, w, s, bias=to_pio(torch.randn(41)))
    with pytest.raises(TypeError, match="out dtype"):
        ops.linear_fp8(x, w, s, out_dtype=DType.float16)
    with pytest.raises(ValueError, match="out has shape"):
        ops.linear_fp8(x, w, s, out=Tensor.empty((2, 41), DType.float32))
    buf = Tensor.empty((2, 64), DType.float32)
    with pytest.raises(ValueError, match="overlaps"):
        ops.linear_fp8(buf, w, s, out=buf.narrow(1, 0, 40))
    assert ops.linear_fp8(Tensor.empty((0, 64), DType.float32), w, s).shape == (0, 40)


def test_linear_fp8_c_errors() -> None:
    f = lib().to_linear_fp8
    buf = Tensor.empty((64,), DType.float32)
    p = buf.data_ptr
    args = [p, p, p, None, p, 1, 2, 2, 2, 2, 128, 128, 0, 0, 0]
    assert f(*args) == 0
    for i, bad in [(10, 0), (5, -1), (8, 1), (12, 1), (14, 1), (13, 7), (1, None), (2, None)]:
        a = list(args)
        a[i] = bad
        if i == 13:
            a[3] = p
        assert f(*a) != 0, (i, bad)


# ---- quantize_fp8 -------------------------------------------------------------------------------
def transformers_scale_inv(w: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """transformers' Fp8Quantize scales (finegrained_fp8.py), on padded edge blocks."""
    n, k = w.shape
    bn, bk = block
    sn, sk = -(-n // bn), -(-k // bk)
    padded = torch.zeros(sn * bn, sk * bk)
    padded[:n, :k] = w.float()
    max_abs = padded.reshape(sn, bn, sk, bk).abs().amax(dim=(-3, -1))
    safe = torch.where(max_abs > 0, max_abs, torch.ones_like(max_abs))
    scales = torch.where(max_abs > 0, 448.0 / safe, torch.ones_like(safe))
    return (1.0 / scales).to(torch.float32)


@pytest.mark.parametrize(
    ("n", "k", "block"),
    [(256, 384, (128, 128)), (130, 257, (128, 128)), (31, 29, (3, 5)), (7, 9, (1, 1))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quant_vs_torch(n: int, k: int, block: tuple[int, int], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(n + k)
    w = (
        torch.randn(n, k, generator=g) * torch.exp2(torch.randint(-12, 4, (n, 1), generator=g))
    ).to(dtype)
    w[0, :] = 0  # all-zero blocks where a block row is one row
    w8, s = ops.quantize_fp8(to_pio(w), block)
    scale = to_torch(s)
    assert same_bits(scale, transformers_scale_inv(w, block))
    ref = (w.float() / expand_scales(scale, n, k, block)).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(to_torch(w8).view(torch.uint8), ref.view(torch.uint8))
    # round trip: within half an e4m3 step (2^-4 relative) of each block's values, or of the
    # subnormal step (2^-10 * scale) near zero
    back = reference(to_torch(w8), scale, block)
    bound = torch.maximum(w.float().abs() * 2.0**-4, expand_scales(scale, n, k, block) * 2.0**-10)
    assert ((back - w.float()).abs() <= bound * 1.0001).all()


def test_quant_rounding_ties_subnormals_and_specials() -> None:
    # one block with amax 448: scale 1, values hit exactly as written
    vals = [448.0, 0.0, -0.0, 2.0**-9, 2.0**-10, 3 * 2.0**-10, 1.0625, 1.1875, 17.0, 300.0, -440.0]
    w = torch.tensor([vals + [0.0] * (16 - len(vals))])
    w8, s = ops.quantize_fp8(to_pio(w), (1, 16))
    assert to_torch(s).item() == 1.0
    ref = w.clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(to_torch(w8).view(torch.uint8), ref.view(torch.uint8))
    # NaN: its block gets scale 1 (transformers: amax is not > 0) and the byte 0x7f | sign
    w = torch.tensor([[1.0, float("nan"), 2.0, -float("nan")]])
    w8, s = ops.quantize_fp8(to_pio(w), (1, 4))
    assert to_torch(s).item() == 1.0
    assert to_torch(w8).view(torch.uint8).tolist() == [[0x38, 0x7F, 0x40, 0xFF]]


def test_quant_validation() -> None:
    with pytest.raises(TypeError, match="dtype"):
        ops.quantize_fp8(to_pio(torch.zeros(4, 4, dtype=torch.int32)))
    with pytest.raises(ValueError, match="dims"):
        ops.quantize_fp8(to_pio(torch.zeros(4)))
    with pytest.raises(ValueError, match="block sizes"):
        ops.quantize_fp8(to_pio(torch.zeros(4, 4)), (4, 0))
    w8, s = ops.quantize_fp8(Tensor.empty((0, 3), DType.float32))
    assert w8.shape == (0, 3)
    assert s.shape == (0, 1)


@pytest.mark.parametrize("isa", ["best", "avx512bf16", "avx512", "avx2", "generic"])
def test_linear_fp8_reads_every_byte_value_exactly(restore: object, isa: str) -> None:
    """One-hot x picks single weights: every e4m3 value (subnormals, ±448, both zeros) must come
    out exactly (times a power-of-two scale), for each decode kernel's conversion."""
    lib().to_set_isa_mask(ISAS[isa])
    values = torch.arange(256, dtype=torch.uint8)
    values[values & 0x7F == 0x7F] = 0  # NaN bytes: tested above
    k = 256
    rows = torch.stack([values.roll(3 * j) for j in range(6)])  # 6 W rows, shifted
    w8 = rows.view(torch.float8_e4m3fn)
    scale = torch.full((1, 2), 0.5)
    want = reference(w8, scale, (128, 128))
    for m in (1, 3):
        for t0 in range(0, k, m):
            ts = [min(t0 + i, k - 1) for i in range(m)]
            x = torch.zeros(m, k, dtype=torch.bfloat16)
            for i, t in enumerate(ts):
                x[i, t] = 1.0
            out = to_torch(
                ops.linear_fp8(to_pio(x), to_pio(w8), to_pio(scale), out_dtype=DType.float32)
            )
            assert torch.equal(out, want[:, ts].T), (isa, m, ts)


@pytest.mark.parametrize("isa", ["best", "avx512bf16", "avx512"])
@pytest.mark.parametrize("xd", [torch.bfloat16, torch.float32])
def test_linear_fp8_rows_do_not_depend_on_m(restore: object, isa: str, xd: torch.dtype) -> None:
    """Up to 16 rows (speculative verification, small batches) each row is computed as in a
    one-row call: batched and speculative outputs equal single decode steps bit for bit."""
    lib().to_set_isa_mask(ISAS[isa])
    w8, scale = random_fp8_weight(37, 300, (128, 128), seed=9)
    w, s = to_pio(w8), to_pio(scale)
    x = torch.randn(16, 300).to(xd)
    single = [
        to_torch(ops.linear_fp8(to_pio(x[i : i + 1]), w, s, out_dtype=DType.float32))
        for i in range(16)
    ]
    for m in (2, 4, 5, 8, 13, 16):
        out = to_torch(ops.linear_fp8(to_pio(x[:m]), w, s, out_dtype=DType.float32))
        for i in range(m):
            assert same_bits(out[i : i + 1], single[i]), (isa, m, i)


@pytest.mark.parametrize("isa", ["best", "avx512bf16", "avx512", "avx2", "generic"])
def test_linear_fp8_huge_finite_scales_stay_finite(restore: object, isa: str) -> None:
    lib().to_set_isa_mask(ISAS[isa])
    w8 = torch.full((3, 256), 1.0).to(torch.float8_e4m3fn)
    scale = torch.full((1, 2), 2.0**125)
    x = torch.full((20, 256), 2.0**-20).to(torch.bfloat16)
    for m in (1, 20):  # the decode kernels and the panel tiles
        y = ops.linear_fp8(to_pio(x[:m]), to_pio(w8), to_pio(scale), out_dtype=DType.float32)
        out = to_torch(y)
        assert torch.isfinite(out).all(), (isa, m)
        assert torch.allclose(out, torch.full_like(out, 256 * 2.0**-20 * 2.0**125), rtol=1e-6)
