"""MoE routing helpers (C: native/src/cpu/moe.c): routers, row gather, weighted scatter-add and
grouping of routing entries by expert. Indices are int32."""

from __future__ import annotations

import ctypes

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import native_call, out_or_new, require, same_device
from inference_pio.tensor import Tensor

FLOAT_ACT = (DType.float32, DType.bfloat16)


def route_softmax(
    logits: Tensor, k: int, *, renormalize: bool = True, weights_dtype: DType | None = None
) -> tuple[Tensor, Tensor]:
    """Qwen softmax top-k router: ``logits [T, E]`` -> ``(idx [T, k] int32, weights [T, k])``.

    Softmax in fp32, top-k sorted descending (ties: lower expert id), optional renormalisation;
    weights are rounded once to ``weights_dtype`` (default: the logits dtype)."""
    require("logits", logits, dtypes=FLOAT_ACT, ndim=2)
    t, e = logits.shape
    if not 1 <= k <= min(e, 1024):
        raise ValueError(f"k={k} must lie in 1..{min(e, 1024)}")
    wdt = logits.dtype if weights_dtype is None else DType.parse(weights_dtype)
    if wdt not in FLOAT_ACT:
        raise TypeError(f"weights_dtype {wdt.name} unsupported (float32 or bfloat16)")
    device = logits.device
    idx = Tensor.empty((t, k), DType.int32, device)
    w = Tensor.empty((t, k), wdt, device)
    native_call(
        device,
        "moe_route_softmax",
        logits.data_ptr,
        t,
        e,
        k,
        int(renormalize),
        logits.dtype,
        idx.data_ptr,
        w.data_ptr,
        wdt,
    )
    return idx, w


def route_sigmoid(
    logits: Tensor,
    k: int,
    *,
    bias: Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    renormalize: bool = True,
    scaling: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """GLM/DeepSeek-V3 noaux_tc router: sigmoid scores, ``bias [E]`` (f32) for selection only,
    group filter, weights from the unbiased scores, renormalised (+1e-20) and scaled; returns
    ``(idx [T, k] int32, weights [T, k] float32)``."""
    require("logits", logits, dtypes=FLOAT_ACT, ndim=2)
    t, e = logits.shape
    if bias is not None:
        require("bias", bias, dtypes=(DType.float32,), ndim=1)
        if bias.shape != (e,):
            raise ValueError(f"bias has shape {bias.shape}, expected ({e},)")
    if n_group < 1 or e % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(f"n_group={n_group} must divide E={e} and 1 <= topk_group <= n_group")
    if not 1 <= k <= min(topk_group * (e // n_group), 1024):
        raise ValueError(f"k={k} exceeds the experts of the {topk_group} kept groups")
    device = same_device(logits=logits, bias=bias)
    idx = Tensor.empty((t, k), DType.int32, device)
    w = Tensor.empty((t, k), DType.float32, device)
    native_call(
        device,
        "moe_route_sigmoid",
        logits.data_ptr,
        ctypes.c_void_p(bias.data_ptr if bias is not None else None),
        t,
        e,
        k,
        n_group,
        topk_group,
        int(renormalize),
        float(scaling),
        logits.dtype,
        idx.data_ptr,
        w.data_ptr,
    )
    return idx, w


def gather_rows(src: Tensor, idx: Tensor, out: Tensor | None = None) -> Tensor:
    """``out[i] = src[idx[i]]`` for ``src [N, D]`` and int32 ``idx [M]``; returns ``[M, D]``."""
    require("src", src, ndim=2)
    require("idx", idx, dtypes=(DType.int32,), ndim=1)
    device = same_device(src=src, idx=idx, out=out)
    n, d = src.shape
    result = out_or_new(out, (idx.shape[0], d), src.dtype, device)
    native_call(
        device,
        "moe_gather_rows",
        src.data_ptr,
        idx.data_ptr,
        result.data_ptr,
        n,
        idx.shape[0],
        d,
        src.dtype,
    )
    return result


def scatter_add(
    src: Tensor,
    idx: Tensor,
    dst: Tensor,
    weights: Tensor | None = None,
    *,
    round_products: bool = False,
) -> Tensor:
    """``dst[idx[i]] += weights[i] * src[i]`` in order of i (in place, returns ``dst``).

    ``src [M, D]`` f32/bf16, ``idx [M]`` int32, ``weights [M]`` f32/bf16 or None, ``dst [N, D]``
    f32 (fp32 accumulation) or bf16 (rounded after every add). ``round_products`` rounds each
    product to the src dtype first (HF grouped_mm order)."""
    require("src", src, dtypes=FLOAT_ACT, ndim=2)
    require("idx", idx, dtypes=(DType.int32,), ndim=1)
    require("dst", dst, dtypes=FLOAT_ACT, ndim=2, writable=True)
    m, d = src.shape
    if idx.shape[0] != m or dst.shape[1] != d:
        raise ValueError(f"src {src.shape}, idx {idx.shape} and dst {dst.shape} do not match")
    if weights is not None:
        require("weights", weights, dtypes=FLOAT_ACT, ndim=1)
        if weights.shape[0] != m:
            raise ValueError(f"weights has {weights.shape[0]} entries, expected {m}")
    device = same_device(src=src, idx=idx, dst=dst, weights=weights)
    native_call(
        device,
        "moe_scatter_add",
        src.data_ptr,
        idx.data_ptr,
        ctypes.c_void_p(weights.data_ptr if weights is not None else None),
        dst.data_ptr,
        m,
        dst.shape[0],
        d,
        src.dtype,
        weights.dtype if weights is not None else DType.float32,
        dst.dtype,
        int(round_products),
    )
    return dst


def group_by_expert(idx: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """Counting sort of routing entries ``idx [T, k]`` (or flat) by expert.

    Returns ``(counts [E], offsets [E+1], order [T*k])`` (int32): entries of expert x are
    ``order[offsets[x]:offsets[x+1]]``: flat positions ``p = token*k + slot``, increasing."""
    require("idx", idx, dtypes=(DType.int32,), ndim=(1, 2))
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    device = idx.device
    n = idx.numel
    counts = Tensor.empty((num_experts,), DType.int32, device)
    offsets = Tensor.empty((num_experts + 1,), DType.int32, device)
    order = Tensor.empty((n,), DType.int32, device)
    native_call(
        device,
        "moe_group_by_expert",
        idx.data_ptr,
        n,
        num_experts,
        counts.data_ptr,
        offsets.data_ptr,
        order.data_ptr,
    )
    return counts, offsets, order
