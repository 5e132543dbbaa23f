"""Batch-1 decode rate of the fused CUDA step with the CUDA library named by INFERENCE_PIO_LIB.

One line per call, for `benchmarks/gpu_ab.sh`, which times several builds alternately in one run:

    RATE <label> 0.6b <tok/s> 4b <tok/s>

Each model: synthetic real-size bf16 weights, a captured fused step, a warm-up, then the median
of 5 runs of 128 greedy tokens after a 32-token prompt (the decode row of benchmark_gpu.py).

    PYTHONPATH=core:plugins/qwen3_0_6b:plugins/qwen3_4b_instruct_2507:benchmarks \
      python benchmarks/gpu_decode_rate.py LABEL [--models 0.6b,4b] [--threads 0|384|512]
"""

from __future__ import annotations

import argparse
import statistics

from benchmark_gpu import build_ours, real_config, replay_rate

from inference_pio.nn.cuda_graph import CudaGraphDecoder

PROMPT, NEW, RUNS = 32, 128, 5


def rate(name: str, threads: int) -> float:
    """Median tok/s of the fused step for model `name` (see the module docstring)."""
    model, _ = build_ours(real_config(name))
    runner = CudaGraphDecoder(model, PROMPT + NEW + 1, chunk=NEW, fused=True, threads=threads)
    runner.greedy(5, PROMPT, 8)  # warm-up
    rates = [replay_rate(runner, PROMPT, NEW) for _ in range(RUNS)]
    del runner, model
    return statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("label", help="name printed with the rates (the build's variant)")
    ap.add_argument("--models", default="0.6b,4b")
    ap.add_argument("--threads", type=int, default=0, help="0: the decoder's own choice")
    args = ap.parse_args()
    parts = [f"{m} {rate(m, args.threads):.1f}" for m in args.models.split(",")]
    print(f"RATE {args.label} " + " ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
