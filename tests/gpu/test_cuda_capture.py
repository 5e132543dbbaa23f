"""Decode steps captured in a CUDA graph as they run op by op (nn.cuda_capture): the device ops
they read the cache length with, against the host-length ops and a float64 reference; then
GLM-4.7-Flash (MLA + sigmoid-routed experts) and Qwen3-Coder-Next (Gated DeltaNet + gated
attention + experts with a gated shared expert) generating through the captured graph, against
transformers and the op-by-op steps on tiny random checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


from inference_pio import cuda, ops  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.nn import cuda_capture  # noqa: E402
from inference_pio.nn.cuda_graph import _runner  # noqa: E402
from inference_pio.tensor import Tensor, tensor  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402
from inference_pio.testing.conformance import hf_greedy_with_logits, save_reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file
from lone_sequence import run_requests, serve_two  # noqa: E402

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

DEV = "cuda:0"
TDT = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16}
FLOATS = [DType.float32, DType.bfloat16]


def ours(t: Any) -> Tensor:
    return tb.to_device(t, DEV)


def theirs(x: Tensor) -> Any:
    return tb.from_device(x)


def rel(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _ref(q: Any, k: Any, v: Any, q_pos: int, scale: float) -> Any:
    """q [tq, nh, dq], k [kv, nkv, dq], v [kv, nkv, dv] -> [tq, nh, dv], causal at q_pos + i."""
    tq, nh, _ = q.shape
    kv, nkv, _ = k.shape
    kk = k.double().repeat_interleave(nh // nkv, 1).transpose(0, 1)
    vv = v.double().repeat_interleave(nh // nkv, 1).transpose(0, 1)
    s = q.double().transpose(0, 1) @ kk.transpose(1, 2) * scale
    mask = torch.arange(kv)[None, :] > (q_pos + torch.arange(tq))[:, None]
    s = s.masked_fill(mask[None], float("-inf"))
    return (torch.softmax(s, -1) @ vv).transpose(0, 1)


def _attention_dev(
    q: Tensor, kc: Tensor, vc: Tensor, shape: tuple[int, ...], pos: Tensor, ws: Tensor | None
) -> Tensor:
    tq, nh, nkv, dq, dv, cap, ks, vs = shape
    out = Tensor.empty((tq, nh * dv), q.dtype, DEV)
    rc = cuda.lib().toc_attention_dev(
        q.data_ptr, kc.data_ptr, vc.data_ptr, out.data_ptr, tq, nh, nkv, dq, dv, nh * dq, nh * dv,
        cap, cap * ks, ks, cap * vs, vs, pos.data_ptr, dq**-0.5, int(q.dtype), int(kc.dtype),
        ws.data_ptr if ws is not None else None, ws.numel if ws is not None else 0,
    )  # fmt: skip
    cuda.check(rc, "toc_attention_dev")
    return out


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize(
    ("tq", "nh", "nkv", "hd", "past", "cap"),
    [
        (1, 8, 2, 128, 0, 64),
        (1, 8, 2, 128, 700, 1024),
        (3, 6, 3, 96, 5, 40),
        (1, 16, 2, 256, 63, 64),
    ],
)
def test_attention_dev_reads_the_length_on_the_device(
    dt: DType, tq: int, nh: int, nkv: int, hd: int, past: int, cap: int
) -> None:
    """toc_attention_dev equals toc_attention with the length given on the host (any number of
    key slices, none) and the float64 reference; a shorter length written to the device later
    is what the next call sees."""
    g = torch.Generator().manual_seed(past + hd)
    kv = past + tq
    q = torch.randn(tq, nh, hd, generator=g).to(TDT[dt])
    k = (torch.randn(kv, nkv, hd, generator=g) * 2).to(TDT[dt])
    v = torch.randn(kv, nkv, hd, generator=g).to(TDT[dt])
    kc, vc = Tensor.zeros((nkv, cap, hd), dt, DEV), Tensor.zeros((nkv, cap, hd), dt, DEV)
    ops.kv_cache_append(ours(k), ours(v), kc, vc, 0)
    dq = ours(q)
    host = theirs(ops.attention(dq, kc, vc, kv_len=kv, q_pos=past)).reshape(tq, nh, hd)
    ref = _ref(q, k, v, past, hd**-0.5)
    pos = tensor([past], DType.int32, DEV)
    shape = (tq, nh, nkv, hd, hd, cap, hd, hd)
    ws = Tensor.empty((32 * tq * nh * (hd + 2),), DType.float32, DEV)
    for w in (ws, None):
        got = theirs(_attention_dev(dq, kc, vc, shape, pos, w)).reshape(tq, nh, hd)
        assert rel(got, host) < (1e-5 if dt == DType.float32 else 1e-2)
        assert rel(got, ref) < (1e-5 if dt == DType.float32 else 1e-2)
    if past >= 3:
        short = tensor([past - 3], DType.int32, DEV)
        got = theirs(_attention_dev(dq, kc, vc, shape, short, ws)).reshape(tq, nh, hd)
        assert rel(got, _ref(q, k[: kv - 3], v[: kv - 3], past - 3, hd**-0.5)) < (
            1e-5 if dt == DType.float32 else 1e-2
        )


@pytest.mark.parametrize("dt", FLOATS)
def test_attention_dev_latent_rows(dt: DType) -> None:
    """MLA's absorbed decode: one kv head whose 576-wide key rows hold the 512 values first
    (keys and values in one buffer, two widths), 8 query heads."""
    g = torch.Generator().manual_seed(5)
    nh, dq, dv, cap, past = 8, 576, 512, 96, 40
    kv = past + 1
    q = torch.randn(1, nh, dq, generator=g).to(TDT[dt])
    rows = torch.randn(kv, 1, dq, generator=g).to(TDT[dt])
    kc = Tensor.zeros((1, cap, dq), dt, DEV)
    ops.kv_cache_append(ours(rows), None, kc, None, 0)
    pos = tensor([past], DType.int32, DEV)
    ws = Tensor.empty((32 * nh * (dv + 2),), DType.float32, DEV)
    got = theirs(_attention_dev(ours(q), kc, kc, (1, nh, 1, dq, dv, cap, dq, dq), pos, ws))
    ref = _ref(q, rows, rows[:, :, :dv], past, dq**-0.5)
    assert rel(got.reshape(1, nh, dv), ref) < (1e-5 if dt == DType.float32 else 1e-2)


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize(
    ("nh", "nkv", "dq", "dv", "past", "tq", "cap", "shared"),
    [
        (20, 1, 576, 512, 40, 1, 128, False),
        (20, 1, 576, 512, 700, 1, 1024, False),
        (8, 2, 320, 288, 100, 3, 256, False),
        (4, 4, 576, 512, 5, 2, 16, False),
        (32, 1, 300, 576, 33, 1, 64, False),
        (20, 1, 576, 512, 40, 1, 128, True),
        (20, 1, 576, 512, 700, 1, 1024, True),
        (32, 1, 576, 512, 130, 3, 256, True),
        (16, 2, 320, 256, 300, 1, 512, True),
        (3, 1, 576, 512, 1, 2, 8, True),
        (8, 2, 320, 288, 100, 3, 256, True),
    ],
)
def test_wide_heads(
    dt: DType, nh: int, nkv: int, dq: int, dv: int, past: int, tq: int, cap: int, shared: bool
) -> None:
    """Heads wider than 256 against the float64 reference, toc_attention with the length on the
    host and toc_attention_dev; one slice or many, several tiles a slice, several queries. Which
    kernel: values in the key rows (``shared``, absorbed MLA) with a bf16 query and 128k-wide
    values, the tensor-core kernel; other bf16 rows of whole 16-byte chunks, the wide-head
    kernel; fp32 or a width of 300, the split kernel's wide path."""
    g = torch.Generator().manual_seed(past + dq)
    kv = past + tq
    q = torch.randn(tq, nh, dq, generator=g).to(TDT[dt])
    k = torch.randn(kv, nkv, dq, generator=g).to(TDT[dt])
    v = k[:, :, :dv].clone() if shared else torch.randn(kv, nkv, dv, generator=g).to(TDT[dt])
    kc = Tensor.zeros((nkv, cap, dq), dt, DEV)
    ops.kv_cache_append(ours(k), None, kc, None, 0)
    if shared:
        vc, vhs, vps = kc, cap * dq, dq
    else:
        vc, vhs, vps = Tensor.zeros((nkv, cap, dv), dt, DEV), cap * dv, dv
        ops.kv_cache_append(ours(v), None, vc, None, 0)
    dqt = ours(q)
    ref = _ref(q, k, v, past, dq**-0.5)
    want = 1e-5 if dt == DType.float32 else 1e-2
    out = Tensor.empty((tq, nh * dv), dt, DEV)
    rc = cuda.lib().toc_attention(
        dqt.data_ptr, kc.data_ptr, vc.data_ptr, out.data_ptr, tq, nh, nkv, dq, dv, nh * dq,
        nh * dv, kv, cap * dq, dq, vhs, vps, past, 1, None, 0, dq**-0.5, int(dt), int(dt),
    )  # fmt: skip
    cuda.check(rc, "toc_attention")
    assert rel(theirs(out).reshape(tq, nh, dv), ref) < want
    pos = tensor([past], DType.int32, DEV)
    for splits in (1, 7, 32):
        ws = Tensor.empty((splits * tq * nh * (dv + 2),), DType.float32, DEV)
        got = _attention_dev(dqt, kc, vc, (tq, nh, nkv, dq, dv, cap, dq, vps), pos, ws)
        assert rel(theirs(got).reshape(tq, nh, dv), ref) < want, splits


@pytest.mark.parametrize("dt", FLOATS)
def test_kv_cache_append_dev(dt: DType) -> None:
    """The rows land at the slot read on the device; rows past the capacity are skipped."""
    nkv, hd, cap = 3, 40, 16
    for slot, t in ((0, 1), (7, 4), (14, 4)):
        k = torch.randn(t, nkv, hd).to(TDT[dt])
        v = torch.randn(t, nkv, hd).to(TDT[dt])
        kc, vc = Tensor.zeros((nkv, cap, hd), dt, DEV), Tensor.zeros((nkv, cap, hd), dt, DEV)
        pos = tensor([slot], DType.int32, DEV)
        dk, dv = ours(k), ours(v)
        rc = cuda.lib().toc_kv_cache_append_dev(
            dk.data_ptr, dv.data_ptr, kc.data_ptr, vc.data_ptr, t, nkv, hd, hd, cap,
            pos.data_ptr, int(dt), int(dt),
        )  # fmt: skip
        cuda.check(rc, "toc_kv_cache_append_dev")
        n = min(t, cap - slot)
        want_k = torch.zeros(nkv, cap, hd, dtype=TDT[dt])
        want_v = torch.zeros(nkv, cap, hd, dtype=TDT[dt])
        want_k[:, slot : slot + n] = k[:n].transpose(0, 1)
        want_v[:, slot : slot + n] = v[:n].transpose(0, 1)
        assert torch.equal(theirs(kc), want_k)
        assert torch.equal(theirs(vc), want_v)


@pytest.mark.parametrize("dt", FLOATS)
def test_decode_argmax_then_step_end(dt: DType) -> None:
    """The packed argmax skips NaN and takes the lowest id of a tie; step_end unpacks it into
    the token counter and the token list, advances slot and step, and resets the word."""
    vocab = 151936
    x = torch.randn(vocab).to(TDT[dt])
    x[[9, 77, 150000]] = 50.0
    x[3] = float("nan")
    lg = ours(x)
    word = Tensor.zeros((1,), DType.int64, DEV)
    ctr = tensor([0, 5, 0, 0], DType.int32, DEV)
    toks = Tensor.zeros((4,), DType.int32, DEV)
    lib = cuda.lib()
    for _ in range(2):
        cuda.check(lib.toc_decode_argmax(lg.data_ptr, int(dt), vocab, word.data_ptr), "argmax")
        c = ctr.data_ptr
        cuda.check(
            lib.toc_decode_step_end(word.data_ptr, c, c + 4, toks.data_ptr, c + 8, 4), "step_end"
        )
    assert ctr.tolist() == [9, 7, 2, 0]
    assert toks.tolist() == [9, 9, 0, 0]
    assert word.tolist() == [0]


# ---- models -------------------------------------------------------------------------------------
GLM = dict(
    vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48,
    kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24, n_routed_experts=8,
    num_experts_per_tok=3, n_group=2, topk_group=1, n_shared_experts=1,
    routed_scaling_factor=1.8, rope_theta=1e4, max_position_embeddings=1024, rms_norm_eps=1e-5,
)  # fmt: skip
NEXT = dict(
    vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
    shared_expert_intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
    linear_key_head_dim=16, linear_value_head_dim=24, linear_conv_kernel_dim=4, num_experts=8,
    num_experts_per_tok=3, mlp_only_layers=[2], rope_theta=1e4, max_position_embeddings=1024,
    rms_norm_eps=1e-6,
)  # fmt: skip
MODELS = {
    "glm": ("inference_pio_glm_4_7_flash.model", "Glm4MoeLiteForCausalLM", GLM),
    "next": ("inference_pio_qwen3_coder_next.model", "Qwen3NextForCausalLM", NEXT),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    module, arch, cfg = MODELS[request.param]
    load = pytest.importorskip(module).load
    d = tmp_path_factory.mktemp(f"capture-{request.param}")
    ref = save_reference(d, arch, cfg, "bfloat16", seed=11, logit_scale=8.0)
    return load, d, ref


def test_generation_through_the_captured_step(ckpt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy tokens through the captured graph (several chunks of device-fed tokens, past the
    first key slices) equal transformers' and the op-by-op steps'; seeded sampled tokens (drawn on
    the device after each replay) equal the op-by-op steps' drawn on the host."""
    load, d, ref = ckpt
    gpu = load(d, device="cuda")
    assert cuda_capture.unsupported_reason(gpu.model) is None
    assert isinstance(_runner(gpu.model, 256), cuda_capture.CapturedStepDecoder)
    prompt = [
        int(i) for i in torch.randint(0, 500, (37,), generator=torch.Generator().manual_seed(2))
    ]
    want, _ = hf_greedy_with_logits(ref, prompt, 90)
    greedy = dict(max_new_tokens=90, temperature=0.0, ignore_eos=True)
    assert gpu.generate(prompt, **greedy).token_ids == want
    sampled = dict(
        max_new_tokens=40, temperature=0.9, top_k=40, top_p=0.95, seed=7, ignore_eos=True
    )
    drawn = gpu.generate(prompt, **sampled).token_ids
    penalised = gpu.generate(prompt, **dict(sampled, repetition_penalty=1.1)).token_ids
    monkeypatch.setenv("INFERENCE_PIO_CUDA_CAPTURE", "0")
    eager = load(d, device="cuda")
    assert _runner(eager.model, 256) is None
    assert eager.generate(prompt, **greedy).token_ids == want
    assert eager.generate(prompt, **sampled).token_ids == drawn
    assert eager.generate(prompt, **dict(sampled, repetition_penalty=1.1)).token_ids == penalised


@pytest.mark.parametrize("sampled", [False, True])
def test_last_sequence_finishes_on_the_captured_step(ckpt: Any, sampled: bool) -> None:
    """A BatchManager's last sequence leaves the op-by-op batched steps for the captured batch-1
    step (its latent rows or recurrent states copied over): greedy tokens as generated alone,
    seeded sampled runs repeat and keep their lengths."""
    load, d, _ = ckpt
    gpu = load(d, device="cuda")
    prompts = [[1, 2, 3, 4, 5], list(range(60, 101))]
    lengths = (6, 70)
    opts: dict[str, Any] = (
        dict(temperature=0.8, top_k=20, top_p=0.9) if sampled else dict(temperature=0.0)
    )
    got, mgr = run_requests(gpu, prompts, lengths, **opts)
    assert [len(t) for t in got] == list(lengths)
    assert mgr.finished_alone == 1
    assert len(mgr.decode_batch_sizes) < lengths[1]  # the op-by-op steps stopped early
    if sampled:
        assert run_requests(gpu, prompts, lengths, **opts)[0] == got
    else:
        single = [
            gpu.generate(p, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids
            for p, n in zip(prompts, lengths, strict=True)
        ]
        assert got == single


def test_a_lone_sequence_rejoins_the_op_by_op_batch(ckpt: Any) -> None:
    """The serve loop moves a lone sequence to the captured step and, when another request
    arrives, copies its cache back and batches it op by op again: both answers equal their solo
    generations (the recurrent states and latent rows survive both copies)."""
    load, d, _ = ckpt
    gpu = load(d, device="cuda")
    first, second = [5, 6, 7, 8], [9, 10, 11]
    greedy = dict(temperature=0.0, ignore_eos=True)
    solo = [
        gpu.generate(first, max_new_tokens=400, **greedy).token_ids,
        gpu.generate(second, max_new_tokens=30, **greedy).token_ids,
    ]
    served = serve_two(gpu, first, 400, second, 30)
    assert [r.token_ids for r in served.results] == solo
    assert served.alone_before_second
    assert served.manager.rejoined >= 1
    assert served.manager.finished_alone >= 1
    assert max(served.manager.decode_batch_sizes) == 2


def test_a_block_that_does_not_opt_in_is_named(ckpt: Any) -> None:
    load, d, _ = ckpt
    gpu = load(d, device="cuda")

    class Plain:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, *args: Any) -> Any:
            return self.inner(*args)

    gpu.model.layers[1].mlp = Plain(gpu.model.layers[1].mlp)
    reason = cuda_capture.unsupported_reason(gpu.model)
    assert reason is not None
    assert "layer 1: Plain" in reason
    assert _runner(gpu.model, 64) is None
    got = gpu.generate([1, 2, 3], max_new_tokens=4, temperature=0.0, ignore_eos=True)
    assert len(got.token_ids) == 4


def test_float32_experts_decode_op_by_op(tmp_path: Any) -> None:
    """fp32 activations take the experts' host-routed path, which reads the routing back: the
    step is not captured, and generation still works op by op."""
    load = pytest.importorskip("inference_pio_glm_4_7_flash.model").load
    ref = save_reference(tmp_path, "Glm4MoeLiteForCausalLM", GLM, "float32", seed=3)
    gpu = load(tmp_path, device="cuda")
    reason = cuda_capture.unsupported_reason(gpu.model)
    assert reason is not None
    assert "SigmoidTopKMoE" in reason
    prompt = [5, 6, 7, 8]
    want, _ = hf_greedy_with_logits(ref, prompt, 6)
    assert (
        gpu.generate(prompt, max_new_tokens=6, temperature=0.0, ignore_eos=True).token_ids == want
    )
