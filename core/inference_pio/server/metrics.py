"""Prometheus metrics of the OpenAI server (``GET /metrics``, as vLLM's ``vllm:`` metrics and
llama.cpp server's ``--metrics``), with ``prometheus_client`` (part of the ``server`` extra).

Every metric is named ``inference_pio:...`` and labelled ``model_name`` (the served name).
:class:`ServerMetrics` owns one registry per application (several servers may run in one
process); the app makes a :class:`RequestTrack` per generation request and calls it at fixed
points, from whichever thread sees them (the batch engine's thread for tokens and results, the
event loop for disconnects and refusals): prometheus_client's metrics take their own locks, and
a track's first outcome (finished, cancelled or failed) is the only one counted.

Read at scrape time: requests running and waiting (the :class:`~inference_pio.batching.
BatchManager`'s queue and live set, plus requests run alone), the prefix pool's bytes and
entries, and prompt tokens prefilled or taken from kept caches (``BatchManager.prefill_tokens``
and ``cached_tokens``, so a cancelled request's prefill counts too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from inference_pio.generation import GenerationResult

PREFIX = "inference_pio:"
#: The content type of ``GET /metrics``.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Histogram buckets, in seconds: time to first token (queueing and prefill included).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Seconds between two tokens of a request (a decode step of its batch, or a prefill it waited
#: for): 1-2 ms on a GPU, tens of ms on a CPU.
ITL_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
#: Seconds from a request's arrival to its last token.
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def length_buckets(max_len: int | None) -> tuple[float, ...]:
    """Token-count buckets: powers of two up to the first at or above ``max_len`` (the model's
    context; 2**20 when unknown)."""
    top = max_len if max_len and max_len > 0 else 1 << 20
    out, b = [], 1
    while True:
        out.append(float(b))
        if b >= top:
            return tuple(out)
        b *= 2


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Decode batch size buckets: every size up to 16, then powers of two up to the largest."""
    n = max(1, max_batch_size)
    sizes = list(range(1, min(n, 16) + 1))
    b = 32
    while sizes[-1] < n:
        sizes.append(min(b, n))
        b *= 2
    return tuple(float(s) for s in sizes)


class ServerMetrics:
    """The server's metrics for one served model. ``live()`` returns (running, waiting) requests
    now; ``engine()`` the BatchManager (or None: every request runs alone), read at scrape."""

    def __init__(
        self,
        model_name: str,
        live: Callable[[], tuple[int, int]],
        engine: Callable[[], Any] = lambda: None,
        max_model_len: int | None = None,
        max_batch_size: int = 8,
    ) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Histogram
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "GET /metrics needs prometheus_client (part of the server extra): "
                "pip install 'inference-pio[server]'"
            ) from exc

        self.model_name = model_name
        self.registry = CollectorRegistry()
        self._live = live
        self._engine = engine
        self._lock = threading.Lock()
        self._alone_prompt = 0  # prompt tokens of requests run alone (not in the engine's counts)
        name = ["model_name"]
        reg = self.registry

        def counter(short: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return Counter(PREFIX + short, doc, [*name, *labels], registry=reg)

        def histogram(short: str, doc: str, buckets: Sequence[float]) -> Any:
            return Histogram(PREFIX + short, doc, name, registry=reg, buckets=buckets)

        self._success = counter(
            "request_success",
            "Requests that finished, by finish reason (stop: EOS, a stop string or a completed "
            "grammar; length: max_tokens or the context)",
            ["finished_reason"],
        )
        for reason in ("stop", "length"):  # shown as 0 from the start (rate() needs a series)
            self._success.labels(model_name, reason)
        self._cancelled = counter(
            "request_cancelled", "Requests whose client went away before they finished"
        ).labels(model_name)
        self._failure = counter(
            "request_failure",
            "Generation requests answered with an error, by HTTP status (4xx: refused input, "
            "5xx: a failure while generating)",
            ["status"],
        )
        self._generation = counter(
            "generation_tokens",
            "Tokens generated (as usage.completion_tokens; a cancelled request's count too)",
        ).labels(model_name)
        self._ttft = histogram(
            "time_to_first_token_seconds",
            "Seconds from a request's arrival to its first token (queueing and prefill included)",
            TTFT_BUCKETS,
        ).labels(model_name)
        self._itl = histogram(
            "inter_token_latency_seconds",
            "Seconds between two consecutive tokens of a request",
            ITL_BUCKETS,
        ).labels(model_name)
        self._e2e = histogram(
            "e2e_request_latency_seconds",
            "Seconds from a request's arrival to its last token (finished requests)",
            E2E_BUCKETS,
        ).labels(model_name)
        lengths = length_buckets(max_model_len)
        self._prompt_len = histogram(
            "request_prompt_tokens", "Prompt tokens of finished requests", lengths
        ).labels(model_name)
        self._gen_len = histogram(
            "request_generation_tokens", "Generated tokens of finished requests", lengths
        ).labels(model_name)
        self._batch = histogram(
            "decode_batch_size",
            "Sequences decoded together in one decode step",
            batch_buckets(max_batch_size),
        ).labels(model_name)
        reg.register(_Scraped(self))

    # ---- what the app calls ---------------------------------------------------------------------
    def request(self) -> RequestTrack:
        """A track for a request that arrives now."""
        return RequestTrack(self)

    def rejected(self, status: int) -> None:
        """A generation request refused before it started (bad JSON, an unknown model, ...)."""
        self._failure.labels(self.model_name, str(status)).inc()

    def decode_step(self, batch_size: int) -> None:
        """One decode step of ``batch_size`` sequences (``BatchManager(on_step=...)``)."""
        self._batch.observe(batch_size)

    def render(self) -> tuple[bytes, str]:
        """The exposition in the Prometheus text format 0.0.4, and its content type. Always that
        format, whatever a scraper prefers: prometheus_client's OpenMetrics writer (0.26) turns
        the colons of sample names into underscores but not those of their ``# TYPE`` lines."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry), TEXT_CONTENT_TYPE


class RequestTrack:
    """One generation request's timing and outcome (see the module's docstring); with
    ``metrics`` None (metrics off) it records nothing."""

    __slots__ = ("_lock", "_m", "arrived", "batched", "counted", "done", "last", "tokens")

    def __init__(self, metrics: ServerMetrics | None) -> None:
        self._m = metrics
        self._lock = threading.Lock()
        self.arrived = time.perf_counter()
        self.last = 0.0  # when its latest token came (0: none yet)
        self.tokens = 0  # tokens drawn so far (an EOS that ends the output included)
        self.counted = 0  # of those, counted in generation_tokens already
        self.done = metrics is None
        #: Run by the BatchManager, whose counters hold its prompt tokens (else counted here).
        self.batched = False

    def token(self, n: int = 1) -> None:
        """The request drew ``n`` tokens (more than one at once on a path that decodes in
        chunks): time to first token, or one inter-token latency."""
        now = time.perf_counter()
        m = self._m
        with self._lock:
            if self.done or m is None:
                return
            gap = now - (self.last or self.arrived)
            first = not self.last
            self.last = now
            # a token is counted once the next one comes (the last may be an EOS, not output)
            new = self.tokens - self.counted
            self.tokens += n
            self.counted += new
        (m._ttft if first else m._itl).observe(gap)
        if new:
            m._generation.inc(new)

    def finished(self, result: GenerationResult) -> None:
        """The request finished with ``result`` (before its response is sent)."""
        now = time.perf_counter()
        m = self._m
        with self._lock:
            if self.done or m is None:
                return
            self.done = True
            out = len(result.token_ids)
            new = max(out - self.counted, 0)
            self.counted += new
        if new:
            m._generation.inc(new)
        m._success.labels(m.model_name, result.finish_reason).inc()
        m._e2e.observe(now - self.arrived)
        m._prompt_len.observe(result.prompt_tokens)
        m._gen_len.observe(out)
        if not self.batched:
            with m._lock:
                m._alone_prompt += result.prompt_tokens

    def cancelled(self) -> None:
        """The client went away before the request finished."""
        if self._close() and self._m is not None:
            self._m._cancelled.inc()

    def failed(self, status: int) -> None:
        """The request got an error response (``status``) instead of a result."""
        if self._close() and self._m is not None:
            self._m._failure.labels(self._m.model_name, str(status)).inc()

    def _close(self) -> bool:
        """Ends the track (False: it had ended); its drawn tokens are counted as generated."""
        with self._lock:
            if self.done:
                return False
            self.done = True
            new = self.tokens - self.counted
            self.counted = self.tokens
        if new and self._m is not None:
            self._m._generation.inc(new)
        return True


class _Scraped:
    """The values read when /metrics is scraped (a prometheus_client collector)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics

    def describe(self) -> list[Any]:
        return []  # names are checked for clashes only on what collect() yields

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self._m
        label = [m.model_name]
        running, waiting = m._live()
        engine = m._engine()
        pool = getattr(engine, "prefix_pool", None)
        with m._lock:
            alone_prompt = m._alone_prompt
        prefilled = getattr(engine, "prefill_tokens", 0)
        cached = getattr(engine, "cached_tokens", 0)
        values: list[tuple[type[Any], str, str, float]] = [
            (GaugeMetricFamily, "num_requests_running", "Requests being generated now", running),
            (GaugeMetricFamily, "num_requests_waiting", "Requests queued for a slot", waiting),
            (
                CounterMetricFamily,
                "prompt_tokens",
                "Prompt tokens of the requests started (prefilled or taken from kept caches)",
                prefilled + cached + alone_prompt,
            ),
            (
                CounterMetricFamily,
                "prompt_tokens_cached",
                "Prompt tokens taken from kept caches instead of prefilled (prefix cache hits)",
                cached,
            ),
        ]
        if pool is not None:
            values += [
                (
                    GaugeMetricFamily,
                    "prefix_cache_bytes",
                    "Bytes of the KV caches the prefix cache keeps",
                    pool.nbytes,
                ),
                (
                    GaugeMetricFamily,
                    "prefix_cache_max_bytes",
                    "Bytes the prefix cache may keep",
                    pool.max_bytes,
                ),
                (
                    GaugeMetricFamily,
                    "prefix_cache_entries",
                    "Caches the prefix cache keeps",
                    len(pool),
                ),
            ]
        for family, short, doc, value in values:
            metric = family(PREFIX + short, doc, labels=["model_name"])
            metric.add_metric(label, value)
            yield metric


__all__ = ["RequestTrack", "ServerMetrics", "batch_buckets", "length_buckets"]
