"""CKAN's Action API over HTTP: /api/3/action/<name> and /api/action/<name>, GET and POST.

The envelope, the error types and their statuses are CKAN's (docs/catalog.md): clients such as
`ckanapi` map `error.__type` back to their exceptions. GET parameters come from the query
string (a repeated key gives a list); POST parameters from a JSON object, a form, or a
multipart form whose file fields become the call's uploads.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response

from cityos.auth import context
from cityos.broker.api.common import Broker
from cityos.catalog import registry
from cityos.catalog.errors import CkanError, NotAuthorized, UnknownAction
from cityos.catalog.registry import Context, Params
from cityos.catalog.service import Catalog
from cityos.http import media
from cityos.http.routing import Handler

log = logging.getLogger("cityos.catalog")

PATHS: Final = ("/api/3/action/{name}", "/api/action/{name}")
#: a JSON or form body of an action (uploads have their own, larger limit)
MAX_ACTION_BODY: Final = 8 * 1024 * 1024
_CALLBACK = re.compile(r"^[A-Za-z_$][\w$.]{0,63}$")


class BadRequest(CkanError):
    type_name = "Bad Request"
    status = 400


class TooLarge(CkanError):
    type_name = "Bad Request"
    status = 413


def _envelope(help_url: str, **fields: Any) -> bytes:
    return orjson.dumps({"help": help_url, **fields})


async def caller(request: Request, catalog: Catalog, *, write: bool = False) -> str | None:
    """Return who calls: an API key the access layer identified, else a catalog token's user.

    Raise NotAuthorized when a token was presented that is not valid (not anonymous then).
    """
    principal = context.current()
    if principal.kind != "anonymous":  # the access layer identified and authorized it
        if not write and not context.reading().everything:
            # a caller who may not read the whole catalog sees what anyone sees: no private
            # datasets (a write reaching here was allowed by the policy already)
            return None
        if principal.kind == "token":
            return principal.id.removeprefix("token:")
        return principal.id  # "key:<prefix>", "user:<name>", "oidc:<subject>"
    token = token_of(request)
    if token is None:
        return None
    user = await catalog.user_for_token(token)
    if user is None:
        raise NotAuthorized("the API token is not valid (unknown or revoked)")
    return user


def token_of(request: Request) -> str | None:
    """Return the API token a CKAN client sent (Authorization or X-CKAN-API-Key)."""
    raw = request.headers.get("authorization") or request.headers.get("x-ckan-api-key")
    if not raw:
        return None
    raw = raw.strip()
    if raw.lower().startswith("bearer "):
        raw = raw[7:].strip()
    return raw or None


async def _params(request: Request, catalog: Catalog) -> tuple[Params, dict[str, Any]]:
    """Return the call's parameters and its uploads (field -> (name, type, bytes))."""
    params: Params = {}
    for key in request.query_params:
        values = request.query_params.getlist(key)
        params[key] = values[0] if len(values) == 1 else values
    if request.method != "POST":
        return params, {}
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    limit = catalog.max_upload if ctype == "multipart/form-data" else MAX_ACTION_BODY
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds {limit} bytes")
    files: dict[str, Any] = {}
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=16, max_fields=1000)
        except (HTTPException, MultiPartException, ValueError) as exc:  # a malformed form
            raise BadRequest(f"could not parse the form body: {exc}") from None
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read(limit + 1)
                    if len(data) > limit:
                        raise TooLarge(f"uploaded file exceeds {limit} bytes")
                    files[key] = (
                        value.filename or key,
                        value.content_type or "application/octet-stream",
                        data,
                    )
                elif key in params:
                    prev = params[key]
                    params[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
                else:
                    params[key] = value
        finally:
            await form.close()
        return params, files
    body = b""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds {limit} bytes")
        body += chunk
    if not body.strip():
        return params, {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object of the action's parameters")
    params.update(doc)
    return params, files


def catalog_routes(broker: Broker, catalog: Catalog) -> list[tuple[str, str, Handler]]:
    """Return the Action API routes; the catalog's tables are created at start."""
    broker.on_start.append(catalog.start)
    broker.on_stop.append(catalog.stop)

    async def handle(request: Request) -> Response:
        name: str = request.path_params["name"]
        base = catalog.base_url
        help_url = f"{base}/api/3/action/help_show?name={name}"
        callback = request.query_params.get("callback") if request.method == "GET" else None
        try:
            params, files = await _params(request, catalog)
            params.pop("callback", None)
            params.pop("_", None)  # jQuery's cache buster, sent with JSONP
            found = registry.ACTIONS.get(name)
            user = await caller(request, catalog, write=found is not None and found.write)
            ctx = Context(catalog=catalog, user=user, files=files, base_url=base)
            result = await registry.call(ctx, name, params)
            body = _envelope(help_url, success=True, result=result)
            status = 200
        except UnknownAction as exc:
            return Response(orjson.dumps(exc.message), 400, media_type=media.JSON)
        except CkanError as exc:
            body = _envelope(help_url, success=False, error=exc.error())
            status = exc.status
        except Exception:
            log.exception("catalog action %s failed", name)
            error = {"__type": "Internal Server Error", "message": "Internal Server Error"}
            body = _envelope(help_url, success=False, error=error)
            status = 500
        if callback and _CALLBACK.match(callback):
            return Response(
                callback.encode() + b"(" + body + b");", 200, media_type="application/javascript"
            )
        return Response(body, status, media_type=media.JSON)

    return [(method, path, handle) for path in PATHS for method in ("GET", "POST")]
