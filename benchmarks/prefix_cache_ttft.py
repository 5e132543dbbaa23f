"""Time to first token of a chat's second turn through the OpenAI server, with prefix caching on
and off, on a small random Qwen3 checkpoint (byte tokenizer: one token per character).

Two servers (caching on / off) serve copies of the same checkpoint; each round runs a fresh
conversation (its own system prompt) on each, alternating which goes first, and times turn 2
from the request to its first streamed text. Prints per-round numbers and the medians.

    python benchmarks/prefix_cache_ttft.py [--rounds 7] [--system-chars 1500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _checkpoint(d: Path, layers: int, hidden: int) -> None:
    import transformers

    from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config

    cfg = tiny_qwen3_config(
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=hidden // 8,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    model = transformers.Qwen3ForCausalLM
    save_tiny_causal_lm(d, model, transformers.Qwen3Config(**cfg), eos_id=511)


def _turn(client: Any, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, float, Any]:
    """The reply, the seconds to its first text, and the usage."""
    start = time.perf_counter()
    first = 0.0
    text, usage = [], None
    for chunk in client.chat.completions.create(
        model="m",
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
            first = first or time.perf_counter() - start
            text.append(chunk.choices[0].delta.content or "")
    return "".join(text), first, usage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--system-chars", type=int, default=1500)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    args = ap.parse_args()
    import openai

    from inference_pio.server import create_app
    from inference_pio.testing.serving import running
    from inference_pio_qwen3_0_6b.model import load

    d = Path(tempfile.mkdtemp(prefix="prefix-ttft-"))
    _checkpoint(d, args.layers, args.hidden)
    apps = {
        True: create_app(load(d), "m"),
        False: create_app(load(d), "m", prefix_caching=False),
    }
    times: dict[bool, list[float]] = {True: [], False: []}
    with running(apps[True]) as on_url, running(apps[False]) as off_url:
        clients = {
            caching: openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
            for caching, url in ((True, on_url), (False, off_url))
        }
        base = ("You answer questions about the history of tea. " * 200)[: args.system_chars]
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            replies = {}
            for caching in order:
                system = {"role": "system", "content": f"Round {r}. {base}"}
                msgs = [system, {"role": "user", "content": "Where was tea first grown?"}]
                first, _, _ = _turn(clients[caching], msgs, 32)
                msgs += [
                    {"role": "assistant", "content": first},
                    {"role": "user", "content": "And when did it reach Europe?"},
                ]
                second, ttft, usage = _turn(clients[caching], msgs, 8)
                times[caching].append(ttft)
                replies[caching] = second
                cached = usage.prompt_tokens_details.cached_tokens
                print(
                    f"round {r} caching={'on ' if caching else 'off'} turn-2 prompt "
                    f"{usage.prompt_tokens} tokens, cached {cached}: TTFT {ttft * 1e3:.0f} ms"
                )
            assert replies[True] == replies[False], "caching changed the reply"
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"median TTFT of turn 2: on {on * 1e3:.0f} ms, off {off * 1e3:.0f} ms ({off / on:.1f}x)")


if __name__ == "__main__":
    main()
