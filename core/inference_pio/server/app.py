"""An OpenAI-compatible HTTP server for one loaded model (Starlette + uvicorn, the ``server``
extra: ``pip install 'inference-pio[server]'``).

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream`` as server-sent events, ``stream_options.include_usage``, ``logprobs``),
``GET /health``, ``GET /metrics`` (Prometheus, :mod:`inference_pio.server.metrics`). Structured
outputs (the ``structured`` extra): ``response_format``
``json_object`` / ``json_schema`` and ``tool_choice`` "required" or a named function (the
model's tool-call markup) constrain decoding. Streamed tool calls go out as vLLM's: the call's
name first, then its arguments in pieces as they grow. Text requests are batched
continuously (``BatchManager.serve``: requests join and leave the running batch at every step)
with automatic prefix caching (a prompt that starts like an earlier one, a chat's next turn,
prefills only the rest; ``usage.prompt_tokens_details.cached_tokens`` says how many tokens it
took from the cache); a request with images runs alone between two steps.
A request whose client goes away stops at its next token, streamed or not. Errors, unknown routes
included, are OpenAI-style JSON. Vision-language models take ``image_url`` parts with ``data:``
URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from inference_pio.generation import GenerationResult
from inference_pio.logprobs import TokenLogprob
from inference_pio.prefix_pool import DEFAULT_MAX_BYTES, PrefixPool
from inference_pio.server import protocol
from inference_pio.server.metrics import RequestTrack, ServerMetrics
from inference_pio.server.protocol import Request, RequestError
from inference_pio.toolcalls import (
    ParsedReply,
    check_format,
    format_for,
    markup_tokens,
    parse_tool_calls,
)
from inference_pio.toolstream import Event, ToolCallDelta, ToolCallStream

_END = object()
#: Put in a running request's queue when the server starts shutting down.
_SHUTDOWN = object()
#: The largest request body read (a prompt, or images as data: URLs); larger ones get a 413.
MAX_BODY_BYTES = 32 << 20


class ModelService:
    """The model behind the API. Text requests of a :class:`~inference_pio.causal_lm.CausalLM`
    join one continuously batched loop (``BatchManager.serve`` in an engine thread: concurrent
    clients share each step's weight reads); requests with images, and models without a batch
    path, run alone between its steps."""

    def __init__(
        self,
        model: Any,
        names: list[str],
        prefix_caching: bool = True,
        prefix_cache_bytes: int = DEFAULT_MAX_BYTES,
        on_step: Callable[[int], None] | None = None,
        max_num_batched_tokens: int | None = None,
    ) -> None:
        """``on_step``: the batch size of every decode step goes there (metrics)."""
        self.model = model
        self.names = names
        self.model_lock = threading.RLock()
        self.stop = threading.Event()
        self._waiting = 0  # requests run alone that wait for model_lock
        self._alone = 0  # requests run alone that hold it
        self._waiting_lock = threading.Lock()
        self.manager: Any = None
        if all(hasattr(model, a) for a in ("model", "tokenizer", "eos_ids", "sampling_params")):
            from inference_pio.batching import BatchManager

            self.manager = BatchManager(
                model.model,
                model.tokenizer,
                model.eos_ids,
                getattr(model, "max_batch_size", 8),
                prefix_pool=PrefixPool(prefix_cache_bytes) if prefix_caching else None,
                on_step=on_step,
                max_num_batched_tokens=max_num_batched_tokens,
            )
            self.engine = threading.Thread(
                target=self.manager.serve,
                args=(self.stop, self.model_lock, lambda: self._waiting > 0),
                name="inference-pio-batches",
                daemon=True,
            )
            self.engine.start()

    def close(self) -> None:
        self.stop.set()

    def counts(self) -> tuple[int, int]:
        """Requests running and waiting now (batched, and run alone)."""
        running, waiting = self.manager.counts() if self.manager is not None else (0, 0)
        with self._waiting_lock:
            return running + self._alone, waiting + self._waiting

    def check_model(self, requested: Any) -> None:
        if requested is not None and requested not in self.names:
            raise RequestError(
                f"model {requested!r} is not served here (serving {', '.join(self.names)})",
                "model",
                404,
            )

    def start(
        self,
        req: Request,
        on_piece: Callable[[str | RequestError], None],
        on_finish: Callable[[GenerationResult], None],
        cancelled: threading.Event,
        track: RequestTrack | None = None,
    ) -> Callable[[], None] | None:
        """Validates ``req`` (RequestError) and starts it: pieces and the result go to the
        callbacks (from another thread; an error found while generating comes as a
        RequestError piece), its tokens to ``track``. Returns the cancel function of a
        batched request, or None for one run alone (``cancelled`` stops it)."""
        track = track if track is not None else RequestTrack(None)
        kwargs = dict(req.sampling)
        if req.images and not getattr(self.model, "accepts_images", False):
            raise RequestError("this model does not take images", "messages")
        refuse = getattr(self.model, "refuse_stray_image_pads", None)
        if refuse is not None and not req.images:
            try:  # a vision-language model: placeholders need their images
                refuse(req.prompt)
            except ValueError as exc:
                raise RequestError(str(exc), "prompt") from None
        if self.manager is not None and not req.images:
            try:
                params = self.model.sampling_params(**kwargs)
            except (TypeError, ValueError) as exc:
                raise RequestError(str(exc), _sampling_param(str(exc))) from None
            try:
                ids = (
                    self.model.tokenize(req.prompt)
                    if isinstance(req.prompt, str)
                    else [int(t) for t in req.prompt]
                )
                if not ids:
                    raise ValueError("the prompt is empty")
                track.batched = True
                index = self.manager.submit(
                    ids,
                    params,
                    on_piece=lambda _, piece: on_piece(piece),
                    on_finish=lambda _, result: on_finish(result),
                    on_error=lambda _, exc: on_piece(
                        # as a request run alone: its own bad input (a ValueError) is a 400
                        RequestError(str(exc), status=400 if isinstance(exc, ValueError) else 500)
                    ),
                    on_token=lambda _, n: track.token(n),
                )
            except (TypeError, ValueError) as exc:
                raise RequestError(str(exc)) from None
            manager = self.manager
            return lambda: manager.cancel(index)
        if req.images:
            kwargs["images"] = req.images
        try:
            pieces: Iterator[str] = self.model.stream(req.prompt, on_finish=on_finish, **kwargs)
        except (TypeError, ValueError) as exc:
            raise RequestError(str(exc)) from None

        def alone() -> None:
            with self._waiting_lock:  # a lone batch sequence checks this to make way
                self._waiting += 1
            with self.model_lock:  # between two of the batch loop's steps
                with self._waiting_lock:
                    self._waiting -= 1
                    self._alone += 1
                try:
                    for piece in pieces:
                        if cancelled.is_set():
                            return
                        track.token()  # about a token a piece
                        on_piece(piece)
                except ValueError as exc:  # found while generating (context too long, ...)
                    on_piece(RequestError(str(exc)))
                except Exception as exc:  # a device error, say: this request fails, not the server
                    on_piece(RequestError(str(exc), status=500))
                finally:
                    with self._waiting_lock:
                        self._alone -= 1

        threading.Thread(target=alone, name="inference-pio-request", daemon=True).start()
        return None


#: ``tool_call_format`` of :func:`create_app`: the format the model's spec declares.
FROM_MODEL = "model"


def create_app(
    model: Any,
    name: str | None = None,
    tool_call_format: str | None = FROM_MODEL,
    prefix_caching: bool = True,
    prefix_cache_bytes: int = DEFAULT_MAX_BYTES,
    metrics: bool | None = None,
    max_num_batched_tokens: int | None = None,
) -> Any:
    """The Starlette application serving ``model`` under ``name`` (default: the model's name);
    requests naming another model get a 404. ``tool_call_format``: how chat replies are parsed
    for tool calls when a request has ``tools`` (``"model"``: the model's declared format,
    :func:`inference_pio.toolcalls.format_for`; None: never, replies stay text; or a format
    name, ``"hermes"``, ``"qwen3_coder"``, ``"glm47"``). ``prefix_caching``: finished requests'
    caches are kept (at most ``prefix_cache_bytes`` of them, least recently used dropped first)
    for prompts that start the same way (:class:`~inference_pio.prefix_pool.PrefixPool`).
    ``metrics``: serve Prometheus metrics at ``GET /metrics`` (None: when prometheus_client, part
    of the server extra, is installed; True: ImportError without it).
    ``max_num_batched_tokens``: the tokens a batch step runs at most (chunked prefill, see
    :mod:`inference_pio.prefill_chunks`; None: the device's default, 0: off)."""
    tool_format = format_for(model) if tool_call_format == FROM_MODEL else tool_call_format
    check_format(tool_format)
    try:
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
        from starlette.requests import Request as HttpRequest
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the HTTP server needs the 'server' extra: pip install 'inference-pio[server]'"
        ) from exc

    markup = markup_tokens(getattr(model, "tokenizer", None), tool_format)
    served = name or getattr(model, "name", "") or "model"
    max_model_len = _max_model_len(model)
    recorder = None
    if metrics or (metrics is None and metrics_available()):
        recorder = ServerMetrics(
            served,
            live=lambda: service.counts(),
            engine=lambda: service.manager,
            max_model_len=max_model_len,
            max_batch_size=getattr(model, "max_batch_size", 8),
        )
    service = ModelService(
        model,
        [served],
        prefix_caching,
        prefix_cache_bytes,
        max_num_batched_tokens=max_num_batched_tokens,
        on_step=recorder.decode_step if recorder is not None else None,
    )
    strings = protocol.TokenStrings(
        getattr(model, "tokenizer", None), getattr(model, "detokenize", None)
    )

    def error(exc: RequestError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status)

    # the queues of running requests, told when the server starts shutting down (serve's Ctrl-C /
    # SIGTERM): each stops its request and ends its response, a stream with an error event and
    # [DONE], instead of being cut off when the grace period ends
    running: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = set()
    running_lock = threading.Lock()

    def begin_shutdown() -> None:
        with running_lock:
            for loop_, queue_ in running:
                loop_.call_soon_threadsafe(queue_.put_nowait, _SHUTDOWN)

    shutting_down = RequestError("the server is shutting down", status=503)

    def refused(exc: RequestError) -> Any:
        """The error response of a generation request refused before it started."""
        if recorder is not None:
            recorder.rejected(exc.status)
        return error(exc)

    async def body_of(request: HttpRequest) -> dict[str, Any]:
        too_big = RequestError(
            f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", status=413
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_big
            chunks.append(chunk)
        try:  # a large body parses off the event loop (the other clients keep being served)
            body = await run_in_threadpool(json.loads, b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        service.check_model(body.get("model"))
        return body

    async def respond(http: HttpRequest, req: Request, chat: bool) -> Any:
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        wants_logprobs = req.sampling.get("logprobs") is not None
        offset = 0  # a streamed completion's text_offset so far

        def logprobs_of(entries: Sequence[TokenLogprob]) -> dict[str, Any] | None:
            nonlocal offset
            if not wants_logprobs:
                return None
            if chat:
                return protocol.chat_logprobs(entries, strings)
            body, offset = protocol.completion_logprobs(entries, strings, offset)
            return body

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        entry = (loop, queue)
        with running_lock:
            running.add(entry)

        def done() -> None:
            with running_lock:
                running.discard(entry)

        cancelled = threading.Event()
        results: list[GenerationResult] = []
        track = recorder.request() if recorder is not None else RequestTrack(None)

        def on_piece(piece: Any) -> None:
            if isinstance(piece, RequestError):
                track.failed(piece.status)
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        def on_finish(result: GenerationResult) -> None:
            track.finished(result)  # before the client can see the response
            results.append(result)
            loop.call_soon_threadsafe(queue.put_nowait, _END)

        try:  # tokenizing a long prompt must not hold up the event loop
            cancel = await run_in_threadpool(
                service.start, req, on_piece, on_finish, cancelled, track
            )
        except RequestError as exc:
            track.failed(exc.status)
            done()
            return error(exc)

        def stop() -> None:
            track.cancelled()  # not counted when it had finished or failed
            cancelled.set()
            if cancel is not None:
                cancel()

        if not req.stream:
            watcher = asyncio.ensure_future(_disconnected(http))
            try:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():  # the client went away: stop at the next token
                        getter.cancel()
                        stop()
                        return Response(status_code=499)
                    item = getter.result()
                    if item is _END:
                        break
                    if item is _SHUTDOWN:
                        stop()
                        return error(shutting_down)
                    if isinstance(item, RequestError):
                        return error(item)
            except asyncio.CancelledError:
                stop()
                raise
            finally:
                watcher.cancel()
                done()
            result = results[0]
            logprobs = logprobs_of(result.logprobs or [])
            if logprobs is None and wants_logprobs:  # no output tokens: empty, not null (vLLM)
                logprobs = (
                    {"content": []}
                    if chat
                    else {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                )
            if not chat:
                return JSONResponse(protocol.completion_body(rid, served, result, logprobs))
            parsed = None
            if req.tool_format is not None:
                parsed = parse_tool_calls(result.text, req.tool_format, req.tools)
                if not req.parallel_tool_calls:
                    parsed = ParsedReply(parsed.content, parsed.tool_calls[:1])
            body = protocol.chat_body(
                rid, served, result, parsed, logprobs, named=req.named_tool_choice
            )
            return JSONResponse(body)

        calls = ToolCallStream(req.tool_format, req.tools) if req.tool_format else None
        # logprobs of tokens whose text came but is not sent yet (held by the tool-call parser),
        # and how many entries went out: a chunk carries those of the tokens of its text
        held: list[TokenLogprob] = []
        sent = 0

        def take() -> dict[str, Any] | None:
            nonlocal sent
            entries = held[:]
            held.clear()
            sent += len(entries)
            return logprobs_of(entries)

        def pieces(parts: list[Event]) -> Iterator[str]:
            for part in parts:
                if isinstance(part, str):
                    yield _sse(protocol.chunk(rid, served, chat, part, logprobs=take()))
                elif isinstance(part, ToolCallDelta) and (
                    req.parallel_tool_calls or part.index == 0
                ):  # parallel_tool_calls false: the first call only
                    lp = take()
                    yield _sse(protocol.chunk(rid, served, chat, None, tool_call=part, logprobs=lp))

        async def events() -> AsyncIterator[str]:
            finished = False
            try:
                yield _sse(protocol.chunk(rid, served, chat, "" if chat else None, first=True))
                while (item := await queue.get()) is not _END:
                    if item is _SHUTDOWN:
                        yield _sse(shutting_down.body())
                        yield "data: [DONE]\n\n"
                        return  # stopped below, as a client gone
                    if isinstance(item, RequestError):
                        yield _sse(item.body())
                        return
                    held.extend(getattr(item, "logprobs", ()))
                    if calls is None:
                        yield _sse(protocol.chunk(rid, served, chat, item, logprobs=take()))
                    else:
                        for event in pieces(calls.feed(item)):
                            yield event
                finished = True
                result = results[0]
                finish = result.finish_reason
                if calls is not None:
                    for event in pieces(calls.finish()):
                        yield event
                    # "length" says the call was cut; a named function's calls "stop"
                    finish = protocol.finish_reason(
                        finish, bool(calls.announced), req.named_tool_choice
                    )
                held.extend((result.logprobs or [])[sent + len(held) :])  # what no text carried
                yield _sse(protocol.chunk(rid, served, chat, None, finish, logprobs=take()))
                if req.include_usage:
                    yield _sse(protocol.usage_chunk(rid, served, chat, result))
                yield "data: [DONE]\n\n"
            finally:
                done()
                if not finished:
                    stop()  # the client went away: the request stops at its next token

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request: HttpRequest) -> Any:
        try:
            req = await run_in_threadpool(protocol.completion_request, await body_of(request))
        except RequestError as exc:
            return refused(exc)
        return await respond(request, req, chat=False)

    async def chat_completions(request: HttpRequest) -> Any:
        try:
            body = await body_of(request)
            placeholder = (
                model.image_placeholder() if getattr(model, "accepts_images", False) else None
            )
            req = await run_in_threadpool(
                protocol.chat_request,
                body,
                model.apply_chat_template,
                placeholder,
                tool_format,
                markup,
            )
        except RequestError as exc:
            return refused(exc)
        except ValueError as exc:  # the chat template refused the messages
            return refused(RequestError(str(exc), "messages"))
        return await respond(request, req, chat=True)

    async def models(request: HttpRequest) -> Any:
        return JSONResponse(protocol.model_list(service.names, max_model_len))

    async def model_card(request: HttpRequest) -> Any:
        name = request.path_params["name"]
        try:
            service.check_model(name)
        except RequestError as exc:
            return error(exc)
        return JSONResponse(protocol.model_card(name, max_model_len))

    async def http_error(request: HttpRequest, exc: Exception) -> Any:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        message = f"{detail}: {request.method} {request.url.path}"
        return JSONResponse(protocol.http_error(status, message), status_code=status)

    async def health(request: HttpRequest) -> Any:
        return JSONResponse({"status": "ok", "model": served})

    async def metrics_page(request: HttpRequest) -> Any:
        assert recorder is not None
        body, content_type = recorder.render()
        return Response(body, headers={"Content-Type": content_type})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        service.close()  # the batch loop ends with the server

    app = Starlette(
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{name:path}", model_card, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            *([Route("/metrics", metrics_page, methods=["GET"])] if recorder is not None else []),
        ],
    )
    app.state.service = service
    app.state.metrics = recorder
    app.state.begin_shutdown = begin_shutdown
    return app


def metrics_available() -> bool:
    """Whether prometheus_client (for ``GET /metrics``) can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _max_model_len(model: Any) -> int | None:
    """The model's context in tokens (prompt and output), where it says."""
    for owner in (model, getattr(model, "model", None)):
        value = getattr(owner, "max_context", None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _sampling_param(message: str) -> str | None:
    """The request field a sampling error names ("invalid sampling parameter: top_p must ...")."""
    match = re.match(r"invalid sampling parameter: (\w+)", message)
    if match is None:
        return None
    return {"max_new_tokens": "max_tokens"}.get(match.group(1), match.group(1))


async def _disconnected(request: Any) -> None:
    """Returns once the client of ``request`` (its body already read) has gone away."""
    while (await request.receive()).get("type") != "http.disconnect":
        pass


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


#: Seconds Ctrl-C (or SIGTERM) waits for running requests before it cancels them.
SHUTDOWN_GRACE_S = 3


class _ShutdownCancelFilter:
    """Drops the log records of requests cancelled by a graceful shutdown's timeout."""

    def filter(self, record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


def serve(
    model: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    tool_call_format: str | None = FROM_MODEL,
    prefix_caching: bool = True,
    prefix_cache_bytes: int = DEFAULT_MAX_BYTES,
    metrics: bool | None = None,
    max_num_batched_tokens: int | None = None,
) -> None:
    """Serves ``model`` until interrupted (uvicorn). On Ctrl-C / SIGTERM, running requests stop
    at their next token and end their responses (a stream with an error event and ``[DONE]``, a
    plain request with a 503); anything still open after ``SHUTDOWN_GRACE_S`` is cancelled.
    ``tool_call_format``, ``prefix_caching``, ``prefix_cache_bytes``, ``metrics`` and
    ``max_num_batched_tokens`` as in :func:`create_app`."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the HTTP server needs the 'server' extra: pip install 'inference-pio[server]'"
        ) from exc
    import logging

    # a stream still running when the grace period ends is cancelled by uvicorn, which logs the
    # CancelledError as "Exception in ASGI application" with a traceback: expected at shutdown
    logging.getLogger("uvicorn.error").addFilter(_ShutdownCancelFilter())
    app = create_app(
        model,
        name,
        tool_call_format,
        prefix_caching,
        prefix_cache_bytes,
        metrics,
        max_num_batched_tokens,
    )

    class Server(uvicorn.Server):  # type: ignore[misc]
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.begin_shutdown()  # running requests end their responses now
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_GRACE_S
    )
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        Server(config).run()
