"""Qwen3 on the CPU and on CUDA for configs drawn at random (seeded): query heads per kv head
1-8, head_dim 32-256 (some not multiples of 32, which the fused step does not take), hidden and
intermediate sizes that are not multiples of 8 (which the CUDA graph decoders do not take), tied
and untied LM heads, 1-3 layers, bf16 weights. Each prompt's prefill logits must be transformers'
within 2e-2 (relative), and whatever path a config lands on (on CUDA: fused step, multi-kernel
graph or op path), its greedy tokens must be transformers', single and batched.

Random models have near-tied logits; a token may differ from transformers' only at a step where
transformers' own two best logits are within a few bf16 rounding steps of each other (and from
there on the sequences diverge), so that is the one difference accepted.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio import cuda  # noqa: E402
from inference_pio.nn.cuda_graph import fused_unsupported_reason, unsupported_reason  # noqa: E402
from inference_pio.testing.conformance import hf_greedy_with_logits, rel_error  # noqa: E402
from inference_pio.testing.tiny import randomize_norms, write_byte_tokenizer  # noqa: E402

load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load

SEEDS = range(12)
NEW = 16
TIE_ULPS = 8  # bf16 rounding steps at the row's largest |logit|
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not cuda.is_available(), reason=f"CUDA unavailable: {cuda.unavailable_reason()}"
        ),
    ),
]


def draw_config(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    nkv = rng.choice([1, 2, 4])
    return dict(
        vocab_size=rng.randrange(512, 1100),
        hidden_size=rng.randrange(32, 321, 4),
        intermediate_size=rng.randrange(32, 641, 4),
        num_hidden_layers=rng.randint(1, 3),
        num_attention_heads=nkv * rng.choice([1, 2, 3, 4, 8]),
        num_key_value_heads=nkv,
        head_dim=rng.choice([32, 48, 64, 80, 128, 256]),
        rope_theta=rng.choice([1e4, 1e6]),
        tie_word_embeddings=rng.random() < 0.5,
        max_position_embeddings=2048,
        rms_norm_eps=rng.choice([1e-6, 1e-5]),
    )


def _make(d: Path, seed: int) -> tuple[Any, dict[str, Any]]:
    cfg_kw = draw_config(seed)
    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(**cfg_kw)
    cfg._attn_implementation = "eager"
    ref = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # well separated logits, as in the other model tests
        ref.model.embed_tokens.weight.mul_(8.0)
        if not cfg_kw["tie_word_embeddings"]:
            ref.lm_head.weight.mul_(8.0)
    randomize_norms(ref, seed=seed)
    ref = ref.to(torch.bfloat16)
    ref.save_pretrained(d)
    write_byte_tokenizer(d, 512, 511)
    (d / "generation_config.json").write_text('{"eos_token_id": [511]}')
    return ref, cfg_kw


def _check(got: list[int], want: list[int], scores: list[Any], what: str) -> None:
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a == b:
            continue
        top = scores[i].topk(2).values
        margin = float(top[0] - top[1])
        scale = float(scores[i].abs().max())
        ulp = 2.0 ** (math.floor(math.log2(scale)) - 7)  # bf16: 8 significant bits
        assert margin <= TIE_ULPS * ulp, (
            f"{what}: token {i} is {a}, transformers' {b} wins by {margin:.4g} "
            f"(logits up to {scale:.4g})"
        )
        return  # the sequences diverge after a near tie


def _path(model: Any, device: str) -> str:
    if device == "cpu":
        return "cpu"
    if unsupported_reason(model) is not None:
        return "op path"
    return "fused step" if fused_unsupported_reason(model) is None else "multi-kernel graph"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_config_greedy_matches_transformers(seed: int, device: str, tmp_path: Path) -> None:
    ref, cfg = _make(tmp_path, seed)
    m = load(tmp_path, device=device)
    rng = random.Random(1000 + seed)
    prompts = [[rng.randrange(0, 500)], [rng.randrange(0, 500) for _ in range(rng.randint(2, 90))]]
    what = f"seed {seed} ({_path(m.model, device)}): {cfg}"
    hf = [hf_greedy_with_logits(ref, p, NEW) for p in prompts]
    fm = m.model
    for p, (_, scores) in zip(prompts, hf, strict=True):  # checked even where tokens repeat
        (logits,) = fm.forward([(p, fm.new_cache(len(p)))])
        err = rel_error(logits, scores[0])
        assert err <= 2e-2, f"{what}, prompt of {len(p)}: prefill logits' error {err:.3g}"
    for p, (want, scores) in zip(prompts, hf, strict=True):
        got = m.generate(p, max_new_tokens=NEW, temperature=0.0, ignore_eos=True).token_ids
        _check(got, want, scores, f"{what}, prompt of {len(p)}")
    reqs = [dict(prompt=p, max_new_tokens=NEW, temperature=0.0, ignore_eos=True) for p in prompts]
    for r, (want, scores) in zip(m.generate_batch(reqs), hf, strict=True):
        _check(r.token_ids, want, scores, f"{what}, batched")
