"""Model tests for GLM-4.7-Flash."""

from __future__ import annotations

import pytest

from inference_pio_glm_4_7_flash.model import load


def test_loading_is_refused_clearly_until_implemented(tmp_path) -> None:
    with pytest.raises(NotImplementedError, match=r"glm-4\.7-flash"):
        load(tmp_path)
