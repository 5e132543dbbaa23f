"""Tensor API and op semantics against torch where an outside review found them different:
empty tensors, integer-only sizes and indices, overlapping row views, aliasing outputs, NaN in
attention, int64 casts (thirty-second session)."""

from __future__ import annotations

import math
import random

import pytest

from inference_pio import ops
from inference_pio.ops.attention import attention
from inference_pio.tensor import Tensor

torch = pytest.importorskip("torch")


def from_torch(x: torch.Tensor) -> Tensor:
    return Tensor.from_list(x.tolist(), "float32")


@pytest.mark.parametrize("shape", [(3, 0), (2, 0, 3), (0, 4), (0,), (5, 0, 0)])
def test_empty_tensors_are_contiguous(shape: tuple[int, ...]) -> None:
    t = Tensor.zeros(shape, "float32")
    assert t.is_contiguous()
    assert ops.add(t, t).shape == shape
    assert ops.silu(Tensor.empty(shape, "float32")).shape == shape


@pytest.mark.parametrize(
    "call",
    [
        lambda: Tensor.empty((2.5, 3), "float32"),
        lambda: Tensor.zeros((4, 4), "float32").select(0, 1.5),
        lambda: Tensor.zeros((4, 4), "float32").narrow(0, 0.5, 2),
        lambda: Tensor.zeros((4, 4), "float32").narrow(0, 0, 2.0),
        lambda: Tensor.zeros((4, 4), "float32").reshape(8, 2.0),
        lambda: Tensor.zeros((4, 4), "float32").select(0.0, 1),
    ],
)
def test_sizes_and_indices_must_be_integers(call: object) -> None:
    with pytest.raises(TypeError, match="integer"):
        call()  # type: ignore[operator]


def test_view_never_copies() -> None:
    t = Tensor.from_list([[1.0, 2.0], [3.0, 4.0]], "float32")
    assert t.view(4).tolist() == [1.0, 2.0, 3.0, 4.0]
    tt = t.permute(1, 0)
    with pytest.raises(ValueError, match="reshape"):
        tt.view(4)
    assert tt.reshape(4).tolist() == [1.0, 3.0, 2.0, 4.0]


def overlapping_views() -> list[tuple[Tensor, list[list[float]]]]:
    base = Tensor.from_list([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], "float32")
    windows = Tensor(base.storage, (3, 4), "float32", strides=(1, 1))  # rows start 0, 1, 2
    row = Tensor.from_list([1.0, -2.0, 3.0, 0.5], "float32")
    broadcast = Tensor(row.storage, (3, 4), "float32", strides=(0, 1))
    return [(windows, windows.tolist()), (broadcast, broadcast.tolist())]


@pytest.mark.parametrize("case", [0, 1])
def test_row_ops_read_overlapping_rows_like_torch(case: int) -> None:
    view, rows = overlapping_views()[case]
    ref = torch.tensor(rows)
    torch.testing.assert_close(torch.tensor(ops.softmax(view).tolist()), ref.softmax(-1))
    torch.testing.assert_close(
        torch.tensor(ops.log_softmax(view).tolist()), ref.log_softmax(-1), rtol=1e-5, atol=1e-5
    )
    ln = ops.layer_norm(view, None, None, 1e-6)
    torch.testing.assert_close(
        torch.tensor(ln.tolist()), torch.nn.functional.layer_norm(ref, (4,), eps=1e-6)
    )
    sw = ops.swiglu(view, view)
    torch.testing.assert_close(torch.tensor(sw.tolist()), torch.nn.functional.silu(ref) * ref)


def test_overlapping_output_rows_are_refused() -> None:
    view, _ = overlapping_views()[0]
    with pytest.raises(ValueError, match="overlap"):
        ops.softmax(view, out=view)


def test_outputs_that_alias_inputs_are_refused() -> None:
    g = torch.Generator().manual_seed(0)
    x = from_torch(torch.randn(8, 64, generator=g))
    w = from_torch(torch.randn(64, 64, generator=g) / 8)
    with pytest.raises(ValueError, match="overlaps x"):
        ops.linear(x, w, out=x)
    xc = from_torch(torch.randn(6, 4, generator=g))
    wc = from_torch(torch.randn(4, 3, generator=g))
    with pytest.raises(ValueError, match="overlaps x"):
        ops.causal_conv1d(xc, wc, out=xc)


def test_attention_out_over_its_inputs_is_refused() -> None:
    """The kernels write out while later query blocks still read k and v."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (from_torch(torch.randn(64, 2, 16, generator=g)) for _ in range(3))
    for name, t in (("q", q), ("k", k), ("v", v)):
        with pytest.raises(ValueError, match=f"overlaps {name}"):
            ops.attention(q, k, v, causal=False, kv_layout="tokens", out=t)


def test_elementwise_in_place_is_allowed_but_partial_overlap_refused() -> None:
    g = torch.Generator().manual_seed(3)
    n = 300
    buf = from_torch(torch.randn(n + 1, generator=g))
    a, b = buf.narrow(0, 0, n), from_torch(torch.randn(n, generator=g))
    want = torch.tensor(a.tolist()) + torch.tensor(b.tolist())
    with pytest.raises(ValueError, match="overlaps a"):
        ops.add(a, b, out=buf.narrow(0, 1, n))  # shifted by one: read after written
    with pytest.raises(ValueError, match="overlaps x"):
        ops.silu(a, out=buf.narrow(0, 1, n))
    ops.add(a, b, out=a)  # exactly in place
    torch.testing.assert_close(torch.tensor(a.tolist()), want)
    rows = from_torch(torch.randn(6, 32, generator=g))
    w = Tensor.from_list([1.0] * 32, "float32")
    want_n = torch.nn.functional.rms_norm(torch.tensor(rows.tolist()), (32,), eps=1e-6)
    ops.rms_norm(rows, w, 1e-6, out=rows)
    torch.testing.assert_close(torch.tensor(rows.tolist()), want_n, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="overlaps x"):
        ops.rms_norm(rows.narrow(0, 0, 5), w, 1e-6, out=rows.narrow(0, 1, 5))
    gate, up = (from_torch(torch.randn(4, 8, generator=g)) for _ in range(2))
    want_s = torch.nn.functional.silu(torch.tensor(gate.tolist())) * torch.tensor(up.tolist())
    ops.swiglu(gate, up, out=gate)  # in place over the gate
    torch.testing.assert_close(torch.tensor(gate.tolist()), want_s)
    with pytest.raises(ValueError, match="overlaps"):
        ops.add_row(rows.narrow(0, 0, 5), w, out=rows.narrow(0, 1, 5))


def test_slices_of_one_fused_buffer_are_not_aliases() -> None:
    """out and x in different columns of one buffer (a fused q/k/v-style layout) are fine."""
    g = torch.Generator().manual_seed(1)
    buf = Tensor.from_list(torch.randn(5, 24, generator=g).tolist(), "float32")
    x, out = buf.narrow(1, 0, 8), buf.narrow(1, 8, 16)
    w = from_torch(torch.randn(16, 8, generator=g))
    ref = torch.tensor(x.tolist()) @ torch.tensor(w.tolist()).T
    ops.linear(x, w, out=out)
    torch.testing.assert_close(torch.tensor(out.tolist()), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", [0xFFFFFFFF, 0b111, 0])  # best, AVX2 + FMA, generic C
@pytest.mark.parametrize("where", ["q", "k"])
@pytest.mark.parametrize("tq", [1, 20])
def test_attention_propagates_nan(isa: int, where: str, tq: int) -> None:
    """One NaN in the query or a visible key gives NaN rows, as in torch (the SIMD exp used to
    clamp NaN to -87 and the row's sum then gave 0)."""
    from inference_pio._native import lib

    kv, hd = 40, 16
    rnd = random.Random(tq)
    qv = [[[rnd.uniform(-1, 1) for _ in range(hd)]] for _ in range(tq)]
    kvv = [[[rnd.uniform(-1, 1) for _ in range(hd)]] for _ in range(kv)]
    if where == "q":
        qv[0][0][3] = math.nan
    else:
        kvv[0][0][5] = math.nan
    q = Tensor.from_list(qv, "float32")
    k = Tensor.from_list(kvv, "float32")
    v = Tensor.from_list(kvv, "float32")
    lib().to_set_isa_mask(isa)
    try:
        out = attention(q, k, v, causal=False, kv_layout="tokens").tolist()
    finally:
        lib().to_set_isa_mask(0xFFFFFFFF)
    rows = [0] if where == "q" else range(tq)  # a NaN key is visible to every row
    for r in rows:
        assert all(math.isnan(x) for x in out[r][0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_int64_casts_round_once_like_torch(dtype: str) -> None:
    vals = [2**60 + 2**36 + 1, 2**53 + 2**29 + 1, -(2**60 + 2**36 + 1), 2**24 + 1, 65519, -7]
    got = Tensor.from_list(vals, "int64").to(dtype).to("float32").tolist()
    want = torch.tensor(vals, dtype=torch.int64).to(getattr(torch, dtype)).float().tolist()
    assert got == want
