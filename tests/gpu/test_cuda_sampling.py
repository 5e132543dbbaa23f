"""toc_sample (the device twin of to_sample) against the host sampler: the same token ids and
the same RNG stream for the same logits, settings and seed, over vocabulary sizes, dtypes, ties,
NaN / -inf entries, top-k / top-p / min-p and the penalties; settings the device does not cover
fall back to the host; bad input is an error, not a crash."""

from __future__ import annotations

import ctypes
import random
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from inference_pio import cuda  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.errors import NativeError  # noqa: E402
from inference_pio.sampling import (  # noqa: E402
    Sampler,
    SamplingParams,
    device_supports,
    greedy_rows,
)
from inference_pio.tensor import Tensor  # noqa: E402

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

DEV = "cuda:0"


def _row(vocab: int, dtype: DType, seed: int, special: bool) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    vals = torch.randn(vocab, generator=g) * 3
    if dtype == DType.bfloat16:
        vals = vals.to(torch.bfloat16).float()  # many exact ties among the top values
    out = vals.tolist()
    if special:
        for i in range(0, vocab, 7):
            out[i] = float("nan")
        for i in range(3, vocab, 11):
            out[i] = float("-inf")
        out[vocab // 2] = out[vocab // 3] = max(v for v in out if v == v)  # a tie at the top
        out[1], out[2] = 0.0, -0.0
    return Tensor.from_list(out, dtype)


def _draws(
    params: SamplingParams, row: Tensor, n: int, history: list[int]
) -> tuple[list[int], int]:
    s = Sampler(params, prompt_ids=history[:5])
    for t in history:
        s.observe(t)
    got = []
    for _ in range(n):
        t = s.sample(row)
        s.observe(t)
        got.append(t)
    return got, s._rng.value


CASES = [
    dict(temperature=0.0),
    dict(temperature=0.0, repetition_penalty=1.5, frequency_penalty=0.3),
    dict(temperature=0.7, top_k=20, top_p=0.8),
    dict(temperature=0.6, top_k=20, top_p=0.95),
    dict(temperature=1.0, top_k=1),
    dict(temperature=1.3, top_k=50, min_p=0.1),
    dict(temperature=0.9, top_k=300, top_p=0.99),
    dict(temperature=2.0, top_k=1024),
    dict(temperature=0.8, top_k=40, repetition_penalty=1.3, presence_penalty=0.5),
    dict(temperature=1.0, top_k=10, frequency_penalty=-0.4, presence_penalty=-1.0),
    # no top-k cut: the host's fp32 weights and block sums, the walk in id order or the nucleus
    dict(temperature=0.8),
    dict(temperature=0.8, top_p=0.9),
    dict(temperature=1.0, min_p=0.05),
    dict(temperature=0.7, top_p=0.5, repetition_penalty=1.2, frequency_penalty=0.1),
    dict(temperature=1.1, top_k=10**6, top_p=0.95),
]


@pytest.mark.parametrize("dtype", [DType.bfloat16, DType.float32])
@pytest.mark.parametrize("vocab", [2, 37, 1025, 5000, 151936])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_device_sampler_draws_like_the_host(dtype: DType, vocab: int, case: int) -> None:
    kw: dict[str, Any] = dict(CASES[case])
    params = SamplingParams(seed=1000 + case, **kw)
    row = _row(vocab, dtype, seed=vocab + case, special=vocab > 40 and case % 2 == 0)
    rnd = random.Random(case)
    history = [rnd.randrange(vocab) for _ in range(min(vocab, 60))]
    want = _draws(params, row, 25, history)
    got = _draws(params, row.to(DEV), 25, history)
    assert got == want
    assert device_supports(params, vocab)


def test_top_k_above_1024_falls_back_to_the_host() -> None:
    params = SamplingParams(temperature=0.8, top_k=2000, min_p=0.05, seed=7)
    row = _row(5000, DType.bfloat16, seed=3, special=False)
    assert not device_supports(params, 5000)
    assert _draws(params, row.to(DEV), 20, []) == _draws(params, row, 20, [])


def _tiers(sizes: list[tuple[int, float]]) -> Tensor:
    """bf16-exact logits in tiers (many exact ties), shuffled deterministically."""
    vals = [v for n, v in sizes for _ in range(n)]
    random.Random(5).shuffle(vals)
    return Tensor.from_list(vals, DType.bfloat16)


def test_nucleus_among_more_candidates_than_the_device_orders() -> None:
    """21000 tokens pass the host's cut, the nucleus takes ~570 of the 1000 at the top: the
    device selects the 16384 best candidates first, ties broken by id as on the host."""
    row = _tiers([(1000, 10.0), (20000, 5.0), (130936, 0.0)])
    for kw in (dict(temperature=1.0, top_p=0.5), dict(temperature=1.0, top_p=0.5, min_p=0.001)):
        params = SamplingParams(seed=9, **kw)
        assert _draws(params, row.to(DEV), 30, []) == _draws(params, row, 30, [])


def test_nucleus_wider_than_the_device_falls_back_to_the_host() -> None:
    """A flat row: the nucleus of top-p 0.9 holds ~136000 tokens, which the device does not
    order; the sampler draws on the host with an untouched RNG stream."""
    row = _tiers([(151936, 1.0)])
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=11)
    assert _draws(params, row.to(DEV), 10, []) == _draws(params, row, 10, [])


def test_all_minus_infinity_row_gives_the_first_id() -> None:
    row = Tensor.from_list([float("-inf")] * 300 + [float("nan")] * 10, DType.float32)
    cases = (
        dict(temperature=0.0),
        dict(temperature=1.0, top_k=5),
        dict(temperature=1.0),
        dict(temperature=1.0, top_p=0.9),
    )
    for kw in cases:
        params = SamplingParams(seed=1, **kw)
        assert _draws(params, row.to(DEV), 3, []) == _draws(params, row, 3, []) == ([0] * 3, 1)


@pytest.mark.parametrize("dtype", [DType.bfloat16, DType.float32])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_infinite_logits_draw_like_the_host(dtype: DType, case: int) -> None:
    """+inf logits, and finite ones that overflow when divided by a small temperature, read as
    the largest float on both sides: the same draws, always among them."""
    vocab = 3000
    out = _row(vocab, dtype, seed=case, special=True).tolist()
    out[10] = out[2000] = float("inf")
    out[77] = 3e38  # x (1 / temperature) overflows for temperatures below ~1.1
    row = Tensor.from_list(out, dtype)
    kw: dict[str, Any] = {**CASES[case], "temperature": max(CASES[case]["temperature"], 0.0)}
    params = SamplingParams(seed=7 + case, **kw)
    want = _draws(params, row, 10, [])
    assert _draws(params, row.to(DEV), 10, []) == want
    assert set(want[0]) <= {10, 77, 2000}


def test_strided_device_row_is_sampled_by_its_values() -> None:
    base = _row(2 * 3000, DType.bfloat16, seed=9, special=False).to(DEV)
    row = base.reshape(3000, 2).select(1, 1)
    params = SamplingParams(temperature=0.7, top_k=20, seed=2)
    assert _draws(params, row, 10, []) == _draws(params, row.to("cpu").contiguous(), 10, [])


def test_bad_arguments_are_errors_not_crashes() -> None:
    row = _row(100, DType.float32, seed=1, special=False).to(DEV)
    fn = cuda.function("sample", DEV)
    rng, out = ctypes.c_uint64(1), ctypes.c_int64()
    ids = (ctypes.c_int32 * 1)(100)  # outside the vocabulary
    counts = (ctypes.c_int32 * 1)(1)
    rc = fn(row.data_ptr, int(DType.float32), 100, ids, counts, 1, 0.7, 20, 1.0, 0.0, 1.2, 0.0,
            0.0, ctypes.byref(rng), ctypes.byref(out))  # fmt: skip
    with pytest.raises(NativeError, match="history id"):
        cuda.check(rc, "toc_sample")
    wide = _row(3000, DType.float32, seed=2, special=False).to(DEV)
    rc = fn(wide.data_ptr, int(DType.float32), 3000, None, None, 0, 0.7, 2000, 0.9, 0.0, 1.0,
            0.0, 0.0, ctypes.byref(rng), ctypes.byref(out))  # fmt: skip
    with pytest.raises(NativeError, match="top_k"):
        cuda.check(rc, "toc_sample")
    rc = fn(row.data_ptr, int(DType.int32), 100, None, None, 0, 0.7, 5, 0.9, 0.0, 1.0, 0.0,
            0.0, ctypes.byref(rng), ctypes.byref(out))  # fmt: skip
    with pytest.raises(NativeError):
        cuda.check(rc, "toc_sample")
    # the device still works afterwards
    params = SamplingParams(temperature=0.7, top_k=20, seed=4)
    assert _draws(params, row, 5, []) == _draws(params, row.to("cpu"), 5, [])


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize("vocab", [3, 5000, 151936])
def test_greedy_rows_equal_the_sampler_row_by_row(dtype: DType, vocab: int) -> None:
    """toc_sample_greedy_rows (the BatchManager's batched greedy draw) gives every row the id that
    the sampler draws for it alone, with ties, NaN and -inf entries, and an all -inf row."""
    rows = [_row(vocab, dtype, seed=i, special=i % 2 == 1) for i in range(6)]
    rows.append(Tensor.from_list([float("-inf")] * vocab, dtype))
    flat = [v for r in rows for v in r.tolist()]
    logits = Tensor.from_list(flat, dtype).reshape(len(rows), vocab).to(DEV)
    got = greedy_rows(logits)
    want = [Sampler(SamplingParams(temperature=0.0)).sample(r) for r in rows]
    assert got == want
    assert greedy_rows(logits.to("cpu")) is None  # host logits: row by row
    fn = cuda.function("sample_greedy_rows", DEV)
    out = (ctypes.c_int64 * 1)()
    with pytest.raises(NativeError, match="row stride"):
        cuda.check(fn(logits.data_ptr, int(dtype), 1, vocab, vocab - 1, out), "x")
