"""Chunked prefill for the BatchManager's continuous batching (vLLM's ``--enable-chunked-prefill``
with ``--max-num-batched-tokens``, llama.cpp server's ``--ubatch-size``): a long prompt arriving
while other requests stream is prefilled a chunk per step, so the running sequences keep
decoding between its chunks instead of waiting for its whole prefill, and no forward call holds
the activations of more than the step's budget of tokens.

Each step has a budget of tokens (``max_num_batched_tokens``). The running sequences' decode
rows take one token each; what is left (:func:`prefill_room`, at least one token, so that a
prefill always moves) goes to the sequences still prefilling their prompts, oldest first, each
taking as many of its remaining prompt tokens as fit (:func:`plan`). A waiting request is
admitted only while the step has room left for it. A sequence continues its prefill in its own
cache from where the last chunk stopped (``cache.length`` tokens of its prompt are in it, a kept
prefix included), as a forward call allows for every cache type (keys and values, MLA latents,
Gated DeltaNet states). The chunk that ends its prompt gives the logits its first token is
sampled from; from the next step on it is a decode row.

The decode rows and the chunks run as two forward calls, the decode rows first (their tokens are
streamed before the chunk runs): decode keeps its fast paths (the CUDA batch graphs, the CPU
batch-1 decode plans, the batched decode attention), and a chunk that fails cannot touch a
running sequence's cache (:func:`run_chunks` fails only the requests whose chunks fail). The
price is one more read of the weights a step while a prompt is being prefilled, small next to a
chunk of hundreds of tokens.

Each chunk's attention reads the whole past of its prompt, so chunks cost somewhat more than one
whole prefill (more so for small budgets). GLM's MLA maps every cached latent to per-head keys
and values for each chunk of 32 tokens or more: its scratch grows with the past, not the chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from inference_pio.generation import ForwardModel, SequenceState
from inference_pio.prefix_pool import rewindable
from inference_pio.tensor import Tensor

#: Default step budget by device type: on the CPU a chunk of 512 tokens already reads the
#: weights at full matrix-multiply efficiency (llama.cpp's default ``--ubatch-size``); a GPU
#: needs thousands of rows to fill its cores (vLLM's default for its API server).
DEFAULT_MAX_NUM_BATCHED_TOKENS = {"cpu": 512, "cuda": 8192}


def resolve_budget(value: int | None, device_type: str) -> int:
    """The step budget of a BatchManager: ``value`` (0: chunking off, every admitted prompt is
    prefilled whole) or, for None, the device type's default."""
    if value is None:
        defaults = DEFAULT_MAX_NUM_BATCHED_TOKENS
        return defaults.get(device_type, defaults["cpu"])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_num_batched_tokens must be an int >= 0 (0: off), got {value!r}")
    return value


def prefilling(state: SequenceState) -> bool:
    """Whether ``state`` is still prefilling its prompt (no token sampled yet, not finished)."""
    return not state.generated and not state.finished


def remaining(state: SequenceState) -> int:
    """Prompt tokens ``state`` has still to prefill (its cache holds the others)."""
    return len(state.prompt_ids) - int(state.cache.length)


def prefill_room(budget: int, decode_rows: int) -> int:
    """Prefill tokens a step may run beside ``decode_rows`` decode rows (at least one)."""
    return max(1, budget - decode_rows)


@dataclass
class Chunk:
    """The next ``tokens`` of a prefilling sequence's prompt (``owner``: the caller's handle on
    it); ``last``: they end the prompt, so their logits give its first token."""

    owner: Any
    state: SequenceState
    tokens: list[int]
    last: bool


def plan(sequences: Iterable[tuple[Any, SequenceState]], room: int) -> list[Chunk]:
    """This step's chunks: ``sequences`` (``(owner, state)`` pairs, oldest first) take their
    remaining prompt tokens in turn until ``room`` tokens are given out."""
    chunks = []
    for owner, state in sequences:
        if room <= 0:
            break
        if not prefilling(state):
            continue
        start = state.cache.length
        n = min(room, len(state.prompt_ids) - start)
        if n <= 0:
            continue
        end = start + n
        last = end == len(state.prompt_ids)
        chunks.append(Chunk(owner, state, state.prompt_ids[start:end], last))
        room -= n
    return chunks


def run_chunks(model: ForwardModel, chunks: Sequence[Chunk]) -> list[Tensor | Exception]:
    """Runs ``chunks`` in one forward call; returns each one's logits row (of its last token), or
    the exception that fails its request. When a call of several chunks fails, each is run again
    alone, so that only the chunks that fail alone fail: a cache that holds its prompt by
    position is cut back to its length before the call first (what the failed call wrote past it
    is overwritten), while a recurrent state (Gated DeltaNet) the failed call may have advanced
    fails its request unless its prefill started with this chunk (it is reset then)."""
    if not chunks:
        return []
    before = [c.state.cache.length for c in chunks]
    try:
        return list(model.forward([(c.tokens, c.state.cache) for c in chunks]))
    except Exception as exc:
        if len(chunks) == 1:
            chunks[0].state.cache.length = before[0]
            return [exc]
        failed = exc
    out: list[Tensor | Exception] = []
    for chunk, length in zip(chunks, before, strict=True):
        cache = chunk.state.cache
        cache.length = length
        if length and not rewindable(cache):
            out.append(failed)
            continue
        try:
            (row,) = model.forward([(chunk.tokens, cache)])
        except Exception as exc:
            cache.length = length
            out.append(exc)
            continue
        out.append(row)
    return out


__all__ = [
    "DEFAULT_MAX_NUM_BATCHED_TOKENS",
    "Chunk",
    "plan",
    "prefill_room",
    "prefilling",
    "remaining",
    "resolve_budget",
    "run_chunks",
]
