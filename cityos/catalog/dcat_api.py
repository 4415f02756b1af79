"""DCAT documents over HTTP: /catalog.{ttl,jsonld,rdf} and /dataset/<id>.{ttl,jsonld,rdf}.

The endpoints are ckanext-dcat's: the catalog is paged (`?page=N`, 100 datasets a page, newest
change first, Hydra links between pages), filtered by `?modified_since=<ISO date>` and by
package_search's `?q=` and `?fq=`. Data comes from the actions, as a third-party client would
get it, so private and deleted datasets never appear.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from cityos.catalog import dcat, registry
from cityos.catalog.errors import CkanError, NotAuthorized, NotFound
from cityos.catalog.registry import Context
from cityos.catalog.service import Catalog
from cityos.http.routing import Handler

__all__ = ["DcatRequestError", "dataset_document", "dcat_routes", "modified_since_term"]


class DcatRequestError(Exception):
    """A DCAT request the server refuses: a status and a message for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _plain(status: int, message: str) -> Response:
    return Response(message + "\n", status, media_type="text/plain; charset=utf-8")


def _rdf(data: bytes, fmt: dcat.RdfFormat) -> Response:
    media = fmt.media_type if fmt.suffix == "jsonld" else f"{fmt.media_type}; charset=utf-8"
    return Response(data, 200, headers={"content-type": media})


def modified_since_term(value: str) -> str:
    """Return the package_search fq term for `modified_since`, or raise DcatRequestError."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise DcatRequestError(
            400,
            f"modified_since: {value!r} is not an ISO 8601 date or date-time "
            "(for example 2026-01-31 or 2026-01-31T09:00:00+09:00)",
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return f"metadata_modified:[{when.strftime('%Y-%m-%dT%H:%M:%S.%f')}Z TO *]"


def _page_number(raw: str | None) -> int:
    if raw is None or raw == "":
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise DcatRequestError(400, f"page: {raw!r} is not a page number (1, 2, 3...)")
    return int(raw)


async def catalog_document(catalog: Catalog, request: Request, fmt: dcat.RdfFormat) -> bytes:
    """Return one page of the catalog in a format, or raise DcatRequestError."""
    query = request.query_params
    page = _page_number(query.get("page"))
    q = query.get("q") or "*:*"
    terms = [query["fq"]] if query.get("fq", "").strip() else []
    since = query.get("modified_since")
    if since:
        terms.append(modified_since_term(since))
    params: dict[str, Any] = {
        "q": q,
        "rows": dcat.PAGE_SIZE,
        "start": (page - 1) * dcat.PAGE_SIZE,
        "sort": "metadata_modified desc",
        "facet": "false",
    }
    if terms:
        params["fq"] = " AND ".join(terms)
    base = catalog.base_url
    try:
        found = await registry.call(
            Context(catalog=catalog, base_url=base), "package_search", params
        )
    except CkanError as exc:
        raise DcatRequestError(exc.status, f"the catalog search failed: {exc.message}") from None
    kept = {k: v for k, v in (("q", query.get("q")), ("fq", query.get("fq"))) if v}
    if since:
        kept["modified_since"] = since

    def url(n: int) -> str:
        return f"{base}/catalog.{fmt.suffix}?" + urlencode({**kept, "page": n})

    paging = dcat.CatalogPage(page=page, total=int(found["count"]), url=url)
    if page > paging.last:
        raise DcatRequestError(
            404, f"page {page} does not exist: this listing has {paging.last} page(s)"
        )
    return dcat.serialize(
        dcat.catalog_graph(
            found["results"], base, paging=paging, title=catalog.settings.catalog_title
        ),
        fmt,
    )


async def dataset_document(catalog: Catalog, ident: str, fmt: dcat.RdfFormat) -> Response:
    """Return one dataset's DCAT document; 404 when unknown, private or deleted."""
    base = catalog.base_url
    try:
        pkg = await registry.call(
            Context(catalog=catalog, base_url=base), "package_show", {"id": ident}
        )
    except (NotFound, NotAuthorized):
        return _plain(404, f"dataset {ident!r} not found")
    if pkg.get("private") or pkg.get("state", "active") != "active":
        return _plain(404, f"dataset {ident!r} not found")
    return _rdf(dcat.serialize(dcat.dataset_graph(pkg, base), fmt), fmt)


def dcat_routes(catalog: Catalog) -> list[tuple[str, str, Handler]]:
    """Return the DCAT routes (listed before the dataset pages so `/dataset/x.ttl` wins)."""
    table: list[tuple[str, str, Handler]] = []
    for fmt in dcat.FORMATS.values():

        async def whole(request: Request, fmt: dcat.RdfFormat = fmt) -> Response:
            try:
                return _rdf(await catalog_document(catalog, request, fmt), fmt)
            except DcatRequestError as exc:
                return _plain(exc.status, exc.message)

        async def one(request: Request, fmt: dcat.RdfFormat = fmt) -> Response:
            return await dataset_document(catalog, request.path_params["id"], fmt)

        table.append(("GET", f"/catalog.{fmt.suffix}", whole))
        table.append(("GET", f"/dataset/{{id}}.{fmt.suffix}", one))
    return table
