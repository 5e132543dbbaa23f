"""Test helpers: tiny random ``Qwen3VLForConditionalGeneration`` references (imports torch and
transformers, which are test dependencies only)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference_pio.synthetic.qwen_vocab import write_byte_tokenizer
from inference_pio.synthetic.templates import QWEN3_CHAT_TEMPLATE
from inference_pio.testing.tiny import randomize_norms
from inference_pio.testing.torch_bridge import to_torch
from inference_pio_qwen3_vl_2b.preprocess import PreparedImage, ProcessorConfig

IMAGE, VIDEO, START, END, EOS = 500, 501, 502, 503, 499

#: A small config with every width distinct: text head dim 32 with MRoPE sections (6, 5, 5),
#: a 3-block vision tower of width 32 (2 heads of 16) tapped after blocks 0 and 2.
TINY_VL: dict[str, Any] = dict(
    image_token_id=IMAGE,
    video_token_id=VIDEO,
    vision_start_token_id=START,
    vision_end_token_id=END,
    tie_word_embeddings=False,
    text_config=dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
        rope_parameters=dict(
            rope_type="default", rope_theta=1e4, mrope_section=[6, 5, 5], mrope_interleaved=True
        ),
    ),
    vision_config=dict(
        depth=3,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        in_channels=3,
        num_position_embeddings=144,
        out_hidden_size=64,
        deepstack_visual_indexes=[0, 2],
        hidden_act="gelu_pytorch_tanh",
    ),
)

#: Small images for the tiny models: 32-pixel factor, at most 256 x 256 pixels.
SMALL_IMAGES = ProcessorConfig(min_pixels=32 * 32, max_pixels=256 * 256)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A copy of :data:`TINY_VL`; ``text`` / ``vision`` dicts update the sub-configs, other keys
    the top level."""
    cfg = copy.deepcopy(TINY_VL)
    cfg["text_config"].update(overrides.pop("text", {}))
    cfg["vision_config"].update(overrides.pop("vision", {}))
    cfg.update(overrides)
    return cfg


def save_vl_reference(
    directory: Path, config: dict[str, Any], dtype: str = "float32", seed: int = 0,
    head_scale: float = 8.0,
) -> Any:  # fmt: skip
    """Builds a random transformers Qwen3-VL (eager attention; norms and biases randomised, an
    untied LM head scaled so greedy tokens vary), saves it with a byte tokenizer and returns it."""
    import torch
    import transformers

    cfg = transformers.Qwen3VLConfig(**copy.deepcopy(config))
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.Qwen3VLForConditionalGeneration(cfg).eval()
    randomize_norms(model, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):  # transformers initialises biases to zero
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        if not config.get("tie_word_embeddings", True):
            model.lm_head.weight.mul_(head_scale)
    model = model.to(getattr(torch, dtype))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    # bytes, then the end-of-turn and vision tokens at their ids (499..503)
    specials = ["<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                "<|vision_end|>"]  # fmt: skip
    write_byte_tokenizer(directory, [(t, True) for t in specials], EOS, QWEN3_CHAT_TEMPLATE)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS]}))
    return model


def hf_images(model: Any, images: Sequence[PreparedImage]) -> dict[str, Any]:
    """``pixel_values`` and ``image_grid_thw`` of prepared images for a transformers model."""
    import torch

    pixels = torch.cat([to_torch(im.patches) for im in images]).to(model.dtype)
    grid = torch.tensor([[1, im.grid_h, im.grid_w] for im in images])
    return {"pixel_values": pixels, "image_grid_thw": grid}


def hf_greedy_with_logits(
    model: Any, ids: Sequence[int], images: Sequence[PreparedImage], n: int
) -> tuple[list[int], list[Any]]:
    """n greedy tokens of a transformers Qwen3-VL for an expanded prompt with its images, and
    the fp32 logits each was taken from."""
    import inspect

    import torch

    # transformers renamed past_key_values to cache (5.2x); take whichever this version has
    cache_kw = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else ("past_key_values")
    )
    inp = torch.tensor([list(ids)])
    extra = hf_images(model, images) if images else {}
    if images:
        extra["mm_token_type_ids"] = (inp == model.config.image_token_id).int()
    toks: list[int] = []
    rows: list[Any] = []
    model.model.rope_deltas = None  # transformers keeps the last image prompt's delta
    with torch.no_grad():
        out = model(input_ids=inp, use_cache=True, **extra)
        for i in range(n):
            rows.append(out.logits[0, -1].float())
            toks.append(int(rows[-1].argmax()))
            if i + 1 < n:
                past = getattr(out, "cache", None) or out.past_key_values
                step = {"input_ids": torch.tensor([[toks[-1]]]), cache_kw: past}
                out = model(**step, use_cache=True)
    return toks, rows
