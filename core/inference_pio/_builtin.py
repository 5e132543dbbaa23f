"""The core's own hook implementations (registered before any plugin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio.hookspecs import hookimpl
from inference_pio.interface import TextModelPluginInterface
from inference_pio.registry import ModelSpec, import_reference


@hookimpl(trylast=True)
def pio_load_model(
    spec: ModelSpec, path: Path, options: dict[str, Any]
) -> TextModelPluginInterface:
    """Imports the spec's lazy factory and calls it with the checkpoint path and options."""
    factory = import_reference(spec.factory)
    model = factory(path, **options)
    if not isinstance(model, TextModelPluginInterface):
        raise TypeError(
            f"{spec.factory} returned {type(model).__name__}, not a TextModelPluginInterface"
        )
    return model
