"""Qwen3-4B-Instruct-2507: a thin assembly of the core dense-decoder building blocks
(models.md §2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio.causal_lm import CausalLM, text_setup
from inference_pio.checkpoint import Checkpoint
from inference_pio.nn import dense
from inference_pio_qwen3_4b_instruct_2507 import MODEL_NAME


def weight_shapes(config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor names, shapes and init kinds of a checkpoint with this config."""
    cfg = dense.DenseConfig.from_hf(
        config, qk_norm=True, default_head_dim=128, defaults=dense.QWEN3_DEFAULTS
    )
    return dense.weight_plan(cfg)


def load(path: Path, **options: Any) -> CausalLM:
    """Loads a Qwen3ForCausalLM checkpoint directory (options: device, dtype, quantization)."""
    checkpoint = Checkpoint.open(
        path,
        progress=bool(options.get("progress", False)),
        quantization=options.get("quantization"),
    )
    cfg = dense.DenseConfig.from_hf(
        checkpoint.config, qk_norm=True, default_head_dim=128, defaults=dense.QWEN3_DEFAULTS
    )
    setup = text_setup(checkpoint)  # its errors before the weights are read
    model = dense.build(checkpoint.weights, cfg, options.get("device", "cpu"), options.get("dtype"))
    return CausalLM(options.get("name", MODEL_NAME), checkpoint, model, setup=setup)
