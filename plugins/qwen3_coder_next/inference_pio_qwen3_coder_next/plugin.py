"""Registers Qwen3-Coder-Next with Inference-PIO (entry point ``inference_pio``).

Kept import-light: the model code is referenced by a lazy factory string.
"""

from __future__ import annotations

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel
from inference_pio_qwen3_coder_next import MODEL_NAME
from inference_pio_qwen3_coder_next.config import ARCHITECTURE, HF_REPO, MODEL_TYPE

SPEC = ModelSpec(
    name=MODEL_NAME,
    factory="inference_pio_qwen3_coder_next.model:load",
    config_factory="inference_pio_qwen3_coder_next.config:real_config",
    weights_factory="inference_pio_qwen3_coder_next.model:weight_shapes",
    architectures=(ARCHITECTURE,),
    model_types=(MODEL_TYPE,),
    hf_repo=HF_REPO,
    aliases=("qwen3-coder-next-80b",),
    description="Qwen3-Coder-Next: Gated DeltaNet + gated attention hybrid, 512-expert MoE",
    tool_call_format="qwen3_coder",
    quantizations=("fp8",),
)


@hookimpl
def pio_register_models(register: RegisterModel) -> None:
    register(SPEC)
