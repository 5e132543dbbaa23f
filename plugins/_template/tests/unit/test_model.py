"""My-Model against transformers' LlamaForCausalLM on tiny random checkpoints: the core's shared
conformance suite (logits within 1e-4 in fp32, identical greedy tokens, bf16, batches of
different lengths, broken checkpoints rejected). Point ``hf_class_name`` at your model's
transformers class and ``tiny_config`` at a small config of its layout."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio.testing.conformance import CausalLMConformance
from inference_pio_my_model.config import real_config
from inference_pio_my_model.model import load

from .test_plugin import TINY


class TestMyModelConformance(CausalLMConformance):
    load = staticmethod(load)
    hf_class_name = "LlamaForCausalLM"
    real_config = staticmethod(real_config)
    tiny_config = TINY
