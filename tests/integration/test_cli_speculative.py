"""`inference-pio generate --speculative-ngram K`: the same output, the draft counts in --json,
bad settings one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("inference_pio_qwen3_0_6b")

from inference_pio.testing.conformance import save_reference
from inference_pio.testing.tiny import tiny_qwen3_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-qwen3-spec")
    save_reference(d, "Qwen3ForCausalLM", tiny_qwen3_config(), "float32", seed=4)
    return d


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference_pio", *args], capture_output=True, text=True, timeout=300
    )


def test_generate_with_speculation_gives_the_same_output(checkpoint: Path) -> None:
    base = ["generate", "--model", str(checkpoint), "--prompt", "abcabcabcabc", "--json"]
    base += ["--max-new-tokens", "24", "--temperature", "0"]
    plain = _cli(*base)
    spec = _cli(*base, "--speculative-ngram", "5", "--prompt-lookup-min", "1")
    assert plain.returncode == 0, plain.stderr
    assert spec.returncode == 0, spec.stderr
    a, b = json.loads(plain.stdout), json.loads(spec.stdout)
    assert b["token_ids"] == a["token_ids"]
    assert b["text"] == a["text"]
    assert "draft_tokens" not in a
    assert b["draft_tokens"] >= b["accepted_draft_tokens"] >= 0
    assert b["draft_tokens"] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--speculative-ngram", "0"], "num_speculative_tokens must be an integer in [1, 15]"),
        (
            ["--speculative-ngram", "4", "--prompt-lookup-min", "3", "--prompt-lookup-max", "2"],
            "prompt_lookup_min (3)",
        ),
        (["--prompt-lookup-max", "3"], "need --speculative-ngram"),
    ],
)
def test_bad_speculative_settings_are_one_clear_error(
    checkpoint: Path, extra: list[str], message: str
) -> None:
    out = _cli("generate", "--model", str(checkpoint), "--prompt", "x", *extra)
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_help_explains_the_flag() -> None:
    out = _cli("generate", "--help")
    assert "--speculative-ngram K" in out.stdout
    assert "prompt-lookup" in out.stdout
