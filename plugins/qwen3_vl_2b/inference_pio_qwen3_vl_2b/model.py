"""Qwen3-VL-2B-Instruct (``Qwen3VLForConditionalGeneration``, models.md §6): the vision tower,
image placement with deepstack injection, and the Qwen3 text decoder with interleaved MRoPE.

The text decoder is the dense Qwen3 stack (``nn.dense``, tensors under
``model.language_model.``). A prompt without images runs exactly as a text model (MRoPE with
three equal position axes is plain RoPE), CUDA graph decode included. A prompt with images:

1. each image is prepared (``preprocess``) and every image pad of the prompt is repeated as many
   times as the image has tokens (``positions.expand_image_pads``);
2. the vision tower encodes the images (``vision.VisionTower``): one text-width row per image
   token, plus one row set per deepstack tap;
3. the prompt's embeddings at the image pads are replaced by the tower's rows, the rotary tables
   come from the (t, h, w) positions, and after text layer j the j-th deepstack rows are added at
   the image positions (``DecoderModel.prefill_embedded``);
4. decoding continues as text, each position shifted by the prompt's rope delta
   (``LayerCache.position_offset``); on CUDA through the text decoder's captured graph, its
   rotary tables shifted by the delta.
"""

from __future__ import annotations

import ctypes
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from inference_pio import ops
from inference_pio.backend import Backend
from inference_pio.causal_lm import CausalLM, TextSetup, text_setup
from inference_pio.checkpoint import Checkpoint
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.generation import GenerationResult
from inference_pio.interface import BatchRequest
from inference_pio.nn import dense
from inference_pio.nn.decoder import DecoderModel, LayerCache, LayerHook
from inference_pio.sampling import SamplingParams
from inference_pio.speculative import SpeculativeConfig, pop_options
from inference_pio.tensor import Tensor
from inference_pio_qwen3_vl_2b import MODEL_NAME
from inference_pio_qwen3_vl_2b.config import VLConfig
from inference_pio_qwen3_vl_2b.positions import expand_image_pads, mrope_positions
from inference_pio_qwen3_vl_2b.preprocess import (
    ImageSource,
    PreparedImage,
    ProcessorConfig,
    prepare_images,
)
from inference_pio_qwen3_vl_2b.vision import VisionOutput, VisionTower, vision_plan

TEXT_PREFIX = "model.language_model."
VISION_PREFIX = "model.visual."


def weight_plan(cfg: VLConfig) -> dense.WeightPlan:
    """Every tensor the model reads, with its shape and init kind (the on-disk names)."""
    plan = dense.weight_plan(cfg.text, TEXT_PREFIX)
    plan.update(vision_plan(cfg.vision, VISION_PREFIX))
    return plan


def weight_shapes(config: dict[str, Any]) -> dense.WeightPlan:
    """Tensor names, shapes and init kinds of a checkpoint with this config."""
    return weight_plan(VLConfig.from_hf(config))


class Qwen3VLModel:
    """The text decoder and the vision tower of one checkpoint."""

    def __init__(self, text: DecoderModel, vision: VisionTower, cfg: VLConfig) -> None:
        self.text, self.vision, self.cfg = text, vision, cfg

    def prefill(
        self, ids: Sequence[int], images: Sequence[PreparedImage], cache: LayerCache
    ) -> Tensor:
        """Prefill of an expanded prompt (one image pad per image token) with its images;
        sets the cache's position offset. Returns the last token's logits."""
        text, cfg = self.text, self.cfg
        merge = cfg.vision.spatial_merge_size
        grids = [(im.grid_h // merge, im.grid_w // merge) for im in images]
        positions, delta = mrope_positions(ids, cfg.image_token_id, grids)
        if cache.length != 0:
            raise ValueError("an image prompt must be the first input of its sequence")
        for tok in ids:
            if not 0 <= tok < text.embed.vocab:
                raise ValueError(f"token id {tok} outside the vocabulary [0, {text.embed.vocab})")
        dev = text.device
        vis = self.vision(images)
        ids_t = Tensor.from_list(list(ids), DType.int32).to(dev)
        x = ops.embedding(ids_t, text.embed.weight, out_dtype=text.act_dtype)
        runs = _image_runs(ids, cfg.image_token_id)
        _place_rows(x, vis.embeds, runs)
        pos = Tensor.from_list(positions, DType.int32).to(dev)
        cos, sin = ops.mrope_cache(
            pos, text.rotary.rot_dim, text.rotary.theta, cfg.mrope_section, text.act_dtype
        )
        hooks = _deepstack_hooks(vis, runs)
        logits = text.prefill_embedded(x, cos, sin, cache, hooks)
        cache.position_offset = delta
        return logits


class Qwen3VL(CausalLM):
    """A loaded Qwen3-VL: a text model whose generation methods also take ``images``.

    ``images`` is a list of paths, encoded bytes, PIL images or uint8 ``[H, W, 3]`` tensors; the
    prompt holds one image pad (``<|image_pad|>``, usually inside
    ``<|vision_start|>…<|vision_end|>``) per image, in order."""

    accepts_images = True

    def __init__(
        self,
        name: str,
        checkpoint: Checkpoint,
        model: Qwen3VLModel,
        processor: ProcessorConfig,
        setup: TextSetup | None = None,
    ) -> None:
        super().__init__(name, checkpoint, model.text, setup=setup)
        self.vl = model
        self.processor = processor

    @property
    def image_pad_text(self) -> str:
        """The image pad token as text (``<|image_pad|>``); ValueError if the tokenizer has no
        text that encodes to it."""
        token = self.vl.cfg.image_token_id
        text = self.detokenize([token])
        if not text or self.tokenize(text) != [token]:
            raise ValueError(f"the tokenizer has no text for the image pad token {token}")
        return text

    def image_placeholder(self) -> str:
        """The text that marks one image in a prompt."""
        cfg = self.vl.cfg
        return "".join(
            self.detokenize([t])
            for t in (cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id)
        )

    def encode_images(self, images: Sequence[ImageSource | Tensor]) -> VisionOutput:
        """The vision tower's rows for ``images`` (for inspection and benchmarks)."""
        return self.vl.vision(prepare_images(images, self.processor))

    def _image_stream(
        self,
        prompt: str | Sequence[int],
        images: Sequence[ImageSource | Tensor],
        params: SamplingParams,
        on_finish: Callable[[GenerationResult], None] | None = None,
        speculative: SpeculativeConfig | None = None,
    ) -> Iterator[str]:
        """The generation loop of this device with the image prefill in front (on CUDA the
        decode then replays the text decoder's graph, shifted by the rope delta)."""
        prepared = prepare_images(images, self.processor)
        ids = expand_image_pads(
            self._prompt_ids(prompt), self.vl.cfg.image_token_id, [p.tokens for p in prepared]
        )

        def prefill(cache: LayerCache) -> Tensor:
            return self.vl.prefill(ids, prepared, cache)

        stream: Iterator[str] = self._stream_fn(speculative)(
            self.model, self.tokenizer, ids, params, self.eos_ids, on_finish, prefill=prefill
        )
        return stream

    def refuse_stray_image_pads(self, prompt: str | Sequence[int]) -> None:
        """ValueError for a prompt that holds image placeholders when no image is given (it
        would run with the pad token's embedding in place of an image)."""
        token = self.vl.cfg.image_token_id
        stray = (
            self.image_pad_text in prompt
            if isinstance(prompt, str)
            else any(int(t) == token for t in prompt)
        )
        if stray:
            raise ValueError("the prompt holds image placeholders but no images were given")

    def generate(
        self,
        prompt: str | Sequence[int],
        images: Sequence[ImageSource | Tensor] | None = None,
        **sampling: Any,
    ) -> GenerationResult:
        images = image_list(images)
        if not images:
            self.refuse_stray_image_pads(prompt)
            return super().generate(prompt, **sampling)
        spec = pop_options(sampling)
        params = self.sampling_params(**sampling)
        start = time.perf_counter()
        results: list[GenerationResult] = []
        for _ in self._image_stream(prompt, images, params, results.append, spec):
            pass
        result = results[0]
        if result.prefill_s == 0.0:
            result.prefill_s = time.perf_counter() - start
        return result

    def generate_text(
        self, prompt: str, images: Sequence[ImageSource | Tensor] | None = None, **sampling: Any
    ) -> str:
        return self.generate(prompt, images, **sampling).text

    def stream_text(
        self, prompt: str, images: Sequence[ImageSource | Tensor] | None = None, **sampling: Any
    ) -> Iterator[str]:
        return self.stream(prompt, images=images, **sampling)

    def stream(
        self,
        prompt: str | Sequence[int],
        on_finish: Callable[[GenerationResult], None] | None = None,
        images: Sequence[ImageSource | Tensor] | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        if on_finish is not None and not callable(on_finish):  # stream(prompt, [image]): a slip
            raise TypeError(
                "stream(prompt, on_finish=None, images=None, ...): on_finish must be callable; "
                "pass the images as images=[...]"
            )
        images = image_list(images)
        if not images:
            self.refuse_stray_image_pads(prompt)
            return super().stream(prompt, on_finish, **sampling)
        spec = pop_options(sampling)
        return self._image_stream(prompt, images, self.sampling_params(**sampling), on_finish, spec)

    def generate_batch(self, requests: Sequence[BatchRequest]) -> list[GenerationResult]:
        """Requests without images run as batches; a request mapping with ``"images"`` runs on
        its own (its prefill needs the vision tower), and results keep the request order."""
        plain: list[tuple[int, BatchRequest]] = []
        results: dict[int, GenerationResult] = {}
        for i, req in enumerate(requests):
            if isinstance(req, Mapping) and "images" in req:
                options = dict(req)
                if "prompt" not in options:
                    raise ValueError("a batch request mapping needs a 'prompt' key")
                images = image_list(options.pop("images"))
                if images:
                    results[i] = self.generate(options.pop("prompt"), images, **options)
                    continue
                self.refuse_stray_image_pads(options.get("prompt", ""))
                plain.append((i, options))  # "images": [] or None: a text request
            else:
                if isinstance(req, (str, Mapping)):
                    prompt = req if isinstance(req, str) else req.get("prompt", "")
                    self.refuse_stray_image_pads(prompt)
                plain.append((i, req))
        if plain:
            done = super().generate_batch([r for _, r in plain])
            for (i, _), res in zip(plain, done, strict=True):
                results[i] = res
        return [results[i] for i in range(len(requests))]


def image_list(images: Any) -> list[Any]:
    """``images`` as a list: None is none, one image (a path, bytes, a PIL image, a tensor) is
    one, any other sequence is taken as it is."""
    if images is None:
        return []
    if isinstance(images, (str, bytes, bytearray, Path, Tensor)) or hasattr(images, "getbands"):
        return [images]
    return list(images)


def _image_runs(ids: Sequence[int], image_token: int) -> list[tuple[int, int]]:
    """(start, length) of every run of image tokens in ``ids``."""
    runs: list[tuple[int, int]] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == image_token:
            j = i
            while j < n and ids[j] == image_token:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def _place_rows(x: Tensor, rows: Tensor, runs: Sequence[tuple[int, int]]) -> None:
    """Copies the rows of ``rows`` in order into ``x`` at the image runs."""
    if sum(n for _, n in runs) != rows.shape[0]:
        raise ValueError(
            f"{sum(n for _, n in runs)} image tokens in the prompt for {rows.shape[0]} image rows"
        )
    es = x.dtype.itemsize * x.shape[1]
    src = 0
    for start, n in runs:
        _copy(x.data_ptr + start * es, rows.data_ptr + src * es, n * es, x.device)
        src += n


def _deepstack_hooks(vis: VisionOutput, runs: Sequence[tuple[int, int]]) -> dict[int, LayerHook]:
    """After text layer j, the j-th deepstack rows are added at the image positions."""

    def hook(feature: Tensor) -> LayerHook:
        def add(be: Backend, x: Tensor) -> None:
            src = 0
            for start, n in runs:
                dst = x.narrow(0, start, n)
                ops.add(dst, feature.narrow(0, src, n), out=dst)
                src += n

        return add

    return {j: hook(feature) for j, feature in enumerate(vis.deepstack)}


def _copy(dst: int, src: int, nbytes: int, device: Device) -> None:
    if device.type == "cpu":
        ctypes.memmove(dst, src, nbytes)
    else:
        from inference_pio import cuda

        cuda.memcpy(dst, src, nbytes, cuda.D2D, blocking=False)


def build(
    weights: Mapping[str, Tensor],
    cfg: VLConfig,
    device: Device | str = "cpu",
    dtype: DType | str | None = None,
) -> Qwen3VLModel:
    """Assembles the model from checkpoint tensors, checking every shape."""
    dev = Device.parse(device)
    text = dense.build(weights, cfg.text, dev, dtype, prefix=TEXT_PREFIX)
    w = dense.checked_weights(weights, vision_plan(cfg.vision, VISION_PREFIX), dev)
    vision = VisionTower(cfg.vision, w, dev, text.act_dtype, VISION_PREFIX)
    return Qwen3VLModel(text, vision, cfg)


def load(path: Path, **options: Any) -> Qwen3VL:
    """Loads a Qwen3VLForConditionalGeneration checkpoint directory (options: device, dtype,
    quantization: ``"fp8"`` quantizes the text model's projections at load; ``min_pixels`` /
    ``max_pixels`` override ``preprocessor_config.json``'s image size bounds)."""
    device = Device.parse(options.get("device", "cpu"))
    checkpoint = Checkpoint.open(
        path,
        progress=bool(options.get("progress", False)),
        quantization=options.get("quantization"),
    )
    cfg = VLConfig.from_hf(checkpoint.config)
    setup = text_setup(checkpoint)  # its errors before the weights are read
    processor = ProcessorConfig.from_file(Path(path) / "preprocessor_config.json")
    bounds = {k: options[k] for k in ("min_pixels", "max_pixels") if options.get(k) is not None}
    for key, value in bounds.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive pixel count, got {value!r}")
    if bounds:  # as transformers' processor kwargs / vLLM's --mm-processor-kwargs
        processor = dataclasses.replace(processor, **bounds)
        if processor.min_pixels > processor.max_pixels:
            raise ValueError(
                f"min_pixels {processor.min_pixels} is above max_pixels {processor.max_pixels}"
            )
    model = build(checkpoint.weights, cfg, device, options.get("dtype"))
    return Qwen3VL(options.get("name", MODEL_NAME), checkpoint, model, processor, setup)
