"""`inference-pio serve` throughput on the GPU: N concurrent clients of the OpenAI completions
API (the app in-process through Starlette's test client), total completion tokens a second,
against the model's own batch-1 generation in the same process.

Each client asks for ``--new`` sampled tokens (temperature 0.7, top-k 20) after a ``--prompt``
token prompt. One client alone decodes on the batch-1 fused step (the batch loop moves a lone
sequence there and back when another request arrives); more clients share batched steps.

    python benchmarks/gpu_server_bench.py [--clients 1,4,8,16] [--new 128] [--prompt 32]
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import llm_bench


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,4,8,16")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--device", default="cuda:0")
    args = p.parse_args(argv)

    from starlette.testclient import TestClient

    from inference_pio.server import create_app
    from inference_pio_qwen3_0_6b.config import real_config
    from inference_pio_qwen3_0_6b.model import load
    from inference_pio_qwen3_0_6b.plugin import SPEC

    cfg = real_config()
    ckpt = llm_bench.reduced_checkpoint(SPEC, cfg, cfg["num_hidden_layers"])
    model = load(ckpt, device=args.device)
    rng = random.Random(0)
    sampling = dict(temperature=0.7, top_k=20, ignore_eos=True)

    def prompt() -> list[int]:
        return [rng.randrange(1000, 100000) for _ in range(args.prompt)]

    model.generate(prompt(), max_new_tokens=8, **sampling)
    direct = max(
        model.generate(prompt(), max_new_tokens=args.new, **sampling).decode_tokens_per_s
        for _ in range(2)
    )
    rows: list[tuple[str, float, str]] = [("model.generate, batch 1", direct, "")]
    app = create_app(model, "m")
    with TestClient(app) as client:
        manager = app.state.service.manager
        lock = threading.Lock()

        def ask(_: int) -> int:
            with lock:
                ids = prompt()
            body: dict[str, Any] = {
                "prompt": ids,
                "max_tokens": args.new,
                "temperature": 0.7,
                "top_k": 20,
                "ignore_eos": True,
            }
            answer = client.post("/v1/completions", json=body).json()
            return int(answer["usage"]["completion_tokens"])

        ask(0)  # warm-up: graphs captured, slots sized
        for n in [int(c) for c in args.clients.split(",")]:
            alone, rejoined = manager.finished_alone, manager.rejoined
            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                tokens = sum(pool.map(ask, range(n)))
            rate = tokens / (time.perf_counter() - t0)
            note = (
                f"{manager.finished_alone - alone} finished alone, "
                f"{manager.rejoined - rejoined} rejoined the batch"
            )
            rows.append((f"serve, {n} client{'s' if n > 1 else ''}", rate, note))
    print(f"\nQwen3-0.6B (synthetic bf16), {args.new} sampled tokens after {args.prompt}, "
          f"{model.model.device}")  # fmt: skip
    print("| run | tok/s (all clients) | x batch 1 | notes |\n|---|---|---|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:.1f} | {rate / direct:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
