"""A conformance suite every text-model plugin runs against Hugging Face transformers.

Subclass :class:`CausalLMConformance` in a plugin's ``tests/unit/test_model.py``, set ``load``
(the plugin's factory), ``hf_class_name`` (the transformers class), ``tiny_config`` (a small config
of the exact architecture) and ``real_config`` (the real config.json as a dict). pytest then
runs every ``test_*`` method below for the plugin. ``shape_field`` names a config field that sets
weight shapes (default ``intermediate_size``).

Reference: transformers on CPU, eager attention (and eager experts), norms randomised (so a
missing or mis-applied norm shows). Tolerances: fp32 logits relative error (‖ours − ref‖ /
‖ref‖ per position) ≤ 1e-4; bf16 ≤ 2e-2 (8 mantissa bits: one rounding is ≤ 2^-9 ≈ 2e-3
relative and a few dozen roundings in sequence accumulate to ~1e-2). Greedy tokens must be
identical; for bf16 the embedding (and a separate LM head) is scaled ×8 in the fixture so logits
are well separated (near-ties in a tiny random model would otherwise flip on rounding noise
alone).
"""

from __future__ import annotations

import inspect
import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from inference_pio.errors import CheckpointError
from inference_pio.testing.tiny import randomize_norms, write_byte_tokenizer

EOS = 511  # tiny configs use vocab 512; the last id is the eos token


def _torch() -> Any:
    return pytest.importorskip("torch")


def _transformers() -> Any:
    return pytest.importorskip("transformers")


def save_reference(
    directory: Path,
    hf_class_name: str,
    config: dict[str, Any],
    dtype: str,
    seed: int,
    logit_scale: float = 1.0,
) -> Any:
    """Builds, randomises and saves a transformers model plus tokenizer; returns it (eval)."""
    torch, transformers = _torch(), _transformers()
    cls = getattr(transformers, hf_class_name)
    cfg = cls.config_class(**config)
    cfg._attn_implementation = "eager"
    # mixtures of experts: transformers' eager experts (each expert's weighted output added into
    # the result in turn), the rounding order the models here follow (design.md)
    cfg._experts_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        if logit_scale != 1.0:
            model.get_input_embeddings().weight.mul_(logit_scale)
            head = model.get_output_embeddings()
            if head is not None and head.weight is not model.get_input_embeddings().weight:
                head.weight.mul_(logit_scale)
    randomize_norms(model, seed=seed)
    model = model.to(getattr(torch, dtype))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    write_byte_tokenizer(directory, config["vocab_size"], EOS)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS]}))
    return model


def count_fp8_linears(obj: Any, seen: set[int] | None = None) -> int:
    """Linear layers kept in FP8 (``Linear.quantized``) reachable from ``obj``'s attributes."""
    from inference_pio.nn.layers import Linear

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, Linear):
        return int(obj.quantized)
    if isinstance(obj, list | tuple):
        return sum(count_fp8_linears(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("inference_pio"):
        return sum(count_fp8_linears(v, seen) for v in vars(obj).values())
    return 0


def prompt(n: int, seed: int) -> list[int]:
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    return [int(i) for i in torch.randint(0, 500, (n,), generator=g)]


def rel_error(ours: Any, ref: Any) -> float:
    """‖ours − ref‖ / ‖ref‖ in float64 (ours: a Tensor or list)."""
    torch = _torch()
    values = ours.tolist() if hasattr(ours, "tolist") and not isinstance(ours, list) else ours
    o = torch.tensor(values, dtype=torch.float64).reshape(-1)
    r = ref.to(torch.float64).reshape(-1)
    return float((o - r).norm() / r.norm())


def hf_greedy_with_logits(ref: Any, ids: list[int], n: int) -> tuple[list[int], list[Any]]:
    """n greedy tokens from a transformers model with its KV cache (no eos handling), and the
    float logits row each token was taken from."""
    torch = _torch()
    toks: list[int] = []
    rows: list[Any] = []
    # transformers >= 5.2x names the cache `cache` (`past_key_values` goes away in 5.40)
    new_name = "cache" in inspect.signature(ref.forward).parameters
    with torch.no_grad():
        out = ref(torch.tensor([ids]), use_cache=True)
        for i in range(n):
            rows.append(out.logits[0, -1].float())
            toks.append(int(rows[-1].argmax()))
            if i + 1 < n:
                past = out.cache if new_name else out.past_key_values
                kw = {"cache": past} if new_name else {"past_key_values": past}
                out = ref(torch.tensor([[toks[-1]]]), use_cache=True, **kw)
    return toks, rows


def hf_greedy(ref: Any, ids: list[int], n: int) -> list[int]:
    """n greedy tokens from a transformers model with its KV cache (no eos handling)."""
    return hf_greedy_with_logits(ref, ids, n)[0]


class CausalLMConformance:
    """Parity and robustness tests shared by every decoder-only text plugin."""

    load: ClassVar[Callable[..., Any]]
    hf_class_name: ClassVar[str]
    tiny_config: ClassVar[dict[str, Any]]
    real_config: ClassVar[Callable[[], dict[str, Any]]]
    #: a config.json field that sets weight shapes: doubled, loading must fail on a shape
    #: (a mixture of experts whose layers are all sparse has no use for intermediate_size)
    shape_field: ClassVar[str] = "intermediate_size"
    #: transformers can load an FP8 copy of the tiny checkpoint (else the FP8 test compares
    #: against an unquantized checkpoint of the dequantized weights)
    hf_reads_fp8: ClassVar[bool] = True

    # ---- fixtures ----------------------------------------------------------------------------
    # class-scoped fixtures as class methods (pytest deprecates them as instance methods)
    @pytest.fixture(scope="class")
    @classmethod
    def fp32(cls, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
        d = tmp_path_factory.mktemp("fp32")
        return d, save_reference(d, cls.hf_class_name, cls.tiny_config, "float32", seed=1)

    @pytest.fixture(scope="class")
    @classmethod
    def bf16(cls, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
        d = tmp_path_factory.mktemp("bf16")
        ref = save_reference(
            d, cls.hf_class_name, cls.tiny_config, "bfloat16", seed=2, logit_scale=8.0
        )
        return d, ref

    # ---- parity ------------------------------------------------------------------------------
    @pytest.mark.parametrize("prompt_len", [1, 7, 130])
    def test_fp32_logits_prefill_then_decode(self, fp32: tuple[Path, Any], prompt_len: int) -> None:
        torch = _torch()
        path, ref = fp32
        ids = prompt(prompt_len + 5, prompt_len)
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0]
        fm = type(self).load(path).model
        cache = fm.new_cache(len(ids))
        (logits,) = fm.forward([(ids[:prompt_len], cache)])
        errors = [rel_error(logits, want[prompt_len - 1])]
        for i in range(prompt_len, len(ids)):
            (logits,) = fm.forward([([ids[i]], cache)])
            errors.append(rel_error(logits, want[i]))
        assert max(errors) <= 1e-4, f"relative errors per position: {errors}"

    @pytest.mark.parametrize("prompt_len", [5, 300])
    def test_fp32_greedy_32_tokens_identical(self, fp32: tuple[Path, Any], prompt_len: int) -> None:
        path, ref = fp32
        ids = prompt(prompt_len, 100 + prompt_len)
        got = (
            type(self)
            .load(path)
            .generate(ids, max_new_tokens=32, temperature=0.0, ignore_eos=True)
            .token_ids
        )
        assert got == hf_greedy(ref, ids, 32)

    def test_batch_of_different_lengths(self, fp32: tuple[Path, Any]) -> None:
        path, ref = fp32
        prompts = [prompt(n, 7 * n) for n in (3, 70, 11, 1)]
        results = (
            type(self)
            .load(path)
            .generate_batch(
                [
                    {
                        "prompt": p,
                        "max_new_tokens": 32 - 5 * i,
                        "temperature": 0.0,
                        "ignore_eos": True,
                    }
                    for i, p in enumerate(prompts)
                ]
            )
        )
        for i, (p, r) in enumerate(zip(prompts, results, strict=True)):
            assert r.token_ids == hf_greedy(ref, p, 32 - 5 * i), f"request {i}"

    def test_bf16_logits_and_greedy(self, bf16: tuple[Path, Any]) -> None:
        torch = _torch()
        path, ref = bf16
        ids = prompt(40, 5)
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0, -1].float()
        model = type(self).load(path)
        fm = model.model
        (logits,) = fm.forward([(ids, fm.new_cache(len(ids)))])
        assert rel_error(logits, want) <= 2e-2
        got = model.generate(ids, max_new_tokens=32, temperature=0.0, ignore_eos=True).token_ids
        assert got == hf_greedy(ref, ids, 32)

    def test_fp8_checkpoint_matches_transformers(
        self, fp32: tuple[Path, Any], tmp_path: Path
    ) -> None:
        """A block-scaled FP8 copy of the checkpoint (as Qwen's -FP8 repos: every projection in
        e4m3 with 16 x 16 block scales here, so the tiny shapes have several blocks and partial
        ones) against transformers loading the same checkpoint (it dequantizes FP8 weights on the
        CPU; on an unquantized copy of the dequantized weights where ``hf_reads_fp8`` is False):
        fp32 logits <= 1e-4, identical greedy tokens."""
        torch, transformers = _torch(), _transformers()
        from inference_pio.testing.fp8 import write_fp8_checkpoint

        fp8, deq = tmp_path / "fp8", tmp_path / "dequantized"
        assert write_fp8_checkpoint(fp32[0], fp8, deq, block=(16, 16))
        cls = getattr(transformers, self.hf_class_name)
        # transformers reads the FP8 checkpoint itself (dequantizing on the CPU) where it can
        src = fp8 if self.hf_reads_fp8 else deq
        cfg = cls.config_class.from_pretrained(src)
        cfg._attn_implementation = "eager"
        cfg._experts_implementation = "eager"
        ref = cls.from_pretrained(src, config=cfg, dtype=torch.float32).eval()
        ids = prompt(24, 13)
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0]
        model = type(self).load(fp8)
        fm = model.model
        assert count_fp8_linears(fm) > 0  # on the CPU some projections compute in FP8
        cache = fm.new_cache(len(ids))
        (logits,) = fm.forward([(ids[:20], cache)])
        errors = [rel_error(logits, want[19])]
        for i in range(20, len(ids)):
            (logits,) = fm.forward([([ids[i]], cache)])
            errors.append(rel_error(logits, want[i]))
        assert max(errors) <= 1e-4, f"relative errors per position: {errors}"
        got = model.generate(ids, max_new_tokens=16, temperature=0.0, ignore_eos=True).token_ids
        assert got == hf_greedy(ref, ids, 16)

    # ---- text, streaming, sampling -----------------------------------------------------------
    def test_text_round_trip_and_streaming(self, fp32: tuple[Path, Any]) -> None:
        model = type(self).load(fp32[0])
        assert model.detokenize(model.tokenize("héllo wörld ✓")) == "héllo wörld ✓"
        pieces = list(model.stream_text("hello", max_new_tokens=12, temperature=0.7, seed=3))
        assert "".join(pieces) == model.generate_text(
            "hello", max_new_tokens=12, temperature=0.7, seed=3
        )

    def test_seeded_sampling_is_reproducible(self, fp32: tuple[Path, Any]) -> None:
        model = type(self).load(fp32[0])
        opts = {"max_new_tokens": 16, "temperature": 1.0, "top_k": 50, "top_p": 0.9, "seed": 11}
        a, b = model.generate("abc", **opts), model.generate("abc", **opts)
        assert a.token_ids == b.token_ids
        assert len(a.token_ids) > 0

    # ---- bad input ---------------------------------------------------------------------------
    def test_bad_checkpoints_raise_clearly(self, fp32: tuple[Path, Any], tmp_path: Path) -> None:
        with pytest.raises(CheckpointError, match=r"config\.json"):
            type(self).load(tmp_path)
        bad = tmp_path / "bad"
        shutil.copytree(fp32[0], bad)
        cfg = json.loads((bad / "config.json").read_text())
        cfg[self.shape_field] = cfg[self.shape_field] * 2
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="shape"):
            type(self).load(bad)
        trunc = tmp_path / "trunc"
        shutil.copytree(fp32[0], trunc)
        st = trunc / "model.safetensors"
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
        with pytest.raises(CheckpointError):
            type(self).load(trunc)

    def test_bad_requests_raise_clearly(self, fp32: tuple[Path, Any]) -> None:
        model = type(self).load(fp32[0])
        context = self.tiny_config["max_position_embeddings"]
        with pytest.raises(ValueError, match="context"):
            model.generate(prompt(context, 1), max_new_tokens=4)
        with pytest.raises(ValueError, match="top_p"):
            model.generate("hi", top_p=0.0)
        with pytest.raises(ValueError, match="temperature"):
            model.generate("hi", temperature=-1.0)
        with pytest.raises(TypeError, match="unknown sampling"):
            model.generate("hi", nucleus=0.5)
        with pytest.raises(ValueError, match="vocabulary"):
            model.generate([self.tiny_config["vocab_size"] + 5], max_new_tokens=1)


def assert_greedy_matches(
    got: list[int], want: list[int], scores: list[Any], bf16: bool, what: str
) -> None:
    """Greedy tokens equal transformers' ``want`` (with the logits rows ``scores`` each was taken
    from), except where transformers' own two best logits are within a few rounding steps of each
    other (bf16: 8 ulps at the row's largest logit; fp32: 1e-4 of it): a near tie may flip, and
    the sequences diverge from there on."""
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a == b:
            continue
        top = scores[i].float().topk(2).values
        margin = float(top[0] - top[1])
        scale = float(scores[i].float().abs().max())
        tie = 8 * 2.0 ** (math.floor(math.log2(scale)) - 7) if bf16 else 1e-4 * scale
        assert margin <= tie, f"{what}: token {i} is {a}, transformers' {b} wins by {margin:.4g}"
        return


def check_random_config(
    load: Callable[..., Any],
    hf_class_name: str,
    config: dict[str, Any],
    dtype: str,
    seed: int,
    directory: Path,
    max_prompt: int = 70,
    new_tokens: int = 12,
) -> None:
    """A random config's checkpoint against transformers: in fp32 each prompt's prefill logits
    (relative error at most 1e-4; checked even where the greedy tokens repeat), then greedy tokens
    for a one-token prompt and a prompt of 2..max_prompt tokens, each alone and the two batched
    (:func:`assert_greedy_matches`); bf16 checkpoints scale the embedding and head x8. bf16
    prefill logits are not compared: bf16 router logits tie exactly now and then (about one seed
    in 400), our top-k keeps the lower expert index and ``torch.topk``'s order for ties is
    unspecified, and with one expert a token the swapped expert moves the logits by more than any
    bf16 tolerance."""
    bf16 = dtype == "bfloat16"
    ref = save_reference(directory, hf_class_name, config, dtype, seed, 8.0 if bf16 else 1.0)
    m = load(directory)
    rng = random.Random(1000 + seed)
    prompts = [
        [rng.randrange(0, 500)],
        [rng.randrange(0, 500) for _ in range(rng.randint(2, max_prompt))],
    ]
    hf = [hf_greedy_with_logits(ref, p, new_tokens) for p in prompts]
    what = f"seed {seed} {dtype}: {config}"
    if not bf16:
        fm = m.model
        for p, (_, scores) in zip(prompts, hf, strict=True):
            (logits,) = fm.forward([(p, fm.new_cache(len(p)))])
            err = rel_error(logits, scores[0])
            assert err <= 1e-4, f"{what}, prompt of {len(p)}: prefill logits' error {err:.3g}"
    for p, (want, scores) in zip(prompts, hf, strict=True):
        got = m.generate(p, max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True).token_ids
        assert_greedy_matches(got, want, scores, bf16, f"{what}, prompt of {len(p)}")
    reqs = [
        dict(prompt=p, max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True) for p in prompts
    ]
    for r, (want, scores) in zip(m.generate_batch(reqs), hf, strict=True):
        assert_greedy_matches(r.token_ids, want, scores, bf16, f"{what}, batched")
