"""The command line: parser construction, --version, --help, plugins/models --json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import pytest

import inference_pio
from inference_pio import ModelSpec, hookimpl
from inference_pio.cli import build_parser, main
from inference_pio.hookspecs import RegisterModel
from inference_pio.plugins import PluginHost


class DemoPlugin:
    """Registers one model and adds a ``hello`` command."""

    @staticmethod
    @hookimpl
    def pio_register_models(register: RegisterModel) -> None:
        register(
            ModelSpec(
                name="demo-1b",
                factory="demo.model:load",
                architectures=("DemoForCausalLM",),
                hf_repo="example/Demo-1B",
                aliases=("demo",),
            )
        )

    @staticmethod
    @hookimpl
    def pio_add_commands(subparsers: Any) -> None:
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("who")
        p.set_defaults(func=lambda args: print(f"hello {args.who}") or 3)


class BrokenPlugin:
    @staticmethod
    @hookimpl
    def pio_register_models(register: RegisterModel) -> None:
        raise RuntimeError("weights index unreadable")


@pytest.fixture
def host() -> PluginHost:
    h = PluginHost(strict=False)
    h.register_plugin(DemoPlugin(), name="demo", distribution="inference-pio-demo")
    h.register_plugin(BrokenPlugin(), name="broken", distribution="inference-pio-broken")
    return h


def test_build_parser_with_a_fresh_host() -> None:
    parser = build_parser(PluginHost(strict=True))
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.prog == "inference-pio"
    args = parser.parse_args(["plugins", "--json"])
    assert args.command == "plugins"
    assert args.json


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"], host=PluginHost(strict=True))
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"inference-pio {inference_pio.__version__}"


def test_help_lists_commands_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"], host=PluginHost(strict=True))
    text = capsys.readouterr().out
    for word in ("plugins", "models", "info", "INFERENCE_PIO_STRICT_PLUGINS", "INFERENCE_PIO_LIB"):
        assert word in text


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], host=PluginHost(strict=True)) == 0
    assert "usage: inference-pio" in capsys.readouterr().out


def test_plugins_json(host: PluginHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"], host=host) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["demo"]["status"] == "loaded"
    assert records["demo"]["models"] == ["demo-1b"]
    assert records["broken"]["status"] == "failed"
    assert records["broken"]["error"] == "RuntimeError: weights index unreadable"


def test_plugins_table_reports_errors(host: PluginHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"], host=host) == 0
    out, err = capsys.readouterr()
    for word in ("inference-pio-demo", "demo-1b", "failed"):
        assert word in out
    assert "weights index unreadable" in err


def test_plugins_with_none_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"], host=PluginHost(strict=True)) == 0
    assert "No plugins installed" in capsys.readouterr().out
    assert main(["plugins", "--json"], host=PluginHost(strict=True)) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_models_json(host: PluginHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"], host=host) == 0
    (model,) = json.loads(capsys.readouterr().out)
    assert model["name"] == "demo-1b"
    assert model["aliases"] == ["demo"]
    assert model["architectures"] == ["DemoForCausalLM"]
    assert model["hf_repo"] == "example/Demo-1B"
    assert model["plugin"] == "inference-pio-demo"


def test_models_table(host: PluginHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"], host=host) == 0
    assert "example/Demo-1B" in capsys.readouterr().out


def test_plugin_commands(host: PluginHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hello", "world"], host=host) == 3
    assert capsys.readouterr().out == "hello world\n"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"], host=PluginHost(strict=True))
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_strict_failure_is_a_clean_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing_host() -> PluginHost:
        h = PluginHost(strict=True)
        h.register_plugin(BrokenPlugin(), name="broken")
        return h

    monkeypatch.setattr("inference_pio.cli.get_plugin_host", failing_host)
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("inference-pio: error: plugin 'broken'")
    assert "weights index unreadable" in err


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "inference_pio", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("inference-pio ")


def test_info_says_whether_cuda_can_be_used(capsys: pytest.CaptureFixture[str]) -> None:
    """`info` reports CUDA: the devices where it is usable, otherwise why not (no library built,
    no driver, no device), as inference_pio.cuda does."""
    from inference_pio import cuda

    assert main(["info", "--json"], host=PluginHost(strict=True)) == 0
    gpu = json.loads(capsys.readouterr().out)["cuda"]
    assert gpu["available"] == cuda.is_available()
    if gpu["available"]:
        assert gpu["devices"]
        assert all(d["name"] and d["total_memory"] > 0 for d in gpu["devices"])
    else:
        assert gpu["reason"] == cuda.unavailable_reason()
    assert main(["info"], host=PluginHost(strict=True)) == 0
    text = capsys.readouterr().out
    assert ("cuda: unavailable" in text) != gpu["available"]
