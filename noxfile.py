"""Developer and CI sessions. ``nox -l`` lists them; ``nox -s tests`` is what CI runs.

Sessions install what they need into their own virtual environments; nothing here relies on
packages installed by hand.
"""

from __future__ import annotations

import configparser
import os
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PLUGIN_DIRS = sorted(
    p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file() and p.name[0] != "_"
)
PLUGINS = [p.name for p in PLUGIN_DIRS]
TEMPLATE = ROOT / "plugins" / "_template"
DIST = ROOT / "dist"

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def build_env(session: nox.Session) -> dict[str, str]:
    """Environment for building the core: CMake build dir inside the session's venv, and CUDA
    off unless ``TENSOR_OPS_CUDA`` (AUTO/ON) asks for it."""
    return {
        "SKBUILD_BUILD_DIR": str(Path(session.virtualenv.location) / "cmake-build"),
        "SKBUILD_CMAKE_DEFINE": "TENSOR_OPS_CUDA=" + os.environ.get("TENSOR_OPS_CUDA", "OFF"),
    }


def plugin_paths() -> list[str]:
    return [str(p) for p in PLUGIN_DIRS]


def build_and_test_native(session: nox.Session, build_dir: Path, *defines: str) -> None:
    """Configures native/ with CMake (Ninja), builds it and runs the C tests with ctest."""
    session.run(
        "cmake", "-S", str(ROOT / "native"), "-B", str(build_dir), "-G", "Ninja",
        "-DTENSOR_OPS_TESTS=ON", *defines, external=True,
    )  # fmt: skip
    session.run("cmake", "--build", str(build_dir), external=True)
    session.run("ctest", "--test-dir", str(build_dir), "--output-on-failure", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Installs the core with its test extras and all six plugins; builds the native libraries
    (the CUDA one too where nvcc exists, so CI proves the .cu sources compile) and runs the C
    and Python tests."""
    session.install(f"{ROOT}[test]", *plugin_paths(), env=build_env(session))
    cuda = "-DTENSOR_OPS_CUDA=" + os.environ.get("TENSOR_OPS_CUDA", "AUTO")
    build_and_test_native(session, Path(session.virtualenv.location) / "native-build", cuda)
    # the plugin template's tests too (importable from its directory, not installed: it would
    # register a model in this environment), so CI proves the skeleton third parties start from
    test_dirs = [
        str(ROOT / "tests"),
        *(str(p / "tests") for p in PLUGIN_DIRS),
        str(TEMPLATE / "tests"),
    ]
    # pytest exits 5 when it collected no test: success_codes keeps that a failure.
    session.run("pytest", *(session.posargs or test_dirs), success_codes=[0],
                env={"PYTHONPATH": str(TEMPLATE)})  # fmt: skip


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """Core + one plugin only (proves plugins do not depend on each other); runs its tests."""
    session.install(f"{ROOT}", f"{ROOT / 'plugins' / plugin}[test]", env=build_env(session))
    session.run("pytest", str(ROOT / "plugins" / plugin / "tests"), *session.posargs,
                env={"INFERENCE_PIO_STRICT_PLUGINS": "1"})  # fmt: skip


@nox.session
def template(session: nox.Session) -> None:
    """Core + the plugin template (as a third-party author would start); runs its tests."""
    session.install(str(ROOT), f"{TEMPLATE}[test]", env=build_env(session))
    session.run("pytest", str(TEMPLATE / "tests"), env={"INFERENCE_PIO_STRICT_PLUGINS": "1"})


@nox.session
def native(session: nox.Session) -> None:
    """Builds libtensor_ops with CMake and runs its C tests. ``-- asan`` adds sanitizers."""
    session.install("cmake>=3.20", "ninja", "unicodedata2==16.0.0")
    defines = ["-DTENSOR_OPS_CUDA=" + os.environ.get("TENSOR_OPS_CUDA", "AUTO")]
    build_dir = ROOT / "build" / "native"
    if "asan" in session.posargs:
        defines += ["-DTENSOR_OPS_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug"]
        build_dir = ROOT / "build" / "native-asan"
    build_and_test_native(session, build_dir, *defines)


#: Python tests that drive the native library hard enough to be worth running under sanitizers.
SANITIZE_TESTS = ("test_ops_*.py", "test_matmul*.py", "test_linear_*.py", "test_safetensors.py",
                  "test_memory.py", "test_native_loader.py")  # fmt: skip


@nox.session
def sanitize(session: nox.Session) -> None:
    """ASan + UBSan build of native/ (own build dir): ctest, then the op, weights and memory tests
    against the sanitized library (libasan preloaded into Python, leak checks off)."""
    session.install("cmake>=3.20", "ninja", f"{ROOT}[test]")
    build_dir = ROOT / "build" / "native-sanitize"
    build_and_test_native(session, build_dir, "-DTENSOR_OPS_CUDA=OFF", "-DTENSOR_OPS_SANITIZE=ON",
                          "-DCMAKE_BUILD_TYPE=RelWithDebInfo")  # fmt: skip
    libasan = str(session.run("gcc", "-print-file-name=libasan.so", silent=True, external=True))
    libasan = libasan.strip()
    if not Path(libasan).is_file():
        session.error(f"libasan not found (gcc -print-file-name gave {libasan!r})")
    tests = sorted({str(p) for pat in SANITIZE_TESTS for p in (ROOT / "tests" / "unit").glob(pat)})
    env = {
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "INFERENCE_PIO_LIB": str(build_dir / "libtensor_ops.so"),
    }
    # -s: a sanitizer report is written to fd 2 just before the process exits; with pytest's fd
    # capture it would be lost along with the captured output.
    session.run("pytest", "-s", "-p", "no:cacheprovider", *tests, *session.posargs, env=env,
                success_codes=[0])  # fmt: skip


@nox.session
def build(session: nox.Session) -> None:
    """Builds the core sdist and wheel (wheel from the sdist) and six plugin wheels; checks them."""
    session.install("build>=1.2")
    if DIST.exists():
        shutil.rmtree(DIST)
    session.run("python", "-m", "build", "--outdir", str(DIST), str(ROOT), env=build_env(session))
    for p in PLUGIN_DIRS:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(DIST), str(p))
    for problem in check_dist(DIST):
        session.error(problem)
    session.log(f"7 wheels checked in {DIST}:\n  " + "\n  ".join(sorted(
        w.name for w in DIST.glob("*.whl"))))  # fmt: skip


def _read(wheel: zipfile.ZipFile, suffix: str) -> str:
    names = [n for n in wheel.namelist() if n.endswith(suffix)]
    return wheel.read(names[0]).decode() if names else ""


def check_dist(dist: Path) -> list[str]:
    """Problems with the built artifacts in ``dist`` (tags, purelib flag, library, entry points)."""
    problems: list[str] = []
    cores = sorted(dist.glob("inference_pio-*.whl"))
    plugin_wheels = sorted(dist.glob("inference_pio_*.whl"))
    if len(cores) != 1 or len(plugin_wheels) != len(PLUGINS):
        found = [w.name for w in cores + plugin_wheels]
        problems.append(f"expected 1 core and {len(PLUGINS)} plugin wheels, got {found}")
    for core in cores:
        if not core.name.endswith("-py3-none-linux_x86_64.whl"):
            problems.append(f"{core.name}: tag must be py3-none-linux_x86_64")
        with zipfile.ZipFile(core) as zf:
            if "Root-Is-Purelib: false" not in _read(zf, ".dist-info/WHEEL"):
                problems.append(f"{core.name}: WHEEL must say Root-Is-Purelib: false")
            if "inference_pio/_native/lib/libtensor_ops.so" not in zf.namelist():
                problems.append(f"{core.name}: libtensor_ops.so missing")
    for sdist in dist.glob("inference_pio-*.tar.gz"):
        with tarfile.open(sdist) as tf:
            names = [n.split("/", 1)[1] for n in tf.getnames() if "/" in n]
            if "native/include/tensor_ops.h" not in names:
                problems.append(f"{sdist.name}: native sources missing")
            top = {
                "pyproject.toml",
                "README.md",
                "LICENSE",
                "CHANGELOG.md",
                "PKG-INFO",
                ".gitignore",
            }
            stray = [n for n in names if n not in top and not n.startswith(("core/", "native/"))]
            if stray:
                problems.append(f"{sdist.name}: files outside the engine: {stray[:5]}")
    for wheel in plugin_wheels:
        with zipfile.ZipFile(wheel) as zf:
            parser = configparser.ConfigParser(delimiters=("=",))
            parser.read_string(_read(zf, ".dist-info/entry_points.txt"))
            if not wheel.name.endswith("-py3-none-any.whl"):
                problems.append(f"{wheel.name}: plugins must be py3-none-any")
            if not parser.has_section("inference_pio") or len(parser["inference_pio"]) != 1:
                problems.append(f"{wheel.name}: needs one entry point in group inference_pio")
    return problems


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict on the core."""
    session.install(f"{ROOT}[lint]", env=build_env(session))
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))
    session.chdir(ROOT)  # mypy's files are relative to the root's pyproject.toml
    session.run("mypy", "--config-file", str(ROOT / "pyproject.toml"))


@nox.session
def docs(session: nox.Session) -> None:
    """Builds the Sphinx documentation with warnings as errors."""
    session.install(f"{ROOT}[docs]", env=build_env(session))
    out = ROOT / "docs" / "_build" / "html"
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", str(ROOT / "docs"), str(out))
    session.log(f"open {out / 'index.html'}")


#: The CPU micro-benchmarks ``nox -s benchmarks`` runs (each prints its own table); the model
#: benchmarks are ``nox -s bench``, the GPU ones ``nox -s gpu``.
CPU_BENCHMARKS = ("benchmark_tokenizer.py", "benchmark_kernels.py")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """The CPU micro-benchmarks: the tokenizer against Hugging Face tokenizers and the kernels
    against torch (benchmarks/benchmark_tokenizer.py, benchmark_kernels.py)."""
    session.install(f"{ROOT}[bench]", env=build_env(session))
    for name in CPU_BENCHMARKS:
        session.run("python", str(ROOT / "benchmarks" / name), *session.posargs)


#: Reference engines for ``nox -s bench`` only, never run-time dependencies. llama-cpp-python
#: compiles llama.cpp (GGML_NATIVE: this CPU's vector extensions; pip caches the wheel);
#: sentencepiece because llama.cpp's convert_hf_to_gguf.py imports it even for BPE vocabularies.
BENCH_TOOLS = ("torch==2.13.0", "transformers>=5", "llama-cpp-python", "gguf", "sentencepiece")
BENCH_PLUGINS = ("qwen3_0_6b", "qwen3_4b_instruct_2507")


@nox.session
def bench(session: nox.Session) -> None:
    """Qwen3 bf16 on the CPU, all cores: Inference-PIO vs transformers + torch vs llama.cpp in the
    same run (benchmarks/llm_bench.py; not CI). ``-- qwen3_0_6b`` picks one model; other
    arguments go to the scripts (``--engines ours,llama.cpp --repeats 2 --threads 2 --json``)."""
    plugins = (str(ROOT / "plugins" / p) for p in BENCH_PLUGINS)
    session.install(str(ROOT), *plugins, env=build_env(session))
    session.install(*BENCH_TOOLS, env={"CMAKE_ARGS": "-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"})
    chosen = [a for a in session.posargs if a in BENCH_PLUGINS] or list(BENCH_PLUGINS)
    args = [a for a in session.posargs if a not in BENCH_PLUGINS]
    for p in chosen:
        script = ROOT / "plugins" / p / "benchmarks" / "benchmark_inference.py"
        session.run("python", str(script), *args)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """On a GPU machine: build with CUDA, run tests/gpu and print the GPU benchmark table (uses the
    machine's own python3 with torch/transformers; see benchmarks/gpu_run.sh)."""
    session.run("bash", str(ROOT / "benchmarks" / "gpu_run.sh"), *session.posargs, external=True)


@nox.session
def demo(session: nox.Session) -> None:
    """What a new user sees: core + Qwen3-0.6B installed, then the CLI."""
    session.install(str(ROOT), str(ROOT / "plugins" / "qwen3_0_6b"), env=build_env(session))
    session.run("inference-pio", "--version")
    session.run("inference-pio", "plugins")
    session.run("inference-pio", "models")
    session.run("inference-pio", "info")


if __name__ == "__main__":
    sys.exit("run with nox: python3 -m pip install nox && nox -s tests")
