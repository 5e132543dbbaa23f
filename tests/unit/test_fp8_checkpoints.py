"""Block-scaled FP8 checkpoints (Qwen's and DeepSeek's -FP8 repositories): what the loader
accepts, what it refuses and why, and partial edge blocks against transformers on the same
weights dequantized."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("inference_pio_qwen3_0_6b")

from safetensors.torch import load_file, save_file  # noqa: E402

from inference_pio import load_model  # noqa: E402
from inference_pio.checkpoint import Checkpoint  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.errors import CheckpointError  # noqa: E402
from inference_pio.quantization import Fp8Weights, parse_quantization  # noqa: E402
from inference_pio.testing.conformance import hf_greedy, prompt, rel_error  # noqa: E402
from inference_pio.testing.fp8 import (  # noqa: E402
    dequantize_block_fp8,
    quantize_block_fp8,
    write_fp8_checkpoint,
)
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402
from inference_pio.testing.torch_bridge import to_torch  # noqa: E402

Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("f32")
    cfg = transformers.Qwen3Config(**tiny_qwen3_config(intermediate_size=88))
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg)
    return d


def _edit(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_tensors(d: Path, change: Any) -> None:
    f = d / "model.safetensors"
    tensors = load_file(str(f))
    change(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def _quant(config: dict[str, Any]) -> dict[str, Any]:
    return {"quantization_config": config}


def test_partial_blocks_match_transformers_on_the_dequantized_weights(
    source: Path, tmp_path: Path
) -> None:
    """Blocks of 24 x 40 leave partial blocks at every edge of the 64 / 88 wide projections
    (vLLM's and DeepSeek's ceil-div scale grid; transformers reads only grids that divide)."""
    fp8, deq = tmp_path / "fp8", tmp_path / "deq"
    names = write_fp8_checkpoint(source, fp8, deq, block=(24, 40))
    assert len(names) == 14  # 7 projections x 2 layers; embeddings and norms stay
    ref = transformers.Qwen3ForCausalLM.from_pretrained(deq, dtype=torch.float32).eval()
    ids = prompt(30, 4)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0, -1]
    model = load_model(fp8, progress=False)
    fm = model.model
    (logits,) = fm.forward([(ids, fm.new_cache(len(ids)))])
    assert rel_error(logits, want) <= 1e-4
    got = model.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids
    assert got == hf_greedy(ref, ids, 12)


def test_weights_view_dequantizes_and_hides_the_scales(source: Path, tmp_path: Path) -> None:
    fp8 = tmp_path / "fp8"
    write_fp8_checkpoint(source, fp8, block=(16, 16))
    ck = Checkpoint.open(fp8)
    weights = ck.weights
    assert isinstance(weights, Fp8Weights)
    assert Q + "_scale_inv" not in weights
    assert Q + "_scale_inv" not in set(weights)
    assert len(weights) == len(list(weights)) == len(load_file(str(source / "model.safetensors")))
    w = weights[Q]
    assert w.dtype == DType.float32  # the checkpoint's dtype (config.json "dtype": float32)
    assert weights[Q].data_ptr == w.data_ptr  # dequantized once (while in use)
    raw = load_file(str(fp8 / "model.safetensors"))
    want = dequantize_block_fp8(raw[Q], raw[Q + "_scale_inv"], (16, 16))
    assert torch.equal(to_torch(w), want)
    assert weights.quantized("model.norm.weight") is None
    pair = weights.quantized(Q)
    assert pair is not None
    assert pair[0].dtype == DType.float8_e4m3


def test_bf16_scales_and_the_default_bf16_dequantization(source: Path, tmp_path: Path) -> None:
    fp8 = tmp_path / "fp8"
    write_fp8_checkpoint(source, fp8, block=(16, 16))
    _edit(fp8 / "config.json", dtype="bfloat16")

    def to_bf16(t: dict[str, Any]) -> None:
        t[Q + "_scale_inv"] = t[Q + "_scale_inv"].to(torch.bfloat16)

    _edit_tensors(fp8, to_bf16)
    weights = Checkpoint.open(fp8).weights
    w = weights[Q]
    assert w.dtype == DType.bfloat16
    raw = load_file(str(fp8 / "model.safetensors"))
    want = dequantize_block_fp8(raw[Q], raw[Q + "_scale_inv"].float(), (16, 16))
    assert torch.equal(to_torch(w).float(), want.to(torch.bfloat16).float())
    assert load_model(fp8, progress=False).generate("hi", max_new_tokens=3).token_ids


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"quant_method": "awq", "bits": 4}, r"not supported for quant_method 'awq'"),
        ({"quant_method": "gptq"}, r"'gptq'"),
        ({"quant_method": "compressed-tensors"}, r"'compressed-tensors'"),
        ({"quant_method": "fp8", "fmt": "e5m2"}, r"e5m2"),
        ({"quant_method": "fp8", "weight_block_size": None}, r"per-tensor"),
        ({"quant_method": "fp8", "weight_block_size": [128]}, r"weight_block_size"),
        ({"quant_method": "fp8", "weight_block_size": [0, 128]}, r"weight_block_size"),
        ({"quant_method": "fp8", "weight_block_size": [True, 2]}, r"weight_block_size"),
        ({"quant_method": "fp8", "activation_scheme": "mx"}, r"activation_scheme"),
        ("fp8", r"must be an object"),
    ],
)
def test_unsupported_schemes_are_refused_by_name(config: Any, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        parse_quantization(_quant(config))


def test_broken_fp8_checkpoints_are_refused_clearly(source: Path, tmp_path: Path) -> None:
    fp8 = tmp_path / "fp8"
    write_fp8_checkpoint(source, fp8, block=(16, 16))

    def drop_scale(t: dict[str, Any]) -> None:
        del t[Q + "_scale_inv"]

    def bad_grid(t: dict[str, Any]) -> None:
        t[Q + "_scale_inv"] = torch.ones(2, 2)

    def int_scale(t: dict[str, Any]) -> None:
        t[Q + "_scale_inv"] = torch.ones(4, 4, dtype=torch.int32)

    def scale_for_a_bf16_weight(t: dict[str, Any]) -> None:
        t["model.norm.weight_scale_inv"] = torch.ones(1, 1)

    for change, match in (
        (drop_scale, r"q_proj.weight.*float8.*no .*q_proj.weight_scale_inv"),
        (scale_for_a_bf16_weight, r"model.norm.weight.*not float8.*model.norm.weight_scale_inv"),
        (bad_grid, r"weight_scale_inv.*shape \(2, 2\), expected \(4, 4\)"),
        (int_scale, r"weight_scale_inv.*dtype int32"),
    ):
        d = tmp_path / change.__name__
        write_fp8_checkpoint(source, d, block=(16, 16))
        _edit_tensors(d, change)
        with pytest.raises(CheckpointError, match=match):
            load_model(d, progress=False)
    # float8 weights in a checkpoint whose config.json does not say so
    d = tmp_path / "undeclared"
    write_fp8_checkpoint(source, d, block=(16, 16))
    cfg = json.loads((d / "config.json").read_text())
    del cfg["quantization_config"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"float8.*declares no FP8"):
        load_model(d, progress=False)


def test_quantizer_of_the_fixtures_matches_transformers() -> None:
    """The fixtures' block quantization writes the bytes and scales transformers' own
    ``Fp8Quantize`` writes, and transformers' ``Fp8Dequantize`` reads them as ours do."""
    from types import SimpleNamespace

    fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) * 0.05
    w[:32, :32] = 0.0  # an all-zero block
    q, s = quantize_block_fp8(w, (32, 32))
    cfg = SimpleNamespace(weight_block_size=(32, 32), scale_fmt=None)
    theirs = fp8.Fp8Quantize(SimpleNamespace(quantization_config=cfg))._quantize_one("x.weight", w)
    assert torch.equal(q.view(torch.uint8), theirs["x.weight"].view(torch.uint8))
    assert torch.equal(s, theirs["x.weight_scale_inv"])
    deq = dequantize_block_fp8(q, s, (32, 32))
    assert torch.equal(fp8.Fp8Dequantize(None)._dequantize_one(q, s, torch.float32), deq)
    assert float((deq - w).abs().max()) <= float(w.abs().max()) / 16  # 3 mantissa bits


def _projections(model: Any) -> list[Any]:
    out = []
    for layer in model.model.layers:
        at, mlp = layer.attention, layer.mlp
        out += [at.q_proj, at.k_proj, at.v_proj, at.o_proj, mlp.gate, mlp.up, mlp.down]
    return out


def test_fp8_checkpoint_projections_stay_fp8_on_the_cpu(source: Path, tmp_path: Path) -> None:
    fp8 = tmp_path / "fp8"
    write_fp8_checkpoint(source, fp8, block=(16, 16))
    model = load_model(fp8, progress=False)
    projections = _projections(model)
    assert all(p.quantized and p.weight.dtype == DType.float8_e4m3 for p in projections)
    assert model.model.lm_head.weight.dtype == DType.float32  # not quantized in the checkpoint


def test_quantize_at_load_matches_transformers_on_the_same_quantization(
    source: Path, tmp_path: Path
) -> None:
    """``quantization="fp8"`` on an unquantized checkpoint: the projections quantized per 128 x
    128 block as transformers' ``Fp8Quantize`` does (one partial block each here), against
    transformers running those dequantized weights."""
    fp8, deq = tmp_path / "fp8", tmp_path / "deq"
    write_fp8_checkpoint(source, fp8, deq, block=(128, 128))
    ref = transformers.Qwen3ForCausalLM.from_pretrained(deq, dtype=torch.float32).eval()
    model = load_model(source, progress=False, quantization="fp8")
    assert all(p.quantized for p in _projections(model))
    raw = load_file(str(fp8 / "model.safetensors"))
    q = model.model.layers[0].attention.q_proj
    assert torch.equal(to_torch(q.weight).view(torch.uint8), raw[Q].view(torch.uint8))
    assert torch.equal(to_torch(q.scale), raw[Q + "_scale_inv"])
    ids = prompt(30, 8)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0, -1]
    fm = model.model
    (logits,) = fm.forward([(ids, fm.new_cache(len(ids)))])
    assert rel_error(logits, want) <= 1e-4
    got = model.generate(ids, max_new_tokens=12, temperature=0.0, ignore_eos=True).token_ids
    assert got == hf_greedy(ref, ids, 12)


def test_quantization_option_is_checked(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quantization must be one of fp8"):
        load_model(source, progress=False, quantization="int4")
    # a model that holds its GPU layers in bf16 (the MoE layout) refuses -q fp8 on CUDA before
    # reading a weight; the dense Qwen3 plugins keep FP8 there (their fused CUDA step reads it)
    moe = pytest.importorskip("inference_pio_qwen3_coder_30b.testing")
    from inference_pio.testing.conformance import save_reference

    save_reference(tmp_path, "Qwen3MoeForCausalLM", moe.TINY, "float32", seed=4)
    with pytest.raises(ValueError, match=r"keeps bf16 weights on a GPU.*qwen3-0\.6b"):
        load_model(tmp_path, progress=False, quantization="fp8", device="cuda")


def test_quantize_at_load_keeps_moe_experts_in_fp8(tmp_path: Path) -> None:
    """Qwen3-Coder-30B-A3B's layout: attention and every expert quantized at load (the router
    stays), against transformers on the same quantization dequantized."""
    moe = pytest.importorskip("inference_pio_qwen3_coder_30b.testing")
    from inference_pio.testing.conformance import (
        count_fp8_linears,
        hf_greedy_with_logits,
        save_reference,
    )

    src, fp8, deq = tmp_path / "src", tmp_path / "fp8", tmp_path / "deq"
    save_reference(src, "Qwen3MoeForCausalLM", moe.TINY, "float32", seed=4)
    names = write_fp8_checkpoint(src, fp8, deq, block=(128, 128))
    cfg = transformers.Qwen3MoeConfig.from_pretrained(deq)
    cfg._experts_implementation = "eager"
    ref = transformers.Qwen3MoeForCausalLM.from_pretrained(deq, config=cfg, dtype=torch.float32)
    model = load_model(src, progress=False, quantization="fp8")
    assert count_fp8_linears(model.model) == len(names)  # the same weights quantized
    ids = prompt(20, 3)
    want, scores = hf_greedy_with_logits(ref.eval(), ids, 10)
    fm = model.model
    (logits,) = fm.forward([(ids, fm.new_cache(len(ids)))])
    assert rel_error(logits, scores[0]) <= 1e-4
    got = model.generate(ids, max_new_tokens=10, temperature=0.0, ignore_eos=True).token_ids
    assert got == want


def test_placement_sizes_do_not_dequantize(source: Path, tmp_path: Path) -> None:
    """Sizing a CPU/GPU split reads the headers: no weight is dequantized on the host for it."""
    from inference_pio.loading import _tensor_info, cache_itemsize

    fp8 = tmp_path / "fp8"
    write_fp8_checkpoint(source, fp8, block=(16, 16))
    ck = Checkpoint.open(fp8)
    weights = ck.weights
    assert isinstance(weights, Fp8Weights)
    info = _tensor_info(weights)
    assert info[Q] == (DType.float32, 64 * 64 * 4)  # as the model would hold it dequantized
    assert cache_itemsize(ck, None) == 4
    assert not weights._cache  # nothing was dequantized
