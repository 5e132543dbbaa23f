"""Qwen3-Coder-Next model implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio import TextModelPluginInterface
from inference_pio_qwen3_coder_next import MODEL_NAME


def load(path: Path, **options: Any) -> TextModelPluginInterface:
    """Loads Qwen3-Coder-Next from a checkpoint directory (not implemented yet)."""
    raise NotImplementedError(
        f"{MODEL_NAME}: the Qwen3NextForCausalLM implementation is not available yet "
        f"in this release of inference-pio-qwen3-coder-next; cannot load {path}"
    )
