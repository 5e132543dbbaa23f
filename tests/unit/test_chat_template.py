# ruff: noqa: E501  (the template below keeps its natural line lengths)
"""Chat templates render exactly like transformers' apply_chat_template."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenizer_fixtures as fx

from inference_pio.chat import ChatTemplateError, render_chat
from inference_pio.tokenizer import Tokenizer

# A Qwen3-style (hybrid thinking, hermes tools) template written for these tests.
QWEN3_STYLE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nReturn calls as <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string
          and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or not loop.first %}{{- '\n' }}{%- endif %}
                {%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
                {{- '<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
                {%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or messages[loop.index0 - 1].role != "tool" %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != "tool" %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- elif message.role != "system" %}
        {{- raise_exception('unknown role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
{#- eos is {{ eos_token }} #}{{- '' if eos_token is defined else raise_exception('no eos') }}
"""

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city <b>now</b> & later",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "Name, e.g. 'Zürich'"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "now",
            "description": "Time",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
        {"role": "user", "content": "Again 你好 🎉"},
    ],
    [
        {"role": "user", "content": "Weather in Zürich?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Need the tool.",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Zürich"}},
                }
            ],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is 21 °C and sunny."},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "call two"},
        {
            "role": "assistant",
            "content": "Sure",
            "tool_calls": [
                {"function": {"name": "now", "arguments": "{}"}},
                {"function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}},
            ],
        },
        {"role": "tool", "content": "12:00"},
    ],
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    transformers = pytest.importorskip("transformers")
    d = fx.write_glm4(tmp_path_factory.mktemp("chat"))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.chat_template = QWEN3_STYLE
    return tok


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("thinking", [None, True, False])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_matches_transformers(
    reference: Any,
    conversation: int,
    with_tools: bool,
    thinking: bool | None,
    generation_prompt: bool,
) -> None:
    messages = CONVERSATIONS[conversation]
    kwargs: dict[str, Any] = {} if thinking is None else {"enable_thinking": thinking}
    tools = TOOLS if with_tools else None
    expect = reference.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
    )
    got = render_chat(
        QWEN3_STYLE,
        messages,
        tools=tools,
        add_generation_prompt=generation_prompt,
        special_tokens={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        **kwargs,
    )
    assert got == expect


def test_tokenizer_apply_chat_template(tmp_path: Path, reference: Any) -> None:
    d = fx.write_glm4(tmp_path)
    import json

    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = QWEN3_STYLE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_pretrained(d)
    messages = CONVERSATIONS[3]
    assert tok.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True) == (
        reference.apply_chat_template(
            messages, tools=TOOLS, tokenize=False, add_generation_prompt=True
        )
    )


def test_raise_exception_and_sandbox() -> None:
    with pytest.raises(ChatTemplateError, match="unknown role"):
        render_chat(
            QWEN3_STYLE, [{"role": "robot", "content": "x"}], special_tokens={"eos_token": "e"}
        )
    with pytest.raises(ChatTemplateError):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])
    with pytest.raises(ChatTemplateError):
        render_chat("{% set ns = namespace(_x=1) %}", [])
    with pytest.raises(ChatTemplateError, match="syntax"):
        render_chat("{% if %}", [])
    with pytest.raises(ChatTemplateError):
        render_chat("x", "not a list")  # type: ignore[arg-type]


def test_strftime_now_and_tojson() -> None:
    out = render_chat("{{ strftime_now('%Y') }}|{{ {'a': '<é>'} | tojson }}", [])
    year, js = out.split("|")
    assert year.isdigit()
    assert js == '{"a": "<é>"}'


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{{ 9**99999999 }}", "power too large"),
        ("{{ 'a' * 3000000000 }}", "repetition too long"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(100) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
            "concatenation too long",
        ),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ messages[0].content + 1 }}", "TypeError"),
    ],
)
def test_a_hostile_or_broken_template_is_one_clear_error(template: str, match: str) -> None:
    """Templates come with checkpoints from strangers: sizes are bounded (no hang, no memory
    exhaustion) and whatever a template raises is a ChatTemplateError."""
    with pytest.raises(ChatTemplateError, match=match):
        render_chat(template, [{"role": "user", "content": "x"}])


def test_small_arithmetic_in_templates_still_works() -> None:
    got = render_chat("{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ [1] + [2] }}", [])
    assert got == "1024 ababab [1, 2]"


def test_messages_that_contain_themselves_are_refused() -> None:
    message: dict[str, object] = {"role": "user", "content": "x"}
    message["self"] = message
    with pytest.raises(ChatTemplateError, match="nested too deeply"):
        render_chat("{{ messages }}", [message])


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}],
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,  # a turn of tool calls only: the key is dropped
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "x"}}}],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is"},
        ],
    ],
)
def test_continue_final_message_and_none_keys_match_transformers(
    reference: Any, messages: list[dict[str, Any]]
) -> None:
    special = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    for continue_final in (False, True):
        expect = reference.apply_chat_template(
            messages, tokenize=False, continue_final_message=continue_final
        )
        got = render_chat(
            QWEN3_STYLE, messages, special_tokens=special, continue_final_message=continue_final
        )
        assert got == expect
    with pytest.raises(ChatTemplateError, match="not compatible"):
        render_chat(QWEN3_STYLE, messages, add_generation_prompt=True, continue_final_message=True)


def test_every_special_token_reaches_the_template(tmp_path: Path) -> None:
    """As transformers' special_tokens_map: unk / sep / cls / mask and the additional ones too."""
    import json

    d = fx.write_glm4(tmp_path)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["unk_token"] = {"content": "<unk>", "special": True}
    cfg["additional_special_tokens"] = ["<a>", "<b>"]
    cfg["chat_template"] = "{{ unk_token }}|{{ additional_special_tokens | join(',') }}"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_pretrained(d).apply_chat_template([]) == "<unk>|<a>,<b>"


def test_a_rendered_prompt_that_starts_with_bos_gets_it_once(tmp_path: Path) -> None:
    """A post-processor that adds BOS and a chat template that writes it: the model's prompt
    ids hold it once, as transformers' apply_chat_template(tokenize=True)."""
    import json
    from types import SimpleNamespace

    from inference_pio.causal_lm import CausalLM

    d = fx.write_glm4(tmp_path)
    data = json.loads((d / "tokenizer.json").read_text())
    bos = next(t for t in data["added_tokens"] if t["special"])
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": bos["content"], "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [],
        "special_tokens": {
            bos["content"]: {"id": bos["content"], "ids": [bos["id"]], "tokens": [bos["content"]]}
        },
    }
    (d / "tokenizer.json").write_text(json.dumps(data))
    tok = Tokenizer.from_pretrained(d)
    model = SimpleNamespace(tokenizer=tok)
    plain = CausalLM.tokenize(model, "Hi")  # type: ignore[arg-type]
    assert plain[0] == bos["id"]
    assert CausalLM.tokenize(model, bos["content"] + "Hi") == plain  # type: ignore[arg-type]


def test_chat_template_kwargs_that_clash_are_request_errors() -> None:
    """chat_template_kwargs naming 'messages', or tools / documents that are not lists, are
    400s naming the field, not TypeErrors (a 500)."""
    from inference_pio.server import protocol

    def render(messages: Any, **kwargs: Any) -> str:
        return render_chat(QWEN3_STYLE, messages, **kwargs)

    msgs = [{"role": "user", "content": "hi"}]
    for extra in ({"messages": msgs}, {"documents": 5}, {"tools": 3}):
        with pytest.raises(ValueError, match=r"messages|documents|tools"):
            protocol.chat_request({"messages": msgs, "chat_template_kwargs": extra}, render, None)


def test_continue_final_message_with_content_parts_matches_transformers(reference: Any) -> None:
    """A final message whose content is a list of parts continues its last text part."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}"
        "{{ m.content }}{% else %}{% for c in m.content %}{% if c.type == 'image' %}<img>"
        "{% elif c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}"
    )
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It shows"}]},
    ]
    expect = reference.apply_chat_template(
        messages, chat_template=template, tokenize=False, continue_final_message=True
    )
    assert render_chat(template, messages, continue_final_message=True) == expect


def test_a_rendered_prompt_that_starts_with_a_two_token_prefix_gets_it_once(tmp_path: Path) -> None:
    """GLM-4 tokenizers add [gMASK] <sop> and their chat templates write them too: the prompt
    ids hold them once, as transformers' apply_chat_template(tokenize=True)."""
    import json
    from types import SimpleNamespace

    from inference_pio.causal_lm import CausalLM

    d = fx.write_glm4(tmp_path)
    data = json.loads((d / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "[gMASK]", "type_id": 0}},
            {"SpecialToken": {"id": "<sop>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [],
        "special_tokens": {
            k: {"id": k, "ids": [ids[k]], "tokens": [k]} for k in ("[gMASK]", "<sop>")
        },
    }
    (d / "tokenizer.json").write_text(json.dumps(data))
    model = SimpleNamespace(tokenizer=Tokenizer.from_pretrained(d))
    plain = CausalLM.tokenize(model, "Hi")  # type: ignore[arg-type]
    assert plain[:2] == [ids["[gMASK]"], ids["<sop>"]]
    assert CausalLM.tokenize(model, "[gMASK]<sop>Hi") == plain  # type: ignore[arg-type]
