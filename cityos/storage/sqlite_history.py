"""Attribute history in SQLite: every change recorded, temporal queries and aggregation.

`attr_history` holds one row per recorded attribute instance. Times are integer microseconds
(UTC). The index (hid, attr, t_obs, ds, num, val) makes one entity's attribute over a time
range an index range scan, and covers aggregation by observedAt entirely (no table lookups);
all entities of a type are found through `history_types` and then scanned per entity the same
way. Aggregates are computed by SQL GROUP BY per period; Python only sees one row per period.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from cityos.broker import typesel
from cityos.broker.model import Instance
from cityos.broker.temporal import (
    AttrHistory,
    Bucket,
    HistoryEntity,
    HistoryRow,
    TemporalQuery,
    period_bounds,
    to_micros,
)
from cityos.storage.base import Change
from cityos.storage.history_rows import COLUMN as _COLUMN
from cityos.storage.history_rows import bucket as _bucket
from cityos.storage.history_rows import compile_types as _compile_types
from cityos.storage.history_rows import instance_row as _row
from cityos.storage.history_rows import recorded_instances
from cityos.storage.history_rows import time_range as _range
from cityos.storage.sqlite import DumpRow, DumpTable, SqliteStorage, dump_tables, load_tables

DDL: Final = (
    """CREATE TABLE IF NOT EXISTS history_entities(
        hid INTEGER PRIMARY KEY, tenant TEXT NOT NULL, eid TEXT NOT NULL, UNIQUE(tenant, eid))""",
    """CREATE TABLE IF NOT EXISTS history_types(
        tenant TEXT NOT NULL, type TEXT NOT NULL, hid INTEGER NOT NULL,
        PRIMARY KEY(tenant, type, hid))""",  # rowid order keeps the entity's type order
    "CREATE INDEX IF NOT EXISTS history_types_hid ON history_types(hid)",
    # AUTOINCREMENT: an instanceId is never reused after its instance was deleted
    """CREATE TABLE IF NOT EXISTS attr_history(
        iid INTEGER PRIMARY KEY AUTOINCREMENT,
        hid INTEGER NOT NULL,
        attr TEXT NOT NULL,
        ds TEXT NOT NULL,        -- datasetId, '' for the default instance
        t_obs INTEGER NOT NULL,  -- observedAt, else the time of the change
        t_cre INTEGER NOT NULL,
        t_mod INTEGER NOT NULL,
        num REAL,                -- a numeric value (aggregation); NULL otherwise
        val TEXT,                -- any other value as JSON (distinctCount)
        inst TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS attr_history_obs ON attr_history(hid, attr, t_obs, ds, num, val)",
    "CREATE INDEX IF NOT EXISTS attr_history_cre ON attr_history(hid, attr, t_cre)",
    "CREATE INDEX IF NOT EXISTS attr_history_age ON attr_history(t_obs)",
)
PRUNE_BATCH: Final = 10_000
_ROW_SQL: Final = (
    "INSERT INTO attr_history(hid, attr, ds, t_obs, t_cre, t_mod, num, val, inst) "
    "VALUES(?,?,?,?,?,?,?,?,?)"
)


@dataclass(frozen=True, slots=True)
class HistorySelection:
    """Which entities of a tenant a temporal query is about (all filters ANDed)."""

    ids: tuple[str, ...] = ()
    id_pattern: str | None = None
    types: typesel.TypeExpr | None = None
    expand: Callable[[str], str] = str
    #: entity must have a recorded instance of one of these attributes (expanded)
    attrs: frozenset[str] = frozenset()
    #: only these entity ids (from a filter on the current state); None: no restriction
    only: frozenset[str] | None = None
    limit: int = 20
    offset: int = 0
    count: bool = False


def _hid(conn: sqlite3.Connection, tenant: str, eid: str) -> int | None:
    row = conn.execute(
        "SELECT hid FROM history_entities WHERE tenant=? AND eid=?", (tenant, eid)
    ).fetchone()
    return None if row is None else int(row[0])


def _ensure_entity(
    conn: sqlite3.Connection, tenant: str, eid: str, types: Iterable[str], *, new_types: bool
) -> tuple[int, bool]:
    hid = _hid(conn, tenant, eid)
    created = hid is None
    if hid is None:
        cur = conn.execute("INSERT INTO history_entities(tenant, eid) VALUES(?,?)", (tenant, eid))
        assert cur.lastrowid is not None
        hid = cur.lastrowid
    if created or new_types:
        conn.executemany(
            "INSERT OR IGNORE INTO history_types(tenant, type, hid) VALUES(?,?,?)",
            [(tenant, t, hid) for t in types],
        )
    return hid, created


def record_change(conn: sqlite3.Connection, change: Change) -> None:
    """Record the attribute instances a change added or altered (a change hook)."""
    pending, new_types = recorded_instances(change)
    if not pending:
        return
    assert change.new is not None
    hid, _ = _ensure_entity(
        conn, change.tenant, change.entity_id, change.new["type"], new_types=new_types
    )
    at = to_micros(change.at)
    conn.executemany(_ROW_SQL, [_row(hid, a, i, at, at) for a, i in pending])


class SqliteHistory:
    """The temporal store of a SqliteStorage: its reads and writes run on the engine's jobs."""

    def __init__(self, store: SqliteStorage) -> None:
        self._store = store

    #: (dump section, table, order, rowid too?) of what `cityos export` keeps
    DUMP_TABLES: Final[tuple[DumpTable, ...]] = (
        ("history_entity", "history_entities", "hid", False),
        ("history_type", "history_types", "rowid", False),
        ("history_instance", "attr_history", "iid", False),
    )

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the history: entities, their types and every attribute instance."""
        return dump_tables(conn, SqliteHistory.DUMP_TABLES)

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        load_tables(conn, SqliteHistory.DUMP_TABLES, section, rows)

    async def start(self) -> None:
        """Create the history tables if needed."""

        def create(conn: sqlite3.Connection) -> None:
            for stmt in DDL:
                conn.execute(stmt)

        await self._store.write(create)

    # -- writes -------------------------------------------------------------------------
    async def add(
        self,
        tenant: str,
        eid: str,
        types: list[str],
        attrs: dict[str, list[Instance]],
        now: int,
        *,
        must_exist: bool,
    ) -> bool | None:
        """Add instances to an entity's history; return whether the entity was new to it.

        With must_exist, return None (and write nothing) when the entity has no history.
        """

        def run(conn: sqlite3.Connection) -> bool | None:
            if must_exist and _hid(conn, tenant, eid) is None:
                return None
            hid, created = _ensure_entity(conn, tenant, eid, types, new_types=True)
            conn.executemany(
                _ROW_SQL,
                [_row(hid, a, i, now, now) for a, insts in attrs.items() for i in insts],
            )
            return created

        result: bool | None = await self._store.write(run)
        return result

    async def delete_entity(self, tenant: str, eid: str) -> bool:
        """Delete an entity's whole history; return whether it had one."""

        def run(conn: sqlite3.Connection) -> bool:
            hid = _hid(conn, tenant, eid)
            if hid is None:
                return False
            conn.execute("DELETE FROM attr_history WHERE hid=?", (hid,))
            conn.execute("DELETE FROM history_types WHERE hid=?", (hid,))
            conn.execute("DELETE FROM history_entities WHERE hid=?", (hid,))
            return True

        result: bool = await self._store.write(run)
        return result

    async def delete_attribute(
        self, tenant: str, eid: str, attr: str, dataset: str | None, every: bool
    ) -> int | None:
        """Delete an attribute's instances (one datasetId, or all); None: entity unknown."""

        def run(conn: sqlite3.Connection) -> int | None:
            hid = _hid(conn, tenant, eid)
            if hid is None:
                return None
            if every:
                cur = conn.execute("DELETE FROM attr_history WHERE hid=? AND attr=?", (hid, attr))
            else:
                cur = conn.execute(
                    "DELETE FROM attr_history WHERE hid=? AND attr=? AND ds=?",
                    (hid, attr, dataset or ""),
                )
            return cur.rowcount

        result: int | None = await self._store.write(run)
        return result

    async def update_instance(
        self,
        tenant: str,
        eid: str,
        attr: str,
        iid: int,
        fn: Callable[[Instance], Instance],
        now: int,
    ) -> bool | None:
        """Replace one instance by fn(instance); None: entity unknown, False: no instance."""

        def run(conn: sqlite3.Connection) -> bool | None:
            hid = _hid(conn, tenant, eid)
            if hid is None:
                return None
            row = conn.execute(
                "SELECT inst, t_cre FROM attr_history WHERE iid=? AND hid=? AND attr=?",
                (iid, hid, attr),
            ).fetchone()
            if row is None:
                return False
            inst = fn(orjson.loads(row[0]))
            values = _row(hid, attr, inst, int(row[1]), now)
            conn.execute(
                "UPDATE attr_history SET ds=?, t_obs=?, t_mod=?, num=?, val=?, inst=? WHERE iid=?",
                (values[2], values[3], values[5], values[6], values[7], values[8], iid),
            )
            return True

        result: bool | None = await self._store.write(run)
        return result

    async def delete_instance(self, tenant: str, eid: str, attr: str, iid: int) -> bool | None:
        """Delete one instance; None: entity unknown, False: no such instance."""

        def run(conn: sqlite3.Connection) -> bool | None:
            hid = _hid(conn, tenant, eid)
            if hid is None:
                return None
            cur = conn.execute(
                "DELETE FROM attr_history WHERE iid=? AND hid=? AND attr=?", (iid, hid, attr)
            )
            return cur.rowcount > 0

        result: bool | None = await self._store.write(run)
        return result

    async def prune(self, before: int) -> int:
        """Delete every instance observed before the instant; return how many."""
        total = 0
        while True:

            def run(conn: sqlite3.Connection) -> int:
                # in batches, so other writes are not held up behind one huge delete
                cur = conn.execute(
                    "DELETE FROM attr_history WHERE iid IN (SELECT iid FROM attr_history "
                    "WHERE t_obs < ? LIMIT ?)",
                    (before, PRUNE_BATCH),
                )
                return cur.rowcount

            n: int = await self._store.write(run)
            total += n
            if n < PRUNE_BATCH:
                return total

    # -- reads --------------------------------------------------------------------------
    async def tenant_exists(self, tenant: str) -> bool:
        """Return whether the tenant has any history."""

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM history_entities WHERE tenant=? LIMIT 1", (tenant,)
            ).fetchone()
            return row is not None

        result: bool = await self._store.read(run)
        return result

    async def query(
        self,
        tenant: str,
        sel: HistorySelection,
        attrs: frozenset[str] | None,
        tq: TemporalQuery,
        limit: int,
    ) -> tuple[list[HistoryEntity], int | None]:
        """Return one page of entities with their instances (or aggregates), and the count."""

        def run(conn: sqlite3.Connection) -> tuple[list[HistoryEntity], int | None]:
            refs, count = _select(conn, tenant, sel)
            types = _types(conn, [h for h, _ in refs])
            out = []
            for hid, eid in refs:
                entity = HistoryEntity(eid, types.get(hid, []))
                names = sorted(attrs) if attrs is not None else _attr_names(conn, hid)
                for attr in names:
                    if tq.aggr_methods:
                        agg = _aggregate(conn, hid, attr, tq)
                        if agg is not None:
                            entity.aggregates[attr] = agg
                    else:
                        hist = _instances(conn, hid, attr, tq, limit)
                        if hist.rows:
                            entity.attrs[attr] = hist
                out.append(entity)
            return out, count

        result: tuple[list[HistoryEntity], int | None] = await self._store.read(run)
        return result


# -- read helpers (run on a reader connection, inside one snapshot) -------------------------
def _select(
    conn: sqlite3.Connection, tenant: str, sel: HistorySelection
) -> tuple[list[tuple[int, str]], int | None]:
    clauses = ["h.tenant=?"]
    params: list[Any] = [tenant]
    if sel.ids:
        clauses.append(f"h.eid IN ({','.join('?' * len(sel.ids))})")
        params.extend(sel.ids)
    if sel.only is not None:
        only = sorted(sel.only)
        clauses.append(f"h.eid IN ({','.join('?' * len(only))})" if only else "0")
        params.extend(only)
    if sel.id_pattern is not None:
        clauses.append("REGEXP(?, h.eid)")
        params.append(sel.id_pattern)
    if sel.types is not None:
        sql, p = _compile_types(sel.types, sel.expand)
        clauses.append(sql)
        params.extend(p)
    if sel.attrs:
        marks = ",".join("?" * len(sel.attrs))
        clauses.append(
            f"EXISTS (SELECT 1 FROM attr_history a WHERE a.hid=h.hid AND a.attr IN ({marks}))"
        )
        params.extend(sorted(sel.attrs))
    where = " AND ".join(clauses)
    count = None
    if sel.count:
        count = int(
            conn.execute(
                f"SELECT count(*) FROM history_entities h WHERE {where}", params
            ).fetchone()[0]
        )
    rows = conn.execute(
        f"SELECT h.hid, h.eid FROM history_entities h WHERE {where} "
        "ORDER BY h.hid LIMIT ? OFFSET ?",
        [*params, sel.limit, sel.offset],
    ).fetchall()
    return [(int(h), str(e)) for h, e in rows], count


def _types(conn: sqlite3.Connection, hids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for start in range(0, len(hids), 500):
        chunk = hids[start : start + 500]
        for hid, t in conn.execute(
            f"SELECT hid, type FROM history_types WHERE hid IN ({','.join('?' * len(chunk))}) "
            "ORDER BY hid, rowid",
            chunk,
        ):
            out.setdefault(int(hid), []).append(str(t))
    return out


def _attr_names(conn: sqlite3.Connection, hid: int) -> list[str]:
    # hop from one attribute to the next through the index instead of scanning every row
    rows = conn.execute(
        "WITH RECURSIVE a(x) AS (SELECT min(attr) FROM attr_history WHERE hid=:h "
        "UNION ALL SELECT (SELECT min(attr) FROM attr_history WHERE hid=:h AND attr > a.x) "
        "FROM a WHERE a.x IS NOT NULL) SELECT x FROM a WHERE x IS NOT NULL",
        {"h": hid},
    ).fetchall()
    return [str(r[0]) for r in rows]


def _instances(
    conn: sqlite3.Connection, hid: int, attr: str, tq: TemporalQuery, limit: int
) -> AttrHistory:
    col = _COLUMN[tq.timeproperty]
    cond, params = _range(tq, col)
    want = tq.last_n
    take = limit if want is None else min(want, limit)
    order = "DESC" if want is not None else "ASC"
    rows = conn.execute(
        f"SELECT iid, {col}, t_obs, t_cre, t_mod, inst FROM attr_history "
        f"WHERE hid=? AND attr=?{cond} ORDER BY {col} {order}, iid {order} LIMIT ?",
        [hid, attr, *params, take + 1],
    ).fetchall()
    # with lastN, more rows than asked for is no truncation; only the page size cuts
    truncated = len(rows) > take and (want is None or take < want)
    if truncated:
        # never split instances sharing one instant across pages
        edge = rows[take][1]
        rows = [r for r in rows[:take] if r[1] != edge] or rows[:take]
    rows = rows[:take]
    out = [
        HistoryRow(int(i), int(t), int(o), int(c), int(m), orjson.loads(inst))
        for i, t, o, c, m, inst in rows
    ]
    return AttrHistory(out, truncated)


def _aggregate(
    conn: sqlite3.Connection, hid: int, attr: str, tq: TemporalQuery
) -> tuple[str, list[Bucket]] | None:
    col = _COLUMN[tq.timeproperty]
    cond, params = _range(tq, col)
    span: Any
    if tq.timerel == "between":
        span = (tq.time_at, tq.end_time_at)  # both ends known: no need to look them up
    else:
        span = conn.execute(
            f"SELECT min({col}), max({col}) FROM attr_history WHERE hid=? AND attr=?{cond}",
            [hid, attr, *params],
        ).fetchone()
        if span[0] is None:
            return None
    atype_row = conn.execute(
        f"SELECT json_extract(inst, '$.type') FROM attr_history WHERE hid=? AND attr=?{cond} "
        f"ORDER BY {col} DESC LIMIT 1",
        [hid, attr, *params],
    ).fetchone()
    # periods start at timeAt when the query gives one, else at the first instance
    origin = tq.time_at if tq.timerel in ("after", "between") else int(span[0])
    assert origin is not None
    upper = tq.upper if tq.upper is not None else int(span[1]) + 1
    sums = (
        "count(*), count(DISTINCT coalesce(num, val)), sum(num), count(num), min(num), "
        "max(num), sum(num*num)"
    )
    period = tq.period
    buckets: list[Bucket] = []
    if period is None:
        end = tq.upper if tq.upper is not None else int(span[1])
        for ds, *agg in conn.execute(
            f"SELECT ds, {sums} FROM attr_history WHERE hid=? AND attr=?{cond} "
            "GROUP BY ds ORDER BY ds",
            [hid, attr, *params],
        ):
            buckets.append(_bucket(ds, origin, end, agg))
    elif period.months == 0:
        # fixed-length periods: the period number is integer arithmetic in SQL
        step = period.micros
        for ds, k, *agg in conn.execute(
            f"SELECT ds, ({col} - ?) / ? AS k, {sums} FROM attr_history "
            f"WHERE hid=? AND attr=?{cond} GROUP BY ds, k ORDER BY ds, k",
            [origin, step, hid, attr, *params],
        ):
            start = origin + int(k) * step
            buckets.append(_bucket(ds, start, start + step, agg))
    else:
        # calendar periods (months vary in length): one grouped range scan each
        for start, end in period_bounds(origin, upper, period):
            for ds, *agg in conn.execute(
                f"SELECT ds, {sums} FROM attr_history WHERE hid=? AND attr=? "
                f"AND {col} >= ? AND {col} < ?{cond} GROUP BY ds ORDER BY ds",
                [hid, attr, start, end, *params],
            ):
                buckets.append(_bucket(ds, start, end, agg))
        buckets.sort(key=lambda b: (b.dataset or "", b.start))
    if not buckets:
        return None
    return str(atype_row[0] or "Property"), buckets
