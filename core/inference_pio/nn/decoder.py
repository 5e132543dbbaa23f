"""Pre-norm decoder layer and the decoder-only stack with embedding and LM head.

``DecoderModel.forward(batch)`` takes ``[(new_token_ids, cache), ...]``, packs every sequence's
new tokens into one [T, hidden] activation so the projections and MLP read each weight once per
step for the whole batch, runs attention per sequence against its own cache, and returns the
logits of each sequence's last new token.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Mapping, Sequence

from inference_pio.backend import Backend, backend
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.nn import decode_plan
from inference_pio.nn.attention import Attention, KVCache, KVTable, Segment
from inference_pio.nn.decode_plan import DecodePlan
from inference_pio.nn.layers import Embedding, Linear, RMSNorm, Rotary
from inference_pio.tensor import Tensor

Mlp = Callable[[Backend, Tensor, Tensor], Tensor]
#: ``(backend, x)``: work on the residual stream ``x`` between two layers (DecoderModel.run_layers)
LayerHook = Callable[[Backend, Tensor], None]

_RECORDING_LOCK = threading.Lock()  # one recording decode step per backend at a time


class DecoderLayer:
    """``x += attn(norm1(x)); x += mlp(norm2(x))``.

    ``mlp`` is any callable ``(backend, x, out) -> out`` (SwiGLU, or a plugin's MoE block).
    Batch-1 CPU decode is replayed from recorded native calls (nn.decode_plan) only when the
    attention and the MLP both have a true ``replayable`` attribute: a block whose calls depend on
    the data (an MoE router picking experts) or on the step in any other way must not set it."""

    def __init__(
        self, input_norm: RMSNorm, attention: Attention, post_norm: RMSNorm, mlp: Mlp
    ) -> None:
        self.input_norm, self.attention = input_norm, attention
        self.post_norm, self.mlp = post_norm, mlp

    def __call__(
        self,
        be: Backend,
        x: Tensor,
        segments: list[Segment],
        caches: list[KVCache] | KVTable,
        cos: Tensor,
        sin: Tensor,
    ) -> None:
        h = be.scratch("layer.h", x.shape, x.dtype)
        self.input_norm(be, x, h)
        self.step(be, x, h, segments, caches, cos, sin, None)

    def step(
        self,
        be: Backend,
        x: Tensor,
        h: Tensor,
        segments: list[Segment],
        caches: list[KVCache] | KVTable,
        cos: Tensor,
        sin: Tensor,
        next_norm: RMSNorm | None,
    ) -> None:
        """The layer after its input norm: ``h`` holds ``input_norm(x)``. Updates ``x`` and, when
        ``next_norm`` is given (the next layer's input norm), leaves ``next_norm(x)`` in ``h``
        (the last residual add and that norm run as one fused op)."""
        o = be.scratch("layer.o", x.shape, x.dtype)
        self.attention(be, h, segments, caches, cos, sin, o)
        self.post_norm.add_and_norm(be, x, o, h)
        self.mlp(be, h, o)
        if next_norm is None:
            be.call("add", x.data_ptr, o.data_ptr, x.data_ptr, x.numel, x.dtype)
        else:
            next_norm.add_and_norm(be, x, o, h)


class LayerCache:
    """One sequence's KV caches for every layer, and how many tokens they hold."""

    def __init__(self, layers: list[KVCache], capacity: int) -> None:
        self.layers = layers
        self.capacity = capacity
        self.length = 0
        #: Added to the cache length to give a new token's rotary position (Qwen3-VL's MRoPE
        #: delta after an image prompt: images advance the position by less than their tokens).
        self.position_offset = 0
        #: Batch-1 CPU decode steps of this sequence, recorded and replayed (decode_plan).
        self.plan: DecodePlan | None = None

    def copyable_to(self, dst: LayerCache) -> bool:
        """Whether :meth:`copy_into` can copy this cache into ``dst``: as many layers, each of
        the same type with a ``copy_to(dst, length)`` method (the core's caches have one; a
        plugin's own cache type opts in by defining it)."""
        return len(self.layers) == len(dst.layers) and all(
            type(a) is type(b) and callable(getattr(a, "copy_to", None))
            for a, b in zip(self.layers, dst.layers, strict=True)
        )

    def copy_into(self, dst: LayerCache) -> None:
        """Copies what this cache holds (its ``length`` tokens, every layer) into ``dst``, a cache
        of the same model on the same device, and gives ``dst`` the same length and position
        offset. On a CUDA device the copies are queued on the device's stream."""
        if not self.copyable_to(dst):
            raise ValueError("the two caches do not match (or a layer's cache cannot be copied)")
        if self.length > dst.capacity:
            raise ValueError(f"{self.length} cached tokens do not fit a cache of {dst.capacity}")
        for a, b in zip(self.layers, dst.layers, strict=True):
            a.copy_to(b, self.length)
        dst.length = self.length
        dst.position_offset = self.position_offset


class DecoderModel:
    """Embedding → decoder layers → final norm → LM head (tied or not)."""

    def __init__(
        self,
        embed: Embedding,
        layers: Sequence[DecoderLayer],
        norm: RMSNorm,
        lm_head: Linear,
        rotary: Rotary,
        act_dtype: DType,
        max_context: int,
        device: Device | str = "cpu",
        cache_dtype: DType | None = None,
        layer_devices: Sequence[Device] | None = None,
        embed_device: Device | None = None,
    ) -> None:
        """``device`` holds the final norm, the LM head and the logits; ``layer_devices`` and
        ``embed_device`` (default: ``device``) place the layers and the embedding elsewhere
        (a hybrid CPU/GPU model, :mod:`inference_pio.scheduler`)."""
        self.embed, self.layers, self.norm, self.lm_head = embed, list(layers), norm, lm_head
        self.rotary = rotary
        self.act_dtype = act_dtype
        self.cache_dtype = cache_dtype or act_dtype
        self.max_context = max_context
        self.vocab_size = lm_head.out_features
        self.hidden = embed.dim
        self.device = Device.parse(device)
        self.be = backend(self.device)
        if layer_devices is not None and len(layer_devices) != len(self.layers):
            raise ValueError(f"{len(layer_devices)} layer devices for {len(self.layers)} layers")
        self.layer_devices = (
            [Device.parse(d) for d in layer_devices]
            if layer_devices is not None
            else [self.device] * len(self.layers)
        )
        self.embed_device = Device.parse(embed_device) if embed_device else self.device
        #: Whether parts of the model run on another device than ``device``.
        self.hybrid = self.embed_device != self.device or any(
            d != self.device for d in self.layer_devices
        )
        #: Whether batch-1 CPU decode steps may be recorded and replayed (every block says so).
        self.replayable = all(
            getattr(block, "replayable", False) is True
            for layer in self.layers
            for block in (layer.attention, layer.mlp)
        )

    def decode_bytes_per_token(self, context: int) -> int:
        """Bytes one batch-1 decode step reads at ``context`` cached tokens: every weight except
        the embedding table (one row of it), the LM head, and the KV cache. A block with a
        ``decode_weight_bytes()`` method (a mixture of experts: the experts one token runs)
        says itself what it reads."""
        seen: set[int] = set()
        total = 0

        def add(t: Tensor) -> None:
            nonlocal total
            if t.data_ptr not in seen:  # tied weights count once
                seen.add(t.data_ptr)
                total += t.nbytes

        for layer in self.layers:
            for obj in (layer.input_norm, layer.post_norm, layer.attention, layer.mlp):
                own = getattr(obj, "decode_weight_bytes", None)
                if own is not None:
                    total += int(own())
                    continue
                for t in _weights_of(obj):
                    add(t)
        add(self.norm.weight)
        add(self.lm_head.weight)
        if self.lm_head.weight.data_ptr != self.embed.weight.data_ptr:
            total += self.embed.dim * self.embed.weight.dtype.itemsize
        kv = sum(_kv_values_per_token(layer.attention) for layer in self.layers)
        return total + kv * context * self.cache_dtype.itemsize

    def new_cache(self, capacity: int) -> LayerCache:
        """Preallocated caches for ``capacity`` tokens."""
        if not 0 < capacity <= self.max_context:
            raise ValueError(f"cache capacity {capacity} not in [1, {self.max_context}]")
        return LayerCache(
            [
                layer.attention.new_cache(capacity, self.cache_dtype, dev)
                for layer, dev in zip(self.layers, self.layer_devices, strict=True)
            ],
            capacity,
        )

    def forward(self, batch: Sequence[tuple[Sequence[int], LayerCache]]) -> list[Tensor]:
        """Appends each sequence's new tokens to its cache; returns the logits of each
        sequence's last new token."""
        if (
            len(batch) == 1
            and len(batch[0][0]) == 1
            and self.device.type == "cpu"
            and self.replayable
            and decode_plan.enabled()
        ):
            return [self._decode_one(batch[0][0][0], batch[0][1])]
        return self._forward(batch)

    def forward_all(self, tokens: Sequence[int], cache: LayerCache) -> list[Tensor]:
        """Appends ``tokens`` to one sequence's ``cache``; returns the logits of every one of
        them, not only the last (the rows a verification step of speculative decoding needs).

        On the CPU each row is bitwise what a batch-1 decode step of that token gives: the
        projections and MLPs run over all rows at once (the kernels compute each row of a small
        call as they compute it alone), and attention runs row by row, each row as the decode
        step at its position would (a multi-row attention call splits its keys otherwise). On
        other devices the tokens run as one prefill-like segment (equal up to rounding)."""
        n = len(tokens)
        if n == 0:
            raise ValueError("forward_all: no tokens")
        if self.device.type != "cpu" or self.hybrid:
            return self._forward([(tokens, cache)], every_row=True)
        if cache.length + n > cache.capacity:
            raise ValueError(
                f"forward: {cache.length} + {n} tokens exceed the cache capacity {cache.capacity}"
            )
        ids = [int(t) for t in tokens]
        for tok in ids:
            if not 0 <= tok < self.embed.vocab:
                raise ValueError(f"token id {tok} outside the vocabulary [0, {self.embed.vocab})")
        # one single-row segment per token, all over the same cache, each at its own length
        segments = [Segment(i, 1, cache.length + i) for i in range(n)]
        first = cache.length + cache.position_offset
        with self.be.scratch_scope():
            return self._run(
                [([t], cache) for t in ids], segments, ids, list(range(first, first + n))
            )

    def _decode_one(self, token: int, cache: LayerCache) -> Tensor:
        """One batch-1 CPU decode step: replayed from the cache's plan once it is recorded."""
        plan = cache.plan
        if plan is not None and plan.ready and plan.thread == threading.get_ident():
            if not 0 <= token < self.embed.vocab:
                raise ValueError(f"token id {token} outside the vocabulary [0, {self.embed.vocab})")
            if cache.length + 1 > cache.capacity:
                raise ValueError(
                    f"forward: {cache.length} + 1 tokens exceed the cache capacity {cache.capacity}"
                )
            logits = plan.run(token, cache.length, cache.position_offset)
            cache.length += 1
            return logits
        if plan is None or plan.thread != threading.get_ident():
            be = self.be
            plan = cache.plan = decode_plan.DecodePlan(
                be.scratch("model.ids", (1,), DType.int32),
                be.scratch("model.pos", (1,), DType.int32),
                be.scratch("model.logits", (1, self.vocab_size), self.act_dtype),
                be.scratch_buffers(),
            )
        if plan.refused:
            return self._forward([([token], cache)])[0]
        calls: list[decode_plan.Call] = []
        length = cache.length
        be = self.be
        with _RECORDING_LOCK:
            busy = be.recording is not None
            if not busy:
                be.recording, be.recording_thread = calls, threading.get_ident()
        if busy:  # another thread is recording on this backend: run normally
            return self._forward([([token], cache)])[0]
        try:
            logits = self._forward([([token], cache)])[0]
        finally:
            be.recording = None
        plan.add_recording(length, calls)
        return logits

    def run_layers(
        self,
        be: Backend,
        x: Tensor,
        h: Tensor,
        segments: list[Segment],
        caches: Sequence[list[KVCache] | KVTable],
        cos: Tensor,
        sin: Tensor,
        after_layer: Mapping[int, LayerHook] | None = None,
    ) -> None:
        """Every layer over the embedded rows ``x`` (updated in place; ``h`` is scratch of the
        same shape), layer i attending over ``caches[i]``; ``after_layer[i](be, x)`` runs on the
        residual stream once layer i is done."""
        hooks = after_layer or {}
        self.layers[0].input_norm(be, x, h)
        last = len(self.layers) - 1
        for li, layer in enumerate(self.layers):
            nxt = self.layers[li + 1].input_norm if li < last else None
            hook = hooks.get(li)
            if hook is None:
                layer.step(be, x, h, segments, caches[li], cos, sin, nxt)
                continue
            layer.step(be, x, h, segments, caches[li], cos, sin, None)
            hook(be, x)
            if nxt is not None:
                nxt(be, x, h)

    def prefill_embedded(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: LayerCache,
        after_layer: Mapping[int, LayerHook] | None = None,
    ) -> Tensor:
        """One sequence's prefill from rows already embedded: ``x [T, hidden]`` (the compute
        dtype, on this device; used as the residual stream and overwritten) with its rotary
        tables ``cos``/``sin`` ``[T, rot_dim]`` (multimodal positions, say). ``after_layer`` as in
        :meth:`run_layers`. Appends the T tokens to ``cache``; returns the last token's logits."""
        if self.hybrid:
            raise ValueError("prefill_embedded: not available for a model split across devices")
        t = x.shape[0] if x.ndim == 2 else 0
        if x.shape != (t, self.hidden) or t == 0 or x.dtype != self.act_dtype:
            raise ValueError(
                f"prefill_embedded: x must be [T, {self.hidden}] {self.act_dtype.name}, "
                f"got {x.shape} {x.dtype.name}"
            )
        for name, table in (("cos", cos), ("sin", sin)):
            if table.shape != (t, self.rotary.rot_dim) or table.dtype != self.act_dtype:
                raise ValueError(
                    f"prefill_embedded: {name} must be [{t}, {self.rotary.rot_dim}] "
                    f"{self.act_dtype.name}, got {table.shape} {table.dtype.name}"
                )
            if table.device != self.device:
                raise ValueError(
                    f"prefill_embedded: {name} is on {table.device}, not {self.device}"
                )
        if x.device != self.device:
            raise ValueError(f"prefill_embedded: x is on {x.device}, not {self.device}")
        if cache.length + t > cache.capacity:
            raise ValueError(
                f"prefill_embedded: {cache.length} + {t} tokens exceed the cache capacity "
                f"{cache.capacity}"
            )
        be = self.be
        segments = [Segment(0, t, cache.length)]
        with be.scratch_scope():
            h = be.scratch("layer.h", (t, self.hidden), self.act_dtype)
            caches = [[layer_cache] for layer_cache in cache.layers]
            self.run_layers(be, x, h, segments, caches, cos, sin, after_layer)
            cache.length += t
            return self._logits(segments, x, small=False)[0]

    def captured_step(
        self, counters: Tensor, cos_table: Tensor, sin_table: Tensor, cache: LayerCache
    ) -> Tensor:
        """The ops of one batch-1 decode step with its inputs read on the device, for capture in
        a CUDA graph (:mod:`inference_pio.nn.cuda_capture`): the token id is ``counters[0]`` and
        the cache slot ``counters[1]`` (int32 on this device, read when the graph replays); the
        rotary tables are those rows of ``cos_table`` / ``sin_table`` ([capacity, rot_dim]).
        The blocks see ``Segment(0, 1, 1, past_dev=&counters[1])``. Returns the logits [1, vocab];
        ``cache.length`` is not touched."""
        be, act = self.be, self.act_dtype
        ids, slot = counters.narrow(0, 0, 1), counters.narrow(0, 1, 1)
        x = be.scratch("model.x", (1, self.hidden), act)
        self.embed(be, ids, x)
        rot = self.rotary.rot_dim
        cos = be.scratch("model.cos", (1, rot), act)
        sin = be.scratch("model.sin", (1, rot), act)
        for table, out in ((cos_table, cos), (sin_table, sin)):
            be.call(
                "embedding", slot.data_ptr, DType.int32, 1, table.data_ptr, table.dtype,
                table.shape[0], rot, out.data_ptr, act,
            )  # fmt: skip
        h = be.scratch("layer.h", (1, self.hidden), act)
        # past=1 stands for the length at replay: no block may take this for a first step
        segments = [Segment(0, 1, 1, slot.data_ptr)]
        self.run_layers(be, x, h, segments, [[c] for c in cache.layers], cos, sin)
        (row,) = self._logits(segments, x, small=False)
        return row.reshape(1, self.vocab_size)

    def _forward(
        self, batch: Sequence[tuple[Sequence[int], LayerCache]], every_row: bool = False
    ) -> list[Tensor]:
        be = self.be
        segments: list[Segment] = []
        ids: list[int] = []
        positions: list[int] = []
        for tokens, cache in batch:
            n = len(tokens)
            if n == 0:
                raise ValueError("forward: a sequence has no new tokens")
            if cache.length + n > cache.capacity:
                raise ValueError(
                    f"forward: {cache.length} + {n} tokens exceed the cache capacity "
                    f"{cache.capacity}"
                )
            segments.append(Segment(len(ids), n, cache.length))
            ids.extend(tokens)
            first = cache.length + cache.position_offset
            positions.extend(range(first, first + n))
        for tok in ids:
            if not 0 <= tok < self.embed.vocab:
                raise ValueError(f"token id {tok} outside the vocabulary [0, {self.embed.vocab})")
        if self.hybrid:
            return self._run_hybrid(batch, segments, ids, positions, every_row)
        # one set of activation buffers for the whole call, whatever its length (a prefill's
        # layers reuse them instead of allocating and freeing ~8 per layer)
        with be.scratch_scope():
            return self._run(batch, segments, ids, positions, every_row)

    def _run_hybrid(
        self,
        batch: Sequence[tuple[Sequence[int], LayerCache]],
        segments: list[Segment],
        ids: list[int],
        positions: list[int],
        every_row: bool = False,
    ) -> list[Tensor]:
        """``_forward`` over layers on several devices: each run of layers on one device gets
        the residual stream copied to it (once a step at a CPU/GPU boundary) and its own rotary
        tables; the final norm and the LM head run on ``device``."""
        t = len(ids)
        ebe = backend(self.embed_device)
        ids_t = Tensor.from_list(ids, DType.int32).to(self.embed_device)
        x = Tensor.empty((t, self.hidden), self.act_dtype, self.embed_device)
        self.embed(ebe, ids_t, x)
        pos = Tensor.from_list(positions, DType.int32)
        lo = 0
        while lo < len(self.layers):
            dev = self.layer_devices[lo]
            hi = lo
            while hi < len(self.layers) and self.layer_devices[hi] == dev:
                hi += 1
            be = backend(dev)
            x = x.to(dev)
            cos, sin = self.rotary.tables(be, pos.to(dev), x.dtype)
            h = Tensor.empty(x.shape, x.dtype, dev)
            caches = [[c.layers[li] for _, c in batch] for li in range(lo, hi)]
            with be.scratch_scope():
                self._run_range(be, x, h, segments, caches, cos, sin, lo, hi)
            lo = hi
        x = x.to(self.device)
        for seg, (_, cache) in zip(segments, batch, strict=False):
            cache.length += seg.count
        with self.be.scratch_scope():
            return self._logits(segments, x, small=False, every_row=every_row)

    def _run_range(
        self,
        be: Backend,
        x: Tensor,
        h: Tensor,
        segments: list[Segment],
        caches: Sequence[list[KVCache]],
        cos: Tensor,
        sin: Tensor,
        lo: int,
        hi: int,
    ) -> None:
        """Layers ``lo..hi-1`` (one device) over the residual stream ``x``."""
        layers = self.layers[lo:hi]
        layers[0].input_norm(be, x, h)
        for j, layer in enumerate(layers):
            nxt = layers[j + 1].input_norm if j + 1 < len(layers) else None
            layer.step(be, x, h, segments, caches[j], cos, sin, nxt)

    def _run(
        self,
        batch: Sequence[tuple[Sequence[int], LayerCache]],
        segments: list[Segment],
        ids: list[int],
        positions: list[int],
        every_row: bool = False,
    ) -> list[Tensor]:
        """``_forward`` once the batch is checked: every buffer but the logits is scratch."""
        be = self.be
        t = len(ids)
        # CPU calls of up to SCRATCH_MAX_ROWS rows: fixed buffers, so decode plans can replay them
        small = self.device.type == "cpu" and t <= Backend.SCRATCH_MAX_ROWS
        ids_t = _int32_scratch(be, "model.ids", ids)
        pos_t = _int32_scratch(be, "model.pos", positions)
        x = be.scratch("model.x", (t, self.hidden), self.act_dtype)
        cos = be.scratch("model.cos", (t, self.rotary.rot_dim), self.act_dtype)
        sin = be.scratch("model.sin", (t, self.rotary.rot_dim), self.act_dtype)
        self.rotary.tables(be, pos_t, self.act_dtype, out=(cos, sin))
        self.embed(be, ids_t, x)
        h = be.scratch("layer.h", (t, self.hidden), self.act_dtype)
        caches = [[c.layers[li] for _, c in batch] for li in range(len(self.layers))]
        self.run_layers(be, x, h, segments, caches, cos, sin)
        for seg, (_, cache) in zip(segments, batch, strict=False):
            cache.length += seg.count
        return self._logits(segments, x, small, every_row)

    def _logits(
        self, segments: list[Segment], x: Tensor, small: bool, every_row: bool = False
    ) -> list[Tensor]:
        """The final norm and LM head over each segment's last row of ``x`` (``every_row``:
        over every row); ``small`` puts the logits in scratch and returns copies (CPU decode
        plans replay the calls)."""
        be = self.be
        if every_row:
            rows = [r for seg in segments for r in range(seg.start, seg.start + seg.count)]
        else:
            rows = [seg.start + seg.count - 1 for seg in segments]
        b = len(rows)
        es = self.act_dtype.itemsize
        last = be.scratch("model.last", (b, self.hidden), self.act_dtype)
        for i, r in enumerate(rows):
            row = r * self.hidden * es
            be.call(
                "rms_norm",
                x.data_ptr + row,
                self.norm.weight.data_ptr,
                None,
                last.data_ptr + i * self.hidden * es,
                1,
                1,
                self.hidden,
                self.hidden,
                self.hidden,
                self.hidden,
                self.hidden,
                self.hidden,
                self.hidden,
                self.norm.eps,
                self.norm.variant,
                self.act_dtype,
                self.norm.weight.dtype,
                self.act_dtype,
            )
        if small:
            logits = be.scratch("model.logits", (b, self.vocab_size), self.act_dtype)
            self.lm_head(be, last, logits)
            logits = decode_plan.copy_logits(logits)
        else:
            logits = Tensor.empty((b, self.vocab_size), self.act_dtype, self.device)
            self.lm_head(be, last, logits)
        return [logits[i] for i in range(b)]


def _int32_scratch(be: Backend, name: str, values: list[int]) -> Tensor:
    """Scratch int32 [len(values)] on ``be``'s device holding ``values`` (one packed copy; on a
    CUDA device an asynchronous copy on the op stream, so it is ordered after earlier kernels
    that read the buffer)."""
    n = len(values)
    out = be.scratch(name, (n,), DType.int32)
    host = (ctypes.c_int32 * n)(*values)
    if be.device.type == "cpu":
        ctypes.memmove(out.data_ptr, host, 4 * n)
    else:
        from inference_pio import cuda

        cuda.memcpy(out.data_ptr, ctypes.addressof(host), 4 * n, cuda.H2D, blocking=False)
    return out


def _kv_values_per_token(attention: object) -> int:
    """Cached values a token adds to one layer: keys and values of every kv head, or what the
    block says (``kv_values_per_token()``: a latent cache, say)."""
    own = getattr(attention, "kv_values_per_token", None)
    if own is not None:
        return int(own())
    return 2 * int(attention.nkv) * int(attention.hd)  # type: ignore[attr-defined]


def _weights_of(block: object) -> list[Tensor]:
    """The weight tensors held by a block (Linear/RMSNorm attributes, one level deep)."""
    found: list[Tensor] = []
    for value in vars(block).values():
        if isinstance(value, Tensor):
            found.append(value)
        elif hasattr(value, "weight") and isinstance(value.weight, Tensor):
            found.append(value.weight)
            bias = getattr(value, "bias", None)
            if isinstance(bias, Tensor):
                found.append(bias)
    return found
