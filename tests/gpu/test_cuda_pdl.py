"""Programmatic dependent launch (on by default on Hopper and newer GPUs) changes when kernels
start, never what they compute: a model decodes the same greedy and seeded sampled tokens with it
off (``INFERENCE_PIO_CUDA_PDL=0``).

The library reads the variable once per process, so each setting runs in its own subprocess.
The models are the tiny bf16 checkpoints of the model tests: Qwen3-MoE (the multi-kernel CUDA
graph: GEMVs, q/k norm + RoPE + append, split attention and merge, router, expert GEMVs, combine),
Qwen3-Coder-Next (the captured op-by-op step: RMSNorms, conv1d, delta rule, softmax router) and
GLM-4.7-Flash (absorbed MLA attention on tensor cores, the sigmoid router). A kernel that reads
its predecessor's output before waiting for it would show up as different tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_pio import cuda  # noqa: E402
from inference_pio.testing.conformance import save_reference  # noqa: E402

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the model tests' configurations

MODELS = {
    "qwen3moe": ("inference_pio_qwen3_coder_30b", "test_cuda_moe_model", "Qwen3MoeForCausalLM"),
    "next": ("inference_pio_qwen3_coder_next", "test_cuda_next_model", "Qwen3NextForCausalLM"),
    "glm": ("inference_pio_glm_4_7_flash", "test_cuda_glm_model", "Glm4MoeLiteForCausalLM"),
}

DECODE = """
import json, sys
from importlib import import_module
load = import_module(sys.argv[1] + ".model").load
lm = load(sys.argv[2], device="cuda:0")
prompt = json.loads(sys.argv[3])
kw = dict(max_new_tokens=24, ignore_eos=True)
out = [
    lm.generate(prompt, temperature=0.0, **kw).token_ids,
    lm.generate(prompt, temperature=0.9, top_k=40, seed=7, **kw).token_ids,
]
print("TOKENS " + json.dumps(out))
"""


def _decode(package: str, ckpt: Path, prompt: list[int], pdl: str | None) -> Any:
    env = dict(os.environ)
    env.pop("INFERENCE_PIO_CUDA_PDL", None)
    if pdl is not None:
        env["INFERENCE_PIO_CUDA_PDL"] = pdl
    run = subprocess.run(
        [sys.executable, "-c", DECODE, package, str(ckpt), json.dumps(prompt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    line = [x for x in run.stdout.splitlines() if x.startswith("TOKENS ")][-1]
    return json.loads(line[len("TOKENS ") :])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_same_tokens_with_programmatic_dependent_launch_off(model: str, tmp_path: Path) -> None:
    package, test_module, hf_class = MODELS[model]
    pytest.importorskip(package)
    tiny = __import__(test_module).TINY
    save_reference(tmp_path, hf_class, tiny, "bfloat16", seed=11, logit_scale=8.0)
    g = torch.Generator().manual_seed(3)
    prompt = [int(i) for i in torch.randint(0, 500, (37,), generator=g)]
    default = _decode(package, tmp_path, prompt, None)
    off = _decode(package, tmp_path, prompt, "0")
    assert default == off
    assert len(default[0]) == len(default[1]) == 24
