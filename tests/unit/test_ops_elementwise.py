"""Activations, scale, swiglu, bias-row add and per-row scaling against torch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_pio import ops
from inference_pio._native import lib
from inference_pio.tensor import Tensor
from inference_pio.testing.torch_bridge import to_pio, to_torch


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    ia = a.contiguous().view(torch.int16).int()
    ib = b.contiguous().view(torch.int16).int()
    return int((ia - ib).abs().max()) if a.numel() else 0


def bf16_close(a: torch.Tensor, b: torch.Tensor, atol: float = 0.0) -> bool:
    """Each element within one bf16 ulp, or within ``atol`` absolutely."""
    du = (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()
    return bool(((du <= 1) | ((a.float() - b.float()).abs() <= atol)).all())


def close_f32(a: torch.Tensor, b: torch.Tensor, rtol: float = 2e-6, atol: float = 1e-30) -> bool:
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


@pytest.fixture(params=["simd", "generic"])
def isa(request: pytest.FixtureRequest) -> object:
    if request.param == "generic":
        lib().to_set_isa_mask(0)
    yield request.param
    lib().to_set_isa_mask(0xFFFFFFFF)


UNARY: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "silu": (ops.silu, F.silu),
    "sigmoid": (ops.sigmoid, torch.sigmoid),
    "exp": (ops.exp, torch.exp),
    "softplus": (ops.softplus, F.softplus),
    "gelu_tanh": (lambda x: ops.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "gelu_erf": (ops.gelu, F.gelu),
    "scale": (lambda x: ops.scale(x, 0.0883883), lambda x: x * 0.0883883),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000])
def test_unary_matches_torch(name: str, dt: torch.dtype, n: int, isa: object) -> None:
    ours, ref_fn = UNARY[name]
    x = (torch.randn(n) * 4).to(dt)
    if n >= 33:
        x[:6] = torch.tensor([0.0, -0.0, 30.0, -30.0, 85.0, -100.0]).to(dt)
    ref = ref_fn(x)
    if name == "gelu_erf" and dt == torch.float32:
        # torch's f32 0.5x(1 + erf(x/sqrt 2)) cancels for x < -3 (1e-3 relative at x = -3.49,
        # seen with some seeds); ours is within the tolerance of the float64 value there
        ref = ref_fn(x.double()).float()
    got = to_torch(ours(to_pio(x)))
    if dt == torch.float32:
        # exp-based kernels are within ~2 ulp of libm / Sleef. torch's gelu-tanh cancels in
        # 1 + tanh(u) for x < 0 (ours uses x * sigmoid(2u)): compare it with an absolute floor.
        atol = 1e-6 if name.startswith("gelu") else 1e-37
        assert close_f32(got, ref, rtol=4e-6, atol=atol)
    else:
        # torch's bf16 gelu returns -0 where 0.5x(1 + tanh) cancels; ours keeps tiny negatives.
        assert bf16_close(got, ref, 1e-5 if name.startswith("gelu") else 0.0)


def test_unary_in_place_and_2d() -> None:
    x = torch.randn(5, 77)
    t = to_pio(x)
    ops.silu(t, out=t)
    assert close_f32(to_torch(t), F.silu(x), rtol=4e-6)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "inter"), [(1, 1), (3, 17), (2, 512), (5, 100)])
def test_swiglu_separate_and_fused(dt: torch.dtype, rows: int, inter: int, isa: object) -> None:
    g = (torch.randn(rows, inter) * 3).to(dt)
    u = torch.randn(rows, inter).to(dt)
    ref = F.silu(g) * u  # HF act_fn(gate) * up: bf16 silu rounded first
    got = to_torch(ops.swiglu(to_pio(g), to_pio(u)))
    fused = to_torch(ops.swiglu(to_pio(torch.cat([g, u], -1))))
    if dt == torch.float32:
        assert close_f32(got, ref, rtol=5e-6)
        assert close_f32(fused, ref, rtol=5e-6)
    else:
        assert ulps(got, ref) <= 1
        assert ulps(fused, ref) <= 1
        assert float((got != ref).float().mean()) < 0.02


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bdt", [torch.float32, torch.bfloat16, torch.float16])
def test_add_row_and_mul_rows(dt: torch.dtype, bdt: torch.dtype, isa: object) -> None:
    x = torch.randn(6, 45).to(dt)
    b = torch.randn(45).to(bdt)
    ref = (x.float() + b.float()).to(dt)
    got = to_torch(ops.add_row(to_pio(x), to_pio(b)))
    assert torch.equal(got, ref)
    if bdt != torch.float16:
        s = torch.randn(6).to(bdt)
        ref2 = (x.float() * s.float()[:, None]).to(dt)
        assert torch.equal(to_torch(ops.mul_rows(to_pio(x), to_pio(s))), ref2)


def test_add_mul_still_work() -> None:
    a, b = torch.randn(37).bfloat16(), torch.randn(37).bfloat16()
    assert torch.equal(to_torch(ops.add(to_pio(a), to_pio(b))), a + b)
    assert torch.equal(to_torch(ops.mul(to_pio(a), to_pio(b))), a * b)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 300),
    name=st.sampled_from(sorted(UNARY)),
    bf16=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_unary_simd_matches_generic(n: int, name: str, bf16: bool, seed: int) -> None:
    x = (torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 5).to(
        torch.bfloat16 if bf16 else torch.float32
    )
    a = to_torch(UNARY[name][0](to_pio(x)))
    lib().to_set_isa_mask(0)
    try:
        b = to_torch(UNARY[name][0](to_pio(x)))
    finally:
        lib().to_set_isa_mask(0xFFFFFFFF)
    if bf16:
        assert bf16_close(a, b, 1e-5 if name.startswith("gelu") else 0.0)
    else:
        assert close_f32(a, b, rtol=4e-6, atol=1e-6 if name.startswith("gelu") else 1e-37)


def test_elementwise_bad_inputs_raise() -> None:
    x = to_pio(torch.randn(4, 8))
    with pytest.raises(TypeError):
        ops.silu(to_pio(torch.ones(3, dtype=torch.int32)))
    with pytest.raises(ValueError, match="x\\ must\\ be\\ contiguous"):
        ops.silu(x.transpose(0, 1))
    with pytest.raises(ValueError, match="out\\ has\\ shape"):
        ops.silu(x, out=to_pio(torch.randn(4, 9)))
    with pytest.raises(ValueError, match="approximate\\ must\\ be"):
        ops.gelu(x, "fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fused\\ input\\ needs\\ an\\ even\\ last"):
        ops.swiglu(to_pio(torch.randn(4, 7)))
    with pytest.raises(ValueError, match="gate"):
        ops.swiglu(x, to_pio(torch.randn(4, 9)))
    with pytest.raises(TypeError):
        ops.swiglu(x, to_pio(torch.randn(4, 8).bfloat16()))
    with pytest.raises(ValueError, match="bias\\ has\\ shape"):
        ops.add_row(x, to_pio(torch.randn(7)))
    with pytest.raises(ValueError, match="s\\ has\\ shape"):
        ops.mul_rows(x, to_pio(torch.randn(5)))
    ro = to_pio(torch.randn(4, 8))
    ro.storage.readonly = True
    with pytest.raises(ValueError, match="out\\ is\\ read\\-only"):
        ops.scale(x, 2.0, out=ro)
