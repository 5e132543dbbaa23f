"""ctypes wrapper of the native BPE object (to_tok_* in tensor_ops.h)."""

from __future__ import annotations

import ctypes
import threading
from array import array
from collections.abc import Iterable

from inference_pio._native.loader import check, lib

QWEN2 = 0  # TO_PRETOK_QWEN2
GLM4 = 1  # TO_PRETOK_GLM4
_IGNORE_MERGES = 1  # TO_TOK_IGNORE_MERGES


def _address(buf: array[int]) -> int:
    addr: int = buf.buffer_info()[0]
    return addr


class NativeBPE:
    """Pre-tokenizer + merge loop over raw bytes; thread-safe."""

    def __init__(
        self,
        pretokenizer: int,
        vocab: Iterable[tuple[bytes, int]],
        merges: Iterable[tuple[int, int, int]],
        ignore_merges: bool = False,
    ) -> None:
        if pretokenizer not in (QWEN2, GLM4):
            raise ValueError(f"unknown pre-tokenizer kind {pretokenizer}")
        chunks: list[bytes] = []
        ids = array("i")
        offsets = array("q", [0])
        total = 0
        for raw, idx in vocab:
            if not raw or not 0 <= idx < 2**31 - 1:
                raise ValueError(f"vocab entry {raw!r} -> {idx} is invalid")
            chunks.append(raw)
            ids.append(idx)
            total += len(raw)
            offsets.append(total)
        blob = b"".join(chunks)
        flat = array("i")
        for a, b, c in merges:
            flat.extend((a, b, c))
        if any(v < 0 for v in flat):
            raise ValueError("merge ids must be non-negative")
        self._lib = lib()
        handle = ctypes.c_void_p()
        check(
            self._lib.to_tok_create(
                pretokenizer,
                blob,
                len(blob),
                _address(offsets),
                _address(ids) if ids else None,
                len(ids),
                _address(flat) if flat else None,
                len(flat) // 3,
                _IGNORE_MERGES if ignore_merges else 0,
                ctypes.byref(handle),
            ),
            "to_tok_create",
        )
        self._handle: int | None = handle.value
        self._local = threading.local()
        # close() while other threads encode frees the object when the last of them is done
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    def _buffer(self, n: int) -> ctypes.Array[ctypes.c_int32]:
        buf: ctypes.Array[ctypes.c_int32] | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < n:
            buf = (ctypes.c_int32 * max(n, 4096))()
            self._local.buf = buf
        return buf

    def encode(self, data: bytes) -> list[int]:
        """Token ids of UTF-8 ``data`` (pre-tokenized, then BPE per pre-token)."""
        if not data:
            return []
        with self._lock:
            if self._handle is None or self._closing:
                raise ValueError("tokenizer is closed")
            handle = self._handle
            self._users += 1
        try:
            n = len(data)
            big = n > 1 << 20
            out = (ctypes.c_int32 * n)() if big else self._buffer(n)
            count = ctypes.c_int64()
            check(
                self._lib.to_tok_encode(handle, data, n, out, n, ctypes.byref(count)),
                "to_tok_encode",
            )
        finally:
            with self._lock:
                self._users -= 1
                last = self._closing and self._users == 0
            if last:
                self._free()
        ids = array("i")
        ids.frombytes(memoryview(out).cast("B")[: 4 * count.value])
        return ids.tolist()

    def close(self) -> None:
        """Frees the native object (also done on garbage collection); an encode still running
        in another thread finishes first, and later ones raise ValueError."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the object existed
            return
        with lock:
            if self._closing:
                return
            self._closing = True
            idle = self._users == 0
        if idle:
            self._free()

    def _free(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.to_tok_free(handle)

    def __del__(self) -> None:
        # no contextlib here: at interpreter shutdown modules may be gone already
        try:  # noqa: SIM105
            self.close()
        except Exception:  # nothing can be reported from a finaliser
            pass


def pretokenize(pretokenizer: int, data: bytes) -> list[int]:
    """Byte offsets where each pre-token of ``data`` ends (for tests and debugging)."""
    if pretokenizer not in (QWEN2, GLM4):
        raise ValueError(f"unknown pre-tokenizer kind {pretokenizer}")
    if not data:
        return []
    ends = (ctypes.c_int64 * len(data))()
    count = ctypes.c_int64()
    check(
        lib().to_tok_pretokenize(
            pretokenizer, data, len(data), ends, len(data), ctypes.byref(count)
        ),
        "to_tok_pretokenize",
    )
    result: list[int] = ends[: count.value]
    return result


def unicode_version() -> str:
    """Unicode version of the class tables compiled into the library."""
    raw: bytes = lib().to_tok_unicode_version()
    return raw.decode("ascii")
