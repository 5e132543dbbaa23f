"""to_linear_group (q/k/v and gate/up in one parallel region) equals separate to_linear calls."""

from __future__ import annotations

import ctypes

import pytest

from inference_pio._native import check, lib
from inference_pio.backend import backend
from inference_pio.dtypes import DType
from inference_pio.errors import NativeError
from inference_pio.nn.layers import Linear, LinearGroup
from inference_pio.tensor import Tensor


def _random(shape: tuple[int, ...], dtype: DType, seed: int) -> Tensor:
    t = Tensor.empty(shape, dtype)
    lib().to_fill_random(t.data_ptr, t.numel, int(dtype), seed, 0.0, 1.0, 0)
    return t


@pytest.mark.parametrize("dtype", [DType.bfloat16, DType.float32])
@pytest.mark.parametrize("m", [1, 3, 7, 90])
@pytest.mark.parametrize("threads", [1, 2])
def test_group_equals_separate_linears(dtype: DType, m: int, threads: int) -> None:
    lib().to_set_num_threads(threads)
    try:
        k = 67
        sizes = (33, 5, 130)
        linears = [Linear(f"w{i}", _random((n, k), dtype, 10 + i)) for i, n in enumerate(sizes)]
        x = _random((m, k), dtype, 1)
        be = backend("cpu")
        want = [lin(be, x, Tensor.empty((m, lin.out_features), dtype)).tolist() for lin in linears]
        outs = [Tensor.empty((m, lin.out_features), dtype) for lin in linears]
        LinearGroup(linears)(be, x, outs)
        assert [o.tolist() for o in outs] == want  # same kernel and summation order: bit-identical
    finally:
        lib().to_set_num_threads(0)


def test_bad_arguments_raise() -> None:
    w = _random((4, 8), DType.bfloat16, 2)
    y = Tensor.empty((1, 4), DType.bfloat16)
    x = _random((1, 8), DType.bfloat16, 3)
    ws = (ctypes.c_void_p * 1)(w.data_ptr)
    ys = (ctypes.c_void_p * 1)(y.data_ptr)
    ns = (ctypes.c_int64 * 1)(4)
    bad_ld = (ctypes.c_int64 * 1)(2)
    rc = lib().to_linear_group(x.data_ptr, 1, ws, ns, ys, bad_ld, 1, 8, 8, 2, 2, 2)
    with pytest.raises(NativeError, match="row stride"):
        check(rc, "to_linear_group")
    assert lib().to_linear_group(x.data_ptr, 0, ws, ns, ys, ns, 1, 8, 8, 2, 2, 2) != 0
    assert lib().to_linear_group(x.data_ptr, 9, ws, ns, ys, ns, 1, 8, 8, 2, 2, 2) != 0
    with pytest.raises(ValueError, match="share in_features"):
        LinearGroup([Linear("a", w), Linear("b", _random((4, 9), DType.bfloat16, 4))])
