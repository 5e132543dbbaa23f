"""The MoE ops on the device against the CPU backend (the same semantics, src/cpu/moe.c): routers,
row gather, weighted scatter-add and grouping by expert, including bad indices, which must raise
a clear error and leave the process (and the CUDA context) usable."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from inference_pio import cuda, ops  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.errors import NativeError  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402

TDT = tb.TDT
theirs = tb.from_device
ours = tb.to_device

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

DEV = "cuda:0"
FLOATS = [DType.float32, DType.bfloat16]


@pytest.mark.parametrize("wdt", FLOATS)
@pytest.mark.parametrize("ldt", FLOATS)
@pytest.mark.parametrize(("t", "e", "k"), [(1, 128, 8), (37, 64, 4), (5, 300, 1), (3, 16, 16)])
def test_route_softmax(t: int, e: int, k: int, ldt: DType, wdt: DType) -> None:
    logits = (torch.randn(t, e) * 2).to(TDT[ldt])
    for renorm in (True, False):
        ci, cw = ops.route_softmax(ours(logits), k, renormalize=renorm, weights_dtype=wdt)
        gi, gw = ops.route_softmax(ours(logits, DEV), k, renormalize=renorm, weights_dtype=wdt)
        assert torch.equal(theirs(gi), theirs(ci))
        tol = 1e-6 if wdt == DType.float32 else 8e-3
        assert torch.allclose(theirs(gw).float(), theirs(cw).float(), rtol=tol, atol=1e-7)


@pytest.mark.parametrize("ldt", FLOATS)
@pytest.mark.parametrize(
    ("e", "k", "n_group", "topk_group"),
    [(64, 4, 1, 1), (64, 4, 8, 3), (256, 8, 8, 4), (12, 2, 12, 2), (512, 10, 1, 1), (40, 40, 1, 1)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_route_sigmoid(
    e: int, k: int, n_group: int, topk_group: int, ldt: DType, ties: bool
) -> None:
    """The same experts in the same order as the CPU (a warp's rounds of argmax there, one
    insertion sort here); ``ties``: logits of a few values, so equal scores pick by lower id."""
    t = 9
    logits = (torch.randint(-2, 3, (t, e)).float() if ties else torch.randn(t, e) * 2).to(TDT[ldt])
    bias = torch.randn(e) * 0.1
    for b in (None, bias):
        kw: dict[str, Any] = dict(n_group=n_group, topk_group=topk_group, scaling=2.5)
        ci, cw = ops.route_sigmoid(ours(logits), k, bias=None if b is None else ours(b), **kw)
        gi, gw = ops.route_sigmoid(
            ours(logits, DEV), k, bias=None if b is None else ours(b, DEV), **kw
        )
        assert torch.equal(theirs(gi), theirs(ci))
        assert torch.allclose(theirs(gw), theirs(cw), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("d", "dt"), [(64, DType.bfloat16), (7, DType.bfloat16), (33, DType.float32)]
)
def test_gather_rows(d: int, dt: DType) -> None:
    src = torch.randn(50, d).to(TDT[dt])
    idx = torch.randint(0, 50, (123,), dtype=torch.int32)
    got = theirs(ops.gather_rows(ours(src, DEV), ours(idx, DEV)))
    assert torch.equal(got, src[idx.long()])


@pytest.mark.parametrize("round_products", [False, True])
@pytest.mark.parametrize("ddt", FLOATS)
@pytest.mark.parametrize("sdt", FLOATS)
def test_scatter_add_matches_cpu_bitwise(sdt: DType, ddt: DType, round_products: bool) -> None:
    m, n, d = 40, 7, 300
    src = torch.randn(m, d).to(TDT[sdt])
    idx = torch.randint(0, n, (m,), dtype=torch.int32)
    w = torch.rand(m).to(TDT[sdt])
    dst = torch.randn(n, d).to(TDT[ddt])
    for weights in (None, w):
        cpu_dst, gpu_dst = ours(dst), ours(dst, DEV)
        wc = None if weights is None else ours(weights)
        wg = None if weights is None else ours(weights, DEV)
        ops.scatter_add(ours(src), ours(idx), cpu_dst, wc, round_products=round_products)
        ops.scatter_add(ours(src, DEV), ours(idx, DEV), gpu_dst, wg, round_products=round_products)
        assert torch.equal(theirs(gpu_dst), theirs(cpu_dst))


@pytest.mark.parametrize(("n", "e"), [(0, 4), (1, 1), (64, 8), (5000, 128)])
def test_group_by_expert(n: int, e: int) -> None:
    idx = torch.randint(0, e, (n,), dtype=torch.int32)
    cpu = [theirs(t) for t in ops.group_by_expert(ours(idx), e)]
    gpu = [theirs(t) for t in ops.group_by_expert(ours(idx, DEV), e)]
    for a, b in zip(gpu, cpu, strict=True):
        assert torch.equal(a, b)


def test_bad_indices_raise_and_the_device_stays_usable() -> None:
    src = ours(torch.randn(10, 16), DEV)
    bad = ours(torch.tensor([1, 10, 3], dtype=torch.int32), DEV)
    with pytest.raises(NativeError, match="outside its range"):
        ops.gather_rows(src, bad)
    dst = ours(torch.zeros(4, 16), DEV)
    with pytest.raises(NativeError, match="outside its range"):
        ops.scatter_add(ours(torch.randn(3, 16), DEV), bad, dst)
    with pytest.raises(NativeError, match="outside its range"):
        ops.group_by_expert(ours(torch.tensor([0, -1], dtype=torch.int32), DEV), 4)
    good = ours(torch.tensor([9, 0], dtype=torch.int32), DEV)  # the flag was cleared
    out = theirs(ops.gather_rows(src, good))
    assert torch.equal(out, theirs(src)[[9, 0]])
