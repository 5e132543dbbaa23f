"""Qwen3-Coder-30B-A3B (Qwen3-MoE, bf16) on the GPU: Inference-PIO against transformers, same run.

Random weights with the real shapes (hidden 2048, 32/4 heads of 128, 128 experts of 768, top-8,
151,936-token vocabulary) filled on the device, ``--layers`` of them (48: the real model, 61 GB;
the same number of layers for both engines). Reports batch-1 greedy decode (``--new`` tokens after
``--prompt``: the CUDA-graph step, whose expert GEMVs read the router's choice on the device),
the graph's replay rate, a sampled decode, 8 sequences through the BatchManager (captured steps,
then call by call), and a prefill of ``--prefill`` tokens (routing on the device, experts in
grouped GEMMs); transformers eager (its default experts implementation)
and, with ``--compile``, its static cache + torch.compile. Bytes per token count the router and
k of the E experts of each layer, attention, the LM head and the KV cache.

    python benchmarks/gpu_moe_bench.py [--layers 48] [--prompt 32] [--new 128] [--prefill 512]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from typing import Any

from benchmark_gpu import _NoText, batch8_rates, prefill_seconds, random_weights, replay_rate

from inference_pio import cuda
from inference_pio.nn import dense
from inference_pio.nn.cuda_graph import _runner, cuda_stream_generate
from inference_pio.sampling import SamplingParams

DEV = "cuda:0"


def config(layers: int) -> dict[str, Any]:
    from inference_pio_qwen3_coder_30b.config import real_config

    cfg = dict(real_config())
    cfg["num_hidden_layers"] = cfg["max_window_layers"] = layers
    return cfg


def build_ours(cfg_dict: dict[str, Any]) -> Any:
    from inference_pio_qwen3_coder_30b.model import MoeConfig, mlp_factory, mlp_plan

    cfg = dense.DenseConfig.from_hf(cfg_dict, qk_norm=True)
    moe = MoeConfig.from_hf(cfg_dict)
    weights = random_weights(dense.weight_plan(cfg, mlp_plan=mlp_plan(cfg, moe)), 99)
    return dense.build(weights, cfg, DEV, mlp_plan=mlp_plan(cfg, moe), mlp=mlp_factory(moe))


def bench_ours(model: Any, prompt_len: int, new: int, prefill: int) -> dict[str, float]:
    import random

    rng = random.Random(0)
    prompt = [rng.randrange(1000, 100000) for _ in range(prompt_len)]

    def rate(params: SamplingParams) -> float:
        results: list[Any] = []
        for _ in cuda_stream_generate(model, _NoText(), prompt, params, (), results.append):
            pass
        assert len(results[0].token_ids) == new
        return float(results[0].decode_tokens_per_s)

    greedy = SamplingParams(temperature=0.0, max_new_tokens=new, ignore_eos=True)
    rates = [rate(greedy) for _ in range(4)]
    sampled = SamplingParams(
        temperature=0.7, top_k=20, top_p=0.8, seed=0, max_new_tokens=new, ignore_eos=True
    )
    srates = [rate(sampled) for _ in range(3)]
    runner = _runner(model, prompt_len + new + 1)
    assert runner is not None
    assert not runner.fused
    replay = replay_rate(runner, prompt_len, new)
    brate, oprate = batch8_rates(model, prompt)
    big = [rng.randrange(1000, 100000) for _ in range(prefill)]
    times = [prefill_seconds(model, big) for _ in range(3)]
    return {
        "batch8": brate,
        "batch8_ops": oprate,
        "decode": statistics.median(rates[1:]),
        "replay": replay,
        "sampled": statistics.median(srates[1:]),
        "prefill": prefill / min(times[1:]),
    }


def bench_hf(
    cfg_dict: dict[str, Any], prompt_len: int, new: int, prefill: int, compile_: bool
) -> dict[str, Any]:
    import torch
    import transformers

    hcfg = transformers.Qwen3MoeConfig(
        **{k: v for k, v in cfg_dict.items() if k not in ("architectures", "torch_dtype")}
    )
    with torch.device("cuda"):
        m = transformers.Qwen3MoeForCausalLM(hcfg).to(torch.bfloat16).eval()
    ids = torch.randint(1000, 100000, (1, prompt_len), device="cuda")
    out: dict[str, Any] = {"experts": str(getattr(m.config, "_experts_implementation", None))}

    def gen() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            m.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return new / (time.perf_counter() - t0)

    gen()
    out["eager_decode"] = max(gen() for _ in range(2))
    big = torch.randint(1000, 100000, (1, prefill), device="cuda")
    ts = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            m(big, logits_to_keep=1)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    out["eager_prefill"] = prefill / min(ts[1:])
    if compile_:
        try:
            m.generation_config.cache_implementation = "static"
            gen()
            out["compiled_decode"] = max(gen() for _ in range(2))
        except Exception as exc:  # report the eager numbers anyway
            print(f"torch.compile failed: {type(exc).__name__}: {exc}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=48, help="layers of the real shapes (48: all)")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens before the decode")
    ap.add_argument("--new", type=int, default=128, help="greedy tokens decoded")
    ap.add_argument("--prefill", type=int, default=512, help="tokens of the prefill row")
    ap.add_argument("--no-hf", action="store_true", help="leave transformers out")
    ap.add_argument("--compile", action="store_true", help="also transformers static + compile")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args()
    if args.layers < 1 or args.prompt < 1 or args.new < 2 or args.prefill < 1:
        ap.error("--layers, --prompt and --prefill must be >= 1, --new >= 2")
    if not cuda.is_available():
        print(f"GPU MoE benchmark skipped: CUDA unavailable: {cuda.unavailable_reason()}")
        return 0
    info = cuda.device_info(DEV)
    rbw = cuda.read_bandwidth(2 << 30, 10, DEV)
    cfg_dict = config(args.layers)
    t0 = time.perf_counter()
    model = build_ours(cfg_dict)
    print(f"built {args.layers} layers in {time.perf_counter() - t0:.1f} s", flush=True)
    nbytes = model.decode_bytes_per_token(args.prompt + args.new // 2)
    ours = bench_ours(model, args.prompt, args.new, args.prefill)
    print(f"ours {ours}", flush=True)
    del model
    gc.collect()
    cuda.empty_cache(DEV)
    hf: dict[str, Any] = {}
    if not args.no_hf:
        try:
            hf = bench_hf(cfg_dict, args.prompt, args.new, args.prefill, args.compile)
        except Exception as exc:  # report, keep going
            print(f"transformers failed: {type(exc).__name__}: {exc}", flush=True)
    print(f"transformers {hf}", flush=True)
    e, c = hf.get("eager_decode", math.nan), hf.get("compiled_decode", math.nan)
    print()
    print(
        f"Qwen3-Coder-30B-A3B shapes, {args.layers} layers, bf16, on {info['name']} (read "
        f"bandwidth {rbw:.0f} GB/s); decode: {args.new} tokens after {args.prompt}, batch 1; "
        f"{nbytes / 1e6:.0f} MB read per token; transformers experts: {hf.get('experts')}"
    )
    hdr = (
        f"{'metric':9} {'ours tok/s':>11} {'HF eager':>9} {'HF compiled':>12} {'x eager':>8} "
        f"{'% of BW':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for key, label in (("decode", "decode"), ("replay", "replay"), ("sampled", "sampled")):
        frac = nbytes * ours[key] / (rbw * 1e9) * 100
        hv = (e, c) if key == "decode" else (math.nan, math.nan)
        print(
            f"{label:9} {ours[key]:11.1f} {hv[0]:9.1f} {hv[1]:12.1f} {ours[key] / e:8.2f} "
            f"{frac:7.1f}%"
        )
    print(
        f"{'batch8':9} {ours['batch8']:11.1f} {'':9} {'':12} {'':8} {'':8} (8 sequences, "
        f"summed; {ours['batch8'] / ours['decode']:.2f}x batch 1; "
        f"{ours['batch8'] / ours['batch8_ops']:.2f}x the steps run call by call, "
        f"{ours['batch8_ops']:.0f} tok/s)"
    )
    ep = hf.get("eager_prefill", math.nan)
    print(f"{'prefill':9} {ours['prefill']:11.0f} {ep:9.0f} {'':12} {ours['prefill'] / ep:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": info["name"],
                    "read_bandwidth_gbps": rbw,
                    "layers": args.layers,
                    "bytes_per_token": nbytes,
                    "ours": ours,
                    "hf": hf,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
