"""The core dense decoder (nn.dense) on several Qwen3 configurations against transformers, fp32.

The plugins' conformance suites use one tiny config each; these cover the other shapes a valid
config can take: untied LM head, MHA (nkv == nh), head_dim ≠ hidden/heads, sizes that are not
multiples of any SIMD width, one layer, no qk-norm weights beyond the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio.checkpoint import Checkpoint  # noqa: E402
from inference_pio.nn import dense  # noqa: E402
from inference_pio.testing.conformance import prompt, rel_error, save_reference  # noqa: E402

BASE: dict[str, Any] = dict(
    vocab_size=512, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0
)
CONFIGS = {
    "untied-mha-hd16": dict(
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=3,
        head_dim=16,
        tie_word_embeddings=False,
    ),
    "gqa4-odd-sizes": dict(
        hidden_size=40,
        intermediate_size=94,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=24,
        tie_word_embeddings=True,
    ),
    "wide-head": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
        tie_word_embeddings=False,
        rope_theta=5e6,
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dense_decoder_matches_transformers(tmp_path: Path, name: str) -> None:
    cfg = {**BASE, **CONFIGS[name]}
    ref = save_reference(tmp_path, "Qwen3ForCausalLM", cfg, "float32", seed=3)
    ids = prompt(70, 4)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    ck = Checkpoint.open(tmp_path)
    model = dense.build(ck.weights, dense.DenseConfig.from_hf(ck.config))
    cache = model.new_cache(len(ids))
    # 10 decode steps: the first three are recorded, the rest replay the decode plan.
    (logits,) = model.forward([(ids[:60], cache)])
    errors = [rel_error(logits, want[59])]
    for i in range(60, 70):
        (logits,) = model.forward([([ids[i]], cache)])
        errors.append(rel_error(logits, want[i]))
    assert max(errors) <= 1e-4, errors
    assert cache.plan is not None
    assert cache.plan.ready


def test_config_errors_name_the_field() -> None:
    from inference_pio.errors import CheckpointError

    good = {**BASE, **CONFIGS["gqa4-odd-sizes"]}
    with pytest.raises(CheckpointError, match="num_attention_heads"):
        dense.DenseConfig.from_hf({**good, "num_attention_heads": 0})
    with pytest.raises(CheckpointError, match="multiple"):
        dense.DenseConfig.from_hf({**good, "num_key_value_heads": 3})
    with pytest.raises(CheckpointError, match="hidden_size"):
        dense.DenseConfig.from_hf({k: v for k, v in good.items() if k != "hidden_size"})
    with pytest.raises(CheckpointError, match="rope type 'dynamic'"):
        dense.DenseConfig.from_hf({**good, "rope_scaling": {"rope_type": "dynamic", "factor": 4.0}})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"use_sliding_window": True, "sliding_window": 64}, "sliding-window"),
        # transformers' Qwen3Config: a window of 4096 when config.json leaves the key out
        ({"use_sliding_window": True}, "sliding-window"),
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),
        ({"head_dim": 16.7}, "head_dim"),
        ({"head_dim": 0}, "head_dim"),
        ({"num_key_value_heads": 2.0}, "num_key_value_heads"),
        ({"num_key_value_heads": 0}, "num_key_value_heads"),
        ({"rms_norm_eps": "abc"}, "rms_norm_eps"),
        ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
        ({"rope_theta": float("inf")}, "rope_theta"),
        ({"rope_theta": 1e-300}, "rope_theta"),
        ({"rope_theta": 3.5e38}, "rope_theta"),  # beyond float32: the first forward used to fail
        ({"rope_parameters": "default"}, "rope_parameters"),
    ],
)
def test_unsupported_or_malformed_fields_are_refused(change: dict[str, Any], match: str) -> None:
    """What the dense decoder does not implement (an activation other than SiLU, projection
    biases, sliding windows) or cannot read is a CheckpointError, never a silently different
    model."""
    from inference_pio.errors import CheckpointError

    good = {**BASE, **CONFIGS["gqa4-odd-sizes"], "hidden_act": "silu", "attention_bias": False}
    dense.DenseConfig.from_hf(good)
    with pytest.raises(CheckpointError, match=match):
        dense.DenseConfig.from_hf({**good, **change})


def test_bias_tensors_and_a_layer_count_beyond_the_weights_are_refused(tmp_path: Path) -> None:
    from inference_pio.errors import CheckpointError

    cfg = {**BASE, **CONFIGS["gqa4-odd-sizes"]}
    save_reference(tmp_path, "Qwen3ForCausalLM", cfg, "float32", seed=3)
    ck = Checkpoint.open(tmp_path)
    config = dense.DenseConfig.from_hf(ck.config)
    weights = dict(ck.weights)
    with pytest.raises(CheckpointError, match="num_hidden_layers 1000000000"):
        dense.build(weights, dense.DenseConfig.from_hf({**ck.config, "num_hidden_layers": 10**9}))
    weights["model.layers.0.self_attn.q_proj.bias"] = weights["model.norm.weight"]
    with pytest.raises(CheckpointError, match="biases are not supported"):
        dense.build(weights, config)


def test_head_dim_default_and_sliding_windows_that_do_not_apply() -> None:
    """Without head_dim, Qwen3's plugins take transformers' Qwen3 default (128), others
    hidden / heads; a sliding window that starts past the last layer (max_window_layers) slides
    nowhere, as in transformers."""
    good = {**BASE, **CONFIGS["gqa4-odd-sizes"]}
    config = {k: v for k, v in good.items() if k != "head_dim"}
    assert dense.DenseConfig.from_hf(config).head_dim == 40 // 8
    assert dense.DenseConfig.from_hf(config, default_head_dim=128).head_dim == 128
    window = {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 28}
    dense.DenseConfig.from_hf({**good, **window})
