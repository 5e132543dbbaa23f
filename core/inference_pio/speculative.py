"""Prompt-lookup (n-gram) speculative decoding for one sequence (vLLM's ``ngram`` method,
llama.cpp's lookup decoding).

The draft is what followed the most recent earlier occurrence, in the prompt and the output so
far, of the last n tokens (n from ``prompt_lookup_max`` down to ``prompt_lookup_min``). The model
runs the latest token and the k draft tokens in one forward call that returns the logits of
every position (:meth:`~inference_pio.nn.decoder.DecoderModel.forward_all`); batch-1 decode is
bound by memory bandwidth, so k+1 positions cost about one step. Position i's token is then
drawn exactly as sequential decoding draws it (the same sampler, penalties, grammar mask and
random stream: one draw per generated token, in order), and the draft is accepted while the
drawn token equals it; the first drawn token that differs (or the one after a fully accepted
draft) is kept too, so each verification gains at least one token. The cache is cut back to
the tokens whose logits were used. Greedy and seeded sampled outputs, logprobs, stop strings,
stop ids, ``max_new_tokens`` and constraints are therefore exactly those of sequential decoding:
the CPU verification rows are bitwise those of decode steps.

Only where the cache can be cut back (every layer indexed by position: no recurrent state such
as Gated DeltaNet's) and the model offers ``forward_all`` on the CPU; elsewhere generation runs
as usual.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from inference_pio.tensor import Tensor

#: Draft tokens one verification may take at most (k + 1 rows stay within the small-call
#: buffers and the decode kernels of every block).
MAX_SPECULATIVE_TOKENS = 15
#: Longest n-gram looked up.
MAX_PROMPT_LOOKUP = 16

#: The keyword arguments :func:`pop_options` takes out of a ``generate`` call.
OPTION_NAMES = ("speculative", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding settings (vLLM's ``speculative_config`` names). ``method``: only
    ``"ngram"`` (prompt lookup); ``num_speculative_tokens``: draft tokens per verification
    (1..15); ``prompt_lookup_max`` / ``prompt_lookup_min``: the longest and shortest n-gram
    matched (1..16, min <= max)."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"invalid speculative decoding setting: {msg}")

        if self.method != "ngram":
            raise bad(f"method must be 'ngram' (prompt lookup), got {self.method!r}")
        for name, hi in (
            ("num_speculative_tokens", MAX_SPECULATIVE_TOKENS),
            ("prompt_lookup_max", MAX_PROMPT_LOOKUP),
            ("prompt_lookup_min", MAX_PROMPT_LOOKUP),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise bad(f"{name} must be an integer in [1, {hi}], got {value!r}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise bad(
                f"prompt_lookup_min ({self.prompt_lookup_min}) is larger than "
                f"prompt_lookup_max ({self.prompt_lookup_max})"
            )

    @classmethod
    def parse(cls, value: Any, **fields: Any) -> SpeculativeConfig | None:
        """A config from what ``generate`` takes: None (off), a :class:`SpeculativeConfig`, the
        method name ``"ngram"``, or a mapping of fields (vLLM's ``speculative_config`` dict);
        ``fields`` (None values ignored) override the defaults or the mapping's values."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if value is None:
            if fields:
                raise ValueError(f"{', '.join(sorted(fields))} given without speculative='ngram'")
            return None
        if isinstance(value, SpeculativeConfig):
            if not fields:
                return value
            base: dict[str, Any] = {
                "method": value.method,
                "num_speculative_tokens": value.num_speculative_tokens,
                "prompt_lookup_max": value.prompt_lookup_max,
                "prompt_lookup_min": value.prompt_lookup_min,
            }
        elif isinstance(value, str):
            base = {"method": value}
        elif isinstance(value, Mapping):
            base = {k: v for k, v in value.items() if v is not None}  # None: the default
            unknown = set(base) - {"method", *OPTION_NAMES[1:]}
            if unknown:
                raise ValueError(
                    f"unknown speculative decoding setting(s): {', '.join(sorted(unknown))}"
                )
        else:
            raise ValueError(
                "speculative must be None, 'ngram', a mapping or a SpeculativeConfig, got "
                f"{type(value).__name__}"
            )
        base.update(fields)
        if "prompt_lookup_max" in base and "prompt_lookup_min" not in base:
            base["prompt_lookup_min"] = min(cls.prompt_lookup_min, base["prompt_lookup_max"])
        if "prompt_lookup_min" in base and "prompt_lookup_max" not in base:
            base["prompt_lookup_max"] = max(cls.prompt_lookup_max, base["prompt_lookup_min"])
        return cls(**base)


def pop_options(options: MutableMapping[str, Any]) -> SpeculativeConfig | None:
    """Takes the speculative decoding keywords (:data:`OPTION_NAMES`) out of ``options`` (a
    ``generate`` call's keyword arguments) and returns their config (None: off)."""
    value = options.pop("speculative", None)
    fields = {name: options.pop(name, None) for name in OPTION_NAMES[1:]}
    return SpeculativeConfig.parse(value, **fields)


class NgramDrafter:
    """Drafts from the tokens seen so far: the continuation of the most recent earlier
    occurrence of the longest matching suffix n-gram. An index maps each n-gram to where its
    latest continuation starts, updated as tokens arrive (a draft costs a few dict lookups)."""

    def __init__(self, tokens: Sequence[int], config: SpeculativeConfig) -> None:
        self.lo, self.hi = config.prompt_lookup_min, config.prompt_lookup_max
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Appends ``tokens``. Each n-gram that ends just before a new token is indexed with
        that token's position: the current suffix itself is indexed only once a token follows
        it, so a lookup finds an earlier occurrence."""
        toks, index = self.tokens, self._index
        for t in tokens:
            p = len(toks)
            for n in range(self.lo, min(self.hi, p) + 1):
                index[tuple(toks[p - n : p])] = p
            toks.append(int(t))

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the longest
        suffix of ``prompt_lookup_min``..``prompt_lookup_max`` tokens; [] when none occurred."""
        toks = self.tokens
        size = len(toks)
        if limit <= 0:
            return []
        for n in range(min(self.hi, size - 1), self.lo - 1, -1):
            start = self._index.get(tuple(toks[size - n :]))
            if start is not None:
                return toks[start : start + limit]
        return []


@dataclass
class SpeculationStats:
    """What speculation did in one generation."""

    #: Verification calls (forward calls over more than one position).
    verifications: int = 0
    #: Draft tokens proposed, and how many of them were accepted.
    drafted: int = 0
    accepted: int = 0


def can_speculate(model: Any, cache: Any) -> bool:
    """Whether ``model`` can verify drafts into ``cache`` exactly: a CPU model with
    ``forward_all`` (all on one device) whose cache can be cut back (no recurrent state)."""
    from inference_pio.generation import PrefixCache

    device = getattr(getattr(model, "device", None), "type", "cpu")
    return (
        callable(getattr(model, "forward_all", None))
        and device == "cpu"
        and not getattr(model, "hybrid", False)
        and PrefixCache._rewindable(cache)
    )


def speculative_decode(
    model: Any,
    state: Any,
    capacity: int,
    logits: Tensor,
    config: SpeculativeConfig,
    stats: SpeculationStats,
) -> Iterator[str]:
    """The decode loop of :func:`~inference_pio.generation.stream_generate` with prompt-lookup
    speculation: ``state`` (a :class:`~inference_pio.generation.SequenceState` whose cache holds
    the prompt) first takes ``logits`` (the prefill's last row); yields the text pieces. Stops
    exactly where sequential decoding stops, with ``state.cache`` holding what it would hold."""
    cache = state.cache
    drafter = NgramDrafter(state.prompt_ids, config)
    seen = 0  # generated tokens given to the drafter
    rows = [logits]
    fed: list[int] = []  # the tokens run by the latest verification (fed[1:]: its draft)
    start = cache.length  # the cache length that rows[0] follows
    while True:
        for i, row in enumerate(rows):
            # row i follows the cache as it was with fed[:i+1] in it: cut back to that
            cache.length = start + i
            piece = state.accept(row)
            if piece:
                yield piece
            if state.finished or cache.length >= capacity:
                if not state.finished:
                    tail = state.end_at_capacity()
                    if tail:
                        yield tail
                return
            if i + 1 == len(rows) or state.generated[-1] != fed[i + 1]:
                break  # the bonus token, or a drawn token that differs from the draft
            stats.accepted += 1
        drafter.extend(state.generated[seen:])
        seen = len(state.generated)
        last = state.generated[-1]
        room = min(
            config.num_speculative_tokens,
            capacity - cache.length - 1,  # the cache must hold the latest token and the draft
            state.params.max_new_tokens - len(state.generated) - 1,  # more could not be used
        )
        draft = drafter.draft(room)
        fed = [last, *draft]
        start = cache.length + 1
        if draft:
            stats.verifications += 1
            stats.drafted += len(draft)
            rows = model.forward_all(fed, cache)
        else:
            (row,) = model.forward([([last], cache)])
            rows = [row]
