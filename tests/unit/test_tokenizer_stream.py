"""The streaming decoder and the tokenizer's error handling."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenizer_fixtures as fx

from inference_pio.errors import CheckpointError
from inference_pio.tokenizer import Tokenizer
from inference_pio.tokenizer.bytelevel import encode_bytes
from inference_pio.tokenizer.utf8 import incomplete_tail


@pytest.fixture(scope="module")
def glm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.write_glm4(tmp_path_factory.mktemp("glm"))


@pytest.fixture(scope="module")
def tok(glm_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(glm_dir)


def test_stream_equals_decode_and_never_emits_broken_text(tok: Tokenizer) -> None:
    rng = random.Random(0)
    texts = ["你好世界 🎉👨‍👩‍👧 café", "\ud800 lone", "plain ascii <think>x</think>"]
    for k in range(200):
        if k < len(texts):
            ids = tok.encode(texts[k])
        else:  # arbitrary ids: byte tokens >= 0x80 make broken sequences
            ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(30))]
        for skip in (False, True):
            dec = tok.stream_decoder(skip_special_tokens=skip)
            pieces = []
            for i in ids:
                piece = dec.add(i)
                assert "\ufffd" not in piece or "\ufffd" in tok.decode(ids, skip)
                pieces.append(piece)
            pieces.append(dec.flush())
            assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)


def test_stream_holds_incomplete_characters(tok: Tokenizer) -> None:
    data = "€".encode()  # e2 82 ac, one byte token each
    ids = [tok.token_to_id(encode_bytes(bytes([b]))) for b in data]
    dec = tok.stream_decoder()
    assert dec.add(ids[0]) == ""
    assert dec.add(ids[1]) == ""
    assert dec.add(ids[2]) == "€"
    assert dec.add(ids[:2]) == ""
    assert dec.pending == data[:2]
    assert dec.flush() == "\ufffd"
    assert incomplete_tail(b"\xf0\x9f\x98") == 3
    assert incomplete_tail(b"a\xc3") == 1
    assert incomplete_tail(b"\xe0\x80") == 0
    assert incomplete_tail(b"\x80\x80\x80") == 0


def _write(d: Path, name: str, content: str) -> None:
    (d / name).write_text(content, "utf-8")


def test_missing_and_malformed_files(tmp_path: Path, glm_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: file not found"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    good = json.loads((glm_dir / "tokenizer.json").read_text())
    cases = [
        ("{not json", "tokenizer.json: is not valid JSON"),
        ("[]", "tokenizer.json: top level must be an object"),
        (
            json.dumps({**good, "model": {**good["model"], "vocab": 3}}),
            "'model.vocab' must be dict",
        ),
        (
            json.dumps({**good, "model": {**good["model"], "type": "WordPiece"}}),
            "unsupported model type",
        ),
        (json.dumps({**good, "model": {**good["model"], "merges": [["a"]]}}), r"model.merges\[0\]"),
        (
            json.dumps({**good, "model": {**good["model"], "merges": [["zz", "qq"]]}}),
            "not in model.vocab",
        ),
        (json.dumps({k: v for k, v in good.items() if k != "model"}), "'model' is missing"),
        (json.dumps({**good, "pre_tokenizer": None}), "unsupported pre_tokenizer"),
        (json.dumps({**good, "normalizer": {"type": "Lowercase"}}), "unsupported normalizer"),
        (
            json.dumps({**good, "added_tokens": [{"id": "x", "content": "a"}]}),
            r"'added_tokens\[0\].id' must be int",
        ),
    ]
    for content, message in cases:
        d = tmp_path / "case"
        d.mkdir(exist_ok=True)
        _write(d, "tokenizer.json", content)
        with pytest.raises(CheckpointError, match=message):
            Tokenizer.from_pretrained(d)
    d = tmp_path / "cfg"
    d.mkdir()
    _write(d, "tokenizer.json", json.dumps(good))
    _write(d, "tokenizer_config.json", "{")
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json: is not valid JSON"):
        Tokenizer.from_pretrained(d)
    _write(d, "tokenizer_config.json", json.dumps({"eos_token": 5}))
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json: 'eos_token' must be"):
        Tokenizer.from_pretrained(d)
    (d / "tokenizer_config.json").unlink()
    assert Tokenizer.from_pretrained(d).eos_token_id is None  # the config file is optional


def test_skipping_special_tokens_keeps_those_asked_for(tmp_path: Path) -> None:
    """A tool-call format's markup may be special tokens (GLM-4.7-Flash): decoding that skips
    special tokens keeps the ones in ``keep``, in whole decodes, streams and the generation
    loop's IncrementalText (also for a tokenizer without decode_bytes), and drops the rest."""
    from inference_pio.generation import IncrementalText, SequenceState
    from inference_pio.sampling import SamplingParams
    from inference_pio.synthetic.qwen_vocab import write_byte_tokenizer
    from inference_pio.toolcalls import markup_tokens

    added = [("<eos>", True), ("<tool_call>", True), ("<arg_key>", True), ("<box>", True)]
    write_byte_tokenizer(tmp_path, added, 256, None)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert markup_tokens(tok, "glm47") == {"<tool_call>": 257, "<arg_key>": 258}
    assert markup_tokens(tok, "hermes") == {"<tool_call>": 257}
    assert markup_tokens(tok, None) == {}
    ids = tok.encode("a<box><tool_call>f<arg_key>k<eos>é")
    keep = [257, 258]
    want = "a<tool_call>f<arg_key>ké"
    assert tok.decode(ids, skip_special_tokens=True) == "afké"
    assert tok.decode(ids, skip_special_tokens=True, keep=keep) == want
    assert (
        tok.decode(ids, skip_special_tokens=False, keep=keep)
        == "a<box><tool_call>f<arg_key>k<eos>é"
    )
    dec = tok.stream_decoder(skip_special_tokens=True, keep=keep)
    assert "".join(dec.add(i) for i in ids) + dec.flush() == want

    class NoBytes:  # decodes as transformers' tokenizers do: no decode_bytes
        all_special_ids = sorted(tok.special_ids)

        def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
            return tok.decode(ids, skip_special_tokens)

    for detok in (tok, NoBytes()):
        text = IncrementalText(detok, keep=keep)
        assert "".join(text.push(i) for i in ids) + text.flush() == want
        state = SequenceState(
            [1], SamplingParams(keep_special_ids=keep), frozenset(), IncrementalText(detok)
        )
        assert "".join(state.detok.push(i) for i in ids) + state.detok.flush() == want
    with pytest.raises(RuntimeError, match="before the first token"):
        state.detok.keep_special([1])
    with pytest.raises(ValueError, match="keep_special_ids must be token ids"):
        SamplingParams(keep_special_ids=(-1,))
    with pytest.raises(ValueError, match="keep_special_ids must be token ids"):
        SamplingParams(keep_special_ids="<tool_call>")  # type: ignore[arg-type]
