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


# ---- the one-launch MoE step (toc_moe_step) -------------------------------------------------


def _expert_buffers(k: int, inter: int, d: int, wdt: DType) -> tuple[Any, Any, Any, Any, Any]:
    """One token's routing and expert buffers on the device: ids, weights (``wdt``), h, the
    experts' outputs and the MLP's output."""
    from inference_pio.tensor import Tensor

    bf = DType.bfloat16
    return (
        Tensor.empty((1, k), DType.int32, DEV),
        Tensor.empty((1, k), wdt, DEV),
        Tensor.empty((k, inter), bf, DEV),
        Tensor.empty((k, d), bf, DEV),
        Tensor.empty((1, d), bf, DEV),
    )


def _five_kernels(
    lib: Any,
    x: Any,
    nw: Any,
    router: Any,
    tabs: Any,
    e: int,
    k: int,
    d: int,
    inter: int,
    renorm: bool,
    res: bool,
) -> tuple[Any, Any, Any, Any, Any]:
    """The graph step's five launches (router GEMV with RMSNorm when ``nw`` is given, softmax
    top-k, gate/up with SwiGLU, down, combine with ``x`` as the residual when ``res``): logits,
    (ids, weights), h and the output."""
    from inference_pio.tensor import Tensor

    bf = int(DType.bfloat16)
    gtab, utab, dtab = tabs
    nwp = nw.data_ptr if nw is not None else None
    logits = Tensor.empty((1, e), DType.bfloat16, DEV)
    idx, w, h, y, out = _expert_buffers(k, inter, d, DType.bfloat16)
    steps = [
        ("toc_gemv_fused", (x.data_ptr, d, 1, nwp, bf, 1e-6, router.data_ptr, e, None, 0,
                            None, 0, d, None, 0, 0, logits.data_ptr, e, bf, None)),
        ("toc_moe_route_softmax", (logits.data_ptr, 1, e, k, int(renorm), bf, idx.data_ptr,
                                   w.data_ptr, bf)),
        ("toc_moe_gemv", (x.data_ptr, 0, nwp, bf, 1e-6, idx.data_ptr, k, e, gtab.data_ptr,
                          utab.data_ptr, inter, d, h.data_ptr, inter, bf)),
        ("toc_moe_gemv", (h.data_ptr, inter, None, 0, 0.0, idx.data_ptr, k, e, dtab.data_ptr, None,
                          d, inter, y.data_ptr, d, bf)),
        ("toc_moe_combine", (y.data_ptr, idx.data_ptr, w.data_ptr, x.data_ptr if res else None,
                             out.data_ptr, 1, k, e, d, bf, bf, bf)),
    ]  # fmt: skip
    for name, args in steps:
        cuda.check(getattr(lib, name)(*args), name)
    return tuple(tb.from_device(t) for t in (logits, idx, w, h, out))  # type: ignore[return-value]


def _rbf(t: Any) -> Any:
    return t.bfloat16().float()


@pytest.mark.parametrize(
    ("e", "k", "d", "inter", "renorm"),
    [
        (128, 8, 2048, 768, True),  # Qwen3-Coder-30B-A3B
        (512, 10, 2048, 512, True),  # Qwen3-Coder-Next's experts
        (8, 3, 128, 64, True),
        (16, 4, 520, 136, False),  # rows of 65 16-byte chunks: a partial last round per lane
        (5, 5, 8, 8, True),  # every expert chosen, one chunk a row
        (300, 1, 96, 40, False),
        (64, 64, 264, 24, True),  # k at its limit
    ],
)
@pytest.mark.parametrize("variant", ["graph", "op", "shared"])
def test_moe_step_matches_the_kernels_it_replaces(
    e: int, k: int, d: int, inter: int, renorm: bool, variant: str
) -> None:
    """toc_moe_step against the launches it replaces, on random weights: ``graph`` (the CUDA-graph
    step: RMSNorm first, the residual added), ``op`` (a single token of the op path: neither),
    ``shared`` (Qwen3-Next: a shared expert of another width, times the sigmoid of its gate,
    against the same arithmetic in torch). The same experts, weights and order; h and the output
    within a bf16 rounding step (the products' partial sums run in another order)."""
    from inference_pio.tensor import Tensor

    lib = cuda.lib()
    bf = int(DType.bfloat16)
    si = 2 * inter + 8 if variant == "shared" else 0
    if lib.toc_moe_step_supported(e, k, d, inter, si, bf) != 0:
        pytest.skip(lib.toc_last_error().decode())
    g = torch.Generator().manual_seed(e * 7 + k * 3 + d)
    x = torch.randn(1, d, generator=g).bfloat16()
    nw = (1.0 + 0.1 * torch.randn(d, generator=g)).bfloat16() if variant == "graph" else None
    xn = x.float()
    if nw is not None:
        xn = xn * torch.rsqrt(xn.pow(2).mean(-1, keepdim=True) + 1e-6) * nw.float()
    # router rows spread wide (a scaled random matrix), drawn again until the k-th and (k+1)-th
    # logits lie well apart (many bf16 steps), so the two summation orders choose the same experts
    for _ in range(100):
        router = (torch.randn(e, d, generator=g) * (3.0 / d**0.5)).bfloat16()
        top = torch.sort((xn @ router.float().T).reshape(-1), descending=True).values
        if k == e or float(top[k - 1] - top[k]) > 0.15:
            break
    else:
        raise AssertionError("no router draw with separated logits")
    mats = [
        [(torch.randn(rows, cols, generator=g) * 0.05).bfloat16() for _ in range(e)]
        for rows, cols in ((inter, d), (inter, d), (d, inter))
    ]
    keep = [_table(m) for m in mats]  # device copies must outlive the calls
    tabs = tuple(t for _, t in keep)
    xd, rd = tb.to_device(x, DEV), tb.to_device(router, DEV)
    nwd = tb.to_device(nw, DEV) if nw is not None else None
    res = variant == "graph"
    logits0, idx0, w0, h0, out0 = _five_kernels(lib, xd, nwd, rd, tabs, e, k, d, inter, renorm, res)
    shared_args: list[Any] = [None, None, None, None, 0]
    if si:
        s_gate, s_up = ((torch.randn(si, d, generator=g) * 0.05).bfloat16() for _ in range(2))
        s_down = (torch.randn(d, si, generator=g) * 0.05).bfloat16()
        s_gw = (torch.randn(1, d, generator=g) * 0.05).bfloat16()
        sdev = [tb.to_device(t, DEV) for t in (s_gate, s_up, s_down, s_gw)]
        shared_args = [t.data_ptr for t in sdev] + [si]
        # the op path's shared expert: gate_up_swiglu, down, the gate's linear, sigmoid,
        # mul_rows, add, each rounded to bf16
        xs = x.float()
        hs = _rbf(
            _rbf(torch.nn.functional.silu(_rbf(xs @ s_gate.float().T))) * _rbf(xs @ s_up.float().T)
        )
        sh = _rbf(hs @ s_down.float().T)
        sgate = _rbf(torch.sigmoid(_rbf(xs @ s_gw.float().T)))
        out0 = _rbf(out0.float() + _rbf(sh * sgate))
    logits = Tensor.empty((1, e + (1 if si else 0)), DType.bfloat16, DEV)
    idx = Tensor.empty((1, k), DType.int32, DEV)
    w = Tensor.empty((1, k), DType.bfloat16, DEV)
    h = Tensor.empty((1, k * inter + si), DType.bfloat16, DEV)
    out = Tensor.empty((1, d), DType.bfloat16, DEV)
    for _ in range(2):  # twice: the grid barrier's state carries over between launches
        cuda.check(
            lib.toc_moe_step(
                xd.data_ptr, nwd.data_ptr if nwd is not None else None, bf, 1e-6, rd.data_ptr, e,
                k, int(renorm), tabs[0].data_ptr, tabs[1].data_ptr, tabs[2].data_ptr, d, inter,
                *shared_args, xd.data_ptr if res else None, logits.data_ptr, idx.data_ptr,
                w.data_ptr, h.data_ptr, out.data_ptr, bf,
            ),
            "toc_moe_step",
        )  # fmt: skip
    lg = tb.from_device(logits).float()[:, :e]
    assert torch.allclose(lg, logits0.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(tb.from_device(idx), idx0)
    assert torch.equal(tb.from_device(w), w0)
    hv = tb.from_device(h).float().reshape(-1)
    assert torch.allclose(hv[: k * inter], h0.float().reshape(-1), rtol=1.6e-2, atol=1e-4)
    if si:
        assert torch.allclose(hv[k * inter :], hs.reshape(-1), rtol=1.6e-2, atol=1e-4)
        gate_logit = tb.from_device(logits).float()[0, e:]
        assert torch.allclose(
            gate_logit, _rbf(xs @ s_gw.float().T).reshape(-1), rtol=1e-2, atol=1e-3
        )
    ov = tb.from_device(out).float()
    assert torch.allclose(ov, out0.float(), rtol=1.6e-2, atol=1e-3), (ov - out0.float()).abs().max()


@pytest.mark.parametrize(
    ("e", "k", "n_group", "topk_group", "d", "inter", "si"),
    [
        (64, 4, 1, 1, 2048, 1536, 1536),  # GLM-4.7-Flash
        (16, 4, 4, 2, 128, 64, 64),  # groups dropped before the choice
        (8, 8, 2, 2, 96, 40, 0),  # every expert, no shared expert
    ],
)
def test_moe_step_sigmoid_matches_the_kernels_it_replaces(
    e: int, k: int, n_group: int, topk_group: int, d: int, inter: int, si: int
) -> None:
    """toc_moe_step_sigmoid (a single token of GLM-4.7-Flash's op path): fp32 logits against
    torch's; the choice and fp32 weights bitwise those of toc_moe_route_sigmoid on the same
    logits; h and the output within a bf16 step of the expert GEMVs and the ordered combine, plus
    the ungated shared expert (torch, each op rounded)."""
    from inference_pio.tensor import Tensor

    lib = cuda.lib()
    bf, f32 = int(DType.bfloat16), int(DType.float32)
    if lib.toc_moe_step_sigmoid_supported(e, k, n_group, topk_group, d, inter, si, bf) != 0:
        pytest.skip(lib.toc_last_error().decode())
    g = torch.Generator().manual_seed(e + d + si)
    x = torch.randn(1, d, generator=g).bfloat16()
    router = (torch.randn(e, d, generator=g) * (1.0 / d**0.5)).bfloat16()
    bias = 0.1 * torch.randn(e, generator=g)
    mats = [
        [(torch.randn(rows, cols, generator=g) * 0.05).bfloat16() for _ in range(e)]
        for rows, cols in ((inter, d), (inter, d), (d, inter))
    ]
    keep = [_table(m) for m in mats]  # device copies must outlive the calls
    gtab, utab, dtab = (t for _, t in keep)
    xd, rd, bd = tb.to_device(x, DEV), tb.to_device(router, DEV), tb.to_device(bias, DEV)
    shared_args: list[Any] = [None, None, None, 0]
    if si:
        s_gate, s_up = ((torch.randn(si, d, generator=g) * 0.05).bfloat16() for _ in range(2))
        s_down = (torch.randn(d, si, generator=g) * 0.05).bfloat16()
        sdev = [tb.to_device(t, DEV) for t in (s_gate, s_up, s_down)]
        shared_args = [t.data_ptr for t in sdev] + [si]
    logits = Tensor.empty((1, e), DType.float32, DEV)
    idx = Tensor.empty((1, k), DType.int32, DEV)
    w = Tensor.empty((1, k), DType.float32, DEV)
    h = Tensor.empty((1, k * inter + si), DType.bfloat16, DEV)
    out = Tensor.empty((1, d), DType.bfloat16, DEV)
    for _ in range(2):
        cuda.check(
            lib.toc_moe_step_sigmoid(
                xd.data_ptr, None, 0, 0.0, rd.data_ptr, bd.data_ptr, e, k, n_group, topk_group, 1,
                2.5, gtab.data_ptr, utab.data_ptr, dtab.data_ptr, d, inter, *shared_args, None,
                logits.data_ptr, idx.data_ptr, w.data_ptr, h.data_ptr, out.data_ptr, bf,
            ),
            "toc_moe_step_sigmoid",
        )  # fmt: skip
    xs = x.float()
    lg = tb.from_device(logits)
    assert torch.allclose(lg, xs @ router.float().T, rtol=1e-4, atol=1e-5)
    # the kernels it replaces, routed on the same logits
    idx0, w0, h0, y0, out0 = _expert_buffers(k, inter, d, DType.float32)
    steps = [
        ("toc_moe_route_sigmoid", (logits.data_ptr, bd.data_ptr, 1, e, k, n_group, topk_group, 1,
                                   2.5, f32, idx0.data_ptr, w0.data_ptr)),
        ("toc_moe_gemv", (xd.data_ptr, 0, None, 0, 0.0, idx0.data_ptr, k, e, gtab.data_ptr,
                          utab.data_ptr, inter, d, h0.data_ptr, inter, bf)),
        ("toc_moe_gemv", (h0.data_ptr, inter, None, 0, 0.0, idx0.data_ptr, k, e, dtab.data_ptr,
                          None, d, inter, y0.data_ptr, d, bf)),
        ("toc_moe_combine", (y0.data_ptr, idx0.data_ptr, w0.data_ptr, None, out0.data_ptr, 1, k, e,
                             d, bf, f32, bf)),
    ]  # fmt: skip
    for name, args in steps:
        cuda.check(getattr(lib, name)(*args), name)
    assert torch.equal(tb.from_device(idx), tb.from_device(idx0))
    assert torch.equal(tb.from_device(w), tb.from_device(w0))
    hv = tb.from_device(h).float().reshape(-1)
    want_h = tb.from_device(h0).float().reshape(-1)
    assert torch.allclose(hv[: k * inter], want_h, rtol=1.6e-2, atol=1e-4)
    want = tb.from_device(out0).float()
    if si:
        hs = _rbf(
            _rbf(torch.nn.functional.silu(_rbf(xs @ s_gate.float().T))) * _rbf(xs @ s_up.float().T)
        )
        assert torch.allclose(hv[k * inter :], hs.reshape(-1), rtol=1.6e-2, atol=1e-4)
        want = _rbf(want + _rbf(hs @ s_down.float().T))
    ov = tb.from_device(out).float()
    assert torch.allclose(ov, want, rtol=1.6e-2, atol=1e-3), (ov - want).abs().max()


def test_moe_step_refuses_what_it_does_not_take() -> None:
    lib = cuda.lib()
    bf, f32 = int(DType.bfloat16), int(DType.float32)
    assert lib.toc_moe_step_supported(128, 8, 2048, 768, 0, bf) == 0
    assert lib.toc_moe_step_supported(512, 10, 2048, 512, 512, bf) == 0
    refused = [
        (128, 8, 2048, 768, 0, f32),  # f32 activations
        (128, 65, 2048, 768, 0, bf),  # k above 64
        (8, 9, 64, 64, 0, bf),  # k above e
        (128, 8, 2044, 768, 0, bf),  # hidden % 8
        (128, 8, 2048, 100, 0, bf),  # intermediate % 8
        (128, 8, 2048, 768, 100, bf),  # the shared expert's width % 8
        (5000, 8, 2048, 768, 0, bf),  # more than 4096 experts
    ]
    for args in refused:
        assert lib.toc_moe_step_supported(*args) != 0, args
    assert lib.toc_moe_step_sigmoid_supported(64, 4, 1, 1, 2048, 1536, 1536, bf) == 0
    sigmoid_refused = [
        (64, 4, 3, 1, 2048, 1536, 0, bf),  # 3 groups do not divide 64 experts
        (64, 4, 4, 5, 2048, 1536, 0, bf),  # topk_group above n_group
        (64, 40, 4, 1, 2048, 1536, 0, bf),  # k above one group's 16 experts
        (128, 4, 128, 1, 2048, 768, 0, bf),  # more than 64 groups
    ]
    for args in sigmoid_refused:
        assert lib.toc_moe_step_sigmoid_supported(*args) != 0, args
    with pytest.raises(NativeError, match="NULL"):
        cuda.check(
            lib.toc_moe_step(None, None, bf, 1e-6, None, 8, 2, 1, None, None, None, 64, 64,
                             None, None, None, None, 0, None, None, None, None, None, None, bf),
            "toc_moe_step",
        )  # fmt: skip


def test_graph_step_with_and_without_the_one_launch_moe(
    ckpt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph decoder's tokens are the same with the MoE MLPs as one launch (the default)
    and as five kernels (INFERENCE_PIO_CUDA_MOE_STEP=0)."""
    kind, d, _ = ckpt
    if kind != "bf16":
        pytest.skip("the graph decoder takes bf16 checkpoints")
    assert cuda.lib().toc_moe_step_supported(8, 3, 128, 64, 0, int(DType.bfloat16)) == 0  # TINY's
    prompt = _prompt(20, 3)
    runs = []
    for flag in ("1", "0"):
        monkeypatch.setenv("INFERENCE_PIO_CUDA_MOE_STEP", flag)
        gpu = load(d, device="cuda")
        runs.append(
            gpu.generate(prompt, max_new_tokens=40, temperature=0.0, ignore_eos=True).token_ids
        )
    assert runs[0] == runs[1]
