"""The OpenAI API's request and response shapes for ``/v1/completions`` and
``/v1/chat/completions``: validation into a prompt and sampling options, and the JSON bodies and
stream chunks. No web framework here (``inference_pio.server.app`` serves it)."""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference_pio.generation import GenerationResult
from inference_pio.logprobs import TokenLogprob
from inference_pio.structured.constraint import Constraint
from inference_pio.tokenizer.utf8 import decode_utf8, encode_utf8, replace_lone_surrogates
from inference_pio.toolcalls import ParsedReply, ToolCall
from inference_pio.toolstream import ToolCallDelta

#: OpenAI's default ``max_tokens`` for /v1/completions.
COMPLETIONS_MAX_TOKENS = 16
#: Chat completions without ``max_tokens``: up to 4096 tokens (capped by the context), as
#: llama.cpp's and ollama's servers bound an answer by their 4096-token default context. Not the
#: whole context: caches are sized for prompt + max_tokens up front (8 batch slots of a 262k-token
#: context would take hundreds of GB on a GPU).
CHAT_MAX_TOKENS = 4096
#: The most ``top_logprobs`` a chat completion takes (OpenAI's and vLLM's limit).
MAX_TOP_LOGPROBS = 20
#: The most ``logprobs`` a legacy completion takes (OpenAI's limit).
MAX_COMPLETION_LOGPROBS = 5
#: What a log probability of -inf (a token the model rules out) is sent as: JSON has no
#: infinity, and OpenAI and vLLM send this.
LOGPROB_FLOOR = -9999.0
#: Request fields mapped onto the sampling keywords of ``CausalLM.generate``.
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
}
#: Message fields given to the chat template besides role and content (as JSON came in).
_PASSED_THROUGH = ("tool_calls", "reasoning_content", "reasoning", "tool_call_id", "name")
#: Message roles (``developer`` is read as ``system``).
ROLES = ("system", "user", "assistant", "tool", "developer")


class RequestError(ValueError):
    """A request the API refuses: HTTP ``status`` and OpenAI's error ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.status = param, status

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        code = "model_not_found" if self.status == 404 else None
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": code}}


@dataclass
class Request:
    """A validated request: what to generate and how."""

    prompt: str | list[int]
    sampling: dict[str, Any]
    stream: bool
    include_usage: bool
    images: list[bytes] = field(default_factory=list)
    #: The request's ``tools`` (None without), given to the chat template and the parser.
    tools: list[dict[str, Any]] | None = None
    #: The tool-call format the reply is parsed with; None: the reply is text only.
    tool_format: str | None = None
    #: ``parallel_tool_calls``: False keeps the reply's first call only (later calls are
    #: dropped, not shown as text; with tool_choice "required" or a named function the model
    #: is constrained to make exactly one)
    parallel_tool_calls: bool = True
    #: ``tool_choice`` names a function: its forced calls finish with "stop", not "tool_calls"
    #: (:func:`finish_reason`)
    named_tool_choice: bool = False


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{key!r} must be a number, got {value!r}", key)
    return value


def _common(
    body: Mapping[str, Any], default_max: int | None, chat: bool = False
) -> tuple[dict[str, Any], bool, bool]:
    """Sampling keywords, ``stream`` and ``stream_options.include_usage`` of a request."""
    n = body.get("n")
    if n is not None and n != 1:  # OpenAI's nullable fields: null means the default
        raise RequestError("only n = 1 is supported", "n")
    refused = ("echo", "suffix", "functions", "function_call")
    for key in refused if chat else (*refused, "tools", "tool_choice"):
        if body.get(key):
            raise RequestError(f"{key!r} is not supported", key)
    if body.get("best_of") not in (None, 1):
        raise RequestError("only best_of = 1 is supported", "best_of")
    constraint = _response_format(body.get("response_format"))
    if body.get("logit_bias"):
        raise RequestError("'logit_bias' is not supported", "logit_bias")
    sampling: dict[str, Any] = {}
    if constraint is not None:
        sampling["constraint"] = constraint
    logprobs = _chat_logprobs(body) if chat else _completion_logprobs(body)
    if logprobs is not None:
        sampling["logprobs"] = logprobs
    for key, name in _SAMPLING.items():
        value = _number(body, key)
        if value is None:
            continue
        if key in ("top_k", "seed"):
            if isinstance(value, float) and not value.is_integer():
                raise RequestError(f"{key!r} must be an integer, got {value!r}", key)
            sampling[name] = int(value)
            if key == "top_k" and value == -1:  # vLLM's (and its clients') "all tokens"
                sampling[name] = 0
        else:
            sampling[name] = float(value)
    stop_ids = body.get("stop_token_ids")  # vLLM's extension: ids that end the output
    if stop_ids is not None:
        if not isinstance(stop_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in stop_ids
        ):
            raise RequestError("'stop_token_ids' must be a list of token ids", "stop_token_ids")
        sampling["stop_token_ids"] = tuple(stop_ids)
    # vLLM's extensions that are not implemented: refused rather than silently ignored
    if body.get("min_tokens"):
        raise RequestError("'min_tokens' is not supported", "min_tokens")
    if body.get("include_stop_str_in_output"):
        raise RequestError(
            "'include_stop_str_in_output' is not supported", "include_stop_str_in_output"
        )
    ignore_eos = body.get("ignore_eos")  # vLLM's extension (benchmarks on synthetic weights)
    if ignore_eos is not None:
        if not isinstance(ignore_eos, bool):
            raise RequestError("'ignore_eos' must be a boolean", "ignore_eos")
        sampling["ignore_eos"] = ignore_eos
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(
                f"max_tokens must be a positive integer, got {max_tokens!r}", "max_tokens"
            )
        sampling["max_new_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise RequestError("'stop' must be a string or a list of strings", "stop")
        if len(stops) > 16:
            raise RequestError("at most 16 stop strings", "stop")
        sampling["stop"] = stops
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise RequestError("'stream_options' must be an object", "stream_options")
    if body.get("stream_options") is not None and not stream:  # as OpenAI and vLLM
        raise RequestError(
            "'stream_options' is only allowed when 'stream' is true", "stream_options"
        )
    return sampling, stream, bool(options.get("include_usage", False))


def _response_format(fmt: Any) -> Constraint | None:
    """``response_format`` as a constraint: None for ``{"type": "text"}`` (or absent);
    ``{"type": "json_object"}``; ``{"type": "json_schema", "json_schema": {"name", "schema",
    "strict"}}``. A bad schema, or a server without llguidance, is a 400 naming the field."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None
    try:
        if kind == "json_object":
            return Constraint.json_object()
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, Mapping):
                raise ValueError("response_format json_schema needs a 'json_schema' object")
            if not isinstance(spec.get("name", ""), str):
                raise ValueError("response_format json_schema: 'name' must be a string")
            if not isinstance(spec.get("strict", False), (bool, type(None))):
                raise ValueError("response_format json_schema: 'strict' must be a boolean")
            schema = spec.get("schema")
            if schema is None:
                raise ValueError("response_format json_schema needs json_schema.schema")
            return Constraint.json_schema(schema)
    except ValueError as exc:  # StructuredOutputsUnavailable too (no llguidance here)
        raise RequestError(str(exc), "response_format") from None
    raise RequestError(
        f"response_format 'type' must be 'text', 'json_object' or 'json_schema', got {kind!r}",
        "response_format",
    )


def _count(body: Mapping[str, Any], key: str, most: int) -> int | None:
    """An optional integer field in [0, most] (None when absent or null)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise RequestError(f"{key!r} must be an integer in [0, {most}], got {value!r}", key)
    return value


def _chat_logprobs(body: Mapping[str, Any]) -> int | None:
    """Chat completions: ``logprobs`` (a boolean) and ``top_logprobs`` (0..20, needs
    ``logprobs: true``) as ``SamplingParams.logprobs`` (None: off)."""
    flag = body.get("logprobs")
    if flag is not None and not isinstance(flag, bool):
        raise RequestError(f"'logprobs' must be a boolean, got {flag!r}", "logprobs")
    top = _count(body, "top_logprobs", MAX_TOP_LOGPROBS)
    if top and not flag:  # as vLLM: 0 without logprobs is harmless
        raise RequestError("'top_logprobs' needs 'logprobs' set to true", "top_logprobs")
    return (top or 0) if flag else None


def _completion_logprobs(body: Mapping[str, Any]) -> int | None:
    """Legacy completions: ``logprobs`` 0..5 (the chosen token and that many alternatives)."""
    if body.get("top_logprobs") is not None:
        raise RequestError(
            "'top_logprobs' is a chat completions field; completions take 'logprobs' (0..5)",
            "top_logprobs",
        )
    return _count(body, "logprobs", MAX_COMPLETION_LOGPROBS)


def completion_request(body: Mapping[str, Any]) -> Request:
    """``/v1/completions``: ``prompt`` is a string or a list of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise RequestError(
                "'prompt' must be a string or a list of token ids (one prompt)", "prompt"
            )
    elif not isinstance(prompt, str) or not prompt:
        raise RequestError("'prompt' must be a non-empty string", "prompt")
    sampling, stream, usage = _common(body, COMPLETIONS_MAX_TOKENS)
    return Request(prompt, sampling, stream, usage)


def _image_bytes(part: Mapping[str, Any]) -> bytes:
    """The bytes of an ``image_url`` content part (``data:`` URLs only: the server fetches
    nothing from the network)."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError("images must be given as data: URLs (base64)", "messages")
    header, _, data = url.partition(",")
    if ";base64" not in header:
        raise RequestError("image data URLs must be base64-encoded", "messages")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("an image data URL is not valid base64", "messages") from None


def chat_messages(
    messages: Any, image_placeholder: str | None
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Messages with string contents for the chat template, and the images of their
    ``image_url`` parts in order (each replaced by ``image_placeholder`` in its text)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    images: list[bytes] = []
    for m in messages:
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise RequestError(
                "each message needs a role (system, user, assistant or tool)", "messages"
            )
        content = m.get("content")
        if content is None:
            if m["role"] != "assistant":  # an assistant turn of tool calls may have none
                raise RequestError(f"a {m['role']} message needs a content", "messages")
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            pieces, texts = [], []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                    texts.append(part["text"])
                elif kind == "image_url":
                    if image_placeholder is None:
                        raise RequestError("this model does not take images", "messages")
                    images.append(_image_bytes(part))
                    pieces.append(image_placeholder)
                else:
                    raise RequestError(f"unsupported content part {kind!r}", "messages")
            # text parts alone are joined by newlines, as vLLM gives them to a string template
            text = "".join(pieces) if len(pieces) != len(texts) else "\n".join(pieces)
        else:
            raise RequestError(
                "a message's content must be a string or a list of parts", "messages"
            )
        role = "system" if m["role"] == "developer" else m["role"]
        message: dict[str, Any] = {"role": role}
        if content is not None:  # an assistant turn of tool calls only has none (key dropped)
            message["content"] = text
        for key in _PASSED_THROUGH:  # earlier tool calls and reasoning stay in the history
            if m.get(key) is not None:
                message[key] = m[key]
        if "tool_calls" in message:
            message["tool_calls"] = _history_calls(message["tool_calls"])
        out.append(message)
    return out, images


def _history_calls(calls: Any) -> list[dict[str, Any]]:
    """An assistant message's earlier ``tool_calls`` for the chat template: each function's
    ``arguments`` (JSON text, as OpenAI sends it) decoded to a dict, as vLLM does; chat
    templates iterate over them."""
    if not isinstance(calls, list):
        raise RequestError("an assistant message's 'tool_calls' must be a list", "messages")
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise RequestError(
                "each tool call needs a 'function' with a 'name' and 'arguments'", "messages"
            )
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise RequestError(
                    f"the arguments of tool call {fn['name']!r} are not valid JSON", "messages"
                ) from None
        if not isinstance(args, Mapping):
            raise RequestError(
                f"the arguments of tool call {fn['name']!r} must be a JSON object", "messages"
            )
        out.append({**call, "function": {**fn, "arguments": dict(args)}})
    return out


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The request's ``tools``, checked: ``{"type": "function", "function": {"name",
    "description", "parameters"}}`` each (None when absent or empty)."""
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise RequestError("'tools' must be a list of {'type': 'function', ...} objects", "tools")
    for k, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise RequestError(f"tools[{k}]: 'type' must be 'function'", "tools")
        if not isinstance(fn, Mapping):
            raise RequestError(f"tools[{k}]: 'function' must be an object", "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RequestError(f"tools[{k}]: the function needs a non-empty 'name'", "tools")
        if not isinstance(fn.get("description", ""), (str, type(None))):
            raise RequestError(f"tools[{k}]: 'description' must be a string", "tools")
        if not isinstance(fn.get("parameters", {}), (Mapping, type(None))):
            raise RequestError(f"tools[{k}]: 'parameters' must be a JSON-schema object", "tools")
    return [dict(t) for t in tools] or None


def _tool_choice(
    body: Mapping[str, Any], tools: list[dict[str, Any]] | None
) -> str | dict[str, str]:
    """``tool_choice``: "auto" (the default with tools), "none", "required" or a named function
    ``{"type": "function", "function": {"name": ...}}`` (returned as ``{"name": ...}``); the last
    two force a call through constrained decoding (:func:`_forced_calls`)."""
    choice = body.get("tool_choice")
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if choice.get("type") != "function" or not isinstance(name, str) or not name:
            raise RequestError(
                "a named tool_choice must be {'type': 'function', 'function': {'name': ...}}",
                "tool_choice",
            )
        choice_out: str | dict[str, str] = {"name": name}
    elif choice in ("auto", "none", "required"):
        choice_out = str(choice)
    else:
        raise RequestError(
            f"tool_choice must be 'auto', 'none', 'required' or a named function, got {choice!r}",
            "tool_choice",
        )
    if choice_out != "none" and not tools:
        what = f"{choice!r}" if isinstance(choice, str) else "a named function"
        raise RequestError(f"tool_choice {what} is only allowed with 'tools'", "tool_choice")
    return choice_out


def _forced_calls(
    choice: str | dict[str, str],
    tools: list[dict[str, Any]],
    tool_format: str | None,
    parallel: bool,
    markup_tokens: Mapping[str, int] | None = None,
) -> Constraint:
    """The constraint of ``tool_choice`` "required" or a named function: the reply is the
    model's tool-call markup (``markup_tokens``: its strings that are special tokens)."""
    from inference_pio.structured import tool_call_constraint

    if tool_format is None:
        raise RequestError(
            "tool_choice 'required' or a named function needs the server to parse tool calls "
            "(it was started without a tool-call format)",
            "tool_choice",
        )
    name = choice.get("name") if isinstance(choice, dict) else None
    try:
        return tool_call_constraint(tool_format, tools, name, parallel, markup_tokens)
    except ValueError as exc:  # StructuredOutputsUnavailable too (no llguidance here)
        raise RequestError(str(exc), "tool_choice") from None


def chat_request(
    body: Mapping[str, Any],
    render: Any,
    image_placeholder: str | None,
    tool_format: str | None = None,
    markup_tokens: Mapping[str, int] | None = None,
) -> Request:
    """``/v1/chat/completions``; ``render(messages, **kwargs)`` applies the chat template
    (``chat_template_kwargs``, e.g. ``{"enable_thinking": false}``, are passed to it, and the
    request's ``tools``). ``tool_format`` is the model's tool-call format: with tools and
    ``tool_choice`` "auto" the reply is parsed for calls in it. ``markup_tokens``: the
    format's markup strings that the tokenizer holds as special tokens, with their ids
    (:func:`inference_pio.toolcalls.markup_tokens`): a reply parsed for calls keeps them."""
    messages, images = chat_messages(body.get("messages"), image_placeholder)
    tools = _tools(body)
    choice = _tool_choice(body, tools)
    extra = body.get("chat_template_kwargs") or {}
    if not isinstance(extra, Mapping):
        raise RequestError("'chat_template_kwargs' must be an object", "chat_template_kwargs")
    if "messages" in extra:
        raise RequestError(
            "'chat_template_kwargs' cannot set 'messages' (give them as the request's 'messages')",
            "chat_template_kwargs",
        )
    kwargs = dict(extra)
    if tools is not None:
        kwargs["tools"] = tools
    prompt = str(render(messages, **kwargs))
    sampling, stream, usage = _common(body, CHAT_MAX_TOKENS, chat=True)
    parse_with = tool_format if tools is not None and choice != "none" else None
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise RequestError("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    if tools is not None and choice not in ("auto", "none"):
        if "constraint" in sampling:
            raise RequestError(
                "response_format cannot be combined with tool_choice 'required' or a named "
                "function (the reply is the tool calls)",
                "response_format",
            )
        sampling["constraint"] = _forced_calls(
            choice, tools, tool_format, parallel is not False, markup_tokens
        )
    if parse_with is not None and markup_tokens:  # decoding would drop the calls' markup
        sampling["keep_special_ids"] = tuple(sorted(set(markup_tokens.values())))
    return Request(
        prompt,
        sampling,
        stream,
        usage,
        images,
        tools,
        parse_with,
        parallel is not False,
        named_tool_choice=isinstance(choice, dict),
    )


def json_text(text: str) -> str:
    """``text`` as JSON can carry it in UTF-8 (a lone surrogate becomes U+FFFD)."""
    return replace_lone_surrogates(text)


class TokenStrings:
    """``token`` and ``bytes`` of a token id in logprobs: the id decoded alone (an incomplete
    UTF-8 piece shows U+FFFD, as vLLM) and its raw bytes (as OpenAI: the bytes of consecutive
    tokens join to the text's UTF-8). ``tokenizer.token_bytes(id)`` where the tokenizer has it,
    else the UTF-8 of ``detokenize([id])``."""

    def __init__(self, tokenizer: Any = None, detokenize: Any = None) -> None:
        self._raw = getattr(tokenizer, "token_bytes", None)
        self._detokenize = detokenize
        self._seen: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._seen.get(token_id)
        if hit is None:
            if self._raw is not None:
                raw = bytes(self._raw(token_id))
            elif self._detokenize is not None:
                raw = encode_utf8(str(self._detokenize([token_id])))
            else:
                raise RuntimeError("the model has neither tokenizer.token_bytes nor detokenize")
            hit = (json_text(decode_utf8(raw)), list(raw))
            if len(self._seen) < 1 << 17:
                self._seen[token_id] = hit
        return hit


def _logprob(value: float) -> float:
    return max(value, LOGPROB_FLOOR)


def chat_logprobs(entries: Sequence[TokenLogprob], strings: TokenStrings) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: ``{"content": [{"token", "logprob", "bytes",
    "top_logprobs": [...]}]}`` (None for no entries)."""
    if not entries:
        return None

    def item(token_id: int, value: float) -> dict[str, Any]:
        text, raw = strings(token_id)
        return {"token": text, "logprob": _logprob(value), "bytes": raw}

    content = [
        {**item(e.token_id, e.logprob), "top_logprobs": [item(i, v) for i, v in e.top]}
        for e in entries
    ]
    return {"content": content}


def completion_logprobs(
    entries: Sequence[TokenLogprob], strings: TokenStrings, offset: int = 0
) -> tuple[dict[str, Any] | None, int]:
    """A legacy completion choice's ``logprobs`` (``tokens``, ``token_logprobs``,
    ``top_logprobs``: per token a dict token -> logprob of the chosen token and the k most
    likely, ``text_offset``: where each token's string starts, counting from ``offset``), and
    the offset after the last token (None for no entries)."""
    if not entries:
        return None, offset
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    for e in entries:
        text, _ = strings(e.token_id)
        tokens.append(text)
        values.append(_logprob(e.logprob))
        top = {text: _logprob(e.logprob)}  # OpenAI: the chosen token is always there
        for i, v in e.top:
            top.setdefault(strings(i)[0], _logprob(v))
        tops.append(top)
        offsets.append(offset)
        offset += len(text)
    body = {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }
    return body, offset


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(result: GenerationResult) -> dict[str, Any]:
    """OpenAI's usage object; ``prompt_tokens_details.cached_tokens``: prompt tokens taken from
    a kept cache (prefix caching) instead of prefilled."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": len(result.token_ids),
        "total_tokens": result.prompt_tokens + len(result.token_ids),
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def completion_body(
    rid: str, model: str, result: GenerationResult, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The completion of ``result``; ``logprobs``: its :func:`completion_logprobs`."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": json_text(result.text),
                "logprobs": logprobs,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage(result),
    }


def finish_reason(finish: str, called: bool, named: bool = False) -> str:
    """A chat reply's ``finish_reason`` as OpenAI reports it: "tool_calls" when the reply
    made calls and stopped by itself, unless ``tool_choice`` ``named`` a function (its forced
    calls finish with "stop", as OpenAI's and vLLM's); ``finish`` otherwise (a reply cut by
    max_tokens stays "length")."""
    return "tool_calls" if called and not named and finish == "stop" else finish


def chat_body(
    rid: str,
    model: str,
    result: GenerationResult,
    parsed: ParsedReply | None = None,
    logprobs: dict[str, Any] | None = None,
    named: bool = False,
) -> dict[str, Any]:
    """The chat completion of ``result``; ``parsed``: its text split into content and tool
    calls (``finish_reason`` "tool_calls" when there are calls, "stop" for those of a
    ``named`` function: :func:`finish_reason`); ``logprobs``: its :func:`chat_logprobs`."""
    message: dict[str, Any] = {"role": "assistant", "content": json_text(result.text)}
    finish = result.finish_reason
    if parsed is not None and parsed.tool_calls:
        content = parsed.content
        message["content"] = None if content is None else json_text(content)
        message["tool_calls"] = [_call_json(c) for c in parsed.tool_calls]
        finish = finish_reason(finish, True, named)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        ],
        "usage": usage(result),
    }


def _call_json(call: ToolCall) -> dict[str, Any]:
    out = call.to_openai()
    out["function"]["arguments"] = json_text(out["function"]["arguments"])
    return out


def chunk(
    rid: str,
    model: str,
    chat: bool,
    text: str | None,
    finish: str | None = None,
    first: bool = False,
    tool_call: ToolCallDelta | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed chunk: a piece of text, a piece of a tool call (its start: index, id and
    name; or a piece of its arguments), or the last one with ``finish``; ``logprobs``: those
    of the tokens it carries."""
    if chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = json_text(text)
        if tool_call is not None:
            item = tool_call.to_openai()
            item["function"]["arguments"] = json_text(item["function"]["arguments"])
            delta["tool_calls"] = [item]
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {
            "index": 0,
            "text": json_text(text or ""),
            "logprobs": logprobs,
            "finish_reason": finish,
        }
        obj = "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def usage_chunk(rid: str, model: str, chat: bool, result: GenerationResult) -> dict[str, Any]:
    """The final chunk of ``stream_options.include_usage``: no choices, the usage."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(result),
    }


def model_card(name: str, max_model_len: int | None = None) -> dict[str, Any]:
    """``GET /v1/models/{name}``: one model object; ``max_model_len`` (as vLLM's): the model's
    context in tokens, prompt and output together, where known."""
    card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "inference-pio"}
    if max_model_len is not None:
        card["max_model_len"] = max_model_len
    return card


def model_list(names: Sequence[str], max_model_len: int | None = None) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(n, max_model_len) for n in names]}


def http_error(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error body for a failure outside the API's validation (unknown route, wrong
    method)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
