"""Tensor ops. Each function validates shapes, dtypes and devices in Python, then calls one C
dispatch point (CPU: libtensor_ops, CUDA: libtensor_ops_cuda)."""

from inference_pio.ops.elementwise import add, mul
from inference_pio.ops.norm import layer_norm, rms_norm

__all__ = ["add", "mul", "layer_norm", "rms_norm"]
