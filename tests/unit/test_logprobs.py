"""Log probabilities (``SamplingParams.logprobs``): the computation against torch's log_softmax,
their place in the generation state and result, the routing of such requests away from the paths
that give only token ids (checked on the CPU with stand-ins for the CUDA graph runners), and
``CausalLM.generate(..., logprobs=k)`` against transformers."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio import batching, ops  # noqa: E402
from inference_pio.batching import BatchManager  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.generation import (  # noqa: E402
    IncrementalText,
    SequenceState,
    TextPiece,
    stream_generate,
)
from inference_pio.logprobs import MAX_LOGPROBS, TokenLogprob, token_logprobs  # noqa: E402
from inference_pio.nn import cuda_graph  # noqa: E402
from inference_pio.sampling import Sampler, SamplingParams  # noqa: E402
from inference_pio.tensor import Tensor  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402

load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load


def as_tensor(t: Any, dtype: DType) -> Tensor:
    out = Tensor.from_list(t.float().tolist(), DType.float32)
    return out.to(dtype)


def check_entry(entry: TokenLogprob, row: Any, token: int, k: int, tol: float) -> None:
    """``entry`` against torch: the chosen token's value and the top k (ids and values)."""
    ref = torch.log_softmax(row.float(), -1)
    assert entry.token_id == token
    want = ref[token].item()
    if math.isinf(want):
        assert entry.logprob == want
    else:
        assert entry.logprob == pytest.approx(want, abs=tol)
    assert len(entry.top) == min(k, row.numel())
    values = [v for _, v in entry.top]
    assert values == sorted(values, reverse=True)
    for i, v in entry.top:  # each alternative's value is its own log-softmax value
        assert v == pytest.approx(ref[i].item(), abs=tol) or v == ref[i].item() == -math.inf
    if k:  # the k best values (which ids, among ties, is checked separately)
        best = torch.topk(ref, min(k, row.numel())).values.tolist()
        assert values == pytest.approx(best, abs=tol)


# ---- the computation ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
@pytest.mark.parametrize("k", [0, 1, 5, MAX_LOGPROBS])
def test_against_torch_log_softmax(dtype: DType, k: int) -> None:
    g = torch.Generator().manual_seed(k * 7 + int(dtype))
    for vocab in (37, 4096):
        row = torch.randn(vocab, generator=g) * 4
        if dtype == DType.bfloat16:
            row = row.bfloat16()  # torch's reference sees the same rounded values
        token = int(torch.randint(0, vocab, (1,), generator=g))
        entry = token_logprobs(as_tensor(row, dtype), token, k)
        check_entry(entry, row, token, k, 1e-5)
        ids = [i for i, _ in entry.top]
        values = row.float().tolist()  # bf16 rows have ties: lower id first
        assert ids == sorted(range(vocab), key=lambda i: (-values[i], i))[:k]


def test_minus_infinity_entries() -> None:
    """Tokens ruled out (-inf logits, a masked vocabulary) get -inf; the rest sum to 1."""
    row = torch.randn(64, generator=torch.Generator().manual_seed(1))
    row[::3] = -math.inf
    entry = token_logprobs(as_tensor(row, DType.float32), 0, 20)
    assert entry.logprob == -math.inf
    check_entry(entry, row, 0, 20, 1e-5)
    assert all(i % 3 for i, _ in entry.top)
    lp = ops.log_softmax(as_tensor(row, DType.float32)).tolist()
    assert sum(math.exp(v) for v in lp) == pytest.approx(1.0, abs=1e-5)
    all_but_two = torch.full((10,), -math.inf)
    all_but_two[4], all_but_two[7] = 1.0, 1.0
    two = token_logprobs(as_tensor(all_but_two, DType.float32), 7, 3)
    assert two.logprob == pytest.approx(math.log(0.5))
    assert [i for i, _ in two.top] == [4, 7, 0]  # then the -inf ones, lowest id first
    assert two.top[2][1] == -math.inf


@pytest.mark.parametrize("dtype", [DType.float32, DType.bfloat16])
def test_ties_lower_id_first(dtype: DType) -> None:
    """Equal values: the lower id first, the id the greedy sampler picks among them."""
    row = torch.tensor([0.5, 2.0, -1.0, 2.0, 2.0, 0.5, -3.0, 0.5])
    entry = token_logprobs(as_tensor(row, dtype), 4, 6)
    assert [i for i, _ in entry.top] == [1, 3, 4, 0, 5, 7]
    check_entry(entry, row, 4, 6, 1e-6)
    greedy = Sampler(SamplingParams(temperature=0)).sample(as_tensor(row, dtype))
    assert greedy == entry.top[0][0]


def test_bad_arguments() -> None:
    row = Tensor.from_list([0.0, 1.0], DType.float32)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_logprobs(row, 2, 1)
    with pytest.raises(ValueError, match="1-d"):
        token_logprobs(row.reshape(1, 2), 0, 1)
    assert len(token_logprobs(row, 0, 20).top) == 2  # k capped at the vocabulary


def test_sampling_params_validation() -> None:
    assert SamplingParams().logprobs is None
    assert SamplingParams(logprobs=0).logprobs == 0
    assert SamplingParams(logprobs=MAX_LOGPROBS).logprobs == MAX_LOGPROBS
    for bad in (-1, MAX_LOGPROBS + 1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="logprobs must be None or an integer in"):
            SamplingParams(logprobs=bad)  # type: ignore[arg-type]
    params = SamplingParams.from_generation_config({}, logprobs=3, temperature=0)
    assert params.logprobs == 3


# ---- the generation state ---------------------------------------------------------------------
class Bytes:
    """A detokenizer of byte ids (the tiny checkpoints' tokenizer: id = byte)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def rows_for(tokens: Sequence[int], vocab: int = 300) -> list[Tensor]:
    """Logits rows whose greedy token is ``tokens[i]``."""
    out = []
    for t in tokens:
        row = [0.0] * vocab
        row[t] = 5.0
        out.append(Tensor.from_list(row, DType.float32))
    return out


def test_state_entries_follow_the_output_tokens() -> None:
    """One entry per output token (the eos that ends generation has none); text pieces carry
    the entries of the tokens whose text they are the first to show: a UTF-8 character split
    over two tokens, and a possible stop string, are held back with their entries."""
    params = SamplingParams(temperature=0, logprobs=2, stop=("xy",))
    state = SequenceState([1], params, frozenset([299]), IncrementalText(Bytes()))
    euro = "€".encode()  # three bytes, three tokens
    tokens = [ord("a"), *euro, ord("x"), ord("b"), 299]
    pieces = [state.accept(row) for row in rows_for(tokens)]
    assert state.finish_reason == "stop"
    result = state.result(0.0)
    assert result.token_ids == tokens[:-1]
    assert result.logprobs is not None
    assert [e.token_id for e in result.logprobs] == tokens[:-1]
    assert pieces[:4] == ["a", "", "", "€"]
    assert isinstance(pieces[0], TextPiece)
    assert isinstance(pieces[3], TextPiece)
    assert [e.token_id for e in pieces[0].logprobs] == [ord("a")]
    assert [e.token_id for e in pieces[3].logprobs] == list(euro)  # held with the character
    assert pieces[4] == ""  # "x" may start "xy"
    assert pieces[5] == "xb"
    assert [e.token_id for e in pieces[5].logprobs] == [ord("x"), ord("b")]
    assert pieces[6] == ""
    for e in result.logprobs:
        assert e.logprob == pytest.approx(5.0 - math.log(math.exp(5.0) + 299))
        assert e.top[0] == (e.token_id, e.logprob)


def test_state_without_logprobs_is_unchanged() -> None:
    state = SequenceState([1], SamplingParams(temperature=0), frozenset(), IncrementalText(Bytes()))
    piece = state.accept(rows_for([ord("a")])[0])
    assert type(piece) is str
    assert piece == "a"
    assert state.result(0.0).logprobs is None
    assert state.accept_token(ord("b")) == "b"  # token ids alone are fine here


def test_a_path_without_logits_cannot_take_a_logprobs_request() -> None:
    state = SequenceState(
        [1], SamplingParams(temperature=0, logprobs=0), frozenset(), IncrementalText(Bytes())
    )
    assert state.wants_logits
    with pytest.raises(RuntimeError, match="needs each token's logits row"):
        state.accept_token(5)


# ---- a tiny model -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A tiny random f32 Qwen3 of byte tokens (untied embeddings: its greedy tokens vary) and its
    transformers reference."""
    d: Path = tmp_path_factory.mktemp("logprobs")
    cfg = transformers.Qwen3Config(**tiny_qwen3_config(vocab_size=258, tie_word_embeddings=False))
    ref = save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, seed=2, eos_id=257)
    return load(d), ref


def reference_check(ref: Any, prompt: list[int], result: Any, k: int, tol: float = 1e-4) -> None:
    """Every entry of ``result`` against transformers' log_softmax for the same prefix."""
    ids = torch.tensor([prompt + result.token_ids])
    with torch.no_grad():
        logits = ref(ids).logits[0].float()
    assert len(result.logprobs) == len(result.token_ids)
    for j, (token, entry) in enumerate(zip(result.token_ids, result.logprobs, strict=True)):
        check_entry(entry, logits[len(prompt) - 1 + j], token, k, tol)


@pytest.mark.parametrize(
    ("sampling", "k"),
    [({"temperature": 0}, 5), ({"temperature": 0.9, "top_k": 7, "seed": 3}, 0)],
)
def test_generate_against_transformers(tiny: tuple[Any, Any], sampling: dict, k: int) -> None:
    model, ref = tiny
    prompt = [11, 200, 37, 5, 90]
    plain = model.generate(prompt, max_new_tokens=12, ignore_eos=True, **sampling)
    result = model.generate(prompt, max_new_tokens=12, ignore_eos=True, logprobs=k, **sampling)
    assert result.token_ids == plain.token_ids  # raw logprobs do not change the draws
    assert plain.logprobs is None
    reference_check(ref, prompt, result, k)
    pieces = list(model.stream(prompt, max_new_tokens=12, ignore_eos=True, logprobs=k, **sampling))
    streamed = [e for p in pieces for e in getattr(p, "logprobs", ())]
    assert streamed == result.logprobs[: len(streamed)]


# ---- routing on the batch-1 CUDA path, with a CPU stand-in for the graph runner ---------------
class CpuRunner:
    """Stands in for a :class:`~inference_pio.nn.cuda_graph.GraphStepRunner`: the same calls, run
    by the model's op path on the CPU; records which of them the generation loop used."""

    chunk = 4

    def __init__(self, model: Any, capacity: int = 128) -> None:
        self.model, self.capacity = model, capacity
        self.cache = model.new_cache(capacity)
        self.calls: list[str] = []

    def set_position_offset(self, offset: int) -> None:
        assert offset == 0

    def _row(self, token: int, pos: int) -> Tensor:
        self.cache.length = pos
        (row,) = self.model.forward([([token], self.cache)])
        return row

    def logits_after(self, token: int, pos: int) -> Tensor:
        self.calls.append("logits_after")
        row = self._row(token, pos)
        self.cache.length = pos  # the loop advances it
        return row

    def _steps(self, token: int, pos: int, n: int, draw: Any) -> list[int]:
        out = []
        for j in range(n):
            token = draw(self._row(token, pos + j))
            out.append(token)
        self.cache.length = pos
        return out

    def greedy(self, token: int, pos: int, n: int) -> list[int]:
        self.calls.append("greedy")
        return self._steps(token, pos, n, lambda r: int(ops.argmax(r).tolist()))

    def sampled(self, token: int, pos: int, n: int, params: Any, rng: ctypes.c_uint64) -> list[int]:
        self.calls.append("sampled")
        sampler = Sampler(params)
        sampler._rng = rng  # the host stream, continued as the device continues it
        return self._steps(token, pos, n, sampler.sample)


CASES = [
    ({"temperature": 0}, "greedy"),
    ({"temperature": 0.8, "top_k": 5, "seed": 9}, "sampled"),
]


@pytest.mark.parametrize(("sampling", "fast"), CASES)
def test_batch1_cuda_loop_routing(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, sampling: dict, fast: str
) -> None:
    """cuda_stream_generate: without logprobs the in-graph greedy chunks / device sampling (token
    ids only); with logprobs one replay per token and its logits row (``logits_after``). Both
    give the CPU loop's tokens, and the logprobs are the CPU loop's."""
    model, _ = tiny
    runner = CpuRunner(model.model)
    monkeypatch.setattr(cuda_graph, "_runner", lambda m, capacity: runner)
    prompt = [3, 70, 140, 9]

    def run(loop: Any, **extra: Any) -> Any:
        params = SamplingParams(max_new_tokens=10, ignore_eos=True, **sampling, **extra)
        out: list[Any] = []
        for _ in loop(model.model, model.tokenizer, prompt, params, (), out.append):
            pass
        return out[0]

    fast_result = run(cuda_graph.cuda_stream_generate)
    assert fast in runner.calls
    assert "logits_after" not in runner.calls
    runner.calls.clear()
    lp_result = run(cuda_graph.cuda_stream_generate, logprobs=3)
    assert set(runner.calls) == {"logits_after"}
    cpu = run(stream_generate, logprobs=3)
    assert fast_result.token_ids == lp_result.token_ids == cpu.token_ids
    for a, b in zip(lp_result.logprobs, cpu.logprobs, strict=True):
        assert a.token_id == b.token_id
        assert [i for i, _ in a.top] == [i for i, _ in b.top]
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


# ---- routing in the BatchManager ----------------------------------------------------------------
class CpuBatchGraphs:
    """Stands in for a :class:`~inference_pio.nn.cuda_batch_graph.BatchGraphDecoder`: slot
    caches, a step over them that leaves every row in ``last_logits`` (the model's op path)."""

    def __init__(self, model: Any, slots: int = 4, capacity: int = 128) -> None:
        self.model, self.capacity = model, capacity
        self.caches = [model.new_cache(capacity) for _ in range(slots)]
        self.free = list(range(slots))

    def reset(self) -> None:
        self.free = list(range(len(self.caches)))

    def acquire(self) -> Any:
        return self.caches[self.free.pop(0)] if self.free else None

    def _slot(self, cache: Any) -> int:
        return next(i for i, c in enumerate(self.caches) if c is cache)

    def release(self, cache: Any) -> None:
        self.free.append(self._slot(cache))

    def step(self, batch: Sequence[tuple[int, Any]]) -> list[Tensor]:
        rows = self.model.forward([([t], c) for t, c in batch])
        self.last_slots = [self._slot(c) for _, c in batch]
        self.last_logits = {s: r for s, r in zip(self.last_slots, rows, strict=True)}
        return rows


def test_batch_step_routing(tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch graph step: greedy requests without logprobs take the batch's device argmax
    (``greedy_rows``), requests with logprobs their ``last_logits`` row; every request gets its
    solo tokens, the logprobs ones their solo logprobs."""
    model, _ = tiny
    graphs = CpuBatchGraphs(model.model)
    argmax_rows: list[int] = []

    def greedy_rows(rows: dict[int, Tensor]) -> dict[int, int]:
        argmax_rows.append(len(rows))
        return {s: int(ops.argmax(r).tolist()) for s, r in rows.items()}

    monkeypatch.setattr(batching, "greedy_rows", greedy_rows)
    monkeypatch.setattr(BatchManager, "_graph_decoder", lambda self: graphs)
    took: list[tuple[int, str]] = []
    accept, accept_token = SequenceState.accept, SequenceState.accept_token

    def spy_accept(self: SequenceState, logits: Tensor) -> str:
        took.append((self.params.max_new_tokens, "row"))
        return accept(self, logits)

    def spy_token(self: SequenceState, token: int, logprob: Any = None) -> str:
        if logprob is None:
            took.append((self.params.max_new_tokens, "argmax"))
        return accept_token(self, token, logprob)

    monkeypatch.setattr(SequenceState, "accept", spy_accept)
    monkeypatch.setattr(SequenceState, "accept_token", spy_token)
    requests = [
        ([5, 6, 7], SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)),
        ([8, 9], SamplingParams(max_new_tokens=9, temperature=0, ignore_eos=True, logprobs=4)),
        (
            [10, 11, 12, 13],
            SamplingParams(max_new_tokens=7, temperature=0.7, seed=2, ignore_eos=True, logprobs=0),
        ),
    ]
    manager = BatchManager(model.model, model.tokenizer, (), max_batch_size=4)
    for ids, params in requests:
        manager.submit(ids, params)
    results = manager.run()
    assert argmax_rows  # the greedy shortcut ran for the batch
    decode = [(n, how) for n, how in took]
    assert (8, "argmax") in decode  # the plain greedy request took it
    assert (9, "argmax") not in decode
    assert (7, "argmax") not in decode
    assert decode.count((9, "row")) == 9
    assert decode.count((7, "row")) == 7
    for (ids, params), got in zip(requests, results, strict=True):
        solo: list[Any] = []
        for _ in stream_generate(model.model, model.tokenizer, ids, params, (), solo.append):
            pass
        assert got.token_ids == solo[0].token_ids
        if params.logprobs is None:
            assert got.logprobs is None
            continue
        for a, b in zip(got.logprobs, solo[0].logprobs, strict=True):
            assert a.token_id == b.token_id
            assert [i for i, _ in a.top] == [i for i, _ in b.top]
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


@pytest.mark.parametrize("logprobs", [None, 2])
def test_lone_sequence_routing(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, logprobs: int | None
) -> None:
    """The BatchManager's last sequence on a CUDA model moves to the batch-1 runner (here the CPU
    stand-in) with and without logprobs; with them it decodes through ``logits_after``."""
    model, ref = tiny
    runner = CpuRunner(model.model)
    monkeypatch.setattr(cuda_graph, "_runner", lambda m, capacity: runner)
    monkeypatch.setattr(BatchManager, "_device_type", lambda self: "cuda")
    prompt = [21, 22, 23]
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True, logprobs=logprobs)
    manager = BatchManager(model.model, model.tokenizer, (), max_batch_size=4)
    manager.submit(prompt, params)
    (result,) = manager.run()
    assert manager.finished_alone == 1
    if logprobs is None:
        assert "greedy" in runner.calls
        assert "logits_after" not in runner.calls
        assert result.logprobs is None
    else:
        assert set(runner.calls) == {"logits_after"}
        reference_check(ref, prompt, result, logprobs)
