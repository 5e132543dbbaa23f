"""How evenly the fused decode step's blocks finish each stage, per multiprocessor.

From the barrier stamps of many profiled steps (every layer, several tokens; each block's record
also names its multiprocessor), per stage kind:

- work: departure from the barrier before the stage to arrival at the one after, on the block's
  own clock (mean over blocks, us);
- wait: the mean time a block waits at the barrier after the stage, also on its own clock;
- SM spread: max - min over multiprocessors of their mean work (us), and the split-half
  correlation of those means (two halves of the samples: near 1 means the same SMs are slow
  every time, near 0 means chance);
- clock offsets: arrivals of different blocks are compared on %globaltimer, which is only
  meaningful if every multiprocessor reads the same clock; departures from one barrier are
  within ~1 us of each other, so an SM whose departures are always microseconds early or late
  would run an offset clock. The table lists such SMs (none so far on an H200).

In the folded step the blocks past n_heads * (blocks per head) run no attention unit and arrive
at the barrier after attention + o_proj at once: that stage's SM spread is theirs.

    PYTHONPATH=core:plugins/qwen3_0_6b:plugins/qwen3_4b_instruct_2507:benchmarks \
      python benchmarks/gpu_barrier_skew.py [--models 4b,0.6b] [--reps 4]
"""

from __future__ import annotations

import argparse
import statistics

from benchmark_gpu import build_ours, real_config

from inference_pio import cuda
from inference_pio.nn.cuda_graph import CudaGraphDecoder

PROMPT = 32
SMID = 48  # record index of the block's multiprocessor (DK_PROF_SMID in decoder.cu)


def corr(a: list[float], b: list[float]) -> float:
    ma, mb = statistics.mean(a), statistics.mean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    da = sum((x - ma) ** 2 for x in a) ** 0.5
    db = sum((y - mb) ** 2 for y in b) ** 0.5
    return num / (da * db) if da and db else 0.0


def per_sm_means(samples: list[tuple[list[int], list[float]]], pick: int) -> dict[int, float]:
    """Mean value per multiprocessor over the samples k with k % 2 == pick (pick -1: all)."""
    acc: dict[int, list[float]] = {}
    for k, (smid, vals) in enumerate(samples):
        if pick >= 0 and k % 2 != pick:
            continue
        for sm, v in zip(smid, vals, strict=True):
            acc.setdefault(sm, []).append(v)
    return {sm: statistics.mean(v) for sm, v in acc.items()}


def study(name: str, reps: int) -> None:
    model, cfg = build_ours(real_config(name))
    pos = PROMPT + 8
    end = pos + reps * (4 * cfg.num_layers // 7 + 2)  # one profiled step per 7 barriers
    runner = CudaGraphDecoder(model, end + 1, chunk=8, fused=True)
    runner.greedy(5, PROMPT, 8)
    info = runner.fused_info()
    assert info is not None
    folded = info["fold_keys"] >= end + 1  # every profiled step folds attention into o_proj
    per = 3 if folded else 4
    kinds = (
        ["qkv", "attention+o_proj", "gate_up+down"]
        if folded
        else ["qkv", "attention", "o_proj", "gate_up+down"]
    )
    start = per - 1  # the barrier where layer 1 starts
    last = per * cfg.num_layers - 1  # barriers before the LM head
    work: dict[int, list[tuple[list[int], list[float]]]] = {t: [] for t in range(per)}
    wait: dict[int, list[float]] = {t: [] for t in range(per)}
    dep_off: list[tuple[list[int], list[float]]] = []
    for _ in range(reps):
        first = start
        while first + 8 <= last:
            rows = runner.profile_stages(5, pos, first=first)
            pos += 1
            smid = [r[SMID] for r in rows]
            for i in range(8):
                dep = [r[2 * i + 1] for r in rows]
                md = statistics.mean(dep)
                dep_off.append((smid, [(d - md) / 1e3 for d in dep]))
            for i in range(7):
                t = (first + i - start) % per  # the stage between barriers first+i, +i+1
                dep = [r[2 * i + 1] for r in rows]
                arr = [r[2 * i + 2] for r in rows]
                leave = [r[2 * i + 3] for r in rows]
                work[t].append((smid, [(a - d) / 1e3 for a, d in zip(arr, dep, strict=True)]))
                waits = [(lv - a) / 1e3 for a, lv in zip(arr, leave, strict=True)]
                wait[t].append(statistics.mean(waits))
            first += 7
    off = per_sm_means(dep_off, -1)
    print(f"\n[{name}] grid {info['grid']}, {per} barriers a layer, {len(dep_off)} sampled")
    print(
        f"{'stage':18s} {'n':>4s} {'work us':>8s} {'wait us':>8s} {'SM spread us':>12s} "
        f"{'split-half r':>12s}"
    )
    for t in range(per):
        even, odd, every = (per_sm_means(work[t], p) for p in (0, 1, -1))
        sms = sorted(set(even) & set(odd))
        r = corr([even[s] for s in sms], [odd[s] for s in sms])
        mean_work = statistics.mean(statistics.mean(v) for _, v in work[t])
        spread = max(every.values()) - min(every.values())
        print(
            f"{kinds[t]:18s} {len(work[t]):4d} {mean_work:8.2f} {statistics.mean(wait[t]):8.2f} "
            f"{spread:12.2f} {r:12.2f}"
        )
    odd_clock = {s: o for s, o in off.items() if abs(o) > 1.0}
    print(
        "SM clocks offset by over 1 us: "
        + (" ".join(f"{s}:{o:+.2f}" for s, o in sorted(odd_clock.items())) or "none")
    )
    spread = max(v for s, v in off.items() if s not in odd_clock) - min(
        v for s, v in off.items() if s not in odd_clock
    )
    print(f"departure spread of the other SMs (mean per SM, max - min): {spread:.2f} us")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="4b,0.6b")
    ap.add_argument("--reps", type=int, default=4, help="passes over all layers")
    args = ap.parse_args()
    print(f"device: {cuda.device_info('cuda:0')['name']}")
    for name in args.models.split(","):
        study(name, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
