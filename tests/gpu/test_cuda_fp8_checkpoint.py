"""FP8 checkpoints on the GPU: layers on a GPU dequantize their FP8 weights at load (the CUDA-graph
decode steps take bf16), so an FP8 checkpoint decodes exactly as its dequantized bf16 copy does;
with --gpu-layers the CPU layers keep FP8 weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from inference_pio.dtypes import DType
from inference_pio.testing.conformance import prompt, save_reference
from inference_pio.testing.fp8 import write_fp8_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file
from tiny_qwen3 import TINY

pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("bf16")
    save_reference(src, "Qwen3ForCausalLM", TINY, "bfloat16", seed=5, logit_scale=8.0)
    fp8, deq = src.parent / "fp8", src.parent / "deq"
    write_fp8_checkpoint(src, fp8, deq, block=(64, 64))
    return fp8, deq


def _load(path: Path, **kw: Any) -> Any:
    """load_model with the Qwen3 plugin registered by hand (the GPU machine installs none)."""
    from inference_pio import load_model
    from inference_pio.plugins import PluginHost

    plugin = pytest.importorskip("inference_pio_qwen3_0_6b.plugin")
    host = PluginHost(strict=True)
    host.register_plugin(plugin, name="qwen3_0_6b", distribution="inference-pio-qwen3-0-6b")
    return load_model(path, progress=False, host=host, **kw)


def test_fp8_checkpoint_on_cuda_decodes_as_its_dequantized_copy(
    checkpoints: tuple[Path, Path],
) -> None:
    fp8, deq = checkpoints
    a, b = _load(fp8, device="cuda:0"), _load(deq, device="cuda:0")
    assert a.model.layers[0].attention.q_proj.weight.dtype == DType.bfloat16
    from inference_pio.nn.cuda_graph import unsupported_reason

    assert unsupported_reason(a.model) is None  # the CUDA-graph (fused) decode takes it
    for n in (1, 9, 40):
        ids = prompt(n, 50 + n)
        ra = a.generate(ids, max_new_tokens=24, temperature=0.0, ignore_eos=True)
        rb = b.generate(ids, max_new_tokens=24, temperature=0.0, ignore_eos=True)
        assert ra.token_ids == rb.token_ids
    reqs = [
        dict(prompt=prompt(n, n), max_new_tokens=10, temperature=0.0, ignore_eos=True)
        for n in (3, 17)
    ]
    assert [r.token_ids for r in a.generate_batch(reqs)] == [
        r.token_ids for r in b.generate_batch(reqs)
    ]


def test_fp8_checkpoint_split_between_cpu_and_gpu(checkpoints: tuple[Path, Path]) -> None:
    fp8, _ = checkpoints
    cpu = _load(fp8)
    split = _load(fp8, device="cuda:0", gpu_layers=1)
    layers = split.model.layers
    assert layers[0].attention.q_proj.quantized  # a CPU layer keeps FP8
    assert not layers[-1].attention.q_proj.quantized  # the GPU layer took bf16
    ids = prompt(12, 7)
    want = cpu.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids
    got = split.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids
    assert got == want
