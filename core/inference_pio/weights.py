"""Zero-copy safetensors weights: single files and sharded checkpoints.

:class:`SafetensorsFile` maps one ``.safetensors`` file read-only through the native reader
(``to_st_*`` in libtensor_ops), which validates the whole header before anything is exposed.
``get(name)`` returns a read-only :class:`~inference_pio.tensor.Tensor` that borrows the mapping:
each tensor holds its own reference to the native handle, so tensors stay valid after the file
object is closed, and the mapping goes away with the last of them.

:func:`load_checkpoint_weights` opens a checkpoint directory (``model.safetensors`` or a sharded
``model.safetensors.index.json``) as a :class:`WeightIndex`, a lazy mapping name → Tensor.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_pio._native import lib
from inference_pio._native.loader import last_error
from inference_pio.device import CPU
from inference_pio.dtypes import DType
from inference_pio.errors import CheckpointError
from inference_pio.progress import byte_bar, stderr_is_tty
from inference_pio.tensor import Storage, Tensor

__all__ = [
    "PROGRESS_THRESHOLD_BYTES",
    "SafetensorsFile",
    "TensorInfo",
    "WeightIndex",
    "load_checkpoint_weights",
]

MAX_DIMS = 8  # TO_ST_MAX_DIMS
_WILLNEED = 1  # TO_ST_WILLNEED
_TOUCH = 2  # TO_ST_TOUCH
#: prefetch() shows a progress bar on its own only above this many bytes (and on a terminal).
PROGRESS_THRESHOLD_BYTES = 1 << 30
_CHUNK = 64 << 20
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Header entry of one tensor: dtype, shape and byte size, and the file it lives in."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    nbytes: int
    path: str


class _Ref:
    """One reference to a native ``to_st_file`` handle; dropped when garbage-collected."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def release(self) -> None:
        ptr, self.ptr = self.ptr, 0
        if ptr:
            lib().to_st_close(ptr)

    def __del__(self) -> None:
        # At interpreter shutdown lib() may be gone: the process unmaps everything anyway.
        with contextlib.suppress(Exception):
            self.release()


def _fail(message: str) -> CheckpointError:
    return CheckpointError(message)


class SafetensorsFile:
    """A ``.safetensors`` file mapped read-only, with its header fully validated.

    Use as a context manager or call :meth:`close`; tensors obtained with :meth:`get` remain
    valid after closing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            kind = type(path).__name__
            raise TypeError(f"SafetensorsFile: path must be str or PathLike, not {kind}")
        self.path = os.fspath(path)
        raw = os.fsencode(self.path)
        if not raw or b"\0" in raw:
            raise CheckpointError(f"invalid safetensors path {self.path!r}")
        handle = ctypes.c_void_p()
        rc = lib().to_st_open(raw, ctypes.byref(handle))
        if rc != 0:
            raise _fail(last_error() or f"{self.path}: cannot open (error {rc})")
        self._lock = threading.Lock()
        self._ref: _Ref | None = _Ref(handle.value or 0)
        self._infos: dict[str, tuple[int, TensorInfo, int]] = {}
        self._metadata: dict[str, str] = {}
        try:
            self._read_index(handle.value or 0)
        except BaseException:
            self.close()
            raise

    def _read_index(self, h: int) -> None:
        L = lib()
        count = ctypes.c_int64()
        _native(L.to_st_count(h, ctypes.byref(count)))
        name, dtype, ndim = ctypes.c_char_p(), ctypes.c_int(), ctypes.c_int()
        shape = (ctypes.c_int64 * MAX_DIMS)()
        data, nbytes = ctypes.c_void_p(), ctypes.c_int64()
        for i in range(count.value):
            _native(
                L.to_st_tensor_info(
                    h,
                    i,
                    ctypes.byref(name),
                    ctypes.byref(dtype),
                    ctypes.byref(ndim),
                    shape,
                    ctypes.byref(data),
                    ctypes.byref(nbytes),
                )
            )
            key = (name.value or b"").decode("utf-8")
            info = TensorInfo(
                key, DType(dtype.value), tuple(shape[: ndim.value]), nbytes.value, self.path
            )
            self._infos[key] = (i, info, data.value or 0)
        mcount = ctypes.c_int64()
        _native(L.to_st_metadata_count(h, ctypes.byref(mcount)))
        k, v = ctypes.c_char_p(), ctypes.c_char_p()
        for i in range(mcount.value):
            _native(L.to_st_metadata_item(h, i, ctypes.byref(k), ctypes.byref(v)))
            self._metadata[(k.value or b"").decode("utf-8")] = (v.value or b"").decode("utf-8")
        sizes = [ctypes.c_int64() for _ in range(3)]
        _native(L.to_st_file_info(h, *(ctypes.byref(s) for s in sizes)))
        self.file_size, self.header_size, self.data_size = (s.value for s in sizes)

    # ---- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Drops this object's reference to the mapping; tensors already returned stay valid."""
        with self._lock:
            ref, self._ref = self._ref, None
        if ref is not None:
            ref.release()

    @property
    def closed(self) -> bool:
        return self._ref is None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._infos)} tensors"
        return f"SafetensorsFile({self.path!r}, {state})"

    # ---- contents --------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    @property
    def metadata(self) -> dict[str, str]:
        """The header's ``__metadata__`` map (empty when absent)."""
        return dict(self._metadata)

    def info(self, name: str) -> TensorInfo:
        """dtype, shape and byte size of ``name`` without touching its data."""
        return self._entry(name)[1]

    def _entry(self, name: str) -> tuple[int, TensorInfo, int]:
        if not isinstance(name, str):
            raise TypeError(f"tensor name must be str, not {type(name).__name__}")
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def get(self, name: str) -> Tensor:
        """The tensor ``name``: a zero-copy read-only view of the mapping.

        A tensor whose offset in the file is not a multiple of its element size (files written by
        the ``safetensors`` package never do this) is returned as an aligned private copy.
        """
        _, info, ptr = self._entry(name)
        with self._lock:
            if self._ref is None:
                raise CheckpointError(f"{self.path}: file is closed (cannot read {name!r})")
            _native(lib().to_st_retain(self._ref.ptr))
            owner = _Ref(self._ref.ptr)
        storage = Storage(ptr, info.nbytes, CPU, owner, readonly=True)
        t = Tensor(storage, info.shape, info.dtype)
        if ptr % info.dtype.itemsize:
            return t.clone()
        return t

    def release(self, name: str) -> None:
        """Drops this process's resident pages of ``name`` (``madvise(MADV_DONTNEED)``), for a
        weight converted at load whose file bytes are no longer read; a later read of the
        tensor maps the file again. No-op on a closed file."""
        _, info, ptr = self._entry(name)
        with self._lock:
            if self._ref is None:
                return
            _native(lib().to_st_release(self._ref.ptr, ptr, info.nbytes))

    def prefetch(self, progress: bool | None = None, *, bar: Any = None) -> None:
        """Reads every page of the data region into the page cache (``madvise`` + touch).

        ``progress``: True always shows a progress bar, False never, None only for files larger than
        :data:`PROGRESS_THRESHOLD_BYTES` when stderr is a terminal. ``bar``: an existing bar
        to advance instead (used by :meth:`WeightIndex.prefetch`).
        """
        with self._lock:
            if self._ref is None:
                raise CheckpointError(f"{self.path}: file is closed")
            ref = _Ref(self._ref.ptr)
            _native(lib().to_st_retain(ref.ptr))
        own_bar = bar is None and _want_progress(progress, self.data_size)
        if own_bar:
            bar = _make_bar(self.data_size, os.path.basename(self.path))
        try:
            _native(lib().to_st_prefetch(ref.ptr, 0, self.data_size, _WILLNEED))
            for off in range(0, self.data_size, _CHUNK):
                n = min(_CHUNK, self.data_size - off)
                _native(lib().to_st_prefetch(ref.ptr, off, n, _TOUCH))
                if bar is not None:
                    bar.update(n)
        finally:
            ref.release()
            if own_bar:
                bar.close()


def _native(rc: int) -> None:
    if rc != 0:
        raise CheckpointError(last_error())


def _want_progress(progress: bool | None, total: int) -> bool:
    if progress is not None:
        return progress
    return stderr_is_tty() and total > PROGRESS_THRESHOLD_BYTES


def _make_bar(total: int, desc: str) -> Any:
    return byte_bar(total, desc, divisor=1024)


class WeightIndex(Mapping[str, Tensor]):
    """Every tensor of a checkpoint (one or several safetensors files), looked up lazily.

    ``index[name]`` returns the zero-copy read-only tensor; :meth:`info` gives its header entry
    without touching the data.
    """

    def __init__(
        self,
        files: list[SafetensorsFile],
        owner: dict[str, SafetensorsFile],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.files = files
        self._owner = owner
        #: The index file's "metadata" object, or the single file's ``__metadata__``.
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __getitem__(self, name: str) -> Tensor:
        f = self._owner.get(name)
        if f is None:
            raise KeyError(f"no tensor named {name!r} in the checkpoint")
        return f.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, name: object) -> bool:
        return name in self._owner

    def info(self, name: str) -> TensorInfo:
        """dtype, shape, byte size and file of ``name``."""
        f = self._owner.get(name)
        if f is None:
            raise KeyError(f"no tensor named {name!r} in the checkpoint")
        return f.info(name)

    def release(self, name: str) -> None:
        """:meth:`SafetensorsFile.release` of the file holding ``name``."""
        f = self._owner.get(name)
        if f is None:
            raise KeyError(f"no tensor named {name!r} in the checkpoint")
        f.release(name)

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data over all files."""
        return sum(f.data_size for f in self.files)

    def prefetch(self, progress: bool | None = None) -> None:
        """Faults every page of every file in, with one progress bar over all of them
        (``progress`` as in :meth:`SafetensorsFile.prefetch`)."""
        total = self.total_bytes
        bar = _make_bar(total, "loading weights") if _want_progress(progress, total) else None
        try:
            for f in self.files:
                f.prefetch(False, bar=bar)
        finally:
            if bar is not None:
                bar.close()

    def close(self) -> None:
        """Closes every file; tensors already returned stay valid."""
        for f in self.files:
            f.close()

    def __enter__(self) -> WeightIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeightIndex({len(self)} tensors in {len(self.files)} files)"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _read_index(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid index file: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CheckpointError(f'{path}: expected a JSON object with a "weight_map" object')
    weight_map: dict[str, str] = {}
    for name, shard in data["weight_map"].items():
        if not isinstance(shard, str):
            raise CheckpointError(
                f"{path}: weight_map[{name!r}] must be a file name, got {shard!r}"
            )
        if not shard or Path(shard).is_absolute() or ".." in Path(shard).parts or "\\" in shard:
            raise CheckpointError(
                f"{path}: weight_map[{name!r}] = {shard!r} is not a file inside the checkpoint"
            )
        weight_map[name] = shard
    meta = data.get("metadata")
    return weight_map, meta if isinstance(meta, dict) else {}


def _open_all(paths: list[Path]) -> list[SafetensorsFile]:
    files: list[SafetensorsFile] = []
    try:
        for p in paths:
            files.append(SafetensorsFile(p))
    except BaseException:
        for f in files:
            f.close()
        raise
    return files


def _union(files: list[SafetensorsFile]) -> dict[str, SafetensorsFile]:
    owner: dict[str, SafetensorsFile] = {}
    for f in files:
        for name in f:
            prev = owner.get(name)
            if prev is not None:
                raise CheckpointError(
                    f"tensor {name!r} is stored twice: in {prev.path} and in {f.path}"
                )
            owner[name] = f
    return owner


def load_checkpoint_weights(
    path: str | os.PathLike[str], *, prefetch: bool = False, progress: bool | None = None
) -> WeightIndex:
    """Opens the weights of a checkpoint as a lazy mapping name → read-only Tensor.

    ``path`` is a checkpoint directory (``model.safetensors.index.json`` with its shards, else
    ``model.safetensors``, else every ``*.safetensors`` file in it), a ``.safetensors`` file or an
    index file. Sharded checkpoints are validated: every shard listed exists, every weight_map
    entry is in its shard, and no tensor is stored in two files. ``prefetch`` faults all pages in
    (with a progress bar as described in :meth:`SafetensorsFile.prefetch`).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"{root}: no such file or directory")
    index_path: Path | None = None
    if root.is_dir():
        if (root / INDEX_FILE).is_file():
            index_path = root / INDEX_FILE
        elif (root / SINGLE_FILE).is_file():
            shards = [root / SINGLE_FILE]
        else:
            shards = sorted(p for p in root.glob("*.safetensors") if p.is_file())
            if not shards:
                raise CheckpointError(
                    f"{root}: no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors file"
                )
    elif root.name.endswith(".json"):
        index_path = root
    else:
        shards = [root]

    if index_path is None:
        files = _open_all(shards)
        try:
            owner = _union(files)
        except BaseException:
            for f in files:
                f.close()
            raise
        meta: dict[str, Any] = dict(files[0].metadata) if len(files) == 1 else {}
        index = WeightIndex(files, owner, meta)
    else:
        weight_map, meta = _read_index(index_path)
        base = index_path.parent
        names = sorted(set(weight_map.values()))
        for shard in names:
            if not (base / shard).is_file():
                users = sum(1 for v in weight_map.values() if v == shard)
                raise CheckpointError(
                    f"{index_path}: shard {shard} is missing (expected at {base / shard}, "
                    f"listed for {users} tensors)"
                )
        files = _open_all([base / s for s in names])
        try:
            owner = _union(files)
            by_name = dict(zip(names, files, strict=True))
            for name, shard in weight_map.items():
                if owner.get(name) is not by_name[shard]:
                    where = f" (it is in {owner[name].path})" if name in owner else ""
                    raise CheckpointError(
                        f"{index_path}: tensor {name!r} is listed in shard {shard} but "
                        f"{base / shard} does not contain it{where}"
                    )
        except BaseException:
            for f in files:
                f.close()
            raise
        index = WeightIndex(files, owner, meta)
    if prefetch:
        index.prefetch(progress)
    return index
