"""NFC exactly as Hugging Face tokenizers applies it.

tokenizers normalizes with the ``unicode-normalization-alignments`` crate, whose tables predate
Unicode 10. Characters it does not know have combining class 0 and no decomposition there, so
they block reordering and composition. Python's ``unicodedata`` knows them; to match tokenizers we
normalize the text between such characters and keep them as they are. The list below holds the
characters (assigned in Unicode 10..14) whose normalization properties differ; a unit test
re-measures it against the installed tokenizers.
"""

from __future__ import annotations

import re
import unicodedata

#: Inclusive code point ranges unknown to tokenizers' normalizer that matter for NFC.
UNKNOWN_TO_TOKENIZERS: tuple[tuple[int, int], ...] = (
    (0x07FD, 0x07FD),
    (0x0898, 0x089F),
    (0x08CA, 0x08D3),
    (0x09FE, 0x09FE),
    (0x0C3C, 0x0C3C),
    (0x0D3B, 0x0D3C),
    (0x0EBA, 0x0EBA),
    (0x1715, 0x1715),
    (0x1ABF, 0x1ACE),
    (0x1DF6, 0x1DFA),
    (0xA82C, 0xA82C),
    (0x10D24, 0x10D27),
    (0x10EAB, 0x10EAC),
    (0x10F46, 0x10F50),
    (0x10F82, 0x10F85),
    (0x11070, 0x11070),
    (0x1133B, 0x1133B),
    (0x1145E, 0x1145E),
    (0x11839, 0x1183A),
    (0x11930, 0x11930),
    (0x11935, 0x11935),
    (0x1193D, 0x1193E),
    (0x11943, 0x11943),
    (0x119E0, 0x119E0),
    (0x11A34, 0x11A34),
    (0x11A47, 0x11A47),
    (0x11A99, 0x11A99),
    (0x11D42, 0x11D42),
    (0x11D44, 0x11D45),
    (0x11D97, 0x11D97),
    (0x16FF0, 0x16FF1),
    (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF),
)

_SPLIT = re.compile(
    "(["
    + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in UNKNOWN_TO_TOKENIZERS)
    + "])"
)


def _nfc(text: str) -> str:
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def nfc(text: str) -> str:
    """NFC of ``text`` as tokenizers' NFC normalizer computes it."""
    if text.isascii() or (unicodedata.is_normalized("NFC", text) and _SPLIT.search(text) is None):
        return text
    if "\n" in text:  # nothing composes or reorders across a line feed: normalize line by line
        return "\n".join(map(_nfc_unknown, text.split("\n")))
    return _nfc_unknown(text)


def _nfc_unknown(text: str) -> str:
    if _SPLIT.search(text) is None:
        return _nfc(text)
    parts = _SPLIT.split(text)
    return "".join(p if k % 2 else _nfc(p) for k, p in enumerate(parts))
