"""Qwen3-Coder-Next (``Qwen3NextForCausalLM``, models.md §4): a hybrid of Gated DeltaNet
(linear attention) and gated full attention, every layer with a mixture of experts plus a gated
shared expert, assembled from core blocks.

Layer ``i`` is ``x += mixer(RMSNorm(x)); x += MLP(RMSNorm(x))`` with zero-centred norms
(``(1 + w)``, also on q/k and the final norm). The mixer is ``nn.GatedDeltaNet`` for
"linear_attention" layers and ``nn.Attention(gated=True)`` (q and an output gate per head,
zero-centred q/k norms, RoPE on the first ``partial_rotary_factor`` of each head) for
"full_attention" layers; ``layer_types`` comes from the config, else from
``full_attention_interval`` (layer i is full attention iff (i + 1) % interval == 0), as
transformers derives it. The MLP is ``nn.SoftmaxTopKMoE`` with the shared expert and its
sigmoid gate, or a dense SwiGLU of ``intermediate_size`` for ``mlp_only_layers`` and the layers
``decoder_sparse_step`` skips. The multi-token-prediction weights (``mtp.*``) are not used.
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
from inference_pio.nn.attention import Attention
from inference_pio.nn.decoder import DecoderLayer, DecoderModel
from inference_pio.nn.deltanet import GatedDeltaNet
from inference_pio.nn.layers import (
    RMS_GATED,
    RMS_ZERO_CENTERED,
    ROPE_NEOX,
    Embedding,
    Linear,
    RMSNorm,
    Rotary,
)
from inference_pio.nn.moe import SoftmaxTopKMoE
from inference_pio.nn.rope_scaling import RopeFrequencies, context_length, rope_frequencies
from inference_pio.tensor import Tensor
from inference_pio_qwen3_coder_next import MODEL_NAME


@dataclass(frozen=True)
class NextConfig:
    """The fields of a ``qwen3_next`` config.json the model needs."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rot_dim: int
    linear_k_heads: int
    linear_v_heads: int
    linear_k_dim: int
    linear_v_dim: int
    conv_kernel: int
    num_experts: int
    experts_per_token: int
    moe_intermediate_size: int
    shared_intermediate_size: int
    intermediate_size: int
    norm_topk_prob: bool
    decoder_sparse_step: int
    mlp_only_layers: frozenset[int]
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    layer_types: tuple[str, ...]
    #: the rope's frequencies (None: plain RoPE with rope_theta over rot_dim)
    rope: RopeFrequencies | None = None

    @property
    def max_context(self) -> int:
        """max_position_embeddings, extended by a linear or YaRN rope scaling (vLLM's rule)."""
        return context_length(self.rope, self.max_position_embeddings)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> NextConfig:
        """Reads and validates the fields; errors name the missing or bad field."""

        def count(key: str, minimum: int = 1, default: Any = None) -> int:
            return dense.config_int(config, key, minimum, default)

        dense.refuse_unsupported(config)  # another activation, biases
        layers, heads = count("num_hidden_layers"), count("num_attention_heads")
        kv = count("num_key_value_heads", default=2)  # transformers' Qwen3NextConfig default
        if heads % kv:
            raise CheckpointError(
                f"config.json: num_attention_heads {heads} is not a multiple of "
                f"num_key_value_heads {kv}"
            )
        hidden = count("hidden_size")
        head_dim = count("head_dim", default=256)  # likewise
        mpe = count("max_position_embeddings", default=32768)
        # partial rotary (transformers' Qwen3NextConfig default 0.25), scaled or not
        rope = rope_frequencies(
            {**config, "max_position_embeddings": mpe},
            head_dim,
            default_partial_rotary_factor=0.25,
        )
        types = config.get("layer_types")
        if types is None:
            interval = count("full_attention_interval", default=4)
            types = [
                "full_attention" if (i + 1) % interval == 0 else "linear_attention"
                for i in range(layers)
            ]
        if (
            not isinstance(types, list)
            or len(types) != layers
            or any(t not in ("full_attention", "linear_attention") for t in types)
        ):
            raise CheckpointError(
                f"config.json: 'layer_types' must list 'full_attention' or 'linear_attention' "
                f"for each of the {layers} layers"
            )
        nk, nv = count("linear_num_key_heads"), count("linear_num_value_heads")
        if nv % nk:
            raise CheckpointError(
                f"config.json: linear_num_value_heads {nv} is not a multiple of "
                f"linear_num_key_heads {nk}"
            )
        experts = count("num_experts", minimum=0)
        k = count("num_experts_per_tok", default=10)  # transformers' Qwen3NextConfig
        if experts and k > experts:
            raise CheckpointError(
                f"config.json: num_experts_per_tok {k} exceeds the {experts} experts"
            )
        only = config.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in only
        ):
            raise CheckpointError("config.json: 'mlp_only_layers' must be a list of layer indices")
        eps = config.get("rms_norm_eps", 1e-6)
        if not isinstance(eps, (int, float)) or eps <= 0:
            raise CheckpointError("config.json: 'rms_norm_eps' must be a positive number")
        return cls(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            rot_dim=rope.rot_dim,
            linear_k_heads=nk,
            linear_v_heads=nv,
            linear_k_dim=count("linear_key_head_dim"),
            linear_v_dim=count("linear_value_head_dim"),
            conv_kernel=count("linear_conv_kernel_dim", default=4),
            num_experts=experts,
            experts_per_token=k,
            moe_intermediate_size=count("moe_intermediate_size"),
            shared_intermediate_size=count("shared_expert_intermediate_size"),
            intermediate_size=count("intermediate_size"),
            norm_topk_prob=dense.config_bool(config, "norm_topk_prob", True),
            decoder_sparse_step=count("decoder_sparse_step", default=1),
            mlp_only_layers=frozenset(only),
            vocab_size=count("vocab_size"),
            rms_norm_eps=float(eps),
            rope_theta=rope.theta,
            max_position_embeddings=mpe,
            tie_word_embeddings=dense.config_bool(config, "tie_word_embeddings", False),
            layer_types=tuple(types),
            rope=rope,
        )

    def sparse(self, layer: int) -> bool:
        """Whether layer ``layer`` has experts (transformers' rule, as for Qwen3-MoE)."""
        return (
            layer not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer + 1) % self.decoder_sparse_step == 0
        )


def weight_plan(cfg: NextConfig, prefix: str = "model.") -> dense.WeightPlan:
    """Every tensor the model reads, with its shape and init kind (the on-disk names)."""
    h = cfg.hidden_size
    nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    nk, nv, dk, dv = cfg.linear_k_heads, cfg.linear_v_heads, cfg.linear_k_dim, cfg.linear_v_dim
    plan: dense.WeightPlan = {
        f"{prefix}embed_tokens.weight": ((cfg.vocab_size, h), "normal"),
        f"{prefix}norm.weight": ((h,), "normal"),
    }
    if not cfg.tie_word_embeddings:
        plan["lm_head.weight"] = ((cfg.vocab_size, h), "normal")
    for layer in range(cfg.num_layers):
        p = f"{prefix}layers.{layer}."
        plan[p + "input_layernorm.weight"] = ((h,), "normal")  # zero-centred: offsets near 0
        plan[p + "post_attention_layernorm.weight"] = ((h,), "normal")
        if cfg.layer_types[layer] == "linear_attention":
            a = p + "linear_attn."
            conv = 2 * nk * dk + nv * dv
            plan[a + "in_proj_qkvz.weight"] = ((nk * (2 * dk + 2 * (nv // nk) * dv), h), "normal")
            plan[a + "in_proj_ba.weight"] = ((2 * nv, h), "normal")
            plan[a + "conv1d.weight"] = ((conv, 1, cfg.conv_kernel), "normal")
            plan[a + "dt_bias"] = ((nv,), "norm")
            plan[a + "A_log"] = ((nv,), "normal")
            plan[a + "norm.weight"] = ((dv,), "norm")
            plan[a + "out_proj.weight"] = ((h, nv * dv), "normal")
        else:
            a = p + "self_attn."
            plan[a + "q_proj.weight"] = ((nh * hd * 2, h), "normal")
            plan[a + "k_proj.weight"] = ((nkv * hd, h), "normal")
            plan[a + "v_proj.weight"] = ((nkv * hd, h), "normal")
            plan[a + "o_proj.weight"] = ((h, nh * hd), "normal")
            plan[a + "q_norm.weight"] = ((hd,), "normal")
            plan[a + "k_norm.weight"] = ((hd,), "normal")
        if not cfg.sparse(layer):
            plan.update(dense.swiglu_shapes(p + "mlp.", h, cfg.intermediate_size))
            continue
        m = p + "mlp."
        plan[m + "gate.weight"] = ((cfg.num_experts, h), "normal")
        for x in range(cfg.num_experts):
            plan.update(dense.swiglu_shapes(f"{m}experts.{x}.", h, cfg.moe_intermediate_size))
        plan.update(dense.swiglu_shapes(m + "shared_expert.", h, cfg.shared_intermediate_size))
        plan[m + "shared_expert_gate.weight"] = ((1, h), "normal")
    return plan


def weight_shapes(config: dict[str, Any]) -> dense.WeightPlan:
    """Tensor names, shapes and init kinds of a checkpoint with this config."""
    return weight_plan(NextConfig.from_hf(config))


def _mixer(
    cfg: NextConfig, layer: int, p: str, w: Callable[[str], Tensor], rotary: Rotary
) -> Attention | GatedDeltaNet:
    eps = cfg.rms_norm_eps
    if cfg.layer_types[layer] == "linear_attention":
        a = p + "linear_attn."
        return GatedDeltaNet(
            Linear(a + "in_proj_qkvz", w(a + "in_proj_qkvz.weight")),
            Linear(a + "in_proj_ba", w(a + "in_proj_ba.weight")),
            w(a + "conv1d.weight"),
            w(a + "dt_bias"),
            w(a + "A_log"),
            RMSNorm(a + "norm", w(a + "norm.weight"), eps, RMS_GATED),
            Linear(a + "out_proj", w(a + "out_proj.weight")),
            cfg.linear_k_heads,
            cfg.linear_v_heads,
            cfg.linear_k_dim,
            cfg.linear_v_dim,
        )
    a = p + "self_attn."
    return Attention(
        Linear(a + "q_proj", w(a + "q_proj.weight")),
        Linear(a + "k_proj", w(a + "k_proj.weight")),
        Linear(a + "v_proj", w(a + "v_proj.weight")),
        Linear(a + "o_proj", w(a + "o_proj.weight")),
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        rotary,
        q_norm=RMSNorm(a + "q_norm", w(a + "q_norm.weight"), eps, RMS_ZERO_CENTERED),
        k_norm=RMSNorm(a + "k_norm", w(a + "k_norm.weight"), eps, RMS_ZERO_CENTERED),
        gated=True,
    )


def _mlp(cfg: NextConfig, layer: int, p: str, w: Callable[[str], Tensor]) -> Any:
    m = p + "mlp."
    if not cfg.sparse(layer):
        return dense.swiglu_block(m, w)
    experts = [dense.swiglu_block(f"{m}experts.{x}.", w) for x in range(cfg.num_experts)]
    return SoftmaxTopKMoE(
        Linear(m + "gate", w(m + "gate.weight")),
        experts,
        cfg.experts_per_token,
        renormalize=cfg.norm_topk_prob,
        shared=dense.swiglu_block(m + "shared_expert.", w),
        shared_gate=Linear(m + "shared_expert_gate", w(m + "shared_expert_gate.weight")),
    )


def build(
    weights: Mapping[str, Tensor],
    cfg: NextConfig,
    device: Device | str = "cpu",
    dtype: DType | str | None = None,
    prefix: str = "model.",
) -> DecoderModel:
    """Assembles the model from checkpoint tensors, checking every shape."""
    dev = Device.parse(device)
    w = dense.checked_weights(weights, weight_plan(cfg, prefix), dev)

    act = dense.activation_dtype(weights, f"{prefix}embed_tokens.weight", dtype)
    rotary = (
        Rotary(cfg.rot_dim, cfg.rope_theta, ROPE_NEOX)
        if cfg.rope is None
        else Rotary.from_frequencies(cfg.rope, ROPE_NEOX)
    )
    eps = cfg.rms_norm_eps
    layers = []
    for layer in range(cfg.num_layers):
        p = f"{prefix}layers.{layer}."
        layers.append(
            DecoderLayer(
                RMSNorm(
                    p + "input_layernorm", w(p + "input_layernorm.weight"), eps, RMS_ZERO_CENTERED
                ),
                _mixer(cfg, layer, p, w, rotary),
                RMSNorm(
                    p + "post_attention_layernorm",
                    w(p + "post_attention_layernorm.weight"),
                    eps,
                    RMS_ZERO_CENTERED,
                ),
                _mlp(cfg, layer, p, w),
            )
        )
    embed_w = w(f"{prefix}embed_tokens.weight")
    head_w = embed_w if cfg.tie_word_embeddings else w("lm_head.weight")
    return DecoderModel(
        Embedding(f"{prefix}embed_tokens", embed_w),
        layers,
        RMSNorm(f"{prefix}norm", w(f"{prefix}norm.weight"), eps, RMS_ZERO_CENTERED),
        Linear("lm_head", head_w),
        rotary,
        act,
        cfg.max_context,
        dev,
    )


def load(path: Path, **options: Any) -> CausalLM:
    """Loads a Qwen3NextForCausalLM checkpoint directory (options: device, dtype)."""
    device = Device.parse(options.get("device", "cpu"))
    checkpoint = Checkpoint.open(
        path,
        progress=bool(options.get("progress", False)),
        quantization=options.get("quantization"),
    )
    cfg = NextConfig.from_hf(checkpoint.config)
    setup = text_setup(checkpoint)  # its errors before the weights are read
    model = build(checkpoint.weights, cfg, device, options.get("dtype"))
    return CausalLM(options.get("name", MODEL_NAME), checkpoint, model, setup=setup)
