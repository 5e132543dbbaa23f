"""A tiny configuration of this model for tests (this plugin's and the core's)."""

from __future__ import annotations

from typing import Any

# every head width differs (nope 16, rope 8, v 24, latent 32, query rank 48) so that a mix-up of
# any two shows as a shape error or wrong logits; layer 0 dense, the others sparse
TINY: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=24,
    n_routed_experts=8,
    num_experts_per_tok=3,
    n_shared_experts=1,
    routed_scaling_factor=1.8,
    rope_theta=1e4,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
)
