"""Run an ASGI app under granian's RSGI interface, with a fast lane in front of it.

RSGI answers a request with one call (`proto.response_bytes`) where ASGI needs two awaited
messages; for the portal's snapshots under a surge that is the difference between about a
third and about two thirds of nginx's rate (bench/RESULTS.md, issue 5). Everything that is
not on the fast lane goes to the ASGI app unchanged through `RsgiBridge._asgi`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from starlette.types import ASGIApp, Message

log = logging.getLogger("cityos.http")

#: bodies announced up to this size are read in one call; larger or chunked ones are streamed
#: to the app piece by piece, so its own size limit (CITYOS_MAX_BODY) stops them early
WHOLE_BODY = 1 << 20
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}

StrHeaders = list[tuple[str, str]]


class Headers(Protocol):
    """The request headers granian hands over (`granian.rsgi.Headers`)."""

    def items(self) -> list[tuple[str, str]]: ...
    def get(self, key: str, default: Any = None) -> Any: ...


class Scope(Protocol):
    """The parts of an RSGI scope the bridge reads (`granian.rsgi.Scope`)."""

    proto: str
    http_version: str
    scheme: str
    method: str
    path: str
    query_string: str
    client: str
    server: str

    @property
    def headers(self) -> Headers: ...


class Stream(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...


class HttpProto(Protocol):
    """An RSGI HTTP protocol object (`granian.rsgi.HTTPProtocol`)."""

    async def __call__(self) -> bytes: ...
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def client_disconnect(self) -> None: ...
    def response_bytes(self, status: int, headers: StrHeaders, body: bytes) -> None: ...
    def response_stream(self, status: int, headers: StrHeaders) -> Stream: ...


#: answer a request at once (True) or leave it to the app (False)
FastLane = Callable[[Scope, Any], bool]
Lifespan = Callable[[ASGIApp], AbstractAsyncContextManager[None]]


def _address(text: str) -> tuple[str, int] | None:
    """Split "host:port" (or "[v6]:port") as ASGI's client and server entries want it."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class RsgiBridge:
    """An RSGI application: the fast lane first, then the ASGI app, whose life it runs."""

    def __init__(
        self, app: ASGIApp, *, lifespan: Lifespan | None = None, fast: FastLane | None = None
    ) -> None:
        self.app = app
        self.lifespan = lifespan
        self.fast = fast
        self._life: AbstractAsyncContextManager[None] | None = None

    # -- life (granian calls these with its event loop, before and after serving) --------
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.lifespan is None:
            return
        self._life = self.lifespan(self.app)
        try:
            loop.run_until_complete(self._life.__aenter__())
        except Exception:
            log.exception("startup failed")
            sys.exit(1)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._life is not None:
            loop.run_until_complete(self._life.__aexit__(None, None, None))
            self._life = None

    # -- requests -------------------------------------------------------------------------
    async def __rsgi__(self, scope: Scope, proto: Any) -> None:
        if scope.proto != "http":  # no websockets here: refuse the upgrade
            proto.close(1003)
            return
        if self.fast is not None and self.fast(scope, proto):
            return
        await self._asgi(scope, proto)

    async def _asgi(self, scope: Scope, proto: HttpProto) -> None:
        headers = scope.headers
        asgi_scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": scope.http_version,
            "method": scope.method,
            "scheme": scope.scheme,
            "path": scope.path,
            "raw_path": scope.path.encode(),
            "query_string": scope.query_string.encode(),
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            "client": _address(scope.client),
            "server": _address(scope.server),
        }
        receive = _receiver(proto, headers.get("content-length"), headers.get("transfer-encoding"))
        response = _Response(proto)
        try:
            await self.app(asgi_scope, receive, response.send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.method, scope.path)
            if not response.started:
                proto.response_bytes(500, [("content-length", "0")], b"")
            return
        if not response.started:  # the app ended without answering
            proto.response_bytes(500, [("content-length", "0")], b"")


def _receiver(proto: HttpProto, length: str | None, chunked: str | None) -> Any:
    """Return an ASGI receive() reading the request body from proto."""
    whole = chunked is None and (length is None or (length.isdigit() and int(length) <= WHOLE_BODY))
    chunks: AsyncIterator[bytes] | None = None
    done = False

    async def receive() -> Message:
        nonlocal chunks, done
        if done:
            await proto.client_disconnect()
            return {"type": "http.disconnect"}
        if whole:
            done = True
            return {"type": "http.request", "body": await proto(), "more_body": False}
        if chunks is None:
            chunks = proto.__aiter__()
        try:
            return {"type": "http.request", "body": await chunks.__anext__(), "more_body": True}
        except StopAsyncIteration:
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}

    return receive


class _Response:
    """The ASGI send() side: one response_bytes call, or a stream when the app streams."""

    __slots__ = ("headers", "proto", "started", "status", "stream")

    def __init__(self, proto: HttpProto) -> None:
        self.proto = proto
        self.started = False
        self.status = 500
        self.headers: StrHeaders = []
        self.stream: Stream | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.headers = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())
            ]
        elif kind == "http.response.body":
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if self.stream is None:
                if self.started:
                    return  # the response is complete; ASGI says ignore what follows
                self.started = True
                if not more:
                    self.proto.response_bytes(self.status, self.headers, body)
                    return
                self.stream = self.proto.response_stream(self.status, self.headers)
            if body:
                await self.stream.send_bytes(body)
