"""A boolean field of config.json written as anything but true/false (the string "false", 0)
is a CheckpointError naming it in every text plugin, as in transformers (whose configs refuse
it), never read as Python truthiness ("false" -> True)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from inference_pio.errors import CheckpointError
from inference_pio_glm_4_7_flash.config import real_config as glm_config
from inference_pio_glm_4_7_flash.model import GlmConfig
from inference_pio_qwen3_coder_30b.config import real_config as moe_config
from inference_pio_qwen3_coder_30b.model import MoeConfig
from inference_pio_qwen3_coder_next.config import real_config as next_config
from inference_pio_qwen3_coder_next.model import NextConfig

CASES: list[tuple[Callable[[dict[str, Any]], Any], Callable[[], dict[str, Any]], str]] = [
    (MoeConfig.from_hf, moe_config, "norm_topk_prob"),
    (NextConfig.from_hf, next_config, "norm_topk_prob"),
    (NextConfig.from_hf, next_config, "tie_word_embeddings"),
    (GlmConfig.from_hf, glm_config, "norm_topk_prob"),
    (GlmConfig.from_hf, glm_config, "rope_interleave"),
    (GlmConfig.from_hf, glm_config, "attention_bias"),
    (GlmConfig.from_hf, glm_config, "tie_word_embeddings"),
]


@pytest.mark.parametrize(("parse", "real", "key"), CASES)
@pytest.mark.parametrize("value", ["false", "true", 0])
def test_non_boolean_flags_are_refused(
    parse: Callable[[dict[str, Any]], Any], real: Callable[[], dict[str, Any]], key: str, value: Any
) -> None:
    parse(real())
    with pytest.raises(CheckpointError, match=key):
        parse({**real(), key: value})
