"""RoPE tables and application against the HF reference code (Qwen3, Qwen3-Next partial rotary,
GLM interleaved, Qwen3-VL MRoPE and 2-D vision rope)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_pio import ops
from inference_pio._native import lib
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor
from inference_pio.testing.torch_bridge import PDT, to_pio, to_torch


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@pytest.fixture(params=["simd", "generic"])
def isa(request: pytest.FixtureRequest) -> object:
    if request.param == "generic":
        lib().to_set_isa_mask(0)
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


def hf_cos_sin(
    pos: torch.Tensor, dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    cfg = Qwen3Config(
        head_dim=dim,
        hidden_size=dim * 2,
        num_attention_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    emb = Qwen3RotaryEmbedding(cfg)
    cos, sin = emb(torch.zeros(1, dtype=dtype), pos[None])
    return cos[0], sin[0]


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("theta", [10000.0, 1e6, 5e6])
def test_rope_cache_matches_hf(dt: torch.dtype, theta: float) -> None:
    pos = torch.tensor([0, 1, 2, 7, 100, 4095, 40000, 131071, 250000])
    ref_c, ref_s = hf_cos_sin(pos, 128, theta, dt)
    for pdt in (torch.int32, torch.int64):
        c, s = ops.rope_cache(to_pio(pos.to(pdt)), 128, theta, PDT[dt])
        tc, ts = to_torch(c), to_torch(s)
        # inv_freq = 1/powf(theta, 2i/d) in fp32. torch's fp32 pow (Sleef; its bits depend on the
        # SIMD path) and libm's powf disagree by one ulp on a few entries, which moves the fp32
        # angle p*inv_freq by about one ulp of the angle: allow 3 angle ulps (p * 2^-23 bound).
        bound = (1e-6 + 3 * pos.double() * 2.0**-23)[:, None]
        if dt == torch.bfloat16:
            bound = bound + 2**-8
        assert bool(((tc.double() - ref_c.double()).abs() <= bound).all())
        assert bool(((ts.double() - ref_s.double()).abs() <= bound).all())
        small = pos < 5000
        assert maxdiff(tc[small], ref_c[small]) <= (1e-5 if dt == torch.float32 else 2**-8)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("T", "heads", "hd"), [(1, 1, 64), (3, 2, 128), (5, 3, 40), (2, 4, 2), (7, 2, 34)]
)
def test_rope_apply_neox_matches_hf(
    dt: torch.dtype, T: int, heads: int, hd: int, isa: object
) -> None:
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    pos = torch.randint(0, 5000, (T,))
    ref_c, ref_s = hf_cos_sin(pos, hd, 1e6, dt)
    q = torch.randn(T, heads, hd).to(dt)
    ref_q, _ = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], q.transpose(0, 1)[None], ref_c[None], ref_s[None]
    )
    ref_q = ref_q[0].transpose(0, 1)
    c, s = ops.rope_cache(to_pio(pos), hd, 1e6, PDT[dt])
    x = to_pio(q)
    ops.rope_apply(x, to_pio(to_torch(c)) if False else c, s)
    got = to_torch(x)
    if dt == torch.float32:
        assert maxdiff(got, ref_q) < 5e-6
    else:
        # identical tables give identical bits; cos/sin ulp flips give at most one bf16 ulp.
        got2 = to_pio(q)
        ops.rope_apply(got2, to_pio(ref_c), to_pio(ref_s))
        assert torch.equal(to_torch(got2), ref_q)
        assert maxdiff(got, ref_q) <= 2**-6 * float(q.abs().max())


def test_rope_partial_rotary_on_fused_qkv_view(isa: object) -> None:
    """Qwen3-Next: rot_dim 64 of head_dim 256; q, k are views into one [T, (nq+2nk)*hd] buffer."""
    from transformers.models.qwen3_next.modeling_qwen3_next import apply_rotary_pos_emb

    T, nq, nk, hd, rot = 4, 2, 1, 256, 64
    qkv = torch.randn(T, (nq + 2 * nk) * hd).bfloat16()
    pos = torch.arange(10, 10 + T)
    c, s = ops.rope_cache(to_pio(pos), rot, 1e7, "bf16")
    tc, ts = to_torch(c), to_torch(s)
    buf = to_pio(qkv)
    width = (nq + 2 * nk) * hd
    q = Tensor(buf.storage, (T, nq, hd), DType.bfloat16, (width, hd, 1), 0)
    k = Tensor(buf.storage, (T, nk, hd), DType.bfloat16, (width, hd, 1), nq * hd)
    ops.rope_apply(q, c, s)
    ops.rope_apply(k, c, s)
    qt = qkv[:, : nq * hd].reshape(T, nq, hd).transpose(0, 1)[None]
    kt = qkv[:, nq * hd : (nq + nk) * hd].reshape(T, nk, hd).transpose(0, 1)[None]
    rq, rk = apply_rotary_pos_emb(qt, kt, tc[None], ts[None])
    out = to_torch(buf)
    assert torch.equal(out[:, : nq * hd].reshape(T, nq, hd), rq[0].transpose(0, 1))
    assert torch.equal(out[:, nq * hd : (nq + nk) * hd].reshape(T, nk, hd), rk[0].transpose(0, 1))
    assert torch.equal(out[:, (nq + nk) * hd :], qkv[:, (nq + nk) * hd :])  # v untouched


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_rope_interleaved_matches_glm(dt: torch.dtype) -> None:
    from transformers.models.glm4_moe_lite.modeling_glm4_moe_lite import (
        apply_rotary_pos_emb_interleave,
    )

    T, heads, rot = 6, 3, 64
    pos = torch.randint(0, 1000, (T,))
    tc, ts = hf_cos_sin(pos, rot, 1e6, dt)
    q = torch.randn(T, heads, rot).to(dt)
    rq, _ = apply_rotary_pos_emb_interleave(
        q.transpose(0, 1)[None], q.transpose(0, 1)[None], tc[None], ts[None]
    )
    rq = rq[0].transpose(0, 1)
    x = to_pio(q)
    ops.rope_apply(x, to_pio(tc), to_pio(ts), mode="interleaved_hf")
    assert torch.equal(to_torch(x), rq)
    y = to_pio(q)
    ops.rope_apply(y, to_pio(tc), to_pio(ts), mode="interleaved")
    # in-place layout: de-interleaving it gives HF's output
    yt = to_torch(y)
    assert torch.equal(torch.cat([yt[..., 0::2], yt[..., 1::2]], -1), rq)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_mrope_cache_matches_qwen3_vl(dt: torch.dtype) -> None:
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    cfg = Qwen3VLTextConfig(
        head_dim=128,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20]},
    )
    emb = Qwen3VLTextRotaryEmbedding(cfg)
    # models.md §6.5 example
    pos = (
        torch.tensor(
            [
                [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8, 9, 10, 11, 12],
                [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8, 9, 10, 11, 12],
                [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            ]
        )
        * 97
    )
    rc, rs = emb(torch.zeros(1, dtype=dt), pos[:, None, :])
    c, s = ops.mrope_cache(to_pio(pos), 128, 5e6, (24, 20, 20), PDT[dt])
    tol = 1e-6 if dt == torch.float32 else 2**-8
    assert maxdiff(to_torch(c), rc[0]) <= tol
    assert maxdiff(to_torch(s), rs[0]) <= tol


def test_vision_rope_matches_qwen3_vl(isa: object) -> None:
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import (
        Qwen3VLVisionRotaryEmbedding,
        apply_rotary_pos_emb_vision,
    )

    cfg = Qwen3VLVisionConfig(hidden_size=1024, num_heads=16)
    emb = Qwen3VLVisionRotaryEmbedding(cfg)
    rows = torch.arange(6).repeat_interleave(8)
    cols = torch.arange(8).repeat(6)
    rc, rs = emb(torch.zeros(1), torch.stack([rows, cols], 1))
    c, s = ops.rope_cache_2d(to_pio(torch.stack([rows, cols])), 64, 10000.0)
    assert maxdiff(to_torch(c), rc) <= 1e-6
    assert maxdiff(to_torch(s), rs) <= 1e-6
    q = torch.randn(48, 16, 64).bfloat16()
    ref, _ = apply_rotary_pos_emb_vision(q, q, rc, rs)
    x = to_pio(q)
    ops.rope_apply(x, c, s)  # bf16 activations, fp32 table: computed in fp32, rounded once
    assert torch.equal(to_torch(x), ref) or maxdiff(to_torch(x), ref) <= 2**-7 * 4


@settings(max_examples=15, deadline=None)
@given(
    T=st.integers(1, 5),
    heads=st.integers(1, 3),
    half=st.integers(1, 40),
    extra=st.integers(0, 9),
    bf16=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_rope_simd_matches_generic(
    T: int, heads: int, half: int, extra: int, bf16: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    dt = torch.bfloat16 if bf16 else torch.float32
    rot = 2 * half
    q = torch.randn(T, heads, rot + extra, generator=g).to(dt)
    c, s = ops.rope_cache(to_pio(torch.randint(0, 10**5, (T,), generator=g)), rot, 1e6, PDT[dt])
    a, b = to_pio(q), to_pio(q)
    ops.rope_apply(a, c, s)
    lib().to_set_isa_mask(0)
    try:
        ops.rope_apply(b, c, s)
    finally:
        lib().to_set_isa_mask(0xFFFFFFFF)
    assert torch.equal(to_torch(a), to_torch(b))


def test_rope_bad_inputs_raise() -> None:
    pos = to_pio(torch.arange(4))
    c, s = ops.rope_cache(pos, 8, 1e4)
    with pytest.raises(TypeError):
        ops.rope_cache(to_pio(torch.arange(4).float()), 8, 1e4)
    with pytest.raises(ValueError, match="rot_dim\\ must\\ be\\ a\\ positive\\ mul"):
        ops.rope_cache(pos, 7, 1e4)
    with pytest.raises(ValueError, match="theta\\ must\\ be\\ >\\ 0,\\ got\\ \\-1\\.0"):
        ops.rope_cache(pos, 8, -1.0)
    with pytest.raises(ValueError, match="sections"):
        ops.mrope_cache(to_pio(torch.zeros(3, 4, dtype=torch.int64)), 8, 1e4, (2, 1, 2))
    with pytest.raises(ValueError, match="rot_dim\\ must\\ be\\ a\\ positive\\ mul"):
        ops.rope_cache_2d(to_pio(torch.zeros(2, 4, dtype=torch.int64)), 6)
    with pytest.raises(ValueError, match="x\\ has\\ 5\\ tokens\\ but\\ the\\ tables"):
        ops.rope_apply(to_pio(torch.randn(5, 2, 8)), c, s)  # T mismatch
    with pytest.raises(ValueError, match="rot_dim\\ 8\\ must\\ be\\ even\\ and\\ in"):
        ops.rope_apply(to_pio(torch.randn(4, 2, 6)), c, s)  # rot_dim > head_dim
    with pytest.raises(ValueError, match="unknown\\ mode"):
        ops.rope_apply(to_pio(torch.randn(4, 2, 8)), c, s, mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ops.rope_apply(to_pio(torch.randn(4, 2, 8)), c, to_pio(torch.randn(4, 8).bfloat16()))
    ro = to_pio(torch.randn(4, 2, 8))
    ro.storage.readonly = True
    with pytest.raises(ValueError, match="x\\ is\\ read\\-only"):
        ops.rope_apply(ro, c, s)
    with pytest.raises(ValueError, match="the\\ last\\ dim\\ must\\ be\\ contiguou"):
        ops.rope_apply(to_pio(torch.randn(8, 2, 4)).permute(2, 1, 0), c, s)
