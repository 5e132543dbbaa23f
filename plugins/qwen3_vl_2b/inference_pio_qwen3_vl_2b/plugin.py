"""Registers Qwen3-VL-2B-Instruct with Inference-PIO (entry point ``inference_pio``).

Kept import-light: the model code is referenced by a lazy factory string.
"""

from __future__ import annotations

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel
from inference_pio_qwen3_vl_2b import MODEL_NAME
from inference_pio_qwen3_vl_2b.config import ARCHITECTURE, HF_REPO, MODEL_TYPE

SPEC = ModelSpec(
    name=MODEL_NAME,
    factory="inference_pio_qwen3_vl_2b.model:load",
    config_factory="inference_pio_qwen3_vl_2b.config:real_config",
    weights_factory="inference_pio_qwen3_vl_2b.model:weight_shapes",
    architectures=(ARCHITECTURE,),
    model_types=(MODEL_TYPE,),
    hf_repo=HF_REPO,
    aliases=("qwen3-vl-2b", "qwen3-vl:2b"),
    description="Qwen3-VL 2B instruct: vision tower with DeepStack + Qwen3 text decoder with MRoPE",
    tool_call_format="hermes",
    quantizations=("fp8",),
    gpu_quantizations=("fp8",),
    load_options=("min_pixels", "max_pixels"),
)


@hookimpl
def pio_register_models(register: RegisterModel) -> None:
    register(SPEC)
