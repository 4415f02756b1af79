"""Security headers on every response, a CSP on pages, and CORS for allowed origins.

`SecurityHeadersMiddleware` adds what browsers need to refuse sniffing, framing and leaking
full URLs in Referer, and on HTML pages a Content-Security-Policy that allows only this
origin's scripts, styles and images (plus the map tile host). `CorsMiddleware` lets browser
apps on the configured origins call the APIs: it answers preflights itself and marks the
answers to allowed origins; other origins get no CORS headers at all, so browsers refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: on every response
BASE_HEADERS: Final = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-frame-options", "DENY"),
)
CORS_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: request headers NGSI-LD, FIWARE and CKAN clients send
CORS_REQUEST_HEADERS: Final = (
    "Accept",
    "Accept-Language",
    "Authorization",
    "Content-Type",
    "Fiware-Service",
    "Fiware-ServicePath",
    "If-None-Match",
    "Link",
    "NGSILD-Tenant",
)
#: response headers scripts may read (pagination and created resources)
CORS_EXPOSED: Final = ("Link", "Location", "NGSILD-Results-Count")
ANY_ORIGIN: Final = "*"
_REFUSED: Final = b"this origin may not call this API from a browser (CORS)\n"


def tile_origin(tile_url: str | None) -> str | None:
    """Return the origin of a map tile URL template (`https://host`), or None."""
    if not tile_url:
        return None
    parts = urlsplit(tile_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def page_csp(tile_url: str | None = None) -> str:
    """Return the Content-Security-Policy of HTML pages (tiles may come from their host)."""
    images = " ".join(filter(None, ("'self'", "data:", tile_origin(tile_url))))
    return (
        f"default-src 'self'; img-src {images}; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


def security_headers(content_type: str, tile_url: str | None = None) -> list[tuple[str, str]]:
    """Return the security headers of a response of this type (for ready-made responses)."""
    headers = list(BASE_HEADERS)
    if content_type.split(";", 1)[0].strip().lower() == "text/html":
        headers.append(("content-security-policy", page_csp(tile_url)))
    return headers


class SecurityHeadersMiddleware:
    """Add the security headers to every HTTP response, keeping any the app set itself."""

    def __init__(self, app: ASGIApp, *, tile_url: str | None = None) -> None:
        self.app = app
        self.tile_url = tile_url
        # built once: a response costs one pass over its own headers
        self._plain = [(k.encode(), v.encode()) for k, v in security_headers("", tile_url)]
        self._html = [(k.encode(), v.encode()) for k, v in security_headers("text/html", tile_url)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", ()))
                names = set()
                html = False
                for name, value in raw:
                    name = name.lower()
                    names.add(name)
                    if name == b"content-type":
                        html = value.split(b";", 1)[0].strip().lower() == b"text/html"
                extra = self._html if html else self._plain
                raw.extend(h for h in extra if h[0] not in names)
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CorsMiddleware:
    """Answer CORS preflights and mark responses for the allowed origins (a list or `*`)."""

    def __init__(self, app: ASGIApp, *, origins: Iterable[str], max_age: int = 600) -> None:
        self.app = app
        allowed = {o.rstrip("/") for o in origins}
        self.any_origin = ANY_ORIGIN in allowed
        self.origins = frozenset(allowed - {ANY_ORIGIN})
        self.max_age = max_age

    def allows(self, origin: str) -> bool:
        """Return True when scripts from origin may call the APIs."""
        return self.any_origin or origin in self.origins

    def _origin_headers(self, origin: str) -> list[tuple[str, str]]:
        if self.any_origin:
            return [("access-control-allow-origin", ANY_ORIGIN)]
        # the answer depends on Origin: caches must keep one per origin
        return [("access-control-allow-origin", origin), ("vary", "Origin")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
                break
        if origin is None:  # not a browser's cross-origin call: the common case, at no cost
            await self.app(scope, receive, send)
            return
        request_headers = Headers(scope=scope)
        preflight = scope["method"] == "OPTIONS" and (
            "access-control-request-method" in request_headers
        )
        if not self.allows(origin):
            if preflight:
                await _respond(send, 403, [("content-type", "text/plain; charset=utf-8")], _REFUSED)
                return
            await self.app(scope, receive, send)
            return
        if preflight:
            await _respond(send, 204, self._preflight_headers(origin), b"")
            return
        extra = [
            *self._origin_headers(origin),
            ("access-control-expose-headers", ", ".join(CORS_EXPOSED)),
        ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    if name == "vary":
                        headers.add_vary_header(value)
                    else:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight_headers(self, origin: str) -> list[tuple[str, str]]:
        return [
            *self._origin_headers(origin),
            ("access-control-allow-methods", ", ".join(CORS_METHODS)),
            ("access-control-allow-headers", ", ".join(CORS_REQUEST_HEADERS)),
            ("access-control-max-age", str(self.max_age)),
        ]


async def _respond(
    send: Send, status: int, headers: Sequence[tuple[str, str]], body: bytes
) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
