"""Registers Qwen3-0.6B with Inference-PIO (entry point ``inference_pio``).

Kept import-light: the model code is referenced by a lazy factory string.
"""

from __future__ import annotations

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel

from inference_pio_qwen3_0_6b import MODEL_NAME
from inference_pio_qwen3_0_6b.config import ARCHITECTURE, HF_REPO, MODEL_TYPE

SPEC = ModelSpec(
    name=MODEL_NAME,
    factory="inference_pio_qwen3_0_6b.model:load",
    config_factory="inference_pio_qwen3_0_6b.config:real_config",
    architectures=(ARCHITECTURE,),
    model_types=(MODEL_TYPE,),
    hf_repo=HF_REPO,
    aliases=('qwen3-0.6B', 'qwen3:0.6b'),
    description="Qwen3 0.6B dense decoder (hybrid thinking)",
)


@hookimpl
def pio_register_models(register: RegisterModel) -> None:
    register(SPEC)
