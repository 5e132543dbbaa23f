"""GPU benchmark: Inference-PIO CUDA vs transformers (eager, and static cache + torch.compile) in
the same run, on synthetic real-size bf16 weights (random values; speed does not depend on them).

Rows per model: batch-1 decode of 128 tokens after a 32-token prompt (greedy; also sampled with
Qwen3's defaults, and the fused / multi-kernel graph replayed without Python per token), 8 greedy
sequences of 64 tokens through the BatchManager (summed rate; decode steps replayed from a captured
graph, and run call by call), and prefill of 2048 tokens and of a 128-token prompt.
Bandwidth: device-to-device copy kernel (bytes read + written), and read bandwidth (the best of
two read-only kernels, `inference_pio.cuda.read_bandwidth`), which the "% of BW" column
uses. Bytes per decoded token:
every weight matrix read once (embedding row excluded, LM head included) + the KV cache read.

    PYTHONPATH=core:plugins/qwen3_0_6b:plugins/qwen3_4b_instruct_2507 \
      python benchmarks/benchmark_gpu.py [--models 0.6b,4b] [--no-compile] [--no-hf] [--json F]
          [--prompt 32] [--new 128] [--prefill 2048] [--short 128]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

from inference_pio import cuda
from inference_pio.backend import Backend
from inference_pio.dtypes import DType
from inference_pio.nn import dense
from inference_pio.nn.cuda_graph import CudaGraphDecoder, _runner, cuda_stream_generate
from inference_pio.sampling import SamplingParams
from inference_pio.tensor import Tensor

DEV = "cuda:0"


def real_config(name: str) -> dict[str, Any]:
    if name == "0.6b":
        from inference_pio_qwen3_0_6b import config
    else:
        from inference_pio_qwen3_4b_instruct_2507 import config  # type: ignore[no-redef]
    return dict(config.real_config())


def random_weights(plan: dense.WeightPlan, seed: int) -> dict[str, Tensor]:
    """bf16 tensors of ``plan`` filled on the device (norms around 1, the rest around 0)."""
    lib = cuda.lib()
    weights = {}
    for i, (name, (shape, kind)) in enumerate(sorted(plan.items())):
        t = Tensor.empty(shape, DType.bfloat16, DEV)
        mean, std = (1.0, 0.1) if kind == "norm" else (0.0, 0.02)
        cuda.check(
            lib.toc_fill_random(t.data_ptr, t.numel, int(DType.bfloat16), seed + i, mean, std, 0),
            "fill",
        )
        weights[name] = t
    return weights


def build_ours(cfg_dict: dict[str, Any]) -> Any:
    cfg = dense.DenseConfig.from_hf(cfg_dict, qk_norm=True)
    return dense.build(random_weights(dense.weight_plan(cfg), 1234), cfg, DEV), cfg


@contextlib.contextmanager
def recorded_calls() -> Iterator[list[tuple[Backend, str, tuple[Any, ...]]]]:
    """Every backend call made inside the block (backend, op, arguments), run as usual."""
    calls: list[tuple[Backend, str, tuple[Any, ...]]] = []
    original = Backend.call

    def spy(self: Backend, op: str, *args: Any) -> None:
        calls.append((self, op, args))
        original(self, op, *args)

    Backend.call = spy  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        Backend.call = original  # type: ignore[method-assign]


def op_gpu_times(calls: list[tuple[Backend, str, tuple[Any, ...]]]) -> list[tuple[str, int, float]]:
    """GPU seconds of recorded calls summed per op, most first: (op, calls, seconds). Each call
    is captured ten times in a CUDA graph and replayed (a call that cannot be captured is timed
    alone, five times); repeats of a call partly find its operands in L2."""
    lib = cuda.lib()
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    for be, op, args in calls:
        try:
            cuda.check(lib.toc_graph_begin(), "toc_graph_begin")
            for _ in range(10):
                Backend.call(be, op, *args)
            graph = ctypes.c_void_p()
            cuda.check(lib.toc_graph_end(ctypes.byref(graph)), "toc_graph_end")
            cuda.check(lib.toc_graph_launch(graph.value, 1), "toc_graph_launch")
            cuda.synchronize(DEV)
            t0 = time.perf_counter()
            cuda.check(lib.toc_graph_launch(graph.value, 3), "toc_graph_launch")
            cuda.synchronize(DEV)
            dt = (time.perf_counter() - t0) / 30
            lib.toc_graph_destroy(graph.value)
        except Exception:
            lib.toc_graph_abort()
            cuda.synchronize(DEV)
            t0 = time.perf_counter()
            for _ in range(5):
                Backend.call(be, op, *args)
            cuda.synchronize(DEV)
            dt = (time.perf_counter() - t0) / 5
        total[op] += dt
        count[op] += 1
    return [(op, count[op], t) for op, t in sorted(total.items(), key=lambda kv: -kv[1])]


class _NoText:
    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return ""


def decode_bytes(cfg: Any, ctx: int) -> int:
    h, hd, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    per_layer = (h * cfg.num_heads * hd * 2 + h * cfg.num_kv_heads * hd * 2 + 3 * h * inter) * 2
    kv = cfg.num_layers * 2 * cfg.num_kv_heads * hd * 2 * ctx
    return cfg.num_layers * per_layer + cfg.vocab_size * h * 2 + kv


def replay_rate(runner: CudaGraphDecoder, prompt_len: int, new: int) -> float:
    """Tokens per second of greedy graph replays (no Python per token)."""
    cuda.synchronize(DEV)
    t0 = time.perf_counter()
    done = 0
    while done < new:
        n = min(runner.chunk, new - done)
        runner.greedy(5, prompt_len + done, n)
        done += n
    return new / (time.perf_counter() - t0)


def prefill_seconds(model: Any, tokens: list[int]) -> float:
    """Wall time of one prefill of ``tokens`` into a fresh cache, logits copied to the host."""
    cache = model.new_cache(len(tokens) + 1)
    cuda.synchronize(DEV)
    t0 = time.perf_counter()
    (lg,) = model.forward([(tokens, cache)])
    lg.to("cpu")
    return time.perf_counter() - t0


def batch8_rates(model: Any, prompt: list[int]) -> tuple[float, float]:
    """8 sequences through the BatchManager (prefill together, then decode steps of 8 rows),
    64 greedy tokens each, the sum of the sequences' decode rates: with the steps replayed from
    captured CUDA graphs (best of the last two of three runs), then run call by call from Python
    (``INFERENCE_PIO_CUDA_BATCH_GRAPH=0``)."""
    import os

    from inference_pio.batching import BatchManager

    params = SamplingParams(temperature=0.0, max_new_tokens=64, ignore_eos=True)

    def rate() -> float:
        mgr = BatchManager(model, _NoText(), (), max_batch_size=8)
        for i in range(8):
            mgr.submit([(t + 97 * i) % 100000 for t in prompt], params)
        return sum(r.decode_tokens_per_s for r in mgr.run())

    graphs = [rate() for _ in range(3)]
    os.environ["INFERENCE_PIO_CUDA_BATCH_GRAPH"] = "0"
    try:
        ops = [rate() for _ in range(2)]
    finally:
        del os.environ["INFERENCE_PIO_CUDA_BATCH_GRAPH"]
    return max(graphs[1:]), ops[-1]


def bench_ours(
    model: Any, cfg: Any, prompt_len: int, new: int, prefill: int, short: int
) -> dict[str, float]:
    import random

    rng = random.Random(0)
    prompt = [rng.randrange(1000, 100000) for _ in range(prompt_len)]
    params = SamplingParams(temperature=0.0, max_new_tokens=new, ignore_eos=True)
    rates = []
    for _ in range(4):
        results: list[Any] = []
        for _ in cuda_stream_generate(model, _NoText(), prompt, params, (), results.append):
            pass
        r = results[0]
        assert len(r.token_ids) == new, len(r.token_ids)
        rates.append(r.decode_tokens_per_s)
    decode = statistics.median(rates[1:])
    # sampled decode with Qwen3's generation_config defaults (T 0.6, top-k 20, top-p 0.95): each
    # replayed step is followed by the device sampler (toc_decode_sample)
    sampled_params = SamplingParams(
        temperature=0.6, top_k=20, top_p=0.95, seed=0, max_new_tokens=new, ignore_eos=True
    )
    srates = []
    for _ in range(3):
        results = []
        for _ in cuda_stream_generate(model, _NoText(), prompt, sampled_params, (), results.append):
            pass
        srates.append(results[0].decode_tokens_per_s)
    # pure graph replay rates (no Python per token): the default fused one-kernel step and the
    # multi-kernel step
    runner = _runner(model, prompt_len + new + 1)
    assert runner is not None
    fused_rate = replay_rate(runner, prompt_len, new)
    multi = CudaGraphDecoder(model, runner.capacity, chunk=runner.chunk, fused=False)
    multi.greedy(5, prompt_len, 8)
    graph_rate = replay_rate(multi, prompt_len, new)
    del multi
    brate, oprate = batch8_rates(model, prompt)
    big = [rng.randrange(1000, 100000) for _ in range(prefill)]
    times = [prefill_seconds(model, big) for _ in range(3)]
    # a short prompt's prefill (time to the first token): host-bound where the kernels are short
    few = [rng.randrange(1000, 100000) for _ in range(short)]
    short_times = [prefill_seconds(model, few) for _ in range(6)]
    return {
        "short_prefill_s": min(short_times[1:]),
        "batch8": brate,
        "batch8_ops": oprate,
        "decode": decode,
        "sampled": statistics.median(srates[1:]),
        "graph": graph_rate,
        "fused_graph": fused_rate,
        "prefill": prefill / min(times[1:]),
    }


def bench_hf(
    cfg_dict: dict[str, Any], prompt_len: int, new: int, prefill: int, short: int, compile_: bool
) -> dict[str, float]:
    import torch
    import transformers

    hcfg = transformers.Qwen3Config(**{k: v for k, v in cfg_dict.items() if k != "architectures"})
    with torch.device("cuda"):
        m = transformers.Qwen3ForCausalLM(hcfg).to(torch.bfloat16).eval()
    ids = torch.randint(1000, 100000, (1, prompt_len), device="cuda")
    out: dict[str, float] = {}

    def gen() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            m.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return new / (time.perf_counter() - t0)

    def prefill_s(tokens: int, runs: int) -> float:
        """Best wall time of a prefill of ``tokens`` random ids, the first run left out."""
        ids = torch.randint(1000, 100000, (1, tokens), device="cuda")
        ts = []
        for _ in range(runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                m(ids, logits_to_keep=1)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        return min(ts[1:])

    gen()
    out["eager_decode"] = max(gen() for _ in range(2))
    out["eager_prefill"] = prefill / prefill_s(prefill, 3)
    out["eager_short_prefill_s"] = prefill_s(short, 6)
    if compile_:
        try:
            # transformers compiles the forward itself for a static cache (generation's
            # CompileConfig: fullgraph, reduce-overhead); a hand-made torch.compile of forward
            # breaks on transformers 5.x's cache bookkeeping under CUDA graphs.
            m.generation_config.cache_implementation = "static"
            gen()
            gen()
            out["compiled_decode"] = max(gen() for _ in range(2))
        except Exception as exc:  # report the eager numbers anyway
            print(f"torch.compile failed: {type(exc).__name__}: {exc}", flush=True)
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--models", default="0.6b,4b", help="comma-separated: 0.6b, 4b (default both)")
    ap.add_argument(
        "--no-compile", action="store_true", help="leave out transformers' static+compile decode"
    )
    ap.add_argument("--no-hf", action="store_true", help="leave out transformers altogether")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens before the decode")
    ap.add_argument("--new", type=int, default=128, help="greedy tokens decoded")
    ap.add_argument("--prefill", type=int, default=2048, help="tokens of the prefill row")
    ap.add_argument("--short", type=int, default=128, help="tokens of the short-prompt prefill row")
    args = ap.parse_args()
    if args.prompt < 1 or args.new < 2 or args.prefill < 1 or args.short < 1:
        ap.error("--prompt, --prefill and --short must be >= 1, --new >= 2")
    if not cuda.is_available():
        print(f"GPU benchmark skipped: CUDA unavailable: {cuda.unavailable_reason()}")
        return 0
    info = cuda.device_info(DEV)
    bw = cuda.copy_bandwidth(2 << 30, 10, DEV)
    rbw = cuda.read_bandwidth(2 << 30, 10, DEV)
    print(
        f"device: {info['name']} ({info['multiprocessors']} SMs), cuBLAS: "
        f"{cuda.blas_library() or 'none (own WMMA GEMM)'}, copy bandwidth {bw:.0f} GB/s "
        f"(read + write), read bandwidth {rbw:.0f} GB/s",
        flush=True,
    )
    rows = []
    for name in args.models.split(","):
        cfg_dict = real_config(name)
        model, cfg = build_ours(cfg_dict)
        ours = bench_ours(model, cfg, args.prompt, args.new, args.prefill, args.short)
        print(f"[{name}] ours {ours}", flush=True)
        del model
        import gc

        gc.collect()
        cuda.empty_cache(DEV)
        hf: dict[str, float] = {}
        if not args.no_hf:
            try:
                hf = bench_hf(
                    cfg_dict, args.prompt, args.new, args.prefill, args.short, not args.no_compile
                )
            except Exception as exc:  # report, keep going
                print(f"[{name}] transformers failed: {type(exc).__name__}: {exc}", flush=True)
        print(f"[{name}] transformers {hf}", flush=True)
        nbytes = decode_bytes(cfg, args.prompt + args.new // 2)  # the mean context
        rows.append((name, ours, hf, nbytes))
    print()
    print(
        f"GPU benchmark on {info['name']} (copy bandwidth {bw:.0f} GB/s, read bandwidth "
        f"{rbw:.0f} GB/s; % of BW is of the read bandwidth); decode: {args.new} tokens after "
        f"{args.prompt}, batch 1, greedy (sampled: T 0.6, top-k 20, top-p 0.95); prefill: "
        f"{args.prefill} tokens"
    )
    hdr = (
        f"{'model':6} {'metric':8} {'ours tok/s':>11} {'HF eager':>9} {'HF compiled':>12} "
        f"{'x eager':>8} {'x compiled':>10} {'MB/token':>9} {'% of BW':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, ours, hf, nbytes in rows:
        e, c = hf.get("eager_decode", math.nan), hf.get("compiled_decode", math.nan)
        frac = nbytes * ours["decode"] / (rbw * 1e9) * 100
        print(
            f"{name:6} {'decode':8} {ours['decode']:11.1f} {e:9.1f} {c:12.1f} "
            f"{ours['decode'] / e:8.2f} {ours['decode'] / c:10.2f} {nbytes / 1e6:9.1f} {frac:7.1f}%"
        )
        for key, label in (("fused_graph", "fused"), ("graph", "multi")):
            gf = nbytes * ours[key] / (rbw * 1e9) * 100
            print(
                f"{name:6} {label:8} {ours[key]:11.1f} {'':9} {'':12} {ours[key] / e:8.2f} "
                f"{ours[key] / c:10.2f} {'':9} {gf:7.1f}%"
            )
        # sampled (device sampler per token): its fraction of our greedy rate, not transformers'
        print(
            f"{name:6} {'sampled':8} {ours['sampled']:11.1f} {'':9} {'':12} {'':8} {'':10} "
            f"{'':9} {'':8} ({ours['sampled'] / ours['decode']:.2f} of greedy)"
        )
        print(
            f"{name:6} {'batch8':8} {ours['batch8']:11.1f} {'':9} {'':12} {'':8} {'':10} "
            f"{'':9} {'':8} (8 sequences, summed; {ours['batch8'] / ours['decode']:.2f}x batch 1; "
            f"{ours['batch8'] / ours['batch8_ops']:.2f}x the steps run call by call, "
            f"{ours['batch8_ops']:.0f} tok/s)"
        )
        ep = hf.get("eager_prefill", math.nan)
        print(
            f"{name:6} {'prefill':8} {ours['prefill']:11.0f} {ep:9.0f} {'':12} "
            f"{ours['prefill'] / ep:8.2f}"
        )
        ss, hs = ours["short_prefill_s"], hf.get("eager_short_prefill_s", math.nan)
        print(
            f"{name:6} {'prefill' + str(args.short):8} {args.short / ss:11.0f} "
            f"{args.short / hs:9.0f} {'':12} {hs / ss:8.2f} {'':10} {'':9} {'':8} "
            f"({ss * 1e3:.2f} ms against {hs * 1e3:.2f}: time to the first token)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": info["name"],
                    "bandwidth_gbps": bw,
                    "read_bandwidth_gbps": rbw,
                    "rows": [
                        {"model": n, "ours": o, "hf": h, "bytes_per_token": b}
                        for n, o, h, b in rows
                    ],
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
