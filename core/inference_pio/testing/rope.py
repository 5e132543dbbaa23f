"""Scaled-rope checkpoints against transformers (test-only: imports torch/transformers).

:func:`check_scaled_rope` saves a tiny random checkpoint whose config scales its rope (YaRN,
linear, llama3) with a tiny ``original_max_position_embeddings``, so that a prompt of a few dozen
tokens reaches positions where the scaling changes the tables, and compares a plugin's model with
transformers there: fp32 logits of a prefill and of decode steps (relative error <= 1e-4), bf16
logits (<= 2e-2) and identical greedy tokens. The checkpoint's config.json can be rewritten in the
older ``rope_theta`` + ``rope_scaling`` form (``{"type": ...}``) that released checkpoints use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inference_pio.testing.conformance import hf_greedy, prompt, rel_error, save_reference


def legacy_rope_config(directory: Path) -> dict[str, Any]:
    """Rewrites ``directory/config.json`` (written by transformers 5 with ``rope_parameters``)
    as older checkpoints spell it: ``rope_theta`` at the top level and ``rope_scaling`` with the
    type under ``type``. Returns the new config."""
    path = directory / "config.json"
    cfg: dict[str, Any] = json.loads(path.read_text())
    params = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = params.pop("rope_theta")
    params["type"] = params.pop("rope_type")
    cfg["rope_scaling"] = params
    path.write_text(json.dumps(cfg, indent=2))
    return cfg


def check_scaled_rope(
    load: Callable[..., Any],
    hf_class_name: str,
    config: dict[str, Any],
    directory: Path,
    dtype: str = "float32",
    seed: int = 0,
    legacy: bool = False,
    prompt_len: int = 48,
    new_tokens: int = 16,
    qk_scale: float = 1.0,
    qk_weights: tuple[str, ...] = ("q_proj.weight", "k_proj.weight"),
) -> None:
    """``config`` (with a scaled rope) against transformers; ``legacy``: the checkpoint's
    config.json in the ``rope_scaling`` form. In fp32 also checks that the scaling matters: the
    same weights with plain RoPE give logits far (> 1e-2) from the reference's. ``qk_scale``
    multiplies the weights whose names end with one of ``qk_weights`` (the q and k projections:
    a layout without q/k norms attends almost uniformly at random init, where positions hardly
    matter)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    bf16 = dtype == "bfloat16"
    ref = save_reference(directory, hf_class_name, config, dtype, seed, 8.0 if bf16 else 1.0)
    if qk_scale != 1.0:
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if name.endswith(qk_weights):
                    p.mul_(qk_scale)
        ref.save_pretrained(directory)
    if legacy:
        legacy_rope_config(directory)
    model = load(directory)
    fm = model.model
    assert fm.rotary.scaled, "the model built plain rope tables"
    ids = prompt(prompt_len + 4, seed + 17)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].float()
    if not bf16:
        # the same weights with plain rope: far from the reference where positions exceed the
        # original context (else this test could not tell the scaling from its absence; bf16
        # rounding noise is of the same order in tiny models, so fp32 checks it)
        plain_cfg = {
            k: v for k, v in config.items() if k not in ("rope_parameters", "rope_scaling")
        }
        scaled = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        plain_cfg["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": scaled.get("rope_theta", config.get("rope_theta", 10000.0)),
            **{k: v for k, v in scaled.items() if k == "partial_rotary_factor"},
        }
        cls = getattr(transformers, hf_class_name)
        plain_config = cls.config_class(**plain_cfg)
        plain_config._attn_implementation = "eager"
        plain_config._experts_implementation = "eager"
        plain = cls(plain_config).eval()
        plain.load_state_dict(ref.state_dict())
        with torch.no_grad():
            unscaled = plain(torch.tensor([ids])).logits[0].float()
        inert = rel_error(unscaled[-1], want[-1])
        assert inert > 1e-2, f"the scaling is inert ({inert:.3g})"

    cache = fm.new_cache(len(ids))
    (logits,) = fm.forward([(ids[:prompt_len], cache)])
    errors = [rel_error(logits, want[prompt_len - 1])]
    for i in range(prompt_len, len(ids)):
        (logits,) = fm.forward([([ids[i]], cache)])
        errors.append(rel_error(logits, want[i]))
    assert max(errors) <= (2e-2 if bf16 else 1e-4), f"relative errors per position: {errors}"
    got = model.generate(ids, max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    assert got.token_ids == hf_greedy(ref, ids, new_tokens)


__all__ = ["check_scaled_rope", "legacy_rope_config"]
