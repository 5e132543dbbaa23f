"""GLM-4.7-Flash (``Glm4MoeLiteForCausalLM``, models.md §5): multi-head latent attention and a
sigmoid-routed mixture of experts with a shared expert, assembled from core blocks.

Layer ``i`` is ``x += MLA(RMSNorm(x)); x += MLP(RMSNorm(x))`` where the MLP is a dense SwiGLU of
``intermediate_size`` or, for "sparse" layers, ``nn.SigmoidTopKMoE``: ``n_routed_experts``
SwiGLU experts of ``moe_intermediate_size`` behind the noaux_tc router plus a shared SwiGLU of
``moe_intermediate_size * n_shared_experts``. Which layers are sparse follows transformers:
``mlp_layer_types`` when the config has it, else the first layer dense and the others sparse
(transformers' default, which ignores ``first_k_dense_replace``). The attention is
``nn.MLAttention`` (absorbed: the cache holds the latent and the rope key per token). As in
transformers, ``q_a_layernorm`` and ``kv_a_layernorm`` use eps 1e-6 whatever ``rms_norm_eps``
says. The multi-token-prediction layer some checkpoints carry (``model.layers.{L}``, one past the
last) is not used. Runs on the CPU in this release.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_pio.causal_lm import CausalLM, text_setup
from inference_pio.checkpoint import Checkpoint
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.errors import CheckpointError
from inference_pio.nn import dense
from inference_pio.nn.decoder import DecoderLayer, DecoderModel
from inference_pio.nn.layers import (
    ROPE_INTERLEAVED_HF,
    ROPE_NEOX,
    Embedding,
    Linear,
    RMSNorm,
    Rotary,
)
from inference_pio.nn.mla import MLAttention
from inference_pio.nn.moe import SigmoidTopKMoE
from inference_pio.nn.rope_scaling import (
    RopeFrequencies,
    context_length,
    mla_softmax_scale,
    rope_frequencies,
)
from inference_pio.tensor import Tensor
from inference_pio_glm_4_7_flash import MODEL_NAME

#: transformers builds q_a_layernorm and kv_a_layernorm without passing the config's eps
LORA_NORM_EPS = 1e-6


@dataclass(frozen=True)
class GlmConfig:
    """The fields of a ``glm4_moe_lite`` config.json the model needs."""

    hidden_size: int
    num_layers: int
    num_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    intermediate_size: int
    moe_intermediate_size: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_shared_experts: int
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_interleave: bool
    attention_bias: bool
    max_position_embeddings: int
    tie_word_embeddings: bool
    mlp_layer_types: tuple[str, ...]
    #: the rope's frequencies (None: plain RoPE with rope_theta)
    rope: RopeFrequencies | None = None

    @property
    def max_context(self) -> int:
        """max_position_embeddings, extended by a linear or YaRN rope scaling (vLLM's rule)."""
        return context_length(self.rope, self.max_position_embeddings)

    @property
    def softmax_scale(self) -> float:
        """(nope + rope)^-0.5, times YaRN's mscale² when the rope sets ``mscale_all_dim``
        (transformers' ``yarn_apply_mscale``)."""
        scale: float = (self.qk_nope_head_dim + self.qk_rope_head_dim) ** (-0.5)
        return scale if self.rope is None else mla_softmax_scale(self.rope.params, scale)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> GlmConfig:
        """Reads and validates the fields; errors name the missing or bad field."""

        def count(key: str, minimum: int = 1, default: Any = None) -> int:
            return dense.config_int(config, key, minimum, default)

        def number(key: str, default: float) -> float:
            value = config.get(key, default)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"config.json: {key!r} must be a positive number")
            return float(value)

        dense.refuse_unsupported(config, attention_bias=True)  # another activation
        layers = count("num_hidden_layers")
        heads = count("num_attention_heads")
        kv_heads = config.get("num_key_value_heads") or heads
        if kv_heads != heads:
            raise CheckpointError(
                f"config.json: MLA expands keys and values to every head; num_key_value_heads "
                f"{kv_heads} must equal num_attention_heads {heads}"
            )
        q_lora = config.get("q_lora_rank")
        if q_lora is not None:
            q_lora = count("q_lora_rank")
        types = config.get("mlp_layer_types")
        if types is None:
            types = ["dense"] + ["sparse"] * (layers - 1)
        if (
            not isinstance(types, list)
            or len(types) != layers
            or any(t not in ("dense", "sparse") for t in types)
        ):
            raise CheckpointError(
                f"config.json: 'mlp_layer_types' must list 'dense' or 'sparse' for each of the "
                f"{layers} layers"
            )
        rope_dim = count("qk_rope_head_dim")
        mpe = count("max_position_embeddings", default=202752)
        # transformers reads qk_rope_head_dim as the rope's head_dim
        rope = rope_frequencies({**config, "max_position_embeddings": mpe}, rope_dim)
        if rope.rot_dim != rope_dim:
            raise CheckpointError(
                f"config.json: partial_rotary_factor gives {rope.rot_dim} rotary dims; the MLA "
                f"rotates all {rope_dim} qk_rope_head_dim channels"
            )
        experts = count("n_routed_experts")
        k = count("num_experts_per_tok", default=4)  # transformers' Glm4MoeLiteConfig
        n_group, topk_group = count("n_group", default=1), count("topk_group", default=1)
        if experts % n_group or topk_group > n_group:
            raise CheckpointError(
                f"config.json: n_group {n_group} must divide n_routed_experts {experts} and "
                f"topk_group {topk_group} must not exceed it"
            )
        if k > topk_group * (experts // n_group):
            raise CheckpointError(
                f"config.json: num_experts_per_tok {k} exceeds the experts of {topk_group} groups"
            )
        method = config.get("topk_method", "noaux_tc")
        if method != "noaux_tc":
            raise CheckpointError(f"config.json: topk_method {method!r} is not supported")
        return cls(
            hidden_size=count("hidden_size"),
            num_layers=layers,
            num_heads=heads,
            q_lora_rank=q_lora,
            kv_lora_rank=count("kv_lora_rank"),
            qk_nope_head_dim=count("qk_nope_head_dim"),
            qk_rope_head_dim=rope_dim,
            v_head_dim=count("v_head_dim"),
            intermediate_size=count("intermediate_size"),
            moe_intermediate_size=count("moe_intermediate_size"),
            n_routed_experts=experts,
            num_experts_per_tok=k,
            n_shared_experts=count("n_shared_experts", minimum=0, default=1),
            n_group=n_group,
            topk_group=topk_group,
            norm_topk_prob=dense.config_bool(config, "norm_topk_prob", True),
            routed_scaling_factor=number("routed_scaling_factor", 1.8),  # transformers' default
            vocab_size=count("vocab_size"),
            rms_norm_eps=number("rms_norm_eps", 1e-5),
            rope_theta=rope.theta,
            rope_interleave=dense.config_bool(config, "rope_interleave", True),
            attention_bias=dense.config_bool(config, "attention_bias", False),
            max_position_embeddings=mpe,
            tie_word_embeddings=dense.config_bool(config, "tie_word_embeddings", False),
            mlp_layer_types=tuple(types),
            rope=rope,
        )


def weight_plan(cfg: GlmConfig, prefix: str = "model.") -> dense.WeightPlan:
    """Every tensor the model reads, with its shape and init kind (the on-disk names)."""
    h, nh = cfg.hidden_size, cfg.num_heads
    dn, dr, dv, lora = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    plan: dense.WeightPlan = {
        f"{prefix}embed_tokens.weight": ((cfg.vocab_size, h), "normal"),
        f"{prefix}norm.weight": ((h,), "norm"),
    }
    if not cfg.tie_word_embeddings:
        plan["lm_head.weight"] = ((cfg.vocab_size, h), "normal")
    for layer in range(cfg.num_layers):
        p = f"{prefix}layers.{layer}."
        a = p + "self_attn."
        plan[p + "input_layernorm.weight"] = ((h,), "norm")
        plan[p + "post_attention_layernorm.weight"] = ((h,), "norm")
        if cfg.q_lora_rank is None:
            plan[a + "q_proj.weight"] = ((nh * (dn + dr), h), "normal")
        else:
            plan[a + "q_a_proj.weight"] = ((cfg.q_lora_rank, h), "normal")
            plan[a + "q_a_layernorm.weight"] = ((cfg.q_lora_rank,), "norm")
            plan[a + "q_b_proj.weight"] = ((nh * (dn + dr), cfg.q_lora_rank), "normal")
        plan[a + "kv_a_proj_with_mqa.weight"] = ((lora + dr, h), "normal")
        plan[a + "kv_a_layernorm.weight"] = ((lora,), "norm")
        plan[a + "kv_b_proj.weight"] = ((nh * (dn + dv), lora), "normal")
        plan[a + "o_proj.weight"] = ((h, nh * dv), "normal")
        if cfg.attention_bias:
            if cfg.q_lora_rank is not None:
                plan[a + "q_a_proj.bias"] = ((cfg.q_lora_rank,), "normal")
            plan[a + "kv_a_proj_with_mqa.bias"] = ((lora + dr,), "normal")
            plan[a + "o_proj.bias"] = ((h,), "normal")
        if cfg.mlp_layer_types[layer] == "dense":
            plan.update(dense.swiglu_shapes(p + "mlp.", h, cfg.intermediate_size))
            continue
        e, inter = cfg.n_routed_experts, cfg.moe_intermediate_size
        plan[p + "mlp.gate.weight"] = ((e, h), "normal")
        plan[p + "mlp.gate.e_score_correction_bias"] = ((e,), "normal")
        for x in range(e):
            plan.update(dense.swiglu_shapes(f"{p}mlp.experts.{x}.", h, inter))
        if cfg.n_shared_experts:
            shared = inter * cfg.n_shared_experts
            plan.update(dense.swiglu_shapes(p + "mlp.shared_experts.", h, shared))
    return plan


def weight_shapes(config: dict[str, Any]) -> dense.WeightPlan:
    """Tensor names, shapes and init kinds of a checkpoint with this config."""
    return weight_plan(GlmConfig.from_hf(config))


def _attention(cfg: GlmConfig, a: str, w: Callable[[str], Tensor], rotary: Rotary) -> MLAttention:
    def lin(name: str, bias: bool = False) -> Linear:
        return Linear(a + name, w(a + name + ".weight"), w(a + name + ".bias") if bias else None)

    b = cfg.attention_bias
    low_rank: dict[str, Any] = {}
    if cfg.q_lora_rank is None:
        low_rank["q_proj"] = lin("q_proj")
    else:
        low_rank["q_a_proj"] = lin("q_a_proj", b)
        low_rank["q_a_norm"] = RMSNorm(
            a + "q_a_layernorm", w(a + "q_a_layernorm.weight"), LORA_NORM_EPS
        )
        low_rank["q_b_proj"] = lin("q_b_proj")
    return MLAttention(
        lin("kv_a_proj_with_mqa", b),
        RMSNorm(a + "kv_a_layernorm", w(a + "kv_a_layernorm.weight"), LORA_NORM_EPS),
        lin("kv_b_proj"),
        lin("o_proj", b),
        cfg.num_heads,
        cfg.qk_nope_head_dim,
        cfg.qk_rope_head_dim,
        cfg.v_head_dim,
        rotary,
        **low_rank,
        scale=cfg.softmax_scale,
    )


def _moe(
    cfg: GlmConfig, p: str, w: Callable[[str], Tensor], host: Mapping[str, Tensor], dev: Device
) -> SigmoidTopKMoE:
    m = p + "mlp."
    experts = [dense.swiglu_block(f"{m}experts.{x}.", w) for x in range(cfg.n_routed_experts)]
    shared = dense.swiglu_block(m + "shared_experts.", w) if cfg.n_shared_experts else None
    bias = host[m + "gate.e_score_correction_bias"]  # the router adds it in fp32
    if bias.dtype != DType.float32:
        bias = bias.to(DType.float32)
    if dev.type != "cpu":
        bias = bias.to(dev)
    return SigmoidTopKMoE(
        Linear(m + "gate", w(m + "gate.weight")),
        bias,
        experts,
        cfg.num_experts_per_tok,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        renormalize=cfg.norm_topk_prob,
        scaling=cfg.routed_scaling_factor,
        shared=shared,
    )


def build(
    weights: Mapping[str, Tensor],
    cfg: GlmConfig,
    device: Device | str = "cpu",
    dtype: DType | str | None = None,
    prefix: str = "model.",
) -> DecoderModel:
    """Assembles the model from checkpoint tensors, checking every shape."""
    dev = Device.parse(device)
    w = dense.checked_weights(weights, weight_plan(cfg, prefix), dev)

    act = dense.activation_dtype(weights, f"{prefix}embed_tokens.weight", dtype)
    mode = ROPE_INTERLEAVED_HF if cfg.rope_interleave else ROPE_NEOX
    rotary = (
        Rotary(cfg.qk_rope_head_dim, cfg.rope_theta, mode)
        if cfg.rope is None
        else Rotary.from_frequencies(cfg.rope, mode)
    )
    eps = cfg.rms_norm_eps
    layers = []
    for layer in range(cfg.num_layers):
        p = f"{prefix}layers.{layer}."
        mlp = (
            dense.swiglu_block(p + "mlp.", w)
            if cfg.mlp_layer_types[layer] == "dense"
            else _moe(cfg, p, w, weights, dev)
        )
        layers.append(
            DecoderLayer(
                RMSNorm(p + "input_layernorm", w(p + "input_layernorm.weight"), eps),
                _attention(cfg, p + "self_attn.", w, rotary),
                RMSNorm(
                    p + "post_attention_layernorm", w(p + "post_attention_layernorm.weight"), eps
                ),
                mlp,
            )
        )
    embed_w = w(f"{prefix}embed_tokens.weight")
    head_w = embed_w if cfg.tie_word_embeddings else w("lm_head.weight")
    return DecoderModel(
        Embedding(f"{prefix}embed_tokens", embed_w),
        layers,
        RMSNorm(f"{prefix}norm", w(f"{prefix}norm.weight"), eps),
        Linear("lm_head", head_w),
        rotary,
        act,
        cfg.max_context,
        dev,
    )


def load(path: Path, **options: Any) -> CausalLM:
    """Loads a Glm4MoeLiteForCausalLM checkpoint directory (options: device, dtype)."""
    device = Device.parse(options.get("device", "cpu"))
    checkpoint = Checkpoint.open(
        path,
        progress=bool(options.get("progress", False)),
        quantization=options.get("quantization"),
    )
    cfg = GlmConfig.from_hf(checkpoint.config)
    setup = text_setup(checkpoint)  # its errors before the weights are read
    model = build(checkpoint.weights, cfg, device, options.get("dtype"))
    return CausalLM(options.get("name", MODEL_NAME), checkpoint, model, setup=setup)
