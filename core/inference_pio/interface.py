"""The interface every text model returned by a plugin implements."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: One entry of :meth:`TextModelPluginInterface.infer_batch`: a prompt, or a mapping with a
#: ``"prompt"`` key and optional sampling options (the keyword arguments of ``generate_text``).
BatchRequest = str | Mapping[str, Any]


class TextModelPluginInterface(abc.ABC):
    """A loaded text-generation model.

    Sampling keyword arguments accepted by the generation methods: ``max_new_tokens`` (int > 0),
    ``temperature`` (float ≥ 0, 0 = greedy), ``top_k`` (int ≥ 0, 0 = off), ``top_p`` (0 < p ≤ 1),
    ``min_p`` (0 ≤ p < 1), ``repetition_penalty`` (> 0), ``presence_penalty``,
    ``frequency_penalty``, ``seed`` (int), ``stop`` (list of strings). Invalid values raise
    ``ValueError`` before any work is done; unknown keywords raise ``TypeError``. Defaults come
    from the checkpoint's ``generation_config.json``.
    """

    #: Registered model name (for example ``"qwen3-0.6b"``).
    name: str = ""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens written in the text are recognised)."""

    @abc.abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; raises ``ValueError`` for ids outside the vocabulary."""

    @abc.abstractmethod
    def generate_text(self, prompt: str, **sampling: Any) -> str:
        """The completion of ``prompt`` (without the prompt itself)."""

    @abc.abstractmethod
    def stream_text(self, prompt: str, **sampling: Any) -> Iterator[str]:
        """Yields the completion in pieces as tokens are produced; pieces are valid UTF-8 and
        their concatenation equals ``generate_text`` with the same arguments and seed."""

    @abc.abstractmethod
    def infer_batch(self, requests: Sequence[BatchRequest]) -> list[str]:
        """Completions of several requests, run as batches; results are in request order."""
