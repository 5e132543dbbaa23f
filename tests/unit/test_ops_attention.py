"""Attention (GQA, causal with past, segments, MLA-style hd_v) and kv_cache_append against torch."""

from __future__ import annotations

import ctypes

import pytest
import torch

from inference_pio import ops
from inference_pio._native import check, lib
from inference_pio.dtypes import DType
from inference_pio.errors import NativeError
from inference_pio.tensor import Tensor
from inference_pio.testing.torch_bridge import TDT, rel, to_pio, to_torch

TOL = {DType.float32: 2e-5, DType.bfloat16: 8e-3}


def c_call(name: str, *args: object) -> None:
    check(getattr(lib(), name)(*args), name)


@pytest.fixture(params=["simd", "generic"])
def isa(request: pytest.FixtureRequest) -> object:
    if request.param == "generic":
        lib().to_set_isa_mask(0)
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


def ref_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: int,
    causal: bool,
    scale: float,
    segments: list[int] | None = None,
) -> torch.Tensor:
    """q [Tq, nh, d], k/v [L, nkv, d] (token layout), fp64 eager attention."""
    tq, nh, _ = q.shape
    kv_len, nkv, _ = k.shape
    g = nh // nkv
    qd, kd, vd = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = torch.einsum("thd,khd->htk", qd, kd) * scale
    allowed = torch.ones(tq, kv_len, dtype=torch.bool)
    if segments is not None:
        seg = torch.zeros(tq, dtype=torch.long)
        for i in range(len(segments) - 1):
            seg[segments[i] : segments[i + 1]] = i
        allowed = seg[:, None] == seg[None, :]
        if causal:
            allowed &= torch.ones(tq, tq, dtype=torch.bool).tril()
    elif causal:
        pos = torch.arange(tq)[:, None] + q_pos
        allowed = torch.arange(kv_len)[None, :] <= pos
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("htk,khd->thd", p, vd)


def make_cache(k_tok: torch.Tensor, max_len: int) -> torch.Tensor:
    """[L, nkv, d] -> cache [nkv, max_len, d] with random garbage after L (must not be read)."""
    length, nkv, d = k_tok.shape
    cache = torch.randn(nkv, max_len, d).to(k_tok.dtype) * 100
    cache[:, :length] = k_tok.transpose(0, 1)
    return cache


CASES = [  # tq, past, nh, nkv, hd, hdv
    (1, 0, 4, 2, 64, 64),
    (1, 37, 16, 8, 128, 128),
    (1, 300, 4, 1, 40, 24),
    (7, 0, 6, 3, 13, 13),
    (19, 5, 4, 4, 72, 32),
    (70, 33, 8, 2, 128, 128),
    (40, 0, 2, 1, 256, 256),
]


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_attention_cache_causal(case: tuple[int, ...], dtype: DType, isa: object) -> None:
    tq, past, nh, nkv, hd, hdv = case
    tdt = TDT[dtype]
    kv_len = past + tq
    q = torch.randn(tq, nh, hd).to(tdt)
    k = torch.randn(kv_len, nkv, hd).to(tdt)
    v = torch.randn(kv_len, nkv, hdv).to(tdt)
    scale = hd**-0.5 * 1.7
    kc, vc = make_cache(k, kv_len + 11), make_cache(v, kv_len + 11)
    out = ops.attention(to_pio(q), to_pio(kc), to_pio(vc), kv_len=kv_len, scale=scale)
    ref = ref_attention(q, k, v, past, True, scale)
    assert out.shape == (tq, nh, hdv)
    assert out.dtype == dtype
    assert rel(to_torch(out), ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
def test_attention_decode_split_keys(dtype: DType, isa: object) -> None:
    # one kv head and a long cache: the key range is split over threads and merged
    tdt = TDT[dtype]
    for kv_len, nh in ((1500, 8), (257, 3)):
        q = torch.randn(1, nh, 96).to(tdt)
        k = torch.randn(kv_len, 1, 96).to(tdt) * 2
        v = torch.randn(kv_len, 1, 96).to(tdt)
        out = ops.attention(
            to_pio(q), to_pio(make_cache(k, kv_len)), to_pio(make_cache(v, kv_len)), kv_len=kv_len
        )
        ref = ref_attention(q, k, v, kv_len - 1, True, 96**-0.5)
        assert rel(to_torch(out), ref) < TOL[dtype]


def test_attention_sdpa_reference_and_threads() -> None:
    """Against torch SDPA (GQA, causal) for a Qwen3-0.6B-like layer, 1 and 2 threads agree."""
    nh, nkv, hd, t = 16, 8, 128, 96
    q = torch.randn(t, nh, hd)
    k = torch.randn(t, nkv, hd)
    v = torch.randn(t, nkv, hd)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
    ).transpose(0, 1)
    saved = lib().to_get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            lib().to_set_num_threads(n)
            res = ops.attention(to_pio(q), to_pio(k), to_pio(v), kv_layout="tokens")
            outs.append(to_torch(res))
    finally:
        lib().to_set_num_threads(saved)
    assert rel(outs[0], ref) < 2e-5
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_segments(dtype: DType, causal: bool, isa: object) -> None:
    tdt = TDT[dtype]
    segs = [0, 5, 5, 69, 100, 164]
    n, nh, hd = segs[-1], 4, 64
    qkv = torch.randn(n, 3, nh, hd).to(tdt)  # fused projection layout of the vision tower
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    out = ops.attention(
        to_pio(q),
        to_pio(k),
        to_pio(v),
        kv_layout="tokens",
        causal=causal,
        cu_seqlens=segs,
        scale=0.125,
    )
    ref = ref_attention(q, k, v, 0, causal, 0.125, segs)
    assert rel(to_torch(out), ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
def test_attention_noncausal_and_absorbed_mla(dtype: DType) -> None:
    tdt = TDT[dtype]
    # absorbed MLA decode: one latent head of 576 (c 512 | k_pe 64), v = first 512 channels
    kv_len, nh = 77, 20
    lat = torch.randn(kv_len, 1, 576).to(tdt)
    q = torch.randn(2, nh, 576).to(tdt)
    cache = to_pio(make_cache(lat, 90))
    out = ops.attention(to_pio(q), cache, cache, kv_len=kv_len, head_dim_v=512, scale=256**-0.5)
    ref = ref_attention(q, lat, lat[:, :, :512], kv_len - 2, True, 256**-0.5)
    assert rel(to_torch(out), ref) < TOL[dtype]
    # non-causal cross attention over a cache
    qn = torch.randn(3, 4, 32).to(tdt)
    kn, vn = torch.randn(50, 2, 32).to(tdt), torch.randn(50, 2, 32).to(tdt)
    out2 = ops.attention(
        to_pio(qn), to_pio(make_cache(kn, 64)), to_pio(make_cache(vn, 64)), kv_len=50, causal=False
    )
    assert rel(to_torch(out2), ref_attention(qn, kn, vn, 0, False, 32**-0.5)) < TOL[dtype]


@pytest.mark.parametrize("seed", range(12))
def test_attention_random_shapes(seed: int, isa: object) -> None:
    """Random shapes around the kernels' edges: 16+ query rows (the row-vector kernels) and fewer,
    query heads per kv head that leave padded row vectors (3, 6), head widths off every vector
    size, key tiles of widths that are not a multiple of 4, a past, segments."""
    g = torch.Generator().manual_seed(seed)

    def pick(options: list[int]) -> int:
        return options[int(torch.randint(len(options), (1,), generator=g))]

    dtype = DType.bfloat16 if pick([0, 1]) else DType.float32
    tdt = TDT[dtype]
    nkv, grp = pick([1, 2, 3]), pick([1, 2, 3, 4, 6])
    nh, hd = nkv * grp, pick([8, 13, 40, 64, 100, 136, 200, 600])
    hdv = pick([hd, 24, 72]) if hd <= 200 else hd - 88  # the MLA shape: hd_v below hd_qk
    tq, past = pick([1, 3, 15, 16, 17, 37, 70, 130]), pick([0, 0, 5, 61])
    causal = bool(pick([0, 1, 1]))
    q = torch.randn(tq, nh, hd, generator=g).to(tdt)
    k = torch.randn(past + tq, nkv, hd, generator=g).to(tdt)
    v = torch.randn(past + tq, nkv, hdv, generator=g).to(tdt)
    kc, vc = make_cache(k, past + tq + 3), make_cache(v, past + tq + 3)
    scale = hd**-0.5
    out = ops.attention(
        to_pio(q), to_pio(kc), to_pio(vc), kv_len=past + tq, causal=causal, scale=scale
    )
    ref = ref_attention(q, k, v, past, causal, scale)
    assert rel(to_torch(out), ref) < TOL[dtype], (tq, past, nh, nkv, hd, hdv, causal, dtype)


def test_prefill_then_decode_matches_full() -> None:
    nh, nkv, hd, t = 8, 4, 64, 45
    q, k, v = torch.randn(t, nh, hd), torch.randn(t, nkv, hd), torch.randn(t, nkv, hd)
    kc = Tensor.zeros((nkv, 64, hd), DType.bfloat16)
    vc = Tensor.zeros((nkv, 64, hd), DType.bfloat16)
    ops.kv_cache_append(to_pio(k[:40]), to_pio(v[:40]), kc, vc, 0)
    rows = [to_torch(ops.attention(to_pio(q[:40]), kc, vc, kv_len=40))]
    for i in range(40, t):
        ops.kv_cache_append(to_pio(k[i : i + 1]), to_pio(v[i : i + 1]), kc, vc, i)
        rows.append(to_torch(ops.attention(to_pio(q[i : i + 1]), kc, vc, kv_len=i + 1)))
    got = torch.cat(rows)
    ref = ref_attention(q, k.bfloat16().float(), v.bfloat16().float(), 0, True, hd**-0.5)
    assert rel(got, ref) < 2e-5
    assert torch.equal(to_torch(kc)[:, :t], k.bfloat16().transpose(0, 1))


def test_kv_cache_append_and_errors() -> None:
    k = torch.randn(3, 2, 8)
    kc = Tensor.zeros((2, 4, 8), DType.float32)
    ops.kv_cache_append(to_pio(k), None, kc, None, 1)
    assert torch.equal(to_torch(kc)[:, 1:4], k.transpose(0, 1))
    with pytest.raises(ValueError, match="overflows"):
        ops.kv_cache_append(to_pio(k), None, kc, None, 2)
    with pytest.raises(NativeError, match="overflows"):
        c_call(
            "to_kv_cache_append",
            to_pio(k).data_ptr,
            None,
            kc.data_ptr,
            None,
            3,
            2,
            8,
            0,
            4,
            2,
            0,
            0,
        )
    with pytest.raises(ValueError, match="both"):
        ops.kv_cache_append(to_pio(k), to_pio(k), kc, None, 0)
    with pytest.raises(ValueError, match="fit"):
        ops.kv_cache_append(to_pio(torch.randn(1, 2, 4)), None, kc, None, 0)
    ro = Tensor.frombuffer(bytes(2 * 4 * 8 * 4), DType.float32, (2, 4, 8))
    ro.storage.readonly = True
    with pytest.raises(ValueError, match="read-only"):
        ops.kv_cache_append(to_pio(k), None, ro, None, 0)


def test_attention_bad_inputs() -> None:
    q = to_pio(torch.randn(2, 4, 16))
    kc = to_pio(torch.randn(2, 8, 16))
    with pytest.raises(TypeError):
        ops.attention(to_pio(torch.randn(2, 4, 16).to(torch.int32)), kc, kc, kv_len=4)
    with pytest.raises(TypeError):
        ops.attention(q, kc, to_pio(torch.randn(2, 8, 16).bfloat16()), kv_len=4)
    with pytest.raises(ValueError, match="multiple"):
        ops.attention(to_pio(torch.randn(2, 3, 16)), kc, kc, kv_len=4)
    with pytest.raises(ValueError, match="head dim"):
        ops.attention(to_pio(torch.randn(2, 4, 8)), kc, kc, kv_len=4)
    with pytest.raises(ValueError, match="kv_len"):
        ops.attention(q, kc, kc, kv_len=9)
    with pytest.raises(ValueError, match="need kv_len"):
        ops.attention(q, kc, kc, kv_len=1)
    with pytest.raises(ValueError, match="required"):
        ops.attention(q, kc, kc)
    with pytest.raises(ValueError, match="empty"):
        ops.attention(to_pio(torch.randn(0, 4, 16)), kc, kc, kv_len=4)
    with pytest.raises(ValueError, match="contiguous"):
        ops.attention(q.transpose(0, 1), kc, kc, kv_len=4)
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.attention(
            q,
            to_pio(torch.randn(2, 2, 16)),
            to_pio(torch.randn(2, 2, 16)),
            kv_layout="tokens",
            cu_seqlens=[0, 3],
            causal=False,
        )
    with pytest.raises(ValueError, match="shape"):
        ops.attention(q, kc, kc, kv_len=4, out=Tensor.empty((2, 4, 8)))
    # C-level checks (what a CUDA-side or direct caller hits)
    with pytest.raises(NativeError, match="multiple"):
        c_call(
            "to_attention",
            q.data_ptr,
            kc.data_ptr,
            kc.data_ptr,
            q.data_ptr,
            2,
            4,
            3,
            16,
            16,
            64,
            64,
            4,
            128,
            16,
            128,
            16,
            2,
            1,
            None,
            0,
            0.25,
            0,
            0,
        )
    with pytest.raises(NativeError, match="kv_len"):
        c_call(
            "to_attention",
            q.data_ptr,
            kc.data_ptr,
            kc.data_ptr,
            q.data_ptr,
            2,
            4,
            2,
            16,
            16,
            64,
            64,
            2,
            128,
            16,
            128,
            16,
            2,
            1,
            None,
            0,
            0.25,
            0,
            0,
        )
    bad_cu = (ctypes.c_int32 * 3)(0, 3, 1)
    with pytest.raises(NativeError, match="cu_seqlens"):
        c_call(
            "to_attention",
            q.data_ptr,
            kc.data_ptr,
            kc.data_ptr,
            q.data_ptr,
            2,
            4,
            2,
            16,
            16,
            64,
            64,
            2,
            128,
            16,
            128,
            16,
            0,
            0,
            bad_cu,
            2,
            0.25,
            0,
            0,
        )
    with pytest.raises(NativeError, match="dtype"):
        c_call(
            "to_attention",
            q.data_ptr,
            kc.data_ptr,
            kc.data_ptr,
            q.data_ptr,
            2,
            4,
            2,
            16,
            16,
            64,
            64,
            4,
            128,
            16,
            128,
            16,
            2,
            1,
            None,
            0,
            0.25,
            5,
            0,
        )


# masks for to_set_isa_mask (as in test_matmul): each selects one attention kernel family on an
# AVX512-BF16 machine: vdpbf16ps decode, AVX-512BW fp32 decode, AVX2 tiles, generic C
ISA_MASKS = {
    "best": 0xFFFFFFFF,
    "avx512": 0b111 | (1 << 3) | (1 << 4) | (1 << 5),
    "avx2": 0b111,
    "generic": 0,
}


@pytest.fixture(params=list(ISA_MASKS))
def isa_mask(request: pytest.FixtureRequest) -> object:
    lib().to_set_isa_mask(ISA_MASKS[request.param])
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


@pytest.mark.parametrize("seed", range(10))
def test_attention_decode_bf16_cache_random(seed: int, isa_mask: object) -> None:
    """Decode (one query token, and non-causal small blocks) over a bf16 cache: GQA groups of 1..20
    query heads, head widths off every vector size, contexts crossing the 8/16-key tiles and the
    threads' key splits, bf16 and fp32 queries."""
    g = torch.Generator().manual_seed(1000 + seed)

    def pick(options: list[int]) -> int:
        return options[int(torch.randint(len(options), (1,), generator=g))]

    nkv, grp = pick([1, 2, 3, 8]), pick([1, 2, 3, 5, 8, 16, 20])
    nh, hd = nkv * grp, pick([8, 13, 32, 40, 64, 100, 128, 576])
    hdv = pick([hd, 24, 72]) if hd < 576 else 512
    kv_len = pick([1, 7, 8, 15, 16, 17, 31, 33, 63, 65, 257, 1000, 1500])
    causal = bool(pick([1, 1, 0]))
    tq = 1 if causal else pick([1, 2, 5])
    q_tdt = pick([0, 1])
    q = torch.randn(tq, nh, hd, generator=g).to(torch.bfloat16 if q_tdt else torch.float32)
    k = (torch.randn(kv_len, nkv, hd, generator=g) * 1.5).bfloat16()
    v = torch.randn(kv_len, nkv, hdv, generator=g).bfloat16()
    kc, vc = make_cache(k, kv_len + 5), make_cache(v, kv_len + 5)
    scale = hd**-0.5
    out = ops.attention(
        to_pio(q),
        to_pio(kc),
        to_pio(vc),
        kv_len=kv_len,
        causal=causal,
        scale=scale,
        q_pos=kv_len - tq if causal else 0,
    )
    ref = ref_attention(q.float(), k.float(), v.float(), kv_len - tq, causal, scale)
    tol = TOL[DType.bfloat16] if q_tdt else 1e-5
    assert rel(to_torch(out).float(), ref) < tol, (nh, nkv, hd, hdv, kv_len, tq, causal, q_tdt)


def test_attention_decode_bf16_cache_mla_long(isa_mask: object) -> None:
    """GLM-style absorbed MLA decode (20 heads on one 576-wide latent, v = its first 512) over a
    long bf16 cache: the key range is split over threads and merged."""
    g = torch.Generator().manual_seed(7)
    kv_len, nh = 2061, 20
    lat = torch.randn(kv_len, 1, 576, generator=g).bfloat16()
    q = torch.randn(1, nh, 576, generator=g).bfloat16()
    cache = to_pio(make_cache(lat, kv_len + 3))
    out = ops.attention(to_pio(q), cache, cache, kv_len=kv_len, head_dim_v=512, scale=0.07)
    ref = ref_attention(q.float(), lat.float(), lat[:, :, :512].float(), kv_len - 1, True, 0.07)
    assert rel(to_torch(out).float(), ref) < TOL[DType.bfloat16]


@pytest.mark.parametrize("where", ["q", "k", "v", "none"])
@pytest.mark.parametrize("q_dtype", [torch.bfloat16, torch.float32])
def test_attention_decode_bf16_cache_nan(
    where: str, q_dtype: torch.dtype, isa_mask: object
) -> None:
    """A NaN in the query, in a key or in a value gives NaN rows as in torch (those that see it);
    -inf in an unused cache slot past kv_len changes nothing."""
    kv_len, nh, nkv, hd = 45, 4, 2, 40
    q = torch.randn(1, nh, hd).to(q_dtype)
    k, v = torch.randn(kv_len, nkv, hd).bfloat16(), torch.randn(kv_len, nkv, hd).bfloat16()
    if where == "q":
        q[0, 1, 3] = float("nan")
    elif where == "k":
        k[20, 0, 5] = float("nan")
    elif where == "v":
        v[33, 1, 7] = float("nan")
    kc, vc = make_cache(k, kv_len + 4), make_cache(v, kv_len + 4)
    kc[:, kv_len:] = float("-inf")
    vc[:, kv_len:] = float("nan")
    out = to_torch(ops.attention(to_pio(q), to_pio(kc), to_pio(vc), kv_len=kv_len)).float()
    ref = ref_attention(q.float(), k.float(), v.float(), kv_len - 1, True, hd**-0.5)
    assert torch.equal(out.isnan(), ref.isnan()), (where, out.isnan().any(-1))
    if where == "none":
        assert rel(out, ref) < TOL[DType.bfloat16]
