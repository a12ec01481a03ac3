"""The web app: one offline page (its assets shipped in the package) and a JSON API over a
Service, on Starlette. Every error is a JSON reply {"error": message} with a 4xx code."""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainer.errors import DataError
from trainer.serve.service import RequestError, Service

MAX_BODY = 5 * 2**20  # bytes: a drawing is ~60 KB of JSON, a photo of a digit a few MB
# JSON bodies up to this size are answered on the event loop (~1 ms for a 28x28 digit, ~2 ms
# for the page's 140x140 drawing, where a thread hand-off costs more than it saves); larger
# ones, up to ~0.2 s of parsing, in a worker thread so that other requests are not held up
INLINE_BODY = 256 * 2**10
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
# the page may talk to this server only: no CDN, no other host, nothing inline
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_INT_DIGITS = 20  # beyond any pixel, width or height (int64 has 19)
log = logging.getLogger("trainer.serve")


def create_app(service: Service) -> Starlette:
    """The Starlette app serving `service`: the page at /, the API under /api."""
    assets = {name: resources.files("trainer.serve").joinpath("static", name).read_bytes()
              for name in ASSETS}

    def asset(name: str):
        async def endpoint(request: Request) -> Response:
            return Response(assets[name], media_type=ASSETS[name],
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff"})
        return endpoint

    def predict_json(body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body, parse_int=_whole_number)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise RequestError(f"the body is not JSON: {str(e):.100}", 400) from None
        return service.predict_pixels(payload)

    async def predict(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) <= INLINE_BODY:
            return JSONResponse(predict_json(body))
        return JSONResponse(await run_in_threadpool(predict_json, body))

    async def predict_image(request: Request) -> JSONResponse:
        name, data = "the uploaded image", None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            # every part, also those sharing a name (values() keeps one per name); a file field
            # left empty arrives as an empty string: one refusal whatever the parts' order
            parts = form.multi_items()
            files = [v for _, v in parts if hasattr(v, "read")]
            if len(parts) != 1 or len(files) != 1:
                raise RequestError(f"send one image file in the form, and nothing else: got "
                                   f"{len(parts)} part(s), {len(files)} of them a file", 400)
            name, data = f"upload {files[0].filename!r:.60}", await files[0].read()
        else:
            data = await request.body()
        # decoding may take a while (up to 4096x4096 pixels): off the event loop
        return JSONResponse(await run_in_threadpool(service.predict_image, data, name))

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(service.info())

    async def history(request: Request) -> JSONResponse:
        return JSONResponse(service.history())

    async def confusion(request: Request) -> JSONResponse:
        return JSONResponse(service.confusion())

    async def cell(request: Request) -> JSONResponse:
        p, q = request.path_params, request.query_params
        return JSONResponse(service.cell(p["actual"], p["predicted"],
                                         _int(q.get("offset", "0"), "offset"),
                                         _int(q.get("limit", "100"), "limit")))

    routes = [Route("/", asset("index.html")),
              Route("/static/app.js", asset("app.js")),
              Route("/static/style.css", asset("style.css")),
              Route("/api/predict", predict, methods=["POST"]),
              Route("/api/predict/image", predict_image, methods=["POST"]),
              Route("/api/model", model),
              Route("/api/history", history),
              Route("/api/confusion", confusion),
              Route("/api/confusion/{actual:int}/{predicted:int}", cell)]
    handlers: dict[Any, Any] = {HTTPException: _http_error, RequestError: _request_error,
                                DataError: _request_error, Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(QuietShutdown)
    return app


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RequestError(f"{name} must be a whole number, got {text!r:.30}", 400) from None


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(f"no such page or endpoint: {request.url.path[:100]}", 404)
    return _error(str(exc.detail), exc.status_code)


async def _request_error(request: Request, exc: Exception) -> Response:
    # a DataError is an upload or a drawing that is not a digit (blank, unreadable): 422
    return _error(str(exc), getattr(exc, "status", 422))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("error answering %s %s", request.method, request.url.path)
    return _error("internal server error: see the server's log", 500)


class QuietShutdown:
    """A request still in flight when Ctrl-C's grace period ends (trainer serve's
    GRACE_SECONDS) is cancelled by the server: it ends here, without a traceback on the
    terminal of someone who only asked the server to stop."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if scope["type"] != "http":
                raise


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether announced by Content-Length
    or streamed in chunks, before they are held in memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"the request body is over the limit of {self.limit // 2**20} MB"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _error(self._message(), 413)(scope, receive, send)


def _whole_number(text: str) -> int:
    """A JSON integer, bounded before Python converts it (which refuses over 4300 digits in a
    message about its own settings): a number that long is valid JSON, and a bad value."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError(f"a whole number of {len(text.lstrip('-')):,} digits: pixels are "
                           f"gray levels 0..255, width and height a few thousand at most")
    return int(text)
