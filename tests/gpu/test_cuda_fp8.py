"""FP8 block-scaled weights on CUDA (src/cuda/fp8.cu) against the CPU ops and torch on the GPU.

toc_fp8_dequant must give the CPU's bits for every out dtype (NaN bytes included).
toc_linear_fp8: m <= 16 runs the GEMV (same math as the CPU up to summation order: fp32 out within
1e-5 of the CPU); larger m (and shapes the GEMV does not take: k or block_k not a multiple of 16)
dequantize to bf16 first (one extra rounding per weight: within 1e-2).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from inference_pio import ops  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.tensor import Tensor  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402
from inference_pio.testing.fp8 import expand_scales, random_fp8_weight  # noqa: E402

DEV = "cuda:0"
rel = tb.rel


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize(
    ("n", "k", "block"),
    [(16, 16, (16, 16)), (130, 257, (128, 128)), (31, 29, (3, 5)), (256, 384, (128, 128))],
)
@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16, DType.float16])
def test_dequant_bitwise_vs_cpu(n: int, k: int, block: tuple[int, int], dtype: DType) -> None:
    g = torch.Generator().manual_seed(n + k)
    # every byte value, NaNs and subnormals included
    w8 = torch.randint(0, 256, (n, k), generator=g, dtype=torch.uint8).view(torch.float8_e4m3fn)
    w8.view(torch.uint8).flatten()[: min(256, n * k)] = torch.arange(
        min(256, n * k), dtype=torch.uint8
    )
    sn, sk = -(-n // block[0]), -(-k // block[1])
    scale = torch.exp2(torch.randint(-20, 10, (sn, sk), generator=g).float())
    scale *= 1 + torch.rand(sn, sk, generator=g)
    w, s = tb.to_pio(w8), tb.to_pio(scale)
    cpu = tb.to_torch(ops.dequantize_fp8(w, s, block, dtype))
    gpu = tb.from_device(ops.dequantize_fp8(w.to(DEV), s.to(DEV), block, dtype))
    assert torch.equal(bits(gpu), bits(cpu))


CASES = [
    (1, 2560, 4096, (128, 128)),
    (3, 523, 1024, (128, 128)),
    (16, 300, 768, (128, 128)),
    (1, 77, 272, (64, 16)),
    (3, 130, 257, (128, 128)),  # k % 16 != 0: dequantize + bf16 linear even for small m
    (100, 523, 1024, (128, 128)),
    (300, 259, 640, (128, 128)),
    (100, 33, 129, (3, 5)),
]


@pytest.mark.parametrize(("m", "n", "k", "block"), CASES)
@pytest.mark.parametrize(
    ("xd", "yd"),
    [
        (DType.bfloat16, DType.bfloat16),
        (DType.bfloat16, DType.float32),
        (DType.float32, DType.float32),
    ],
)
def test_linear_fp8_vs_cpu_and_torch(
    m: int, n: int, k: int, block: tuple[int, int], xd: DType, yd: DType
) -> None:
    w8, scale = random_fp8_weight(n, k, block, seed=m + n)
    x = torch.randn(m, k).to(tb.TDT[xd])
    bias = torch.randn(n).to(torch.bfloat16) if m % 2 else None
    args = (tb.to_pio(w8), tb.to_pio(scale))
    pb = None if bias is None else tb.to_pio(bias)
    cpu = tb.to_torch(ops.linear_fp8(tb.to_pio(x), *args, pb, block=block, out_dtype=yd))
    gpu = tb.from_device(
        ops.linear_fp8(
            tb.to_device(x, DEV),
            *(a.to(DEV) for a in args),
            None if pb is None else pb.to(DEV),
            block=block,
            out_dtype=yd,
        )
    )
    gemv = m <= 16 and k % 16 == 0 and block[1] % 16 == 0
    tol = 1e-5 if gemv and yd == DType.float32 else 1e-2
    assert rel(gpu, cpu.double()) < tol, (m, n, k, block, xd, yd)
    wf = (w8.float() * expand_scales(scale, n, k, block)).double().cuda()
    ref = x.double().cuda() @ wf.t()
    if bias is not None:
        ref = ref + bias.double().cuda()
    assert rel(gpu, ref.cpu()) < tol


def test_linear_fp8_nan_weight_gives_nan() -> None:
    w8, scale = random_fp8_weight(64, 256, (128, 128), seed=1)
    raw = w8.view(torch.uint8).clone()
    raw[3, 100] = 0x7F
    raw[40, 7] = 0xFF
    x = torch.randn(2, 256).to(torch.bfloat16)
    y = tb.from_device(
        ops.linear_fp8(
            tb.to_device(x, DEV),
            tb.to_device(raw.view(torch.float8_e4m3fn), DEV),
            tb.to_device(scale, DEV),
        )
    )
    assert torch.isnan(y).all(0).tolist() == [j in (3, 40) for j in range(64)]


@pytest.mark.parametrize(("width", "offset"), [(96, 16), (99, 3), (97, 16)])
def test_linear_fp8_strided_rows(width: int, offset: int) -> None:
    """Rows of x 16-byte aligned (read 16 bytes a load) or not (99 / 97 wide, offset 3)."""
    w8, scale = random_fp8_weight(40, 64, (32, 32), seed=2)
    base = torch.randn(6, width).to(torch.bfloat16)
    x = tb.to_device(base, DEV).narrow(1, offset, 64)
    buf = Tensor.zeros((6, 48), DType.float32, DEV)
    ops.linear_fp8(
        x, tb.to_device(w8, DEV), tb.to_device(scale, DEV), block=(32, 32), out=buf.narrow(1, 8, 40)
    )
    got = tb.from_device(buf)
    xs = base[:, offset : offset + 64].double()
    ref = xs @ (w8.float() * expand_scales(scale, 40, 64, (32, 32))).double().t()
    assert rel(got[:, 8:], ref) < 1e-5
    assert not got[:, :8].any()


def test_quantize_fp8_has_no_cuda_kernel() -> None:
    with pytest.raises(NotImplementedError, match="fp8_quant"):
        ops.quantize_fp8(Tensor.zeros((4, 4), DType.float32, DEV))
