"""``CausalLM``: the TextModelPluginInterface implementation shared by every text model.

A plugin builds a :class:`~inference_pio.generation.ForwardModel` from its checkpoint (usually a
:class:`~inference_pio.nn.DecoderModel`) and wraps it here; tokenization, chat templates,
sampling, streaming and batching then come from the core.
"""

from __future__ import annotations

import functools
import operator
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from inference_pio.batching import BatchManager
from inference_pio.checkpoint import Checkpoint
from inference_pio.errors import CheckpointError
from inference_pio.generation import ForwardModel, GenerationResult, PrefixCache, stream_generate
from inference_pio.interface import BatchRequest, TextModelPluginInterface
from inference_pio.sampling import SamplingParams
from inference_pio.speculative import SpeculativeConfig, pop_options

if TYPE_CHECKING:
    from inference_pio.tokenizer import Tokenizer


@dataclass(frozen=True)
class TextSetup:
    """What a text model takes from its checkpoint besides the weights."""

    tokenizer: Tokenizer
    eos_ids: tuple[int, ...]


def text_setup(checkpoint: Checkpoint) -> TextSetup:
    """The tokenizer, the stop ids and a check of the generation defaults of ``checkpoint``.
    Plugins call it before building the model: its errors (no tokenizer.json, a bad
    generation_config.json) then come before the weights are read, not after."""
    from inference_pio.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(checkpoint.path)
    gc = checkpoint.generation_config
    # as transformers: generation_config.json, else config.json (a multimodal model keeps it
    # in text_config); else the tokenizer's eos_token, which vLLM and llama.cpp stop at too
    text_cfg = checkpoint.config.get("text_config")
    eos: Any = next(
        (
            v
            for v in (
                gc.get("eos_token_id"),
                checkpoint.config.get("eos_token_id"),
                text_cfg.get("eos_token_id") if isinstance(text_cfg, Mapping) else None,
                tokenizer.eos_token_id,
            )
            if v is not None and v != []
        ),
        None,
    )
    ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise CheckpointError(f"eos_token_id must be an integer or a list of them, got {eos!r}")
    try:  # a bad default is the checkpoint's fault: found at load, not in every request
        SamplingParams.from_generation_config({**gc, "do_sample": True})  # every value
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"generation_config.json: {exc}") from None
    return TextSetup(tokenizer, tuple(ids))


class CausalLM(TextModelPluginInterface):
    """A loaded text model: forward pass + tokenizer + generation defaults."""

    def __init__(
        self,
        name: str,
        checkpoint: Checkpoint,
        model: ForwardModel,
        max_batch_size: int = 8,
        setup: TextSetup | None = None,
    ) -> None:
        """``setup``: :func:`text_setup` of the checkpoint, made before the model was built (so
        that a missing tokenizer or a bad generation config is reported before the weights are
        read); made here when not given."""
        setup = setup if setup is not None else text_setup(checkpoint)
        self.name = name
        self.checkpoint = checkpoint
        self.model = model
        self.tokenizer = setup.tokenizer
        self.max_batch_size = max_batch_size
        #: the last generation's cache, for a next prompt that starts the same way (CPU; off
        #: unless :meth:`reuse_prefixes` turns it on)
        self.prefix_cache: PrefixCache | None = None
        self.eos_ids: tuple[int, ...] = setup.eos_ids

    # ---- tokens --------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects str, got {type(text).__name__}")
        ids = list(self.tokenizer.encode(text))
        template = tuple(getattr(getattr(self.tokenizer, "spec", None), "template", (None,)))
        # the ids the post-processor puts before the text (BOS; GLM-4's [gMASK] <sop>)
        lead = template[: template.index(None)] if None in template else ()
        n = len(lead)
        if n and len(ids) >= 2 * n and tuple(ids[n : 2 * n]) == lead == tuple(ids[:n]):
            # the text starts with what the post-processor adds (a rendered chat template
            # writes it): once, as transformers' apply_chat_template(tokenize=True) gives
            del ids[:n]
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; ValueError for ids outside the model's vocabulary (ids past the
        tokenizer's tokens but inside the embedding rows decode to nothing, as in tokenizers)."""
        ids = [_token_id(i) for i in ids]
        vocab = getattr(self.model, "vocab_size", None)
        bad = next((i for i in ids if i < 0 or (vocab is not None and i >= vocab)), None)
        if bad is not None:
            raise ValueError(f"token id {bad} outside the vocabulary [0, {vocab})")
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    @overload
    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, tokenize: Literal[True], **kwargs: Any
    ) -> list[int]: ...
    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tokenize: Literal[False] = ...,
        **kwargs: Any,
    ) -> str: ...
    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, tokenize: bool = False, **kwargs: Any
    ) -> str | list[int]:
        """Renders ``messages`` with the checkpoint's chat template (generation prompt added);
        ``tokenize=True`` returns the prompt's token ids instead (as transformers' does, whose
        default it is; here the default is the text)."""
        kwargs.setdefault("add_generation_prompt", True)
        text = str(self.tokenizer.apply_chat_template(list(messages), **kwargs))
        return self.tokenize(text) if tokenize else text

    # ---- generation ----------------------------------------------------------------------------
    def sampling_params(self, **sampling: Any) -> SamplingParams:
        """Generation-config defaults overridden by ``sampling``; invalid values raise."""
        return SamplingParams.from_generation_config(self.checkpoint.generation_config, **sampling)

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [_token_id(i) for i in prompt]
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    def generate(self, prompt: str | Sequence[int], **sampling: Any) -> GenerationResult:
        """Full result (text, token ids, timings) for one prompt; ``logprobs=k`` (0..20) adds
        each token's log probability and the k most likely tokens (``result.logprobs``).
        ``speculative="ngram"`` (with ``num_speculative_tokens``, ``prompt_lookup_max``,
        ``prompt_lookup_min``, or a :class:`~inference_pio.speculative.SpeculativeConfig`)
        decodes with prompt-lookup speculation on the CPU: the same output, faster where the
        output repeats the prompt (:mod:`inference_pio.speculative`)."""
        spec = pop_options(sampling)
        params = self.sampling_params(**sampling)
        ids = self._prompt_ids(prompt)
        results: list[GenerationResult] = []
        start = time.perf_counter()
        for _ in self._stream_fn(spec)(
            self.model, self.tokenizer, ids, params, self.eos_ids, on_finish=results.append
        ):
            pass
        result = results[0]
        if result.prefill_s == 0.0:
            result.prefill_s = time.perf_counter() - start
        return result

    def generate_text(self, prompt: str, **sampling: Any) -> str:
        return self.generate(prompt, **sampling).text

    def stream_text(self, prompt: str, **sampling: Any) -> Iterator[str]:
        return self.stream(prompt, **sampling)

    def stream(
        self,
        prompt: str | Sequence[int],
        on_finish: Callable[[GenerationResult], None] | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """Text pieces as :meth:`stream_text` yields them; when the generation ends,
        ``on_finish`` receives its :class:`GenerationResult` (token counts, finish reason).
        Invalid arguments raise before the iterator is returned."""
        spec = pop_options(sampling)
        params = self.sampling_params(**sampling)
        ids = self._prompt_ids(prompt)
        stream: Iterator[str] = self._stream_fn(spec)(
            self.model, self.tokenizer, ids, params, self.eos_ids, on_finish
        )
        return stream

    def _stream_fn(self, speculative: SpeculativeConfig | None = None) -> Any:
        """The generation loop for this model's device (CUDA: graph-captured batch-1 decode,
        which ``speculative`` leaves alone: it runs on the CPU)."""
        device = getattr(self.model, "device", None)
        if getattr(device, "type", "cpu") == "cuda":
            from inference_pio.nn.cuda_graph import cuda_stream_generate

            if speculative is not None:
                warnings.warn(
                    "speculative decoding runs on the CPU only (CUDA decodes with its captured "
                    "graph); decoding without it",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return cuda_stream_generate
        options: dict[str, Any] = {}
        if speculative is not None:
            options["speculative"] = speculative
        if self.prefix_cache is not None and not getattr(self.model, "hybrid", False):
            options["prefix_cache"] = self.prefix_cache
        return functools.partial(stream_generate, **options) if options else stream_generate

    def reuse_prefixes(self, on: bool = True) -> None:
        """Keeps each generation's KV cache for the next one (CPU models): a prompt that starts
        with the last prompt and reply, as a chat's next turn does, prefills only its new
        tokens (llama.cpp's ``cache_prompt``, one entry). The reused part was computed in
        other chunks than a full prefill would use, so the logits can differ in the last bits
        (bf16) from those of a fresh model: off by default, on in ``inference-pio chat``.
        ``on=False`` drops the kept cache."""
        self.prefix_cache = PrefixCache() if on else None

    def infer_batch(self, requests: Sequence[BatchRequest]) -> list[str]:
        return [r.text for r in self.generate_batch(requests)]

    def generate_batch(self, requests: Sequence[BatchRequest]) -> list[GenerationResult]:
        """Runs requests through a BatchManager (real batches); results in request order. On a
        CUDA device, requests that would decode alone (one request, or a batch size of 1) take
        the batch-1 path instead, whose fused decode step is faster than a batched step of one."""
        if isinstance(requests, (str, bytes, Mapping)):  # not a list: each char would be a request
            raise TypeError(
                f"generate_batch takes a list of requests, got one {type(requests).__name__} "
                "(use generate() for a single prompt, or wrap it in a list)"
            )
        manager = BatchManager(self.model, self.tokenizer, self.eos_ids, self.max_batch_size)
        parsed: list[tuple[list[int], SamplingParams]] = []
        for req in requests:
            if isinstance(req, str):
                prompt: Any = req
                options: dict[str, Any] = {}
            elif isinstance(req, Mapping):
                options = dict(req)
                if "prompt" not in options:
                    raise ValueError("a batch request mapping needs a 'prompt' key")
                prompt = options.pop("prompt")
            else:
                raise TypeError(f"batch requests are str or mappings, got {type(req).__name__}")
            parsed.append((self._prompt_ids(prompt), self.sampling_params(**options)))
            manager.submit(*parsed[-1])  # validates the request now
        on_cuda = getattr(getattr(self.model, "device", None), "type", "cpu") == "cuda"
        if on_cuda and (len(parsed) == 1 or self.max_batch_size == 1):
            results: list[GenerationResult] = []
            for ids, params in parsed:
                for _ in self._stream_fn()(
                    self.model, self.tokenizer, ids, params, self.eos_ids, on_finish=results.append
                ):
                    pass
            return results
        return manager.run()


def _token_id(value: Any) -> int:
    """A prompt token id: an integer (numpy integers too); 1.9, "7" or True are refused."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"prompt token ids must be integers, got {type(value).__name__} {value!r}"
        ) from None
