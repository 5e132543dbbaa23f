"""Prompt-lookup speculation after an image prefill (MRoPE position offset): the same tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio_qwen3_vl_2b.model import load  # noqa: E402
from inference_pio_qwen3_vl_2b.testing import (  # noqa: E402
    END,
    IMAGE,
    SMALL_IMAGES,
    START,
    save_vl_reference,
    tiny_config,
)


def test_speculation_after_an_image_gives_the_same_tokens(tmp_path: Path) -> None:
    from inference_pio.testing.torch_bridge import to_pio

    save_vl_reference(tmp_path, tiny_config(), "float32", seed=3)
    model = load(tmp_path)
    model.processor = SMALL_IMAGES
    g = torch.Generator().manual_seed(1)
    image = to_pio(torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8, generator=g))
    ids = [5, 6, START, IMAGE, END, 7, 8, 9, 7, 8, 9, 7, 8]
    drafted = 0
    for opts in ({"temperature": 0}, {"temperature": 0.7, "seed": 2}):
        want = model.generate(ids, images=[image], max_new_tokens=24, ignore_eos=True, **opts)
        got = model.generate(
            ids,
            images=[image],
            max_new_tokens=24,
            ignore_eos=True,
            speculative="ngram",
            prompt_lookup_min=1,
            **opts,
        )
        assert got.token_ids == want.token_ids
        drafted += got.draft_tokens
        streamed = "".join(
            model.stream(ids, images=[image], max_new_tokens=24, ignore_eos=True,
                         speculative="ngram", **opts)
        )  # fmt: skip
        assert streamed == want.text
    assert drafted > 0
