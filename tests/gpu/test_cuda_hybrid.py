"""Models split between the CPU and the GPU (``HybridScheduler``, ``--gpu-layers``) against
transformers and the single-device paths on tiny random checkpoints: Qwen3 dense and Qwen3-MoE,
every split point, prefill and decode logits, greedy tokens alone and batched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio import cuda, load_model  # noqa: E402
from inference_pio.device import CPU, Device  # noqa: E402
from inference_pio.nn.cuda_graph import unsupported_reason  # noqa: E402
from inference_pio.plugins import PluginHost  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402
from inference_pio.testing.conformance import (  # noqa: E402
    hf_greedy_with_logits,
    rel_error,
    save_reference,
)

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

dense_plugin = pytest.importorskip("inference_pio_qwen3_0_6b.plugin")
moe_plugin = pytest.importorskip("inference_pio_qwen3_coder_30b.plugin")

GPU = Device("cuda", 0)
DENSE = dict(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e6,
    tie_word_embeddings=True, max_position_embeddings=1024, rms_norm_eps=1e-6,
)  # fmt: skip
MOE = dict(
    vocab_size=512, hidden_size=128, intermediate_size=192, moe_intermediate_size=64,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    num_experts=8, num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=1,
    mlp_only_layers=[1], rope_theta=1e7, tie_word_embeddings=False,
    max_position_embeddings=1024, rms_norm_eps=1e-6,
)  # fmt: skip
TOL = {"float32": 1e-4, "bfloat16": 2e-2}


def host() -> PluginHost:
    h = PluginHost(strict=True)
    h.register_plugin(dense_plugin, name="qwen3_0_6b", distribution="inference-pio-qwen3-0-6b")
    h.register_plugin(moe_plugin, name="qwen3_coder_30b", distribution="x-qwen3-coder-30b")
    return h


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def dense_ckpt(request: Any, tmp_path_factory: Any) -> tuple[Path, Any, str]:
    d = tmp_path_factory.mktemp("hybrid-dense")
    scale = 8.0 if request.param == "bfloat16" else 1.0
    ref = save_reference(d, "Qwen3ForCausalLM", DENSE, request.param, seed=11, logit_scale=scale)
    return d, ref, request.param


@pytest.mark.parametrize("gpu_layers", [0, 1, 3, 4])
def test_dense_split_matches_transformers(
    dense_ckpt: tuple[Path, Any, str], gpu_layers: int
) -> None:
    d, ref, dtype = dense_ckpt
    m = load_model(d, device="cuda", gpu_layers=gpu_layers, host=host(), progress=False)
    model = m.model  # type: ignore[attr-defined]
    first = 4 - gpu_layers
    assert model.layer_devices == [CPU] * first + [GPU] * gpu_layers
    if gpu_layers < 4:
        assert (model.embed_device, model.device) == (CPU, GPU)
        assert model.hybrid
        assert unsupported_reason(model) is not None  # op by op: no graph across devices
    else:  # every layer on the GPU: a plain GPU model (bf16: the captured decode graph)
        assert (model.embed_device, model.hybrid) == (GPU, False)
        assert (unsupported_reason(model) is None) == (dtype == "bfloat16")
    prompt = [3, 14, 15, 92, 65, 35, 89, 79, 32]
    want, rows = hf_greedy_with_logits(ref, prompt, 8)
    cache = model.new_cache(len(prompt) + 8)
    assert [c.k.device for c in cache.layers] == model.layer_devices
    (logits,) = model.forward([(prompt, cache)])
    for step, row in enumerate(rows):
        assert rel_error(tb.from_device(logits).float(), row) < TOL[dtype], f"step {step}"
        if step + 1 < len(rows):
            (logits,) = model.forward([([want[step]], cache)])
    assert m.generate(prompt, max_new_tokens=8, temperature=0, ignore_eos=True).token_ids == want
    # batched: the BatchManager's steps run every layer on its own device too
    short = [7, 8, 9]
    want_short, _ = hf_greedy_with_logits(ref, short, 6)
    reqs = [dict(prompt=p, max_new_tokens=n, temperature=0.0, ignore_eos=True)
            for p, n in ((prompt, 8), (short, 6))]  # fmt: skip
    got = [r.token_ids for r in m.generate_batch(reqs)]  # type: ignore[attr-defined]
    assert got == [want, want_short]


def test_auto_places_a_small_model_whole_on_the_gpu(dense_ckpt: tuple[Path, Any, str]) -> None:
    d, _, _ = dense_ckpt
    m = load_model(d, device="cuda", gpu_layers="auto", host=host(), progress=False)
    assert m.model.layer_devices == [GPU] * 4  # type: ignore[attr-defined]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_moe_split_matches_transformers(tmp_path: Path, dtype: str) -> None:
    scale = 8.0 if dtype == "bfloat16" else 1.0
    ref = save_reference(tmp_path, "Qwen3MoeForCausalLM", MOE, dtype, seed=5, logit_scale=scale)
    m = load_model(tmp_path, device="cuda", gpu_layers=2, host=host(), progress=False)
    assert m.model.layer_devices == [CPU, GPU, GPU]  # type: ignore[attr-defined]
    prompt = [5, 17, 301, 42, 7, 99]
    want, rows = hf_greedy_with_logits(ref, prompt, 8)
    got = m.generate(prompt, max_new_tokens=8, temperature=0, ignore_eos=True)
    assert got.token_ids == want
    cache = m.model.new_cache(len(prompt) + 1)  # type: ignore[attr-defined]
    (logits,) = m.model.forward([(prompt, cache)])  # type: ignore[attr-defined]
    assert rel_error(tb.from_device(logits).float(), rows[0]) < TOL[dtype]


def test_models_that_cannot_split_say_so(tmp_path: Path) -> None:
    vl = pytest.importorskip("inference_pio_qwen3_vl_2b.testing")
    vl.save_vl_reference(tmp_path, vl.tiny_config(), "float32", seed=1)
    h = PluginHost(strict=True)
    h.register_plugin(pytest.importorskip("inference_pio_qwen3_vl_2b.plugin"), name="vl",
                      distribution="x-vl")  # fmt: skip
    with pytest.raises(ValueError, match="cannot be split between the CPU and a GPU"):
        load_model(tmp_path, device="cuda", gpu_layers=1, host=h, progress=False)
