"""Checkpoint files as users have them: where the stop tokens come from, quantized repos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("inference_pio_qwen3_0_6b")

from inference_pio import load_model  # noqa: E402
from inference_pio.errors import CheckpointError  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402


def _checkpoint(d: Path) -> Path:
    save_tiny_causal_lm(
        d, transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**tiny_qwen3_config())
    )
    return d


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_stop_tokens_fall_back_like_transformers_then_the_tokenizer(tmp_path: Path) -> None:
    """generation_config.json, else config.json, else the tokenizer's eos_token (vLLM and
    llama.cpp stop there too): a checkpoint without the first two never stopped."""
    d = _checkpoint(tmp_path)
    eos = load_model(d, progress=False).eos_ids
    assert eos
    (d / "generation_config.json").unlink()
    _edit(d / "config.json", eos_token_id=None)
    model = load_model(d, progress=False)
    assert model.eos_ids == (model.tokenizer.eos_token_id,) == eos
    _edit(d / "config.json", eos_token_id=[3, 4])
    assert load_model(d, progress=False).eos_ids == (3, 4)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": None}))
    assert load_model(d, progress=False).eos_ids == (3, 4)  # null there: not set


def test_quantized_checkpoints_are_refused_by_name(tmp_path: Path) -> None:
    d = _checkpoint(tmp_path)
    _edit(d / "config.json", quantization_config={"quant_method": "awq", "bits": 4})
    with pytest.raises(CheckpointError, match=r"quantized checkpoints are not supported.*'awq'"):
        load_model(d, progress=False)


def test_tokenizer_and_generation_config_are_checked_before_the_weights(tmp_path: Path) -> None:
    """A bad generation_config.json or a missing tokenizer.json is reported before the model is
    built (it came after every weight was read: minutes for the MoE checkpoints)."""
    from safetensors.torch import load_file, save_file

    d = _checkpoint(tmp_path)
    weights = load_file(d / "model.safetensors")
    weights.pop("model.norm.weight")  # the build would fail on this first
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    (d / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_p": 7}))
    with pytest.raises(CheckpointError, match=r"generation_config\.json"):
        load_model(d, progress=False)
    (d / "generation_config.json").unlink()
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        load_model(d, progress=False)
