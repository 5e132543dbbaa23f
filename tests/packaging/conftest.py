"""Builds every distribution once per test session (see :func:`wheelhouse`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIRS = sorted(
    p
    for p in (ROOT / "plugins").iterdir()
    if (p / "pyproject.toml").is_file() and not p.name.startswith("_")
)
BROKEN_FIXTURE = ROOT / "tests" / "fixtures" / "broken_plugin"


@dataclass(frozen=True)
class Wheelhouse:
    """The built artifacts: the core sdist and wheel, one wheel per plugin, the broken fixture."""

    directory: Path
    core_sdist: Path
    core_wheel: Path
    plugin_wheels: dict[str, Path]  # plugin directory name -> wheel
    broken_wheel: Path


def _can_build_without_isolation() -> bool:
    modules = ("hatchling", "scikit_build_core", "build")
    return all(importlib.util.find_spec(m) is not None for m in modules) and bool(
        shutil.which("cmake") and shutil.which("ninja")
    )


def build(source: Path, outdir: Path, *args: str) -> None:
    """Runs ``python -m build`` on ``source`` (offline when the backends are installed)."""
    cmd = [sys.executable, "-m", "build", *args, "--outdir", str(outdir), str(source)]
    if _can_build_without_isolation():
        cmd.insert(3, "--no-isolation")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKBUILD_", "CMAKE_ARGS"))}
    env["SKBUILD_CMAKE_DEFINE"] = "TENSOR_OPS_CUDA=OFF"  # the CPU wheel is what is checked here
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        log = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed:\n{log}")


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}, found {found}"
    return found[0]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    """Builds the core (sdist, then the wheel from that sdist) and every plugin wheel, once."""
    out = tmp_path_factory.mktemp("wheelhouse")
    build(ROOT, out)  # sdist + wheel built from the unpacked sdist: proves it is self-contained
    plugins: dict[str, Path] = {}
    for plugin_dir in PLUGIN_DIRS:
        plugin_out = out / plugin_dir.name
        build(plugin_dir, plugin_out, "--wheel")
        plugins[plugin_dir.name] = _one(plugin_out, "*.whl")
    broken_out = out / "broken"
    build(BROKEN_FIXTURE, broken_out, "--wheel")
    return Wheelhouse(
        directory=out,
        core_sdist=_one(out, "inference_pio-*.tar.gz"),
        core_wheel=_one(out, "inference_pio-*.whl"),
        plugin_wheels=plugins,
        broken_wheel=_one(broken_out, "*.whl"),
    )
