"""Security headers on every answer, a CSP on pages, and CORS only for allowed origins."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from cityos.http.middleware.security import (
    CorsMiddleware,
    SecurityHeadersMiddleware,
    page_csp,
    security_headers,
)

TILES = "https://cyberjapandata.gsi.go.jp/xyz/std/{z}/{x}/{y}.png"
APP_ORIGIN = "https://app.example.jp"


async def page(_: Request) -> Response:
    return HTMLResponse("<h1>佐野市</h1>")


async def entities(_: Request) -> Response:
    return JSONResponse(
        [], headers={"Link": '</e?offset=20>; rel="next"', "NGSILD-Results-Count": "0"}
    )


async def create(_: Request) -> Response:
    return Response(status_code=201, headers={"Location": "/ngsi-ld/v1/entities/urn:x:1"})


async def framed(_: Request) -> Response:
    # a response that chose its own policy keeps it
    return PlainTextResponse("ok", headers={"X-Frame-Options": "SAMEORIGIN"})


def client(origins: Iterable[str] = (), tile_url: str | None = None) -> TestClient:
    app = Starlette(
        routes=[
            Route("/page", page),
            Route("/entities", entities),
            Route("/entities", create, methods=["POST"]),
            Route("/framed", framed),
        ]
    )
    wrapped = SecurityHeadersMiddleware(CorsMiddleware(app, origins=origins), tile_url=tile_url)
    return TestClient(wrapped)


BASE = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-frame-options": "DENY",
}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/page", 200),
        ("GET", "/entities", 200),
        ("POST", "/entities", 201),
        ("GET", "/missing", 404),
        ("DELETE", "/page", 405),
    ],
)
def test_every_answer_has_the_base_headers(method: str, path: str, status: int) -> None:
    r = client().request(method, path)
    assert r.status_code == status
    for name, value in BASE.items():
        assert r.headers[name] == value


def test_pages_get_a_strict_csp_and_apis_none() -> None:
    c = client()
    csp = c.get("/page").headers["content-security-policy"]
    assert csp == (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    assert "content-security-policy" not in c.get("/entities").headers


def test_map_tiles_are_allowed_from_their_host_only() -> None:
    csp = client(tile_url=TILES).get("/page").headers["content-security-policy"]
    assert "img-src 'self' data: https://cyberjapandata.gsi.go.jp;" in csp
    assert "script-src 'self';" in csp  # tiles are images, nothing more
    assert page_csp("not a url") == page_csp(None)


def test_a_header_the_app_set_is_kept() -> None:
    r = client().get("/framed")
    assert r.headers.get_list("x-frame-options") == ["SAMEORIGIN"]


def test_ready_made_responses_get_the_same_headers() -> None:
    # for the portal's /public/ files, whose headers are built once per file version
    assert security_headers("text/html; charset=utf-8", TILES) == [
        *BASE.items(),
        ("content-security-policy", page_csp(TILES)),
    ]
    assert security_headers("application/json") == list(BASE.items())


# -- CORS ---------------------------------------------------------------------------------------


def preflight(c: TestClient, origin: str, method: str = "POST") -> Any:
    return c.options(
        "/entities",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type, ngsild-tenant, link, authorization",
        },
    )


def test_a_preflight_from_an_allowed_origin_is_answered() -> None:
    r = preflight(client([APP_ORIGIN]), APP_ORIGIN)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "Origin" in r.headers["vary"]
    methods = r.headers["access-control-allow-methods"].split(", ")
    assert {"GET", "POST", "PATCH", "DELETE"} <= set(methods)
    allowed = {h.lower() for h in r.headers["access-control-allow-headers"].split(", ")}
    assert {"link", "ngsild-tenant", "fiware-service", "authorization", "content-type"} <= allowed
    assert int(r.headers["access-control-max-age"]) > 0
    assert r.headers["x-content-type-options"] == "nosniff"


def test_answers_to_an_allowed_origin_expose_paging_and_location() -> None:
    c = client([APP_ORIGIN, "https://other.example.jp"])
    r = c.get("/entities", headers={"Origin": APP_ORIGIN})
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    exposed = r.headers["access-control-expose-headers"].split(", ")
    assert set(exposed) == {"Link", "Location", "NGSILD-Results-Count"}
    assert r.headers["vary"] == "Origin"
    r = c.post("/entities", headers={"Origin": "https://other.example.jp"})
    assert r.status_code == 201
    assert r.headers["access-control-allow-origin"] == "https://other.example.jp"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "http://app.example.jp",  # another scheme is another origin
        "https://app.example.jp:8443",
        "null",
    ],
)
def test_a_disallowed_origin_gets_no_cors_headers(origin: str) -> None:
    c = client([APP_ORIGIN])
    r = c.get("/entities", headers={"Origin": origin})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.startswith("access-control-")]
    r = preflight(c, origin)
    assert r.status_code == 403
    assert not [h for h in r.headers if h.startswith("access-control-")]


def test_no_origins_configured_means_no_cors_at_all() -> None:
    c = client()
    r = c.get("/entities", headers={"Origin": APP_ORIGIN})
    assert "access-control-allow-origin" not in r.headers
    assert preflight(c, APP_ORIGIN).status_code == 403


def test_any_origin_answers_with_a_star_and_no_vary() -> None:
    c = client(["*"])
    r = c.get("/entities", headers={"Origin": "https://anyone.example.org"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "vary" not in r.headers
    # keys travel in a header, never in cookies: credentials are never allowed
    assert "access-control-allow-credentials" not in r.headers
    assert preflight(c, "https://anyone.example.org").headers["access-control-allow-origin"] == "*"


def test_requests_without_origin_and_plain_options_reach_the_app() -> None:
    c = client([APP_ORIGIN])
    r = c.get("/entities")
    assert "access-control-allow-origin" not in r.headers
    # OPTIONS without Access-Control-Request-Method is no preflight: the app answers it
    r = c.options("/entities", headers={"Origin": APP_ORIGIN})
    assert r.status_code == 405
