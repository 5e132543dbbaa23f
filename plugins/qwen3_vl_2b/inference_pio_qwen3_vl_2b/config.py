"""Configuration of Qwen3-VL-2B-Instruct: the real Hugging Face ``config.json`` and
``generation_config.json``.

Values follow ``shared/reference/models.md``; a checkpoint's own files always take precedence
when a real checkpoint is loaded. These copies build ``synthetic:qwen3-vl-2b-instruct``
checkpoints at the real size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inference_pio.errors import CheckpointError
from inference_pio.nn.dense import DenseConfig, config_int, refuse_quantized

HF_REPO = "Qwen/Qwen3-VL-2B-Instruct"
ARCHITECTURE = "Qwen3VLForConditionalGeneration"
MODEL_TYPE = "qwen3_vl"
#: ``hidden_act`` values of the vision blocks -> the ``approximate`` argument of ``ops.gelu``
GELU_KINDS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}

_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "model_type": "qwen3_vl",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_vl_text",
        "hidden_size": 2048,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 6144,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-06,
        "rope_theta": 5000000,
        "rope_scaling": {
            "rope_type": "default",
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
        "max_position_embeddings": 262144,
        "vocab_size": 151936,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "dtype": "bfloat16",
    },
    "vision_config": {
        "model_type": "qwen3_vl_vision",
        "depth": 24,
        "hidden_size": 1024,
        "num_heads": 16,
        "intermediate_size": 4096,
        "hidden_act": "gelu_pytorch_tanh",
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "in_channels": 3,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2048,
        "deepstack_visual_indexes": [5, 11, 17],
        "initializer_range": 0.02,
    },
    "torch_dtype": "bfloat16",
}

_GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
}


def real_config() -> dict[str, Any]:
    """A fresh copy of the real ``config.json`` contents."""
    return copy.deepcopy(_CONFIG)


def generation_config() -> dict[str, Any]:
    """A fresh copy of the real ``generation_config.json`` contents."""
    return copy.deepcopy(_GENERATION_CONFIG)


@dataclass(frozen=True)
class VisionConfig:
    """The fields of ``vision_config`` the vision tower needs (models.md §6.1, §6.3)."""

    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    in_channels: int
    num_position_embeddings: int
    out_hidden_size: int
    deepstack_visual_indexes: tuple[int, ...]
    rope_theta: float

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_side(self) -> int:
        """Side of the learned square position grid (48 for 2304 embeddings)."""
        return math.isqrt(self.num_position_embeddings)

    @property
    def patch_values(self) -> int:
        """Values of one flattened patch: channels x temporal x patch x patch (1536)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merged_size(self) -> int:
        """Width of a merged 2x2 block before the merger MLP (4096)."""
        return self.hidden_size * self.spatial_merge_size**2

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> VisionConfig:
        """Reads and validates the fields; errors name the missing or bad field."""

        def count(key: str, default: Any = None, minimum: int = 1) -> int:
            return config_int(config, key, minimum, default)

        hidden, heads = count("hidden_size"), count("num_heads")
        if hidden % heads or (hidden // heads) % 4:
            raise CheckpointError(
                f"vision_config: hidden_size {hidden} / num_heads {heads} must give a head dim "
                "divisible by 4 (2-D rotary)"
            )
        act = config.get("hidden_act", "gelu_pytorch_tanh")
        if act not in GELU_KINDS:
            raise CheckpointError(f"vision_config: hidden_act {act!r} is not supported")
        positions = count("num_position_embeddings")
        if math.isqrt(positions) ** 2 != positions:
            raise CheckpointError(
                f"vision_config: num_position_embeddings {positions} is not a square grid"
            )
        depth = count("depth")
        taps = config.get("deepstack_visual_indexes") or []
        if not isinstance(taps, list) or any(
            not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth for i in taps
        ):
            raise CheckpointError(
                f"vision_config: deepstack_visual_indexes must be block indexes below {depth}, "
                f"got {taps!r}"
            )
        rope = config.get("rope_parameters") or {}
        theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        if (
            not isinstance(theta, (int, float))
            or isinstance(theta, bool)
            or not 1e-30 <= theta <= 3.4028234e38  # positive and finite in float32
        ):
            raise CheckpointError(f"vision_config: rope_theta must be positive, got {theta!r}")
        return cls(
            depth=depth,
            hidden_size=hidden,
            num_heads=heads,
            intermediate_size=count("intermediate_size"),
            hidden_act=str(act),
            patch_size=count("patch_size", 16),
            temporal_patch_size=count("temporal_patch_size", 2),
            spatial_merge_size=count("spatial_merge_size", 2),
            in_channels=count("in_channels", 3),
            num_position_embeddings=positions,
            out_hidden_size=count("out_hidden_size"),
            deepstack_visual_indexes=tuple(taps),
            rope_theta=float(theta),
        )


@dataclass(frozen=True)
class VLConfig:
    """A ``qwen3_vl`` config.json: the text decoder, the vision tower and the special ids."""

    text: DenseConfig
    vision: VisionConfig
    mrope_section: tuple[int, int, int]
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> VLConfig:
        """Reads and validates both halves; errors name the missing or bad field."""
        text_cfg = config.get("text_config")
        vision_cfg = config.get("vision_config")
        if not isinstance(text_cfg, Mapping) or not isinstance(vision_cfg, Mapping):
            raise CheckpointError("config.json: 'text_config' and 'vision_config' are required")
        refuse_quantized(config)
        text_cfg = dict(text_cfg)
        # the word embeddings are tied at the top level of a qwen3_vl config
        if "tie_word_embeddings" in config:
            text_cfg["tie_word_embeddings"] = config["tie_word_embeddings"]
        params = text_cfg.get("rope_parameters")
        if text_cfg.get("rope_theta") is None and not (
            isinstance(params, Mapping) and params.get("rope_theta") is not None
        ):
            text_cfg["rope_theta"] = 500000.0  # transformers' Qwen3VLTextConfig default
        text = DenseConfig.from_hf(  # transformers' Qwen3VLTextConfig defaults
            text_cfg, default_head_dim=128, defaults={"max_position_embeddings": 128000}
        )
        if text.rope is not None and text.rope.scaled:
            raise CheckpointError(
                f"text_config: rope type {text.rope.rope_type!r} is not supported with MRoPE "
                f"(Qwen3-VL runs unscaled rope only)"
            )
        vision = VisionConfig.from_hf(vision_cfg)
        if vision.out_hidden_size != text.hidden_size:
            raise CheckpointError(
                f"vision_config: out_hidden_size {vision.out_hidden_size} must equal the text "
                f"hidden_size {text.hidden_size}"
            )
        rope = text_cfg.get("rope_parameters") or text_cfg.get("rope_scaling") or {}
        section = rope.get("mrope_section", [24, 20, 20])
        if (
            not isinstance(section, list)
            or len(section) != 3
            or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in section)
            or sum(section) != text.head_dim // 2
        ):
            raise CheckpointError(
                f"text_config: mrope_section {section!r} must be three counts summing to "
                f"head_dim / 2 = {text.head_dim // 2}"
            )
        if rope.get("mrope_interleaved", True) is not True:
            raise CheckpointError("text_config: only interleaved MRoPE (Qwen3-VL) is supported")

        def token(key: str, default: int) -> int:
            value = config.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise CheckpointError(f"config.json: {key!r} must be an integer, got {value!r}")
            if not 0 <= value < text.vocab_size:
                raise CheckpointError(
                    f"config.json: {key!r} {value} is outside the vocabulary ({text.vocab_size})"
                )
            return value

        return cls(
            text=text,
            vision=vision,
            mrope_section=(section[0], section[1], section[2]),
            image_token_id=token("image_token_id", 151655),
            video_token_id=token("video_token_id", 151656),
            vision_start_token_id=token("vision_start_token_id", 151652),
            vision_end_token_id=token("vision_end_token_id", 151653),
        )
