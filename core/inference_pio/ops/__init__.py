"""Tensor ops. Each function validates shapes, dtypes and devices in Python, then calls one C
dispatch point (CPU: libtensor_ops, CUDA: libtensor_ops_cuda)."""

from inference_pio.ops.attention import attention, kv_cache_append
from inference_pio.ops.conv import causal_conv1d, patchify
from inference_pio.ops.deltanet import gated_delta_rule
from inference_pio.ops.elementwise import (
    add,
    add_row,
    exp,
    gelu,
    mul,
    mul_rows,
    scale,
    sigmoid,
    silu,
    softplus,
    swiglu,
)
from inference_pio.ops.image import image_normalize, image_resize
from inference_pio.ops.mask import mask_logits
from inference_pio.ops.matmul import get_num_threads, linear, set_num_threads
from inference_pio.ops.moe import (
    gather_rows,
    group_by_expert,
    route_sigmoid,
    route_softmax,
    scatter_add,
)
from inference_pio.ops.norm import layer_norm, rms_norm
from inference_pio.ops.quant import dequantize_fp8, linear_fp8, quantize_fp8
from inference_pio.ops.rope import (
    mrope_cache,
    rope_apply,
    rope_cache,
    rope_cache_2d,
    rope_cache_freqs,
)
from inference_pio.ops.select import argmax, cumsum, embedding, topk, where
from inference_pio.ops.softmax import log_softmax, softmax

__all__ = [
    "add",
    "add_row",
    "argmax",
    "attention",
    "causal_conv1d",
    "cumsum",
    "dequantize_fp8",
    "embedding",
    "exp",
    "gated_delta_rule",
    "gather_rows",
    "gelu",
    "get_num_threads",
    "group_by_expert",
    "image_normalize",
    "image_resize",
    "kv_cache_append",
    "layer_norm",
    "linear",
    "linear_fp8",
    "log_softmax",
    "mask_logits",
    "mrope_cache",
    "mul",
    "mul_rows",
    "patchify",
    "quantize_fp8",
    "rms_norm",
    "rope_apply",
    "rope_cache",
    "rope_cache_2d",
    "rope_cache_freqs",
    "route_sigmoid",
    "route_softmax",
    "scale",
    "scatter_add",
    "set_num_threads",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "swiglu",
    "topk",
    "where",
]
