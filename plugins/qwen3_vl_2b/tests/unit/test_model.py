"""Qwen3-VL-2B against transformers' ``Qwen3VLForConditionalGeneration`` (eager attention) on
tiny random checkpoints: the vision tower, image prompts (prefill and decode logits, greedy
tokens), text-only prompts, the tensor plan, the real configuration and bad input."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from inference_pio.errors import CheckpointError
from inference_pio.testing.conformance import rel_error
from inference_pio_qwen3_vl_2b.config import VLConfig, real_config
from inference_pio_qwen3_vl_2b.model import Qwen3VL, load, weight_shapes
from inference_pio_qwen3_vl_2b.positions import expand_image_pads
from inference_pio_qwen3_vl_2b.preprocess import prepare_image
from inference_pio_qwen3_vl_2b.testing import (
    END,
    IMAGE,
    SMALL_IMAGES,
    START,
    hf_greedy_with_logits,
    save_vl_reference,
    tiny_config,
)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TOL = {"float32": 2e-5, "bfloat16": 3e-2}


def random_image(h: int, w: int, seed: int) -> Any:
    from inference_pio.testing.torch_bridge import to_pio

    g = torch.Generator().manual_seed(seed)
    return to_pio(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g))


def loaded(tmp_path: Path, dtype: str = "float32", **overrides: Any) -> tuple[Any, Qwen3VL]:
    ref = save_vl_reference(tmp_path / "ckpt", tiny_config(**overrides), dtype, seed=3)
    ours = load(tmp_path / "ckpt")
    ours.processor = SMALL_IMAGES
    return ref, ours


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def pair(request: Any, tmp_path_factory: Any) -> tuple[Any, Qwen3VL, str]:
    ref, ours = loaded(tmp_path_factory.mktemp("vl"), request.param)
    return ref, ours, request.param


def test_vision_tower_matches_transformers(pair: tuple[Any, Qwen3VL, str]) -> None:
    """Two images of different grids in one call: the merger rows and every deepstack tap."""
    from inference_pio.testing.torch_bridge import to_torch
    from inference_pio_qwen3_vl_2b.testing import hf_images

    ref, ours, dtype = pair
    images = [prepare_image(random_image(70, 100, 1), SMALL_IMAGES),
              prepare_image(random_image(130, 40, 2), SMALL_IMAGES)]  # fmt: skip
    inputs = hf_images(ref, images)
    with torch.no_grad():
        want = ref.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    got = ours.vl.vision(images)
    assert got.embeds.shape == tuple(want.pooler_output.shape)
    assert rel_error(to_torch(got.embeds).float(), want.pooler_output) < TOL[dtype]
    assert len(got.deepstack) == len(want.deepstack_features) == 2
    for a, b in zip(got.deepstack, want.deepstack_features, strict=True):
        assert rel_error(to_torch(a).float(), b) < TOL[dtype]


@pytest.mark.parametrize("sizes", [[(70, 100)], [(64, 64), (100, 37)]])
def test_image_prompt_logits_and_greedy_tokens(
    pair: tuple[Any, Qwen3VL, str], sizes: list[tuple[int, int]]
) -> None:
    """Prefill and decode logits step by step, then generate()'s greedy tokens."""
    ref, ours, dtype = pair
    sources = [random_image(h, w, 10 + i) for i, (h, w) in enumerate(sizes)]
    images = [prepare_image(s, SMALL_IMAGES) for s in sources]
    ids = [5, 6]
    for _ in images:
        ids += [START, IMAGE, END, 7]
    ids += [8, 9]
    full = expand_image_pads(ids, IMAGE, [im.tokens for im in images])
    want, rows = hf_greedy_with_logits(ref, full, images, 8)
    cache = ours.vl.text.new_cache(len(full) + 8)
    logits = ours.vl.prefill(full, images, cache)
    for step, row in enumerate(rows):
        assert rel_error(logits, row) < TOL[dtype], f"step {step}"
        if step + 1 < len(rows):
            (logits,) = ours.vl.text.forward([([want[step]], cache)])
    result = ours.generate(ids, images=sources, max_new_tokens=8, temperature=0, ignore_eos=True)
    assert result.token_ids == want
    assert result.prompt_tokens == len(full)


def test_text_only_prompt_matches_transformers(pair: tuple[Any, Qwen3VL, str]) -> None:
    ref, ours, dtype = pair
    ids = [3, 14, 15, 92, 65, 35, 89, 79]
    want, rows = hf_greedy_with_logits(ref, ids, [], 6)
    got = ours.generate(ids, max_new_tokens=6, temperature=0, ignore_eos=True)
    assert got.token_ids == want
    cache = ours.model.new_cache(len(ids) + 1)
    (logits,) = ours.model.forward([(ids, cache)])
    assert rel_error(logits, rows[0]) < TOL[dtype]


def test_stream_and_batch_with_images_agree(pair: tuple[Any, Qwen3VL, str]) -> None:
    _, ours, _ = pair
    image = random_image(80, 60, 4)
    prompt = [5, START, IMAGE, END, 6]
    options = dict(max_new_tokens=5, temperature=0, ignore_eos=True)
    text = ours.generate_text(prompt, [image], **options)  # type: ignore[arg-type]
    assert "".join(ours.stream_text(prompt, [image], **options)) == text  # type: ignore[arg-type]
    batch = ours.generate_batch(
        [{"prompt": [7, 8, 9], **options}, {"prompt": prompt, "images": [image], **options}]
    )
    assert batch[1].text == text
    assert batch[0].token_ids == ours.generate([7, 8, 9], **options).token_ids
    with pytest.raises(TypeError, match="images="):  # stream's second argument is on_finish
        ours.stream(prompt, [image], **options)  # type: ignore[arg-type]


def test_tied_embeddings_and_single_tap(tmp_path: Path) -> None:
    ref, ours = loaded(
        tmp_path, tie_word_embeddings=True, vision=dict(deepstack_visual_indexes=[1])
    )
    images = [prepare_image(random_image(50, 90, 5), SMALL_IMAGES)]
    full = expand_image_pads([4, START, IMAGE, END, 9], IMAGE, [images[0].tokens])
    _, rows = hf_greedy_with_logits(ref, full, images, 1)
    logits = ours.vl.prefill(full, images, ours.vl.text.new_cache(len(full)))
    assert rel_error(logits, rows[0]) < TOL["float32"]


def test_image_placeholders_must_match_the_images(pair: tuple[Any, Qwen3VL, str]) -> None:
    _, ours, _ = pair
    image = random_image(40, 40, 6)
    with pytest.raises(ValueError, match="1 image placeholder"):
        ours.generate([5, IMAGE, 6], images=[image, image], max_new_tokens=1)
    with pytest.raises(ValueError, match="0 image placeholder"):
        ours.generate([5, 6], images=[image], max_new_tokens=1)
    with pytest.raises(ValueError, match="cannot decode image"):
        ours.generate([5, IMAGE], images=[b"not an image"], max_new_tokens=1)
    with pytest.raises(ValueError, match="not found"):
        ours.generate([5, IMAGE], images=["/nonexistent/cat.png"], max_new_tokens=1)


def test_placeholders_without_images_and_single_images(pair: tuple[Any, Qwen3VL, str]) -> None:
    """Image placeholders need images (else the pad's embedding would stand in for one); one
    image may be given without a list; "images": [] in a batch request is a text request."""
    _, ours, _ = pair
    with pytest.raises(ValueError, match="no images were given"):
        ours.generate([5, START, IMAGE, END], max_new_tokens=1)
    with pytest.raises(ValueError, match="no images were given"):
        ours.generate_batch([{"prompt": [5, IMAGE], "images": []}])
    image = random_image(40, 40, 6)
    options = dict(max_new_tokens=3, temperature=0, ignore_eos=True)
    prompt = [5, START, IMAGE, END]
    want = ours.generate(prompt, images=[image], **options).token_ids  # type: ignore[arg-type]
    assert ours.generate(prompt, images=image, **options).token_ids == want  # type: ignore[arg-type]
    text = ours.generate_batch([{"prompt": [5, 6, 7], "images": [], **options}])
    assert text[0].token_ids == ours.generate([5, 6, 7], **options).token_ids  # type: ignore[arg-type]


def test_images_from_files_and_pil(pair: tuple[Any, Qwen3VL, str], tmp_path: Path) -> None:
    """A PNG path, its bytes and the PIL image give the same tokens as the pixels themselves."""
    from PIL import Image

    _, ours, _ = pair
    pixels = random_image(64, 96, 7)
    pil = Image.frombytes("RGB", (96, 64), pixels.tobytes())
    path = tmp_path / "image.png"
    pil.save(path)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    options = dict(max_new_tokens=4, temperature=0, ignore_eos=True)
    prompt = [5, START, IMAGE, END]
    want = ours.generate(prompt, images=[pixels], **options).token_ids  # type: ignore[arg-type]
    for source in (path, str(path), buf.getvalue(), pil):
        assert ours.generate(prompt, images=[source], **options).token_ids == want  # type: ignore[arg-type]


def test_weight_plan_names_the_transformers_tensors(pair: tuple[Any, Qwen3VL, str]) -> None:
    ref, _, _ = pair
    plan = weight_shapes(tiny_config())
    state = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: s for k, (s, _) in plan.items()} == state


def test_real_config_counts_the_published_parameters() -> None:
    plan = weight_shapes(real_config())
    assert sum(math.prod(s) for s, _ in plan.values()) == 2_127_532_032
    cfg = VLConfig.from_hf(real_config())
    assert cfg.mrope_section == (24, 20, 20)
    assert cfg.vision.deepstack_visual_indexes == (5, 11, 17)
    assert cfg.text.tie_word_embeddings


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("vision_config"), "vision_config"),
        (lambda c: c["text_config"]["rope_parameters"].update(mrope_section=[6, 5, 4]), "mrope"),
        (lambda c: c["vision_config"].update(out_hidden_size=48), "out_hidden_size"),
        (lambda c: c["vision_config"].update(num_heads=3), "head dim"),
        (lambda c: c["vision_config"].update(deepstack_visual_indexes=[0, 7]), "deepstack"),
        (lambda c: c["vision_config"].update(num_position_embeddings=150), "square"),
        (lambda c: c.update(image_token_id=100000), "image_token_id"),
        (lambda c: c["vision_config"].update(hidden_act="relu"), "hidden_act"),
    ],
)
def test_bad_configs_are_rejected(change: Any, message: str) -> None:
    cfg = json.loads(json.dumps(tiny_config()))
    change(cfg)
    with pytest.raises(CheckpointError, match=message):
        VLConfig.from_hf(cfg)


def test_cli_generate_with_images(pair: tuple[Any, Qwen3VL, str], tmp_path: Path) -> None:
    """``inference-pio generate --image``: placeholders added in front of the prompt, the same
    tokens as the API; a text model refuses images."""
    from PIL import Image

    from inference_pio.cli import main

    _, ours, _dtype = pair
    path = tmp_path / "red.png"
    Image.new("RGB", (300, 200), (200, 30, 40)).save(path)
    ckpt = Path(ours.checkpoint.path)
    # the CLI loads the checkpoint's own processor config: write the small bounds used here
    (ckpt / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 32 * 32, "longest_edge": 256 * 256}})
    )
    out = tmp_path / "out.json"
    argv = ["generate", "-m", str(ckpt), "-i", str(path), "-p", "hi", "-n", "5", "-t", "0",
            "--json"]  # fmt: skip
    import contextlib

    with out.open("w") as fh, contextlib.redirect_stdout(fh):
        assert main(argv) == 0
    got = json.loads(out.read_text())
    prompt = ours.image_placeholder() + "hi"
    want = ours.generate(prompt, images=[path], max_new_tokens=5, temperature=0)
    assert got["token_ids"] == want.token_ids
    assert got["prompt_tokens"] == want.prompt_tokens
    assert ours.tokenize(ours.image_placeholder()) == [START, IMAGE, END]


def test_server_chat_with_a_data_url_image(pair: tuple[Any, Qwen3VL, str], tmp_path: Path) -> None:
    """An OpenAI chat request with an ``image_url`` part (data: URL) answers what
    ``generate(images=...)`` answers for the template's prompt."""
    import base64

    TestClient = pytest.importorskip("starlette.testclient").TestClient  # needs httpx(2)
    from PIL import Image

    from inference_pio.server import create_app

    _, ours, _ = pair
    buf = io.BytesIO()
    Image.new("RGB", (90, 60), (10, 200, 30)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 5, "temperature": 0}
    with TestClient(create_app(ours)) as client:
        got = client.post("/v1/chat/completions", json=body).json()
        bad = client.post(
            "/v1/chat/completions",
            json={**body, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
        )  # fmt: skip
    prompt = ours.apply_chat_template(
        [{"role": "user", "content": ours.image_placeholder() + "what?"}]
    )
    want = ours.generate(prompt, images=[buf.getvalue()], max_new_tokens=5, temperature=0)
    assert got["choices"][0]["message"]["content"] == want.text
    assert got["usage"]["prompt_tokens"] == want.prompt_tokens
    assert bad.status_code == 400
    assert "data: URLs" in bad.json()["error"]["message"]


def test_cli_chat_with_an_image(
    pair: tuple[Any, Qwen3VL, str], tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """``inference-pio chat --image``: the first turn carries the placeholder, every turn the
    image; the reply is what the API gives for the same conversation."""
    from PIL import Image

    from inference_pio.cli import main

    _, ours, _ = pair
    path = tmp_path / "blue.png"
    Image.new("RGB", (120, 80), (20, 40, 220)).save(path)
    ckpt = Path(ours.checkpoint.path)
    (ckpt / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 32 * 32, "longest_edge": 256 * 256}})
    )
    lines = iter(["what is it", "again"])

    def typed(_prompt: str = "") -> str:
        line = next(lines, None)
        if line is None:
            raise EOFError  # Ctrl-D
        return line

    monkeypatch.setattr("builtins.input", typed)
    assert main(["chat", "-m", str(ckpt), "-i", str(path), "-n", "4", "-t", "0"]) == 0
    out = capsys.readouterr().out
    history = [{"role": "user", "content": ours.image_placeholder() + "what is it"}]
    first = ours.generate(ours.apply_chat_template(history), images=[path], max_new_tokens=4,
                          temperature=0).text  # fmt: skip
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "again"}]
    second = ours.generate(ours.apply_chat_template(history), images=[path], max_new_tokens=4,
                           temperature=0).text  # fmt: skip
    assert out == first + "\n" + second + "\n"


def test_config_defaults_and_refusals_as_transformers() -> None:
    """A text_config without rope_theta or max_position_embeddings takes Qwen3VLTextConfig's
    500000 and 128000 (not the dense default of 10000, not an error); a quantized checkpoint is
    refused by name."""
    cfg = tiny_config()
    cfg["text_config"].pop("rope_theta", None)
    cfg["text_config"]["rope_parameters"].pop("rope_theta")
    cfg["text_config"].pop("max_position_embeddings")
    text = VLConfig.from_hf(cfg).text
    assert (text.rope_theta, text.max_position_embeddings) == (500000.0, 128000)
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen3VLTextConfig()
    assert (hf.rope_parameters["rope_theta"], hf.max_position_embeddings) == (500000.0, 128000)
    with pytest.raises(CheckpointError, match=r"quantized.*'gptq'"):
        VLConfig.from_hf(tiny_config(quantization_config={"quant_method": "gptq"}))
    VLConfig.from_hf(tiny_config(quantization_config={"quant_method": "fp8"}))  # FP8 loads


def test_fp8_quantized_at_load_matches_transformers(tmp_path: Path) -> None:
    """``quantization="fp8"``: the text model's projections quantized per 128 x 128 block (the
    vision tower stays), against transformers on the same weights dequantized, image prompt."""
    from inference_pio.testing.conformance import count_fp8_linears
    from inference_pio.testing.fp8 import write_fp8_checkpoint

    src, fp8, deq = tmp_path / "src", tmp_path / "fp8", tmp_path / "deq"
    save_vl_reference(src, tiny_config(), "float32", seed=3)

    def text_projection(name: str) -> bool:
        return name.startswith("model.language_model.") and name.endswith("_proj.weight")

    names = write_fp8_checkpoint(src, fp8, deq, block=(128, 128), select=text_projection)
    transformers = pytest.importorskip("transformers")
    ref = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        deq, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ours = load(src, quantization="fp8")
    ours.processor = SMALL_IMAGES
    assert names
    assert count_fp8_linears(ours.vl.text) == len(names)
    source = random_image(40, 56, 1)
    image = prepare_image(source, SMALL_IMAGES)
    ids = [5, START, IMAGE, END, 7, 8]
    full = expand_image_pads(ids, IMAGE, [image.tokens])
    want, rows = hf_greedy_with_logits(ref, full, [image], 6)
    cache = ours.vl.text.new_cache(len(full) + 6)
    logits = ours.vl.prefill(full, [image], cache)
    assert rel_error(logits, rows[0]) < TOL["float32"]
    result = ours.generate(ids, images=[source], max_new_tokens=6, temperature=0, ignore_eos=True)
    assert result.token_ids == want


def test_a_deepstack_block_listed_twice_taps_once_as_in_transformers(tmp_path: Path) -> None:
    """deepstack_visual_indexes [0, 2, 2]: transformers taps block 2 once, through the merger
    of its first listing (``list.index``)."""
    from inference_pio.testing.torch_bridge import to_torch
    from inference_pio_qwen3_vl_2b.testing import hf_images

    ref, ours = loaded(tmp_path, vision={"deepstack_visual_indexes": [0, 2, 2]})
    images = [prepare_image(random_image(70, 100, 1), SMALL_IMAGES)]
    inputs = hf_images(ref, images)
    with torch.no_grad():
        want = ref.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    got = ours.vl.vision(images)
    assert len(got.deepstack) == len(want.deepstack_features) == 2
    for a, b in zip(got.deepstack, want.deepstack_features, strict=True):
        assert rel_error(to_torch(a).float(), b) < TOL["float32"]
