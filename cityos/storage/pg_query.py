"""Compile entity queries to PostgreSQL: the SQLite compilers in the PostgreSQL dialect, plus
type selections on the ``types`` array and geo-queries with PostGIS.

Everything here writes ``?`` placeholders, as the shared compilers do; ``numbered`` turns them
into ``$1, $2...`` once the whole statement is assembled.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from cityos.broker.geo import GeoQuery
from cityos.broker.qlang import Date, DateTime, Scalar, Time
from cityos.broker.typesel import TypeAnd, TypeExpr, TypeName
from cityos.storage import sqlite_attrindex as attrindex
from cityos.storage.base import EntityQuery
from cityos.storage.sqlite_attrindex import BOOLEAN, NUMBER

_NUMBER_VALUE: Final = (
    "(CASE WHEN jsonb_typeof(j.value)='number' THEN (j.value #>> '{}')::float8 END)"
)
_TEXT_VALUE: Final = "(j.value #>> '{}') COLLATE \"C\""
_IS_TEXT: Final = "jsonb_typeof(j.value)='string'"
#: text values shorter than this are indexed whole, longer ones by this prefix (migration 0010)
TEXT_PREFIX: Final = 200


class PgDialect(attrindex.Dialect):
    """How the attribute index and JSON are queried on PostgreSQL (see pg migrations)."""

    true = "TRUE"
    scopes = (
        "json_array_elements_text(CASE json_typeof(e.doc->'scope') "
        "WHEN 'array' THEN e.doc->'scope' WHEN 'string' THEN json_build_array(e.doc->'scope') "
        "ELSE '[]'::json END) s(value)"
    )
    json_present = "a.j #> ?::text[] IS NOT NULL"
    # OFFSET 0 keeps PostgreSQL from turning the EXISTS into a join it may start from: its
    # estimate of a range on one attribute is poor (n's statistics mix every attribute)
    per_row = " OFFSET 0"

    def __init__(self, pids: Mapping[str, int] | None = None, *, walk: bool = False) -> None:
        self._pids = pids
        self.walk = walk
        #: the paths asked for that pids did not hold
        self.missing: set[str] = set()

    def pid(self, path: str) -> tuple[str, list[Any]]:
        # a known pid is a parameter the planner sees, not a subquery it cannot (estimates
        # of how many rows match then use that attribute's own statistics)
        if self._pids is None:
            return super().pid(path)
        pid = self._pids.get(path)
        if pid is None:
            self.missing.add(path)
            return super().pid(path)
        return "?::integer", [pid]

    def col(self, kind: int) -> str:
        return "a.n" if kind in (NUMBER, BOOLEAN) else "a.s"

    def equal(self, kind: int, params: list[Any]) -> tuple[str, list[Any]]:
        if kind in (NUMBER, BOOLEAN):
            return super().equal(kind, params)
        # text (migration 0010): a value under 200 characters by the index holding it whole;
        # a longer one by its first 200 characters, then compared whole
        short = [p for p in params if len(p) < TEXT_PREFIX]
        long = [p for p in params if len(p) >= TEXT_PREFIX]
        parts: list[str] = []
        values: list[Any] = []
        if short:
            parts.append(f"length(a.s) < {TEXT_PREFIX} AND a.s IN ({','.join('?' * len(short))})")
            values += short
        if long:
            prefixes = ",".join(f"left(?, {TEXT_PREFIX})" for _ in long)
            parts.append(
                f"length(a.s) >= {TEXT_PREFIX} AND left(a.s, {TEXT_PREFIX}) IN ({prefixes}) "
                f"AND a.s IN ({','.join('?' * len(long))})"
            )
            values += [*long, *long]
        cond = parts[0] if len(parts) == 1 else "(" + " OR ".join(f"({x})" for x in parts) + ")"
        return f"a.t={kind} AND {cond}", values

    def regex(self, subject: str) -> str:
        return f"{subject} ~ ?"

    def json_path(self, keys: tuple[str, ...]) -> Any:
        return list(keys)

    def json_each(self, cond: str) -> tuple[str, int]:
        # as SQLite's json_each: a scalar yields itself, an array its elements; objects are
        # excluded so that attr[k]==5 does not match {"k": {"x": 5}}
        return (
            "EXISTS (SELECT 1 FROM (SELECT a.j #> ?::text[] AS x) p, jsonb_array_elements("
            "CASE jsonb_typeof(p.x) WHEN 'array' THEN p.x ELSE jsonb_build_array(p.x) END"
            f") j(value) WHERE jsonb_typeof(p.x) <> 'object' AND {cond})",
            1,
        )

    def json_text(self) -> tuple[str, str]:
        return _IS_TEXT, _TEXT_VALUE

    def json_scalar(self, value: Scalar) -> tuple[str, str, Any]:
        if isinstance(value, bool):
            return f"j.value='{'true' if value else 'false'}'::jsonb", "", None
        if isinstance(value, int | float):
            # the CASE keeps the cast from seeing a string whatever order the tests run in
            return "jsonb_typeof(j.value)='number'", _NUMBER_VALUE, float(value)
        if isinstance(value, DateTime | Date | Time):
            return _IS_TEXT, _TEXT_VALUE, value.text
        return _IS_TEXT, _TEXT_VALUE, value


PG: Final = PgDialect()


def numbered(sql: str) -> str:
    """Replace the ``?`` placeholders of a statement by ``$1, $2...`` in order."""
    parts = sql.split("?")
    counter = itertools.count(1)
    return parts[0] + "".join(f"${next(counter)}{p}" for p in parts[1:])


def compile_type_selection(expr: TypeExpr, expand: Callable[[str], str]) -> tuple[str, list[Any]]:
    """Compile a type selection to a condition on ``e.types`` (GIN-indexed overlaps)."""
    params: list[Any] = []

    def names_cond(names: list[str]) -> str:
        params.append(names)
        return "e.types && ?::text[]"

    def walk(node: TypeExpr) -> str:
        if isinstance(node, TypeName):
            return names_cond([expand(node.name)])
        if isinstance(node, TypeAnd):
            return "(" + " AND ".join(walk(x) for x in node.items) + ")"
        names = [expand(x.name) for x in node.items if isinstance(x, TypeName)]
        parts = [names_cond(names)] if names else []
        parts.extend(walk(x) for x in node.items if not isinstance(x, TypeName))
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    return walk(expr), params


# -- geo ---------------------------------------------------------------------------------------
#: the reference geometry of a geo-query (its GeoJSON a parameter)
REF: Final = "ST_SetSRID(ST_GeomFromGeoJSON(?::text), 4326)"
#: georel -> PostGIS test of the reference (first) and the stored geometry, as GeoQuery.matches
RELATE: Final = {
    "within": "ST_Contains",
    "contains": "ST_Within",
    "intersects": "ST_Intersects",
    "disjoint": "ST_Disjoint",
    "overlaps": "ST_Overlaps",
    "equals": "ST_Equals",
}


def reference_json(query: GeoQuery) -> str:
    """Return a geo-query's reference geometry as GeoJSON text (the parameter of REF)."""
    return orjson.dumps(query.reference).decode()


def compile_geo(query: GeoQuery, geoproperty_iri: str) -> tuple[str, list[Any]]:
    """Return a condition on ``e``: some geometry of the geoproperty satisfies the query."""
    ref = reference_json(query)
    if query.georel == "near":
        geog = f"{REF}::geography"
        tests: list[str] = []
        params: list[Any] = [geoproperty_iri]
        if query.max_distance is not None:
            tests.append(f"ST_DWithin(g.geom::geography, {geog}, ?)")
            params += [ref, query.max_distance]
        if query.min_distance is not None:
            tests.append(f"ST_Distance(g.geom::geography, {geog}) >= ?")
            params += [ref, query.min_distance]
        test = " AND ".join(tests) or "TRUE"
        if query.max_distance is None:
            # unbounded: test row by row so that LIMIT can stop early
            return (
                f"EXISTS (SELECT 1 FROM geo_index g WHERE g.rid=e.rid AND g.attr=? AND {test})",
                params,
            )
        return f"e.rid IN (SELECT g.rid FROM geo_index g WHERE g.attr=? AND {test})", params
    fn = RELATE[query.georel]
    if query.georel == "disjoint":
        return (
            f"EXISTS (SELECT 1 FROM geo_index g WHERE g.rid=e.rid AND g.attr=? "
            f"AND {fn}({REF}, g.geom))",
            [geoproperty_iri, ref],
        )
    return (
        f"e.rid IN (SELECT g.rid FROM geo_index g WHERE g.attr=? AND {fn}({REF}, g.geom))",
        [geoproperty_iri, ref],
    )


def compile_distance(query: GeoQuery, geoproperty_iri: str) -> tuple[str, list[Any]]:
    """Return an entity's distance in meters to a near query's reference, for ORDER BY."""
    return (
        f"(SELECT min(ST_Distance(g.geom::geography, {REF}::geography)) FROM geo_index g "
        "WHERE g.rid=e.rid AND g.attr=?)",
        [reference_json(query), geoproperty_iri],
    )


# -- the whole WHERE ---------------------------------------------------------------------------
def where(tenant: str, query: EntityQuery, dialect: PgDialect = PG) -> tuple[str, list[Any]]:
    """Return the condition on ``e`` (with ``?`` placeholders) selecting a query's entities.

    dialect may know attribute pids (PgDialect(pids)); it records those it did not know.
    """
    clauses = ["e.tenant=?"]
    params: list[Any] = [tenant]
    if query.ids:
        clauses.append("e.id = ANY(?::text[])")
        params.append(list(query.ids))
    if query.id_pattern is not None:
        clauses.append("e.id ~ ?")
        params.append(query.id_pattern)
    if query.types is not None:
        sql, p = compile_type_selection(query.types, query.expand)
        clauses.append(sql)
        params.extend(p)
    if query.attrs:
        clauses.append(
            "EXISTS (SELECT 1 FROM entity_attrs x WHERE x.rid=e.rid AND x.attr = ANY(?::text[]))"
        )
        params.append(sorted(query.attrs))
    if query.q is not None:
        sql, p = attrindex.compile_q(query.q, query.expand, dialect)
        clauses.append(sql)
        params.extend(p)
    if query.scope_q is not None:
        sql, p = attrindex.compile_scope_q(query.scope_q, dialect)
        clauses.append(sql)
        params.extend(p)
    if query.geo is not None:
        sql, p = compile_geo(query.geo, query.geoproperty or "")
        clauses.append(sql)
        params.extend(p)
    return " AND ".join(clauses), params
