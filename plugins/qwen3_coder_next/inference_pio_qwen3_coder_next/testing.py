"""A tiny Qwen3-Next configuration for tests (this plugin's and the core's)."""

from __future__ import annotations

from typing import Any

# three Gated DeltaNet layers and one gated attention layer (the fourth); layer 2 dense; every
# width distinct (heads 32, linear keys 16, values 24, experts 32, shared 48, dense 96)
TINY: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=24,
    linear_conv_kernel_dim=4,
    num_experts=8,
    num_experts_per_tok=3,
    mlp_only_layers=[2],
    rope_theta=1e4,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
)
