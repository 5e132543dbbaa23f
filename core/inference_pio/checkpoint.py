"""A Hugging Face checkpoint directory: config, generation config, weights and tokenizer files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference_pio.errors import CheckpointError

if TYPE_CHECKING:
    from inference_pio.tensor import Tensor


def read_json(path: Path, required: bool = True) -> dict[str, Any]:
    """Parses a JSON object file; errors name the file and the problem."""
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: file not found")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@dataclass
class Checkpoint:
    """Files of one checkpoint directory, read lazily where they are large."""

    path: Path
    config: dict[str, Any]
    generation_config: dict[str, Any] = field(default_factory=dict)
    #: Fault the weight pages in when first opened, with a progress bar for large checkpoints
    #: on a terminal (like llama.cpp's load bar); False maps lazily.
    progress: bool = False
    #: ``"fp8"``: quantize the projections of an unquantized checkpoint to block-scaled FP8 as
    #: the model is built (:class:`~inference_pio.quantization.QuantizeOnLoad`); None: as stored
    quantization: str | None = None
    _weights: Mapping[str, Tensor] | None = None

    @classmethod
    def open(
        cls, path: str | Path, progress: bool = False, quantization: str | None = None
    ) -> Checkpoint:
        """Reads config.json (required) and generation_config.json (optional)."""
        root = Path(path).expanduser()
        if not root.exists():
            raise CheckpointError(f"{root}: checkpoint directory does not exist")
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a directory (pass the checkpoint directory)")
        config = read_json(root / "config.json")
        generation = read_json(root / "generation_config.json", required=False)
        return cls(root, config, generation, progress, quantization)

    @property
    def weights(self) -> Mapping[str, Tensor]:
        """Name → zero-copy tensor over the mmapped safetensors files (an FP8 checkpoint's
        quantized weights dequantized on first access: :mod:`inference_pio.quantization`)."""
        if self._weights is None:
            from inference_pio.quantization import open_quantized, parse_quantization
            from inference_pio.weights import load_checkpoint_weights

            parse_quantization(self.config)  # an unsupported scheme fails before any file opens
            # quantizing at load reads each tensor once and drops its pages: faulting the whole
            # file in first would hold every source byte at once (the peak memory of bf16)
            prefetch = self.progress and self.quantization is None
            index = load_checkpoint_weights(self.path, prefetch=prefetch)
            self._weights = open_quantized(index, self.config, self.quantization)
        return self._weights

    def require(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """The weight ``name``, checked against the shape the config implies."""
        try:
            t = self.weights[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: weight {name!r} is missing") from None
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.path}: weight {name!r} has shape {tuple(t.shape)}, config implies {shape}"
            )
        return t
