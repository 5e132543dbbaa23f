"""Where the fused decode step's grid barriers go, from a stamps build (-DDK_STAGE_STAMPS=1).

For layer 1's three barriers of the folded step (before qkv, before attention + o_proj, before
gate/up + down), times after the last block's arrival, mean / max / min over blocks (us):

- release: the last arriver's ``red.release`` (it waits for the block's writes to be performed);
- seen: when a block's relaxed poll first read the barrier's target (DK_PROF_SEEN);
- acquire: that poll to the acquire load's return;
- sync: the acquire to the block's ``__syncthreads`` (thread 0's stamp after the barrier).

    PYTHONPATH=core:plugins/qwen3_0_6b:plugins/qwen3_4b_instruct_2507:benchmarks \
      INFERENCE_PIO_LIB=<stamps build>/libtensor_ops.so \
      python benchmarks/gpu_barrier_latency.py [--models 4b,0.6b] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics

from benchmark_gpu import build_ours, real_config

from inference_pio.nn.cuda_graph import CudaGraphDecoder

PROMPT = 32
SEEN, REL = 50, 58  # DK_PROF_SEEN, DK_PROF_REL in decoder.cu
# barrier slot (profile_stages(first=2): layer 1's barriers) -> its stage's first stamp
STAGES = {0: ("before qkv", 16), 1: ("before attention + o", 20), 2: ("before gate/up", 28)}


def summary(v: list[float]) -> str:
    return f"{statistics.mean(v):5.2f} / {max(v):5.2f} / {min(v):5.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="4b,0.6b")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    for name in args.models.split(","):
        model, _ = build_ours(real_config(name))
        r = CudaGraphDecoder(model, PROMPT + 128 + 1, chunk=128, fused=True)
        r.greedy(5, PROMPT, 8)
        print(f"{name}: us after the last arrival, mean / max / min over blocks")
        for rep in range(args.reps):
            rows = r.profile_stages(5, PROMPT + 8, first=2)
            for slot, (label, stamp) in STAGES.items():
                arr, dep = 2 * slot, 2 * slot + 1
                blocks = [x for x in rows if x[arr] and x[dep] and x[SEEN + slot] and x[stamp]]
                if not blocks:
                    continue
                last = max(blocks, key=lambda x: x[arr])
                t = last[arr]
                seen = [(x[SEEN + slot] - t) / 1e3 for x in blocks]
                acq = [(x[dep] - x[SEEN + slot]) / 1e3 for x in blocks]
                sync = [(x[stamp] - x[dep]) / 1e3 for x in blocks]
                print(
                    f"  rep {rep} {label:22s} release {(last[REL + slot] - t) / 1e3:5.2f} | "
                    f"seen {summary(seen)} | acquire {summary(acq)} | sync {summary(sync)}"
                )
        del r, model


if __name__ == "__main__":
    main()
