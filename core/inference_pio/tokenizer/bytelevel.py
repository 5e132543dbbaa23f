"""The byte-level alphabet of GPT-2-style BPE: every byte has a printable stand-in character."""

from __future__ import annotations

from functools import cache


@cache
def byte_to_char() -> tuple[str, ...]:
    """``byte_to_char()[b]`` is the character that stands for byte ``b`` in vocab strings."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 0x100 + extra
            extra += 1
    return tuple(chr(table[b]) for b in range(256))


@cache
def char_to_byte() -> dict[str, int]:
    """The inverse of :func:`byte_to_char`."""
    return {c: b for b, c in enumerate(byte_to_char())}


@cache
def _to_latin1() -> dict[int, str]:
    """str.translate table: each alphabet character to the Latin-1 character of its byte, every
    other code point below 256 to one above it (so the Latin-1 encode that follows rejects it)."""
    table = {ord(c): chr(b) for b, c in enumerate(byte_to_char())}
    for cp in range(256):
        table.setdefault(cp, "\uffff")
    return table


def token_bytes(token: str) -> bytes | None:
    """The raw bytes a byte-level vocab string stands for, or None if it is not byte-level."""
    try:
        return token.translate(_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        return None


def decoded_bytes(token: str) -> bytes:
    """What tokenizers' ByteLevel decoder makes of one token: mapped bytes, else its UTF-8."""
    raw = token_bytes(token)
    return raw if raw is not None else token.encode("utf-8", "surrogatepass")


def encode_bytes(data: bytes) -> str:
    """The byte-level vocab string of raw bytes."""
    table = byte_to_char()
    return "".join(table[b] for b in data)
