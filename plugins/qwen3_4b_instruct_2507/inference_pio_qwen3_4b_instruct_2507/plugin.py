"""Registers Qwen3-4B-Instruct-2507 with Inference-PIO (entry point ``inference_pio``).

Kept import-light: the model code is referenced by a lazy factory string.
"""

from __future__ import annotations

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel

from inference_pio_qwen3_4b_instruct_2507 import MODEL_NAME
from inference_pio_qwen3_4b_instruct_2507.config import ARCHITECTURE, HF_REPO, MODEL_TYPE

SPEC = ModelSpec(
    name=MODEL_NAME,
    factory="inference_pio_qwen3_4b_instruct_2507.model:load",
    config_factory="inference_pio_qwen3_4b_instruct_2507.config:real_config",
    architectures=(ARCHITECTURE,),
    model_types=(MODEL_TYPE,),
    hf_repo=HF_REPO,
    aliases=('qwen3-4b-instruct', 'qwen3:4b-instruct-2507'),
    description="Qwen3 4B instruct (2507), non-thinking dense decoder",
)


@hookimpl
def pio_register_models(register: RegisterModel) -> None:
    register(SPEC)
