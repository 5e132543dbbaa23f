"""Every INFERENCE_PIO_* variable the core or the native library reads is listed in
`inference-pio --help` (the environment section), so users can find them."""

from __future__ import annotations

import re
from pathlib import Path

from inference_pio.cli import EPILOG

ROOT = Path(__file__).resolve().parents[2]
READ = r"(?:getenv|environ\.get|environ\[)\(?\s*\"(INFERENCE_PIO_\w+)\""


def test_every_environment_variable_is_in_the_help() -> None:
    read: set[str] = set()
    sources = [*(ROOT / "core" / "inference_pio").rglob("*.py"), *(ROOT / "native").rglob("*.c*")]
    for path in sources:
        text = path.read_text(errors="replace")
        read |= set(re.findall(READ, text))
    read |= {"INFERENCE_PIO_STRICT_PLUGINS", "INFERENCE_PIO_PLUGINS", "INFERENCE_PIO_LIB"}
    listed = set(re.findall(r"INFERENCE_PIO_\w+", EPILOG))
    assert read - listed == set()
