"""Qwen3-VL-2B: Inference-PIO vs transformers on one image prompt, same process, same weights.

Builds (once, cached with the other synthetic checkpoints) a bf16 checkpoint with the real vision
tower (24 blocks, deepstack after 5, 11, 17) and the real text shapes with ``--text-layers``
layers (default 28: the whole model, 4.3 GB; fewer make the text side cheaper), then times, best
of ``--repeats``:

- preprocessing of one ``--image`` x ``--image`` RGB image (ours: Pillow resize + native
  normalise/patchify; transformers: ``Qwen2VLImageProcessorPil``);
- the vision tower (merger and deepstack rows);
- the prefill of a chat-like prompt with that image (vision tower included);
- batch-1 greedy decode of ``--new-tokens`` tokens after it.

    python plugins/qwen3_vl_2b/benchmarks/benchmark_inference.py [--device cpu|cuda]
        [--text-layers 28] [--image 448] [--new-tokens 32] [--repeats 3] [--threads N]

Prints a table with the ratios (ours / transformers speed) and the decode step's share of the
measured read bandwidth (bytes of the text weights read per token).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import llm_bench


def checkpoint(text_layers: int) -> Path:
    """The cached synthetic checkpoint (built from the plugin's spec, installed or not)."""
    from inference_pio_qwen3_vl_2b.config import real_config
    from inference_pio_qwen3_vl_2b.plugin import SPEC

    cfg = real_config()
    cfg["text_config"]["num_hidden_layers"] = text_layers
    return llm_bench.reduced_checkpoint(SPEC, cfg, text_layers)


def best(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--text-layers", type=int, default=28)
    p.add_argument("--image", type=int, default=448, help="image side in pixels (default 448)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    args = p.parse_args(argv)

    import torch
    import transformers
    from PIL import Image

    from inference_pio import cuda, ops
    from inference_pio.testing import torch_bridge as tb
    from inference_pio_qwen3_vl_2b.model import load
    from inference_pio_qwen3_vl_2b.positions import expand_image_pads
    from inference_pio_qwen3_vl_2b.preprocess import prepare_image

    if args.threads:
        torch.set_num_threads(args.threads)
        ops.set_num_threads(args.threads)
    on_gpu = args.device.startswith("cuda")
    tdev = "cuda" if on_gpu else "cpu"

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()
            cuda.synchronize(args.device)

    ckpt = checkpoint(args.text_layers)
    ours = load(ckpt, device=args.device)
    ref = (
        transformers.Qwen3VLForConditionalGeneration.from_pretrained(
            ckpt, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
        .to(tdev)
        .eval()
    )
    bounds = ours.processor
    proc = transformers.Qwen2VLImageProcessorPil(
        size={"shortest_edge": bounds.min_pixels, "longest_edge": bounds.max_pixels},
        patch_size=16, temporal_patch_size=2, merge_size=2,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    side = args.image
    pixels = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=g)
    pil = Image.frombytes("RGB", (side, side), tb.to_pio(pixels).tobytes())
    cfg = ours.vl.cfg
    text_ids = [151644, 872, 198]  # <|im_start|>user\n
    ids = [*text_ids, cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id]
    ids += [74785, 419, 2168, 13, 151645, 198, 151644, 77091, 198]  # "Describe this image." ...

    rows: list[tuple[str, float, float, str]] = []
    t_ours = best(lambda: prepare_image(pil, ours.processor), args.repeats, lambda: None)
    t_ref = best(lambda: proc(images=[pil], return_tensors="pt"), args.repeats, lambda: None)
    rows.append(("preprocess (ms)", t_ours * 1e3, t_ref * 1e3, f"{t_ref / t_ours:.2f}"))

    prepared = prepare_image(pil, ours.processor)
    hf_in = proc(images=[pil], return_tensors="pt")
    pv = hf_in["pixel_values"].to(tdev, torch.bfloat16)
    grid = hf_in["image_grid_thw"].to(tdev)
    with torch.no_grad():
        t_ours = best(lambda: ours.vl.vision([prepared]), args.repeats, sync)
        t_ref = best(lambda: ref.model.visual(pv, grid_thw=grid), args.repeats, sync)
    n_tok = prepared.tokens
    rows.append(
        (f"vision tower, {n_tok} tokens (ms)", t_ours * 1e3, t_ref * 1e3, f"{t_ref / t_ours:.2f}")
    )

    full = expand_image_pads(ids, cfg.image_token_id, [n_tok])
    inp = torch.tensor([full], device=tdev)
    mm = (inp == cfg.image_token_id).int()

    def ours_prefill() -> Any:
        cache = ours.vl.text.new_cache(len(full) + args.new_tokens + 1)
        return ours.vl.prefill(full, [prepared], cache)

    def ref_prefill() -> Any:
        ref.model.rope_deltas = None
        return ref(input_ids=inp, pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=mm)

    with torch.no_grad():
        t_ours = best(ours_prefill, args.repeats, sync)
        t_ref = best(ref_prefill, args.repeats, sync)
    rows.append(
        (f"prefill {len(full)} tokens + image (tok/s)", len(full) / t_ours, len(full) / t_ref,
         f"{t_ref / t_ours:.2f}")
    )  # fmt: skip

    n = args.new_tokens
    cache_kw = (
        "cache" if "cache" in inspect.signature(ref.forward).parameters else ("past_key_values")
    )
    decode_ours: list[float] = []
    for _ in range(args.repeats):
        r = ours.generate(ids, images=[pil], max_new_tokens=n, temperature=0, ignore_eos=True)
        decode_ours.append(r.decode_tokens_per_s)
    decode_ref: list[float] = []
    with torch.no_grad():
        for _ in range(args.repeats):
            ref.model.rope_deltas = None
            out = ref(input_ids=inp, pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=mm,
                      use_cache=True)  # fmt: skip
            tok = out.logits[:, -1:].argmax(-1)
            past = out.past_key_values
            sync()
            t0 = time.perf_counter()
            for _ in range(n - 1):
                out = ref(input_ids=tok, **{cache_kw: past}, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
            sync()
            decode_ref.append((n - 1) / (time.perf_counter() - t0))
    d_ours, d_ref = max(decode_ours), max(decode_ref)
    rows.append((f"decode {n} tokens (tok/s)", d_ours, d_ref, f"{d_ours / d_ref:.2f}"))

    nbytes = ours.vl.text.decode_bytes_per_token(len(full) + n // 2)
    if on_gpu:
        bw = cuda.read_bandwidth(device=args.device)
    else:
        bw = llm_bench.memory_bandwidth_gbps(args.threads or ops.get_num_threads())
    frac = d_ours * nbytes / 1e9 / bw
    device = cuda.device_info(args.device)["name"] if on_gpu else "CPU"
    print(f"Qwen3-VL-2B, {args.text_layers} text layers, bf16, {device}, image {side}x{side}")
    print(f"{'metric':<40} {'ours':>12} {'transformers':>14} {'x':>6}")
    for name, a, b, x in rows:
        print(f"{name:<40} {a:>12.1f} {b:>14.1f} {x:>6}")
    print(
        f"decode reads {nbytes / 1e6:.0f} MB/token: {frac:.1%} of the {bw:.0f} GB/s read bandwidth"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
