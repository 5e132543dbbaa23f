"""My-Model: the model implementation, imported only when the model is loaded."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from inference_pio import CheckpointError, TextModelPluginInterface
from inference_pio.interface import BatchRequest
from inference_pio_my_model import MODEL_NAME


class MyModel(TextModelPluginInterface):
    """Replace the bodies with your model (tokenizer, weights, forward pass, sampling)."""

    name = MODEL_NAME

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.config = config

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError(f"{MODEL_NAME}: tokenize")

    def detokenize(self, ids: Sequence[int]) -> str:
        raise NotImplementedError(f"{MODEL_NAME}: detokenize")

    def generate_text(self, prompt: str, **sampling: Any) -> str:
        return "".join(self.stream_text(prompt, **sampling))

    def stream_text(self, prompt: str, **sampling: Any) -> Iterator[str]:
        raise NotImplementedError(f"{MODEL_NAME}: stream_text")

    def infer_batch(self, requests: Sequence[BatchRequest]) -> list[str]:
        results = []
        for request in requests:
            if isinstance(request, str):
                results.append(self.generate_text(request))
            else:
                options = {k: v for k, v in request.items() if k != "prompt"}
                results.append(self.generate_text(request["prompt"], **options))
        return results


def load(path: Path, **options: Any) -> TextModelPluginInterface:
    """The factory named by the plugin's ModelSpec: builds the model from a checkpoint directory."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{MODEL_NAME}: {config_file} not found")
    return MyModel(Path(path), json.loads(config_file.read_text()))
