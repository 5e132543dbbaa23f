"""Model tests for Qwen3-VL-2B-Instruct."""

from __future__ import annotations

import pytest

from inference_pio_qwen3_vl_2b.model import load


def test_loading_is_refused_clearly_until_implemented(tmp_path) -> None:
    with pytest.raises(NotImplementedError, match="qwen3-vl-2b-instruct"):
        load(tmp_path)
