"""Configuration of GLM-4.7-Flash: the real Hugging Face ``config.json`` and
``generation_config.json``.

Values follow ``shared/reference/models.md``; a checkpoint's own files always take precedence
when a real checkpoint is loaded. These copies build ``synthetic:glm-4.7-flash``
checkpoints at the real size.
"""

from __future__ import annotations

import copy
from typing import Any

HF_REPO = "zai-org/GLM-4.7-Flash"
ARCHITECTURE = "Glm4MoeLiteForCausalLM"
MODEL_TYPE = "glm4_moe_lite"

_CONFIG: dict[str, Any] = {
    "architectures": ["Glm4MoeLiteForCausalLM"],
    "model_type": "glm4_moe_lite",
    "hidden_size": 2048,
    "num_hidden_layers": 47,
    "num_attention_heads": 20,
    "num_key_value_heads": 20,
    "q_lora_rank": 768,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64,
    "v_head_dim": 256,
    "head_dim": 64,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "rope_interleave": True,
    "partial_rotary_factor": 1.0,
    "first_k_dense_replace": 1,
    "intermediate_size": 10240,
    "n_routed_experts": 64,
    "num_experts_per_tok": 4,
    "moe_intermediate_size": 1536,
    "n_shared_experts": 1,
    "topk_method": "noaux_tc",
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.8,
    "num_nextn_predict_layers": 1,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "max_position_embeddings": 202752,
    "vocab_size": 154880,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "pad_token_id": 154820,
    "eos_token_id": [154820, 154827, 154829],
    "torch_dtype": "bfloat16",
    "use_cache": True,
}

_GENERATION_CONFIG: dict[str, Any] = {
    "eos_token_id": [154820, 154827, 154829],
    "pad_token_id": 154820,
    "do_sample": True,
    "temperature": 1.0,
    "top_p": 0.95,
}


def real_config() -> dict[str, Any]:
    """A fresh copy of the real ``config.json`` contents."""
    return copy.deepcopy(_CONFIG)


def generation_config() -> dict[str, Any]:
    """A fresh copy of the real ``generation_config.json`` contents."""
    return copy.deepcopy(_GENERATION_CONFIG)
