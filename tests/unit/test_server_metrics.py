"""The metrics recorder of the server (inference_pio.server.metrics) and the BatchManager's hooks
it hangs on (on_token, on_step, counts), on a deterministic toy model: exact counts, first
outcome wins, no lost updates from many threads."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from inference_pio.batching import BatchManager
from inference_pio.generation import GenerationResult
from inference_pio.sampling import SamplingParams
from inference_pio.tensor import Tensor


class _Next:
    """A ForwardModel whose next token is (last token + 1) mod 16."""

    vocab_size = 16
    max_context = 64

    class Cache:
        def __init__(self, capacity: int) -> None:
            self.capacity, self.length = capacity, 0

    def new_cache(self, capacity: int) -> Any:
        return self.Cache(capacity)

    def forward(self, batch: Sequence[tuple[Sequence[int], Any]]) -> list[Tensor]:
        out = []
        for tokens, cache in batch:
            cache.length += len(tokens)
            nxt = (tokens[-1] + 1) % self.vocab_size
            out.append(Tensor.from_list([10.0 if i == nxt else 0.0 for i in range(16)]))
        return out


class _Letters:
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


def test_batch_manager_tells_each_token_and_step() -> None:
    steps: list[int] = []
    manager = BatchManager(_Next(), _Letters(), eos_ids=[9], max_batch_size=2, on_step=steps.append)
    drawn: dict[int, int] = {}

    def on_token(index: int, n: int) -> None:
        drawn[index] = drawn.get(index, 0) + n

    params = SamplingParams(temperature=0.0, max_new_tokens=5)
    for first in (0, 6, 2):  # 6 draws 7, 8 then the EOS 9
        manager.submit([first], params, on_token=on_token)
    assert manager.counts() == (0, 3)
    results = manager.run()
    assert [len(r.token_ids) for r in results] == [5, 2, 5]
    assert drawn == {0: 5, 1: 3, 2: 5}  # the EOS was drawn too
    assert steps == manager.decode_batch_sizes
    assert max(steps) == 2
    assert sum(steps) == sum(drawn.values()) - 3  # one token each from the prefill
    assert manager.counts() == (0, 0)


def test_an_on_token_that_raises_fails_its_request_alone() -> None:
    manager = BatchManager(_Next(), _Letters(), eos_ids=[], max_batch_size=2)
    errors: list[tuple[int, str]] = []

    def bad(index: int, n: int) -> None:
        raise RuntimeError("recorder bug")

    params = SamplingParams(temperature=0.0, max_new_tokens=3)
    manager.submit([0], params, on_error=lambda i, e: errors.append((i, str(e))), on_token=bad)
    manager.submit([1], params)
    results = manager.run()
    assert errors == [(0, "recorder bug")]
    assert [r.token_ids for r in results] == [[2, 3, 4]]


# ---- the recorder (prometheus_client) ---------------------------------------------------------
def _recorder(live: tuple[int, int] = (0, 0)) -> Any:
    metrics = pytest.importorskip("inference_pio.server.metrics")
    pytest.importorskip("prometheus_client")
    return metrics.ServerMetrics("m", live=lambda: live, max_model_len=100, max_batch_size=4)


def _values(recorder: Any) -> dict[str, float]:
    parser = pytest.importorskip("prometheus_client.parser")
    text = recorder.render()[0].decode()
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            out[s.name.removeprefix("inference_pio:") + (f"{{{labels}}}" if labels else "")] = (
                s.value
            )
    return out


def _result(n: int, reason: str = "length", prompt: int = 3) -> GenerationResult:
    return GenerationResult("x" * n, list(range(n)), prompt, reason)


def test_the_first_outcome_of_a_request_is_the_one_counted() -> None:
    recorder = _recorder(live=(2, 5))
    done = recorder.request()
    for _ in range(4):
        done.token()
    done.finished(_result(3, "stop"))  # its 4th token was an EOS
    done.cancelled()  # the client left after the answer: not a cancellation
    done.token()  # too late: not timed
    gone = recorder.request()
    gone.token()
    gone.token(2)  # a chunk of two tokens: one gap
    gone.cancelled()
    gone.failed(500)
    bad = recorder.request()
    bad.failed(400)
    recorder.rejected(404)
    v = _values(recorder)
    assert v["request_success_total{finished_reason=stop}"] == 1
    assert v["request_success_total{finished_reason=length}"] == 0
    assert v["request_cancelled_total"] == 1
    assert v["request_failure_total{status=400}"] == 1
    assert v["request_failure_total{status=404}"] == 1
    assert "request_failure_total{status=500}" not in v
    assert v["generation_tokens_total"] == 3 + 3
    assert v["time_to_first_token_seconds_count"] == 2
    assert v["inter_token_latency_seconds_count"] == 3 + 1
    assert v["e2e_request_latency_seconds_count"] == 1
    assert v["request_prompt_tokens_sum"] == 3
    assert v["prompt_tokens_total"] == 3  # run alone: not in an engine's counters
    assert v["num_requests_running"] == 2
    assert v["num_requests_waiting"] == 5
    assert "prefix_cache_bytes" not in v  # no engine, no pool
    assert v["request_prompt_tokens_bucket{le=128.0}"] == 1  # buckets up to the context


def test_no_update_is_lost_between_threads() -> None:
    recorder = _recorder()
    threads, per, tokens = 8, 50, 20

    def work() -> None:
        for _ in range(per):
            track = recorder.request()
            track.batched = True
            for _ in range(tokens):
                track.token()
                recorder.decode_step(3)
            track.finished(_result(tokens))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    while any(t.is_alive() for t in pool):
        recorder.render()  # scrapes meanwhile
    n = threads * per
    v = _values(recorder)
    assert v["request_success_total{finished_reason=length}"] == n
    assert v["generation_tokens_total"] == n * tokens
    assert v["inter_token_latency_seconds_count"] == n * (tokens - 1)
    assert v["decode_batch_size_count"] == n * tokens
    assert v["decode_batch_size_bucket{le=2.0}"] == 0
    assert v["decode_batch_size_bucket{le=3.0}"] == n * tokens
    assert v["prompt_tokens_total"] == 0  # batched: the engine's counters hold them


def test_buckets() -> None:
    metrics = pytest.importorskip("inference_pio.server.metrics")
    assert metrics.length_buckets(100)[-2:] == (64.0, 128.0)
    assert metrics.length_buckets(128)[-1] == 128.0
    assert metrics.length_buckets(None)[-1] == float(1 << 20)
    assert metrics.batch_buckets(1) == (1.0,)
    assert metrics.batch_buckets(8) == tuple(float(i) for i in range(1, 9))
    assert metrics.batch_buckets(100)[-4:] == (16.0, 32.0, 64.0, 100.0)
