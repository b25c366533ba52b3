"""The HTTP server: an OpenAI-compatible FastAPI app over one engine (``create_app``).

Endpoints: ``POST /v1/chat/completions`` (streamed as server-sent events or not), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus), and the realtime WebSockets of ``realtime_ws``. Every error is ``{"error": {...}}`` with its status: 400 bad request
or media, 401 missing or wrong key, 404 unknown model, 413 too large, 503 queue full, 500 internal. A client that
disconnects cancels its request at the engine's next step; nothing a request does can stop the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from ..errors import MossVLError
from ..inference.core import CapacityError
from ..inference.engine import Engine, EngineOverloadedError
from .media import MediaPolicy, MediaResolver
from .metrics import ServerMetrics
from .protocol import (
    APIError,
    ChatRequest,
    bad_request,
    chunk_body,
    completion_body,
    completion_id,
    finish_reason,
    parse_chat_request,
    usage_chunk_body,
)
from .realtime_ws import RealtimeServiceConfig, add_realtime_routes

DISCONNECT_POLL_SECONDS = 0.1


@dataclass
class ServerConfig:
    """What the server exposes and accepts. ``api_key`` None: no authentication."""

    model_name: str = "mossvl"
    api_key: str | None = None
    max_request_bytes: int = 100 << 20
    shutdown_grace_seconds: float = 30.0
    media: MediaPolicy = field(default_factory=MediaPolicy)
    realtime: RealtimeServiceConfig = field(default_factory=RealtimeServiceConfig)


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    """The FastAPI application serving ``engine``."""
    metrics = ServerMetrics(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # uvicorn stopped accepting requests: let the running ones finish, then cancel what is left.
        await run_in_threadpool(engine.shutdown, False, config.shutdown_grace_seconds)
        await run_in_threadpool(engine.shutdown, True, 5.0)

    app = FastAPI(title="mossvl", lifespan=lifespan)
    app.state.engine, app.state.config, app.state.metrics = engine, config, metrics
    add_realtime_routes(app, engine, config.realtime, config.api_key)

    def count(status: int, request: Request) -> None:
        if request.url.path == "/v1/chat/completions":
            metrics.requests.labels(status=str(status)).inc()

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        count(exc.status, request)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        count(500, request)
        error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="internal_error")
        return JSONResponse(error.body(), status_code=500)

    async def checked(request: Request) -> None:
        _authorize(request, config)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_request_bytes:
            raise APIError(
                413,
                f"request body of {length} bytes is larger than the limit {config.max_request_bytes} "
                "(--max-request-bytes)",
                code="request_too_large",
            )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": config.model_name, **engine.stats()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(checked)])
    async def models() -> dict:
        created = int(time.time())
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": created, "owned_by": "mossvl"}],
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(checked)])
    async def chat_completions(request: Request) -> Response:
        body = await _read_json(request, config)
        chat = parse_chat_request(body)
        if chat.model != config.model_name:
            raise APIError(
                404,
                f"model '{chat.model}' does not exist; this server serves '{config.model_name}'",
                param="model",
                code="model_not_found",
            )
        prepared = await run_in_threadpool(_prepare, engine, config, chat)
        try:
            handle = engine.submit(prepared)
        except EngineOverloadedError as exc:
            raise APIError(503, str(exc), type_="server_overloaded", code="queue_full") from None
        request_id = completion_id()
        if chat.stream:
            count(200, request)
            return StreamingResponse(
                _sse(handle, chat, request_id, config.model_name, metrics), media_type="text/event-stream"
            )
        result = await _wait(handle, request)
        if result is None:  # the client is gone
            count(499, request)
            return Response(status_code=499)
        metrics.record_result(result)
        if result.error is not None:
            raise _result_error(result)
        count(200, request)
        return JSONResponse(completion_body(request_id, config.model_name, result))

    return app


def _authorize(request: Request, config: ServerConfig) -> None:
    if config.api_key is None:
        return
    header = request.headers.get("authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not token or not hmac.compare_digest(token.encode(), config.api_key.encode()):
        raise APIError(
            401,
            "missing or invalid API key (send 'Authorization: Bearer <key>')",
            type_="authentication_error",
            code="invalid_api_key",
        )


async def _read_json(request: Request, config: ServerConfig):
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > config.max_request_bytes:
            raise APIError(
                413,
                f"request body larger than the limit {config.max_request_bytes} bytes (--max-request-bytes)",
                code="request_too_large",
            )
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None


def _prepare(engine: Engine, config: ServerConfig, chat: ChatRequest):
    """Resolve media and prepare the engine request (runs in a worker thread: media decoding is blocking)."""
    resolver = MediaResolver(config.media)
    try:
        messages = resolver.messages(chat.messages)
        media_kwargs = resolver.media_kwargs(chat.media_io_kwargs, chat.mm_processor_kwargs)
        return engine.prepare({"messages": messages}, chat.generate_kwargs, media_kwargs)
    except MossVLError as exc:
        raise bad_request(str(exc)) from None
    finally:
        resolver.close()


def _result_error(result) -> APIError:
    if isinstance(result.exception, CapacityError):
        return APIError(413, result.error, code="request_too_large")
    if isinstance(result.exception, MossVLError):
        return bad_request(result.error)
    return APIError(500, result.error, type_="internal_error")


async def _wait(handle, request: Request):
    """The request's Result, or None when the client disconnected first (the request is then cancelled)."""
    while not handle.done:
        if await request.is_disconnected():
            handle.cancel()
            return None
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
    return handle.result()


def _data(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(
    handle, chat: ChatRequest, request_id: str, model: str, metrics: ServerMetrics
) -> AsyncIterator[str]:
    created = int(time.time())
    try:
        yield _data(chunk_body(request_id, model, created, {"role": "assistant", "content": ""}))
        async for event in handle.aevents():
            if event.delta:
                yield _data(chunk_body(request_id, model, created, {"content": event.delta}))
            result = event.result
            if result is None:
                continue
            metrics.record_result(result)
            if result.error is not None:
                yield _data(_result_error(result).body())
            else:
                yield _data(chunk_body(request_id, model, created, {}, finish_reason(result)))
                if chat.include_usage:
                    yield _data(usage_chunk_body(request_id, model, created, result))
        yield "data: [DONE]\n\n"
    finally:
        if not handle.done:  # the client disconnected mid-stream
            handle.cancel()
