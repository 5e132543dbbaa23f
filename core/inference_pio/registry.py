"""Model specs and the registry that resolves names, aliases and HF architectures to them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from inference_pio.errors import ModelNotFoundError, PluginError
from inference_pio.toolcalls import PARSERS


@dataclass(frozen=True)
class ModelSpec:
    """What a plugin says about one model it can run.

    ``factory`` and ``config_factory`` are lazy references ``"package.module:attribute"``; nothing
    is imported until a model is actually loaded.
    """

    name: str
    factory: str
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    hf_repo: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    #: ``"pkg.module:function"`` returning the real ``config.json`` as a dict (for ``synthetic:``).
    config_factory: str | None = None
    #: ``"pkg.module:function"`` mapping a config dict to ``{weight name: (shape, kind)}``, used to
    #: build ``synthetic:`` checkpoints (kind: "normal", "norm" or "zeros").
    weights_factory: str | None = None
    #: How the model writes tool calls: ``"hermes"``, ``"qwen3_coder"`` or ``"glm47"`` (the
    #: parsers of :mod:`inference_pio.toolcalls`), or None (tool calls stay text).
    tool_call_format: str | None = None
    #: Quantizations the factory applies at load when asked (``load_model(quantization=...)``):
    #: ``"fp8"`` for models whose projections are built by ``nn.dense.build`` from a checkpoint
    #: opened with ``Checkpoint.open(..., quantization=options.get("quantization"))``.
    quantizations: tuple[str, ...] = ()
    #: Those of ``quantizations`` the model keeps on a CUDA device (quantizing for layers that a
    #: GPU would hold dequantized is refused): ``"fp8"`` for the dense layout of
    #: ``nn.dense.build`` without an ``mlp`` factory, whose fused CUDA decode step reads FP8.
    gpu_quantizations: tuple[str, ...] = ()
    #: Keyword options of ``load_model`` the factory takes besides the core's (device, dtype,
    #: name, progress, quantization): any other keyword is refused by name (a typo is not
    #: ignored). Qwen3-VL: ``("min_pixels", "max_pixels")``.
    load_options: tuple[str, ...] = ()
    #: Filled in by the registry: the distribution that registered the spec.
    plugin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower():
            raise ValueError(f"model name {self.name!r} must be non-empty lower-case")
        for ref in (self.factory, self.config_factory, self.weights_factory):
            if ref is not None and (":" not in ref or ref.startswith(":") or ref.endswith(":")):
                raise ValueError(
                    f"{self.name}: {ref!r} is not a 'package.module:attribute' reference"
                )
        if self.tool_call_format is not None and self.tool_call_format not in PARSERS:
            raise ValueError(
                f"{self.name}: unknown tool_call_format {self.tool_call_format!r} "
                f"(known: {', '.join(sorted(PARSERS))})"
            )
        # Accept lists from plugin authors; store tuples so specs stay hashable.
        for attr in (
            "architectures",
            "model_types",
            "aliases",
            "quantizations",
            "gpu_quantizations",
            "load_options",
        ):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        extra = set(self.gpu_quantizations) - set(self.quantizations)
        if extra:
            raise ValueError(f"{self.name}: gpu_quantizations {sorted(extra)} not in quantizations")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (used by ``inference-pio models --json``)."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "architectures": list(self.architectures),
            "model_types": list(self.model_types),
            "hf_repo": self.hf_repo,
            "plugin": self.plugin,
            "description": self.description,
            "tool_call_format": self.tool_call_format,
        }


def import_reference(ref: str) -> Any:
    """Imports ``"package.module:attribute.path"`` and returns the attribute."""
    module_name, _, attr_path = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


class ModelRegistry:
    """Registered model specs, looked up by name, alias, HF repo id or architecture."""

    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}

    def add(self, spec: ModelSpec, plugin: str = "") -> ModelSpec:
        """Adds ``spec`` (recording ``plugin`` as its owner); duplicate names are an error."""
        if not isinstance(spec, ModelSpec):
            raise PluginError(f"register() expects a ModelSpec, got {type(spec).__name__}")
        spec = replace(spec, plugin=plugin or spec.plugin)
        keys = [spec.name, *(a.lower() for a in spec.aliases)]
        if spec.hf_repo:
            keys.append(spec.hf_repo.lower())
        for key in keys:
            owner = self._aliases.get(key)
            if owner is not None:
                other = self._specs[owner]
                raise PluginError(
                    f"model name {key!r} from {spec.plugin or 'unknown plugin'} is already "
                    f"registered by {other.plugin or 'unknown plugin'}"
                )
        self._specs[spec.name] = spec
        for key in keys:
            self._aliases[key] = spec.name
        return spec

    def remove_plugin(self, plugin: str) -> None:
        """Drops every spec registered by ``plugin``."""
        for name in [n for n, s in self._specs.items() if s.plugin == plugin]:
            del self._specs[name]
        self._aliases = {k: v for k, v in self._aliases.items() if v in self._specs}

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._aliases

    def get(self, name: str) -> ModelSpec:
        """The spec for a model name, alias or HF repo id (case-insensitive)."""
        key = self._aliases.get(name.strip().lower())
        if key is None:
            known = ", ".join(s.name for s in self) or "none (no plugins installed?)"
            raise ModelNotFoundError(f"unknown model {name!r}; registered models: {known}")
        return self._specs[key]

    def by_architecture(self, architecture: str) -> list[ModelSpec]:
        """Specs that list ``architecture`` (HF ``architectures`` entry) or model_type."""
        return [s for s in self if architecture in s.architectures or architecture in s.model_types]

    def registrar(self, plugin: str) -> Callable[[ModelSpec], None]:
        """The ``register`` callback handed to one plugin's ``pio_register_models``."""

        def register(spec: ModelSpec) -> None:
            self.add(spec, plugin)

        return register
