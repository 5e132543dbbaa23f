"""The gated delta rule against transformers' reference implementations (Qwen3-Next,
models.md §4.4): the recurrent form token by token and the chunked form it uses for prefill, in
fp32 and bf16, with grouped value heads, a carried state, and bad input."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.models.qwen3_next import modeling_qwen3_next as hf  # noqa: E402

from inference_pio import ops  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402


def _inputs(t: int, nk: int, nv: int, dk: int, dv: int, dtype: object, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        q=torch.randn(t, nk, dk, generator=g).to(dtype),
        k=torch.randn(t, nk, dk, generator=g).to(dtype),
        v=torch.randn(t, nv, dv, generator=g).to(dtype),
        a=torch.randn(t, nv, generator=g).to(dtype),
        b=torch.randn(t, nv, generator=g).to(dtype),
        a_log=torch.rand(nv, generator=g) * 2 - 1,
        dt_bias=torch.randn(nv, generator=g) * 0.5,
        state=torch.randn(nv, dk, dv, generator=g) * 0.1,
    )


def _reference(x: dict, chunked: bool) -> tuple[object, object]:
    """transformers' gates and delta rule on the same inputs (batch 1)."""
    beta = x["b"].sigmoid()
    g = -x["a_log"].float().exp() * torch.nn.functional.softplus(x["a"].float() + x["dt_bias"])
    fn = hf.torch_chunk_gated_delta_rule if chunked else hf.torch_recurrent_gated_delta_rule
    out, state = fn(
        x["q"][None], x["k"][None], x["v"][None], g=g[None], beta=beta[None],
        initial_state=x["state"][None].clone(), output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    return out[0], state[0]


def _ours(x: dict, dt: DType) -> tuple[object, object]:
    decay = torch.tensor([-math.exp(v) for v in x["a_log"].tolist()], dtype=torch.float32)
    state = tb.to_pio(x["state"].clone())
    out = ops.gated_delta_rule(
        tb.to_pio(x["q"]), tb.to_pio(x["k"]), tb.to_pio(x["v"]), tb.to_pio(x["a"]),
        tb.to_pio(x["b"]), tb.to_pio(decay), tb.to_pio(x["dt_bias"]), state,
    )  # fmt: skip
    assert out.dtype == dt
    return tb.to_torch(out), tb.to_torch(state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("t", "nk", "nv", "dk", "dv"), [(1, 2, 4, 16, 24), (70, 1, 3, 32, 8), (9, 4, 4, 128, 128)]
)
def test_matches_transformers_recurrent_and_chunked(
    dtype: object, t: int, nk: int, nv: int, dk: int, dv: int
) -> None:
    x = _inputs(t, nk, nv, dk, dv, dtype, seed=t + nv)
    out, state = _ours(x, tb.PDT[dtype])
    for chunked in (False, True):
        ref_out, ref_state = _reference(x, chunked)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert tb.rel(out.float(), ref_out.float()) < tol, chunked
        assert tb.rel(state, ref_state.float()) < (1e-5 if chunked is False else 1e-4), chunked


def test_a_split_sequence_continues_from_its_state() -> None:
    """Two calls (prefill, then tokens one by one) equal one call over the whole sequence."""
    x = _inputs(20, 2, 4, 16, 16, torch.float32, seed=3)
    whole, state_whole = _ours(x, DType.float32)
    decay = torch.tensor([-math.exp(v) for v in x["a_log"].tolist()], dtype=torch.float32)
    state = tb.to_pio(x["state"].clone())
    parts = []
    for lo, hi in ((0, 13), *((i, i + 1) for i in range(13, 20))):
        s = {key: x[key][lo:hi] for key in ("q", "k", "v", "a", "b")}
        parts.append(
            tb.to_torch(
                ops.gated_delta_rule(
                    *(tb.to_pio(s[key]) for key in ("q", "k", "v", "a", "b")),
                    tb.to_pio(decay),
                    tb.to_pio(x["dt_bias"]),
                    state,
                )
            )
        )
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(tb.to_torch(state), state_whole)


def test_bad_input_raises_clearly() -> None:
    x = _inputs(4, 2, 4, 8, 8, torch.float32, seed=1)
    args = [tb.to_pio(x[key]) for key in ("q", "k", "v", "a", "b")]
    decay, bias = tb.to_pio(torch.zeros(4)), tb.to_pio(x["dt_bias"])
    state = tb.to_pio(x["state"])
    with pytest.raises(ValueError, match="multiple of key heads"):
        ops.gated_delta_rule(
            args[0], args[1], tb.to_pio(torch.zeros(4, 3, 8)), args[3], args[4], decay, bias, state
        )
    with pytest.raises(ValueError, match="state has shape"):
        ops.gated_delta_rule(*args, decay, bias, tb.to_pio(torch.zeros(4, 8, 9)))
    with pytest.raises(TypeError, match="k has dtype"):
        ops.gated_delta_rule(args[0], tb.to_pio(x["k"].bfloat16()), *args[2:], decay, bias, state)
    with pytest.raises(TypeError, match="decay has dtype"):
        ops.gated_delta_rule(*args, tb.to_pio(torch.zeros(4).bfloat16()), bias, state)
