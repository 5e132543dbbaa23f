"""Tool calls read from a reply as it streams, their arguments sent as they grow (as vLLM streams
them): a call's first :class:`ToolCallDelta` has its index, id and name, the next ones pieces of
its ``arguments`` text, which joined give exactly the call's arguments as
:func:`~inference_pio.toolcalls.parse_tool_calls` reads them from the whole reply.

When a call is announced, and what its arguments text is so far, depends on the text only, never
on how it was cut into pieces:

- ``hermes``: announced at ``{"name": "NAME", "arguments": {``; the arguments object's text goes
  out as it is written, up to its closing brace (not the wrapper's).
- ``qwen3_coder``: announced at ``<function=NAME>``; the JSON text grows by one ``"key": value``
  as each ``<parameter=...>`` is known to be complete (its value converted by the schema).
- ``glm47``: announced at the first ``<arg_key>`` after the name; one ``"key": value`` per
  ``</arg_value>``.

A call written otherwise (hermes ``arguments`` before ``name``, say) goes out whole once its
``</tool_call>`` arrives. A call announced whose block then does not parse (the reply ended
inside it, or it broke off into text) cannot be taken back: it stays as sent, and
:attr:`ToolCallStream.broken` counts it; only then do a stream and the whole-text parse differ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference_pio.toolcalls import (
    _ARG_KEY,
    _ARG_KEY_END,
    _ARG_VALUE,
    _ARG_VALUE_END,
    _FUNCTION,
    _FUNCTION_END,
    _PARAMETER,
    _PARAMETER_END,
    END,
    PARSERS,
    START,
    UNCLOSED,
    JsonValueEnd,
    Tool,
    ToolCall,
    _properties,
    _skip_space,
    _valid_name,
    check_format,
    convert_value,
    glm_value,
    hermes_head,
    new_call_id,
)


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first of a call has its ``id`` and ``name`` (and
    ``arguments`` ""), the next ones a piece of its ``arguments`` text."""

    index: int
    arguments: str = ""
    name: str | None = None
    id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The delta as a chunk's ``delta.tool_calls`` item."""
        if self.name is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {
            "index": self.index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _partial(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a proper start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _may_start(text: str, pos: int, tag: str) -> bool | None:
    """Whether ``text`` has ``tag`` at ``pos``: True, False, or None while ``text`` ends inside
    what may still become it."""
    if text.startswith(tag, pos):
        return True
    return None if tag.startswith(text[pos:]) else False


def _item(key: str, value: Any) -> str:
    """``"key": value`` as ``json.dumps`` writes it inside an object."""
    return f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"


class _Scanner:
    """Reads one call's body as it grows: :meth:`update` takes the body so far and gives the
    call's name once it may be announced (else None) and the start of its arguments text that
    is certain (None before the name)."""

    def __init__(self, tools: Sequence[Tool] | None) -> None:
        self._tools = tools

    def update(self, body: str) -> tuple[str | None, str | None]:
        raise NotImplementedError


class _HermesScanner(_Scanner):
    def __init__(self, tools: Sequence[Tool] | None) -> None:
        super().__init__(tools)
        self._head: tuple[str, int] | bool = True
        self._end: JsonValueEnd | None = None

    def update(self, body: str) -> tuple[str | None, str | None]:
        if self._head is True:
            self._head = hermes_head(body)
            if isinstance(self._head, tuple):
                self._end = JsonValueEnd(self._head[1])
        if not isinstance(self._head, tuple) or self._end is None:
            return None, None
        end = self._end.scan(body)
        return self._head[0], body[self._head[1] : len(body) if end == -1 else end]


class _ItemsScanner(_Scanner):
    """The XML formats: arguments as JSON text built from complete parameters, first value of
    a key kept (as the whole-text parsers do)."""

    def __init__(self, tools: Sequence[Tool] | None) -> None:
        super().__init__(tools)
        self.name: str | None = None
        self.props: dict[str, Any] = {}
        self.pos = 0  # where the next parameter may start
        self.stopped = False  # no more parameters can be read (stray text, a broken tag)
        self._keys: set[str] = set()
        self._text = "{"

    def add(self, key: str, value: Any) -> None:
        if key not in self._keys:
            self._keys.add(key)
            self._text += ("" if len(self._keys) == 1 else ", ") + _item(key, value)

    def update(self, body: str) -> tuple[str | None, str | None]:
        if self.name is None:
            self._start(body)
        if self.name is None:
            return None, None
        while not self.stopped and self._next(body):
            pass
        return self.name, self._text

    def _start(self, body: str) -> None:
        raise NotImplementedError

    def _next(self, body: str) -> bool:
        """Reads the next parameter if it is complete (True), else False."""
        raise NotImplementedError


def _value_end(text: str, start: int) -> tuple[int, int]:
    """Where a Qwen3-Coder parameter value that starts at ``start`` ends, as
    :func:`~inference_pio.toolcalls.parse_qwen3_coder` will find it whatever text follows, and
    the length of its closing tag (0: none, the value runs to the next parameter); (-1, 0) while
    that is not known yet."""
    following = text.find(_PARAMETER, start)
    at = text.find(_PARAMETER_END, start)
    while at != -1 and (following == -1 or at < following):
        after = _skip_space(text, at + len(_PARAMETER_END))
        if text.startswith((_PARAMETER, _FUNCTION_END), after):
            return at, len(_PARAMETER_END)
        rest = text[after : after + len(_FUNCTION_END)]
        if not rest or _PARAMETER.startswith(rest) or _FUNCTION_END.startswith(rest):
            return -1, 0  # what follows decides
        at = text.find(_PARAMETER_END, at + 1)
    return (following, 0) if following != -1 else (-1, 0)


class _CoderScanner(_ItemsScanner):
    def update(self, body: str) -> tuple[str | None, str | None]:
        return super().update(body.lstrip())

    def _start(self, body: str) -> None:
        if _may_start(body, 0, _FUNCTION) is not True:
            return
        close = body.find(">", len(_FUNCTION))
        if close == -1:
            return
        name = body[len(_FUNCTION) : close]
        self.stopped = not _valid_name(name)
        if not self.stopped:
            self.name, self.props, self.pos = name, _properties(self._tools, name), close + 1

    def _next(self, body: str) -> bool:
        pos = _skip_space(body, self.pos)
        starts = _may_start(body, pos, _PARAMETER) if pos < len(body) else None
        if starts is not True:
            self.stopped = starts is False  # </function>, or text no parameter starts with
            return False
        name_end = body.find(">", pos + len(_PARAMETER))
        if name_end == -1:
            return False
        key = body[pos + len(_PARAMETER) : name_end].strip()
        if not key:
            self.stopped = True
            return False
        end, step = _value_end(body, name_end + 1)
        if end == -1:
            return False
        value = body[name_end + 1 : end]
        if value.startswith("\n"):
            value = value[1:]
        if value.endswith("\n"):
            value = value[:-1]
        self.add(key, convert_value(value, self.props.get(key)))
        self.pos = end + step
        return True


class _GlmScanner(_ItemsScanner):
    def _start(self, body: str) -> None:
        first = body.find(_ARG_KEY)
        if first == -1:
            return
        name = body[:first].strip()
        self.stopped = not _valid_name(name)
        if not self.stopped:
            self.name, self.props, self.pos = name, _properties(self._tools, name), first

    def _next(self, body: str) -> bool:
        pos = _skip_space(body, self.pos)
        starts = _may_start(body, pos, _ARG_KEY) if pos < len(body) else None
        if starts is not True:
            self.stopped = starts is False
            return False
        key_end = body.find(_ARG_KEY_END, pos)
        if key_end == -1:
            return False
        key = body[pos + len(_ARG_KEY) : key_end].strip()
        at = _skip_space(body, key_end + len(_ARG_KEY_END))
        starts = _may_start(body, at, _ARG_VALUE) if at < len(body) else None
        if not key or starts is False:
            self.stopped = True
            return False
        value_end = body.find(_ARG_VALUE_END, at) if starts else -1
        if value_end == -1:
            return False
        self.add(key, glm_value(body[at + len(_ARG_VALUE) : value_end], self.props, key))
        self.pos = value_end + len(_ARG_VALUE_END)
        return True


_SCANNERS: dict[str, type[_Scanner]] = {
    "hermes": _HermesScanner,
    "qwen3_coder": _CoderScanner,
    "glm47": _GlmScanner,
}


@dataclass
class _Open:
    """The call being streamed: its index, id, name and the arguments text sent so far."""

    index: int
    id: str
    name: str
    sent: str = ""


Event = str | ToolCallDelta


class ToolCallStream:
    """Reads a reply piece by piece: :meth:`feed` and :meth:`finish` return what may be sent
    now, text pieces (``str``) and :class:`ToolCallDelta` objects, in order. Text that could
    start a call (``<tool_c``...) is held back until it is known. The texts joined are the
    reply's content and each call's deltas joined are its call, as
    :func:`~inference_pio.toolcalls.parse_tool_calls` gives them (unless a call announced did
    not parse in the end: :attr:`broken`)."""

    def __init__(self, fmt: str, tools: Sequence[Tool] | None = None) -> None:
        check_format(fmt)
        self._parse = PARSERS[fmt]
        self._unclosed_ok = fmt in UNCLOSED
        self._scanner_type = _SCANNERS[fmt]
        self._tools = tools
        self._buffer = ""  # not yet decided: a partial start tag, or an open block's body
        self._in_call = False
        self._scanner: _Scanner | None = None
        self._open: _Open | None = None
        self._held = ""  # whitespace at the start of a stretch of text (dropped before a call)
        self._has_text = False  # the current stretch of text has more than whitespace
        #: The complete calls, as the whole-text parse gives them (ids as streamed).
        self.calls: list[ToolCall] = []
        #: Calls announced so far (the next call's index).
        self.announced = 0
        #: Calls announced whose block did not parse into them in the end.
        self.broken = 0

    def _text(self, text: str, out: list[Event]) -> None:
        if not text:
            return
        if self._has_text:
            out.append(text)
            return
        self._held += text
        if self._held.strip():
            out.append(self._held)
            self._held, self._has_text = "", True

    def _announce(self, name: str, out: list[Event]) -> _Open:
        self._open = _Open(self.announced, new_call_id(), name)
        self.announced += 1
        self._held, self._has_text = "", False
        out.append(ToolCallDelta(self._open.index, "", name, self._open.id))
        return self._open

    def _send(self, arguments: str, out: list[Event]) -> bool:
        """Sends what ``arguments`` adds to the open call's arguments; False when it does not
        start with what was sent."""
        call = self._open
        if call is None or not arguments.startswith(call.sent):
            return False
        if len(arguments) > len(call.sent):
            out.append(ToolCallDelta(call.index, arguments[len(call.sent) :]))
            call.sent = arguments
        return True

    def _advance(self, body: str, out: list[Event]) -> None:
        """An open block's body so far (or whole): announces its call, sends its arguments."""
        if self._scanner is None:
            self._scanner = self._scanner_type(self._tools)
        name, arguments = self._scanner.update(body)
        if name is not None and self._open is None:
            self._announce(name, out)
        if arguments is not None:
            self._send(arguments, out)

    def _close(self, body: str, out: list[Event]) -> None:
        """A block's whole body (``closed``: its ``</tool_call>`` came)."""
        self._advance(body, out)
        call = self._parse(body, self._tools)
        opened = self._open
        if opened is None:
            if call is None:
                self._text(START + body + END, out)
                return
            opened = self._announce(call.name, out)
        if call is not None and call.name == opened.name and self._send(call.arguments, out):
            self.calls.append(ToolCall(call.name, call.arguments, opened.id))
        else:
            self.broken += 1

    def _reset(self) -> None:
        self._in_call, self._scanner, self._open = False, None, None

    def feed(self, piece: str) -> list[Event]:
        """Takes the next piece of the reply; returns what is decided."""
        out: list[Event] = []
        self._buffer += piece
        while True:
            if not self._in_call:
                start = self._buffer.find(START)
                if start == -1:
                    keep = _partial(self._buffer, START)
                    self._text(self._buffer[: len(self._buffer) - keep], out)
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return out
                self._text(self._buffer[:start], out)
                self._buffer = self._buffer[start + len(START) :]
                self._in_call = True
            end = self._buffer.find(END)
            if end == -1:  # what may be the start of </tool_call> is not the body yet
                self._advance(self._buffer[: len(self._buffer) - _partial(self._buffer, END)], out)
                return out
            body, self._buffer = self._buffer[:end], self._buffer[end + len(END) :]
            self._close(body, out)
            self._reset()

    def finish(self) -> list[Event]:
        """The end of the reply: what was held back (a call never closed is text, unless it
        was announced: then it stays as sent, and is :attr:`broken`)."""
        out: list[Event] = []
        if self._in_call and self._unclosed_ok and self._parse(self._buffer, self._tools):
            self._close(self._buffer, out)  # a whole call the reply ended after
        elif self._in_call:
            self._advance(self._buffer, out)
            if self._open is None:
                self._text(START + self._buffer, out)
            else:
                self.broken += 1
        else:
            self._text(self._buffer, out)
        self._buffer = ""
        self._reset()
        if self._held and not self.announced:
            out.append(self._held)
        self._held = ""
        return out


__all__ = ["Event", "ToolCallDelta", "ToolCallStream"]
