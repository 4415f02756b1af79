"""Routes grouped by path, so a wrong method gets a 405 ProblemDetails, not plain text."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.broker.errors import MethodNotAllowed

# Every route takes every method, so the dispatcher answers wrong ones with a 405 problem.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Handler = Callable[[Request], Awaitable[Response]]


def grouped(table: list[tuple[str, str, Handler]]) -> list[Route]:
    """Turn (method, path, handler) rows into one Route per path dispatching on the method."""
    by_path: dict[str, dict[str, Handler]] = {}
    for method, path, handler in table:
        by_path.setdefault(path, {})[method] = handler
    return [
        Route(path, _dispatcher(handlers), methods=ALL_METHODS)
        for path, handlers in by_path.items()
    ]


def _dispatcher(handlers: dict[str, Handler]) -> Handler:
    allowed = ", ".join(sorted(handlers))
    if "GET" in handlers and "HEAD" not in handlers:
        handlers = {**handlers, "HEAD": handlers["GET"]}

    async def dispatch(request: Request) -> Response:
        handler = handlers.get(request.method)
        if handler is None:
            raise MethodNotAllowed(
                f"method {request.method} is not allowed here; allowed: {allowed}",
                allow=allowed,
            )
        return await handler(request)

    return dispatch
