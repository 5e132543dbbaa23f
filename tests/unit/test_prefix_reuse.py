"""Prefix reuse (``CausalLM.reuse_prefixes``, on in ``inference-pio chat``): a prompt that
starts like the last generation's prefills only its new tokens, and decodes as a fresh model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
qwen3 = pytest.importorskip("inference_pio_qwen3_0_6b.model")

from inference_pio.generation import PrefixCache  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("prefix")
    cfg = transformers.Qwen3Config(**tiny_qwen3_config(num_hidden_layers=2))
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    return d


def _greedy(model: Any, ids: list[int], n: int = 8) -> list[int]:
    return list(model.generate(ids, max_new_tokens=n, temperature=0, ignore_eos=True).token_ids)


def test_a_chat_turn_prefills_only_its_new_tokens(checkpoint: Path) -> None:
    fresh, reusing = qwen3.load(checkpoint), qwen3.load(checkpoint)
    assert fresh.prefix_cache is None  # off unless asked for
    reusing.reuse_prefixes()
    first = list(range(40, 90))
    reply = _greedy(reusing, first)
    assert reply == _greedy(fresh, first)
    nxt = first + reply + [7, 8, 9, 10]  # the next turn: history, reply, a new message
    cache = reusing.prefix_cache
    assert cache is not None
    held, n = cache.take(reusing.model, nxt, len(nxt) + 8)
    assert n == len(first) + len(reply) - 1  # every fed token (the last reply token was not)
    cache.put(nxt[:n], held)
    assert _greedy(reusing, nxt) == _greedy(fresh, nxt)
    # a prompt that leaves the history early: the cache is cut back, not reused past it
    other = [*first[:20], 300, 301, 302]
    assert _greedy(reusing, other) == _greedy(fresh, other)
    # the same prompt again: all but its last token come from the cache
    assert _greedy(reusing, other) == _greedy(fresh, other)
    reusing.reuse_prefixes(False)
    assert reusing.prefix_cache is None


def test_a_longer_next_prompt_gets_a_larger_cache(checkpoint: Path) -> None:
    """The kept cache is sized for its own request; a next one that needs more is copied into
    a new cache of that capacity."""
    fresh, reusing = qwen3.load(checkpoint), qwen3.load(checkpoint)
    reusing.reuse_prefixes()
    short = list(range(10, 20))
    reply = _greedy(reusing, short, 2)
    longer = short + reply + list(range(100, 160))
    assert _greedy(reusing, longer, 30) == _greedy(fresh, longer, 30)


def test_a_recurrent_state_is_reused_only_when_extended(tmp_path: Path) -> None:
    """A Gated DeltaNet state cannot be cut back: a prompt that leaves the cached tokens gets a
    new cache; one that extends them all continues from the state."""
    next_model = pytest.importorskip("inference_pio_qwen3_coder_next.model")
    from inference_pio.testing.conformance import save_reference
    from inference_pio_qwen3_coder_next.testing import TINY

    save_reference(tmp_path, "Qwen3NextForCausalLM", TINY, "float32", seed=1)
    fresh, reusing = next_model.load(tmp_path), next_model.load(tmp_path)
    reusing.reuse_prefixes()
    first = list(range(5, 25))
    reply = _greedy(reusing, first, 4)
    cache = reusing.prefix_cache
    assert isinstance(cache, PrefixCache)
    _held, n = cache.take(reusing.model, [*first[:10], 1, 2], 40)
    assert n == 0  # would need the state cut back
    reusing.prefix_cache = PrefixCache()
    reply = _greedy(reusing, first, 4)
    extended = first + reply + [3, 4]
    assert _greedy(reusing, extended) == _greedy(fresh, extended)


@pytest.mark.parametrize("speculative", [None, "ngram"])
def test_a_stream_stopped_early_keeps_its_prefix(checkpoint: Path, speculative: Any) -> None:
    """A reply the reader stops (Ctrl-C in ``inference-pio chat``, a client gone) leaves its
    cache for the next turn, which then prefills only its new tokens."""
    fresh, reusing = qwen3.load(checkpoint), qwen3.load(checkpoint)
    reusing.reuse_prefixes()
    first = list(range(40, 90)) * 2
    spec = {} if speculative is None else {"speculative": speculative}
    opts = {"max_new_tokens": 30, "temperature": 0, "ignore_eos": True, **spec}
    results: list[Any] = []
    stream = reusing.stream(first, on_finish=results.append, **opts)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()  # type: ignore[attr-defined]
    assert not results  # it did not finish
    nxt = [*first, 5, 6, 7]
    got = reusing.generate(nxt, max_new_tokens=8, temperature=0, ignore_eos=True)
    assert got.cached_tokens >= len(first)
    assert got.token_ids == _greedy(fresh, nxt)
