"""Quantized checkpoints: the ``quantization_config`` of a config.json, and the weights of an FP8
checkpoint (Qwen's and DeepSeek's ``-FP8`` repositories) seen as ordinary tensors.

An FP8 checkpoint stores each quantized projection ``X.weight`` [n, k] as float8 e4m3 bytes and a
float32 (or bf16) ``X.weight_scale_inv`` of ``ceil(n / bn) x ceil(k / bk)`` block scales (``bn,
bk`` = ``weight_block_size``, 128 x 128 in Qwen's repositories): the real weight is
``e4m3(W[i, j]) * scale_inv[i // bn, j // bk]``. Embeddings, norms, the LM head and routers stay
unquantized. vLLM and DeepSeek's reference code read the grid this way (edge blocks may be
partial); transformers does on grids that divide the shape.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from inference_pio.dtypes import DType
from inference_pio.errors import CheckpointError
from inference_pio.tensor import Tensor

SCALE_SUFFIX = "_scale_inv"
#: companions of a quantized weight that weight-only FP8 compute has no use for (static
#: activation scales: activations stay in the compute dtype, as transformers' CPU path keeps them)
_IGNORED_SUFFIXES = (".input_scale", ".activation_scale")


@dataclass(frozen=True)
class Fp8Scheme:
    """The ``quantization_config`` of an FP8 checkpoint (``quant_method: "fp8"``)."""

    block: tuple[int, int]
    activation_scheme: str = "dynamic"


def parse_quantization(config: Mapping[str, Any]) -> Fp8Scheme | None:
    """The checkpoint's quantization scheme: None for an unquantized checkpoint, an
    :class:`Fp8Scheme` for block-scaled FP8 (``quant_method: "fp8"``, ``fmt: "e4m3"``);
    CheckpointError naming the method for every other kind (AWQ, GPTQ, compressed-tensors, ...)."""
    quant = config.get("quantization_config")
    if not quant:
        return None
    if not isinstance(quant, Mapping):
        raise CheckpointError(
            f"config.json: quantization_config must be an object, got {type(quant).__name__}"
        )
    method = quant.get("quant_method", "unknown")
    if str(method).lower() != "fp8":
        raise CheckpointError(
            f"config.json: quantized checkpoints are not supported for quant_method {method!r} "
            "(FP8 checkpoints, quant_method 'fp8', are); use the unquantized (bf16) checkpoint"
        )
    fmt = quant.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise CheckpointError(
            f"config.json: FP8 format {fmt!r} is not supported (e4m3 only: float8_e4m3fn)"
        )
    block = quant.get("weight_block_size", [128, 128])
    if block is None:
        raise CheckpointError(
            "config.json: FP8 checkpoints with per-tensor scales (no weight_block_size) are not "
            "supported; block-scaled FP8 (weight_block_size, e.g. [128, 128]) is"
        )
    if (
        not isinstance(block, list | tuple)
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        raise CheckpointError(
            f"config.json: quantization_config.weight_block_size must be two positive integers, "
            f"got {block!r}"
        )
    scheme = str(quant.get("activation_scheme", "dynamic"))
    if scheme not in ("dynamic", "static"):
        raise CheckpointError(
            f"config.json: quantization_config.activation_scheme {scheme!r} is not supported "
            "('dynamic' or 'static')"
        )
    return Fp8Scheme((int(block[0]), int(block[1])), scheme)


def dequantize_dtype(config: Mapping[str, Any]) -> DType:
    """The dtype FP8 weights are dequantized to: the checkpoint's ``torch_dtype`` (``dtype`` in
    transformers 5) where it is float32 or float16, else bf16 (Qwen's FP8 repositories say bf16),
    as transformers' CPU fallback dequantizes to the model's dtype."""
    name = config.get("dtype", config.get("torch_dtype"))
    if name in ("float32", "float16"):
        return DType.parse(name)
    return DType.bfloat16


class Fp8Weights(Mapping[str, Tensor]):
    """The tensors of an FP8 checkpoint with every quantized weight dequantized on first access.

    ``weights[name]`` of a float8 tensor returns it dequantized to ``dtype`` (lookups while the
    first result is alive see the same memory; its float8 pages are given back); the scale
    tensors are consumed and not listed. Other
    tensors pass through unchanged (zero-copy). :meth:`quantized` returns the raw pair for
    layers that compute on FP8 weights directly."""

    def __init__(self, base: Mapping[str, Tensor], scheme: Fp8Scheme, dtype: DType) -> None:
        self.base = base
        self.scheme = scheme
        self.dtype = dtype
        # name -> the dequantized tensor's storage, weakly: a later lookup while the model holds
        # it returns a view of the same memory; the cache never keeps a copy alive itself (a GPU
        # layer's host copy, or a projection a builder rearranged, would stay for good)
        self._cache: dict[str, tuple[weakref.ref[Any], tuple[int, ...], DType]] = {}
        hidden: set[str] = set()
        for name in base:
            scale_of = name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] in base
            if scale_of or name.endswith(_IGNORED_SUFFIXES):
                hidden.add(name)
        self._hidden = hidden

    def __iter__(self) -> Iterator[str]:
        return (n for n in self.base if n not in self._hidden)

    def __len__(self) -> int:
        return len(self.base) - len(self._hidden)

    def __contains__(self, name: object) -> bool:
        return name in self.base and name not in self._hidden

    def __getattr__(self, attr: str) -> Any:
        # info(), total_bytes, prefetch(), close(), metadata of the underlying index
        if attr == "base":  # not yet set (unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def quantized(self, name: str) -> tuple[Tensor, Tensor] | None:
        """``(weight, scale_inv)`` of a float8 weight (scale as float32, checked against the
        block grid), None for an unquantized one; KeyError for a name not in the checkpoint."""
        if name not in self:
            raise KeyError(f"no tensor named {name!r} in the checkpoint")
        w = self.base[name]
        scale_name = name + SCALE_SUFFIX
        if w.dtype != DType.float8_e4m3:
            if scale_name in self.base:  # a scale for a weight that is not quantized: broken
                raise CheckpointError(
                    f"weight {name!r} is {w.dtype.name}, not float8 (e4m3), but the checkpoint "
                    f"has a {scale_name!r} for it"
                )
            return None
        if scale_name not in self.base:
            raise CheckpointError(
                f"weight {name!r} is float8 (e4m3) but the checkpoint has no {scale_name!r}"
            )
        scale = self.base[scale_name]
        if w.ndim != 2:
            raise CheckpointError(
                f"weight {name!r}: float8 weights must be 2-d, got shape {tuple(w.shape)}"
            )
        bn, bk = self.scheme.block
        n, k = w.shape
        grid = (-(-n // bn), -(-k // bk))
        if tuple(scale.shape) != grid:
            raise CheckpointError(
                f"weight {scale_name!r} has shape {tuple(scale.shape)}, expected {grid} "
                f"(weight {tuple(w.shape)} in blocks of {bn} x {bk})"
            )
        if scale.dtype not in (DType.float32, DType.bfloat16, DType.float16):
            raise CheckpointError(
                f"weight {scale_name!r} has dtype {scale.dtype.name} (float32 or bf16 expected)"
            )
        if scale.dtype != DType.float32:
            scale = scale.to(DType.float32)
        return w, scale

    def __getitem__(self, name: str) -> Tensor:
        cached = self._cache.get(name)
        if cached is not None:
            storage = cached[0]()
            if storage is not None:
                return Tensor(storage, cached[1], cached[2])
        if name in self._hidden:
            raise KeyError(f"{name!r} is a scale of a quantized weight, not a model weight")
        pair = self.quantized(name)
        if pair is None:
            return self.base[name]
        from inference_pio.ops.quant import dequantize_fp8

        t = dequantize_fp8(pair[0], pair[1], self.scheme.block, self.dtype)
        self._cache[name] = (weakref.ref(t.storage), tuple(t.shape), t.dtype)
        _release(self.base, name)  # the float8 bytes are not read again
        return t


class QuantizeOnLoad(Fp8Weights):
    """An unquantized checkpoint whose projections are quantized to block-scaled FP8 as they
    are built (vLLM's ``--quantization fp8`` on a bf16 checkpoint): :meth:`quantized` of a 2-d
    ``*_proj.weight`` quantizes it (per 128 x 128 block, as transformers' ``Fp8Quantize``); every
    other lookup returns the checkpoint's tensor unchanged."""

    def __init__(self, base: Mapping[str, Tensor], block: tuple[int, int] = (128, 128)) -> None:
        super().__init__(base, Fp8Scheme(block), DType.bfloat16)

    def __getitem__(self, name: str) -> Tensor:
        return self.base[name]

    def quantized(self, name: str) -> tuple[Tensor, Tensor] | None:
        if name not in self:
            raise KeyError(f"no tensor named {name!r} in the checkpoint")
        w = self.base[name]
        if w.dtype == DType.float8_e4m3:
            return super().quantized(name)
        if not name.endswith("_proj.weight") or w.ndim != 2 or not w.dtype.is_floating:
            return None
        from inference_pio.ops.quant import quantize_fp8

        pair = quantize_fp8(w, self.scheme.block)  # the caller keeps it (not cached here)
        _release(self.base, name)  # the bf16 bytes are not read again (unless asked for)
        return pair


def _release(weights: Mapping[str, Tensor], name: str) -> None:
    """Drops the resident pages of a checkpoint tensor converted at load, where the mapping can
    (:meth:`~inference_pio.weights.WeightIndex.release`): peak memory is then about the
    converted weights, not those plus every source byte read."""
    release = getattr(weights, "release", None)
    if release is not None:
        release(name)


#: values of the ``quantization`` load option
QUANTIZATION_CHOICES = ("fp8",)


def open_quantized(
    weights: Mapping[str, Tensor], config: Mapping[str, Any], quantization: str | None = None
) -> Mapping[str, Tensor]:
    """``weights`` as the model builders should see them: wrapped in :class:`Fp8Weights` for an
    FP8 checkpoint, in :class:`QuantizeOnLoad` for ``quantization="fp8"`` on an unquantized one,
    else unchanged (CheckpointError for other schemes, ValueError for another ``quantization``)."""
    if quantization is not None and quantization not in QUANTIZATION_CHOICES:
        raise ValueError(
            f"quantization must be one of {', '.join(QUANTIZATION_CHOICES)} or None, "
            f"got {quantization!r}"
        )
    scheme = parse_quantization(config)
    if scheme is not None:
        return Fp8Weights(weights, scheme, dequantize_dtype(config))
    if quantization == "fp8":
        return QuantizeOnLoad(weights)
    return weights
