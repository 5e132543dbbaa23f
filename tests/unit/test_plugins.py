"""PluginHost: per-plugin isolation, strict mode, hook validation, allow/deny lists, laziness."""

from __future__ import annotations

import importlib.metadata as metadata
import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from inference_pio import ModelSpec, hookimpl
from inference_pio.errors import ModelNotFoundError, PluginError
from inference_pio.hookspecs import RegisterModel
from inference_pio.plugins import (
    ALLOW_ENV,
    DENY_ENV,
    ENTRY_POINT_GROUP,
    STRICT_ENV,
    PluginHost,
    get_plugin_host,
    normalize_name,
    reset_plugin_host,
)

_counter = itertools.count()

GOOD = """
from inference_pio import ModelSpec, hookimpl

@hookimpl
def pio_register_models(register):
    register(ModelSpec(name="{model}", factory="x.y:z", architectures=["{arch}"]))
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (ALLOW_ENV, DENY_ENV, STRICT_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def make_ep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Writes a plugin module and returns an entry point that names it."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name: str, source: str) -> metadata.EntryPoint:
        module = f"pio_test_plugin_{name}_{next(_counter)}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        return metadata.EntryPoint(name=name, value=module, group=ENTRY_POINT_GROUP)

    return make


def good(make_ep: Any, name: str = "good", model: str = "good-model", arch: str = "GoodLM") -> Any:
    return make_ep(name, GOOD.format(model=model, arch=arch))


def test_broken_import_is_recorded_and_others_keep_working(make_ep: Any) -> None:
    host = PluginHost(strict=False)
    broken = make_ep("broken", "raise ImportError('missing dependency xyz')\n")
    host.load_entry_points([broken, good(make_ep)])
    assert host.records["broken"].status == "failed"
    assert host.records["broken"].error == "ImportError: missing dependency xyz"
    assert host.records["good"].status == "loaded"
    assert host.records["good"].models == ["good-model"]
    assert [r.name for r in host.failures] == ["broken"]
    assert host.registry.get("good-model").architectures == ("GoodLM",)


def test_strict_mode_raises_on_a_broken_plugin(make_ep: Any) -> None:
    host = PluginHost(strict=True)
    broken = make_ep("broken", "raise RuntimeError('kaput')\n")
    with pytest.raises(PluginError, match=r"plugin 'broken'.*RuntimeError: kaput"):
        host.load_entry_points([broken])


def test_strict_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    assert PluginHost().strict
    monkeypatch.setenv(STRICT_ENV, "0")
    assert not PluginHost().strict


UNKNOWN_HOOK = """
from inference_pio import hookimpl

@hookimpl
def pio_register_modells(register):
    pass
"""


def test_unknown_hook_name_fails_in_strict_mode(make_ep: Any) -> None:
    host = PluginHost(strict=True)
    with pytest.raises(PluginError, match=r"unknown hook name.*pio_register_modells"):
        host.load_entry_points([make_ep("typo", UNKNOWN_HOOK)])
    assert host.records["typo"].status == "failed"
    assert host.pm.get_plugin("typo") is None


def test_unknown_hook_name_is_recorded_otherwise(make_ep: Any) -> None:
    host = PluginHost(strict=False)
    host.load_entry_points([make_ep("typo", UNKNOWN_HOOK), good(make_ep)])
    error = host.records["typo"].error or ""
    assert "pio_register_modells" in error
    assert "pio_register_models" in error  # the list of known hooks helps spot the typo
    assert host.pm.get_plugin("typo") is None
    assert host.records["good"].status == "loaded"


def test_hookimpl_with_an_argument_the_spec_lacks_is_rejected_cleanly(make_ep: Any) -> None:
    source = """
    from inference_pio import hookimpl

    @hookimpl
    def pio_claim_checkpoint(path, config, extra):
        return "x"
    """
    host = PluginHost(strict=False)
    host.load_entry_points([make_ep("bad_args", source)])
    assert host.records["bad_args"].status == "failed"
    assert "extra" in (host.records["bad_args"].error or "")
    assert host.pm.get_plugin("bad_args") is None
    assert host.pm.hook.pio_claim_checkpoint(path=Path("."), config={}) is None


def test_hookimpl_parameter_with_a_default_fails_the_plugin(make_ep: Any) -> None:
    """pluggy never passes a parameter that has a default: the hook would silently see None."""
    source = """
    from inference_pio import hookimpl

    @hookimpl
    def pio_claim_checkpoint(path, config=None):
        return "x" if config else None
    """
    host = PluginHost(strict=False)
    host.load_entry_points([make_ep("defaulted", source)])
    assert host.records["defaulted"].status == "failed"
    assert "default value" in (host.records["defaulted"].error or "")
    assert host.pm.get_plugin("defaulted") is None


def test_allow_list_naming_no_installed_plugin_warns(
    make_ep: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW_ENV, "typo")
    host = PluginHost(strict=False)
    with pytest.warns(UserWarning, match="names no installed plugin: typo"):
        host.load_entry_points([good(make_ep)])
    assert host.records["good"].status == "disabled"


def test_allow_list(make_ep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, " Second-Plugin ")
    host = PluginHost(strict=True)
    host.load_entry_points(
        [good(make_ep, "first_plugin", "m1"), good(make_ep, "second_plugin", "m2")]
    )
    assert host.records["first_plugin"].status == "disabled"
    assert host.records["second_plugin"].status == "loaded"
    assert [s.name for s in host.registry] == ["m2"]


def test_empty_allow_list_loads_nothing(make_ep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "")
    host = PluginHost(strict=True)
    host.load_entry_points([good(make_ep)])
    assert host.records["good"].status == "disabled"
    assert len(host.registry) == 0


def test_deny_list(make_ep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DENY_ENV, "broken,other")
    host = PluginHost(strict=True)  # a disabled broken plugin is not even imported
    host.load_entry_points([make_ep("broken", "raise ImportError('x')\n"), good(make_ep)])
    assert host.records["broken"].status == "disabled"
    assert host.records["good"].status == "loaded"


def test_names_are_compared_in_canonical_form() -> None:
    assert normalize_name("Inference_PIO.qwen3--0_6b") == "inference-pio-qwen3-0-6b"


def test_duplicate_model_name_fails_the_second_plugin(make_ep: Any) -> None:
    host = PluginHost(strict=False)
    host.load_entry_points([good(make_ep, "a", "same"), good(make_ep, "b", "same")])
    assert host.records["a"].status == "loaded"
    assert host.records["b"].status == "failed"
    assert "'same' from b is already registered by a" in (host.records["b"].error or "")
    assert host.registry.get("same").plugin == "a"


def test_duplicate_model_name_is_fatal_in_strict_mode(make_ep: Any) -> None:
    host = PluginHost(strict=True)
    with pytest.raises(PluginError, match="already registered"):
        host.load_entry_points([good(make_ep, "a", "same"), good(make_ep, "b", "same")])


def test_register_time_exception_leaves_nothing_behind(make_ep: Any) -> None:
    source = """
    from inference_pio import ModelSpec, hookimpl

    @hookimpl
    def pio_register_models(register):
        register(ModelSpec(name="half-done", factory="x:y"))
        raise ValueError("config file missing")

    @hookimpl
    def pio_claim_checkpoint(config):
        return "half-done"
    """
    host = PluginHost(strict=False)
    host.load_entry_points([make_ep("flaky", source)])
    record = host.records["flaky"]
    assert (record.status, record.error) == ("failed", "ValueError: config file missing")
    assert "half-done" not in host.registry
    assert host.pm.get_plugin("flaky") is None
    assert host.pm.hook.pio_claim_checkpoint(path=Path("."), config={}) is None


def test_register_rejects_non_specs() -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def pio_register_models(register: RegisterModel) -> None:
            register({"name": "not-a-spec"})  # type: ignore[arg-type]

    record = PluginHost(strict=False).register_plugin(Plugin(), name="p")
    assert record.status == "failed"
    assert "expects a ModelSpec" in (record.error or "")


def test_configure_is_delivered_to_plugins() -> None:
    seen: list[dict[str, Any]] = []

    class Plugin:
        @staticmethod
        @hookimpl
        def pio_configure(settings: dict[str, Any]) -> None:
            seen.append(settings)

    PluginHost(strict=True).register_plugin(Plugin(), name="p")
    assert seen == [{"strict": True}]


def test_resolve_checkpoint_by_architecture_and_model_type(tmp_path: Path) -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def pio_register_models(register: RegisterModel) -> None:
            register(ModelSpec(name="m", factory="x:y", architectures=("A",), model_types=("t",)))

    host = PluginHost(strict=True)
    host.register_plugin(Plugin(), name="p")
    assert host.resolve_checkpoint(tmp_path, {"architectures": ["A"]}).name == "m"
    assert host.resolve_checkpoint(tmp_path, {"model_type": "t"}).name == "m"
    with pytest.raises(ModelNotFoundError, match="installed models: m"):
        host.resolve_checkpoint(tmp_path, {"architectures": ["B"], "model_type": "u"})


def test_entry_point_records_carry_distribution_metadata() -> None:
    host = PluginHost(strict=False)
    host.load_entry_points()
    for record in host.records.values():
        if record.distribution:
            assert record.version
        json.dumps(record.to_dict())


def test_process_wide_host_is_created_once() -> None:
    reset_plugin_host()
    try:
        assert get_plugin_host() is get_plugin_host()
    finally:
        reset_plugin_host()


def test_import_is_lazy() -> None:
    code = textwrap.dedent(
        """
        import sys
        import inference_pio
        from inference_pio import ModelSpec, hookimpl, TextModelPluginInterface
        loaded = sorted(sys.modules)
        bad = [m for m in loaded if m.startswith("inference_pio_")
               or m in ("inference_pio.plugins", "inference_pio._native.loader")]
        print(bad)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", "import inference_pio imported " + out.stdout


def _broken_at_run_time(hook: str, exc: Exception) -> object:
    class Broken:
        @staticmethod
        @hookimpl
        def pio_register_models(register: RegisterModel) -> None:
            register(ModelSpec(name="broken-model", factory="x:y", architectures=("B",)))

    def raise_(*_: Any, **__: Any) -> None:
        raise exc

    if hook == "pio_add_commands":

        def pio_add_commands(subparsers: Any) -> None:
            raise_()

        Broken.pio_add_commands = staticmethod(hookimpl(pio_add_commands))  # type: ignore[attr-defined]
    else:

        def pio_claim_checkpoint(path: Path, config: dict[str, Any]) -> str | None:
            raise_()
            return None

        Broken.pio_claim_checkpoint = staticmethod(hookimpl(pio_claim_checkpoint))  # type: ignore[attr-defined]
    return Broken()


@pytest.mark.parametrize("exc", [ValueError("boom"), RuntimeError("boom")])
def test_a_plugin_failing_to_add_commands_leaves_the_cli_working(
    exc: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference_pio.cli import main

    host = PluginHost(strict=False)
    host.register_plugin(_broken_at_run_time("pio_add_commands", exc), name="broken")
    with pytest.warns(UserWarning, match="'broken' .* pio_add_commands"):
        assert main(["plugins", "--json"], host=host) == 0
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["name"] == "broken")
    assert row["status"] == "failed"
    assert "pio_add_commands" in row["error"]


def test_a_command_name_clash_fails_only_that_plugin() -> None:
    from inference_pio.cli import main

    class Clash:
        @staticmethod
        @hookimpl
        def pio_add_commands(subparsers: Any) -> None:
            subparsers.add_parser("generate")  # the core's command: argparse raises

    host = PluginHost(strict=False)
    host.register_plugin(Clash(), name="clash")
    with pytest.warns(UserWarning, match="clash"):
        assert main(["models", "--json"], host=host) == 0
    assert host.records["clash"].status == "failed"


def test_a_plugin_failing_to_claim_does_not_block_the_others(tmp_path: Path) -> None:
    class Good:
        @staticmethod
        @hookimpl
        def pio_register_models(register: RegisterModel) -> None:
            register(ModelSpec(name="good-model", factory="x:y", architectures=("GoodLM",)))

    host = PluginHost(strict=False)
    host.register_plugin(Good(), name="good")
    host.register_plugin(_broken_at_run_time("pio_claim_checkpoint", ValueError("boom")), "broken")
    with pytest.warns(UserWarning, match="pio_claim_checkpoint"):
        spec = host.resolve_checkpoint(tmp_path, {"architectures": ["GoodLM"]})
    assert spec.name == "good-model"
    assert host.records["broken"].status == "failed"
    assert "broken-model" not in [s.name for s in host.registry]
    strict = PluginHost(strict=True)
    strict.register_plugin(_broken_at_run_time("pio_claim_checkpoint", ValueError("x")), "broken")
    with pytest.raises(PluginError, match="broken"):
        strict.resolve_checkpoint(tmp_path, {"architectures": ["B"]})
