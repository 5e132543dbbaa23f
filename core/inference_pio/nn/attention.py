"""Grouped-query attention with optional per-head q/k RMSNorm and a per-sequence KV cache."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from inference_pio.backend import Backend
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.memory import advise_sparse
from inference_pio.nn.layers import RMS_GATED, Linear, LinearGroup, RMSNorm, Rotary
from inference_pio.tensor import Tensor


class KVCache:
    """Keys and values of one layer for one sequence, laid out [nkv, capacity, head_dim] so each
    head's keys are one contiguous stream for decode."""

    __slots__ = ("capacity", "head_dim", "k", "nkv", "v")

    def __init__(
        self, nkv: int, capacity: int, head_dim: int, dtype: DType, device: Device
    ) -> None:
        self.nkv, self.capacity, self.head_dim = nkv, capacity, head_dim
        self.k = Tensor.empty((nkv, capacity, head_dim), dtype, device)
        self.v = Tensor.empty((nkv, capacity, head_dim), dtype, device)
        advise_sparse(self.k)  # filled a position at a time: resident as it fills
        advise_sparse(self.v)

    def copy_to(self, dst: object, length: int) -> None:
        """Copies the first ``length`` positions into ``dst``, a KVCache of the same heads,
        head_dim, dtype and device (any capacity of at least ``length``)."""
        if type(dst) is not type(self):
            raise ValueError(f"cannot copy a {type(self).__name__} into a {type(dst).__name__}")
        assert isinstance(dst, KVCache)
        copy_positions(self.k, dst.k, length)
        copy_positions(self.v, dst.v, length)


def copy_positions(src: Tensor, dst: Tensor, n: int) -> None:
    """Copies the first ``n`` positions of every head of ``src`` [heads, capacity, width] into
    ``dst`` [heads, capacity', width]: the same heads, width, dtype and device, ``n`` at most
    both capacities (on a CUDA device the copy is queued on its stream)."""
    if src.ndim != 3 or dst.ndim != 3:
        raise ValueError(f"copy_positions: shapes {src.shape} and {dst.shape}, want 3 dims each")
    heads, cap_s, width = src.shape
    if dst.shape[0] != heads or dst.shape[2] != width or dst.dtype != src.dtype:
        raise ValueError(
            f"copy_positions: {src.shape}/{src.dtype.name} into {dst.shape}/{dst.dtype.name}"
        )
    if src.device != dst.device:
        raise ValueError(f"copy_positions: from {src.device} into {dst.device}")
    if not 0 <= n <= min(cap_s, dst.shape[1]):
        raise ValueError(f"copy_positions: {n} positions, capacities {cap_s} and {dst.shape[1]}")
    if not (src.is_contiguous() and dst.is_contiguous()):
        raise ValueError("copy_positions needs contiguous tensors")
    if dst.readonly:
        raise ValueError("cannot write into a read-only tensor")
    if n == 0:
        return
    es = src.dtype.itemsize
    s_pitch, d_pitch, width_b = cap_s * width * es, dst.shape[1] * width * es, n * width * es
    if src.device.type == "cpu":
        for h in range(heads):
            ctypes.memmove(dst.data_ptr + h * d_pitch, src.data_ptr + h * s_pitch, width_b)
        return
    from inference_pio import cuda

    cuda.memcpy2d(dst.data_ptr, d_pitch, src.data_ptr, s_pitch, width_b, heads, cuda.D2D)


class KVTable:
    """One layer's KV caches of several sequences as device arrays, for decode steps captured in
    a CUDA graph (nn.cuda_batch_graph): base pointers of the key and value caches (uint64), their
    capacities (int64) and the sequences' lengths (int32, written before each replay). Row i of
    the step is sequence i's new token; a row whose length leaves no room is skipped."""

    __slots__ = (
        "cache_dtype",
        "capacities",
        "capacity",
        "flags",
        "k_ptrs",
        "lengths",
        "sms",
        "v_ptrs",
        "workspace",
    )

    def __init__(
        self,
        k_ptrs: int,
        v_ptrs: int,
        capacities: int,
        lengths: int,
        capacity: int,
        cache_dtype: DType,
        workspace: Tensor,
        aligned: bool,
        sms: int,
    ) -> None:
        """``capacity``: the largest of the capacities; ``sms``: the device's multiprocessors;
        ``workspace``: float32 scratch for the key slices of each row."""
        self.k_ptrs, self.v_ptrs = k_ptrs, v_ptrs
        self.capacities, self.lengths = capacities, lengths
        self.capacity, self.cache_dtype, self.sms = capacity, cache_dtype, sms
        self.workspace = workspace
        self.flags = 1 if aligned else 0

    def splits(self, rows: int, nh: int, nkv: int, hd: int) -> int:
        """Key slices per row: about two blocks per multiprocessor, a slice of 128 keys at least,
        no more than the workspace holds."""
        want = max(1, min(32, self.capacity // 128, -(-2 * self.sms // (nkv * rows))))
        room = self.workspace.numel // max(1, rows * nh * (hd + 2))
        return max(1, min(want, room))


@dataclass(frozen=True)
class Segment:
    """The rows [start, start+count) of a packed batch belong to one sequence whose cache holds
    ``past`` tokens before them.

    ``past_dev`` (a decode step captured in a CUDA graph, :mod:`inference_pio.nn.cuda_capture`):
    the device address of an int32 holding the cache length when the graph replays; ``past`` is
    then only its value at capture time. Blocks that read the cache length pass this pointer to
    the device ops (``kv_cache_append_dev``, ``attention_dev``) instead of ``past``."""

    start: int
    count: int
    past: int
    past_dev: int = 0


#: Key slices per query head that a captured decode step's attention workspace holds.
CAPTURED_SPLITS = 64


def attend_captured(
    be: Backend,
    seg: Segment,
    q: int,
    k: int,
    v: int,
    out: int,
    nh: int,
    nkv: int,
    hd_qk: int,
    hd_v: int,
    ldq: int,
    ldo: int,
    capacity: int,
    strides: tuple[int, int, int, int],
    scale: float,
    q_dtype: DType,
    kv_dtype: DType,
) -> None:
    """Causal attention of ``seg``'s queries over its cache with the length read from the device
    (``seg.past_dev``): toc_attention_dev with a scratch workspace of CAPTURED_SPLITS slices."""
    per = seg.count * nh * (hd_v + 2)
    ws = be.scratch("attn.captured_ws", (CAPTURED_SPLITS * per,), DType.float32)
    be.call(
        "attention_dev",
        q, k, v, out, seg.count, nh, nkv, hd_qk, hd_v, ldq, ldo, capacity, *strides,
        seg.past_dev, scale, q_dtype, kv_dtype, ws.data_ptr, ws.numel,
    )  # fmt: skip


class Attention:
    """Qwen3-style attention: q/k/v projections, optional q/k RMSNorm, RoPE, causal GQA."""

    #: Decode plans may replay this block: its native calls depend on the step only through the
    #: cache length, linearly (the append slot and the attention length). See nn.decode_plan.
    replayable = True
    #: A CUDA decode step may be captured with this block in it (nn.cuda_capture): at one token
    #: its calls depend on the step only through the cache length, read on the device.
    cuda_capturable = True

    def __init__(
        self,
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rotary: Rotary,
        q_norm: RMSNorm | None = None,
        k_norm: RMSNorm | None = None,
        scale: float | None = None,
        gated: bool = False,
    ) -> None:
        """``gated`` (Qwen3-Next): q_proj also yields an output gate, per head ``[q | gate]``
        (2 x head_dim rows a head), and the attention output is multiplied by sigmoid(gate)
        before o_proj."""
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}"
            )
        q_rows = num_heads * head_dim * (2 if gated else 1)
        if q_proj.out_features != q_rows:
            raise ValueError(f"q_proj has {q_proj.out_features} outputs, expected {q_rows}")
        for name, proj in (("k_proj", k_proj), ("v_proj", v_proj)):
            if proj.out_features != num_kv_heads * head_dim:
                raise ValueError(
                    f"{name} has {proj.out_features} outputs, expected {num_kv_heads * head_dim}"
                )
        if o_proj.in_features != num_heads * head_dim:
            raise ValueError(
                f"o_proj takes {o_proj.in_features} inputs, expected {num_heads * head_dim}"
            )
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self._qkv = LinearGroup([q_proj, k_proj, v_proj])
        self.nh, self.nkv, self.hd = num_heads, num_kv_heads, head_dim
        self.rotary = rotary
        self.q_norm, self.k_norm = q_norm, k_norm
        self.scale = head_dim**-0.5 if scale is None else scale
        self.gated = gated
        if (
            gated
        ):  # the gate split allocates per call: a recorded CPU decode plan must not replay it
            self.replayable = False

    def _prepare_qk(
        self, be: Backend, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, t: int
    ) -> None:
        """q/k RMSNorm per head, then RoPE, in place: one native call where the device has
        the fused op and both norms agree on eps, variant and weight dtype."""
        qn, kn = self.q_norm, self.k_norm
        qw, kw = self.nh * self.hd, self.nkv * self.hd
        norms = [n for n in (qn, kn) if n is not None]
        fusable = all(
            n.eps == norms[0].eps
            and n.variant == norms[0].variant
            and n.variant != RMS_GATED
            and n.weight.dtype == norms[0].weight.dtype
            for n in norms
        )
        if fusable and be.has("qk_norm_rope"):
            be.call(
                "qk_norm_rope",
                q.data_ptr,
                k.data_ptr,
                qn.weight.data_ptr if qn is not None else None,
                kn.weight.data_ptr if kn is not None else None,
                cos.data_ptr,
                sin.data_ptr,
                t,
                self.nh,
                self.nkv,
                self.hd,
                self.rotary.rot_dim,
                qw,
                kw,
                norms[0].eps if norms else 0.0,
                norms[0].variant if norms else 0,
                self.rotary.mode,
                q.dtype,
                norms[0].weight.dtype if norms else DType.float32,
                cos.dtype,
            )
            return
        if qn is not None:
            qn(be, q, q, rows=t, heads=self.nh)
        if kn is not None:
            kn(be, k, k, rows=t, heads=self.nkv)
        self.rotary.apply(be, q, cos, sin, t, self.nh, self.hd, qw)
        self.rotary.apply(be, k, cos, sin, t, self.nkv, self.hd, kw)

    def _decode_batch(
        self,
        be: Backend,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn: Tensor,
        caches: list[KVCache],
        past: list[int],
    ) -> None:
        from inference_pio import cuda

        n = len(caches)
        ptrs = ctypes.c_void_p * n
        i64 = ctypes.c_int64 * n
        rc = _batch_decode_fn(be)(
            q.data_ptr, k.data_ptr, v.data_ptr, attn.data_ptr, n, self.nh, self.nkv, self.hd,
            ptrs(*[c.k.data_ptr for c in caches]), ptrs(*[c.v.data_ptr for c in caches]),
            i64(*[c.capacity for c in caches]), i64(*past),
            self.scale, q.dtype, caches[0].k.dtype,
        )  # fmt: skip
        cuda.check(rc, "attention_decode_batch")

    def _decode_table(
        self, be: Backend, q: Tensor, k: Tensor, v: Tensor, attn: Tensor, table: KVTable, rows: int
    ) -> None:
        nsplit = table.splits(rows, self.nh, self.nkv, self.hd)
        be.call(
            "attention_decode_batch_dev",
            q.data_ptr, k.data_ptr, v.data_ptr, attn.data_ptr, rows, self.nh, self.nkv, self.hd,
            table.k_ptrs, table.v_ptrs, table.capacities, table.lengths, self.scale, q.dtype,
            table.cache_dtype, nsplit, table.workspace.data_ptr, table.flags,
        )  # fmt: skip

    def new_cache(self, capacity: int, dtype: DType, device: Device) -> KVCache:
        return KVCache(self.nkv, capacity, self.hd, dtype, device)

    def __call__(
        self,
        be: Backend,
        h: Tensor,
        segments: list[Segment],
        caches: list[KVCache] | KVTable,
        cos: Tensor,
        sin: Tensor,
        out: Tensor,
    ) -> Tensor:
        t = h.shape[0]
        act = h.dtype
        qw, kw = self.nh * self.hd, self.nkv * self.hd
        gate: Tensor | None = None
        if self.gated:
            qg = be.scratch("attn.qg", (t, 2 * qw), act)
            k = be.scratch("attn.k", (t, kw), act)
            v = be.scratch("attn.v", (t, kw), act)
            self._qkv(be, h, (qg, k, v))
            per_head = qg.reshape(t, self.nh, 2 * self.hd)
            q = per_head.narrow(2, 0, self.hd).contiguous().reshape(t, qw)
            gate = per_head.narrow(2, self.hd, self.hd).contiguous().reshape(t, qw)
        else:
            q = be.scratch("attn.q", (t, qw), act)
            k = be.scratch("attn.k", (t, kw), act)
            v = be.scratch("attn.v", (t, kw), act)
            self._qkv(be, h, (q, k, v))
        self._prepare_qk(be, q, k, cos, sin, t)
        attn = be.scratch("attn.out", (t, qw), act)
        self._attend(be, q, k, v, attn, segments, caches, t)
        if gate is not None:  # attn * sigmoid(gate), each rounded as the two ops would
            be.call("sigmoid", gate.data_ptr, gate.data_ptr, t * qw, act)
            be.call("mul", attn.data_ptr, gate.data_ptr, attn.data_ptr, t * qw, act)
        return self.o_proj(be, attn, out)

    def _attend(
        self,
        be: Backend,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn: Tensor,
        segments: list[Segment],
        caches: list[KVCache] | KVTable,
        t: int,
    ) -> None:
        """Appends k/v to each sequence's cache and writes the attention of q into ``attn``."""
        act = q.dtype
        qw, kw = self.nh * self.hd, self.nkv * self.hd
        if isinstance(caches, KVTable):  # a decode step of t sequences captured in a CUDA graph
            self._decode_table(be, q, k, v, attn, caches, t)
            return
        if len(segments) > 1 and t == len(segments) and _batch_decode_fn(be) is not None:
            # a decode step of several sequences on the GPU: one call appends every new key/value
            # row to its own cache and attends (instead of two calls per sequence)
            self._decode_batch(be, q, k, v, attn, caches, [seg.past for seg in segments])
            return
        es = act.itemsize
        for seg, cache in zip(segments, caches, strict=False):
            if seg.past + seg.count > cache.capacity:
                raise ValueError(
                    f"sequence needs {seg.past + seg.count} cache slots, "
                    f"capacity is {cache.capacity}"
                )
            head_stride = cache.capacity * self.hd
            if seg.past_dev:  # a step captured in a CUDA graph: the length is read on the device
                be.call(
                    "kv_cache_append_dev",
                    k.data_ptr + seg.start * kw * es, v.data_ptr + seg.start * kw * es,
                    cache.k.data_ptr, cache.v.data_ptr, seg.count, self.nkv, self.hd, self.hd,
                    cache.capacity, seg.past_dev, act, cache.k.dtype,
                )  # fmt: skip
                attend_captured(
                    be, seg, q.data_ptr + seg.start * qw * es, cache.k.data_ptr,
                    cache.v.data_ptr, attn.data_ptr + seg.start * qw * es, self.nh, self.nkv,
                    self.hd, self.hd, qw, qw, cache.capacity,
                    (head_stride, self.hd, head_stride, self.hd), self.scale, act, cache.k.dtype,
                )  # fmt: skip
                continue
            be.call(
                "kv_cache_append",
                k.data_ptr + seg.start * kw * es,
                v.data_ptr + seg.start * kw * es,
                cache.k.data_ptr,
                cache.v.data_ptr,
                seg.count,
                self.nkv,
                self.hd,
                self.hd,
                cache.capacity,
                seg.past,
                act,
                cache.k.dtype,
            )
            be.call(
                "attention",
                q.data_ptr + seg.start * qw * es,
                cache.k.data_ptr,
                cache.v.data_ptr,
                attn.data_ptr + seg.start * qw * es,
                seg.count,
                self.nh,
                self.nkv,
                self.hd,
                self.hd,
                qw,
                qw,
                seg.past + seg.count,
                head_stride,
                self.hd,
                head_stride,
                self.hd,
                seg.past,
                1,
                None,
                0,
                self.scale,
                act,
                cache.k.dtype,
            )


_BATCH_FNS: dict[Device, Any] = {}


def _batch_decode_fn(be: Backend) -> Any:
    """The CUDA library's batched decode attention for ``be``'s device, or None (CPU, or a
    library without it, or ``INFERENCE_PIO_CUDA_BATCH_ATTENTION=0``)."""
    if be.device.type != "cuda" or os.environ.get("INFERENCE_PIO_CUDA_BATCH_ATTENTION") == "0":
        return None
    if be.device not in _BATCH_FNS:
        from inference_pio import cuda

        cuda.set_device(be.device)
        _BATCH_FNS[be.device] = getattr(cuda.lib(), "toc_attention_decode_batch", None)
    return _BATCH_FNS[be.device]
