"""Temporal queries on the PostgreSQL history: the reads of sqlite_history in PostgreSQL's dialect.

Everything runs on one connection inside one read-only snapshot. Statements are written with
``?`` placeholders (the shared fragments of history_rows use them) and numbered at the end.
"""

from __future__ import annotations

from typing import Any

import orjson

from cityos.broker.temporal import (
    AttrHistory,
    Bucket,
    HistoryEntity,
    HistoryRow,
    TemporalQuery,
    period_bounds,
)
from cityos.storage.history_rows import COLUMN, bucket, compile_types, time_range
from cityos.storage.pg_index import Conn
from cityos.storage.pg_query import numbered
from cityos.storage.sqlite_history import HistorySelection

# num and val are never both set, so their distinct counts add up to SQLite's
# count(DISTINCT coalesce(num, val)), which PostgreSQL cannot type
_SUMS = (
    "count(*), count(DISTINCT num) + count(DISTINCT val), sum(num), count(num), min(num), "
    "max(num), sum(num*num)"
)


async def _fetch(conn: Conn, sql: str, params: list[Any]) -> list[Any]:
    return list(await conn.fetch(numbered(sql), *params))


async def query(
    conn: Conn,
    tenant: str,
    sel: HistorySelection,
    attrs: frozenset[str] | None,
    tq: TemporalQuery,
    limit: int,
) -> tuple[list[HistoryEntity], int | None]:
    """Return one page of entities with their instances (or aggregates), and the count."""
    refs, count = await _select(conn, tenant, sel)
    types = await _types(conn, [h for h, _ in refs])
    out = []
    for hid, eid in refs:
        entity = HistoryEntity(eid, types.get(hid, []))
        names = sorted(attrs) if attrs is not None else await _attr_names(conn, hid)
        for attr in names:
            if tq.aggr_methods:
                agg = await _aggregate(conn, hid, attr, tq)
                if agg is not None:
                    entity.aggregates[attr] = agg
            else:
                hist = await _instances(conn, hid, attr, tq, limit)
                if hist.rows:
                    entity.attrs[attr] = hist
        out.append(entity)
    return out, count


async def _select(
    conn: Conn, tenant: str, sel: HistorySelection
) -> tuple[list[tuple[int, str]], int | None]:
    clauses = ["h.tenant=?"]
    params: list[Any] = [tenant]
    if sel.ids:
        clauses.append("h.eid = ANY(?::text[])")
        params.append(list(sel.ids))
    if sel.only is not None:
        clauses.append("h.eid = ANY(?::text[])")
        params.append(sorted(sel.only))
    if sel.id_pattern is not None:
        clauses.append("h.eid ~ ?")
        params.append(sel.id_pattern)
    if sel.types is not None:
        sql, p = compile_types(sel.types, sel.expand)
        clauses.append(sql)
        params.extend(p)
    if sel.attrs:
        clauses.append(
            "EXISTS (SELECT 1 FROM attr_history a WHERE a.hid=h.hid AND a.attr = ANY(?::text[]))"
        )
        params.append(sorted(sel.attrs))
    where = " AND ".join(clauses)
    count = None
    if sel.count:
        count = int(
            await conn.fetchval(
                numbered(f"SELECT count(*) FROM history_entities h WHERE {where}"), *params
            )
        )
    rows = await _fetch(
        conn,
        f"SELECT h.hid, h.eid FROM history_entities h WHERE {where} "
        "ORDER BY h.hid LIMIT ? OFFSET ?",
        [*params, sel.limit, sel.offset],
    )
    return [(int(h), str(e)) for h, e in rows], count


async def _types(conn: Conn, hids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    rows = await conn.fetch(
        "SELECT hid, type FROM history_types WHERE hid = ANY($1::bigint[]) ORDER BY hid, pos",
        hids,
    )
    for hid, t in rows:
        out.setdefault(int(hid), []).append(str(t))
    return out


async def _attr_names(conn: Conn, hid: int) -> list[str]:
    # hop from one attribute to the next through the index instead of scanning every row
    rows = await conn.fetch(
        "WITH RECURSIVE a(x) AS (SELECT min(attr) FROM attr_history WHERE hid=$1 "
        "UNION ALL SELECT (SELECT min(attr) FROM attr_history WHERE hid=$1 AND attr > a.x) "
        "FROM a WHERE a.x IS NOT NULL) SELECT x FROM a WHERE x IS NOT NULL",
        hid,
    )
    return [str(r[0]) for r in rows]


async def _instances(conn: Conn, hid: int, attr: str, tq: TemporalQuery, limit: int) -> AttrHistory:
    col = COLUMN[tq.timeproperty]
    cond, params = time_range(tq, col)
    want = tq.last_n
    take = limit if want is None else min(want, limit)
    order = "DESC" if want is not None else "ASC"
    rows = await _fetch(
        conn,
        f"SELECT iid, {col}, t_obs, t_cre, t_mod, inst FROM attr_history "
        f"WHERE hid=? AND attr=?{cond} ORDER BY {col} {order}, iid {order} LIMIT ?",
        [hid, attr, *params, take + 1],
    )
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


async def _aggregate(
    conn: Conn, hid: int, attr: str, tq: TemporalQuery
) -> tuple[str, list[Bucket]] | None:
    col = COLUMN[tq.timeproperty]
    cond, params = time_range(tq, col)
    where = f"FROM attr_history WHERE hid=? AND attr=?{cond}"
    span: Any
    if tq.timerel == "between":
        span = (tq.time_at, tq.end_time_at)  # both ends known: no need to look them up
    else:
        (span,) = await _fetch(conn, f"SELECT min({col}), max({col}) {where}", [hid, attr, *params])
        if span[0] is None:
            return None
    atype = await conn.fetchval(
        numbered(f"SELECT inst->>'type' {where} ORDER BY {col} DESC LIMIT 1"), hid, attr, *params
    )
    # periods start at timeAt when the query gives one, else at the first instance
    origin = tq.time_at if tq.timerel in ("after", "between") else int(span[0])
    assert origin is not None
    upper = tq.upper if tq.upper is not None else int(span[1]) + 1
    period = tq.period
    buckets: list[Bucket] = []
    if period is None:
        end = tq.upper if tq.upper is not None else int(span[1])
        for ds, *agg in await _fetch(
            conn, f"SELECT ds, {_SUMS} {where} GROUP BY ds ORDER BY ds", [hid, attr, *params]
        ):
            buckets.append(bucket(ds, origin, end, agg))
    elif period.months == 0:
        # fixed-length periods: the period number is integer arithmetic in SQL
        step = period.micros
        for ds, k, *agg in await _fetch(
            conn,
            f"SELECT ds, ({col} - ?::bigint) / ?::bigint AS k, {_SUMS} {where} "
            "GROUP BY ds, k ORDER BY ds, k",
            [origin, step, hid, attr, *params],
        ):
            start = origin + int(k) * step
            buckets.append(bucket(ds, start, start + step, agg))
    else:
        # calendar periods (months vary in length): one grouped range scan each
        for start, stop in period_bounds(origin, upper, period):
            for ds, *agg in await _fetch(
                conn,
                f"SELECT ds, {_SUMS} {where} AND {col} >= ? AND {col} < ? GROUP BY ds ORDER BY ds",
                [hid, attr, *params, start, stop],
            ):
                buckets.append(bucket(ds, start, stop, agg))
        buckets.sort(key=lambda b: (b.dataset or "", b.start))
    if not buckets:
        return None
    return str(atype or "Property"), buckets
