"""Where a CUDA-graph decode step spends its time: the step replayed with one kernel class left out
at a time (METHOD.md: time variants that leave one stage out, take differences).

For each model (synthetic real-size bf16 weights on the device): ms per token of the full captured
step, of the step without each kernel class / stage (the tokens are then wrong; only time counts),
and of a step with everything left out (the floor: for the fused step its grid barriers and the
token feedback, for the multi-kernel step the feedback kernel alone). A GEMV class's bytes over its
time difference is the bandwidth it reaches inside the real step. Profiles the fused one-kernel
step unless --multi-kernel is given.

    PYTHONPATH=core:plugins/qwen3_0_6b:plugins/qwen3_4b_instruct_2507 \
      python benchmarks/gpu_profile_decode.py [--models 0.6b,4b] [--prompt 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmark_gpu import DEV, build_ours, real_config

from inference_pio import cuda
from inference_pio.nn.cuda_graph import CudaGraphDecoder

PROMPT, NEW = 32, 128


def step_ms(model: Any, skip: tuple[str, ...], fused: bool) -> float:
    runner = CudaGraphDecoder(model, PROMPT + NEW + 1, chunk=NEW, skip=skip, fused=fused)
    runner.greedy(5, PROMPT, 8)  # warm-up
    rates = []
    for _ in range(5):
        cuda.synchronize(DEV)
        t0 = time.perf_counter()
        runner.greedy(5, PROMPT, NEW)
        rates.append((time.perf_counter() - t0) / NEW * 1e3)
    del runner
    return statistics.median(rates)


def gemv_bytes(cfg: Any) -> dict[str, int]:
    h, hd, inter, L = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.num_layers
    return {
        "qkv": L * h * (cfg.num_heads + 2 * cfg.num_kv_heads) * hd * 2,
        "o_proj": L * cfg.num_heads * hd * h * 2,
        "gate_up": L * 2 * inter * h * 2,
        "down": L * inter * h * 2,
        "lm_head": cfg.vocab_size * h * 2,
    }


def main() -> int:
    global PROMPT
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="0.6b,4b")
    ap.add_argument("--multi-kernel", action="store_true", help="profile the multi-kernel step")
    ap.add_argument(
        "--stages-only", action="store_true", help="only the fused step's in-kernel stage table"
    )
    ap.add_argument(
        "--prompt", type=int, default=PROMPT, help="context before the timed tokens (default 32)"
    )
    args = ap.parse_args()
    PROMPT = args.prompt
    info = cuda.device_info(DEV)
    bw = cuda.copy_bandwidth(device=DEV)
    print(f"device: {info['name']}, copy bandwidth {bw:.0f} GB/s (read + write)")
    classes = [k for k in CudaGraphDecoder.KERNELS if k != "step_end"]
    for name in args.models.split(","):
        model, cfg = build_ours(real_config(name))
        fused = not args.multi_kernel
        if args.stages_only and fused:
            print(f"\n[{name}] fused step {step_ms(model, (), True):.3f} ms")
            stage_table(model)
            del model
            continue
        full = step_ms(model, (), fused)
        floor = step_ms(model, tuple(classes), fused)
        nbytes = gemv_bytes(cfg)
        print(
            f"\n[{name}] {'fused' if fused else 'multi-kernel'} step {full:.3f} ms "
            f"({1e3 / full:.0f} tok/s); everything left out {floor:.3f} ms"
        )
        print(f"{'left out':18s} {'ms/token':>9s} {'class ms':>9s} {'GB/s':>8s}")
        for k in [*classes, "qk_rope_append+attention_decode"]:
            skip = tuple(k.split("+"))
            ms = step_ms(model, skip, fused)
            d = full - ms
            gbs = f"{nbytes[k] / (d * 1e-3) / 1e9:8.0f}" if k in nbytes and d > 0 else "       -"
            print(f"{k:18s} {ms:9.3f} {d:9.3f} {gbs}")
        if fused:
            stage_table(model)
        del model
    return 0


def stage_table(model: Any) -> None:
    """Per-stage times of layer 1 inside the fused kernel, from barrier timestamps, and (in a
    library built with -DDK_STAGE_STAMPS=1) the phases inside each stage."""
    runner = CudaGraphDecoder(model, PROMPT + NEW + 1, chunk=NEW, fused=True)
    runner.greedy(5, PROMPT, 8)
    info = runner.fused_info()
    assert info is not None
    folded = info["fold_keys"] >= PROMPT + 9  # attention folded into o_proj: 3 barriers a layer
    rows = runner.profile_stages(5, PROMPT + 8, first=2 if folded else 3)
    names = (
        ["qkv", "attention+o_proj", "gate_up+down"]
        if folded
        else ["qkv", "attention", "o_proj", "gate_up+down"]
    )
    bases = [16, 20, 28] if folded else [16, 20, 24, 28]  # the stages' stamp indices
    print(
        f"{'stage (layer 1)':16s} {'work max us':>11s} {'work mean us':>12s} "
        f"{'barrier us':>10s} {'mean wait us':>12s}"
    )
    for i, name in enumerate(names):
        work = [r[2 * (i + 1)] - r[2 * i + 1] for r in rows]
        arrive = [r[2 * (i + 1)] for r in rows]
        depart = [r[2 * (i + 1) + 1] for r in rows]
        # barrier latency: last arrival to first departure
        lat = min(depart) - max(arrive)
        wait = statistics.mean(d - a for a, d in zip(arrive, depart, strict=True))
        print(
            f"{name:16s} {max(work) / 1e3:11.2f} {statistics.mean(work) / 1e3:12.2f} "
            f"{lat / 1e3:10.2f} {wait / 1e3:12.2f}"
        )
    # inside each stage (layer 1, thread 0 of each block): mean / max us; for attention (the
    # blocks that run a unit) the columns are: heads + first key tile ready, scores + P.V, output
    # (folded: heads + keys ready, scores + P.V + o_proj rows ready, products)
    print(
        f"{'inside (layer 1)':16s} {'staging':>13s} {'weights':>13s} {'row sums':>13s} "
        f"{'end->arrival':>13s}"
    )

    def mm(v: list[float]) -> str:
        return f"{statistics.mean(v) / 1e3:6.2f}/{max(v) / 1e3:6.2f}"

    if not any(r[16] for r in rows):
        print(
            "(no stage stamps: build the CUDA library with -DDK_STAGE_STAMPS=1 in CMAKE_CUDA_FLAGS)"
        )
        return
    for i, name in enumerate(names):
        b = bases[i]
        # attention: the blocks that ran a unit (the others have no inner stamps)
        sel = [r for r in rows if all(r[b + j] for j in range(4))]
        sel = sel or [r for r in rows if r[b] and r[b + 3]]
        if not sel:
            continue
        cols = []
        for lo, hi in ((b, b + 1), (b + 1, b + 2), (b + 2, b + 3)):
            ok = all(r[lo] and r[hi] for r in sel)
            cols.append(mm([r[hi] - r[lo] for r in sel]) if ok else "-")
        cols.append(mm([r[2 * (i + 1)] - r[b + 3] for r in sel]))
        print(f"{name:16s} " + " ".join(f"{c:>13s}" for c in cols))


if __name__ == "__main__":
    raise SystemExit(main())
