"""Each CUDA op against torch (fp32/fp64 reference on the CPU, and torch on the GPU where it has
the op) and against the CPU backend when libtensor_ops exports that op.

Tolerances (relative error ‖out − ref‖ / ‖ref‖): fp32 ≤ 1e-5 for elementwise/norm/rope/softmax,
≤ 1e-4 for reductions over long rows (linear, attention); bf16 ≤ 1e-2 (8 mantissa bits: one
rounding is ~2e-3 relative). Exact ops (copies, casts of representable values, argmax, embedding)
must match exactly.
"""

from __future__ import annotations

import ctypes
import itertools
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from inference_pio import cuda, ops  # noqa: E402
from inference_pio._native import lib  # noqa: E402
from inference_pio.backend import backend  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.errors import NativeError  # noqa: E402
from inference_pio.tensor import Tensor, tensor  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402

TDT = tb.TDT
rel = tb.rel
theirs = tb.from_device
ours = tb.to_device

DEV = "cuda:0"
FLOATS = [DType.float32, DType.bfloat16]


def tol(dt: DType, fp32: float = 1e-5) -> float:
    return fp32 if dt == DType.float32 else 1e-2


def has_cpu(op: str) -> bool:
    return hasattr(lib(), "to_" + op)


def test_device_and_memory() -> None:
    info = cuda.device_info(DEV)
    assert info["name"]
    assert info["multiprocessors"] > 0
    before = cuda.memory_stats(DEV)
    t = Tensor.empty((1 << 20,), DType.float32, DEV)
    mid = cuda.memory_stats(DEV)
    assert mid["in_use"] >= before["in_use"] + (4 << 20)
    assert mid["peak"] >= mid["in_use"]
    del t
    after = cuda.memory_stats(DEV)
    assert after["in_use"] == before["in_use"]
    assert after["cached"] >= 4 << 20
    again = Tensor.empty((1 << 20,), DType.float32, DEV)  # served from the cache
    assert cuda.memory_stats(DEV)["mallocs"] == after["mallocs"]
    del again


def test_info_lists_the_devices() -> None:
    """`inference-pio info`'s CUDA section where CUDA is usable: versions and every device."""
    from inference_pio.native_info import cuda_info

    gpu = cuda_info()
    assert gpu["available"]
    assert gpu["driver"]
    assert gpu["runtime"]
    names = [d["device"] for d in gpu["devices"]]
    assert names == [f"cuda:{i}" for i in range(cuda.device_count())]
    first = gpu["devices"][0]
    assert first["name"] == cuda.device_info(DEV)["name"]
    assert first["total_memory"] > 0
    assert first["multiprocessors"] > 0
    assert tuple(int(v) for v in first["compute_capability"].split(".")) >= (8, 0)


def test_roundtrip_zero_clone_contiguous() -> None:
    x = torch.randn(37, 19)
    d = ours(x, DEV)
    assert torch.equal(theirs(d), x)
    assert torch.equal(theirs(d.clone()), x)
    assert torch.equal(theirs(d.transpose(0, 1).contiguous()), x.t().contiguous())
    z = Tensor.empty((5, 3), DType.float32, DEV).zero_()
    assert torch.equal(theirs(z), torch.zeros(5, 3))
    pinned = cuda.PinnedBuffer(1024)
    assert pinned.ptr


def test_mixing_devices_raises() -> None:
    a = ours(torch.randn(8), DEV)
    b = ours(torch.randn(8))
    with pytest.raises(ValueError, match="different devices"):
        ops.add(a, b)


@pytest.mark.parametrize("n", [10007, 8000])  # 8000: the vectorised bf16 kernel
@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary(op: str, dt: DType, n: int) -> None:
    a, b = torch.randn(n).to(TDT[dt]), torch.randn(n).to(TDT[dt])
    ref = (a.float() + b.float()) if op == "add" else (a.float() * b.float())
    out = theirs(getattr(ops, op)(ours(a, DEV), ours(b, DEV)))
    assert torch.equal(out, ref.to(TDT[dt]))  # one rounding of an exact fp32 result
    assert torch.equal(out, (a + b) if op == "add" else (a * b))


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("op", ["silu", "sigmoid", "exp", "softplus", "gelu"])
def test_unary(op: str, dt: DType) -> None:
    x = (torch.randn(4099) * 3).to(TDT[dt])
    fns = {
        "silu": torch.nn.functional.silu,
        "sigmoid": torch.sigmoid,
        "exp": torch.exp,
        "softplus": torch.nn.functional.softplus,
        "gelu": torch.nn.functional.gelu,
    }
    ref = fns[op](x.double())
    out = theirs(getattr(ops, op)(ours(x, DEV)))
    assert rel(out, ref) < tol(dt, 1e-6)
    if has_cpu(op):
        cpu = theirs(getattr(ops, op)(ours(x)))
        assert rel(out, cpu.double()) < tol(dt, 1e-6)
    gpu_ref = fns[op](x.cuda().float()).cpu()
    assert rel(out, gpu_ref.double()) < tol(dt, 1e-6)


@pytest.mark.parametrize("dt", FLOATS)
def test_swiglu(dt: DType) -> None:
    g, u = torch.randn(6, 300).to(TDT[dt]), torch.randn(6, 300).to(TDT[dt])
    ref = torch.nn.functional.silu(g) * u  # HF: act_fn(gate) * up in the model dtype
    out = Tensor.empty((6, 300), dt, DEV)
    dg, du = ours(g, DEV), ours(u, DEV)  # keep the device tensors alive across the call
    backend(DEV).call("swiglu", dg.data_ptr, du.data_ptr, out.data_ptr, 6, 300, 300, 300, 300, dt)
    assert rel(theirs(out), ref) < tol(dt, 1e-6)


@pytest.mark.parametrize("inter", [8, 20, 2560, 9728])
def test_swiglu_bf16_rows(inter: int) -> None:
    """bf16 rows (the vectorised kernel where inter % 8 == 0, the scalar one otherwise) equal the
    rounding of the CPU reference exactly: silu(gate) rounded to bf16, times up."""
    rows = 37
    g = torch.randn(rows, inter).to(torch.bfloat16)
    u = torch.randn(rows, inter).to(torch.bfloat16)
    ref = (torch.nn.functional.silu(g.float()).to(torch.bfloat16).float() * u.float()).to(
        torch.bfloat16
    )
    out = Tensor.empty((rows, inter), DType.bfloat16, DEV)
    dg, du = ours(g, DEV), ours(u, DEV)
    backend(DEV).call(
        "swiglu",
        dg.data_ptr,
        du.data_ptr,
        out.data_ptr,
        rows,
        inter,
        inter,
        inter,
        inter,
        DType.bfloat16,
    )
    assert rel(theirs(out), ref) < 1e-2
    # against the scalar kernel (an odd row stride forces it)
    wide = Tensor.empty((rows, inter + 1), DType.bfloat16, DEV)
    backend(DEV).call(
        "swiglu",
        dg.data_ptr,
        du.data_ptr,
        wide.data_ptr,
        rows,
        inter,
        inter,
        inter,
        inter + 1,
        DType.bfloat16,
    )
    assert torch.equal(theirs(wide)[:, :inter], theirs(out))


@pytest.mark.parametrize("dt", FLOATS)
def test_cast_and_copy_strided(dt: DType) -> None:
    x = torch.randn(33, 65)
    d = ours(x, DEV)
    y = Tensor.empty((33, 65), dt, DEV)
    backend(DEV).call("cast", d.data_ptr, DType.float32, y.data_ptr, dt, x.numel())
    assert torch.equal(theirs(y), x.to(TDT[dt]))
    v = d.transpose(0, 1)
    assert torch.equal(theirs(v.contiguous()), x.t().contiguous())
    # Tensor.to(dtype) on the device: the same bits as the CPU's conversion, strided source too
    assert d.to(dt).device == d.device
    assert torch.equal(theirs(d.to(dt)), theirs(ours(x).to(dt)))
    assert torch.equal(theirs(v.to(dt)), x.t().contiguous().to(TDT[dt]))
    assert torch.equal(theirs(d.to(dt).to(DType.float32)), x.to(TDT[dt]).float())


@pytest.mark.parametrize("dt", FLOATS)
def test_rms_norm(dt: DType) -> None:
    x = torch.randn(7, 4, 128).to(TDT[dt])
    w = (1 + 0.1 * torch.randn(128)).to(TDT[dt])
    var = x.float().pow(2).mean(-1, keepdim=True)
    ref = w * (x.float() * torch.rsqrt(var + 1e-6)).to(TDT[dt])  # HF Qwen3RMSNorm
    out = theirs(ops.rms_norm(ours(x, DEV), ours(w, DEV), 1e-6))
    assert rel(out, ref) < tol(dt)
    if has_cpu("rms_norm"):
        assert rel(out, theirs(ops.rms_norm(ours(x), ours(w), 1e-6))) < tol(dt)


@pytest.mark.parametrize("dim", [8, 100, 128, 2560, 4096, 4104, 12288, 32768])
def test_rms_norm_bf16_rows(dim: int) -> None:
    """bf16 rows (the vectorised kernel for dim % 8 == 0, 1-8 warps a row by width, up to 32768;
    the scalar one otherwise): HF's Qwen3RMSNorm, and the scalar kernel (reached through an odd
    stride). The two kernels sum the squares in different orders, so a row's scale may differ in
    its last bit and round an element one bf16 step apart: at most 0.1% of the elements may
    differ, by at most one step."""
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(50, dim, generator=g).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(dim, generator=g)).to(torch.bfloat16)
    var = x.float().pow(2).mean(-1, keepdim=True)
    ref = w * (x.float() * torch.rsqrt(var + 1e-6)).to(torch.bfloat16)
    dx, dw = ours(x, DEV), ours(w, DEV)
    out = theirs(ops.rms_norm(dx, dw, 1e-6))
    assert rel(out, ref) < 1e-2
    wide = Tensor.empty((50, dim + 1), DType.bfloat16, DEV)
    backend(DEV).call(
        "rms_norm",
        dx.data_ptr,
        dw.data_ptr,
        None,
        wide.data_ptr,
        1,
        50,
        dim,
        0,
        dim,
        0,
        0,
        0,
        dim + 1,
        1e-6,
        0,
        DType.bfloat16,
        DType.bfloat16,
        DType.bfloat16,
    )
    scalar = theirs(wide)[:, :dim]
    differ = scalar != out
    assert int(differ.sum()) <= max(1, out.numel() // 1000)
    step = (out.float().abs() * 2.0**-7).clamp_min(1e-30)  # one bf16 step at most
    assert bool(((scalar.float() - out.float()).abs() <= step * 1.01).all())


def test_layer_norm() -> None:
    x, w, b = torch.randn(9, 300), torch.randn(300), torch.randn(300)
    ref = torch.nn.functional.layer_norm(x.double(), (300,), w.double(), b.double(), 1e-6)
    out = theirs(ops.layer_norm(ours(x, DEV), ours(w, DEV), ours(b, DEV), 1e-6))
    assert rel(out, ref) < 1e-5


@pytest.mark.parametrize("dt", FLOATS)
def test_rope(dt: DType) -> None:
    pos = torch.randint(0, 4000, (11,), dtype=torch.int32)
    cos, sin = ops.rope_cache(ours(pos, DEV), 128, 1e6, dt)
    inv = 1.0 / (1e6 ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128))
    ang = pos.float()[:, None] * inv[None]
    ref_cos = torch.cat([ang.cos(), ang.cos()], -1).to(TDT[dt])
    assert rel(theirs(cos), ref_cos) < tol(dt, 1e-5)
    x = torch.randn(11, 4, 128).to(TDT[dt])
    d = ours(x, DEV)
    ops.rope_apply(d, cos, sin)
    c, s = theirs(cos)[:, None], theirs(sin)[:, None]
    rot = torch.cat([-x[..., 64:], x[..., :64]], -1)
    ref = x * c + rot * s
    assert rel(theirs(d), ref) < tol(dt, 1e-5)
    if has_cpu("rope_apply"):
        cx = ours(x)
        ops.rope_apply(cx, cos.to("cpu"), sin.to("cpu"))
        assert rel(theirs(d), theirs(cx)) < tol(dt, 1e-6)


@pytest.mark.parametrize("dt", FLOATS)
def test_softmax_argmax_topk(dt: DType) -> None:
    x = torch.randn(5, 1000).to(TDT[dt])
    sm = theirs(ops.softmax(ours(x, DEV), out_dtype=DType.float32))
    assert rel(sm, torch.softmax(x.double(), -1)) < 1e-5
    am = theirs(ops.argmax(ours(x, DEV)))
    assert torch.equal(am, x.float().argmax(-1))
    vals, idx = ops.topk(ours(x, DEV), 7)
    ref = torch.topk(x.float(), 7, -1)
    got_v, got_i = theirs(vals).float(), theirs(idx)
    assert torch.equal(got_v, ref.values)  # indices of ties: ours takes the lower index first
    assert torch.equal(torch.gather(x.float(), 1, got_i), got_v)
    for r in range(5):
        for j in range(6):
            if got_v[r, j] == got_v[r, j + 1]:
                assert got_i[r, j] < got_i[r, j + 1]


def test_embedding() -> None:
    table = torch.randn(500, 64).to(torch.bfloat16)
    ids = torch.randint(0, 500, (17,), dtype=torch.int32)
    out = Tensor.empty((17, 64), DType.bfloat16, DEV)
    di, dt_ = ours(ids, DEV), ours(table, DEV)
    backend(DEV).call(
        "embedding",
        di.data_ptr,
        DType.int32,
        17,
        dt_.data_ptr,
        DType.bfloat16,
        500,
        64,
        out.data_ptr,
        DType.bfloat16,
    )
    assert torch.equal(theirs(out), table[ids.long()])


@pytest.mark.parametrize("m", [1, 2, 3, 8, 12, 16, 64, 300])
@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("k", [1024, 3072, 4096])
def test_linear(m: int, dt: DType, k: int) -> None:
    """2-16 rows of bf16 run on the tensor-core GEMV (a tail of 3 weight rows past the last full
    tile of 8); fp32 rows up to 8 on the scalar GEMV: k 4096 with 5-8 rows stages 128 KB of x in
    shared memory (opted in past 48 KB), k 3072 with 3 rows (staged as 4) exactly 48 KB, which with
    the block's static part needs the opt-in too."""
    n = 523
    x = torch.randn(m, k).to(TDT[dt])
    w = (torch.randn(n, k) * 0.05).to(TDT[dt])
    y = Tensor.empty((m, n), dt, DEV)
    dx, dw = ours(x, DEV), ours(w, DEV)
    backend(DEV).call(
        "linear", dx.data_ptr, dw.data_ptr, None, y.data_ptr, m, n, k, k, n, dt, dt, 0, dt
    )
    ref = x.double() @ w.double().t()
    assert rel(theirs(y), ref) < tol(dt, 1e-5)
    gpu = (x.cuda() @ w.cuda().t()).cpu()
    assert rel(theirs(y), gpu.double()) < tol(dt, 1e-3)


@pytest.mark.parametrize("m", [40, 300])
def test_linear_strided_and_unaligned_rows(m: int) -> None:
    """bf16 products of more than 16 rows (cuBLAS where present, whose plans are kept per shape
    and alignment): x rows with a stride past k, y starting one element into its buffer with a
    stride past n (rows 2-byte aligned), then the same shape again with aligned rows."""
    n, k, ldx, ldy = 523, 1024, 1032, 530
    dt = DType.bfloat16
    x = torch.randn(m, ldx).to(torch.bfloat16)
    w = (torch.randn(n, k) * 0.05).to(torch.bfloat16)
    dx, dw = ours(x, DEV), ours(w, DEV)
    ref = x[:, :k].double() @ w.double().t()
    for offset in (1, 0):
        y = Tensor.zeros((m * ldy + 1,), dt, DEV)
        backend(DEV).call(
            "linear", dx.data_ptr, dw.data_ptr, None, y.data_ptr + 2 * offset, m, n, k, ldx, ldy,
            dt, dt, 0, dt,
        )  # fmt: skip
        flat = theirs(y)
        got = flat[offset : offset + m * ldy].reshape(m, ldy)
        assert rel(got[:, :n], ref) < 1e-2
        assert torch.count_nonzero(got[:, n:]) == 0  # nothing written past n
        assert offset == 0 or flat[0] == 0


def test_linear_bias_mixed() -> None:
    x, w, b = torch.randn(4, 72), torch.randn(40, 72).to(torch.bfloat16), torch.randn(40)
    y = Tensor.empty((4, 40), DType.float32, DEV)
    dx, dw, db = ours(x, DEV), ours(w, DEV), ours(b, DEV)
    backend(DEV).call(
        "linear",
        dx.data_ptr,
        dw.data_ptr,
        db.data_ptr,
        y.data_ptr,
        4,
        40,
        72,
        72,
        40,
        DType.float32,
        DType.bfloat16,
        DType.float32,
        DType.float32,
    )
    assert rel(theirs(y), x.double() @ w.double().t() + b.double()) < 1e-5


def _prefill_case(
    tq: int, past: int, nh: int, nkv: int, hd: int, seed: int, spare: int
) -> tuple[Any, Any, Any, Tensor, Tensor]:
    """Random bf16 queries [tq, nh, hd] and past + tq keys / values [kv, nkv, hd], and device
    caches holding those keys and values with `spare` free slots."""
    kv = past + tq
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(tq, nh, hd, generator=g).to(torch.bfloat16)
    k = torch.randn(kv, nkv, hd, generator=g).to(torch.bfloat16)
    v = torch.randn(kv, nkv, hd, generator=g).to(torch.bfloat16)
    kc = Tensor.zeros((nkv, kv + spare, hd), DType.bfloat16, DEV)
    vc = Tensor.zeros((nkv, kv + spare, hd), DType.bfloat16, DEV)
    ops.kv_cache_append(ours(k, DEV), ours(v, DEV), kc, vc, 0)
    return q, k, v, kc, vc


def _full_ref(q: Any, k: Any, v: Any) -> Any:
    """q [tq, nh, hd], k/v [kv, nkv, hd] -> [tq, nh, hd], every query over every key (float64)."""
    rep = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(rep, 1).transpose(0, 1)
    vv = v.double().repeat_interleave(rep, 1).transpose(0, 1)
    s = q.double().transpose(0, 1) @ kk.transpose(1, 2) / q.shape[2] ** 0.5
    return (torch.softmax(s, -1) @ vv).transpose(0, 1)


def _sdpa_ref(q: Any, k: Any, v: Any, q_pos: int) -> Any:
    """q [tq, nh, hd], k/v [kv, nkv, hd] -> [tq, nh, hd] causal at absolute positions q_pos + i."""
    tq, nh, hd = q.shape
    kv, nkv, _ = k.shape
    rep = nh // nkv
    kk = k.double().repeat_interleave(rep, 1).transpose(0, 1)
    vv = v.double().repeat_interleave(rep, 1).transpose(0, 1)
    s = q.double().transpose(0, 1) @ kk.transpose(1, 2) / hd**0.5
    mask = torch.arange(kv)[None, :] > (q_pos + torch.arange(tq))[:, None]
    s = s.masked_fill(mask[None], float("-inf"))
    return (torch.softmax(s, -1) @ vv).transpose(0, 1)


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize(("tq", "past"), [(1, 0), (1, 700), (5, 40), (200, 0), (130, 70)])
def test_attention_cache(dt: DType, tq: int, past: int) -> None:
    nh, nkv, hd, cap = 8, 2, 128, 1024
    kv = past + tq
    q = torch.randn(tq, nh, hd).to(TDT[dt])
    k = torch.randn(kv, nkv, hd).to(TDT[dt])
    v = torch.randn(kv, nkv, hd).to(TDT[dt])
    kc = Tensor.zeros((nkv, cap, hd), dt, DEV)
    vc = Tensor.zeros((nkv, cap, hd), dt, DEV)
    ops.kv_cache_append(ours(k, DEV), ours(v, DEV), kc, vc, 0)
    assert torch.equal(theirs(kc)[:, :kv], k.transpose(0, 1))
    out = theirs(ops.attention(ours(q, DEV), kc, vc, kv_len=kv, q_pos=past))
    ref = _sdpa_ref(q, k, v, past)
    assert rel(out, ref) < tol(dt, 1e-4)
    if has_cpu("attention") and tq * kv < 100_000:
        ck, cv = kc.to("cpu"), vc.to("cpu")
        cpu = theirs(ops.attention(ours(q), ck, cv, kv_len=kv, q_pos=past))
        assert rel(out, cpu) < tol(dt, 1e-4)
    if dt == DType.bfloat16:
        sd = (
            torch.nn.functional.scaled_dot_product_attention(
                q.cuda().transpose(0, 1)[None],
                k.cuda().transpose(0, 1)[None].repeat_interleave(4, 1),
                v.cuda().transpose(0, 1)[None].repeat_interleave(4, 1),
                attn_mask=(torch.arange(kv)[None, :] <= (past + torch.arange(tq))[:, None]).cuda(),
            )[0]
            .transpose(0, 1)
            .cpu()
        )
        assert rel(out, sd) < 1e-2


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize(
    ("hd", "nh", "nkv", "tq", "past"),
    [
        (32, 3, 3, 1, 0),
        (64, 16, 8, 1, 4098),
        (96, 6, 2, 2, 37),
        (128, 32, 8, 1, 1001),
        (192, 12, 1, 1, 130),
        (256, 8, 1, 3, 515),
        (80, 24, 2, 1, 9),
    ],
)
def test_split_k_decode_attention(
    dt: DType, hd: int, nh: int, nkv: int, tq: int, past: int
) -> None:
    """The split-K kernel (a few query tokens over a long cache): head_dim not a multiple of 32
    or up to 256, more than 8 query heads per kv head, key counts that leave partial steps of
    four keys per warp and splits with a single key."""
    kv = past + tq
    g = torch.Generator().manual_seed(hd + nh + past)
    q = torch.randn(tq, nh, hd, generator=g).to(TDT[dt])
    k = (torch.randn(kv, nkv, hd, generator=g) * 2).to(TDT[dt])
    v = torch.randn(kv, nkv, hd, generator=g).to(TDT[dt])
    kc = Tensor.zeros((nkv, kv + 5, hd), dt, DEV)
    vc = Tensor.zeros((nkv, kv + 5, hd), dt, DEV)
    ops.kv_cache_append(ours(k, DEV), ours(v, DEV), kc, vc, 0)
    out = theirs(ops.attention(ours(q, DEV), kc, vc, kv_len=kv, q_pos=past))
    assert rel(out, _sdpa_ref(q, k, v, past)) < tol(dt, 1e-4)


def _caches_holding(
    olds: list[tuple[Any, Any]], caps: list[int], nkv: int, hd: int, dt: DType
) -> list[tuple[Tensor, Tensor]]:
    """Zeroed [nkv, cap, hd] key/value caches with each sequence's earlier rows appended."""
    caches = []
    for (k0, v0), cap in zip(olds, caps, strict=True):
        kc, vc = Tensor.zeros((nkv, cap, hd), dt, DEV), Tensor.zeros((nkv, cap, hd), dt, DEV)
        if k0.shape[0]:
            ops.kv_cache_append(ours(k0, DEV), ours(v0, DEV), kc, vc, 0)
        caches.append((kc, vc))
    return caches


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize(
    ("hd", "nh", "nkv"), [(128, 16, 8), (64, 12, 2), (96, 6, 3), (256, 8, 1), (64, 24, 2)]
)
def test_attention_decode_batch(dt: DType, hd: int, nh: int, nkv: int) -> None:
    """One call appends each sequence's new key/value row to its own cache (capacities and
    lengths differ) and attends: the caches and outputs of the per-sequence ops. (With 12 query
    heads per kv head, two blocks share a kv head's keys; one writes the new row to the cache.)"""
    g = torch.Generator().manual_seed(hd + nh)
    past = [0, 5, 700, 64, 1, 3000]
    caps = [8, 40, 1024, 65, 2, 3001]
    n = len(past)
    q = torch.randn(n, nh, hd, generator=g).to(TDT[dt])
    kn = torch.randn(n, nkv, hd, generator=g).to(TDT[dt])
    vn = torch.randn(n, nkv, hd, generator=g).to(TDT[dt])
    olds = [
        (
            (torch.randn(p, nkv, hd, generator=g) * 2).to(TDT[dt]),
            torch.randn(p, nkv, hd, generator=g).to(TDT[dt]),
        )
        for p in past
    ]
    caches = _caches_holding(olds, caps, nkv, hd, dt)
    out = Tensor.empty((n, nh * hd), dt, DEV)
    ptrs = ctypes.c_void_p * n
    i64 = ctypes.c_int64 * n
    dq, dk, dv = ours(q, DEV), ours(kn, DEV), ours(vn, DEV)
    rc = cuda.lib().toc_attention_decode_batch(
        dq.data_ptr, dk.data_ptr, dv.data_ptr, out.data_ptr, n, nh, nkv, hd,
        ptrs(*[c[0].data_ptr for c in caches]), ptrs(*[c[1].data_ptr for c in caches]),
        i64(*caps), i64(*past), hd**-0.5, int(dt), int(dt),
    )  # fmt: skip
    cuda.check(rc, "toc_attention_decode_batch")
    got = theirs(out).reshape(n, nh, hd)
    for s in range(n):
        k_all = torch.cat([olds[s][0], kn[s : s + 1]])
        v_all = torch.cat([olds[s][1], vn[s : s + 1]])
        assert torch.equal(theirs(caches[s][0])[:, : past[s] + 1], k_all.transpose(0, 1))
        assert torch.equal(theirs(caches[s][1])[:, : past[s] + 1], v_all.transpose(0, 1))
        ref = _sdpa_ref(q[s : s + 1], k_all, v_all, past[s])
        assert rel(got[s : s + 1], ref) < tol(dt, 1e-4), s
    full = i64(*caps)  # no room for one more token: an error, nothing written
    rc = cuda.lib().toc_attention_decode_batch(
        dq.data_ptr, dk.data_ptr, dv.data_ptr, out.data_ptr, n, nh, nkv, hd,
        ptrs(*[c[0].data_ptr for c in caches]), ptrs(*[c[1].data_ptr for c in caches]),
        i64(*caps), full, hd**-0.5, int(dt), int(dt),
    )  # fmt: skip
    with pytest.raises(NativeError, match="no room"):
        cuda.check(rc, "toc_attention_decode_batch")
    # the graph variant: tables and lengths in device memory, any number of key slices; a row
    # without room is skipped (zeros out, its cache untouched)
    for nsplit in (1, 5):
        fresh = _caches_holding(olds, caps, nkv, hd, dt)
        lens = past[:]
        lens[2] = caps[2]  # full: skipped
        ptab = tensor(
            [c[0].data_ptr for c in fresh] + [c[1].data_ptr for c in fresh] + caps,
            DType.int64,
            DEV,
        )
        dlen = tensor(lens, DType.int32, DEV)
        ws = Tensor.empty((n * nh * nsplit * (hd + 2),), DType.float32, DEV)
        out2 = Tensor.empty((n, nh * hd), dt, DEV)
        rc = cuda.lib().toc_attention_decode_batch_dev(
            dq.data_ptr, dk.data_ptr, dv.data_ptr, out2.data_ptr, n, nh, nkv, hd,
            ptab.data_ptr, ptab.data_ptr + 8 * n, ptab.data_ptr + 16 * n, dlen.data_ptr,
            hd**-0.5, int(dt), int(dt), nsplit, ws.data_ptr, 1,
        )  # fmt: skip
        cuda.check(rc, "toc_attention_decode_batch_dev")
        got2 = theirs(out2).reshape(n, nh, hd)
        for s in range(n):
            if s == 2:
                assert not theirs(out2)[s].any()
                assert torch.equal(theirs(fresh[s][0])[:, : past[s]], olds[s][0].transpose(0, 1))
                assert not theirs(fresh[s][0])[:, past[s] :].any()
                continue
            assert torch.equal(theirs(fresh[s][0]), theirs(caches[s][0])), s
            assert torch.equal(theirs(fresh[s][1]), theirs(caches[s][1])), s
            assert rel(got2[s], got[s]) < tol(dt, 1e-5), (s, nsplit)


@pytest.mark.parametrize(
    ("hd", "tq", "past", "causal"),
    [(64, 700, 0, True), (128, 333, 100, True), (128, 97, 0, False), (64, 64, 1, True)],
)
def test_flash_prefill(hd: int, tq: int, past: int, causal: bool) -> None:
    """The tensor-core prefill kernel (bf16, tq >= 32, head_dim 64/128) against float64 softmax
    attention: partial query and key tiles, a causal offset, non-causal."""
    q, k, v, kc, vc = _prefill_case(tq, past, 6, 2, hd, seed=tq + hd, spare=3)
    kv = past + tq
    out = theirs(ops.attention(ours(q, DEV), kc, vc, kv_len=kv, q_pos=past, causal=causal))
    ref = _sdpa_ref(q, k, v, past) if causal else _full_ref(q, k, v)
    assert rel(out, ref) < 1e-2


@pytest.mark.parametrize(
    ("hd", "tq", "past", "causal", "nh", "nkv"),
    [
        (128, 2048, 0, True, 8, 2),
        (128, 300, 77, True, 4, 4),
        (64, 129, 0, True, 6, 2),
        (128, 65, 0, False, 4, 1),
        (128, 201, 45, True, 8, 4),
        (64, 97, 0, True, 12, 2),
        (64, 190, 33, False, 2, 2),
    ],
)
def test_flash_prefill_kernels_agree(
    monkeypatch: pytest.MonkeyPatch, hd: int, tq: int, past: int, causal: bool, nh: int, nkv: int
) -> None:
    """Hopper's wgmma prefill kernel (the default on compute capability 9.0 where the library was
    built for 90a) and the mma.sync one (INFERENCE_PIO_CUDA_FLASH_WGMMA=0) against float64
    attention and each other: partial 128-query and 64-key tiles, causal offsets, GQA with an odd
    and an even number of query heads per kv head (blocks of one head or of a pair)."""
    q, k, v, kc, vc = _prefill_case(tq, past, nh, nkv, hd, seed=tq * 3 + hd + nh, spare=5)
    kv = past + tq
    outs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("INFERENCE_PIO_CUDA_FLASH_WGMMA", flag)
        outs[flag] = theirs(
            ops.attention(ours(q, DEV), kc, vc, kv_len=kv, q_pos=past, causal=causal)
        ).double()
    ref = _sdpa_ref(q, k, v, past) if causal else _full_ref(q, k, v)
    for flag, out in outs.items():
        assert rel(out, ref) < 1e-2, flag
    assert rel(outs["1"], outs["0"]) < 5e-3


def test_flash_prefill_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries over an empty key range (non-causal, kv_len 0) give zeros on both prefill kernels,
    as on the CPU."""
    q = torch.randn(40, 4, 64, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    kc = Tensor.zeros((2, 8, 64), DType.bfloat16, DEV)
    vc = Tensor.zeros((2, 8, 64), DType.bfloat16, DEV)
    cpu = theirs(
        ops.attention(
            ours(q, "cpu"),
            Tensor.zeros((2, 8, 64), DType.bfloat16, "cpu"),
            Tensor.zeros((2, 8, 64), DType.bfloat16, "cpu"),
            kv_len=0,
            q_pos=0,
            causal=False,
        )
    )
    for flag in ("1", "0"):
        monkeypatch.setenv("INFERENCE_PIO_CUDA_FLASH_WGMMA", flag)
        out = theirs(ops.attention(ours(q, DEV), kc, vc, kv_len=0, q_pos=0, causal=False))
        assert torch.equal(out, cpu), flag
        assert not out.any(), flag


def test_attention_segments() -> None:
    nh, nkv, hd = 4, 4, 64
    q, k, v = (torch.randn(10, n, hd) for n in (nh, nkv, nkv))
    out = theirs(
        ops.attention(
            ours(q, DEV),
            ours(k, DEV),
            ours(v, DEV),
            kv_layout="tokens",
            causal=False,
            cu_seqlens=[0, 4, 10],
        )
    )
    parts = []
    for a, b in ((0, 4), (4, 10)):
        s = q[a:b].transpose(0, 1) @ k[a:b].transpose(0, 1).transpose(1, 2) / hd**0.5
        parts.append((torch.softmax(s, -1) @ v[a:b].transpose(0, 1)).transpose(0, 1))
    assert rel(out, torch.cat(parts)) < 1e-5


@pytest.mark.parametrize(("nh", "nkv", "hd"), [(16, 16, 64), (8, 2, 128)])
def test_attention_segments_bf16_take_the_flash_kernels(nh: int, nkv: int, hd: int) -> None:
    """Vision-tower shapes: bidirectional attention inside each image of a packed batch; each
    segment of 32 or more queries runs the flash kernels (one call per segment)."""
    g = torch.Generator().manual_seed(nh + hd)
    bounds = [0, 784, 784, 1040, 1073]  # an empty segment, then 256 and 33 tokens
    t = bounds[-1]
    q, k, v = (torch.randn(t, n, hd, generator=g).to(torch.bfloat16) for n in (nh, nkv, nkv))
    out = theirs(
        ops.attention(
            ours(q, DEV), ours(k, DEV), ours(v, DEV), kv_layout="tokens", causal=False,
            cu_seqlens=bounds,
        )
    )  # fmt: skip
    parts = []
    for a, b in itertools.pairwise(bounds):
        if b == a:
            continue
        kk = k[a:b].float().repeat_interleave(nh // nkv, 1).transpose(0, 1)
        vv = v[a:b].float().repeat_interleave(nh // nkv, 1).transpose(0, 1)
        s = q[a:b].float().transpose(0, 1) @ kk.transpose(1, 2) / hd**0.5
        parts.append((torch.softmax(s, -1) @ vv).transpose(0, 1))
    assert rel(out.float(), torch.cat(parts)) < 1e-2


@pytest.mark.parametrize(("tq", "q_pos"), [(1, 70), (37, 0), (5, 20)])
@pytest.mark.parametrize("dt", FLOATS)
def test_attention_wide_heads(tq: int, q_pos: int, dt: DType) -> None:
    """Absorbed MLA's shape: 20 query heads over one kv head of 576 values whose first 512 are
    the values (head_dim_v < the key width), from a cache."""
    g = torch.Generator().manual_seed(tq + q_pos)
    nh, hd, hdv, cap = 20, 576, 512, 96
    kv_len = q_pos + tq
    q = torch.randn(tq, nh, hd, generator=g).to(TDT[dt])
    kc = torch.randn(1, cap, hd, generator=g).to(TDT[dt])
    out = theirs(
        ops.attention(ours(q, DEV), ours(kc, DEV), ours(kc, DEV), kv_len=kv_len, q_pos=q_pos,
                      head_dim_v=hdv, scale=0.06)
    )  # fmt: skip
    k = kc[0, :kv_len].float()
    s = torch.einsum("thd,kd->htk", q.float(), k) * 0.06
    mask = torch.arange(kv_len)[None, :] > (q_pos + torch.arange(tq))[:, None]
    s = s.masked_fill(mask[None], float("-inf"))
    ref = torch.einsum("htk,kd->thd", torch.softmax(s, -1), k[:, :hdv])
    assert rel(out.float(), ref) < (1e-5 if dt == DType.float32 else 1e-2)


def test_errors_are_reported() -> None:
    x = Tensor.empty((4,), DType.float32, DEV)
    with pytest.raises(Exception, match="dtype"):
        backend(DEV).call("add", x.data_ptr, x.data_ptr, x.data_ptr, 4, DType.int32)


def test_bandwidth_probes() -> None:
    """The device bandwidth probes return a plausible figure (GB/s between 10 and 100 000) and
    reject a buffer below 1 MiB with the library's message."""
    from inference_pio.errors import NativeError

    rbw = cuda.read_bandwidth(64 << 20, 2, DEV)
    cbw = cuda.copy_bandwidth(64 << 20, 2, DEV)
    assert 10.0 < rbw < 100_000.0
    assert 10.0 < cbw < 100_000.0
    with pytest.raises(NativeError, match="1 MiB"):
        cuda.read_bandwidth(1000, 1, DEV)
