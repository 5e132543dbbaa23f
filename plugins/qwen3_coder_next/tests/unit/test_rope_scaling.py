"""Qwen3-Coder-Next with YaRN rope scaling on its partial rotary dims (a quarter of each head) on
a tiny random checkpoint against transformers: original_max_position_embeddings 16, so the
prompt runs well past it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from inference_pio.testing.rope import check_scaled_rope  # noqa: E402
from inference_pio_qwen3_coder_next.model import NextConfig, load  # noqa: E402
from inference_pio_qwen3_coder_next.testing import TINY  # noqa: E402

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}


@pytest.mark.parametrize(("dtype", "legacy"), [("float32", False), ("float32", True)])
def test_yarn_matches_transformers(dtype: str, legacy: bool, tmp_path: Path) -> None:
    config = {k: v for k, v in TINY.items() if k != "rope_theta"}
    config["rope_parameters"] = {**YARN, "rope_theta": TINY["rope_theta"]}
    assert NextConfig.from_hf(config).rot_dim == 8  # 32 x 0.25
    check_scaled_rope(load, "Qwen3NextForCausalLM", config, tmp_path, dtype, seed=4, legacy=legacy)
