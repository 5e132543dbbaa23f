"""`inference-pio generate/bench` on a tiny checkpoint: the CLI contract scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("inference_pio_qwen3_0_6b")

from inference_pio.testing.conformance import hf_greedy, save_reference

TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    rope_theta=1e6,
    tie_word_embeddings=True,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    d = tmp_path_factory.mktemp("tiny-qwen3")
    return d, save_reference(d, "Qwen3ForCausalLM", TINY, "float32", seed=9)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference_pio", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _hub_cache(root: Path, repo_id: str, files: Path, commit: str = "0" * 40) -> None:
    """The Hugging Face Hub cache's layout for one snapshot of repo_id holding files' contents."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())


def test_generate_from_a_hub_repo_id_in_the_cache(
    checkpoint: tuple[Path, object], tmp_path: Path
) -> None:
    """`--model owner/name` reads the Hub cache's snapshot (offline here: no download), like
    transformers and vLLM; a repo missing from the cache is one clear error."""
    pytest.importorskip("huggingface_hub")
    import os

    path, _ = checkpoint
    _hub_cache(tmp_path / "hub", "tiny-org/tiny-qwen3", path)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    args = ["--prompt", "hello world", "--max-new-tokens", "6", "--temperature", "0", "--json"]
    from_dir = _cli("generate", "--model", str(path), *args)
    from_hub = _cli("generate", "--model", "tiny-org/tiny-qwen3", *args, env=env)
    assert from_hub.returncode == 0, from_hub.stderr
    assert json.loads(from_hub.stdout)["token_ids"] == json.loads(from_dir.stdout)["token_ids"]
    missing = _cli("generate", "--model", "tiny-org/absent", "--prompt", "x", env=env)
    assert missing.returncode == 1
    assert "not in the local Hub cache" in missing.stderr
    assert "Traceback" not in missing.stderr
    # what AutoTokenizer / AutoConfig leave behind: the json files without the weights
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in path.glob("*.json"):
        (partial / f.name).write_bytes(f.read_bytes())
    _hub_cache(tmp_path / "hub", "tiny-org/json-only", partial)
    out = _cli("generate", "--model", "tiny-org/json-only", "--prompt", "x", env=env)
    assert out.returncode == 1
    assert "is incomplete (no *.safetensors file)" in out.stderr


def test_generate_json_contract_and_greedy_tokens(checkpoint: tuple[Path, object]) -> None:
    path, ref = checkpoint
    out = _cli(
        "generate",
        "--model",
        str(path),
        "--prompt",
        "hello world",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {
        "text",
        "token_ids",
        "prompt_tokens",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "time_to_first_token_s",
        "peak_rss_bytes",
    }
    prompt_ids = list(b"hello world")
    assert data["prompt_tokens"] == len(prompt_ids)
    want = hf_greedy(ref, prompt_ids, 12)
    eos = 511
    expected = want[: want.index(eos)] if eos in want else want
    assert data["token_ids"] == expected
    assert data["peak_rss_bytes"] > 0


def test_generate_streams_text(checkpoint: tuple[Path, object]) -> None:
    out = _cli(
        "generate",
        "--model",
        str(checkpoint[0]),
        "--prompt",
        "abc",
        "-n",
        "5",
        "--temperature",
        "0.8",
        "--seed",
        "1",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n")


def test_bench_json(checkpoint: tuple[Path, object]) -> None:
    out = _cli(
        "bench",
        "--model",
        str(checkpoint[0]),
        "--prompt-tokens",
        "64",
        "--new-tokens",
        "8",
        "--json",
        "--bandwidth",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["prefill_tokens_per_s"] > 0
    assert data["new_tokens"] == 8
    # the machine's read bandwidth and the decode's share of it
    assert data["read_gb_per_s"] > 0
    want = data["decode_gb_per_s"] / data["read_gb_per_s"]
    assert data["decode_bandwidth_fraction"] == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("/nonexistent/dir", [], "neither a checkpoint directory"),
        ("qwen3-0.6b", [], "synthetic:qwen3-0.6b"),
        ("qwen3-0.6b", [], "Qwen/Qwen3-0.6B"),
        (None, ["--temperature", "-1"], "temperature"),
        (None, ["--top-p", "2"], "top_p"),
    ],
)
def test_bad_input_is_one_clear_error(
    checkpoint: tuple[Path, object], model: str | None, extra: list[str], message: str
) -> None:
    out = _cli("generate", "--model", model or str(checkpoint[0]), "--prompt", "x", *extra)
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_cuda_device_without_cuda_is_one_clear_error(checkpoint: tuple[Path, object]) -> None:
    """`--device cuda` where CUDA cannot be used says why in one line, like any bad option."""
    from inference_pio import cuda

    if cuda.is_available():
        pytest.skip("CUDA is available here: the command would run")
    out = _cli("generate", "--model", str(checkpoint[0]), "--prompt", "x", "--device", "cuda")
    assert out.returncode == 1
    assert "CUDA is not available" in out.stderr
    assert cuda.unavailable_reason() in out.stderr
    assert "Traceback" not in out.stderr


def _chat(path: Path, stdin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference_pio", "chat", "-m", str(path), "-t", "0", *extra],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_chat_survives_a_message_too_long_and_knows_its_commands(
    checkpoint: tuple[Path, object],
) -> None:
    """A message that does not fit the context is reported and dropped; the session goes on.
    Blank lines are skipped, /help and /reset answer on stderr, /bye ends the session, and
    piped input prints no prompts."""
    path = checkpoint[0]
    out = _chat(
        path,
        "\n".join(["hi", "z" * 400, "", "/help", "/nope", "/reset", "hi", "/bye", "x"]),
        "-n",
        "3",
    )
    assert out.returncode == 0, out.stderr
    assert "context" in out.stderr
    assert "dropped" in out.stderr
    assert "/reset" in out.stderr
    assert "(conversation cleared)" in out.stderr
    assert "unknown command '/nope'" in out.stderr  # not sent to the model
    assert "Traceback" not in out.stderr
    half = len(out.stdout) // 2  # two replies to "hi" in a fresh conversation, each + "\n"
    assert out.stdout.endswith("\n")
    assert out.stdout[:half] == out.stdout[half:]
    assert ">>>" not in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--repeats", "0"], "--repeats must be at least 1"),
        (["bench", "--prompt-tokens", "512"], "does not fit the model's context of 256"),
        (["bench", "--prompt-tokens", "16", "--decode-prompt-tokens", "32"], "more than"),
        (["generate", "-p", "x", "--no-think"], "add --chat"),
    ],
)
def test_bad_command_options_are_one_clear_error(
    checkpoint: tuple[Path, object], args: list[str], message: str
) -> None:
    out = _cli(*args, "--model", str(checkpoint[0]))
    assert out.returncode == 1, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_reads_the_prompt_from_stdin(checkpoint: tuple[Path, object]) -> None:
    args = ["generate", "-m", str(checkpoint[0]), "-n", "4", "-t", "0", "--json"]
    piped = subprocess.run(
        [sys.executable, "-m", "inference_pio", *args, "-p", "-"],
        input="hello world",
        capture_output=True,
        text=True,
        timeout=300,
    )
    direct = _cli(*args, "-p", "hello world")
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["token_ids"] == json.loads(direct.stdout)["token_ids"]


def test_serve_refuses_a_bad_or_taken_port_before_loading(checkpoint: tuple[Path, object]) -> None:
    pytest.importorskip("uvicorn")
    import socket

    bad = _cli("serve", "-m", str(checkpoint[0]), "--port", "99999")
    assert bad.returncode == 2
    assert "0 to 65535" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _cli("serve", "-m", "/nonexistent/dir", "--port", str(port))
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr  # before the model is looked for
    assert "Traceback" not in out.stderr


def test_serve_takes_a_batch_size(checkpoint: tuple[Path, object]) -> None:
    """`serve --max-batch-size N` bounds the sequences decoded together (vLLM's
    --max-num-seqs, llama.cpp's --parallel); it answers requests beyond it in turn."""
    pytest.importorskip("uvicorn")
    openai = pytest.importorskip("openai")
    import socket
    import threading
    import time

    bad = _cli("serve", "-m", str(checkpoint[0]), "--max-batch-size", "0")
    assert bad.returncode == 2
    assert "at least 1" in bad.stderr
    bad = _cli("serve", "-m", str(checkpoint[0]), "--prefix-cache-mib", "0")
    assert bad.returncode == 2
    assert "at least 1" in bad.stderr
    bad = _cli("serve", "-m", str(checkpoint[0]), "--max-num-batched-tokens", "-1")
    assert bad.returncode == 2
    assert "at least 0" in bad.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "-m", str(checkpoint[0]), "--port", str(port), "--max-batch-size", "1"]
    args += ["--no-enable-prefix-caching", "--max-num-batched-tokens", "16"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_pio", *args], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "batches of up to 1 sequences; prefix caching off" in line
        assert "chunked prefill, 16 tokens a step" in line
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60
        )
        deadline = time.time() + 60
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert time.time() < deadline, "the server did not come up"
                time.sleep(0.2)
        texts: list[str] = []

        def ask() -> None:
            r = client.completions.create(
                model=client.models.list().data[0].id, prompt="hi", max_tokens=4, temperature=0
            )
            texts.append(r.choices[0].text)

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(texts) == 3
        assert len(set(texts)) == 1  # one at a time, the same greedy text
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_closed_stdout_ends_quietly() -> None:
    """`inference-pio models | head -1`: no BrokenPipeError traceback."""
    out = subprocess.run(
        f"{sys.executable} -m inference_pio plugins | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in out.stderr
    assert "BrokenPipe" not in out.stderr


def test_a_bad_generation_config_is_the_checkpoints_error(
    checkpoint: tuple[Path, object], tmp_path: Path
) -> None:
    """A wrong default in generation_config.json is reported at load, naming the file, rather
    than failing every request later."""
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(checkpoint[0], d)
    (d / "generation_config.json").write_text(json.dumps({"temperature": "hot"}))
    out = _cli("generate", "-m", str(d), "-p", "x")
    assert out.returncode == 1
    assert "generation_config.json" in out.stderr
    assert "temperature" in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_says_when_the_context_filled_up(checkpoint: tuple[Path, object]) -> None:
    """Asking for more tokens than the context holds ends with a note on stderr (unless an eos
    ended the text first, which --json tells)."""
    args = ["generate", "-m", str(checkpoint[0]), "-p", "x" * 250, "-n", "100", "-t", "0"]
    data = json.loads(_cli(*args, "--json").stdout)
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    if data["finish_reason"] == "length":
        assert len(data["token_ids"]) < 100
        assert f"stopped after {len(data['token_ids'])} of 100 tokens" in out.stderr
    else:
        assert "context is full" not in out.stderr


def test_model_name_picks_among_plugins_of_one_architecture(
    checkpoint: tuple[Path, object],
) -> None:
    """--model-name loads the checkpoint as a given registered model (two plugins list
    Qwen3ForCausalLM); one that takes another architecture is a clear error."""
    import inference_pio

    pytest.importorskip("inference_pio_qwen3_4b_instruct_2507")
    path = checkpoint[0]
    as_4b = inference_pio.load_model(path, name="qwen3-4b-instruct-2507", progress=False)
    assert as_4b.name == "qwen3-4b-instruct-2507"
    out = _cli("generate", "-m", str(path), "-p", "x", "-n", "2", "--model-name", "glm-4.7-flash")
    assert out.returncode == 1
    assert "takes Glm4MoeLiteForCausalLM checkpoints" in out.stderr


def test_chat_says_when_the_context_filled_up(checkpoint: tuple[Path, object]) -> None:
    out = _chat(checkpoint[0], "y" * 200 + "\n/bye\n", "-n", "100")
    assert out.returncode == 0, out.stderr
    if "context is full" in out.stderr:  # else an eos ended the reply first
        assert "of 100 tokens" in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_json_schema(checkpoint: tuple[Path, object]) -> None:
    """--json-schema (inline or a file) constrains the output; a bad schema is one clear error
    before the model loads."""
    pytest.importorskip("llguidance")
    d, _ = checkpoint
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"enum": ["x"]}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    (d.parent / "schema.json").write_text(json.dumps(schema))
    for given in (json.dumps(schema), str(d.parent / "schema.json")):
        out = _cli("generate", "--model", str(d), "--prompt", "hi", "-n", "40", "-t", "0.8",
                   "--seed", "1", "--json", "--json-schema", given)  # fmt: skip
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        value = json.loads(result["text"])
        assert result["finish_reason"] == "stop"
        assert 0 <= value["a"] <= 99
        assert value["b"] == "x"
    bad = _cli("generate", "--model", str(d), "--prompt", "hi", "--json-schema", '{"type": "x"}')
    assert bad.returncode != 0
    assert "invalid json_schema constraint" in bad.stderr


@pytest.mark.parametrize("extra", [["-n", "0"], ["-t", "-1"], ["--speculative-ngram", "99"]])
def test_bad_sampling_flags_are_refused_before_the_model_loads(
    checkpoint: tuple[Path, object], extra: list[str]
) -> None:
    """A bad sampling flag is the error even where loading would fail (or take minutes), and
    `chat` with piped input exits 1 on it instead of dropping every message and exiting 0."""
    out = _cli("generate", "--model", "/nonexistent/dir", "--prompt", "x", *extra)
    assert out.returncode == 1
    assert "neither a checkpoint directory" not in out.stderr
    chat = _chat(checkpoint[0], "hello\nagain\n", *extra)
    assert chat.returncode == 1, chat.stderr
    assert "Traceback" not in chat.stderr
