"""GLM-4.7-Flash model implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio import TextModelPluginInterface
from inference_pio_glm_4_7_flash import MODEL_NAME


def load(path: Path, **options: Any) -> TextModelPluginInterface:
    """Loads GLM-4.7-Flash from a checkpoint directory (not implemented yet)."""
    raise NotImplementedError(
        f"{MODEL_NAME}: the Glm4MoeLiteForCausalLM implementation is not available yet "
        f"in this release of inference-pio-glm-4-7-flash; cannot load {path}"
    )
