"""Decode steps of several sequences on a CUDA device as captured CUDA graphs (the BatchManager's).

Run op by op, a decode step of n sequences makes ~10 native calls per layer from Python, each with
host costs (ctypes, argument checks, the launch) that a small model's kernels cannot hide: on an
H200, 8 sequences of Qwen3-0.6B decode 2.7x faster replayed than call by call with the same
kernels, Qwen3-4B 1.15x (benchmarks/GPU_NOTES.md). :class:`BatchGraphDecoder` captures the step
once per row count and replays it:

- it owns ``slots`` KV caches of one capacity at fixed device addresses; a sequence takes a free
  slot for its whole life (its prompt is prefilled into that slot's cache by the op path as usual);
- the step over rows 0..n-1 (n = the highest slot in use + 1) is the model's own op path
  (``DecoderLayer.step`` on n rows), except that attention reads every row's cache pointers,
  capacity and length from device arrays (:class:`~inference_pio.nn.attention.KVTable`), so the
  same graph serves every step: the token ids and lengths are copied to the device before each
  replay (one 8 x slots byte copy from pinned memory);
- rows of free slots below n get their slot's capacity as length: the attention skips them (no
  cache write) and their logits are ignored.

The first step with n rows runs the calls eagerly (which also sizes every workspace and scratch
buffer), then captures them. Where capture fails (a driver or library that cannot capture a
call), the steps run through ``model.forward`` instead, with the same slot caches.
``INFERENCE_PIO_CUDA_BATCH_GRAPH=0`` turns the graphs off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from collections.abc import Sequence
from typing import Any

from inference_pio.backend import Backend
from inference_pio.dtypes import DType
from inference_pio.errors import NativeError
from inference_pio.nn.attention import Attention, KVTable, Segment
from inference_pio.nn.cuda_graph import has_fp8
from inference_pio.nn.cuda_graph import unsupported_reason as graph_unsupported_reason
from inference_pio.nn.decoder import DecoderLayer, DecoderModel, LayerCache
from inference_pio.nn.mlp import SwiGLU
from inference_pio.nn.moe import SoftmaxTopKMoE
from inference_pio.tensor import Tensor, tensor

#: Rows of the FP8 GEMV (toc_linear_fp8 reads the weight once for up to 16 rows).
FP8_MAX_ROWS = 16


def unsupported_reason(model: Any, slots: int) -> str | None:
    """Why ``model`` cannot decode ``slots`` sequences through captured graphs (None when it
    can): the dense layouts the batch-1 graph decoder takes, whose blocks keep the library's own
    step (a subclass overriding it might do host work a graph cannot replay)."""
    reason = graph_unsupported_reason(model, fp8_ok=True)
    if reason is not None:
        return reason
    if os.environ.get("INFERENCE_PIO_CUDA_BATCH_GRAPH") == "0":
        return "turned off by INFERENCE_PIO_CUDA_BATCH_GRAPH=0"
    if not 1 <= slots <= Backend.SCRATCH_MAX_ROWS:
        return f"{slots} sequences per step (at most {Backend.SCRATCH_MAX_ROWS})"
    if slots > FP8_MAX_ROWS and has_fp8(model):
        # above 16 rows linear_fp8 dequantizes into a shared scratch buffer that a later, larger
        # call may reallocate under a captured graph
        return f"FP8 weights with {slots} sequences per step (at most {FP8_MAX_ROWS})"
    for layer in model.layers:
        if type(layer).step is not DecoderLayer.step:
            return "a decoder layer with its own step"
        if type(layer.attention).__call__ is not Attention.__call__:
            return "an attention block with its own __call__"
        mlp = layer.mlp
        if isinstance(mlp, SoftmaxTopKMoE):
            # the device path of the block reads nothing back to the host: capturable
            if type(mlp).__call__ is not SoftmaxTopKMoE.__call__:
                return "a mixture of experts with its own __call__"
            if mlp.shared is not None:
                return "a mixture of experts with a shared expert"
            if not mlp.device_path_ok(model.be, model.act_dtype, slots):
                return "a mixture of experts outside the device path (bf16, k <= 64)"
        elif type(mlp).__call__ is not SwiGLU.__call__:
            return "an MLP with its own __call__"
    return None


class BatchGraphDecoder:
    """``slots`` KV caches of ``capacity`` tokens and the captured decode steps over them."""

    def __init__(self, model: DecoderModel, slots: int, capacity: int) -> None:
        reason = unsupported_reason(model, slots)
        if reason is not None:
            raise ValueError(f"batched CUDA graph decode is not supported here: {reason}")
        if not 0 < capacity <= model.max_context:
            raise ValueError(f"capacity {capacity} not in [1, {model.max_context}]")
        from inference_pio import cuda

        self.cuda = cuda
        self.model, self.slots, self.capacity = model, slots, capacity
        dev = model.device
        self.caches: list[LayerCache] = [model.new_cache(capacity) for _ in range(slots)]
        self._slot_of = {id(c): i for i, c in enumerate(self.caches)}
        self._free = list(range(slots))
        #: times each slot was acquired (a kept slot's tokens are its own while this is unchanged)
        self.uses = [0] * slots
        # token ids (int32 x slots), then lengths (int32 x slots); the host side in pinned memory
        self.io = Tensor.zeros((2 * slots,), DType.int32, dev)
        self._pinned = cuda.PinnedBuffer(8 * slots, dev)
        self._host = (ctypes.c_int32 * (2 * slots)).from_address(self._pinned.ptr)
        # per layer: key cache pointers | value cache pointers | capacities
        rows: list[int] = []
        aligned = True
        for li in range(len(model.layers)):
            kv = [c.layers[li] for c in self.caches]
            rows += [c.k.data_ptr for c in kv] + [c.v.data_ptr for c in kv] + [capacity] * slots
            aligned = aligned and all(
                c.k.data_ptr % 16 == 0 and c.v.data_ptr % 16 == 0 and capacity * c.head_dim % 8 == 0
                for c in kv
            )
        self._tables_dev = tensor(rows, DType.int64, dev)
        sms = cuda.device_info(dev)["multiprocessors"]
        nh = max(layer.attention.nh for layer in model.layers)
        hd = max(layer.attention.hd for layer in model.layers)
        nkv = min(layer.attention.nkv for layer in model.layers)
        most = max(1, min(32, capacity // 128, -(-2 * sms // nkv)))  # splits of a 1-row step
        ws = Tensor.empty((slots * nh * most * (hd + 2),), DType.float32, dev)
        base, lengths = self._tables_dev.data_ptr, self.io.data_ptr + 4 * slots
        self.tables = [
            KVTable(
                base + 24 * slots * li,
                base + 24 * slots * li + 8 * slots,
                base + 24 * slots * li + 16 * slots,
                lengths,
                capacity,
                model.cache_dtype,
                ws,
                aligned,
                sms,
            )
            for li in range(len(model.layers))
        ]
        self._graphs: dict[int, int] = {}
        self._buffers: dict[int, tuple[Tensor, ...]] = {}
        #: the capturing thread's scratch buffers, which the graphs write into (kept alive)
        self._scratch: list[dict[Any, Tensor]] = []
        self.captures_failed = False

    # ---- slots -------------------------------------------------------------------------------
    def acquire(self, prefer: LayerCache | None = None) -> LayerCache | None:
        """A free slot's cache, emptied (None when every slot is taken): ``prefer``'s when it is
        a free slot (a prefix cache picks the slot), else the lowest free one."""
        if not self._free:
            return None
        slot = self._free[0]
        if prefer is not None and self.is_free(prefer):
            slot = self._slot(prefer)
        self._free.remove(slot)
        self.uses[slot] += 1
        cache = self.caches[slot]
        cache.length = 0
        return cache

    def free_caches(self) -> list[LayerCache]:
        """The caches of the free slots, lowest slot first."""
        return [self.caches[i] for i in self._free]

    def is_free(self, cache: LayerCache) -> bool:
        """Whether ``cache`` is one of this decoder's slots and free."""
        slot = self._slot_of.get(id(cache))
        return slot is not None and self.caches[slot] is cache and slot in self._free

    def slot_uses(self, cache: LayerCache) -> int:
        """How many times ``cache``'s slot was acquired (see :attr:`uses`)."""
        return self.uses[self._slot(cache)]

    def reset(self) -> None:
        """Frees every slot (a new BatchManager run owns all of them)."""
        self._free = list(range(self.slots))

    def release(self, cache: LayerCache) -> None:
        """Returns ``cache``'s slot (a sequence has finished)."""
        slot = self._slot(cache)
        if slot not in self._free:
            self._free.append(slot)
            self._free.sort()

    def _slot(self, cache: LayerCache) -> int:
        slot = self._slot_of.get(id(cache))
        if slot is None or self.caches[slot] is not cache:
            raise ValueError("the cache is not one of this decoder's slots")
        return slot

    # ---- steps -------------------------------------------------------------------------------
    def step(self, batch: Sequence[tuple[int, LayerCache]]) -> list[Tensor]:
        """Feeds each (token, slot cache) pair its token and returns each sequence's next-token
        logits: device views [vocab], valid until the next step."""
        if not batch:
            raise ValueError("step: no sequences")
        vocab = self.model.embed.vocab
        slots = [self._slot(c) for _, c in batch]
        if len(set(slots)) != len(slots):
            raise ValueError("step: a sequence appears twice")
        for tok, cache in batch:
            if not 0 <= tok < vocab:
                raise ValueError(f"token id {tok} outside the vocabulary [0, {vocab})")
            if cache.length + 1 > cache.capacity:
                raise ValueError(
                    f"step: {cache.length} + 1 tokens exceed the cache capacity {cache.capacity}"
                )
        if self.captures_failed:
            return self.model.forward([([tok], cache) for tok, cache in batch])
        n = max(slots) + 1
        host, s = self._host, self.slots
        for i in range(n):  # free rows: length = capacity, which the attention skips
            host[i], host[s + i] = 0, self.capacity
        for (tok, cache), slot in zip(batch, slots, strict=True):
            host[slot], host[s + slot] = tok, cache.length
        cuda = self.cuda
        cuda.set_device(self.model.device)
        cuda.memcpy(self.io.data_ptr, self._pinned.ptr, 8 * s, cuda.H2D, blocking=False)
        graph = self._graphs.get(n)
        if graph is None:
            self._record(n)  # this step, eagerly; then the graph for the next ones
            if not self._capture(n):
                self.captures_failed = True
        else:
            cuda.check(cuda.lib().toc_graph_launch(graph, 1), "toc_graph_launch")
        for _, cache in batch:
            cache.length += 1
        logits = self._buffers[n][-1]
        #: the step's logits [rows, vocab] and each sequence's row (for batched greedy sampling)
        self.last_logits, self.last_slots = logits, slots
        return [logits[slot] for slot in slots]

    def _record(self, n: int) -> None:
        """Issues one decode step over rows 0..n-1 (into a graph while capturing)."""
        m = self.model
        be, act = m.be, m.act_dtype
        bufs = self._buffers.get(n)
        if bufs is None:
            dev = m.device
            bufs = self._buffers[n] = (
                Tensor.empty((n, m.hidden), act, dev),
                Tensor.empty((n, m.hidden), act, dev),
                Tensor.empty((n, m.rotary.rot_dim), act, dev),
                Tensor.empty((n, m.rotary.rot_dim), act, dev),
                Tensor.empty((n, m.vocab_size), act, dev),
            )
        x, h, cos, sin, logits = bufs
        ids = self.io.narrow(0, 0, n)
        lengths = self.io.narrow(0, self.slots, n)
        m.embed(be, ids, x)
        m.rotary.tables(be, lengths, act, out=(cos, sin))
        segments = [Segment(i, 1, 0) for i in range(n)]  # positions come from the tables
        m.run_layers(be, x, h, segments, self.tables, cos, sin)
        m.norm(be, x, h)
        m.lm_head(be, h, logits)
        scratch = be.scratch_buffers()
        if not any(s is scratch for s in self._scratch):
            self._scratch.append(scratch)

    def _capture(self, n: int) -> bool:
        cuda = self.cuda
        lib = cuda.lib()
        cuda.synchronize(self.model.device)
        try:
            cuda.check(lib.toc_graph_begin(), "toc_graph_begin")
            try:
                self._record(n)
            except BaseException:
                lib.toc_graph_abort()
                raise
            out = ctypes.c_void_p()
            cuda.check(lib.toc_graph_end(ctypes.byref(out)), "toc_graph_end")
        except NativeError as exc:
            warnings.warn(
                f"batched decode steps cannot be captured in a CUDA graph ({exc}); "
                "running them op by op",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self._graphs[n] = out.value or 0
        return True

    def __del__(self) -> None:
        for g in getattr(self, "_graphs", {}).values():
            if g:
                with contextlib.suppress(Exception):
                    self.cuda.lib().toc_graph_destroy(g)


def for_model(model: Any, slots: int, capacity: int) -> BatchGraphDecoder | None:
    """The model's batched graph decoder with at least ``slots`` slots of ``capacity`` tokens
    (made on first use, then reused while it is large enough), or None where the model, the
    device or the settings do not allow one (the BatchManager then runs steps op by op)."""
    if getattr(getattr(model, "device", None), "type", "cpu") != "cuda":
        return None
    if unsupported_reason(model, slots) is not None:
        return None
    dec: BatchGraphDecoder | None = getattr(model, "_cuda_batch_graph", None)
    if dec is not None and dec.slots >= slots and dec.capacity >= capacity:
        return dec
    cap = min(model.max_context, max(256, 1 << max(0, (capacity - 1).bit_length())))
    vars(model)["_cuda_batch_graph"] = None  # frees the old slots first
    try:
        dec = BatchGraphDecoder(model, slots, cap)
    except NativeError as exc:  # e.g. no device memory for the slots' caches
        warnings.warn(
            f"batched CUDA graph decode unavailable ({exc}); running steps op by op",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    vars(model)["_cuda_batch_graph"] = dec
    return dec


__all__ = ["BatchGraphDecoder", "for_model", "unsupported_reason"]
