"""Linear layers (C: native/src/cpu/matmul.c) and the thread-count controls of the CPU backend."""

from __future__ import annotations

from inference_pio._native import check, lib
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import native_call, require, require_disjoint, same_device
from inference_pio.ops._layout import row_grid
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)
WEIGHT_DTYPES = (DType.bfloat16, DType.float16, DType.float32)


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    out: Tensor | None = None,
    out_dtype: DType | str | None = None,
) -> Tensor:
    """``y = x · weightᵀ (+ bias)`` over the last dim of ``x``, accumulated in fp32.

    ``x [..., K]`` (float32 or bfloat16; leading dims are flattened, rows may be strided as long
    as the last dim is contiguous), ``weight [N, K]`` (bfloat16, float16 or float32, the
    safetensors ``[out, in]`` layout; may be read-only), ``bias [N]`` or None. Returns
    ``[..., N]`` of ``out_dtype``, else ``out``'s dtype, else ``x``'s; ``out`` may be a row-strided
    view (e.g. a slice of a fused buffer) but must not overlap the inputs. The result is rounded
    once; f32 ``x`` is never rounded to bf16.
    """
    require("x", x, dtypes=FLOAT_ACT, contiguous=False)
    require("weight", weight, dtypes=WEIGHT_DTYPES, ndim=2, contiguous=False)
    n, k = weight.shape
    if weight.numel and not weight.is_contiguous():
        raise ValueError("linear: weight must be contiguous ([out, in] row-major)")
    check_x_and_bias("linear", x, bias, n, k, weight.shape)
    device = same_device(x=x, weight=weight, bias=bias, out=out)
    out = linear_output("linear", x, n, out, out_dtype, device, weight=weight, bias=bias)
    m = x.numel // k if k else _rows(x.shape[:-1])
    if m == 0 or n == 0:
        return out
    ldx = _row_stride("x", x, m, k)
    ldy = _row_stride("out", out, m, n)
    native_call(
        device,
        "linear",
        x.data_ptr,
        weight.data_ptr,
        bias.data_ptr if bias is not None else None,
        out.data_ptr,
        m,
        n,
        k,
        ldx,
        ldy,
        x.dtype,
        weight.dtype,
        bias.dtype if bias is not None else 0,
        out.dtype,
    )
    return out


def check_x_and_bias(
    op: str, x: Tensor, bias: Tensor | None, n: int, k: int, wshape: tuple[int, ...]
) -> None:
    """The input checks of a linear op ``op`` on a weight of shape ``wshape`` ([n, k]): ``x``
    has at least one dim and ``k`` features; ``bias`` is None or ``n`` contiguous values."""
    if x.ndim < 1:
        raise ValueError(f"{op}: x must have at least 1 dim, got a 0-d tensor")
    if x.shape[-1] != k:
        raise ValueError(
            f"{op}: x has {x.shape[-1]} features (shape {x.shape}), weight {wshape} expects {k}"
        )
    if bias is not None:
        require("bias", bias, dtypes=WEIGHT_DTYPES, ndim=1, contiguous=False)
        if n > 1 and bias.strides[0] != 1:
            raise ValueError(f"{op}: bias must be contiguous")
        if bias.shape != (n,):
            raise ValueError(f"{op}: bias has shape {bias.shape}, expected ({n},)")


def linear_output(
    op: str,
    x: Tensor,
    n: int,
    out: Tensor | None,
    out_dtype: DType | str | None,
    device: Device,
    **inputs: Tensor | None,
) -> Tensor:
    """The output of a linear op ``op`` with ``n`` features: ``out`` checked (dtype, shape
    ``[..., n]``, writable, disjoint from ``x`` and ``inputs``), else a new tensor of
    ``out_dtype``, else ``x``'s dtype (float32 or bfloat16)."""
    if out_dtype is not None:
        dtype = DType.parse(out_dtype)
    else:
        dtype = out.dtype if out is not None else x.dtype
    if dtype not in FLOAT_ACT:
        raise TypeError(f"{op}: out dtype {dtype.name} not supported (float32 or bfloat16)")
    shape = (*x.shape[:-1], n)
    if out is None:
        return Tensor.empty(shape, dtype, device)
    require("out", out, dtypes=(dtype,), contiguous=False, writable=True)
    if out.shape != shape:
        raise ValueError(f"{op}: out has shape {out.shape}, expected {shape}")
    require_disjoint(op, out, x=x, **inputs)
    return out


def _rows(lead: tuple[int, ...]) -> int:
    m = 1
    for d in lead:
        m *= d
    return m


def _row_stride(name: str, t: Tensor, m: int, width: int) -> int:
    """Elements between consecutive rows of ``t`` seen as ``m`` rows of ``width``."""
    if m == 1 and (width == 1 or t.strides[-1] == 1):
        return width  # decode fast path: one row, nothing to merge
    counts, strides = row_grid(name, t, levels=1)
    if m <= 1 or counts[0] <= 1:
        return width
    if strides[0] < width:
        raise ValueError(f"linear: {name} rows overlap (row stride {strides[0]} < {width})")
    return strides[0]


def set_num_threads(n: int) -> None:
    """Worker threads of the CPU backend (``n <= 0``: one per core)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if n > 4096:  # the C int would wrap (2**32 + 2 read as 2)
        raise ValueError(f"set_num_threads: {n} threads is more than 4096")
    check(lib().to_set_num_threads(n), "to_set_num_threads")


def get_num_threads() -> int:
    """Worker threads the CPU backend uses."""
    value: int = lib().to_get_num_threads()
    return value
