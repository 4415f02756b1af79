"""Write the PostgreSQL indexes of an entity: attribute kinds, attribute values and geometries.

The rows are the SQLite engine's (``sqlite_attrindex.index_rows``, ``sqlite_geo.geo_rows``),
sent as arrays so that each table costs one statement per write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cityos.broker.model import Doc
from cityos.storage.sqlite_attrindex import BOOLEAN, DATETIME, JSON, NUMBER, STRING, Row, index_rows
from cityos.storage.sqlite_geo import geo_rows

#: a connection, on its own or lent by a pool
Conn = asyncpg.Connection | PoolConnectionProxy


class PathIds:
    """Interned attribute paths (path -> attr_paths.pid) known to be committed.

    Paths interned by a transaction are remembered only once it commits (``commit``), so a
    rollback never leaves a pid here that the database does not have.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    async def ids(
        self, conn: Conn, paths: Iterable[str], pending: dict[str, int]
    ) -> dict[str, int]:
        """Return the pid of every path, interning new ones (recorded in pending)."""
        wanted = set(paths)
        missing = [p for p in wanted if p not in self._ids and p not in pending]
        if missing:
            await conn.execute(
                "INSERT INTO attr_paths(path) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                missing,
            )
            for pid, path in await conn.fetch(
                "SELECT pid, path FROM attr_paths WHERE path = ANY($1::text[])", missing
            ):
                pending[path] = pid
        return {p: self._ids.get(p) or pending[p] for p in wanted}

    def known(self) -> Mapping[str, int]:
        """Return the committed paths known so far (path -> pid)."""
        return self._ids

    async def learn(self, conn: Conn, paths: Iterable[str] | None = None) -> None:
        """Remember the stored pids of paths (None: of every path, up to the cache's size)."""
        if paths is None:
            rows = await conn.fetch("SELECT pid, path FROM attr_paths ORDER BY pid LIMIT 100000")
        else:
            rows = await conn.fetch(
                "SELECT pid, path FROM attr_paths WHERE path = ANY($1::text[])", list(paths)
            )
        self.commit({path: pid for pid, path in rows})

    def commit(self, pending: dict[str, int]) -> None:
        """Remember the paths of a committed transaction."""
        if len(self._ids) > 100_000:
            self._ids.clear()
        self._ids.update(pending)


def _columns(rows: list[Row], pids: dict[str, int]) -> list[list[Any]]:
    rid_col: list[int] = []
    pid_col: list[int] = []
    t_col: list[int] = []
    n_col: list[float | None] = []
    s_col: list[str | None] = []
    j_col: list[str | None] = []
    for rid, path, t, v, j in rows:
        rid_col.append(rid)
        pid_col.append(pids[path])
        t_col.append(t)
        n_col.append(float(v) if t in (NUMBER, BOOLEAN) else None)
        s_col.append(v if t in (STRING, DATETIME) else None)
        j_col.append(j if t == JSON else None)
    return [rid_col, pid_col, t_col, n_col, s_col, j_col]


_INSERT_VALUES = (
    "INSERT INTO attr_index(rid, pid, t, n, s, j) SELECT * FROM unnest("
    "$1::bigint[], $2::integer[], $3::smallint[], $4::float8[], $5::text[], $6::jsonb[])"
)


async def _insert_values(
    conn: Conn, rows: list[Row], paths: PathIds, pending: dict[str, int]
) -> None:
    if rows:
        pids = await paths.ids(conn, (r[1] for r in rows), pending)
        await conn.execute(_INSERT_VALUES, *_columns(rows, pids))


def attr_kinds(doc: Doc) -> list[tuple[str, str]]:
    """Return (attribute IRI, attribute type) of every instance of a document."""
    return [(name, inst["type"]) for name, insts in doc.get("attrs", {}).items() for inst in insts]


async def _insert_kinds(conn: Conn, rid: int, doc: Doc) -> None:
    kinds = sorted(set(attr_kinds(doc)))
    if kinds:
        await conn.execute(
            "INSERT INTO entity_attrs(rid, attr, atype) "
            "SELECT $1, a, t FROM unnest($2::text[], $3::text[]) u(a, t)",
            rid,
            [a for a, _ in kinds],
            [t for _, t in kinds],
        )


async def _insert_geo(conn: Conn, rid: int, doc: Doc) -> None:
    rows = geo_rows(doc)
    if rows:
        # 2D: the column holds lon/lat; an altitude plays no part in geo-queries
        await conn.execute(
            "INSERT INTO geo_index(rid, attr, geom) SELECT $1, a, "
            "ST_Force2D(ST_SetSRID(ST_GeomFromGeoJSON(g), 4326)) "
            "FROM unnest($2::text[], $3::text[]) u(a, g)",
            rid,
            [a for a, _, _ in rows],
            [g for _, g, _ in rows],
        )


async def insert(conn: Conn, rid: int, doc: Doc, paths: PathIds, pending: dict[str, int]) -> None:
    """Index a newly stored document."""
    await _insert_kinds(conn, rid, doc)
    await _insert_values(conn, index_rows(rid, doc), paths, pending)
    await _insert_geo(conn, rid, doc)


#: a new entity with all its index rows, in one statement (the rows' foreign keys are checked
#: at its end, when the entity row is there)
_CREATE: Final = (
    "WITH e AS (INSERT INTO entities(tenant, id, doc, types, created_at, modified_at) "
    "VALUES($1, $2, $3, $4, $5, $6) RETURNING rid), "
    "k AS (INSERT INTO entity_attrs(rid, attr, atype) "
    "SELECT e.rid, u.a, u.t FROM e, unnest($7::text[], $8::text[]) u(a, t)), "
    "g AS (INSERT INTO geo_index(rid, attr, geom) "
    "SELECT e.rid, u.a, ST_Force2D(ST_SetSRID(ST_GeomFromGeoJSON(u.g), 4326)) "
    "FROM e, unnest($9::text[], $10::text[]) WITH ORDINALITY u(a, g, n) ORDER BY u.n), "
    "v AS (INSERT INTO attr_index(rid, pid, t, n, s, j) SELECT e.rid, u.* FROM e, unnest("
    "$11::integer[], $12::smallint[], $13::float8[], $14::text[], $15::jsonb[]) u) "
    "SELECT rid FROM e"
)


async def create(
    conn: Conn, tenant: str, doc: Doc, text: str, paths: PathIds, pending: dict[str, int]
) -> int:
    """Store a new document (serialized as text) and its index rows; return its rid."""
    values = index_rows(0, doc)
    pids = await paths.ids(conn, (r[1] for r in values), pending)
    kinds = sorted(set(attr_kinds(doc)))
    geo = geo_rows(doc)
    rid: int | None = await conn.fetchval(
        _CREATE,
        tenant,
        doc["id"],
        text,
        doc["type"],
        doc["createdAt"],
        doc["modifiedAt"],
        [a for a, _ in kinds],
        [t for _, t in kinds],
        [a for a, _, _ in geo],
        [g for _, g, _ in geo],
        *_columns(values, pids)[1:],
    )
    assert rid is not None
    return rid


async def update(
    conn: Conn,
    rid: int,
    old: Doc,
    new: Doc,
    paths: PathIds,
    pending: dict[str, int],
) -> None:
    """Rewrite the index rows of the attributes that changed between two versions."""
    await rewrite(conn, rid, old, new, None, paths, pending)


#: a new version of the document, with its changed value rows, in one statement (the
#: sub-statements share one snapshot: the DELETE sees only the old rows, never the new ones)
_REWRITE: Final = (
    "WITH doc AS (UPDATE entities SET doc=$7, types=$8, modified_at=$9 WHERE rid=$10 AND $11), "
    "gone AS (DELETE FROM attr_index WHERE rid=$10 AND pid = ANY($12::integer[])) "
    "INSERT INTO attr_index(rid, pid, t, n, s, j) SELECT * FROM unnest("
    "$1::bigint[], $2::integer[], $3::smallint[], $4::float8[], $5::text[], $6::jsonb[])"
)


async def rewrite(
    conn: Conn,
    rid: int,
    old: Doc,
    new: Doc,
    text: str | None,
    paths: PathIds,
    pending: dict[str, int],
) -> None:
    """Store new (serialized as text, unless None) over old and rewrite what changed of its
    index rows; the document and its value rows cost one statement together."""
    if set(attr_kinds(old)) != set(attr_kinds(new)):
        await conn.execute("DELETE FROM entity_attrs WHERE rid=$1", rid)
        await _insert_kinds(conn, rid, new)
    old_attrs, new_attrs = old.get("attrs", {}), new.get("attrs", {})
    changed = [
        n for n in old_attrs.keys() | new_attrs.keys() if old_attrs.get(n) != new_attrs.get(n)
    ]
    # an attribute's paths all start with its name, so its rows are those of its paths
    before = {r[1] for r in index_rows(rid, old, changed)} if changed else set()
    after = index_rows(rid, new, changed) if changed else []
    pids = await paths.ids(conn, before | {r[1] for r in after}, pending)
    if text is not None or before or after:
        await conn.execute(
            _REWRITE,
            *_columns(after, pids),
            text,
            new["type"],
            new.get("modifiedAt"),
            rid,
            text is not None,
            [pids[p] for p in before],
        )
    if geo_rows(old) != geo_rows(new):
        await conn.execute("DELETE FROM geo_index WHERE rid=$1", rid)
        await _insert_geo(conn, rid, new)


async def insert_many(
    conn: Conn, docs: Sequence[tuple[int, Doc]], paths: PathIds, pending: dict[str, int]
) -> None:
    """Index many newly stored (rid, document) pairs, one statement per index (dump loads)."""
    kinds = [(rid, a, t) for rid, doc in docs for a, t in sorted(set(attr_kinds(doc)))]
    if kinds:
        await conn.execute(
            "INSERT INTO entity_attrs(rid, attr, atype) "
            "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])",
            *(list(col) for col in zip(*kinds, strict=True)),
        )
    await _insert_values(
        conn, [r for rid, doc in docs for r in index_rows(rid, doc)], paths, pending
    )
    geo = [(rid, a, g) for rid, doc in docs for a, g, _ in geo_rows(doc)]
    if geo:
        await conn.execute(
            "INSERT INTO geo_index(rid, attr, geom) SELECT r, a, "
            "ST_Force2D(ST_SetSRID(ST_GeomFromGeoJSON(g), 4326)) "
            "FROM unnest($1::bigint[], $2::text[], $3::text[]) u(r, a, g)",
            *(list(col) for col in zip(*geo, strict=True)),
        )
