"""Batch-1 decode on a CUDA device as one captured CUDA graph per token.

:class:`CudaGraphDecoder` owns static buffers at fixed device addresses (token id, position, step
counter, a KV cache of fixed capacity) and captures one decode step of a
:class:`~inference_pio.nn.decoder.DecoderModel`. By default (bf16 models; see
:func:`fused_unsupported_reason`) the step is the fused decoder of the CUDA library
(``toc_decoder_step``, src/cuda/decoder.cu): one cooperative kernel for the whole token, with
grid-wide barriers between its stages. Otherwise (or with ``INFERENCE_PIO_CUDA_FUSED_DECODE=0``, or
``fused=False``) it is the multi-kernel step: embedding, then per layer a fused
RMSNorm+QKV GEMV, q/k RMSNorm+RoPE+cache append, split-K attention over the cache, o_proj GEMV with
the residual add, a fused RMSNorm+gate/up GEMV with SwiGLU and the down GEMV with the residual;
finally RMSNorm+LM head with a fused greedy argmax and a one-thread kernel that feeds the argmax
back as the next token and advances the position. The position and kv length are read from device
memory, so the same graph replays for every token; greedy decoding replays it N times back to back
and copies N token ids back at the end. Sampled decoding replays it once per token and draws on
the device where it can (else the logits row goes to the host sampler). A request with logprobs
or a constraint (structured outputs: its row is masked on the device before the draw) replays it
once per token and takes the logits row the step wrote (``logits_after``; the fused step writes
it too): the greedy chunks and device draws give token ids only.

:func:`cuda_stream_generate` is the generation loop :class:`~inference_pio.causal_lm.CausalLM` uses
on a CUDA device (prefill through the op-by-op path, decode through the graph).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from inference_pio.dtypes import DType
from inference_pio.errors import NativeError
from inference_pio.generation import (
    Detokenizer,
    GenerationResult,
    IncrementalText,
    SequenceState,
    check_context,
)
from inference_pio.nn.attention import Attention
from inference_pio.nn.decoder import DecoderModel, LayerCache
from inference_pio.nn.layers import RMS_PLAIN, ROPE_NEOX, RMSNorm
from inference_pio.nn.mlp import SwiGLU
from inference_pio.nn.moe import COMBINE_MAX_K as MOE_MAX_K
from inference_pio.nn.moe import SoftmaxTopKMoE, moe_step_enabled
from inference_pio.sampling import SamplingParams, device_supports
from inference_pio.tensor import Tensor, tensor

CHUNK = 32  # greedy tokens per host round trip


def graph_basics_reason(model: Any) -> str | None:
    """Why no captured graph can run ``model``'s decode step at all (None when one may): it must be
    a :class:`~inference_pio.nn.decoder.DecoderModel` wholly on one CUDA device."""
    if not isinstance(model, DecoderModel):
        return "not a DecoderModel"
    if model.device.type != "cuda":
        return "not on a CUDA device"
    if model.hybrid:
        return "layers split between the CPU and the GPU"
    return None


def has_fp8(model: Any) -> bool:
    """Whether a layer of ``model`` holds a block-scaled FP8 attention or MLP projection."""
    for layer in model.layers:
        attn, mlp = layer.attention, layer.mlp
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if getattr(getattr(attn, name, None), "quantized", False):
                return True
        for name in ("gate", "up", "down"):
            if getattr(getattr(mlp, name, None), "quantized", False):
                return True
    return False


def unsupported_reason(model: Any, fp8_ok: bool = False) -> str | None:
    """Why ``model`` cannot use the graph decoder (None when it can). FP8 projections only
    with ``fp8_ok`` (the fused step reads them, the multi-kernel step does not)."""
    basics = graph_basics_reason(model)
    if basics is not None:
        return basics
    if model.rotary.mode != ROPE_NEOX or model.rotary.rot_dim <= 0:
        return "rotary mode"
    if model.norm.variant != RMS_PLAIN:
        return "final norm variant"
    for layer in model.layers:
        attn, mlp = layer.attention, layer.mlp
        if not isinstance(attn, Attention) or not isinstance(mlp, (SwiGLU, SoftmaxTopKMoE)):
            return "layer type"
        if attn.gated:
            return "gated attention"
        if attn.rotary.rot_dim != attn.hd or attn.hd > 256 or attn.hd % 2:
            return "partial rotary or head_dim"
        norms: list[RMSNorm | None] = [layer.input_norm, layer.post_norm, attn.q_norm, attn.k_norm]
        if any(n is not None and n.variant != RMS_PLAIN for n in norms):
            return "norm variant"
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        if isinstance(mlp, SwiGLU):
            linears += [mlp.gate, mlp.up, mlp.down]
        else:
            if type(mlp).__call__ is not SoftmaxTopKMoE.__call__:
                return "a mixture of experts with its own __call__"
            if mlp.shared is not None:
                return "a mixture of experts with a shared expert"
            if mlp.k > MOE_MAX_K:
                return f"more than {MOE_MAX_K} experts per token"
            if any(ex.inter != mlp.experts[0].inter for ex in mlp.experts):
                return "experts of different widths"
            linears += [mlp.router] + [x for ex in mlp.experts for x in (ex.gate, ex.up, ex.down)]
            if any(lin.weight.data_ptr % 16 for lin in linears):
                return "expert weights must be 16-byte aligned"
        for lin in linears:
            if lin.quantized:
                if not fp8_ok:
                    return "FP8 weights (only the fused step reads them)"
                # what linear_fp8's GEMV reads without its scratch (the batch graphs); the
                # fused step needs 128 x 128 blocks too (fused_unsupported_reason)
                if lin.block[1] % 16 or lin.bias is not None or lin.in_features % 16:
                    return "FP8 weights need no bias, in_features and block_k % 16 == 0"
                if lin.weight.data_ptr % 16 or lin.scale is None or lin.scale.data_ptr % 4:
                    return "FP8 weights must be 16-byte aligned"
            elif lin.weight.dtype != DType.bfloat16 or lin.bias is not None or lin.in_features % 8:
                return "weights must be bf16 without bias, in_features % 8 == 0"
    lm = model.lm_head
    if lm.weight.dtype != DType.bfloat16 or lm.bias is not None or lm.in_features % 8:
        return "LM head must be bf16 without bias"
    return None


class DecoderLayerDesc(ctypes.Structure):
    """``to_decoder_layer`` of tensor_ops.h."""

    _fields_ = (
        [
            (name, ctypes.c_void_p)
            for name in (
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
                "input_norm",
                "post_norm",
                "q_norm",
                "k_norm",
                "k_cache",
                "v_cache",
            )
        ]
        + [(name, ctypes.c_float) for name in ("input_eps", "post_eps", "qk_eps", "reserved")]
        + [
            (name, ctypes.c_void_p)
            for name in (
                "q_scale",
                "k_scale",
                "v_scale",
                "o_scale",
                "gate_scale",
                "up_scale",
                "down_scale",
            )
        ]
    )


class DecoderDesc(ctypes.Structure):
    """``to_decoder_desc`` of tensor_ops.h."""

    _fields_ = (
        [
            (name, ctypes.c_void_p)
            for name in (
                "embed",
                "final_norm",
                "lm_head",
                "rope_cos",
                "rope_sin",
                "counters",
                "tokens",
                "logits",
            )
        ]
        + [
            (name, ctypes.c_int32)
            for name in (
                "n_layers",
                "hidden",
                "n_heads",
                "n_kv_heads",
                "head_dim",
                "intermediate",
                "vocab",
                "capacity",
                "act_dtype",
                "norm_dtype",
                "cache_dtype",
                "embed_dtype",
                "max_steps",
                "profile_skip",
                "attn_tile",
                "attn_splits",
                "threads",
            )
        ]
        + [("attn_scale", ctypes.c_float), ("final_eps", ctypes.c_float)]
        + [("weight_dtype", ctypes.c_int32), ("reserved2", ctypes.c_int32)]
    )


def fused_unsupported_reason(model: Any) -> str | None:
    """Why the fused one-kernel step cannot run ``model`` (None when it can); the graph decoder
    then captures the multi-kernel step (bf16 weights), or the model's own step is captured
    (FP8 weights)."""
    reason = unsupported_reason(model, fp8_ok=True)
    if reason is not None:
        return reason
    if any(isinstance(layer.mlp, SoftmaxTopKMoE) for layer in model.layers):
        return "a mixture-of-experts MLP"
    if has_fp8(model):
        for layer in model.layers:
            at, mlp = layer.attention, layer.mlp
            projs = [at.q_proj, at.k_proj, at.v_proj, at.o_proj, mlp.gate, mlp.up, mlp.down]
            if not all(p.quantized for p in projs):
                return "FP8 and bf16 projections mixed (every projection must be FP8)"
            if any(p.block != (128, 128) for p in projs):
                return "FP8 weights need 128 x 128 blocks"
    a0 = model.layers[0].attention
    if a0.nh // a0.nkv > 8:
        return "more than 8 query heads per kv head"
    if a0.hd % 32 or a0.hd > 256:
        return "head_dim must be a multiple of 32 up to 256"
    if model.hidden % 8 or model.layers[0].mlp.inter % 8:
        return "hidden and intermediate sizes must be multiples of 8"
    if model.act_dtype != DType.bfloat16 or model.cache_dtype != DType.bfloat16:
        return "activations and KV cache must be bf16"
    norms: list[RMSNorm] = [model.norm]
    for layer in model.layers:
        at = layer.attention
        if at.nh != a0.nh or at.nkv != a0.nkv or at.hd != a0.hd:
            return "layers of different attention shapes"
        if layer.mlp.inter != model.layers[0].mlp.inter:
            return "layers of different MLP widths"
        if (at.q_norm is None) != (at.k_norm is None):
            return "q and k norms must both be present or both absent"
        if at.q_norm is not None and at.k_norm is not None and at.q_norm.eps != at.k_norm.eps:
            return "q and k norms with different eps"
        norms += [n for n in (layer.input_norm, layer.post_norm, at.q_norm, at.k_norm) if n]
    if any(n is None for n in (model.layers[0].input_norm, model.layers[0].post_norm)):
        return "pre-norm layers need input and post-attention norms"
    if any(n.weight.dtype != DType.bfloat16 for n in norms):
        return "norm weights must be bf16"
    if model.embed.weight.dtype != DType.bfloat16:
        return "the embedding must be bf16"
    weights = [model.embed.weight, model.lm_head.weight] + [n.weight for n in norms]
    if any(w.data_ptr % 16 for w in weights):
        return "embedding, LM head and norm weights must be 16-byte aligned"
    return None


# profile_skip bits of the fused step per kernel name of the multi-kernel step
_FUSED_SKIP_BITS = {
    "qkv": 1,
    "qk_rope_append": 0,  # part of the attention stage
    "attention_decode": 2,
    "o_proj": 4,
    "gate_up": 8,
    "down": 16,  # the down share inside the gate/up stage
    "lm_head": 32,
}


def _fused_enabled() -> bool:
    """The fused step is the default where the model allows it (on an H200 it decodes Qwen3-0.6B
    1.6x and Qwen3-4B 1.3x faster than the multi-kernel graph, benchmarks/GPU_NOTES.md);
    ``INFERENCE_PIO_CUDA_FUSED_DECODE=0`` selects the multi-kernel step."""
    return os.environ.get("INFERENCE_PIO_CUDA_FUSED_DECODE", "1") != "0"


class GraphStepRunner:
    """A decode step of ``model`` captured once in a CUDA graph and replayed per token, over the
    runner's own cache of ``capacity`` tokens. The step reads the token and the cache slot from
    ``ctr`` ([token, slot, step, unused], int32 on the device), writes ``logits`` [1, vocab] and
    ends with toc_decode_step_end (the greedy token fed back, ``tokens[step]`` written, slot and
    step advanced). Subclasses set those buffers up and record the step in :meth:`_record`."""

    model: DecoderModel
    cuda: Any
    capacity: int
    chunk: int
    cache: LayerCache
    ctr: Tensor
    tokens: Tensor
    logits: Tensor
    cos: Tensor
    sin: Tensor
    position_offset: int
    graph: int | None

    def _record(self) -> None:
        raise NotImplementedError

    def _capture_once(self) -> None:
        lib, check = self.cuda.lib(), self.cuda.check
        self.cuda.synchronize(self.model.device)
        check(lib.toc_graph_begin(), "toc_graph_begin")
        try:
            self._record()
        except BaseException:
            lib.toc_graph_abort()
            raise
        out = ctypes.c_void_p()
        check(lib.toc_graph_end(ctypes.byref(out)), "toc_graph_end")
        self.graph = out.value

    def __del__(self) -> None:
        g = getattr(self, "graph", None)
        if g:
            with contextlib.suppress(Exception):
                self.cuda.lib().toc_graph_destroy(g)

    # ---- running ---------------------------------------------------------------------------------
    def set_position_offset(self, offset: int) -> None:
        """Makes cache slot i rotate as position ``i + offset`` (a sequence whose cache has a
        ``position_offset``, Qwen3-VL after an image prompt): the captured step reads its
        rotary tables from fixed buffers, which are rewritten in place."""
        if offset == self.position_offset:
            return
        m = self.model
        first = [max(0, i + offset) for i in range(self.capacity)]
        positions = Tensor.from_list(first, DType.int32).to(m.device)
        m.rotary.tables(m.be, positions, self.cos.dtype, out=(self.cos, self.sin))
        self.position_offset = offset

    def _set(self, token: int, pos: int) -> None:
        host = Tensor.from_list([token, pos, 0, 0], DType.int32)
        self.cuda.memcpy(self.ctr.data_ptr, host.data_ptr, 16, self.cuda.H2D, blocking=True)

    def greedy(self, token: int, pos: int, n: int) -> list[int]:
        """Feeds ``token`` at ``pos`` and decodes ``n`` (<= chunk) greedy tokens."""
        if not 1 <= n <= self.chunk or pos + n > self.capacity:
            raise ValueError(
                f"greedy: {n} steps at {pos} do not fit (chunk {self.chunk}, "
                f"capacity {self.capacity})"
            )
        self._set(token, pos)
        self.cuda.check(self.cuda.lib().toc_graph_launch(self.graph, n), "toc_graph_launch")
        out = Tensor.empty((n,), DType.int32)
        self.cuda.memcpy(out.data_ptr, self.tokens.data_ptr, 4 * n, self.cuda.D2H, blocking=True)
        return [int(v) for v in out.tolist()]

    def sampled(self, token: int, pos: int, n: int, params: Any, rng: ctypes.c_uint64) -> list[int]:
        """Feeds ``token`` at ``pos`` and decodes ``n`` (<= chunk) tokens drawn on the device
        after each step (:func:`device_sampling_supported` params); ``rng`` (the host sampler's
        state) is advanced as the host sampler would have advanced it."""
        if not 1 <= n <= self.chunk or pos + n > self.capacity:
            raise ValueError(
                f"sampled: {n} steps at {pos} do not fit (chunk {self.chunk}, "
                f"capacity {self.capacity})"
            )
        lib, check = self.cuda.lib(), self.cuda.check
        if getattr(self, "_rng_dev", None) is None:
            self._rng_dev = Tensor.zeros((1,), DType.int64, self.model.device)
        host = (ctypes.c_uint64 * 1)(rng.value)
        h2d, d2h = self.cuda.H2D, self.cuda.D2H
        self.cuda.memcpy(self._rng_dev.data_ptr, ctypes.addressof(host), 8, h2d, blocking=True)
        self._set(token, pos)
        for _ in range(n):
            check(lib.toc_graph_launch(self.graph, 1), "toc_graph_launch")
            check(
                lib.toc_decode_sample(
                    self.logits.data_ptr,
                    self.logits.dtype,
                    self.logits.shape[1],
                    self.ctr.data_ptr,
                    self.tokens.data_ptr,
                    self.chunk,
                    params.temperature,
                    params.top_k,
                    params.top_p,
                    params.min_p,
                    self._rng_dev.data_ptr,
                ),
                "toc_decode_sample",
            )
        out = Tensor.empty((n,), DType.int32)
        self.cuda.memcpy(out.data_ptr, self.tokens.data_ptr, 4 * n, self.cuda.D2H, blocking=True)
        self.cuda.memcpy(ctypes.addressof(host), self._rng_dev.data_ptr, 8, d2h, blocking=True)
        rng.value = host[0]
        return [int(v) for v in out.tolist()]

    def logits_after(self, token: int, pos: int) -> Tensor:
        """Feeds ``token`` at ``pos``; returns the next-token logits [vocab], a view of the
        graph's output buffer on the device (valid until the next replay)."""
        if pos + 1 > self.capacity:
            raise ValueError("logits_after: the cache is full")
        self._set(token, pos)
        self.cuda.check(self.cuda.lib().toc_graph_launch(self.graph, 1), "toc_graph_launch")
        return self.logits[0]


class CudaGraphDecoder(GraphStepRunner):
    """One captured decode step of ``model`` over a static KV cache of ``capacity`` tokens: the
    fused one-kernel step or the multi-kernel step (dense and Qwen3-MoE layers; other models get
    :class:`~inference_pio.nn.cuda_capture.CapturedStepDecoder`)."""

    #: Kernel names of one decode step, in order (``skip`` takes any of them but step_end).
    KERNELS = (
        "qkv",
        "qk_rope_append",
        "attention_decode",
        "o_proj",
        "gate_up",
        "down",
        "lm_head",
        "moe_router",
        "moe_route",
        "moe_gate_up",
        "moe_down",
        "moe_combine",
        "moe_step",
        "step_end",
    )

    def __init__(
        self,
        model: DecoderModel,
        capacity: int,
        chunk: int = CHUNK,
        skip: Collection[str] = (),
        fused: bool | None = None,
        attn_tile: int = 0,
        attn_splits: int = 0,
        threads: int = 0,
    ) -> None:
        """``skip``: kernels (stages of the fused step; ``moe_*``: the mixture-of-experts
        kernels of the multi-kernel step, ``moe_step`` their one-launch form, which naming any
        of the five others turns off) left out, for profiling only (the time of
        a step without them, by difference the time they take; the tokens are then wrong).
        ``fused``: capture the one-kernel step (default: when the model allows it, unless
        ``INFERENCE_PIO_CUDA_FUSED_DECODE=0``). ``attn_tile`` / ``attn_splits`` (fused step,
        testing): fewer keys per shared-memory attention tile and fewer key slices per kv head
        than the defaults, to exercise the multi-tile and slice-merge paths on short contexts.
        ``threads`` (fused step): threads per block, 384 or 512; 0 lets the library choose (384
        for models whose per-block share of a layer's weights is small, e.g. Qwen3-0.6B)."""
        if attn_tile < 0 or attn_splits < 0:
            raise ValueError("attn_tile and attn_splits must be >= 0")
        if threads not in (0, 384, 512):
            raise ValueError(f"threads must be 0, 384 or 512, not {threads}")
        self.attn_tile, self.attn_splits, self.threads = attn_tile, attn_splits, threads
        from inference_pio import cuda

        unknown = set(skip) - set(self.KERNELS[:-1])
        if unknown:
            raise ValueError(f"cannot skip {sorted(unknown)}; choose from {self.KERNELS[:-1]}")
        self.skip = frozenset(skip)

        reason = unsupported_reason(model, fp8_ok=True)
        if reason is not None:
            raise ValueError(f"CUDA graph decode is not supported for this model: {reason}")
        fp8 = has_fp8(model)
        if fp8 and fused is not False:
            why = fused_unsupported_reason(model)
            if why is not None:
                raise ValueError(f"CUDA graph decode of FP8 weights needs the fused step: {why}")
        elif fp8:
            raise ValueError("CUDA graph decode of FP8 weights needs the fused step (fused=False)")
        self.model = model
        self.cuda = cuda
        self.capacity = capacity
        self.chunk = chunk
        self.cache: LayerCache = model.new_cache(capacity)
        dev, act = model.device, model.act_dtype
        a0 = model.layers[0].attention
        self.nh, self.nkv, self.hd = a0.nh, a0.nkv, a0.hd
        mlp0 = model.layers[0].mlp
        self.inter = mlp0.inter if isinstance(mlp0, SwiGLU) else 0
        # the MLP's hidden activations: a SwiGLU's [inter], an MoE layer's [k, its inter]
        h_len = max(
            mlp.inter if isinstance(mlp, SwiGLU) else mlp.k * mlp.experts[0].inter
            for mlp in (layer.mlp for layer in model.layers)
            if isinstance(mlp, (SwiGLU, SoftmaxTopKMoE))
        )
        self._moe_setup(model)
        self.qkv_w = (self.nh + 2 * self.nkv) * self.hd
        # counters: [token, position, step, pad]; the packed argmax as one 64-bit word
        self.ctr = Tensor.zeros((4,), DType.int32, dev)
        self.argmax = Tensor.zeros((1,), DType.int64, dev)
        self.tokens = Tensor.zeros((chunk,), DType.int32, dev)
        self.x = Tensor.empty((1, model.hidden), act, dev)
        self.x2 = Tensor.empty((1, model.hidden), act, dev)
        self.qkv = Tensor.empty((1, self.qkv_w), act, dev)
        self.attn = Tensor.empty((1, self.nh * self.hd), act, dev)
        self.h = Tensor.empty((1, h_len), act, dev)
        self.logits = Tensor.empty((1, model.vocab_size), act, dev)
        sms = cuda.device_info(dev)["multiprocessors"]
        self.nsplit = max(1, min(32, capacity // 128, math.ceil(2 * sms / self.nkv)))
        self.ws = Tensor.empty((self.nh * self.nsplit * (self.hd + 2),), DType.float32, dev)
        positions = tensor(list(range(capacity)), DType.int32, dev)
        self.cos, self.sin = model.rotary.tables(model.be, positions, act)
        self.position_offset = 0
        self.graph: int | None = None
        self._fused: int | None = None  # toc_decoder handle
        auto = fused is None
        if fused is None:
            fused = _fused_enabled() and fused_unsupported_reason(model) is None
        elif fused:
            why = fused_unsupported_reason(model)
            if why is not None:
                raise ValueError(f"the fused decode step does not support this model: {why}")
        self.fused = bool(fused)
        if fp8 and not self.fused:
            raise ValueError(
                "CUDA graph decode of FP8 weights needs the fused step "
                "(INFERENCE_PIO_CUDA_FUSED_DECODE=0)"
            )
        if self.fused:
            try:
                self._create_fused()
            except NativeError as exc:
                if not auto or fp8:
                    raise
                # e.g. no room for the fused step's transposed down_proj copy: the multi-kernel
                # step needs none
                warnings.warn(
                    f"fused CUDA decode step unavailable ({exc}); using the multi-kernel graph",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.fused = False
        self._capture()

    def _moe_setup(self, model: DecoderModel) -> None:
        """Buffers of the mixture-of-experts layers (router logits, the chosen experts and
        their weights, the experts' outputs) and, per such layer, device tables of its experts'
        gate / up / down weight pointers, which the expert GEMVs index by the router's choice."""
        dev, act = model.device, model.act_dtype
        moes = [layer.mlp for layer in model.layers if isinstance(layer.mlp, SoftmaxTopKMoE)]
        self.moe_tables: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        if not moes:
            return
        e_max = max(m.num_experts for m in moes)
        k_max = max(m.k for m in moes)
        self.moe_logits = Tensor.empty((1, e_max), act, dev)
        self.moe_idx = Tensor.empty((1, k_max), DType.int32, dev)
        self.moe_w = Tensor.empty((1, k_max), act, dev)
        self.moe_y = Tensor.empty((k_max, model.hidden), act, dev)
        for li, layer in enumerate(model.layers):
            if isinstance(layer.mlp, SoftmaxTopKMoE):
                self.moe_tables[li] = layer.mlp.pointer_tables(model.be)

    def _record_moe(self, li: int, mlp: SoftmaxTopKMoE, post_norm: RMSNorm, run: Any) -> None:
        """One mixture-of-experts MLP of the multi-kernel step, from ``x2`` to ``x``: RMSNorm +
        router GEMV, the softmax top-k router, the chosen experts' RMSNorm + gate/up GEMVs with
        SwiGLU, their down GEMVs, then the weighted sum in expert order plus the residual; the
        experts are read from device tables, so nothing comes back to the host. All of it in one
        cooperative launch (toc_moe_step, two grid barriers) where the library supports the
        shapes, else five kernels."""
        m, lib = self.model, self.cuda.lib()
        act, hid = int(m.act_dtype), m.hidden
        e, k, inter = mlp.num_experts, mlp.k, mlp.experts[0].inter
        gate_t, up_t, down_t = self.moe_tables[li]
        nw = post_norm.weight
        router = mlp.router.weight
        five = {"moe_router", "moe_route", "moe_gate_up", "moe_down", "moe_combine"}
        if (
            moe_step_enabled()
            and not self.skip & five
            and lib.toc_moe_step_supported(e, k, hid, inter, 0, act) == 0
        ):
            run(
                "moe_step",
                lib.toc_moe_step,
                self.x2.data_ptr, nw.data_ptr, nw.dtype, post_norm.eps,
                router.data_ptr, e, k, int(mlp.renormalize),
                gate_t.data_ptr, up_t.data_ptr, down_t.data_ptr, hid, inter,
                None, None, None, None, 0, self.x2.data_ptr,
                self.moe_logits.data_ptr, self.moe_idx.data_ptr, self.moe_w.data_ptr,
                self.h.data_ptr, self.x.data_ptr, act,
            )  # fmt: skip
            return
        run(
            "moe_router",
            lib.toc_gemv_fused,
            self.x2.data_ptr, hid, 1, nw.data_ptr, nw.dtype, post_norm.eps,
            router.data_ptr, e, None, 0, None, 0, hid, None, 0, 0,
            self.moe_logits.data_ptr, e, act, None,
        )  # fmt: skip
        run(
            "moe_route",
            lib.toc_moe_route_softmax,
            self.moe_logits.data_ptr, 1, e, k, int(mlp.renormalize), act,
            self.moe_idx.data_ptr, self.moe_w.data_ptr, act,
        )  # fmt: skip
        run(
            "moe_gate_up",
            lib.toc_moe_gemv,
            self.x2.data_ptr, 0, nw.data_ptr, nw.dtype, post_norm.eps,
            self.moe_idx.data_ptr, k, e, gate_t.data_ptr, up_t.data_ptr, inter, hid,
            self.h.data_ptr, inter, act,
        )  # fmt: skip
        run(
            "moe_down",
            lib.toc_moe_gemv,
            self.h.data_ptr, inter, None, 0, 0.0,
            self.moe_idx.data_ptr, k, e, down_t.data_ptr, None, hid, inter,
            self.moe_y.data_ptr, hid, act,
        )  # fmt: skip
        run(
            "moe_combine",
            lib.toc_moe_combine,
            self.moe_y.data_ptr, self.moe_idx.data_ptr, self.moe_w.data_ptr, self.x2.data_ptr,
            self.x.data_ptr, 1, k, e, hid, act, act, act,
        )  # fmt: skip

    def _create_fused(self) -> None:
        m, lib = self.model, self.cuda.lib()
        layers = (DecoderLayerDesc * len(m.layers))()
        for i, layer in enumerate(m.layers):
            at, mlp = layer.attention, layer.mlp
            assert isinstance(mlp, SwiGLU)
            qn, kn = at.q_norm, at.k_norm
            projs = (at.q_proj, at.k_proj, at.v_proj, at.o_proj, mlp.gate, mlp.up, mlp.down)
            layers[i] = DecoderLayerDesc(
                at.q_proj.weight.data_ptr,
                at.k_proj.weight.data_ptr,
                at.v_proj.weight.data_ptr,
                at.o_proj.weight.data_ptr,
                mlp.gate.weight.data_ptr,
                mlp.up.weight.data_ptr,
                mlp.down.weight.data_ptr,
                layer.input_norm.weight.data_ptr,
                layer.post_norm.weight.data_ptr,
                qn.weight.data_ptr if qn is not None else None,
                kn.weight.data_ptr if kn is not None else None,
                self.cache.layers[i].k.data_ptr,
                self.cache.layers[i].v.data_ptr,
                layer.input_norm.eps,
                layer.post_norm.eps,
                qn.eps if qn is not None else 0.0,
                0.0,
                *[lin.scale.data_ptr if lin.scale is not None else None for lin in projs],
            )
        a0 = m.layers[0].attention
        desc = DecoderDesc(
            m.embed.weight.data_ptr,
            m.norm.weight.data_ptr,
            m.lm_head.weight.data_ptr,
            self.cos.data_ptr,
            self.sin.data_ptr,
            self.ctr.data_ptr,
            self.tokens.data_ptr,
            self.logits.data_ptr,
            len(m.layers),
            m.hidden,
            self.nh,
            self.nkv,
            self.hd,
            self.inter,
            m.vocab_size,
            self.capacity,
            int(m.act_dtype),
            int(m.norm.weight.dtype),
            int(m.cache_dtype),
            int(m.embed.weight.dtype),
            self.chunk,
            sum(_FUSED_SKIP_BITS.get(k, 0) for k in self.skip),
            self.attn_tile,
            self.attn_splits,
            self.threads,
            a0.scale,
            m.norm.eps,
            int(DType.float8_e4m3) if has_fp8(m) else 0,
            0,
        )
        handle = ctypes.c_void_p()
        self.cuda.check(
            lib.toc_decoder_create(ctypes.byref(desc), layers, ctypes.byref(handle)),
            "toc_decoder_create",
        )
        self._fused = handle.value

    def fused_info(self) -> dict[str, int] | None:
        """Launch shape of the fused step (grid, threads, shared memory, kv splits, and
        fold_keys: the longest context whose steps fold attention into o_proj, 0 if none), or
        None."""
        if not self._fused:
            return None
        vals = [ctypes.c_int64() for _ in range(5)]
        self.cuda.check(
            self.cuda.lib().toc_decoder_info(self._fused, *[ctypes.byref(v) for v in vals]),
            "toc_decoder_info",
        )
        keys = ("grid", "threads", "smem_bytes", "kv_splits", "fold_keys")
        return {k: v.value for k, v in zip(keys, vals, strict=True)}

    def profile_stages(self, token: int, pos: int, first: int = 3) -> list[list[int]]:
        """Profiling (fused step only): runs one step outside the graph and returns, per block,
        64 times (ns): the arrival and departure at barriers ``first`` .. ``first + 7``
        (``[block][2 * i]`` arrival, ``[block][2 * i + 1]`` departure; barrier 3 is where
        layer 1 starts, each layer passes 4 barriers: after qkv, attention, o_proj, and
        gate/up with down; where the step folds attention into o_proj (``pos + 1 <=
        fused_info()["fold_keys"]``) 3, and layer 1 starts at barrier 2), then, in a library
        built with ``-DDK_STAGE_STAMPS=1``, layer 1's
        stamps ``[16 + 4 * stage + i]`` for stage qkv, attention, o_proj, gate/up (with down):
        after its barrier, after staging its input, after its (gate/up) weights and at its end
        (attention, in the blocks that run a unit: after its barrier, with the new token's heads
        and first key tile ready, after the scores and P.V, at its end); ``[48]`` the block's
        multiprocessor; in a stamps build also ``[50 + i]`` when the block's poll first read
        barrier ``first + i``'s target and ``[58 + i]`` (``i < 6``) right after its arrival's
        release. Unrecorded entries are 0."""
        if not self._fused:
            raise ValueError("profile_stages needs the fused step")
        info = self.fused_info()
        assert info is not None
        self._set(token, pos)
        buf = (ctypes.c_int64 * (info["grid"] * 64))()
        self.cuda.check(
            self.cuda.lib().toc_decoder_profile(self._fused, first, buf), "toc_decoder_profile"
        )
        return [list(buf[b * 64 : (b + 1) * 64]) for b in range(info["grid"])]

    # ---- capture ---------------------------------------------------------------------------------
    def _record(self) -> None:
        m, lib, check = self.model, self.cuda.lib(), self.cuda.check
        if self._fused:
            check(lib.toc_decoder_step(self._fused), "toc_decoder_step")
            return

        def run(name: str, fn: Any, *args: Any) -> None:
            if name not in self.skip:
                check(fn(*args), name)

        act = int(m.act_dtype)
        cache_dt = int(m.cache_dtype)
        tok = self.ctr.data_ptr
        pos = self.ctr.data_ptr + 4
        step = self.ctr.data_ptr + 8
        m.be.call(
            "embedding",
            tok,
            int(DType.int32),
            1,
            m.embed.weight.data_ptr,
            m.embed.weight.dtype,
            m.embed.vocab,
            m.embed.dim,
            self.x.data_ptr,
            act,
        )
        hid = m.hidden
        for li, layer in enumerate(m.layers):
            at, mlp = layer.attention, layer.mlp
            kc, vc = self.cache.layers[li].k, self.cache.layers[li].v
            n_in = layer.input_norm
            run(
                "qkv",
                lib.toc_gemv_fused,
                self.x.data_ptr,
                hid,
                1,
                n_in.weight.data_ptr,
                n_in.weight.dtype,
                n_in.eps,
                at.q_proj.weight.data_ptr,
                at.q_proj.out_features,
                at.k_proj.weight.data_ptr,
                at.k_proj.out_features,
                at.v_proj.weight.data_ptr,
                at.v_proj.out_features,
                hid,
                None,
                0,
                0,
                self.qkv.data_ptr,
                self.qkv_w,
                act,
                None,
            )
            qn, kn = at.q_norm, at.k_norm
            ndt = (qn or kn).weight.dtype if (qn or kn) is not None else 0  # type: ignore[union-attr]
            eps = (qn or kn).eps if (qn or kn) is not None else 0.0  # type: ignore[union-attr]
            run(
                "qk_rope_append",
                lib.toc_qk_rope_append,
                self.qkv.data_ptr,
                qn.weight.data_ptr if qn is not None else None,
                kn.weight.data_ptr if kn is not None else None,
                ndt,
                eps,
                self.cos.data_ptr,
                self.sin.data_ptr,
                pos,
                kc.data_ptr,
                vc.data_ptr,
                self.nh,
                self.nkv,
                self.hd,
                self.capacity,
                act,
                cache_dt,
            )
            run(
                "attention_decode",
                lib.toc_attention_decode,
                self.qkv.data_ptr,
                kc.data_ptr,
                vc.data_ptr,
                self.attn.data_ptr,
                self.nh,
                self.nkv,
                self.hd,
                self.capacity,
                pos,
                at.scale,
                act,
                cache_dt,
                self.nsplit,
                self.ws.data_ptr,
            )
            ow = at.o_proj
            run(
                "o_proj",
                lib.toc_gemv_fused,
                self.attn.data_ptr,
                ow.in_features,
                1,
                None,
                0,
                0.0,
                ow.weight.data_ptr,
                ow.out_features,
                None,
                0,
                None,
                0,
                ow.in_features,
                self.x.data_ptr,
                hid,
                0,
                self.x2.data_ptr,
                hid,
                act,
                None,
            )
            n_post = layer.post_norm
            if isinstance(mlp, SoftmaxTopKMoE):
                self._record_moe(li, mlp, n_post, run)
                continue
            assert isinstance(mlp, SwiGLU)
            inter = mlp.inter
            run(
                "gate_up",
                lib.toc_gemv_fused,
                self.x2.data_ptr,
                hid,
                1,
                n_post.weight.data_ptr,
                n_post.weight.dtype,
                n_post.eps,
                mlp.gate.weight.data_ptr,
                inter,
                mlp.up.weight.data_ptr,
                inter,
                None,
                0,
                hid,
                None,
                0,
                1,
                self.h.data_ptr,
                inter,
                act,
                None,
            )
            dw = mlp.down
            run(
                "down",
                lib.toc_gemv_fused,
                self.h.data_ptr,
                inter,
                1,
                None,
                0,
                0.0,
                dw.weight.data_ptr,
                dw.out_features,
                None,
                0,
                None,
                0,
                inter,
                self.x2.data_ptr,
                hid,
                0,
                self.x.data_ptr,
                hid,
                act,
                None,
            )
        fn, head = m.norm, m.lm_head
        run(
            "lm_head",
            lib.toc_gemv_fused,
            self.x.data_ptr,
            hid,
            1,
            fn.weight.data_ptr,
            fn.weight.dtype,
            fn.eps,
            head.weight.data_ptr,
            head.out_features,
            None,
            0,
            None,
            0,
            hid,
            None,
            0,
            0,
            self.logits.data_ptr,
            m.vocab_size,
            act,
            self.argmax.data_ptr,
        )
        run(
            "step_end",
            lib.toc_decode_step_end,
            self.argmax.data_ptr,
            tok,
            pos,
            self.tokens.data_ptr,
            step,
            self.chunk,
        )

    def _capture(self) -> None:
        try:
            self._capture_once()
        except NativeError as exc:
            if not self._fused:
                raise
            # e.g. a driver that cannot capture cooperative launches: the multi-kernel step
            warnings.warn(
                f"fused CUDA decode step unavailable ({exc}); using the multi-kernel graph",
                RuntimeWarning,
                stacklevel=3,
            )
            self.cuda.lib().toc_decoder_destroy(self._fused)
            self._fused = None
            self.fused = False
            self._capture_once()

    def __del__(self) -> None:
        super().__del__()
        h = getattr(self, "_fused", None)
        if h:
            with contextlib.suppress(Exception):
                self.cuda.lib().toc_decoder_destroy(h)


def device_sampling_supported(params: SamplingParams, vocab: int) -> bool:
    """Whether the graph decoder draws tokens on the device for ``params``: temperature > 0,
    1 <= top_k <= 1024 (and below the vocabulary), no penalties (their history stays on the
    host); ``INFERENCE_PIO_CUDA_DEVICE_SAMPLING=0`` turns it off."""
    return (
        device_supports(params, vocab)
        and params.temperature > 0.0
        and 1 <= params.top_k <= 1024
        and params.top_k < vocab
        and params.repetition_penalty == 1.0
        and params.presence_penalty == 0.0
        and params.frequency_penalty == 0.0
    )


_LOCKS_GUARD = threading.Lock()


def graph_lock(model: Any) -> threading.Lock:
    """The lock of ``model``'s graph decoder and its cache: one generation uses them at a time
    (two threads generating on one CUDA model used to share and reset one KV cache)."""
    with _LOCKS_GUARD:
        lock: threading.Lock | None = vars(model).get("_cuda_graph_lock")
        if lock is None:
            lock = vars(model)["_cuda_graph_lock"] = threading.Lock()
    return lock


def _holding(lock: threading.Lock, steps: Iterator[str]) -> Iterator[str]:
    try:
        yield from steps
    finally:
        lock.release()


def _runner(model: DecoderModel, capacity: int) -> GraphStepRunner | None:
    """The model's graph decoder with at least ``capacity`` cache slots: a
    :class:`CudaGraphDecoder` where it takes the model, else the model's own step captured
    (:class:`~inference_pio.nn.cuda_capture.CapturedStepDecoder`); None where neither can (the
    steps then run op by op; a failed capture warns once)."""
    from inference_pio.nn import cuda_capture

    fp8 = has_fp8(model)
    # an FP8 model whose fused step failed once is captured like an unknown model (and a failed
    # capture is then remembered for it too)
    known = unsupported_reason(model) is None or (
        fp8
        and _fused_enabled()
        and "_cuda_fused_failed" not in vars(model)
        and fused_unsupported_reason(model) is None
    )
    if not known and (
        cuda_capture.unsupported_reason(model) is not None or "_cuda_capture_failed" in vars(model)
    ):
        return None
    r: GraphStepRunner | None = getattr(model, "_cuda_graph_decoder", None)
    if r is None or r.capacity < capacity:
        cap = min(model.max_context, max(capacity, 1 << max(0, (capacity - 1).bit_length()), 1024))
        vars(model)["_cuda_graph_decoder"] = None  # frees the old graph and cache first
        if known and fp8:
            try:
                r = CudaGraphDecoder(model, cap)
            except (NativeError, ValueError) as exc:  # the fused FP8 step could not be set up
                vars(model)["_cuda_fused_failed"] = str(exc)
                warnings.warn(
                    f"fused FP8 CUDA decode step unavailable ({exc}); capturing the model's step",
                    RuntimeWarning,
                    stacklevel=2,
                )
                known = False
        elif known:
            r = CudaGraphDecoder(model, cap)
        if not known:
            try:
                r = cuda_capture.CapturedStepDecoder(model, cap)
            except (NativeError, NotImplementedError, ValueError) as exc:
                vars(model)["_cuda_capture_failed"] = str(exc)
                warnings.warn(
                    f"capturing the decode step failed ({exc}); decoding op by op",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return None
        vars(model)["_cuda_graph_decoder"] = r
    return r


def cuda_stream_generate(
    model: Any,
    detokenizer: Detokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    eos_ids: Sequence[int] = (),
    on_finish: Callable[[GenerationResult], None] | None = None,
    prefill: Callable[[Any], Tensor] | None = None,
) -> Iterator[str]:
    """:func:`~inference_pio.generation.stream_generate` for a model on a CUDA device.

    ``prefill(cache)``, when given, runs the prompt into the (empty) cache instead of
    ``model.forward`` and returns the last logits (a multimodal prefill); a ``position_offset``
    it leaves on the cache is honoured by the graph decode."""
    prompt = list(prompt_ids)
    capacity = check_context(model, len(prompt), params)
    state = SequenceState(prompt, params, frozenset(eos_ids), IncrementalText(detokenizer))
    with graph_lock(model):  # held until this generation ends (or its generator is closed)
        yield from _generate(model, state, capacity, prefill, on_finish)


def _generate(
    model: Any,
    state: SequenceState,
    capacity: int,
    prefill: Callable[[Any], Tensor] | None,
    on_finish: Callable[[GenerationResult], None] | None,
) -> Iterator[str]:
    prompt = state.prompt_ids
    runner = _runner(model, capacity)
    if runner is not None:
        state.cache = runner.cache
        state.cache.length = 0
        state.cache.position_offset = 0
    else:
        state.cache = model.new_cache(capacity)
    # logits stay on the device: the sampler draws there (or copies them where it cannot)
    if prefill is not None:
        logits = prefill(state.cache)
    else:
        (logits,) = model.forward([(prompt, state.cache)])
    if runner is not None:
        runner.set_position_offset(getattr(state.cache, "position_offset", 0))
    state.prefill_done_at = time.perf_counter()
    yield from _decode(model, runner, state, capacity, logits)
    if on_finish is not None:
        on_finish(state.result(time.perf_counter()))


def continue_alone(
    model: DecoderModel,
    state: SequenceState,
    capacity: int,
    interrupt: Callable[[], bool] | None = None,
    max_chunk: int | None = None,
) -> Iterator[str] | None:
    """The rest of one sequence's generation on the batch-1 path (the BatchManager's last
    sequence): its cache is copied into the model's graph decoder's (the fused or multi-kernel
    :class:`CudaGraphDecoder`, or the model's own step captured), then its steps replay the
    batch-1 graph. ``state`` has accepted its latest token, which is not in its cache yet. None
    (nothing copied) where the model has no batch-1 graph decoder or its cache cannot be copied
    (see :meth:`~inference_pio.nn.decoder.LayerCache.copyable_to`).

    ``interrupt`` (checked before each device round trip of at most ``max_chunk`` tokens) stops
    the generator early, every drawn token accepted: ``state`` is then unfinished, its cache the
    graph decoder's, and :func:`move_cache` takes it back (a server's batch resuming)."""
    if state.finished:
        return None
    lock = graph_lock(model)
    if not lock.acquire(blocking=False):  # another thread's generation holds the graph decoder
        return None
    try:
        runner = _runner(model, capacity)
        if runner is None or not state.cache.copyable_to(runner.cache):
            lock.release()
            return None
        move_cache(state, runner.cache)
        runner.set_position_offset(state.cache.position_offset)
    except BaseException:
        lock.release()
        raise
    return _holding(lock, _decode(model, runner, state, capacity, None, interrupt, max_chunk))


def move_cache(state: SequenceState, dst: LayerCache) -> None:
    """Copies what ``state``'s cache holds into ``dst``, a cache of the same model on the same
    device (:meth:`~inference_pio.nn.decoder.LayerCache.copy_into`: keys and values, latent
    rows or recurrent states), and makes ``dst`` the sequence's cache."""
    state.cache.copy_into(dst)
    state.cache = dst


def _decode(
    model: Any,
    runner: GraphStepRunner | None,
    state: SequenceState,
    capacity: int,
    logits: Tensor | None,
    interrupt: Callable[[], bool] | None = None,
    max_chunk: int | None = None,
) -> Iterator[str]:
    """Decodes ``state`` until it finishes, or until ``interrupt()`` is true before a device
    round trip (see :func:`continue_alone`): first ``logits`` are sampled (None: the latest
    token is accepted already and the next step runs first). A round trip decodes at most
    ``max_chunk`` tokens (default: the graph decoder's chunk)."""
    params = state.params
    # a request with logprobs or a constraint needs every step's logits row: it replays the step
    # one token at a time and reads the row the step wrote (logits_after), never the chunks below
    # that only bring token ids back
    device_greedy = (
        runner is not None
        and not state.wants_logits
        and params.greedy
        and params.repetition_penalty == 1.0
        and params.presence_penalty == 0.0
        and params.frequency_penalty == 0.0
    )
    device_sampled = (
        runner is not None
        and not state.wants_logits
        and not device_greedy
        and device_sampling_supported(params, model.vocab_size)
        and hasattr(state.sampler, "_rng")
    )
    pending: list[int] = []
    chunk = runner.chunk if runner is not None else 1
    if max_chunk is not None:
        chunk = max(1, min(chunk, max_chunk))
    while True:
        if logits is not None or pending:
            # a token drawn on the device has no logits row (never a request with logprobs)
            piece = (
                state.accept_token(pending.pop(0)) if pending else state.accept(logits)  # type: ignore[arg-type]
            )
            if piece:
                yield piece
        if state.finished or state.cache.length >= capacity:
            if not state.finished:
                tail = state.end_at_capacity()
                if tail:
                    yield tail
            break
        if interrupt is not None and not pending and interrupt():
            return
        last = state.generated[-1]
        if device_greedy and runner is not None:
            if not pending:
                n = min(
                    chunk,
                    capacity - state.cache.length,
                    params.max_new_tokens - len(state.generated),
                )
                n = max(1, n)
                pending = runner.greedy(last, state.cache.length, n)
            state.cache.length += 1
        elif device_sampled and runner is not None:
            if not pending:
                n = max(
                    1,
                    min(
                        chunk,
                        capacity - state.cache.length,
                        params.max_new_tokens - len(state.generated),
                    ),
                )
                rng = state.sampler._rng  # the host sampler's stream, continued on the device
                pending = runner.sampled(last, state.cache.length, n, params, rng)
            state.cache.length += 1
        elif runner is not None:
            logits = runner.logits_after(last, state.cache.length)
            state.cache.length += 1
        else:
            (logits,) = model.forward([([last], state.cache)])


__all__ = [
    "CudaGraphDecoder",
    "GraphStepRunner",
    "continue_alone",
    "cuda_stream_generate",
    "move_cache",
    "unsupported_reason",
]
