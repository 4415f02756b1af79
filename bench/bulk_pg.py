"""A city's worth of entities, loaded straight into a cityos PostgreSQL database (bench only).

The mix: water level gauges (bench/run.py's sensors, so its wrk scripts work), weather
stations, buildings, streetlights and parking spots around the towns of Tochigi. Documents
are made by the broker's own Normalizer from the payload a client would POST (core @context)
and the derivation rules are applied, then stored with the engine's own batch index writer
(pg_index.insert_many), many entities per statement. `verify_twins` creates some of the same
payloads through the API and checks that the server stored the same document and index rows.
What this skips: the history (no temporal rows for loaded entities) and the audit log.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, TextIO

import asyncpg
import httpx
import orjson
from run import check, sensor

from cityos.broker.model import Doc
from cityos.broker.normalize import Normalizer
from cityos.jsonld.loader import ContextLoader
from cityos.safety.rules import RULES
from cityos.storage import pg_index, pg_schema

BATCH: Final = 5000
NGSI: Final = "/ngsi-ld/v1"
#: a fixed creation time, so a load is reproducible
NOW: Final = "2026-12-01T09:00:00Z"
#: Tochigi's bounding box (lon, lat)
BOX: Final = (139.33, 36.20, 140.29, 37.15)


@dataclass(frozen=True)
class City:
    name: str
    lon: float
    lat: float
    weight: float
    sigma_km: float


@dataclass(frozen=True)
class Towns:
    """Where things stand: mostly around towns (normal spread), some anywhere in the box."""

    towns: tuple[City, ...]
    anywhere: float = 0.12

    def point(self, rng: random.Random) -> tuple[float, float]:
        if rng.random() < self.anywhere:
            return rng.uniform(BOX[0], BOX[2]), rng.uniform(BOX[1], BOX[3])
        c = rng.choices(self.towns, [t.weight for t in self.towns])[0]
        lat = c.lat + rng.gauss(0, c.sigma_km) / 111.32
        lon = c.lon + rng.gauss(0, c.sigma_km) / (111.32 * math.cos(math.radians(c.lat)))
        return round(min(max(lon, BOX[0]), BOX[2]), 6), round(min(max(lat, BOX[1]), BOX[3]), 6)

    def town(self, lon: float, lat: float) -> City:
        return min(self.towns, key=lambda t: (t.lon - lon) ** 2 + (t.lat - lat) ** 2)


@functools.cache
def cities() -> Towns:
    return Towns(
        (
            City("宇都宮市", 139.8836, 36.5551, 5.0, 6.0),
            City("小山市", 139.8006, 36.3145, 2.0, 4.0),
            City("栃木市", 139.7300, 36.3820, 2.0, 4.0),
            City("佐野市", 139.5784, 36.3144, 2.0, 4.0),
            City("足利市", 139.4497, 36.3406, 2.0, 4.0),
            City("鹿沼市", 139.7450, 36.5670, 1.5, 4.0),
            City("日光市", 139.6190, 36.7198, 1.0, 5.0),
            City("那須塩原市", 140.0470, 36.9620, 1.5, 5.0),
            City("真岡市", 140.0133, 36.4403, 1.0, 3.0),
            City("大田原市", 140.0175, 36.8714, 1.0, 4.0),
        )
    )


@dataclass(frozen=True)
class Mix:
    """Which entity number is what: gauges first, then the others in fixed shares."""

    shares: tuple[tuple[str, float], ...] = (
        ("WaterLevelObserved", 0.20),
        ("WeatherObserved", 0.15),
        ("Building", 0.30),
        ("Streetlight", 0.25),
        ("ParkingSpot", 0.10),
    )
    building_categories: tuple[str, ...] = (
        "residential",
        "commercial",
        "office",
        "industrial",
        "school",
        "hospital",
        "public",
    )
    category_weights: tuple[float, ...] = (60, 15, 10, 8, 3, 1, 3)

    def counts(self, n: int) -> list[tuple[str, int]]:
        out = [(t, int(n * share)) for t, share in self.shares]
        out[-1] = (out[-1][0], n - sum(c for _, c in out[:-1]))
        return out

    def gauges(self, n: int) -> int:
        return self.counts(n)[0][1]

    def kind(self, n: int, i: int) -> tuple[str, int]:
        """Return the type of entity i of n and its number within its type."""
        for t, count in self.counts(n):
            if i < count:
                return t, i
            i -= count
        raise IndexError(i)

    def describe(self, n: int) -> str:
        return ", ".join(f"{c:,} {t}" for t, c in self.counts(n)) + (
            " (gauges over Sano as in bench/run.py, the rest around 10 towns of Tochigi)"
        )


MIX: Final = Mix()


def _prop(value: Any, **members: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **members}


def _geo(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def payload(n: int, i: int) -> dict[str, Any]:
    """Return entity i of a store of n as a client would POST it (normalized, core @context)."""
    kind, k = MIX.kind(n, i)
    rng = random.Random(i * 7919 + 17)
    if kind == "WaterLevelObserved":
        return sensor(k, round(rng.uniform(0, 5), 3), NOW)
    lon, lat = cities().point(rng)
    town = cities().town(lon, lat).name
    base: dict[str, Any] = {"id": f"urn:ngsi-ld:{kind}:tochigi-{k:07d}", "type": kind}
    if kind == "WeatherObserved":
        return base | {
            "name": _prop(f"{town} 気象観測点 {k}"),
            "temperature": _prop(round(rng.uniform(-5, 35), 1), unitCode="CEL", observedAt=NOW),
            "relativeHumidity": _prop(round(rng.uniform(0.2, 1.0), 2), observedAt=NOW),
            "weatherType": _prop(rng.choice(["sunny", "cloudy", "rain", "snow", "fog"])),
            "location": _geo(lon, lat),
            "dateObserved": _prop({"@type": "DateTime", "@value": NOW}),
        }
    if kind == "Building":
        category = rng.choices(MIX.building_categories, MIX.category_weights)[0]
        return base | {
            "name": _prop(f"{town} 建物 {k}"),
            "category": _prop(category),
            "floorsAboveGround": _prop(min(40, int(rng.expovariate(0.4)) + 1)),
            "address": _prop(
                {
                    "addressRegion": "栃木県",
                    "addressLocality": town,
                    "streetAddress": f"{rng.randint(1, 9)}-{rng.randint(1, 30)}-{k % 50 + 1}",
                }
            ),
            "location": _geo(lon, lat),
        }
    if kind == "Streetlight":
        status = rng.choices(["ok", "defective", "underRepair"], [93, 5, 2])[0]
        return base | {
            "status": _prop(status),
            "powerState": _prop(rng.choice(["on", "off", "low"])),
            "lanternHeight": _prop(round(rng.uniform(4, 12), 1), unitCode="MTR"),
            "refStreetlightGroup": {
                "type": "Relationship",
                "object": f"urn:ngsi-ld:StreetlightGroup:tochigi-{k // 40:05d}",
            },
            "location": _geo(lon, lat),
        }
    return base | {
        "name": _prop(f"{town} 駐車区画 {k}"),
        "status": _prop(rng.choices(["free", "occupied", "closed"], [45, 50, 5])[0]),
        "category": _prop(rng.choice(["onstreet", "offstreet"])),
        "refParkingSite": {
            "type": "Relationship",
            "object": f"urn:ngsi-ld:ParkingSite:tochigi-{k // 25:05d}",
        },
        "location": _geo(lon, lat),
    }


@functools.cache
def _normalizer() -> Normalizer:
    return Normalizer(ContextLoader(remote_fetch=False).default(), NOW)


def document(raw: dict[str, Any]) -> Doc:
    """Return the document the API stores for a payload (created at NOW)."""
    doc = _normalizer().entity(raw)
    for rule in RULES:
        doc, derived = rule(None, doc)
        if derived:
            raise SystemExit(f"{doc['id']}: a rule derives entities; the bulk load cannot")
    return doc


def _batches(n: int) -> Iterator[list[Doc]]:
    for start in range(0, n, BATCH):
        yield [document(payload(n, i)) for i in range(start, min(n, start + BATCH))]


#: the tables the load writes; their secondary indexes are rebuilt once at the end
TABLES: Final = ("entities", "entity_attrs", "attr_index", "geo_index")


async def _drop_indexes(conn: asyncpg.Connection) -> list[str]:
    """Drop the tables' indexes that back no constraint; return their definitions."""
    rows = await conn.fetch(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = ANY($1::regclass[]) AND NOT EXISTS "
        "(SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        list(TABLES),
    )
    for name, _ in rows:
        await conn.execute(f"DROP INDEX {name}")
    return [definition for _, definition in rows]


async def load(url: str, n: int, *, progress: TextIO = sys.stderr) -> None:
    """Store entities 0..n-1 of the mix in the (empty) cityos database at url."""
    await pg_schema.upgrade(url)
    conn = await asyncpg.connect(url)
    paths = pg_index.PathIds()
    t0, done = time.perf_counter(), 0
    try:
        # quicker: indexes built once at the end, and no foreign key checks row by row (the
        # rows are consistent by construction); the session's own settings, nothing global
        indexes = await _drop_indexes(conn)
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SET synchronous_commit = off")
        for docs in _batches(n):
            async with conn.transaction():
                rids = [
                    r[0]
                    for r in await conn.fetch(
                        "SELECT nextval(pg_get_serial_sequence('entities', 'rid')) "
                        "FROM generate_series(1, $1)",
                        len(docs),
                    )
                ]
                await conn.execute(
                    "INSERT INTO entities(rid, tenant, id, doc, types, created_at, modified_at) "
                    "OVERRIDING SYSTEM VALUE SELECT r, '', i, d, "
                    "ARRAY(SELECT json_array_elements_text(t)), c, m FROM unnest("
                    "$1::bigint[], $2::text[], $3::json[], $4::json[], $5::text[], $6::text[]) "
                    "u(r, i, d, t, c, m)",
                    rids,
                    [d["id"] for d in docs],
                    [orjson.dumps(d).decode() for d in docs],
                    [orjson.dumps(d["type"]).decode() for d in docs],
                    [d["createdAt"] for d in docs],
                    [d["modifiedAt"] for d in docs],
                )
                pending: dict[str, int] = {}
                await pg_index.insert_many(conn, list(zip(rids, docs, strict=True)), paths, pending)
            paths.commit(pending)
            done += len(docs)
            if done % (BATCH * 20) == 0 or done == n:
                rate = done / (time.perf_counter() - t0)
                print(f"  {done:,} entities ({rate:,.0f}/s)", file=progress, flush=True)
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for definition in indexes:
            print(f"  {definition[:90]} ...", file=progress, flush=True)
            await conn.execute(definition)
        print("  VACUUM ANALYZE ...", file=progress, flush=True)
        for table in (*TABLES, "attr_paths"):
            await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()


# -- the check ---------------------------------------------------------------------------------
_TWINS: Final = 12


def _without_times(value: Any, now: str) -> Any:
    """Return value with the server's creation times put back to NOW, and ids stripped."""
    if isinstance(value, dict):
        return {
            k: NOW if k in ("createdAt", "modifiedAt") and v == now else _without_times(v, now)
            for k, v in value.items()
            if k != "id"
        }
    if isinstance(value, list):
        return [_without_times(v, now) for v in value]
    return value


async def _stored(conn: asyncpg.Connection, entity_id: str) -> tuple[Any, ...]:
    row = await conn.fetchrow("SELECT rid, doc FROM entities WHERE id=$1", entity_id)
    if row is None:
        raise SystemExit(f"{entity_id} is not stored")
    rid, text = row
    kinds = await conn.fetch("SELECT attr, atype FROM entity_attrs WHERE rid=$1 ORDER BY 1, 2", rid)
    values = await conn.fetch(
        "SELECT p.path, t, n, s, j::text FROM attr_index a JOIN attr_paths p USING (pid) "
        "WHERE rid=$1 ORDER BY 1, 2, 3, 4, 5",
        rid,
    )
    geo = await conn.fetch(
        "SELECT attr, ST_AsEWKT(geom) FROM geo_index WHERE rid=$1 ORDER BY 1, 2", rid
    )
    return (
        orjson.loads(text),
        [tuple(r) for r in kinds],
        [tuple(r) for r in values],
        [tuple(r) for r in geo],
    )


def verify_twins(client: httpx.Client, url: str, n: int) -> None:
    """Create twins of some loaded entities through the API and check both were stored alike.

    A twin is the same payload under another id; its stored document, attribute kinds, value
    rows and geometries must equal the loaded entity's (times aside). Both then read back the
    same through GET. The twins are deleted again.
    """
    rng = random.Random(5)
    picks = sorted({rng.randrange(n) for _ in range(_TWINS)} | {0, n - 1})
    for i in picks:
        raw = payload(n, i)
        twin = {**raw, "id": raw["id"] + "-api"}
        check(client.post(f"{NGSI}/entities", json=twin), 201)
        try:
            loaded = check(client.get(f"{NGSI}/entities/{raw['id']}"), 200).json()
            via_api = check(client.get(f"{NGSI}/entities/{twin['id']}"), 200).json()

            async def both(i: int = i, raw: dict[str, Any] = raw) -> Any:
                conn = await asyncpg.connect(url)
                try:
                    return await _stored(conn, raw["id"]), await _stored(conn, raw["id"] + "-api")
                finally:
                    await conn.close()

            ours, theirs = asyncio.run(both())
        finally:
            check(client.delete(f"{NGSI}/entities/{twin['id']}"), 204)
        now = theirs[0]["createdAt"]
        twin_stored = _without_times(theirs[0], now)
        if _without_times(ours[0], NOW) != twin_stored:
            raise SystemExit(f"entity {i}: loaded {ours[0]}\nbut the API stored {theirs[0]}")

        if ours[1:] != theirs[1:]:
            raise SystemExit(f"entity {i}: index rows differ from the API's:\n{ours}\n{theirs}")
        if _without_times(loaded, NOW) != _without_times(via_api, now):
            raise SystemExit(f"entity {i} reads back differently:\n{loaded}\n{via_api}")
    print(f"  {len(picks)} loaded entities match twins created through the API", file=sys.stderr)
