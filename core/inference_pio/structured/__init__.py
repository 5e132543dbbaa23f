"""Structured outputs (constrained decoding): the model's tokens are masked at every step so
that its output matches a JSON schema, any JSON object, a regular expression or a Lark grammar,
as vLLM's guided decoding and llama.cpp's grammars do.

Built on `llguidance <https://github.com/guidance-ai/llguidance>`_, an optional dependency (the
``structured`` extra: ``pip install 'inference-pio[structured]'``): the core imports without it,
and a request that needs it raises :class:`StructuredOutputsUnavailable` naming the extra.

- :class:`Constraint` (:mod:`.constraint`): what a request's output must match; validated when
  made (a bad schema raises ValueError). ``SamplingParams(constraint=...)`` carries it. Object
  schemas that name their properties allow no others unless they say so
  (:func:`close_objects`, :mod:`.closed`), as vLLM's default backend generates them.
- :func:`ll_tokenizer` (:mod:`.vocab`): llguidance's view of a tokenizer, built once per
  tokenizer and cached.
- :class:`GrammarState` (:mod:`.matcher`): one sequence's matcher; masks each logits row
  (:func:`inference_pio.ops.mask_logits`) and advances with each chosen token.
- :func:`tool_call_constraint` (:mod:`.tools`): the tool-call markup of a model's format
  (``tool_choice`` "required" or a named function); string ``pattern``s of the XML formats
  through :func:`~inference_pio.structured.pattern.search_regex` (:mod:`.pattern`).
"""

from inference_pio.structured.closed import close_objects
from inference_pio.structured.constraint import (
    EXTRA,
    Constraint,
    StructuredOutputsUnavailable,
    require_llguidance,
)
from inference_pio.structured.matcher import GrammarState
from inference_pio.structured.tools import tool_call_constraint
from inference_pio.structured.vocab import ll_tokenizer

__all__ = [
    "EXTRA",
    "Constraint",
    "GrammarState",
    "StructuredOutputsUnavailable",
    "close_objects",
    "ll_tokenizer",
    "require_llguidance",
    "tool_call_constraint",
]
