"""Qwen3-MoE (Qwen3-Coder-30B-A3B's architecture) on CUDA against transformers and the CPU path on
tiny random checkpoints, and the two decode kernels behind its graph step (toc_moe_gemv,
toc_moe_combine) against torch.

bf16 checkpoints decode through the multi-kernel CUDA graph (router, expert GEMVs indexed on the
device, combine); fp32 ones through the op path (grouped experts, as on the CPU). Greedy tokens
must equal transformers' (eager experts) and the CPU path's; logits stay within the conformance
suite's tolerances. As there, bf16 fixtures scale the embedding and LM head x8 so that logits are
well separated (near-ties in a tiny random model would flip on rounding noise alone).
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio import cuda  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.errors import NativeError  # noqa: E402
from inference_pio.nn.cuda_graph import (  # noqa: E402
    CudaGraphDecoder,
    fused_unsupported_reason,
    unsupported_reason,
)
from inference_pio.testing import torch_bridge as tb  # noqa: E402
from inference_pio.testing.conformance import (  # noqa: E402
    hf_greedy_with_logits,
    rel_error,
    save_reference,
)

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

load = pytest.importorskip("inference_pio_qwen3_coder_30b.model").load

DEV = "cuda:0"
# 3 layers, the middle one dense (mlp_only_layers): both MLP kinds in one graph
TINY = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=192,
    moe_intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_experts=8,
    num_experts_per_tok=3,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[1],
    rope_theta=1e7,
    tie_word_embeddings=False,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
)


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kind = request.param
    d = tmp_path_factory.mktemp(f"qwen3moe-cuda-{kind}")
    dtype = "bfloat16" if kind == "bf16" else "float32"
    scale = 8.0 if kind == "bf16" else 1.0
    ref = save_reference(d, "Qwen3MoeForCausalLM", TINY, dtype, seed=5, logit_scale=scale)
    return kind, d, ref


def _prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [int(i) for i in torch.randint(0, 500, (n,), generator=g)]


def test_graph_decoder_takes_the_moe_layers(ckpt: Any) -> None:
    kind, d, _ = ckpt
    m = load(d, device="cuda").model
    if kind == "bf16":
        assert unsupported_reason(m) is None
        assert fused_unsupported_reason(m) == "a mixture-of-experts MLP"
        runner = CudaGraphDecoder(m, 64)
        assert not runner.fused
    else:
        assert unsupported_reason(m) is not None


@pytest.mark.parametrize("plen", [6, 45])
def test_greedy_matches_transformers_and_cpu(ckpt: Any, plen: int) -> None:
    _, d, ref = ckpt
    prompt = _prompt(plen, plen)
    n = 32
    want, _ = hf_greedy_with_logits(ref, prompt, n)
    gpu = load(d, device="cuda")
    got = gpu.generate(prompt, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids
    assert got == want
    cpu = load(d, device="cpu")
    assert cpu.generate(prompt, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids == got


def test_logits_prefill_then_decode(ckpt: Any) -> None:
    """The op path's prefill and decode logits (and, for bf16, the graph step's) against
    transformers: fp32 <= 1e-4, bf16 <= 2e-2 relative."""
    kind, d, ref = ckpt
    tol = 1e-4 if kind == "fp32" else 2e-2
    prompt = _prompt(37, 1)
    want, rows = hf_greedy_with_logits(ref, prompt, 4)
    m = load(d, device="cuda").model
    cache = m.new_cache(64)
    (lg,) = m.forward([(prompt, cache)])
    assert rel_error(tb.from_device(lg).float().reshape(-1), rows[0]) <= tol
    for i in range(1, 4):
        (lg,) = m.forward([([want[i - 1]], cache)])
        assert rel_error(tb.from_device(lg).float().reshape(-1), rows[i]) <= tol
    if kind == "bf16":
        runner = CudaGraphDecoder(m, 64)
        runner.cache.length = 0
        m.forward([(prompt, runner.cache)])
        step = runner.logits_after(want[0], len(prompt))
        assert rel_error(tb.from_device(step).float().reshape(-1), rows[1]) <= tol


def test_batched_and_sampled_generation(ckpt: Any) -> None:
    """generate_batch on cuda (experts grouped over the batch's rows) gives each request its
    single-sequence greedy tokens (bf16: decode steps replayed from captured graphs); seeded
    sampling repeats."""
    kind, d, _ = ckpt
    gpu = load(d, device="cuda")
    prompts = [[1, 2, 3], list(range(10, 47)), [400, 5]]
    lengths = (14, 9, 20)
    single = [
        gpu.generate(p, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids
        for p, n in zip(prompts, lengths, strict=True)
    ]
    reqs = [
        dict(prompt=p, max_new_tokens=n, temperature=0.0, ignore_eos=True)
        for p, n in zip(prompts, lengths, strict=True)
    ]
    assert [r.token_ids for r in gpu.generate_batch(reqs)] == single
    graphs = getattr(gpu.model, "_cuda_batch_graph", None)
    if kind == "bf16":  # the device path of the experts is captured with the rest of the step
        assert graphs is not None
        assert graphs._graphs
        assert not graphs.captures_failed
    else:
        assert graphs is None
    kw: dict[str, Any] = dict(max_new_tokens=12, temperature=0.8, top_k=20, seed=5, ignore_eos=True)
    r1, r2 = gpu.generate([1, 2, 3], **kw), gpu.generate([1, 2, 3], **kw)
    assert len(r1.token_ids) == 12
    assert r1.token_ids == r2.token_ids


# ---- the kernels -------------------------------------------------------------------------------


def _table(ws: list[Any]) -> tuple[list[Any], Any]:
    """Device copies of the expert matrices and a device table of their pointers."""
    from inference_pio.tensor import Tensor

    dev = [tb.to_device(w, DEV) for w in ws]
    tab = Tensor.from_list([t.data_ptr for t in dev], DType.int64).to(DEV)
    return dev, tab


@pytest.mark.parametrize(
    ("e", "k", "n", "kd", "shared"),
    [(8, 3, 64, 128, True), (128, 8, 96, 2048, True), (16, 4, 512, 96, False), (5, 5, 8, 8, False)],
)
@pytest.mark.parametrize("swiglu", [False, True])
def test_moe_gemv_against_torch(
    e: int, k: int, n: int, kd: int, shared: bool, swiglu: bool
) -> None:
    from inference_pio.tensor import Tensor

    g = torch.Generator().manual_seed(e * 31 + n)
    gate = [(torch.randn(n, kd, generator=g) * 0.05).bfloat16() for _ in range(e)]
    up = [(torch.randn(n, kd, generator=g) * 0.05).bfloat16() for _ in range(e)]
    sel = torch.randperm(e, generator=g)[:k].to(torch.int32)
    rows = 1 if shared else k
    x = torch.randn(rows, kd, generator=g).bfloat16()
    nw = (1.0 + 0.1 * torch.randn(kd, generator=g)).bfloat16() if shared else None
    _gate_dev, gtab = _table(gate)  # the device copies must outlive the call
    _up_dev, utab = _table(up)
    xd, seld = tb.to_device(x, DEV), tb.to_device(sel, DEV)
    nwd = tb.to_device(nw, DEV) if nw is not None else None
    y = Tensor.empty((k, n), DType.bfloat16, DEV)
    cuda.check(
        cuda.lib().toc_moe_gemv(
            xd.data_ptr, 0 if shared else kd, nwd.data_ptr if nwd is not None else None,
            int(DType.bfloat16), 1e-6, seld.data_ptr, k, e, gtab.data_ptr,
            utab.data_ptr if swiglu else None, n, kd, y.data_ptr, n, int(DType.bfloat16),
        ),
        "toc_moe_gemv",
    )  # fmt: skip
    got = tb.from_device(y).float()
    xs = x.float()
    if nw is not None:  # RMSNorm in fp32, rounded like the norm op, times the weight
        r = torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-6)
        xs = (nw.float() * (xs * r).bfloat16().float()).bfloat16().float()
    for s in range(k):
        xr = xs[0 if shared else s]
        gv = (gate[int(sel[s])].float() @ xr).bfloat16().float()
        if swiglu:
            uv = (up[int(sel[s])].float() @ xr).bfloat16().float()
            want = (torch.nn.functional.silu(gv).bfloat16().float() * uv).bfloat16().float()
        else:
            want = gv
        assert torch.allclose(got[s], want, rtol=2e-2, atol=2e-3), s


@pytest.mark.parametrize("dt", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize(
    ("t", "k", "e", "d"),
    [(1, 8, 128, 2048), (3, 4, 16, 100), (2, 1, 4, 7), (1, 10, 512, 300), (2, 40, 64, 129)],
)
@pytest.mark.parametrize("repeats", [False, True])
def test_moe_combine_against_the_ordered_sum(
    t: int, k: int, e: int, d: int, dt: DType, repeats: bool
) -> None:
    """Each token's expert outputs in ascending expert order (an expert named twice: by slot),
    products and every partial sum rounded to the dtype, then the residual: bitwise the CPU
    path's arithmetic."""
    from inference_pio.tensor import Tensor

    tdt = tb.TDT[dt]
    g = torch.Generator().manual_seed(t * 100 + k)
    idx = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32)
    if repeats:
        idx = idx % max(1, k // 2)  # every expert id at most k // 2: most named twice
    w = torch.rand(t, k, generator=g).to(tdt)
    y = torch.randn(t * k, d, generator=g).to(tdt)
    res = torch.randn(t, d, generator=g).to(tdt)
    out = Tensor.empty((t, d), dt, DEV)
    yd, idd, wd, rd = (tb.to_device(a, DEV) for a in (y, idx, w, res))
    cuda.check(
        cuda.lib().toc_moe_combine(
            yd.data_ptr, idd.data_ptr, wd.data_ptr, rd.data_ptr, out.data_ptr,
            t, k, e, d, int(dt), int(dt), int(dt),
        ),
        "toc_moe_combine",
    )  # fmt: skip
    want = torch.empty(t, d, dtype=tdt)
    for i in range(t):
        acc = torch.zeros(d, dtype=tdt)
        for j in sorted(range(k), key=lambda j: int(idx[i, j])):
            acc = acc + (w[i, j] * y[i * k + j])  # each op rounds to the dtype
        want[i] = res[i] + acc
    assert torch.equal(tb.from_device(out), want)


def test_moe_combine_reports_a_bad_expert_id() -> None:
    from inference_pio.tensor import Tensor

    idx = Tensor.from_list([[0, 9]], DType.int32).to(DEV)
    w = Tensor.from_list([[0.5, 0.5]], DType.float32).to(DEV)
    y = Tensor.zeros((2, 4), DType.float32, DEV)
    out = Tensor.empty((1, 4), DType.float32, DEV)
    with pytest.raises(NativeError, match="outside its range"):
        cuda.check(
            cuda.lib().toc_moe_combine(
                y.data_ptr, idx.data_ptr, w.data_ptr, None, out.data_ptr, 1, 2, 4, 4,
                int(DType.float32), int(DType.float32), int(DType.float32),
            ),
            "toc_moe_combine",
        )  # fmt: skip
    # the flag is cleared: a good call afterwards succeeds
    ok = Tensor.from_list([[0, 3]], DType.int32).to(DEV)
    cuda.check(
        cuda.lib().toc_moe_combine(
            y.data_ptr, ok.data_ptr, w.data_ptr, None, out.data_ptr, 1, 2, 4, 4,
            int(DType.float32), int(DType.float32), int(DType.float32),
        ),
        "toc_moe_combine",
    )  # fmt: skip


@pytest.mark.parametrize(("e", "n", "kd"), [(8, 192, 128), (4, 100, 40), (16, 64, 2048)])
def test_moe_grouped_linear_against_torch(e: int, n: int, kd: int) -> None:
    """Rows grouped by expert (some experts without rows, some with more than one 64-row tile)
    times each expert's weights, rounded to bf16 once."""
    from inference_pio.nn.moe import GROUPED_TILE_ROWS
    from inference_pio.tensor import Tensor

    g = torch.Generator().manual_seed(e + n)
    counts = [int(c) for c in torch.randint(0, 150, (e,), generator=g)]
    counts[0] = 0
    ws = [(torch.randn(n, kd, generator=g) * 0.05).bfloat16() for _ in range(e)]
    rows = sum(counts)
    x = torch.randn(rows, kd, generator=g).bfloat16()
    tiles: list[int] = []
    lo = 0
    for ex, c in enumerate(counts):
        for r0 in range(lo, lo + c, GROUPED_TILE_ROWS):
            tiles += [ex, r0, min(GROUPED_TILE_ROWS, lo + c - r0)]
        lo += c
    _w_dev, tab = _table(ws)
    xd = tb.to_device(x, DEV)
    td = Tensor.from_list(tiles, DType.int32).to(DEV)
    y = Tensor.zeros((rows, n), DType.bfloat16, DEV)
    cuda.check(
        cuda.lib().toc_moe_grouped_linear(
            xd.data_ptr, td.data_ptr, len(tiles) // 3, tab.data_ptr, e, n, kd, y.data_ptr,
            int(DType.bfloat16),
        ),
        "toc_moe_grouped_linear",
    )  # fmt: skip
    got = tb.from_device(y).float()
    lo = 0
    for ex, c in enumerate(counts):
        want = (x[lo : lo + c].float() @ ws[ex].float().T).bfloat16().float()
        assert torch.allclose(got[lo : lo + c], want, rtol=1e-2, atol=1e-2), ex
        lo += c


@pytest.mark.parametrize(("t", "e", "k"), [(1, 128, 8), (37, 16, 4), (600, 128, 8), (5, 3, 3)])
def test_moe_plan_against_a_stable_sort(t: int, e: int, k: int) -> None:
    """toc_moe_plan: counts, offsets, the entries stably sorted by expert, their tokens, the
    inverse order and the tiles, as the host would compute them; a bad id is reported."""
    from inference_pio.nn.moe import GROUPED_TILE_ROWS as rows_per_tile
    from inference_pio.tensor import Tensor

    g = torch.Generator().manual_seed(t * e + k)
    idx = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32)
    n, max_tiles = t * k, t * k // rows_per_tile + e
    flat = idx.reshape(-1).tolist()
    order = sorted(range(n), key=lambda p: (flat[p], p))
    counts = [flat.count(x) for x in range(e)]
    offsets = [sum(counts[:x]) for x in range(e + 1)]
    tiles: list[list[int]] = []
    for x in range(e):
        for r in range(0, counts[x], rows_per_tile):
            tiles.append([x, offsets[x] + r, min(rows_per_tile, counts[x] - r)])
    tiles += [[0, 0, 0]] * (max_tiles - len(tiles))
    bufs = {
        name: Tensor.empty(shape, DType.int32, DEV)
        for name, shape in (
            ("counts", (e,)), ("offsets", (e + 1,)), ("order", (n,)), ("tokens", (n,)),
            ("inverse", (n,)), ("tiles", (max_tiles, 3)),
        )
    }  # fmt: skip
    idd = tb.to_device(idx, DEV)

    def plan(src: Any) -> None:
        cuda.check(
            cuda.lib().toc_moe_plan(
                src.data_ptr, n, e, k, rows_per_tile, *(bufs[b].data_ptr for b in (
                    "counts", "offsets", "order", "tokens", "inverse", "tiles")), max_tiles,
            ),
            "toc_moe_plan",
        )  # fmt: skip

    plan(idd)
    assert bufs["counts"].tolist() == counts
    assert bufs["offsets"].tolist() == offsets
    assert bufs["order"].tolist() == order
    assert bufs["tokens"].tolist() == [p // k for p in order]
    inverse = [0] * n
    for i, p in enumerate(order):
        inverse[p] = i
    assert bufs["inverse"].tolist() == inverse
    assert bufs["tiles"].tolist() == tiles
    bad = idx.clone()
    bad[0, 0] = e
    with pytest.raises(NativeError, match="outside its range"):
        plan(tb.to_device(bad, DEV))
    plan(idd)  # the flag was cleared
