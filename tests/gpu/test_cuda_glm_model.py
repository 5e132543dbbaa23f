"""GLM-4.7-Flash (MLA + sigmoid-routed experts) on CUDA against transformers and the CPU path on
tiny random checkpoints: the op path on the device (no captured graph takes MLA yet). Greedy
tokens must equal transformers' and the CPU path's; logits within the conformance tolerances."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio import cuda  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402
from inference_pio.testing.conformance import (  # noqa: E402
    hf_greedy_with_logits,
    rel_error,
    save_reference,
)

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

load = pytest.importorskip("inference_pio_glm_4_7_flash.model").load

TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=24,
    n_routed_experts=8,
    num_experts_per_tok=3,
    n_group=2,
    topk_group=1,
    n_shared_experts=1,
    routed_scaling_factor=1.8,
    rope_theta=1e4,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
)


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kind = request.param
    d = tmp_path_factory.mktemp(f"glm-cuda-{kind}")
    dtype = "bfloat16" if kind == "bf16" else "float32"
    ref = save_reference(
        d, "Glm4MoeLiteForCausalLM", TINY, dtype, seed=4, logit_scale=8.0 if kind == "bf16" else 1.0
    )
    return kind, d, ref


@pytest.mark.parametrize("plen", [5, 60])
def test_greedy_and_logits_match_transformers_and_cpu(ckpt: Any, plen: int) -> None:
    kind, d, ref = ckpt
    g = torch.Generator().manual_seed(plen)
    prompt = [int(i) for i in torch.randint(0, 500, (plen,), generator=g)]
    want, rows = hf_greedy_with_logits(ref, prompt, 16)
    gpu = load(d, device="cuda")
    assert gpu.generate(prompt, max_new_tokens=16, temperature=0.0, ignore_eos=True).token_ids == (
        want
    )
    cpu = load(d, device="cpu")
    assert cpu.generate(prompt, max_new_tokens=16, temperature=0.0, ignore_eos=True).token_ids == (
        want
    )
    fm = gpu.model
    cache = fm.new_cache(plen + 4)
    (lg,) = fm.forward([(prompt, cache)])
    tol = 1e-4 if kind == "fp32" else 2e-2
    assert rel_error(tb.from_device(lg).float().reshape(-1), rows[0]) <= tol
    (lg,) = fm.forward([([want[0]], cache)])
    assert rel_error(tb.from_device(lg).float().reshape(-1), rows[1]) <= tol


def test_batched_generation_on_the_device(ckpt: Any) -> None:
    _, d, _ = ckpt
    gpu = load(d, device="cuda")
    prompts = [[1, 2, 3], list(range(10, 47)), [400, 5]]
    lengths = (10, 7, 12)
    single = [
        gpu.generate(p, max_new_tokens=n, temperature=0.0, ignore_eos=True).token_ids
        for p, n in zip(prompts, lengths, strict=True)
    ]
    reqs = [
        dict(prompt=p, max_new_tokens=n, temperature=0.0, ignore_eos=True)
        for p, n in zip(prompts, lengths, strict=True)
    ]
    assert [r.token_ids for r in gpu.generate_batch(reqs)] == single


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_real_head_widths(tmp_path: Any, dtype: str) -> None:
    """GLM-4.7-Flash's own widths (latent 512, rope 64, nope 192, values 256): the absorbed
    attention runs on [latent | rope key] rows of 576 values, 512 of them values, wider than
    the device's other attention kernels take."""
    cfg = dict(TINY, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=192,
               v_head_dim=256, q_lora_rank=96, num_hidden_layers=2)  # fmt: skip
    scale = 8.0 if dtype == "bfloat16" else 1.0
    ref = save_reference(tmp_path, "Glm4MoeLiteForCausalLM", cfg, dtype, seed=9, logit_scale=scale)
    prompt = [
        int(i) for i in torch.randint(0, 500, (40,), generator=torch.Generator().manual_seed(1))
    ]
    want, rows = hf_greedy_with_logits(ref, prompt, 8)
    gpu = load(tmp_path, device="cuda")
    assert (
        gpu.generate(prompt, max_new_tokens=8, temperature=0.0, ignore_eos=True).token_ids == want
    )
    cache = gpu.model.new_cache(len(prompt) + 2)
    (lg,) = gpu.model.forward([(prompt, cache)])
    tol = 1e-4 if dtype == "float32" else 2e-2
    assert rel_error(tb.from_device(lg).float().reshape(-1), rows[0]) <= tol
    (lg,) = gpu.model.forward([([want[0]], cache)])
    assert rel_error(tb.from_device(lg).float().reshape(-1), rows[1]) <= tol
