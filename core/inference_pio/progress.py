"""Byte progress bars on stderr for long loads: tqdm's where tqdm is installed, otherwise a small
built-in one (the core depends on pluggy and jinja2 only)."""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, Protocol, TextIO


class ByteBar(Protocol):
    """What the loaders use of a bar."""

    def update(self, n: int) -> Any: ...

    def close(self) -> Any: ...


def _size(n: float, divisor: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < divisor or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= divisor
    return f"{n:.2f} TB"  # pragma: no cover


class SimpleBar:
    """``desc: 42% 1.20 GB/2.86 GB, 1.10 GB/s`` redrawn in place at most ten times a second."""

    def __init__(self, total: int, desc: str, file: TextIO, divisor: int = 1000) -> None:
        self.total, self.desc, self.file, self.divisor = max(total, 0), desc, file, divisor
        self.done = 0
        self.start = self.last = time.monotonic()
        self.closed = False

    def _draw(self, end: str = "") -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        pct = 100 * self.done // self.total if self.total else 100
        line = (
            f"\r{self.desc}: {pct:3d}% {_size(self.done, self.divisor)}/"
            f"{_size(self.total, self.divisor)}, {_size(self.done / elapsed, self.divisor)}/s"
        )
        try:
            self.file.write(line + end)
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken stderr does not stop a load
            self.closed = True

    def update(self, n: int) -> None:
        if self.closed:
            return
        self.done += n
        now = time.monotonic()
        if now - self.last >= 0.1:
            self.last = now
            self._draw()

    def close(self) -> None:
        if not self.closed:
            self._draw("\n")
            self.closed = True


def stderr_is_tty() -> bool:
    """Whether stderr is a terminal (where bars are drawn by default)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def byte_bar(total: int, desc: str, *, divisor: int = 1000, disable: bool = False) -> ByteBar:
    """A bar of ``total`` bytes on stderr (tqdm's if installed); ``disable``: one that draws
    nothing."""
    if disable:
        return _NullBar()
    try:
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return SimpleBar(total, desc, sys.stderr, divisor)
    bar: ByteBar = tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=divisor, desc=desc, file=sys.stderr
    )
    return bar


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


__all__ = ["ByteBar", "SimpleBar", "byte_bar", "stderr_is_tty"]
