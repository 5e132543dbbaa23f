"""Model tests for Qwen3-Coder-Next."""

from __future__ import annotations

import pytest

from inference_pio_qwen3_coder_next.model import load


def test_loading_is_refused_clearly_until_implemented(tmp_path) -> None:
    with pytest.raises(NotImplementedError, match="qwen3-coder-next"):
        load(tmp_path)
