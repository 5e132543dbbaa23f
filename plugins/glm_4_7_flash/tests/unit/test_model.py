"""GLM-4.7-Flash against transformers' ``Glm4MoeLiteForCausalLM`` (eager attention and experts)
on tiny random checkpoints: the core conformance suite, then the config variants the suite's
config does not cover, the tensor plan and the real configuration."""

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
from inference_pio_glm_4_7_flash.config import real_config
from inference_pio_glm_4_7_flash.model import GlmConfig, load, weight_shapes
from inference_pio_glm_4_7_flash.testing import TINY


class TestGlm47FlashConformance(CausalLMConformance):
    load = staticmethod(load)
    hf_class_name = "Glm4MoeLiteForCausalLM"
    real_config = staticmethod(real_config)
    tiny_config = TINY
    shape_field = "moe_intermediate_size"
    # transformers 5.24 reports conversion errors loading an FP8 copy of this checkpoint
    hf_reads_fp8 = False


@pytest.mark.parametrize(
    "overrides",
    [
        dict(q_lora_rank=None),  # one q_proj instead of the low-rank query
        dict(rope_interleave=False),  # rotate_half instead of interleaved pairs
        dict(n_group=4, topk_group=2, num_experts_per_tok=4),  # group-limited routing
        dict(n_shared_experts=2, norm_topk_prob=False, routed_scaling_factor=2.5),
        dict(attention_bias=True),
        dict(num_hidden_layers=4, mlp_layer_types=["sparse", "dense", "sparse", "dense"]),
        dict(num_experts_per_tok=8, tie_word_embeddings=True),  # every expert, tied head
        dict(v_head_dim=8, qk_nope_head_dim=40, kv_lora_rank=16),
    ],
)
def test_config_variants_match_transformers(tmp_path: Path, overrides: dict[str, object]) -> None:
    """fp32 logits after a prefill and through decode steps, and greedy tokens."""
    torch = pytest.importorskip("torch")
    cfg = {**TINY, **overrides}
    ref = save_reference(tmp_path, "Glm4MoeLiteForCausalLM", cfg, "float32", seed=7)
    if overrides.get("attention_bias"):  # transformers initialises biases to zero: make them count
        with torch.no_grad():
            for layer in ref.model.layers:
                for lin in (layer.self_attn.q_a_proj, layer.self_attn.kv_a_proj_with_mqa,
                            layer.self_attn.o_proj):  # fmt: skip
                    lin.bias.normal_(0.0, 0.5)
        ref.save_pretrained(tmp_path)
    m = load(tmp_path)
    ids = prompt(40, seed=3)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    fm = m.model
    cache = fm.new_cache(64)
    (got,) = fm.forward([(ids[:30], cache)])
    errors = [rel_error(got, want[29])]
    for i in range(30, 40):
        (got,) = fm.forward([([ids[i]], cache)])
        errors.append(rel_error(got, want[i]))
    assert max(errors) < 1e-4, errors
    assert m.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids == (
        hf_greedy(ref, ids, 12)
    )


def test_layer_kinds_follow_transformers() -> None:
    """Without mlp_layer_types transformers makes layer 0 dense and the rest sparse, whatever
    first_k_dense_replace says; with it, the list decides."""
    cfg = {**TINY, "num_hidden_layers": 4, "first_k_dense_replace": 2}
    assert GlmConfig.from_hf(cfg).mlp_layer_types == ("dense", "sparse", "sparse", "sparse")
    kinds = ["sparse", "dense", "dense", "sparse"]
    assert GlmConfig.from_hf({**cfg, "mlp_layer_types": kinds}).mlp_layer_types == tuple(kinds)


def test_weight_shapes_cover_the_checkpoint(tmp_path: Path) -> None:
    """The tensor plan (synthetic checkpoints) names exactly the tensors transformers writes."""
    from safetensors import safe_open

    for i, extra in enumerate([{}, {"q_lora_rank": None, "attention_bias": True}]):
        d = tmp_path / str(i)
        save_reference(d, "Glm4MoeLiteForCausalLM", {**TINY, **extra}, "float32", seed=1)
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            names = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        plan = weight_shapes(json.loads((d / "config.json").read_text()))
        assert {k: v[0] for k, v in plan.items()} == names


def test_real_config_plan_has_the_published_parameter_count() -> None:
    """models.md §5.1: 29,943,390,976 parameters plus a 64-entry fp32 correction bias in each of
    the 46 sparse layers (the multi-token-prediction layer is not part of the model)."""
    plan = weight_shapes(real_config())
    total = sum(math.prod(shape) for shape, _ in plan.values())
    biases = sum(math.prod(s) for n, (s, _) in plan.items() if n.endswith("correction_bias"))
    assert (total - biases, biases) == (29_943_390_976, 46 * 64)
    assert plan["model.layers.0.mlp.down_proj.weight"][0] == (2048, 10240)
    assert plan["model.layers.46.mlp.experts.63.down_proj.weight"][0] == (2048, 1536)
    assert plan["model.layers.46.self_attn.kv_b_proj.weight"][0] == (20 * (192 + 256), 512)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_key_value_heads", 4, "num_key_value_heads"),
        ("num_experts_per_tok", 0, "num_experts_per_tok"),
        ("num_experts_per_tok", 65, "exceeds"),
        ("n_group", 3, "n_group"),
        ("mlp_layer_types", ["dense"], "mlp_layer_types"),
        ("kv_lora_rank", None, "kv_lora_rank"),
        ("topk_method", "greedy", "topk_method"),
        ("rope_scaling", {"rope_type": "dynamic", "factor": 4.0}, "rope type 'dynamic'"),
        ("rope_scaling", {"rope_type": "yarn", "factor": -4.0}, "factor"),
        ("partial_rotary_factor", 0.5, "partial_rotary_factor"),
        ("hidden_act", "relu", "hidden_act"),
    ],
)
def test_bad_config_fields_are_clear_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        GlmConfig.from_hf({**real_config(), field: value})


def test_missing_routed_scaling_factor_takes_transformers_default() -> None:
    config = {k: v for k, v in real_config().items() if k != "routed_scaling_factor"}
    assert GlmConfig.from_hf(config).routed_scaling_factor == 1.8


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    """On a machine without CUDA, ``device="cuda"`` names the reason (tests/gpu runs it on one)."""
    from inference_pio import cuda

    if cuda.is_available():
        pytest.skip("CUDA is available here; tests/gpu/test_cuda_glm_model.py covers it")
    save_reference(tmp_path, "Glm4MoeLiteForCausalLM", TINY, "float32", seed=1)
    with pytest.raises(cuda.CudaUnavailableError, match="CUDA is not available"):
        load(tmp_path, device="cuda")


def test_decode_bytes_count_the_latent_cache_and_the_experts_a_token_reads(
    tmp_path: Path,
) -> None:
    save_reference(tmp_path, "Glm4MoeLiteForCausalLM", TINY, "float32", seed=1)
    m = load(tmp_path).model
    at0 = m.layers[0].attention
    assert at0.kv_values_per_token() == 32 + 8
    grow = m.decode_bytes_per_token(11) - m.decode_bytes_per_token(10)
    assert grow == 3 * (32 + 8) * 4  # three layers of fp32 latents and rope keys
    moe = m.layers[1].mlp
    per_expert = 3 * 64 * 32 * 4
    assert moe.decode_weight_bytes() == 8 * 64 * 4 + 8 * 4 + 3 * per_expert + per_expert
