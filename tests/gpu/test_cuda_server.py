"""The OpenAI server on a CUDA model: concurrent clients are batched through the captured batch
graphs (slots resized for a longer request), each gets its solo answer."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
TestClient = pytest.importorskip("starlette.testclient").TestClient  # needs httpx(2)


from inference_pio import cuda  # noqa: E402
from inference_pio.testing.conformance import save_reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file
from lone_sequence import serve_two  # noqa: E402

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load

TINY = dict(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=1e6,
    tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-6,
)  # fmt: skip


def test_concurrent_requests_on_cuda(tmp_path: Path) -> None:
    from inference_pio.server import create_app

    save_reference(tmp_path, "Qwen3ForCausalLM", TINY, "bfloat16", seed=3, logit_scale=8.0)
    model = load(tmp_path, device="cuda:0")
    prompts = [[(7 * i + j) % 500 for j in range(4 + 3 * i)] for i in range(8)]
    lengths = [20, 60, 20, 300, 20, 40, 20, 20]  # 300: a request past the first slots' size
    solo = [
        model.generate(p, max_new_tokens=n, temperature=0)
        for p, n in zip(prompts, lengths, strict=True)
    ]
    app = create_app(model, "m")
    with TestClient(app) as client:

        def ask(i: int) -> Any:
            body = {"prompt": prompts[i], "max_tokens": lengths[i], "temperature": 0}
            return client.post("/v1/completions", json=body).json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
    manager = app.state.service.manager
    for i, a in enumerate(answers):
        assert a["choices"][0]["text"] == solo[i].text, i
        assert a["usage"]["completion_tokens"] == len(solo[i].token_ids)
    assert max(manager.decode_batch_sizes) > 1


def test_a_lone_sequence_leaves_the_batch_and_rejoins_it(tmp_path: Path) -> None:
    """The serve loop moves a lone sequence to the batch-1 fused step and takes it back into
    the batch when another request arrives: both answers equal their solo generations."""
    save_reference(tmp_path, "Qwen3ForCausalLM", TINY, "bfloat16", seed=5, logit_scale=8.0)
    model = load(tmp_path, device="cuda:0")
    first, second = [5, 6, 7, 8], [9, 10, 11]
    solo_a = model.generate(first, max_new_tokens=600, temperature=0, ignore_eos=True)
    solo_b = model.generate(second, max_new_tokens=40, temperature=0, ignore_eos=True)
    served = serve_two(model, first, 600, second, 40)
    assert served.results[0].token_ids == solo_a.token_ids
    assert served.results[1].token_ids == solo_b.token_ids
    assert served.texts[0] == solo_a.text
    assert served.alone_before_second  # alone by then, and not interrupted yet
    manager = served.manager
    assert manager.rejoined >= 1  # b's arrival took a back into the batch
    assert manager.finished_alone >= 1  # and a finished alone after b
    assert max(manager.decode_batch_sizes) == 2
