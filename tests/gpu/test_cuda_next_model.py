"""Qwen3-Coder-Next (Gated DeltaNet + gated attention + MoE with a gated shared expert) on CUDA
against transformers and the CPU path on tiny random checkpoints (the op path: no captured graph
takes these layers), and the device's gated delta rule against the CPU's."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio import cuda, ops  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402
from inference_pio.testing.conformance import (  # noqa: E402
    hf_greedy_with_logits,
    rel_error,
    save_reference,
)

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

load = pytest.importorskip("inference_pio_qwen3_coder_next.model").load
TINY = pytest.importorskip("inference_pio_qwen3_coder_next.testing").TINY
DEV = "cuda:0"


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kind = request.param
    d = tmp_path_factory.mktemp(f"next-cuda-{kind}")
    dtype = "bfloat16" if kind == "bf16" else "float32"
    ref = save_reference(
        d, "Qwen3NextForCausalLM", TINY, dtype, seed=4, logit_scale=8.0 if kind == "bf16" else 1.0
    )
    return kind, d, ref


@pytest.mark.parametrize("plen", [5, 70])
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("t", "nk", "nv", "dk", "dv"),
    # 70 / 45 / 33 tokens: chunks of 32 and a partial one; dv 160: threads own two columns;
    # one token: a warp per 32 columns (dv 40: a partial warp), dk 192 takes the chunked kernel
    [
        (1, 2, 4, 16, 24),
        (70, 16, 32, 128, 128),
        (45, 2, 4, 16, 24),
        (33, 1, 2, 64, 160),
        (1, 16, 32, 128, 128),
        (1, 2, 6, 128, 40),
        (1, 1, 2, 192, 32),
        (1, 4, 4, 100, 64),
    ],
)
def test_gated_delta_rule_on_the_device_matches_the_cpu(
    dtype: Any, t: int, nk: int, nv: int, dk: int, dv: int
) -> None:
    g = torch.Generator().manual_seed(t)
    q, k = (torch.randn(t, nk, dk, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(t, nv, dv, generator=g).to(dtype)
    a, b = (torch.randn(t, nv, generator=g).to(dtype) for _ in range(2))
    decay = torch.tensor([-math.exp(x) for x in (torch.rand(nv, generator=g) * 2 - 1).tolist()])
    bias = torch.randn(nv, generator=g) * 0.5
    state = torch.randn(nv, dk, dv, generator=g) * 0.1
    args = (q, k, v, a, b, decay, bias)
    s_cpu, s_gpu = tb.to_pio(state.clone()), tb.to_device(state.clone(), DEV)
    out_cpu = ops.gated_delta_rule(*(tb.to_pio(x) for x in args), s_cpu)
    out_gpu = ops.gated_delta_rule(*(tb.to_device(x, DEV) for x in args), s_gpu)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert tb.rel(tb.from_device(out_gpu).float(), tb.to_torch(out_cpu).float()) < tol
    assert tb.rel(tb.from_device(s_gpu), tb.to_torch(s_cpu)) < 1e-5
