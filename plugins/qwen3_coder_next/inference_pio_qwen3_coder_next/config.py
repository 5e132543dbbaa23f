"""Configuration of Qwen3-Coder-Next: the real Hugging Face ``config.json`` and
``generation_config.json``.

Values follow ``shared/reference/models.md``; a checkpoint's own files always take precedence
when a real checkpoint is loaded. These copies build ``synthetic:qwen3-coder-next``
checkpoints at the real size.
"""

from __future__ import annotations

import copy
from typing import Any

HF_REPO = "Qwen/Qwen3-Coder-Next"
ARCHITECTURE = "Qwen3NextForCausalLM"
MODEL_TYPE = "qwen3_next"

_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3NextForCausalLM"],
    "model_type": "qwen3_next",
    "hidden_size": 2048,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "partial_rotary_factor": 0.25,
    "full_attention_interval": 4,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "intermediate_size": 5120,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-06,
    "rope_theta": 5000000,
    "rope_scaling": None,
    "max_position_embeddings": 262144,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "router_aux_loss_coef": 0.001,
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
    "temperature": 1.0,
    "top_p": 0.95,
    "top_k": 40,
}


def real_config() -> dict[str, Any]:
    """A fresh copy of the real ``config.json`` contents."""
    return copy.deepcopy(_CONFIG)


def generation_config() -> dict[str, Any]:
    """A fresh copy of the real ``generation_config.json`` contents."""
    return copy.deepcopy(_GENERATION_CONFIG)
