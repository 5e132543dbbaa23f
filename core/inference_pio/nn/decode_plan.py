"""Batch-1 CPU decode replayed from recorded native calls, without the Python layer code.

A decode step of a :class:`~inference_pio.nn.decoder.DecoderModel` on the CPU makes about 300
native calls whose arguments are the same every token (weights, scratch buffers, the sequence's
KV cache, shapes) except the few that name the cache length (the KV append slot, the attention
length). Walking the layers in Python costs about 1.5 ms per token, 6% of a Qwen3-0.6B token on
a 2-core machine. So the first decode steps of a sequence run normally with the backend recording
their calls; the recordings at lengths L and L+1 must have the same calls with arguments that are
equal or differ by exactly one (those are ``length + offset``); the step at L+2 is recorded again
and must match what the plan predicts. From then on a step writes the token id and position into
the input buffers, patches the length-dependent arguments and calls the recorded functions
directly. Any mismatch (a model whose calls depend on the length in another way) leaves the plan
off for that cache, and every step runs the normal path. Results are bitwise the same either way
(a test checks).

A plan belongs to the thread that recorded it (the scratch buffers are per thread) and keeps
those buffers alive; a step from another thread starts a new plan for that thread (recorded
normally first). ``INFERENCE_PIO_DECODE_PLAN=0`` turns plans off.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from inference_pio._native import check
from inference_pio.tensor import Tensor

Call = tuple[str, Any, tuple[Any, ...]]

#: Steps recorded before replay: two to find the length-dependent arguments, one to verify.
RECORDED_STEPS = 3


def enabled() -> bool:
    """Whether decode plans are on (``INFERENCE_PIO_DECODE_PLAN``, default on)."""
    return os.environ.get("INFERENCE_PIO_DECODE_PLAN", "1") not in ("0", "false", "no", "off")


class DecodePlan:
    """Recorded decode step of one sequence's cache; see the module docstring."""

    def __init__(
        self, ids: Tensor, positions: Tensor, logits: Tensor, buffers: object = None
    ) -> None:
        """``buffers``: whatever owns the memory the recorded calls point into besides the
        model and the cache (the recording thread's scratch buffers), kept alive with the plan."""
        self.thread = threading.get_ident()
        self.buffers = buffers
        self.ids, self.positions, self.logits = ids, positions, logits
        self.recordings: list[tuple[int, list[Call]]] = []
        self.calls: list[tuple[str, Any, list[Any]]] | None = None
        self.patches: list[tuple[list[Any], int, int]] = []
        self.refused = False

    @property
    def ready(self) -> bool:
        return self.calls is not None and not self.refused

    def add_recording(self, length: int, calls: list[Call]) -> None:
        """Adds the calls of the step that ran at cache length ``length``."""
        if self.refused:
            return
        if len(self.recordings) < RECORDED_STEPS - 1:
            if self.recordings and length != self.recordings[-1][0] + 1:
                # the cache moved by other calls in between (a speculative verification step,
                # a rollback): the two recordings must be of consecutive lengths, start again
                self.recordings.clear()
            self.recordings.append((length, calls))
            if len(self.recordings) == RECORDED_STEPS - 1:
                self._build()
            return
        if self.calls is None or not self._predicts(length, calls):
            self.refused = True
            self.calls = None
        else:
            self.recordings.clear()

    def _build(self) -> None:
        (l1, c1), (l2, c2) = self.recordings
        if l2 != l1 + 1 or len(c1) != len(c2):
            self.refused = True
            return
        calls: list[tuple[str, Any, list[Any]]] = []
        patches: list[tuple[list[Any], int, int]] = []
        for (op1, f1, a1), (op2, f2, a2) in zip(c1, c2, strict=True):
            if op1 != op2 or f1 is not f2 or len(a1) != len(a2):
                self.refused = True
                return
            args = list(a2)
            for j, (v1, v2) in enumerate(zip(a1, a2, strict=True)):
                if same_arg(v1, v2):
                    continue
                if type(v1) is int and type(v2) is int and v2 - v1 == 1:
                    patches.append((args, j, v2 - l2))
                    continue
                self.refused = True
                return
            calls.append((op2, f2, args))
        self.calls, self.patches = calls, patches

    def _predicts(self, length: int, calls: list[Call]) -> bool:
        assert self.calls is not None
        self._patch(length)
        if len(calls) != len(self.calls):
            return False
        return all(
            op == op_p
            and f is f_p
            and len(a) == len(a_p)
            and all(same_arg(v, v_p) for v, v_p in zip(a, a_p, strict=True))
            for (op, f, a), (op_p, f_p, a_p) in zip(calls, self.calls, strict=True)
        )

    def _patch(self, length: int) -> None:
        for args, j, offset in self.patches:
            args[j] = length + offset

    def run(self, token: int, length: int, position_offset: int = 0) -> Tensor:
        """Replays one step at cache ``length`` for ``token`` (rotary position ``length +
        position_offset``); returns a fresh logits tensor."""
        assert self.calls is not None
        ctypes.c_int32.from_address(self.ids.data_ptr).value = token
        ctypes.c_int32.from_address(self.positions.data_ptr).value = length + position_offset
        self._patch(length)
        for op, f, args in self.calls:
            rc = f(*args)
            if rc:
                check(rc, op)
        return copy_logits(self.logits)[0]


def same_arg(a: Any, b: Any) -> bool:
    """Whether two recorded arguments are the same value (ctypes arrays, e.g. the pointer lists
    of a grouped linear, compare by content)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, ctypes.Array):
        return list(a) == list(b)
    return bool(a == b)


def copy_logits(logits: Tensor) -> Tensor:
    """A fresh CPU tensor holding ``logits`` (a scratch buffer the next step overwrites)."""
    out = Tensor.empty(logits.shape, logits.dtype, logits.device)
    ctypes.memmove(out.data_ptr, logits.data_ptr, logits.nbytes)
    return out
