"""Outermost middleware: every error leaves as an NGSI-LD ProblemDetails response."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.broker.errors import InternalError, NgsiError
from cityos.http.media import PROBLEM

log = logging.getLogger("cityos.http")


async def send_problem(send: Send, error: NgsiError) -> None:
    """Send a ProblemDetails response for an error."""
    headers = [(b"content-type", PROBLEM.encode())]
    if error.status == 405 and "allow" in error.extra:
        headers.append((b"allow", str(error.extra["allow"]).encode()))
    body = error.problem()
    body.pop("allow", None)
    payload = orjson.dumps(body)
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class ErrorMiddleware:
    """Turn NgsiError into its ProblemDetails and anything unexpected into a 500 one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except NgsiError as exc:
            if started:
                raise
            await send_problem(send, exc)
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await send_problem(send, InternalError(f"internal error: {type(exc).__name__}"))


def not_found_app() -> Any:
    """Return the ASGI app answering unknown paths with a ResourceNotFound problem."""
    from cityos.broker.errors import ResourceNotFound

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send_problem(send, ResourceNotFound(f"no such resource: {scope['path']}"))

    return app
