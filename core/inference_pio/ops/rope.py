"""Rotary position embeddings (C: native/src/cpu/rope.c), models.md §1.3, §6.3, §6.5.

Build a cos/sin table once per forward (``rope_cache``, ``mrope_cache`` or ``rope_cache_2d``;
``rope_cache_freqs`` for scaled rope from explicit frequencies), then rotate q and k in place
with ``rope_apply``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from ctypes import c_float
from typing import Literal

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import native_call, require
from inference_pio.ops._layout import require_disjoint_rows
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)
POS_DTYPES = (DType.int32, DType.int64)

RopeMode = Literal["neox", "interleaved", "interleaved_hf"]
_MODES: dict[str, int] = {"neox": 0, "interleaved": 1, "interleaved_hf": 2}


def _table_dtype(dtype: DType | str) -> DType:
    dt = DType.parse(dtype)
    if dt not in FLOAT_ACT:
        raise TypeError(f"rope table dtype must be float32 or bfloat16, got {dt.name}")
    return dt


def _check_rot(rot_dim: int, multiple: int) -> None:
    if rot_dim < multiple or rot_dim % multiple or rot_dim > 32768:
        raise ValueError(
            f"rot_dim must be a positive multiple of {multiple} (<= 32768), got {rot_dim}"
        )


def _empty_tables(
    positions: Tensor, T: int, rot_dim: int, dtype: DType | str
) -> tuple[DType, int, Tensor, Tensor]:
    """(table dtype, T, cos, sin): two empty ``[T, rot_dim]`` tables on the positions' device."""
    dt = _table_dtype(dtype)
    cos = Tensor.empty((T, rot_dim), dt, positions.device)
    sin = Tensor.empty((T, rot_dim), dt, positions.device)
    return dt, T, cos, sin


def rope_cache(
    positions: Tensor, rot_dim: int, theta: float, dtype: DType | str = DType.float32
) -> tuple[Tensor, Tensor]:
    """cos/sin tables ``[T, rot_dim]`` for integer ``positions`` ``[T]`` (HF layout and rounding:
    fp32 angles, rounded once to ``dtype``; use bf16 in bf16 runs)."""
    require("positions", positions, dtypes=POS_DTYPES, ndim=1)
    _check_rot(rot_dim, 2)
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta}")
    dt, T, cos, sin = _empty_tables(positions, positions.shape[0], rot_dim, dtype)
    native_call(
        positions.device,
        "rope_cache",
        positions.data_ptr,
        positions.dtype,
        T,
        rot_dim,
        c_float(theta),
        cos.data_ptr,
        sin.data_ptr,
        dt,
    )
    return cos, sin


def rope_cache_freqs(
    positions: Tensor,
    inv_freq: Tensor | Sequence[float],
    scale: float = 1.0,
    dtype: DType | str = DType.float32,
) -> tuple[Tensor, Tensor]:
    """cos/sin tables ``[T, 2 * len(inv_freq)]`` from explicit inverse frequencies (scaled rope,
    :func:`inference_pio.nn.rope_scaling.rope_frequencies`): fp32 angles ``position * inv_freq``,
    ``cos * scale`` and ``sin * scale`` in fp32 (YaRN's attention factor), rounded once to
    ``dtype``, as transformers' rotary embeddings. ``inv_freq``: a float32 tensor ``[rot_dim/2]``
    on the positions' device, or a sequence of floats."""
    require("positions", positions, dtypes=POS_DTYPES, ndim=1)
    if not isinstance(inv_freq, Tensor):
        values = [float(v) for v in inv_freq]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("inv_freq must hold finite values")
        inv_freq = Tensor.from_list(values, DType.float32)
        if positions.device.type != "cpu":
            inv_freq = inv_freq.to(positions.device)
    require("inv_freq", inv_freq, dtypes=(DType.float32,), ndim=1, nonempty=True)
    if inv_freq.device != positions.device:
        raise ValueError(
            f"inv_freq is on {inv_freq.device}, positions on {positions.device}: same device needed"
        )
    rot_dim = 2 * inv_freq.shape[0]
    _check_rot(rot_dim, 2)
    if isinstance(scale, bool) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    if not math.isfinite(float(c_float(scale).value)):
        raise ValueError(f"scale {scale!r} overflows float32")
    dt, T, cos, sin = _empty_tables(positions, positions.shape[0], rot_dim, dtype)
    native_call(
        positions.device,
        "rope_cache_freqs",
        positions.data_ptr,
        positions.dtype,
        T,
        rot_dim,
        inv_freq.data_ptr,
        c_float(scale),
        cos.data_ptr,
        sin.data_ptr,
        dt,
    )
    return cos, sin


def mrope_cache(
    positions: Tensor,
    rot_dim: int,
    theta: float,
    sections: Sequence[int] = (24, 20, 20),
    dtype: DType | str = DType.float32,
) -> tuple[Tensor, Tensor]:
    """Qwen3-VL interleaved MRoPE tables ``[T, rot_dim]`` from ``positions`` ``[3, T]`` (t, h, w)
    and ``sections`` (t, h, w) summing to ``rot_dim / 2``."""
    require("positions", positions, dtypes=POS_DTYPES, ndim=2)
    if positions.shape[0] != 3:
        raise ValueError(f"positions must have shape [3, T], got {positions.shape}")
    _check_rot(rot_dim, 2)
    secs = tuple(int(s) for s in sections)
    if len(secs) != 3 or min(secs) < 0 or sum(secs) != rot_dim // 2:
        raise ValueError(
            f"sections {secs} must be 3 non-negative ints summing to rot_dim/2 = {rot_dim // 2}"
        )
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta}")
    dt, T, cos, sin = _empty_tables(positions, positions.shape[1], rot_dim, dtype)
    native_call(
        positions.device,
        "rope_cache_mrope",
        positions.data_ptr,
        positions.dtype,
        T,
        rot_dim,
        c_float(theta),
        *secs,
        cos.data_ptr,
        sin.data_ptr,
        dt,
    )
    return cos, sin


def rope_cache_2d(
    positions: Tensor, rot_dim: int, theta: float = 10000.0, dtype: DType | str = DType.float32
) -> tuple[Tensor, Tensor]:
    """2-D axial vision tables ``[T, rot_dim]`` from ``positions`` ``[2, T]`` (row, col):
    ``rot_dim/4`` frequencies per axis, angles ``[row·f, col·f]`` duplicated (Qwen3-VL §6.3)."""
    require("positions", positions, dtypes=POS_DTYPES, ndim=2)
    if positions.shape[0] != 2:
        raise ValueError(f"positions must have shape [2, T], got {positions.shape}")
    _check_rot(rot_dim, 4)
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta}")
    dt, T, cos, sin = _empty_tables(positions, positions.shape[1], rot_dim, dtype)
    native_call(
        positions.device,
        "rope_cache_2d",
        positions.data_ptr,
        positions.dtype,
        T,
        rot_dim,
        c_float(theta),
        cos.data_ptr,
        sin.data_ptr,
        dt,
    )
    return cos, sin


def rope_apply(x: Tensor, cos: Tensor, sin: Tensor, mode: RopeMode = "neox") -> Tensor:
    """Rotates ``x`` in place and returns it.

    ``x`` is ``[T, heads, head_dim]`` (or ``[T, head_dim]``), any strides on the first two dims
    (e.g. q or k inside a fused qkv buffer) but a contiguous last dim. ``cos``/``sin`` are
    ``[T, rot_dim]`` tables; only the first ``rot_dim`` channels of each head rotate. ``mode``:
    ``"neox"`` (rotate_half pairs), ``"interleaved"`` (pairs (2i, 2i+1), layout kept) or
    ``"interleaved_hf"`` (same, output de-interleaved like HF's GLM code).
    """
    require("x", x, dtypes=FLOAT_ACT, ndim=(2, 3), contiguous=False, writable=True)
    require("cos", cos, dtypes=FLOAT_ACT, ndim=2)
    require("sin", sin, dtypes=(cos.dtype,), ndim=2)
    if mode not in _MODES:
        raise ValueError(f"rope_apply: unknown mode {mode!r}; expected one of {sorted(_MODES)}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos {cos.shape} and sin {sin.shape} differ")
    T, rot_dim = cos.shape
    view = (
        x
        if x.ndim == 3
        else Tensor(
            x.storage,
            (x.shape[0], 1, x.shape[1]),
            x.dtype,
            (x.strides[0], x.shape[1], x.strides[1]),
            x.offset,
        )
    )
    if view.shape[0] != T:
        raise ValueError(f"x has {view.shape[0]} tokens but the tables have {T} rows")
    hd = view.shape[2]
    if rot_dim % 2 or not 2 <= rot_dim <= hd:
        raise ValueError(f"rot_dim {rot_dim} must be even and in [2, head_dim={hd}]")
    if hd > 1 and view.strides[2] != 1:
        raise ValueError("x: the last dim must be contiguous")
    if view.strides[0] < 0 or view.strides[1] < 0:
        raise ValueError("x: negative strides are not supported")
    # written in place: no two (token, head) rows may share memory (a stride-0 head dim would be
    # rotated once per head)
    require_disjoint_rows("x", view.shape[:2], view.strides[:2], hd)
    devices = {x.device, cos.device, sin.device}
    if len(devices) > 1:
        raise ValueError(f"x, cos and sin are on different devices: {sorted(map(str, devices))}")
    native_call(
        x.device,
        "rope_apply",
        x.data_ptr,
        cos.data_ptr,
        sin.data_ptr,
        T,
        view.shape[1],
        hd,
        rot_dim,
        view.strides[0],
        view.strides[1],
        _MODES[mode],
        x.dtype,
        cos.dtype,
    )
    return x


__all__ = ["mrope_cache", "rope_apply", "rope_cache", "rope_cache_2d", "rope_cache_freqs"]
