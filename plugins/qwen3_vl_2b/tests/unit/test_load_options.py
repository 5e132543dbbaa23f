"""Load options of the Qwen3-VL plugin: min_pixels / max_pixels bound the image size."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_pio_qwen3_vl_2b.preprocess import smart_resize


def test_load_options_bound_the_image_size(tmp_path: Path) -> None:
    """load(max_pixels=...) caps the image tokens (a 4000x3000 photo is 11,750 tokens at the
    checkpoint's 4096^2 bound); bad values are refused."""
    pytest.importorskip("transformers")
    from inference_pio_qwen3_vl_2b.model import load
    from inference_pio_qwen3_vl_2b.testing import save_vl_reference, tiny_config

    save_vl_reference(tmp_path, tiny_config(), "float32")
    assert load(tmp_path).processor.max_pixels == 4096 * 4096
    model = load(tmp_path, max_pixels=448 * 448, min_pixels=64 * 64)
    assert (model.processor.min_pixels, model.processor.max_pixels) == (64 * 64, 448 * 448)
    assert smart_resize(3000, 4000, 32, 64 * 64, 448 * 448) == (384, 512)
    bad_options = (
        {"max_pixels": 0},
        {"max_pixels": "big"},
        {"min_pixels": 10**6, "max_pixels": 10**4},
    )
    for bad in bad_options:
        with pytest.raises(ValueError, match="pixel"):
            load(tmp_path, **bad)
