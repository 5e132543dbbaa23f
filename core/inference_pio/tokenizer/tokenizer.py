"""The Tokenizer: Hugging Face-compatible byte-level BPE encoding and decoding."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from inference_pio.errors import CheckpointError
from inference_pio.tokenizer import bytelevel
from inference_pio.tokenizer.added import AddedTokenSplitter
from inference_pio.tokenizer.native import NativeBPE
from inference_pio.tokenizer.normalize import nfc
from inference_pio.tokenizer.spec import TokenizerSpec, load_spec
from inference_pio.tokenizer.stream import StreamDecoder
from inference_pio.tokenizer.utf8 import decode_utf8, encode_utf8

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _merge_triples(spec: TokenizerSpec, where: str) -> list[tuple[int, int, int]]:
    vocab = spec.vocab
    out = []
    for k, (a, b) in enumerate(spec.merges):
        try:
            out.append((vocab[a], vocab[b], vocab[a + b]))
        except KeyError as exc:
            raise CheckpointError(
                f"{where}: model.merges[{k}] ({a!r}, {b!r}) uses {exc.args[0]!r}, "
                "which is not in model.vocab"
            ) from None
    return out


class Tokenizer:
    """Byte-level BPE tokenizer read from a checkpoint's tokenizer.json.

    Encoding matches ``tokenizers.Tokenizer.encode(...).ids`` and decoding matches
    ``tokenizers.Tokenizer.decode``, except that lone surrogates survive a round trip.
    """

    def __init__(self, spec: TokenizerSpec, source: str = TOKENIZER_FILE) -> None:
        self._nfc = spec.nfc
        raw_vocab = []
        for token, idx in spec.vocab.items():
            raw = bytelevel.token_bytes(token)
            if raw is not None:
                raw_vocab.append((raw, idx))
        self._bpe = NativeBPE(
            spec.pretokenizer, raw_vocab, _merge_triples(spec, source), spec.ignore_merges
        )
        # the merges live in the native tables now: the strings (39 MB for Qwen's) are dropped
        self.spec = dataclasses.replace(spec, merges=[])
        self._token_to_id: dict[str, int] = dict(spec.vocab)
        id_to_token: dict[int, str] = {i: t for t, i in spec.vocab.items()}
        for added in spec.added_tokens:
            self._token_to_id[added.content] = added.id
            id_to_token[added.id] = added.content
        self._id_to_token = id_to_token
        size = max(id_to_token, default=-1) + 1
        table: list[bytes | None] = [None] * size
        for idx, token in id_to_token.items():
            table[idx] = bytelevel.decoded_bytes(token)
        self._bytes = table
        self._special_ids = frozenset(t.id for t in spec.added_tokens if t.special)
        self._raw_split = AddedTokenSplitter([t for t in spec.added_tokens if not t.normalized])
        self._norm_split = AddedTokenSplitter([t for t in spec.added_tokens if t.normalized])
        self._has_norm_added = any(t.normalized for t in spec.added_tokens)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Loads tokenizer.json (+ tokenizer_config.json, chat_template.jinja) from a directory."""
        directory = Path(path)
        if not directory.is_dir():
            raise CheckpointError(
                f"{directory}: not a directory (expected a checkpoint "
                f"directory containing {TOKENIZER_FILE})"
            )
        return cls.from_files(
            directory / TOKENIZER_FILE, directory / CONFIG_FILE, directory / CHAT_TEMPLATE_FILE
        )

    @classmethod
    def from_files(
        cls,
        tokenizer_json: str | Path,
        tokenizer_config: str | Path | None = None,
        chat_template: str | Path | None = None,
    ) -> Tokenizer:
        """Loads explicit files; tokenizer_config and chat_template may be absent."""
        spec = load_spec(
            Path(tokenizer_json),
            Path(tokenizer_config) if tokenizer_config is not None else None,
            Path(chat_template) if chat_template is not None else None,
        )
        return cls(spec, str(tokenizer_json))

    # ---- vocabulary ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """One more than the largest id in use (model vocab and added tokens)."""
        return len(self._bytes)

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocab string or added-token content."""
        return self._token_to_id.get(token)

    def id_to_token(self, idx: int) -> str | None:
        """Vocab string (byte-level alphabet) or added-token content of an id."""
        return self._id_to_token.get(idx)

    def token_bytes(self, idx: int) -> bytes:
        """The bytes an id decodes to (b"" for ids that are not in use)."""
        if 0 <= idx < len(self._bytes):
            return self._bytes[idx] or b""
        return b""

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of added tokens marked special (dropped by skip_special_tokens)."""
        return self._special_ids

    def _config_id(self, token: str | None) -> int | None:
        return None if token is None else self._token_to_id.get(token)

    @property
    def bos_token_id(self) -> int | None:
        """Id of tokenizer_config.json's bos_token."""
        return self._config_id(self.spec.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        """Id of tokenizer_config.json's eos_token."""
        return self._config_id(self.spec.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        """Id of tokenizer_config.json's pad_token."""
        return self._config_id(self.spec.pad_token)

    @property
    def chat_template(self) -> str | None:
        """The checkpoint's Jinja chat template, if any."""
        return self.spec.chat_template

    # ---- encode ---------------------------------------------------------------------------
    def _encode_text(self, text: str, out: list[int]) -> None:
        if self._nfc:
            text = nfc(text)
        if self._has_norm_added:
            for piece in self._norm_split.split(text):
                if isinstance(piece, int):
                    out.append(piece)
                else:
                    out.extend(self._bpe.encode(encode_utf8(piece)))
        else:
            out.extend(self._bpe.encode(encode_utf8(text)))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; add_special_tokens applies the post-processor template."""
        if not isinstance(text, str):
            raise TypeError(f"encode() needs a str, got {type(text).__name__}")
        ids: list[int] = []
        for piece in self._raw_split.split(text):
            if isinstance(piece, int):
                ids.append(piece)
            else:
                self._encode_text(piece, ids)
        template = self.spec.template
        if add_special_tokens and template != (None,):
            out: list[int] = []
            for item in template:
                if item is None:
                    out.extend(ids)
                else:
                    out.append(item)
            return out
        return ids

    def encode_batch(
        self, texts: Iterable[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        """encode() of each text."""
        return [self.encode(t, add_special_tokens) for t in texts]

    # ---- decode ---------------------------------------------------------------------------
    def _check_ids(self, ids: Sequence[int] | Iterable[int]) -> list[int]:
        try:
            checked = [operator.index(i) for i in ids]
        except TypeError:
            raise TypeError("token ids must be integers") from None
        if checked and min(checked) < 0:
            raise ValueError(f"token ids must be non-negative, got {min(checked)}")
        return checked

    def decode_bytes(
        self, ids: Iterable[int], skip_special_tokens: bool = False, keep: Collection[int] = ()
    ) -> bytes:
        """The raw bytes of ``ids`` (unknown ids are skipped, as tokenizers does);
        ``skip_special_tokens`` drops the special tokens except those in ``keep`` (a tool-call
        format's markup, say)."""
        checked = self._check_ids(ids)
        table = self._bytes
        n = len(table)
        skip = self._special_ids if skip_special_tokens else frozenset()
        if keep and skip:
            skip = skip.difference(keep)
        return b"".join(table[i] or b"" for i in checked if i < n and i not in skip)

    def decode(
        self, ids: Iterable[int], skip_special_tokens: bool = False, keep: Collection[int] = ()
    ) -> str:
        """Text of ``ids``; ill-formed UTF-8 becomes U+FFFD exactly as in tokenizers.
        ``keep``: special tokens ``skip_special_tokens`` keeps."""
        return decode_utf8(self.decode_bytes(ids, skip_special_tokens, keep))

    def stream_decoder(
        self, skip_special_tokens: bool = False, keep: Collection[int] = ()
    ) -> StreamDecoder:
        """An incremental decoder for streaming output (see StreamDecoder)."""
        return StreamDecoder(self, skip_special_tokens, keep)

    # ---- chat ---------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
        """Renders the checkpoint's chat template (see inference_pio.chat.render_chat)."""
        from inference_pio.chat import render_chat

        if self.chat_template is None:
            raise CheckpointError("this tokenizer has no chat_template")
        return render_chat(
            self.chat_template, messages, special_tokens=self.special_tokens_map, **kwargs
        )

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """The special tokens a chat template sees, as transformers' ``special_tokens_map``:
        bos / eos / unk / sep / pad / cls / mask tokens that are set, and
        ``additional_special_tokens``."""
        out: dict[str, Any] = {}
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token"):
            value = getattr(self.spec, key, None) or _token_text(self.spec.config.get(key))
            if value:
                out[key] = value
        mask = _token_text(self.spec.config.get("mask_token"))
        if mask:
            out["mask_token"] = mask
        extra = self.spec.config.get("additional_special_tokens")
        if isinstance(extra, list):
            texts = [t for t in map(_token_text, extra) if t]
            if texts:
                out["additional_special_tokens"] = texts
        return out

    def close(self) -> None:
        """Frees the native tokenizer now rather than at garbage collection."""
        self._bpe.close()


def _token_text(value: Any) -> str | None:
    """A token of tokenizer_config.json: its text (a string, or an AddedToken object)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None
