"""Batch-1 decode of FP8 weights in the fused CUDA step against bf16 weights, same run.

For Qwen3-0.6B and Qwen3-4B (synthetic real-size weights): the bf16 model, and the same weights
quantized to block-scaled FP8 (128 x 128 blocks, transformers' quantizer, as ``-q fp8`` or an
"-FP8" checkpoint) whose projections stay FP8 on the device. Each decodes 128 greedy tokens after
a 32-token prompt through its captured fused step (median of 5). The FP8 step reads q/k/v,
gate/up and down in FP8 and o_proj and the LM head in bf16; bytes a token are counted that way.
A CHECK line compares the FP8 fused step's logits with the model's own op-by-op step captured
(``linear_fp8``; the same FP8 weights) after prompts of 40 and 160 tokens.

    PYTHONPATH=core:plugins/qwen3_0_6b:plugins/qwen3_4b_instruct_2507:benchmarks \
      python benchmarks/gpu_fp8_decode.py [--models 0.6b,4b]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from benchmark_gpu import DEV, build_ours, random_weights, real_config, replay_rate
from gpu_decode_rate import compare_steps

from inference_pio import cuda
from inference_pio.nn import dense
from inference_pio.nn.cuda_capture import CapturedStepDecoder
from inference_pio.nn.cuda_graph import CudaGraphDecoder
from inference_pio.quantization import QuantizeOnLoad

NEW, PROMPT, RUNS = 128, 32, 5


def fused_rate(model: Any, threads: int = 0) -> tuple[float, int]:
    runner = CudaGraphDecoder(model, PROMPT + NEW + 1, chunk=NEW, fused=True, threads=threads)
    runner.greedy(5, PROMPT, 8)  # warm-up
    rates = [replay_rate(runner, PROMPT, NEW) for _ in range(RUNS)]
    threads = (runner.fused_info() or {}).get("threads", 0)
    del runner
    return statistics.median(rates), threads


def step_bytes(cfg: Any, fp8: bool) -> int:
    """Weight bytes a token reads (KV cache left out: 32-160 tokens)."""
    h, hd, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    nq, nkv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    w = 1 if fp8 else 2
    per_layer = h * (nq + 2 * nkv) * w + h * nq * 2 + 3 * h * inter * w
    if fp8:  # fp32 scales of 128 x 128 blocks
        per_layer += 4 * (h * (nq + 2 * nkv) + 3 * h * inter) // (128 * 128)
    return cfg.num_layers * per_layer + cfg.vocab_size * h * 2


def check(model: Any) -> tuple[float, bool]:
    """Worst relative logits error of the FP8 fused step against the captured op-by-op step."""
    return compare_steps(
        model,
        lambda fused, cap: (
            CudaGraphDecoder(model, cap, fused=True) if fused else CapturedStepDecoder(model, cap)
        ),
        (40, 160),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="0.6b,4b")
    ap.add_argument("--threads", type=int, default=0, help="of the FP8 step (0: its own choice)")
    ap.add_argument("--fp8-only", action="store_true", help="no bf16 rate, no check (A/B runs)")
    ap.add_argument("--label", default="", help="printed on RATE lines (A/B runs)")
    args = ap.parse_args()
    rbw = cuda.read_bandwidth(2 << 30, 10, DEV)
    info = cuda.device_info(DEV)
    print(f"FP8 fused decode on {info['name']} (read bandwidth {rbw:.0f} GB/s)")
    rows = []
    for name in args.models.split(","):
        model, cfg = build_ours(real_config(name))
        r16, t16 = (0.0, 0) if args.fp8_only else fused_rate(model)
        del model
        host = {k: v.to("cpu") for k, v in random_weights(dense.weight_plan(cfg), 1234).items()}
        model8 = dense.build(QuantizeOnLoad(host), cfg, DEV)
        del host
        if not args.fp8_only:
            err, same = check(model8)
            print(
                f"CHECK {name} fp8 fused vs captured op-by-op: rel_err {err:.2e} argmax "
                f"{'same' if same else 'DIFFERENT'}",
                flush=True,
            )
        r8, t8 = fused_rate(model8, args.threads)
        if args.fp8_only:
            print(f"RATE {args.label} {name} fp8 {r8:.1f} threads {t8}", flush=True)
        del model8
        b16, b8 = step_bytes(cfg, False), step_bytes(cfg, True)
        rows.append((name, r16, t16, b16, r8, t8, b8))
    print(
        "| model | bf16 tok/s | FP8 tok/s | FP8 / bf16 | GB a token bf16 / FP8 "
        "| % of read BW bf16 / FP8 |"
    )
    print("|---|---|---|---|---|---|")
    for name, r16, t16, b16, r8, t8, b8 in rows:
        r16 = r16 or float("nan")
        p16, p8 = 100 * r16 * b16 / 1e9 / rbw, 100 * r8 * b8 / 1e9 / rbw
        print(
            f"| Qwen3-{name.upper()} | {r16:.1f} ({t16} thr) | {r8:.1f} ({t8} thr) "
            f"| {r8 / r16:.2f}x | {b16 / 1e9:.2f} / {b8 / 1e9:.2f} | {p16:.1f}% / {p8:.1f}% |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
