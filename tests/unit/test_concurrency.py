"""Several threads (and fork) around the C library (found by an outside review): ctypes releases
the GIL, so other threads can be inside C at any moment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from inference_pio import ops, synthetic
from inference_pio.registry import ModelSpec
from inference_pio.tensor import Tensor
from inference_pio.weights import SafetensorsFile


def _matrix(rows: int, cols: int, seed: int) -> Tensor:
    vals = [((i * 2654435761 + seed) % 1000) / 1000.0 - 0.5 for i in range(rows * cols)]
    return Tensor.from_list(vals, "float32").reshape(rows, cols).to("bfloat16")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_while_another_thread_runs_parallel_ops() -> None:
    """The child of a fork taken while another thread was inside a parallel region runs ops
    (it inherited the pool's lock held by a thread it does not have, and blocked forever)."""
    x, w = _matrix(64, 1024, 1), _matrix(1024, 1024, 2)
    ops.set_num_threads(2)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            ops.linear(x, w)

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    hung = 0
    try:
        for _ in range(6):
            time.sleep(0.02)
            with warnings.catch_warnings():  # Python 3.12+: fork() with threads warns
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: one op, then leave without Python's cleanup
                try:
                    ops.linear(x, w)
                    os._exit(0)
                finally:
                    os._exit(1)
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    hung += 1
                    break
                time.sleep(0.01)
    finally:
        stop.set()
        worker.join(30)
    assert hung == 0, f"{hung} forked children blocked in their first op"


def test_kernel_report_while_threads_run_ops() -> None:
    """Every op records its kernel choice in one native table: threads running different ops
    and a thread reading the report at once leave each op listed once."""
    from inference_pio import native_info

    x, w = _matrix(4, 256, 3), _matrix(256, 256, 4)
    work = [
        lambda: ops.linear(x, w),
        lambda: ops.softmax(x.to("float32")),
        lambda: ops.rms_norm(x, Tensor.from_list([1.0] * 256, "bfloat16"), 1e-6),
        lambda: ops.argmax(x.to("float32")),
    ]
    errors: list[BaseException] = []

    def run(fn: object) -> None:
        try:
            for _ in range(200):
                fn()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(200):
                native_info.kernel_report()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in work]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    names = [line.split(":")[0] for line in native_info.kernel_report().splitlines()[2:]]
    assert len(names) == len(set(names)), names


def test_tokenizer_closed_while_other_threads_encode() -> None:
    """close() while threads encode: they finish or raise "closed", never touch freed memory;
    two threads closing at once free the object once (a separate process: a crash is a fail)."""
    script = textwrap.dedent(
        """
        import threading
        from inference_pio.tokenizer.native import QWEN2, NativeBPE
        vocab = [(bytes([b]), b) for b in range(256)] + [(b"ab", 256), (b"abc", 257)]
        text = ("abc abd " * 20000).encode()
        for _ in range(40):
            bpe = NativeBPE(QWEN2, vocab, [(97, 98, 256), (256, 99, 257)])
            results = []
            def encode():
                try:
                    while True:
                        results.append(len(bpe.encode(text)))
                except ValueError as exc:
                    assert "closed" in str(exc)
            ts = [threading.Thread(target=encode) for _ in range(2)]
            for t in ts:
                t.start()
            closers = [threading.Thread(target=bpe.close) for _ in range(3)]
            for t in closers:
                t.start()
            for t in ts + closers:
                t.join()
            assert len(set(results)) <= 1
        print("ok")
        """
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed tables get unmapped
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_threads_building_one_synthetic_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads of one process building the same synthetic checkpoint each get a complete
    one (they shared one staging folder, named by the process id alone)."""
    monkeypatch.setenv("INFERENCE_PIO_CACHE", str(tmp_path))
    spec = ModelSpec(
        name="tiny-concurrent",
        factory="inference_pio_qwen3_0_6b.plugin:load",
        config_factory="inference_pio.testing.tiny:tiny_qwen3_config",
        weights_factory="inference_pio_qwen3_0_6b.model:weight_shapes",
    )
    pytest.importorskip("inference_pio_qwen3_0_6b")
    host = SimpleNamespace(registry=SimpleNamespace(get=lambda name: spec))
    results: list[object] = [None, None]

    def build(i: int) -> None:
        try:
            d = synthetic.checkpoint_path("synthetic:tiny-concurrent", host=host, progress=False)
            with SafetensorsFile(d / "model.safetensors") as f:
                results[i] = (d, len(f), (d / "tokenizer.json").is_file())
        except Exception as exc:  # the failure is the result
            results[i] = exc

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(isinstance(r, Exception) for r in results), results
    assert results[0] == results[1]
    assert results[0][2] is True  # type: ignore[index]
    assert not list((tmp_path / "synthetic").glob("*.partial-*"))
