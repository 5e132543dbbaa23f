"""Per-device access to the native op functions, for hot paths that validated their inputs once.

``Backend(device).call("linear", ...)`` calls ``to_linear`` (CPU) or ``toc_linear`` (CUDA) and
turns an error code into :class:`~inference_pio.errors.NativeError`. Model code validates shapes
when it loads weights, then uses a Backend per forward step without re-validating every call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from inference_pio._native import check, lib
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor


class Backend:
    """The op functions of one device, looked up once and cached."""

    __slots__ = ("_fns", "_local", "device", "recording", "recording_thread")

    #: Activations with at most this many rows (decode steps, small batches) reuse scratch
    #: buffers; larger ones (prefill) are allocated per call so the cache stays small.
    SCRATCH_MAX_ROWS = 16

    def __init__(self, device: Device | str) -> None:
        self.device = Device.parse(device)
        self._fns: dict[str, Any] = {}
        self._local = threading.local()
        #: When a list, every :meth:`call` made by the thread ``recording_thread`` also appends
        #: ``(op, function, args)`` to it (:mod:`inference_pio.nn.decode_plan` records decode
        #: steps this way; other threads' calls are never recorded).
        self.recording: list[tuple[str, Any, tuple[Any, ...]]] | None = None
        self.recording_thread = 0

    def scratch(self, name: str, shape: tuple[int, ...], dtype: DType) -> Tensor:
        """A temporary buffer for one op's output inside a forward step.

        Decode runs the same small shapes every token, so buffers of up to SCRATCH_MAX_ROWS rows
        are kept per (name, shape, dtype) and calling thread and handed out again; the caller
        must be done with the previous contents (layers run one after another, so a name's
        buffer is free again when the next layer asks for it). Larger ones are kept only inside
        :meth:`scratch_scope`, else allocated per call. Never return a scratch buffer to the
        user.
        """
        key = (name, shape, dtype)
        if shape and shape[0] > self.SCRATCH_MAX_ROWS:
            scope: dict[Any, Tensor] | None = getattr(self._local, "scope", None)
            if scope is None:
                return Tensor.empty(shape, dtype, self.device)
            t = scope.get(key)
            if t is None:
                t = scope[key] = Tensor.empty(shape, dtype, self.device)
            return t
        cache = self.scratch_buffers()
        t = cache.get(key)
        if t is None:
            t = cache[key] = Tensor.empty(shape, dtype, self.device)
        return t

    @contextlib.contextmanager
    def scratch_scope(self) -> Iterator[None]:
        """Within the block, :meth:`scratch` also keeps buffers of more than SCRATCH_MAX_ROWS rows
        and hands them out again (one forward call: its layers reuse one set of buffers instead
        of allocating and freeing them per layer); they are released when the outermost scope of
        the calling thread ends, so no prefill length stays cached."""
        if getattr(self._local, "scope", None) is not None:
            yield
            return
        self._local.scope = {}
        try:
            yield
        finally:
            self._local.scope = None

    @contextlib.contextmanager
    def private_scratch(self, buffers: dict[Any, Tensor]) -> Iterator[None]:
        """Within the block, the calling thread's :meth:`scratch` hands out ``buffers`` (filled
        as needed) instead of its own, and keeps every size there: a decode step captured in a
        CUDA graph owns the buffers it writes through, so no later call of the thread reuses
        or frees them (nn.cuda_capture)."""
        local = self._local
        saved = getattr(local, "cache", None), getattr(local, "scope", None)
        local.cache, local.scope = buffers, buffers
        try:
            yield
        finally:
            local.cache, local.scope = saved

    def scratch_buffers(self) -> dict[Any, Tensor]:
        """The calling thread's scratch buffers (a decode plan keeps them alive: it replays raw
        pointers into them, possibly after the thread that made them has ended)."""
        cache: dict[Any, Tensor] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        return cache

    def fn(self, op: str) -> Any:
        """The ctypes function implementing ``op`` on this device."""
        f = self._fns.get(op)
        if f is None:
            if op in self._fns:
                raise NotImplementedError(f"{op} is not implemented on {self.device}")
            if self.device.type == "cpu":
                f = getattr(lib(), "to_" + op)
            else:
                from inference_pio import cuda

                f = cuda.function(op, self.device)
            self._fns[op] = f
        return f

    def has(self, op: str) -> bool:
        """Whether this device's library implements ``op``."""
        if op in self._fns:
            return self._fns[op] is not None
        try:
            self.fn(op)
        except (AttributeError, NotImplementedError):
            self._fns[op] = None
            return False
        return True

    def call(self, op: str, *args: Any) -> None:
        """Runs ``op``; a nonzero status raises NativeError with the C message."""
        f = self.fn(op)
        rc = f(*args)
        if self.recording is not None and self.recording_thread == threading.get_ident():
            self.recording.append((op, f, args))
        if rc:
            if self.device.type == "cuda":
                from inference_pio import cuda

                cuda.check(rc, op)
            check(rc, op)


_backends: dict[Device, Backend] = {}


def backend(device: Device | str) -> Backend:
    """The shared Backend of ``device``."""
    dev = Device.parse(device)
    b = _backends.get(dev)
    if b is None:
        b = _backends[dev] = Backend(dev)
    return b
