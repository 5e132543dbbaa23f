"""llguidance's view of a tokenizer: each token id's bytes, the special tokens and the EOS ids,
built once per tokenizer (about half a second for Qwen's 151k tokens) and cached."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from inference_pio.structured.constraint import require_llguidance

_cache: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class _TokenSource:
    """What llguidance's ``TokenizerWrapper`` reads from a tokenizer: the bytes of every id
    (b"" for ids not in use), the special ids (never matched by grammar text), the EOS id and
    an encoder of text to ids."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int]) -> None:
        size = int(tokenizer.vocab_size)
        self.tokens = [bytes(tokenizer.token_bytes(i)) for i in range(size)]
        self.special_token_ids = sorted(int(i) for i in getattr(tokenizer, "special_ids", ()))
        self.eos_token_id = int(eos_ids[0])
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return [int(i) for i in self._tokenizer.encode(text, add_special_tokens=False)]


def eos_for(tokenizer: Any, eos_ids: Sequence[int]) -> tuple[int, ...]:
    """The ids that end a constrained output: the model's EOS ids, else the tokenizer's
    ``eos_token``; ValueError when there is none (a grammar ends only with an EOS token)."""
    ids = tuple(int(i) for i in eos_ids)
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids = (int(tokenizer.eos_token_id),)
    if not ids:
        raise ValueError("constrained decoding needs an EOS token; this model has none")
    return ids


def ll_tokenizer(tokenizer: Any, eos_ids: Sequence[int]) -> Any:
    """The ``llguidance.LLTokenizer`` of ``tokenizer`` (an :class:`inference_pio.tokenizer.
    Tokenizer`, or any object with ``vocab_size``, ``token_bytes(id)``, ``special_ids`` and
    ``encode``) with ``eos_ids`` as its EOS tokens; cached per tokenizer and EOS ids."""
    llg = require_llguidance()
    if not hasattr(tokenizer, "token_bytes") or not hasattr(tokenizer, "vocab_size"):
        raise ValueError(
            "constrained decoding needs a tokenizer that gives each token's bytes "
            f"(token_bytes); {type(tokenizer).__name__} does not"
        )
    eos = eos_for(tokenizer, eos_ids)
    with _lock:
        per = _cache.setdefault(tokenizer, {})
        found = per.get(eos)
        if found is None:
            source = _TokenSource(tokenizer, eos)
            bad = [i for i in eos if not 0 <= i < len(source.tokens)]
            if bad:
                raise ValueError(f"EOS id {bad[0]} is outside the tokenizer's vocabulary")
            wrapper = llg.TokenizerWrapper(source)
            try:
                found = llg.LLTokenizer(wrapper, eos_token=list(eos))
            except TypeError:  # llguidance before 1.7 takes one EOS id: the grammar ends on it
                found = llg.LLTokenizer(wrapper, eos_token=eos[0])
            per[eos] = found
    return found


__all__ = ["eos_for", "ll_tokenizer"]
