"""Registers GLM-4.7-Flash with Inference-PIO (entry point ``inference_pio``).

Kept import-light: the model code is referenced by a lazy factory string.
"""

from __future__ import annotations

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel
from inference_pio_glm_4_7_flash import MODEL_NAME
from inference_pio_glm_4_7_flash.config import ARCHITECTURE, HF_REPO, MODEL_TYPE

SPEC = ModelSpec(
    name=MODEL_NAME,
    factory="inference_pio_glm_4_7_flash.model:load",
    config_factory="inference_pio_glm_4_7_flash.config:real_config",
    weights_factory="inference_pio_glm_4_7_flash.model:weight_shapes",
    architectures=(ARCHITECTURE,),
    model_types=(MODEL_TYPE,),
    hf_repo=HF_REPO,
    aliases=("glm4.7-flash", "glm-4.7:flash"),
    description="GLM-4.7-Flash: MLA attention, sigmoid-routed 64-expert MoE",
    tool_call_format="glm47",
    quantizations=("fp8",),
)


@hookimpl
def pio_register_models(register: RegisterModel) -> None:
    register(SPEC)
