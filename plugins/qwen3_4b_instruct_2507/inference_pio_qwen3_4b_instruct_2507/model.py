"""Qwen3-4B-Instruct-2507 model implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio import TextModelPluginInterface

from inference_pio_qwen3_4b_instruct_2507 import MODEL_NAME


def load(path: Path, **options: Any) -> TextModelPluginInterface:
    """Loads Qwen3-4B-Instruct-2507 from a checkpoint directory (not implemented yet)."""
    raise NotImplementedError(
        f"{MODEL_NAME}: the Qwen3ForCausalLM implementation is not available yet in this release "
        f"of inference-pio-qwen3-4b-instruct-2507; cannot load {path}"
    )
