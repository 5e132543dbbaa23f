"""Plugin registration tests for Qwen3-VL-2B-Instruct."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from inference_pio import ModelSpec
from inference_pio.plugins import PluginHost
from inference_pio.registry import import_reference
from inference_pio_qwen3_vl_2b import MODEL_NAME, plugin
from inference_pio_qwen3_vl_2b.config import generation_config, real_config

ENTRY_POINT = "qwen3_vl_2b"
DISTRIBUTION = "inference-pio-qwen3-vl-2b"


def make_host() -> PluginHost:
    host = PluginHost(strict=True)
    record = host.register_plugin(plugin, name=ENTRY_POINT, distribution=DISTRIBUTION)
    assert record.status == "loaded", record.error
    return host


def test_registers_its_spec_through_a_host() -> None:
    host = make_host()
    spec = host.registry.get(MODEL_NAME)
    assert isinstance(spec, ModelSpec)
    assert spec.name == "qwen3-vl-2b-instruct"
    assert spec.hf_repo == "Qwen/Qwen3-VL-2B-Instruct"
    assert "Qwen3VLForConditionalGeneration" in spec.architectures
    assert spec.plugin == DISTRIBUTION
    for alias in spec.aliases:
        assert host.registry.get(alias) is spec


def test_checkpoint_config_resolves_to_this_model(tmp_path: Path) -> None:
    spec = make_host().resolve_checkpoint(tmp_path, real_config())
    assert spec.name == MODEL_NAME


def test_lazy_references_import() -> None:
    assert callable(import_reference(plugin.SPEC.factory))
    config = import_reference(plugin.SPEC.config_factory or "")()
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]


def test_real_config_copies_are_independent() -> None:
    a = real_config()
    a["architectures"].append("x")
    assert real_config()["architectures"] == ["Qwen3VLForConditionalGeneration"]
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
