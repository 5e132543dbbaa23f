"""The seven wheels (tags, purelib flag, native library, entry points) and a fresh venv."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .conftest import PLUGIN_DIRS, Wheelhouse

pytestmark = pytest.mark.packaging

PLATFORM_TAG = "linux_x86_64"


def wheel_text(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(suffix)]
        return zf.read(name).decode()


def wheel_fields(wheel: Path) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in wheel_text(wheel, ".dist-info/WHEEL").splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    return fields


def entry_points(wheel: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(wheel_text(wheel, ".dist-info/entry_points.txt"))
    return dict(parser["inference_pio"]) if parser.has_section("inference_pio") else {}


def test_seven_wheels_are_built(wheelhouse: Wheelhouse) -> None:
    assert len(PLUGIN_DIRS) == 6
    wheels = [wheelhouse.core_wheel, *wheelhouse.plugin_wheels.values()]
    assert len(wheels) == 7


def test_core_wheel_is_py3_none_platform(wheelhouse: Wheelhouse) -> None:
    wheel = wheelhouse.core_wheel
    assert wheel.name.startswith("inference_pio-")
    assert wheel.name.endswith(f"-py3-none-{PLATFORM_TAG}.whl"), wheel.name
    fields = wheel_fields(wheel)
    assert fields["Root-Is-Purelib"] == ["false"]
    assert fields["Tag"] == [f"py3-none-{PLATFORM_TAG}"]


def test_core_wheel_holds_the_native_library(wheelhouse: Wheelhouse) -> None:
    with zipfile.ZipFile(wheelhouse.core_wheel) as zf:
        names = zf.namelist()
        assert "inference_pio/_native/lib/libtensor_ops.so" in names
        assert zf.read("inference_pio/_native/lib/libtensor_ops.so")[:4] == b"\x7fELF"
        assert "inference_pio/__init__.py" in names
        assert not [n for n in names if n.startswith(("native/", "tests/", "plugins/"))]
    scripts = wheel_text(wheelhouse.core_wheel, ".dist-info/entry_points.txt")
    assert "inference-pio = inference_pio.cli:main" in scripts


def test_sdist_is_self_contained(wheelhouse: Wheelhouse) -> None:
    with tarfile.open(wheelhouse.core_sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in (
        "pyproject.toml",
        "native/CMakeLists.txt",
        "native/include/tensor_ops.h",
        "core/inference_pio/__init__.py",
        "core/inference_pio/_native/loader.py",
    ):
        assert needed in names, needed
    assert any(n.startswith("native/src/") and n.endswith(".c") for n in names)
    assert not [n for n in names if n.endswith(".so") or n.startswith("build/")]
    top = {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "PKG-INFO", ".gitignore"}
    stray = [
        n for n in names if n not in top and not n.startswith(("core/inference_pio/", "native/"))
    ]
    assert not stray, stray  # only the engine, its C sources and the top-level files


@pytest.mark.parametrize("plugin_dir", [p.name for p in PLUGIN_DIRS])
def test_plugin_wheel(wheelhouse: Wheelhouse, plugin_dir: str) -> None:
    wheel = wheelhouse.plugin_wheels[plugin_dir]
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    assert wheel_fields(wheel)["Root-Is-Purelib"] == ["true"]
    eps = entry_points(wheel)
    assert eps == {plugin_dir: f"inference_pio_{plugin_dir}.plugin"}
    with zipfile.ZipFile(wheel) as zf:
        assert f"inference_pio_{plugin_dir}/plugin.py" in zf.namelist()
        assert not [n for n in zf.namelist() if n.endswith(".so")]
    metadata = wheel_text(wheel, ".dist-info/METADATA")
    assert "Requires-Dist: inference-pio" in metadata


# ---- a fresh virtual environment: core + one plugin + the broken fixture -------------------


@pytest.fixture(scope="module")
def venv(wheelhouse: Wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv (no site packages) with the core wheel, qwen3_0_6b and the broken fixture."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    plugin = wheelhouse.plugin_wheels["qwen3_0_6b"]
    wheels = [wheelhouse.core_wheel, plugin, wheelhouse.broken_wheel]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *map(str, wheels),
        ],
        check=True,
    )
    return root


def run_cli(venv: Path, *args: str, strict: bool = False) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INFERENCE_PIO_", "PYTHON", "VIRTUAL_ENV"))
    }
    if strict:
        env["INFERENCE_PIO_STRICT_PLUGINS"] = "1"
    return subprocess.run(
        [str(venv / "bin" / "inference-pio"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=venv,
    )


def test_venv_lists_exactly_the_installed_plugins(venv: Path) -> None:
    proc = run_cli(venv, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    records = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(records) == {"qwen3_0_6b", "broken_fixture"}
    good = records["qwen3_0_6b"]
    assert good["status"] == "loaded"
    assert good["distribution"] == "inference-pio-qwen3-0-6b"
    assert good["models"] == ["qwen3-0.6b"]
    broken = records["broken_fixture"]
    assert broken["status"] == "failed"
    assert broken["distribution"] == "inference-pio-broken-fixture"
    assert broken["error"].startswith("ImportError: ")
    assert "definitely_not_installed_xyz" in broken["error"]


def test_venv_models_and_table(venv: Path) -> None:
    proc = run_cli(venv, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [m["name"] for m in json.loads(proc.stdout)] == ["qwen3-0.6b"]
    proc = run_cli(venv, "plugins")
    assert proc.returncode == 0
    assert "inference-pio-qwen3-0-6b" in proc.stdout
    assert "definitely_not_installed_xyz" in proc.stderr


def test_venv_strict_mode_fails_clearly(venv: Path) -> None:
    proc = run_cli(venv, "plugins", "--json", strict=True)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("inference-pio: error: plugin 'broken_fixture'")
    assert "definitely_not_installed_xyz" in proc.stderr


def test_venv_loads_the_wheel_library(venv: Path) -> None:
    code = (
        "import ctypes, inference_pio._native as n\n"
        "a = (ctypes.c_float * 3)(1, 2, 3); out = (ctypes.c_float * 3)()\n"
        "n.check(n.lib().to_add(a, a, out, 3, 0), 'to_add')\n"
        "print(n.library_path(), list(out))\n"
    )
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=venv
    )
    assert proc.returncode == 0, proc.stderr
    path, _, values = proc.stdout.partition(" ")
    assert Path(path).is_relative_to(venv)
    assert values.strip() == "[2.0, 4.0, 6.0]"
