"""The model-running sub-commands of ``inference-pio``: generate, chat, bench."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import random
import resource
import socket
import sys
import time
from typing import Any

from inference_pio.plugins import PluginHost
from inference_pio.prefix_pool import DEFAULT_MAX_BYTES
from inference_pio.toolcalls import PARSERS

MODEL_HELP = (
    "checkpoint directory (config.json, *.safetensors, tokenizer.json), a Hugging Face repo id "
    "(e.g. Qwen/Qwen3-0.6B, downloaded into the Hub cache; needs inference-pio[hub]), "
    "or synthetic:NAME for random weights of the real size (e.g. synthetic:qwen3-0.6b)"
)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_bandwidth_gbps(device: str) -> float:
    """The device's measured read bandwidth in GB/s, the ceiling of batch-1 decode: the CUDA
    library's probe (2 GiB read 10 times) or the CPU library's (512 MiB with this process's
    threads)."""
    if device.startswith("cuda"):
        from inference_pio import cuda

        return cuda.read_bandwidth(2 << 30, 10, device)
    from inference_pio._native import check, lib

    out = ctypes.c_double(0.0)
    check(
        lib().to_bench_read_bandwidth(512 << 20, lib().to_get_num_threads(), ctypes.byref(out)),
        "to_bench_read_bandwidth",
    )
    lib().to_memory_trim()  # the probe's buffer goes back
    return float(out.value)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help=MODEL_HELP)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=["bf16", "f32"],
        default=None,
        help="compute dtype (default: bf16 for bf16 checkpoints, f32 for f32 ones)",
    )
    p.add_argument(
        "--quantization",
        "-q",
        choices=["fp8"],
        default=None,
        help="quantize the projections of an unquantized checkpoint as they load: fp8 = float8 "
        "e4m3 with a scale per 128x128 block, half the bytes of bf16 (attention and MLP of the "
        "Qwen3 models, experts of the mixture-of-experts ones; on a GPU the dense Qwen3 models "
        "only, whose fused CUDA step reads FP8). FP8 checkpoints (Qwen's -FP8 repos) need no flag",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: the physical cores this process may use)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        metavar="NAME",
        help="the registered model (see `inference-pio models`) to load the checkpoint as, when "
        "several installed plugins list its architecture (default: the plugin that claims it, "
        "else the first)",
    )
    p.add_argument(
        "--gpu-layers",
        "-ngl",
        default=None,
        metavar="N|auto",
        help="with --device cuda: run only the last N layers (and the LM head) on the GPU, the "
        "rest on the CPU; 'auto' fits as many as the GPU's memory holds (default: the whole "
        "model on the GPU)",
    )


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "sampling (defaults come from the checkpoint's generation_config.json)"
    )
    g.add_argument("--max-new-tokens", "-n", type=int, default=256, help="default: 256")
    g.add_argument("--temperature", "-t", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None, help="0 = off")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--presence-penalty", type=float, default=None)
    g.add_argument("--frequency-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="makes sampled output reproducible")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g = p.add_argument_group(
        "speculative decoding (CPU; the output is the same, only the speed changes)"
    )
    g.add_argument(
        "--speculative-ngram",
        type=int,
        default=None,
        metavar="K",
        help="prompt-lookup speculation: draft up to K tokens (1-15) by copying what followed "
        "the last n tokens where they occurred before in the prompt or output, and verify them "
        "in one forward call; pays off when the output repeats the prompt (code edits, quotes)",
    )
    g.add_argument(
        "--prompt-lookup-max",
        type=int,
        default=None,
        metavar="N",
        help="longest n-gram looked up (default 4)",
    )
    g.add_argument(
        "--prompt-lookup-min",
        type=int,
        default=None,
        metavar="N",
        help="shortest n-gram looked up (default 2)",
    )


def _speculative(args: argparse.Namespace) -> dict[str, Any]:
    """The speculative decoding keywords of ``generate`` from the CLI flags."""
    if args.speculative_ngram is None:
        if args.prompt_lookup_max is not None or args.prompt_lookup_min is not None:
            raise ValueError("--prompt-lookup-max/--prompt-lookup-min need --speculative-ngram K")
        return {}
    return {
        "speculative": "ngram",
        "num_speculative_tokens": args.speculative_ngram,
        "prompt_lookup_max": args.prompt_lookup_max,
        "prompt_lookup_min": args.prompt_lookup_min,
    }


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {
        **_speculative(args),
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "seed": args.seed,
        "stop": args.stop,
    }


def _check_sampling(args: argparse.Namespace) -> None:
    """Refuses bad sampling / speculative flags before the model loads (which can take minutes,
    or build a synthetic checkpoint), as llama.cpp does: ValueError, one line from the CLI."""
    from inference_pio.sampling import SamplingParams
    from inference_pio.speculative import OPTION_NAMES, SpeculativeConfig

    given = {k: v for k, v in _sampling(args).items() if v is not None}
    spec = {k: given.pop(k) for k in OPTION_NAMES if k in given}
    if spec:
        SpeculativeConfig.parse(spec.pop("speculative"), **spec)
    if "stop" in given:
        given["stop"] = tuple(given["stop"])
    SamplingParams(**given)


def _load(args: argparse.Namespace, host: PluginHost) -> Any:
    from inference_pio.loading import load_model

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        gpu_layers=args.gpu_layers,
        quantization=args.quantization,
        name=args.model_name,
        host=host,
        progress=not getattr(args, "json", False) or sys.stderr.isatty(),
    )


def _with_images(model: Any, prompt: str, images: list[str]) -> tuple[str, dict[str, Any]]:
    """The prompt with an image placeholder per image (unless it holds them already) and the
    ``images`` keyword, for a model that takes images; ValueError for one that does not."""
    if not images:
        return prompt, {}
    if not getattr(model, "accepts_images", False):
        raise ValueError(f"model {model.name} does not take images (--image)")
    if model.image_pad_text not in prompt:
        prompt = model.image_placeholder() * len(images) + prompt
    return prompt, {"images": images}


def cmd_generate(args: argparse.Namespace, host: PluginHost) -> int:
    from inference_pio.tokenizer.utf8 import replace_lone_surrogates  # text a terminal can take

    if args.no_think and not args.chat:
        raise ValueError("--no-think applies to the chat template: add --chat")
    constraint = _json_schema(args.json_schema) if args.json_schema is not None else None
    _check_sampling(args)
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not text and not args.image:
        raise ValueError("the prompt is empty" + (" (stdin was empty)" * (args.prompt == "-")))
    model = _load(args, host)
    prompt, extra = _with_images(model, text, args.image or [])
    if constraint is not None:
        extra["constraint"] = constraint
    if args.chat:
        prompt = model.apply_chat_template(
            [{"role": "user", "content": prompt}], enable_thinking=not args.no_think
        )
    sampling = {**_sampling(args), **extra}
    if args.json:
        result = model.generate(prompt, **sampling)
        print(
            json.dumps(
                {
                    "text": replace_lone_surrogates(result.text),
                    "token_ids": result.token_ids,
                    "prompt_tokens": result.prompt_tokens,
                    "finish_reason": result.finish_reason,
                    "prefill_tokens_per_s": round(result.prefill_tokens_per_s, 3),
                    "decode_tokens_per_s": round(result.decode_tokens_per_s, 3),
                    "time_to_first_token_s": round(result.time_to_first_token_s, 6),
                    "peak_rss_bytes": peak_rss_bytes(),
                    **(
                        {
                            "draft_tokens": result.draft_tokens,
                            "accepted_draft_tokens": result.accepted_draft_tokens,
                        }
                        if args.speculative_ngram is not None
                        else {}
                    ),
                },
                ensure_ascii=False,
            )
        )
        return 0
    results: list[Any] = []
    pieces = (
        model.stream(prompt, on_finish=results.append, **sampling)
        if hasattr(model, "stream")  # CausalLM; a plugin's own model may offer stream_text only
        else model.stream_text(prompt, **sampling)
    )
    for piece in pieces:
        sys.stdout.write(replace_lone_surrogates(piece))
        sys.stdout.flush()
    sys.stdout.write("\n")
    _note_context_full(results, args.max_new_tokens)
    return 0


def _json_schema(value: str) -> Any:
    """``--json-schema``: a JSON schema inline (``{...}``) or in a file, as a constraint
    (ValueError for a bad schema; StructuredOutputsUnavailable without llguidance)."""
    from pathlib import Path

    from inference_pio.structured import Constraint

    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--json-schema: cannot read {value}: {exc.strerror}") from None
    return Constraint.json_schema(text)


def _note_context_full(results: list[Any], max_new_tokens: int) -> None:
    """Says on stderr when generation stopped because the context filled up, not at the
    requested number of tokens (llama.cpp's "context full")."""
    if results and results[0].finish_reason == "length":
        made = len(results[0].token_ids)
        if made < max_new_tokens:
            print(
                f"inference-pio: stopped after {made} of {max_new_tokens} tokens: the model's "
                "context is full",
                file=sys.stderr,
            )


CHAT_HELP = """\
/reset          clear the conversation (the system prompt stays)
/bye, /exit     quit (so does Ctrl-D)
/help           this list
//text          send a message that starts with '/'
Ctrl-C stops a reply; what was generated stays in the conversation."""


def cmd_chat(args: argparse.Namespace, host: PluginHost) -> int:
    from inference_pio.tokenizer.utf8 import replace_lone_surrogates  # text a terminal can take

    _check_sampling(args)
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    model = _load(args, host)
    if hasattr(model, "reuse_prefixes"):  # each turn prefills only what is new (CPU)
        model.reuse_prefixes()
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    model.apply_chat_template([*history, {"role": "user", "content": "-"}])  # no template: now
    sampling = _sampling(args)
    images: list[str] = args.image or []
    pending_images = bool(images)  # the placeholders go into the first user turn
    _with_images(model, "", images)  # refuses images for a text model before any input
    print(
        f"Chatting with {model.name}: /bye or Ctrl-D quits, /reset clears the conversation, "
        "/help lists the commands.",
        file=sys.stderr,
    )
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(/bye or Ctrl-D quits)", file=sys.stderr)
            continue
        command = line.strip()
        if not command:
            continue
        if command in ("/bye", "/exit", "/quit"):
            return 0
        if command == "/help":
            print(CHAT_HELP, file=sys.stderr)
            continue
        word = command.split()[0]
        if word.startswith("//"):  # a message that starts with '/'
            line = line.replace("//", "/", 1)
        elif word.startswith("/") and word != "/reset":
            # not sent to the model as a message (ollama's behaviour)
            print(f"unknown command {word!r}; /help lists them", file=sys.stderr)
            continue
        if command == "/reset":
            history = history[:1] if args.system else []
            pending_images = bool(images)
            print("(conversation cleared)", file=sys.stderr)
            continue
        extra: dict[str, Any] = {}
        placed = False
        if images:
            if pending_images:
                line, _ = _with_images(model, line, images)
                pending_images, placed = False, True
            extra["images"] = images  # every turn's prompt holds the first turn's placeholders
        history.append({"role": "user", "content": line})
        reply: list[str] = []
        results: list[Any] = []
        try:
            prompt = model.apply_chat_template(history, enable_thinking=not args.no_think)
            pieces = (
                model.stream(prompt, on_finish=results.append, **sampling, **extra)
                if hasattr(model, "stream")
                else model.stream_text(prompt, **sampling, **extra)
            )
            for piece in pieces:
                reply.append(piece)
                sys.stdout.write(replace_lone_surrogates(piece))
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            print("(reply stopped)", file=sys.stderr)
        except ValueError as exc:  # too long for the context, say: this turn is dropped
            history.pop()
            pending_images = pending_images or placed
            if reply:
                sys.stdout.write("\n")
            print(
                f"inference-pio: error: {exc}\n(the message was dropped; /reset clears the "
                "conversation)",
                file=sys.stderr,
            )
            continue
        else:
            sys.stdout.write("\n")
            _note_context_full(results, args.max_new_tokens)
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})


def cmd_bench(args: argparse.Namespace, host: PluginHost) -> int:
    for flag in ("prompt_tokens", "decode_prompt_tokens", "new_tokens", "repeats"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.decode_prompt_tokens > args.prompt_tokens:
        raise ValueError(
            f"--decode-prompt-tokens {args.decode_prompt_tokens} is more than --prompt-tokens "
            f"{args.prompt_tokens} (the decode prompt is the prefill prompt's start)"
        )
    model = _load(args, host)
    fm = model.model
    context = int(getattr(fm, "max_context", 0) or 0)
    if context and args.prompt_tokens + 1 > context:
        raise ValueError(
            f"--prompt-tokens {args.prompt_tokens} does not fit the model's context of "
            f"{context} tokens (at most {context - 1})"
        )
    if context and args.decode_prompt_tokens + args.new_tokens > context:
        raise ValueError(
            f"--decode-prompt-tokens + --new-tokens ({args.decode_prompt_tokens} + "
            f"{args.new_tokens}) exceed the model's context of {context} tokens"
        )
    rng = random.Random(0)
    vocab = min(fm.vocab_size, 151643)
    prompt = [rng.randrange(vocab) for _ in range(args.prompt_tokens)]
    short = prompt[: args.decode_prompt_tokens]
    on_gpu = str(args.device).startswith("cuda")

    def prefill_once() -> float:
        cache = fm.new_cache(args.prompt_tokens + 1)
        start = time.perf_counter()
        logits = fm.forward([(prompt, cache)])
        if on_gpu:
            logits[0].to("cpu")  # waits for the device
        return time.perf_counter() - start

    # Warm-up: first calls pay one-off costs (page faults on the mmapped weights, library
    # initialisation, CUDA graph capture) that are not the steady-state speed.
    fm.forward([(prompt[: min(16, len(prompt))], fm.new_cache(16))])
    model.generate(short, max_new_tokens=4, temperature=0.0, ignore_eos=True)
    prefill_s = min(prefill_once() for _ in range(args.repeats))
    results = [
        model.generate(short, max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
        for _ in range(args.repeats)
    ]
    result = max(results, key=lambda r: r.decode_tokens_per_s)
    per_token = getattr(fm, "decode_bytes_per_token", None)
    mean_context = len(short) + args.new_tokens // 2
    bytes_per_token = int(per_token(mean_context)) if per_token is not None else 0
    out = {
        "model": model.name,
        "device": args.device,
        "threads": None if on_gpu else lib_threads(),
        "prompt_tokens": args.prompt_tokens,
        "prefill_tokens_per_s": round(args.prompt_tokens / prefill_s, 3),
        "decode_prompt_tokens": len(short),
        "new_tokens": len(result.token_ids),
        "decode_tokens_per_s": round(result.decode_tokens_per_s, 3),
        "time_to_first_token_s": round(result.time_to_first_token_s, 6),
        "decode_bytes_per_token": bytes_per_token,
        "decode_gb_per_s": round(bytes_per_token * result.decode_tokens_per_s / 1e9, 3),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if args.bandwidth:
        read = read_bandwidth_gbps(str(args.device))
        out["read_gb_per_s"] = round(read, 3)
        out["decode_bandwidth_fraction"] = round(out["decode_gb_per_s"] / read, 4) if read else 0.0
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:26s} {v}")
    return 0


def cmd_serve(args: argparse.Namespace, host: PluginHost) -> int:
    try:
        import starlette  # noqa: F401  (the server extra, checked before the model loads)
        import uvicorn  # noqa: F401

        from inference_pio.server import serve
        from inference_pio.server.app import metrics_available
    except ImportError:
        raise ValueError(
            "the HTTP server needs the 'server' extra: pip install 'inference-pio[server]'"
        ) from None
    if args.metrics and not metrics_available():
        raise ValueError(
            "--metrics needs prometheus_client (part of the server extra): "
            "pip install 'inference-pio[server]'"
        )
    metrics = metrics_available() if args.metrics is None else args.metrics
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:  # a taken port is found before the model loads, not after
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    model = _load(args, host)
    if args.max_batch_size is not None:
        model.max_batch_size = args.max_batch_size
    where = (
        f"http://{args.host}:{args.port}/v1"
        if args.port
        else f"{args.host}, a free port (uvicorn's line below names it)"
    )
    caching = (
        f"prefix caching up to {args.prefix_cache_mib} MiB"
        if args.enable_prefix_caching
        else "prefix caching off"
    )
    budget = args.max_num_batched_tokens
    chunking = (
        "prompts prefilled whole"
        if budget == 0
        else "chunked prefill, "
        + (f"{budget} tokens a step" if budget is not None else "the device's step budget")
    )
    print(
        f"serving {model.name} on {where} (OpenAI API; batches of up "
        f"to {getattr(model, 'max_batch_size', 1)} sequences; {caching}; {chunking}; "
        f"{'metrics at /metrics' if metrics else 'no /metrics'}; Ctrl-C stops)",
        file=sys.stderr,
    )
    tool_format = None if args.tool_call_parser == "none" else args.tool_call_parser
    serve(
        model,
        args.host,
        args.port,
        args.served_name,
        tool_format,
        prefix_caching=args.enable_prefix_caching,
        prefix_cache_bytes=args.prefix_cache_mib << 20,
        metrics=metrics,
        max_num_batched_tokens=budget,
    )
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port number (0 = any free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def lib_threads() -> int:
    """The CPU library's thread count (what --threads or the default chose)."""
    from inference_pio._native import lib

    return int(lib().to_get_num_threads())


def add_commands(sub: Any) -> None:
    """Registers generate, chat and bench on the CLI's sub-parsers."""
    p = sub.add_parser(
        "generate",
        help="complete a prompt (streams text; --json for one JSON object)",
        description="Generate text from a prompt with a local checkpoint.",
    )
    _add_model_args(p)
    p.add_argument("--prompt", "-p", required=True, help="the prompt text ('-': read stdin)")
    p.add_argument(
        "--image",
        "-i",
        action="append",
        metavar="PATH",
        help="an image for a vision-language model (repeatable); the prompt gets one image "
        "placeholder per image in front unless it already holds them",
    )
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument(
        "--no-think",
        action="store_true",
        help="with --chat: disable Qwen3 thinking (enable_thinking=False)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: text, token_ids, prompt_tokens, speeds, peak_rss_bytes",
    )
    p.add_argument(
        "--json-schema",
        default=None,
        metavar="SCHEMA|FILE",
        help="constrain the output to JSON matching this JSON schema (inline, or a file); "
        "needs inference-pio[structured]",
    )
    _add_sampling_args(p)
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser(
        "chat",
        help="interactive chat with history, using the chat template",
        description="Chat with a model in the terminal: the conversation goes through the "
        "checkpoint's chat template; replies stream. Commands:\n" + CHAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument(
        "--image",
        "-i",
        action="append",
        metavar="PATH",
        help="an image for a vision-language model (repeatable), shown with the first message",
    )
    p.add_argument("--no-think", action="store_true", help="disable Qwen3 thinking")
    _add_sampling_args(p)
    p.set_defaults(handler=cmd_chat)

    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (needs inference-pio[server])",
        description="Serve one model: GET /v1/models, POST /v1/completions and "
        "/v1/chat/completions (streaming with server-sent events), GET /health, GET /metrics "
        "(Prometheus). Concurrent text requests are batched continuously (they share each "
        "decode step; long prompts are prefilled in chunks between steps) and reuse the KV "
        "caches of earlier requests that started the same way (prefix caching); tools, "
        "response_format (structured outputs, needs inference-pio[structured]) and logprobs as "
        "in OpenAI's API; images go in chat messages as data: URLs.",
    )
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--served-name", default=None, help="model name clients use (default: the model's name)"
    )
    p.add_argument(
        "--tool-call-parser",
        choices=["model", "none", *sorted(PARSERS)],
        default="model",
        help="how chat replies to requests with 'tools' are parsed for tool calls (default "
        "'model': the format the checkpoint's chat template shows, else the one the model's "
        "plugin declares; 'none': replies stay text)",
    )
    p.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=None,
        help="sequences decoded together at most; more requests wait their turn (default: the "
        "model's, 8; each running sequence holds a KV cache)",
    )
    p.add_argument(
        "--max-num-batched-tokens",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="tokens a step runs at most: the running requests' decode rows, then chunks of "
        "the prompts being prefilled, so that a long prompt holds the others back by one "
        "chunk a step (chunked prefill; default: 512 on CPU, 8192 on CUDA; 0: prompts are "
        "prefilled whole before the next decode step)",
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep finished requests' KV caches so that a prompt starting the same way (a "
        "chat's next turn, a shared system prompt) prefills only the rest (default: on)",
    )
    p.add_argument(
        "--prefix-cache-mib",
        type=_positive_int,
        default=DEFAULT_MAX_BYTES >> 20,
        help="memory the kept caches may hold, in MiB; least recently used go first (default: "
        f"{DEFAULT_MAX_BYTES >> 20}; host memory on CPU, device memory on CUDA, where the free "
        "batch slots are kept besides at no cost)",
    )
    p.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve Prometheus metrics at GET /metrics (requests, tokens, latencies, batch "
        "sizes, prefix cache; default: on when prometheus_client, part of the server extra, "
        "is installed)",
    )
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser(
        "bench",
        help="measure prefill and batch-1 decode speed",
        description="Time a prefill of --prompt-tokens random tokens and a greedy batch-1 "
        "decode of --new-tokens after the first --decode-prompt-tokens of them (best of "
        "--repeats runs each, after a warm-up).",
    )
    _add_model_args(p)
    p.add_argument("--prompt-tokens", type=int, default=512, help="prefill length (default 512)")
    p.add_argument(
        "--decode-prompt-tokens",
        type=int,
        default=32,
        help="prompt length before the decode run (default 32)",
    )
    p.add_argument("--new-tokens", type=int, default=128, help="decoded tokens (default 128)")
    p.add_argument(
        "--repeats", type=int, default=2, help="runs per measurement, best kept (default 2)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--bandwidth",
        action="store_true",
        help="also measure the device's read bandwidth and print the fraction of it that decode "
        "reaches (decode_gb_per_s / read_gb_per_s; batch-1 decode is bound by it)",
    )
    p.set_defaults(handler=cmd_bench)
