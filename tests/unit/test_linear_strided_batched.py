"""``linear_strided_batched`` (MLA's per-head maps in one call): every head gets the bits of its
own ``linear`` call on the same device, for a shared input and for per-head inputs, on the fast
path and on the per-problem fallback; bad strides and dtypes are refused. ``check_device`` runs
the same checks on a CUDA device (tests/gpu/test_cuda_ops_extra.py)."""

from __future__ import annotations

import pytest

from inference_pio import ops
from inference_pio.backend import backend
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.errors import NativeError
from inference_pio.tensor import Tensor

torch = pytest.importorskip("torch")
from inference_pio.testing.torch_bridge import to_pio, to_torch  # noqa: E402


def check_device(device: str, dt: DType, m: int, k: int, shared: bool) -> None:
    """Heads of width k (x: [m, heads * (k + 8)] per head, or one shared [m, k + 8] input),
    weights of n rows each at a stride of n + 3 rows, outputs interleaved [m, heads * (n + 5)]."""
    be = backend(Device.parse(device))
    g = torch.Generator().manual_seed(m * 31 + k)
    heads, n = 6, 24
    tdt = torch.bfloat16 if dt == DType.bfloat16 else torch.float32
    sx = 0 if shared else k + 8
    ldx = k + 8 if shared else heads * (k + 8)
    x = to_pio(torch.randn(m, ldx, generator=g).to(tdt)).to(device)
    w = to_pio(torch.randn(heads * (n + 3), k, generator=g).to(torch.bfloat16)).to(device)
    y = Tensor.zeros((m, heads * (n + 5)), dt, device)
    es = DType.bfloat16.itemsize
    be.call(
        "linear_strided_batched",
        heads,
        x.data_ptr,
        ldx,
        sx,
        w.data_ptr + k * es,  # from row 1: a strided start
        (n + 3) * k,
        y.data_ptr,
        heads * (n + 5),
        n + 5,
        m,
        n,
        k,
        dt,
        DType.bfloat16,
        dt,
    )
    # the reference: one linear per head on views of the same buffers (same pointers and row
    # strides: cuBLAS may pick its kernel by alignment and leading dimension)
    ref = Tensor.zeros((m, heads * (n + 5)), dt, device)
    for i in range(heads):
        ops.linear(
            x.narrow(1, i * sx, k),
            w.narrow(0, 1 + i * (n + 3), n),
            out=ref.narrow(1, i * (n + 5), n),
        )
    got, want = to_torch(y.to("cpu")), to_torch(ref.to("cpu"))
    assert torch.equal(got, want)  # nothing written past each head's n outputs either
    xt, wt = to_torch(x.to("cpu")).float(), to_torch(w.to("cpu")).float()
    for i in range(heads):  # and the values are the products
        exact = xt[:, i * sx : i * sx + k] @ wt[1 + i * (n + 3) : 1 + i * (n + 3) + n].T
        head = got[:, i * (n + 5) : i * (n + 5) + n].float()
        torch.testing.assert_close(head, exact, rtol=2e-2, atol=2e-2 * (k**0.5))


@pytest.mark.parametrize("dt", [DType.bfloat16, DType.float32])
@pytest.mark.parametrize(("m", "k"), [(1, 64), (3, 40), (20, 96), (1, 36)])
@pytest.mark.parametrize("shared", [False, True])
def test_each_head_gets_the_bits_of_its_own_linear(dt: DType, m: int, k: int, shared: bool) -> None:
    check_device("cpu", dt, m, k, shared)


def test_bad_arguments_are_refused() -> None:
    be = backend(Device.parse("cpu"))
    x = Tensor.zeros((2, 16), DType.bfloat16)
    w = Tensor.zeros((8, 16), DType.bfloat16)
    y = Tensor.zeros((2, 8), DType.bfloat16)
    args = [x.data_ptr, 16, 0, w.data_ptr, 0, y.data_ptr, 8, 4, 2, 4, 16]
    bf = [DType.bfloat16] * 3
    be.call("linear_strided_batched", 0, *args, *bf)  # nothing to do
    bad = list(args)
    bad[4] = -8
    with pytest.raises(NativeError, match="negative stride"):
        be.call("linear_strided_batched", 2, *bad, *bf)
    with pytest.raises(NativeError, match="dtype"):
        be.call("linear_strided_batched", 2, *args, 99, DType.bfloat16, DType.bfloat16)
    with pytest.raises(NativeError):
        be.call("linear_strided_batched", -1, *args, *bf)
