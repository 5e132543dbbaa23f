"""``GET /metrics`` of the OpenAI server (Prometheus), scraped with httpx and parsed with
prometheus_client's own parser while the real ``openai`` client sends plain, streamed, concurrent,
refused, failing and abandoned requests to a server on a tiny random Qwen3 checkpoint: every
counter and histogram count must equal what the clients got (usage) and what the engine ran."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")
parser = pytest.importorskip("prometheus_client.parser")

from inference_pio.server import create_app  # noqa: E402
from inference_pio.testing.serving import running  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402

NAME = "tiny-qwen3"
CONTEXT = 1024
P = "inference_pio:"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d: Path = tmp_path_factory.mktemp("served-metrics")
    cfg = transformers.Qwen3Config(
        **tiny_qwen3_config(num_hidden_layers=2, max_position_embeddings=CONTEXT)
    )
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    return d


@pytest.fixture
def served(checkpoint: Path) -> Iterator[tuple[Any, str]]:
    """A fresh server (metrics start at zero) and its base URL."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    app = create_app(load(checkpoint), NAME, metrics=True)
    with running(app) as url:
        yield app, url


def client(url: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


class Scrape:
    """One parsed /metrics page: ``value(name, **labels)`` (model_name is always NAME)."""

    def __init__(self, url: str) -> None:
        # what Prometheus asks for: the text format comes back, with the names' colons intact
        accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"
        answer = httpx.get(url + "/metrics", headers={"Accept": accept})
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        self.families = {f.name: f for f in parser.text_string_to_metric_families(answer.text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for s in family.samples:
                assert s.labels.get("model_name") == NAME, s
                labels = {k: v for k, v in s.labels.items() if k != "model_name"}
                self.samples[(s.name, frozenset(labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((P + name, frozenset(labels.items())), 0.0)

    def count(self, histogram: str) -> float:
        return self.value(histogram + "_count")

    def buckets(self, histogram: str) -> dict[float, float]:
        """Cumulative count by upper bound."""
        out = {}
        for (name, labels), v in self.samples.items():
            if name == P + histogram + "_bucket":
                out[float(dict(labels)["le"])] = v
        return out


def _no_eos(**kw: Any) -> dict[str, Any]:
    return {"model": NAME, "temperature": 0, "extra_body": {"ignore_eos": True}, **kw}


def test_counters_and_histograms_equal_what_the_clients_got(served: tuple[Any, str]) -> None:
    app, url = served
    c = client(url)
    manager = app.state.service.manager
    before = Scrape(url)
    assert before.value("request_success_total", finished_reason="length") == 0
    assert before.value("num_requests_running") == 0
    assert before.families[P + "time_to_first_token_seconds"].type == "histogram"
    assert before.families[P + "request_success"].type == "counter"

    usages = []
    plain = c.completions.create(prompt="The quick brown fox", max_tokens=8, **_no_eos())
    usages.append(plain.usage)
    stream = c.chat.completions.create(
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        **_no_eos(),
    )
    usages.append(list(stream)[-1].usage)

    def ask(i: int) -> Any:
        prompt = f"prompt number {i}: " + "ab" * i
        return client(url).completions.create(prompt=prompt, max_tokens=10 + i, **_no_eos())

    with ThreadPoolExecutor(5) as pool:
        usages += [r.usage for r in pool.map(ask, range(5))]
    # refused before they run: bad parameters, a token outside the vocabulary, another model
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model=NAME, prompt="x", max_tokens=2, logit_bias={"5": 10})
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model=NAME, prompt=[1, 2, 99999], max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-4", prompt="x", max_tokens=2)

    m = Scrape(url)
    n = len(usages)
    prompt = sum(u.prompt_tokens for u in usages)
    generated = sum(u.completion_tokens for u in usages)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages)
    assert generated == 8 + 6 + sum(10 + i for i in range(5))
    assert m.value("request_success_total", finished_reason="length") == n
    assert m.value("request_success_total", finished_reason="stop") == 0
    assert m.value("request_cancelled_total") == 0
    assert m.value("request_failure_total", status="400") == 2
    assert m.value("request_failure_total", status="404") == 1
    assert m.value("prompt_tokens_total") == prompt
    assert m.value("prompt_tokens_cached_total") == cached == manager.cached_tokens
    assert m.value("generation_tokens_total") == generated
    # every request drew a first token, then one token per inter-token gap (no EOS here)
    assert m.count("time_to_first_token_seconds") == n
    assert m.count("inter_token_latency_seconds") == generated - n
    assert m.count("e2e_request_latency_seconds") == n
    assert m.count("request_prompt_tokens") == n
    assert m.value("request_prompt_tokens_sum") == prompt
    assert m.value("request_generation_tokens_sum") == generated
    lengths = m.buckets("request_generation_tokens")
    assert lengths[8.0] == 2
    assert lengths[16.0] == n
    assert lengths[float("inf")] == n
    # a decode step gives each of its sequences one token: the batch sizes add up to the gaps
    sizes = manager.decode_batch_sizes
    assert m.count("decode_batch_size") == len(sizes)
    assert m.value("decode_batch_size_sum") == sum(sizes) == generated - n
    steps = m.buckets("decode_batch_size")
    assert steps[1.0] == sizes.count(1) < len(sizes)  # the concurrent ones shared steps
    assert all(steps[float(b)] == sum(s <= b for s in sizes) for b in range(1, 9))
    assert m.value("num_requests_running") == 0
    assert m.value("num_requests_waiting") == 0
    pool_ = manager.prefix_pool
    assert m.value("prefix_cache_entries") == len(pool_) > 0
    assert m.value("prefix_cache_bytes") == pool_.nbytes > 0
    assert m.value("prefix_cache_max_bytes") == pool_.max_bytes
    e2e = m.value("e2e_request_latency_seconds_sum")
    ttft = m.value("time_to_first_token_seconds_sum")
    assert 0 < ttft < e2e


def test_an_eos_and_a_failing_step_are_counted(checkpoint: Path) -> None:
    """A request ended by its EOS: the EOS is timed (one more gap) but not generated output; a
    step failing inside the engine is a 500 failure, not a success."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    model = load(checkpoint)
    sampled = dict(temperature=1.0, seed=3)  # the tiny model's greedy output repeats a token
    ids = model.generate("abc", max_new_tokens=8, **sampled).token_ids  # type: ignore[arg-type]
    eos_at = next(k for k in range(2, 8) if ids[k] not in ids[:k])
    model.eos_ids = (ids[eos_at],)  # the same sampled output ends there
    app = create_app(model, NAME, metrics=True)
    manager = app.state.service.manager
    with running(app) as url:
        c = client(url)
        got = c.completions.create(model=NAME, prompt="abc", max_tokens=20, **sampled)
        assert got.choices[0].finish_reason == "stop"
        assert got.usage.completion_tokens == eos_at >= 2
        plain = c.completions.create(prompt="abc", max_tokens=3, **_no_eos())
        real = manager.model.forward

        def broken(batch: Any) -> Any:
            manager.model.forward = real  # fails once
            raise RuntimeError("simulated device error")

        manager.model.forward = broken
        try:
            with pytest.raises(openai.InternalServerError):
                c.completions.create(model=NAME, prompt="abc", max_tokens=3, temperature=0)
        finally:
            manager.model.forward = real
        m = Scrape(url)
    assert m.value("request_success_total", finished_reason="stop") == 1
    assert m.value("request_success_total", finished_reason="length") == 1
    assert m.value("request_failure_total", status="500") == 1
    assert m.value("generation_tokens_total") == eos_at + 3
    assert m.count("time_to_first_token_seconds") == 2
    assert m.count("inter_token_latency_seconds") == eos_at + 2  # the EOS's gap too
    assert m.count("e2e_request_latency_seconds") == 2
    assert m.value("request_generation_tokens_sum") == eos_at + 3
    # the failed prefill computed nothing that counts
    assert m.value("prompt_tokens_total") == got.usage.prompt_tokens + plain.usage.prompt_tokens


def test_waiting_running_and_an_abandoned_stream(checkpoint: Path) -> None:
    """With one batch slot, a second request waits while a slow stream runs; the stream's client
    leaves: it is counted cancelled (with the tokens it drew), the waiting one then finishes."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    model = load(checkpoint)
    model.max_batch_size = 1
    app = create_app(model, NAME, metrics=True)
    manager = app.state.service.manager
    real = manager.model.forward

    def slow(batch: Any) -> Any:
        time.sleep(0.02)
        return real(batch)

    manager.model.forward = slow
    with running(app) as url:
        answers: list[Any] = []
        with httpx.stream(
            "POST",
            url + "/v1/completions",
            json={"model": NAME, "prompt": "abc", "max_tokens": 500, "ignore_eos": True,
                  "stream": True},
        ) as stream:  # fmt: skip
            lines = stream.iter_lines()
            got = 0
            while got < 4:  # a few tokens came
                got += next(lines).startswith("data: ")
            second = threading.Thread(
                target=lambda: answers.append(
                    client(url).completions.create(prompt="xyz", max_tokens=4, **_no_eos())
                )
            )
            second.start()
            deadline = time.time() + 10
            while Scrape(url).value("num_requests_waiting") < 1:
                assert time.time() < deadline
                time.sleep(0.02)
            m = Scrape(url)
            assert m.value("num_requests_running") == 1
            assert m.value("num_requests_waiting") == 1
        second.join(timeout=30)  # the stream's slot went to it
        assert answers
        assert answers[0].usage.completion_tokens == 4
        m = Scrape(url)
        manager.model.forward = real
    assert m.value("request_cancelled_total") == 1
    assert m.value("request_success_total", finished_reason="length") == 1
    assert m.value("num_requests_running") == 0
    assert m.value("num_requests_waiting") == 0
    # the abandoned stream's tokens: a first one, then one per gap, all counted as generated
    drawn = m.value("generation_tokens_total") - 4
    assert 4 <= drawn < 500
    assert m.count("time_to_first_token_seconds") == 2
    assert m.count("inter_token_latency_seconds") == drawn - 1 + 3
    assert m.count("e2e_request_latency_seconds") == 1  # finished requests only


def test_metrics_off_and_max_model_len(checkpoint: Path) -> None:
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    app = create_app(load(checkpoint), NAME, metrics=False)
    with running(app) as url:
        assert httpx.get(url + "/metrics").status_code == 404
        listed = httpx.get(url + "/v1/models").json()["data"]
        assert [m["max_model_len"] for m in listed] == [CONTEXT]
        assert httpx.get(url + f"/v1/models/{NAME}").json()["max_model_len"] == CONTEXT
        got = client(url).completions.create(prompt="abc", max_tokens=2, **_no_eos())
        assert got.usage.completion_tokens == 2
    assert app.state.metrics is None


class _NoBatchPath:
    """A model without the batch path (as a plugin's model that only streams): its requests run
    alone, between the batch engine's steps."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.name = NAME
        self.tool_call_format = None
        self.max_context = CONTEXT

    def stream(self, prompt: Any, **kw: Any) -> Any:
        return self._model.stream(prompt, **kw)


def test_requests_run_alone_are_counted(checkpoint: Path) -> None:
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    app = create_app(_NoBatchPath(load(checkpoint)), NAME, metrics=True)
    assert app.state.service.manager is None
    with running(app) as url:
        got = client(url).completions.create(prompt="abc", max_tokens=5, **_no_eos())
        m = Scrape(url)
    assert m.value("request_success_total", finished_reason="length") == 1
    assert m.value("prompt_tokens_total") == got.usage.prompt_tokens
    assert m.value("prompt_tokens_cached_total") == 0
    assert m.value("generation_tokens_total") == got.usage.completion_tokens == 5
    assert m.count("time_to_first_token_seconds") == 1
    assert m.count("e2e_request_latency_seconds") == 1
    assert m.value("num_requests_running") == 0
    assert m.count("decode_batch_size") == 0  # no engine steps
    assert P + "prefix_cache_entries" not in {name for name, _ in m.samples}
