"""Scaled RoPE (nn.rope_scaling, ops.rope_cache_freqs) against transformers'
``modeling_rope_utils``: inverse frequencies and attention factors for random linear, YaRN and
llama3 configs (both config.json forms), cos/sin tables against transformers' rotary embedding
modules (f32, bf16), the MLA softmax scale, the usable context, and the errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inference_pio.nn.rope_scaling as rope_scaling
from inference_pio import ops
from inference_pio.errors import CheckpointError
from inference_pio.nn.rope_scaling import (
    context_length,
    mla_softmax_scale,
    rope_frequencies,
    standard_parameters,
)
from inference_pio.testing.torch_bridge import PDT, to_pio, to_torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # its warnings about odd (but valid) test configs

from transformers.models.qwen3.configuration_qwen3 import Qwen3Config  # noqa: E402
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding  # noqa: E402


def torch_pow_freqs(theta: float, dim: int) -> list[float]:
    """transformers' ``base ** (arange(0, dim, 2).float() / dim)``: torch's fp32 pow."""
    return (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)).tolist()


@st.composite
def rope_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A Qwen3-shaped config with a random rope of a supported type."""
    kind = draw(st.sampled_from(["default", "linear", "yarn", "llama3"]))
    head_dim = draw(st.sampled_from([2, 4, 6, 8, 16, 32, 64, 80, 128, 256]))
    theta = draw(
        st.one_of(
            st.sampled_from([1e4, 5e5, 1e6, 5e6, 1e7]),
            st.floats(2.0, 2e7, allow_nan=False, allow_infinity=False),
        )
    )
    mpe = draw(st.sampled_from([64, 1024, 40960, 131072]))
    params: dict[str, Any] = {"rope_type": kind, "rope_theta": theta}
    if kind != "default":
        params["factor"] = draw(
            st.one_of(
                st.sampled_from([2, 4.0, 8.0, 32.0]),
                st.floats(0.25, 64.0, allow_nan=False, allow_infinity=False),
            )
        )
    if kind in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = draw(
            st.sampled_from([16, 64, 4096, 8192, 32768])
        )
    if kind == "yarn":
        if draw(st.booleans()):
            params["beta_fast"] = draw(st.floats(1.0, 64.0))
        if draw(st.booleans()):
            params["beta_slow"] = draw(st.floats(0.05, 4.0))
        if draw(st.booleans()):
            params["truncate"] = draw(st.booleans())
        if draw(st.booleans()):
            params["mscale"] = draw(st.floats(0.5, 2.0))
            params["mscale_all_dim"] = draw(st.one_of(st.just(0), st.floats(0.5, 2.0)))
        if draw(st.integers(0, 4)) == 0:
            params["attention_factor"] = draw(st.floats(0.5, 2.0))
    if kind == "llama3":
        low = draw(st.floats(0.5, 4.0))
        params["low_freq_factor"] = low
        params["high_freq_factor"] = low + draw(st.floats(0.5, 8.0))
    return dict(
        head_dim=head_dim,
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        max_position_embeddings=mpe,
        rope_parameters=params,
    )


def legacy(config: dict[str, Any]) -> dict[str, Any]:
    """The same config as older config.json files spell it (rope_theta + rope_scaling/type)."""
    params = dict(config["rope_parameters"])
    out = {k: v for k, v in config.items() if k != "rope_parameters"}
    out["rope_theta"] = params.pop("rope_theta")
    out["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    return out


def hf_rope(config: dict[str, Any]) -> Qwen3RotaryEmbedding:
    fresh = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    return Qwen3RotaryEmbedding(Qwen3Config(**fresh))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=rope_configs(), old_form=st.booleans())
def test_frequencies_equal_transformers_bit_for_bit(config: dict[str, Any], old_form: bool) -> None:
    """With torch's own fp32 pow substituted for the one libm call (torch's Sleef pow and a
    correctly rounded pow differ by an ulp here and there), every later step is bit-exact."""
    ref = hf_rope(config)
    saved = rope_scaling._pow_freqs
    rope_scaling._pow_freqs = torch_pow_freqs
    try:
        ours = rope_frequencies(legacy(config) if old_form else config, config["head_dim"], 1.0)
    finally:
        rope_scaling._pow_freqs = saved
    assert ours.rope_type == config["rope_parameters"]["rope_type"]
    assert ours.attention_factor == ref.attention_scaling
    assert list(ours.inv_freq) == ref.inv_freq.tolist()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=rope_configs())
def test_frequencies_within_pow_rounding_of_transformers(config: dict[str, Any]) -> None:
    """As computed (correctly rounded pow): a few ulps of transformers' values; llama3's smooth
    interpolation subtracts nearby numbers, which scales that by high / (high - low)."""
    ref = hf_rope(config).inv_freq.double()
    ours = torch.tensor(rope_frequencies(config, config["head_dim"]).inv_freq, dtype=torch.float64)
    params = config["rope_parameters"]
    ulps = 4.0
    if params["rope_type"] == "llama3":
        hi, lo = params["high_freq_factor"], params["low_freq_factor"]
        ulps *= 1 + hi / (hi - lo)
    assert bool(((ours - ref).abs() <= ulps * 2.0**-23 * ref.abs()).all())


def test_qwen_model_card_yarn_example() -> None:
    """The Qwen3 model cards' YaRN block: 4x of 32768, attention factor 0.1 ln 4 + 1."""
    config = {
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
        },
    }
    rope = rope_frequencies(config, 128, partial_rotary=False)
    assert rope.scaled
    assert rope.rot_dim == 128
    assert rope.attention_factor == 0.1 * math.log(4.0) + 1.0
    assert context_length(rope, 40960) == 131072
    ref = hf_rope({**config, "hidden_size": 256, "num_attention_heads": 2})
    assert torch.allclose(torch.tensor(rope.inv_freq), ref.inv_freq, rtol=5e-7, atol=0)


@pytest.mark.parametrize("inner", [None, 131072])
def test_a_top_level_original_length_wins_as_in_transformers(inner: int | None) -> None:
    """Phi-3-style configs keep ``original_max_position_embeddings`` at the top level:
    transformers' ``standardize_rope_params`` takes it over the rope block's own value and over
    ``max_position_embeddings``."""
    scaling: dict[str, Any] = {"rope_type": "yarn", "factor": 4.0}
    if inner is not None:
        scaling["original_max_position_embeddings"] = inner
    config = {
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 32768,
        "rope_theta": 1000000,
        "rope_scaling": scaling,
    }
    rope = rope_frequencies(config, 128, partial_rotary=False)
    assert rope.params["original_max_position_embeddings"] == 32768
    assert context_length(rope, 131072) == 131072
    ref = hf_rope({**config, "hidden_size": 256, "num_attention_heads": 2})
    assert torch.allclose(torch.tensor(rope.inv_freq), ref.inv_freq, rtol=5e-7, atol=0)


def test_a_scaling_block_without_theta_over_rope_parameters_warns() -> None:
    """transformers 5 writes rope_theta inside rope_parameters only; a rope_scaling block added
    next to it wins and brings theta 10000 (as in transformers): said, not silent."""
    config = {
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0},
    }
    with pytest.warns(UserWarning, match="rope_theta"):
        params = rope_scaling.standard_parameters(config)
    assert params["rope_theta"] == 10000.0
    ref = hf_rope({**config, "hidden_size": 256, "num_attention_heads": 2})
    rope = rope_frequencies(config, 128, partial_rotary=False)
    assert torch.allclose(torch.tensor(rope.inv_freq), ref.inv_freq, rtol=5e-7, atol=0)


def test_llama31_real_rope_matches_llama_rotary_embedding() -> None:
    """Llama-3.1-8B's rope block (old rope_scaling form) against LlamaRotaryEmbedding, bit for
    bit given torch's pow."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    scaling = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }
    config = dict(
        hidden_size=4096,
        num_attention_heads=32,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=scaling,
    )
    ref = LlamaRotaryEmbedding(LlamaConfig(**{**config, "rope_scaling": dict(scaling)}))
    saved = rope_scaling._pow_freqs
    rope_scaling._pow_freqs = torch_pow_freqs
    try:
        ours = rope_frequencies(config, 128, partial_rotary=False)
    finally:
        rope_scaling._pow_freqs = saved
    assert ours.rope_type == "llama3"
    assert ours.attention_factor == ref.attention_scaling == 1.0
    assert list(ours.inv_freq) == ref.inv_freq.tolist()
    assert context_length(ours, 131072) == 131072


def test_partial_rotary_yarn_matches_qwen3_next() -> None:
    from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRotaryEmbedding

    params = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    config = dict(head_dim=64, max_position_embeddings=256, rope_theta=5e6, rope_scaling=params)
    ref = Qwen3NextRotaryEmbedding(Qwen3NextConfig(**{**config, "rope_scaling": dict(params)}))
    ours = rope_frequencies(config, 64, default_partial_rotary_factor=0.25)
    assert ours.rot_dim == 16  # transformers' Qwen3NextConfig default partial factor 0.25
    assert ours.attention_factor == ref.attention_scaling
    assert torch.allclose(torch.tensor(ours.inv_freq), ref.inv_freq, rtol=5e-7, atol=0)


def test_mla_softmax_scale_and_frequencies_match_glm() -> None:
    """GLM-4.7-Flash (DeepSeek-style YaRN): the rope's head_dim is qk_rope_head_dim, and
    mscale_all_dim scales the softmax by mscale², as transformers' attention does."""
    from transformers import Glm4MoeLiteConfig
    from transformers.models.glm4_moe_lite.modeling_glm4_moe_lite import (
        Glm4MoeLiteAttention,
        Glm4MoeLiteRotaryEmbedding,
    )

    params = {
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 16,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
        "beta_fast": 32,
        "beta_slow": 1,
    }
    fields = dict(
        hidden_size=64, num_attention_heads=4, q_lora_rank=48, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24, max_position_embeddings=1024,
        rope_theta=1e4,
    )  # fmt: skip
    hf = Glm4MoeLiteConfig(**fields, rope_parameters=dict(params))
    ref = Glm4MoeLiteRotaryEmbedding(hf)
    ours = rope_frequencies({**fields, "rope_parameters": params}, 8)
    assert ours.attention_factor == ref.attention_scaling
    assert torch.allclose(torch.tensor(ours.inv_freq), ref.inv_freq, rtol=5e-7, atol=0)
    attn = Glm4MoeLiteAttention(hf, layer_idx=0)
    assert mla_softmax_scale(ours.params, (16 + 8) ** (-0.5)) == attn.scaling
    assert mla_softmax_scale({"rope_type": "default"}, 0.25) == 0.25


# ---- tables ---------------------------------------------------------------------------------
TABLE_CONFIGS = {
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 64,
        "mscale": 1.2,
        "mscale_all_dim": 0.6,
    },
    "linear": {"rope_type": "linear", "factor": 3.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
}


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(TABLE_CONFIGS))
def test_tables_match_transformers_rotary_embedding(name: str, dt: torch.dtype) -> None:
    """cos/sin from rope_cache_freqs against transformers' module output (cos·factor and
    sin·factor in fp32, then one rounding to the activation dtype). With transformers' own
    inv_freq the angles are the same fp32 products: the only difference left is libm's cos/sin
    against torch's; with ours, the pow ulp moves an angle by about p·2^-23 as well."""
    hd, theta = 64, 1e6
    config = dict(head_dim=hd, hidden_size=2 * hd, num_attention_heads=2,
                  max_position_embeddings=4096,
                  rope_parameters={**TABLE_CONFIGS[name], "rope_theta": theta})  # fmt: skip
    emb = hf_rope(config)
    pos = torch.tensor([0, 1, 2, 15, 16, 17, 63, 100, 1000, 4095, 40000])
    ref_c, ref_s = (t[0] for t in emb(torch.zeros(1, dtype=dt), pos[None]))
    ours = rope_frequencies(config, hd)
    assert ours.attention_factor == emb.attention_scaling
    factor = ours.attention_factor
    bound = (2e-6 + 3 * pos.double() * 2.0**-23)[:, None] * max(factor, 1.0)
    if dt == torch.bfloat16:
        bound = bound + 2**-8 * max(factor, 1.0)
    for freqs in (emb.inv_freq.tolist(), list(ours.inv_freq)):
        for pdt in (torch.int32, torch.int64):
            c, s = ops.rope_cache_freqs(to_pio(pos.to(pdt)), freqs, factor, PDT[dt])
            tc, ts = to_torch(c), to_torch(s)
            assert tc.dtype == dt
            assert tc.shape == (len(pos), hd)
            assert bool(((tc.double() - ref_c.double()).abs() <= bound).all())
            assert bool(((ts.double() - ref_s.double()).abs() <= bound).all())
    if factor != 1.0:  # the factor is applied: the tables' largest entries reach it
        assert abs(float(ref_c.double().abs().max()) - factor) < 1e-2 * factor


def test_unscaled_frequencies_give_the_theta_tables() -> None:
    """rope_cache (theta, the old entry point) and rope_cache_freqs with 1/theta^(2i/d) and
    factor 1 build the same tables: to_rope_cache is the same builder."""
    pos = torch.arange(0, 3000, 7)
    inv = [1.0 / (1e6 ** (2 * i / 128)) for i in range(64)]
    f32 = [rope_scaling.f32(v) for v in inv]
    for dt in ("float32", "bfloat16"):
        a = ops.rope_cache(to_pio(pos), 128, 1e6, dt)
        b = ops.rope_cache_freqs(to_pio(pos), f32, 1.0, dt)
        # powf and a correctly rounded pow agree to an ulp: angles to p * 2^-23
        for x, y in zip(a, b, strict=True):
            d = (to_torch(x).double() - to_torch(y).double()).abs()
            assert bool((d <= (1e-6 + 2 * pos.double() * 2.0**-23)[:, None] + 2**-8).all())


def test_rope_cache_freqs_rejects_bad_input() -> None:
    pos = to_pio(torch.arange(4))
    with pytest.raises(ValueError, match="scale"):
        ops.rope_cache_freqs(pos, [1.0, 0.5], 0.0)
    with pytest.raises(ValueError, match="scale"):
        ops.rope_cache_freqs(pos, [1.0, 0.5], float("nan"))
    with pytest.raises(ValueError, match="finite"):
        ops.rope_cache_freqs(pos, [1.0, float("inf")])
    with pytest.raises(ValueError, match="inv_freq"):
        ops.rope_cache_freqs(pos, [])
    with pytest.raises(TypeError, match="inv_freq"):
        ops.rope_cache_freqs(pos, to_pio(torch.ones(2, dtype=torch.float64)))
    with pytest.raises(TypeError, match="positions"):
        ops.rope_cache_freqs(to_pio(torch.zeros(4)), [1.0])
    with pytest.raises(TypeError, match="dtype"):
        ops.rope_cache_freqs(pos, [1.0], 1.0, "int32")
    # the C check behind the Python one: a NaN inside a tensor of frequencies
    from inference_pio.errors import NativeError

    with pytest.raises(NativeError, match="inv_freq"):
        ops.rope_cache_freqs(pos, to_pio(torch.tensor([1.0, float("nan")])))


# ---- config reading, context, errors ---------------------------------------------------------
def test_standard_parameters_follow_transformers() -> None:
    """rope_scaling wins over rope_parameters (transformers replaces one with the other),
    rope_type over type; original_max_position_embeddings defaults to max_position_embeddings."""
    cfg = {
        "rope_theta": 1e5,
        "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 99.0},
        "rope_scaling": {"type": "yarn", "rope_type": "linear", "factor": 2.0},
    }
    params = standard_parameters(cfg)
    assert params["rope_type"] == "linear"
    assert params["rope_theta"] == 1e5
    old = {"max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": 2.0}}
    yarn = standard_parameters(old)
    assert yarn["original_max_position_embeddings"] == 64
    assert yarn["rope_theta"] == 10000.0
    for config in (cfg, old):
        hf = Qwen3Config(**{k: dict(v) if isinstance(v, dict) else v for k, v in config.items()})
        want = {k: v for k, v in hf.rope_parameters.items()}
        assert {k: v for k, v in standard_parameters(config).items()} == want


@pytest.mark.parametrize(
    ("params", "mpe", "context"),
    [
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, 40960,
         131072),
        ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16}, 1024, 1024),
        ({"rope_type": "yarn", "factor": 4.0}, 1000, 4000),  # original defaults to mpe
        ({"rope_type": "linear", "factor": 4}, 4096, 16384),
        ({"rope_type": "linear", "factor": 0.5}, 4096, 4096),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}, 131072, 131072),
        ({"rope_type": "default"}, 2048, 2048),
    ],
)  # fmt: skip
def test_context_length_as_vllm_derives_it(params: dict[str, Any], mpe: int, context: int) -> None:
    config = {"max_position_embeddings": mpe, "rope_scaling": params}
    assert context_length(rope_frequencies(config, 32), mpe) == context


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"rope_type": "dynamic", "factor": 2.0}, "rope type 'dynamic'"),
        ({"type": "longrope", "factor": 2.0}, "rope type 'longrope'"),
        ({"rope_type": "su"}, "rope type 'su'"),
        ({"rope_type": 3}, "rope_type"),
        ({"rope_type": "linear"}, "'factor'"),
        ({"rope_type": "linear", "factor": 0}, "'factor'"),
        ({"rope_type": "linear", "factor": -2.0}, "'factor'"),
        ({"rope_type": "linear", "factor": float("inf")}, "'factor'"),
        ({"rope_type": "linear", "factor": "4"}, "'factor'"),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0},
         "original_max_position_embeddings"),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16.5},
         "original_max_position_embeddings"),
        ({"rope_type": "yarn", "factor": 4.0, "beta_fast": -1}, "beta_fast"),
        ({"rope_type": "yarn", "factor": 4.0, "beta_slow": "x"}, "beta_slow"),
        ({"rope_type": "yarn", "factor": 4.0, "attention_factor": 0.0}, "attention_factor"),
        ({"rope_type": "yarn", "factor": 4.0, "truncate": "no"}, "truncate"),
        ({"rope_type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": -80.0},
         "attention factor"),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
          "original_max_position_embeddings": 64}, "high_freq_factor"),
        ({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}, "low_freq_factor"),
        ({"rope_type": "linear", "factor": 1e-40}, "inverse frequencies"),
        ({"rope_type": "default", "rope_theta": -1.0}, "rope_theta"),
    ],
)  # fmt: skip
def test_bad_rope_configs_are_clear_errors(params: dict[str, Any], match: str) -> None:
    config = {"max_position_embeddings": 256, "rope_scaling": params}
    with pytest.raises(CheckpointError, match=match):
        rope_frequencies(config, 32)


def test_partial_rotary_factor_rules() -> None:
    yarn = {"rope_type": "yarn", "factor": 2.0}
    config = {"max_position_embeddings": 64, "rope_scaling": yarn, "partial_rotary_factor": 0.5}
    assert rope_frequencies(config, 32).rot_dim == 16
    # Qwen3/Llama rotate the whole head; transformers' scaled types would not
    with pytest.raises(CheckpointError, match="partial_rotary_factor"):
        rope_frequencies(config, 32, partial_rotary=False)
    plain = {"max_position_embeddings": 64, "partial_rotary_factor": 0.5}
    assert rope_frequencies(plain, 32, partial_rotary=False).rot_dim == 32  # ignored, like HF
    with pytest.raises(CheckpointError, match="partial_rotary_factor"):
        rope_frequencies({**config, "partial_rotary_factor": 1.5}, 32)
    with pytest.raises(CheckpointError, match="rotary dimension"):
        rope_frequencies({**config, "partial_rotary_factor": 0.3}, 10)
