"""Qwen3-4B-Instruct-2507 against transformers' Qwen3ForCausalLM (the shared conformance suite)
and one decoder layer at the real size."""

from __future__ import annotations

from pathlib import Path

from inference_pio.testing.conformance import CausalLMConformance
from inference_pio.testing.layers import check_real_size_dense_layer
from inference_pio_qwen3_4b_instruct_2507.config import real_config
from inference_pio_qwen3_4b_instruct_2507.model import load


class TestQwen3Conformance(CausalLMConformance):
    load = staticmethod(load)
    hf_class_name = "Qwen3ForCausalLM"
    real_config = staticmethod(real_config)
    tiny_config = dict(  # noqa: RUF012 - read-only class data
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        rope_theta=1e6,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
    )


def test_real_size_decoder_layer_matches_transformers(tmp_path: Path) -> None:
    check_real_size_dense_layer(tmp_path, "Qwen3ForCausalLM", real_config(), tokens=9)
