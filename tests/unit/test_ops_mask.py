"""mask_logits (structured outputs' token mask) against a Python reference: random bitmasks,
f32 and bf16 rows, edge sizes, in place and not, bad inputs."""

from __future__ import annotations

import ctypes
import random
from array import array

import pytest
import torch

from inference_pio import ops
from inference_pio._native import check, lib
from inference_pio.errors import NativeError
from inference_pio.testing.torch_bridge import to_pio, to_torch


def reference(x: torch.Tensor, words: list[int], n_words: int) -> torch.Tensor:
    """x with -inf where the token's bit is clear (row r reads words[r*n_words:...])."""
    out = x.clone()
    rows, vocab = out.shape
    for r in range(rows):
        for i in range(vocab):
            ok = i < 32 * n_words and (words[r * n_words + i // 32] >> (i % 32)) & 1
            if not ok:
                out[r, i] = float("-inf")
    return out


def random_words(n: int, rng: random.Random) -> list[int]:
    """Words of every kind: all allowed, none allowed, and mixed bits."""
    kinds = [0xFFFFFFFF, 0, None]
    return [w if (w := rng.choice(kinds)) is not None else rng.getrandbits(32) for _ in range(n)]


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("rows", "vocab", "n_words"),
    [(1, 1, 1), (1, 31, 1), (2, 32, 1), (3, 33, 2), (2, 100, 4), (1, 100, 2), (2, 64, 7)],
)
@pytest.mark.parametrize("in_place", [False, True])
def test_mask_logits_matches_reference(
    dt: torch.dtype, rows: int, vocab: int, n_words: int, in_place: bool
) -> None:
    rng = random.Random(rows * 1000 + vocab * 10 + n_words)
    x = torch.randn(rows, vocab).to(dt)
    words = random_words(rows * n_words, rng)
    mask = (ctypes.c_uint32 * len(words))(*words)
    xp = to_pio(x)
    got = ops.mask_logits(xp, mask, out=xp if in_place else None)
    want = reference(x, words, n_words)
    assert torch.equal(to_torch(got), want)
    if in_place:
        assert got is xp
    else:
        assert torch.equal(to_torch(xp), x)  # the input is untouched


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_mask_logits_on_a_qwen_sized_row(dt: torch.dtype) -> None:
    """151936 logits, a JSON-like mask (a few allowed tokens), llguidance's 4742 words for
    Qwen's 151669-token tokenizer (the rest of the row is disallowed); array('I') mask."""
    vocab, n_words = 151936, (151669 + 31) // 32
    x = torch.randn(1, vocab).to(dt)
    allowed = sorted(random.Random(0).sample(range(151669), 40))
    words = [0] * n_words
    for t in allowed:
        words[t // 32] |= 1 << (t % 32)
    got = to_torch(ops.mask_logits(to_pio(x[0]), array("I", words)))
    finite = torch.isfinite(got).nonzero().flatten().tolist()
    assert finite == allowed
    assert torch.equal(got[allowed], x[0, allowed])
    assert torch.isneginf(got[151669:]).all()


def test_mask_logits_greedy_pick_is_the_masked_argmax() -> None:
    x = torch.randn(4096)
    words = random_words(128, random.Random(5))
    got = to_torch(ops.argmax(ops.mask_logits(to_pio(x), (ctypes.c_uint32 * 128)(*words))))
    want = reference(x[None], words, 128)[0].argmax()
    assert int(got) == int(want)


def test_mask_logits_bad_inputs() -> None:
    x = to_pio(torch.randn(2, 40))
    ok = (ctypes.c_uint32 * 4)()
    with pytest.raises(TypeError, match="uint32 words"):
        ops.mask_logits(x, [0xFFFFFFFF] * 4)
    with pytest.raises(TypeError, match="uint32 words"):
        ops.mask_logits(x, (ctypes.c_int64 * 4)())
    with pytest.raises(TypeError, match="uint32 words"):
        ops.mask_logits(x, array("B", [1, 2, 3, 4]))
    with pytest.raises(ValueError, match="not a positive multiple of the 2 rows"):
        ops.mask_logits(x, (ctypes.c_uint32 * 3)())
    with pytest.raises(ValueError, match="not a positive multiple"):
        ops.mask_logits(x, array("I"))
    with pytest.raises(TypeError, match="dtype"):
        ops.mask_logits(to_pio(torch.zeros(2, 40, dtype=torch.int32)), ok)
    with pytest.raises(ValueError, match="1 or 2 dims"):
        ops.mask_logits(to_pio(torch.randn(2, 2, 40)), ok)
    with pytest.raises(ValueError, match="contiguous"):
        ops.mask_logits(to_pio(torch.randn(40, 2)).transpose(0, 1), ok)
    with pytest.raises(ValueError, match="shape"):
        ops.mask_logits(x, ok, out=to_pio(torch.randn(2, 41)))
    with pytest.raises(TypeError, match="dtype"):
        ops.mask_logits(x, ok, out=to_pio(torch.randn(2, 40).bfloat16()))
    big = to_pio(torch.randn(3, 40))
    with pytest.raises(ValueError, match="overlaps"):
        ops.mask_logits(big[0:2], ok, out=big[1:3])


def test_mask_logits_c_errors_are_codes_not_aborts() -> None:
    f = lib().to_mask_logits
    buf = (ctypes.c_float * 8)()
    mask = (ctypes.c_uint32 * 1)(0xFF)
    assert f(None, buf, mask, 1, 8, 1, 0) == 1  # NULL x
    assert f(buf, buf, None, 1, 8, 1, 0) == 1  # NULL mask with words
    assert f(buf, buf, mask, -1, 8, 1, 0) == 1  # negative rows
    assert f(buf, buf, mask, 1, 8, -1, 0) == 1
    assert f(buf, buf, mask, 1, 8, 1, 7) == 3  # an int dtype
    assert f(buf, buf, mask, 0, 8, 1, 0) == 0  # no rows: nothing to do
    code = f(buf, buf, mask, 1, 8, 1, 7)
    with pytest.raises(NativeError, match="f32 or bf16"):
        check(code, "to_mask_logits")
