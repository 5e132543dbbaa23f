"""Plugin registration tests for Qwen3-0.6B."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inference_pio import ModelSpec, hookimpl
from inference_pio.hookspecs import RegisterModel
from inference_pio.plugins import PluginHost
from inference_pio.registry import import_reference
from inference_pio_qwen3_0_6b import MODEL_NAME, plugin
from inference_pio_qwen3_0_6b.config import generation_config, real_config

ENTRY_POINT = "qwen3_0_6b"
DISTRIBUTION = "inference-pio-qwen3-0-6b"


def make_host() -> PluginHost:
    host = PluginHost(strict=True)
    record = host.register_plugin(plugin, name=ENTRY_POINT, distribution=DISTRIBUTION)
    assert record.status == "loaded", record.error
    return host


def test_registers_its_spec_through_a_host() -> None:
    host = make_host()
    spec = host.registry.get(MODEL_NAME)
    assert isinstance(spec, ModelSpec)
    assert spec.name == "qwen3-0.6b"
    assert spec.hf_repo == "Qwen/Qwen3-0.6B"
    assert "Qwen3ForCausalLM" in spec.architectures
    assert spec.plugin == DISTRIBUTION
    for alias in spec.aliases:
        assert host.registry.get(alias) is spec


def test_checkpoint_config_resolves_to_this_model(tmp_path: Path) -> None:
    spec = make_host().resolve_checkpoint(tmp_path, real_config())
    assert spec.name == MODEL_NAME


def test_lazy_references_import() -> None:
    assert callable(import_reference(plugin.SPEC.factory))
    config = import_reference(plugin.SPEC.config_factory or "")()
    assert config["architectures"] == ["Qwen3ForCausalLM"]


def test_real_config_copies_are_independent() -> None:
    a = real_config()
    a["architectures"].append("x")
    assert real_config()["architectures"] == ["Qwen3ForCausalLM"]
    assert generation_config()["eos_token_id"]


def test_installed_entry_point_is_listed_by_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "inference_pio", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    records = {r["name"]: r for r in json.loads(out.stdout)}
    assert records[ENTRY_POINT]["status"] == "loaded", records[ENTRY_POINT]["error"]
    assert records[ENTRY_POINT]["distribution"] == DISTRIBUTION
    assert records[ENTRY_POINT]["models"] == [MODEL_NAME]


# ---- pio_claim_checkpoint: two dense Qwen3 models share Qwen3ForCausalLM --------------------


class OtherQwen3:
    """Stands in for another Qwen3ForCausalLM plugin (a different shape)."""

    @staticmethod
    @hookimpl
    def pio_register_models(register: RegisterModel) -> None:
        register(ModelSpec(name="other-qwen3", factory="x:y", architectures=("Qwen3ForCausalLM",)))

    @staticmethod
    @hookimpl
    def pio_claim_checkpoint(config: dict[str, Any]) -> str | None:
        return "other-qwen3" if config.get("hidden_size") == 4096 else None


def test_claims_its_own_shape_only(tmp_path: Path) -> None:
    config = real_config()
    assert plugin.pio_claim_checkpoint(tmp_path, config) == MODEL_NAME
    assert plugin.pio_claim_checkpoint(tmp_path, {**config, "hidden_size": 4096}) is None
    layers = config["num_hidden_layers"] + 1
    assert plugin.pio_claim_checkpoint(tmp_path, {**config, "num_hidden_layers": layers}) is None
    other_arch = {**config, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    assert plugin.pio_claim_checkpoint(tmp_path, other_arch) is None


def test_resolve_checkpoint_picks_by_shape(tmp_path: Path) -> None:
    for first_other in (True, False):
        host = PluginHost(strict=True)
        if first_other:
            host.register_plugin(OtherQwen3(), name="other")
        host.register_plugin(plugin, name=ENTRY_POINT, distribution=DISTRIBUTION)
        if not first_other:
            host.register_plugin(OtherQwen3(), name="other")
        config = real_config()
        assert host.resolve_checkpoint(tmp_path, config).name == MODEL_NAME
        other = {**config, "hidden_size": 4096}
        assert host.resolve_checkpoint(tmp_path, other).name == "other-qwen3"


def test_resolve_checkpoint_with_the_sibling_plugin(tmp_path: Path) -> None:
    sibling = pytest.importorskip("inference_pio_qwen3_4b_instruct_2507.plugin")
    sibling_config = pytest.importorskip("inference_pio_qwen3_4b_instruct_2507.config")
    host = make_host()
    host.register_plugin(sibling, name="qwen3_4b_instruct_2507")
    assert host.resolve_checkpoint(tmp_path, real_config()).name == MODEL_NAME
    resolved = host.resolve_checkpoint(tmp_path, sibling_config.real_config())
    assert resolved.name == sibling.MODEL_NAME
