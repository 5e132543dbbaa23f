"""``HybridScheduler``: splits a decoder between a GPU and the CPU when it does not fit (or is
not wanted) whole on the GPU, like llama.cpp's ``--n-gpu-layers``.

The last ``gpu_layers`` layers, the final norm and the LM head run on the GPU; the embedding and
the first layers on the CPU (the embedding is a row lookup, and the LM head, the largest single
matrix, gains most from the GPU). With every layer on the GPU the embedding goes there too and
the model is a plain GPU model. A step crosses devices once: the residual stream and its
normalised copy are copied to the GPU after the last CPU layer. Every layer's KV cache lives with
its layer. ``HybridScheduler.plan`` picks ``gpu_layers`` from the GPU's memory when it is not
given: as many layers as fit after the head, the KV caches of those layers for the planned
context, and a reserve for activations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inference_pio.device import CPU, Device

#: Memory kept free on the GPU for activations, workspaces and the CUDA context.
RESERVE_BYTES = 2 << 30
#: Share of the GPU's memory never planned for (fragmentation, other processes).
RESERVE_FRACTION = 0.05
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class Placement:
    """Where each part of a decoder of ``num_layers`` layers runs."""

    gpu: Device
    gpu_layers: int
    num_layers: int

    def __post_init__(self) -> None:
        if self.gpu.type != "cuda":
            raise ValueError(f"a hybrid placement needs a CUDA device, got {self.gpu}")
        if not 0 <= self.gpu_layers <= self.num_layers:
            raise ValueError(
                f"gpu_layers {self.gpu_layers} outside 0..{self.num_layers} (the model's layers)"
            )

    @property
    def first_gpu_layer(self) -> int:
        return self.num_layers - self.gpu_layers

    def layer_device(self, layer: int) -> Device:
        """The device of layer ``layer`` (0-based)."""
        return CPU if layer < self.first_gpu_layer else self.gpu

    @property
    def embed_device(self) -> Device:
        """The CPU, unless every layer is on the GPU (then nothing is split and the model runs
        as a plain GPU model, captured decode graph included)."""
        return self.gpu if self.gpu_layers == self.num_layers else CPU

    @property
    def head_device(self) -> Device:
        """The final norm's and LM head's device (where the logits are)."""
        return self.gpu

    def describe(self) -> str:
        """One line for users: which layers run where."""
        first = self.first_gpu_layer
        cpu = f"layers 0-{first - 1} on cpu, " if first > 0 else ""
        gpu = (
            f"layers {first}-{self.num_layers - 1} on {self.gpu}"
            if self.gpu_layers
            else f"no layer on {self.gpu}"
        )
        return f"{cpu}{gpu}; embedding on {self.embed_device}; final norm and LM head on {self.gpu}"


def checkpoint_sizes(
    tensor_bytes: Mapping[str, int], num_layers: int, tied: bool
) -> tuple[list[int], int]:
    """(bytes of each layer, bytes on the GPU besides the layers) from a checkpoint's tensor sizes:
    every ``…layers.{i}.`` tensor counts for layer i (multi-token-prediction layers past the last
    are ignored); the head is ``lm_head`` and the final norm, or the embedding when tied."""
    layers = [0] * num_layers
    head = 0
    for name, size in tensor_bytes.items():
        m = _LAYER.search(name)
        if m is not None:
            i = int(m.group(1))
            if i < num_layers:
                layers[i] += size
            continue
        final_norm = name.endswith("norm.weight") and "visual" not in name
        tied_head = tied and name.endswith("embed_tokens.weight")
        if name == "lm_head.weight" or final_norm or tied_head:
            head += size
    return layers, head


class HybridScheduler:
    """Plans a :class:`Placement` on ``gpu``: ``gpu_layers`` fixed, or chosen from its memory.

    ``memory_bytes`` overrides the GPU's total memory (tests, or to leave room for other work).
    """

    def __init__(
        self,
        gpu: Device | str,
        gpu_layers: int | None = None,
        memory_bytes: int | None = None,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        self.gpu = Device.parse(gpu)
        if self.gpu.type != "cuda":
            raise ValueError(f"the hybrid scheduler places layers on a CUDA device, got {gpu!r}")
        if gpu_layers is not None and gpu_layers < 0:
            raise ValueError(f"gpu_layers must be >= 0, got {gpu_layers}")
        self.gpu_layers = gpu_layers
        self.memory_bytes = memory_bytes
        self.reserve_bytes = reserve_bytes

    def budget(self) -> int:
        """Bytes the plan may fill on the GPU."""
        total = self.memory_bytes
        if total is None:
            from inference_pio import cuda

            total = int(cuda.device_info(self.gpu)["total_memory"])
        return int(total * (1 - RESERVE_FRACTION)) - self.reserve_bytes

    def plan(
        self, layer_bytes: Sequence[int], head_bytes: int, kv_bytes_per_layer: int = 0
    ) -> Placement:
        """The placement of a decoder whose layers hold ``layer_bytes`` (in order), whose final
        norm and LM head hold ``head_bytes``, and whose layers each cache ``kv_bytes_per_layer``
        for the planned context. A fixed ``gpu_layers`` above the layer count is an error; an
        automatic plan that cannot hold even the head raises ValueError (use the CPU)."""
        n = len(layer_bytes)
        if self.gpu_layers is not None:
            if self.gpu_layers > n:
                raise ValueError(f"gpu_layers {self.gpu_layers} exceeds the model's {n} layers")
            return Placement(self.gpu, self.gpu_layers, n)
        left = self.budget() - head_bytes
        if left < 0:
            raise ValueError(
                f"{self.gpu} cannot hold the model's LM head ({head_bytes / 2**30:.1f} GiB with "
                "the reserve); run it on the CPU"
            )
        count = 0
        for size in reversed(layer_bytes):
            need = size + kv_bytes_per_layer
            if need > left:
                break
            left -= need
            count += 1
        return Placement(self.gpu, count, n)


def plan_for_checkpoint(
    config: Mapping[str, Any],
    tensor_bytes: Mapping[str, int],
    gpu: Device | str,
    gpu_layers: int | None,
    context: int = 4096,
    cache_itemsize: int = 2,
) -> Placement:
    """:meth:`HybridScheduler.plan` from a checkpoint's config and tensor sizes (a multimodal
    config's ``text_config`` describes the decoder)."""
    text = config.get("text_config") or config
    layers = int(text.get("num_hidden_layers", 0))
    if layers < 1:
        raise ValueError("config.json: num_hidden_layers is required for a hybrid placement")
    heads = int(text.get("num_attention_heads", 1))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // max(heads, 1))
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    sizes, head = checkpoint_sizes(tensor_bytes, layers, tied)
    kv = 2 * kv_heads * head_dim * context * cache_itemsize
    return HybridScheduler(gpu, gpu_layers).plan(sizes, head, kv)
