"""Qwen3-4B-Instruct-2507 bf16 on the CPU: Inference-PIO vs transformers + torch vs llama.cpp.

Same run, same token ids: prefill tokens/s at 512 tokens, batch-1 greedy decode tokens/s (128
tokens after a 32-token prompt), peak RSS and the fraction of the measured memory bandwidth, on
``synthetic:qwen3-4b-instruct-2507`` (real size, random weights), all cores by default.
The shared harness is benchmarks/llm_bench.py; ``nox -s bench`` installs the reference engines.

    python plugins/qwen3_4b_instruct_2507/benchmarks/benchmark_inference.py [--threads N] \
        [--engines ours,transformers,llama.cpp] [--repeats 3] [--prompt-tokens 512] \
        [--new-tokens 128] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import llm_bench

MODEL = "synthetic:qwen3-4b-instruct-2507"

if __name__ == "__main__":
    sys.exit(llm_bench.main(sys.argv[1:], model=MODEL))
