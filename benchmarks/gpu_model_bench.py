"""GLM-4.7-Flash or Qwen3-Coder-Next (bf16) on the GPU: Inference-PIO against transformers, same
process, same synthetic checkpoint (the real layer shapes, ``--layers`` of them).

Batch-1 decode replays the model's op-by-op step captured in a CUDA graph (nn.cuda_capture); the
same run also decodes op by op (``INFERENCE_PIO_CUDA_CAPTURE=0``) to show what the capture buys,
and runs one request through the server's batch loop (``BatchManager``: a lone sequence moves to
the captured step), with the capture and without.
Reports batch-1 greedy decode of ``--new`` tokens after ``--prompt`` (tok/s, the bytes a token
reads and that rate's share of the measured read bandwidth) and a prefill of ``--prefill``
tokens, best of ``--repeats``.

    python benchmarks/gpu_model_bench.py --model glm|next [--layers 4] [--new 64] [--prefill 512]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import llm_bench


def checkpoint(model: str, layers: int) -> tuple[Path, Any]:
    """The cached synthetic checkpoint and the plugin's ``load`` (built from the plugin's spec,
    installed or not)."""
    if model == "glm":
        from inference_pio_glm_4_7_flash.config import real_config
        from inference_pio_glm_4_7_flash.model import load
        from inference_pio_glm_4_7_flash.plugin import SPEC

        cfg = real_config()
        cfg["num_hidden_layers"] = layers
        cfg["mlp_layer_types"] = ["dense"] + ["sparse"] * (layers - 1)
    else:
        from inference_pio_qwen3_coder_next.config import real_config
        from inference_pio_qwen3_coder_next.model import load
        from inference_pio_qwen3_coder_next.plugin import SPEC

        cfg = real_config()
        cfg["num_hidden_layers"] = layers
        cfg["layer_types"] = [
            "full_attention" if (i + 1) % 4 == 0 or i == layers - 1 else "linear_attention"
            for i in range(layers)
        ]
    d = llm_bench.reduced_checkpoint(SPEC, cfg, layers)
    return d, load


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["glm", "next"], required=True)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    import torch
    import transformers

    from inference_pio import cuda

    d, load = checkpoint(args.model, args.layers)
    rng = random.Random(0)
    prompt = [rng.randrange(1000, 100000) for _ in range(args.prompt)]
    long = [rng.randrange(1000, 100000) for _ in range(args.prefill)]

    def sync() -> None:
        torch.cuda.synchronize()
        cuda.synchronize("cuda:0")

    import os

    from inference_pio.nn import cuda_capture

    ours = load(d, device="cuda:0")

    def decode_rate(lm: Any) -> float:
        lm.generate(prompt, max_new_tokens=4, temperature=0, ignore_eos=True)
        return max(
            lm.generate(
                prompt, max_new_tokens=args.new, temperature=0, ignore_eos=True
            ).decode_tokens_per_s
            for _ in range(args.repeats)
        )

    def batch_rate(lm: Any) -> float:
        """One request through the server's batch loop (BatchManager), decode tok/s."""
        from inference_pio.batching import BatchManager

        best = 0.0
        for _ in range(args.repeats):
            mgr = BatchManager(lm.model, lm.tokenizer, lm.eos_ids, 8)
            mgr.submit(
                prompt,
                lm.sampling_params(max_new_tokens=args.new, temperature=0, ignore_eos=True),
            )
            (res,) = mgr.run()
            best = max(best, res.decode_tokens_per_s)
        return best

    captured = cuda_capture.unsupported_reason(ours.model) is None
    o_dec = decode_rate(ours)
    o_batch = batch_rate(ours)
    os.environ["INFERENCE_PIO_CUDA_CAPTURE"] = "0"
    o_eager = decode_rate(ours)
    o_batch_eager = batch_rate(ours)
    del os.environ["INFERENCE_PIO_CUDA_CAPTURE"]
    step_bytes = ours.model.decode_bytes_per_token(args.prompt + args.new // 2)
    read_bw = cuda.read_bandwidth(device="cuda:0")
    o_pre = 0.0
    for _ in range(args.repeats):
        cache = ours.model.new_cache(len(long) + 1)
        sync()
        t = time.perf_counter()
        ours.model.forward([(long, cache)])
        sync()
        o_pre = max(o_pre, len(long) / (time.perf_counter() - t))
    del ours
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).to("cuda")
    ref.eval()
    with torch.no_grad():
        ids = torch.tensor([prompt], device="cuda")
        ref.generate(ids, max_new_tokens=4, do_sample=False)
        h_dec = 0.0
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            ref.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
            sync()
            h_dec = max(h_dec, args.new / (time.perf_counter() - t))  # prefill included
        h_pre = 0.0
        lids = torch.tensor([long], device="cuda")
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            ref(lids)
            sync()
            h_pre = max(h_pre, len(long) / (time.perf_counter() - t))
    name = {"glm": "GLM-4.7-Flash", "next": "Qwen3-Coder-Next"}[args.model]
    device = cuda.device_info("cuda:0")["name"]
    print(f"{name}, {args.layers} layers of the real shapes, bf16, {device}")
    print(f"{'metric':<34} {'ours':>10} {'transformers':>13} {'x':>6}")
    print(f"{f'decode {args.new} after {args.prompt} (tok/s)':<34} {o_dec:>10.1f} {h_dec:>13.1f} "
          f"{o_dec / h_dec:>6.2f}   {'captured graph' if captured else 'op by op'}")  # fmt: skip
    print(f"{'  ... op by op (tok/s)':<34} {o_eager:>10.1f} {h_dec:>13.1f} {o_eager / h_dec:>6.2f}"
          f"   capture {o_dec / o_eager:.2f}x")  # fmt: skip
    print(f"{'  server loop, one request (tok/s)':<34} {o_batch:>10.1f} {h_dec:>13.1f} "
          f"{o_batch / h_dec:>6.2f}   {o_batch_eager:.1f} op by op")  # fmt: skip
    gbs = step_bytes * o_dec / 1e9
    share = f", {100 * gbs / read_bw:.1f}% of the {read_bw:.0f} GB/s read probe" if read_bw else ""
    print(f"  {step_bytes / 1e6:.1f} MB a token: {gbs:.0f} GB/s{share}")
    print(f"{f'prefill {args.prefill} (tok/s)':<34} {o_pre:>10.0f} {h_pre:>13.0f} "
          f"{o_pre / h_pre:>6.2f}")  # fmt: skip
    print("(transformers' decode rate includes its prefill of the short prompt)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
