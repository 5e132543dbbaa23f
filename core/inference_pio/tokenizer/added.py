"""Splits text on added tokens before BPE, like tokenizers' AddedVocabulary.

The contents are matched leftmost-longest (over the raw text for tokens with
``normalized: false``, over the normalized text for the others) and only then do the flags act,
in tokenizers' order: a ``single_word`` match with a word character next to it is dropped (its
text stays ordinary text, and no other token is looked for inside it); ``lstrip`` takes the
whitespace before the token (not past the previous token) and ``rstrip`` the whitespace after it
(a token left with no text of its own is dropped, as tokenizers drops empty pieces).
Word characters and whitespace are those of the regex crate's Unicode ``\\w`` and ``\\s``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence

from inference_pio.tokenizer.spec import AddedToken

#: A piece of text to run through BPE (str) or the id of an added token (int).
Piece = str | int

#: Symbols (So) that are Other_Alphabetic, hence ``\w``: circled, parenthesized, squared and
#: negative-squared Latin letters.
_ALPHABETIC_SYMBOLS = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189))


def is_word_char(ch: str) -> bool:
    """``\\w`` of the regex crate: Alphabetic, marks, decimal digits, connector punctuation and
    the join controls (Python's ``str.isalnum`` also takes other numbers such as ``²``)."""
    cat = unicodedata.category(ch)
    if cat[0] in "LM" or cat in ("Nd", "Nl", "Pc") or ch in "\u200c\u200d":
        return True
    if cat == "So":
        cp = ord(ch)
        return any(lo <= cp <= hi for lo, hi in _ALPHABETIC_SYMBOLS)
    return False


def is_white_space(ch: str) -> bool:
    """Unicode White_Space (``\\s``): ``str.isspace`` without the separators U+001C..U+001F."""
    return ch.isspace() and not "\x1c" <= ch <= "\x1f"


class AddedTokenSplitter:
    """Finds one group of added tokens in text."""

    def __init__(self, tokens: Sequence[AddedToken]) -> None:
        self._by_content = {t.content: t for t in tokens if t.content}
        contents = sorted(self._by_content, key=len, reverse=True)  # longest first at a position
        self._pattern = re.compile("|".join(map(re.escape, contents))) if contents else None

    def split(self, text: str) -> Iterator[Piece]:
        """Yields text pieces and added-token ids in order."""
        if self._pattern is None:
            if text:
                yield text
            return
        done = 0  # end of what has been yielded
        for m in self._pattern.finditer(text):
            start, stop = m.span()
            token = self._by_content[m.group()]
            if token.single_word and (
                (start > 0 and is_word_char(text[start - 1]))
                or (stop < len(text) and is_word_char(text[stop]))
            ):
                continue
            if token.lstrip:  # back over whitespace, then never before the end of the last piece
                while start > 0 and is_white_space(text[start - 1]):
                    start -= 1
                start = max(start, done)
            if token.rstrip:
                while stop < len(text) and is_white_space(text[stop]):
                    stop += 1
            if start > done:
                yield text[done:start]
            if start < stop:  # tokenizers drops empty pieces: a token whose text an rstrip took
                yield token.id
            done = stop  # as tokenizers (smaller than before only for whitespace-only tokens)
        if done < len(text):
            yield text[done:]
