"""Qwen3-VL-2B-Instruct model implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio import TextModelPluginInterface
from inference_pio_qwen3_vl_2b import MODEL_NAME


def load(path: Path, **options: Any) -> TextModelPluginInterface:
    """Loads Qwen3-VL-2B-Instruct from a checkpoint directory (not implemented yet)."""
    raise NotImplementedError(
        f"{MODEL_NAME}: the Qwen3VLForConditionalGeneration implementation is not available yet "
        f"in this release of inference-pio-qwen3-vl-2b; cannot load {path}"
    )
