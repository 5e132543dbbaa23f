"""The OpenAI server on a CUDA model: concurrent clients are batched through the captured batch
graphs (slots resized for a longer request), each gets its solo answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
TestClient = pytest.importorskip("starlette.testclient").TestClient  # needs httpx(2)

from inference_pio import cuda  # noqa: E402
from inference_pio.testing.conformance import save_reference  # noqa: E402

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
