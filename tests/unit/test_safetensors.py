"""The safetensors reader against files written by the ``safetensors`` package, and corruptions.

Every corrupted variant must raise CheckpointError naming the file (and the tensor where there is
one); none may crash the process.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402

from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.errors import CheckpointError  # noqa: E402
from inference_pio.weights import (  # noqa: E402
    SafetensorsFile,
    WeightIndex,
    load_checkpoint_weights,
)

TORCH_DTYPES: dict[Any, DType] = {
    torch.float64: DType.float64,
    torch.float32: DType.float32,
    torch.float16: DType.float16,
    torch.bfloat16: DType.bfloat16,
    torch.int64: DType.int64,
    torch.int32: DType.int32,
    torch.int16: DType.int16,
    torch.int8: DType.int8,
    torch.uint8: DType.uint8,
    torch.bool: DType.bool,
    torch.float8_e4m3fn: DType.float8_e4m3,
}


def raw_bytes(t: Any) -> bytes:
    t = t.contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()) if t.numel() else b""


def random_tensor(dtype: Any, shape: tuple[int, ...]) -> Any:
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape) * 3).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, dtype=dtype)


def make_file(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    st_torch.save_file(tensors, str(path), metadata=metadata)
    return path


def mapping_of(ptr: int) -> str:
    """The path of the /proc/self/maps entry that contains address ``ptr``."""
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return parts[5].strip() if len(parts) == 6 else ""
    return ""


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    tensors = {f"t.{d}".replace("torch.", ""): random_tensor(d, (3, 5)) for d in TORCH_DTYPES}
    tensors["scalar"] = torch.tensor(1.5, dtype=torch.bfloat16)
    tensors["empty"] = torch.zeros(0, 7)
    tensors["empty1"] = torch.zeros(0, dtype=torch.int64)
    tensors["big"] = torch.randn(64, 33)
    return make_file(tmp_path / "model.safetensors", tensors, {"format": "pt", "k": "vé"}), tensors


# ---- valid files ---------------------------------------------------------------------------
def test_every_dtype_roundtrip(sample: tuple[Path, dict[str, Any]]) -> None:
    path, tensors = sample
    with SafetensorsFile(path) as f:
        assert f.keys() == sorted(tensors)
        assert len(f) == len(tensors)
        assert "big" in f
        assert "nope" not in f
        assert f.metadata == {"format": "pt", "k": "vé"}
        for name, ref in tensors.items():
            t = f.get(name)
            assert t.dtype == TORCH_DTYPES[ref.dtype], name
            assert t.shape == tuple(ref.shape), name
            assert t.tobytes() == raw_bytes(ref), name
            info = f.info(name)
            assert (info.dtype, info.shape, info.nbytes) == (t.dtype, t.shape, t.nbytes)
        assert f.get("scalar").item() == 1.5
        assert f.get("t.float32").tolist() == tensors["t.float32"].tolist()


def test_zero_copy_and_read_only(sample: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sample
    with SafetensorsFile(path) as f:
        t = f.get("big")
        header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
        begin = json.loads(path.read_bytes()[8 : 8 + header_len])["big"]["data_offsets"][0]
        assert os.path.samefile(mapping_of(t.data_ptr), path)
        assert ctypes.string_at(t.data_ptr, 16) == path.read_bytes()[8 + header_len + begin :][:16]
        t2 = f.get("big")
        assert t2.data_ptr == t.data_ptr  # same mapping, no copy
        assert t.readonly
        with pytest.raises(ValueError, match="read-only"):
            t.zero_()
        with pytest.raises(ValueError, match="read-only"):
            t.copy_(t2)


def resident_kib(ptr: int, nbytes: int) -> int:
    """Resident KiB of the mapping pages in [ptr, ptr + nbytes) (/proc/self/smaps of its VMA)."""
    text = Path("/proc/self/smaps").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            if lo <= ptr < hi:
                for rest in lines[i + 1 :]:
                    if rest.startswith("Rss:"):
                        return int(rest.split()[1])
    raise AssertionError("mapping not found")


def test_release_drops_pages_and_the_data_reads_back(
    sample: tuple[Path, dict[str, Any]],
) -> None:
    """release() (a weight converted at load) gives the pages back; the tensor still reads the
    file's bytes afterwards, through the file or the index."""
    path, tensors = sample
    want = raw_bytes(tensors["big"])
    with SafetensorsFile(path) as f:
        t = f.get("big")
        assert t.tobytes() == want  # faults its pages in
        before = resident_kib(t.data_ptr, t.nbytes)
        f.release("big")
        after = resident_kib(t.data_ptr, t.nbytes)
        assert after < before or t.nbytes < 2 * os.sysconf("SC_PAGE_SIZE")
        assert t.tobytes() == want
        with pytest.raises(KeyError):
            f.release("nope")
    index = load_checkpoint_weights(path)
    index.release("big")
    assert index["big"].tobytes() == want
    index.close()
    f.release("big")  # closed: a no-op


def test_tensors_outlive_close(sample: tuple[Path, dict[str, Any]]) -> None:
    path, tensors = sample
    f = SafetensorsFile(path)
    t = f.get("big")
    view = t[3:5]
    f.close()
    f.close()  # idempotent
    assert f.closed
    with pytest.raises(CheckpointError, match="closed"):
        f.get("big")
    del f
    gc.collect()
    assert t.tobytes() == raw_bytes(tensors["big"])
    assert view.tobytes() == raw_bytes(tensors["big"][3:5])
    ptr = t.data_ptr
    del t, view
    gc.collect()
    assert (
        mapping_of(ptr) == ""
        or not os.path.exists(mapping_of(ptr))
        or not os.path.samefile(mapping_of(ptr), path)
    )  # unmapped with the last tensor


def test_many_tensors_and_no_tensors(tmp_path: Path) -> None:
    tensors = {f"layers.{i}.w": torch.full((2,), float(i)) for i in range(600)}
    with SafetensorsFile(make_file(tmp_path / "many.safetensors", tensors)) as f:
        assert len(f) == 600
        assert f.get("layers.599.w").tolist() == [599.0, 599.0]
    with SafetensorsFile(make_file(tmp_path / "none.safetensors", {})) as f:
        assert f.keys() == []
        assert f.metadata == {}


def test_unicode_names_and_escapes(tmp_path: Path) -> None:
    names = ["é", "😀.weight", 'quote"back\\slash', "tab\tname", "日本"]
    tensors = {n: torch.tensor([i], dtype=torch.int32) for i, n in enumerate(names)}
    with SafetensorsFile(make_file(tmp_path / "u.safetensors", tensors)) as f:
        assert sorted(f.keys()) == sorted(names)
        for i, n in enumerate(names):
            assert f.get(n).tolist() == [i]


def test_prefetch_progress(sample: tuple[Path, dict[str, Any]], capsys: Any) -> None:
    path, _ = sample
    with SafetensorsFile(path) as f:
        f.prefetch(progress=False)
        f.prefetch(progress=True)
        assert "B" in capsys.readouterr().err  # a bar on stderr
        f.prefetch()  # auto: small file, no bar
        assert capsys.readouterr().err == ""


def test_built_in_bar_without_tqdm(
    sample: tuple[Path, dict[str, Any]], capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core does not depend on tqdm: without it, loads draw a plain bar."""
    import sys as _sys

    monkeypatch.setitem(_sys.modules, "tqdm.auto", None)  # import raises ImportError
    monkeypatch.setitem(_sys.modules, "tqdm", None)
    path, _ = sample
    with SafetensorsFile(path) as f:
        f.prefetch(progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\r"), err
    assert "100%" in err
    assert err.endswith("\n")


def test_arguments(sample: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sample
    with pytest.raises(TypeError):
        SafetensorsFile(123)  # type: ignore[arg-type]
    with SafetensorsFile(path) as f:
        with pytest.raises(KeyError, match="nope"):
            f.get("nope")
        with pytest.raises(TypeError):
            f.get(1)  # type: ignore[arg-type]


# ---- checkpoints ---------------------------------------------------------------------------
def write_sharded(directory: Path, tensors: dict[str, Any]) -> dict[str, Any]:
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(tensors, directory, max_shard_size=1500)
    index: dict[str, Any] = json.loads((directory / "model.safetensors.index.json").read_text())
    return index


@pytest.fixture
def sharded(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    tensors = {
        f"model.layers.{i}.{k}": torch.randn(8, 16).to(torch.bfloat16)
        for i in range(6)
        for k in ("q", "k")
    }
    tensors["lm_head.weight"] = torch.randn(4, 16)
    index = write_sharded(tmp_path, tensors)
    assert len(set(index["weight_map"].values())) > 2
    return tmp_path, tensors


def test_sharded_checkpoint(sharded: tuple[Path, dict[str, Any]]) -> None:
    path, tensors = sharded
    with load_checkpoint_weights(path) as w:
        assert isinstance(w, WeightIndex)
        assert sorted(w) == sorted(tensors)
        assert len(w) == len(tensors)
        assert len(w.files) > 2
        for name, ref in tensors.items():
            assert w[name].tobytes() == raw_bytes(ref)
            assert w.info(name).shape == tuple(ref.shape)
        assert w.total_bytes == sum(ref.numel() * ref.element_size() for ref in tensors.values())
        assert "total_size" in w.metadata
        w.prefetch(progress=False)
        with pytest.raises(KeyError):
            w["missing"]
    w2 = load_checkpoint_weights(
        path / "model.safetensors.index.json", prefetch=True, progress=False
    )
    assert len(w2) == len(tensors)


def test_single_file_checkpoint(sample: tuple[Path, dict[str, Any]]) -> None:
    path, tensors = sample
    for target in (path.parent, path):
        w = load_checkpoint_weights(target)
        assert sorted(w) == sorted(tensors)
        assert w.metadata["format"] == "pt"
        assert w["big"].tobytes() == raw_bytes(tensors["big"])


def test_checkpoint_errors(sharded: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = sharded
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))

    def rewrite(obj: Any) -> None:
        index_path.write_text(json.dumps(obj))

    # an entry that is not in its shard
    bad = json.loads(json.dumps(index))
    name = next(n for n, s in bad["weight_map"].items() if s == shards[0])
    bad["weight_map"][name] = shards[1]
    rewrite(bad)
    with pytest.raises(CheckpointError, match=rf"{name}.*{shards[1]}.*does not contain"):
        load_checkpoint_weights(path)
    # a tensor listed that no shard has
    bad = json.loads(json.dumps(index))
    bad["weight_map"]["ghost"] = shards[0]
    rewrite(bad)
    with pytest.raises(CheckpointError, match="'ghost'"):
        load_checkpoint_weights(path)
    # shard escaping the directory, non-string shard
    for shard in ("../x.safetensors", "/etc/passwd", 3):
        bad = json.loads(json.dumps(index))
        bad["weight_map"][name] = shard
        rewrite(bad)
        with pytest.raises(CheckpointError, match="weight_map"):
            load_checkpoint_weights(path)
    # not JSON, duplicate keys, no weight_map
    for text in ("{", '{"weight_map": {"a": "x", "a": "y"}}', "[]", '{"weight_map": 1}'):
        index_path.write_text(text)
        with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json"):
            load_checkpoint_weights(path)
    index_path.write_bytes(b'{"weight_map": {"\xff": "x"}}')
    with pytest.raises(CheckpointError, match=r"index\.json"):
        load_checkpoint_weights(path)
    # duplicate tensor across shards
    rewrite(index)
    dup = path / shards[1]
    other = SafetensorsFile(path / shards[0])
    extra = {n: torch.zeros(1) for n in other.keys()[:1]}
    other.close()
    with SafetensorsFile(dup) as f:
        extra.update(
            {n: torch.frombuffer(bytearray(f.get(n).tobytes()), dtype=torch.uint8) for n in f}
        )
    make_file(dup, extra)
    with pytest.raises(CheckpointError, match="stored twice"):
        load_checkpoint_weights(path)
    # missing shard
    (path / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=rf"shard {shards[-1]} is missing"):
        load_checkpoint_weights(path)
    # nothing there / not there / corrupted shard names the shard
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_checkpoint_weights(empty)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint_weights(tmp_path / "absent")
    (empty / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}x")
    with pytest.raises(CheckpointError, match=r"empty_dir/model\.safetensors.*trailing"):
        load_checkpoint_weights(empty)


# ---- corrupted files -----------------------------------------------------------------------
def header_file(
    tmp_path: Path,
    header: Any,
    data: bytes = b"",
    name: str = "bad.safetensors",
    declared: int | None = None,
) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = tmp_path / name
    p.write_bytes(struct.pack("<Q", len(raw) if declared is None else declared) + raw + data)
    return p


def entry(dtype: str = "F32", shape: Any = (1,), offsets: Any = (0, 4)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CORRUPT: dict[str, tuple[Any, bytes, str]] = {
    "invalid JSON": (b'{"a": }', b"", "unexpected character"),
    "trailing garbage": (b"{} {}", b"", "trailing characters"),
    "non-UTF-8 name": (b'{"\xff": 1}', b"", "UTF-8"),
    "non-UTF-8 outside strings": (b'{"a": \xc3\xa9}', b"", "non-ASCII"),
    "lone surrogate": (b'{"\\udc80": 1}', b"", "surrogate"),
    "control char": (b'{"a\x01": 1}', b"", "control character"),
    "NaN": (b'{"a": NaN}', b"", "unexpected"),
    "leading zero": (
        b'{"a": {"dtype": "F32", "shape": [01], "data_offsets": [0, 4]}}',
        b"\0" * 4,
        "leading zero",
    ),
    "wrong dtype name": ({"w": entry("FLOAT32")}, b"\0" * 4, "unknown dtype 'FLOAT32'"),
    "unsupported dtype": ({"w": entry("U32")}, b"\0" * 4, "U32"),
    "dtype not a string": ({"w": entry(7)}, b"\0" * 4, "dtype must be a string"),
    "shape/bytes mismatch": ({"w": entry("F32", (2, 3))}, b"\0" * 4, "need 24"),
    "negative shape": ({"w": entry("F32", (-1,))}, b"\0" * 4, "negative"),
    "float shape": ({"w": entry("F32", (1.0,))}, b"\0" * 4, "non-integer"),
    "shape not a list": (
        {"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}},
        b"\0" * 4,
        "shape must be an array",
    ),
    "shape overflow": ({"w": entry("F32", (2**40, 2**40))}, b"\0" * 4, "overflow"),
    "too many dims": ({"w": entry("U8", (1,) * 9, (0, 1))}, b"\0", "dimensions"),
    "offsets out of range": ({"w": entry("F32", (2,), (0, 8))}, b"\0" * 4, "exceed the data"),
    "offsets reversed": ({"w": entry("U8", (0,), (4, 0))}, b"\0" * 4, "< begin"),
    "negative offsets": ({"w": entry("U8", (0,), (-4, -4))}, b"", "negative"),
    "float offsets": ({"w": entry("F32", (1,), (0.0, 4.0))}, b"\0" * 4, "non-integer"),
    "huge offsets": (
        b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1e400]}}',
        b"\0",
        "non-integer",
    ),
    "offsets not a pair": ({"w": entry("F32", (1,), (0, 4, 8))}, b"\0" * 4, r"\[begin, end\]"),
    "overlapping offsets": (
        {"a": entry("F32", (2,), (0, 8)), "b": entry("F32", (1,), (4, 8))},
        b"\0" * 8,
        "overlap",
    ),
    "hole between tensors": (
        {"a": entry(offsets=(0, 4)), "b": entry(offsets=(8, 12))},
        b"\0" * 12,
        "hole",
    ),
    "trailing data": ({"a": entry()}, b"\0" * 9, "trailing bytes"),
    "duplicate names": (
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
        b"\0" * 8,
        "duplicate key 'a'",
    ),
    "missing field": ({"a": {"dtype": "F32", "shape": [1]}}, b"", "missing field 'data_offsets'"),
    "unknown field": ({"a": {**entry(), "offset": 0}}, b"\0" * 4, "unexpected field 'offset'"),
    "entry not an object": ({"a": [1]}, b"", "must be an object"),
    "bad metadata": ({"__metadata__": {"a": 1}}, b"", "must be a string"),
    "metadata not an object": ({"__metadata__": "x"}, b"", "must be an object"),
    "deep nesting": (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", "nesting too deep"),
    "header not an object": (b'"abc"', b"", "start with '{'"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_header(tmp_path: Path, case: str) -> None:
    header, data, message = CORRUPT[case]
    p = header_file(tmp_path, header, data)
    with pytest.raises(CheckpointError, match=message) as exc:
        SafetensorsFile(p)
    assert str(p) in str(exc.value)
    if isinstance(header, dict) and any(k != "__metadata__" for k in header):
        assert "tensor '" in str(exc.value)


def test_file_level_errors(tmp_path: Path) -> None:
    good = header_file(tmp_path, {"a": entry()}, b"\0" * 4, "good.safetensors")
    cases: dict[str, tuple[Path, str]] = {
        "empty file": (tmp_path / "empty.safetensors", "too small"),
        "directory": (tmp_path, "directory"),
        "missing": (tmp_path / "missing.safetensors", "No such file"),
        "header longer than file": (
            header_file(tmp_path, {"a": entry()}, b"\0" * 4, "l1", declared=200),
            "larger than the rest",
        ),
        "2^63 header": (
            header_file(tmp_path, {"a": entry()}, b"\0" * 4, "l2", declared=2**63),
            "exceeds the limit",
        ),
        "too many JSON values": (
            header_file(tmp_path, b'{"a": [' + b"0," * (1 << 22) + b"0]}", b"", "l4"),
            "too many JSON values",
        ),
        "2^64-1 header": (
            header_file(tmp_path, b"{}", b"", "l3", declared=2**64 - 1),
            "exceeds the limit",
        ),
    }
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for case, (p, message) in cases.items():
        with pytest.raises(CheckpointError, match=message) as exc:
            SafetensorsFile(p)
        assert str(p) in str(exc.value), case
    assert SafetensorsFile(good).get("a").tolist() == [0.0]


def test_truncated_at_every_cut_point(sample: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    full = sample[0].read_bytes()
    header_end = 8 + struct.unpack("<Q", full[:8])[0]
    # every cut in the length field and the header's first bytes, then a stride through the rest
    cuts = set(range(24)) | set(range(24, header_end, 5)) | {header_end - 1, header_end}
    cuts |= set(range(header_end + 1, len(full), 37))
    p = tmp_path / "cut.safetensors"
    for cut in sorted(cuts):
        p.write_bytes(full[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
            SafetensorsFile(p)


# ---- fuzz --------------------------------------------------------------------------------
def _fuzz_base() -> tuple[bytes, bytes]:
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1, 2], dtype=torch.int16),
        "c": torch.zeros(0, 2),
        "d\u00e9": torch.tensor(True),
    }
    raw = st_torch.save({**tensors}, metadata={"m": "v"})
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[: 8 + n], raw[8 + n :]


FUZZ_HEADER, FUZZ_DATA = _fuzz_base()


def _check_consistent(f: SafetensorsFile, path: Path) -> None:
    from safetensors import safe_open

    total = 0
    for name in f:
        info = f.info(name)
        numel = 1
        for s in info.shape:
            numel *= s
        assert info.nbytes == numel * info.dtype.itemsize
        t = f.get(name)
        assert len(t.tobytes()) == info.nbytes
        total += info.nbytes
    assert total == f.data_size
    # What we accept, the reference implementation accepts too, with the same contents.
    with safe_open(str(path), "pt") as ref:
        assert sorted(ref.keys()) == f.keys()
        for name in f:
            assert raw_bytes(ref.get_tensor(name)) == f.get(name).tobytes()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=hst.lists(
        hst.tuples(hst.integers(0, 10_000), hst.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=hst.one_of(hst.none(), hst.integers(0, 400)),
)
def test_fuzz_header_mutations(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    raw = bytearray(FUZZ_HEADER + FUZZ_DATA)
    for pos, value in edits:
        raw[pos % len(raw)] = value
    if cut is not None:
        del raw[cut:]
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes(bytes(raw))
    try:
        f = SafetensorsFile(p)
    except CheckpointError as exc:
        message = str(exc)
        f = None
    if f is None:
        assert str(p) in message
        return
    with f:
        _check_consistent(f, p)
