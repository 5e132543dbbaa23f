"""HybridScheduler: placements across the CPU and a GPU (the plan itself needs no GPU)."""

from __future__ import annotations

import math

import pytest

from inference_pio.device import CPU, Device
from inference_pio.nn import dense
from inference_pio.scheduler import (
    HybridScheduler,
    Placement,
    checkpoint_sizes,
    plan_for_checkpoint,
)
from inference_pio.testing.tiny import tiny_qwen3_config

GIB = 1 << 30
GPU = Device("cuda", 0)


def test_placement_puts_the_last_layers_and_the_head_on_the_gpu() -> None:
    p = Placement(GPU, 3, 5)
    assert [p.layer_device(i) for i in range(5)] == [CPU, CPU, GPU, GPU, GPU]
    assert p.first_gpu_layer == 2
    assert (p.head_device, p.embed_device) == (GPU, CPU)
    assert p.describe() == (
        "layers 0-1 on cpu, layers 2-4 on cuda:0; embedding on cpu; "
        "final norm and LM head on cuda:0"
    )
    assert Placement(GPU, 0, 2).describe().startswith("layers 0-1 on cpu, no layer on cuda:0")
    whole = Placement(GPU, 2, 2)
    assert whole.describe() == (
        "layers 0-1 on cuda:0; embedding on cuda:0; final norm and LM head on cuda:0"
    )
    assert whole.embed_device == GPU
    with pytest.raises(ValueError, match=r"outside 0\.\.5"):
        Placement(GPU, 6, 5)
    with pytest.raises(ValueError, match="CUDA device"):
        Placement(CPU, 1, 5)


def test_fixed_layer_counts() -> None:
    s = HybridScheduler("cuda:1", gpu_layers=2, memory_bytes=0)
    p = s.plan([GIB] * 4, GIB)
    assert (p.gpu, p.gpu_layers, p.num_layers) == (Device("cuda", 1), 2, 4)
    with pytest.raises(ValueError, match="exceeds the model's 4 layers"):
        HybridScheduler("cuda", gpu_layers=5).plan([GIB] * 4, GIB)
    with pytest.raises(ValueError, match=">= 0"):
        HybridScheduler("cuda", gpu_layers=-1)
    with pytest.raises(ValueError, match="CUDA device"):
        HybridScheduler("cpu")


@pytest.mark.parametrize(
    ("memory_gib", "expected"),
    [(80, 10), (24, 10), (12, 7), (8.5, 4), (5, 1), (3, 0)],
)
def test_automatic_plans_fill_the_memory_from_the_last_layer(
    memory_gib: float, expected: int
) -> None:
    """10 layers of 1 GiB + 0.25 GiB of cache each, a 1.5 GiB head, a 1 GiB reserve and 5% of
    the memory kept back."""
    s = HybridScheduler("cuda", memory_bytes=int(memory_gib * GIB), reserve_bytes=GIB)
    budget = s.budget() - int(1.5 * GIB)
    want = min(10, max(0, budget // int(1.25 * GIB)))
    assert want == expected
    p = s.plan([GIB] * 10, int(1.5 * GIB), GIB // 4)
    assert p.gpu_layers == expected


def test_a_head_that_does_not_fit_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot hold the model's LM head"):
        HybridScheduler("cuda", memory_bytes=2 * GIB, reserve_bytes=GIB).plan([1], 2 * GIB)


def test_checkpoint_sizes_from_a_weight_plan() -> None:
    for tied in (True, False):
        cfg = dense.DenseConfig.from_hf(tiny_qwen3_config(tie_word_embeddings=tied))
        plan = dense.weight_plan(cfg)
        sizes = {name: 2 * math.prod(shape) for name, (shape, _) in plan.items()}
        sizes["model.layers.2.mtp.weight"] = 10**9  # a layer past the last: ignored
        layers, head = checkpoint_sizes(sizes, cfg.num_layers, tied)
        per_layer = sum(v for k, v in sizes.items() if ".layers.0." in k)
        assert layers == [per_layer, per_layer]
        embed = 2 * cfg.vocab_size * cfg.hidden_size
        assert head == embed + 2 * cfg.hidden_size  # tied: the embedding is the head


def test_plan_for_a_checkpoint_and_a_multimodal_config() -> None:
    cfg = tiny_qwen3_config(num_hidden_layers=3)
    sizes = {
        name: 2 * math.prod(shape)
        for name, (shape, _) in dense.weight_plan(dense.DenseConfig.from_hf(cfg)).items()
    }
    p = plan_for_checkpoint(cfg, sizes, "cuda", 2)
    assert (p.gpu_layers, p.num_layers) == (2, 3)
    nested = {"text_config": cfg, "tie_word_embeddings": True}
    assert plan_for_checkpoint(nested, sizes, "cuda", 1).num_layers == 3
    with pytest.raises(ValueError, match="num_hidden_layers"):
        plan_for_checkpoint({}, sizes, "cuda", 1)


def test_load_model_refuses_gpu_layers_without_a_gpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from inference_pio import load_model
    from inference_pio.testing.tiny import save_tiny_causal_lm

    save_tiny_causal_lm(tmp_path, transformers.Qwen3ForCausalLM,
                        transformers.Qwen3Config(**tiny_qwen3_config()))  # fmt: skip
    with pytest.raises(ValueError, match="needs a CUDA device"):
        load_model(tmp_path, gpu_layers=1, progress=False)


def test_a_builder_that_cannot_split_says_so() -> None:
    with pytest.raises(ValueError, match="cannot be split between the CPU and a GPU"):
        Device.parse(Placement(GPU, 1, 2))  # type: ignore[arg-type]


def test_gpu_layers_on_cuda_without_a_gpu_says_cuda_is_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from inference_pio import cuda, load_model
    from inference_pio.testing.tiny import save_tiny_causal_lm

    if cuda.is_available():
        pytest.skip("CUDA is available here")
    save_tiny_causal_lm(tmp_path, transformers.Qwen3ForCausalLM,
                        transformers.Qwen3Config(**tiny_qwen3_config()))  # fmt: skip
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_model(tmp_path, device="cuda", gpu_layers=1, progress=False)


def test_the_kv_cache_is_planned_at_the_compute_dtype(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An f32 checkpoint (or --dtype f32) caches f32 values: the automatic plan counted 2
    bytes a value whatever the dtype."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from inference_pio.checkpoint import Checkpoint
    from inference_pio.loading import cache_itemsize
    from inference_pio.testing.tiny import save_tiny_causal_lm

    cfg = transformers.Qwen3Config(**tiny_qwen3_config())
    for dtype, want in ((torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)):
        d = tmp_path / str(dtype)
        save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, dtype=dtype)
        ckpt = Checkpoint.open(d)
        assert cache_itemsize(ckpt, None) == want
        assert cache_itemsize(ckpt, "f32") == 4
        assert cache_itemsize(ckpt, "bf16") == 2
