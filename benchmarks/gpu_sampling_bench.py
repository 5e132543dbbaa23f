"""Per-token cost of drawing from a Qwen3-size logits row (151936 bf16 entries) on the GPU: the
device sampler (`toc_sample` through `Sampler.sample`, token and RNG state read back), the host
sampler on a row copied from the device (what a sampled CUDA step cost before), and the graph
decoder's `toc_decode_sample` (queued behind nothing, timed with one synchronisation per call and
per 100 calls). Prints a table of microseconds per draw.

    PYTHONPATH=core python benchmarks/gpu_sampling_bench.py [--vocab 151936]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from inference_pio import cuda
from inference_pio.dtypes import DType
from inference_pio.sampling import Sampler, SamplingParams
from inference_pio.tensor import Tensor

DEV = "cuda:0"
SETTINGS = {
    "greedy": dict(temperature=0.0),
    "top-k 20, top-p 0.95 (Qwen3)": dict(temperature=0.6, top_k=20, top_p=0.95),
    "top-k 50": dict(temperature=1.0, top_k=50),
    "top-k 1024, min-p 0.05": dict(temperature=1.0, top_k=1024, min_p=0.05),
    "top-k 20 + rep. penalty 1.1, 200 ids": dict(temperature=0.7, top_k=20, repetition_penalty=1.1),
    "top-p 0.95, no top-k": dict(temperature=1.0, top_p=0.95),
    "min-p 0.05, no top-k": dict(temperature=1.0, min_p=0.05),
    "no truncation": dict(temperature=1.0),
}


def _us(fn: Callable[[], object], n: int) -> float:
    fn()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=151936)
    args = ap.parse_args()
    import random

    rnd = random.Random(0)
    host = Tensor.from_list([rnd.gauss(0.0, 3.0) for _ in range(args.vocab)], DType.bfloat16)
    dev = host.to(DEV)
    print(f"device: {cuda.device_info(DEV)['name']}, vocab {args.vocab}, bf16 logits")
    print(f"{'setting':40s} {'device us':>10s} {'host+copy us':>13s} {'x':>6s}")
    for name, kw in SETTINGS.items():
        prompt = list(range(200)) if "penalty" in name else []
        s_dev = Sampler(SamplingParams(seed=1, **kw), prompt_ids=prompt)
        s_host = Sampler(SamplingParams(seed=1, **kw), prompt_ids=prompt)
        a = _us(lambda s=s_dev: s.sample(dev), 200)
        b = _us(lambda s=s_host: s.sample(dev.to("cpu")), 200)
        print(f"{name:40s} {a:10.1f} {b:13.1f} {b / a:6.1f}")
    ctr = Tensor.from_list([0, 0, 1, 0], DType.int32).to(DEV)
    toks = Tensor.zeros((4,), DType.int32, DEV)
    rng = Tensor.from_list([1], DType.int64).to(DEV)
    lib = cuda.lib()

    def draw() -> None:
        rc = lib.toc_decode_sample(
            dev.data_ptr, DType.bfloat16, args.vocab, ctr.data_ptr, toks.data_ptr, 4,
            0.6, 20, 0.95, 0.0, rng.data_ptr,
        )  # fmt: skip
        cuda.check(rc, "toc_decode_sample")

    def one() -> None:
        draw()
        cuda.synchronize(DEV)

    def hundred() -> None:
        for _ in range(100):
            draw()
        cuda.synchronize(DEV)

    print(f"toc_decode_sample (Qwen3 settings), synchronised each call: {_us(one, 200):.1f} us")
    print(f"toc_decode_sample, 100 queued calls per sync: {_us(hundred, 5) / 100:.1f} us per draw")


if __name__ == "__main__":
    main()
