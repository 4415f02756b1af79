"""/datastore/dump/<resource id>: a whole datastore table as one CSV or TSV download.

CKAN points resources made by `datastore_create` (no file of their own) at this URL. The
table is read page by page through `datastore_search` (so permissions and private datasets
are checked as for the API) and streamed; UTF-8 with a BOM unless `bom=false`, so that
Excel in Japan opens it correctly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from cityos.catalog import registry
from cityos.catalog.api import caller
from cityos.catalog.errors import CkanError
from cityos.catalog.registry import Context
from cityos.catalog.service import Catalog
from cityos.http.routing import Handler

PAGE: Final = 10_000
FORMATS: Final = {
    "csv": ("text/csv; charset=utf-8", ","),
    "tsv": ("text/tab-separated-values; charset=utf-8", "\t"),
}
BOM: Final = "\ufeff"


def dump_url(base_url: str, resource_id: str) -> str:
    """Return the download URL of a datastore table."""
    return f"{base_url}/datastore/dump/{resource_id}"


def dump_routes(catalog: Catalog) -> list[tuple[str, str, Handler]]:
    """Return the datastore dump route."""

    async def dump(request: Request) -> Response:
        rid: str = request.path_params["id"]
        fmt = request.query_params.get("format", "csv").lower()
        if fmt not in FORMATS:
            return PlainTextResponse(f"format: {fmt!r} is not one of csv, tsv\n", 400)
        bom = request.query_params.get("bom", "true").lower() not in ("false", "0", "no")
        try:  # the first page answers errors before anything is sent
            user = await caller(request, catalog)
            ctx = Context(catalog=catalog, user=user, base_url=catalog.base_url)
            first = await _page(ctx, rid, 0)
        except CkanError as exc:
            return PlainTextResponse(exc.message + "\n", exc.status)
        ctype, sep = FORMATS[fmt]
        names = [f["id"] for f in first["fields"]]

        async def rows() -> AsyncIterator[bytes]:
            page, offset = first, 0
            yield _lines([names], sep, prefix=BOM if bom else "")
            while True:
                records = page["records"]
                if records:
                    yield _lines(records, sep)
                if len(records) < PAGE:
                    return
                offset += PAGE
                page = await _page(ctx, rid, offset)

        filename = f"{rid}.{fmt}"
        headers = {"content-disposition": f'attachment; filename="{filename}"'}
        return StreamingResponse(rows(), media_type=ctype, headers=headers)

    return [("GET", "/datastore/dump/{id}", dump)]


async def _page(ctx: Context, rid: str, offset: int) -> dict[str, Any]:
    params = {
        "resource_id": rid,
        "limit": PAGE,
        "offset": offset,
        "records_format": "lists",
        "include_total": False,
        "sort": "_id",
    }
    found: dict[str, Any] = await registry.call(ctx, "datastore_search", params)
    return found


def _lines(rows: list[list[Any]], sep: str, prefix: str = "") -> bytes:
    out = io.StringIO()
    out.write(prefix)
    writer = csv.writer(out, delimiter=sep, lineterminator="\r\n")
    for row in rows:
        writer.writerow("" if v is None else v for v in row)
    return out.getvalue().encode()
