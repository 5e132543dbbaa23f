"""Tests every plugin should have: registration, lazy references, checkpoint claims, loading
(``test_model.py`` checks the model itself against transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_pio import CheckpointError, TextModelPluginInterface
from inference_pio.plugins import PluginHost
from inference_pio.registry import import_reference
from inference_pio.testing.tiny import tiny_qwen3_config
from inference_pio_my_model import MODEL_NAME, plugin
from inference_pio_my_model.config import HF_REPO, real_config

#: A tiny random checkpoint of the same layout (the tests build it with transformers).
# (the core test helper's sizes suit any Llama-style decoder)
TINY = tiny_qwen3_config(
    intermediate_size=128,
    tie_word_embeddings=False,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
)


def make_host() -> PluginHost:
    host = PluginHost(strict=True)
    record = host.register_plugin(plugin, name="my_model", distribution="inference-pio-my-model")
    assert record.status == "loaded", record.error
    return host


def test_registers_its_model() -> None:
    spec = make_host().registry.get(MODEL_NAME)
    assert spec.hf_repo == HF_REPO
    assert spec.plugin == "inference-pio-my-model"


def test_lazy_references_resolve() -> None:
    assert callable(import_reference(plugin.SPEC.factory))
    assert import_reference(plugin.SPEC.config_factory or "")() == real_config()


def test_claims_its_own_checkpoints(tmp_path: Path) -> None:
    host = make_host()
    assert host.resolve_checkpoint(tmp_path, real_config()).name == MODEL_NAME
    assert plugin.pio_claim_checkpoint(tmp_path, {**real_config(), "hidden_size": 8}) is None


def test_load_builds_the_model_through_the_hook(tmp_path: Path) -> None:
    """The core's loading path (the pio_load_model hook) on a tiny random checkpoint."""
    from inference_pio.testing.conformance import save_reference

    save_reference(tmp_path, "LlamaForCausalLM", TINY, "float32", seed=3)
    spec = make_host().registry.get(MODEL_NAME)
    model = make_host().pm.hook.pio_load_model(spec=spec, path=tmp_path, options={})
    assert isinstance(model, TextModelPluginInterface)
    assert model.name == MODEL_NAME


def test_load_rejects_a_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        import_reference(plugin.SPEC.factory)(tmp_path)


def test_synthetic_checkpoints_load_and_generate(tmp_path: Path) -> None:
    """``synthetic:my-model`` (random weights of a config's size, from weights_factory): built
    here with a small config, then loaded and run like a real checkpoint."""
    from inference_pio import synthetic

    spec = make_host().registry.get(MODEL_NAME)
    small = {**real_config(), **TINY}
    synthetic.build(spec, tmp_path, config=small, progress=False)
    model = import_reference(plugin.SPEC.factory)(tmp_path)
    result = model.generate("Hello", max_new_tokens=4, temperature=0.0, ignore_eos=True)
    assert len(result.token_ids) == 4
