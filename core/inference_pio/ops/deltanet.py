"""The gated delta rule of Gated DeltaNet (C: native/src/cpu/deltanet.c, src/cuda/deltanet.cu)."""

from __future__ import annotations

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import native_call, out_or_new, require, same_device
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)


def _shaped(name: str, t: object, dtypes: tuple[DType, ...], shape: tuple[int, ...]) -> Tensor:
    x = require(name, t, dtypes=dtypes, ndim=len(shape))
    if x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape}")
    return x


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    decay: Tensor,
    dt_bias: Tensor,
    state: Tensor,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """Qwen3-Next's linear attention, recurrent form (models.md §4.4), for T tokens of one
    sequence: ``q, k [T, nk, dk]``, ``v [T, nv, dv]``, ``a, b [T, nv]`` (one dtype, f32 or bf16),
    ``decay = -exp(A_log)`` and ``dt_bias`` ``[nv]`` float32, ``state [nv, dk, dv]`` float32
    (read and updated in place; zeros for a new sequence). Value head h reads key head
    ``h // (nv / nk)``; q and k are l2-normalised (eps 1e-6) and q divided by sqrt(dk);
    ``beta = sigmoid(b)`` rounded to the dtype; ``g = decay * softplus(a + dt_bias)``. Returns
    ``[T, nv, dv]`` in the input dtype."""
    require("q", q, dtypes=FLOAT_ACT, ndim=3)
    t, nk, dk = q.shape
    _shaped("k", k, (q.dtype,), (t, nk, dk))
    require("v", v, dtypes=(q.dtype,), ndim=3)
    if v.shape[0] != t:
        raise ValueError(f"v has {v.shape[0]} tokens, q has {t}")
    nv, dv = v.shape[1], v.shape[2]
    if nk < 1 or nv % nk:
        raise ValueError(f"value heads {nv} must be a multiple of key heads {nk}")
    _shaped("a", a, (q.dtype,), (t, nv))
    _shaped("b", b, (q.dtype,), (t, nv))
    _shaped("decay", decay, (DType.float32,), (nv,))
    _shaped("dt_bias", dt_bias, (DType.float32,), (nv,))
    _shaped("state", state, (DType.float32,), (nv, dk, dv))
    require("state", state, writable=True)
    device = same_device(
        q=q, k=k, v=v, a=a, b=b, decay=decay, dt_bias=dt_bias, state=state, out=out
    )
    result = out_or_new(out, (t, nv, dv), q.dtype, device)
    native_call(
        device,
        "gated_delta_rule",
        q.data_ptr,
        k.data_ptr,
        v.data_ptr,
        a.data_ptr,
        b.data_ptr,
        decay.data_ptr,
        dt_bias.data_ptr,
        state.data_ptr,
        result.data_ptr,
        t,
        nk,
        nv,
        dk,
        dv,
        nk * dk,
        nk * dk,
        nv * dv,
        nv,
        nv * dv,
        q.dtype,
        q.dtype,
    )
    return result
