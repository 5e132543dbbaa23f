"""Qwen3-0.6B against Hugging Face transformers on tiny random checkpoints of the same architecture.

Reference: ``Qwen3ForCausalLM`` on CPU, eager attention, norms randomised (so a missing or
mis-applied norm shows). Tolerances: fp32 logits relative error (‖ours − ref‖ / ‖ref‖ per
position) ≤ 1e-4; bf16 ≤ 2e-2 (bf16 has 8 mantissa bits: one rounding is 2^-9 ≈ 2e-3 relative and a
few dozen roundings in sequence accumulate to ~1e-2). Greedy tokens must be identical; for bf16
the tied embedding is scaled ×8 in the fixture so logits are well separated (near-ties in a tiny
random model would otherwise flip on rounding noise alone).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio.errors import CheckpointError  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm  # noqa: E402
from inference_pio_qwen3_0_6b.model import load  # noqa: E402

TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    rope_theta=1e6,
    tie_word_embeddings=True,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
)


def _config(**overrides: Any) -> Any:
    return transformers.Qwen3Config(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    d = tmp_path_factory.mktemp("qwen3-fp32")
    ref = save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, _config(), torch.float32, seed=1)
    return d, ref


@pytest.fixture(scope="module")
def bf16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    d = tmp_path_factory.mktemp("qwen3-bf16")
    torch.manual_seed(2)
    cfg = _config()
    cfg._attn_implementation = "eager"
    ref = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        ref.model.embed_tokens.weight.mul_(8.0)
    from inference_pio.testing.tiny import randomize_norms, write_byte_tokenizer

    randomize_norms(ref, seed=2)
    ref = ref.to(torch.bfloat16)
    ref.save_pretrained(d)
    write_byte_tokenizer(d, 512, 511)
    (d / "generation_config.json").write_text('{"eos_token_id": [511]}')
    return d, ref


def _prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 500, (n,), generator=g).tolist()


def _rel(ours: list[float], ref: Any) -> float:
    o = torch.tensor(ours, dtype=torch.float64)
    r = ref.to(torch.float64)
    return float((o - r).norm() / r.norm())


def _hf_greedy(ref: Any, ids: list[int], n: int) -> list[int]:
    out = ref(torch.tensor([ids]), use_cache=True)
    past, toks = out.past_key_values, []
    tok = int(out.logits[0, -1].float().argmax())
    for _ in range(n):
        toks.append(tok)
        out = ref(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        tok = int(out.logits[0, -1].float().argmax())
    return toks


@pytest.mark.parametrize("prompt_len", [1, 7, 130])
def test_fp32_logits_match_prefill_then_decode(fp32: tuple[Path, Any], prompt_len: int) -> None:
    path, ref = fp32
    ids = _prompt(prompt_len + 5, prompt_len)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    fm = load(path).model
    cache = fm.new_cache(len(ids))
    errors = []
    (logits,) = fm.forward([(ids[:prompt_len], cache)])
    errors.append(_rel(logits.tolist(), want[prompt_len - 1]))
    for i in range(prompt_len, len(ids)):
        (logits,) = fm.forward([([ids[i]], cache)])
        errors.append(_rel(logits.tolist(), want[i]))
    assert max(errors) <= 1e-4, f"relative errors per position: {errors}"


@pytest.mark.parametrize("prompt_len", [5, 300])
def test_fp32_greedy_32_tokens_identical(fp32: tuple[Path, Any], prompt_len: int) -> None:
    path, ref = fp32
    ids = _prompt(prompt_len, 100 + prompt_len)
    with torch.no_grad():
        want = _hf_greedy(ref, ids, 32)
    got = load(path).generate(ids, max_new_tokens=32, temperature=0.0, ignore_eos=True).token_ids
    assert got == want


def test_batch_of_different_lengths_matches_transformers(fp32: tuple[Path, Any]) -> None:
    path, ref = fp32
    prompts = [_prompt(n, 7 * n) for n in (3, 70, 11, 1)]
    model = load(path)
    results = model.generate_batch(
        [
            {"prompt": p, "max_new_tokens": 32 - 5 * i, "temperature": 0.0, "ignore_eos": True}
            for i, p in enumerate(prompts)
        ]
    )
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, results)):
            assert r.token_ids == _hf_greedy(ref, p, 32 - 5 * i), f"request {i}"


def test_bf16_logits_and_greedy(bf16: tuple[Path, Any]) -> None:
    path, ref = bf16
    ids = _prompt(40, 5)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0, -1].float()
        want_tokens = _hf_greedy(ref, ids, 32)
    model = load(path)
    fm = model.model
    (logits,) = fm.forward([(ids, fm.new_cache(len(ids)))])
    assert _rel(logits.tolist(), want) <= 2e-2
    got = model.generate(ids, max_new_tokens=32, temperature=0.0, ignore_eos=True).token_ids
    assert got == want_tokens


def test_text_prompt_roundtrip_and_streaming(fp32: tuple[Path, Any]) -> None:
    model = load(fp32[0])
    assert model.detokenize(model.tokenize("héllo wörld")) == "héllo wörld"
    pieces = list(model.stream_text("hello", max_new_tokens=12, temperature=0.7, seed=3))
    full = model.generate_text("hello", max_new_tokens=12, temperature=0.7, seed=3)
    assert "".join(pieces) == full


def test_sampling_is_reproducible_with_a_seed(fp32: tuple[Path, Any]) -> None:
    model = load(fp32[0])
    a = model.generate("abc", max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9, seed=11)
    b = model.generate("abc", max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9, seed=11)
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0


def test_real_size_decoder_layer_matches(tmp_path: Path) -> None:
    """One decoder layer at the real Qwen3-0.6B dimensions (fp32), prefill of 20 tokens."""
    from transformers.models.qwen3 import modeling_qwen3 as hf

    from inference_pio.backend import backend
    from inference_pio.dtypes import DType
    from inference_pio.nn import dense
    from inference_pio.nn.attention import Segment
    from inference_pio.tensor import Tensor
    from inference_pio_qwen3_0_6b.config import real_config

    cfg_dict = real_config()
    cfg = transformers.Qwen3Config(**{k: v for k, v in cfg_dict.items() if k != "architectures"})
    cfg.num_hidden_layers = 1
    cfg.vocab_size = 64
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = transformers.Qwen3ForCausalLM(cfg).eval()
    from inference_pio.testing.tiny import randomize_norms

    randomize_norms(ref)
    ref.save_pretrained(tmp_path)
    x = torch.randn(1, 20, cfg.hidden_size)
    pos = torch.arange(20)[None]
    with torch.no_grad():
        cos, sin = ref.model.rotary_emb(x, pos)
        mask = torch.full((20, 20), float("-inf")).triu(1)[None, None]
        want = ref.model.layers[0](x, attention_mask=mask, position_embeddings=(cos, sin))
        want = want[0] if isinstance(want, tuple) else want
    from inference_pio.checkpoint import Checkpoint

    ck = Checkpoint.open(tmp_path)
    dcfg = dense.DenseConfig.from_hf(ck.config)
    model = dense.build(ck.weights, dcfg)
    be = backend("cpu")
    xt = Tensor.from_list(x[0].tolist(), DType.float32)
    cache = model.new_cache(20)
    pos_t = Tensor.from_list(list(range(20)), DType.int32)
    c, s = model.rotary.tables(be, pos_t, DType.float32)
    model.layers[0](be, xt, [Segment(0, 20, 0)], [cache.layers[0]], c, s)
    assert _rel(sum(xt.tolist(), []), want[0].reshape(-1)) <= 1e-4
    assert not hf  # the modeling module imported fine (keeps the import used)


def test_bad_checkpoints_raise_clearly(fp32: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil

    with pytest.raises(CheckpointError, match="config.json"):
        load(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(fp32[0], bad)
    cfg = (bad / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 96')
    (bad / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="shape"):
        load(bad)


def test_bad_requests_raise_clearly(fp32: tuple[Path, Any]) -> None:
    model = load(fp32[0])
    with pytest.raises(ValueError, match="context"):
        model.generate(_prompt(1024, 1), max_new_tokens=4)
    with pytest.raises(ValueError, match="top_p"):
        model.generate("hi", top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("hi", temperature=-1.0)
    with pytest.raises(TypeError, match="unknown sampling"):
        model.generate("hi", nucleus=0.5)
    with pytest.raises(ValueError, match="vocabulary"):
        model.generate([600], max_new_tokens=1)
    assert math.isfinite(1.0)
