"""My-Model: the model implementation, imported only when the model is loaded.

The template assembles a Llama-style dense decoder from the core's building blocks
(``inference_pio.nn.dense``) and wraps it in :class:`~inference_pio.causal_lm.CausalLM`, which
adds the tokenizer, chat template, sampling, streaming, batching and the CUDA paths. A model
that differs (another MLP, another attention) keeps this shape and changes the assembly; see the
plugin tutorial's section on ``model.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_pio.causal_lm import CausalLM, text_setup
from inference_pio.checkpoint import Checkpoint
from inference_pio.nn import dense
from inference_pio_my_model import MODEL_NAME

#: Whether the attention normalises q and k per head (Qwen3 does, Llama does not).
QK_NORM = False


def weight_shapes(config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of a checkpoint with this config: name -> (shape, init kind). The core builds
    ``synthetic:my-model`` checkpoints (random weights of the real size) from it."""
    return dense.weight_plan(dense.DenseConfig.from_hf(config, qk_norm=QK_NORM))


def load(path: Path, **options: Any) -> CausalLM:
    """The factory named by the plugin's ModelSpec: the model of a checkpoint directory.

    The core passes ``device`` (``"cpu"``, ``"cuda:0"`` or a CPU/GPU ``Placement``), ``dtype``
    (``None``: the checkpoint's), ``name`` (the name the model was asked for), ``progress``
    (show a progress bar while mapping the weights) and ``quantization`` (``"fp8"`` or None, one
    of the spec's ``quantizations``); accept ``**options`` so that options added later do not
    break the plugin. Raises CheckpointError for a missing or malformed checkpoint.
    """
    checkpoint = Checkpoint.open(
        path,
        progress=bool(options.get("progress", False)),
        quantization=options.get("quantization"),
    )
    cfg = dense.DenseConfig.from_hf(checkpoint.config, qk_norm=QK_NORM)
    setup = text_setup(checkpoint)  # its errors before the weights are read
    model = dense.build(checkpoint.weights, cfg, options.get("device", "cpu"), options.get("dtype"))
    return CausalLM(options.get("name", MODEL_NAME), checkpoint, model, setup=setup)
