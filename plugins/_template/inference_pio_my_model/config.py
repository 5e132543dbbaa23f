"""My-Model's real ``config.json`` values (replace with your model's)."""

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
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
}


def real_config() -> dict[str, Any]:
    """A fresh copy of the real ``config.json`` contents."""
    return copy.deepcopy(_CONFIG)
