"""Incremental decoding for streaming: complete characters only, no byte ever lost."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from inference_pio.tokenizer.utf8 import decode_utf8, incomplete_tail


class _Decodes(Protocol):
    def decode_bytes(
        self, ids: Iterable[int], skip_special_tokens: bool = False, keep: Collection[int] = ()
    ) -> bytes: ...


class StreamDecoder:
    """Turns ids, fed one or a few at a time, into text.

    ``add`` returns the text that is final so far; an unfinished UTF-8 sequence at the end is held
    back until the next ids complete it (or ``flush`` ends the stream, turning it into U+FFFD).
    The concatenation of every returned string equals ``tokenizer.decode(all_ids)``.
    ``keep``: special tokens that ``skip_special_tokens`` keeps.
    """

    def __init__(
        self, tokenizer: _Decodes, skip_special_tokens: bool = False, keep: Collection[int] = ()
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._keep = frozenset(keep)
        self._pending = b""

    def add(self, ids: int | Iterable[int]) -> str:
        """Feeds ids and returns the newly completed text (possibly "")."""
        batch = [ids] if isinstance(ids, int) else ids
        raw = (
            self._tokenizer.decode_bytes(batch, self._skip, self._keep)
            if self._keep
            else self._tokenizer.decode_bytes(batch, self._skip)
        )
        data = self._pending + raw
        hold = incomplete_tail(data)
        self._pending = data[len(data) - hold :] if hold else b""
        return decode_utf8(data[: len(data) - hold])

    def flush(self) -> str:
        """Ends the stream: returns whatever is held back (ill-formed bytes as U+FFFD)."""
        data, self._pending = self._pending, b""
        return decode_utf8(data)

    @property
    def pending(self) -> bytes:
        """Bytes held back, waiting for the rest of a character."""
        return self._pending
