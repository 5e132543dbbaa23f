"""FP8 checkpoints on the GPU. Dense Qwen3 layers keep their FP8 projections on the device: with
128 x 128 blocks the fused CUDA-graph step reads them (e4m3 bytes and block scales, fp32
products), other blocks decode through the model's own captured step (``linear_fp8``). Either
way the greedy tokens are those of the same FP8 checkpoint on the CPU. Layers of other layouts
(MoE) dequantize at load; with --gpu-layers the CPU layers keep FP8 too."""

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

# hidden 192 and intermediate 320: partial 128-blocks on both axes of every projection
PARTIAL = dict(TINY, hidden_size=192, intermediate_size=320, num_attention_heads=6)


def _fp8(tmp: pytest.TempPathFactory, config: dict[str, Any], block: tuple[int, int]) -> Path:
    src = tmp.mktemp("bf16")
    save_reference(src, "Qwen3ForCausalLM", config, "bfloat16", seed=5, logit_scale=8.0)
    fp8 = src.parent / f"fp8_{block[0]}"
    write_fp8_checkpoint(src, fp8, block=block)
    return fp8


@pytest.fixture(scope="module")
def fp8_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fp8(tmp_path_factory, TINY, (64, 64))


@pytest.fixture(scope="module", params=["tiny", "partial"])
def fp8_128(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fp8(tmp_path_factory, TINY if request.param == "tiny" else PARTIAL, (128, 128))


def _load(path: Path, **kw: Any) -> Any:
    """load_model with the Qwen3 plugin registered by hand (the GPU machine installs none)."""
    from inference_pio import load_model
    from inference_pio.plugins import PluginHost

    plugin = pytest.importorskip("inference_pio_qwen3_0_6b.plugin")
    host = PluginHost(strict=True)
    host.register_plugin(plugin, name="qwen3_0_6b", distribution="inference-pio-qwen3-0-6b")
    return load_model(path, progress=False, host=host, **kw)


def _same_tokens_as_cpu(gpu: Any, cpu: Any) -> None:
    for n in (1, 9, 40):
        ids = prompt(n, 50 + n)
        want = cpu.generate(ids, max_new_tokens=24, temperature=0.0, ignore_eos=True)
        got = gpu.generate(ids, max_new_tokens=24, temperature=0.0, ignore_eos=True)
        assert got.token_ids == want.token_ids, n
    reqs = [
        dict(prompt=prompt(n, n), max_new_tokens=10, temperature=0.0, ignore_eos=True)
        for n in (3, 17)
    ]
    assert [r.token_ids for r in gpu.generate_batch(reqs)] == [
        r.token_ids for r in cpu.generate_batch(reqs)
    ]


def test_fused_step_reads_fp8_weights(fp8_128: Path) -> None:
    from inference_pio.nn.cuda_graph import fused_unsupported_reason, has_fp8

    gpu, cpu = _load(fp8_128, device="cuda:0"), _load(fp8_128)
    q = gpu.model.layers[0].attention.q_proj
    assert q.quantized
    assert q.weight.dtype == DType.float8_e4m3
    assert has_fp8(gpu.model)
    assert fused_unsupported_reason(gpu.model) is None
    _same_tokens_as_cpu(gpu, cpu)
    runner = vars(gpu.model)["_cuda_graph_decoder"]
    assert runner.fused
    assert runner.fused_info()["threads"] == 384


def test_fp8_without_the_fused_step_decodes_through_the_captured_step(
    fp8_128: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference_pio.nn.cuda_capture import CapturedStepDecoder

    monkeypatch.setenv("INFERENCE_PIO_CUDA_FUSED_DECODE", "0")
    gpu, cpu = _load(fp8_128, device="cuda:0"), _load(fp8_128)
    _same_tokens_as_cpu(gpu, cpu)
    assert isinstance(vars(gpu.model)["_cuda_graph_decoder"], CapturedStepDecoder)


def test_fp8_blocks_the_fused_step_does_not_take(fp8_64: Path) -> None:
    from inference_pio.nn.cuda_capture import CapturedStepDecoder
    from inference_pio.nn.cuda_graph import fused_unsupported_reason

    gpu, cpu = _load(fp8_64, device="cuda:0"), _load(fp8_64)
    assert gpu.model.layers[0].mlp.down.quantized
    assert "128 x 128" in (fused_unsupported_reason(gpu.model) or "")
    _same_tokens_as_cpu(gpu, cpu)
    assert isinstance(vars(gpu.model)["_cuda_graph_decoder"], CapturedStepDecoder)


def test_fp8_checkpoint_split_between_cpu_and_gpu(fp8_64: Path) -> None:
    cpu = _load(fp8_64)
    split = _load(fp8_64, device="cuda:0", gpu_layers=1)
    layers = split.model.layers
    assert layers[0].attention.q_proj.quantized  # a CPU layer keeps FP8
    assert layers[-1].attention.q_proj.quantized  # and so does the dense GPU layer
    assert layers[-1].attention.q_proj.weight.device.type == "cuda"
    ids = prompt(12, 7)
    want = cpu.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids
    got = split.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids
    assert got == want


def test_quantize_at_load_on_cuda(tmp_path_factory: pytest.TempPathFactory) -> None:
    """-q fp8 on a GPU (a dense model lists it in gpu_quantizations): the projections are
    quantized on the host as they load and decode through the fused step as FP8, with the
    tokens of the same quantization on the CPU."""
    src = tmp_path_factory.mktemp("bf16_q")
    save_reference(src, "Qwen3ForCausalLM", TINY, "bfloat16", seed=6, logit_scale=8.0)
    gpu, cpu = _load(src, device="cuda:0", quantization="fp8"), _load(src, quantization="fp8")
    assert gpu.model.layers[0].mlp.gate.quantized
    _same_tokens_as_cpu(gpu, cpu)
    assert vars(gpu.model)["_cuda_graph_decoder"].fused
