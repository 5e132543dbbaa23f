"""Image preprocessing against transformers' ``Qwen2VLImageProcessorPil`` (the Pillow path of the
Qwen3-VL processor): target sizes, patch order and values."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from inference_pio.testing.torch_bridge import to_pio, to_torch
from inference_pio_qwen3_vl_2b.preprocess import (
    ProcessorConfig,
    load_image,
    prepare_image,
    smart_resize,
)

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("size", "target"),
    [
        ((224, 224), (256, 256)),
        ((480, 640), (480, 640)),
        ((1080, 1920), (1088, 1920)),
        ((720, 1280), (704, 1280)),  # 22.5 rounds half to even
        ((48, 1000), (64, 1184)),
        ((336, 336), (320, 320)),
        ((4000, 3000), (4000, 3008)),
        ((32, 32), (256, 256)),
        ((8000, 8000), (4096, 4096)),
    ],
)
def test_smart_resize_targets(size: tuple[int, int], target: tuple[int, int]) -> None:
    assert smart_resize(*size) == target


def test_smart_resize_rejects_extreme_aspect_ratios() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


@pytest.mark.parametrize(
    ("h", "w", "bounds"),
    [
        (70, 100, (32 * 32, 256 * 256)),  # upscaled to the minimum
        (300, 200, (32 * 32, 128 * 128)),  # downscaled to the maximum
        (96, 64, (32 * 32, 256 * 256)),  # already a multiple of 32: no resize
        (333, 517, (256 * 256, 4096 * 4096)),  # the real bounds
    ],
)
def test_patches_match_the_transformers_processor(h: int, w: int, bounds: tuple[int, int]) -> None:
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    g = torch.Generator().manual_seed(h * w)
    pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
    pil = Image.frombytes("RGB", (w, h), to_pio(pixels).tobytes())
    proc = transformers.Qwen2VLImageProcessorPil(
        size={"shortest_edge": bounds[0], "longest_edge": bounds[1]},
        patch_size=16, temporal_patch_size=2, merge_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    want = proc(images=[pil], return_tensors="pt")
    got = prepare_image(pil, ProcessorConfig(min_pixels=bounds[0], max_pixels=bounds[1]))
    assert [1, got.grid_h, got.grid_w] == want["image_grid_thw"][0].tolist()
    patches = to_torch(got.patches)
    assert patches.shape == want["pixel_values"].shape
    # the same resized pixels; normalisation fused into one fp32 step: one rounding apart
    assert float((patches - want["pixel_values"].float()).abs().max()) < 1e-6
    assert got.tokens == got.grid_h * got.grid_w // 4


def test_load_image_sources_and_modes(tmp_path: Path) -> None:
    from PIL import Image

    rgba = Image.new("RGBA", (5, 3), (10, 20, 30, 40))
    gray = Image.new("L", (4, 2), 77)
    path = tmp_path / "a.png"
    rgba.save(path)
    buf = io.BytesIO()
    gray.save(buf, format="PNG")
    for source in (path, str(path)):  # files: alpha dropped (transformers' load_image)
        t = load_image(source)
        assert t.shape == (3, 5, 3)
        assert to_torch(t)[0, 0].tolist() == [10, 20, 30]
    # an image object: transparency composited onto white (transformers' convert_to_rgb)
    from transformers.image_transforms import convert_to_rgb

    want = convert_to_rgb(rgba, return_numpy=True)[0, 0].tolist()
    assert to_torch(load_image(rgba))[0, 0].tolist() == want != [10, 20, 30]
    t = load_image(buf.getvalue())
    assert t.shape == (2, 4, 3)
    assert to_torch(t)[1, 3].tolist() == [77, 77, 77]
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="path, bytes or a PIL image"):
        load_image(42)


def test_processor_config_file(tmp_path: Path) -> None:
    path = tmp_path / "preprocessor_config.json"
    assert ProcessorConfig.from_file(path) == ProcessorConfig()
    path.write_text(json.dumps({"size": {"shortest_edge": 1024, "longest_edge": 65536},
                                "image_mean": [0.1, 0.2, 0.3]}))  # fmt: skip
    cfg = ProcessorConfig.from_file(path)
    assert (cfg.min_pixels, cfg.max_pixels, cfg.image_mean) == (1024, 65536, (0.1, 0.2, 0.3))
    path.write_text(json.dumps({"patch_size": 0}))
    with pytest.raises(ValueError, match="patch_size"):
        ProcessorConfig.from_file(path)
    for text, message in (("{bad", "not valid JSON"), ("[1, 2]", "JSON object")):
        path.write_text(text)  # an error naming the file, not a traceback
        with pytest.raises(ValueError, match=message) as info:
            ProcessorConfig.from_file(path)
        assert "preprocessor_config.json" in str(info.value)


def test_bad_pixel_tensors_are_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(to_pio(torch.zeros(8, 8, 4, dtype=torch.uint8)), ProcessorConfig())
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(to_pio(torch.zeros(8, 8, 3)), ProcessorConfig())


def test_exif_orientation_is_applied_to_files_like_transformers(tmp_path: Path) -> None:
    """A phone photo's EXIF orientation: files and bytes are turned upright, as transformers'
    load_image does."""
    from PIL import Image
    from transformers.image_utils import load_image as hf_load_image

    g = torch.Generator().manual_seed(5)
    pixels = torch.randint(0, 256, (30, 50, 3), dtype=torch.uint8, generator=g)
    image = Image.fromarray(pixels.numpy())
    exif = image.getexif()
    for orientation in (3, 6, 8):
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        image.save(path, exif=exif, quality=95)
        upright = hf_load_image(str(path))
        w, h = upright.size
        want = torch.frombuffer(bytearray(upright.tobytes()), dtype=torch.uint8).view(h, w, 3)
        for source in (path, path.read_bytes()):
            got = to_torch(load_image(source))
            assert got.shape == want.shape
            assert torch.equal(got, want)


def test_preprocessor_config_fields(tmp_path: Path) -> None:
    """Top-level min_pixels / max_pixels override size (as in transformers); processing steps
    this processor always makes cannot be switched off silently."""
    path = tmp_path / "preprocessor_config.json"
    size = {"shortest_edge": 1024, "longest_edge": 65536}
    path.write_text(json.dumps({"size": size, "max_pixels": 16384, "min_pixels": 2048}))
    cfg = ProcessorConfig.from_file(path)
    assert (cfg.min_pixels, cfg.max_pixels) == (2048, 16384)
    for change, message in (
        ({"do_normalize": False}, "do_normalize"),
        ({"do_rescale": False}, "do_rescale"),
        ({"resample": 2}, "bicubic"),
        ({"size": {"min_pixels": 1, "max_pixels": 2}}, "shortest_edge"),
    ):
        path.write_text(json.dumps({"size": size, **change}))
        with pytest.raises(ValueError, match=message):
            ProcessorConfig.from_file(path)


def test_a_decompression_bomb_is_a_clear_error(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("L", (1, 1)).save(path)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 0.4  # a 1-pixel image is then more than twice the limit
    try:
        with pytest.raises(ValueError, match="cannot decode image"):
            load_image(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


@pytest.mark.parametrize("mode", ["P", "RGB", "L"])
def test_a_transparent_colour_in_a_file_is_white_as_in_transformers(
    mode: str, tmp_path: Path
) -> None:
    """A PNG with a transparent colour (tRNS): transformers' processor given the file
    (load_image, then convert_to_rgb) paints that colour white."""
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((200, 40, 10), (16, 16, 48, 48))
    key: object = (0, 0, 0)
    if mode == "P":
        image = image.quantize(2)
        key = image.getpixel((0, 0))
    elif mode == "L":
        image, key = image.convert("L"), 0
    path = tmp_path / "key.png"
    image.save(path, transparency=key)
    proc = transformers.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256},
        patch_size=16, temporal_patch_size=2, merge_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    want = proc(images=[str(path)], return_tensors="pt")["pixel_values"]
    config = ProcessorConfig(min_pixels=32 * 32, max_pixels=256 * 256)
    for source in (path, path.read_bytes()):
        got = to_torch(prepare_image(source, config).patches)
        assert float((got - want.float()).abs().max()) < 1e-6
        assert to_torch(load_image(source))[0, 0].tolist() == [255, 255, 255]
