"""The dense decoder-only layout shared by Qwen3 (and the Llama family): config reading, weight
plan and model assembly from Hugging Face tensor names.

Tensor names: ``{prefix}embed_tokens.weight``, ``{prefix}layers.{i}.input_layernorm.weight``,
``…self_attn.{q,k,v,o}_proj.weight`` (+ optional ``q_norm``/``k_norm``),
``…post_attention_layernorm``,
``…mlp.{gate,up,down}_proj.weight``, ``{prefix}norm.weight`` and ``lm_head.weight`` unless the
embeddings are tied. A plugin whose layers have another MLP (a mixture of experts) passes its own
``mlp_plan`` (the layer's MLP tensors) and ``mlp`` (the block built from them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.errors import CheckpointError
from inference_pio.nn.attention import Attention
from inference_pio.nn.decoder import DecoderLayer, DecoderModel, Mlp
from inference_pio.nn.layers import ROPE_NEOX, Embedding, Linear, RMSNorm, Rotary, check_weight
from inference_pio.nn.mlp import SwiGLU
from inference_pio.nn.rope_scaling import (
    RopeFrequencies,
    context_length,
    rope_frequencies,
    rope_theta,
    rope_type_of,
    standard_parameters,
)
from inference_pio.quantization import Fp8Weights, parse_quantization
from inference_pio.scheduler import Placement
from inference_pio.tensor import Tensor


def rope_parameters(config: Mapping[str, Any]) -> tuple[float, str]:
    """(theta, rope type) from a config: transformers 5 writes ``rope_parameters``, older files
    (and the released checkpoints) ``rope_theta`` + ``rope_scaling``
    (:func:`inference_pio.nn.rope_scaling.standard_parameters`)."""
    params = standard_parameters(config)
    return rope_theta(params), rope_type_of(params)


def config_number(
    config: Mapping[str, Any], key: str, default: float, minimum: float = 0.0
) -> float:
    """A finite number field of a config.json, at least ``minimum`` (CheckpointError naming it)."""
    value = config.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
    ):
        raise CheckpointError(
            f"config.json: {key!r} must be a finite number >= {minimum}, got {value!r}"
        )
    return float(value)


def config_bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    """A boolean field of a config.json (CheckpointError for a string such as "false")."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json: {key!r} must be true or false, got {value!r}")
    return value


def config_int(config: Mapping[str, Any], key: str, minimum: int = 1, default: Any = None) -> int:
    """An integer field of a config.json, at least ``minimum`` (CheckpointError naming it)."""
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CheckpointError(
            f"config.json: {key!r} must be an integer >= {minimum}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class DenseConfig:
    """The fields of an HF config.json that the dense decoder needs."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qk_norm: bool = True
    #: the rope's frequencies (None: plain RoPE with rope_theta over head_dim)
    rope: RopeFrequencies | None = None

    @property
    def max_context(self) -> int:
        """The usable context: max_position_embeddings, extended by a linear or YaRN rope
        scaling as vLLM derives it (:func:`inference_pio.nn.rope_scaling.context_length`)."""
        return context_length(self.rope, self.max_position_embeddings)

    def rotary(self) -> Rotary:
        """The rotary embedding of the attention (half rotation over the whole head)."""
        if self.rope is None:
            return Rotary(self.head_dim, self.rope_theta, ROPE_NEOX)
        return Rotary.from_frequencies(self.rope, ROPE_NEOX)

    @classmethod
    def from_hf(
        cls,
        config: Mapping[str, Any],
        qk_norm: bool = True,
        default_head_dim: int | None = None,
        defaults: Mapping[str, int] | None = None,
    ) -> DenseConfig:
        """Reads and validates the fields; errors name the missing or bad field.
        ``default_head_dim``: the head size when config.json gives none (transformers' default
        for the architecture: 128 for Qwen3; None: hidden_size / num_attention_heads).
        ``defaults``: transformers' values for fields its config class fills in when config.json
        leaves them out (``max_position_embeddings``, an unused ``intermediate_size``); the
        others are required."""

        def need(key: str, kind: type = int) -> Any:
            if (key not in config or config[key] is None) and defaults and key in defaults:
                return defaults[key]
            if key not in config or config[key] is None:
                raise CheckpointError(f"config.json: required field {key!r} is missing")
            value = config[key]
            if kind is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise CheckpointError(
                    f"config.json: {key!r} must be {kind.__name__}, got {value!r}"
                )
            if isinstance(value, int) and value <= 0:
                raise CheckpointError(f"config.json: {key!r} must be positive, got {value}")
            return value

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        head_dim = config_int(config, "head_dim") if config.get("head_dim") is not None else 0
        head_dim = head_dim or default_head_dim or 0
        if not head_dim:
            if hidden % heads:
                raise CheckpointError(
                    f"config.json: hidden_size {hidden} is not a multiple of "
                    f"num_attention_heads {heads} (and no head_dim is given)"
                )
            head_dim = hidden // heads
        kv = (
            config_int(config, "num_key_value_heads")
            if config.get("num_key_value_heads") is not None
            else heads
        )
        if heads % kv:
            raise CheckpointError(
                f"config.json: num_attention_heads {heads} is not a multiple of "
                f"num_key_value_heads {kv}"
            )
        mpe = need("max_position_embeddings")
        # transformers' rope functions read the max_position_embeddings the config class filled in
        rope = rope_frequencies(
            {**config, "max_position_embeddings": mpe}, int(head_dim), partial_rotary=False
        )
        refuse_unsupported(config)
        return cls(
            hidden_size=hidden,
            num_layers=need("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(kv),
            head_dim=int(head_dim),
            intermediate_size=need("intermediate_size"),
            vocab_size=need("vocab_size"),
            rms_norm_eps=config_number(config, "rms_norm_eps", 1e-6),
            rope_theta=rope.theta,
            max_position_embeddings=mpe,
            tie_word_embeddings=config_bool(config, "tie_word_embeddings", False),
            qk_norm=qk_norm,
            rope=rope,
        )


def refuse_unsupported(config: Mapping[str, Any], attention_bias: bool = False) -> None:
    """CheckpointError for the fields of a Llama-style ``config.json`` that these decoders do not
    implement (rather than running them wrongly): an activation other than SiLU, biases on the
    projections (``attention_bias``: the model implements those of the attention), sliding-window
    attention on any layer."""
    refuse_quantized(config)
    act = config.get("hidden_act", config.get("hidden_activation")) or "silu"
    if act not in ("silu", "swish"):
        raise CheckpointError(
            f"config.json: hidden_act {act!r} is not supported (the MLP is SwiGLU: 'silu')"
        )
    for key in ("mlp_bias",) if attention_bias else ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise CheckpointError(
                f"config.json: {key} = true is not supported (projections without biases only)"
            )
    types = config.get("layer_types")
    if isinstance(types, list) and "sliding_attention" in types:
        raise CheckpointError("config.json: sliding-window attention is not supported")
    # transformers' Qwen3Config: sliding_window defaults to 4096 when config.json leaves it out
    if config.get("use_sliding_window") and config.get("sliding_window", 4096):
        # as transformers' Qwen3: layers from max_window_layers on slide
        window_from = config.get("max_window_layers", 0)
        layers = config.get("num_hidden_layers", 0)
        if not isinstance(window_from, int) or not isinstance(layers, int) or layers > window_from:
            raise CheckpointError("config.json: sliding-window attention is not supported")


def refuse_quantized(config: Mapping[str, Any]) -> None:
    """CheckpointError for a quantized checkpoint of a kind the loader does not read (AWQ, GPTQ,
    compressed-tensors, ...): its ``quantization_config`` names the method, which the weight
    errors otherwise would not. Block-scaled FP8 (Qwen's -FP8 repos) passes: the checkpoint's
    weights are dequantized as they are read (:mod:`inference_pio.quantization`)."""
    parse_quantization(config)


#: transformers' Qwen3Config values for fields config.json may leave out
QWEN3_DEFAULTS: Mapping[str, int] = {"max_position_embeddings": 32768}

WeightPlan = dict[str, tuple[tuple[int, ...], str]]
#: ``(layer index, layer prefix) -> {tensor name: (shape, init kind)}`` of a layer's MLP
MlpPlan = Callable[[int, str], WeightPlan]
#: ``(layer index, layer prefix, tensor getter) -> the layer's MLP block``
MlpFactory = Callable[[int, str, Callable[[str], Tensor]], Mlp]


def swiglu_shapes(q: str, hidden: int, inter: int) -> WeightPlan:
    """The tensors of one SwiGLU named ``{q}{gate,up,down}_proj.weight`` (a layer's MLP with
    ``q = "…mlp."``, an expert with ``q = "…mlp.experts.{e}."``)."""
    return {
        q + "gate_proj.weight": ((inter, hidden), "normal"),
        q + "up_proj.weight": ((inter, hidden), "normal"),
        q + "down_proj.weight": ((hidden, inter), "normal"),
    }


class WeightGetter:
    """The tensor getter :func:`build` hands a layer's MLP factory: ``w(name)`` is the tensor
    on the layer's device; ``w.linear(name)`` the bias-free projection ``name`` (tensor
    ``name.weight``), kept in FP8 where :func:`projection` keeps it (``gpu_fp8``: on a GPU
    too)."""

    def __init__(
        self,
        weights: Mapping[str, Tensor],
        get: Callable[[str], Tensor],
        device: Device,
        gpu_fp8: bool = False,
    ) -> None:
        self.weights, self.get, self.device, self.gpu_fp8 = weights, get, device, gpu_fp8

    def __call__(self, name: str) -> Tensor:
        return self.get(name)

    def linear(self, name: str) -> Linear:
        return projection(self.weights, name, self.get, self.device, self.gpu_fp8)


def _linear(w: Callable[[str], Tensor], name: str) -> Linear:
    """``w.linear(name)`` for a :class:`WeightGetter`, else a Linear of ``w(name.weight)``."""
    if isinstance(w, WeightGetter):
        return w.linear(name)
    return Linear(name, w(name + ".weight"))


def swiglu_block(q: str, w: Callable[[str], Tensor]) -> SwiGLU:
    """The SwiGLU of the tensors :func:`swiglu_shapes` names, from the getter ``w`` (FP8
    projections stay FP8 where ``w`` is a :class:`WeightGetter` that keeps them)."""
    return SwiGLU(
        _linear(w, q + "gate_proj"), _linear(w, q + "up_proj"), _linear(w, q + "down_proj")
    )


def projection(
    weights: Mapping[str, Tensor],
    name: str,
    w: Callable[[str], Tensor],
    device: Device,
    gpu_fp8: bool = False,
) -> Linear:
    """The bias-free projection ``name`` (tensor ``name.weight``) on ``device``: kept in
    block-scaled FP8 where the checkpoint stores it so or ``quantization="fp8"`` asks for it
    (:class:`Fp8Weights`) on the CPU, and on a GPU where ``gpu_fp8`` says so (the dense Qwen3
    layout, whose fused CUDA decode step reads FP8); else the tensor from the getter ``w``
    (dequantized from FP8, for the CUDA steps that take bf16 weights)."""
    if isinstance(weights, Fp8Weights) and (device.type == "cpu" or gpu_fp8):
        pair = weights.quantized(name + ".weight")
        if pair is not None:
            w8, scale = pair if device.type == "cpu" else (pair[0].to(device), pair[1].to(device))
            return Linear(name, w8, scale=scale, block=weights.scheme.block)
    return Linear(name, w(name + ".weight"))


def swiglu_plan(cfg: DenseConfig) -> MlpPlan:
    """The dense layers' MLP tensors: ``mlp.{gate,up,down}_proj.weight``."""
    return lambda layer, p: swiglu_shapes(p + "mlp.", cfg.hidden_size, cfg.intermediate_size)


def swiglu_mlp(layer: int, p: str, w: Callable[[str], Tensor]) -> SwiGLU:
    """The dense layers' MLP block from its tensors (:func:`swiglu_plan`)."""
    return swiglu_block(p + "mlp.", w)


def weight_plan(
    cfg: DenseConfig, prefix: str = "model.", mlp_plan: MlpPlan | None = None
) -> WeightPlan:
    """Every tensor of the checkpoint with its shape and init kind (for synthetic checkpoints);
    ``mlp_plan`` gives each layer's MLP tensors (default: :func:`swiglu_plan`)."""
    h, hd = cfg.hidden_size, cfg.head_dim
    layer_mlp = mlp_plan if mlp_plan is not None else swiglu_plan(cfg)
    plan: dict[str, tuple[tuple[int, ...], str]] = {
        f"{prefix}embed_tokens.weight": ((cfg.vocab_size, h), "normal"),
        f"{prefix}norm.weight": ((h,), "norm"),
    }
    if not cfg.tie_word_embeddings:
        plan["lm_head.weight"] = ((cfg.vocab_size, h), "normal")
    for layer in range(cfg.num_layers):
        p = f"{prefix}layers.{layer}."
        plan.update(
            {
                p + "input_layernorm.weight": ((h,), "norm"),
                p + "post_attention_layernorm.weight": ((h,), "norm"),
                p + "self_attn.q_proj.weight": ((cfg.num_heads * hd, h), "normal"),
                p + "self_attn.k_proj.weight": ((cfg.num_kv_heads * hd, h), "normal"),
                p + "self_attn.v_proj.weight": ((cfg.num_kv_heads * hd, h), "normal"),
                p + "self_attn.o_proj.weight": ((h, cfg.num_heads * hd), "normal"),
            }
        )
        plan.update(layer_mlp(layer, p))
        if cfg.qk_norm:
            plan[p + "self_attn.q_norm.weight"] = ((hd,), "norm")
            plan[p + "self_attn.k_norm.weight"] = ((hd,), "norm")
    return plan


def checked_weights(
    weights: Mapping[str, Tensor], plan: WeightPlan, device: Device
) -> WeightGetter:
    """Checks that every tensor of ``plan`` is in ``weights`` with its shape (CheckpointError
    naming the first that is not) and returns a getter that places a tensor on ``device`` (a
    :class:`WeightGetter`: its ``linear`` keeps FP8 projections FP8 on the CPU)."""
    for name, (shape, _) in plan.items():
        if name not in weights:
            raise CheckpointError(f"weight {name!r} is missing from the checkpoint")
        # a float8 tensor's shape and scale, checked without dequantizing it (an unquantized
        # one is not quantized here: quantization="fp8" quantizes the projections that stay FP8
        # when they are built, and only those)
        pair = None
        if isinstance(weights, Fp8Weights) and weights.base[name].dtype == DType.float8_e4m3:
            pair = weights.quantized(name)
        if pair is None:
            check_weight(name, weights[name], shape)
        elif tuple(pair[0].shape) != tuple(shape):  # checked without dequantizing it
            raise CheckpointError(
                f"weight {name!r} has shape {tuple(pair[0].shape)}, expected {tuple(shape)}"
            )

    def w(name: str) -> Tensor:
        t = weights[name]
        return t if device.type == "cpu" else t.to(device)

    return WeightGetter(weights, w, device)


def activation_dtype(
    weights: Mapping[str, Tensor], name: str, requested: DType | str | None
) -> DType:
    """Compute dtype: the requested one, else f32 for f32 checkpoints and bf16 otherwise."""
    if requested is not None:
        dt = DType.parse(requested)
        if dt not in (DType.float32, DType.bfloat16):
            raise ValueError(f"compute dtype must be float32 or bfloat16, got {dt.name}")
        return dt
    return DType.float32 if weights[name].dtype == DType.float32 else DType.bfloat16


def build(
    weights: Mapping[str, Tensor],
    cfg: DenseConfig,
    device: Device | str | Placement = "cpu",
    dtype: DType | str | None = None,
    prefix: str = "model.",
    mlp_plan: MlpPlan | None = None,
    mlp: MlpFactory | None = None,
) -> DecoderModel:
    """Assembles a :class:`DecoderModel` from checkpoint tensors, checking every shape.

    ``mlp_plan`` and ``mlp`` replace the dense SwiGLU of each layer (both or neither): the
    layer's MLP tensors, then the block built from them. ``device`` may be a
    :class:`~inference_pio.scheduler.Placement` (layers split between the CPU and a GPU)."""
    if (mlp_plan is None) != (mlp is None):
        raise ValueError("dense.build: pass mlp_plan and mlp together")
    make_mlp = mlp if mlp is not None else swiglu_mlp
    placement: Placement | None = None
    if isinstance(device, Placement):
        placement = device
        if placement.num_layers != cfg.num_layers:
            raise ValueError(
                f"the placement is for {placement.num_layers} layers, the model has "
                f"{cfg.num_layers}"
            )
        dev = placement.head_device
    else:
        dev = Device.parse(device)
    last = f"{prefix}layers.{cfg.num_layers - 1}.input_layernorm.weight"
    if last not in weights:  # before a plan of every layer: num_hidden_layers may be absurd
        raise CheckpointError(
            f"weight {last!r} is missing from the checkpoint (config.json: num_hidden_layers "
            f"{cfg.num_layers})"
        )
    w_head = checked_weights(weights, weight_plan(cfg, prefix, mlp_plan), dev)
    for layer in range(cfg.num_layers):  # biases the config did not announce
        p = f"{prefix}layers.{layer}."
        for proj in (
            "self_attn.q",
            "self_attn.k",
            "self_attn.v",
            "self_attn.o",
            "mlp.gate",
            "mlp.up",
            "mlp.down",
        ):
            if f"{p}{proj}_proj.bias" in weights:
                raise CheckpointError(
                    f"weight {p}{proj}_proj.bias: projection biases are not supported"
                )
    getters: dict[Device, Callable[[str], Tensor]] = {dev: w_head}

    def on(target: Device) -> Callable[[str], Tensor]:
        if target not in getters:
            getters[target] = lambda name: weights[name].to(target)
        return getters[target]

    layer_devices = [
        placement.layer_device(i) if placement is not None else dev for i in range(cfg.num_layers)
    ]

    act = activation_dtype(weights, f"{prefix}embed_tokens.weight", dtype)
    rotary = cfg.rotary()
    eps = cfg.rms_norm_eps
    layers = []
    for layer in range(cfg.num_layers):
        p = f"{prefix}layers.{layer}."
        # FP8 projections stay FP8 on a GPU in the dense layout only (the fused CUDA step
        # reads them; the MoE steps take bf16 experts)
        w = WeightGetter(weights, on(layer_devices[layer]), layer_devices[layer], mlp is None)

        attn = Attention(
            w.linear(p + "self_attn.q_proj"),
            w.linear(p + "self_attn.k_proj"),
            w.linear(p + "self_attn.v_proj"),
            w.linear(p + "self_attn.o_proj"),
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            rotary,
            q_norm=RMSNorm(p + "q_norm", w(p + "self_attn.q_norm.weight"), eps)
            if cfg.qk_norm
            else None,
            k_norm=RMSNorm(p + "k_norm", w(p + "self_attn.k_norm.weight"), eps)
            if cfg.qk_norm
            else None,
        )
        block = make_mlp(layer, p, w)
        layers.append(
            DecoderLayer(
                RMSNorm(p + "input_layernorm", w(p + "input_layernorm.weight"), eps),
                attn,
                RMSNorm(
                    p + "post_attention_layernorm", w(p + "post_attention_layernorm.weight"), eps
                ),
                block,
            )
        )
    embed_dev = placement.embed_device if placement is not None else dev
    embed_w = on(embed_dev)(f"{prefix}embed_tokens.weight")
    head_w = (
        on(dev)(f"{prefix}embed_tokens.weight")
        if cfg.tie_word_embeddings
        else w_head("lm_head.weight")
    )
    return DecoderModel(
        Embedding(f"{prefix}embed_tokens", embed_w),
        layers,
        RMSNorm(f"{prefix}norm", w_head(f"{prefix}norm.weight"), eps),
        Linear("lm_head", head_w),
        rotary,
        act,
        cfg.max_context,
        dev,
        layer_devices=layer_devices,
        embed_device=embed_dev,
    )
