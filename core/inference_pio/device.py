"""Devices: ``"cpu"`` and ``"cuda:N"``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """Where a tensor's memory lives."""

    type: str
    index: int = 0

    @classmethod
    def parse(cls, value: Device | str) -> Device:
        """Parses ``"cpu"``, ``"cuda"`` (= ``"cuda:0"``) or ``"cuda:N"``."""
        if isinstance(value, Device):
            return value
        if hasattr(value, "layer_device"):
            # a hybrid Placement handed to a model builder that places everything at once
            raise ValueError(
                "this model cannot be split between the CPU and a GPU (--gpu-layers): its "
                "plugin puts every layer on one device"
            )
        if not isinstance(value, str):
            raise ValueError(
                f"expected a device ('cpu', 'cuda' or 'cuda:N'), got {type(value).__name__}"
            )
        text = str(value).strip().lower()
        kind, _, index = text.partition(":")
        if kind == "cpu" and not index:
            return CPU
        if kind == "cuda":
            if not index:
                return cls("cuda", 0)
            if index.isdigit():
                return cls("cuda", int(index))
        raise ValueError(f"invalid device {value!r}; expected 'cpu', 'cuda' or 'cuda:N'")

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"{self.type}:{self.index}"


CPU = Device("cpu", 0)
