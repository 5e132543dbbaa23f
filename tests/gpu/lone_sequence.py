"""Helpers of the GPU tests that move a BatchManager's lone sequence to the batch-1 graph and
back: one request list run to its end, and a serve loop that a second request interrupts."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from inference_pio.batching import BatchManager


def run_requests(
    lm: Any, prompts: list[list[int]], lengths: tuple[int, ...], **opts: Any
) -> tuple[list[list[int]], BatchManager]:
    """Every prompt through one BatchManager.run (request i seeded with i): the token ids of
    each, and the manager."""
    mgr = BatchManager(lm.model, lm.tokenizer, lm.eos_ids, 8)
    for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        mgr.submit(p, lm.sampling_params(max_new_tokens=n, ignore_eos=True, seed=i, **opts))
    return [r.token_ids for r in mgr.run()], mgr


@dataclass
class Served:
    """What :func:`serve_two` saw: each request's result and text pieces, by arrival order."""

    manager: BatchManager
    results: list[Any] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    alone_before_second: bool = False


def serve_two(lm: Any, first: list[int], n_first: int, second: list[int], n_second: int) -> Served:
    """A serve loop gets ``first`` (greedy, ``n_first`` tokens); once 40 of its pieces arrived
    (alone on the batch-1 path by then), ``second`` joins. Returns when both are done."""
    manager = BatchManager(lm.model, lm.tokenizer, lm.eos_ids)
    stop = threading.Event()
    engine = threading.Thread(target=manager.serve, args=(stop,), daemon=True)
    engine.start()
    pieces: dict[int, list[str]] = {}
    results: dict[int, Any] = {}
    done, started = threading.Event(), threading.Event()

    def on_piece(i: int, piece: str) -> None:
        pieces.setdefault(i, []).append(piece)
        if len(pieces[i]) >= 40:
            started.set()

    def on_finish(i: int, result: Any) -> None:
        results[i] = result
        if len(results) == 2:
            done.set()

    greedy = dict(temperature=0.0, ignore_eos=True)
    out = Served(manager)
    try:
        a = manager.submit(
            first, lm.sampling_params(max_new_tokens=n_first, **greedy), on_piece, on_finish
        )
        assert started.wait(60)
        out.alone_before_second = manager.rejoined == 0
        b = manager.submit(
            second, lm.sampling_params(max_new_tokens=n_second, **greedy), on_piece, on_finish
        )
        assert done.wait(120)
    finally:
        stop.set()
        engine.join(timeout=30)
    out.results = [results[a], results[b]]
    out.texts = ["".join(pieces.get(i, [])) for i in (a, b)]
    return out
