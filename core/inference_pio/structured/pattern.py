"""A JSON-schema string ``pattern`` as a Lark regex of the whole value, for grammars whose values
are text written as it is (the XML tool-call formats), read as llguidance's JSON schemas read it.

JSON Schema's ``pattern`` is a search, not a full match: ``"a+"`` allows ``"xaay"``, and only
``^`` / ``$`` anchor it. llguidance's JSON schemas search too (the pattern in Rust's syntax after
:func:`llguidance.regex_to_lark` with ``\\d`` and ``\\w`` ASCII, as ECMA-262's are), but a Lark
``/.../`` matches whole lexemes and takes no anchors inside. :func:`search_regex` writes the search
as a whole match: ``(?s:.*)(?:P)(?s:.*)``, the ``(?s:.*)`` left out where ``^`` / ``$`` (or
``\\A`` / ``\\z``) anchor the pattern's start or end, per top-level alternative. Anchors anywhere
else (mid-pattern, as llguidance's JSON schemas refuse too, or inside a group, which they
take) and lookarounds cannot be written: a ValueError.
"""

from __future__ import annotations

import functools
import re

from inference_pio.structured.constraint import Constraint, require_llguidance

_ANY = "(?s:.*)"
_FLAGS = re.compile(r"\(\?[a-zA-Z-]+\)")  # a bare flag group such as (?i)
_STARTS, _ENDS = ("^", "\\A"), ("$", "\\z")


def _class_end(rx: str, i: int) -> int:
    """The index after the character class that opens at ``rx[i]`` (``[``), nested classes and
    ``[:alpha:]`` included; ``len(rx)`` when it does not close."""
    depth = 0
    while i < len(rx):
        c = rx[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            if rx.startswith("[:", i) and (end := rx.find(":]", i + 2)) != -1 and depth:
                i = end + 2
                continue
            depth += 1
            i += 1
            if i < len(rx) and rx[i] == "^":
                i += 1
            if i < len(rx) and rx[i] == "]":  # a leading ] is literal
                i += 1
            continue
        if c == "]":
            depth -= 1
            i += 1
            if depth == 0:
                return i
            continue
        i += 1
    return len(rx)


def _atoms(rx: str) -> list[str]:
    """``rx`` cut into its top-level pieces: groups, character classes, escapes, single
    characters (``|`` among them)."""
    out: list[str] = []
    i = 0
    while i < len(rx):
        c = rx[i]
        if c == "\\":
            j = min(i + 2, len(rx))
        elif c == "[":
            j = _class_end(rx, i)
        elif c == "(":
            depth, j = 0, i
            while j < len(rx):
                d = rx[j]
                if d == "\\":
                    j += 2
                    continue
                if d == "[":
                    j = _class_end(rx, j)
                    continue
                depth += d == "("
                depth -= d == ")"
                j += 1
                if depth == 0:
                    break
        else:
            j = i + 1
        out.append(rx[i:j])
        i = j
    return out


def _branches(atoms: list[str]) -> list[list[str]]:
    branches: list[list[str]] = [[]]
    for atom in atoms:
        if atom == "|":
            branches.append([])
        else:
            branches[-1].append(atom)
    return branches


def _search_branch(atoms: list[str], flags: str) -> str:
    """One top-level alternative as a whole match: ``(?s:.*)`` around it unless anchored;
    ``flags``: the bare flag groups of the alternatives before it (they hold in it too)."""
    atoms, lead = list(atoms), []
    while atoms and _FLAGS.fullmatch(atoms[0]):
        lead.append(atoms.pop(0))
    start = end = False
    while atoms and atoms[0] in _STARTS:
        atoms.pop(0)
        start = True
    while atoms and atoms[-1] in _ENDS:
        atoms.pop()
        end = True
    body = flags + "".join(lead) + "".join(atoms)
    return f"{'' if start else _ANY}(?:{body}){'' if end else _ANY}"


def error_reason(exc: Exception) -> str:
    """llguidance's reason in its error ``exc``, without the grammar and regex it quotes."""
    text = str(exc)
    found = re.search(r"^error: (.+)$", text, re.M)
    if found:
        return found.group(1).strip()
    text = text.split("\n", 1)[0].split("(in regex): ")[-1]
    text = re.sub(r"^invalid \w+ constraint: ", "", text)
    return text.split(" in regex /", 1)[0].removesuffix(";").strip()


def search_regex(pattern: str) -> str:
    """The inside of a Lark ``/.../`` that matches the strings in which the JSON-schema
    ``pattern`` is found (a search, anchored only by its ``^`` / ``$``), as llguidance's JSON
    schemas read the pattern; ValueError when llguidance cannot compile it (anchors inside
    groups, lookarounds, bad syntax)."""
    if not isinstance(pattern, str):
        raise ValueError(f"a pattern must be a string, got {type(pattern).__name__}")
    if _VERBOSE.search(pattern):
        # its whitespace and # comments would swallow the anchors and groups added around it
        raise ValueError(
            f"the pattern {pattern!r} cannot be enforced here: the verbose flag (?x) is not "
            "supported in tool-call markup (write the pattern without it)"
        )
    return _search_regex(pattern)


#: an inline flag group that turns on verbose mode: (?x), (?ix), (?x:...)
_VERBOSE = re.compile(r"\(\?[a-zA-Z]*x[a-zA-Z]*[:)]")


@functools.lru_cache(maxsize=512)
def _search_regex(pattern: str) -> str:
    """:func:`search_regex` of a string, remembered (a request's tools come again and again;
    compiling a pattern's checks takes most of a millisecond)."""
    try:  # what llguidance's JSON schemas refuse, refused alike (hermes's tool calls)
        Constraint.json_schema({"type": "string", "pattern": pattern})
    except ValueError as exc:
        raise ValueError(
            f"the pattern {pattern!r} cannot be compiled: {error_reason(exc)}"
        ) from None
    rx = require_llguidance().regex_to_lark(pattern, "dw")
    atoms = _atoms(rx)
    if not any(a in _STARTS or a in _ENDS for a in atoms):
        out = f"{_ANY}(?:{rx}){_ANY}"
    else:
        parts, flags = [], ""
        for branch in _branches(atoms):
            parts.append(_search_branch(branch, flags))
            # a bare flag group holds to the end of the pattern, later alternatives included
            flags += "".join(a for a in branch if _FLAGS.fullmatch(a))
        out = "|".join(parts)
    try:
        Constraint.lark(f"start: VALUE\nVALUE: /{out}/\n")
    except ValueError as exc:
        raise ValueError(
            f"the pattern {pattern!r} cannot be enforced here: ^ and $ may anchor only the start "
            f"and end of the pattern or of its top-level alternatives ({error_reason(exc)})"
        ) from None
    return out


__all__ = ["error_reason", "search_regex"]
