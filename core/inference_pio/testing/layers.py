"""Layer-level comparisons at real model sizes (test-only: imports torch/transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference_pio.testing.conformance import rel_error
from inference_pio.testing.tiny import randomize_norms


def check_real_size_dense_layer(
    directory: Path, hf_class_name: str, config: dict[str, Any], tokens: int
) -> None:
    """One decoder layer with the real dimensions (fp32, vocab shrunk to 64) against transformers:
    a prefill of ``tokens`` tokens, relative error ≤ 1e-4."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from inference_pio.backend import backend
    from inference_pio.checkpoint import Checkpoint
    from inference_pio.dtypes import DType
    from inference_pio.nn import dense
    from inference_pio.nn.attention import Segment
    from inference_pio.tensor import Tensor

    cls = getattr(transformers, hf_class_name)
    fields = {k: v for k, v in config.items() if k not in ("architectures", "layer_types")}
    fields.update(num_hidden_layers=1, vocab_size=64)
    cfg = cls.config_class(**fields)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = cls(cfg).eval()
    randomize_norms(ref)
    ref.save_pretrained(directory)
    x = torch.randn(1, tokens, cfg.hidden_size)
    with torch.no_grad():
        cos, sin = ref.model.rotary_emb(x, torch.arange(tokens)[None])
        mask = torch.full((tokens, tokens), float("-inf")).triu(1)[None, None]
        want = ref.model.layers[0](x, attention_mask=mask, position_embeddings=(cos, sin))
        want = want[0] if isinstance(want, tuple) else want
    ck = Checkpoint.open(directory)
    model = dense.build(ck.weights, dense.DenseConfig.from_hf(ck.config))
    be = backend("cpu")
    xt = Tensor.from_list(x[0].tolist(), DType.float32)
    cache = model.new_cache(tokens)
    positions = Tensor.from_list(list(range(tokens)), DType.int32)
    c, s = model.rotary.tables(be, positions, DType.float32)
    model.layers[0](be, xt, [Segment(0, tokens, 0)], [cache.layers[0]], c, s)
    err = rel_error(xt, want[0])
    assert err <= 1e-4, f"relative error {err:.3g}"
