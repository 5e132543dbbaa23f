"""GLM-4.7-Flash with DeepSeek-style YaRN (mscale_all_dim, which also scales the MLA softmax) on
a tiny random checkpoint against transformers, with the interleaved rope layout and with
rotate_half: original_max_position_embeddings 16, so the prompt runs well past it. The query and
rope-key projections are scaled x4 so that attention depends on positions at random init."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from inference_pio.testing.rope import check_scaled_rope  # noqa: E402
from inference_pio_glm_4_7_flash.model import GlmConfig, load  # noqa: E402
from inference_pio_glm_4_7_flash.testing import TINY  # noqa: E402

YARN = {
    "rope_type": "yarn",
    "factor": 8.0,
    "original_max_position_embeddings": 16,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "beta_fast": 32,
    "beta_slow": 1,
}


def config(**overrides: Any) -> dict[str, Any]:
    cfg = {k: v for k, v in TINY.items() if k != "rope_theta"}
    cfg["rope_parameters"] = {**YARN, "rope_theta": TINY["rope_theta"]}
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize(
    ("dtype", "interleave", "legacy"),
    [("float32", True, False), ("float32", False, True), ("bfloat16", True, False)],
)
def test_yarn_matches_transformers(
    dtype: str, interleave: bool, legacy: bool, tmp_path: Path
) -> None:
    cfg = config(rope_interleave=interleave)
    check_scaled_rope(
        load,
        "Glm4MoeLiteForCausalLM",
        cfg,
        tmp_path,
        dtype,
        seed=5,
        legacy=legacy,
        qk_scale=4.0,  # the query and the rope key (no norm on either): position-sharp scores
        qk_weights=("q_b_proj.weight", "kv_a_proj_with_mqa.weight"),
    )


def test_mscale_all_dim_scales_the_softmax() -> None:
    """(nope + rope)^-0.5 x mscale²: 0.1 ln 8 + 1 squared here; without scaling, plain."""
    glm = GlmConfig.from_hf(config())
    mscale = 0.1 * 1.0 * math.log(8.0) + 1.0
    assert glm.softmax_scale == (16 + 8) ** (-0.5) * mscale * mscale
    assert GlmConfig.from_hf(TINY).softmax_scale == (16 + 8) ** (-0.5)
    assert glm.max_context == TINY["max_position_embeddings"]  # 16 x 8 is shorter
