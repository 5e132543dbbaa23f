"""Splits text on added tokens before BPE, like tokenizers' AddedVocabulary.

Matching is leftmost-longest over the raw text for tokens with ``normalized: false`` and over the
normalized text for the others; ``lstrip``/``rstrip`` absorb neighbouring whitespace and
``single_word`` tokens match only between non-word characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from inference_pio.tokenizer.spec import AddedToken

#: A piece of text to run through BPE (str) or the id of an added token (int).
Piece = str | int


class AddedTokenSplitter:
    """Finds one group of added tokens in text."""

    def __init__(self, tokens: Sequence[AddedToken]) -> None:
        self._by_content = {t.content: t for t in tokens}
        self._single_word = any(t.single_word for t in tokens)
        alternatives = []
        for t in sorted(tokens, key=lambda t: -len(t.content)):
            alt = re.escape(t.content)
            if t.lstrip:
                alt = r"\s*" + alt
            if t.rstrip:
                alt = alt + r"\s*"
            alternatives.append(f"(?:{alt})")
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None

    def _token_of(self, match: str) -> AddedToken:
        token = self._by_content.get(match) or self._by_content.get(match.strip())
        if token is None:  # lstrip/rstrip absorbed whitespace; find the content inside
            token = next(t for c, t in self._by_content.items() if c in match)
        return token

    def split(self, text: str) -> Iterator[Piece]:
        """Yields text pieces and added-token ids in order."""
        if self._pattern is None:
            if text:
                yield text
            return
        pos = 0
        for m in self._pattern.finditer(text):
            token = self._token_of(m.group())
            if token.single_word and not _is_single_word(text, m.start(), m.end()):
                continue
            if m.start() > pos:
                yield text[pos : m.start()]
            yield token.id
            pos = m.end()
        if pos < len(text):
            yield text[pos:]


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _is_single_word(text: str, start: int, end: int) -> bool:
    before = start == 0 or not _is_word_char(text[start - 1])
    after = end == len(text) or not _is_word_char(text[end])
    return before and after
