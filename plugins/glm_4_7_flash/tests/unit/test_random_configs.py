"""GLM-4.7-Flash configs drawn at random (seeded) against transformers (eager attention and
experts): low-rank or full query, interleaved or half-rotation RoPE, 1-4 heads, every head width
drawn on its own (nope, rope, value, latent, query rank), 2-16 experts in 1-4 groups of at least
two, top-1 to top-8, 0-2 shared experts, dense and sparse layers mixed, tied and untied LM heads;
fp32 and bf16. Greedy tokens must be transformers', single and batched.

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
from inference_pio_glm_4_7_flash.model import load

SEEDS = range(8)
NEW = 12


def draw_config(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    layers, heads = rng.randint(1, 4), rng.randint(1, 4)
    n_group = rng.choice([1, 1, 2, 4])
    experts = n_group * rng.randint(2, max(2, 16 // n_group))  # transformers: >= 2 a group
    topk_group = rng.randint(1, n_group)
    k = rng.randint(1, min(8, topk_group * (experts // n_group)))
    return dict(
        vocab_size=rng.randrange(512, 900),
        hidden_size=rng.randrange(32, 161, 8),
        intermediate_size=rng.randrange(32, 161, 8),
        moe_intermediate_size=rng.randrange(8, 97, 8),
        num_hidden_layers=layers,
        mlp_layer_types=[rng.choice(["dense", "sparse"]) for _ in range(layers)],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        q_lora_rank=rng.choice([None, rng.randrange(16, 97, 8)]),
        kv_lora_rank=rng.randrange(8, 65, 8),
        qk_nope_head_dim=rng.randrange(8, 65, 8),
        qk_rope_head_dim=rng.choice([8, 16, 32]),
        v_head_dim=rng.randrange(8, 65, 8),
        n_routed_experts=experts,
        num_experts_per_tok=k,
        n_group=n_group,
        topk_group=topk_group,
        n_shared_experts=rng.choice([0, 1, 1, 2]),
        norm_topk_prob=rng.random() < 0.7,
        routed_scaling_factor=rng.choice([1.0, 1.8, 2.5]),
        rope_interleave=rng.random() < 0.7,
        rope_theta=rng.choice([1e4, 1e6]),
        tie_word_embeddings=rng.random() < 0.3,
        max_position_embeddings=512,
        rms_norm_eps=rng.choice([1e-6, 1e-5]),
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_glm_config_greedy_matches_transformers(
    seed: int, dtype: str, tmp_path: Path
) -> None:
    check_random_config(
        load,
        "Glm4MoeLiteForCausalLM",
        draw_config(seed),
        dtype,
        seed,
        tmp_path,
        max_prompt=70,
        new_tokens=NEW,
    )
