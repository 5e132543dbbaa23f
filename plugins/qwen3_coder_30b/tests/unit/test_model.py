"""Qwen3-Coder-30B-A3B-Instruct (Qwen3MoeForCausalLM) against transformers: the shared
conformance suite on a tiny mixture of experts, a config with dense layers among the sparse
ones, and the router's choices on inputs where experts tie."""

from __future__ import annotations

import json
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
from inference_pio_qwen3_coder_30b.config import real_config
from inference_pio_qwen3_coder_30b.model import MoeConfig, load, weight_shapes
from inference_pio_qwen3_coder_30b.testing import TINY


class TestQwen3MoeConformance(CausalLMConformance):
    load = staticmethod(load)
    hf_class_name = "Qwen3MoeForCausalLM"
    real_config = staticmethod(real_config)
    tiny_config = TINY
    shape_field = "moe_intermediate_size"


@pytest.mark.parametrize(
    ("overrides", "sparse"),
    [
        (dict(num_hidden_layers=4, decoder_sparse_step=2), [False, True, False, True]),
        (dict(num_hidden_layers=3, mlp_only_layers=[1]), [True, False, True]),
        (dict(num_experts=6, num_experts_per_tok=6, norm_topk_prob=False), [True, True]),
        (dict(num_experts=5, num_experts_per_tok=1), [True, True]),
    ],
)
def test_layer_kinds_and_router_settings_match_transformers(
    tmp_path: Path, overrides: dict[str, object], sparse: list[bool]
) -> None:
    """Dense layers among the sparse ones (``decoder_sparse_step``, ``mlp_only_layers``), every
    expert chosen, no renormalisation, top-1: fp32 logits and greedy tokens as transformers'."""
    torch = pytest.importorskip("torch")
    cfg = {**TINY, **overrides}
    ref = save_reference(tmp_path, "Qwen3MoeForCausalLM", cfg, "float32", seed=5)
    written = json.loads((tmp_path / "config.json").read_text())
    moe = MoeConfig.from_hf(written)
    assert [moe.sparse(i) for i in range(cfg["num_hidden_layers"])] == sparse  # type: ignore[arg-type]
    m = load(tmp_path)
    ids = prompt(40, seed=3)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0, -1]
    got = m.model.forward([(ids, m.model.new_cache(64))])[0]
    assert rel_error(got, want) < 1e-4
    assert m.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids == (
        hf_greedy(ref, ids, 12)
    )


def test_weight_shapes_cover_the_checkpoint(tmp_path: Path) -> None:
    """The tensor plan (synthetic checkpoints) names exactly the tensors transformers writes."""
    from safetensors import safe_open

    save_reference(tmp_path, "Qwen3MoeForCausalLM", TINY, "float32", seed=1)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    plan = weight_shapes(json.loads((tmp_path / "config.json").read_text()))
    assert {k: v[0] for k, v in plan.items()} == names


def test_real_config_plan_has_the_published_parameter_count() -> None:
    """models.md §3.3: 30,532,122,624 parameters; 128 experts x 3 x 768 x 2048 per layer."""
    plan = weight_shapes(real_config())
    total = 0
    for shape, _ in plan.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    assert total == 30_532_122_624
    assert plan["model.layers.47.mlp.experts.127.down_proj.weight"][0] == (2048, 768)
    assert plan["model.layers.0.mlp.gate.weight"][0] == (128, 2048)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_experts_per_tok", 0, "num_experts_per_tok"),
        ("num_experts_per_tok", 9, "exceeds the 8 experts"),
        ("moe_intermediate_size", None, "moe_intermediate_size"),
        ("mlp_only_layers", "0", "mlp_only_layers"),
        ("decoder_sparse_step", 0, "decoder_sparse_step"),
    ],
)
def test_bad_moe_fields_are_clear_errors(field: str, value: object, message: str) -> None:
    cfg = {**real_config(), "num_experts": 8, field: value}
    with pytest.raises(CheckpointError, match=message):
        MoeConfig.from_hf(cfg)


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    """On a machine without CUDA, ``device="cuda"`` names the reason (tests/gpu runs it on one)."""
    from inference_pio import cuda

    if cuda.is_available():
        pytest.skip("CUDA is available here; tests/gpu/test_cuda_moe_model.py covers it")
    save_reference(tmp_path, "Qwen3MoeForCausalLM", TINY, "float32", seed=1)
    with pytest.raises(cuda.CudaUnavailableError, match="CUDA is not available"):
        load(tmp_path, device="cuda")


def test_decode_bytes_count_the_experts_a_token_reads(tmp_path: Path) -> None:
    """Bandwidth figures use k of the E experts per sparse layer, plus the router."""
    save_reference(tmp_path, "Qwen3MoeForCausalLM", TINY, "float32", seed=1)
    m = load(tmp_path).model
    h, i, e, k = 64, 32, 8, 3
    per_layer_attn = (4 * 32 * h * 2 + 2 * 32 * h * 2) * 4 + (2 * h + 2 * 32) * 4
    per_layer_moe = (e * h + k * 3 * i * h) * 4
    head = 512 * h * 4 + h * 4 + h * 4  # LM head, final norm, one embedding row
    assert m.decode_bytes_per_token(0) == 2 * (per_layer_attn + per_layer_moe) + head


@pytest.mark.parametrize("window", [{"sliding_window": 4096}, {}])
def test_sliding_window_is_refused_whatever_max_window_layers_says(
    window: dict[str, int],
) -> None:
    """transformers' Qwen3MoeConfig has no max_window_layers: use_sliding_window makes every
    layer slide (window 4096 when config.json gives none), so the real config (max_window_layers
    48 = num_hidden_layers) with the flag on must not load as full attention."""
    cfg = {k: v for k, v in real_config().items() if k != "sliding_window"}
    cfg.update(use_sliding_window=True, **window)
    assert cfg["max_window_layers"] == cfg["num_hidden_layers"]
    with pytest.raises(CheckpointError, match="sliding-window"):
        weight_shapes(cfg)
