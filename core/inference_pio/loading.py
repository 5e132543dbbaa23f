"""``load_model``: from a checkpoint directory, a ``synthetic:NAME`` or a model name to a model."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from inference_pio.checkpoint import Checkpoint
from inference_pio.errors import ModelNotFoundError
from inference_pio.interface import TextModelPluginInterface
from inference_pio.plugins import PluginHost, get_plugin_host
from inference_pio.synthetic import PREFIX as SYNTHETIC_PREFIX


def resolve_path(
    model: str | Path, host: PluginHost, progress: bool = True
) -> tuple[Path, str | None]:
    """The checkpoint directory for ``model`` and the model name it implies (if any)."""
    text = str(model)
    if text.startswith(SYNTHETIC_PREFIX):
        from inference_pio import synthetic

        name = text[len(SYNTHETIC_PREFIX) :]
        spec = host.registry.get(name)
        return synthetic.checkpoint_path(spec.name, host, progress=progress), spec.name
    path = Path(text).expanduser()
    if path.exists():
        return path, None
    from inference_pio import hub

    if hub.looks_like_repo_id(text):
        return hub.snapshot_path(text, progress=progress), None
    if text in host.registry:
        spec = host.registry.get(text)
        raise ModelNotFoundError(
            f"{text!r} is a registered model but no local checkpoint was given. Pass its Hugging "
            f"Face repo id ({spec.hf_repo}; downloads it with `inference-pio[hub]`) or a "
            f"checkpoint directory, or use `synthetic:{spec.name}` for random weights of the "
            f"real size."
        )
    raise ModelNotFoundError(
        f"{text!r} is neither a checkpoint directory nor a registered model; "
        f"registered models: {', '.join(s.name for s in host.registry) or 'none'}"
    )


def load_model(
    model: str | Path,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    threads: int | None = None,
    name: str | None = None,
    progress: bool = True,
    host: PluginHost | None = None,
    gpu_layers: int | str | None = None,
    quantization: str | None = None,
    max_batch_size: int | None = None,
    **options: Any,
) -> TextModelPluginInterface:
    """Loads a model.

    ``model`` is a Hugging Face checkpoint directory, a Hub repo id (``owner/name[@revision]``:
    the local Hub cache, downloading what is missing; needs ``inference-pio[hub]``),
    ``synthetic:NAME`` (random weights with the real configuration) or, for a helpful error, a
    registered name. The plugin is chosen from
    ``config.json`` (``architectures``; ``name`` picks one when several models share it).
    ``device`` is ``"cpu"`` or ``"cuda[:N]"``; ``dtype`` the compute dtype (default: bf16 for
    bf16 checkpoints, f32 for f32 ones); ``threads`` the CPU thread count. ``gpu_layers`` (with a
    CUDA ``device``) splits the model: that many of its last layers, the final norm and the LM
    head on the GPU, the rest on the CPU; ``"auto"`` takes as many as the GPU's memory holds
    (:class:`~inference_pio.scheduler.HybridScheduler`). Models whose plugin builds through
    ``nn.dense.build`` take it; others say they cannot be split. ``quantization="fp8"``
    quantizes the projections of an unquantized checkpoint to block-scaled FP8 as they are built
    (half the weight bytes; models whose spec lists it in ``quantizations``); an FP8 checkpoint
    loads as FP8 without it. ``max_batch_size``: the most sequences ``generate_batch`` runs
    together (default 8). ``options``: those the model's spec lists in ``load_options`` (Qwen3-VL:
    ``min_pixels`` / ``max_pixels``); any other keyword is a TypeError naming it.
    """
    if max_batch_size is not None and (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, int)
        or max_batch_size < 1
    ):
        raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    host = host or get_plugin_host()
    if threads is not None:
        from inference_pio._native import check, lib

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        check(lib().to_set_num_threads(threads), "to_set_num_threads")
    path, implied = resolve_path(model, host, progress)
    checkpoint = Checkpoint.open(path)
    wanted = name or implied
    spec = host.registry.get(wanted) if wanted else host.resolve_checkpoint(path, checkpoint.config)
    if name:  # chosen by hand: it must take this kind of checkpoint
        config = checkpoint.config
        keys = [*(config.get("architectures") or []), config.get("model_type")]
        if not any(k in spec.architectures or k in spec.model_types for k in keys if k):
            raise ModelNotFoundError(
                f"model {spec.name!r} takes {', '.join(spec.architectures) or 'other'} "
                f"checkpoints; {path} is {', '.join(str(k) for k in keys if k) or 'unlabelled'}"
            )
    unknown = sorted(set(options) - set(spec.load_options))
    if unknown:
        takes = ", ".join(spec.load_options) or "none"
        raise TypeError(
            f"load_model() got unexpected option(s) {', '.join(unknown)} (model {spec.name!r} "
            f"takes these of its own: {takes})"
        )
    if quantization is not None:
        from inference_pio.quantization import QUANTIZATION_CHOICES

        if quantization not in QUANTIZATION_CHOICES:
            raise ValueError(
                f"quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, "
                f"got {quantization!r}"
            )
        if quantization not in spec.quantizations:
            able = [s.name for s in host.registry if quantization in s.quantizations]
            raise ValueError(
                f"model {spec.name!r} cannot be quantized to {quantization} at load "
                f"(models that can: {', '.join(able) or 'none'}); its FP8 checkpoints load as is"
            )
        on_gpu = not str(device).startswith("cpu") and gpu_layers is None
        if on_gpu and quantization not in spec.gpu_quantizations:
            able = [s.name for s in host.registry if quantization in s.gpu_quantizations]
            raise ValueError(
                f"model {spec.name!r} keeps bf16 weights on a GPU (its CUDA decode steps take "
                f"them), so quantization={quantization!r} applies to its layers on the CPU only: "
                "use it with --device cpu or --gpu-layers; models that keep "
                f"{quantization} on a GPU: {', '.join(able) or 'none'}"
            )
        options["quantization"] = quantization
    placed: Any = device
    if gpu_layers is not None:
        placed = _placement(checkpoint, device, gpu_layers, dtype)
    elif str(device).startswith("cpu"):
        warn_if_larger_than_memory(path)
    opts = dict(options, device=placed, dtype=dtype, name=spec.name, progress=progress)
    loaded: TextModelPluginInterface = host.pm.hook.pio_load_model(
        spec=spec, path=path, options=opts
    )
    if max_batch_size is not None:
        loaded.max_batch_size = max_batch_size  # type: ignore[attr-defined]
    if gpu_layers is not None and progress:  # once the plugin took the split
        print(f"{spec.name}: {placed.describe()}", file=sys.stderr)
    return loaded


def _tensor_info(weights: Any) -> dict[str, tuple[Any, int]]:
    """Dtype and bytes of each weight as the model holds it, from the headers: an FP8
    checkpoint's float8 weights at their dequantized dtype and size (a GPU layer of a layout
    other than the dense one holds them so; the dense one keeps FP8, so the split is then
    conservative) without dequantizing them (``weights.items()`` would, every one, on the host)."""
    from inference_pio.dtypes import DType
    from inference_pio.quantization import Fp8Weights

    if not isinstance(weights, Fp8Weights):
        return {name: (t.dtype, t.nbytes) for name, t in weights.items()}
    info = {}
    for name in weights:
        t = weights.base[name]
        if t.dtype == DType.float8_e4m3:
            info[name] = (weights.dtype, t.numel * weights.dtype.itemsize)
        else:
            info[name] = (t.dtype, t.nbytes)
    return info


def _placement(
    checkpoint: Checkpoint, device: str, gpu_layers: int | str, dtype: str | None = None
) -> Any:
    """The hybrid placement ``gpu_layers`` asks for (an int, or ``"auto"``); the KV cache is
    planned at the compute dtype's size (``dtype``, else f32 for a checkpoint mostly of f32
    weights, as the builders choose, else bf16)."""
    from inference_pio.device import Device
    from inference_pio.scheduler import plan_for_checkpoint

    if Device.parse(device).type != "cuda":
        raise ValueError("gpu_layers needs a CUDA device (--device cuda)")
    from inference_pio import cuda

    if not cuda.is_available():
        raise ValueError(f"CUDA is not available: {cuda.unavailable_reason()}")
    if isinstance(gpu_layers, str) and gpu_layers.strip().lower() != "auto":
        try:
            gpu_layers = int(gpu_layers)
        except ValueError:
            raise ValueError(
                f"gpu_layers must be a layer count or 'auto', got {gpu_layers!r}"
            ) from None
    count = None if isinstance(gpu_layers, str) else int(gpu_layers)
    sizes = {name: nbytes for name, (_, nbytes) in _tensor_info(checkpoint.weights).items()}
    itemsize = cache_itemsize(checkpoint, dtype)
    return plan_for_checkpoint(checkpoint.config, sizes, device, count, cache_itemsize=itemsize)


def cache_itemsize(checkpoint: Checkpoint, dtype: str | None) -> int:
    """Bytes per KV-cache value: the compute dtype's, ``dtype`` where given, else f32 for a
    checkpoint mostly of f32 weights (as the builders choose) and bf16 otherwise."""
    from inference_pio.dtypes import DType

    if dtype is not None:
        return DType.parse(dtype).itemsize
    info = _tensor_info(checkpoint.weights).values()
    f32 = sum(nbytes for dt, nbytes in info if dt == DType.float32)
    return 4 if 2 * f32 > sum(nbytes for _, nbytes in info) else 2


def memory_total_bytes() -> int | None:
    """The machine's memory (``MemTotal`` of /proc/meminfo), or None where it is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def warn_if_larger_than_memory(path: Path) -> None:
    """Warns when a checkpoint's weights exceed the machine's memory: the loader maps them
    without copying, so it succeeds, but every decode step then reads them from disk."""
    total = memory_total_bytes()
    weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    if total and weights > total:
        warnings.warn(
            f"{path}: the weights ({weights / 2**30:.1f} GiB) exceed this machine's memory "
            f"({total / 2**30:.1f} GiB): every token will read them from disk (very slow); "
            "use a GPU (--device cuda, --gpu-layers) or a smaller model",
            RuntimeWarning,
            stacklevel=3,
        )
