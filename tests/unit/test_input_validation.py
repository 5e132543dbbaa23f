"""Bad input to the public API is a clear Python error (found by an adversarial review): 0-d
tensors where a row is needed, booleans where integers are, values that float32 or a C int
would silently change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from inference_pio import ops
from inference_pio.sampling import Sampler, SamplingParams
from inference_pio.tensor import Tensor


def scalar() -> Tensor:
    return Tensor.from_list(1.0, "float32")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ops.softmax(scalar()), ValueError, "0-d"),
        (lambda: ops.log_softmax(scalar()), ValueError, "0-d"),
        (lambda: scalar().select(0, 0), IndexError, "0-d"),
        (lambda: ops.topk(Tensor.from_list([1.0, 2.0], "float32"), True), ValueError, "k must"),
        (lambda: ops.set_num_threads(2**32 + 2), ValueError, "4096"),
        (lambda: ops.set_num_threads(True), TypeError, "int"),
        (lambda: SamplingParams(top_p=1e-300), ValueError, "top_p"),
        (lambda: SamplingParams(repetition_penalty=1e-300), ValueError, "repetition_penalty"),
        (
            lambda: Sampler(SamplingParams(repetition_penalty=1.2), [1, 2**40]),
            ValueError,
            "not a valid id",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call: Callable[[], Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()
