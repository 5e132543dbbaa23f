"""Model tests for Qwen3-0.6B."""

from __future__ import annotations

import pytest

from inference_pio_qwen3_0_6b.model import load


def test_loading_is_refused_clearly_until_implemented(tmp_path) -> None:
    with pytest.raises(NotImplementedError, match="qwen3-0.6b"):
        load(tmp_path)
