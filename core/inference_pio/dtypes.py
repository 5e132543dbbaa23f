"""Element types, mirroring ``to_dtype`` in native/include/tensor_ops.h (a test checks that
they agree)."""

from __future__ import annotations

import builtins
import enum


class DType(enum.IntEnum):
    """Element type of a tensor; the integer value is the C enum value."""

    float32 = 0
    float16 = 1
    bfloat16 = 2
    int32 = 3
    int64 = 4
    uint8 = 5
    bool = 6
    int8 = 7
    float64 = 8
    int16 = 9
    float8_e4m3 = 10

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _ITEMSIZE[self]

    @property
    def is_floating(self) -> builtins.bool:
        return self in _FLOATING

    @classmethod
    def parse(cls, value: DType | str) -> DType:
        """Accepts a DType, its name, a short alias (``"bf16"``) or a safetensors name
        (``"BF16"``)."""
        if isinstance(value, DType):
            return value
        key = str(value).strip()
        found = _ALIASES.get(key.lower())
        if found is None:
            raise TypeError(f"unknown dtype {value!r}; expected one of {sorted(_ALIASES)}")
        return found


_ITEMSIZE = {
    DType.float32: 4,
    DType.float16: 2,
    DType.bfloat16: 2,
    DType.int32: 4,
    DType.int64: 8,
    DType.uint8: 1,
    DType.bool: 1,
    DType.int8: 1,
    DType.float64: 8,
    DType.int16: 2,
    DType.float8_e4m3: 1,
}
_FLOATING = {DType.float32, DType.float16, DType.bfloat16, DType.float64, DType.float8_e4m3}
_ALIASES: dict[str, DType] = {d.name: d for d in DType}
_ALIASES.update(
    {
        "f32": DType.float32,
        "fp32": DType.float32,
        "float": DType.float32,
        "f16": DType.float16,
        "fp16": DType.float16,
        "half": DType.float16,
        "bf16": DType.bfloat16,
        "i32": DType.int32,
        "i64": DType.int64,
        "u8": DType.uint8,
        "i8": DType.int8,
        "f64": DType.float64,
        "i16": DType.int16,
        "f8_e4m3": DType.float8_e4m3,
        "f8_e4m3fn": DType.float8_e4m3,
        "float8_e4m3fn": DType.float8_e4m3,
    }
)
