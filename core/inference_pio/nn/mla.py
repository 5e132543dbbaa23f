"""Multi-head latent attention (MLA: DeepSeek-V2/V3, GLM-4.7-Flash; models.md §5.2), absorbed.

Per token the layer caches what transformers caches: the normalised latent ``c`` [kv_lora] and
the rotated rope key ``k_pe`` [rope] shared by every head, one row ``[c | k_pe]`` of a
``[1, capacity, kv_lora + rope]`` cache. The per-head keys and values are never expanded: with
``kv_b_proj``'s rows of head h split into ``W_UK_h`` [nope, kv_lora] and ``W_UV_h`` [v, kv_lora],

- the query of head h becomes ``[W_UK_hᵀ q_nope_h | rope(q_pe_h)]`` (kv_lora + rope values),
  whose dot product with a cache row equals ``q_nope_h · k_nope_h + q_pe_h · k_pe`` (exact in real
  arithmetic), so attention runs as one kv head shared by all query heads, with the scale of the
  unabsorbed head width (nope + rope)^-0.5;
- the attention output of head h over the cached latents is mapped by ``W_UV_h`` to its values'
  width before ``o_proj``.

Rounding differs from transformers' expanded form only where the products are grouped
differently (a few bf16 roundings per score), within the conformance tolerances.
"""

from __future__ import annotations

from inference_pio.backend import Backend
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.memory import advise_sparse
from inference_pio.nn.attention import KVTable, Segment, attend_captured, copy_positions
from inference_pio.nn.layers import Linear, RMSNorm, Rotary
from inference_pio.tensor import Tensor

#: Segments of at least this many new tokens (prefills) take the expanded form: one kv_b_proj
#: product over the cached latents and attention at the heads' own widths, instead of per-head
#: maps into and out of the latent space and attention over [latent | rope key] rows.
EXPAND_MIN_TOKENS = 32


class LatentCache:
    """One layer's cache for one sequence: rows ``[c | k_pe]`` laid out [1, capacity, width].
    ``v`` is the same tensor (the values are the first kv_lora entries of each row)."""

    __slots__ = ("capacity", "head_dim", "k", "nkv", "v")

    def __init__(self, capacity: int, width: int, dtype: DType, device: Device) -> None:
        self.nkv, self.capacity, self.head_dim = 1, capacity, width
        self.k = Tensor.empty((1, capacity, width), dtype, device)
        advise_sparse(self.k)  # filled a position at a time: resident as it fills
        self.v = self.k

    def copy_to(self, dst: object, length: int) -> None:
        """Copies the first ``length`` rows into ``dst``, a LatentCache of the same width, dtype
        and device."""
        if type(dst) is not type(self):
            raise ValueError(f"cannot copy a {type(self).__name__} into a {type(dst).__name__}")
        assert isinstance(dst, LatentCache)
        copy_positions(self.k, dst.k, length)


class MLAttention:
    """MLA with an optional low-rank query (``q_a_proj`` → ``q_a_layernorm`` → ``q_b_proj``, or
    one ``q_proj``), ``kv_a_proj_with_mqa`` → ``kv_a_layernorm`` → ``kv_b_proj``, RoPE on the
    rope part of each query head and on the shared ``k_pe``, causal attention, ``o_proj``."""

    #: CPU decode plans do not replay this block (GLM-4.7-Flash pairs it with routed experts,
    #: which no plan replays, so replaying it alone was never built or checked).
    replayable = False
    #: A CUDA decode step may be captured with this block (nn.cuda_capture): at one token it
    #: reads the cache length only on the device (kv_cache_append_dev, attention_dev).
    cuda_capturable = True

    def __init__(
        self,
        kv_a_proj: Linear,
        kv_a_norm: RMSNorm,
        kv_b_proj: Linear,
        o_proj: Linear,
        num_heads: int,
        nope_dim: int,
        rope_dim: int,
        v_dim: int,
        rotary: Rotary,
        *,
        q_proj: Linear | None = None,
        q_a_proj: Linear | None = None,
        q_a_norm: RMSNorm | None = None,
        q_b_proj: Linear | None = None,
        scale: float | None = None,
    ) -> None:
        nh, dn, dr, dv = num_heads, nope_dim, rope_dim, v_dim
        if min(nh, dn, dr, dv) < 1:
            raise ValueError("heads and head widths must be >= 1")
        lora = kv_a_norm.dim
        qk = dn + dr
        low_rank = (q_a_proj, q_a_norm, q_b_proj)
        full_q = q_proj is not None and all(p is None for p in low_rank)
        if not full_q and (q_proj is not None or any(p is None for p in low_rank)):
            raise ValueError("MLA needs q_proj, or q_a_proj + q_a_norm + q_b_proj")
        q_last = q_proj if q_proj is not None else q_b_proj
        assert q_last is not None
        checks = [
            ("kv_a_proj_with_mqa outputs", kv_a_proj.out_features, lora + dr),
            ("kv_b_proj outputs", kv_b_proj.out_features, nh * (dn + dv)),
            ("kv_b_proj inputs", kv_b_proj.in_features, lora),
            ("query outputs", q_last.out_features, nh * qk),
            ("o_proj inputs", o_proj.in_features, nh * dv),
            ("rotary dimension", rotary.rot_dim, dr),
        ]
        if q_a_proj is not None and q_a_norm is not None and q_b_proj is not None:
            checks += [
                ("q_a_layernorm width", q_a_norm.dim, q_a_proj.out_features),
                ("q_b_proj inputs", q_b_proj.in_features, q_a_proj.out_features),
            ]
        for what, got, want in checks:
            if got != want:
                raise ValueError(f"MLA: {what} {got}, expected {want}")
        self.kv_a_proj, self.kv_a_norm, self.kv_b_proj, self.o_proj = (
            kv_a_proj,
            kv_a_norm,
            kv_b_proj,
            o_proj,
        )
        self.q_proj, self.q_a_proj, self.q_a_norm, self.q_b_proj = (
            q_proj,
            q_a_proj,
            q_a_norm,
            q_b_proj,
        )
        self.nh, self.nope, self.rope, self.vdim, self.lora = nh, dn, dr, dv, lora
        #: one shared kv head of a cache row's width (the attention's view of the cache)
        self.nkv, self.hd = 1, lora + dr
        self.rotary = rotary
        #: softmax scale: (nope + rope)^-0.5 unless given (YaRN's mscale_all_dim changes it)
        self.scale = qk**-0.5 if scale is None else scale
        kvb = kv_b_proj.weight.reshape(nh, dn + dv, lora)
        # W_UK_hᵀ [lora, nope] of every head, one contiguous copy [nh, lora, nope]; W_UV_h, the
        # q_pe rows and (expanded form) W_UK_h are read in place, every head at a fixed stride
        # (one strided batched linear call for all heads)
        self._w_uk_t = kvb.narrow(1, 0, dn).permute(0, 2, 1).contiguous()
        self._q_last = q_last
        # the expanded form's identity [rope, rope] copies the shared rope key into every head
        eye = Tensor.from_list(
            [[1.0 if r == c else 0.0 for c in range(dr)] for r in range(dr)], DType.float32
        ).to(kv_b_proj.weight.dtype)
        eye = eye.to(kv_b_proj.weight.device)
        self._rope_copy = Linear("rope_copy", eye)

    def kv_values_per_token(self) -> int:
        """Values one token adds to the cache: its latent and its rope key."""
        return self.lora + self.rope

    def decode_weight_bytes(self) -> int:
        """Weight bytes one decode step reads (the rope rows of the query are read twice)."""
        total = sum(
            lin.weight.nbytes + (lin.bias.nbytes if lin.bias is not None else 0)
            for lin in (self.q_proj, self.q_a_proj, self.q_b_proj, self.kv_a_proj, self.o_proj)
            if lin is not None
        )
        total += self.kv_b_proj.weight.nbytes + self.kv_a_norm.weight.nbytes
        if self.q_a_norm is not None:
            total += self.q_a_norm.weight.nbytes
        q_pe_rows = self.nh * self.rope * self._q_last.in_features
        return total + q_pe_rows * self._q_last.weight.dtype.itemsize

    def new_cache(self, capacity: int, dtype: DType, device: Device) -> LatentCache:
        return LatentCache(capacity, self.lora + self.rope, dtype, device)

    def _rope(
        self,
        be: Backend,
        x: Tensor,
        cs: tuple[Tensor, Tensor],
        t: int,
        heads: int,
        stride_t: int,
        stride_h: int,
    ) -> None:
        """RoPE in place on ``heads`` rope parts of ``rope`` values per token (x: their start)."""
        be.call(
            "rope_apply",
            x.data_ptr,
            cs[0].data_ptr,
            cs[1].data_ptr,
            t,
            heads,
            self.rope,
            self.rope,
            stride_t,
            stride_h,
            self.rotary.mode,
            x.dtype,
            cs[0].dtype,
        )

    def _heads(
        self,
        be: Backend,
        w: Tensor,
        first_row: int,
        n: int,
        head_rows: int,
        x: Tensor,
        ldx: int,
        sx: int,
        y: Tensor,
        ldy: int,
        sy: int,
        t: int,
    ) -> None:
        """One linear per head in one call: head i maps its x (``x + i * sx``) by the ``n`` rows
        of ``w`` from ``first_row + i * head_rows`` into ``y + i * sy``."""
        k = w.shape[-1]
        be.call(
            "linear_strided_batched",
            self.nh,
            x.data_ptr,
            ldx,
            sx,
            w.data_ptr + first_row * k * w.dtype.itemsize,
            head_rows * k,
            y.data_ptr,
            ldy,
            sy,
            t,
            n,
            k,
            x.dtype,
            w.dtype,
            y.dtype,
        )

    def __call__(
        self,
        be: Backend,
        h: Tensor,
        segments: list[Segment],
        caches: list[LatentCache] | KVTable,
        cos: Tensor,
        sin: Tensor,
        out: Tensor,
    ) -> Tensor:
        if isinstance(caches, KVTable):
            raise NotImplementedError("MLA has no captured batched decode step")
        t, act = h.shape[0], h.dtype
        nh, dn, dr, lora = self.nh, self.nope, self.rope, self.lora
        qk, row = dn + dr, lora + dr
        # the latent and the shared rope key: [c | k_pe], c normalised, k_pe rotated, in place
        ckv = be.scratch("mla.ckv", (t, row), act)
        self.kv_a_proj(be, h, ckv)
        self.kv_a_norm(be, ckv, ckv, rows=t, ld=row)
        self._rope(be, ckv.narrow(1, lora, dr), (cos, sin), t, 1, row, dr)
        # queries: q [t, nh, nope + rope], then per head [W_UK_hᵀ q_nope_h | rope(q_pe_h)]
        q = be.scratch("mla.q", (t, nh * qk), act)
        src = h
        if self.q_proj is not None:
            self.q_proj(be, h, q)
        else:
            assert self.q_a_proj is not None
            assert self.q_a_norm is not None
            assert self.q_b_proj is not None
            src = be.scratch("mla.cq", (t, self.q_a_proj.out_features), act)
            self.q_a_proj(be, h, src)
            self.q_a_norm(be, src, src)
            self.q_b_proj(be, src, q)
        absorbed = any(seg.count < EXPAND_MIN_TOKENS for seg in segments)
        qa = be.scratch("mla.qa", (t, nh * row), act)
        if absorbed:
            w_uk_t = self._w_uk_t.reshape(nh * lora, dn)
            self._heads(be, w_uk_t, 0, lora, lora, q, nh * qk, qk, qa, nh * row, row, t)
            qa_pe = qa.narrow(1, lora, nh * row - lora)
            w_q = self._q_last.weight
            self._heads(be, w_q, dn, dr, qk, src, src.shape[1], 0, qa_pe, nh * row, row, t)
            self._rope(be, qa.narrow(1, lora, nh * row - lora), (cos, sin), t, nh, nh * row, row)
        # one shared kv head: keys are the cache rows, values their latent part
        lat = be.scratch("mla.lat", (t, nh * lora), act)
        es = act.itemsize
        for seg, cache in zip(segments, caches, strict=False):
            if seg.past + seg.count > cache.capacity:
                raise ValueError(
                    f"sequence needs {seg.past + seg.count} cache slots, "
                    f"capacity is {cache.capacity}"
                )
            kc = cache.k
            if seg.past_dev:  # a step captured in a CUDA graph: the length is read on the device
                cap_row = cache.capacity * row
                be.call(
                    "kv_cache_append_dev",
                    ckv.data_ptr + seg.start * row * es, None, kc.data_ptr, None, seg.count, 1,
                    row, 0, cache.capacity, seg.past_dev, act, kc.dtype,
                )  # fmt: skip
                attend_captured(
                    be, seg, qa.data_ptr + seg.start * nh * row * es, kc.data_ptr, kc.data_ptr,
                    lat.data_ptr + seg.start * nh * lora * es, nh, 1, row, lora, nh * row,
                    nh * lora, cache.capacity, (cap_row, row, cap_row, row), self.scale, act,
                    kc.dtype,
                )  # fmt: skip
                continue
            be.call(
                "kv_cache_append",
                ckv.data_ptr + seg.start * row * es,
                None,
                kc.data_ptr,
                None,
                seg.count,
                1,
                row,
                0,
                cache.capacity,
                seg.past,
                act,
                kc.dtype,
            )
            if seg.count >= EXPAND_MIN_TOKENS:
                continue  # below, in the expanded form
            be.call(
                "attention",
                qa.data_ptr + seg.start * nh * row * es,
                kc.data_ptr,
                kc.data_ptr,
                lat.data_ptr + seg.start * nh * lora * es,
                seg.count,
                nh,
                1,
                row,
                lora,
                nh * row,
                nh * lora,
                seg.past + seg.count,
                cache.capacity * row,
                row,
                cache.capacity * row,
                row,
                seg.past,
                1,
                None,
                0,
                self.scale,
                act,
                kc.dtype,
            )
        # each head's latent output to its values' width, then o_proj
        dv = self.vdim
        o = be.scratch("mla.o", (t, nh * dv), act)
        if absorbed:
            w_kvb = self.kv_b_proj.weight
            self._heads(be, w_kvb, dn, dv, dn + dv, lat, nh * lora, lora, o, nh * dv, dv, t)
        for seg, cache in zip(segments, caches, strict=False):
            if seg.count >= EXPAND_MIN_TOKENS:  # overwrites the segment's rows of o
                self._expanded(be, q, seg, cache, cos, sin, o)
        return self.o_proj(be, o, out)

    def _expanded(
        self,
        be: Backend,
        q: Tensor,
        seg: Segment,
        cache: LatentCache,
        cos: Tensor,
        sin: Tensor,
        o: Tensor,
    ) -> None:
        """One segment's attention in the expanded form (a prefill): every cached latent mapped
        to its per-head keys and values by ``kv_b_proj``, then attention over heads of
        nope + rope key values and ``v`` values; the outputs go to the segment's rows of ``o``
        (``[t, nh * v]``). ``q`` holds the queries as ``q_proj`` / ``q_b_proj`` gave them."""
        act = q.dtype
        es = act.itemsize
        nh, dn, dr, dv, lora = self.nh, self.nope, self.rope, self.vdim, self.lora
        qk, row = dn + dr, lora + dr
        kv_len = seg.past + seg.count
        kc = cache.k
        latents = kc.narrow(1, 0, kv_len).reshape(kv_len, row)
        kvb = be.scratch("mla.kvb", (kv_len, nh * (dn + dv)), act)
        self.kv_b_proj(be, latents, kvb, kv_len, row, nh * (dn + dv))
        keys = be.scratch("mla.keys", (kv_len, nh * qk), act)
        k_pe = Tensor(kc.storage, (kv_len, dr), kc.dtype, (row, 1), kc.offset + lora)
        w_kvb = self.kv_b_proj.weight
        self._heads(be, w_kvb, 0, dn, dn + dv, latents, row, 0, keys, nh * qk, qk, kv_len)
        keys_pe = keys.narrow(1, dn, nh * qk - dn)  # every head's rope part: the shared k_pe
        eye = self._rope_copy.weight  # one identity for every head: a weight stride of 0
        self._heads(be, eye, 0, dr, 0, k_pe, row, 0, keys_pe, nh * qk, qk, kv_len)
        # the segment's queries: rope on their q_pe parts (the absorbed form reads only q_nope)
        qs = q.narrow(0, seg.start, seg.count)
        self._rope(
            be,
            qs.narrow(1, dn, nh * qk - dn),
            (cos.narrow(0, seg.start, seg.count), sin.narrow(0, seg.start, seg.count)),
            seg.count,
            nh,
            nh * qk,
            qk,
        )
        be.call(
            "attention",
            qs.data_ptr,
            keys.data_ptr,
            kvb.data_ptr + dn * es,
            o.data_ptr + seg.start * nh * dv * es,
            seg.count,
            nh,
            nh,
            qk,
            dv,
            nh * qk,
            nh * dv,
            kv_len,
            qk,
            nh * qk,
            dn + dv,
            nh * (dn + dv),
            seg.past,
            1,
            None,
            0,
            self.scale,
            act,
            act,
        )
