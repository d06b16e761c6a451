"""The HTTP API of a mixture: ``create_app(moe, settings)``, a FastAPI app (OpenAPI at ``/docs``).

- ``POST /v1/predict``: ``{"rows": [{"text": ..., "text_pair": ...}, ...]}`` or one row as
  ``{"text": ..., "text_pair": ...}``, with optional ``expert`` (force this expert) and
  ``abstain`` (an input out of the pool gets no expert): ``predict --expert`` / ``--abstain``.
  Answer: ``{"results": [...]}``, one record per row, each exactly the JSON line
  ``python -m ttmoe_core predict --json`` prints for that row.
- ``GET /v1/experts``: the pack's experts (name, task, labels, pooling); ``GET /healthz``;
  ``GET /metrics``: Prometheus text from this app's own registry (requests by path and status,
  rows answered, rows per model call, queue depth, latency).

Concurrent requests are coalesced into few calls of ``moe.predict`` by one ``batcher.Batcher``
(its worker thread is the only user of the model), started and drained by the app's lifespan.
Every error is ``{"error": "one line"}``: a body over ``max_body_bytes`` (checked on
Content-Length, then while reading, before any parsing) 413; a body not sent within
``timeout_s`` 408; bad JSON 400; wrong fields, too many rows, a text too long, an unknown expert
422; a full queue or a server shutting down 503 (with Retry-After); no answer within
``timeout_s`` 504. Optional: needs fastapi and prometheus_client; the engine never imports it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from ..moe import MoEError, TTLoRAMoE
from .batcher import Batcher, Closed, QueueFull

PATHS = ("/v1/predict", "/v1/experts", "/healthz", "/metrics", "/docs", "/openapi.json")
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServeSettings:
    """Batching (``batcher.Batcher``) and the limits of one request."""
    max_wait_ms: float = 5.0          # how long the first request of a call waits for others
    max_batch_rows: int = 256         # rows per model call at most (a larger request: alone)
    queue_size: int = 256             # requests waiting at most (then 503)
    timeout_s: float = 30.0           # to send the body, and to get the answer (408, 504)
    coalesce: bool = True             # False: each request is its own model call
    max_body_bytes: int = 4 * 2**20   # 413 beyond
    max_rows: int = 256               # rows per request (422 beyond)
    max_text_chars: int = 10_000      # characters per text or text pair (422 beyond)


class ApiError(Exception):
    """An answer ``{"error": message}`` with ``status`` (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _is_text(value: str) -> str:
    """A text with some non-blank character and no unpaired surrogate."""
    if not value.strip():
        raise ValueError("empty text: give some words to classify")
    _encodable(value)
    return value


def _pair(value: str | None) -> str | None:
    """A text pair; blank is None (as in ``predict --input-file``)."""
    if value is None or not value.strip():
        return None
    return _encodable(value)


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds an unpaired surrogate, not text") from None
    return value


def request_models(settings: ServeSettings) -> tuple[type[BaseModel], type[BaseModel]]:
    """(Row, PredictRequest) with this server's limits (strict types, no unknown fields)."""
    Text = Annotated[str, Field(max_length=settings.max_text_chars), AfterValidator(_is_text)]
    Pair = Annotated[str | None, Field(max_length=settings.max_text_chars), AfterValidator(_pair)]
    Rows = Annotated[list["Row"], Field(min_length=1, max_length=settings.max_rows)]
    strict = ConfigDict(extra="forbid", strict=True)

    class Row(BaseModel):
        """One input: a text, and a second text for pair tasks (NLI, paraphrase)."""
        model_config = strict
        text: Text
        text_pair: Pair = None

    class PredictRequest(BaseModel):
        """Rows to answer (``rows``, or one row as ``text`` / ``text_pair``) and options."""
        model_config = strict
        rows: Rows | None = None
        text: Text | None = None
        text_pair: Pair = None
        expert: str | None = Field(None, description="force this expert (no routing)")
        abstain: bool = Field(False, description="an input out of the pool gets no expert")

        @model_validator(mode="after")
        def _one_form(self) -> "PredictRequest":
            if (self.rows is None) == (self.text is None):
                raise ValueError("give either rows or text")
            if self.rows is not None and self.text_pair is not None:
                raise ValueError("text_pair goes with text, not with rows")
            return self

        def inputs(self) -> tuple[list[str], list[str | None]]:
            if self.rows is None:
                return [self.text], [self.text_pair]
            return [r.text for r in self.rows], [r.text_pair for r in self.rows]

    return Row, PredictRequest


class Answer(BaseModel):
    """One row's answer: the record ``predict --json`` prints (``TTLoRAMoE.predict``)."""
    text: str
    text_pair: str | None
    expert: str | None
    task: str | None
    router_probs: dict[str, float]
    label: str | float | None
    label_probs: dict[str, float]
    truncated: bool
    in_pool: bool | None
    pool_score: float | None


class PredictResponse(BaseModel):
    results: list[Answer]


class Metrics:
    """This app's Prometheus collectors, in a registry of its own."""

    def __init__(self, queue_depth: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter("ttmoe_http_requests", "HTTP requests by path and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("ttmoe_http_request_seconds", "time from request to answer",
                                 ["path"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.rows = Counter("ttmoe_rows", "rows answered", registry=self.registry)
        self.batch_rows = Histogram("ttmoe_batch_rows", "rows per call of the mixture",
                                    registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.depth = queue_depth
        Gauge("ttmoe_queue_depth", "requests waiting for the model", registry=self.registry
              ).set_function(queue_depth)


class _Guard:
    """ASGI middleware: counts and times every HTTP request, and reads a request's body whole
    before the app does, answering 413 past ``max_body_bytes`` and 408 past ``timeout_s``."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, timeout_s: float):
        self.app, self.metrics = app, metrics
        self.max_body_bytes, self.timeout_s = max_body_bytes, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), ["disconnected"]

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        path = scope["path"] if scope["path"] in PATHS else "other"
        try:
            replay = await self._body(scope, receive, counted)
            if replay is not None:
                await self.app(scope, replay, counted)
        except Exception:
            status[0] = "500"
            raise
        finally:
            self.metrics.requests.labels(path, status[0]).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)

    async def _body(self, scope, receive, send):
        """A ``receive`` that replays the whole body, or None when answered here (or gone)."""
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return receive
        too_large = _error(413, f"the body is over {self.max_body_bytes:,} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            await _error(400, "bad Content-Length")(scope, receive, send)
            return None
        if length is not None and int(length) > self.max_body_bytes:
            await too_large(scope, receive, send)
            return None
        chunks, size = [], 0
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await _error(408, f"the body did not arrive within {self.timeout_s:g} s")(
                    scope, receive, send)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await too_large(scope, receive, send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return replay


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_line(exc: RequestValidationError) -> str:
    """The first validation error on one line: ``rows.0.text: String should have ...``."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the body is not JSON ({first.get('ctx', {}).get('error', 'decode error')})"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid")
    return " ".join(text.split())[:300] + more


def create_app(moe: TTLoRAMoE, settings: ServeSettings | None = None) -> FastAPI:
    """The API of ``moe`` (see module docstring); its batcher lives while the app's lifespan."""
    settings = settings or ServeSettings()
    _, PredictRequest = request_models(settings)

    def run(texts: list[str], pairs: list[str | None], expert: str | None = None,
            abstain: bool = False) -> list[dict]:
        metrics.batch_rows.observe(len(texts))
        return moe.predict(texts, pairs, expert=expert, abstain=abstain)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = Batcher(run, settings.max_wait_ms / 1e3, settings.max_batch_rows,
                                    settings.queue_size, settings.coalesce)
        yield
        await asyncio.to_thread(app.state.batcher.close)     # answers what is queued

    app = FastAPI(title="TT-LoRA MoE", lifespan=lifespan,
                  description="Route texts to TT-LoRA experts and answer them.")
    app.state.batcher = None
    metrics = Metrics(lambda: app.state.batcher.depth() if app.state.batcher else 0)
    app.add_middleware(_Guard, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       timeout_s=settings.timeout_s)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_line(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return _error(exc.status_code, detail, exc.headers)

    errors = {code: {"description": text} for code, text in (
        (400, "not JSON"), (408, "body too slow"), (413, "body too large"),
        (422, "invalid request"), (503, "queue full or shutting down"), (504, "no answer in time"))}

    async def predict(body: PredictRequest) -> Response:
        """Answer the rows: route each to an expert (or the one given) and classify it."""
        if body.expert is not None:
            try:
                moe.expert_index(body.expert)
            except MoEError as exc:
                raise ApiError(422, str(exc)) from None
        elif moe.router is None:
            raise ApiError(422, f"this pack has no router: choose an expert with \"expert\" "
                                f"({', '.join(moe.names[:20])})")
        batcher = app.state.batcher
        if batcher is None:
            raise ApiError(503, "the server is not serving", {"Retry-After": str(RETRY_AFTER_S)})
        texts, pairs = body.inputs()
        try:
            future = batcher.submit(texts, pairs, expert=body.expert, abstain=body.abstain)
        except (QueueFull, Closed) as exc:
            raise ApiError(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None
        try:
            answers = await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"no answer within {settings.timeout_s:g} s") from None
        except MoEError as exc:
            raise ApiError(422, str(exc)) from None
        metrics.rows.inc(len(answers))
        return Response(json.dumps({"results": answers}), media_type="application/json")

    # the request model is local to this app (its limits): FastAPI reads the annotation itself
    predict.__annotations__["body"] = PredictRequest
    app.post("/v1/predict", response_model=PredictResponse, responses=errors)(predict)

    @app.get("/v1/experts")
    async def experts() -> dict[str, Any]:
        """The pack's experts, whether it routes, and the tokens read per row."""
        return {"router": moe.router is not None, "max_length": moe.max_length,
                "experts": [{"name": c.name, "task": c.task, "labels": c.label_names,
                             "num_labels": c.num_labels, "regression": c.is_regression,
                             "pooling": c.pooling} for c in moe.cards]}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while serving, 503 before start and while shutting down."""
        batcher = app.state.batcher
        serving = batcher is not None and not batcher.closed
        return JSONResponse({"status": "ok" if serving else "unavailable",
                             "experts": len(moe.names), "queue_depth": metrics.depth()},
                            status_code=200 if serving else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text exposition of this server's metrics."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
