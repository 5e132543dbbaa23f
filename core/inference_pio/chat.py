"""Chat template rendering compatible with transformers' ``apply_chat_template``.

Templates come from checkpoints, i.e. from strangers: they run in jinja2's immutable sandbox with
the globals, filters and arguments transformers provides (raise_exception, strftime_now, a
dunder-proof namespace, tojson without HTML escaping, messages, tools, documents,
add_generation_prompt, the special tokens and any extra keyword such as enable_thinking).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inference_pio.errors import InferencePioError

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(InferencePioError, ValueError):
    """The chat template is invalid, raised an exception, or got unusable messages."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """jinja2's namespace() refusing underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


class _DictFactory:
    """``dict(...)`` inside templates without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body (assistant-mask marker)."""

    tags = {"generation"}  # noqa: RUF012 (jinja2 API)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        node: jinja2.nodes.Node = jinja2.nodes.CallBlock(
            self.call_method("_body"), [], [], body
        ).set_lineno(lineno)
        return node

    def _body(self, caller: Any) -> str:
        result: str = caller()
        return result


#: The most characters (or items) one string or list operation of a template may make, and the
#: most bits of an integer power: a template from a checkpoint must not exhaust memory or time.
MAX_TEMPLATE_SIZE = 1 << 24
MAX_POWER_BITS = 4096


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox with bounds on what ``*``, ``+`` and ``**`` may build (jinja2's own sandbox
    limits ``range`` and attribute access, not sizes)."""

    intercepted_binops = frozenset({"*", "+", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        sized = (str, list, tuple)
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and right * abs(left).bit_length() > MAX_POWER_BITS:
                raise jinja2.exceptions.SecurityError("a power too large for a chat template")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, sized)
                    and isinstance(n, int)
                    and len(seq) * n > MAX_TEMPLATE_SIZE
                ):
                    raise jinja2.exceptions.SecurityError(
                        "a repetition too long for a chat template"
                    )
        elif (
            operator == "+"
            and isinstance(left, sized)
            and isinstance(right, sized)
            and len(left) + len(right) > MAX_TEMPLATE_SIZE
        ):
            raise jinja2.exceptions.SecurityError("a concatenation too long for a chat template")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compiles a chat template in the sandbox (cached by source)."""
    if not isinstance(source, str):
        raise ChatTemplateError(f"a chat template is a string, got {type(source).__name__}")
    env = _Sandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictFactory()
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template syntax error (line {exc.lineno}): {exc}") from exc


def plain_data(value: Any) -> Any:
    """A copy of ``value`` made of JSON types only (rich objects become a placeholder)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


#: Appended to the message continue_final_message names, found again in the rendered text
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    special_tokens: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> str:
    """Renders ``template`` like transformers' ``apply_chat_template(..., tokenize=False)``.

    Message keys whose value is None are dropped, as transformers does. ``special_tokens``
    (bos_token, eos_token, ...) are visible to the template as in transformers; extra keywords
    (enable_thinking, ...) are passed through. ``continue_final_message`` (True: the last
    message's ``content``, or the name of another field) ends the text inside that message, for
    the model to continue it, instead of closing it.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    try:
        chat = plain_data(list(messages))
    except RecursionError:
        raise ChatTemplateError("messages are nested too deeply (or contain themselves)") from None
    for k, message in enumerate(chat):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"messages[{k}] must be a dict, got {type(message).__name__}")
    chat = [{key: v for key, v in m.items() if v is not None} for m in chat]
    chat = [_alias_reasoning(m) for m in chat]
    final = ""
    if continue_final_message:
        if add_generation_prompt:
            raise ChatTemplateError(
                "continue_final_message and add_generation_prompt are not compatible"
            )
        field_name = (
            continue_final_message if isinstance(continue_final_message, str) else "content"
        )
        value = chat[-1].get(field_name) if chat else None
        # a list of content parts (OpenAI / VL style): the last text part, as transformers
        block = (
            next(
                (
                    b
                    for b in reversed(value)
                    if isinstance(b, dict) and isinstance(b.get("text"), str)
                ),
                None,
            )
            if isinstance(value, (list, tuple))
            else None
        )
        if not isinstance(value, str) and block is None:
            raise ChatTemplateError(
                f"continue_final_message: the final message has no {field_name!r} text to continue"
            )
        final = value if isinstance(value, str) else block["text"]  # type: ignore[index]
        fields = [field_name]
        if field_name in _REASONING_FIELDS:  # copied under several names: tag every copy
            fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == value]
        if not any(f in template for f in fields):
            raise ChatTemplateError(
                f"continue_final_message: the chat template does not read {field_name!r}"
            )
        if block is not None:
            block["text"] = final + _CONTINUE_TAG
        else:
            for f in fields:
                chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
    if tools is not None and not (_is_list(tools) and all(isinstance(t, Mapping) for t in tools)):
        raise ChatTemplateError("tools must be a list of JSON-schema dicts")
    if documents is not None and not (
        _is_list(documents) and all(isinstance(d, Mapping) for d in documents)
    ):
        raise ChatTemplateError("documents must be a list of dicts with 'title' and 'text'")
    extra = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    extra.update(kwargs)
    compiled = compile_template(template)
    try:
        rendered: str = compiled.render(
            messages=chat,
            tools=plain_data(list(tools)) if tools is not None else None,
            documents=plain_data(list(documents)) if documents is not None else None,
            add_generation_prompt=add_generation_prompt,
            **plain_data(extra),
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"chat template error: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        # raised by an operation inside the template (a bad message shape, a division by zero)
        raise ChatTemplateError(f"chat template error: {type(exc).__name__}: {exc}") from exc
    if continue_final_message:  # cut after the final message's text, as transformers does
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in rendered or tag not in rendered:
            raise ChatTemplateError(
                "continue_final_message: the final message does not appear in the rendered chat"
            )
        at = rendered.rindex(tag)
        kept = rendered[:at]
        rendered = (
            kept if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else kept.rstrip()
        )
    return rendered
