"""Qwen3-Coder-Next against transformers' ``Qwen3NextForCausalLM`` (eager attention and experts)
on tiny random checkpoints: the core conformance suite (prompts cross the 64-token chunks of
transformers' chunked delta rule), then config variants, the tensor plan and the real
configuration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from inference_pio.errors import CheckpointError
from inference_pio.testing.conformance import (
    CausalLMConformance,
    hf_greedy,
    prompt,
    rel_error,
    save_reference,
)
from inference_pio_qwen3_coder_next.config import real_config
from inference_pio_qwen3_coder_next.model import NextConfig, load, weight_shapes
from inference_pio_qwen3_coder_next.testing import TINY


class TestQwen3NextConformance(CausalLMConformance):
    load = staticmethod(load)
    hf_class_name = "Qwen3NextForCausalLM"
    real_config = staticmethod(real_config)
    tiny_config = TINY
    shape_field = "moe_intermediate_size"


@pytest.mark.parametrize(
    "overrides",
    [
        dict(full_attention_interval=2, num_hidden_layers=4),  # layer kinds from the interval
        dict(linear_num_value_heads=2, linear_conv_kernel_dim=2),  # one value head a key head
        dict(
            rope_parameters={
                "rope_theta": 1e4,
                "rope_type": "default",
                "partial_rotary_factor": 0.5,
            }
        ),
        dict(decoder_sparse_step=2, mlp_only_layers=[], norm_topk_prob=False),
        dict(num_experts_per_tok=8, tie_word_embeddings=True, num_key_value_heads=4),
        dict(linear_key_head_dim=40, linear_value_head_dim=8, head_dim=16),
    ],
)
def test_config_variants_match_transformers(tmp_path: Path, overrides: dict[str, object]) -> None:
    """fp32 logits after a prefill that crosses a 64-token chunk and through decode steps, and
    greedy tokens."""
    torch = pytest.importorskip("torch")
    cfg = {**TINY, **overrides}
    ref = save_reference(tmp_path, "Qwen3NextForCausalLM", cfg, "float32", seed=7)
    m = load(tmp_path)
    ids = prompt(80, seed=3)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    fm = m.model
    cache = fm.new_cache(96)
    (got,) = fm.forward([(ids[:70], cache)])
    errors = [rel_error(got, want[69])]
    for i in range(70, 80):
        (got,) = fm.forward([([ids[i]], cache)])
        errors.append(rel_error(got, want[i]))
    assert max(errors) < 1e-4, errors
    assert m.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids == (
        hf_greedy(ref, ids, 12)
    )


def test_layer_kinds_follow_transformers() -> None:
    """Without layer_types, layer i is full attention iff (i + 1) % full_attention_interval == 0;
    with it, the list decides. Sparse layers follow mlp_only_layers and decoder_sparse_step."""
    cfg = NextConfig.from_hf({**TINY, "num_hidden_layers": 6, "full_attention_interval": 3})
    assert cfg.layer_types == ("linear_attention", "linear_attention", "full_attention") * 2
    kinds = ["full_attention", "linear_attention", "linear_attention", "full_attention"]
    assert NextConfig.from_hf({**TINY, "layer_types": kinds}).layer_types == tuple(kinds)
    step = NextConfig.from_hf({**TINY, "mlp_only_layers": [], "decoder_sparse_step": 2})
    assert [step.sparse(i) for i in range(4)] == [False, True, False, True]


def test_weight_shapes_cover_the_checkpoint(tmp_path: Path) -> None:
    """The tensor plan (synthetic checkpoints) names exactly the tensors transformers writes."""
    from safetensors import safe_open

    save_reference(tmp_path, "Qwen3NextForCausalLM", TINY, "float32", seed=1)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    plan = weight_shapes(json.loads((tmp_path / "config.json").read_text()))
    assert {k: v[0] for k, v in plan.items()} == names


def test_real_config_plan_has_the_published_parameter_count() -> None:
    """models.md §4.1: 79,674,391,296 parameters (the mtp.* weights are not part of it)."""
    plan = weight_shapes(real_config())
    assert sum(math.prod(shape) for shape, _ in plan.values()) == 79_674_391_296
    assert plan["model.layers.0.linear_attn.in_proj_qkvz.weight"][0] == (12288, 2048)
    assert plan["model.layers.0.linear_attn.conv1d.weight"][0] == (8192, 1, 4)
    assert plan["model.layers.3.self_attn.q_proj.weight"][0] == (8192, 2048)
    assert plan["model.layers.47.mlp.experts.511.down_proj.weight"][0] == (2048, 512)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("linear_num_value_heads", 24, "linear_num_value_heads"),
        ("num_experts_per_tok", 513, "exceeds"),
        ("layer_types", ["full_attention"], "layer_types"),
        ("partial_rotary_factor", 1.5, "partial_rotary_factor"),
        ("num_attention_heads", 3, "num_attention_heads"),
        ("rope_scaling", {"rope_type": "longrope", "factor": 4.0}, "rope type 'longrope'"),
        ("rope_scaling", {"type": "linear", "factor": 0}, "factor"),
        ("hidden_act", "relu", "hidden_act"),
        ("attention_bias", True, "attention_bias"),
    ],
)
def test_bad_config_fields_are_clear_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        NextConfig.from_hf({**real_config(), field: value})


def test_missing_fields_take_transformers_defaults() -> None:
    """num_key_value_heads 2 and head_dim 256 when config.json leaves them out, as
    transformers' Qwen3NextConfig."""
    config = {
        k: v for k, v in real_config().items() if k not in ("num_key_value_heads", "head_dim")
    }
    cfg = NextConfig.from_hf(config)
    assert (cfg.num_kv_heads, cfg.head_dim) == (2, 256)


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    """On a machine without CUDA, ``device="cuda"`` names the reason (tests/gpu runs it on one)."""
    from inference_pio import cuda

    if cuda.is_available():
        pytest.skip("CUDA is available here; tests/gpu/test_cuda_next_model.py covers it")
    save_reference(tmp_path, "Qwen3NextForCausalLM", TINY, "float32", seed=1)
    with pytest.raises(cuda.CudaUnavailableError, match="CUDA is not available"):
        load(tmp_path, device="cuda")


def test_the_recurrent_state_does_not_grow_with_the_context(tmp_path: Path) -> None:
    """Only the gated attention layer's keys and values grow; a Gated DeltaNet layer's state is
    fixed (its conv inputs and recurrent state)."""
    save_reference(tmp_path, "Qwen3NextForCausalLM", TINY, "float32", seed=1)
    m = load(tmp_path).model
    grow = m.decode_bytes_per_token(11) - m.decode_bytes_per_token(10)
    assert grow == 2 * 2 * 32 * 4  # one attention layer: 2 kv heads of 32, keys and values, fp32
