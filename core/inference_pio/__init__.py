"""Inference-PIO: a plugin-based LLM inference engine with its own C/CUDA backend.

``import inference_pio`` is cheap: it neither loads the native library nor discovers plugins.
Both happen on first use.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from inference_pio.errors import (
    CheckpointError,
    InferencePioError,
    ModelNotFoundError,
    NativeError,
    NativeLibraryError,
    PluginError,
)
from inference_pio.hookspecs import hookimpl
from inference_pio.interface import TextModelPluginInterface
from inference_pio.registry import ModelSpec

if TYPE_CHECKING:  # lazy at run time (see __getattr__); typed for type checkers
    from inference_pio.loading import load_model
    from inference_pio.plugins import get_plugin_host

try:
    __version__ = _metadata.version("inference-pio")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "CheckpointError",
    "InferencePioError",
    "ModelNotFoundError",
    "ModelSpec",
    "NativeError",
    "NativeLibraryError",
    "PluginError",
    "TextModelPluginInterface",
    "__version__",
    "get_plugin_host",
    "hookimpl",
    "load_model",
]


def __getattr__(name: str) -> Any:
    # Lazy attributes keep `import inference_pio` free of plugin discovery and native loading.
    if name == "get_plugin_host":
        from inference_pio.plugins import get_plugin_host

        return get_plugin_host
    if name == "load_model":
        from inference_pio.loading import load_model

        return load_model
    raise AttributeError(f"module 'inference_pio' has no attribute {name!r}")
