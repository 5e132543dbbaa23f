"""Synthetic checkpoints check the free disk space before writing anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_pio.dtypes import DType
from inference_pio.errors import CheckpointError
from inference_pio.synthetic import write_random_safetensors


def test_a_checkpoint_larger_than_the_free_space_is_refused_before_writing(tmp_path: Path) -> None:
    plan = {"model.embed_tokens.weight": ((1 << 40, 1 << 20), "normal")}  # 2^61 bytes in bf16
    target = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError, match="INFERENCE_PIO_CACHE"):
        write_random_safetensors(target, plan, DType.bfloat16, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_small_checkpoint_is_written(tmp_path: Path) -> None:
    plan = {"w": ((4, 8), "normal"), "n": ((8,), "norm")}
    target = tmp_path / "model.safetensors"
    write_random_safetensors(target, plan, DType.bfloat16, progress=False)
    assert target.stat().st_size > 2 * (32 + 8)
    assert list(tmp_path.iterdir()) == [target]
