"""My-Model's real ``config.json`` values (replace with your model's).

The template's model is laid out like transformers' ``LlamaForCausalLM`` (RMSNorm, RoPE,
grouped-query attention, SwiGLU MLP, no q/k norms, no biases): the tests check it against that
class. Keep ``ARCHITECTURE`` and ``MODEL_TYPE`` equal to your checkpoints' ``architectures[0]``
and ``model_type``: they are how the core picks this plugin for a checkpoint directory.
"""

from __future__ import annotations

import copy
from typing import Any

HF_REPO = "example-org/My-Model"
ARCHITECTURE = "MyModelForCausalLM"
MODEL_TYPE = "my_model"

_CONFIG: dict[str, Any] = {
    "architectures": [ARCHITECTURE],
    "model_type": MODEL_TYPE,
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 32000,
    "torch_dtype": "bfloat16",
}


def real_config() -> dict[str, Any]:
    """A fresh copy of the real ``config.json`` contents."""
    return copy.deepcopy(_CONFIG)
