"""Per-request plumbing shared by the NGSI-LD handlers: tenant, body, @context, Accept."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cityos.broker.errors import (
    BadRequestData,
    InvalidRequest,
    NonexistentTenant,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from cityos.cluster import Cluster
from cityos.http import media
from cityos.jsonld.context import ActiveContext
from cityos.jsonld.loader import ContextLoader
from cityos.settings import Settings
from cityos.storage.base import Storage

TENANT_HEADER = "ngsild-tenant"
_TENANT = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_EMPTY = object()


@dataclass(slots=True)
class Broker:
    """What every handler needs: storage, the @context loader and settings.

    Features with background work (notification delivery, history pruning) append to
    on_start / on_stop; the app runs them after storage starts and before it closes. The
    cluster tells the other workers of changes and says whether this one leads (one worker
    unless the settings name a bus).
    """

    store: Storage
    loader: ContextLoader
    settings: Settings
    cluster: Cluster = field(default_factory=Cluster)
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass(slots=True)
class Call:
    """One API call's parsed envelope."""

    tenant: str
    ctx: ActiveContext
    accept: str
    body: Any = None


def tenant_of(request: Request) -> str:
    """Return the tenant named by the NGSILD-Tenant header ('' is the default tenant)."""
    raw = request.headers.get(TENANT_HEADER)
    if raw is None or raw == "":
        return ""
    if not _TENANT.match(raw):
        raise BadRequestData(
            f"NGSILD-Tenant: {raw!r} is not a valid tenant name (1-128 of A-Z a-z 0-9 _ . : -)"
        )
    return raw


async def require_tenant(broker: Broker, tenant: str) -> None:
    """Raise NonexistentTenant for reads from a tenant that was never written to."""
    if tenant and not await broker.store.tenant_exists(tenant):
        raise NonexistentTenant(f"tenant {tenant!r} does not exist")


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than limit bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds {limit} bytes")
        except ValueError:
            raise InvalidRequest("Content-Length: not a number") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """Parse a JSON body or raise InvalidRequest naming the problem."""
    if not raw:
        raise InvalidRequest("the request body is empty; a JSON payload is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


async def begin(
    broker: Broker,
    request: Request,
    *,
    offered: tuple[str, ...] = (media.JSON, media.LD_JSON),
    body: bool = False,
    merge_patch: bool = False,
    context_in_elements: bool = False,
) -> Call:
    """Parse the envelope of an API call: tenant, Accept, body and @context."""
    tenant = tenant_of(request)
    accept = media.parse_accept(request.headers.get("accept"), offered)
    links = media.context_links(request.headers.get("link"))
    if len(links) > 1:
        raise BadRequestData("Link: more than one JSON-LD @context link header")
    payload: Any = None
    ctype = ""
    if body:
        ctype = media.content_type(request.headers.get("content-type"))
        allowed = {media.JSON, media.LD_JSON} | ({media.MERGE_PATCH} if merge_patch else set())
        if ctype not in allowed:
            raise UnsupportedMediaType(
                f"Content-Type: {ctype or 'missing'}; expected one of {', '.join(sorted(allowed))}"
            )
        payload = parse_json(await read_body(request, broker.settings.max_body))
    context_value: Any = links[0] if links else _EMPTY
    if ctype == media.LD_JSON:
        if links:
            raise BadRequestData(
                "Link: a JSON-LD @context Link header is not allowed with application/ld+json; "
                "put @context in the body"
            )
        if context_in_elements and isinstance(payload, list):
            context_value = _EMPTY  # each element carries its own @context
        elif not isinstance(payload, dict) or "@context" not in payload:
            raise BadRequestData("@context: missing from an application/ld+json body")
        else:
            context_value = payload["@context"]
    elif body and isinstance(payload, dict) and "@context" in payload:
        raise BadRequestData(
            "@context: not allowed in an application/json body; use application/ld+json "
            "or a Link header"
        )
    elif (
        body
        and context_in_elements
        and isinstance(payload, list)
        and any(isinstance(e, dict) and "@context" in e for e in payload)
    ):
        raise BadRequestData(
            "@context: not allowed in an application/json body; use application/ld+json"
        )
    ctx = (
        broker.loader.default()
        if context_value is _EMPTY
        else await broker.loader.resolve(context_value)
    )
    return Call(tenant, ctx, accept, payload)


def json_response(
    call: Call, content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Render a JSON body with the @context as the call's Accept asks."""
    hdrs = dict(headers or {})
    if call.accept == media.LD_JSON:
        if isinstance(content, dict):
            content = {"@context": call.ctx.source, **content}
        elif isinstance(content, list):
            content = [
                {"@context": call.ctx.source, **c} if isinstance(c, dict) else c for c in content
            ]
    elif isinstance(call.ctx.source, str):
        link = media.link_header(call.ctx.source)
        hdrs["Link"] = f"{link}, {hdrs['Link']}" if "Link" in hdrs else link
    return Response(orjson.dumps(content), status, hdrs, media_type=call.accept)


def no_content(headers: dict[str, str] | None = None) -> Response:
    return Response(b"", 204, headers)


def created(location: str) -> Response:
    return Response(b"", 201, {"Location": location})
