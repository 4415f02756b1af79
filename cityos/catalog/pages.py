"""The catalog's pages for people: dataset search with facets, dataset pages, organizations.

Every page is built from the same actions third-party clients call (package_search,
package_show, datastore_search, organization_*), and links to them as its machine twin, with
the DCAT documents beside. Pages are Japanese first with English labels, need no script and
load nothing from elsewhere: the map of a dataset's points is server-side SVG.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from cityos.catalog import dcat, registry
from cityos.catalog.dcat_api import dataset_document
from cityos.catalog.errors import CkanError, NotAuthorized, NotFound
from cityos.catalog.registry import Context
from cityos.catalog.service import Catalog
from cityos.http.routing import Handler
from cityos.portal.svg import MapPoint, map_svg
from cityos.settings import DEFAULT_CATALOG_TITLE

__all__ = ["FACETS", "ROWS", "map_columns", "pages_routes"]

#: facet field, Japanese label, English label
FACETS: Final = (
    ("organization", "組織", "Organization"),
    ("tags", "タグ", "Tags"),
    ("res_format", "形式", "Format"),
    ("license_id", "ライセンス", "Licence"),
)
ROWS: Final = 20  # search results per page
PREVIEW_ROWS: Final = 20
MAP_POINTS: Final = 500
MAX_PREVIEWS: Final = 5  # datastore tables previewed on one dataset page
_JST: Final = timezone(timedelta(hours=9))
_LAT: Final = ("緯度", "latitude", "lat")
_LON: Final = ("経度", "longitude", "lon", "lng", "long")
_LABEL: Final = ("名称", "施設・場所名", "施設名", "name", "title")
_ASSETS: Final = ("catalog.css",)
#: keys the templates read, so a dict from an older or partial action still renders
_PKG_KEYS: Final = [
    "name",
    "title",
    "notes",
    "license_id",
    "license_title",
    "metadata_created",
    "metadata_modified",
    "url",
    "version",
    "maintainer",
    "author",
]
_RES_KEYS: Final = ["id", "name", "format", "size", "url", "url_type", "description"]
_ORG_KEYS: Final = ["name", "title", "description"]


def _filled(value: Any, keys: list[str]) -> dict[str, Any]:
    """Return the dict with None for each missing key the templates read."""
    given = value if isinstance(value, dict) else {}
    return {**dict.fromkeys(keys), **given}


# -- small pure helpers ---------------------------------------------------------------------------
def _when(value: Any) -> str:
    """Return a CKAN timestamp as Japan time for people, e.g. 2026-11-25 09:30 (JST)."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    return when.astimezone(_JST).strftime("%Y-%m-%d %H:%M (JST)")


def _size(value: Any) -> str:
    """Return a byte count for people: 512 B, 1.2 KB, 3.4 MB."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return ""
    if value < 1024:
        return f"{value} B"
    size = value / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _safe_url(value: Any) -> str | None:
    """Return the URL when it is http(s); a stored `javascript:` URL never becomes a link."""
    return value if isinstance(value, str) and value.startswith(("http://", "https://")) else None


def _term(fieldname: str, value: str) -> str:
    """Return an fq term matching the value exactly: field:"value" with quotes escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{fieldname}:"{escaped}"'


def _term_label(term: str) -> str:
    """Return a filter term for people: tags:"防災" -> タグ: 防災; other terms as written."""
    fieldname, sep, value = term.partition(":")
    labels = {f: ja for f, ja, _ in FACETS}
    if not sep or fieldname not in labels:
        return term
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return f"{labels[fieldname]}: {value}"


def map_columns(names: list[str]) -> tuple[str, str, str | None] | None:
    """Return the (latitude, longitude, label) columns of a table, or None without both."""
    lower = {n.lower(): n for n in names}

    def pick(candidates: tuple[str, ...]) -> str | None:
        return next((lower[c] for c in candidates if c in lower), None)

    lat, lon = pick(_LAT), pick(_LON)
    if lat is None or lon is None:
        return None
    return lat, lon, pick(_LABEL)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _points(records: list[dict[str, Any]], lat: str, lon: str, label: str | None) -> list[MapPoint]:
    points = []
    for i, rec in enumerate(records, 1):
        y, x = _number(rec.get(lat)), _number(rec.get(lon))
        if y is None or x is None or not (-85 < y < 85 and -180 <= x <= 180):
            continue
        name = str(rec.get(label) or "") if label else ""
        title = f"{i}. {name}" if name else f"{i}. {y}, {x}"
        points.append(MapPoint(x, y, str(i), title, "#1f5fbf", "shelter"))
    return points


# -- what the templates show ----------------------------------------------------------------------
@dataclass(slots=True)
class FacetItem:
    label: str
    count: int
    href: str
    active: bool


@dataclass(slots=True)
class Facet:
    field: str
    ja: str
    en: str
    items: list[FacetItem]


@dataclass(slots=True)
class Preview:
    """The first rows of a resource's datastore table, and a map when it has coordinates."""

    resource_name: str
    columns: list[str]
    rows: list[list[str]]
    total: int
    api: str
    map: str = ""
    mapped: int = 0
    error: str = ""


@dataclass(slots=True)
class Pager:
    page: int
    last: int
    links: list[tuple[int, str]] = field(default_factory=list)
    prev: str | None = None
    next: str | None = None


# -- the environment ------------------------------------------------------------------------------
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cityos.catalog", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, size=_size, safe_url=_safe_url)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    return env


_ENV: Final = _env()


#: the catalog's title (CITYOS_CATALOG_TITLE) for the page being rendered
_SITE_TITLE: ContextVar[str] = ContextVar("site_title", default=DEFAULT_CATALOG_TITLE)


def _html(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    page = _ENV.get_template(template).render(site_title=_SITE_TITLE.get(), **values)
    return HTMLResponse(page, status)


def _error(status: int, title: str, message: str) -> HTMLResponse:
    return _html("error.html", status, title=title, message=message, twins=[])


# -- search ----------------------------------------------------------------------------------------
def _href(path: str, params: list[tuple[str, str]]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def _pager(page: int, total: int, rows: int, href: Any) -> Pager:
    last = max(1, -(-total // rows))
    pager = Pager(page=page, last=last)
    for n in sorted({1, last, *range(max(1, page - 2), min(last, page + 2) + 1)}):
        pager.links.append((n, href(n)))
    pager.prev = href(page - 1) if page > 1 else None
    pager.next = href(page + 1) if page < last else None
    return pager


def _summary(pkg: dict[str, Any]) -> dict[str, Any]:
    org = pkg.get("organization") or {}
    formats = sorted({str(r.get("format")) for r in pkg.get("resources") or [] if r.get("format")})
    notes = str(pkg.get("notes") or "")
    return {
        "name": pkg.get("name") or pkg.get("id"),
        "title": pkg.get("title") or pkg.get("name"),
        "notes": notes if len(notes) <= 180 else notes[:180] + "…",
        "organization": org.get("title") or org.get("name") or "",
        "formats": formats,
        "license": pkg.get("license_title") or pkg.get("license_id") or "",
        "modified": pkg.get("metadata_modified"),
    }


async def _search(
    catalog: Catalog, query: str, terms: list[str], page: int, rows: int = ROWS
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "q": query or "*:*",
        "rows": rows,
        "start": (page - 1) * rows,
        "facet.field": [f for f, _, _ in FACETS],
        "facet.limit": 15,
    }
    if terms:
        params["fq"] = " AND ".join(terms)
    result: dict[str, Any] = await registry.call(
        Context(catalog=catalog, base_url=catalog.base_url), "package_search", params
    )
    return result


def _page_number(raw: str | None) -> int | None:
    if not raw:
        return 1
    return int(raw) if raw.isdigit() and 0 < int(raw) < 100_000 else None


async def search_page(catalog: Catalog, request: Request) -> Response:
    """GET /dataset: the search box, facets with counts, results and pages."""
    query = request.query_params.get("q", "").strip()
    terms = [t.strip() for t in request.query_params.getlist("fq") if t.strip()][:20]
    page = _page_number(request.query_params.get("page"))
    if page is None:
        return _error(
            400,
            "ページ番号が正しくありません",
            "page は 1 以上の整数です (page must be 1, 2, 3...).",
        )
    base_params = ([("q", query)] if query else []) + [("fq", t) for t in terms]
    api = {"q": query or "*:*", "rows": str(ROWS), "start": str((page - 1) * ROWS)}
    if terms:
        api["fq"] = " AND ".join(terms)
    twins = [
        ("package_search (JSON)", "/api/3/action/package_search?" + urlencode(api)),
        ("DCAT Turtle", "/catalog.ttl"),
        ("DCAT JSON-LD", "/catalog.jsonld"),
        ("DCAT RDF/XML", "/catalog.rdf"),
    ]
    values: dict[str, Any] = {
        "title": "データセット検索",
        "query": query,
        "terms": [
            (t, _term_label(t), _href("/dataset", [p for p in base_params if p != ("fq", t)]))
            for t in terms
        ],
        "twins": twins,
    }
    try:
        found = await _search(catalog, query, terms, page)
    except CkanError as exc:
        return _html(
            "search.html",
            exc.status if 400 <= exc.status < 500 else 500,
            error=exc.message,
            count=0,
            results=[],
            facets=[],
            pager=None,
            **values,
        )
    facets = []
    search_facets = found.get("search_facets") or {}
    for fieldname, ja, en in FACETS:
        items = []
        for item in (search_facets.get(fieldname) or {}).get("items") or []:
            term = _term(fieldname, str(item.get("name")))
            active = term in terms
            params = (
                [p for p in base_params if p != ("fq", term)]
                if active
                else [*base_params, ("fq", term)]
            )
            label = str(item.get("display_name") or item.get("name"))
            items.append(
                FacetItem(label, int(item.get("count") or 0), _href("/dataset", params), active)
            )
        items.sort(key=lambda i: (-i.count, i.label))
        facets.append(Facet(fieldname, ja, en, items))
    count = int(found.get("count") or 0)
    pager = _pager(page, count, ROWS, lambda n: _href("/dataset", [*base_params, ("page", str(n))]))
    return _html(
        "search.html",
        error="",
        count=count,
        results=[_summary(p) for p in found.get("results") or []],
        facets=facets,
        pager=pager if count > ROWS else None,
        **values,
    )


# -- a dataset ------------------------------------------------------------------------------------
async def _preview(catalog: Catalog, res: dict[str, Any]) -> Preview:
    ctx = Context(catalog=catalog, base_url=catalog.base_url)
    rid = str(res["id"])
    name = str(res.get("name") or rid)
    api = "/api/3/action/datastore_search?" + urlencode({"resource_id": rid, "limit": PREVIEW_ROWS})
    try:
        found = await registry.call(
            ctx, "datastore_search", {"resource_id": rid, "limit": PREVIEW_ROWS}
        )
    except CkanError as exc:
        return Preview(name, [], [], 0, api, error=exc.message)
    columns = [str(f["id"]) for f in found.get("fields") or [] if f.get("id") != "_id"]
    records = found.get("records") or []
    rows = [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in records]
    preview = Preview(name, columns, rows, int(found.get("total") or len(rows)), api)
    located = map_columns(columns)
    if located is None:
        return preview
    lat, lon, label = located
    if preview.total > len(records):
        wanted = [c for c in (lat, lon, label) if c]
        try:
            more = await registry.call(
                ctx,
                "datastore_search",
                {"resource_id": rid, "limit": MAP_POINTS, "fields": wanted},
            )
            records = more.get("records") or records
        except CkanError:
            pass  # the map then shows the previewed rows only
    points = _points(records[:MAP_POINTS], lat, lon, label)
    if points:
        preview.map = map_svg(points, title=f"{name} の地図 (map)", tile_url=None)
        preview.mapped = len(points)
    return preview


async def dataset_page(catalog: Catalog, request: Request) -> Response:
    """GET /dataset/{id}: the dataset, its files, a preview table, a map and its JSON-LD."""
    ident: str = request.path_params["id"]
    for suffix, fmt in dcat.FORMATS.items():  # in case the DCAT route is listed after this one
        if ident.endswith("." + suffix):
            return await dataset_document(catalog, ident[: -len(suffix) - 1], fmt)
    base = catalog.base_url
    try:
        pkg = await registry.call(
            Context(catalog=catalog, base_url=base), "package_show", {"id": ident}
        )
    except (NotFound, NotAuthorized):
        pkg = None
    if pkg is None or pkg.get("private") or pkg.get("state", "active") != "active":
        return _error(
            404,
            "データセットが見つかりません",
            f"「{ident}」というデータセットはありません (not found).",
        )
    resources_ = [
        _filled(r, _RES_KEYS)
        for r in pkg.get("resources") or []
        if isinstance(r, dict) and r.get("id")
    ]
    tables = [r for r in resources_ if r.get("datastore_active")][:MAX_PREVIEWS]
    previews = [await _preview(catalog, r) for r in tables]
    ref = quote(str(pkg["id"]))
    twins = [
        ("package_show (JSON)", f"/api/3/action/package_show?id={ref}"),
        ("DCAT Turtle", f"/dataset/{ref}.ttl"),
        ("DCAT JSON-LD", f"/dataset/{ref}.jsonld"),
        ("DCAT RDF/XML", f"/dataset/{ref}.rdf"),
    ]
    org = _filled(pkg.get("organization"), _ORG_KEYS)
    return _html(
        "dataset.html",
        title=str(pkg.get("title") or pkg.get("name")),
        pkg=_filled(pkg, _PKG_KEYS),
        org=org,
        tags=[str(t.get("name")) for t in pkg.get("tags") or [] if t.get("name")],
        tag_href=lambda t: _href("/dataset", [("fq", _term("tags", t))]),
        org_href=f"/organization/{quote(str(org.get('name')))}" if org.get("name") else None,
        license_url=_safe_url(pkg.get("license_url"))
        or dcat.license_uri(pkg.get("license_id"), None),
        resources=resources_,
        previews=previews,
        jsonld=dcat.schema_org(pkg, base),
        twins=twins,
    )


# -- organizations --------------------------------------------------------------------------------
async def organizations_page(catalog: Catalog, request: Request) -> Response:
    """GET /organization: the publishing organizations and their dataset counts."""
    ctx = Context(catalog=catalog, base_url=catalog.base_url)
    try:
        orgs = await registry.call(ctx, "organization_list", {"all_fields": True, "limit": 1000})
    except CkanError as exc:
        return _error(
            exc.status if exc.status < 500 else 500, "組織の一覧を表示できません", exc.message
        )
    twins = [("organization_list (JSON)", "/api/3/action/organization_list?all_fields=true")]
    listed = [_filled(o, [*_ORG_KEYS, "package_count"]) for o in orgs if isinstance(o, dict)]
    return _html("organizations.html", title="組織", orgs=listed, twins=twins)


async def organization_page(catalog: Catalog, request: Request) -> Response:
    """GET /organization/{name}: an organization and its newest datasets."""
    name: str = request.path_params["name"]
    ctx = Context(catalog=catalog, base_url=catalog.base_url)
    try:
        org = await registry.call(ctx, "organization_show", {"id": name})
        found = await _search(catalog, "", [_term("organization", str(org["name"]))], 1)
    except (NotFound, NotAuthorized):
        return _error(404, "組織が見つかりません", f"「{name}」という組織はありません (not found).")
    except CkanError as exc:
        return _error(exc.status if exc.status < 500 else 500, "組織を表示できません", exc.message)
    twins = [("organization_show (JSON)", f"/api/3/action/organization_show?id={quote(name)}")]
    return _html(
        "organization.html",
        title=str(org.get("title") or org.get("name")),
        org=_filled(org, _ORG_KEYS),
        count=int(found.get("count") or 0),
        results=[_summary(p) for p in found.get("results") or []],
        all_href=_href("/dataset", [("fq", _term("organization", str(org["name"])))]),
        twins=twins,
    )


# -- routes ----------------------------------------------------------------------------------------
def _assets() -> dict[str, bytes]:
    folder = resources.files("cityos.catalog") / "assets"
    return {name: (folder / name).read_bytes() for name in _ASSETS}


def pages_routes(catalog: Catalog) -> list[tuple[str, str, Handler]]:
    """Return the catalog page routes (and their stylesheet under /catalog/assets/)."""
    assets = _assets()

    async def asset(request: Request) -> Response:
        body = assets.get(request.path_params["name"])
        if body is None:
            return Response("not found\n", 404, media_type="text/plain; charset=utf-8")
        return Response(
            body,
            headers={"content-type": "text/css; charset=utf-8", "cache-control": "max-age=3600"},
        )

    async def search(request: Request) -> Response:
        _SITE_TITLE.set(catalog.settings.catalog_title)
        return await search_page(catalog, request)

    async def dataset(request: Request) -> Response:
        _SITE_TITLE.set(catalog.settings.catalog_title)
        return await dataset_page(catalog, request)

    async def organizations(request: Request) -> Response:
        _SITE_TITLE.set(catalog.settings.catalog_title)
        return await organizations_page(catalog, request)

    async def organization(request: Request) -> Response:
        _SITE_TITLE.set(catalog.settings.catalog_title)
        return await organization_page(catalog, request)

    return [
        ("GET", "/catalog/assets/{name}", asset),
        ("GET", "/dataset", search),
        ("GET", "/dataset/{id}", dataset),
        ("GET", "/organization", organizations),
        ("GET", "/organization/{name}", organization),
    ]
