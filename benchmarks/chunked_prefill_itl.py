"""Inter-token latency of a running stream while a long prompt arrives, with and without chunked
prefill (``BatchManager(max_num_batched_tokens=...)``), on a small random Qwen3 (8 layers, hidden
512, bf16; made once under a temporary directory) on this machine's CPU.

A request streams (one text piece a token: the benchmark's detokenizer gives one character a
token); once it has decoded steadily, a ``--prompt-tokens`` prompt is submitted beside it. Per
run: the largest gap between two of the stream's tokens from the submit until the long request's
first token, the stream's median gap before the submit, and the long request's time to first
token. The budgets run alternately, ``--repeats`` times each; medians are printed.

    python benchmarks/chunked_prefill_itl.py [--prompt-tokens 4096] [--budgets 0,512,256]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference_pio.batching import BatchManager
from inference_pio.sampling import SamplingParams

CONFIG = dict(
    vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
    num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=8192,
    rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
)  # fmt: skip


class OneCharPerToken:
    """A detokenizer whose text has one character a token (every token is a streamed piece)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "x" * len(ids)


def load(directory: Path) -> Any:
    import torch
    import transformers

    from inference_pio.testing.tiny import save_tiny_causal_lm
    from inference_pio_qwen3_0_6b.model import load as load_qwen3

    cfg = transformers.Qwen3Config(**CONFIG)
    save_tiny_causal_lm(directory, transformers.Qwen3ForCausalLM, cfg, dtype=torch.bfloat16)
    return load_qwen3(directory)


def one_run(lm: Any, budget: int, prompt_tokens: int) -> tuple[float, float, float]:
    """(largest gap while the long prompt prefills, median gap before it, its TTFT), seconds."""
    manager = BatchManager(
        lm.model,
        OneCharPerToken(),
        (),
        4,
        max_num_batched_tokens=budget,
        max_prefill_tokens=1 << 20,
    )
    stop = threading.Event()
    engine = threading.Thread(target=manager.serve, args=(stop,), daemon=True)
    engine.start()
    times: list[float] = []
    warm = threading.Event()
    done = threading.Event()
    ttft: list[float] = []

    def on_piece(i: int, text: str) -> None:
        times.append(time.perf_counter())
        if len(times) == 24:
            warm.set()

    def on_long_piece(i: int, text: str) -> None:
        if not ttft:
            ttft.append(time.perf_counter())
            done.set()

    stream = manager.submit(
        [(7 * i + 3) % 4000 for i in range(16)],
        SamplingParams(temperature=0.0, max_new_tokens=100_000, ignore_eos=True),
        on_piece=on_piece,
    )
    try:
        warm.wait(120)
        before = [b - a for a, b in itertools.pairwise(times)]
        submitted = time.perf_counter()
        manager.submit(
            [(13 * i + 5) % 4000 for i in range(prompt_tokens)],
            SamplingParams(temperature=0.0, max_new_tokens=2, ignore_eos=True),
            on_piece=on_long_piece,
        )
        done.wait(600)
        time.sleep(0.2)  # a few more tokens of the stream after the prefill
        manager.cancel(stream)
    finally:
        stop.set()
        engine.join(60)
    during = [t for t in times if t >= submitted]
    marks = [submitted, *during]
    gaps = [b - a for a, b in itertools.pairwise(marks) if a <= ttft[0]]
    return max(gaps), statistics.median(before), ttft[0] - submitted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-tokens", type=int, default=4096)
    ap.add_argument("--budgets", default="0,512,256", help="comma-separated (0: chunking off)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        lm = load(Path(tmp))
        one_run(lm, 256, 300)  # warm-up
        runs: dict[int, list[tuple[float, float, float]]] = {b: [] for b in budgets}
        for r in range(args.repeats):
            for b in budgets if r % 2 == 0 else reversed(budgets):
                runs[b].append(one_run(lm, b, args.prompt_tokens))
                print(f"  budget {b:5d}: " + ", ".join(f"{x:.3f}" for x in runs[b][-1]), flush=True)
    print(f"\n{args.prompt_tokens}-token prompt beside a stream (medians of {args.repeats} runs):")
    print("budget  max gap during prefill  stream ITL before  long prompt TTFT")
    for b in budgets:
        gap, itl, ttft = (statistics.median(x[k] for x in runs[b]) for k in range(3))
        name = "off" if b == 0 else str(b)
        print(f"{name:>6}  {gap * 1e3:17.0f} ms  {itl * 1e3:14.1f} ms  {ttft:14.2f} s")


if __name__ == "__main__":
    main()
