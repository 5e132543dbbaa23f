"""Sampling parameters and the per-sequence sampler (C: native/src/cpu/sampling.c)."""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import struct
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from inference_pio._native import check, lib
from inference_pio.dtypes import DType
from inference_pio.logprobs import MAX_LOGPROBS
from inference_pio.structured.constraint import Constraint
from inference_pio.tensor import Tensor


def _f32(x: float) -> float:
    """``x`` rounded to float32 (what the native sampler receives); inf beyond its range."""
    try:
        return float(struct.unpack("f", struct.pack("f", x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


#: Temperatures below this decode greedily (vLLM's threshold).
GREEDY_BELOW = 1e-5


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature == 0`` means greedy decoding, and so
    does any temperature below :data:`GREEDY_BELOW` (as vLLM: dividing by it overflows float32).

    ``logprobs``: None (off), 0 (the log probability of each generated token) or k up to
    :data:`~inference_pio.logprobs.MAX_LOGPROBS` (also the k most likely tokens of each step):
    the log-softmax of the raw logits, before temperature, top-k/p, min-p and penalties
    (vLLM's default), in :attr:`GenerationResult.logprobs
    <inference_pio.generation.GenerationResult.logprobs>`.

    ``constraint``: a :class:`~inference_pio.structured.Constraint` the output must match (a
    JSON schema, any JSON object, a regex or a Lark grammar): each step's logits are masked to
    the tokens it allows before the penalties, temperature, top-k/p and the draw (greedy too),
    and the generation stops (``"stop"``) once the output is complete. Needs the
    ``structured`` extra (llguidance).

    ``keep_special_ids``: special tokens whose text stays in the output (the others are
    dropped from it, as ``skip_special_tokens`` drops them): a tool-call format's markup
    (``<tool_call>``, ``<arg_key>``, ...) where the tokenizer marks those tokens special."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    constraint: Constraint | None = None
    keep_special_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"invalid sampling parameter: {msg}")

        for name in (
            "temperature",
            "top_p",
            "min_p",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"{name} must be a number, got {value!r}")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise bad(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.temperature < GREEDY_BELOW:  # logits / 1e-40 are all +inf: the limit is argmax
            object.__setattr__(self, "temperature", 0.0)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.top_k >= 1 << 31:  # any k past the vocabulary keeps every token (the C int64
            object.__setattr__(self, "top_k", 0)  # would wrap 2**63 negative, 2**64+5 to 5)
        if not 0.0 < _f32(self.top_p) <= 1.0:  # as the sampler reads it (float32)
            raise bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise bad(f"min_p must be in [0, 1), got {self.min_p}")
        if not _f32(self.repetition_penalty) > 0:
            raise bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not math.isfinite(value) or abs(value) > 2.0:
                raise bad(f"{name} must be in [-2, 2], got {value}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise bad(f"seed must be an integer, got {self.seed!r}")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool)
            or not isinstance(self.logprobs, int)
            or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise bad(
                f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}] (0: the chosen "
                f"token only; k: also the k most likely tokens), got {self.logprobs!r}"
            )
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise bad(
                "constraint must be an inference_pio.structured.Constraint (e.g. "
                f"Constraint.json_schema(schema)), got {type(self.constraint).__name__}"
            )
        stops = (self.stop,) if isinstance(self.stop, str) else self.stop  # one string, not chars
        if not isinstance(stops, (tuple, list, set, frozenset)):
            raise bad(f"stop must be a string or a list of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stops))
        ids = self.stop_token_ids
        if not isinstance(ids, (tuple, list, set, frozenset)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):  # int() would read "151645" as six ids and 1.7 as 1
            raise bad(f"stop_token_ids must be a list of token ids (integers >= 0), got {ids!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in ids))
        if not isinstance(self.ignore_eos, bool):
            raise bad(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        keep = self.keep_special_ids
        if not isinstance(keep, (tuple, list, set, frozenset)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in keep
        ):
            raise bad(f"keep_special_ids must be token ids (integers >= 0), got {keep!r}")
        object.__setattr__(self, "keep_special_ids", tuple(sorted(set(keep))))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop strings must be non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_generation_config(
        cls, generation_config: Mapping[str, Any], **overrides: Any
    ) -> SamplingParams:
        """Defaults from a checkpoint's generation_config.json, then explicit overrides.

        As in transformers, the defaults decode greedily unless ``do_sample`` is true (then
        ``temperature``, ``top_k`` (default 50), ``top_p``, ``min_p`` and
        ``repetition_penalty`` come from the file). Unknown override names raise TypeError;
        ``None`` overrides are ignored.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        gc = dict(generation_config)
        for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            if gc.get(key) is not None:
                values[key] = gc[key]
        # transformers' GenerationConfig: greedy unless do_sample is true; sampling without a
        # top_k keeps the 50 best
        if gc.get("do_sample") is not True:
            values["temperature"] = 0.0
        elif gc.get("top_k") is None:
            values["top_k"] = 50
        if gc.get("max_new_tokens") is not None:
            values["max_new_tokens"] = gc["max_new_tokens"]
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "stop" and isinstance(value, str):
                value = (value,)
            values[key] = value
        if isinstance(values.get("top_k"), float) and values["top_k"].is_integer():
            values["top_k"] = int(values["top_k"])
        return cls(**values)


class Sampler:
    """Draws tokens for one sequence: keeps the RNG state and the token history counts."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int] = ()) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else int.from_bytes(_urandom8(), "little")
        self._rng = ctypes.c_uint64(seed & 0xFFFFFFFFFFFFFFFF)
        self._uses_history = (
            params.repetition_penalty != 1.0
            or params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0
        )
        # the history the native sampler reads: distinct ids and how often each was generated,
        # kept as int32 arrays that grow by one entry per new id (no rebuild per token)
        self._hist_ids = array("i")
        self._hist_counts = array("i")
        self._slot: dict[int, int] = {}
        if params.repetition_penalty != 1.0:
            # HF's repetition penalty covers the prompt too; presence/frequency only generated text.
            for t in prompt_ids:
                if not 0 <= int(t) < 1 << 31:
                    raise ValueError(f"token id {t} is not a valid id")
                self._slot_of(int(t))
        self._out = ctypes.c_int64()

    @property
    def plain_greedy(self) -> bool:
        """Greedy without penalties: the token is the row's argmax (see :func:`greedy_rows`)."""
        return self.params.greedy and not self._uses_history

    def _slot_of(self, token: int) -> int:
        s = self._slot.get(token)
        if s is None:
            s = self._slot[token] = len(self._hist_ids)
            self._hist_ids.append(token)
            self._hist_counts.append(0)
        return s

    def observe(self, token: int) -> None:
        """Records a generated token (for the penalties)."""
        if self._uses_history:
            self._hist_counts[self._slot_of(token)] += 1

    def sample(self, logits: Tensor) -> int:
        """One token id from a logits row [vocab] (f32 or bf16). A CUDA row is sampled on its
        device where :func:`device_supports` the settings, with the CPU's draws; otherwise it is
        copied to the host first."""
        if logits.dtype not in (DType.float32, DType.bfloat16) or logits.ndim != 1:
            raise ValueError(f"logits must be a 1-d f32/bf16 tensor, got {logits}")
        fn: Any = None
        if not logits.is_contiguous():
            logits = logits.contiguous()
        if logits.device.type == "cuda" and device_supports(self.params, logits.shape[0]):
            from inference_pio import cuda

            try:
                fn = cuda.function("sample", logits.device)
            except NotImplementedError:  # a CUDA library older than toc_sample
                fn = None
        if fn is None and logits.device.type != "cpu":
            logits = logits.to("cpu")
        p = self.params
        n_hist = len(self._hist_ids) if self._uses_history else 0
        ids_buf: Any = None
        counts_buf: Any = None
        if n_hist:
            ids_buf = (ctypes.c_int32 * n_hist).from_buffer(self._hist_ids)
            counts_buf = (ctypes.c_int32 * n_hist).from_buffer(self._hist_counts)
        rc = (fn or lib().to_sample)(
            logits.data_ptr,
            int(logits.dtype),
            logits.shape[0],
            ids_buf,
            counts_buf,
            n_hist,
            p.temperature,
            p.top_k,
            p.top_p,
            p.min_p,
            p.repetition_penalty,
            p.presence_penalty,
            p.frequency_penalty,
            ctypes.byref(self._rng),
            ctypes.byref(self._out),
        )
        if fn is None:
            check(rc, "to_sample")
        elif rc == _TO_ERR_UNSUPPORTED:
            # a nucleus wider than the device orders (16384 candidates): the RNG state is untouched
            return self.sample(logits.to("cpu"))
        else:
            from inference_pio import cuda

            cuda.check(rc, "toc_sample")
        return int(self._out.value)


_TO_ERR_UNSUPPORTED = 7


def greedy_rows(logits: Tensor) -> list[int] | None:
    """The greedy id of every row of CUDA logits ``[rows, vocab]`` (contiguous rows, f32 or bf16) in
    one device call and one copy back: what :meth:`Sampler.sample` draws for a greedy row without
    penalties. None where that call is not available (not CUDA, device sampling turned off, an older
    library): sample the rows one by one."""
    if (
        logits.device.type != "cuda"
        or logits.ndim != 2
        or logits.dtype not in (DType.float32, DType.bfloat16)
        or not logits.is_contiguous()
        or not 0 < logits.shape[0] <= 65535
        or os.environ.get("INFERENCE_PIO_CUDA_DEVICE_SAMPLING", "1") == "0"
    ):
        return None
    from inference_pio import cuda

    try:
        fn = cuda.function("sample_greedy_rows", logits.device)
    except NotImplementedError:
        return None
    rows, vocab = logits.shape
    out = (ctypes.c_int64 * rows)()
    cuda.check(
        fn(logits.data_ptr, int(logits.dtype), rows, vocab, vocab, out), "toc_sample_greedy_rows"
    )
    return list(out)


def device_supports(params: SamplingParams, vocab: int) -> bool:
    """Whether ``toc_sample`` draws for ``params`` on the GPU: greedy, top_k 1..1024 or no top-k
    cut (0 or >= vocab), with any top-p, min-p and penalties. A top-p / min-p nucleus of more than
    16384 candidates is still drawn on the host (``Sampler.sample`` does that by itself).
    ``INFERENCE_PIO_CUDA_DEVICE_SAMPLING=0`` samples every row on the host."""
    if os.environ.get("INFERENCE_PIO_CUDA_DEVICE_SAMPLING", "1") == "0":
        return False
    k = params.top_k
    return params.temperature == 0.0 or k == 0 or k >= vocab or 1 <= k <= 1024


def _urandom8() -> bytes:
    return os.urandom(8)
