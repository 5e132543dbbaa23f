"""Which models and settings the batched CUDA graph decoder takes (checks that need no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio.checkpoint import Checkpoint
from inference_pio.dtypes import DType
from inference_pio.nn import cuda_batch_graph, dense
from inference_pio.nn.attention import Attention, KVTable
from inference_pio.nn.decoder import DecoderModel
from inference_pio.tensor import Tensor
from inference_pio.testing.conformance import save_reference
from inference_pio.testing.tiny import tiny_qwen3_config

CONFIG = tiny_qwen3_config(max_position_embeddings=128)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DecoderModel:
    path: Path = tmp_path_factory.mktemp("batch-graph")
    save_reference(path, "Qwen3ForCausalLM", CONFIG, "bfloat16", seed=2)
    ck = Checkpoint.open(path)
    return dense.build(ck.weights, dense.DenseConfig.from_hf(ck.config))


def test_cpu_models_and_other_objects_decode_call_by_call(model: DecoderModel) -> None:
    assert cuda_batch_graph.for_model(model, 8, 64) is None
    assert cuda_batch_graph.unsupported_reason(model, 8) == "not on a CUDA device"
    assert cuda_batch_graph.unsupported_reason(object(), 8) == "not a DecoderModel"
    assert cuda_batch_graph.for_model(object(), 8, 64) is None


def test_blocks_with_their_own_call_are_refused(
    model: DecoderModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reasons past the device check, on the CPU model with its device patched to cuda."""
    monkeypatch.setattr(model, "device", type(model.device).parse("cuda:0"))
    assert cuda_batch_graph.unsupported_reason(model, 8) is None
    assert "at most 16" in str(cuda_batch_graph.unsupported_reason(model, 17))
    monkeypatch.setenv("INFERENCE_PIO_CUDA_BATCH_GRAPH", "0")
    assert "INFERENCE_PIO_CUDA_BATCH_GRAPH=0" in str(cuda_batch_graph.unsupported_reason(model, 8))
    monkeypatch.delenv("INFERENCE_PIO_CUDA_BATCH_GRAPH")

    class Logged(Attention):
        def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return super().__call__(*args, **kwargs)

    at = model.layers[1].attention
    monkeypatch.setattr(at, "__class__", Logged)
    assert "attention" in str(cuda_batch_graph.unsupported_reason(model, 8))


@pytest.mark.parametrize(
    ("rows", "capacity", "want"), [(1, 4096, 32), (8, 4096, 5), (16, 256, 2), (2, 100, 1)]
)
def test_key_slices_per_row(rows: int, capacity: int, want: int) -> None:
    """About two blocks per multiprocessor over the rows' kv heads, slices of 128 keys or more,
    at most 32, and never more than the workspace holds."""
    ws = Tensor.empty((16 * 32 * 64 * (128 + 2),), DType.float32)
    t = KVTable(0, 0, 0, 0, capacity, DType.bfloat16, ws, True, sms=132)
    assert t.splits(rows, 32, 8, 128) == want
    little = ws.narrow(0, 0, rows * 32 * 130)  # room for one slice per row
    small = KVTable(0, 0, 0, 0, capacity, DType.bfloat16, little, True, sms=132)
    assert small.splits(rows, 32, 8, 128) == 1


def test_fp8_blocks_other_than_128_take_the_batch_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """linear_fp8's GEMV (up to 16 rows) reads any block with block_k % 16 == 0, so the batch
    graphs take such FP8 models (docs/quantization.md); only the fused batch-1 step needs 128 x
    128 blocks."""
    from inference_pio.nn import cuda_graph
    from inference_pio.testing.fp8 import write_fp8_checkpoint

    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load

    save_reference(tmp_path / "bf16", "Qwen3ForCausalLM", CONFIG, "bfloat16", seed=2)
    for block in ((64, 64), (128, 128)):
        out = tmp_path / f"fp8_{block[0]}"
        write_fp8_checkpoint(tmp_path / "bf16", out, block=block)
        m = load(out, device="cpu").model  # FP8 projections kept (aligned copies)
        assert m.layers[0].mlp.down.block == block
        for layer in m.layers:  # fresh (aligned) copies, as on a GPU; the CPU maps the file
            at, mlp = layer.attention, layer.mlp
            for lin in (at.q_proj, at.k_proj, at.v_proj, at.o_proj, mlp.gate, mlp.up, mlp.down):
                lin.weight, lin.scale = lin.weight.clone(), lin.scale.clone()
        monkeypatch.setattr(m, "device", type(m.device).parse("cuda:0"))
        assert cuda_batch_graph.unsupported_reason(m, 8) is None
        fused = cuda_graph.fused_unsupported_reason(m)
        assert (fused is not None and "128 x 128" in fused) == (block != (128, 128))
