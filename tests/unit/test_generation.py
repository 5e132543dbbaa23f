"""Sampling, stop strings, streaming and the BatchManager (core generation machinery)."""

from __future__ import annotations

import math
import random
import threading
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from inference_pio.batching import BatchManager
from inference_pio.dtypes import DType
from inference_pio.generation import StopStrings, stream_generate
from inference_pio.sampling import Sampler, SamplingParams, greedy_rows
from inference_pio.tensor import Tensor

torch = pytest.importorskip("torch")


def _hf_support(logits: list[float], **kw: Any) -> set[int]:
    """Token ids HF's warpers keep (temperature, top-k, top-p, min-p, in HF's order)."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = torch.tensor([logits])
    ids = torch.zeros((1, 1), dtype=torch.long)
    scores = TemperatureLogitsWarper(kw.get("temperature", 1.0))(ids, scores)
    if kw.get("top_k"):
        scores = TopKLogitsWarper(kw["top_k"])(ids, scores)
    if kw.get("top_p", 1.0) < 1.0:
        scores = TopPLogitsWarper(kw["top_p"])(ids, scores)
    if kw.get("min_p"):
        scores = MinPLogitsWarper(kw["min_p"])(ids, scores)
    return {i for i, v in enumerate(scores[0].tolist()) if v != -math.inf}


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_k": 5},
        {"temperature": 1.3, "top_p": 0.6},
        {"temperature": 1.0, "min_p": 0.2},
        {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05},
    ],
)
def test_sampler_support_and_frequencies_match_hf(options: dict[str, Any]) -> None:
    rng = random.Random(1)
    logits = [rng.gauss(0, 2) for _ in range(37)]
    support = _hf_support(logits, **options)
    sampler = Sampler(SamplingParams(seed=5, **options))
    t = Tensor.from_list(logits)
    n = 6000
    counts = Counter(sampler.sample(t) for _ in range(n))
    assert set(counts) <= support
    kept = sorted(support)
    z = sum(math.exp(logits[i] / options["temperature"]) for i in kept)
    for i in kept:
        p = math.exp(logits[i] / options["temperature"]) / z
        assert abs(counts[i] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 2e-3, (i, p)


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 1.0},
        {"temperature": 0.6, "top_k": 20, "top_p": 0.95},
        {"temperature": 1.0, "min_p": 0.1},
    ],
)
def test_sampler_on_a_large_vocabulary_matches_hf(options: dict[str, Any]) -> None:
    """A 20000-token vocabulary with a few dominant logits: the sampler leaves out most tokens
    before ordering the rest (weights below what the nucleus could need), which must not change
    which tokens can be drawn or how often."""
    rng = random.Random(3)
    logits = [rng.gauss(0, 1.5) for _ in range(20000)]
    for i, bump in ((17, 9.0), (4000, 8.5), (12345, 8.0), (19999, 7.0)):
        logits[i] += bump
    t = Tensor.from_list(logits, DType.bfloat16)
    rounded = t.tolist()
    support = _hf_support(rounded, **options)
    sampler = Sampler(SamplingParams(seed=11, **options))
    n = 3000
    counts = Counter(sampler.sample(t) for _ in range(n))
    assert set(counts) <= support
    temp = options["temperature"]
    z = sum(math.exp(rounded[i] / temp) for i in support)
    for i in sorted(support, key=lambda j: -rounded[j])[:6]:
        p = math.exp(rounded[i] / temp) / z
        assert abs(counts[i] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 2e-3, (i, p)


@pytest.mark.parametrize(
    ("kw", "vocab", "device"),
    [
        (dict(temperature=0.0), 151936, True),
        (dict(temperature=0.0, repetition_penalty=1.3), 100, True),
        (dict(temperature=0.7, top_k=20, top_p=0.8), 151936, True),
        (dict(temperature=0.7, top_k=1024), 151936, True),
        (dict(temperature=0.7, top_k=1025), 151936, False),
        (dict(temperature=0.7, top_k=1025), 1025, True),  # top_k >= vocab: no cut
        (dict(temperature=1.0), 151936, True),
        (dict(temperature=1.0, top_p=0.9, min_p=0.05), 50, True),
    ],
)
def test_which_settings_the_device_sampler_takes(
    kw: dict[str, Any], vocab: int, device: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA rows are drawn on the device for top-k off, 1..1024 or >= vocab (any top-p, min-p,
    penalties), else copied to the host; INFERENCE_PIO_CUDA_DEVICE_SAMPLING=0 sends all to the
    host. (The draws themselves are compared with the host's in tests/gpu.)"""
    from inference_pio.sampling import device_supports

    params = SamplingParams(**kw)
    assert device_supports(params, vocab) is device
    monkeypatch.setenv("INFERENCE_PIO_CUDA_DEVICE_SAMPLING", "0")
    assert device_supports(params, vocab) is False


def test_penalised_greedy_over_a_long_history() -> None:
    """Penalties over 3000 history tokens of a 50000-token vocabulary: the argmax of the
    adjusted logits (HF's rules), first index on ties."""
    rng = random.Random(4)
    logits = [rng.gauss(0, 1) for _ in range(50000)]
    logits[777] = 6.0
    logits[778] = 5.5
    history = [rng.randrange(50000) for _ in range(3000)] + [777, 777]
    params = SamplingParams(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.2)
    sampler = Sampler(params, prompt_ids=history)
    counts = Counter(history)
    adjusted = list(logits)
    for i, c in counts.items():
        v = logits[i]
        v = v / 1.3 if v > 0 else v * 1.3
        adjusted[i] = v - 0.2 * c
    want = max(range(len(adjusted)), key=lambda i: (adjusted[i], -i))
    assert sampler.sample(Tensor.from_list(logits)) == want


def test_greedy_takes_first_maximum_and_bf16_logits() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0))
    assert sampler.sample(Tensor.from_list([1.0, 3.0, 3.0, 2.0])) == 1
    # a strided row (a column of a [3, 2] matrix) is read by element, not as raw memory
    column = Tensor.from_list([0.0, 5.0, 1.0, 2.0, 3.0, 0.5]).reshape(3, 2).transpose(0, 1)[0]
    assert not column.is_contiguous()
    assert sampler.sample(column) == 2
    assert sampler.sample(Tensor.from_list([0.5, -1.0, 2.0], DType.bfloat16)) == 2


def test_batched_greedy_is_for_device_rows_only() -> None:
    """greedy_rows (one device call for a batch's greedy rows) declines host logits, which are
    sampled row by row; plain_greedy tells which samplers it may serve."""
    rows = Tensor.from_list([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], DType.float32)
    assert greedy_rows(rows) is None
    greedy = Sampler(SamplingParams(temperature=0.0))
    assert [greedy.sample(rows[0]), greedy.sample(rows[1])] == [1, 0]
    assert greedy.plain_greedy
    assert not Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.2)).plain_greedy
    assert not Sampler(SamplingParams(temperature=0.7)).plain_greedy


def test_penalties_follow_hf_rules() -> None:
    # repetition penalty divides positive and multiplies negative logits of seen tokens
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt_ids=[0])
    assert sampler.sample(Tensor.from_list([3.0, 2.0])) == 1  # 3/2 = 1.5 < 2
    sampler = Sampler(SamplingParams(temperature=0.0, frequency_penalty=1.0))
    sampler.observe(0)
    sampler.observe(0)
    assert sampler.sample(Tensor.from_list([2.5, 1.0])) == 1  # 2.5 - 2 = 0.5 < 1


def test_seed_reproducible_and_different_seeds_differ() -> None:
    logits = Tensor.from_list([0.0] * 50)
    a = [Sampler(SamplingParams(seed=1)).sample(logits) for _ in range(1)]
    s1, s2 = Sampler(SamplingParams(seed=7)), Sampler(SamplingParams(seed=7))
    seq1 = [s1.sample(logits) for _ in range(30)]
    assert seq1 == [s2.sample(logits) for _ in range(30)]
    s3 = Sampler(SamplingParams(seed=8))
    assert seq1 != [s3.sample(logits) for _ in range(30)]
    assert len(a) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": 1.0}, "min_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"stop": [""]}, "stop"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"temperature": math.inf}, "finite"),
        ({"top_p": None}, "top_p must be a number"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"top_k": 2.0}, "top_k"),
    ],
)
def test_invalid_sampling_values_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_one_stop_string_is_not_split_into_characters() -> None:
    assert SamplingParams(stop="abc").stop == ("abc",)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"min_p": 0.1},
        {"top_p": 0.5},
        {"top_k": 2},
        {"top_k": 2, "min_p": 0.05, "temperature": 1e-3},
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_infinite_logits_are_sampled_among_themselves(options: dict[str, Any], dtype: str) -> None:
    """+inf logits (or finite ones that overflow when divided by the temperature) take all the
    mass, shared between them; the draw is always a real id of the vocabulary."""
    logits = Tensor.from_list([0.0, math.inf, 1.0, -math.inf, math.inf, math.nan], dtype)
    picks = {Sampler(SamplingParams(seed=s, **options)).sample(logits) for s in range(40)}
    assert picks <= {1, 4}
    assert picks
    if "top_p" not in options:
        assert picks == {1, 4}
    huge = Tensor.from_list([3e38, -1.0], "float32")  # x 1000 overflows
    for s in range(10):
        got = Sampler(SamplingParams(seed=s, temperature=1e-3, top_k=2, min_p=0.05)).sample(huge)
        assert got == 0


def test_generation_config_defaults_and_overrides() -> None:
    gc = {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "eos_token_id": [7, 8], "do_sample": True}
    p = SamplingParams.from_generation_config(gc, top_k=None, temperature=0.0)
    assert (p.temperature, p.top_k, p.top_p) == (0.0, 20, 0.95)
    assert p.stop_token_ids == ()  # the eos ids are the model's (CausalLM.eos_ids), not stops
    assert SamplingParams.from_generation_config({"do_sample": False}).greedy
    # transformers: greedy unless do_sample is true; sampling without top_k keeps 50
    assert SamplingParams.from_generation_config({"temperature": 0.7}).greedy
    sampled = SamplingParams.from_generation_config({"do_sample": True})
    assert (sampled.temperature, sampled.top_k) == (1.0, 50)
    with pytest.raises(TypeError, match="unknown sampling"):
        SamplingParams.from_generation_config({}, nucleus=0.1)


def test_stop_strings_hold_back_possible_prefixes() -> None:
    s = StopStrings(["</end>", "STOP"])
    out = [s.push(p) for p in ["Hello </", "e", "nd> more"]]
    assert "".join(out) == "Hello "
    assert s.stopped
    assert s.text == "Hello "
    s = StopStrings(["xyz"])
    assert s.push("abx") == "ab"
    assert s.push("q") == "xq"
    assert s.flush() == ""


class _CountingModel:
    """A deterministic ForwardModel: the next token is (last token + 1) mod vocab."""

    vocab_size = 16
    max_context = 64

    def __init__(self) -> None:
        self.batches: list[int] = []

    class Cache:
        def __init__(self, capacity: int) -> None:
            self.capacity, self.length = capacity, 0

    def new_cache(self, capacity: int) -> Any:
        return self.Cache(capacity)

    def forward(self, batch: Sequence[tuple[Sequence[int], Any]]) -> list[Tensor]:
        self.batches.append(len(batch))
        out = []
        for tokens, cache in batch:
            cache.length += len(tokens)
            nxt = (tokens[-1] + 1) % self.vocab_size
            out.append(Tensor.from_list([10.0 if i == nxt else 0.0 for i in range(16)]))
        return out


class _Letters:
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


def test_stream_generate_stops_on_eos_and_strings() -> None:
    model = _CountingModel()
    pieces = list(
        stream_generate(
            model, _Letters(), [0], SamplingParams(temperature=0.0, max_new_tokens=10), eos_ids=[5]
        )
    )
    assert "".join(pieces) == "bcde"  # eos (5 = "f") is not part of the output
    pieces = list(
        stream_generate(
            model, _Letters(), [0], SamplingParams(temperature=0.0, stop=["de"], max_new_tokens=10)
        )
    )
    assert "".join(pieces) == "bc"


def test_batch_manager_runs_real_batches_in_request_order() -> None:
    model = _CountingModel()
    manager = BatchManager(model, _Letters(), eos_ids=[], max_batch_size=3)
    lengths = [5, 2, 7, 1, 4]
    for i, n in enumerate(lengths):
        manager.submit([i], SamplingParams(temperature=0.0, max_new_tokens=n))
    results = manager.run()
    assert [len(r.token_ids) for r in results] == lengths
    assert [r.token_ids[0] for r in results] == [1, 2, 3, 4, 5]
    assert max(manager.decode_batch_sizes) == 3  # decode steps really ran batched
    with pytest.raises(ValueError, match="context"):
        manager.submit(list(range(64)), SamplingParams(max_new_tokens=1))


@pytest.mark.parametrize("pieces", [["xabcd"], list("xabcd"), ["xa", "bcd"], ["x", "abc", "d"]])
def test_overlapping_stops_cut_the_same_whatever_the_pieces(pieces: list[str]) -> None:
    """The stop that completes first wins ("bc" before "abcd"), however the text arrives."""
    stops = StopStrings(["abcd", "bc"])
    out = "".join(stops.push(p) for p in pieces)
    assert stops.stopped
    assert out + stops.flush() == "xa"


def _serve(manager: BatchManager) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=manager.serve, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_a_request_whose_callback_raises_fails_alone() -> None:
    """In serve(), a request's own callback raising fails that request (one on_error, no
    on_finish); its batch-mates finish normally, and a raising on_error does not stop the
    engine."""
    model = _CountingModel()
    manager = BatchManager(model, _Letters(), eos_ids=[], max_batch_size=4)
    events: list[tuple[str, int, str]] = []
    done = threading.Event()

    def bad_piece(i: int, piece: str) -> None:
        raise RuntimeError("client bug")

    def bad_error(i: int, exc: Exception) -> None:
        events.append(("error", i, str(exc)))
        raise RuntimeError("closed loop")

    def finish(i: int, result: Any) -> None:
        events.append(("finish", i, result.finish_reason))
        if sum(e[0] == "finish" for e in events) == 2:
            done.set()

    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    stop, thread = _serve(manager)
    try:
        with warnings.catch_warnings(record=True) as caught:  # raised in the engine's thread
            warnings.simplefilter("always")
            manager.submit([0], params, on_finish=finish)
            manager.submit([1], params, on_piece=bad_piece, on_finish=finish, on_error=bad_error)
            manager.submit([2], params, on_finish=finish)
            assert done.wait(10)
        assert any("on_error of request 1" in str(w.message) for w in caught)
        assert sorted(events) == [
            ("error", 1, "client bug"),
            ("finish", 0, "length"),
            ("finish", 2, "length"),
        ]
        assert thread.is_alive()
        manager.cancel(12345)  # unknown, finished: nothing is kept for them
        manager.cancel(0)
        assert not manager._cancelled
    finally:
        stop.set()
        thread.join(5)


def test_a_request_whose_cache_cannot_be_made_fails_alone() -> None:
    """A cache allocation failing at admission (cudaMalloc for a large max_tokens) answers
    that request with its error; the request running beside it and one admitted in the same
    step finish, and nothing stays live."""

    class Limited(_CountingModel):
        def new_cache(self, capacity: int) -> Any:
            if capacity > 40:
                raise MemoryError(f"no cache of {capacity} tokens")
            return super().new_cache(capacity)

    manager = BatchManager(Limited(), _Letters(), eos_ids=[], max_batch_size=4)
    events: list[tuple[str, int, str]] = []
    done = threading.Event()

    def finish(i: int, result: Any) -> None:
        events.append(("finish", i, result.finish_reason))

    def error(i: int, exc: Exception) -> None:
        events.append(("error", i, str(exc)))

    def check() -> None:
        if len(events) == 3:
            done.set()

    stop, thread = _serve(manager)
    try:
        kw: dict[str, Any] = {
            "on_finish": lambda i, r: (finish(i, r), check()),
            "on_error": lambda i, e: (error(i, e), check()),
        }
        manager.submit([0], SamplingParams(temperature=0.0, max_new_tokens=30), **kw)
        manager.submit([1], SamplingParams(temperature=0.0, max_new_tokens=50), **kw)
        manager.submit([2], SamplingParams(temperature=0.0, max_new_tokens=3), **kw)
        assert done.wait(10), events
        assert sorted(events) == [
            ("error", 1, "no cache of 51 tokens"),
            ("finish", 0, "length"),
            ("finish", 2, "length"),
        ]
        assert not manager._live
    finally:
        stop.set()
        thread.join(5)


def test_top_k_past_a_c_integer_keeps_every_token() -> None:
    """A top_k of 2**31 or more keeps every token (it reached the sampler wrapped: 2**64 + 5
    as 5, 2**63 as a negative value it refused)."""
    logits = Tensor.from_list([1.0] * 5 + [0.0] * 59)  # a top-5 cut keeps only ids 0..4
    for k in (2**31, 2**63, 2**64 + 5):
        params = SamplingParams(temperature=1.0, top_k=k, seed=1)
        assert params.top_k == 0
        sampler = Sampler(params, [])
        assert any(sampler.sample(logits) >= 5 for _ in range(40))


def test_ignore_eos_keeps_explicit_stop_token_ids() -> None:
    """vLLM's ignore_eos ignores the model's eos ids; stop_token_ids still stop."""
    model = _CountingModel()
    params = SamplingParams(temperature=0.0, max_new_tokens=10, ignore_eos=True)
    text = "".join(stream_generate(model, _Letters(), [0], params, eos_ids=[3]))
    assert text == "bcdefghijk"  # eos 3 ("d") ignored
    params = SamplingParams(temperature=0.0, max_new_tokens=10, ignore_eos=True, stop_token_ids=[4])
    assert "".join(stream_generate(model, _Letters(), [0], params, eos_ids=[3])) == "bcd"


def test_an_idle_engine_holds_no_finished_caches() -> None:
    """serve() lets go of a finished batch's caches while it waits for the next request (a
    server's idle memory), not when the next request arrives."""
    import gc
    import weakref

    model = _CountingModel()
    made: list[Any] = []
    real = model.new_cache

    def new_cache(capacity: int) -> Any:
        cache = real(capacity)
        made.append(weakref.ref(cache))
        return cache

    model.new_cache = new_cache  # type: ignore[method-assign]
    manager = BatchManager(model, _Letters(), eos_ids=[], max_batch_size=4)
    done = threading.Event()
    left = [3]

    def finish(i: int, result: Any) -> None:
        left[0] -= 1
        if not left[0]:
            done.set()

    stop, thread = _serve(manager)
    try:
        for i in range(3):
            manager.submit([i], SamplingParams(temperature=0.0, max_new_tokens=5), on_finish=finish)
        assert done.wait(10)
        time.sleep(0.3)  # the engine is back to waiting
        gc.collect()
        assert made
        assert all(ref() is None for ref in made)
    finally:
        stop.set()
        thread.join(5)


def test_top_k_keeps_every_token_tied_with_the_kth_value() -> None:
    """As transformers' TopKLogitsWarper (and vLLM): a tie at the k-th value keeps all of it."""
    logits = [5.0, 4.0, 3.0, 3.0, 3.0, 1.0, 0.0]
    row = Tensor.from_list(logits, "float32")
    drawn = {Sampler(SamplingParams(seed=s, top_k=3)).sample(row) for s in range(400)}
    assert drawn == _hf_support(logits, top_k=3) == {0, 1, 2, 3, 4}
    g = torch.Generator().manual_seed(0)
    tied_rows = 0
    for _ in range(20):  # bf16 rows: ties among the top values are common
        vals = torch.randn(300, generator=g).to(torch.bfloat16).float().tolist()
        want = _hf_support(vals, top_k=8)
        tied_rows += len(want) > 8
        row = Tensor.from_list(vals, "bfloat16")
        got = {Sampler(SamplingParams(seed=s, top_k=8)).sample(row) for s in range(600)}
        assert got == want
    assert tied_rows > 0


@pytest.mark.parametrize("temperature", [1e-38, 1e-45, 1e-6])
def test_a_vanishing_temperature_decodes_greedily(temperature: float) -> None:
    """1/T overflows float32 below ~3e-39: every positive logit became +inf and tied (vLLM and
    the T -> 0 limit: argmax)."""
    params = SamplingParams(temperature=temperature, top_k=1, seed=3)
    assert params.greedy
    logits = Tensor.from_list([4.0, 5.0, 10.0, -1.0, 0.0, 3.9], "float32")
    sampler = Sampler(params, [])
    assert {sampler.sample(logits) for _ in range(50)} == {2}


def test_stop_strings_match_a_brute_force_reference() -> None:
    """Random texts, stops and piece sizes: the text shown is cut where streaming character by
    character would first complete a stop (the linear search keeps these semantics)."""
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 5))) for _ in range(3)]
        want = text
        for end in range(1, len(text) + 1):
            done = [s for s in stops if text[:end].endswith(s)]
            if done:
                want = text[: end - max(len(s) for s in done)]
                break
        st, out, i = StopStrings(stops), "", 0
        while i < len(text) and not st.stopped:
            k = rng.randint(1, 4)
            out += st.push(text[i : i + k])
            i += k
        if not st.stopped:
            out += st.flush()
        assert out == want
        assert st.text == out


def test_prompt_token_ids_must_be_integers() -> None:
    from inference_pio.causal_lm import _token_id

    assert _token_id(7) == 7
    for bad in (1.9, "7", True, None):
        with pytest.raises(TypeError, match="integers"):
            _token_id(bad)
