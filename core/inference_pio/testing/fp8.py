"""FP8 copies of test checkpoints, written as Qwen's and DeepSeek's -FP8 repositories are: each
quantized projection's weight as float8 e4m3 with a float32 ``weight_scale_inv`` per block, a
``quantization_config`` in config.json (torch is a test-only dependency)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: never quantized in the published FP8 checkpoints: embeddings, norms, the LM head, routers
_KEEP = ("embed", "norm", "lm_head", "mlp.gate.weight", "shared_expert_gate", "conv1d", "patch")


def quantizable(name: str, t: Any) -> bool:
    """Whether the FP8 repositories quantize this tensor: 2-d projection weights."""
    return t.ndim == 2 and name.endswith(".weight") and not any(k in name for k in _KEEP)


def quantize_block_fp8(w: Any, block: tuple[int, int]) -> tuple[Any, Any]:
    """``(e4m3 weight, float32 scale_inv)`` computed as transformers' ``Fp8Quantize``: per block
    ``s = 448 / amax`` (1 for an all-zero block), ``w * s`` clamped to ±448 and rounded to e4m3,
    ``scale_inv = 1 / s``. Edge blocks may be partial (a ``ceil(n / bn) x ceil(k / bk)`` grid,
    which transformers itself does not write)."""
    import torch

    bn, bk = block
    n, k = w.shape
    gn, gk = -(-n // bn), -(-k // bk)
    wf = w.to(torch.float32)
    scale_inv = torch.empty(gn, gk, dtype=torch.float32)
    q = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    for i in range(gn):
        for j in range(gk):
            rows, cols = slice(i * bn, (i + 1) * bn), slice(j * bk, (j + 1) * bk)
            amax = wf[rows, cols].abs().amax()
            s = 448.0 / amax if float(amax) > 0 else torch.tensor(1.0)
            q[rows, cols] = (wf[rows, cols] * s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
            scale_inv[i, j] = (1.0 / s).to(torch.float32)
    return q, scale_inv


def dequantize_block_fp8(q: Any, scale: Any, block: tuple[int, int]) -> Any:
    """The float32 weight of an e4m3 tensor and its block scales (partial edge blocks)."""
    import torch

    bn, bk = block
    n, k = q.shape
    full = scale.to(torch.float32).repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:n, :k]
    return q.to(torch.float32) * full


def write_fp8_checkpoint(
    src: Path,
    fp8_dir: Path,
    dequant_dir: Path | None = None,
    block: tuple[int, int] = (16, 16),
    select: Callable[[str], bool] | None = None,
) -> list[str]:
    """Writes ``fp8_dir``: the checkpoint ``src`` with every :func:`quantizable` weight in
    block-scaled FP8, and (if given) ``dequant_dir``: the same weights dequantized (to the source
    tensor's dtype) in an unquantized checkpoint, the reference the FP8 one must compute like.
    Other files are copied; ``select`` (a name predicate) narrows the weights quantized. Returns
    the names of the quantized weights."""
    from safetensors.torch import load_file, save_file  # type: ignore[import-not-found]

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src}: no *.safetensors")
    for d in (fp8_dir, dequant_dir):
        if d is None:
            continue
        d.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors"):
                shutil.copy(f, d / f.name)
    names: list[str] = []
    index: dict[str, str] = {}
    for f in files:
        tensors = load_file(str(f))
        quant: dict[str, Any] = {}
        deq: dict[str, Any] = {}
        for name, t in tensors.items():
            index[name] = f.name
            if quantizable(name, t) and (select is None or select(name)):
                q, s = quantize_block_fp8(t, block)
                quant[name] = q
                quant[name + "_scale_inv"] = s
                index[name + "_scale_inv"] = f.name
                # in the source's dtype: what the loader's dequantization gives (one rounding)
                deq[name] = dequantize_block_fp8(q, s, block).to(t.dtype)
                names.append(name)
            else:
                quant[name] = t
                deq[name] = t
        save_file(quant, str(fp8_dir / f.name), metadata={"format": "pt"})
        if dequant_dir is not None:
            save_file(deq, str(dequant_dir / f.name), metadata={"format": "pt"})
    idx_file = src / "model.safetensors.index.json"
    if idx_file.is_file():
        data = json.loads(idx_file.read_text())
        data["weight_map"] = index
        (fp8_dir / idx_file.name).write_text(json.dumps(data))
    config = json.loads((src / "config.json").read_text())
    quantization: dict[str, Any] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": list(block),
    }
    (fp8_dir / "config.json").write_text(
        json.dumps({**config, "quantization_config": quantization}, indent=2)
    )
    return names


def expand_scales(scale: Any, n: int, k: int, block: tuple[int, int]) -> Any:
    """The ``[ceil(n/bn), ceil(k/bk)]`` block scales spread over every element of ``[n, k]``."""
    return scale.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:n, :k]


def random_fp8_weight(n: int, k: int, block: tuple[int, int], seed: int) -> tuple[Any, Any]:
    """A checkpoint-like ``(e4m3 weight, float32 scales)``: normal weights (std 0.05) over random
    block scales in [1e-4, 1.1e-3), clamped to ±448 (no NaN)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    sn, sk = -(-n // block[0]), -(-k // block[1])
    scale = torch.rand(sn, sk, generator=g) * 1e-3 + 1e-4
    w8 = (w / expand_scales(scale, n, k, block)).clamp(-448, 448).to(torch.float8_e4m3fn)
    return w8, scale
