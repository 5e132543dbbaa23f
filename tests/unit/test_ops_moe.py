"""MoE routing helpers against the HF router modules / torch reference code."""

from __future__ import annotations

import pytest
import torch

from inference_pio import ops
from inference_pio._native import check, lib
from inference_pio.dtypes import DType
from inference_pio.errors import NativeError
from inference_pio.testing.torch_bridge import TDT, to_pio, to_torch


@pytest.fixture(params=["simd", "generic"])
def isa(request: pytest.FixtureRequest) -> object:
    if request.param == "generic":
        lib().to_set_isa_mask(0)
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize(("t", "e", "k"), [(1, 8, 2), (37, 128, 8), (5, 512, 10), (3, 7, 7)])
def test_route_softmax(dtype: DType, t: int, e: int, k: int) -> None:
    logits = (torch.randn(t, e) * 3).to(TDT[dtype])
    idx, w = ops.route_softmax(to_pio(logits), k)
    p = torch.softmax(logits, dim=-1, dtype=torch.float32)
    val, ref_idx = torch.topk(p, k, dim=-1)
    val = (val / val.sum(-1, keepdim=True)).to(TDT[dtype])
    got_idx = to_torch(idx).long()
    # bf16 logits tie often and torch.topk's tie order is unspecified: compare selected values
    assert torch.equal(p.gather(1, got_idx), p.gather(1, ref_idx))
    assert torch.equal(got_idx.sort(-1).values, ref_idx.sort(-1).values) or dtype == DType.bfloat16
    got_w = to_torch(w)
    tol = 1e-6 if dtype == DType.float32 else 8e-3
    torch.testing.assert_close(got_w.float(), val.float(), rtol=tol, atol=1e-7)
    # without renormalisation and with f32 weights
    _, w2 = ops.route_softmax(to_pio(logits), k, renormalize=False, weights_dtype=DType.float32)
    torch.testing.assert_close(to_torch(w2), torch.topk(p, k, dim=-1)[0], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("e", "k", "n_group", "topk_group"), [(64, 4, 1, 1), (256, 8, 8, 4), (16, 3, 4, 2)]
)
def test_route_sigmoid_matches_hf(e: int, k: int, n_group: int, topk_group: int) -> None:
    from transformers.models.glm4_moe.configuration_glm4_moe import Glm4MoeConfig
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeTopkRouter

    hidden = 32
    cfg = Glm4MoeConfig(
        hidden_size=hidden,
        n_routed_experts=e,
        num_experts_per_tok=k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=True,
        routed_scaling_factor=1.8,
    )
    router = Glm4MoeTopkRouter(cfg)
    with torch.no_grad():
        router.weight.normal_(0, 0.5)
        router.e_score_correction_bias.normal_(0, 0.3)
    x = torch.randn(23, hidden)
    with torch.no_grad():
        logits, ref_w, ref_idx = router(x)
    idx, w = ops.route_sigmoid(
        to_pio(logits),
        k,
        bias=to_pio(router.e_score_correction_bias.data),
        n_group=n_group,
        topk_group=topk_group,
        scaling=1.8,
    )
    got_idx, got_w = to_torch(idx).long(), to_torch(w)
    order = ref_idx.sort(-1).indices  # HF's top-k is unsorted: compare as sets with weights
    ref_idx_s, ref_w_s = ref_idx.gather(1, order), ref_w.gather(1, order)
    order2 = got_idx.sort(-1).indices
    assert torch.equal(got_idx.gather(1, order2), ref_idx_s)
    torch.testing.assert_close(got_w.gather(1, order2), ref_w_s, rtol=1e-6, atol=1e-7)


def test_gather_scatter_group() -> None:
    t, k, e, d = 29, 4, 9, 70
    idx = torch.randint(0, e, (t, k), dtype=torch.int32)
    counts, offsets, order = ops.group_by_expert(to_pio(idx), e)
    flat = idx.flatten()
    ref_order = torch.argsort(flat, stable=True).int()
    assert torch.equal(to_torch(order), ref_order)
    assert torch.equal(to_torch(counts), torch.bincount(flat, minlength=e).int())
    cum = torch.cumsum(torch.bincount(flat, minlength=e), 0).tolist()
    assert to_torch(offsets).tolist() == [0, *cum]
    x = torch.randn(t, d)
    tokens = (ref_order // k).int()
    rows = ops.gather_rows(to_pio(x), to_pio(tokens))
    assert torch.equal(to_torch(rows), x[tokens.long()])


@pytest.mark.parametrize("dst_dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize("src_dtype", [DType.float32, DType.bfloat16])
def test_scatter_add(src_dtype: DType, dst_dtype: DType, isa: object) -> None:
    m, n, d = 300, 40, 2049 if src_dtype == DType.float32 else 37
    src = torch.randn(m, d).to(TDT[src_dtype])
    idx = torch.randint(0, n, (m,), dtype=torch.int32)
    w = torch.rand(m)
    dst0 = torch.randn(n, d).to(TDT[dst_dtype])
    dst = to_pio(dst0)
    ops.scatter_add(to_pio(src), to_pio(idx), dst, to_pio(w))
    ref = dst0.clone()
    if dst_dtype == DType.float32:
        ref.index_add_(0, idx.long(), src.float() * w[:, None])
        torch.testing.assert_close(to_torch(dst), ref, rtol=1e-5, atol=1e-5)
    else:  # one bf16 rounding per add, in order (sequential reference)
        acc = dst0.clone()
        prod = src.float() * w[:, None]
        for i in range(m):
            acc[idx[i]] = (acc[idx[i]].float() + prod[i]).bfloat16()
        assert torch.equal(to_torch(dst), acc)


def test_scatter_add_grouped_mm_rounding() -> None:
    # HF grouped_mm: (expert_out * w) rounded to bf16, k products summed in fp32, rounded once
    t, k, d = 11, 4, 64
    out = torch.randn(t * k, d).bfloat16()
    w = torch.rand(t * k).bfloat16()
    tok = torch.arange(t, dtype=torch.int32).repeat_interleave(k)
    acc = to_pio(torch.zeros(t, d))
    ops.scatter_add(to_pio(out), to_pio(tok), acc, to_pio(w), round_products=True)
    ref = (out * w[:, None]).float().view(t, k, d).sum(1)
    torch.testing.assert_close(to_torch(acc), ref, rtol=1e-6, atol=1e-6)


def test_moe_bad_inputs() -> None:
    logits = to_pio(torch.randn(3, 8))
    with pytest.raises(ValueError, match="k=9"):
        ops.route_softmax(logits, 9)
    with pytest.raises(TypeError):
        ops.route_softmax(to_pio(torch.zeros(3, 8, dtype=torch.int32)), 2)
    with pytest.raises(ValueError, match="n_group"):
        ops.route_sigmoid(logits, 2, n_group=3)
    with pytest.raises(ValueError, match="exceeds"):
        ops.route_sigmoid(logits, 6, n_group=4, topk_group=2)
    with pytest.raises(ValueError, match="bias"):
        ops.route_sigmoid(logits, 2, bias=to_pio(torch.randn(7)))
    bad = to_pio(torch.tensor([0, 9], dtype=torch.int32))
    with pytest.raises(NativeError, match="outside"):
        ops.group_by_expert(bad, 9)
    with pytest.raises(NativeError, match="outside"):
        ops.gather_rows(to_pio(torch.randn(9, 4)), to_pio(torch.tensor([0, -1], dtype=torch.int32)))
    with pytest.raises(NativeError, match="outside"):
        ops.scatter_add(to_pio(torch.randn(2, 4)), bad, to_pio(torch.zeros(9, 4)))
    with pytest.raises(ValueError, match="match"):
        ops.scatter_add(
            to_pio(torch.randn(2, 4)),
            to_pio(torch.zeros(3, dtype=torch.int32)),
            to_pio(torch.zeros(9, 4)),
        )
    with pytest.raises(TypeError):
        ops.gather_rows(to_pio(torch.randn(9, 4)), to_pio(torch.zeros(2)))
    with pytest.raises(NativeError):
        check(lib().to_moe_route_softmax(logits.data_ptr, 3, 8, 0, 1, 0, None, None, 0), "x")
