"""A tiny random Qwen3 on the GPU for the batching tests (prefix caching, chunked prefill): bf16
with the LM head scaled up (so that near-ties of bf16 logits do not flip greedy tokens) or fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference_pio.testing.conformance import save_reference

TINY = dict(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=1e6,
    tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-6,
)  # fmt: skip


def load_tiny_qwen3(tmp_path_factory: pytest.TempPathFactory, kind: str, tag: str) -> Any:
    """The checkpoint of ``kind`` ("bf16" or "fp32") written under a new ``tag`` folder and loaded
    on cuda:0 by the Qwen3-0.6B plugin."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp(f"{tag}-{kind}")
    bf16 = kind == "bf16"
    dtype = "bfloat16" if bf16 else "float32"
    save_reference(d, "Qwen3ForCausalLM", TINY, dtype, seed=3, logit_scale=8.0 if bf16 else 1.0)
    return load(d, device="cuda:0")


def make_qwen3(d: Path, config: dict[str, Any], dtype: Any, seed: int) -> Any:
    """transformers' Qwen3 of ``config`` (random, seeded; embeddings x8 so that greedy tokens do
    not sit on near-ties, norms randomised), saved in ``dtype`` with a byte tokenizer whose EOS is
    511; returns the reference model (eager attention)."""
    import torch
    import transformers

    from inference_pio.testing.tiny import randomize_norms, write_byte_tokenizer

    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(**config)
    cfg._attn_implementation = "eager"
    ref = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        ref.model.embed_tokens.weight.mul_(8.0)
    randomize_norms(ref, seed=seed)
    ref = ref.to(dtype)
    ref.save_pretrained(d)
    write_byte_tokenizer(d, 512, 511)
    (d / "generation_config.json").write_text('{"eos_token_id": [511]}')
    return ref
