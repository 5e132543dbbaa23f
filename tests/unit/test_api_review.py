"""Library-user API: bad arguments are clear errors, not silently changed or ignored (review)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference_pio.sampling import SamplingParams

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from inference_pio.loading import load_model
    from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config

    d: Path = tmp_path_factory.mktemp("tiny")
    save_tiny_causal_lm(
        d,
        transformers.Qwen3ForCausalLM,
        transformers.Qwen3Config(**tiny_qwen3_config()),
        eos_id=511,
    )
    return load_model(d, progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stop_token_ids": "151645"},
        {"stop_token_ids": [1.7]},
        {"stop_token_ids": [-5]},
        {"stop_token_ids": [True]},
        {"stop_token_ids": 12},
        {"stop": 5},
        {"ignore_eos": "no"},
    ],
)
def test_sampling_params_refuse_coerced_values(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)


def test_batch_manager_submit_refuses_non_integer_ids(model: Any) -> None:
    from inference_pio.batching import BatchManager

    manager = BatchManager(model.model, model.tokenizer, model.eos_ids)
    for ids in ([104, 1.5], [True, 3]):
        with pytest.raises(TypeError, match="integers"):
            manager.submit(ids, SamplingParams(max_new_tokens=2))


def test_generate_batch_refuses_a_single_string(model: Any) -> None:
    with pytest.raises(TypeError, match="list of requests"):
        model.generate_batch("hello")
    with pytest.raises(TypeError, match="list of requests"):
        model.infer_batch("hello")


def test_detokenize_refuses_ids_outside_the_vocabulary(model: Any) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.detokenize([97, 10**6])
    assert model.detokenize([97, 98]) == "ab"


def test_load_model_refuses_unknown_options_and_takes_max_batch_size(model: Any) -> None:
    from inference_pio.loading import load_model

    path = model.checkpoint.path
    with pytest.raises(TypeError, match="dtyp"):
        load_model(path, progress=False, dtyp="float32")
    assert load_model(path, progress=False, max_batch_size=2).max_batch_size == 2


def test_apply_chat_template_tokenize_gives_the_prompt_ids(model: Any) -> None:
    """tokenize=True returns ids, as transformers' does (it used to reach the template as a
    variable and the text came back)."""
    messages = [{"role": "user", "content": "hi"}]
    text = model.apply_chat_template(messages)
    assert isinstance(text, str)
    assert model.apply_chat_template(messages, tokenize=False) == text
    assert model.apply_chat_template(messages, tokenize=True) == model.tokenize(text)
