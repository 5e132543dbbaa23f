"""Tests every plugin should have: registration, lazy references, checkpoint claims, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_pio import CheckpointError, TextModelPluginInterface
from inference_pio.plugins import PluginHost
from inference_pio.registry import import_reference
from inference_pio_my_model import MODEL_NAME, plugin
from inference_pio_my_model.config import real_config


def make_host() -> PluginHost:
    host = PluginHost(strict=True)
    record = host.register_plugin(plugin, name="my_model", distribution="inference-pio-my-model")
    assert record.status == "loaded", record.error
    return host


def test_registers_its_model() -> None:
    spec = make_host().registry.get(MODEL_NAME)
    assert spec.hf_repo == "example-org/My-Model"
    assert spec.plugin == "inference-pio-my-model"


def test_lazy_references_resolve() -> None:
    assert callable(import_reference(plugin.SPEC.factory))
    assert import_reference(plugin.SPEC.config_factory or "")() == real_config()


def test_claims_its_own_checkpoints(tmp_path: Path) -> None:
    host = make_host()
    assert host.resolve_checkpoint(tmp_path, real_config()).name == MODEL_NAME
    assert plugin.pio_claim_checkpoint(tmp_path, {**real_config(), "hidden_size": 8}) is None


def test_load_builds_the_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(real_config()))
    spec = make_host().registry.get(MODEL_NAME)
    model = make_host().pm.hook.pio_load_model(spec=spec, path=tmp_path, options={})
    assert isinstance(model, TextModelPluginInterface)
    assert model.name == MODEL_NAME


def test_load_rejects_a_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        import_reference(plugin.SPEC.factory)(tmp_path)
