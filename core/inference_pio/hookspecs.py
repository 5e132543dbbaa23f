"""Hook specifications: the contract between the core and model plugins.

A plugin is a module (or object) exposed through the ``inference_pio`` entry-point group whose
functions are decorated with :data:`inference_pio.hookimpl` and named after a spec below.

Rules that follow from pluggy (see the plugin-authoring guide):

* implement only the hooks you need; an implementation may accept fewer arguments than the spec;
* never give an implementation's parameters default values (pluggy does not pass them);
* a ``@hookimpl`` whose name matches no spec (a typo) makes the plugin fail to load, which is an
  error in strict mode;
* implementations run in LIFO registration order; ``tryfirst``/``trylast`` adjust it.

There are deliberately no per-token hooks: a hook call is a chain of Python calls, too slow for the
decode loop.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from inference_pio.interface import TextModelPluginInterface
    from inference_pio.registry import ModelSpec

PROJECT_NAME = "inference_pio"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RegisterModel(Protocol):
    """The ``register`` callback passed to :func:`pio_register_models`."""

    def __call__(self, spec: ModelSpec) -> None: ...


@hookspec
def pio_register_models(register: RegisterModel) -> None:
    """Register the models this plugin provides (collect-all: every plugin is called).

    Call ``register(ModelSpec(...))`` once per model. Registration must import nothing heavy:
    :class:`~inference_pio.registry.ModelSpec` names its implementation with a lazy
    ``"package.module:attribute"`` string that is imported only when the model is loaded.
    """


@hookspec(firstresult=True)
def pio_claim_checkpoint(path: Path, config: dict[str, Any]) -> str | None:
    """Return the registered model name that should load this checkpoint, or None.

    ``path`` is the checkpoint directory, ``config`` its parsed ``config.json``. The first
    non-None answer wins. When no plugin claims it, the core picks the model whose spec lists
    ``config["architectures"][0]`` (then ``model_type``); implement this hook only when several
    models share an architecture and the config tells them apart.
    """


@hookspec(firstresult=True)
def pio_load_model(
    spec: ModelSpec, path: Path, options: dict[str, Any]
) -> TextModelPluginInterface | None:
    """Build the model for ``spec`` from the checkpoint directory ``path`` (first result wins).

    The core's built-in implementation (``trylast``) imports ``spec.factory`` and calls it as
    ``factory(path, **options)``. Plugins rarely implement this; wrap it with
    ``@hookimpl(wrapper=True)`` to time or trace loading.
    """


@hookspec
def pio_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add sub-commands to the ``inference-pio`` command line.

    Call ``subparsers.add_parser(name, help=...)`` and set ``parser.set_defaults(func=callable)``;
    the callable receives the parsed ``argparse.Namespace`` and returns an exit code.
    """


@hookspec(historic=True)
def pio_configure(settings: dict[str, Any]) -> None:
    """One-time configuration, delivered to every plugin, including ones registered later.

    ``settings`` holds global options such as ``{"strict": bool}``; treat it as read-only.
    """
