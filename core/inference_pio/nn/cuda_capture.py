"""Batch-1 decode of any decoder on a CUDA device as its op-by-op step captured in one CUDA graph.

The graph decoders of :mod:`inference_pio.nn.cuda_graph` run hand-written steps for the layers
they know (dense Qwen3, Qwen3-MoE). Every other :class:`~inference_pio.nn.decoder.DecoderModel`
(MLA with sigmoid-routed experts, Gated DeltaNet hybrids, a plugin's own blocks) decodes op by op:
tens of native calls a layer, each a Python call and a kernel launch, so a step costs far more on
the host than on the GPU. :class:`CapturedStepDecoder` runs the model's own Python step once
under stream capture (:meth:`~inference_pio.nn.decoder.DecoderModel.captured_step`) and replays
the recorded kernels per token:

- the token id and the cache slot come from device counters, so the same graph serves every
  token; the blocks read the cache length through ``Segment.past_dev`` (``kv_cache_append_dev``,
  ``attention_dev``), the rotary tables are rows of tables for every slot of the cache;
- the capture owns every buffer its step wrote through: the thread's scratch is swapped for a
  private set (``Backend.private_scratch``) and every device allocation made while capturing is
  kept alive with the graph (``cuda.keep_allocations``), so no later call reuses them;
- the step ends with a greedy argmax on the device and ``toc_decode_step_end``, so greedy decoding
  replays up to ``chunk`` steps per host round trip, and sampled decoding draws on the device where
  it can (see :class:`~inference_pio.nn.cuda_graph.GraphStepRunner`).

A block opts in with a ``cuda_capturable`` attribute (True, or a method ``(backend, act_dtype) ->
bool``): at one token its native calls must depend on the step only through ``past_dev``, and it
must read nothing back to the host. :func:`unsupported_reason` names the first block that does not.
``INFERENCE_PIO_CUDA_CAPTURE=0`` turns captured decoding off (every step then runs op by op).
"""

from __future__ import annotations

import os
from typing import Any

from inference_pio.backend import Backend
from inference_pio.dtypes import DType
from inference_pio.nn.cuda_graph import GraphStepRunner, graph_basics_reason
from inference_pio.nn.decoder import DecoderModel
from inference_pio.tensor import Storage, Tensor, tensor


def enabled() -> bool:
    """Whether captured decoding is on (``INFERENCE_PIO_CUDA_CAPTURE``, default on)."""
    return os.environ.get("INFERENCE_PIO_CUDA_CAPTURE", "1") not in ("0", "false", "no", "off")


def block_capturable(block: Any, be: Backend, act: DType) -> bool:
    """Whether ``block`` (an attention, mixer or MLP block) says a captured step may run it."""
    flag = getattr(block, "cuda_capturable", False)
    if callable(flag):
        return bool(flag(be, act))
    return flag is True


def unsupported_reason(model: Any) -> str | None:
    """Why ``model``'s decode step cannot be captured (None when it can)."""
    basics = graph_basics_reason(model)
    if basics is not None:
        return basics
    if not enabled():
        return "INFERENCE_PIO_CUDA_CAPTURE=0"
    for i, layer in enumerate(model.layers):
        for block in (layer.attention, layer.mlp):
            if not block_capturable(block, model.be, model.act_dtype):
                return f"layer {i}: {type(block).__name__} is not cuda_capturable"
    return None


class CapturedStepDecoder(GraphStepRunner):
    """``model``'s op-by-op decode step captured in a CUDA graph over a cache of ``capacity``
    tokens (see the module docstring). Raises ValueError for a model :func:`unsupported_reason`
    refuses, and NativeError when the capture fails (an op that synchronises, say)."""

    def __init__(self, model: DecoderModel, capacity: int, chunk: int = 32) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the decode step of this model cannot be captured: {reason}")
        if capacity < 2:
            raise ValueError(f"capacity {capacity}: a captured decode step needs at least 2")
        from inference_pio import cuda

        self.cuda = cuda
        self.model, self.capacity, self.chunk = model, capacity, chunk
        self.graph = None
        dev, act = model.device, model.act_dtype
        self.cache = model.new_cache(capacity)
        # [token, slot, step, unused]; the greedy argmax packed as one 64-bit word
        self.ctr = Tensor.zeros((4,), DType.int32, dev)
        self.argmax = Tensor.zeros((1,), DType.int64, dev)
        self.tokens = Tensor.zeros((chunk,), DType.int32, dev)
        self.cos, self.sin = model.rotary.tables(
            model.be, tensor(list(range(capacity)), DType.int32, dev), act
        )
        self.position_offset = 0
        #: What the captured kernels point into: the step's scratch and every buffer it allocated.
        self._scratch: dict[Any, Tensor] = {}
        self._kept: list[Storage] = []
        # one step op by op on a throwaway cache first: whatever a block makes on its first call
        # (device tables uploaded from the host, say) must exist before the capture starts
        model.forward([([0], model.new_cache(2))])
        self._capture_once()

    def _record(self) -> None:
        m, be = self.model, self.model.be
        with be.private_scratch(self._scratch), self.cuda.keep_allocations(self._kept):
            self.logits = m.captured_step(self.ctr, self.cos, self.sin, self.cache)
            be.call(
                "decode_argmax",
                self.logits.data_ptr, self.logits.dtype, m.vocab_size, self.argmax.data_ptr,
            )  # fmt: skip
            c = self.ctr.data_ptr
            be.call(
                "decode_step_end", self.argmax.data_ptr, c, c + 4, self.tokens.data_ptr, c + 8,
                self.chunk,
            )  # fmt: skip


__all__ = ["CapturedStepDecoder", "block_capturable", "enabled", "unsupported_reason"]
