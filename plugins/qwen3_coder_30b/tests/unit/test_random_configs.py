"""Qwen3-MoE configs drawn at random (seeded) against transformers (eager experts): 1-16
experts, top-1 to top-E, with and without renormalisation, dense layers among the sparse ones
(``decoder_sparse_step``, ``mlp_only_layers``), 1-4 query heads per kv head, head_dim 16-128, tied
and untied LM heads; fp32 and bf16. Greedy tokens must be transformers', single and batched.

A token may differ only where transformers' own two best logits are within a few rounding steps
of each other (bf16: 8 ulps at the row's largest logit; fp32: 1e-4 of it), and the sequences
diverge from there on, so that is the one difference accepted.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio.testing.conformance import check_random_config
from inference_pio_qwen3_coder_30b.model import load

SEEDS = range(8)
NEW = 12


def draw_config(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    nkv, layers, experts = rng.choice([1, 2, 4]), rng.randint(1, 4), rng.randint(1, 16)
    return dict(
        vocab_size=rng.randrange(512, 900),
        hidden_size=rng.randrange(32, 257, 4),
        intermediate_size=rng.randrange(32, 257, 4),
        moe_intermediate_size=rng.randrange(8, 129, 4),
        num_hidden_layers=layers,
        num_attention_heads=nkv * rng.choice([1, 2, 4]),
        num_key_value_heads=nkv,
        head_dim=rng.choice([16, 32, 64, 128]),
        num_experts=experts,
        num_experts_per_tok=rng.randint(1, experts),
        norm_topk_prob=rng.random() < 0.5,
        decoder_sparse_step=rng.choice([1, 1, 2, 3]),
        mlp_only_layers=sorted(rng.sample(range(layers), rng.randint(0, layers // 2))),
        rope_theta=rng.choice([1e4, 1e6]),
        tie_word_embeddings=rng.random() < 0.3,
        max_position_embeddings=512,
        rms_norm_eps=rng.choice([1e-6, 1e-5]),
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_moe_config_greedy_matches_transformers(
    seed: int, dtype: str, tmp_path: Path
) -> None:
    check_random_config(
        load,
        "Qwen3MoeForCausalLM",
        draw_config(seed),
        dtype,
        seed,
        tmp_path,
        max_prompt=70,
        new_tokens=NEW,
    )
