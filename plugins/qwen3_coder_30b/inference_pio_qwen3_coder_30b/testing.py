"""A tiny configuration of this model for tests (this plugin's and the core's)."""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_experts=8,
    num_experts_per_tok=3,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    rope_theta=1e7,
    tie_word_embeddings=False,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
)
