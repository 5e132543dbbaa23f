"""Registers Qwen3-0.6B with Inference-PIO (entry point ``inference_pio``).

Kept import-light: the model code is referenced by a lazy factory string.

Qwen3-0.6B and Qwen3-4B-Instruct-2507 share the ``Qwen3ForCausalLM`` architecture, so each plugin
claims a checkpoint only when its ``hidden_size`` and ``num_hidden_layers`` match its own real
configuration (``pio_claim_checkpoint``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel
from inference_pio_qwen3_0_6b import MODEL_NAME
from inference_pio_qwen3_0_6b.config import ARCHITECTURE, HF_REPO, MODEL_TYPE, real_config

SPEC = ModelSpec(
    name=MODEL_NAME,
    factory="inference_pio_qwen3_0_6b.model:load",
    config_factory="inference_pio_qwen3_0_6b.config:real_config",
    weights_factory="inference_pio_qwen3_0_6b.model:weight_shapes",
    architectures=(ARCHITECTURE,),
    model_types=(MODEL_TYPE,),
    hf_repo=HF_REPO,
    aliases=("qwen3-0.6B", "qwen3:0.6b"),
    description="Qwen3 0.6B dense decoder (hybrid thinking)",
    tool_call_format="hermes",
    quantizations=("fp8",),
    gpu_quantizations=("fp8",),
)


@hookimpl
def pio_register_models(register: RegisterModel) -> None:
    register(SPEC)


#: Config keys that tell this model apart from other Qwen3ForCausalLM checkpoints.
SHAPE_KEYS = ("hidden_size", "num_hidden_layers")


def matches(config: dict[str, Any]) -> bool:
    """True when ``config`` has this model's architecture and its real shape."""
    archs = config.get("architectures") or []
    if ARCHITECTURE not in archs and config.get("model_type") != MODEL_TYPE:
        return False
    real = real_config()
    return all(config.get(key) == real[key] for key in SHAPE_KEYS)


@hookimpl
def pio_claim_checkpoint(path: Path, config: dict[str, Any]) -> str | None:
    """Claims checkpoints whose config matches Qwen3-0.6B's real shape."""
    return MODEL_NAME if matches(config) else None
