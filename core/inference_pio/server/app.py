"""An OpenAI-compatible HTTP server for one loaded model (Starlette + uvicorn, the ``server``
extra: ``pip install 'inference-pio[server]'``).

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream`` as server-sent events, ``stream_options.include_usage``), ``GET /health``. Requests
are generated one at a time (a model holds one set of caches and scratch buffers); others wait
their turn. A streamed request whose client goes away stops generating at its next token.
Vision-language models take ``image_url`` parts with ``data:`` URLs.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from inference_pio.generation import GenerationResult
from inference_pio.server import protocol
from inference_pio.server.protocol import Request, RequestError

_END = object()


class ModelService:
    """The model behind the API: one generation at a time, in a worker thread."""

    def __init__(self, model: Any, names: list[str]) -> None:
        self.model = model
        self.names = names
        self.lock = threading.Lock()

    def check_model(self, requested: Any) -> None:
        if requested is not None and requested not in self.names:
            raise RequestError(
                f"model {requested!r} is not served here (serving {', '.join(self.names)})",
                "model",
                404,
            )

    def pieces(self, req: Request, on_finish: Callable[[GenerationResult], None]) -> Iterator[str]:
        """The generation's text pieces (validation errors raise here, before any piece)."""
        kwargs = dict(req.sampling)
        if req.images:
            if not getattr(self.model, "accepts_images", False):
                raise RequestError("this model does not take images", "messages")
            kwargs["images"] = req.images
        try:
            stream: Iterator[str] = self.model.stream(req.prompt, on_finish=on_finish, **kwargs)
        except TypeError as exc:
            raise RequestError(str(exc)) from None
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return stream

    def run(self, req: Request) -> GenerationResult:
        """The whole generation (blocking; call from a worker thread)."""
        results: list[GenerationResult] = []
        with self.lock:
            for _ in self._guarded(self.pieces(req, results.append)):
                pass
        return results[0]

    @staticmethod
    def _guarded(stream: Iterator[str]) -> Iterator[str]:
        """``stream`` with bad input found while generating (a prompt longer than the
        context, say) turned into a RequestError."""
        try:
            yield from stream
        except ValueError as exc:
            raise RequestError(str(exc)) from None


def create_app(model: Any, name: str | None = None) -> Any:
    """The Starlette application serving ``model`` under ``name`` (default: the model's name;
    its aliases are accepted too)."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request as HttpRequest
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the HTTP server needs the 'server' extra: pip install 'inference-pio[server]'"
        ) from exc

    served = name or getattr(model, "name", "") or "model"
    service = ModelService(model, [served])

    def error(exc: RequestError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def body_of(request: HttpRequest) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        service.check_model(body.get("model"))
        return body

    async def respond(req: Request, chat: bool) -> Any:
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        if not req.stream:
            try:
                result = await asyncio.to_thread(service.run, req)
            except RequestError as exc:
                return error(exc)
            body = (protocol.chat_body if chat else protocol.completion_body)(rid, served, result)
            return JSONResponse(body)
        return await stream_response(req, chat, rid)

    async def stream_response(req: Request, chat: bool, rid: str) -> Any:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()
        results: list[GenerationResult] = []
        started: asyncio.Future[Any] = loop.create_future()

        def produce() -> None:
            try:
                with service.lock:
                    try:
                        pieces = service.pieces(req, results.append)
                    except RequestError as exc:
                        loop.call_soon_threadsafe(started.set_result, exc)
                        return
                    loop.call_soon_threadsafe(started.set_result, None)
                    for piece in service._guarded(pieces):
                        if cancelled.is_set():
                            break
                        loop.call_soon_threadsafe(queue.put_nowait, piece)
            except Exception as exc:  # reported as the stream's last event
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        worker = threading.Thread(target=produce, name="inference-pio-request", daemon=True)
        worker.start()
        failure = await started
        if isinstance(failure, RequestError):
            return error(failure)

        async def events() -> AsyncIterator[str]:
            try:
                yield _sse(protocol.chunk(rid, served, chat, "" if chat else None, first=True))
                while True:
                    item = await queue.get()
                    if item is _END:
                        break
                    if isinstance(item, Exception):
                        message = str(item)
                        status = item.status if isinstance(item, RequestError) else 500
                        yield _sse(RequestError(message, status=status).body())
                        return
                    yield _sse(protocol.chunk(rid, served, chat, item))
                if results:
                    finish = results[0].finish_reason
                    yield _sse(protocol.chunk(rid, served, chat, None, finish))
                    if req.include_usage:
                        yield _sse(protocol.usage_chunk(rid, served, chat, results[0]))
                yield "data: [DONE]\n\n"
            finally:
                cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request: HttpRequest) -> Any:
        try:
            req = protocol.completion_request(await body_of(request))
        except RequestError as exc:
            return error(exc)
        return await respond(req, chat=False)

    async def chat_completions(request: HttpRequest) -> Any:
        try:
            body = await body_of(request)
            placeholder = (
                model.image_placeholder() if getattr(model, "accepts_images", False) else None
            )
            req = protocol.chat_request(body, model.apply_chat_template, placeholder)
        except RequestError as exc:
            return error(exc)
        except ValueError as exc:  # the chat template refused the messages
            return error(RequestError(str(exc), "messages"))
        return await respond(req, chat=True)

    async def models(request: HttpRequest) -> Any:
        return JSONResponse(protocol.model_list(service.names))

    async def health(request: HttpRequest) -> Any:
        return JSONResponse({"status": "ok", "model": served})

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def serve(model: Any, host: str = "127.0.0.1", port: int = 8000, name: str | None = None) -> None:
    """Serves ``model`` until interrupted (uvicorn)."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the HTTP server needs the 'server' extra: pip install 'inference-pio[server]'"
        ) from exc
    uvicorn.run(create_app(model, name), host=host, port=port, log_level="info")
