"""GPU tests: skipped cleanly (with the reason) where CUDA is unavailable."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from inference_pio import cuda

    if cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"CUDA unavailable: {cuda.unavailable_reason()}")
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(skip)
