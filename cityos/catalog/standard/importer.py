"""Checked rows of a standard dataset -> a catalog dataset, its datastore table and entities.

Everything goes through the catalog's actions as the system (`Context(catalog, system=True)`),
so an import is checked by the same rules as an API call:

- the organization (created when missing; Sano City `sano-city` 佐野市 by default);
- the dataset `<code>-<kind>` (e.g. `092045-aed`), titled with the standard's name, licence
  PDL 1.0 by default, tagged, with the standard's number and the source file as extras;
- three uploaded resources: CSV (UTF-8 with BOM, current headers, repaired values), JSON (the
  typed records) and GeoJSON (rows with coordinates as Points);
- a datastore table on the CSV resource (typed fields, primary key ID);
- NGSI-LD entities for the kinds residents look for on a map: 指定緊急避難場所 ->
  `EvacuationShelter`, AED -> `PointOfInterest` (category `defibrillator`), 公共施設 ->
  `PointOfInterest` (category `publicFacility`). Toilets, medical institutions and care
  offices stay catalog-only (the datastore and GeoJSON serve maps); no NGSI-LD model for them
  is agreed in docs/models.md yet.

A re-import of the same kind replaces the resources' files (their ids and URLs stay), the
datastore table and the entities: entities of rows that are gone are deleted, and a
shelter's live state (opening status, occupancy) is kept.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import orjson

from cityos.broker import clock
from cityos.broker.entities import EntityService
from cityos.broker.model import Doc
from cityos.catalog import registry
from cityos.catalog.errors import NotFound
from cityos.catalog.registry import Context
from cityos.catalog.standard import codes
from cityos.catalog.standard.schemas import HAZARDS, DatasetKind
from cityos.catalog.standard.validate import Row, Validation
from cityos.storage.base import EntityQuery, Mutation

if TYPE_CHECKING:
    from cityos.catalog.service import Catalog

SANO: Final = ("sano-city", "佐野市", "092045")
DEFAULT_LICENSE: Final = "jp-pdl-1.0"
TENANT: Final = ""  # the default tenant, the one the portal shows
BATCH: Final = 500
_ORG_NAME = re.compile(r"^[a-z0-9_\-]{2,100}$")


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """Where and how an import goes."""

    organization: str = SANO[0]
    license_id: str = DEFAULT_LICENSE
    source_name: str = ""  # the imported file's name, recorded on the dataset


@dataclass(slots=True)
class ImportResult:
    """What an import wrote."""

    dataset: dict[str, Any]
    rows: int
    resources: list[dict[str, Any]] = field(default_factory=list)
    entities: int = 0
    entities_removed: int = 0


def check_organization(name: str) -> None:
    """Raise ValueError unless name can be an organization name (CKAN's rule)."""
    if not _ORG_NAME.match(name):
        raise ValueError(f"{name!r} is not an organization name (2-100 of a-z 0-9 - _, lower case)")


def dataset_code(v: Validation, options: ImportOptions) -> str | None:
    """Return the publisher's code: from the rows, else the file name, else Sano's (default)."""
    code = v.city_code()
    if code is not None:
        return code
    m = re.match(r"^(\d{5,6})_", options.source_name)
    if m:
        try:
            return codes.repair(m.group(1)).code
        except codes.CodeError:
            pass
    return SANO[2] if options.organization == SANO[0] else None


def dataset_name(v: Validation, options: ImportOptions) -> str:
    """Return the dataset's name: `<code>-<kind>`, e.g. 092045-aed."""
    slug = v.kind.slug.replace("_", "-")
    code = dataset_code(v, options)
    return f"{code}-{slug}" if code else f"{options.organization}-{slug}"


async def import_dataset(catalog: Catalog, v: Validation, options: ImportOptions) -> ImportResult:
    """Write the good rows of a checked file into the catalog (see the module's docstring)."""
    rows = v.good_rows
    if v.fatal or not rows:
        raise ValueError("nothing to import")
    ctx = Context(catalog=catalog, system=True, base_url=catalog.base_url)
    org = await _organization(ctx, options.organization)
    name = dataset_name(v, options)
    dataset = await _dataset(ctx, v, name, org, options, len(rows))
    result = ImportResult(dataset=dataset, rows=len(rows))
    stem = f"{dataset_code(v, options) or options.organization}_{v.kind.slug}"
    files = (
        ("CSV", f"{stem}.csv", "text/csv", csv_bytes(v, rows)),
        ("JSON", f"{stem}.json", "application/json", json_bytes(v, rows)),
        ("GeoJSON", f"{stem}.geojson", "application/geo+json", geojson_bytes(v, rows)),
    )
    existing = {r.get("name"): r for r in dataset.get("resources", [])}
    for fmt, filename, ctype, data in files:
        res_name = f"{v.kind.title} ({fmt})"
        params = {
            "package_id": dataset["id"],
            "name": res_name,
            "format": fmt,
            "mimetype": ctype,
            "description": (
                f"{v.kind.title}（{len(rows)}件、{fmt}）/ {v.kind.title_en} ({len(rows)} rows)"
            ),
        }
        upload = {"upload": (filename, ctype, data)}
        call = Context(catalog=catalog, system=True, base_url=catalog.base_url, files=upload)
        old = existing.get(res_name)
        if old is not None:
            res = await registry.call(call, "resource_update", {**params, "id": old["id"]})
        else:
            res = await registry.call(call, "resource_create", params)
        result.resources.append(res)
    await _datastore(ctx, v, rows, result.resources[0]["id"])
    if v.kind.entity is not None:
        result.entities, result.entities_removed = await _entities(catalog, v, rows, name)
    result.dataset = await registry.call(ctx, "package_show", {"id": dataset["id"]})
    return result


async def _organization(ctx: Context, name: str) -> dict[str, Any]:
    try:
        org: dict[str, Any] = await registry.call(ctx, "organization_show", {"id": name})
        return org
    except NotFound:
        pass
    title = SANO[1] if name == SANO[0] else name
    created: dict[str, Any] = await registry.call(
        ctx, "organization_create", {"name": name, "title": title}
    )
    return created


async def _dataset(
    ctx: Context,
    v: Validation,
    name: str,
    org: dict[str, Any],
    options: ImportOptions,
    count: int,
) -> dict[str, Any]:
    kind = v.kind
    notes = (
        f"自治体標準オープンデータセット {kind.number} {kind.title}（{count}件）。"
        f"{org.get('title') or org['name']}が公開しています。\n\n"
        f"Standard municipal open dataset {kind.number}: {kind.title_en} ({count} rows), "
        f"published by {org.get('title') or org['name']}."
    )
    extras = [
        {"key": "standard_dataset", "value": kind.slug},
        {"key": "standard_number", "value": kind.number},
    ]
    if options.source_name:
        extras.append({"key": "source_file", "value": options.source_name})
    code = dataset_code(v, options)
    if code:
        extras.append({"key": "local_government_code", "value": code})
    params = {
        "name": name,
        "title": kind.title,
        "notes": notes,
        "owner_org": org["id"],
        "license_id": options.license_id,
        "tags": [{"name": t} for t in (*kind.tags, "自治体標準オープンデータセット")],
        "extras": extras,
    }
    try:
        old = await registry.call(ctx, "package_show", {"id": name})
    except NotFound:
        created: dict[str, Any] = await registry.call(ctx, "package_create", params)
        return created
    patched: dict[str, Any] = await registry.call(ctx, "package_patch", {**params, "id": old["id"]})
    return patched


async def _datastore(ctx: Context, v: Validation, rows: Sequence[Row], rid: str) -> None:
    with contextlib.suppress(NotFound):  # no table yet
        await registry.call(ctx, "datastore_delete", {"resource_id": rid, "force": True})
    records = [v.record(r) for r in rows]
    fields = v.fields()
    await registry.call(
        ctx,
        "datastore_create",
        {
            "resource_id": rid,
            "force": True,
            "fields": fields,
            "primary_key": ["ID"],
            "records": records[:BATCH],
        },
    )
    for start in range(BATCH, len(records), BATCH):
        await registry.call(
            ctx,
            "datastore_upsert",
            {
                "resource_id": rid,
                "force": True,
                "method": "insert",
                "records": records[start : start + BATCH],
            },
        )


# -- files ---------------------------------------------------------------------------------------
def csv_bytes(v: Validation, rows: Sequence[Row]) -> bytes:
    """Return the rows as CSV: UTF-8 with BOM, current headers, repaired values, CRLF."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(v.columns)
    for row in rows:
        writer.writerow([row.values.get(c, "") for c in v.columns])
    return out.getvalue().encode("utf-8-sig")


def json_bytes(v: Validation, rows: Sequence[Row]) -> bytes:
    """Return the rows as a JSON array of typed records (numbers as numbers, empty as null)."""
    return orjson.dumps([v.record(r) for r in rows], option=orjson.OPT_INDENT_2) + b"\n"


def geojson_bytes(v: Validation, rows: Sequence[Row]) -> bytes:
    """Return the rows that have coordinates as a GeoJSON FeatureCollection of Points."""
    features = []
    for row in rows:
        rec = v.record(row)
        lat, lon = rec.get("緯度"), rec.get("経度")
        if lat is None or lon is None:
            continue
        features.append(
            {
                "type": "Feature",
                "id": rec["ID"],
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": rec,
            }
        )
    doc = {"type": "FeatureCollection", "features": features}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


# -- NGSI-LD entities ----------------------------------------------------------------------------
#: attributes the import owns; others (a shelter's live state) are kept on re-import
OWNED: Final = ("name", "nameKana", "address", "location", "category", "description")
OWNED_SHELTER: Final = (*OWNED, "designation", "hazardTypes", "capacity")


def entity_id(kind: DatasetKind, dataset: str, row_id: str) -> str:
    """Return the id of a row's entity, e.g. urn:ngsi-ld:PointOfInterest:092045-aed-12."""
    return f"urn:ngsi-ld:{kind.entity}:{dataset}-{quote(row_id, safe='-._~')}"


def _prop(value: Any, unit: str | None = None) -> dict[str, Any]:
    attr: dict[str, Any] = {"type": "Property", "value": value}
    if unit is not None:
        attr["unitCode"] = unit
    return attr


def _address(values: dict[str, str]) -> dict[str, Any]:
    street = values.get("所在地_町字", "") + values.get("所在地_番地以下", "")
    building = values.get("建物名等(方書)", "")
    address = {"addressCountry": "JP"}
    if street:
        address["addressRegion"] = values.get("所在地_都道府県", "")
        address["addressLocality"] = values.get("所在地_市区町村", "")
        address["streetAddress"] = f"{street} {building}".strip()
    else:  # only the full address: the portal shows region + locality + street
        address["streetAddress"] = values.get("所在地_連結表記", "")
    if values.get("郵便番号"):
        address["postalCode"] = values["郵便番号"]
    return _prop({k: val for k, val in address.items() if val})


def build_entity(kind: DatasetKind, dataset: str, row: Row) -> dict[str, Any] | None:
    """Return a row as a normalized NGSI-LD entity, or None (no model, or no coordinates)."""
    values = row.values
    if kind.entity is None or not values.get("緯度") or not values.get("経度"):
        return None
    name_ja = values["名称"]
    name_en = values.get("名称_英字") or values.get("名称_英語") or ""
    if kind.category == "defibrillator":
        name_ja, name_en = f"AED {name_ja}", (f"AED, {name_en}" if name_en else "")
    names = {"ja": name_ja, **({"en": name_en} if name_en else {})}
    entity: dict[str, Any] = {
        "id": entity_id(kind, dataset, values["ID"]),
        "type": kind.entity,
        "name": {"type": "LanguageProperty", "languageMap": names},
        "address": _address(values),
        "location": {
            "type": "GeoProperty",
            "value": {
                "type": "Point",
                "coordinates": [float(values["経度"]), float(values["緯度"])],
            },
        },
    }
    if values.get("名称_カナ"):
        entity["nameKana"] = _prop(values["名称_カナ"])
    if kind.entity == "EvacuationShelter":
        entity["designation"] = _prop("emergencySite")
        entity["hazardTypes"] = _prop([en for col, en in HAZARDS if values.get(col) == "1"])
        if values.get("想定収容人数"):
            entity["capacity"] = _prop(int(values["想定収容人数"]), "IE")
        # the live state starts closed and empty; a re-import keeps whatever it is then
        entity["openingStatus"] = _prop("closed")
        entity["occupancy"] = _prop(0)
        return entity
    entity["category"] = _prop([kind.category])
    where = values.get("設置位置") or values.get("説明")
    if where:
        entity["description"] = _prop(where)
    return entity


async def _entities(
    catalog: Catalog, v: Validation, rows: Sequence[Row], dataset: str
) -> tuple[int, int]:
    """Upsert the rows' entities and delete those of rows no longer in the file."""
    kind = v.kind
    svc = EntityService(catalog.broker.store, TENANT, catalog.broker.loader.default(), clock.now())
    terms = OWNED_SHELTER if kind.entity == "EvacuationShelter" else OWNED
    owned = {svc.ctx.expand_term(t) for t in terms}
    mutations: list[Mutation] = []
    for row in rows:
        entity = build_entity(kind, dataset, row)
        if entity is not None:
            mutations.append(Mutation(entity["id"], _merge(svc.norm.entity(entity), owned)))
    wanted = {m.entity_id for m in mutations}
    prefix = entity_id(kind, dataset, "")
    stale = [i for i in await _existing(catalog, prefix) if i not in wanted]
    mutations += [Mutation(i, _delete) for i in stale]
    written = 0
    for start in range(0, len(mutations), BATCH):
        outcomes = await catalog.broker.store.apply(TENANT, mutations[start : start + BATCH])
        for o in outcomes:
            if o.error is not None:
                raise o.error
            written += not o.deleted
    return written, len(stale)


def _merge(doc: Doc, owned: set[str]) -> Any:
    def fn(cur: Doc | None) -> Doc:
        if cur is None:
            return doc
        attrs = {k: val for k, val in cur["attrs"].items() if k not in owned}
        for k, val in doc["attrs"].items():
            if k in owned or k not in attrs:
                attrs[k] = val
        return {**doc, "createdAt": cur["createdAt"], "attrs": attrs}

    return fn


def _delete(_: Doc | None) -> None:
    return None


async def _existing(catalog: Catalog, prefix: str) -> list[str]:
    ids: list[str] = []
    offset = 0
    while True:
        query = EntityQuery(id_pattern="^" + re.escape(prefix), limit=1000, offset=offset)
        found = await catalog.broker.store.query(TENANT, query)
        ids += [d["id"] for d in found.docs]
        if len(found.docs) < 1000:
            return ids
        offset += 1000
