"""Reads tokenizer.json and tokenizer_config.json into a validated :class:`TokenizerSpec`.

Only what the supported checkpoints use is accepted (byte-level BPE, NFC, the Qwen2/Qwen3 and
GLM-4 split patterns); anything else is refused with a message naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_pio.errors import CheckpointError

#: Split pattern of Qwen2 / Qwen3 (one digit per pre-token).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Split pattern of GLM-4 (digits in runs of up to three).
GLM4_PATTERN = QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
#: Pre-tokenizer kinds of the native library (TO_PRETOK_*).
PATTERNS: dict[str, int] = {QWEN2_PATTERN: 0, GLM4_PATTERN: 1}


@dataclass(frozen=True)
class AddedToken:
    """One entry of tokenizer.json's ``added_tokens``."""

    id: int
    content: str
    special: bool = False
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything the tokenizer needs, read from the checkpoint's files."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    pretokenizer: int
    nfc: bool = False
    ignore_merges: bool = False
    added_tokens: tuple[AddedToken, ...] = ()
    #: Post-processor template for a single sequence: ids, with None where the text goes.
    template: tuple[int | None, ...] = (None,)
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    chat_template: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Field access with errors that name the file and the JSON path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    def load(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self.fail("file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(f"cannot be read: {exc}") from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise self.fail(f"is not valid JSON: {exc}") from exc

    def get(
        self, obj: Any, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...
    ) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(f"{where or 'top level'} must be an object")
        name = f"{where}.{key}" if where else key
        if key not in obj:
            if default is ...:
                raise self.fail(f"'{name}' is missing")
            return default
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.fail(f"'{name}' must be {names}, got {type(value).__name__}")
        return value


def _token_content(r: _Reader, value: Any, key: str) -> str | None:
    """bos/eos/pad entries are a string, an AddedToken-like object or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        content: str = r.get(value, "content", str, key)
        return content
    raise r.fail(f"'{key}' must be a string, an object with 'content', or null")


def _normalizer(r: _Reader, node: Any) -> bool:
    """True for NFC; None means no normalization."""
    if node is None:
        return False
    kind = r.get(node, "type", str, "normalizer")
    if kind == "NFC":
        return True
    if kind == "Sequence":
        parts = r.get(node, "normalizers", list, "normalizer")
        flags = [_normalizer(r, p) for p in parts]
        if len(parts) <= 1:
            return any(flags)
    raise r.fail(f"unsupported normalizer {json.dumps(node)[:200]} (only NFC is supported)")


def _pretokenizer(r: _Reader, node: Any) -> int:
    where = "pre_tokenizer"
    if node is None or r.get(node, "type", str, where) != "Sequence":
        raise r.fail("unsupported pre_tokenizer: expected Sequence[Split(pattern), ByteLevel]")
    steps = r.get(node, "pretokenizers", list, where)
    if len(steps) != 2:
        raise r.fail("unsupported pre_tokenizer: expected Sequence[Split(pattern), ByteLevel]")
    split, byte_level = steps
    if r.get(split, "type", str, f"{where}[0]") != "Split":
        raise r.fail("unsupported pre_tokenizer: the first step must be Split")
    pattern = r.get(split, "pattern", dict, f"{where}[0]")
    regex = r.get(pattern, "Regex", str, f"{where}[0].pattern")
    if regex not in PATTERNS:
        raise r.fail(f"unsupported split pattern {regex!r} (known: the Qwen2 and GLM-4 patterns)")
    if r.get(split, "behavior", str, f"{where}[0]") != "Isolated" or r.get(
        split, "invert", bool, f"{where}[0]", False
    ):
        raise r.fail("unsupported pre_tokenizer: Split must be Isolated and not inverted")
    if (
        r.get(byte_level, "type", str, f"{where}[1]") != "ByteLevel"
        or r.get(byte_level, "add_prefix_space", bool, f"{where}[1]", False)
        or r.get(byte_level, "use_regex", bool, f"{where}[1]", True)
    ):
        raise r.fail(
            "unsupported pre_tokenizer: the second step must be "
            "ByteLevel(add_prefix_space=false, use_regex=false)"
        )
    return PATTERNS[regex]


def _template(r: _Reader, node: Any) -> tuple[int | None, ...]:
    """The single-sequence template of the post-processor (ByteLevel adds nothing)."""
    if node is None:
        return (None,)
    kind = r.get(node, "type", str, "post_processor")
    if kind == "ByteLevel":
        return (None,)
    if kind == "Sequence":  # each step wraps what the steps before it produced
        found: tuple[int | None, ...] = (None,)
        for step in r.get(node, "processors", list, "post_processor"):
            outer = _template(r, step)
            found = tuple(i for o in outer for i in (found if o is None else (o,)))
        return found
    if kind != "TemplateProcessing":
        raise r.fail(f"unsupported post_processor type {kind!r}")
    specials = r.get(node, "special_tokens", dict, "post_processor")
    out: list[int | None] = []
    for item in r.get(node, "single", list, "post_processor"):
        if isinstance(item, dict) and "Sequence" in item:
            out.append(None)
        elif isinstance(item, dict) and "SpecialToken" in item:
            name = r.get(item["SpecialToken"], "id", str, "post_processor.single")
            entry = specials.get(name)
            ids = entry.get("ids") if isinstance(entry, dict) else None
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise r.fail(f"post_processor.special_tokens has no ids for {name!r}")
            out.extend(ids)
        else:
            raise r.fail(
                "post_processor.single has an entry that is neither Sequence nor SpecialToken"
            )
    return tuple(out)


def _added_tokens(r: _Reader, items: list[Any]) -> tuple[AddedToken, ...]:
    out = []
    for k, item in enumerate(items):
        where = f"added_tokens[{k}]"
        out.append(
            AddedToken(
                id=r.get(item, "id", int, where),
                content=r.get(item, "content", str, where),
                special=r.get(item, "special", bool, where, False),
                normalized=r.get(item, "normalized", bool, where, False),
                lstrip=r.get(item, "lstrip", bool, where, False),
                rstrip=r.get(item, "rstrip", bool, where, False),
                single_word=r.get(item, "single_word", bool, where, False),
            )
        )
        if out[-1].id < 0 or not out[-1].content:
            raise r.fail(f"{where} needs a non-negative id and non-empty content")
    return tuple(out)


def _merges(r: _Reader, items: list[Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, m in enumerate(items):
        if isinstance(m, str):
            parts = m.split(" ")
        elif isinstance(m, list):
            parts = m
        else:
            parts = []
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise r.fail(f"model.merges[{k}] must be 'left right' or [left, right], got {m!r}")
        out.append((parts[0], parts[1]))
    return out


def _model(r: _Reader, model: Any) -> tuple[dict[str, int], list[tuple[str, str]], bool]:
    if r.get(model, "type", str, "model", "BPE") != "BPE":
        raise r.fail(f"unsupported model type {model.get('type')!r} (only BPE is supported)")
    for key, allowed in (
        ("dropout", (None,)),
        ("continuing_subword_prefix", (None, "")),
        ("end_of_word_suffix", (None, "")),
        ("byte_fallback", (None, False)),
    ):
        value = model.get(key)
        if not any(value is a or (a == "" and value == "") for a in allowed):
            raise r.fail(f"unsupported BPE option model.{key} = {value!r}")
    vocab = r.get(model, "vocab", dict, "model")
    for token, idx in vocab.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise r.fail(f"model.vocab[{token!r}] must be a non-negative integer, got {idx!r}")
    merges = _merges(r, r.get(model, "merges", list, "model"))
    ignore = r.get(model, "ignore_merges", bool, "model", False)
    return vocab, merges, ignore


def read_tokenizer_config(path: Path) -> dict[str, Any]:
    """tokenizer_config.json as a dict ({} when the file does not exist)."""
    if not path.exists():
        return {}
    r = _Reader(path)
    data = r.load()
    if not isinstance(data, dict):
        raise r.fail("top level must be an object")
    return data


def load_spec(
    tokenizer_json: Path,
    tokenizer_config: Path | None = None,
    chat_template_file: Path | None = None,
) -> TokenizerSpec:
    """Reads and validates the tokenizer files (tokenizer_config.json may be absent)."""
    r = _Reader(tokenizer_json)
    data = r.load()
    if not isinstance(data, dict):
        raise r.fail("top level must be an object")
    vocab, merges, ignore = _model(r, r.get(data, "model", dict, ""))
    nfc = _normalizer(r, data.get("normalizer"))
    pretok = _pretokenizer(r, data.get("pre_tokenizer"))
    decoder = data.get("decoder")
    if decoder is not None and r.get(decoder, "type", str, "decoder") != "ByteLevel":
        raise r.fail(f"unsupported decoder {decoder.get('type')!r} (only ByteLevel)")
    template = _template(r, data.get("post_processor"))
    added = _added_tokens(r, r.get(data, "added_tokens", list, "", []))

    cfg: dict[str, Any] = {}
    tokens: dict[str, str | None] = {}
    chat: str | None = None
    if tokenizer_config is not None:
        cfg = read_tokenizer_config(tokenizer_config)
        cr = _Reader(tokenizer_config)
        for key in ("bos_token", "eos_token", "pad_token"):
            tokens[key] = _token_content(cr, cfg.get(key), key)
        chat = _chat_template(cr, cfg.get("chat_template"))
    if chat_template_file is not None and chat_template_file.is_file():
        try:
            chat = chat_template_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{chat_template_file}: cannot be read: {exc}") from exc
    return TokenizerSpec(
        vocab=vocab,
        merges=merges,
        pretokenizer=pretok,
        nfc=nfc,
        ignore_merges=ignore,
        added_tokens=added,
        template=template,
        bos_token=tokens.get("bos_token"),
        eos_token=tokens.get("eos_token"),
        pad_token=tokens.get("pad_token"),
        chat_template=chat,
        config=cfg,
    )


def _chat_template(r: _Reader, value: Any) -> str | None:
    """chat_template is a string or a list of {name, template}; the 'default' one is used."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {}
        for k, item in enumerate(value):
            name = r.get(item, "name", str, f"chat_template[{k}]")
            named[name] = r.get(item, "template", str, f"chat_template[{k}]")
        return named.get("default")
    raise r.fail("'chat_template' must be a string or a list of {name, template}")
