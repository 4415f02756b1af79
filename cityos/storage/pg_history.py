"""Attribute history in PostgreSQL: the twin of sqlite_history on a PostgresStorage's pool.

Same tables and columns as on SQLite (migration 0002_history.sql), with ``attr_history``
partitioned by month of observedAt (pg_history_partitions); retention drops whole partitions
and deletes the rows of the one month straddling the cut. Reads are in pg_history_read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
import orjson

from cityos.broker import clock
from cityos.broker.errors import BadRequestData
from cityos.broker.model import Instance
from cityos.broker.temporal import HistoryEntity, TemporalQuery, to_micros
from cityos.storage import pg_history_partitions as partitions
from cityos.storage import pg_history_read as read
from cityos.storage.base import Change
from cityos.storage.history_rows import instance_row, recorded_instances
from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite_history import HistorySelection

#: rows of the month straddling the retention cut are deleted this many at a time
PRUNE_BATCH: Final = 10_000
_ROW_SQL: Final = (
    "INSERT INTO attr_history(hid, attr, ds, t_obs, t_cre, t_mod, num, val, inst) "
    "VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3"
    return int(status.rsplit(" ", 1)[-1])


async def _hid(conn: Conn, tenant: str, eid: str) -> int | None:
    hid: int | None = await conn.fetchval(
        "SELECT hid FROM history_entities WHERE tenant=$1 AND eid=$2", tenant, eid
    )
    return hid


async def _ensure_entity(
    conn: Conn, tenant: str, eid: str, types: Iterable[str], *, new_types: bool
) -> tuple[int, bool]:
    hid = await _hid(conn, tenant, eid)
    created = hid is None
    if hid is None:
        # another worker may be recording the same new entity: its row wins, ours waits
        hid = await conn.fetchval(
            "INSERT INTO history_entities(tenant, eid) VALUES($1, $2) "
            "ON CONFLICT (tenant, eid) DO NOTHING RETURNING hid",
            tenant,
            eid,
        )
        if hid is None:
            hid = await _hid(conn, tenant, eid)
            created = False
        assert hid is not None
    if created or new_types:
        await conn.execute(
            "INSERT INTO history_types(tenant, type, hid) "
            "SELECT $1, t, $2 FROM unnest($3::text[]) WITH ORDINALITY u(t, n) ORDER BY n "
            "ON CONFLICT DO NOTHING",
            tenant,
            hid,
            list(types),
        )
    return hid, created


async def _insert(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    await partitions.ensure(conn, (r[3] for r in rows))
    await conn.executemany(_ROW_SQL, rows)


#: the rows of an entity already in the history, in one statement: its hid is looked up, and
#: nothing is written unless every partition ($11) exists. The INSERT holds ROW EXCLUSIVE on
#: attr_history from before that check until commit, as `partitions.ensure` would, so no
#: partition found can be dropped meanwhile. Rows go in the order given, so that their
#: instanceIds (the sequence) follow it.
_KNOWN_ROWS_SQL: Final = (
    "INSERT INTO attr_history(hid, attr, ds, t_obs, t_cre, t_mod, num, val, inst) "
    "SELECT h.hid, u.a, u.d, u.o, u.c, u.m, u.n, u.v, u.i FROM history_entities h, unnest("
    "$3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::float8[], "
    "$9::text[], $10::json[]) WITH ORDINALITY u(a, d, o, c, m, n, v, i, k) "
    "WHERE h.tenant=$1 AND h.eid=$2 "
    "AND NOT EXISTS (SELECT FROM unnest($11::text[]) p(n) WHERE to_regclass(p.n) IS NULL) "
    "ORDER BY u.k"
)


async def record_change(conn: Conn, change: Change) -> None:
    """Record the attribute instances a change added or altered (a PostgresStorage hook)."""
    pending, new_types = recorded_instances(change)
    if not pending:
        return
    assert change.new is not None
    at = to_micros(change.at)
    if not new_types:
        # the common case, an update of an entity with a history, in one statement; else
        # (a new entity, a missing partition) the long way below
        rows = [instance_row(0, a, i, at, at)[1:] for a, i in pending]
        months = sorted({partitions.Month.of(r[2]).name for r in rows})
        columns = [list(c) for c in zip(*rows, strict=True)]
        status = await conn.execute(
            _KNOWN_ROWS_SQL, change.tenant, change.entity_id, *columns, months
        )
        if _count(status):
            return
    hid, _ = await _ensure_entity(
        conn, change.tenant, change.entity_id, change.new["type"], new_types=new_types
    )
    await _insert(conn, [instance_row(hid, a, i, at, at) for a, i in pending])


class PgHistory:
    """The temporal store of a PostgresStorage: same calls and answers as SqliteHistory."""

    def __init__(self, store: PostgresStorage) -> None:
        self._store = store

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Conn]:
        async with self._store.pool.acquire() as conn, conn.transaction():
            yield conn

    async def start(self) -> None:
        """Create the partitions of this month and the next (the tables are migrations)."""
        await self._ahead()

    async def _ahead(self) -> None:
        now = to_micros(clock.now())
        async with self._write() as conn:
            await partitions.ensure(conn, [now, partitions.Month.of(now).end])

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
        async with self._write() as conn:
            if must_exist and await _hid(conn, tenant, eid) is None:
                return None
            hid, created = await _ensure_entity(conn, tenant, eid, types, new_types=True)
            rows = [instance_row(hid, a, i, now, now) for a, insts in attrs.items() for i in insts]
            await _insert(conn, rows)
            return created

    async def delete_entity(self, tenant: str, eid: str) -> bool:
        """Delete an entity's whole history; return whether it had one."""
        async with self._write() as conn:
            hid = await _hid(conn, tenant, eid)
            if hid is None:
                return False
            await conn.execute("DELETE FROM attr_history WHERE hid=$1", hid)
            await conn.execute("DELETE FROM history_types WHERE hid=$1", hid)
            await conn.execute("DELETE FROM history_entities WHERE hid=$1", hid)
            return True

    async def delete_attribute(
        self, tenant: str, eid: str, attr: str, dataset: str | None, every: bool
    ) -> int | None:
        """Delete an attribute's instances (one datasetId, or all); None: entity unknown."""
        async with self._write() as conn:
            hid = await _hid(conn, tenant, eid)
            if hid is None:
                return None
            if every:
                status = await conn.execute(
                    "DELETE FROM attr_history WHERE hid=$1 AND attr=$2", hid, attr
                )
            else:
                status = await conn.execute(
                    "DELETE FROM attr_history WHERE hid=$1 AND attr=$2 AND ds=$3",
                    hid,
                    attr,
                    dataset or "",
                )
            return _count(status)

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
        async with self._write() as conn:
            hid = await _hid(conn, tenant, eid)
            if hid is None:
                return None
            row = await conn.fetchrow(
                "SELECT inst, t_cre FROM attr_history WHERE iid=$1 AND hid=$2 AND attr=$3 "
                "FOR UPDATE",
                iid,
                hid,
                attr,
            )
            if row is None:
                return False
            inst = fn(orjson.loads(row[0]))
            values = instance_row(hid, attr, inst, int(row[1]), now)
            # a new observedAt may move the row to another month's partition
            await partitions.ensure(conn, [values[3]])
            await conn.execute(
                "UPDATE attr_history SET ds=$1, t_obs=$2, t_mod=$3, num=$4, val=$5, inst=$6 "
                "WHERE iid=$7 AND hid=$8",
                *values[2:4],
                *values[5:9],
                iid,
                hid,
            )
            return True

    async def delete_instance(self, tenant: str, eid: str, attr: str, iid: int) -> bool | None:
        """Delete one instance; None: entity unknown, False: no such instance."""
        async with self._write() as conn:
            hid = await _hid(conn, tenant, eid)
            if hid is None:
                return None
            status = await conn.execute(
                "DELETE FROM attr_history WHERE iid=$1 AND hid=$2 AND attr=$3", iid, hid, attr
            )
            return _count(status) > 0

    async def prune(self, before: int) -> int:
        """Delete every instance observed before the instant; return how many."""
        async with self._store.pool.acquire() as conn:
            total = await partitions.drop_before(conn, before)
            while True:
                # the month straddling the cut, in batches so writers are not held up
                status = await conn.execute(
                    "DELETE FROM attr_history WHERE t_obs < $1 AND iid IN (SELECT iid FROM "
                    "attr_history WHERE t_obs < $1 LIMIT $2)",
                    before,
                    PRUNE_BATCH,
                )
                n = _count(status)
                total += n
                if n < PRUNE_BATCH:
                    break
        await self._ahead()  # retention runs periodically: keep next month's partition ready
        return total

    # -- reads --------------------------------------------------------------------------
    async def tenant_exists(self, tenant: str) -> bool:
        """Return whether the tenant has any history."""
        found = await self._store.pool.fetchval(
            "SELECT 1 FROM history_entities WHERE tenant=$1 LIMIT 1", tenant
        )
        return found is not None

    async def query(
        self,
        tenant: str,
        sel: HistorySelection,
        attrs: frozenset[str] | None,
        tq: TemporalQuery,
        limit: int,
    ) -> tuple[list[HistoryEntity], int | None]:
        """Return one page of entities with their instances (or aggregates), and the count."""
        try:
            async with (
                self._store.pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                return await read.query(conn, tenant, sel, attrs, tq, limit)
        except asyncpg.InvalidRegularExpressionError as exc:
            # the pattern passed Python's check but PostgreSQL's dialect refuses it
            raise BadRequestData(
                f"regular expression not supported by this database: {exc}"
            ) from exc
