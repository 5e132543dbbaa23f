"""The plugin template's model (Llama layout: no q/k norms, untied LM head) on CUDA: greedy
tokens equal transformers' LlamaForCausalLM and the CPU path, through the fused decode step, the
multi-kernel graph (bf16) and the op-by-op path (fp32). A third-party plugin built from the
template gets the GPU paths the Qwen3 plugins get."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio import cuda  # noqa: E402
from inference_pio.nn.cuda_graph import fused_unsupported_reason, unsupported_reason  # noqa: E402
from inference_pio.testing.tiny import (  # noqa: E402
    randomize_norms,
    tiny_qwen3_config,
    write_byte_tokenizer,
)

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins" / "_template"))
from inference_pio_my_model.model import load  # noqa: E402

# the fused step wants head_dim a multiple of 32: 64 here
TINY = tiny_qwen3_config(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    head_dim=64,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
)


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    dt = torch.bfloat16 if request.param == "bf16" else torch.float32
    d = tmp_path_factory.mktemp(f"llama-cuda-{request.param}")
    torch.manual_seed(5)
    cfg = transformers.LlamaConfig(**TINY)
    cfg._attn_implementation = "eager"
    ref = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # well separated logits: no near-ties for rounding to flip
        ref.model.embed_tokens.weight.mul_(8.0)
        ref.lm_head.weight.mul_(8.0)
    randomize_norms(ref, seed=5)
    ref = ref.to(dt)
    ref.save_pretrained(d)
    write_byte_tokenizer(d, 512, 511)
    (d / "generation_config.json").write_text('{"eos_token_id": [511]}')
    return request.param, d, ref


@pytest.mark.parametrize("step", ["fused", "multi"])
def test_greedy_matches_transformers_and_the_cpu(
    ckpt: Any, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCE_PIO_CUDA_FUSED_DECODE", "1" if step == "fused" else "0")
    kind, d, ref = ckpt
    prompt = torch.randint(0, 500, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    n = 32
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=0,
        )  # fmt: skip
    want = [int(t) for t in out[0, len(prompt) :]]
    gpu = load(d, device="cuda")
    if kind == "bf16":
        assert unsupported_reason(gpu.model) is None
        assert fused_unsupported_reason(gpu.model) is None
    got = gpu.generate(prompt, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids
    assert got == want
    cpu = load(d, device="cpu")
    assert (
        cpu.generate(prompt, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids == want
    )
