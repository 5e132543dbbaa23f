"""Qwen3-0.6B model implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio import TextModelPluginInterface

from inference_pio_qwen3_0_6b import MODEL_NAME


def load(path: Path, **options: Any) -> TextModelPluginInterface:
    """Loads Qwen3-0.6B from a checkpoint directory (not implemented yet)."""
    raise NotImplementedError(
        f"{MODEL_NAME}: the Qwen3ForCausalLM implementation is not available yet in this release "
        f"of inference-pio-qwen3-0-6b; cannot load {path}"
    )
