"""The PostgreSQL storage engine: asyncpg pool, one transaction per mutation, PostGIS geo.

It answers every ``Storage`` call as ``SqliteStorage`` does (same documents, errors, order
and counts); docs/postgres.md says where the two still differ. Several cityos workers may
share one database: entity writes lock the entity's row, and migrations run once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

import asyncpg
import orjson

from cityos.broker import clock
from cityos.broker.errors import BadRequestData, InternalError, NgsiError
from cityos.broker.geo import GeoQuery
from cityos.broker.model import Doc
from cityos.storage import pg_index, pg_query, pg_schema, pg_walk
from cityos.storage.base import (
    MAX_RULE_DEPTH,
    AttributeInfo,
    Change,
    EntityQuery,
    Mutation,
    Outcome,
    QueryResult,
    Rule,
    Storage,
    TypeInfo,
)
from cityos.storage.pg_index import Conn
from cityos.storage.pg_query import numbered

#: seconds a shutdown waits for connections still in use before cutting them
CLOSE_TIMEOUT = 10.0
#: a create that loses a race with another worker's create of the same id is retried
_WRITE_ATTEMPTS = 3
#: the changes of the write transaction under way in this task, for the listeners after commit
_COMMITTING: ContextVar[list[Change] | None] = ContextVar("cityos_pg_committing", default=None)

#: statements planned for their parameters each time, to the end of the transaction
_CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"

#: hook(conn, change), awaited in the change's transaction (see PostgresStorage.add_change_hook)
PgChangeHook = Callable[[Conn, Change], Awaitable[None]]

log = logging.getLogger("cityos.storage")


def _dumps(doc: Doc) -> str:
    return orjson.dumps(doc).decode()


def _unsupported_regex(exc: Exception) -> BadRequestData:
    # the pattern passed Python's check (qlang.check_regex) but PostgreSQL's dialect refuses it
    return BadRequestData(f"regular expression not supported by this database: {exc}")


class PostgresStorage(Storage):
    """Entities of every tenant in one PostgreSQL (with PostGIS) database."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._paths = pg_index.PathIds()
        #: tenants known to be recorded in the database (the default tenant always exists)
        self._tenants: set[str] = {""}
        self._change_hooks: list[PgChangeHook] = []
        self._listeners: list[Callable[[Change], None]] = []  # after commit
        self._rules: list[Rule] = []

    # -- connections ---------------------------------------------------------------------
    @property
    def pool(self) -> asyncpg.Pool:
        """Return the connection pool (after start)."""
        if self._pool is None:
            raise RuntimeError("PostgresStorage.start() has not been called")
        return self._pool

    @asynccontextmanager
    async def _snapshot(self, *, custom_plans: bool = True) -> AsyncIterator[Conn]:
        """Lend a connection in a read-only transaction: its reads all see one snapshot.

        With custom_plans its statements are planned for their parameters each time: a plan
        made once for any parameters (PostgreSQL's choice after five runs of a prepared
        statement) cannot know how many entities a type, a value or a polygon selects, and
        was seen to take seconds where a plan for the values takes milliseconds
        (bench/million.py). The walks of pg_walk have one good plan, kept.
        """
        begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        async with self.pool.acquire() as conn:
            await conn.execute(f"{begin}; {_CUSTOM_PLANS}" if custom_plans else begin)
            # released, the connection is reset, which rolls the transaction back (asyncpg's
            # Connection.reset): nothing was written, and it saves a round trip
            yield conn

    async def start(self) -> None:
        await pg_schema.upgrade(self.url)
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            # JIT compiles a query's expressions when its estimated cost is high, which
            # takes longer (tens of ms) than the short queries of this engine ever run
            server_settings={"jit": "off"},
        )
        async with self._pool.acquire() as conn:
            await self._paths.learn(conn)

    async def close(self) -> None:
        """Close the pool; connections still held after CLOSE_TIMEOUT seconds are cut."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                # asyncpg waits for every acquired connection to come back, without limit
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("PostgreSQL connections still busy after %s s: cut", CLOSE_TIMEOUT)
                pool.terminate()

    # -- reads ---------------------------------------------------------------------------
    async def tenant_exists(self, tenant: str) -> bool:
        if tenant in self._tenants:
            return True
        # another worker may have created it
        found = await self.pool.fetchval("SELECT 1 FROM tenants WHERE name=$1", tenant)
        if found:
            self._tenants.add(tenant)
        return found is not None

    async def get(self, tenant: str, entity_id: str) -> Doc | None:
        text = await self.pool.fetchval(
            "SELECT doc FROM entities WHERE tenant=$1 AND id=$2", tenant, entity_id
        )
        if text is None:
            return None
        doc: Doc = orjson.loads(text)
        return doc

    async def query(self, tenant: str, query: EntityQuery) -> QueryResult:
        try:
            return await self._query(tenant, query)
        except asyncpg.InvalidRegularExpressionError as exc:
            raise _unsupported_regex(exc) from exc

    async def _query(self, tenant: str, query: EntityQuery) -> QueryResult:
        dialect = pg_query.PgDialect(self._paths.known())
        where, params = pg_query.where(tenant, query, dialect)
        geo = query.geo
        near = geo is not None and geo.georel == "near" and bool(geo.max_distance)
        found = pg_walk.lookup(query)
        walk_type = pg_walk.walk_type(query)
        walks = query.limit > 0 and not near and (found is not None or walk_type is not None)
        async with self._snapshot(custom_plans=query.count or not walks) as conn:
            if dialect.missing:
                # paths another worker added since: learn them, so their pids are parameters
                await self._paths.learn(conn, dialect.missing)
                where, params = pg_query.where(
                    tenant, query, pg_query.PgDialect(self._paths.known())
                )
            count: int | None = None
            if query.count:
                count = await conn.fetchval(
                    numbered(f"SELECT count(*) FROM entities e WHERE {where}"), *params
                )
            # walks check every condition per candidate (pg_walk)
            walker = pg_query.PgDialect(self._paths.known(), walk=True)
            docs: list[Doc] | None = []
            if query.limit == 0:
                pass
            elif near:
                assert geo is not None
                docs = await self._near(conn, tenant, query, geo, walker)
            elif geo is not None and geo.georel in pg_query.RELATE and geo.georel != "disjoint":
                docs = await pg_walk.region_page(conn, tenant, query, geo, walker)
            else:
                docs = (
                    await self._walk(conn, tenant, query, walker, found, walk_type)
                    if walks
                    else None
                )
                if docs is None:
                    if walks and not query.count:  # the walk handed the query over
                        await conn.execute(_CUSTOM_PLANS)
                    docs = await self._page(conn, where, params, query, None)
        return QueryResult(docs or [], count)

    async def _walk(
        self,
        conn: Conn,
        tenant: str,
        query: EntityQuery,
        walker: pg_query.PgDialect,
        found: pg_walk.Lookup | None,
        walk_type: str | None,
    ) -> list[Doc] | None:
        """Return a query's page walked by a value or a type (pg_walk), or None (the planner)."""
        if found is not None:
            docs = await pg_walk.value_page(conn, tenant, query, found, walker)
            if docs is not None:
                return docs
        if walk_type is None:
            return None
        return await pg_walk.page(conn, tenant, query, walk_type, walker)

    async def _page(
        self, conn: Conn, where: str, params: list[Any], query: EntityQuery, near: GeoQuery | None
    ) -> list[Doc]:
        key, order, order_params = "NULL::float8", "e.rid", list[Any]()
        if near is not None:  # nearest first, as map users expect
            key, order_params = pg_query.compile_distance(near, query.geoproperty or "")
            order = "k, e.rid"
        # the page's rids first, from narrow index entries (migration 0009), then the
        # documents of that page alone
        sql = numbered(
            f"SELECT d.doc FROM (SELECT e.rid, {key} AS k FROM entities e "
            f"WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?) p "
            "JOIN entities d ON d.rid = p.rid ORDER BY p.k, p.rid"
        )
        rows = await conn.fetch(sql, *order_params, *params, query.limit, query.offset)
        return [orjson.loads(r[0]) for r in rows]

    async def _near(
        self, conn: Conn, tenant: str, query: EntityQuery, geo: GeoQuery, walker: pg_query.PgDialect
    ) -> list[Doc]:
        """Nearest first within maxDistance: the page from the circle holding the nearest.

        Ordering every candidate within maxDistance by its spheroid distance is slow in dense
        areas; pg_walk.near_page answers from the nearest few, or finds a circle holding
        offset+limit matches first.
        """
        need = query.offset + query.limit
        docs, radius = await pg_walk.near_page(conn, tenant, query, geo, walker)
        if docs is not None:
            return docs
        step = replace(query, geo=replace(geo, max_distance=radius), limit=need, offset=0)
        where, params = pg_query.where(tenant, step, pg_query.PgDialect(self._paths.known()))
        docs = await self._page(conn, where, params, step, step.geo)
        return docs[query.offset :]

    async def types(self, tenant: str) -> list[TypeInfo]:
        async with self._snapshot() as conn:
            counts = await conn.fetch(
                "SELECT t, count(DISTINCT e.rid) FROM entities e, unnest(e.types) t "
                'WHERE e.tenant=$1 GROUP BY t ORDER BY t COLLATE "C"',
                tenant,
            )
            rows = await conn.fetch(
                "SELECT DISTINCT t, x.attr, x.atype FROM entities e "
                "CROSS JOIN unnest(e.types) t JOIN entity_attrs x ON x.rid=e.rid "
                "WHERE e.tenant=$1",
                tenant,
            )
        attrs: dict[str, dict[str, set[str]]] = {}
        for t, a, at in rows:
            attrs.setdefault(t, {}).setdefault(a, set()).add(at)
        return [TypeInfo(t, n, attrs.get(t, {})) for t, n in counts]

    async def attributes(
        self, tenant: str, types: frozenset[str] | None = None
    ) -> list[AttributeInfo]:
        only, params = "", [tenant]
        if types is not None:
            only = " AND e.types && $2::text[]"
            params.append(sorted(types))  # type: ignore[arg-type]
        async with self._snapshot() as conn:
            counts = await conn.fetch(
                "SELECT x.attr, count(DISTINCT x.rid) FROM entity_attrs x JOIN entities e "
                f"ON e.rid=x.rid WHERE e.tenant=$1{only} GROUP BY x.attr "
                'ORDER BY x.attr COLLATE "C"',
                *params,
            )
            rows = await conn.fetch(
                "SELECT DISTINCT x.attr, x.atype, t FROM entity_attrs x "
                "JOIN entities e ON e.rid=x.rid CROSS JOIN unnest(e.types) t "
                f"WHERE e.tenant=$1{only}",
                *params,
            )
        out = {a: AttributeInfo(a, n, set(), set()) for a, n in counts}
        for a, at, t in rows:
            info = out.get(a)
            if info is not None and (types is None or t in types):
                info.types.add(t)
                info.attribute_types.add(at)
        return list(out.values())

    # -- writes --------------------------------------------------------------------------
    async def _store(
        self,
        conn: Conn,
        tenant: str,
        rid: int | None,
        doc: Doc,
        old: Doc | None,
        pending: dict[str, int],
    ) -> None:
        if rid is None or old is None:
            await pg_index.create(conn, tenant, doc, _dumps(doc), self._paths, pending)
            return
        await pg_index.rewrite(conn, rid, old, doc, _dumps(doc), self._paths, pending)

    async def _mutate(
        self,
        conn: Conn,
        tenant: str,
        m: Mutation,
        pending: dict[str, int],
        depth: int = 0,
    ) -> Outcome:
        """Apply one mutation inside the caller's transaction."""
        if tenant not in self._tenants:
            await conn.execute(
                "INSERT INTO tenants(name) VALUES($1) ON CONFLICT DO NOTHING", tenant
            )
        row = await conn.fetchrow(
            "SELECT rid, doc FROM entities WHERE tenant=$1 AND id=$2 FOR UPDATE",
            tenant,
            m.entity_id,
        )
        current = orjson.loads(row[1]) if row else None
        new = m.fn(current)
        derived: list[Mutation] = []
        if new is not None:
            for rule in self._rules:
                new, more = rule(current, new)
                derived += more
        if new is None:
            if row is not None:
                await conn.execute("DELETE FROM entities WHERE rid=$1", row[0])
                await self._changed(conn, Change(tenant, m.entity_id, current, None, clock.now()))
            return Outcome(m.entity_id, deleted=row is not None)
        await self._store(conn, tenant, row[0] if row else None, new, current, pending)
        await self._changed(conn, Change(tenant, m.entity_id, current, new, new["modifiedAt"]))
        if derived:
            if depth >= MAX_RULE_DEPTH:
                raise InternalError(f"derivation rules nest deeper than {MAX_RULE_DEPTH} levels")
            for follow in derived:
                # in the same transaction: the entity and what derives from it commit together
                await self._mutate(conn, tenant, follow, pending, depth + 1)
        return Outcome(m.entity_id, created=row is None, doc=new)

    async def _changed(self, conn: Conn, change: Change) -> None:
        for hook in self._change_hooks:
            await hook(conn, change)
        committing = _COMMITTING.get()
        if committing is not None and self._listeners:
            committing.append(change)

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Call listener(change) once the change's transaction has committed (never blocks).

        For work that reads the database after a change (rebuilding snapshots): called inside
        the transaction, it could read the state from before the change.
        """
        self._listeners.append(listener)

    def _committed(self, changes: list[Change]) -> None:
        for change in changes:
            for listener in self._listeners:
                try:
                    listener(change)
                except Exception:  # a listener's trouble is not the write's
                    log.exception("a change listener failed")

    def add_rule(self, rule: Rule) -> None:
        """Run rule(old, new) on every entity write before it is stored (see base.Rule)."""
        self._rules.append(rule)

    def add_change_hook(self, hook: PgChangeHook) -> None:
        """Await hook(conn, change) in the transaction of every entity change.

        A hook writes what must be atomic with the change (history rows, a notification
        outbox) on conn; if it raises, the change is rolled back with it.
        """
        self._change_hooks.append(hook)

    async def _apply_one(self, conn: Conn, tenant: str, m: Mutation) -> Outcome:
        for attempt in range(_WRITE_ATTEMPTS):
            pending: dict[str, int] = {}
            changes: list[Change] = []
            token = _COMMITTING.set(changes)
            try:
                async with conn.transaction():
                    outcome = await self._mutate(conn, tenant, m, pending)
            except asyncpg.UniqueViolationError:
                # another worker created the entity between our read and our insert
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
                continue
            finally:
                _COMMITTING.reset(token)
            self._paths.commit(pending)
            self._committed(changes)
            return outcome
        raise AssertionError("unreachable")  # pragma: no cover

    async def apply(self, tenant: str, mutations: Sequence[Mutation]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        async with self.pool.acquire() as conn:
            for m in mutations:
                try:
                    outcomes.append(await self._apply_one(conn, tenant, m))
                except NgsiError as exc:
                    outcomes.append(Outcome(m.entity_id, error=exc))
                except (asyncpg.PostgresError, ValueError, TypeError, KeyError) as exc:
                    log.exception("write of %s failed", m.entity_id)
                    outcomes.append(
                        Outcome(m.entity_id, error=InternalError(f"storage error: {exc}"))
                    )
        if any(o.ok for o in outcomes):
            self._tenants.add(tenant)
        return outcomes

    async def purge(self, tenant: str, query: EntityQuery) -> int:
        try:
            return await self._purge(tenant, query)
        except asyncpg.InvalidRegularExpressionError as exc:
            raise _unsupported_regex(exc) from exc

    async def _purge(self, tenant: str, query: EntityQuery) -> int:
        where, params = pg_query.where(tenant, query)
        # documents are read only when a hook wants to see what was deleted
        doc = "e.doc" if self._change_hooks or self._listeners else "NULL"
        changes: list[Change] = []
        token = _COMMITTING.set(changes)
        try:
            count = await self._purge_in(tenant, where, params, doc)
        finally:
            _COMMITTING.reset(token)
        self._committed(changes)
        return count

    async def _purge_in(self, tenant: str, where: str, params: list[Any], doc: str) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                numbered(
                    f"SELECT e.rid, e.id, {doc} FROM entities e WHERE {where} "
                    "ORDER BY e.rid FOR UPDATE OF e"
                ),
                *params,
            )
            await conn.execute(
                "DELETE FROM entities WHERE rid = ANY($1::bigint[])", [r[0] for r in rows]
            )
            if self._change_hooks or self._listeners:
                now = clock.now()
                for _rid, entity_id, text in rows:
                    change = Change(tenant, entity_id, orjson.loads(text), None, now)
                    await self._changed(conn, change)
        return len(rows)

    # -- small blobs -----------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        value: Any = await self.pool.fetchval(
            "SELECT value FROM kv WHERE ns=$1 AND key=$2", namespace, key
        )
        return None if value is None else bytes(value)

    async def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO kv(ns, key, value) VALUES($1, $2, $3) "
            "ON CONFLICT (ns, key) DO UPDATE SET value=EXCLUDED.value",
            namespace,
            key,
            value,
        )

    async def kv_delete(self, namespace: str, key: str) -> bool:
        status = await self.pool.execute("DELETE FROM kv WHERE ns=$1 AND key=$2", namespace, key)
        return bool(status != "DELETE 0")

    async def kv_list(self, namespace: str) -> list[tuple[str, bytes]]:
        rows = await self.pool.fetch(
            "SELECT key, value FROM kv WHERE ns=$1 ORDER BY key", namespace
        )
        return [(k, bytes(v)) for k, v in rows]
