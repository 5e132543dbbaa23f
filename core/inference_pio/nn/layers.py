"""Linear, Embedding, RMSNorm and rotary-embedding blocks."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from inference_pio.backend import Backend
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.errors import CheckpointError
from inference_pio.tensor import Tensor

if TYPE_CHECKING:
    from inference_pio.nn.rope_scaling import RopeFrequencies

WEIGHT_DTYPES = (DType.float32, DType.bfloat16, DType.float16)
ACT_DTYPES = (DType.float32, DType.bfloat16)

RMS_PLAIN = 0
RMS_ZERO_CENTERED = 1
RMS_GATED = 2
ROPE_NEOX = 0
ROPE_INTERLEAVED = 1
ROPE_INTERLEAVED_HF = 2  # pairs (2i, 2i+1), output de-interleaved like transformers' GLM code


def check_weight(name: str, t: Tensor, shape: Sequence[int]) -> Tensor:
    """Validates a weight tensor once, at build time."""
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"weight {name!r} has shape {t.shape}, expected {tuple(shape)}")
    if t.dtype not in WEIGHT_DTYPES:
        if t.dtype == DType.float8_e4m3:
            raise CheckpointError(
                f"weight {name!r} is float8 (e4m3) but config.json declares no FP8 "
                "quantization_config (quant_method 'fp8', weight_block_size)"
            )
        raise CheckpointError(f"weight {name!r} has unsupported dtype {t.dtype.name}")
    if not t.is_contiguous():
        raise CheckpointError(f"weight {name!r} is not contiguous")
    return t


class Linear:
    """``y = x · Wᵀ (+ b)`` with W in the safetensors layout [out, in].

    W may be block-scaled FP8 (an FP8 checkpoint's projection kept quantized): float8 e4m3 with
    ``scale`` float32 [ceil(out / bn), ceil(in / bk)] for ``block`` (bn, bk); the product is then
    ``to_linear_fp8`` (half the bytes of bf16 per token), the same fp32 accumulation."""

    def __init__(
        self,
        name: str,
        weight: Tensor,
        bias: Tensor | None = None,
        scale: Tensor | None = None,
        block: tuple[int, int] | None = None,
    ) -> None:
        if weight.ndim != 2:
            raise CheckpointError(f"weight {name!r} must be 2-d, got shape {weight.shape}")
        self.out_features, self.in_features = weight.shape
        self.scale: Tensor | None = None
        self.block: tuple[int, int] = (0, 0)
        if weight.dtype == DType.float8_e4m3 and scale is not None and block is not None:
            bn, bk = block
            grid = (-(-self.out_features // bn), -(-self.in_features // bk))
            if tuple(scale.shape) != grid or scale.dtype != DType.float32:
                raise CheckpointError(
                    f"weight {name!r}: scale {scale.dtype.name} {tuple(scale.shape)}, expected "
                    f"float32 {grid} for blocks of {bn} x {bk}"
                )
            if not (weight.is_contiguous() and scale.is_contiguous()):
                raise CheckpointError(f"weight {name!r} or its scale is not contiguous")
            self.weight = weight
            self.scale, self.block = scale, (bn, bk)
        else:
            self.weight = check_weight(name, weight, weight.shape)
        self.bias = (
            check_weight(name + ".bias", bias, (self.out_features,)) if bias is not None else None
        )

    @property
    def quantized(self) -> bool:
        """Whether W is block-scaled FP8."""
        return self.scale is not None

    def __call__(
        self,
        be: Backend,
        x: Tensor,
        out: Tensor,
        rows: int | None = None,
        ldx: int | None = None,
        ldy: int | None = None,
    ) -> Tensor:
        """Writes ``rows`` rows of x·Wᵀ into ``out`` (row strides default to contiguous)."""
        m = x.shape[0] if rows is None else rows
        b = self.bias
        if self.scale is not None:
            be.call(
                "linear_fp8",
                x.data_ptr,
                self.weight.data_ptr,
                self.scale.data_ptr,
                b.data_ptr if b is not None else None,
                out.data_ptr,
                m,
                self.out_features,
                self.in_features,
                self.in_features if ldx is None else ldx,
                self.out_features if ldy is None else ldy,
                self.block[0],
                self.block[1],
                x.dtype,
                b.dtype if b is not None else 0,
                out.dtype,
            )
            return out
        be.call(
            "linear",
            x.data_ptr,
            self.weight.data_ptr,
            b.data_ptr if b is not None else None,
            out.data_ptr,
            m,
            self.out_features,
            self.in_features,
            self.in_features if ldx is None else ldx,
            self.out_features if ldy is None else ldy,
            x.dtype,
            self.weight.dtype,
            b.dtype if b is not None else 0,
            out.dtype,
        )
        return out


class LinearGroup:
    """Several bias-free linears that share one input (q/k/v, gate/up), run as one native call
    (one parallel region streaming every matrix) where the device has ``linear_group``."""

    def __init__(self, linears: Sequence[Linear]) -> None:
        if not linears or len(linears) > 8:
            raise ValueError("LinearGroup takes 1 to 8 linears")
        k = linears[0].in_features
        if any(lin.in_features != k or lin.bias is not None for lin in linears):
            raise ValueError("LinearGroup: linears must share in_features and have no bias")
        self.linears = list(linears)
        n = len(linears)
        self._ws = (ctypes.c_void_p * n)(*(lin.weight.data_ptr for lin in linears))
        self._ns = (ctypes.c_int64 * n)(*(lin.out_features for lin in linears))
        self._wdtype = linears[0].weight.dtype
        self._same_dtype = all(
            lin.weight.dtype == self._wdtype and not lin.quantized for lin in linears
        )

    def __call__(self, be: Backend, x: Tensor, outs: Sequence[Tensor]) -> None:
        """Writes ``x · Wᵢᵀ`` into ``outs[i]`` (contiguous [rows, out_featuresᵢ])."""
        if not (self._same_dtype and be.has("linear_group")):
            for lin, out in zip(self.linears, outs, strict=True):
                lin(be, x, out)
            return
        n = len(self.linears)
        ys = (ctypes.c_void_p * n)(*(o.data_ptr for o in outs))
        be.call(
            "linear_group",
            x.data_ptr,
            n,
            self._ws,
            self._ns,
            ys,
            self._ns,
            x.shape[0],
            x.shape[1],
            x.shape[1],
            x.dtype,
            self._wdtype,
            outs[0].dtype,
        )


class Embedding:
    """Token embedding table [vocab, dim]."""

    def __init__(self, name: str, weight: Tensor) -> None:
        if weight.ndim != 2:
            raise CheckpointError(f"weight {name!r} must be 2-d, got shape {weight.shape}")
        self.weight = check_weight(name, weight, weight.shape)
        self.vocab, self.dim = weight.shape

    def __call__(self, be: Backend, ids: Tensor, out: Tensor) -> Tensor:
        be.call(
            "embedding",
            ids.data_ptr,
            ids.dtype,
            ids.numel,
            self.weight.data_ptr,
            self.weight.dtype,
            self.vocab,
            self.dim,
            out.data_ptr,
            out.dtype,
        )
        return out


class RMSNorm:
    """RMSNorm over the last ``dim`` values of each row (plain, zero-centred or gated)."""

    def __init__(self, name: str, weight: Tensor, eps: float, variant: int = RMS_PLAIN) -> None:
        if weight.ndim != 1:
            raise CheckpointError(f"weight {name!r} must be 1-d, got shape {weight.shape}")
        self.weight = check_weight(name, weight, weight.shape)
        self.dim = weight.shape[0]
        self.eps = float(eps)
        self.variant = variant

    def __call__(
        self,
        be: Backend,
        x: Tensor,
        out: Tensor,
        rows: int | None = None,
        heads: int = 1,
        ld: int | None = None,
        z: Tensor | None = None,
    ) -> Tensor:
        """Normalises ``rows`` rows of ``heads`` × dim values each (row stride ``ld``)."""
        n = x.shape[0] if rows is None else rows
        row_stride = heads * self.dim if ld is None else ld
        zp = z.data_ptr if z is not None else None
        be.call(
            "rms_norm",
            x.data_ptr,
            self.weight.data_ptr,
            zp,
            out.data_ptr,
            n,
            heads,
            self.dim,
            row_stride,
            self.dim,
            row_stride,
            self.dim,
            row_stride,
            self.dim,
            self.eps,
            self.variant,
            x.dtype,
            self.weight.dtype,
            out.dtype,
        )
        return out

    def add_and_norm(self, be: Backend, x: Tensor, delta: Tensor, out: Tensor) -> Tensor:
        """``x += delta`` (the residual stream, in place), then ``out = norm(x)``: one native
        call where the device has the fused op, two otherwise. Same results either way."""
        if self.variant != RMS_GATED and be.has("add_rms_norm"):
            be.call(
                "add_rms_norm",
                x.data_ptr,
                delta.data_ptr,
                self.weight.data_ptr,
                out.data_ptr,
                x.shape[0],
                self.dim,
                self.eps,
                self.variant,
                x.dtype,
                self.weight.dtype,
                out.dtype,
            )
            return out
        be.call("add", x.data_ptr, delta.data_ptr, x.data_ptr, x.numel, x.dtype)
        return self(be, x, out)


class Rotary:
    """Rotary position embedding: builds cos/sin tables for positions and rotates q/k in place.

    Plain RoPE takes ``theta``; scaled RoPE (linear, YaRN, llama3: :func:`from_frequencies`)
    takes explicit ``inv_freq`` (``rot_dim / 2`` fp32 values) and an ``attention_factor`` that
    multiplies cos and sin."""

    def __init__(
        self,
        rot_dim: int,
        theta: float,
        mode: int = ROPE_NEOX,
        inv_freq: Sequence[float] | None = None,
        attention_factor: float = 1.0,
    ) -> None:
        if rot_dim <= 0 or rot_dim % 2:
            raise ValueError(f"rotary dimension must be positive and even, got {rot_dim}")
        if inv_freq is not None and len(inv_freq) != rot_dim // 2:
            raise ValueError(
                f"inv_freq has {len(inv_freq)} values, rotary dimension {rot_dim} needs "
                f"{rot_dim // 2}"
            )
        if inv_freq is not None and not all(math.isfinite(v) for v in inv_freq):
            raise ValueError("inv_freq must hold finite values")
        if not (math.isfinite(attention_factor) and attention_factor > 0):
            raise ValueError(f"attention_factor must be positive, got {attention_factor!r}")
        if inv_freq is None and attention_factor != 1.0:
            raise ValueError("attention_factor needs explicit inv_freq")
        self.rot_dim = rot_dim
        self.theta = float(theta)
        self.mode = mode
        self.inv_freq = tuple(float(v) for v in inv_freq) if inv_freq is not None else None
        self.attention_factor = float(attention_factor)
        self._freqs: dict[Device, Tensor] = {}  # inv_freq on each device that built tables

    @classmethod
    def from_frequencies(cls, freqs: RopeFrequencies, mode: int = ROPE_NEOX) -> Rotary:
        """The rotary embedding of a config's rope (:mod:`inference_pio.nn.rope_scaling`): the
        theta tables for plain RoPE, explicit frequencies for a scaled one."""
        if not freqs.scaled:
            return cls(freqs.rot_dim, freqs.theta, mode)
        return cls(freqs.rot_dim, freqs.theta, mode, freqs.inv_freq, freqs.attention_factor)

    @property
    def scaled(self) -> bool:
        """Whether the tables come from explicit (scaled) frequencies."""
        return self.inv_freq is not None

    def _device_freqs(self, device: Device) -> Tensor:
        """inv_freq on ``device``, uploaded on the first call there (an eager step runs before
        any CUDA graph capture, so the upload never happens inside one)."""
        t = self._freqs.get(device)
        if t is None:
            assert self.inv_freq is not None
            t = Tensor.from_list(list(self.inv_freq), DType.float32)
            if device.type != "cpu":
                t = t.to(device)
            self._freqs[device] = t
        return t

    def tables(
        self,
        be: Backend,
        positions: Tensor,
        dtype: DType,
        out: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """cos/sin [T, rot_dim] for int32/int64 ``positions`` [T], rounded to ``dtype`` (into
        ``out`` when given)."""
        t = positions.numel
        if out is None:
            cos = Tensor.empty((t, self.rot_dim), dtype, be.device)
            sin = Tensor.empty((t, self.rot_dim), dtype, be.device)
        else:
            cos, sin = out
        if self.inv_freq is not None:
            be.call(
                "rope_cache_freqs",
                positions.data_ptr,
                positions.dtype,
                t,
                self.rot_dim,
                self._device_freqs(be.device).data_ptr,
                self.attention_factor,
                cos.data_ptr,
                sin.data_ptr,
                dtype,
            )
            return cos, sin
        be.call(
            "rope_cache",
            positions.data_ptr,
            positions.dtype,
            t,
            self.rot_dim,
            self.theta,
            cos.data_ptr,
            sin.data_ptr,
            dtype,
        )
        return cos, sin

    def apply(
        self,
        be: Backend,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        tokens: int,
        heads: int,
        head_dim: int,
        stride_t: int,
    ) -> None:
        """Rotates ``tokens`` × ``heads`` heads of ``x`` in place (token stride ``stride_t``)."""
        be.call(
            "rope_apply",
            x.data_ptr,
            cos.data_ptr,
            sin.data_ptr,
            tokens,
            heads,
            head_dim,
            self.rot_dim,
            stride_t,
            head_dim,
            self.mode,
            x.dtype,
            cos.dtype,
        )
