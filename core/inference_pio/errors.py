"""Exception types raised by Inference-PIO."""

from __future__ import annotations


class InferencePioError(Exception):
    """Base class of every error raised on purpose by Inference-PIO."""


class NativeLibraryError(InferencePioError, ImportError):
    """The native library could not be found, loaded, or has the wrong ABI version."""


class NativeError(InferencePioError, RuntimeError):
    """A C function of libtensor_ops returned an error code.

    ``code`` is the ``to_status`` value and the message is the C library's own description.
    """

    def __init__(self, code: int, message: str, function: str = "") -> None:
        self.code = code
        self.function = function
        prefix = f"{function}: " if function and not message.startswith(function) else ""
        super().__init__(f"{prefix}{message} (error {code}: {STATUS_NAMES.get(code, 'unknown')})")


class PluginError(InferencePioError):
    """A plugin failed to load, register or validate."""


class ModelNotFoundError(InferencePioError, LookupError):
    """No registered model matches a name, alias, path or architecture."""


class CheckpointError(InferencePioError, ValueError):
    """A checkpoint directory or weights file is missing, malformed or inconsistent."""


STATUS_NAMES: dict[int, str] = {
    0: "TO_OK",
    1: "TO_ERR_INVALID_ARGUMENT",
    2: "TO_ERR_SHAPE",
    3: "TO_ERR_DTYPE",
    4: "TO_ERR_OUT_OF_MEMORY",
    5: "TO_ERR_IO",
    6: "TO_ERR_FORMAT",
    7: "TO_ERR_UNSUPPORTED",
    8: "TO_ERR_INTERNAL",
    9: "TO_ERR_CUDA",
}
