"""Hugging Face-compatible byte-level BPE tokenizer with a native pre-tokenizer and merge loop.

``Tokenizer.from_pretrained(checkpoint_dir)`` reads tokenizer.json and tokenizer_config.json.
"""

from __future__ import annotations

from inference_pio.tokenizer.spec import AddedToken, TokenizerSpec, load_spec
from inference_pio.tokenizer.stream import StreamDecoder
from inference_pio.tokenizer.tokenizer import Tokenizer

__all__ = ["AddedToken", "StreamDecoder", "Tokenizer", "TokenizerSpec", "load_spec"]
