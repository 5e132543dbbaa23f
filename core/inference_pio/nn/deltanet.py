"""Gated DeltaNet (Qwen3-Next's linear-attention layers; models.md §4.4).

Per token: ``in_proj_qkvz`` and ``in_proj_ba`` give, per key-head group, ``q | k | v | z`` and
``b | a``; q, k and v go through a causal depthwise conv1d (kernel K, carried state of the last
K-1 inputs) with SiLU; the gated delta rule (``to_gated_delta_rule``: l2-normalised q and k,
``beta = sigmoid(b)``, ``g = -exp(A_log) * softplus(a + dt_bias)``, an fp32 state [dk, dv] per value
head) gives each value head's output; a gated RMSNorm with ``z`` and ``out_proj`` finish. The
per-sequence state (conv inputs and recurrent state) lives in :class:`RecurrentState`, which the
decoder keeps in the layer's cache slot; it does not grow with the context.

The two projections' rows are reordered once at construction, so that their outputs come out as
``q | k | v | z`` and ``b | a`` over all heads: one conv call covers q, k and v (its channels are
in that order in the checkpoint), the delta rule reads them from its output by row strides, and a
one-token step (decode, and the captured decode step) reads every part in place.
"""

from __future__ import annotations

from inference_pio.backend import Backend
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.nn.attention import KVTable, Segment
from inference_pio.nn.layers import RMS_GATED, Linear, RMSNorm
from inference_pio.tensor import Tensor


class RecurrentState:
    """One sequence's state of one Gated DeltaNet layer: the last K-1 conv inputs of q, k and v
    ([K-1, channels], the conv's channels in the checkpoint's order q | k | v, activation dtype)
    and the recurrent state [nv, dk, dv] (fp32)."""

    __slots__ = ("capacity", "conv", "ssm")

    def __init__(
        self, channels: int, kernel: int, heads: tuple[int, int, int], dtype: DType,
        device: Device, capacity: int,
    ) -> None:  # fmt: skip
        self.capacity = capacity
        self.conv = Tensor.zeros((kernel - 1, channels), dtype, device)
        nv, dk, dv = heads
        self.ssm = Tensor.zeros((nv, dk, dv), DType.float32, device)

    def reset(self) -> None:
        self.conv.zero_()
        self.ssm.zero_()

    def copy_to(self, dst: object, length: int) -> None:
        """Copies the state into ``dst``, a RecurrentState of the same layer (the state does not
        depend on ``length``)."""
        if type(dst) is not type(self):
            raise ValueError(f"cannot copy a {type(self).__name__} into a {type(dst).__name__}")
        assert isinstance(dst, RecurrentState)
        dst.conv.copy_(self.conv)
        dst.ssm.copy_(self.ssm)


class GatedDeltaNet:
    """The linear-attention block: ``(backend, h, segments, caches, cos, sin, out) -> out``
    like :class:`~inference_pio.nn.Attention` (cos / sin unused)."""

    #: CPU decode plans do not replay it (its state is updated in place each step).
    replayable = False
    #: A CUDA decode step may be captured with it (nn.cuda_capture): its calls never read the
    #: cache length, and the graph updates the same state buffers in place each replay.
    cuda_capturable = True

    def __init__(
        self,
        in_proj_qkvz: Linear,
        in_proj_ba: Linear,
        conv_weight: Tensor,
        dt_bias: Tensor,
        a_log: Tensor,
        norm: RMSNorm,
        out_proj: Linear,
        num_k_heads: int,
        num_v_heads: int,
        k_head_dim: int,
        v_head_dim: int,
    ) -> None:
        nk, nv, dk, dv = num_k_heads, num_v_heads, k_head_dim, v_head_dim
        if min(nk, nv, dk, dv) < 1 or nv % nk:
            raise ValueError(f"value heads {nv} must be a positive multiple of key heads {nk}")
        r = nv // nk
        conv_dim = 2 * nk * dk + nv * dv
        checks = [
            ("in_proj_qkvz outputs", in_proj_qkvz.out_features, nk * (2 * dk + 2 * r * dv)),
            ("in_proj_ba outputs", in_proj_ba.out_features, 2 * nv),
            ("conv1d channels", conv_weight.shape[0], conv_dim),
            ("dt_bias", dt_bias.numel, nv),
            ("A_log", a_log.numel, nv),
            ("norm width", norm.dim, dv),
            ("out_proj inputs", out_proj.in_features, nv * dv),
        ]
        for what, got, want in checks:
            if got != want:
                raise ValueError(f"Gated DeltaNet: {what} {got}, expected {want}")
        if conv_weight.ndim != 3 or conv_weight.shape[1] != 1:
            raise ValueError(f"conv1d weight must be [channels, 1, K], got {conv_weight.shape}")
        if norm.variant != RMS_GATED:
            raise ValueError("the Gated DeltaNet output norm must be the gated variant")
        self.in_proj_qkvz, self.in_proj_ba, self.out_proj, self.norm = (
            in_proj_qkvz,
            in_proj_ba,
            out_proj,
            norm,
        )
        self.nk, self.nv, self.dk, self.dv = nk, nv, dk, dv
        self._flatten()
        self.kernel = conv_weight.shape[2]
        self._conv_w = conv_weight.reshape(conv_dim, self.kernel)
        f32 = DType.float32
        # dt_bias and decay = -exp(A_log) in fp32 (as transformers computes them), made on the host
        dt_host = dt_bias.to("cpu").reshape(nv)
        self.dt_bias = dt_host if dt_host.dtype == f32 else dt_host.to(f32)
        self.decay = Tensor.from_list([-_exp32(x) for x in a_log.to("cpu").tolist()], f32)
        if conv_weight.device.type != "cpu":
            self.dt_bias = self.dt_bias.to(conv_weight.device)
            self.decay = self.decay.to(conv_weight.device)

    def _flatten(self) -> None:
        """Reorders the projections' rows (and biases) from per key-head group to per part, so
        that their outputs are ``q | k | v | z`` and ``b | a`` over all heads (a copy of both
        weights, made once): the conv then runs over one contiguous run of q, k and v channels,
        and a one-token step reads every part in place."""
        from inference_pio.ops import gather_rows

        nk, nv, dk, dv = self.nk, self.nv, self.dk, self.dv
        r = nv // nk
        group = 2 * dk + 2 * r * dv
        qkvz: list[int] = []
        for start, width in ((0, dk), (dk, dk), (2 * dk, r * dv), (2 * dk + r * dv, r * dv)):
            qkvz += [g * group + start + i for g in range(nk) for i in range(width)]
        ba = [g * 2 * r + start + i for start in (0, r) for g in range(nk) for i in range(r)]
        for name, idx in (("in_proj_qkvz", qkvz), ("in_proj_ba", ba)):
            lin: Linear = getattr(self, name)
            rows = Tensor.from_list(idx, DType.int32).to(lin.weight.device)
            bias = lin.bias
            if bias is not None:
                bias = gather_rows(bias.reshape(bias.numel, 1), rows).reshape(bias.numel)
            setattr(self, name, Linear(name, gather_rows(lin.weight, rows), bias))

    def kv_values_per_token(self) -> int:
        """The state does not grow with the context."""
        return 0

    def new_cache(self, capacity: int, dtype: DType, device: Device) -> RecurrentState:
        nk, dk = self.nk, self.dk
        return RecurrentState(
            2 * nk * dk + self.nv * self.dv,
            self.kernel,
            (self.nv, dk, self.dv),
            dtype,
            device,
            capacity,
        )

    def __call__(
        self,
        be: Backend,
        h: Tensor,
        segments: list[Segment],
        caches: list[RecurrentState] | KVTable,
        cos: Tensor,
        sin: Tensor,
        out: Tensor,
    ) -> Tensor:
        if isinstance(caches, KVTable):
            raise NotImplementedError("Gated DeltaNet has no captured batched decode step")
        t, act = h.shape[0], h.dtype
        nk, nv, dk, dv = self.nk, self.nv, self.dk, self.dv
        qk, vz = nk * dk, nv * dv
        cd = 2 * qk + vz  # the conv's channels: q | k | v
        qkvz = be.scratch("gdn.qkvz", (t, cd + vz), act)
        self.in_proj_qkvz(be, h, qkvz)
        ba = be.scratch("gdn.ba", (t, 2 * nv), act)
        self.in_proj_ba(be, h, ba)
        # [q | k | v | z] and [b | a] over all heads (rows reordered at construction)
        x, z = _cols(qkvz, 0, cd), _cols(qkvz, cd, vz)
        b, a = _cols(ba, 0, nv), _cols(ba, nv, nv)
        y = be.scratch("gdn.conv", (t, cd), act)
        o = be.scratch("gdn.o", (t, vz), act)
        es = act.itemsize
        w = self._conv_w
        for seg, cache in zip(segments, caches, strict=False):
            if seg.past == 0:
                cache.reset()
            st = cache.conv
            be.call(
                "causal_conv1d",
                x.data_ptr + seg.start * cd * es,
                w.data_ptr,
                st.data_ptr,
                y.data_ptr + seg.start * cd * es,
                seg.count,
                cd,
                self.kernel,
                1,
                act,
                w.dtype,
                st.dtype,
            )
            q0 = y.data_ptr + seg.start * cd * es
            be.call(
                "gated_delta_rule",
                q0,
                q0 + qk * es,
                q0 + 2 * qk * es,
                a.data_ptr + seg.start * nv * es,
                b.data_ptr + seg.start * nv * es,
                self.decay.data_ptr,
                self.dt_bias.data_ptr,
                cache.ssm.data_ptr,
                o.data_ptr + seg.start * vz * es,
                seg.count,
                nk,
                nv,
                dk,
                dv,
                cd,
                cd,
                cd,
                nv,
                vz,
                act,
                act,
            )
        self.norm(be, o, o, rows=t, heads=nv, z=z)
        return self.out_proj(be, o, out)


def _cols(x: Tensor, start: int, n: int) -> Tensor:
    """Columns [start, start + n) of ``x`` [t, width]: a view for one row, a copy for more."""
    if x.shape[0] == 1:
        return x.reshape(x.shape[1]).narrow(0, start, n).reshape(1, n)
    return x.narrow(1, start, n).contiguous()


def _exp32(x: float) -> float:
    """exp in double, rounded to fp32 (transformers exponentiates in fp32: at most an ulp apart)."""
    import math
    import struct

    return float(struct.unpack("f", struct.pack("f", math.exp(x)))[0])
