"""Batch-1 decode rate of the fused CUDA step with the CUDA library named by INFERENCE_PIO_LIB.

One line per call, for `benchmarks/gpu_ab.sh`, which times several builds alternately in one run:

    RATE <label> 0.6b <tok/s> 4b <tok/s>

Each model: synthetic real-size bf16 weights, a captured fused step, a warm-up, then the median
of 5 runs of 128 greedy tokens after a 32-token prompt (the decode row of benchmark_gpu.py;
--prompt N for longer contexts).
With --check, first the fused step's logits after prompts of 40 and 160 tokens (and --prompt's
length where it is longer) are compared with
the multi-kernel step's (relative error and argmax; printed as a CHECK line, and the exit status is
1 if the argmax differs or the error exceeds 5e-2): a kernel variant that is fast but wrong at the
real size shows up here. The two paths round at the same points but sum in different orders, and
through 28-36 bf16 layers of synthetic weights that leaves ~1.3e-2 (0.6B) and ~3.2e-2 (4B); a
broken kernel gives errors of order 1.

    PYTHONPATH=core:plugins/qwen3_0_6b:plugins/qwen3_4b_instruct_2507:benchmarks \
      python benchmarks/gpu_decode_rate.py LABEL [--models 0.6b,4b] [--threads 0|384|512] [--check]
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from benchmark_gpu import build_ours, real_config, replay_rate

from inference_pio.nn.cuda_graph import CudaGraphDecoder

NEW, RUNS = 128, 5


def rate(name: str, threads: int, prompt: int) -> float:
    """Median tok/s of the fused step for model `name` (see the module docstring)."""
    model, _ = build_ours(real_config(name))
    runner = CudaGraphDecoder(model, prompt + NEW + 1, chunk=NEW, fused=True, threads=threads)
    runner.greedy(5, prompt, 8)  # warm-up
    rates = [replay_rate(runner, prompt, NEW) for _ in range(RUNS)]
    del runner, model
    return statistics.median(rates)


def compare_steps(
    model: Any, make: Callable[[bool, int], Any], lengths: Sequence[int]
) -> tuple[float, bool]:
    """Worst relative logits error of the step ``make(True, capacity)`` against the step
    ``make(False, capacity)`` (graph runners over ``model``), and whether every argmax agrees,
    after prompts of each of ``lengths`` tokens."""
    worst, same = 0.0, True
    for plen in lengths:
        prompt = [(7 * i + 11) % 100000 for i in range(plen)]
        got = []
        for first in (True, False):
            runner = make(first, plen + 8)
            runner.cache.length = 0
            model.forward([(prompt, runner.cache)])
            got.append(runner.logits_after(7, plen).to("cpu").to("f32").tolist())
            del runner
        a, b = got
        num = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
        worst = max(worst, num / math.sqrt(sum(y * y for y in b)))
        same = same and a.index(max(a)) == b.index(max(b))
    return worst, same


def check(model: Any, threads: int, prompt: int) -> tuple[float, bool]:
    """:func:`compare_steps` of the fused step against the multi-kernel step after prompts of
    40, 160 and (if longer) `prompt` tokens."""
    return compare_steps(
        model,
        lambda fused, cap: CudaGraphDecoder(
            model, cap, fused=fused, threads=threads if fused else 0
        ),
        (40, 160, *((prompt,) if prompt > 160 else ())),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("label", help="name printed with the rates (the build's variant)")
    ap.add_argument("--models", default="0.6b,4b")
    ap.add_argument("--threads", type=int, default=0, help="0: the decoder's own choice")
    ap.add_argument("--prompt", type=int, default=32, help="context before the timed tokens")
    ap.add_argument(
        "--check", action="store_true", help="compare logits with the multi-kernel step"
    )
    args = ap.parse_args()
    if args.check:
        bad = False
        for m in args.models.split(","):
            model, _ = build_ours(real_config(m))
            err, same = check(model, args.threads, args.prompt)
            bad = bad or err > 5e-2 or not same
            print(
                f"CHECK {args.label} {m} rel_err {err:.2e} argmax {'same' if same else 'DIFFERENT'}"
            )
            del model
        if bad:
            return 1
    parts = [f"{m} {rate(m, args.threads, args.prompt):.1f}" for m in args.models.split(",")]
    print(f"RATE {args.label} " + " ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
