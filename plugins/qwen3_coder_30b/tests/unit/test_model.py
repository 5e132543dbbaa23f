"""Model tests for Qwen3-Coder-30B-A3B-Instruct."""

from __future__ import annotations

import pytest

from inference_pio_qwen3_coder_30b.model import load


def test_loading_is_refused_clearly_until_implemented(tmp_path) -> None:
    with pytest.raises(NotImplementedError, match="qwen3-coder-30b-a3b-instruct"):
        load(tmp_path)
