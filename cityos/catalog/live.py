"""Live datasets: catalog datasets defined by an NGSI-LD query and regenerated as entities change.

A live dataset (e.g. every `WaterObserved`) has a CSV resource with a datastore table and a
GeoJSON resource. The storage writer tells `LiveDatasets.note` about every entity change; a
change to an entity of a live dataset's type marks it dirty, and the event loop rebuilds dirty
datasets at most once per `interval` seconds through the ordinary actions (`resource_update`
with an upload, `datastore_upsert`), so `metadata_modified` moves with the data and nobody
exports anything by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import logging
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from cityos.auth import context
from cityos.auth.policy import Operation
from cityos.broker.api.params import entity_query
from cityos.broker.errors import NgsiError
from cityos.broker.render import RenderOptions, render_entity
from cityos.bus import CacheDrop, SnapshotDue
from cityos.catalog import registry, validate
from cityos.catalog.errors import CkanError, NotAuthorized, NotFound, ValidationError
from cityos.catalog.registry import Context
from cityos.storage import engines
from cityos.storage.base import Change, EntityQuery
from cityos.storage.sqlite_live import LiveDefinition

if TYPE_CHECKING:
    from cityos.catalog.service import Catalog
    from cityos.jsonld.context import ActiveContext

log = logging.getLogger("cityos.catalog")

#: the NGSI-LD query parameters a live dataset may use
QUERY_KEYS: Final = frozenset(
    {"type", "q", "idPattern", "attrs", "georel", "geometry", "coordinates", "geoproperty"}
)
#: the extras key that shows a dataset's query to catalog users
EXTRA: Final = "ngsi_ld_query"
PAGE: Final = 1000
CSV_FORMAT, GEOJSON_FORMAT = "CSV", "GeoJSON"
#: columns that come first, in this order; the others follow by name
LEADING: Final = ("id", "type", "name")


@dataclass(frozen=True, slots=True)
class Table:
    """A live dataset's rows, flattened for CSV and the datastore."""

    columns: list[str]
    records: list[dict[str, Any]]
    features: list[dict[str, Any]]


def parse_query(raw: str, ctx: ActiveContext) -> tuple[dict[str, str], frozenset[str]]:
    """Check a live query string; return its parameters and the expanded types it selects."""
    try:
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValidationError({"query": [f"not a query string: {raw!r}"]}) from None
    params = dict(pairs)
    unknown = sorted(set(params) - QUERY_KEYS)
    if unknown:
        raise ValidationError({"query": [f"unknown parameter(s): {', '.join(unknown)}"]})
    if not params.get("type"):
        raise ValidationError({"query": ["a live dataset's query needs type=..."]})
    try:
        entity_query(params, ctx)
    except NgsiError as exc:
        raise ValidationError({"query": [exc.detail]}) from None
    names = [n for n in _type_names(params["type"]) if n]
    return params, frozenset(ctx.expand_term(n) for n in names)


def _check_publication(tenant: str, types: frozenset[str], private: bool) -> None:
    """Refuse a live dataset showing entities its definer, or its readers, may not read."""
    op = Operation("read", "entities", tenant, entity_types=tuple(sorted(types)))
    mine = context.decide(op)
    if not mine.allowed:
        raise NotAuthorized(
            f"a live dataset cannot show what its definer may not read: {mine.reason}"
        )
    if not private and not context.decide(op, for_anyone=True).allowed:
        raise ValidationError(
            {
                "private": [
                    "a public live dataset may only show entity types anyone may read in a "
                    "public tenant (CITYOS_PUBLIC_TYPES, CITYOS_PUBLIC_TENANTS); "
                    "make it private or choose public types"
                ]
            }
        )


def _type_names(selection: str) -> Iterable[str]:
    for sep in "(),;|":
        selection = selection.replace(sep, " ")
    return selection.split()


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return orjson.dumps(value).decode()


def flatten(entities: list[dict[str, Any]]) -> Table:
    """Flatten keyValues entities: scalars as they are, a Point as longitude/latitude."""
    records: list[dict[str, Any]] = []
    features: list[dict[str, Any]] = []
    seen: set[str] = {"id", "type"}  # even with no entities yet: the table keys on id
    for entity in entities:
        location = entity.get("location")
        row = {k: _cell(v) for k, v in entity.items() if k not in ("location", "@context")}
        if isinstance(location, dict) and location.get("type") == "Point":
            coords = location.get("coordinates") or []
            if len(coords) >= 2:
                row["longitude"], row["latitude"] = coords[0], coords[1]
        seen.update(row)
        records.append(row)
        geometry = location if isinstance(location, dict) and "type" in location else None
        props = {k: v for k, v in row.items() if k not in ("longitude", "latitude")}
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    tail = [c for c in ("longitude", "latitude") if c in seen]
    lead = [c for c in LEADING if c in seen]
    middle = sorted(seen - set(lead) - set(tail))
    return Table([*lead, *middle, *tail], records, features)


def field_types(table: Table) -> list[dict[str, str]]:
    """Return datastore fields (as datastore_info names them) by the values each column holds."""
    fields = []
    for column in table.columns:
        values = [r[column] for r in table.records if r.get(column) is not None]
        if column == "id" or not values:
            kind = "text"
        elif all(isinstance(v, bool) for v in values):
            kind = "bool"
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            kind = "int8"
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            kind = "float8"
        else:
            kind = "text"
        fields.append({"id": column, "type": kind})
    return fields


def csv_bytes(table: Table) -> bytes:
    """Return the table as CSV in UTF-8 with a BOM (what Excel in Japan opens correctly)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(table.columns)
    for record in table.records:
        writer.writerow(["" if record.get(c) is None else record.get(c) for c in table.columns])
    return b"\xef\xbb\xbf" + out.getvalue().encode()


def geojson_bytes(table: Table) -> bytes:
    """Return the table's entities as a GeoJSON FeatureCollection."""
    return orjson.dumps({"type": "FeatureCollection", "features": table.features})


#: on the bus: a live dataset's snapshot name is this prefix and its name; its definitions
#: are the cache of this name
LIVE_PREFIX: Final = "live:"
LIVE_CACHE: Final = "catalog.live"


class LiveDatasets:
    """Keep live datasets in step with their entities."""

    def __init__(self, catalog: Catalog, *, interval: float = 5.0) -> None:
        self.catalog = catalog
        self.interval = interval
        self.rebuilds = 0  # finished rebuilds, for tests and logs
        self._store = engines.live(catalog.broker.store)
        self._defs: dict[str, tuple[LiveDefinition, frozenset[str]]] = {}
        self._dirty: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # several workers: the leader rebuilds; the others tell it what became dirty
        self._cluster = catalog.broker.cluster
        self._cluster.on(SnapshotDue, self._due)
        self._cluster.on(CacheDrop, self._redefined)
        self._cluster.leadership.on_gain.append(self._lead)

    @property
    def _ctx(self) -> ActiveContext:
        return self.catalog.broker.loader.default()

    def _system(self) -> Context:
        return Context(catalog=self.catalog, system=True, base_url=self.catalog.base_url)

    # -- change hook (writer thread) ------------------------------------------------------
    def note(self, change: Change) -> None:
        """Mark the live datasets an entity change touches (a change listener: never blocks)."""
        if not self._defs or self._loop is None:
            return
        types: set[str] = set()
        for doc in (change.new, change.old):
            if doc is not None:
                types.update(doc.get("type", ()))
        hit = [
            name
            for name, (d, wanted) in self._defs.items()
            if d.tenant == change.tenant and not wanted.isdisjoint(types)
        ]
        if hit:
            self._dirty.update(hit)
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._wake.set)

    # -- life ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the definitions, rebuild them all once, then follow changes."""
        await self._store.setup()
        await self._load()
        self._dirty.update(self._defs)
        self._wake = asyncio.Event()
        self._wake.set()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="cityos-live-datasets")

    async def stop(self) -> None:
        self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            names, self._dirty = sorted(self._dirty), set()
            for name in names:
                try:
                    if self._cluster.is_leader():
                        await self.rebuild(name)
                    else:
                        await self._cluster.publish(SnapshotDue(LIVE_PREFIX + name))
                except Exception:  # logged; the next change tries again
                    log.exception("live dataset %s: rebuild failed", name)
            await asyncio.sleep(self.interval)

    # -- several workers ----------------------------------------------------------------------
    def _mark(self, names: Iterable[str]) -> None:
        self._dirty.update(names)
        if self._loop is not None:
            self._wake.set()

    def _lead(self) -> None:
        """This worker has just become the leader: rebuild everything once."""
        self._mark(self._defs)

    async def _due(self, event: SnapshotDue) -> None:
        if not event.name.startswith(LIVE_PREFIX) or not self._cluster.is_leader():
            return
        name = event.name.removeprefix(LIVE_PREFIX)
        if name not in self._defs:
            await self._load()  # defined by another worker, and its event missed
        if name in self._defs:
            self._mark([name])

    async def _redefined(self, event: CacheDrop) -> None:
        if event.name == LIVE_CACHE:
            await self._load()

    async def _load(self) -> None:
        """Make the definitions what is stored (another worker defined one)."""
        defs: dict[str, tuple[LiveDefinition, frozenset[str]]] = {}
        for d in await self._store.all():
            try:
                _, types = parse_query(d.query, self._ctx)
            except CkanError:
                log.warning("live dataset %s: its query no longer parses: %s", d.name, d.query)
                continue
            defs[d.name] = (d, types)
        self._defs = defs

    # -- defining ---------------------------------------------------------------------------
    async def define(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        """Create (or redefine) a live dataset from package fields plus `query` and `tenant`."""
        query = params.get("query")
        if not isinstance(query, str) or not query:
            raise ValidationError({"query": ["Missing value: an NGSI-LD query string"]})
        tenant = params.get("tenant", "")
        if not isinstance(tenant, str):
            raise ValidationError({"tenant": ["must be a string"]})
        _, types = parse_query(query, self._ctx)
        fields = {k: v for k, v in params.items() if k not in ("query", "tenant")}
        extras = [e for e in fields.get("extras") or [] if e.get("key") != EXTRA]
        fields["extras"] = [*extras, {"key": EXTRA, "value": query}]
        name = fields.get("name")
        try:
            existing = await registry.call(ctx, "package_show", {"id": name})
        except NotFound:
            existing = None
        private = fields.get("private", existing.get("private") if existing else False)
        _check_publication(tenant, types, validate.as_bool(private, "private"))
        if existing is None:
            package = await registry.call(ctx, "package_create", fields)
        else:
            package = await registry.call(ctx, "package_patch", {**fields, "id": existing["id"]})
        definition = LiveDefinition(package["name"], tenant, query)
        await self._store.save(definition)
        self._defs[definition.name] = (definition, types)
        await self._cluster.publish(CacheDrop(LIVE_CACHE, definition.name))
        await self.rebuild(definition.name)
        shown: dict[str, Any] = await registry.call(ctx, "package_show", {"id": package["id"]})
        return shown

    async def definitions(self) -> list[dict[str, str]]:
        """Return each live dataset's name, tenant and query."""
        return [
            {"name": d.name, "tenant": d.tenant, "query": d.query}
            for d, _ in sorted(self._defs.values(), key=lambda x: x[0].name)
        ]

    # -- rebuilding -------------------------------------------------------------------------
    async def entities(self, d: LiveDefinition) -> list[dict[str, Any]]:
        """Return every entity the definition selects, as keyValues (Japanese names first)."""
        params, _ = parse_query(d.query, self._ctx)
        base = entity_query(params, self._ctx)
        opts = RenderOptions(format="keyValues", lang="ja")
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = EntityQuery(
                ids=base.ids,
                id_pattern=base.id_pattern,
                types=base.types,
                q=base.q,
                scope_q=base.scope_q,
                geo=base.geo,
                geoproperty=base.geoproperty,
                attrs=base.attrs,
                expand=base.expand,
                limit=PAGE,
                offset=offset,
            )
            result = await self.catalog.broker.store.query(d.tenant, page)
            out.extend(render_entity(doc, self._ctx, opts) for doc in result.docs)
            if len(result.docs) < PAGE:
                return out
            offset += PAGE

    async def rebuild(self, name: str) -> bool:
        """Regenerate one live dataset's files and table; False when its dataset is gone."""
        async with self._lock:  # one rebuild at a time: define() and the loop may both ask
            return await self._rebuild(name)

    async def _rebuild(self, name: str) -> bool:
        found = self._defs.get(name)
        if found is None:
            return False
        d = found[0]
        ctx = self._system()
        try:
            package = await registry.call(ctx, "package_show", {"id": name})
        except NotFound:
            package = None
        if package is None or package.get("state") == "deleted":
            log.info("live dataset %s: the dataset is gone; forgetting it", name)
            self._defs.pop(name, None)
            await self._store.delete(name)
            return False
        table = flatten(await self.entities(d))
        title = package.get("title") or name
        by_format = {r.get("format"): r for r in package.get("resources", [])}
        csv_res = await self._upload(
            ctx, package["id"], by_format.get(CSV_FORMAT), f"{name}.csv", csv_bytes(table),
            CSV_FORMAT, f"{title} (CSV)", "text/csv",
        )  # fmt: skip
        await self._upload(
            ctx, package["id"], by_format.get(GEOJSON_FORMAT), f"{name}.geojson",
            geojson_bytes(table), GEOJSON_FORMAT, f"{title} (GeoJSON)", "application/geo+json",
        )  # fmt: skip
        await self._refill(ctx, csv_res["id"], table)
        self.rebuilds += 1
        return True

    async def _upload(
        self,
        ctx: Context,
        package_id: str,
        resource: dict[str, Any] | None,
        filename: str,
        data: bytes,
        fmt: str,
        title: str,
        mimetype: str,
    ) -> dict[str, Any]:
        upload = Context(
            catalog=ctx.catalog,
            system=True,
            base_url=ctx.base_url,
            files={"upload": (filename, mimetype, data)},
        )
        fields = {"package_id": package_id, "name": title, "format": fmt, "mimetype": mimetype}
        if resource is None:
            created: dict[str, Any] = await registry.call(upload, "resource_create", fields)
            return created
        digest = hashlib.sha256(data).hexdigest()
        if resource.get("hash") in (digest, f"sha256:{digest}"):
            return resource  # unchanged: metadata_modified stays
        updated: dict[str, Any] = await registry.call(
            upload, "resource_update", {**fields, "id": resource["id"]}
        )
        return updated

    async def _refill(self, ctx: Context, resource_id: str, table: Table) -> None:
        """Replace the datastore table's rows (and its fields when the columns changed)."""
        fields = field_types(table)
        try:
            info = await registry.call(ctx, "datastore_info", {"id": resource_id})
            current = [
                {"id": f["id"], "type": f["type"]}
                for f in info.get("fields", [])
                if f["id"] != "_id"
            ]
        except NotFound:
            current = None
        if current is not None and current != fields:
            await registry.call(
                ctx, "datastore_delete", {"resource_id": resource_id, "force": True}
            )
            current = None
        if current is None:
            await registry.call(
                ctx,
                "datastore_create",
                {
                    "resource_id": resource_id,
                    "fields": fields,
                    "records": table.records,
                    "primary_key": "id",
                    "force": True,
                },
            )
            return
        await registry.call(
            ctx,
            "datastore_upsert",
            {
                "resource_id": resource_id,
                "records": table.records,
                "method": "upsert",
                "force": True,
            },
        )
        keep = {r["id"] for r in table.records}
        stored = await registry.call(
            ctx, "datastore_search", {"resource_id": resource_id, "fields": ["id"], "limit": 32000}
        )
        gone = [r["id"] for r in stored.get("records", []) if r["id"] not in keep]
        if gone:
            await registry.call(
                ctx,
                "datastore_delete",
                {"resource_id": resource_id, "filters": {"id": gone}, "force": True},
            )
