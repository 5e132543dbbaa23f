"""Registers Qwen3-Coder-30B-A3B-Instruct with Inference-PIO (entry point ``inference_pio``).

Kept import-light: the model code is referenced by a lazy factory string.
"""

from __future__ import annotations

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel
from inference_pio_qwen3_coder_30b import MODEL_NAME
from inference_pio_qwen3_coder_30b.config import ARCHITECTURE, HF_REPO, MODEL_TYPE

SPEC = ModelSpec(
    name=MODEL_NAME,
    factory="inference_pio_qwen3_coder_30b.model:load",
    config_factory="inference_pio_qwen3_coder_30b.config:real_config",
    weights_factory="inference_pio_qwen3_coder_30b.model:weight_shapes",
    architectures=(ARCHITECTURE,),
    model_types=(MODEL_TYPE,),
    hf_repo=HF_REPO,
    aliases=("qwen3-coder-30b", "qwen3-coder:30b"),
    description="Qwen3-Coder 30B-A3B mixture-of-experts (128 experts, top-8)",
    tool_call_format="qwen3_coder",
    quantizations=("fp8",),
)


@hookimpl
def pio_register_models(register: RegisterModel) -> None:
    register(SPEC)
