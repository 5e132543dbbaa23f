"""Automatic prefix caching in the OpenAI server, with the real ``openai`` client: a chat's second
turn takes its history from the first turn's kept cache (``usage.prompt_tokens_details
.cached_tokens``) and answers as a server with caching off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

from inference_pio.server import create_app  # noqa: E402
from inference_pio.testing.serving import running  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402

NAME = "tiny-qwen3"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, tuple[Any, Any]]]:
    """One server with prefix caching (the default) and one without, on the same checkpoint:
    ``{caching: (app, client)}``."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("served-prefix")
    cfg = transformers.Qwen3Config(
        **tiny_qwen3_config(max_position_embeddings=1024, tie_word_embeddings=False)
    )
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    on, off = create_app(load(d), NAME), create_app(load(d), NAME, prefix_caching=False)
    with running(on) as url_on, running(off) as url_off:
        yield {
            caching: (app, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0))
            for caching, app, url in ((True, on, url_on), (False, off, url_off))
        }


def _chat(client: Any, messages: list[dict[str, str]], stream: bool = False) -> tuple[str, Any]:
    """The reply's text and usage."""
    kw: dict[str, Any] = {"model": NAME, "messages": messages, "max_tokens": 12, "temperature": 0}
    if not stream:
        got = client.chat.completions.create(**kw)
        return str(got.choices[0].message.content), got.usage
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].usage


def test_a_second_chat_turn_reports_cached_tokens(servers: dict[bool, tuple[Any, Any]]) -> None:
    system = {"role": "system", "content": "You are a terse assistant. " * 3}
    turns = {}
    for caching, (_, client) in servers.items():
        messages = [system, {"role": "user", "content": "Name three colours."}]
        first, usage1 = _chat(client, messages)
        messages += [
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And three more?"},
        ]
        second, usage2 = _chat(client, messages)
        third, usage3 = _chat(client, messages, stream=True)  # the same turn again, streamed
        turns[caching] = (first, second, third, usage1, usage2, usage3)
    on, off = turns[True], turns[False]
    assert on[:3] == off[:3]  # the same replies with and without the cache
    assert on[1] == on[2]
    usage1, usage2, usage3 = on[3:]
    assert usage1.prompt_tokens_details.cached_tokens == 0
    # the whole first prompt (system message, question) came from the kept cache
    assert usage2.prompt_tokens_details.cached_tokens >= usage1.prompt_tokens
    assert usage3.prompt_tokens_details.cached_tokens == usage3.prompt_tokens - 1
    assert usage2.prompt_tokens == off[4].prompt_tokens
    assert all(u.prompt_tokens_details.cached_tokens == 0 for u in off[3:])
    manager = servers[True][0].state.service.manager
    assert manager.cached_tokens > 0
    assert servers[False][0].state.service.manager.prefix_pool is None
