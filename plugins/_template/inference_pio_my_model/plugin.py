"""Registers My-Model with Inference-PIO (the module named by the ``inference_pio`` entry point).

Keep this module import-light: it is imported whenever plugins are discovered (for example by
``inference-pio --help``). The model code is named by a lazy ``"package.module:attribute"`` string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel
from inference_pio_my_model import MODEL_NAME
from inference_pio_my_model.config import ARCHITECTURE, HF_REPO, MODEL_TYPE, real_config

SPEC = ModelSpec(
    name=MODEL_NAME,
    factory="inference_pio_my_model.model:load",
    config_factory="inference_pio_my_model.config:real_config",
    weights_factory="inference_pio_my_model.model:weight_shapes",
    architectures=(ARCHITECTURE,),
    model_types=(MODEL_TYPE,),
    hf_repo=HF_REPO,
    aliases=("my-model-1b",),
    description="Template model (replace me)",
    # How the model writes tool calls ("hermes", "qwen3_coder", "glm47"; see
    # inference_pio.toolcalls), or None: the server then returns them as plain text.
    tool_call_format=None,
    # Quantizations load_model(quantization=...) may ask for: "fp8" quantizes the projections
    # nn.dense.build makes (model.py passes the option to Checkpoint.open).
    quantizations=("fp8",),
    gpu_quantizations=("fp8",),
)


@hookimpl
def pio_register_models(register: RegisterModel) -> None:
    """Called once when the plugin loads: register every model this plugin provides."""
    register(SPEC)


@hookimpl
def pio_claim_checkpoint(path: Path, config: dict[str, Any]) -> str | None:
    """Optional: claim checkpoints the architecture alone cannot tell apart (here: by shape)."""
    if ARCHITECTURE not in (config.get("architectures") or []):
        return None
    real = real_config()
    same_shape = all(config.get(k) == real[k] for k in ("hidden_size", "num_hidden_layers"))
    return MODEL_NAME if same_shape else None
