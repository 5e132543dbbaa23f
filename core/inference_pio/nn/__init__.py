"""Reusable model building blocks (embedding, norms, rotary embedding, attention with KV cache,
multi-head latent attention, gated DeltaNet linear attention with its recurrent state, SwiGLU
MLP, mixtures of experts with softmax or sigmoid routers, decoder layer and stack, LM head).
Plugins assemble models from these.

Blocks validate their weights once, when built; their ``forward`` methods then call the native
ops directly (one C call per op, no per-call re-validation) because batch-1 decode runs hundreds
of them per token.
"""

from inference_pio.nn.attention import Attention, KVCache
from inference_pio.nn.decoder import DecoderLayer, DecoderModel, LayerCache
from inference_pio.nn.deltanet import GatedDeltaNet, RecurrentState
from inference_pio.nn.layers import Embedding, Linear, RMSNorm, Rotary
from inference_pio.nn.mla import LatentCache, MLAttention
from inference_pio.nn.mlp import SwiGLU
from inference_pio.nn.moe import RoutedExperts, SigmoidTopKMoE, SoftmaxTopKMoE

__all__ = [
    "Attention",
    "DecoderLayer",
    "DecoderModel",
    "Embedding",
    "GatedDeltaNet",
    "KVCache",
    "LatentCache",
    "LayerCache",
    "Linear",
    "MLAttention",
    "RMSNorm",
    "RecurrentState",
    "Rotary",
    "RoutedExperts",
    "SigmoidTopKMoE",
    "SoftmaxTopKMoE",
    "SwiGLU",
]
