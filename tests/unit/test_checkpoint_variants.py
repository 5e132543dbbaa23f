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


@pytest.mark.parametrize(
    ("plugin", "arch", "dropped"),
    [
        ("qwen3_0_6b", "Qwen3ForCausalLM", ["max_position_embeddings"]),
        (
            "qwen3_coder_30b",
            "Qwen3MoeForCausalLM",
            ["max_position_embeddings", "num_experts_per_tok", "intermediate_size"],
        ),
        ("qwen3_coder_next", "Qwen3NextForCausalLM", ["max_position_embeddings"]),
        ("glm_4_7_flash", "Glm4MoeLiteForCausalLM", ["max_position_embeddings"]),
    ],
)
def test_fields_transformers_fills_in_may_be_left_out(
    tmp_path: Path, plugin: str, arch: str, dropped: list[str]
) -> None:
    """config.json keys that transformers' config classes default (the context length, the
    experts per token, an unused dense width) load with the same values here: logits equal
    transformers' on the same directory."""
    import importlib

    import torch

    from inference_pio.testing.conformance import rel_error, save_reference

    pkg = f"inference_pio_{plugin}"
    mod = pytest.importorskip(f"{pkg}.model")
    if plugin == "qwen3_0_6b":
        tiny: dict[str, object] = tiny_qwen3_config()
    else:
        tiny = dict(importlib.import_module(f"{pkg}.testing").TINY)
    if plugin == "qwen3_coder_30b":
        tiny["num_experts"] = 8  # the default k (8) must fit
    save_reference(tmp_path, arch, tiny, "float32", seed=3)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in dropped:
        config.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ours = mod.load(tmp_path)
    assert ours.model.max_context == ref.config.max_position_embeddings
    ids = [5, 17, 300, 42, 7, 99, 256, 1]
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0, -1]
    (got,) = ours.model.forward([(ids, ours.model.new_cache(len(ids)))])
    assert rel_error(torch.tensor(got.to("float32").tolist()), want) < 1e-4
