"""Qwen3-Coder-30B-A3B with YaRN rope scaling (the model card's way to a 1M context) on a tiny
random checkpoint against transformers: original_max_position_embeddings 16, so the prompt runs
well past it (fp32 prefill and decode logits, bf16, identical greedy tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from inference_pio.testing.rope import check_scaled_rope  # noqa: E402
from inference_pio_qwen3_coder_30b.model import load  # noqa: E402
from inference_pio_qwen3_coder_30b.testing import TINY  # noqa: E402

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}


@pytest.mark.parametrize(("dtype", "legacy"), [("float32", True), ("bfloat16", False)])
def test_yarn_matches_transformers(dtype: str, legacy: bool, tmp_path: Path) -> None:
    config = {k: v for k, v in TINY.items() if k != "rope_theta"}
    config["rope_parameters"] = {**YARN, "rope_theta": TINY["rope_theta"]}
    check_scaled_rope(load, "Qwen3MoeForCausalLM", config, tmp_path, dtype, seed=3, legacy=legacy)
