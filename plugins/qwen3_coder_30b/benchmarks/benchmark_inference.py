"""Benchmark for Qwen3-Coder-30B-A3B-Instruct: prefill and batch-1 decode tokens/s.

Run: ``python plugins/qwen3_coder_30b/benchmarks/benchmark_inference.py``.
Until the model is implemented this only reports that loading is not available yet.
"""

from __future__ import annotations

import sys

from inference_pio.plugins import get_plugin_host


def main() -> int:
    host = get_plugin_host()
    spec = host.registry.get("qwen3-coder-30b-a3b-instruct")
    print(f"{spec.name}: model implementation not available yet; nothing to benchmark")
    return 0


if __name__ == "__main__":
    sys.exit(main())
