"""Regressions found by fuzzing the public ops with adversarial arguments."""

from __future__ import annotations

import pytest

from inference_pio import ops
from inference_pio.tensor import Tensor


@pytest.mark.parametrize("op", ["quantize", "dequantize", "linear"])
def test_fp8_block_sizes_that_wrap_int64_are_refused(op: str) -> None:
    # ctypes passes 2**64 + 1 to C as 1: the scale tensor would be sized for the huge block
    # (1x1) while C indexes it per element -> heap overflow.
    block = (2**64 + 1, 2**64 + 1)
    calls = {
        "quantize": lambda: ops.quantize_fp8(Tensor.zeros((64, 64)), block),
        "dequantize": lambda: ops.dequantize_fp8(
            Tensor.zeros((64, 64), "float8_e4m3"), Tensor.zeros((1, 1)), block
        ),
        "linear": lambda: ops.linear_fp8(
            Tensor.zeros((1, 64)),
            Tensor.zeros((64, 64), "float8_e4m3"),
            Tensor.zeros((1, 1)),
            block=block,
        ),
    }
    with pytest.raises(ValueError, match="block sizes"):
        calls[op]()


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "layer_norm"])
@pytest.mark.parametrize("shift", [1, -1])
def test_row_ops_refuse_out_partially_overlapping_x(op: str, shift: int) -> None:
    buf = Tensor.zeros((5, 8))
    x = buf.narrow(0, 1, 4) if shift < 0 else buf.narrow(0, 0, 4)
    out = buf.narrow(0, 1 + shift, 4) if shift < 0 else buf.narrow(0, 1, 4)

    def call() -> object:
        if op == "layer_norm":
            return ops.layer_norm(x, None, None, out=out)
        return getattr(ops, op)(x, out=out)

    with pytest.raises(ValueError, match="overlaps"):
        call()


def test_row_ops_still_work_in_place() -> None:
    x = Tensor.from_list([[1.0, 2.0, 3.0]])
    assert ops.softmax(x, out=x) is x
    y = ops.layer_norm(x, None, None, out=x)
    assert y is x


def test_gated_delta_rule_zero_key_heads_is_a_value_error() -> None:
    z = Tensor.zeros
    with pytest.raises(ValueError, match="key heads"):
        ops.gated_delta_rule(
            z((1, 0, 4)),
            z((1, 0, 4)),
            z((1, 2, 4)),
            z((1, 2)),
            z((1, 2)),
            z((2,)),
            z((2,)),
            z((2, 4, 4)),
        )


def test_tensor_edge_cases_give_clear_errors() -> None:
    for values, dtype in (([1e39], "float32"), ([10**400], "bfloat16"), ([10**400], "float32")):
        with pytest.raises(ValueError, match="out of range"):
            Tensor.from_list(values, dtype)
    scalar = Tensor.from_list([1.0]).reshape(())
    assert scalar.transpose(0, 0).tolist() == scalar.tolist()


def test_rope_apply_refuses_rows_that_share_memory() -> None:
    cos = Tensor.from_list([[1.0, 1.0]] * 2)
    sin = Tensor.from_list([[0.0, 0.0]] * 2)
    base = Tensor.zeros((2, 4))
    shared_heads = Tensor(base.storage, (2, 4, 4), base.dtype, (4, 0, 1), 0)
    with pytest.raises(ValueError, match="overlap"):
        ops.rope_apply(shared_heads, cos, sin)
    rows = Tensor.from_list([[1.0, 2.0], [3.0, 5.0], [7.0, 1.0]])
    one_row = Tensor(base.storage, (3, 2), base.dtype, (0, 1), 0)
    with pytest.raises(ValueError, match="overlap"):
        ops.rms_norm(rows, Tensor.from_list([1.0, 1.0]), out=one_row)
    shared_tokens = Tensor(base.storage, (2, 1, 4), base.dtype, (0, 4, 1), 0)
    with pytest.raises(ValueError, match="overlap"):
        ops.rope_apply(shared_tokens, cos, sin)
    packed = Tensor(base.storage, (2, 1, 4), base.dtype, (4, 4, 1), 0)
    assert ops.rope_apply(packed, cos, sin) is packed


def test_an_odd_partial_rotary_dimension_is_a_checkpoint_error() -> None:
    from inference_pio.errors import CheckpointError
    from inference_pio.nn.rope_scaling import rope_frequencies

    with pytest.raises(CheckpointError, match=r"partial_rotary_factor 0\.3"):
        rope_frequencies({"rope_theta": 1e6, "partial_rotary_factor": 0.3}, 32)


def test_attention_positions_must_be_integers() -> None:
    q = Tensor.zeros((1, 2, 8))
    cache = Tensor.zeros((2, 4, 8))
    with pytest.raises(TypeError, match="kv_len must be an integer"):
        ops.attention(q, cache, cache, kv_len=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pos must be an integer"):
        ops.kv_cache_append(Tensor.zeros((1, 2, 8)), None, cache, None, 1.0)  # type: ignore[arg-type]
