"""Qwen3-VL on CUDA against transformers and the CPU path on tiny random checkpoints: the vision
tower, image prompts (op path on the device: prefill with deepstack and MRoPE, decode with the
rope delta) and text prompts (the captured-graph decode of the dense text decoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio import cuda  # noqa: E402
from inference_pio.nn.cuda_graph import unsupported_reason  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402
from inference_pio.testing.conformance import rel_error  # noqa: E402

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

vl = pytest.importorskip("inference_pio_qwen3_vl_2b.model")
vt = pytest.importorskip("inference_pio_qwen3_vl_2b.testing")
from inference_pio_qwen3_vl_2b.positions import expand_image_pads  # noqa: E402
from inference_pio_qwen3_vl_2b.preprocess import prepare_image  # noqa: E402

TOL = {"float32": 1e-4, "bfloat16": 3e-2}


def image(h: int, w: int, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    return tb.to_pio(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g))


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def models(request: Any, tmp_path_factory: Any) -> tuple[Any, Any, Any, str]:
    d: Path = tmp_path_factory.mktemp("vl-cuda")
    ref = vt.save_vl_reference(d, vt.tiny_config(), request.param, seed=5)
    gpu, cpu = vl.load(d, device="cuda:0"), vl.load(d)
    gpu.processor = cpu.processor = vt.SMALL_IMAGES
    return ref, gpu, cpu, request.param


def test_vision_tower_on_cuda(models: tuple[Any, Any, Any, str]) -> None:
    ref, gpu, _, dtype = models
    images = [prepare_image(image(70, 100, 1), vt.SMALL_IMAGES),
              prepare_image(image(40, 130, 2), vt.SMALL_IMAGES)]  # fmt: skip
    inputs = vt.hf_images(ref, images)
    with torch.no_grad():
        want = ref.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    got = gpu.vl.vision(images)
    assert rel_error(tb.from_device(got.embeds).float(), want.pooler_output) < TOL[dtype]
    for a, b in zip(got.deepstack, want.deepstack_features, strict=True):
        assert rel_error(tb.from_device(a).float(), b) < TOL[dtype]


def test_image_prompt_on_cuda(models: tuple[Any, Any, Any, str]) -> None:
    ref, gpu, cpu, dtype = models
    sources = [image(64, 96, 3), image(100, 50, 4)]
    images = [prepare_image(s, vt.SMALL_IMAGES) for s in sources]
    ids = [5, vt.START, vt.IMAGE, vt.END, 6, vt.START, vt.IMAGE, vt.END, 7]
    full = expand_image_pads(ids, vt.IMAGE, [im.tokens for im in images])
    want, rows = vt.hf_greedy_with_logits(ref, full, images, 8)
    cache = gpu.vl.text.new_cache(len(full) + 8)
    logits = gpu.vl.prefill(full, images, cache)
    for step, row in enumerate(rows):
        assert rel_error(tb.from_device(logits).float(), row) < TOL[dtype], f"step {step}"
        if step + 1 < len(rows):
            (logits,) = gpu.vl.text.forward([([want[step]], cache)])
    options = dict(max_new_tokens=8, temperature=0, ignore_eos=True)
    got = gpu.generate(ids, images=sources, **options)
    assert got.token_ids == want
    assert got.token_ids == cpu.generate(ids, images=sources, **options).token_ids
    # the decode replayed the text decoder's graph with its rotary tables shifted by the delta
    runner = getattr(gpu.model, "_cuda_graph_decoder", None)
    if dtype == "bfloat16":
        assert unsupported_reason(gpu.model) is None
        assert runner is not None
        assert runner.position_offset == cache.position_offset < 0
    # a text prompt next puts the tables back; the image prompt again gives the same tokens
    text_ids = [3, 14, 15, 92]
    want_text, _ = vt.hf_greedy_with_logits(ref, text_ids, [], 6)
    assert gpu.generate(text_ids, max_new_tokens=6, temperature=0, ignore_eos=True).token_ids == (
        want_text
    )
    if runner is not None:
        assert runner.position_offset == 0
    assert gpu.generate(ids, images=sources, **options).token_ids == want


def test_text_prompt_on_cuda_uses_the_graph_decoder(models: tuple[Any, Any, Any, str]) -> None:
    ref, gpu, _, _ = models
    ids = [3, 14, 15, 92, 65, 35]
    want, _ = vt.hf_greedy_with_logits(ref, ids, [], 8)
    got = gpu.generate(ids, max_new_tokens=8, temperature=0, ignore_eos=True)
    assert got.token_ids == want
