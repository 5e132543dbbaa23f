"""Where the BatchManager's decode step spends its GPU time, op by op, on synthetic real-size
weights: the captured step replayed alone (ms per step at several row counts), then every backend
call of one recorded step captured alone 10 times in a CUDA graph and replayed (us per call,
summed per op). Weights of a call repeated back to back partly stay in L2 (up to ~50 MB), so the
GEMV rows read low for the smaller matrices.

    python benchmarks/gpu_batch_profile.py --models 4b --rows 2,8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import benchmark_gpu as bg  # type: ignore[import-not-found]

from inference_pio import cuda
from inference_pio.nn import cuda_batch_graph

DEV = "cuda:0"


def decoder(model: Any, rows: int) -> tuple[Any, list[Any]]:
    dec = cuda_batch_graph.for_model(model, rows, 256)
    if dec is None:
        raise SystemExit("the batched graph decoder does not take this model here")
    dec.reset()
    caches = [c for c in (dec.acquire() for _ in range(rows)) if c is not None]
    for c in caches:
        c.length = 40
    dec.step([(5, c) for c in caches])  # the eager step, then the capture
    cuda.synchronize(DEV)
    return dec, caches


def replay_ms(dec: Any, caches: list[Any], steps: int = 30) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            dec.step([(5, c) for c in caches])
        cuda.synchronize(DEV)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e3


def per_op(dec: Any, rows: int) -> list[tuple[str, int, float]]:
    with bg.recorded_calls() as calls:
        dec._record(rows)
    cuda.synchronize(DEV)
    result: list[tuple[str, int, float]] = bg.op_gpu_times(calls)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="0.6b,4b")
    ap.add_argument("--rows", default="1,2,8,16", help="row counts of the replay timings")
    ap.add_argument("--profile-rows", type=int, default=8, help="rows of the per-op profile")
    args = ap.parse_args()
    for name in args.models.split(","):
        model, _ = bg.build_ours(bg.real_config(name))
        times = []
        for rows in (int(r) for r in args.rows.split(",")):
            dec, caches = decoder(model, rows)
            times.append(f"{rows} rows {replay_ms(dec, caches):.3f} ms")
        print(f"{name}: step replay " + ", ".join(times), flush=True)
        dec, _ = decoder(model, args.profile_rows)
        ops = per_op(dec, args.profile_rows)
        print(f"{name}, {args.profile_rows} rows, each call alone:")
        for op, n, t in ops:
            print(f"  {op:30} x{n:<4} {t * 1e3:7.3f} ms  {t / n * 1e6:7.1f} us each")
        print(f"  {'sum':30} {'':5} {sum(t for _, _, t in ops) * 1e3:7.3f} ms", flush=True)
        del model, dec
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
