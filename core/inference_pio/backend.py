"""Per-device access to the native op functions, for hot paths that validated their inputs once.

``Backend(device).call("linear", ...)`` calls ``to_linear`` (CPU) or ``toc_linear`` (CUDA) and
turns an error code into :class:`~inference_pio.errors.NativeError`. Model code validates shapes
when it loads weights, then uses a Backend per forward step without re-validating every call.
"""

from __future__ import annotations

from typing import Any

from inference_pio._native import check, lib
from inference_pio.device import Device


class Backend:
    """The op functions of one device, looked up once and cached."""

    __slots__ = ("_fns", "device")

    def __init__(self, device: Device | str) -> None:
        self.device = Device.parse(device)
        self._fns: dict[str, Any] = {}

    def fn(self, op: str) -> Any:
        """The ctypes function implementing ``op`` on this device."""
        f = self._fns.get(op)
        if f is None:
            if self.device.type == "cpu":
                f = getattr(lib(), "to_" + op)
            else:
                from inference_pio import cuda

                f = cuda.function(op, self.device)
            self._fns[op] = f
        return f

    def has(self, op: str) -> bool:
        """Whether this device's library implements ``op``."""
        try:
            self.fn(op)
        except (AttributeError, NotImplementedError):
            return False
        return True

    def call(self, op: str, *args: Any) -> None:
        """Runs ``op``; a nonzero status raises NativeError with the C message."""
        rc = self.fn(op)(*args)
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
