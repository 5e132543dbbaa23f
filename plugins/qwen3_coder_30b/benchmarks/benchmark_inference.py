"""Qwen3-Coder-30B-A3B-Instruct bf16 on the CPU: Inference-PIO vs transformers, same run.

The real model is 61 GB in bf16. By default this builds (once, cached next to the other synthetic
checkpoints) a checkpoint with the real layer shapes and vocabulary (hidden 2048, 32/4 heads of
128, 128 experts of 768, top-8) but only ``--layers`` layers (default 4: ~6 GB, random weights),
then reports prefill tokens/s, batch-1 decode tokens/s, peak RSS and the fraction of the measured
memory bandwidth for each engine through the shared harness (benchmarks/llm_bench.py; engines
``ours,transformers`` unless ``--engines`` says otherwise). ``--layers 48`` is the real model.

    python plugins/qwen3_coder_30b/benchmarks/benchmark_inference.py [--layers 4] [--threads N] \
        [--repeats 3] [--prompt-tokens 512] [--new-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import llm_bench


def checkpoint(layers: int) -> Path:
    """The cached synthetic checkpoint with ``layers`` layers of the real shapes."""
    from inference_pio_qwen3_coder_30b import MODEL_NAME
    from inference_pio_qwen3_coder_30b.config import real_config

    cfg = real_config()
    cfg["num_hidden_layers"] = cfg["max_window_layers"] = layers
    return llm_bench.reduced_checkpoint(MODEL_NAME, cfg, layers)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--layers", type=int, default=4, help="layers of the real shapes (48: all)")
    args, rest = p.parse_known_args(argv)
    if args.layers < 1:
        raise SystemExit("--layers must be at least 1")
    if "-h" in rest or "--help" in rest:
        print(__doc__)
    if not any(a.startswith("--engines") for a in rest):
        rest = [*rest, "--engines", "ours,transformers"]
    return llm_bench.main(rest, model=str(checkpoint(args.layers)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
