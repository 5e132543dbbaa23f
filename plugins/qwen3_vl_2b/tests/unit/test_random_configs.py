"""Qwen3-VL configs drawn at random (seeded) against transformers (eager attention): text widths,
heads and GQA groups, MRoPE sections, vision depth, width and heads, patch size 8/14/16,
temporal patch 1 or 2, merge 1 or 2, position grids of 4x4 to 12x12, deepstack taps anywhere in
any order (including more taps than text layers), tied and untied heads, 1-3 images of random
sizes in one prompt; fp32 and bf16. The vision tower's rows and the prompt's logits must be
within tolerance and the greedy tokens transformers'.

A token may differ only where transformers' own two best logits are within a few rounding steps
of each other (``assert_greedy_matches``), and the sequences diverge from there on.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio.testing.conformance import assert_greedy_matches, rel_error
from inference_pio.testing.torch_bridge import to_pio, to_torch
from inference_pio_qwen3_vl_2b.model import load
from inference_pio_qwen3_vl_2b.positions import expand_image_pads
from inference_pio_qwen3_vl_2b.preprocess import ProcessorConfig, prepare_image
from inference_pio_qwen3_vl_2b.testing import (
    END,
    IMAGE,
    START,
    hf_greedy_with_logits,
    hf_images,
    save_vl_reference,
)

SEEDS = range(8)
NEW = 10
TOL = {"float32": 5e-5, "bfloat16": 5e-2}


def draw_config(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    kv = rng.choice([1, 2, 4])
    heads = kv * rng.choice([1, 2, 4])
    head_dim = rng.choice([16, 32, 48, 64])
    half = head_dim // 2
    s = rng.randint(0, half // 3)  # the h and w sections; t takes the rest (interleaved)
    v_heads = rng.choice([1, 2, 4])
    v_width = v_heads * rng.choice([8, 16, 24])  # a head dim divisible by 4 (2-D rotary)
    depth = rng.randint(1, 4)
    layers = rng.randint(1, 4)
    taps = rng.sample(range(depth), rng.randint(0, min(depth, 3)))
    hidden = rng.randrange(32, 129, 16)
    return dict(
        image_token_id=IMAGE,
        video_token_id=501,
        vision_start_token_id=START,
        vision_end_token_id=END,
        tie_word_embeddings=rng.random() < 0.3,
        text_config=dict(
            vocab_size=512,
            hidden_size=hidden,
            intermediate_size=rng.randrange(32, 161, 16),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=head_dim,
            rms_norm_eps=rng.choice([1e-6, 1e-5]),
            max_position_embeddings=4096,
            rope_parameters=dict(
                rope_type="default",
                rope_theta=rng.choice([1e4, 5e6]),
                mrope_section=[half - 2 * s, s, s],
                mrope_interleaved=True,
            ),
        ),
        vision_config=dict(
            depth=depth,
            hidden_size=v_width,
            num_heads=v_heads,
            intermediate_size=rng.randrange(16, 97, 16),
            patch_size=rng.choice([8, 14, 16]),
            temporal_patch_size=rng.choice([1, 2]),
            spatial_merge_size=rng.choice([1, 2]),
            in_channels=3,
            num_position_embeddings=rng.choice([4, 8, 12]) ** 2,
            out_hidden_size=hidden,
            deepstack_visual_indexes=taps,
            hidden_act=rng.choice(["gelu_pytorch_tanh", "gelu"]),
        ),
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_vl_config_matches_transformers(seed: int, dtype: str, tmp_path: Path) -> None:
    import torch

    cfg = draw_config(seed)
    vc = cfg["vision_config"]
    ref = save_vl_reference(tmp_path, cfg, dtype, seed=seed)
    ours = load(tmp_path)
    factor = vc["patch_size"] * vc["spatial_merge_size"]
    ours.processor = ProcessorConfig(
        min_pixels=factor * factor,
        max_pixels=(8 * factor) ** 2,
        patch_size=vc["patch_size"],
        temporal_patch_size=vc["temporal_patch_size"],
        merge_size=vc["spatial_merge_size"],
    )
    rng = random.Random(100 + seed)
    g = torch.Generator().manual_seed(seed)
    sources = [
        to_pio(torch.randint(0, 256, (rng.randint(8, 140), rng.randint(8, 140), 3),
                             dtype=torch.uint8, generator=g))
        for _ in range(rng.randint(1, 3))
    ]  # fmt: skip
    images = [prepare_image(s, ours.processor) for s in sources]
    what = f"seed {seed} {dtype}: {cfg}"

    inputs = hf_images(ref, images)
    with torch.no_grad():
        want = ref.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    got = ours.vl.vision(images)
    assert rel_error(to_torch(got.embeds).float(), want.pooler_output) < TOL[dtype], what
    assert len(got.deepstack) == len(want.deepstack_features), what
    for a, b in zip(got.deepstack, want.deepstack_features, strict=True):
        assert rel_error(to_torch(a).float(), b) < TOL[dtype], what

    ids: list[int] = [rng.randrange(0, 400) for _ in range(rng.randint(0, 3))]
    for _ in images:
        ids += [START, IMAGE, END] + [rng.randrange(0, 400) for _ in range(rng.randint(0, 3))]
    full = expand_image_pads(ids, IMAGE, [im.tokens for im in images])
    want_tokens, scores = hf_greedy_with_logits(ref, full, images, NEW)
    logits = ours.vl.prefill(full, images, ours.vl.text.new_cache(len(full)))
    assert rel_error(logits, scores[0]) < TOL[dtype], what
    result = ours.generate(ids, images=sources, max_new_tokens=NEW, temperature=0, ignore_eos=True)
    assert_greedy_matches(result.token_ids, want_tokens, scores, dtype == "bfloat16", what)
