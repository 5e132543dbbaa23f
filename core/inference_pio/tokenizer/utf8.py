"""UTF-8 decoding that matches tokenizers' lossy decoding and restores lone surrogates.

Ill-formed bytes become U+FFFD per maximal subpart, exactly as Rust's ``String::from_utf8_lossy``
(and Python's "replace"). The one exception is an encoded surrogate (ED A0..BF 80..BF), which the
encoder produces for a lone surrogate in the input: it decodes back to that surrogate, so that
``decode(encode(text)) == text`` holds for every Python string.
"""

from __future__ import annotations

import codecs
import re

ERRORS = "inference_pio.surrogates"


def _handler(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    data = exc.object
    start = exc.start
    if (
        start + 2 < len(data)
        and data[start] == 0xED
        and 0xA0 <= data[start + 1] <= 0xBF
        and 0x80 <= data[start + 2] <= 0xBF
    ):
        cp = 0xD000 | ((data[start + 1] & 0x3F) << 6) | (data[start + 2] & 0x3F)
        return chr(cp), start + 3
    return "\ufffd", exc.end


codecs.register_error(ERRORS, _handler)


def decode_utf8(data: bytes) -> str:
    """Decodes ``data`` as described in the module docstring."""
    return data.decode("utf-8", ERRORS)


def encode_utf8(text: str) -> bytes:
    """UTF-8 of ``text``; lone surrogates become their 3-byte encoding instead of an error."""
    return text.encode("utf-8", "surrogatepass")


def incomplete_tail(data: bytes | bytearray) -> int:
    """Length of a trailing UTF-8 sequence that is unfinished but could still become valid.

    Encoded surrogates count as valid (see the module docstring). Returns 0 when the data ends
    on a complete character or on bytes that can never become valid.
    """
    n = len(data)
    for back in range(1, min(3, n) + 1):
        b = data[n - back]
        if 0x80 <= b <= 0xBF:
            continue
        need = 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 0
        if need <= back:
            return 0
        lo, hi = 0x80, 0xBF
        if b == 0xE0:
            lo = 0xA0
        elif b == 0xF0:
            lo = 0x90
        elif b == 0xF4:
            hi = 0x8F
        tail = data[n - back + 1 :]
        if tail and not lo <= tail[0] <= hi:
            return 0
        return back
    return 0


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate (kept by the decoder for ids that encode one) as U+FFFD:
    what strict UTF-8 output (a terminal, JSON) can carry."""
    return _LONE_SURROGATE.sub("\ufffd", text)
