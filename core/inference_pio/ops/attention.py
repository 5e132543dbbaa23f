"""Scaled dot-product attention and the KV cache append (C: native/src/cpu/attention.c).

KV cache layout, per layer: ``k_cache [nkv, max_len, hd_qk]`` and ``v_cache [nkv, max_len, hd_v]``
(f32 or bf16). Each kv head's keys are one contiguous stream, so decode reads the cache once,
sequentially, and every query head of a GQA group reuses the same tile. Batched decode: call
:func:`attention` once per sequence with that sequence's cache and length (caches of different
lengths need no padding).
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Sequence
from typing import Literal

from inference_pio.dtypes import DType
from inference_pio.ops._dispatch import (
    native_call,
    out_or_new,
    require,
    require_disjoint,
    same_device,
)
from inference_pio.tensor import Tensor, _index

FLOAT_ACT = (DType.float32, DType.bfloat16)


def _cu_seqlens(cu: Sequence[int] | Tensor, total: int) -> tuple[Tensor, list[int]]:
    if isinstance(cu, Tensor):
        t = require("cu_seqlens", cu, dtypes=(DType.int32,), ndim=1)
        vals = [int(x) for x in t.tolist()]
    else:
        vals = [int(x) for x in cu]
        t = Tensor.from_list(vals, DType.int32) if vals else Tensor.empty((0,), DType.int32)
    if len(vals) < 2 or vals[0] != 0 or vals[-1] != total:
        raise ValueError(f"cu_seqlens must start at 0 and end at {total}, got {vals}")
    if any(b < a for a, b in itertools.pairwise(vals)):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {vals}")
    return t, vals


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    kv_len: int | None = None,
    q_pos: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    kv_layout: Literal["cache", "tokens"] = "cache",
    head_dim_v: int | None = None,
    cu_seqlens: Sequence[int] | Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Attention of ``q [Tq, nh, hd_qk]`` over keys/values (fp32 softmax) -> ``[Tq, nh, hd_v]``.

    ``kv_layout="cache"``: ``k [nkv, max_len, hd_qk]``, ``v [nkv, max_len, hd_v]``, the first
    ``kv_len`` positions valid (default ``q_pos + Tq``). ``kv_layout="tokens"``: ``k [T, nkv, hd]``
    fresh projections (``kv_len`` = T). Causal query i sits at absolute position ``q_pos + i``
    (default ``kv_len - Tq``) and sees keys ``0..q_pos+i``. ``cu_seqlens`` packs independent
    segments (vision tower: ``causal=False``) with ``Tq == T``. ``head_dim_v`` < v's last dim uses
    only the first channels of v (absorbed MLA: pass the latent cache as both k and v).
    ``scale`` defaults to ``hd_qk ** -0.5``. GQA: query head j uses kv head ``j // (nh // nkv)``.
    """
    require("q", q, dtypes=FLOAT_ACT, ndim=3, nonempty=True)
    require("k", k, dtypes=FLOAT_ACT, ndim=3)
    require("v", v, dtypes=(k.dtype,), ndim=3)
    if kv_layout not in ("cache", "tokens"):
        raise ValueError(f"kv_layout must be 'cache' or 'tokens', got {kv_layout!r}")
    tq, nh, hd = q.shape
    if kv_layout == "cache":
        nkv, max_len, hdk = k.shape
        nkv_v, max_len_v, vdim = v.shape
    else:
        max_len, nkv, hdk = k.shape
        max_len_v, nkv_v, vdim = v.shape
    if hdk != hd:
        raise ValueError(f"q head dim {hd} != k head dim {hdk}")
    if (nkv_v, max_len_v) != (nkv, max_len):
        raise ValueError(f"k {k.shape} and v {v.shape} do not match ({kv_layout} layout)")
    if nkv < 1 or nh % nkv:
        raise ValueError(f"query heads ({nh}) must be a multiple of kv heads ({nkv})")
    hd_v = vdim if head_dim_v is None else int(head_dim_v)
    if not 1 <= hd_v <= vdim:
        raise ValueError(f"head_dim_v {hd_v} out of range 1..{vdim}")
    kv_len = None if kv_len is None else _index(kv_len, "kv_len")
    q_pos = None if q_pos is None else _index(q_pos, "q_pos")
    if kv_len is None:
        if kv_layout == "tokens" or cu_seqlens is not None:
            kv_len = max_len
        elif q_pos is not None:
            kv_len = q_pos + tq
        else:
            raise ValueError("kv_len is required with a cache layout (number of valid positions)")
    if not 0 <= kv_len <= max_len:
        raise ValueError(f"kv_len {kv_len} out of range 0..{max_len}")
    seg_ptr: int | None = None
    n_seqs = 0
    bounds: list[int] = []
    seg_keep: Tensor | None = None
    if cu_seqlens is not None:
        if kv_len != tq:
            raise ValueError(f"segments need as many keys as queries ({kv_len} != {tq})")
        if q_pos not in (None, 0):
            raise ValueError("q_pos must be 0 with cu_seqlens")
        seg_keep, bounds = _cu_seqlens(cu_seqlens, tq)
        n_seqs = len(bounds) - 1
        seg_ptr = seg_keep.data_ptr
        q_pos = 0
    elif q_pos is None:
        q_pos = kv_len - tq if causal else 0
    if q_pos < 0 or (causal and cu_seqlens is None and q_pos + tq > kv_len):
        raise ValueError(f"causal queries at {q_pos}..{q_pos + tq - 1} need kv_len >= {q_pos + tq}")
    device = same_device(q=q, k=k, v=v, out=out)
    # on CUDA, bidirectional packed segments run one call each (below): each is then a plain
    # attention, which the device's flash kernels take (segments in one call go through the
    # split kernel, built for decode), and the offsets need no upload
    per_segment = (
        seg_keep is not None and device.type == "cuda" and not causal and kv_layout == "tokens"
    )
    if seg_keep is not None and seg_keep.device != device and not per_segment:
        seg_keep = seg_keep.to(device)  # the kernel reads the offsets where q/k/v are
        seg_ptr = seg_keep.data_ptr
    result = out_or_new(out, (tq, nh, hd_v), q.dtype, device)
    if out is not None:  # the kernels write out while later query blocks still read q, k and v
        require_disjoint("attention", result, q=q, k=k, v=v)
    if kv_layout == "cache":
        khs, kps, vhs, vps = max_len * hd, hd, max_len * vdim, vdim
    else:
        khs, kps, vhs, vps = hd, nkv * hd, vdim, nkv * vdim
    if scale is None:
        scale = hd**-0.5

    def run(rows: int, first: int, keys: int, segs: int, seg_at: int | None, qp: int) -> None:
        """Queries ``first..first+rows-1`` over ``keys`` keys from token ``first`` (tokens
        layout) or from the cache's start."""
        kv_off = first if kv_layout == "tokens" else 0
        es = q.dtype.itemsize
        native_call(
            device,
            "attention",
            q.data_ptr + first * nh * hd * es,
            k.data_ptr + kv_off * kps * k.dtype.itemsize,
            v.data_ptr + kv_off * vps * v.dtype.itemsize,
            result.data_ptr + first * nh * hd_v * es,
            rows,
            nh,
            nkv,
            hd,
            hd_v,
            nh * hd,
            nh * hd_v,
            keys,
            khs,
            kps,
            vhs,
            vps,
            qp,
            int(causal),
            ctypes.c_void_p(seg_at),
            segs,
            float(scale),
            q.dtype,
            k.dtype,
        )

    if per_segment:
        for a, b in itertools.pairwise(bounds):
            if b > a:
                run(b - a, a, b - a, 0, None, 0)
    else:
        run(tq, 0, kv_len, n_seqs, seg_ptr, q_pos)
    del seg_keep
    return result


def kv_cache_append(
    k_new: Tensor, v_new: Tensor | None, k_cache: Tensor, v_cache: Tensor | None, pos: int
) -> None:
    """Writes ``k_new [T, nkv, hd_k]`` (and ``v_new [T, nkv, hd_v]``) into ``k_cache [nkv, max_len,
    hd_k]`` (``v_cache``) at positions ``pos..pos+T-1``; f32/bf16, converted to the cache dtype.
    Pass ``None`` for both v arguments for a K-only (latent) cache."""
    require("k_new", k_new, dtypes=FLOAT_ACT, ndim=3)
    require("k_cache", k_cache, dtypes=FLOAT_ACT, ndim=3, writable=True)
    if (v_new is None) != (v_cache is None):
        raise ValueError("v_new and v_cache must both be given or both be None")
    t, nkv, hd_k = k_new.shape
    nkv_c, max_len, hd_c = k_cache.shape
    if (nkv_c, hd_c) != (nkv, hd_k):
        raise ValueError(f"k_new {k_new.shape} does not fit k_cache {k_cache.shape}")
    hd_v = 0
    if v_new is not None and v_cache is not None:
        require("v_new", v_new, dtypes=(k_new.dtype,), ndim=3)
        require("v_cache", v_cache, dtypes=(k_cache.dtype,), ndim=3, writable=True)
        hd_v = v_new.shape[2]
        if v_new.shape[:2] != (t, nkv) or v_cache.shape != (nkv, max_len, hd_v):
            raise ValueError(f"v_new {v_new.shape} / v_cache {v_cache.shape} do not match k")
    pos = _index(pos, "pos")
    if pos < 0 or pos + t > max_len:
        raise ValueError(f"writing {t} tokens at {pos} overflows the cache of {max_len} positions")
    device = same_device(k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache)
    native_call(
        device,
        "kv_cache_append",
        k_new.data_ptr,
        ctypes.c_void_p(v_new.data_ptr if v_new is not None else None),
        k_cache.data_ptr,
        ctypes.c_void_p(v_cache.data_ptr if v_cache is not None else None),
        t,
        nkv,
        hd_k,
        hd_v,
        max_len,
        pos,
        k_new.dtype,
        k_cache.dtype,
    )
