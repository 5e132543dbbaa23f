"""The ctypes loader: round trips, C errors as NativeError, overrides, ABI and dtype agreement."""

from __future__ import annotations

import ctypes
import os
import random
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_pio import NativeError, NativeLibraryError
from inference_pio._native import bindings, check, lib, library_path, loader
from inference_pio.dtypes import DType

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "native" / "include" / "tensor_ops.h"


def f32_buffer(values: list[float]) -> ctypes.Array[ctypes.c_float]:
    return (ctypes.c_float * len(values))(*values)


def to_bf16(x: float) -> int:
    """Round-to-nearest-even float32 -> bfloat16 bits (reference in pure Python)."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def from_bf16(bits: int) -> float:
    value: float = struct.unpack("<f", struct.pack("<I", bits << 16))[0]
    return value


@pytest.fixture
def fresh_loader() -> Iterator[None]:
    """Lets a test load the library anew; restores the process-wide instance afterwards."""
    saved = loader._lib
    loader._lib = None
    try:
        yield
    finally:
        loader._lib = saved


def test_add_f32_round_trip() -> None:
    n = 37
    a = [random.uniform(-10, 10) for _ in range(n)]
    b = [random.uniform(-10, 10) for _ in range(n)]
    out = f32_buffer([0.0] * n)
    check(lib().to_add(f32_buffer(a), f32_buffer(b), out, n, DType.float32), "to_add")
    expected = [struct.unpack("<f", struct.pack("<f", x + y))[0] for x, y in zip(a, b, strict=True)]
    for got, want, x, y in zip(out, expected, a, b, strict=True):
        # float32 addition of float32-rounded inputs
        fx, fy = (struct.unpack("<f", struct.pack("<f", v))[0] for v in (x, y))
        assert got == pytest.approx(fx + fy, rel=1e-6, abs=1e-6)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_add_bf16_round_trip() -> None:
    n = 19
    a = [to_bf16(random.uniform(-4, 4)) for _ in range(n)]
    b = [to_bf16(random.uniform(-4, 4)) for _ in range(n)]
    out = (ctypes.c_uint16 * n)()
    ua, ub = (ctypes.c_uint16 * n)(*a), (ctypes.c_uint16 * n)(*b)
    check(lib().to_add(ua, ub, out, n, DType.bfloat16), "to_add")
    for got, x, y in zip(out, a, b, strict=True):
        assert got == to_bf16(from_bf16(x) + from_bf16(y))


def test_c_error_surfaces_as_native_error_with_the_c_message() -> None:
    out = f32_buffer([0.0] * 4)
    rc = lib().to_add(None, out, out, 4, DType.float32)
    assert rc == 1
    c_message = loader.last_error()
    assert "NULL" in c_message
    with pytest.raises(NativeError, match="NULL") as info:
        check(rc, "to_add")
    assert info.value.code == 1
    assert info.value.function == "to_add"
    assert c_message in str(info.value)
    assert "TO_ERR_INVALID_ARGUMENT" in str(info.value)


def test_unknown_dtype_is_a_dtype_error() -> None:
    out = f32_buffer([0.0] * 4)
    with pytest.raises(NativeError) as info:
        check(lib().to_add(out, out, out, 4, 99), "to_add")
    assert info.value.code == 3
    assert str(info.value)  # carries the C text


def test_errors_are_per_thread() -> None:
    import threading

    out = f32_buffer([0.0] * 2)
    assert lib().to_add(None, out, out, 2, DType.float32) != 0
    seen: list[str] = []
    t = threading.Thread(target=lambda: seen.append(loader.last_error()))
    t.start()
    t.join()
    assert seen == [""]
    assert "NULL" in loader.last_error()


def test_library_path_prefers_the_env_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = library_path()
    monkeypatch.setenv("INFERENCE_PIO_LIB", str(real))
    assert library_path() == real
    missing = tmp_path / "nope.so"
    monkeypatch.setenv("INFERENCE_PIO_LIB", str(missing))
    with pytest.raises(NativeLibraryError, match="INFERENCE_PIO_LIB"):
        library_path()
    sibling = loader.candidate_paths("libtensor_ops_cuda.so")
    assert sibling == [missing.with_name("libtensor_ops_cuda.so")]


def test_env_override_loads_that_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_loader: None
) -> None:
    copy = tmp_path / "libtensor_ops_copy.so"
    copy.write_bytes(library_path().read_bytes())
    monkeypatch.setenv("INFERENCE_PIO_LIB", str(copy))
    loaded = lib()
    assert Path(loaded._name) == copy
    assert loaded.to_abi_version() == bindings.ABI_VERSION


def test_unloadable_file_is_a_native_library_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_loader: None
) -> None:
    bogus = tmp_path / "libtensor_ops.so"
    bogus.write_text("not an ELF file")
    monkeypatch.setenv("INFERENCE_PIO_LIB", str(bogus))
    with pytest.raises(NativeLibraryError, match="cannot load"):
        lib()


def test_abi_mismatch_is_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, fresh_loader: None
) -> None:
    monkeypatch.setattr(loader, "ABI_VERSION", bindings.ABI_VERSION + 1000)
    with pytest.raises(NativeLibraryError, match=r"ABI version \d+.*needs \d+.*rebuild"):
        lib()
    assert loader._lib is None


def test_python_abi_version_matches_the_header() -> None:
    found = re.search(r"#define\s+TO_ABI_VERSION\s+(\d+)", HEADER.read_text())
    assert found is not None
    assert int(found.group(1)) == bindings.ABI_VERSION == lib().to_abi_version()


def parse_c_enum(text: str, name: str) -> dict[str, int]:
    body = re.search(r"typedef\s+enum\s+" + name + r"\s*\{(.*?)\}", text, re.S)
    assert body is not None, f"enum {name} not found in {HEADER}"
    entries = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    result = {}
    for item in entries.split(","):
        if item.strip():
            key, value = (s.strip() for s in item.split("="))
            result[key] = int(value, 0)
    return result


C_DTYPE_NAMES = {
    "TO_F32": DType.float32,
    "TO_F16": DType.float16,
    "TO_BF16": DType.bfloat16,
    "TO_I32": DType.int32,
    "TO_I64": DType.int64,
    "TO_U8": DType.uint8,
    "TO_BOOL": DType.bool,
    "TO_I8": DType.int8,
    "TO_F64": DType.float64,
    "TO_I16": DType.int16,
    "TO_F8_E4M3": DType.float8_e4m3,
}


def test_dtype_enum_agrees_with_the_header() -> None:
    c_enum = parse_c_enum(HEADER.read_text(), "to_dtype")
    count = c_enum.pop("TO_DTYPE_COUNT")
    assert count == len(DType) == len(c_enum)
    assert set(c_enum) == set(C_DTYPE_NAMES), "a C dtype has no Python mirror (or vice versa)"
    for c_name, value in c_enum.items():
        assert C_DTYPE_NAMES[c_name].value == value, c_name


def test_dtype_sizes_agree_with_the_library() -> None:
    for dtype in DType:
        assert lib().to_dtype_size(dtype) == dtype.itemsize, dtype.name
    assert lib().to_dtype_size(len(DType)) == -1


def test_status_names_agree_with_the_header() -> None:
    from inference_pio.errors import STATUS_NAMES

    c_enum = parse_c_enum(HEADER.read_text(), "to_status")
    assert {v: k for k, v in c_enum.items()} == STATUS_NAMES


def test_every_bound_prototype_is_declared_in_the_header() -> None:
    header = HEADER.read_text()
    for name in bindings.PROTOTYPES:
        assert re.search(rf"\b{name}\s*\(", header), f"{name} is bound but not in the header"


@pytest.mark.parametrize(
    "name", ["to_abi_version", "to_version_string", "to_last_error", "to_dtype_size", "to_add"]
)
def test_foundation_functions_are_exported(name: str) -> None:
    assert hasattr(lib(), name)


def test_import_does_not_load_the_library() -> None:
    code = (
        "import sys, inference_pio\n"
        "assert 'inference_pio._native.loader' not in sys.modules, 'loader imported'\n"
        "assert not any(m.startswith('inference_pio_') for m in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "INFERENCE_PIO_LIB"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _physical_cores_from_sysfs() -> int | None:
    """Distinct (package, core) pairs among the CPUs this process may use, or None."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            core = int((topo / "core_id").read_text())
            pkg = int((topo / "physical_package_id").read_text())
        except (OSError, ValueError):
            return None
        cores.add((pkg, core))
    return len(cores)


def test_default_thread_count_is_the_physical_cores_of_the_affinity_mask() -> None:
    want = _physical_cores_from_sysfs()
    if want is None:
        pytest.skip("no CPU topology in sysfs")
    env = {k: v for k, v in os.environ.items() if k != "INFERENCE_PIO_NUM_THREADS"}
    code = "from inference_pio._native import lib; print(lib().to_get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == want
    env["INFERENCE_PIO_NUM_THREADS"] = "3"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == 3
