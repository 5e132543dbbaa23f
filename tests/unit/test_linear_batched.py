"""``to_linear_batched`` (a mixture's experts in one parallel region) gives every problem the bits
of its own ``to_linear`` call, for every kernel size class (row stream, dot tiles, packed GEMM),
and a SoftmaxTopKMoE on the CPU gives the same output through it as expert by expert."""

from __future__ import annotations

import ctypes

import pytest

from inference_pio import ops
from inference_pio.backend import backend
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor

torch = pytest.importorskip("torch")
from inference_pio.testing.torch_bridge import to_pio, to_torch  # noqa: E402

BE = backend("cpu")


@pytest.mark.parametrize("dt", [DType.bfloat16, DType.float32])
def test_each_problem_gets_the_bits_of_its_own_linear(dt: DType) -> None:
    g = torch.Generator().manual_seed(0)
    n, k = 72, 96
    rows = [1, 0, 7, 33, 80, 150, 32, 2]  # row stream, empty, dot tiles, packed GEMM
    tdt = torch.bfloat16 if dt == DType.bfloat16 else torch.float32
    xs = [to_pio(torch.randn(m, k + 8, generator=g).to(tdt)) for m in rows]  # strided rows
    ws = [to_pio(torch.randn(n, k, generator=g).to(torch.bfloat16)) for _ in rows]
    ys = [Tensor.zeros((m, n + 4), dt) for m in rows]
    c = len(rows)
    BE.call(
        "linear_batched",
        c,
        (ctypes.c_void_p * c)(*[x.data_ptr for x in xs]),
        (ctypes.c_int64 * c)(*rows),
        (ctypes.c_int64 * c)(*([k + 8] * c)),
        (ctypes.c_void_p * c)(*[w.data_ptr for w in ws]),
        (ctypes.c_void_p * c)(*[y.data_ptr for y in ys]),
        (ctypes.c_int64 * c)(*([n + 4] * c)),
        n,
        k,
        dt,
        DType.bfloat16,
        dt,
    )
    for x, w, y, m in zip(xs, ws, ys, rows, strict=True):
        if m == 0:
            continue
        want = to_torch(ops.linear(x.narrow(1, 0, k), w))
        assert torch.equal(to_torch(y)[:, :n], want)
        assert not to_torch(y)[:, n:].any()  # nothing written past n


def test_bad_arguments_are_rejected() -> None:
    from inference_pio.errors import NativeError

    one = (ctypes.c_int64 * 1)(4)
    null = (ctypes.c_void_p * 1)(None)
    bf = DType.bfloat16

    def call(ldx: int) -> None:
        stride = (ctypes.c_int64 * 1)(ldx)
        BE.call("linear_batched", 1, null, one, stride, null, null, (ctypes.c_int64 * 1)(8),
                8, 8, bf, bf, bf)  # fmt: skip

    with pytest.raises(NativeError, match="NULL"):
        call(8)
    with pytest.raises(NativeError, match="stride"):
        call(2)


@pytest.mark.parametrize("tokens", [3, 64, 300])
def test_moe_block_output_is_unchanged(tokens: int) -> None:
    from inference_pio.nn.layers import Linear
    from inference_pio.nn.mlp import SwiGLU
    from inference_pio.nn.moe import SoftmaxTopKMoE

    g = torch.Generator().manual_seed(tokens)
    hidden, inter, e, k = 64, 48, 8, 3

    def lin(name: str, o: int, i: int) -> Linear:
        return Linear(name, to_pio(torch.randn(o, i, generator=g).to(torch.bfloat16) * 0.1))

    experts = [
        SwiGLU(lin("g", inter, hidden), lin("u", inter, hidden), lin("d", hidden, inter))
        for _ in range(e)
    ]
    block = SoftmaxTopKMoE(lin("router", e, hidden), experts, k, renormalize=True)
    assert block._batchable
    x = to_pio(torch.randn(tokens, hidden, generator=g).to(torch.bfloat16))
    got = to_torch(block(BE, x, Tensor.empty((tokens, hidden), DType.bfloat16)))
    block._batchable = False  # expert by expert
    want = to_torch(block(BE, x, Tensor.empty((tokens, hidden), DType.bfloat16)))
    assert torch.equal(got, want)
