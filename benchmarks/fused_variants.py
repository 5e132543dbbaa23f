"""Experiment: fused decode step rate and per-stage times under INFERENCE_PIO_FUSED_* variants."""

from __future__ import annotations

import os
import sys

from benchmark_gpu import build_ours, real_config
from gpu_profile_decode import NEW, PROMPT, stage_table, step_ms

VARIANTS = [v.split(":") for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [["0", "0"]]
for name in sys.argv[1].split(","):
    model, cfg = build_ours(real_config(name))
    for flags, kb in VARIANTS:
        os.environ["INFERENCE_PIO_FUSED_FLAGS"] = flags
        os.environ["INFERENCE_PIO_FUSED_ATT_KB"] = kb
        ms = step_ms(model, (), True)
        print(f"\n[{name}] flags={flags} att_kb={kb}: {ms:.3f} ms/token ({1e3 / ms:.0f} tok/s)")
        if flags == "0":
            stage_table(model)
    ms = step_ms(model, (), False)
    print(f"[{name}] multi-kernel: {ms:.3f} ms/token ({1e3 / ms:.0f} tok/s) [{PROMPT}+{NEW}]")
    del model

if os.environ.get("PROBE"):
    from inference_pio.nn.cuda_graph import CudaGraphDecoder

    for name in sys.argv[1].split(","):
        model, cfg = build_ours(real_config(name))
        r = CudaGraphDecoder(model, PROMPT + NEW + 1, chunk=NEW, fused=True)
        r.greedy(5, PROMPT, 8)
        rows = r.profile_stages(5, PROMPT + 8)
        print(f"[{name}] probes (us after the first): attention: tile ready, scores, softmax, PV, out; qkv: staged, ring done, rows done (last layer)")
        for b, row in enumerate(rows):
            if row[10] and row[11] and b % 8 == 0:
                dep = row[10]
                print(b, [round((row[10 + i] - dep) / 1e3, 2) for i in range(1, 6)])
        del model, r
