"""Query plans PostgreSQL cannot choose well on its own: pages by walking a value or a type
in creation order, near pages from the spatial index's nearest, region pages tested in
creation order.

PostgreSQL estimates each condition as if independent of the others, and one table holds the
values of every attribute, so it often drives a query from all the entities matching an
attribute value (180,000 buildings are "residential") and sorts them for a page of 20, or
walks every entity in creation order skipping other types. A query with a text equality
(``category=="hospital"``, with or without a type) walks the entities holding that value, in
creation order from the index of values (migration 0010), whether the value is common or rare;
a query by one type without one walks that type's entities (``entities.type1``). Each
candidate is checked in the index and the walk stops when the page is full. A walk is
bounded: when it has not filled the page after ``WALK_BUDGET`` candidates, the matches are
rare and the planner's plan from the values is the better one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from cityos.broker.geo import GeoQuery, geometry_bbox, meters_per_degree
from cityos.broker.model import Doc
from cityos.broker.qlang import And, QExpr
from cityos.broker.typesel import TypeName
from cityos.storage import pg_query
from cityos.storage import sqlite_attrindex as attrindex
from cityos.storage.base import EntityQuery
from cityos.storage.pg_index import Conn
from cityos.storage.pg_query import numbered

#: candidates a walk checks before handing the query to the planner: this many, or
#: BUDGET_PER_ROW for each row of offset+limit if more
WALK_BUDGET: Final = 4096
BUDGET_PER_ROW: Final = 4

#: some entity with several types has this type other than first (a walk by type1 misses it)
_OTHER_TYPE: Final = (
    "EXISTS (SELECT 1 FROM entities m WHERE m.tenant=? AND cardinality(m.types) > 1 "
    "AND m.types && ?::text[] AND m.type1 <> ?)"
)


async def _row(conn: Conn, sql: str, *args: Any) -> Any:
    """Return the one row of an aggregate statement."""
    row = await conn.fetchrow(sql, *args)
    assert row is not None  # an aggregate without GROUP BY always yields a row
    return row


def _budget(need: int) -> int:
    """Return how many candidates a walk for offset+limit rows checks (an int in the SQL:
    limits written out let the plan PostgreSQL keeps for a statement suit them)."""
    return int(max(WALK_BUDGET, BUDGET_PER_ROW * need))


def walk_type(query: EntityQuery) -> str | None:
    """Return the expanded type a query can walk (one type name, no geo-query), or None."""
    if isinstance(query.types, TypeName) and query.geo is None:
        return query.expand(query.types.name)
    return None


async def page(
    conn: Conn, tenant: str, query: EntityQuery, type_iri: str, dialect: pg_query.PgDialect
) -> list[Doc] | None:
    """Return a query's page by walking its type, or None when the planner should answer.

    dialect must be a walk dialect (every condition checked per candidate).
    """
    need = query.offset + query.limit
    budget = _budget(need)
    where, params = pg_query.where(tenant, replace(query, types=None), dialect)
    sql = numbered(
        "SELECT d.doc FROM (SELECT e.rid FROM (SELECT * FROM entities "
        f"WHERE tenant=? AND type1=? ORDER BY rid LIMIT {budget}) e "
        f"WHERE {where} AND NOT {_OTHER_TYPE} ORDER BY e.rid "
        f"LIMIT {int(query.limit)} OFFSET {int(query.offset)}) p "
        "JOIN entities d ON d.rid = p.rid ORDER BY p.rid"
    )
    other = [tenant, [type_iri], type_iri]
    rows = await conn.fetch(sql, tenant, type_iri, *params, *other)
    if len(rows) < query.limit:
        # a short page: complete only if the walk saw every entity of the type and none with
        # the type second was left out
        seen, missed = await _row(
            conn,
            numbered(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM entities WHERE tenant=? "
                f"AND type1=? LIMIT {budget}) x), {_OTHER_TYPE}"
            ),
            tenant,
            type_iri,
            *other,
        )
        if missed or seen >= budget:
            return None
    return [orjson.loads(r[0]) for r in rows]


@dataclass(frozen=True, slots=True)
class Lookup:
    """A text equality of q to walk by: its attribute path, the strings it may equal (a term
    and its expansion), and the rest of q (the candidates hold the value already)."""

    path: str
    values: list[str]
    rest: QExpr | None


#: values of one equality walked side by side (a longer list is left to the planner)
_MAX_VALUES: Final = 8


def lookup(query: EntityQuery) -> Lookup | None:
    """Return the first text equality among a query's q terms (ANDed), or None."""
    q = query.q
    if q is None or query.geo is not None:
        return None
    terms = q.items if isinstance(q, And) else (q,)
    for i, term in enumerate(terms):
        found = attrindex.text_lookup(term, query.expand)
        if found is None or len(found[1]) > _MAX_VALUES:
            continue
        if all(len(v) < pg_query.TEXT_PREFIX for v in found[1]):
            others = terms[:i] + terms[i + 1 :]
            rest = None if not others else others[0] if len(others) == 1 else And(others)
            return Lookup(found[0], found[1], rest)
    return None


async def value_page(
    conn: Conn,
    tenant: str,
    query: EntityQuery,
    found: Lookup,
    dialect: pg_query.PgDialect,
) -> list[Doc] | None:
    """Return a query's page by walking the entities holding a value, or None (the planner).

    Each value is walked in creation order, each candidate checked against the whole query,
    until offset+limit match or the budget is spent; the pages of the values merge into the
    query's page. A value whose walk ran out of budget short of a page leaves the merged
    page exact only up to the last candidate it saw.
    """
    values = found.values
    need = query.offset + query.limit
    budget = _budget(need)
    pid_sql, pid_params = dialect.pid(found.path)
    where, params = pg_query.where(tenant, replace(query, q=found.rest), dialect)
    holders = (
        f"FROM attr_index a WHERE a.pid={pid_sql} AND a.t={attrindex.STRING} "
        f"AND length(a.s) < {pg_query.TEXT_PREFIX} AND a.s=?"
    )
    parts: list[str] = []
    args: list[Any] = []
    for i, value in enumerate(values):
        parts.append(
            f"(SELECT {i} AS i, e.rid, e.doc, NULL::bigint AS n FROM (SELECT DISTINCT a.rid "
            f"{holders} ORDER BY a.rid LIMIT {budget}) c JOIN entities e ON e.rid = c.rid "
            f"WHERE {where} ORDER BY c.rid LIMIT {need})"
        )
        args += [*pid_params, value, *params]
        # how many hold the value, counted no further than a page: few means all were seen
        parts.append(
            f"(SELECT {i}, NULL, NULL, count(*) FROM (SELECT 1 {holders} LIMIT {need + 1}) x)"
        )
        args += [*pid_params, value]
    rows = await conn.fetch(numbered(" UNION ALL ".join(parts)), *args)
    pages: dict[int, dict[int, str]] = {i: {} for i in range(len(values))}
    holding: dict[int, int] = {}
    for i, rid, doc, n in rows:
        if rid is None:
            holding[i] = n
        else:
            pages[i][rid] = doc
    merged: dict[int, str] = {}
    for page_ in pages.values():
        merged.update(page_)
    rids = sorted(merged)[:need]
    bound: int | None = None  # the page is exact up to this rid
    for i, value in enumerate(values):
        if len(pages[i]) >= need or holding.get(i, 0) <= need:
            continue  # a full page of this value, or every holder seen
        seen, last = await _row(
            conn,
            numbered(
                "SELECT count(*), max(rid) FROM (SELECT DISTINCT a.rid "
                f"{holders} ORDER BY a.rid LIMIT {budget}) c"
            ),
            *pid_params,
            value,
        )
        if seen >= budget:
            bound = last if bound is None else min(bound, last)
    if bound is not None and (len(rids) < need or rids[-1] > bound):
        return None
    return [orjson.loads(merged[rid]) for rid in rids[query.offset :]]


def _bounds(geo: GeoQuery, meters: float) -> tuple[tuple[float, float, float, float], float]:
    """Return a lon/lat box holding every point within meters of the reference (or more),
    and the fewest meters a degree of planar distance spans anywhere in that box."""
    minx, miny, maxx, maxy = geometry_bbox(geo.reference)
    dlat = meters / meters_per_degree(0.0)[1] * 1.01 + 1e-9
    lat = min(89.9, max(abs(miny), abs(maxy)) + dlat)
    kx = meters_per_degree(lat)[0]  # a degree of longitude, shortest at the box's far edge
    dlon = meters / kx * 1.01 + 1e-9
    return (minx - dlon, miny - dlat, maxx + dlon, maxy + dlat), kx


#: candidates fetched from the spatial index for each row of a near page
NEAR_FETCH: Final = 2
#: beyond this maxDistance the planar bound below is not trusted (the earth's curvature)
_NEAR_PLANAR_LIMIT: Final = 100_000.0


async def near_page(
    conn: Conn, tenant: str, query: EntityQuery, geo: GeoQuery, dialect: pg_query.PgDialect
) -> tuple[list[Doc] | None, float]:
    """Return a near query's page, or (None, a circle holding offset+limit nearest matches).

    The nearest matches by planar distance come first from the spatial index (KNN), twice as
    many as the page needs, with their distances on the spheroid. A match not fetched is at
    least as far in degrees as the last one fetched, so at least that many degrees times the
    fewest meters a degree spans nearby: when the page's farthest match is nearer than that,
    the page is exact. Otherwise the farthest of the nearest bounds the circle in which the
    true nearest lie (maxDistance when fewer match), for the caller to order.
    """
    max_d = geo.max_distance or 0.0
    need = int(query.offset + query.limit)
    fetch = NEAR_FETCH * need
    where, params = pg_query.where(tenant, replace(query, geo=None), dialect)
    ref = pg_query.reference_json(geo)
    box, meters_per_degree_min = _bounds(geo, max_d)
    sql = numbered(
        f"SELECT e.rid, e.doc, g.geom <-> {pg_query.REF} AS p, "
        f"ST_Distance(g.geom::geography, {pg_query.REF}::geography) AS s "
        "FROM geo_index g JOIN entities e ON e.rid = g.rid "
        "WHERE g.attr=? AND g.geom && ST_MakeEnvelope(?, ?, ?, ?, 4326) "
        f"AND {where} ORDER BY g.geom <-> {pg_query.REF} LIMIT {fetch}"
    )
    rows = await conn.fetch(sql, ref, ref, query.geoproperty or "", *box, *params, ref)
    nearest: dict[int, tuple[float, str]] = {}
    for rid, doc, _, dist in rows:
        if rid not in nearest or dist < nearest[rid][0]:
            nearest[rid] = (dist, doc)
    min_d = geo.min_distance or 0.0
    within = sorted((d, rid) for rid, (d, _) in nearest.items() if min_d <= d <= max_d)
    # fewer rows than fetched: every match in the box (which holds the circle) is here
    exact = len(rows) < fetch
    if not exact and len(within) >= need and max_d <= _NEAR_PLANAR_LIMIT:
        unseen = rows[-1][2] * meters_per_degree_min * 0.99  # the nearest a match not fetched
        exact = within[need - 1][0] < unseen
    if exact:
        return [orjson.loads(nearest[rid][1]) for _, rid in within[query.offset : need]], max_d
    if len(within) < need:
        return None, max_d
    # a hair wider: the circle's test and the distance above may round differently
    farthest = within[need - 1][0]
    return None, float(min(max_d, math.nextafter(farthest * (1 + 1e-9), math.inf) + 1e-3))


async def region_page(
    conn: Conn, tenant: str, query: EntityQuery, geo: GeoQuery, dialect: pg_query.PgDialect
) -> list[Doc]:
    """Return the page of a geo-query by region (within, contains, intersects, overlaps,
    equals: all but disjoint), candidates by bounding box first.

    The spatial index yields the geometries whose box meets the reference's; those of
    entities matching the rest of the query are taken in creation order and tested exactly
    (the costly test, some microseconds each) only until the page is full.
    """
    relate = pg_query.RELATE[geo.georel]
    where, params = pg_query.where(tenant, replace(query, geo=None), dialect)
    ref = pg_query.reference_json(geo)
    sql = numbered(
        "SELECT d.doc FROM (SELECT DISTINCT c.rid FROM (SELECT e.rid, g.geom "
        "FROM geo_index g JOIN entities e ON e.rid = g.rid "
        f"WHERE g.attr=? AND g.geom && {pg_query.REF} AND {where} ORDER BY e.rid OFFSET 0) c "
        f"WHERE {relate}({pg_query.REF}, c.geom) ORDER BY c.rid "
        f"LIMIT {int(query.limit)} OFFSET {int(query.offset)}) p "
        "JOIN entities d ON d.rid = p.rid ORDER BY p.rid"
    )
    rows = await conn.fetch(sql, query.geoproperty or "", ref, *params, ref)
    return [orjson.loads(r[0]) for r in rows]
