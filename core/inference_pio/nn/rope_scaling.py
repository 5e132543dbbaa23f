"""RoPE frequencies and scaling from a config.json, as Hugging Face transformers computes them.

:func:`rope_frequencies` reads the rope fields of a config (transformers 5's ``rope_parameters``
or the older ``rope_theta`` + ``rope_scaling``, with ``type`` or ``rope_type``) and returns the
inverse frequencies (fp32 values) and the attention factor that multiplies cos and sin, for the
rope types ``default``, ``linear``, ``yarn`` and ``llama3``
(transformers' ``_compute_*_parameters`` in ``modeling_rope_utils.py``). Any other type
(``dynamic``, ``longrope``, ...) is a :class:`~inference_pio.errors.CheckpointError` naming it.

The arithmetic follows torch's float32 steps one by one (each tensor op rounds once to fp32, a
Python scalar is rounded to fp32 where torch rounds it), and the Python-side scalars
(correction range, mscale) in double like transformers. The one step that is not bit-exact is
``theta ** e``: torch's fp32 ``pow`` (Sleef on the SIMD path) and the correctly rounded value
used here differ by one ulp on a few entries.

:func:`context_length` is the usable context a scaled config allows, derived as vLLM does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from ctypes import c_float
from dataclasses import dataclass, field
from typing import Any

from inference_pio.errors import CheckpointError

#: rope types whose tables this module computes
SUPPORTED_TYPES = ("default", "linear", "yarn", "llama3")
#: rope types that carry ``original_max_position_embeddings`` (transformers fills it in from
#: ``max_position_embeddings`` when a config leaves it out)
_WITH_ORIGINAL = ("llama3", "yarn", "longrope")


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (the value a torch float32 tensor would hold)."""
    return float(c_float(x).value)


def _number(params: Mapping[str, Any], key: str, positive: bool = True) -> float:
    value = params.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (positive and value <= 0)
        or abs(value) > 3.4028234e38
    ):
        need = "a positive finite number" if positive else "a finite number"
        raise CheckpointError(f"config.json: rope {key!r} must be {need}, got {value!r}")
    return value


def _optional(params: Mapping[str, Any], key: str, positive: bool = True) -> float | None:
    return None if params.get(key) is None else _number(params, key, positive)


def standard_parameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """The rope parameters of ``config`` in transformers 5's standard form (a new dict):
    ``rope_scaling`` (the older field) wins over ``rope_parameters`` when both are set, as in
    transformers; ``rope_theta`` (default 10000) and ``partial_rotary_factor`` are filled in from
    the top level; ``rope_type`` from ``type`` (default ``"default"``); and
    ``original_max_position_embeddings`` from ``max_position_embeddings`` for llama3/yarn."""
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value is not None and not isinstance(value, Mapping):
            raise CheckpointError(f"config.json: {key!r} must be an object, got {value!r}")
    out = dict(scaling or params or {})
    if (
        scaling
        and "rope_theta" not in scaling
        and "rope_theta" not in config
        and isinstance(params, Mapping)
        and "rope_theta" in params
        and params["rope_theta"] != 10000.0
    ):
        # transformers does the same, silently: a rope_scaling block added to a transformers-5
        # config (whose theta lives in rope_parameters only) runs with theta 10000
        warnings.warn(
            "config.json: 'rope_scaling' wins over 'rope_parameters' and has no 'rope_theta', so "
            f"the rope base is 10000, not rope_parameters' {params['rope_theta']!r} (as in "
            "transformers); put 'rope_theta' in the 'rope_scaling' block, or edit "
            "'rope_parameters' instead",
            stacklevel=2,
        )
    out.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    if config.get("partial_rotary_factor") is not None:
        out.setdefault("partial_rotary_factor", config["partial_rotary_factor"])
    out.setdefault("rope_type", out.get("type", "default"))
    if out["rope_type"] in _WITH_ORIGINAL:
        if config.get("original_max_position_embeddings") is not None:
            # a top-level value (Phi-3 style) wins, as in transformers' standardize_rope_params
            out["original_max_position_embeddings"] = config["original_max_position_embeddings"]
        elif config.get("max_position_embeddings") is not None:
            out.setdefault("original_max_position_embeddings", config["max_position_embeddings"])
    return out


def rope_theta(params: Mapping[str, Any]) -> float:
    """The validated ``rope_theta`` of standard parameters (positive and finite in float32)."""
    theta = params.get("rope_theta")
    if (
        not isinstance(theta, (int, float))
        or isinstance(theta, bool)
        or not math.isfinite(theta)
        or not 1e-30 <= theta <= 3.4028234e38  # positive and finite in float32 too
    ):
        raise CheckpointError(
            f"config.json: rope_theta must be a positive number within float32, got {theta!r}"
        )
    return float(theta)


def rope_type_of(params: Mapping[str, Any]) -> str:
    """The rope type of standard parameters (a CheckpointError for a non-string)."""
    rope_type = params.get("rope_type")
    if not isinstance(rope_type, str):
        raise CheckpointError(f"config.json: rope_type must be a string, got {rope_type!r}")
    return rope_type


@dataclass(frozen=True)
class RopeFrequencies:
    """What a model's rotary tables are built from.

    ``inv_freq``: ``rot_dim / 2`` float32 values; ``attention_factor``: the multiplier of cos and
    sin (1.0 except for yarn); ``params``: the standard rope parameters it came from."""

    rope_type: str
    theta: float
    rot_dim: int
    inv_freq: tuple[float, ...]
    attention_factor: float
    params: Mapping[str, Any] = field(repr=False)

    @property
    def scaled(self) -> bool:
        """Whether the tables differ from plain RoPE with ``theta`` (any type but default)."""
        return self.rope_type != "default"


def _pow_freqs(theta: float, dim: int) -> list[float]:
    """``theta ** (arange(0, dim, 2).float() / dim)`` in float32."""
    base, d = f32(theta), f32(dim)
    return [f32(math.pow(base, f32(f32(i) / d))) for i in range(0, dim, 2)]


def _default(theta: float, dim: int) -> list[float]:
    # 1.0 / (base ** e): torch's rtruediv is reciprocal() * 1.0
    return [f32(1.0 / p) for p in _pow_freqs(theta, dim)]


def _linear(params: Mapping[str, Any], theta: float, dim: int) -> list[float]:
    factor = f32(_number(params, "factor"))
    return [f32(v / factor) for v in _default(theta, dim)]


def _yarn_get_mscale(scale: float, mscale: float = 1) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _yarn_factor(params: Mapping[str, Any], max_position_embeddings: int | None) -> float:
    if params.get("factor") is None:  # DeepSeek-style: the ratio of the two lengths
        if max_position_embeddings is None:
            raise CheckpointError("config.json: yarn rope scaling needs a 'factor'")
        return max_position_embeddings / _original_max(params)
    return _number(params, "factor")


def _original_max(params: Mapping[str, Any]) -> int:
    value = params.get("original_max_position_embeddings")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(
            f"config.json: rope 'original_max_position_embeddings' must be a positive integer, "
            f"got {value!r}"
        )
    return value


def _yarn(
    params: Mapping[str, Any], theta: float, dim: int, max_position_embeddings: int | None
) -> tuple[list[float], float]:
    factor = _yarn_factor(params, max_position_embeddings)
    original = _original_max(params)
    attention_factor = _optional(params, "attention_factor")
    mscale = _optional(params, "mscale", positive=False)
    mscale_all_dim = _optional(params, "mscale_all_dim", positive=False)
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(
                _yarn_get_mscale(factor, mscale) / _yarn_get_mscale(factor, mscale_all_dim)
            )
        else:
            attention_factor = _yarn_get_mscale(factor)
        if not (math.isfinite(attention_factor) and attention_factor > 0):
            raise CheckpointError(
                f"config.json: yarn mscale {mscale!r} / mscale_all_dim {mscale_all_dim!r} give "
                f"the attention factor {attention_factor!r}; it must be a positive number"
            )
    # 0 or null mean the defaults, as in transformers (`or 32`, `or 1`)
    beta_fast = (_optional(params, "beta_fast") if params.get("beta_fast") else None) or 32
    beta_slow = (_optional(params, "beta_slow") if params.get("beta_slow") else None) or 1
    truncate = params.get("truncate", True)
    if not isinstance(truncate, bool):
        raise CheckpointError(
            f"config.json: rope 'truncate' must be true or false, got {truncate!r}"
        )

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low: float = correction_dim(beta_fast)
    high: float = correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    lo, width = f32(low), f32(high - low)
    pos_freqs = _pow_freqs(theta, dim)
    fac = f32(factor)
    out = []
    for i, p in enumerate(pos_freqs):
        extrapolation = f32(1.0 / p)
        interpolation = f32(1.0 / f32(fac * p))
        ramp = min(max(f32(f32(f32(i) - lo) / width), 0.0), 1.0)
        extra_factor = f32(1.0 - ramp)  # 1 - linear_ramp_factor(...)
        inv = f32(f32(interpolation * f32(1.0 - extra_factor)) + f32(extrapolation * extra_factor))
        out.append(inv)
    return out, attention_factor


def _llama3(params: Mapping[str, Any], theta: float, dim: int) -> list[float]:
    factor = _number(params, "factor")
    low_ff = _number(params, "low_freq_factor")
    high_ff = _number(params, "high_freq_factor")
    if high_ff <= low_ff:
        raise CheckpointError(
            f"config.json: llama3 rope 'high_freq_factor' {high_ff} must exceed "
            f"'low_freq_factor' {low_ff}"
        )
    old_context = _original_max(params)
    low_wavelen = f32(old_context / low_ff)
    high_wavelen = f32(old_context / high_ff)
    fac, two_pi, ctx = f32(factor), f32(2 * math.pi), f32(old_context)
    low32, width = f32(low_ff), f32(high_ff - low_ff)
    out = []
    for inv in _default(theta, dim):
        wavelen = f32(f32(1.0 / inv) * two_pi)  # 2π / inv_freq: reciprocal() * 2π
        scaled = f32(inv / fac) if wavelen > low_wavelen else inv
        if not wavelen < high_wavelen and not wavelen > low_wavelen:  # medium frequencies
            smooth = f32(f32(f32(f32(1.0 / wavelen) * ctx) - low32) / width)
            scaled = f32(f32(f32(f32(1.0 - smooth) * scaled) / fac) + f32(smooth * scaled))
        out.append(scaled)
    return out


def rope_frequencies(
    config: Mapping[str, Any],
    head_dim: int,
    default_partial_rotary_factor: float = 1.0,
    partial_rotary: bool = True,
) -> RopeFrequencies:
    """The inverse frequencies and attention factor of ``config``'s rope.

    ``head_dim``: the per-head size transformers' rope functions read as ``config.head_dim``
    (GLM: ``qk_rope_head_dim``). The rotary dimension is ``int(head_dim *
    partial_rotary_factor)`` (the model's default factor when the config gives none);
    ``partial_rotary=False`` for models whose default rope ignores the factor (Qwen3, Llama:
    transformers' scaled types do read it, so a factor other than 1 is refused there).
    CheckpointError for an unsupported rope type or bad numbers, naming the field."""
    params = standard_parameters(config)
    rope_type = rope_type_of(params)
    theta = rope_theta(params)
    if rope_type not in SUPPORTED_TYPES:
        raise CheckpointError(
            f"config.json: rope type {rope_type!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_TYPES)})"
        )
    partial = params.get("partial_rotary_factor", default_partial_rotary_factor)
    if isinstance(partial, bool) or not isinstance(partial, (int, float)) or not 0 < partial <= 1:
        raise CheckpointError(f"config.json: partial_rotary_factor {partial!r} not in (0, 1]")
    dim = int(head_dim * partial) if partial_rotary or rope_type != "default" else head_dim
    if not partial_rotary and dim != head_dim:
        raise CheckpointError(
            f"config.json: partial_rotary_factor {partial} with rope type {rope_type!r} is not "
            f"supported by this model (it rotates the whole head)"
        )
    # (an odd whole head under the default rope is the Rotary block's to refuse)
    if dim < 2 or (dim % 2 and (rope_type != "default" or dim != head_dim)):
        raise CheckpointError(
            f"config.json: rotary dimension {dim} (head_dim {head_dim} x partial_rotary_factor "
            f"{partial}) must be even and >= 2"
        )
    mpe = config.get("max_position_embeddings")
    attention_factor = 1.0
    if rope_type == "default":
        inv = _default(theta, dim)
    elif rope_type == "linear":
        inv = _linear(params, theta, dim)
    elif rope_type == "yarn":
        inv, attention_factor = _yarn(params, theta, dim, mpe if isinstance(mpe, int) else None)
    else:
        inv = _llama3(params, theta, dim)
    bad = [v for v in inv if not (math.isfinite(v) and v > 0)]
    if bad:
        raise CheckpointError(
            f"config.json: rope {rope_type!r} parameters give inverse frequencies that are not "
            f"positive finite float32 values ({bad[0]!r}); check factor and rope_theta"
        )
    return RopeFrequencies(rope_type, theta, dim, tuple(inv), float(attention_factor), params)


def mla_softmax_scale(params: Mapping[str, Any], scale: float) -> float:
    """The softmax scale of DeepSeek-style (MLA) attention under rope scaling (transformers'
    ``yarn_apply_mscale``): ``scale * mscale * mscale`` with ``mscale = 0.1 * mscale_all_dim *
    ln(factor) + 1`` when the rope type is not default and ``mscale_all_dim`` is set."""
    if params.get("rope_type", "default") != "default":
        mscale_all_dim = _optional(params, "mscale_all_dim", positive=False) or 0
        if mscale_all_dim:
            mscale = _yarn_get_mscale(_number(params, "factor"), mscale_all_dim)
            scale = scale * mscale * mscale
    return scale


def context_length(rope: RopeFrequencies | None, max_position_embeddings: int) -> int:
    """The context a model may use: ``max_position_embeddings``, extended as vLLM derives it
    for a scaled rope (``original_max_position_embeddings * factor`` for yarn,
    ``max_position_embeddings * factor`` for linear) when that is longer. llama3 configs already
    state the extended length in ``max_position_embeddings``; ``rope`` None: plain RoPE."""
    if rope is None:
        return max_position_embeddings
    params = rope.params
    if rope.rope_type == "yarn" and params.get("factor") is not None:
        extended = _original_max(params) * _number(params, "factor")
    elif rope.rope_type == "linear":
        extended = max_position_embeddings * _number(params, "factor")
    else:
        return max_position_embeddings
    return max(max_position_embeddings, int(extended))


__all__ = [
    "SUPPORTED_TYPES",
    "RopeFrequencies",
    "context_length",
    "f32",
    "mla_softmax_scale",
    "rope_frequencies",
    "rope_theta",
    "rope_type_of",
    "standard_parameters",
]
