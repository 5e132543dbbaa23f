"""Qwen3-Next configs drawn at random (seeded) against transformers (eager attention and
experts): Gated DeltaNet and gated attention layers in any order (at least one attention layer,
which transformers' cache needs), 1-4 linear key heads with 1-3 value heads each, every head
width drawn on its own, conv kernels 2-4, partial rotary 0.25-1, GQA 1-4, 1-16 experts, top-1 to
top-E, dense layers among the sparse ones, tied and untied LM heads; fp32 and bf16; prompts of
1-90 tokens (across transformers' 64-token chunks). Greedy tokens must be transformers', single
and batched.

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
from inference_pio_qwen3_coder_next.model import load

SEEDS = range(8)
NEW = 12


def draw_config(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    layers = rng.randint(1, 4)
    nkv = rng.choice([1, 2])
    nk = rng.randint(1, 4)
    experts = rng.randint(1, 16)
    head_dim = rng.choice([16, 32, 64])
    partial = rng.choice([0.25, 0.5, 1.0])
    kinds = [rng.choice(["linear_attention", "full_attention"]) for _ in range(layers)]
    if "full_attention" not in kinds:  # transformers' cache needs one attention layer
        kinds[rng.randrange(layers)] = "full_attention"
    return dict(
        vocab_size=rng.randrange(512, 900),
        hidden_size=rng.randrange(32, 129, 8),
        intermediate_size=rng.randrange(32, 129, 8),
        moe_intermediate_size=rng.randrange(8, 65, 8),
        shared_expert_intermediate_size=rng.randrange(8, 65, 8),
        num_hidden_layers=layers,
        layer_types=kinds,
        num_attention_heads=nkv * rng.choice([1, 2, 4]),
        num_key_value_heads=nkv,
        head_dim=head_dim,
        rope_parameters={
            "rope_theta": rng.choice([1e4, 1e6]),
            "rope_type": "default",
            "partial_rotary_factor": partial,
        },
        linear_num_key_heads=nk,
        linear_num_value_heads=nk * rng.randint(1, 3),
        linear_key_head_dim=rng.randrange(8, 49, 8),
        linear_value_head_dim=rng.randrange(8, 49, 8),
        linear_conv_kernel_dim=rng.randint(2, 4),
        num_experts=experts,
        num_experts_per_tok=rng.randint(1, experts),
        norm_topk_prob=rng.random() < 0.7,
        decoder_sparse_step=rng.choice([1, 1, 2]),
        mlp_only_layers=sorted(rng.sample(range(layers), rng.randint(0, layers // 2))),
        tie_word_embeddings=rng.random() < 0.3,
        max_position_embeddings=512,
        rms_norm_eps=rng.choice([1e-6, 1e-5]),
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_next_config_greedy_matches_transformers(
    seed: int, dtype: str, tmp_path: Path
) -> None:
    check_random_config(
        load,
        "Qwen3NextForCausalLM",
        draw_config(seed),
        dtype,
        seed,
        tmp_path,
        max_prompt=90,
        new_tokens=NEW,
    )
