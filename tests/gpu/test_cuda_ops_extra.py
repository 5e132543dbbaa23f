"""The device twins of the CPU ops added after the first CUDA kernels: causal conv1d with state,
patchify, image normalisation, and the composites add_rms_norm, qk_norm_rope and linear_group,
each against the CPU backend on the same inputs (and against the ops run one by one on the
device for the composites, which must give the same bits); and gate_up_swiglu, a composite the
CPU does not have (SwiGLU's two matrices and activation)."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from inference_pio import cuda, ops  # noqa: E402
from inference_pio.backend import backend  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.tensor import Tensor  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402

TDT = tb.TDT
rel = tb.rel
theirs = tb.from_device
ours = tb.to_device

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

DEV = "cuda:0"
FLOATS = [DType.float32, DType.bfloat16]


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("sdt", FLOATS)
@pytest.mark.parametrize("xdt", FLOATS)
@pytest.mark.parametrize(
    ("t", "c", "k"),
    # 50 and 40 rows: several row chunks; k 20: chunks of k - 1 rows, the first reads the state
    [(1, 300, 4), (7, 5, 4), (2, 64, 1), (3, 33, 6), (50, 260, 4), (40, 9, 20)],
)
def test_causal_conv1d(t: int, c: int, k: int, xdt: DType, sdt: DType, silu: bool) -> None:
    x = torch.randn(t, c).to(TDT[xdt])
    w = torch.randn(c, k).to(torch.bfloat16)
    st = torch.randn(k - 1, c).to(TDT[sdt])
    for state in (None, st):
        cs = None if state is None else ours(state)
        gs = None if state is None else ours(state, DEV)
        cy = ops.causal_conv1d(ours(x), ours(w), cs, silu=silu)
        gy = ops.causal_conv1d(ours(x, DEV), ours(w, DEV), gs, silu=silu)
        # the CPU sums with or without FMA depending on its instruction set
        assert rel(theirs(gy), theirs(cy)) < (1e-6 if xdt == DType.float32 else 1e-2)
        if state is not None:
            assert cs is not None
            assert gs is not None
            assert torch.equal(theirs(gs), theirs(cs))  # copies of inputs: exact


@pytest.mark.parametrize(("odt", "idt"), [(a, b) for a in FLOATS for b in FLOATS])
def test_patchify(idt: DType, odt: DType) -> None:
    img = torch.randn(3, 64, 96).to(TDT[idt])
    for patch, temporal, merge in ((16, 2, 2), (8, 1, 1), (4, 3, 2)):
        kw: dict[str, Any] = dict(patch=patch, temporal=temporal, merge=merge, out_dtype=odt)
        cpu = theirs(ops.patchify(ours(img), **kw))
        gpu = theirs(ops.patchify(ours(img, DEV), **kw))
        assert torch.equal(gpu, cpu)


@pytest.mark.parametrize("odt", FLOATS)
def test_image_normalize(odt: DType) -> None:
    img = torch.randint(0, 256, (37, 53, 3), dtype=torch.uint8)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    cpu = theirs(ops.image_normalize(ours(img), mean, std, out_dtype=odt))
    gpu = theirs(ops.image_normalize(ours(img, DEV), mean, std, out_dtype=odt))
    assert torch.equal(gpu, cpu)


@pytest.mark.parametrize("variant", [0, 1])
@pytest.mark.parametrize(("rows", "dim"), [(5, 1024), (3, 100), (2, 4104), (9, 2560), (1, 8)])
@pytest.mark.parametrize("dt", FLOATS)
def test_add_rms_norm_equals_add_then_norm(dt: DType, rows: int, dim: int, variant: int) -> None:
    """One kernel (the vectorised or the generic row norm, whichever rms_norm takes) gives the
    bits of add then rms_norm."""
    x, delta = torch.randn(rows, dim).to(TDT[dt]), torch.randn(rows, dim).to(TDT[dt])
    w = (1 + 0.1 * torch.randn(dim)).to(TDT[dt])
    be = backend(DEV)
    fused_x, ref_x = ours(x, DEV), ours(x, DEV)
    d, dw = ours(delta, DEV), ours(w, DEV)
    fused_out = Tensor.empty((rows, dim), dt, DEV)
    be.call(
        "add_rms_norm", fused_x.data_ptr, d.data_ptr, dw.data_ptr, fused_out.data_ptr, rows, dim,
        1e-6, variant, dt, dt, dt,
    )  # fmt: skip
    be.call("add", ref_x.data_ptr, d.data_ptr, ref_x.data_ptr, rows * dim, dt)
    ref = Tensor.empty((rows, dim), dt, DEV)
    be.call(
        "rms_norm", ref_x.data_ptr, dw.data_ptr, None, ref.data_ptr, rows, 1, dim, dim, dim, 0, 0,
        dim, dim, 1e-6, variant, dt, dt, dt,
    )  # fmt: skip
    assert torch.equal(theirs(fused_x), theirs(ref_x))
    assert torch.equal(theirs(fused_out), theirs(ref))
    if variant == 0:
        summed = (x.float() + delta.float()).to(TDT[dt])
        var = summed.float().pow(2).mean(-1, keepdim=True)
        hf = w * (summed.float() * torch.rsqrt(var + 1e-6)).to(TDT[dt])
        assert rel(theirs(fused_out), hf) < (1e-5 if dt == DType.float32 else 1e-2)


@pytest.mark.parametrize(
    ("hd", "rot", "mode", "variant", "q_norm"),
    [(128, 128, 0, 0, True), (64, 32, 1, 1, True), (100, 100, 0, 0, True), (256, 256, 0, 1, True),
     (128, 64, 2, 0, True), (128, 128, 0, 0, False), (2048, 2048, 0, 0, True)],
)  # fmt: skip
@pytest.mark.parametrize("dt", FLOATS)
def test_qk_norm_rope_equals_the_ops_one_by_one(
    dt: DType, hd: int, rot: int, mode: int, variant: int, q_norm: bool
) -> None:
    """One kernel per call (norm then rotation per head row) gives the bits of the ops one by one,
    for the vectorised and the generic norm, partial rotary, both in-place RoPE layouts; the
    de-interleaving layout (mode 2) runs the ops one by one."""
    t, nh, nkv = 6, 4, 2
    pos = torch.arange(t, dtype=torch.int32) + 40
    cos, sin = ops.rope_cache(ours(pos, DEV), rot, 1e6, dt)
    qkv = torch.randn(t, (nh + 2 * nkv) * hd).to(TDT[dt])
    qw, kw = ((1 + 0.1 * torch.randn(hd)).to(TDT[dt]) for _ in range(2))
    fused, ref = ours(qkv, DEV), ours(qkv, DEV)
    dqw, dkw = ours(qw, DEV), ours(kw, DEV)
    st = (nh + 2 * nkv) * hd
    esz = 4 if dt == DType.float32 else 2
    be = backend(DEV)
    qwp = dqw.data_ptr if q_norm else None
    be.call(
        "qk_norm_rope", fused.data_ptr, fused.data_ptr + nh * hd * esz, qwp, dkw.data_ptr,
        cos.data_ptr, sin.data_ptr, t, nh, nkv, hd, rot, st, st, 1e-6, variant, mode, dt, dt, dt,
    )  # fmt: skip
    for ptr, heads, w in (
        (ref.data_ptr, nh, qwp),
        (ref.data_ptr + nh * hd * esz, nkv, dkw.data_ptr),
    ):
        if w is not None:
            be.call(
                "rms_norm", ptr, w, None, ptr, t, heads, hd, st, hd, 0, 0, st, hd, 1e-6, variant,
                dt, dt, dt,
            )  # fmt: skip
        be.call(
            "rope_apply", ptr, cos.data_ptr, sin.data_ptr, t, heads, hd, rot, st, hd, mode, dt, dt
        )
    assert torch.equal(theirs(fused), theirs(ref))


@pytest.mark.parametrize(
    ("m", "k", "inter"),
    [(1, 1024, 3072), (8, 2560, 9728), (16, 1024, 100), (5, 3000, 64), (3, 4096, 520),
     (17, 256, 64)],
)  # fmt: skip
@pytest.mark.parametrize("dt", FLOATS)
def test_gate_up_swiglu_equals_the_two_ops(dt: DType, m: int, k: int, inter: int) -> None:
    """SwiGLU's matrices and activation in one call: bit for bit linear_group then swiglu, on the
    one-launch path (1-16 bf16 rows, k below 4096) and on the ops (k 4096, 17 rows, f32 x)."""
    x = ours(torch.randn(m, k).to(TDT[dt]), DEV)
    wg, wu = (ours((torch.randn(inter, k) * 0.05).to(torch.bfloat16), DEV) for _ in range(2))
    bf = DType.bfloat16
    g, u, out = (Tensor.empty((m, inter), dt, DEV) for _ in range(3))
    be = backend(DEV)
    be.call(
        "gate_up_swiglu", x.data_ptr, wg.data_ptr, wu.data_ptr, g.data_ptr, u.data_ptr,
        out.data_ptr, m, inter, k, k, dt, bf, dt,
    )  # fmt: skip
    g2, u2, ref = (Tensor.empty((m, inter), dt, DEV) for _ in range(3))
    ws, ns = (ctypes.c_void_p * 2)(wg.data_ptr, wu.data_ptr), (ctypes.c_int64 * 2)(inter, inter)
    ys = (ctypes.c_void_p * 2)(g2.data_ptr, u2.data_ptr)
    be.call("linear_group", x.data_ptr, 2, ws, ns, ys, ns, m, k, k, dt, bf, dt)
    be.call("swiglu", g2.data_ptr, u2.data_ptr, ref.data_ptr, m, inter, inter, inter, inter, dt)
    assert torch.equal(theirs(out), theirs(ref))
    gate = theirs(x).float() @ theirs(wg).float().T
    hf = torch.nn.functional.silu(gate) * (theirs(x).float() @ theirs(wu).float().T)
    assert rel(theirs(out), hf) < (1e-5 if dt == DType.float32 else 2e-2)


@pytest.mark.parametrize(
    ("m", "k", "ns"),
    [(3, 256, (128, 64, 64)), (1, 256, (128, 64, 64)), (8, 2560, (4096, 1024, 1024)),
     (16, 1024, (300, 52, 9)), (5, 3072, (1000, 1000))],
)  # fmt: skip
def test_linear_group_equals_linears(m: int, k: int, ns: tuple[int, ...]) -> None:
    """Bit for bit the linears one by one: the scalar GEMV (1 row) and the tensor-core GEMV (2-16
    rows, every matrix in one launch, partial tiles of weight rows)."""
    dt = DType.bfloat16
    x = ours(torch.randn(m, k).to(torch.bfloat16), DEV)
    ws = [ours((torch.randn(n, k) * 0.05).to(torch.bfloat16), DEV) for n in ns]
    outs = [Tensor.empty((m, n), dt, DEV) for n in ns]
    refs = [Tensor.empty((m, n), dt, DEV) for n in ns]
    be = backend(DEV)
    c = len(ns)
    be.call(
        "linear_group", x.data_ptr, c, (ctypes.c_void_p * c)(*(w.data_ptr for w in ws)),
        (ctypes.c_int64 * c)(*ns), (ctypes.c_void_p * c)(*(o.data_ptr for o in outs)),
        (ctypes.c_int64 * c)(*ns), m, k, k, dt, dt, dt,
    )  # fmt: skip
    for w, r, n in zip(ws, refs, ns, strict=True):
        be.call("linear", x.data_ptr, w.data_ptr, None, r.data_ptr, m, n, k, k, n, dt, dt, 0, dt)
    for o, r in zip(outs, refs, strict=True):
        assert torch.equal(theirs(o), theirs(r))


@pytest.mark.parametrize("dt", [DType.bfloat16, DType.float32])
@pytest.mark.parametrize(("m", "k"), [(1, 64), (3, 40), (16, 512), (20, 96), (1, 36)])
@pytest.mark.parametrize("shared", [False, True])
def test_linear_strided_batched_equals_linears(dt: DType, m: int, k: int, shared: bool) -> None:
    """One launch for every head where the tensor-core GEMV takes them (bf16, m <= 16, aligned),
    one toc_linear each otherwise: the bits of per-head linears on the device either way."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "unit" / "test_linear_strided_batched.py"
    spec = importlib.util.spec_from_file_location("strided_batched_checks", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.check_device("cuda:0", dt, m, k, shared)


@pytest.mark.parametrize("ndt", [DType.bfloat16, DType.float32])
@pytest.mark.parametrize(
    ("k", "segs", "res"),
    # q/k/v of Qwen3-30B-A3B's attention; a k below one 32-wide step; k not a multiple of 32;
    # one matrix with a residual (o_proj, down); the scalar GEMV's limit is not this one's
    [
        (2048, (4096, 512, 512), False),
        (24, (8, 16, 8), False),
        (1000, (300, 7, 21), False),
        (2560, (2560,), True),
        (5120, (40,), False),
        (1024, (30001,), False),  # an LM head's shape, with the argmax
    ],
)
def test_gemv_fused_one_row_against_torch(
    k: int, segs: tuple[int, ...], res: bool, ndt: DType
) -> None:
    """toc_gemv_fused on one bf16 row (the graph step's q/k/v with its RMSNorm, o_proj and down
    with their residual, the LM head with its argmax; the tensor-core GEMV takes these): RMSNorm
    rounded like the norm op, each segment's products within a bf16 step of fp32 sums, segments
    written one after another; one matrix without a residual also gives the packed argmax of
    its rounded outputs (the first of equal maxima)."""
    g = torch.Generator().manual_seed(k + len(segs))
    x = torch.randn(1, k, generator=g).bfloat16()
    nw = None if res else (1.0 + 0.1 * torch.randn(k, generator=g)).to(TDT[ndt])
    ws = [(torch.randn(n, k, generator=g) * 0.05).bfloat16() for n in segs]
    r = torch.randn(1, segs[0], generator=g).bfloat16() if res else None
    n = sum(segs)
    xd, *wd = (ours(a, DEV) for a in [x, *ws])
    nwd = ours(nw, DEV) if nw is not None else None
    rd = ours(r, DEV) if r is not None else None
    y = Tensor.empty((1, n), DType.bfloat16, DEV)
    amax = Tensor.zeros((1,), DType.int64, DEV) if len(segs) == 1 and not res else None
    w3 = [*wd, None, None][:3]
    n3 = [*segs, 0, 0][:3]
    cuda.check(
        cuda.lib().toc_gemv_fused(
            xd.data_ptr, k, 1, nwd.data_ptr if nwd is not None else None, int(ndt), 1e-6,
            w3[0].data_ptr, n3[0], w3[1].data_ptr if w3[1] is not None else None, n3[1],
            w3[2].data_ptr if w3[2] is not None else None, n3[2], k,
            rd.data_ptr if rd is not None else None, segs[0], 0, y.data_ptr, n,
            int(DType.bfloat16), amax.data_ptr if amax is not None else None,
        ),
        "toc_gemv_fused",
    )  # fmt: skip
    xs = x.float()
    if nw is not None:
        rr = torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-6)
        xs = (nw.float() * (xs * rr).bfloat16().float()).bfloat16().float()
    want = torch.cat([xs @ w.float().T for w in ws], dim=1)
    if r is not None:
        want = r.float() + want.bfloat16().float()
    got = theirs(y).float()
    assert torch.allclose(got, want.bfloat16().float(), rtol=1.6e-2, atol=2e-3), (
        (got - want).abs().max()
    )
    if amax is not None:
        key = int(theirs(amax).reshape(-1)[0]) & 0xFFFFFFFF
        assert 0xFFFFFFFF - key == int(torch.argmax(got.reshape(-1)))  # the first maximum


def test_attention_offsets_on_another_device_than_q() -> None:
    """cu_seqlens on the GPU with q/k/v on the host (and the reverse) is copied where the
    kernel reads it (it used to hand a device pointer to the CPU kernel: a segfault)."""
    g = torch.Generator().manual_seed(3)
    q = tb.to_pio(torch.randn(7, 2, 16, generator=g))
    k = tb.to_pio(torch.randn(7, 2, 16, generator=g))
    v = tb.to_pio(torch.randn(7, 2, 16, generator=g))
    offsets = Tensor.from_list([0, 3, 7], DType.int32)
    ref = ops.attention(q, k, v, causal=False, kv_layout="tokens", cu_seqlens=offsets).tolist()
    got = ops.attention(
        q, k, v, causal=False, kv_layout="tokens", cu_seqlens=offsets.to("cuda")
    ).tolist()
    assert got == ref
    qd, kd, vd = q.to("cuda"), k.to("cuda"), v.to("cuda")
    dev = ops.attention(qd, kd, vd, causal=True, kv_layout="tokens", cu_seqlens=offsets).tolist()
    host = ops.attention(q, k, v, causal=True, kv_layout="tokens", cu_seqlens=offsets).tolist()
    torch.testing.assert_close(torch.tensor(dev), torch.tensor(host), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_int64_casts_round_once_on_the_device(dtype: str) -> None:
    vals = [2**60 + 2**36 + 1, 2**53 + 2**29 + 1, -(2**60 + 2**36 + 1), 2**24 + 1, 65519, -7]
    host = Tensor.from_list(vals, "int64")
    assert host.to("cuda").to(dtype).to("cpu").tolist() == host.to(dtype).tolist()


def test_attention_with_more_queries_than_a_grid_dimension() -> None:
    """Past 65535 queries the split kernels (head dims other than 64 / 128) run in chunks: the
    queries sat in gridDim.z, whose limit made such a prefill fail."""
    t, hd = 66_000, 96
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(t, 1, hd, generator=g).to(torch.bfloat16) for _ in range(3))
    got = ops.attention(ours(q, DEV), ours(k, DEV), ours(v, DEV), kv_layout="tokens")
    out = theirs(got).float()
    qf, kf, vf = q.float()[:, 0], k.float()[:, 0], v.float()[:, 0]
    for i in (0, 1, 65_534, 65_535, 65_536, t - 1):  # rows on both sides of the chunk edge
        p = torch.softmax(qf[i] @ kf[: i + 1].T / hd**0.5, dim=-1)
        want = p @ vf[: i + 1]
        assert rel(out[i, 0], want) < 2e-2, i


def test_embedding_of_a_table_view_at_an_odd_offset() -> None:
    """A bf16 table view 2 bytes past a 16-byte boundary takes the element-wise path (the
    vector path faulted on the misaligned address)."""
    vocab, dim = 16, 64
    g = torch.Generator().manual_seed(6)
    flat = torch.randn(vocab * dim + 1, generator=g).to(torch.bfloat16)
    table = ours(flat, DEV).narrow(0, 1, vocab * dim).view(vocab, dim)
    ids = Tensor.from_list([1, 2, 15], DType.int32).to(DEV)
    got = theirs(ops.embedding(ids, table))
    want = flat[1:].view(vocab, dim)[[1, 2, 15]]
    assert torch.equal(got, want)


def test_threads_sharing_the_gemm_and_attention_workspaces() -> None:
    """Host threads on one device: the GEMM epilogue's and the split attention's scratch
    buffers are reserved and read by one call at a time."""
    import threading

    g = torch.Generator().manual_seed(7)
    x = ours(torch.randn(64, 256, generator=g).to(torch.bfloat16), DEV)
    w = ours(torch.randn(512, 256, generator=g).to(torch.bfloat16), DEV)
    b = ours(torch.randn(512, generator=g), DEV)
    q = ours(torch.randn(1, 8, 96, generator=g), DEV)
    kc = ours(torch.randn(2, 4096, 96, generator=g), DEV)
    ref_l = theirs(ops.linear(x, w, b))
    ref_a = theirs(ops.attention(q, kc, kc, kv_len=4096, q_pos=4095))
    bad: list[str] = []

    def run() -> None:
        cuda.set_device(DEV)
        for _ in range(100):
            if not torch.equal(theirs(ops.linear(x, w, b)), ref_l):
                bad.append("linear")
            if not torch.equal(theirs(ops.attention(q, kc, kc, kv_len=4096, q_pos=4095)), ref_a):
                bad.append("attention")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not bad, bad[:5]


def _vocab_rows(rows: int, dim: int, dt: DType, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, dim, generator=g) * 3).to(TDT[dt])
    x[:, ::97] = x[:, 5:6]  # ties with a value, across chunks
    x[:, 1000:1400] = float("-inf")  # -inf runs, a whole chunk of them where dim allows
    if dim > 20000:
        x[:, 16384:20480] = float("-inf")
    return x


@pytest.mark.parametrize("k", [1, 5, 20, 64, 65])
@pytest.mark.parametrize(("rows", "dim"), [(1, 151936), (3, 40001), (2, 16384), (65, 20000)])
@pytest.mark.parametrize("dt", FLOATS)
def test_topk_of_long_rows_equals_the_cpu(dt: DType, rows: int, dim: int, k: int) -> None:
    """Long rows take the chunked top-k (chunks' candidates, then a merge): the same values and
    ids, in the same order (ties: lower id first), as the CPU backend; k 65 and 65 rows take the
    one-block kernel."""
    x = _vocab_rows(rows, dim, dt, seed=rows * dim + k)
    vals, idx = ops.topk(ours(x, DEV), k)
    cvals, cidx = ops.topk(ours(x), k)
    assert torch.equal(theirs(idx), theirs(cidx))
    assert torch.equal(theirs(vals).float(), theirs(cvals).float())


@pytest.mark.parametrize("log_", [False, True])
@pytest.mark.parametrize(("rows", "dim"), [(1, 151936), (4, 32768), (2, 40001), (65, 32768)])
@pytest.mark.parametrize("dt", FLOATS)
def test_softmax_of_long_rows(dt: DType, rows: int, dim: int, log_: bool) -> None:
    """Long rows take the chunked softmax (per-chunk max and sum, combined): against float64
    torch, with a whole chunk of -inf (exp(-inf) terms) in the row; an all -inf row is NaN as
    torch's."""
    x = _vocab_rows(rows, dim, dt, seed=dim + rows)
    x[-1] = float("-inf")
    fn = ops.log_softmax if log_ else ops.softmax
    got = theirs(fn(ours(x, DEV), out_dtype=DType.float32)).double()
    ref = (torch.log_softmax if log_ else torch.softmax)(x.double(), -1)
    assert torch.isnan(ref[-1]).all()
    assert torch.isnan(got[-1]).all()
    a, b = got[:-1], ref[:-1]
    finite = torch.isfinite(b)
    assert torch.equal(finite, torch.isfinite(a))
    assert rel(a[finite], b[finite]) < 1e-5
