"""Configuration of Qwen3-Coder-30B-A3B-Instruct: the real Hugging Face ``config.json`` and
``generation_config.json``.

Values follow ``shared/reference/models.md``; a checkpoint's own files always take precedence
when a real checkpoint is loaded. These copies build ``synthetic:qwen3-coder-30b-a3b-instruct``
checkpoints at the real size.
"""

from __future__ import annotations

import copy
from typing import Any

HF_REPO = "Qwen/Qwen3-Coder-30B-A3B-Instruct"
ARCHITECTURE = "Qwen3MoeForCausalLM"
MODEL_TYPE = "qwen3_moe"

_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 2048,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "hidden_act": "silu",
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000000,
    "rope_scaling": None,
    "max_position_embeddings": 262144,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 48,
    "router_aux_loss_coef": 0.0,
    "output_router_logits": False,
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}

_GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.05,
}


def real_config() -> dict[str, Any]:
    """A fresh copy of the real ``config.json`` contents."""
    return copy.deepcopy(_CONFIG)


def generation_config() -> dict[str, Any]:
    """A fresh copy of the real ``generation_config.json`` contents."""
    return copy.deepcopy(_GENERATION_CONFIG)
