"""Qwen3-Coder-30B-A3B-Instruct (``Qwen3MoeForCausalLM``, models.md §3): the core dense decoder
(attention with q/k RMSNorm, RoPE, RMSNorms, embedding and LM head) with a softmax top-k mixture
of SwiGLU experts as the MLP of its sparse layers.

Which layers are sparse follows transformers: layer i is unless it is listed in
``mlp_only_layers``, there are no experts, or ``(i + 1) % decoder_sparse_step != 0``; the others
keep a dense SwiGLU of ``intermediate_size``. Runs on the CPU and on CUDA devices (batch-1 decode
steps there replay a captured graph whose expert GEMVs read the router's choice on the device).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_pio.causal_lm import CausalLM, text_setup
from inference_pio.checkpoint import Checkpoint
from inference_pio.errors import CheckpointError
from inference_pio.nn import dense
from inference_pio.nn.layers import Linear
from inference_pio.nn.moe import SoftmaxTopKMoE
from inference_pio.tensor import Tensor
from inference_pio_qwen3_coder_30b import MODEL_NAME

#: transformers' Qwen3MoeConfig values for fields config.json may leave out (the dense
#: intermediate size is used only by layers listed in mlp_only_layers)
QWEN3_MOE_DEFAULTS = {"max_position_embeddings": 32768, "intermediate_size": 6144}


@dataclass(frozen=True)
class MoeConfig:
    """The mixture-of-experts fields of a ``qwen3_moe`` config.json."""

    num_experts: int
    experts_per_token: int
    moe_intermediate_size: int
    norm_topk_prob: bool
    decoder_sparse_step: int
    mlp_only_layers: frozenset[int]

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> MoeConfig:
        """Reads and validates the fields (transformers 5 writes ``num_experts`` as
        ``num_local_experts``); errors name the bad field."""

        def count(key: str, value: Any, minimum: int) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise CheckpointError(
                    f"config.json: {key!r} must be an integer >= {minimum}, got {value!r}"
                )
            return value

        key = "num_experts" if config.get("num_experts") is not None else "num_local_experts"
        experts = count(key, config.get(key), 0)
        k = count("num_experts_per_tok", config.get("num_experts_per_tok", 8), 1)  # Qwen3MoeConfig
        step = count("decoder_sparse_step", config.get("decoder_sparse_step", 1), 1)
        only = config.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in only
        ):
            raise CheckpointError("config.json: 'mlp_only_layers' must be a list of layer indices")
        inter = count("moe_intermediate_size", config.get("moe_intermediate_size"), 1)
        # transformers' Qwen3MoeConfig has no max_window_layers: use_sliding_window makes every
        # layer slide (window default 4096), which this model does not implement
        if config.get("use_sliding_window") and config.get("sliding_window", 4096) is not None:
            raise CheckpointError(
                "config.json: sliding-window attention (use_sliding_window) is not supported"
            )
        if experts and k > experts:
            raise CheckpointError(
                f"config.json: num_experts_per_tok {k} exceeds the {experts} experts"
            )
        return cls(
            num_experts=experts,
            experts_per_token=k,
            moe_intermediate_size=inter,
            norm_topk_prob=dense.config_bool(config, "norm_topk_prob", False),
            decoder_sparse_step=step,
            mlp_only_layers=frozenset(only),
        )

    def sparse(self, layer: int) -> bool:
        """Whether layer ``layer`` has experts (transformers' ``Qwen3MoeDecoderLayer`` rule)."""
        return (
            layer not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer + 1) % self.decoder_sparse_step == 0
        )


def mlp_plan(cfg: dense.DenseConfig, moe: MoeConfig) -> dense.MlpPlan:
    """Each layer's MLP tensors: the router ``mlp.gate.weight [E, hidden]`` and per expert
    ``mlp.experts.{e}.{gate,up,down}_proj.weight`` (the on-disk names), or a dense SwiGLU."""
    h, i = cfg.hidden_size, moe.moe_intermediate_size
    dense_plan = dense.swiglu_plan(cfg)

    def plan(layer: int, p: str) -> dense.WeightPlan:
        if not moe.sparse(layer):
            return dense_plan(layer, p)
        out: dense.WeightPlan = {p + "mlp.gate.weight": ((moe.num_experts, h), "normal")}
        for e in range(moe.num_experts):
            out.update(dense.swiglu_shapes(f"{p}mlp.experts.{e}.", h, i))
        return out

    return plan


def mlp_factory(moe: MoeConfig) -> dense.MlpFactory:
    """Builds each layer's MLP block from its tensors (:func:`mlp_plan`)."""

    def make(layer: int, p: str, w: Callable[[str], Tensor]) -> Any:
        if not moe.sparse(layer):
            return dense.swiglu_mlp(layer, p, w)
        experts = [dense.swiglu_block(f"{p}mlp.experts.{e}.", w) for e in range(moe.num_experts)]
        router = Linear(p + "mlp.gate", w(p + "mlp.gate.weight"))
        return SoftmaxTopKMoE(
            router, experts, moe.experts_per_token, renormalize=moe.norm_topk_prob
        )

    return make


def weight_shapes(config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor names, shapes and init kinds of a checkpoint with this config."""
    cfg = dense.DenseConfig.from_hf(config, qk_norm=True, defaults=QWEN3_MOE_DEFAULTS)
    return dense.weight_plan(cfg, mlp_plan=mlp_plan(cfg, MoeConfig.from_hf(config)))


def load(path: Path, **options: Any) -> CausalLM:
    """Loads a Qwen3MoeForCausalLM checkpoint directory (options: device, dtype; the device may
    be a hybrid :class:`~inference_pio.scheduler.Placement`)."""
    device = options.get("device", "cpu")
    checkpoint = Checkpoint.open(
        path,
        progress=bool(options.get("progress", False)),
        quantization=options.get("quantization"),
    )
    cfg = dense.DenseConfig.from_hf(checkpoint.config, qk_norm=True, defaults=QWEN3_MOE_DEFAULTS)
    moe = MoeConfig.from_hf(checkpoint.config)
    setup = text_setup(checkpoint)  # its errors before the weights are read
    model = dense.build(
        checkpoint.weights,
        cfg,
        device,
        options.get("dtype"),
        mlp_plan=mlp_plan(cfg, moe),
        mlp=mlp_factory(moe),
    )
    return CausalLM(options.get("name", MODEL_NAME), checkpoint, model, setup=setup)
