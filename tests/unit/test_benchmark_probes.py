"""The standalone CUDA probes in ``benchmarks/`` compile with the command their header gives.

Each ``benchmarks/*.cu`` documents how to build and run it in a comment line of the form
``//   nvcc ... -o /tmp/NAME benchmarks/FILE.cu && /tmp/NAME``. These probes run only on a GPU
machine, so this test keeps them from rotting where there is none: it runs that nvcc command
(output redirected into a temporary directory) wherever nvcc is installed, as on CI.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBES = sorted((ROOT / "benchmarks").glob("*.cu"))


def build_command(probe: Path) -> list[str]:
    """The nvcc part of the probe's documented command line, as an argument list."""
    for line in probe.read_text().splitlines():
        text = line.lstrip("/ ").strip()
        if text.startswith("nvcc ") and f"benchmarks/{probe.name}" in text:
            return shlex.split(text.split("&&")[0])
    raise AssertionError(f"{probe.name}: no '//   nvcc ... benchmarks/{probe.name}' usage line")


@pytest.mark.parametrize("probe", PROBES, ids=[p.stem for p in PROBES])
def test_probe_documents_its_build(probe: Path) -> None:
    argv = build_command(probe)
    assert "-o" in argv
    assert argv[-1] == f"benchmarks/{probe.name}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("probe", PROBES, ids=[p.stem for p in PROBES])
def test_probe_compiles(probe: Path, tmp_path: Path) -> None:
    argv = build_command(probe)
    argv[argv.index("-o") + 1] = str(tmp_path / probe.stem)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
