"""The ``inference-pio`` command line, built by :func:`build_parser` (never at import time)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from inference_pio.plugins import PluginHost, get_plugin_host

DESCRIPTION = """\
Run large language models with Inference-PIO's own C/CUDA backend.

Each model family is a separately installed plugin (from a checkout:
pip install ./plugins/qwen3_0_6b, ...).
Use `inference-pio plugins` to see what is installed and whether it loaded, and
`inference-pio models` for the model names that --model accepts.
"""

INSTALL_HINT = "pip install ./plugins/qwen3_0_6b"

EPILOG = """\
environment:
  INFERENCE_PIO_PLUGINS          comma-separated allow-list of plugins (empty: none)
  INFERENCE_PIO_DISABLE_PLUGINS  comma-separated deny-list of plugins
  INFERENCE_PIO_STRICT_PLUGINS   1 = a plugin that fails to load is a fatal error
  INFERENCE_PIO_LIB              path to a different build of libtensor_ops.so
  INFERENCE_PIO_NUM_THREADS      default CPU thread count (else the physical cores)
  INFERENCE_PIO_CACHE            where synthetic:NAME checkpoints are built (else
                                 $XDG_CACHE_HOME/inference-pio or ~/.cache/inference-pio)
  INFERENCE_PIO_DECODE_PLAN      0 = no recorded batch-1 CPU decode steps (debugging)
  INFERENCE_PIO_CUDA_FUSED_DECODE  0 = batch-1 CUDA decode as the multi-kernel CUDA graph
                                 (default: one fused kernel per token where the model allows it)
  INFERENCE_PIO_CUDA_CAPTURE     0 = models no hand-written CUDA graph takes (GLM-4.7-Flash,
                                 Qwen3-Coder-Next) decode op by op instead of replaying
                                 their captured step
  INFERENCE_PIO_CUDA_BATCH_GRAPH 0 = batched CUDA decode call by call (no captured graphs)
  INFERENCE_PIO_CUDA_MOE_STEP    0 = the MoE MLP as five kernels instead of one launch
  INFERENCE_PIO_CUDA_PDL         0 = no programmatic dependent launch between CUDA kernels
  INFERENCE_PIO_CUDA_DEVICE_SAMPLING  0 = CUDA logits rows are sampled on the host
  INFERENCE_PIO_CUDA_BATCH_ATTENTION  0 = batched CUDA decode attention as two calls per sequence
  INFERENCE_PIO_CUDA_GEMV_MMA1   0 = single-row bf16 GEMVs on the scalar kernel, not tensor cores
  INFERENCE_PIO_CUDA_GEMV_MMA_NORM  0 = normalised q/k/v GEMV rows on the scalar kernel
  INFERENCE_PIO_CUDA_FLASH_WGMMA 0 = Hopper prefill attention on the mma.sync kernel, not wgmma
  INFERENCE_PIO_CUBLAS           path or name of the cuBLAS library to load; 0 = no cuBLAS
                                 (bf16 GEMMs on the library's own WMMA kernel)
  INFERENCE_PIO_CUBLASLT         0 = cublasGemmEx on every call instead of cached cuBLASLt plans
"""


def _version() -> str:
    from inference_pio import __version__

    return __version__


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_plugins(args: argparse.Namespace, host: PluginHost) -> int:
    records = sorted(host.records.values(), key=lambda r: r.name)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    if not records:
        print(f"No plugins installed. Install one, e.g.: {INSTALL_HINT}")
        return 0
    rows = [
        [r.name, r.distribution or "-", r.version, r.status, ", ".join(r.models) or "-"]
        for r in records
    ]
    _print_table(rows, ["plugin", "distribution", "version", "status", "models"])
    for r in host.failures:
        where = f"{r.name} ({r.distribution})" if r.distribution else r.name
        print(f"\nerror in {where}: {r.error}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace, host: PluginHost) -> int:
    specs = list(host.registry)
    if args.json:
        print(json.dumps([s.to_dict() for s in specs], indent=2))
        return 0
    if not specs:
        print(
            "No models registered. Install a model plugin, e.g.: pip install ./plugins/qwen3_0_6b"
        )
        return 0
    rows = []
    for s in specs:
        aliases, archs = ", ".join(s.aliases) or "-", ", ".join(s.architectures)
        rows.append([s.name, aliases, archs, s.hf_repo or "-", s.plugin])
    _print_table(rows, ["model", "aliases", "architecture", "hugging face repo", "plugin"])
    return 0


def cmd_info(args: argparse.Namespace, host: PluginHost) -> int:
    from inference_pio import _native
    from inference_pio.native_info import cuda_info, native_info

    info: dict[str, Any] = native_info()
    info["cuda"] = cuda_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"inference-pio {_version()}")
        print(f"libtensor_ops {info['version']} (ABI {info['abi_version']}) at {info['path']}")
        print(info["kernel_report"])
        gpu = info["cuda"]
        if not gpu["available"]:
            print(f"cuda: unavailable ({gpu['reason']})")
        else:
            print(
                f"cuda: driver {gpu['driver']}, runtime {gpu['runtime']}, library {gpu['library']}"
            )
            print(f"cublas: {gpu['cublas'] or 'not found (large products use our own GEMM)'}")
            for d in gpu["devices"]:
                gib = d["total_memory"] / (1 << 30)
                print(
                    f"{d['device']}: {d['name']}, {gib:.1f} GiB, {d['multiprocessors']} "
                    f"multiprocessors, compute capability {d['compute_capability']}"
                )
    del _native
    return 0


def build_parser(host: PluginHost | None = None) -> argparse.ArgumentParser:
    """Builds the argument parser; ``host`` supplies plugin commands (default: the global host)."""
    parser = argparse.ArgumentParser(
        prog="inference-pio",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins, their models and load errors")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=cmd_plugins)

    p = sub.add_parser("models", help="list the model names that --model accepts")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser(
        "info", help="show the native library, CPU features, chosen kernels and CUDA devices"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=cmd_info)

    from inference_pio.commands import add_commands

    add_commands(sub)

    if host is not None:
        host.call_isolated("pio_add_commands", subparsers=sub)
    return parser


def main(argv: Sequence[str] | None = None, host: PluginHost | None = None) -> int:
    """Entry point of the ``inference-pio`` script; returns the exit code."""
    from inference_pio.errors import InferencePioError

    try:
        host = host if host is not None else get_plugin_host()
        parser = build_parser(host)
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is not None:
            return int(args.handler(args, host))
        if getattr(args, "func", None) is not None:  # plugin-provided command
            return int(args.func(args))
        parser.print_help()
        return 0
    except (InferencePioError, ValueError, NotImplementedError) as exc:
        # User-facing failures (bad checkpoint, invalid option, unsupported model): one clear line.
        print(f"inference-pio: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (`| head`): stop quietly, like other Unix tools
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
