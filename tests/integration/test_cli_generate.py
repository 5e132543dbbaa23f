"""`inference-pio generate/bench` on a tiny checkpoint: the CLI contract scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("inference_pio_qwen3_0_6b")

from inference_pio.testing.conformance import hf_greedy, save_reference

TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    rope_theta=1e6,
    tie_word_embeddings=True,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    d = tmp_path_factory.mktemp("tiny-qwen3")
    return d, save_reference(d, "Qwen3ForCausalLM", TINY, "float32", seed=9)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference_pio", *args], capture_output=True, text=True, timeout=300
    )


def test_generate_json_contract_and_greedy_tokens(checkpoint: tuple[Path, object]) -> None:
    path, ref = checkpoint
    out = _cli(
        "generate",
        "--model",
        str(path),
        "--prompt",
        "hello world",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {
        "text",
        "token_ids",
        "prompt_tokens",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "time_to_first_token_s",
        "peak_rss_bytes",
    }
    prompt_ids = list(b"hello world")
    assert data["prompt_tokens"] == len(prompt_ids)
    want = hf_greedy(ref, prompt_ids, 12)
    eos = 511
    expected = want[: want.index(eos)] if eos in want else want
    assert data["token_ids"] == expected
    assert data["peak_rss_bytes"] > 0


def test_generate_streams_text(checkpoint: tuple[Path, object]) -> None:
    out = _cli(
        "generate",
        "--model",
        str(checkpoint[0]),
        "--prompt",
        "abc",
        "-n",
        "5",
        "--temperature",
        "0.8",
        "--seed",
        "1",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n")


def test_bench_json(checkpoint: tuple[Path, object]) -> None:
    out = _cli(
        "bench",
        "--model",
        str(checkpoint[0]),
        "--prompt-tokens",
        "64",
        "--new-tokens",
        "8",
        "--json",
        "--bandwidth",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["prefill_tokens_per_s"] > 0
    assert data["new_tokens"] == 8
    # the machine's read bandwidth and the decode's share of it
    assert data["read_gb_per_s"] > 0
    want = data["decode_gb_per_s"] / data["read_gb_per_s"]
    assert data["decode_bandwidth_fraction"] == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("/nonexistent/dir", [], "neither a checkpoint directory"),
        ("qwen3-0.6b", [], "synthetic:qwen3-0.6b"),
        (None, ["--temperature", "-1"], "temperature"),
        (None, ["--top-p", "2"], "top_p"),
    ],
)
def test_bad_input_is_one_clear_error(
    checkpoint: tuple[Path, object], model: str | None, extra: list[str], message: str
) -> None:
    out = _cli("generate", "--model", model or str(checkpoint[0]), "--prompt", "x", *extra)
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_cuda_device_without_cuda_is_one_clear_error(checkpoint: tuple[Path, object]) -> None:
    """`--device cuda` where CUDA cannot be used says why in one line, like any bad option."""
    from inference_pio import cuda

    if cuda.is_available():
        pytest.skip("CUDA is available here: the command would run")
    out = _cli("generate", "--model", str(checkpoint[0]), "--prompt", "x", "--device", "cuda")
    assert out.returncode == 1
    assert "CUDA is not available" in out.stderr
    assert cuda.unavailable_reason() in out.stderr
    assert "Traceback" not in out.stderr
