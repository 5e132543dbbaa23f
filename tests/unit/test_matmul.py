"""ops.linear against torch.nn.functional.linear in fp32 on the same (already rounded) operands.

Tolerances (relative to the reference norm): float32 output 1e-5, bfloat16 output 1e-2 (one
rounding of the result). Every kernel (generic C, AVX2, AVX-512 f32, AVX512-BF16 dot tiles and
packed GEMM) is forced in turn through to_set_isa_mask.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_pio import NativeError, ops
from inference_pio._native import check, lib
from inference_pio.dtypes import DType
from inference_pio.tensor import Storage, Tensor
from inference_pio.testing.torch_bridge import PDT, TDT, rel, to_pio, to_torch

# masks for to_set_isa_mask: each selects one kernel family on an AVX512-BF16 machine
FULL = 0xFFFFFFFF
AVX2 = (1 << 0) | (1 << 1) | (1 << 2)
AVX512 = AVX2 | (1 << 3) | (1 << 4) | (1 << 5)
ISAS = {"generic": 0, "avx2": AVX2, "avx512": AVX512, "best": FULL}

M_SIZES = (1, 2, 3, 7, 16, 33, 130)
KN_SIZES = ((1, 5), (5, 67), (31, 1), (67, 31), (1000, 67), (67, 1000), (1031, 130))


def tol(dtype: DType) -> float:
    return 1e-5 if dtype == DType.float32 else 1e-2


@pytest.fixture
def restore() -> Iterator[None]:
    threads = lib().to_get_num_threads()
    yield
    lib().to_set_isa_mask(FULL)
    lib().to_set_num_threads(threads)


def check_case(
    m: int, k: int, n: int, xd: DType, wd: DType, yd: DType, with_bias: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(TDT[xd])
    w = (torch.randn(n, k, generator=g) / (k**0.5)).to(TDT[wd])
    b = torch.randn(n, generator=g).to(torch.bfloat16) if with_bias else None
    ref = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    y = ops.linear(to_pio(x), to_pio(w), None if b is None else to_pio(b), out_dtype=yd)
    assert y.shape == (m, n)
    assert y.dtype == yd
    err = rel(to_torch(y), ref)
    assert err < tol(yd), (m, k, n, xd, wd, yd, with_bias, err)


DTYPES = [
    (DType.bfloat16, DType.bfloat16, DType.bfloat16),
    (DType.bfloat16, DType.bfloat16, DType.float32),
    (DType.float32, DType.bfloat16, DType.float32),
    (DType.float32, DType.float16, DType.bfloat16),
    (DType.bfloat16, DType.float32, DType.float32),
]


@pytest.mark.parametrize("isa", ["best", "generic"])
@pytest.mark.parametrize(("xd", "wd", "yd"), DTYPES)
def test_linear_vs_torch(restore: None, isa: str, xd: DType, wd: DType, yd: DType) -> None:
    lib().to_set_isa_mask(ISAS[isa])
    # the full grid for bf16 x bf16 (the models' case), a subset for the other dtype mixes
    full = (xd, wd) == (DType.bfloat16, DType.bfloat16) and isa == "best"
    for i, m in enumerate(M_SIZES if full else (1, 7, 33)):
        for j, (k, n) in enumerate(KN_SIZES):
            if isa == "generic" and m * k * n > 2_000_000:
                continue  # keep the scalar path's share of the test budget small
            check_case(m, k, n, xd, wd, yd, with_bias=(i + j) % 2 == 0, seed=100 * i + j)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_other_simd_kernels(restore: None, isa: str) -> None:
    lib().to_set_isa_mask(ISAS[isa])
    for m in (1, 3, 33):
        for k, n in ((5, 67), (67, 31), (1031, 130)):
            check_case(m, k, n, DType.bfloat16, DType.bfloat16, DType.float32, True, m + k)
            check_case(m, k, n, DType.float32, DType.float16, DType.float32, False, m + n)


@pytest.mark.parametrize("m", [1, 7, 33, 130])
def test_kernels_agree(restore: None, m: int) -> None:
    """Fallback and every SIMD kernel give the same result up to summation order."""
    g = torch.Generator().manual_seed(m)
    x = to_pio(torch.randn(m, 1031, generator=g).bfloat16())
    w = to_pio((torch.randn(300, 1031, generator=g) / 32).bfloat16())
    results = {}
    for name, mask in ISAS.items():
        lib().to_set_isa_mask(mask)
        results[name] = to_torch(ops.linear(x, w, out_dtype=DType.float32))
    for name, y in results.items():
        assert rel(y, results["generic"]) < 1e-6, name


@pytest.mark.parametrize("m", [1, 5, 130])
def test_threads_bitwise_equal(restore: None, m: int) -> None:
    """Each output is summed in the same order whatever the thread count."""
    g = torch.Generator().manual_seed(7)
    x = to_pio(torch.randn(m, 1000, generator=g).bfloat16())
    w = to_pio(torch.randn(1001, 1000, generator=g).bfloat16())
    b = to_pio(torch.randn(1001, generator=g).bfloat16())
    ys = []
    for threads in (1, 2, 3):
        ops.set_num_threads(threads)
        assert ops.get_num_threads() == threads
        ys.append(to_torch(ops.linear(x, w, b)))
    ref = torch.nn.functional.linear(to_torch(x).float(), to_torch(w).float(), to_torch(b).float())
    assert rel(ys[0], ref) < 1e-2
    assert torch.equal(ys[0], ys[1])
    assert torch.equal(ys[0], ys[2])


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 300),
    n=st.integers(1, 80),
    xf32=st.booleans(),
    wd=st.sampled_from([DType.bfloat16, DType.float16, DType.float32]),
    ybf=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_random(
    m: int, k: int, n: int, xf32: bool, wd: DType, ybf: bool, bias: bool, seed: int
) -> None:
    xd = DType.float32 if xf32 else DType.bfloat16
    yd = DType.bfloat16 if ybf else DType.float32
    check_case(m, k, n, xd, wd, yd, bias, seed)


def test_leading_dims_and_strided_views() -> None:
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(2, 3, 80, generator=g).bfloat16()
    w = torch.randn(17, 67, generator=g).bfloat16()
    xw = to_pio(wide)
    x = xw.narrow(2, 5, 67)  # rows 80 apart, last dim contiguous
    out_buf = to_pio(torch.full((2, 3, 40), 7.0))
    out = out_buf.narrow(2, 11, 17)
    y = ops.linear(x, to_pio(w), out=out)
    assert y is out
    assert y.shape == (2, 3, 17)
    ref = torch.nn.functional.linear(wide[..., 5:72].float(), w.float())
    got = to_torch(out_buf)
    assert rel(got[..., 11:28], ref) < 1e-5
    assert torch.all(got[..., :11] == 7.0)
    assert torch.all(got[..., 28:] == 7.0)
    # 1-d x: a single row
    y1 = ops.linear(to_pio(wide[0, 0, 5:72].contiguous()), to_pio(w))
    assert y1.shape == (17,)
    assert rel(to_torch(y1).float(), ref[0, 0]) < 1e-2


def test_k_zero_gives_bias_and_m_zero_is_noop() -> None:
    b = torch.randn(6).bfloat16()
    y = ops.linear(
        Tensor.empty((3, 0), DType.bfloat16),
        Tensor.empty((6, 0), DType.bfloat16),
        to_pio(b),
        out_dtype=DType.float32,
    )
    assert torch.equal(to_torch(y), b.float().expand(3, 6))
    y0 = ops.linear(Tensor.empty((0, 4), DType.float32), to_pio(torch.randn(5, 4)))
    assert y0.shape == (0, 5)


def guarded_readonly(t: torch.Tensor) -> tuple[Tensor, mmap.mmap]:
    """A read-only copy of ``t`` whose last byte ends right before a PROT_NONE page."""
    raw = ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())
    page = mmap.PAGESIZE
    data_pages = (len(raw) + page - 1) // page
    mm = mmap.mmap(-1, (data_pages + 1) * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    start = base + data_pages * page - len(raw)
    ctypes.memmove(start, raw, len(raw))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base, data_pages * page, mmap.PROT_READ) == 0
    assert libc.mprotect(base + data_pages * page, page, 0) == 0  # PROT_NONE
    storage = Storage(start, len(raw), owner=mm, readonly=True)
    return Tensor(storage, tuple(t.shape), PDT[t.dtype]), mm


@pytest.mark.parametrize("isa", ["best", "avx512", "avx2", "generic"])
def test_readonly_unaligned_weight_no_overread(restore: None, isa: str) -> None:
    """Weights stay read-only (mmapped) and nothing reads past their last byte."""
    lib().to_set_isa_mask(ISAS[isa])
    g = torch.Generator().manual_seed(11)
    for m, k, n in ((1, 67, 5), (3, 33, 7), (9, 67, 5), (130, 1031, 3)):
        w = torch.randn(n, k, generator=g).bfloat16()
        x = torch.randn(m, k, generator=g).bfloat16()
        wt, _mm = guarded_readonly(w)
        xt, _mm2 = guarded_readonly(x)
        y = ops.linear(xt, wt, out_dtype=DType.float32)
        assert rel(to_torch(y), torch.nn.functional.linear(x.float(), w.float())) < 1e-5
        del wt, xt


def test_bad_input() -> None:
    x = to_pio(torch.randn(2, 8))
    w = to_pio(torch.randn(4, 8).bfloat16())
    with pytest.raises(TypeError, match="x has dtype"):
        ops.linear(to_pio(torch.randn(2, 8).half()), w)
    with pytest.raises(TypeError, match="weight has dtype"):
        ops.linear(x, Tensor.empty((4, 8), DType.int32))
    with pytest.raises(TypeError, match="must be a Tensor"):
        ops.linear(x, torch.randn(4, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="features"):
        ops.linear(to_pio(torch.randn(2, 7)), w)
    with pytest.raises(ValueError, match="weight must have 2 dims"):
        ops.linear(x, to_pio(torch.randn(32)))
    with pytest.raises(ValueError, match="weight must be contiguous"):
        ops.linear(x, to_pio(torch.randn(8, 4)).transpose(0, 1))
    with pytest.raises(ValueError, match="bias has shape"):
        ops.linear(x, w, to_pio(torch.randn(5)))
    with pytest.raises(ValueError, match="out has shape"):
        ops.linear(x, w, out=Tensor.empty((2, 5), DType.float32))
    with pytest.raises(TypeError, match="out has dtype"):
        ops.linear(x, w, out=Tensor.empty((2, 4), DType.bfloat16), out_dtype=DType.float32)
    with pytest.raises(TypeError, match="not supported"):
        ops.linear(x, w, out_dtype=DType.float16)
    ro = Tensor(Storage(Tensor.empty((2, 4)).data_ptr, 32, readonly=True), (2, 4), DType.float32)
    with pytest.raises(ValueError, match="read-only"):
        ops.linear(x, w, out=ro)
    with pytest.raises(ValueError, match="contiguous"):
        ops.linear(to_pio(torch.randn(8, 2)).transpose(0, 1), w)
    with pytest.raises(ValueError, match="0-d"):
        ops.linear(Tensor.empty((), DType.float32), w)
    with pytest.raises(TypeError):
        ops.set_num_threads(1.5)  # type: ignore[arg-type]


def test_c_entry_point_validates() -> None:
    f = lib().to_linear
    buf = (ctypes.c_float * 64)()
    p = ctypes.addressof(buf)
    assert f(p, p, None, p, -1, 2, 2, 2, 2, 0, 0, 0, 0) != 0
    assert f(p, p, None, p, 2, 2, 4, 3, 2, 0, 0, 0, 0) != 0  # ldx < k
    assert f(p, p, None, p, 2, 4, 2, 2, 3, 0, 0, 0, 0) != 0  # ldy < n
    assert f(p, p, None, p, 2, 2, 2, 2, 2, 3, 0, 0, 0) != 0  # int x
    assert f(p, p, None, p, 2, 2, 2, 2, 2, 0, 4, 0, 0) != 0  # int w
    assert f(p, p, None, p, 2, 2, 2, 2, 2, 0, 0, 0, 1) != 0  # f16 y
    assert f(p, p, p, p, 2, 2, 2, 2, 2, 0, 0, 3, 0) != 0  # int bias
    assert f(None, p, None, p, 2, 2, 2, 2, 2, 0, 0, 0, 0) != 0
    assert f(p, p, None, None, 2, 2, 2, 2, 2, 0, 0, 0, 0) != 0
    assert b"to_linear" in lib().to_last_error()
    assert f(p, p, None, p, 2, 2, 2, 2, 2, 0, 0, 0, 0) == 0


def test_probes() -> None:
    gbps = ctypes.c_double()
    assert lib().to_bench_read_bandwidth(1 << 20, 1, ctypes.byref(gbps)) == 0
    assert gbps.value > 0.1
    assert lib().to_bench_read_bandwidth(1 << 20, 10_000, ctypes.byref(gbps)) != 0
    assert lib().to_bench_read_bandwidth(100, 1, ctypes.byref(gbps)) != 0
    rc = lib().to_bench_read_bandwidth(100, 1, ctypes.byref(gbps))
    with pytest.raises(NativeError, match="1 MiB"):
        check(rc, "probe")
