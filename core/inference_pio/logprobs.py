"""Log probabilities of generated tokens (OpenAI's ``logprobs``), as vLLM returns them by default.

The values are the log-softmax of the model's raw logits row, before temperature, top-k, top-p,
min-p and the penalties change it (vLLM's default ``logprobs_mode="raw_logprobs"``). They are
computed where the row lives (a CUDA row on its device); only the chosen token's value and the
``k`` best (value, id) pairs come back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor

#: The most alternatives a token may carry (OpenAI's and vLLM's ``top_logprobs`` limit).
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One output token: its id and log probability, and the ``k`` most likely tokens of the same
    step as (id, log probability) pairs, most likely first (among equal values the lower id
    first, the order in which the greedy sampler picks)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = field(default_factory=tuple)


def token_logprobs(logits: Tensor, token: int, k: int) -> TokenLogprob:
    """The :class:`TokenLogprob` of ``token`` drawn from the logits row ``logits`` ([vocab], f32
    or bf16, on the CPU or a CUDA device), with the ``k`` (0..:data:`MAX_LOGPROBS`, at most the
    vocabulary) most likely tokens. log_softmax runs in fp32 on the row's device."""
    from inference_pio import ops

    if logits.ndim != 1 or logits.dtype not in (DType.float32, DType.bfloat16):
        raise ValueError(f"logits must be a 1-d f32/bf16 tensor, got {logits}")
    vocab = logits.shape[0]
    if not 0 <= token < vocab:
        raise ValueError(f"token id {token} outside the vocabulary [0, {vocab})")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    lp = ops.log_softmax(logits, out_dtype=DType.float32)
    chosen = float(lp[token : token + 1].to("cpu").tolist()[0])
    k = min(k, vocab)
    if k == 0:
        return TokenLogprob(token, chosen)
    values, ids = ops.topk(lp, k)
    top = zip(ids.to("cpu").tolist(), values.to("cpu").tolist(), strict=True)
    return TokenLogprob(token, chosen, tuple((int(i), float(v)) for i, v in top))


__all__ = ["MAX_LOGPROBS", "TokenLogprob", "token_logprobs"]
