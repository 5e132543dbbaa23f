"""Model tests for Qwen3-4B-Instruct-2507."""

from __future__ import annotations

import pytest

from inference_pio_qwen3_4b_instruct_2507.model import load


def test_loading_is_refused_clearly_until_implemented(tmp_path) -> None:
    with pytest.raises(NotImplementedError, match="qwen3-4b-instruct-2507"):
        load(tmp_path)
