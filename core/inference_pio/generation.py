"""The generation loop shared by every model: prefill, decode, sampling, stopping, streaming.

A model exposes :class:`ForwardModel`: ``new_cache(capacity)`` and ``forward(batch)`` where
``batch`` is a list of ``(new_token_ids, cache)`` pairs; ``forward`` appends the new tokens to
each cache and returns the logits of each sequence's last new token. Prefill, decode and batched
decode are all the same call, so batching needs nothing model-specific.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from inference_pio.logprobs import TokenLogprob, token_logprobs
from inference_pio.sampling import Sampler, SamplingParams
from inference_pio.tensor import Tensor

if TYPE_CHECKING:
    from inference_pio.speculative import SpeculativeConfig
    from inference_pio.structured import GrammarState


class TokenCache(Protocol):
    """Per-sequence state a model keeps between forward calls (KV cache, recurrent state)."""

    length: int
    capacity: int


class ForwardModel(Protocol):
    """What the generation loop needs from a model."""

    vocab_size: int
    max_context: int

    def new_cache(self, capacity: int) -> Any: ...

    def forward(self, batch: Sequence[tuple[Sequence[int], Any]]) -> list[Tensor]: ...


class Detokenizer(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalText:
    """Turns a growing list of token ids into text pieces that never split a UTF-8 character.

    Uses the tokenizer's byte-exact :class:`~inference_pio.tokenizer.stream.StreamDecoder` when it
    has one; otherwise re-decodes a short window of recent tokens and holds back a trailing U+FFFD.
    ``skip_special_tokens`` drops special tokens except those in ``keep`` (the markup of a
    tool-call format whose tokens a tokenizer marks special).
    """

    def __init__(
        self,
        tokenizer: Detokenizer,
        skip_special_tokens: bool = True,
        keep: Collection[int] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the re-decode window
        self._read = 0  # tokens already turned into emitted text
        self._stream: Any = None
        self.keep_special(keep)

    def keep_special(self, keep: Collection[int]) -> None:
        """Keeps the special tokens ``keep`` in the text (before the first token only)."""
        if self.ids:
            raise RuntimeError("the special tokens to keep are set before the first token")
        self.keep: frozenset[int] = frozenset(int(i) for i in keep)
        if hasattr(self.tokenizer, "decode_bytes"):
            from inference_pio.tokenizer.stream import StreamDecoder

            self._stream = StreamDecoder(self.tokenizer, self.skip, self.keep)  # type: ignore[arg-type]

    def _decode(self, ids: Sequence[int]) -> str:
        """``ids`` decoded by a tokenizer without ``decode_bytes`` (special ones in
        :attr:`keep` kept, where the tokenizer says which ids are special)."""
        special = getattr(self.tokenizer, "special_ids", None)
        if special is None:
            special = getattr(self.tokenizer, "all_special_ids", None)
        if self.keep and self.skip and special is not None:
            dropped = set(special) - self.keep
            return self.tokenizer.decode([i for i in ids if i not in dropped], False)
        return self.tokenizer.decode(ids, self.skip)

    def push(self, token: int) -> str:
        self.ids.append(token)
        if self._stream is not None:
            return str(self._stream.add(token))
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        full_text = self._decode(self.ids[self._prefix :])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            return ""
        piece = full_text[len(prefix_text) :]
        self._prefix = self._read
        self._read = len(self.ids)
        return piece

    def flush(self) -> str:
        """Whatever remains (an incomplete character at the very end decodes to U+FFFD)."""
        if self._stream is not None:
            return str(self._stream.flush())
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        full_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return full_text[len(prefix_text) :]


class StopStrings:
    """Finds stop strings in streamed text; holds back text that may start one.

    Linear in the text: a stop can only start in the part not shown yet (text that could start
    one is held back), so only that tail is searched, and shown text is kept in pieces.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._shown: list[str] = []
        self._tail = ""  # not shown yet: it may start a stop string
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything pushed so far, cut at the stop string once one was found."""
        return "".join(self._shown) + self._tail

    def _show(self, out: str) -> str:
        if out:
            self._shown.append(out)
        return out

    def push(self, piece: str) -> str:
        """Adds text; returns what may be shown now."""
        if self.stopped:
            return ""
        tail = self._tail + piece
        if not self.stops:
            self._tail = ""
            return self._show(tail)
        # the stop that completes first (then the one that starts first), whatever the pieces:
        # streaming character by character would meet that one first
        hits = [(i + len(s), i) for s in self.stops if (i := tail.find(s)) >= 0]
        if hits:
            self._tail = ""
            self.stopped = True
            return self._show(tail[: min(hits)[1]])
        keep = max(_prefix_at_end(tail, s) for s in self.stops)
        self._tail = tail[len(tail) - keep :]
        return self._show(tail[: len(tail) - keep])

    def flush(self) -> str:
        out, self._tail = self._tail, ""
        return self._show(out)


def _prefix_at_end(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that starts ``stop`` (shorter than ``stop``)."""
    n = len(text)
    p = text.find(stop[0], max(0, n - len(stop) + 1))
    while p != -1:
        if stop.startswith(text[p:]):
            return n - p
        p = text.find(stop[0], p + 1)
    return 0


class TextPiece(str):
    """A streamed text piece of a request with ``logprobs``: the text, and in ``logprobs`` the
    entries of the tokens whose text it is the first to carry (tokens whose text was held back,
    an unfinished UTF-8 character or a possible stop string, come with a later piece; what no
    piece carried is in the result's :attr:`GenerationResult.logprobs` after them)."""

    logprobs: tuple[TokenLogprob, ...]

    def __new__(cls, text: str, logprobs: Sequence[TokenLogprob] = ()) -> TextPiece:
        piece = super().__new__(cls, text)
        piece.logprobs = tuple(logprobs)
        return piece


@dataclass
class GenerationResult:
    """The outcome of one generation request. ``logprobs``: one :class:`TokenLogprob` per token
    of ``token_ids`` when the request asked for them (``SamplingParams.logprobs``), else None."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (eos or stop string), "length"
    time_to_first_token_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    logprobs: list[TokenLogprob] | None = None
    #: Prompt tokens taken from a kept cache instead of prefilled (prefix caching).
    cached_tokens: int = 0
    #: Speculative decoding: draft tokens verified, and how many of them were accepted.
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = len(self.token_ids) - 1
        return n / self.decode_s if self.decode_s > 0 and n > 0 else 0.0


@dataclass
class SequenceState:
    """One request in flight: its cache, sampler, generated tokens and text."""

    prompt_ids: list[int]
    params: SamplingParams
    eos_ids: frozenset[int]
    detok: IncrementalText
    cache: Any = None
    sampler: Sampler = field(init=False)
    stops: StopStrings = field(init=False)
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float = 0.0
    prefill_done_at: float = 0.0
    #: One entry per generated token when ``params.logprobs`` is set (see :meth:`accept`).
    logprobs: list[TokenLogprob] = field(default_factory=list)
    _logprobs_shown: int = 0  # entries already handed out with a TextPiece
    #: Prompt tokens its cache held when it was admitted (prefix caching): not prefilled.
    cached_tokens: int = 0

    #: The matcher of a request with ``params.constraint`` (made here unless given: a
    #: BatchManager makes it when the request is submitted, so that its errors come first).
    grammar: GrammarState | None = None

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.params, self.prompt_ids)
        self.stops = StopStrings(self.params.stop)
        if self.params.keep_special_ids:
            self.detok.keep_special(self.params.keep_special_ids)
        if self.params.constraint is not None and self.grammar is None:
            self.grammar = new_grammar(self.params, self.detok.tokenizer, self.eos_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def wants_logits(self) -> bool:
        """Whether each token needs its logits row (the request asked for logprobs, or its
        output is constrained: the row is masked before the draw): such a sequence must go
        through :meth:`accept`, never a path that only gives token ids."""
        return self.params.logprobs is not None or self.grammar is not None

    def accept(self, logits: Tensor) -> str:
        """Samples the next token from ``logits``; returns the text that may be shown now (a
        :class:`TextPiece` with the tokens' logprobs when the request asked for them, computed
        from ``logits`` on its device). A constrained request draws from the row masked to the
        tokens its grammar allows (in place, unless logprobs need the raw row: they are those
        of the model's logits, as vLLM's)."""
        row = logits
        if self.grammar is not None:
            row = self.grammar.mask(logits, in_place=self.params.logprobs is None)
        token = self.sampler.sample(row)
        entry = None
        if self.params.logprobs is not None:
            entry = token_logprobs(logits, token, self.params.logprobs)
        return self.accept_token(token, entry)

    def accept_token(self, token: int, logprob: TokenLogprob | None = None) -> str:
        """Takes ``token`` (sampled by the caller with this sequence's sampler settings) as the
        next one; returns the text that may be shown now. ``logprob``: its entry, required when
        the request asked for logprobs (a path that has no logits row must not take it)."""
        if self.params.logprobs is not None and logprob is None:
            raise RuntimeError(
                "a request with logprobs needs each token's logits row; this generation path "
                "gave only the token id"
            )
        now = time.perf_counter()
        if self.grammar is not None:
            self.grammar.advance(token)  # a token its grammar refuses raises: nothing changed
        if not self.generated:
            self.first_token_at = now
        self.generated.append(token)
        self.sampler.observe(token)
        # ignore_eos (vLLM's) ignores the model's eos ids, not the request's stop_token_ids;
        # a grammar allows eos only where the output is complete
        eos = token in self.eos_ids and (not self.params.ignore_eos or self.grammar is not None)
        if eos or token in self.params.stop_token_ids:
            self.finish_reason = "stop"
            self.generated.pop()  # the eos token is not part of the output
            return self.with_logprobs(self.stops.push(self.detok.flush()) + self.stops.flush())
        if logprob is not None:
            self.logprobs.append(logprob)
        piece = self.stops.push(self.detok.push(token))
        if self.stops.stopped:
            self.finish_reason = "stop"
        elif self.grammar is not None and self.grammar.done:
            # complete: only eos could follow (vLLM would draw it next)
            self.finish_reason = "stop"
            piece += self.stops.push(self.detok.flush())
            if not self.stops.stopped:
                piece += self.stops.flush()
        elif len(self.generated) >= self.params.max_new_tokens:
            self.finish_reason = "length"
            piece += self.stops.push(self.detok.flush())
            if not self.stops.stopped:
                piece += self.stops.flush()
        return self.with_logprobs(piece)

    def end_at_capacity(self) -> str:
        """Ends the sequence with ``finish_reason`` "length" when its cache is full (the
        context's limit, not max_new_tokens) and returns the text held back until then."""
        self.finish_reason = "length"
        return self.with_logprobs(self.stops.push(self.detok.flush()) + self.stops.flush())

    def with_logprobs(self, text: str) -> str:
        """``text`` as a :class:`TextPiece` with the logprobs not handed out yet (unchanged for
        a request without logprobs, or empty text)."""
        if not text or self.params.logprobs is None:
            return text
        entries = self.logprobs[self._logprobs_shown :]
        self._logprobs_shown = len(self.logprobs)
        return TextPiece(text, entries)

    def result(self, end: float) -> GenerationResult:
        return GenerationResult(
            text=self.stops.text,
            token_ids=list(self.generated),
            prompt_tokens=len(self.prompt_ids),
            finish_reason=self.finish_reason or "length",
            time_to_first_token_s=(self.first_token_at - self.started)
            if self.first_token_at
            else 0.0,
            prefill_s=(self.prefill_done_at - self.started) if self.prefill_done_at else 0.0,
            decode_s=(end - self.first_token_at) if self.first_token_at else 0.0,
            logprobs=list(self.logprobs) if self.params.logprobs is not None else None,
            cached_tokens=self.cached_tokens,
        )


def new_grammar(params: SamplingParams, tokenizer: Any, eos_ids: Iterable[int]) -> GrammarState:
    """The matcher of a request with ``params.constraint`` over ``tokenizer``'s vocabulary
    (ValueError: a tokenizer without token bytes, no EOS id, a grammar llguidance refuses;
    :class:`~inference_pio.structured.StructuredOutputsUnavailable` without llguidance)."""
    from inference_pio.structured import GrammarState

    if params.constraint is None:
        raise ValueError("the request has no constraint")
    return GrammarState(params.constraint, tokenizer, sorted(eos_ids))


def check_context(model: ForwardModel, prompt_len: int, params: SamplingParams) -> int:
    """Cache capacity for a request; raises ValueError when the prompt does not fit. A request
    stops at prompt + output = the model's context (vLLM's max_model_len rule): the last token
    needs no cache slot, so the cache holds at most context - 1 tokens."""
    if prompt_len == 0:
        raise ValueError("the prompt is empty (no tokens)")
    if prompt_len >= model.max_context:
        raise ValueError(
            f"prompt has {prompt_len} tokens; the model's context is {model.max_context} tokens"
        )
    return min(model.max_context - 1, prompt_len + params.max_new_tokens)


class PrefixCache:
    """The last request's cache and the token ids it holds, kept for a next request whose prompt
    starts the same way (a chat's next turn, an agent's growing conversation): only the new part
    of that prompt is prefilled (llama.cpp's cache_prompt, vLLM's prefix caching, one entry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[int] = []
        self._cache: Any = None

    @staticmethod
    def _rewindable(cache: Any) -> bool:
        """Whether the cache can be cut back to fewer tokens (every layer indexed by position:
        a recurrent state cannot be rewound)."""
        from inference_pio.nn.attention import KVCache
        from inference_pio.nn.mla import LatentCache

        layers = getattr(cache, "layers", None)
        return layers is not None and all(isinstance(c, (KVCache, LatentCache)) for c in layers)

    def take(self, model: ForwardModel, prompt: list[int], capacity: int) -> tuple[Any, int]:
        """A cache for ``prompt`` and how many of its first tokens it already holds."""
        with self._lock:
            cache, ids = self._cache, self._ids
            self._cache, self._ids = None, []
        if cache is None or not hasattr(cache, "layers") or cache.position_offset:
            return model.new_cache(capacity), 0  # nothing kept, or positions of a VL prompt
        held = min(cache.length, len(ids))
        n = 0
        limit = min(held, len(prompt) - 1)  # the last prompt token always runs (its logits)
        while n < limit and ids[n] == prompt[n]:
            n += 1
        if n < cache.length and not self._rewindable(cache):
            n = 0
        if n == 0:
            return model.new_cache(capacity), 0
        cache.length = n
        if cache.capacity < capacity:
            fresh = model.new_cache(capacity)
            if not cache.copyable_to(fresh):
                return fresh, 0
            cache.copy_into(fresh)
            cache = fresh
        return cache, n

    def put(self, ids: list[int], cache: Any) -> None:
        with self._lock:
            self._ids, self._cache = ids, cache


def stream_generate(
    model: ForwardModel,
    detokenizer: Detokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    eos_ids: Sequence[int] = (),
    on_finish: Callable[[GenerationResult], None] | None = None,
    prefill: Callable[[Any], Tensor] | None = None,
    prefix_cache: PrefixCache | None = None,
    speculative: SpeculativeConfig | None = None,
) -> Iterator[str]:
    """Generates for one prompt, yielding text pieces as they become final. ``prefill(cache)``,
    when given, runs the prompt into the new cache instead of ``model.forward`` and returns the
    last logits (a multimodal prefill: the model embeds more than the token ids).
    ``speculative``: decode with prompt-lookup speculation where the model and its cache allow
    it (:mod:`inference_pio.speculative`; the output is the same)."""
    prompt = list(prompt_ids)
    capacity = check_context(model, len(prompt), params)
    state = SequenceState(prompt, params, frozenset(eos_ids), IncrementalText(detokenizer))
    reused = 0
    if prefix_cache is not None and prefill is None:
        state.cache, reused = prefix_cache.take(model, prompt, capacity)
        state.cached_tokens = reused
    else:
        state.cache = model.new_cache(capacity)
    keep = prefix_cache is not None and prefill is None
    try:
        if prefill is not None:
            logits = prefill(state.cache)
        else:
            (logits,) = model.forward([(prompt[reused:], state.cache)])
        state.prefill_done_at = time.perf_counter()
        spec_stats = None
        if speculative is not None:
            from inference_pio import speculative as spec

            if spec.can_speculate(model, state.cache):
                spec_stats = spec.SpeculationStats()
                yield from spec.speculative_decode(
                    model, state, capacity, logits, speculative, spec_stats
                )
        while spec_stats is None:
            piece = state.accept(logits)
            if piece:
                yield piece
            if state.finished or state.cache.length >= capacity:
                if not state.finished:
                    tail = state.end_at_capacity()
                    if tail:
                        yield tail
                break
            (logits,) = model.forward([([state.generated[-1]], state.cache)])
    except BaseException as exc:
        # a stream closed early (a client gone, Ctrl-C in chat) stopped at a yield: its cache
        # holds exactly its first cache.length tokens. So does a cache indexed by position
        # after a forward call that raised (the length moves once a call is done); a recurrent
        # state such a call may have advanced is not kept.
        if keep and (isinstance(exc, GeneratorExit) or PrefixCache._rewindable(state.cache)):
            assert prefix_cache is not None
            prefix_cache.put((prompt + state.generated)[: state.cache.length], state.cache)
        raise
    if keep:
        assert prefix_cache is not None
        held = prompt + state.generated
        prefix_cache.put(held[: state.cache.length], state.cache)
    if on_finish is not None:
        result = state.result(time.perf_counter())
        if spec_stats is not None:
            result.draft_tokens = spec_stats.drafted
            result.accepted_draft_tokens = spec_stats.accepted
        on_finish(result)
