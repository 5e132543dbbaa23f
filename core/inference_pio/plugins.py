"""Plugin discovery and management.

Plugins are found through the ``inference_pio`` entry-point group and loaded **one at a time**:
a plugin that fails to import, registers an unknown hook or raises during registration is recorded
(see :class:`PluginRecord`) and skipped, so one broken plugin never takes the others down.
``INFERENCE_PIO_STRICT_PLUGINS=1`` turns every such failure into an exception.

Environment variables:

``INFERENCE_PIO_PLUGINS``
    Comma-separated allow-list of plugin (entry point or distribution) names. Set but empty: load
    no plugins.
``INFERENCE_PIO_DISABLE_PLUGINS``
    Comma-separated deny-list.
``INFERENCE_PIO_STRICT_PLUGINS``
    ``1`` makes any plugin failure fatal.

Nothing here runs at ``import inference_pio``: :func:`get_plugin_host` discovers plugins on first
use.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from inference_pio import hookspecs
from inference_pio.errors import ModelNotFoundError, PluginError
from inference_pio.registry import ModelRegistry, ModelSpec

ENTRY_POINT_GROUP = "inference_pio"
STRICT_ENV = "INFERENCE_PIO_STRICT_PLUGINS"
ALLOW_ENV = "INFERENCE_PIO_PLUGINS"
DENY_ENV = "INFERENCE_PIO_DISABLE_PLUGINS"


def strict_from_env() -> bool:
    """True when ``INFERENCE_PIO_STRICT_PLUGINS`` asks for strict plugin loading."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def known_hooks() -> str:
    """Comma-separated names of every hook specification."""
    return ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("pio_")))


def normalize_name(name: str) -> str:
    """Plugin/distribution name in canonical form: lower case, runs of ``-_.`` become ``-``."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {normalize_name(n) for n in raw.split(",") if n.strip()}


@dataclass
class PluginRecord:
    """What happened to one discovered plugin."""

    name: str
    distribution: str = ""
    version: str = ""
    value: str = ""
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    models: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PluginHost:
    """A pluggy PluginManager plus the model registry and per-plugin load records."""

    def __init__(self, strict: bool | None = None) -> None:
        self.strict = strict_from_env() if strict is None else strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.registry = ModelRegistry()
        self.records: dict[str, PluginRecord] = {}
        from inference_pio import _builtin

        self.pm.register(_builtin, name="inference_pio.builtin")
        self.pm.hook.pio_configure.call_historic(kwargs={"settings": {"strict": self.strict}})

    # ---- loading -------------------------------------------------------------------------
    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Loads every plugin of the entry-point group (or the given entry points)."""
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        allow, deny = _names_from_env(ALLOW_ENV), _names_from_env(DENY_ENV) or set()
        seen: set[str] = set()
        for ep in sorted(entry_points, key=lambda e: e.name):
            dist = ep.dist
            record = PluginRecord(
                name=ep.name,
                distribution=dist.metadata["Name"] if dist is not None else "",
                version=dist.version if dist is not None else "",
                value=ep.value,
            )
            keys = {normalize_name(ep.name), normalize_name(record.distribution)} - {""}
            seen |= keys
            if (allow is not None and not keys & allow) or keys & deny:
                record.status = "disabled"
                self.records[ep.name] = record
                continue
            self.records[ep.name] = record
            try:
                self._load_one(record, ep.load)
            except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() at import too
                self._fail(record, exc)
        unknown = sorted((allow or set()) - seen)
        if unknown:  # a typo would otherwise disable plugins without a word
            warnings.warn(
                f"{ALLOW_ENV} names no installed plugin: {', '.join(unknown)} (installed: "
                f"{', '.join(sorted(seen)) or 'none'})",
                stacklevel=2,
            )

    def register_plugin(self, plugin: object, name: str, distribution: str = "") -> PluginRecord:
        """Registers an already-imported plugin object (tests, embedding applications)."""
        record = PluginRecord(name=name, distribution=distribution, value=repr(plugin))
        self.records[name] = record
        try:
            self._load_one(record, lambda: plugin)
        except Exception as exc:
            self._fail(record, exc)
        return record

    def _load_one(self, record: PluginRecord, load: Callable[[], object]) -> None:
        """Imports, registers and validates one plugin; undoes everything if any step fails."""
        plugin = load()
        owner = record.distribution or record.name
        try:
            self.pm.register(plugin, name=record.name)
            unknown = sorted(
                caller.name
                for caller in self.pm.get_hookcallers(plugin) or []
                if not caller.has_spec()
            )
            if unknown:
                raise PluginError(
                    f"unknown hook name(s) {', '.join(unknown)}; known hooks: {known_hooks()}"
                )
            for caller in self.pm.get_hookcallers(plugin) or []:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and impl.kwargnames:  # pluggy never passes those
                        raise PluginError(
                            f"hook {caller.name}: parameter(s) {', '.join(impl.kwargnames)} "
                            "have a default value, which pluggy never passes; remove the default"
                        )
            register = self.registry.registrar(owner)
            for impl in self.pm.hook.pio_register_models.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(*[{"register": register}[a] for a in impl.argnames])
            record.models = [s.name for s in self.registry if s.plugin == owner]
        except Exception:
            if self.pm.get_name(plugin) == record.name:
                self.pm.unregister(plugin)
            self.registry.remove_plugin(owner)
            raise

    def _fail(self, record: PluginRecord, exc: BaseException) -> None:
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {exc}"
        record.models = []
        if self.strict:
            raise PluginError(
                f"plugin {record.name!r} ({record.distribution or 'no distribution'}) failed: "
                f"{record.error}\n{''.join(traceback.format_exception(exc))}"
            ) from exc

    def call_isolated(self, hook: str, *, firstresult: bool = False, **kwargs: Any) -> Any:
        """Calls ``hook``'s implementations one at a time, in pluggy's order (all results, or
        the first that is not None). A plugin whose implementation raises is marked failed,
        unregistered and warned about; the others still run (strict mode raises instead)."""
        caller = getattr(self.pm.hook, hook)
        impls = caller.get_hookimpls()
        if any(i.hookwrapper or getattr(i, "wrapper", False) for i in impls):
            result = caller(**kwargs)  # wrappers need pluggy's own call
            return result if firstresult else list(result)
        results: list[Any] = []
        for impl in reversed(impls):
            try:
                value = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:
                self._fail_at_run_time(impl.plugin_name, hook, exc)
                continue
            if value is not None:
                if firstresult:
                    return value
                results.append(value)
        return None if firstresult else results

    def _fail_at_run_time(self, plugin_name: str, hook: str, exc: Exception) -> None:
        record = self.records.get(plugin_name)
        if record is None:  # the core's own implementation: a bug to report as is
            raise exc
        self._fail(record, exc)  # raises in strict mode
        record.error = f"{hook}: {record.error}"
        if self.pm.get_plugin(plugin_name) is not None:
            self.pm.unregister(name=plugin_name)
        self.registry.remove_plugin(record.distribution or record.name)
        warnings.warn(
            f"plugin {record.name!r} ({record.distribution or 'no distribution'}) failed in "
            f"{hook} and is disabled: {type(exc).__name__}: {exc} (see `inference-pio plugins`)",
            stacklevel=3,
        )

    # ---- queries ---------------------------------------------------------------------------
    @property
    def failures(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "failed"]

    def resolve_checkpoint(self, path: Path, config: dict[str, Any]) -> ModelSpec:
        """Chooses the model spec for a checkpoint directory and its parsed config.json."""
        claimed = self.call_isolated(
            "pio_claim_checkpoint", firstresult=True, path=path, config=config
        )
        if claimed:
            return self.registry.get(claimed)
        keys = [*(config.get("architectures") or []), config.get("model_type", "")]
        for key in keys:
            if not key:
                continue
            specs = self.registry.by_architecture(key)
            if len(specs) >= 1:
                return specs[0]
        installed = ", ".join(s.name for s in self.registry) or "none"
        raise ModelNotFoundError(
            f"no installed plugin handles {path} (architectures={keys[:-1]}, "
            f"model_type={keys[-1]!r}); installed models: {installed}"
        )


_host: PluginHost | None = None
_host_lock = threading.Lock()


def get_plugin_host() -> PluginHost:
    """The process-wide plugin host, created and loaded on first use."""
    global _host
    if _host is None:
        with _host_lock:
            if _host is None:
                host = PluginHost()
                host.load_entry_points()
                _host = host
    return _host


def reset_plugin_host() -> None:
    """Forgets the process-wide host (tests, or after installing plugins at run time)."""
    global _host
    with _host_lock:
        _host = None
