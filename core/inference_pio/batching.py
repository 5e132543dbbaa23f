"""BatchManager: first-come-first-served continuous batching over a :class:`ForwardModel`.

Requests wait in a FIFO queue. Each step admits waiting requests into free slots, runs one decode
step for every running sequence in one forward call (the weights are read once per step for the
whole batch, each sequence keeps its own cache and length) and prefills prompts. Finished
sequences leave at once and free their slot.

Prompts are prefilled in chunks (:mod:`inference_pio.prefill_chunks`; vLLM's chunked prefill):
a step runs at most ``max_num_batched_tokens`` tokens, the decode rows first, then chunks of
the prompts being prefilled, oldest first, in one more forward call; a request is admitted only
while the step has room for some of its prompt, and samples its first token from its last
chunk's logits. A long prompt thus holds the running streams back by one chunk per step, not
its whole prefill. With ``max_num_batched_tokens=0`` the admitted prompts are prefilled whole,
together in one call (at most ``max_prefill_tokens`` of them a step), before the decode step.

On a CUDA device the decode steps replay captured CUDA graphs where the model allows it
(nn.cuda_batch_graph: each sequence decodes in one of a fixed set of device caches), so a step
costs one graph launch instead of ~10 native calls per layer from Python. When one sequence is
left with nothing queued, it moves to the batch-1 path (its cache copied into the batch-1 graph
decoder's), whose fused step is faster than a batched step of one row; a model without batched
graphs (GLM-4.7-Flash, Qwen3-Coder-Next) moves there too, to its own decode step captured in a
graph (nn.cuda_capture), instead of decoding op by op. In :meth:`BatchManager.serve`
it goes back into the batch as soon as another request arrives (it is checked every
:data:`ALONE_CHUNK` tokens).

Requests with logprobs (``SamplingParams.logprobs``) or a constraint (structured outputs,
``SamplingParams.constraint``: the row is masked before the draw) need each step's logits row: in
a batch graph step they take their row of ``last_logits`` (not the batch's device argmax that
plain greedy requests take), and alone on the batch-1 path the captured step is replayed one
token at a time and its logits row read (see :func:`~inference_pio.nn.cuda_graph.continue_alone`).

With a :class:`~inference_pio.prefix_pool.PrefixPool` (``prefix_pool``; on in ``inference-pio
serve``), finished and cancelled sequences' caches are kept with the token ids they hold, and an
admitted prompt starts from the kept cache sharing its longest prefix: only the rest is
prefilled (:attr:`GenerationResult.cached_tokens`). On CUDA with batch graphs the kept caches are
the free slots themselves (a prompt takes the slot holding its prefix, or the prefix is copied
into another free slot); a sequence that finished on the batch-1 path has its cache copied back
into its slot first. A failed step empties the pool.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inference_pio.generation import (
    Detokenizer,
    ForwardModel,
    GenerationResult,
    IncrementalText,
    SequenceState,
    check_context,
    new_grammar,
)
from inference_pio.prefill_chunks import (
    plan,
    prefill_room,
    prefilling,
    remaining,
    resolve_budget,
    run_chunks,
)
from inference_pio.prefix_pool import Match, PrefixPool, copy_prefix, find_live, rewindable
from inference_pio.sampling import SamplingParams, greedy_rows

#: Tokens a last remaining sequence must have left for the BatchManager to move it to the
#: batch-1 path (copying its cache costs about a step).
ALONE_MIN_TOKENS = 16
#: Tokens a lone sequence of :meth:`BatchManager.serve` decodes between two looks at the queue:
#: a request arriving meanwhile waits at most this many batch-1 steps.
ALONE_CHUNK = 8


#: ``on_piece(index, text)``: a streamed request's text as it becomes final.
PieceCallback = Callable[[int, str], None]
#: ``on_finish(index, result)``: a request's result, once it is done.
FinishCallback = Callable[[int, GenerationResult], None]
#: ``on_error(index, exc)``: a request that failed while running (``serve`` keeps going).
ErrorCallback = Callable[[int, Exception], None]
#: ``on_token(index, n)``: a request drew ``n`` tokens (1, or a chunk alone on the batch-1
#: path; an EOS that ends it included), for timing (metrics).
TokenCallback = Callable[[int, int], None]


@dataclass
class _Request:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    capacity: int
    on_piece: PieceCallback | None = None
    on_finish: FinishCallback | None = None
    on_error: ErrorCallback | None = None
    on_token: TokenCallback | None = None
    failed: bool = False  # a callback of its own raised: it got on_error and is being dropped
    grammar: Any = None  # the matcher of a constrained request (made at submit)


#: Decode batch sizes serve() keeps (the older half goes past this many).
_KEEP_SIZES = 100_000


class BatchManager:
    """Runs many generation requests as real batches; results come back in request order."""

    def __init__(
        self,
        model: ForwardModel,
        detokenizer: Detokenizer,
        eos_ids: Sequence[int] = (),
        max_batch_size: int = 8,
        max_prefill_tokens: int = 4096,
        prefix_pool: PrefixPool | None = None,
        max_num_batched_tokens: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        """``prefix_pool``: where finished sequences' caches are kept for prompts that start
        the same way (None: every prompt is prefilled whole). Models split across devices
        (``model.hybrid``) never reuse caches. ``max_num_batched_tokens``: the tokens a step
        runs at most, decode rows and prefill chunks (None: the device's default,
        :data:`~inference_pio.prefill_chunks.DEFAULT_MAX_NUM_BATCHED_TOKENS`; 0: prompts are
        prefilled whole, ``max_prefill_tokens`` of them at most a step). ``on_step(batch_size)``:
        called at every decode step (a batch-1 step of a sequence alone too), for metrics."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = model
        #: Tokens a step runs at most (0: chunked prefill off).
        self.max_num_batched_tokens = resolve_budget(max_num_batched_tokens, self._device_type())
        self.detokenizer = detokenizer
        self.eos_ids = frozenset(eos_ids)
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self._queue: deque[_Request] = deque()
        self._results: dict[int, GenerationResult] = {}
        self._next = 0
        # submit() may be called from other threads while serve() runs
        self._lock = threading.Condition()
        self._cancelled: set[int] = set()
        self._live: set[int] = set()  # submitted and not yet finished, failed or dropped
        #: Sizes of the decode batches run so far (observability and tests).
        self.decode_batch_sizes: list[int] = []
        #: Sequences finished on the batch-1 path after the others ended (observability, tests).
        self.finished_alone = 0
        #: Times a lone sequence left the batch-1 path for the batch again (serve; tests).
        self.rejoined = 0
        self._no_alone = False  # the model has no batch-1 graph decoder
        #: Kept caches of finished sequences (prefix caching), or None.
        self.prefix_pool = prefix_pool if not getattr(model, "hybrid", False) else None
        #: Prompt tokens prefilled, and taken from kept caches instead, so far (observability).
        self.prefill_tokens = 0
        self.cached_tokens = 0
        #: Tokens of each chunked prefill call so far (observability and tests).
        self.prefill_chunk_sizes: list[int] = []
        self.on_step = on_step

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        on_piece: PieceCallback | None = None,
        on_finish: FinishCallback | None = None,
        on_error: ErrorCallback | None = None,
        on_token: TokenCallback | None = None,
    ) -> int:
        """Queues a request (validated now: token ids, context); returns its index.
        ``on_piece`` receives its text as it is produced, ``on_finish`` its result, ``on_error``
        a failure while it runs, ``on_token`` each token it draws (all called from the thread
        that runs the batches). Safe to call from any thread while :meth:`serve` runs."""
        prompt = list(prompt_ids)
        bad_type = next((t for t in prompt if isinstance(t, bool) or not isinstance(t, int)), None)
        if bad_type is not None:  # 1.5 or True would fail a later step, in the engine's thread
            raise TypeError(
                f"prompt token ids must be integers, got {type(bad_type).__name__} {bad_type!r}"
            )
        capacity = check_context(self.model, len(prompt), params)
        vocab = self.model.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} outside the vocabulary [0, {vocab})")
        grammar = None
        if params.constraint is not None:  # a grammar it cannot use fails here, not later
            grammar = new_grammar(params, self.detokenizer, self.eos_ids)
        with self._lock:
            index = self._next
            self._next += 1
            request = _Request(
                index, prompt, params, capacity, on_piece, on_finish, on_error, on_token
            )
            request.grammar = grammar
            self._queue.append(request)
            self._live.add(index)
            self._lock.notify()
        return index

    def cancel(self, index: int) -> None:
        """Stops a request at the next step (its client went away); it gets no result. An index
        that is not queued or running (finished, failed, unknown) is ignored."""
        with self._lock:
            if index not in self._live:
                return
            for req in self._queue:  # still waiting: it leaves the queue now (not a waiting one)
                if req.index == index:
                    self._queue.remove(req)
                    self._live.discard(index)
                    return
            self._cancelled.add(index)

    def counts(self) -> tuple[int, int]:
        """Requests running (admitted, not done yet) and waiting (queued) now (metrics)."""
        with self._lock:
            waiting = len(self._queue)
            return len(self._live) - waiting, waiting

    def _device_type(self) -> str:
        return str(getattr(getattr(self.model, "device", None), "type", "cpu"))

    def _graph_decoder(self) -> Any:
        """The model's batched CUDA graph decoder for the queued requests, or None (CPU, an
        unsupported model, or turned off: steps then run through ``model.forward``)."""
        if self._device_type() != "cuda" or not self._queue:
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
        try:
            while self._queue or active:
                active = self._step(active, graphs, alone=True)
        except Exception:
            if self.prefix_pool is not None:  # what the failed step wrote is not trusted
                self.prefix_pool.clear()
            raise
        results = [self._results[i] for i in sorted(self._results)]
        self._results.clear()
        return results

    def serve(
        self,
        stop: threading.Event,
        model_lock: Any = None,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        """Runs batches as requests arrive (from :meth:`submit` in other threads) until ``stop``
        is set: continuous batching for a server. Results go only to the requests' callbacks.
        A request whose cache does not fit the decode graphs' slots waits until the running
        batch is done (the slots are then resized). ``model_lock`` (a lock) is held during each
        step, so that other work on the same model can run between steps. On CUDA a sequence
        left alone decodes on the batch-1 path until a request arrives, it is cancelled,
        ``stop`` is set or ``wanted()`` (someone waits for ``model_lock``) is true."""

        def interrupt_for(req: _Request) -> Callable[[], bool]:
            return lambda: bool(
                self._queue
                or stop.is_set()
                or req.index in self._cancelled
                or (wanted is not None and wanted())
            )

        active: list[tuple[_Request, SequenceState]] = []
        graphs: Any = None
        held = model_lock if model_lock is not None else contextlib.nullcontext()
        while not stop.is_set():
            with self._lock:
                while not self._queue and not active and not stop.is_set():
                    self._lock.wait(timeout=0.5)
            if stop.is_set():
                break
            running = active  # _step appends the requests it admits to this list
            try:
                with held:
                    if not active:
                        graphs = self._graph_decoder()  # sized for what waits now
                    active = self._step(active, graphs, alone=interrupt_for)
            except Exception as exc:  # one bad step fails its requests, not the server
                for req, state in running:
                    if not state.finished and not req.failed:  # not those already answered
                        _report_error(req, exc)
                    self._forget(req.index)
                active = []
                if graphs is not None:
                    graphs.reset()
                if self.prefix_pool is not None:  # what the failed step wrote is not trusted
                    self.prefix_pool.clear()
            running = []  # finished sequences' caches go now, not when the next request comes
            self._results.clear()
            for sizes in (self.decode_batch_sizes, self.prefill_chunk_sizes):
                if len(sizes) > _KEEP_SIZES:  # a server runs for days
                    del sizes[: _KEEP_SIZES // 2]
        for req, _ in active:  # stopped mid-run: these get no result
            self._forget(req.index)

    def _admit(
        self, running: list[tuple[_Request, SequenceState]], graphs: Any
    ) -> list[tuple[_Request, SequenceState]]:
        active_count = len(running)
        admitted: list[tuple[_Request, SequenceState]] = []
        refused: list[tuple[_Request, Exception]] = []
        chunked = self.max_num_batched_tokens > 0
        budget = self._room_left(running) if chunked else self.max_prefill_tokens
        with self._lock:
            while self._queue and active_count + len(admitted) < self.max_batch_size:
                req = self._queue[0]
                if req.index in self._cancelled:
                    self._queue.popleft()
                    self._cancelled.discard(req.index)
                    self._live.discard(req.index)
                    continue
                fits = graphs is None or req.capacity <= graphs.capacity
                match = self._match(req.prompt_ids, graphs, running, admitted) if fits else None
                todo = len(req.prompt_ids) - (match.tokens if match is not None else 0)
                if (budget <= 0) if chunked else (admitted and todo > budget):
                    break
                if not fits:
                    break  # waits for the running batch to end and the slots to grow
                self._queue.popleft()
                slot = None
                try:  # its own failure (a cache it cannot get) fails this request alone
                    state = SequenceState(
                        req.prompt_ids,
                        req.params,
                        self.eos_ids,
                        IncrementalText(self.detokenizer),
                        grammar=req.grammar,
                    )
                    if graphs is not None:
                        prefer = self._slot_for(match, graphs)
                        slot = graphs.acquire(prefer) if prefer is not None else graphs.acquire()
                    state.cache, state.cached_tokens = self._cache_for(req, match, slot)
                except Exception as exc:
                    if slot is not None:
                        graphs.release(slot)
                    if req.on_error is None:  # run(): the caller sees the exception
                        raise
                    refused.append((req, exc))
                    continue
                budget -= todo
                admitted.append((req, state))
        for bad, why in refused:  # outside the lock: the callbacks are the caller's code
            _report_error(bad, why)
            self._forget(bad.index)
        return admitted

    def _room_left(self, running: list[tuple[_Request, SequenceState]]) -> int:
        """Prefill tokens this step has left for newly admitted prompts: its budget less the
        running sequences' decode rows and the prompts still being prefilled."""
        rows = sum(1 for _, s in running if not prefilling(s))
        todo = sum(remaining(s) for _, s in running if prefilling(s))
        return prefill_room(self.max_num_batched_tokens, rows) - todo

    def _match(
        self,
        prompt: list[int],
        graphs: Any,
        running: list[tuple[_Request, SequenceState]],
        admitted: list[tuple[_Request, SequenceState]],
    ) -> Match | None:
        """The cache sharing the longest usable prefix with ``prompt`` (nothing taken yet): a
        kept one (owned, or with batch graphs a free slot still holding what it was kept with),
        else that of a sequence running or admitted in this step (copied from)."""
        pool = self.prefix_pool
        if pool is None:
            return None
        if graphs is None:
            kept = pool.find(prompt)
        else:

            def valid(cache: Any, owned: bool, tag: Any) -> bool:
                return owned or (graphs.is_free(cache) and graphs.slot_uses(cache) == tag)

            kept = pool.find(prompt, valid)
        live = find_live(
            prompt, ((r.prompt_ids + s.generated, s.cache) for r, s in (*running, *admitted))
        )
        if live is not None and (kept is None or live.tokens > kept.tokens):
            return live
        return kept

    def _slot_for(self, match: Match | None, graphs: Any) -> Any:
        """The free slot a request should take: the one holding its prefix when the prompt
        covers all of it, else the free slot whose kept tokens matter least (never the one the
        prefix is copied from while another is free)."""
        pool = self.prefix_pool
        if pool is None:
            return None
        if match is not None and match.covered and not match.owned:
            return match.cache
        free = graphs.free_caches()
        others = [c for c in free if match is None or c is not match.cache]
        return pool.victim(others or free)

    def _cache_for(self, req: _Request, match: Match | None, slot: Any) -> tuple[Any, int]:
        """The cache of an admitted request and how many prompt tokens it holds already: its
        graph slot (``slot``; the kept prefix copied in unless it is that slot's own) or its own
        cache (a kept one taken, a new one with the prefix copied in, or a new empty one)."""
        pool = self.prefix_pool
        if slot is not None:
            if pool is not None:
                pool.discard(slot)  # what it held is being overwritten
            if match is None:
                return slot, 0
            if match.cache is slot:
                slot.length = match.tokens  # acquire() emptied it; its tokens are still there
            else:
                copy_prefix(match.cache, slot, match.tokens)
                if match.owned and match.covered and pool is not None:
                    pool.discard(match.cache)  # the slot holds all of it now
            return slot, match.tokens
        if match is None or pool is None:
            return self._new_cache(req.capacity), 0
        if match.live or not match.owned:  # a running sequence's cache, or a graph slot
            cache = self._new_cache(req.capacity)
            copy_prefix(match.cache, cache, match.tokens)
            return cache, match.tokens
        return pool.take(match, req.capacity, self._new_cache), match.tokens

    def _new_cache(self, capacity: int) -> Any:
        """A new cache; where none can be made (device memory), the kept caches are let go
        and it is tried once more."""
        try:
            return self.model.new_cache(capacity)
        except Exception:
            pool = self.prefix_pool
            if pool is None or not len(pool):
                raise
            pool.clear()
            return self.model.new_cache(capacity)

    def _keep(self, req: _Request, state: SequenceState, cache: Any, graphs: Any) -> None:
        """Keeps the cache of a finished or cancelled sequence with the ids it holds (not one
        that failed): a free graph slot as borrowed, its own cache as owned."""
        pool = self.prefix_pool
        if pool is None or req.failed:
            return
        ids = req.prompt_ids + state.generated
        if graphs is not None and graphs.is_free(cache):
            pool.put(ids, cache, owned=False, tag=graphs.slot_uses(cache))
        else:
            pool.put(ids, cache)

    def _step(
        self,
        active: list[tuple[_Request, SequenceState]],
        graphs: Any,
        alone: bool | Callable[[_Request], Callable[[], bool]],
    ) -> list[tuple[_Request, SequenceState]]:
        """Admits what fits, runs one decode step for every running sequence and prefills
        (chunks of the prompts being prefilled after the decode step, or with chunking off the
        admitted prompts whole before it); returns the sequences still running. The admitted
        requests are appended to ``active`` itself first (a caller keeping that list knows
        every request of the step). ``alone``: whether a last sequence moves to the batch-1
        path (True: to its end; a function of the request: until the interrupt it returns
        says so)."""
        admitted = self._admit(active, graphs)
        active.extend(admitted)
        if self.max_num_batched_tokens > 0:
            active = self._retire(active, graphs)  # cancelled since the last step
            decoding = [(r, s) for r, s in active if not prefilling(s)]
            room = prefill_room(self.max_num_batched_tokens, len(decoding))
            self._decode(decoding, graphs)
            self._prefill_chunks(active, room)
        else:
            if admitted:
                self._prefill_whole(admitted)
            active = self._retire(active, graphs)
            self._decode(active, graphs)
        active = self._retire(active, graphs)
        on_cuda = graphs is not None or self._device_type() == "cuda"
        single = alone and on_cuda and len(active) == 1 and not self._queue
        if single and not self._no_alone and not prefilling(active[0][1]):
            interrupt = alone(active[0][0]) if callable(alone) else None
            if self._go_alone(*active[0], graphs, interrupt):
                return []
        return active

    def _prefill_whole(self, admitted: list[tuple[_Request, SequenceState]]) -> None:
        """Prefills the admitted prompts (what their caches do not hold) in one forward call
        and samples their first tokens (chunking off)."""
        logits = self.model.forward(
            [(r.prompt_ids[s.cached_tokens :], s.cache) for r, s in admitted]
        )
        for req, state in admitted:
            self.prefill_tokens += len(req.prompt_ids) - state.cached_tokens
            self.cached_tokens += state.cached_tokens
        now = time.perf_counter()
        for (req, state), row in zip(admitted, logits, strict=False):
            state.prefill_done_at = now
            self._accept(req, state.accept, row)

    def _prefill_chunks(self, active: list[tuple[_Request, SequenceState]], room: int) -> None:
        """Runs the next chunks of the prompts being prefilled (oldest first, ``room`` tokens
        at most) in one forward call; a prompt whose last chunk ran samples its first token.
        A chunk that fails fails its request alone (see :func:`run_chunks`)."""
        chunks = plan(active, room)
        if not chunks:
            return
        self.prefill_chunk_sizes.append(sum(len(c.tokens) for c in chunks))
        starts = [c.state.cache.length for c in chunks]
        results = run_chunks(self.model, chunks)
        now = time.perf_counter()
        for chunk, out, start in zip(chunks, results, starts, strict=True):
            req, state = chunk.owner, chunk.state
            if isinstance(out, Exception):
                if req.on_error is None:  # run(): the caller sees the exception
                    raise out
                self._fail(req, out)
                continue
            self.prefill_tokens += len(chunk.tokens)
            if start == state.cached_tokens:  # its first chunk (counted if cancelled later)
                self.cached_tokens += state.cached_tokens
            if chunk.last:
                state.prefill_done_at = now
                self._accept(req, state.accept, out)

    def _decode(self, active: list[tuple[_Request, SequenceState]], graphs: Any) -> None:
        """One decode step for the sequences ``active`` (each has sampled a token): a batch
        graph step where there are graphs, else one forward call; each samples its next."""
        if not active:
            return
        self.decode_batch_sizes.append(len(active))
        if self.on_step is not None:
            self.on_step(len(active))
        greedy: list[int] | None = None
        if graphs is not None:
            logits = graphs.step([(s.generated[-1], s.cache) for _, s in active])
            if any(_argmax_only(s) for _, s in active):
                # every row's argmax in one call instead of one draw (and copy) per row
                by_slot = greedy_rows(graphs.last_logits)
                if by_slot is not None:
                    greedy = [by_slot[slot] for slot in graphs.last_slots]
        else:
            logits = self.model.forward([([s.generated[-1]], s.cache) for _, s in active])
        for i, ((req, state), row) in enumerate(zip(active, logits, strict=False)):
            if greedy is not None and _argmax_only(state):
                self._accept(req, state.accept_token, greedy[i])
            else:
                self._accept(req, state.accept, row)

    def _go_alone(
        self,
        req: _Request,
        state: SequenceState,
        graphs: Any,
        interrupt: Callable[[], bool] | None,
    ) -> bool:
        """Runs the last active sequence on the batch-1 path (one fused or captured decode step
        per token on CUDA, faster than a batched step of one row, and than op-by-op steps where
        the model has no batched graphs) when enough tokens are left to repay copying its cache:
        to its end (True), or until ``interrupt()`` (its cache is copied back into its batch
        slot or its own cache: False, as where it stays in the batch)."""
        if state.params.max_new_tokens - len(state.generated) < ALONE_MIN_TOKENS:
            return False
        from inference_pio.nn.cuda_graph import continue_alone, move_cache

        slot = state.cache
        rest = continue_alone(
            self.model,  # type: ignore[arg-type]
            state,
            req.capacity,
            interrupt,
            ALONE_CHUNK if interrupt is not None else None,
        )
        if rest is None:
            self._no_alone = not state.finished
            return False
        drawn = len(state.generated)
        for piece in rest:
            drawn = self._drew_alone(req, state, drawn)
            self._emit(req, piece)
            if req.failed:  # dropped at the next retire (its cache goes back first)
                break
        self._drew_alone(req, state, drawn)  # those whose text came with no piece
        if not state.finished:  # interrupted (a full cache finishes with "length")
            move_cache(state, slot)
            self.rejoined += 1
            return False
        if self.prefix_pool is not None and not req.failed and rewindable(state.cache):
            # kept with what it decoded alone (a recurrent state may have run past its last
            # token there: that one keeps what it held when it left)
            move_cache(state, slot)
        if graphs is not None:
            graphs.release(slot)
        result = state.result(time.perf_counter())
        self._results[req.index] = result
        self._finish(req, result)
        self.finished_alone += 1
        self._keep(req, state, slot, graphs)
        return True

    def _drew_alone(self, req: _Request, state: SequenceState, drawn: int) -> int:
        """Tells ``on_step`` and ``on_token`` of the tokens ``state`` drew on the batch-1 path
        since it had ``drawn`` (tokens come in device chunks there: their times are those of
        the chunks' text)."""
        n = len(state.generated) - drawn
        if n <= 0:
            return drawn
        if self.on_step is not None:
            for _ in range(n):
                self.on_step(1)
        self._drew(req, n)
        return len(state.generated)

    def _drew(self, req: _Request, n: int = 1) -> None:
        """``req``'s ``on_token``; one that raises fails that request alone (as in _emit)."""
        if req.on_token is None or req.failed:
            return
        try:
            req.on_token(req.index, n)
        except Exception as exc:
            self._fail(req, exc)

    def _forget(self, index: int) -> None:
        with self._lock:
            self._cancelled.discard(index)
            self._live.discard(index)

    def _accept(self, req: _Request, take: Callable[[Any], str], arg: Any) -> None:
        """Streams the text of ``take(arg)`` (the request's next token); a failure of its own
        (its sampler refusing its settings, say) fails that request alone, as in :meth:`_emit`."""
        try:
            piece = take(arg)
        except Exception as exc:
            if req.on_error is None:  # run(): the caller sees the exception
                raise
            self._fail(req, exc)
            return
        self._drew(req)
        self._emit(req, piece)

    def _fail(self, req: _Request, exc: Exception) -> None:
        """``req`` gets ``exc`` and is dropped at the next retire (its cache goes back first)."""
        req.failed = True
        _report_error(req, exc)
        with self._lock:
            self._cancelled.add(req.index)

    def _emit(self, req: _Request, piece: str) -> None:
        """Streams ``piece`` to ``req``; a callback that raises fails that request alone (its
        on_error, then it is dropped at the next retire), not the others of the step."""
        if not piece or req.on_piece is None or req.failed:
            return
        try:
            req.on_piece(req.index, piece)
        except Exception as exc:
            self._fail(req, exc)

    def _finish(self, req: _Request, result: GenerationResult) -> None:
        self._forget(req.index)
        if req.on_finish is None or req.failed:
            return
        try:
            req.on_finish(req.index, result)
        except Exception as exc:  # the request is done; its own callback failed
            warnings.warn(f"on_finish of request {req.index} raised {exc!r}", stacklevel=2)

    def _retire(
        self, active: list[tuple[_Request, SequenceState]], graphs: Any = None
    ) -> list[tuple[_Request, SequenceState]]:
        keep = []
        now = time.perf_counter()
        for req, state in active:
            if req.index in self._cancelled:
                self._forget(req.index)
                if graphs is not None:
                    graphs.release(state.cache)
                self._keep(req, state, state.cache, graphs)  # a client gone: its prefix stays
                continue
            if not state.finished and state.cache.length >= req.capacity:
                state.finish_reason = "length"
            if state.finished:
                if state.finish_reason == "length":
                    tail = state.stops.push(state.detok.flush()) + state.stops.flush()
                    self._emit(req, state.with_logprobs(tail))
                result = state.result(now)
                self._results[req.index] = result
                self._finish(req, result)
                if graphs is not None:
                    graphs.release(state.cache)
                self._keep(req, state, state.cache, graphs)
            else:
                keep.append((req, state))
        return keep


def _argmax_only(state: SequenceState) -> bool:
    """Whether a step may give ``state`` its token from the batch's device argmax alone
    (:func:`~inference_pio.sampling.greedy_rows`): greedy without penalties, no logprobs and no
    constraint (such a request takes its logits row, ``graphs.last_logits[slot]``, through
    :meth:`SequenceState.accept`)."""
    return state.sampler.plain_greedy and not state.wants_logits


def _report_error(req: _Request, exc: Exception) -> None:
    """``req``'s on_error, which must not take the engine down if it raises itself."""
    if req.on_error is None:
        return
    try:
        req.on_error(req.index, exc)
    except Exception as err:  # e.g. a server whose event loop has closed
        warnings.warn(f"on_error of request {req.index} raised {err!r}", stacklevel=2)
