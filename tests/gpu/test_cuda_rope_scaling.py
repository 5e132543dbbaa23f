"""Scaled RoPE on CUDA: toc_rope_cache_freqs against the CPU builder, and a tiny YaRN Qwen3
(original_max_position_embeddings 16, so decoding runs far past it) whose greedy tokens on CUDA
(fused decode step and multi-kernel graph in bf16, op-by-op in fp32, batched graphs) equal
transformers' and the CPU path's. As in test_cuda_model, the tied embedding is scaled x8 so
logits are well separated."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from inference_pio import cuda, ops  # noqa: E402
from inference_pio.nn.cuda_graph import fused_unsupported_reason, unsupported_reason  # noqa: E402
from inference_pio.nn.rope_scaling import rope_frequencies  # noqa: E402
from inference_pio.tensor import Tensor  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file
from tiny_qwen3 import make_qwen3  # noqa: E402

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load

YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 16,
    "rope_theta": 1e6,
}
TINY = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,  # the fused step wants a multiple of 32
    rope_parameters=YARN,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
)


@pytest.mark.parametrize("dt", ["float32", "bfloat16"])
def test_rope_cache_freqs_matches_the_cpu(dt: str) -> None:
    rope = rope_frequencies({"max_position_embeddings": 2048, "rope_parameters": YARN}, 64)
    pos = torch.randint(0, 3000, (37,), dtype=torch.int32)
    inv = Tensor.from_list(list(rope.inv_freq), "float32")
    cpu = ops.rope_cache_freqs(tb.to_pio(pos), inv, rope.attention_factor, dt)
    gpu = ops.rope_cache_freqs(tb.to_pio(pos).to("cuda"), inv.to("cuda"), rope.attention_factor, dt)
    # the same fp32 angles; the device's cosf/sinf against libm's: an ulp or two in fp32, at
    # most one bf16 step where that flips a rounding
    tol = 2e-6 if dt == "float32" else 2**-8
    for a, b in zip(cpu, gpu, strict=True):
        d = (tb.to_torch(a).double() - tb.to_torch(b.to("cpu")).double()).abs().max()
        assert float(d) <= tol * rope.attention_factor
    with pytest.raises(ValueError, match="same device"):
        ops.rope_cache_freqs(tb.to_pio(pos).to("cuda"), inv, 1.0, dt)


def _make(d: Path, dtype: Any, seed: int) -> Any:
    return make_qwen3(d, {**TINY, "rope_parameters": dict(YARN)}, dtype, seed)


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    dt = torch.bfloat16 if request.param == "bf16" else torch.float32
    d = tmp_path_factory.mktemp(f"qwen3-yarn-cuda-{request.param}")
    return request.param, d, _make(d, dt, seed=3)


def _hf_greedy(ref: Any, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=0,
        )  # fmt: skip
    return [int(t) for t in out[0, len(prompt) :]]


@pytest.mark.parametrize("step", ["fused", "multi"])
def test_yarn_greedy_matches_transformers_and_the_cpu(
    ckpt: Any, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCE_PIO_CUDA_FUSED_DECODE", "1" if step == "fused" else "0")
    kind, d, ref = ckpt
    prompt = torch.randint(0, 500, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    n = 40
    want = _hf_greedy(ref, prompt, n)
    gpu = load(d, device="cuda")
    assert gpu.model.rotary.scaled
    if kind == "bf16":
        assert unsupported_reason(gpu.model) is None
        assert fused_unsupported_reason(gpu.model) is None
    got = gpu.generate(prompt, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids
    assert got == want
    cpu = load(d, device="cpu")
    assert cpu.generate(prompt, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids == (
        want
    )


def test_yarn_batched_greedy_matches_single(ckpt: Any) -> None:
    """Batched decode (captured graphs build the tables from the cache lengths on the device)."""
    _, d, ref = ckpt
    gpu = load(d, device="cuda")
    prompts = [[1, 2, 3, 4, 5], list(range(60, 101)), list(range(200, 230))]
    reqs = [dict(prompt=p, max_new_tokens=24, temperature=0.0, ignore_eos=True) for p in prompts]
    got = [r.token_ids for r in gpu.generate_batch(reqs)]
    assert got == [_hf_greedy(ref, p, 24) for p in prompts]
