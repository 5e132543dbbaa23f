"""``Tensor``: an n-dimensional view over native or borrowed memory.

A tensor is a :class:`Storage` (a pointer, a byte size, a device and an owner that keeps the memory
alive) plus a shape, element strides and an element offset. Storage is either allocated by the
native pool allocator (``to_alloc``) or borrowed, zero-copy, from another object such as a mmapped
safetensors file; borrowed storage may be read-only. All ops validate their inputs in Python
before calling C; see :mod:`inference_pio.ops`.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import operator
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from inference_pio._native import check, lib
from inference_pio.device import CPU, Device
from inference_pio.dtypes import DType

Shape = tuple[int, ...]

_STRUCT_CODE = {
    DType.float32: "f",
    DType.float64: "d",
    DType.int32: "i",
    DType.int64: "q",
    DType.int16: "h",
    DType.int8: "b",
    DType.uint8: "B",
    DType.bool: "?",
}


class Storage:
    """A block of device memory and the object that keeps it alive."""

    __slots__ = ("__weakref__", "device", "nbytes", "owner", "ptr", "readonly")

    def __init__(
        self, ptr: int, nbytes: int, device: Device = CPU, owner: Any = None, readonly: bool = False
    ) -> None:
        self.ptr = ptr
        self.nbytes = nbytes
        self.device = device
        self.owner = owner
        self.readonly = readonly

    @classmethod
    def allocate(cls, nbytes: int, device: Device = CPU) -> Storage:
        """New uninitialised memory of ``nbytes`` from the device's allocator."""
        if nbytes < 0 or nbytes >= 1 << 62:  # a size_t would wrap (and nothing holds 4 EiB)
            raise ValueError(f"cannot allocate {nbytes} bytes")
        if device.type == "cuda":
            from inference_pio import cuda

            return cuda.allocate_storage(nbytes, device)
        out = ctypes.c_void_p()
        check(lib().to_alloc(nbytes, ctypes.byref(out)), "to_alloc")
        return cls(out.value or 0, nbytes, CPU, _NativeBlock(out.value or 0))


class _NativeBlock:
    """Owner of a to_alloc block: returns it to the pool when garbage-collected."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __del__(self) -> None:
        if self.ptr:
            with contextlib.suppress(Exception):  # interpreter shutdown: the OS frees it anyway
                lib().to_free(self.ptr)
            self.ptr = 0


def _index(v: Any, what: str) -> int:
    """``v`` as an int: ints (and integer-like objects) only, as torch takes sizes and indices."""
    if isinstance(v, bool):
        return int(v)
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(v).__name__} {v!r}") from None


def _contiguous_strides(shape: Sequence[int]) -> Shape:
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(shape[i + 1], 1)
    return tuple(strides)


def _check_shape(shape: Iterable[int]) -> Shape:
    out = tuple(_index(s, "size") for s in shape)
    for s in out:
        if s < 0:
            raise ValueError(f"negative dimension in shape {out}")
    return out


def _flatten(data: Any) -> tuple[list[Any], Shape]:
    """Flattens a nested list; checks it is rectangular."""
    if not isinstance(data, (list, tuple)):
        return [data], ()
    if len(data) == 0:
        return [], (0,)
    parts = [_flatten(d) for d in data]
    inner = parts[0][1]
    for _, shp in parts:
        if shp != inner:
            raise ValueError("nested sequence is not rectangular")
    flat: list[Any] = []
    for p, _ in parts:
        flat.extend(p)
    return flat, (len(data), *inner)


class Tensor:
    """An n-dimensional array of one dtype on one device."""

    __slots__ = ("dtype", "offset", "shape", "storage", "strides")

    def __init__(
        self,
        storage: Storage,
        shape: Sequence[int],
        dtype: DType | str,
        strides: Sequence[int] | None = None,
        offset: int = 0,
    ) -> None:
        self.storage = storage
        self.shape: Shape = _check_shape(shape)
        self.dtype = DType.parse(dtype)
        self.strides: Shape = (
            tuple(int(s) for s in strides)
            if strides is not None
            else _contiguous_strides(self.shape)
        )
        if len(self.strides) != len(self.shape):
            raise ValueError(f"strides {self.strides} do not match shape {self.shape}")
        self.offset = int(offset)
        # Bounds: every addressable element must lie inside the storage.
        if self.numel:
            spans = [(n - 1) * s for n, s in zip(self.shape, self.strides, strict=True)]
            lo = self.offset + sum(min(0, v) for v in spans)
            hi = self.offset + sum(max(0, v) for v in spans)
            if lo < 0 or (hi + 1) * self.dtype.itemsize > storage.nbytes:
                raise ValueError(
                    f"view shape={self.shape} strides={self.strides} offset={self.offset} exceeds "
                    f"its storage of {storage.nbytes} bytes"
                )

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def empty(
        cls, shape: Sequence[int], dtype: DType | str = DType.float32, device: Device | str = CPU
    ) -> Tensor:
        """Uninitialised tensor."""
        shp = _check_shape(shape)
        dt = DType.parse(dtype)
        storage = Storage.allocate(math.prod(shp) * dt.itemsize, Device.parse(device))
        return cls(storage, shp, dt)

    @classmethod
    def zeros(
        cls, shape: Sequence[int], dtype: DType | str = DType.float32, device: Device | str = CPU
    ) -> Tensor:
        """Tensor filled with zeros."""
        t = cls.empty(shape, dtype, device)
        t.zero_()
        return t

    @classmethod
    def from_list(cls, data: Any, dtype: DType | str | None = None) -> Tensor:
        """Tensor from a (nested) list of numbers; dtype defaults to float32 or int64."""
        flat, shape = _flatten(data)
        if dtype is None:
            if flat and all(isinstance(v, bool) for v in flat):
                dtype = DType.bool
            elif all(isinstance(v, int) for v in flat) and flat:
                dtype = DType.int64
            else:
                dtype = DType.float32
        dt = DType.parse(dtype)
        for v in flat:
            if not isinstance(v, (int, float)):
                raise TypeError(f"Tensor.from_list: {type(v).__name__} is not a number")
        t = cls.empty(shape, dt)
        if not flat:
            return t
        if dt in _STRUCT_CODE:
            try:
                raw = struct.pack(f"<{len(flat)}{_STRUCT_CODE[dt]}", *flat)
            except (struct.error, OverflowError) as exc:  # 1e39 into float32, 10**400
                raise ValueError(f"value out of range for {dt.name}: {exc}") from exc
            ctypes.memmove(t.data_ptr, raw, len(raw))
        elif dt in (DType.bfloat16, DType.float16):
            try:
                values = [float(v) for v in flat]
            except OverflowError as exc:  # an int past float's range
                raise ValueError(f"value out of range for {dt.name}: {exc}") from exc
            src = cls.from_list(values, DType.float32)
            check(lib().to_cast(src.data_ptr, DType.float32, t.data_ptr, dt, len(flat)), "to_cast")
        else:
            raise TypeError(f"Tensor.from_list does not support {dt.name}")
        return t

    @classmethod
    def frombuffer(
        cls, buffer: Any, dtype: DType | str, shape: Sequence[int] | None = None, copy: bool = False
    ) -> Tensor:
        """Tensor over a bytes-like object. Writable buffers are borrowed zero-copy unless
        ``copy``; read-only ones (``bytes``) are copied into native memory."""
        dt = DType.parse(dtype)
        view = memoryview(buffer).cast("B")
        if view.nbytes % dt.itemsize:
            raise ValueError(f"buffer of {view.nbytes} bytes is not a multiple of {dt.name} size")
        n = view.nbytes // dt.itemsize
        shp = _check_shape(shape) if shape is not None else (n,)
        if math.prod(shp) != n:
            raise ValueError(f"shape {shp} needs {math.prod(shp)} elements, buffer holds {n}")
        if view.readonly or copy:
            t = cls.empty(shp, dt)
            if view.nbytes:
                ctypes.memmove(t.data_ptr, bytes(view), view.nbytes)
            return t
        arr = (ctypes.c_char * view.nbytes).from_buffer(view)
        return cls(Storage(ctypes.addressof(arr), view.nbytes, CPU, (arr, view)), shp, dt)

    # ---- properties ------------------------------------------------------------------------
    @property
    def device(self) -> Device:
        return self.storage.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def data_ptr(self) -> int:
        """Address of the first element."""
        return self.storage.ptr + self.offset * self.dtype.itemsize

    @property
    def readonly(self) -> bool:
        return self.storage.readonly

    def is_contiguous(self) -> bool:
        if self.numel == 0:
            return True  # nothing to address (torch calls every empty tensor contiguous)
        expected = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides), strict=False):
            if n != 1 and s != expected:
                return False
            expected *= n
        return True

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype.name}, device={self.device})"

    # ---- views -----------------------------------------------------------------------------
    def _dim(self, dim: int) -> int:
        dim = _index(dim, "dim")
        if not -self.ndim <= dim < max(self.ndim, 1):
            raise IndexError(f"dimension {dim} out of range for a {self.ndim}-d tensor")
        return dim % max(self.ndim, 1)

    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        """Same data, new shape (one dimension may be -1); copies only if not contiguous."""
        first = shape[0] if len(shape) == 1 else None
        dims: list[int] = (
            [_index(s, "size") for s in first]
            if first is not None and not isinstance(first, int)
            else [_index(s, "size") for s in shape]
        )
        if dims.count(-1) > 1:
            raise ValueError("only one dimension can be -1")
        known = math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if known == 0 or self.numel % known:
                raise ValueError(f"cannot reshape {self.shape} into {tuple(dims)}")
            dims[dims.index(-1)] = self.numel // known
        if math.prod(dims) != self.numel:
            raise ValueError(
                f"cannot reshape {self.shape} ({self.numel} elements) into {tuple(dims)}"
            )
        src = self if self.is_contiguous() else self.contiguous()
        return Tensor(src.storage, dims, src.dtype, None, src.offset)

    def view(self, *shape: int | Sequence[int]) -> Tensor:
        """Same data, new shape, never a copy: ``t`` must be contiguous (else use ``reshape``)."""
        if not self.is_contiguous():
            raise ValueError(
                f"view of a non-contiguous tensor (shape {self.shape}, strides {self.strides}) "
                "would copy; use .reshape() or .contiguous().view()"
            )
        return self.reshape(*shape)

    def narrow(self, dim: int, start: int, length: int) -> Tensor:
        """View of ``length`` entries of dimension ``dim`` starting at ``start``."""
        d = self._dim(dim)
        start, length = _index(start, "start"), _index(length, "length")
        if start < 0:
            start += self.shape[d]
        if not (start >= 0 and length >= 0 and start + length <= self.shape[d]):
            raise IndexError(
                f"narrow({dim}, {start}, {length}) out of range for shape {self.shape}"
            )
        shape = list(self.shape)
        shape[d] = length
        return Tensor(
            self.storage, shape, self.dtype, self.strides, self.offset + start * self.strides[d]
        )

    def select(self, dim: int, index: int) -> Tensor:
        """View with dimension ``dim`` removed at ``index``."""
        if self.ndim == 0:
            raise IndexError("select() cannot be applied to a 0-d tensor")
        d = self._dim(dim)
        index = _index(index, "index")
        if index < 0:
            index += self.shape[d]
        if not 0 <= index < self.shape[d]:
            raise IndexError(
                f"index {index} out of range for dimension {dim} of size {self.shape[d]}"
            )
        shape = self.shape[:d] + self.shape[d + 1 :]
        strides = self.strides[:d] + self.strides[d + 1 :]
        return Tensor(
            self.storage, shape, self.dtype, strides, self.offset + index * self.strides[d]
        )

    def __getitem__(self, key: int | slice) -> Tensor:
        if isinstance(key, int):
            return self.select(0, key)
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise ValueError("slices with a step are not supported")
            return self.narrow(0, start, max(0, stop - start))
        raise TypeError(f"Tensor indices must be int or slice, not {type(key).__name__}")

    def permute(self, *dims: int) -> Tensor:
        """View with dimensions reordered."""
        order = [self._dim(d) for d in dims]
        if sorted(order) != list(range(self.ndim)):
            raise ValueError(f"permute{tuple(dims)} is not a permutation of {self.ndim} dims")
        return Tensor(
            self.storage,
            [self.shape[d] for d in order],
            self.dtype,
            [self.strides[d] for d in order],
            self.offset,
        )

    def transpose(self, dim0: int, dim1: int) -> Tensor:
        """View with two dimensions swapped."""
        order = list(range(self.ndim))
        a, b = self._dim(dim0), self._dim(dim1)
        if self.ndim == 0:  # dims 0 / -1 of a scalar: itself (torch)
            return self
        order[a], order[b] = order[b], order[a]
        return self.permute(*order)

    # ---- copies ----------------------------------------------------------------------------
    def _require_cpu(self, what: str) -> None:
        if self.device.type != "cpu":
            raise ValueError(f"{what} needs a CPU tensor, got one on {self.device}; use .to('cpu')")

    def contiguous(self) -> Tensor:
        """This tensor if contiguous, else a contiguous copy."""
        if self.is_contiguous():
            return self
        if self.device.type != "cpu":
            from inference_pio import cuda

            return cuda.contiguous(self)
        out = Tensor.empty(self.shape, self.dtype)
        shape = (ctypes.c_int64 * self.ndim)(*self.shape)
        strides = (ctypes.c_int64 * self.ndim)(*self.strides)
        check(
            lib().to_copy_strided(
                self.data_ptr, out.data_ptr, self.ndim, shape, strides, self.dtype
            ),
            "to_copy_strided",
        )
        return out

    def clone(self) -> Tensor:
        """A contiguous copy that owns its memory."""
        src = self.contiguous()
        if src is not self:
            return src
        if self.device.type != "cpu":
            from inference_pio import cuda

            return cuda.clone(self)
        out = Tensor.empty(self.shape, self.dtype)
        ctypes.memmove(out.data_ptr, self.data_ptr, self.nbytes)
        return out

    def to(self, target: DType | Device | str) -> Tensor:
        """Converts to another dtype (``"bf16"``, ``DType.float32``) or device (``"cuda:0"``)."""
        if isinstance(target, Device) or (
            isinstance(target, str) and target.startswith(("cpu", "cuda"))
        ):
            dev = Device.parse(target)
            if dev == self.device:
                return self
            from inference_pio import cuda

            return cuda.copy_to_device(self, dev)
        dt = DType.parse(target)
        if dt == self.dtype:
            return self
        if self.device.type != "cpu":  # the device's cast kernel, queued on its stream
            from inference_pio.backend import backend

            src = self.contiguous()
            out = Tensor.empty(self.shape, dt, self.device)
            backend(self.device).call("cast", src.data_ptr, src.dtype, out.data_ptr, dt, self.numel)
            return out
        src = self.contiguous()
        out = Tensor.empty(self.shape, dt)
        check(lib().to_cast(src.data_ptr, src.dtype, out.data_ptr, dt, self.numel), "to_cast")
        return out

    def copy_(self, src: Tensor) -> Tensor:
        """Copies ``src`` (same shape, dtype and device) into this contiguous tensor (on a CUDA
        device: queued on the device's stream; ``src`` must be contiguous there)."""
        if self.readonly:
            raise ValueError("cannot write into a read-only tensor (borrowed weights)")
        if src.shape != self.shape or src.dtype != self.dtype:
            raise ValueError(
                f"copy_: {src.shape}/{src.dtype.name} into {self.shape}/{self.dtype.name}"
            )
        if not self.is_contiguous():
            raise ValueError("copy_ destination must be contiguous")
        if src.device != self.device:
            raise ValueError(f"copy_: from {src.device} into {self.device} (use .to(device))")
        if self.device.type != "cpu":
            if not src.is_contiguous():
                raise ValueError("copy_ on a CUDA device needs a contiguous source")
            from inference_pio import cuda

            cuda.memcpy(self.data_ptr, src.data_ptr, self.nbytes, cuda.D2D, blocking=False)
            return self
        s = src.contiguous()
        ctypes.memmove(self.data_ptr, s.data_ptr, self.nbytes)
        return self

    def zero_(self) -> Tensor:
        """Fills this contiguous tensor with zeros."""
        if self.readonly:
            raise ValueError("cannot write into a read-only tensor (borrowed weights)")
        if not self.is_contiguous():
            raise ValueError("zero_ needs a contiguous tensor")
        if self.device.type != "cpu":
            from inference_pio import cuda

            cuda.memset_zero(self)
            return self
        ctypes.memset(self.data_ptr, 0, self.nbytes)
        return self

    def tobytes(self) -> bytes:
        """The elements in row-major order as raw bytes."""
        src = self if self.device.type == "cpu" else self.to("cpu")
        src = src.contiguous()
        return ctypes.string_at(src.data_ptr, src.nbytes)

    def tolist(self) -> Any:
        """Nested Python lists (a number for a 0-d tensor); f16/bf16 become floats."""
        src = self if self.device.type == "cpu" else self.to("cpu")
        if src.dtype in (DType.bfloat16, DType.float16):
            src = src.to(DType.float32)
        if src.dtype not in _STRUCT_CODE:
            raise TypeError(f"tolist() does not support {src.dtype.name}")
        flat = list(struct.unpack(f"<{src.numel}{_STRUCT_CODE[src.dtype]}", src.tobytes()))

        def build(dims: Shape, pos: int) -> tuple[Any, int]:
            if not dims:
                return flat[pos], pos + 1
            out = []
            for _ in range(dims[0]):
                item, pos = build(dims[1:], pos)
                out.append(item)
            return out, pos

        return build(src.shape, 0)[0]

    def item(self) -> Any:
        """The single element of a one-element tensor."""
        if self.numel != 1:
            raise ValueError(f"item() needs exactly one element, tensor has {self.numel}")
        return (
            self.reshape(()).tolist()
            if self.is_contiguous()
            else self.contiguous().reshape(()).tolist()
        )


def tensor(data: Any, dtype: DType | str | None = None, device: Device | str = CPU) -> Tensor:
    """Tensor from nested lists of numbers (convenience for :meth:`Tensor.from_list`)."""
    t = Tensor.from_list(data, dtype)
    return t if Device.parse(device) == CPU else t.to(device)


def memory_stats() -> dict[str, int]:
    """Native host allocator statistics: bytes in use, peak, and cached in the pool."""
    vals = [ctypes.c_int64() for _ in range(3)]
    check(lib().to_memory_stats(*(ctypes.byref(v) for v in vals)), "to_memory_stats")
    return {"in_use": vals[0].value, "peak": vals[1].value, "cached": vals[2].value}
