"""ctypes access to the native backend ``libtensor_ops``.

``lib()`` returns the loaded library with every prototype declared; ``check(rc)`` turns a C
error code into a :class:`~inference_pio.errors.NativeError` carrying the C message.
"""

from inference_pio._native.loader import NativeLibrary, check, lib, library_path

__all__ = ["NativeLibrary", "check", "lib", "library_path"]
