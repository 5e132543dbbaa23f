"""One constrained sequence: its llguidance matcher and the bitmask it fills each step."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from inference_pio.structured.constraint import Constraint, require_llguidance
from inference_pio.structured.vocab import ll_tokenizer
from inference_pio.tensor import Tensor


class GrammarState:
    """The matcher of one sequence under ``constraint``: :meth:`mask` sets the logits of the
    tokens the grammar does not allow next to -inf (EOS only once the output is complete);
    :meth:`advance` takes the chosen token; :attr:`done` once nothing but EOS can follow."""

    def __init__(self, constraint: Constraint, tokenizer: Any, eos_ids: Sequence[int]) -> None:
        if not isinstance(constraint, Constraint):
            raise TypeError(f"constraint must be a Constraint, got {type(constraint).__name__}")
        llg = require_llguidance()
        vocab = ll_tokenizer(tokenizer, eos_ids)
        self.constraint = constraint
        self._matcher = llg.LLMatcher(vocab, constraint.grammar, log_level=0)
        if self._matcher.is_error():
            raise ValueError(
                f"invalid {constraint.kind} constraint: {_first_line(self._matcher.get_error())}"
            )
        words = (int(vocab.vocab_size) + 31) // 32
        #: the bitmask llguidance fills (bit i % 32 of word i // 32: token i allowed)
        self.bitmask = (ctypes.c_uint32 * words)()
        self._address = ctypes.addressof(self.bitmask)
        self._bytes = ctypes.sizeof(self.bitmask)

    @property
    def done(self) -> bool:
        """The output is complete: the grammar allows nothing but EOS (or took EOS)."""
        return bool(self._matcher.is_stopped())

    def fill(self) -> None:
        """Fills :attr:`bitmask` with the tokens allowed next."""
        self._matcher.unsafe_compute_mask_ptr(self._address, self._bytes)
        if self._matcher.is_error():  # the grammar outgrew llguidance's limits: the request's
            raise ValueError(  # constraint is at fault (a 400 in the server), not the engine
                f"constrained decoding failed: {_first_line(self._matcher.get_error())}"
            )

    def mask(self, logits: Tensor, in_place: bool = True) -> Tensor:
        """``logits`` (a [vocab] row, CPU or CUDA) with disallowed tokens at -inf: written into
        ``logits`` itself, or (``in_place=False``) into a new tensor, ``logits`` untouched."""
        from inference_pio import ops

        self.fill()
        if not logits.is_contiguous():
            logits, in_place = logits.contiguous(), True
        return ops.mask_logits(logits, self.bitmask, out=logits if in_place else None)

    def advance(self, token: int) -> None:
        """Takes ``token`` as the next one; RuntimeError if the grammar does not allow it (a
        token that did not come from a masked row)."""
        if not self._matcher.consume_token(int(token)):
            raise RuntimeError(
                f"token {token} does not fit the {self.constraint.kind} constraint: "
                f"{_first_line(self._matcher.get_error())}"
            )


def _first_line(message: str) -> str:
    """llguidance's error without the parser state and grammar it appends."""
    return message.strip().split("\n", 1)[0]


__all__ = ["GrammarState"]
