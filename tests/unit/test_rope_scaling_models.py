"""Scaled RoPE end to end on the dense decoder: tiny random Qwen3 checkpoints with YaRN and linear
scaling and a Llama-layout checkpoint (the plugin template) with llama3 scaling, against
transformers (fp32 prefill and decode logits, bf16, identical greedy tokens), with
original_max_position_embeddings 16 so the prompts run well past it; the context a YaRN config
extends (vLLM's rule) is usable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # "factor does not match max_position_embeddings"

from inference_pio.testing.conformance import hf_greedy, prompt, save_reference  # noqa: E402
from inference_pio.testing.rope import check_scaled_rope  # noqa: E402
from inference_pio.testing.tiny import tiny_qwen3_config  # noqa: E402
from inference_pio_qwen3_0_6b.model import load as load_qwen3  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[2] / "plugins" / "_template"

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
YARN_MSCALE = {**YARN, "factor": 8.0, "mscale": 1.3, "mscale_all_dim": 0.8, "beta_fast": 8}
LINEAR = {"rope_type": "linear", "factor": 3.0}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def qwen3(rope: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return tiny_qwen3_config(
        head_dim=32,
        max_position_embeddings=1024,
        rope_parameters={**rope, "rope_theta": 1e4},
        **overrides,
    )


@pytest.mark.parametrize(
    ("name", "rope", "legacy"),
    [
        ("yarn", YARN, False),
        ("yarn-legacy", YARN, True),
        ("yarn-mscale", YARN_MSCALE, False),
        ("linear", LINEAR, True),
    ],
)
def test_qwen3_scaled_rope_fp32(
    name: str, rope: dict[str, Any], legacy: bool, tmp_path: Path
) -> None:
    check_scaled_rope(load_qwen3, "Qwen3ForCausalLM", qwen3(rope), tmp_path, legacy=legacy)


def test_qwen3_yarn_bf16(tmp_path: Path) -> None:
    check_scaled_rope(load_qwen3, "Qwen3ForCausalLM", qwen3(YARN), tmp_path, "bfloat16", seed=2)


@pytest.fixture(scope="module")
def load_template() -> Any:
    sys.path.insert(0, str(TEMPLATE))
    try:
        from inference_pio_my_model.model import load
    finally:
        sys.path.remove(str(TEMPLATE))
    return load


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_llama_layout_llama3_rope(dtype: str, load_template: Any, tmp_path: Path) -> None:
    """Llama-3.1-style rope on the template's Llama layout (no q/k norms, untied head; q and k
    projections scaled x8 so attention depends on positions)."""
    config = qwen3(LLAMA3, tie_word_embeddings=False, rms_norm_eps=1e-5)
    config["rope_parameters"]["rope_theta"] = 5e5
    check_scaled_rope(
        load_template, "LlamaForCausalLM", config, tmp_path, dtype, legacy=True, qk_scale=8.0
    )


def test_yarn_extends_the_usable_context(tmp_path: Path) -> None:
    """max_position_embeddings 64 with YaRN 16 x 8: a 100-token prompt is within the 128-token
    context (vLLM's derived length) and its greedy tokens are transformers'."""
    rope = {**YARN, "factor": 8.0}
    config = tiny_qwen3_config(
        head_dim=32, max_position_embeddings=64, rope_parameters={**rope, "rope_theta": 1e4}
    )
    ref = save_reference(tmp_path, "Qwen3ForCausalLM", config, "float32", seed=4)
    model = load_qwen3(tmp_path)
    assert model.model.max_context == 128
    ids = prompt(100, 9)
    got = model.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids
    assert got == hf_greedy(ref, ids, 12)
    with pytest.raises(ValueError, match="context"):
        model.generate(prompt(128, 1), max_new_tokens=1)
