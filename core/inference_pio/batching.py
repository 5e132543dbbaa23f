"""BatchManager: first-come-first-served continuous batching over a :class:`ForwardModel`.

Requests wait in a FIFO queue. Each step admits waiting requests into free slots (their prompts
are prefilled together in one forward call), then runs one decode step for every active sequence
in one forward call: the weights are read once per step for the whole batch, each sequence keeps
its own cache and length. Finished sequences leave at once and free their slot.

On a CUDA device the decode steps replay captured CUDA graphs where the model allows it
(nn.cuda_batch_graph: each sequence decodes in one of a fixed set of device caches), so a step
costs one graph launch instead of ~10 native calls per layer from Python. When one sequence is
left with nothing queued, it moves to the batch-1 path (its cache copied into the batch-1 graph
decoder's), whose fused step is faster than a batched step of one row.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference_pio.generation import (
    Detokenizer,
    ForwardModel,
    GenerationResult,
    IncrementalText,
    SequenceState,
    check_context,
)
from inference_pio.sampling import SamplingParams, greedy_rows

#: Tokens a last remaining sequence must have left for the BatchManager to move it to the
#: batch-1 path (copying its cache costs about a step).
ALONE_MIN_TOKENS = 16


@dataclass
class _Request:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    capacity: int


class BatchManager:
    """Runs many generation requests as real batches; results come back in request order."""

    def __init__(
        self,
        model: ForwardModel,
        detokenizer: Detokenizer,
        eos_ids: Sequence[int] = (),
        max_batch_size: int = 8,
        max_prefill_tokens: int = 4096,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = model
        self.detokenizer = detokenizer
        self.eos_ids = frozenset(eos_ids)
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self._queue: deque[_Request] = deque()
        self._results: dict[int, GenerationResult] = {}
        self._next = 0
        #: Sizes of the decode batches run so far (observability and tests).
        self.decode_batch_sizes: list[int] = []
        #: Sequences finished on the batch-1 path after the others ended (observability, tests).
        self.finished_alone = 0

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        """Queues a request (validated now); returns its index."""
        prompt = list(prompt_ids)
        capacity = check_context(self.model, len(prompt), params)
        index = self._next
        self._next += 1
        self._queue.append(_Request(index, prompt, params, capacity))
        return index

    def _graph_decoder(self) -> Any:
        """The model's batched CUDA graph decoder for the queued requests, or None (CPU, an
        unsupported model, or turned off: steps then run through ``model.forward``)."""
        if getattr(getattr(self.model, "device", None), "type", "cpu") != "cuda" or not self._queue:
            return None
        from inference_pio.nn import cuda_batch_graph

        capacity = max(r.capacity for r in self._queue)
        graphs = cuda_batch_graph.for_model(self.model, self.max_batch_size, capacity)
        if graphs is not None:
            graphs.reset()
        return graphs

    def run(self) -> list[GenerationResult]:
        """Processes every queued request; returns all results ordered by request index."""
        active: list[tuple[_Request, SequenceState]] = []
        graphs = self._graph_decoder()
        while self._queue or active:
            admitted: list[tuple[_Request, SequenceState]] = []
            budget = self.max_prefill_tokens
            while self._queue and len(active) + len(admitted) < self.max_batch_size:
                req = self._queue[0]
                if admitted and len(req.prompt_ids) > budget:
                    break
                self._queue.popleft()
                budget -= len(req.prompt_ids)
                state = SequenceState(
                    req.prompt_ids, req.params, self.eos_ids, IncrementalText(self.detokenizer)
                )
                slot = graphs.acquire() if graphs is not None else None
                state.cache = slot if slot is not None else self.model.new_cache(req.capacity)
                admitted.append((req, state))
            if admitted:
                logits = self.model.forward([(r.prompt_ids, s.cache) for r, s in admitted])
                now = time.perf_counter()
                for (req, state), row in zip(admitted, logits, strict=False):
                    state.prefill_done_at = now
                    state.accept(row)
                    active.append((req, state))
            active = self._retire(active, graphs)
            if not active:
                continue
            self.decode_batch_sizes.append(len(active))
            greedy: list[int] | None = None
            if graphs is not None:
                logits = graphs.step([(s.generated[-1], s.cache) for _, s in active])
                if any(s.sampler.plain_greedy for _, s in active):
                    # every row's argmax in one call instead of one draw (and copy) per row
                    by_slot = greedy_rows(graphs.last_logits)
                    if by_slot is not None:
                        greedy = [by_slot[slot] for slot in graphs.last_slots]
            else:
                logits = self.model.forward([([s.generated[-1]], s.cache) for _, s in active])
            for i, ((_, state), row) in enumerate(zip(active, logits, strict=False)):
                if greedy is not None and state.sampler.plain_greedy:
                    state.accept_token(greedy[i])
                else:
                    state.accept(row)
            active = self._retire(active, graphs)
            alone = graphs is not None and len(active) == 1 and not self._queue
            if alone and self._finish_alone(*active[0], graphs):
                active = []
        results = [self._results[i] for i in sorted(self._results)]
        self._results.clear()
        return results

    def _finish_alone(self, req: _Request, state: SequenceState, graphs: Any) -> bool:
        """Runs the last active sequence to its end on the batch-1 path (one fused decode step
        per token on CUDA, faster than the batched graph at one row) when enough tokens are left
        to repay copying its cache; False where it stays in the batched graph."""
        if state.params.max_new_tokens - len(state.generated) < ALONE_MIN_TOKENS:
            return False
        from inference_pio.nn.cuda_graph import continue_alone

        slot = state.cache
        rest = continue_alone(self.model, state, req.capacity)  # type: ignore[arg-type]
        if rest is None:
            return False
        graphs.release(slot)
        for _ in rest:
            pass
        self._results[req.index] = state.result(time.perf_counter())
        self.finished_alone += 1
        return True

    def _retire(
        self, active: list[tuple[_Request, SequenceState]], graphs: Any = None
    ) -> list[tuple[_Request, SequenceState]]:
        keep = []
        now = time.perf_counter()
        for req, state in active:
            if not state.finished and state.cache.length >= req.capacity:
                state.finish_reason = "length"
            if state.finished:
                if state.finish_reason == "length":
                    state.stops.push(state.detok.flush())
                    state.stops.flush()
                self._results[req.index] = state.result(now)
                if graphs is not None:
                    graphs.release(state.cache)
            else:
                keep.append((req, state))
        return keep
