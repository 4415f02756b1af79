"""PostgreSQL tables of IoT Agent config groups and devices, per tenant (Fiware-Service).

The twin of ``sqlite_iot.IotStore``: same calls, same answers. The uniqueness rules
(resource+apikey across tenants, device id per tenant) are constraints of migration 0004, so
workers sharing the database cannot create the same group or device twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import asyncpg
import orjson

from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow
from cityos.storage.sqlite_iot import Row, Status

#: an insert that loses a race with another worker's looks for the taken key this often
_ATTEMPTS: Final = 3

#: (tenant, device doc, last seen, silent) of all_devices
DeviceHealth = tuple[str, dict[str, Any], float | None, bool]

T = TypeVar("T")

_GROUP_COLUMNS: Final = ("tenant", "service_path", "resource", "apikey", "doc")
_DEVICE_COLUMNS: Final = ("tenant", "service_path", "device_id", "doc")


def _dumps(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def _rowcount(status: str) -> int:
    """Return the row count of a command status such as "UPDATE 1"."""
    return int(status.rsplit(" ", 1)[1])


class PgIotStore:
    """Config groups and devices in the PostgreSQL database of a PostgresStorage."""

    def __init__(self, store: PostgresStorage) -> None:
        self._store = store

    #: dump sections, in the order and with the columns of IotStore.dump_rows
    DUMP_SECTIONS: Final = ("iot_group", "iot_device", "iot_device_status")

    @staticmethod
    async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
        """Yield the groups and devices and when each was last seen, as IotStore dumps them."""
        for section, sql in (
            ("iot_group", "SELECT tenant, service_path, resource, apikey, doc FROM iot_groups"),
            ("iot_device", "SELECT tenant, service_path, device_id, doc FROM iot_devices"),
        ):
            for row in await conn.fetch(sql + " ORDER BY rid"):
                yield section, dict(row.items())
        rows = await conn.fetch(
            "SELECT tenant, device_id, last_seen, silent FROM iot_device_status "
            "ORDER BY tenant, device_id"
        )
        for row in rows:
            # SQLite dumps the flag as an integer: keep dumps engine-neutral
            yield "iot_device_status", {**dict(row.items()), "silent": int(row["silent"])}

    @staticmethod
    async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows; a row with a taken key replaces it."""
        # fixed column lists: a dump file's keys never reach the SQL text
        if section == "iot_group":
            sql = (
                "INSERT INTO iot_groups(tenant, service_path, resource, apikey, doc) "
                "VALUES($1, $2, $3, $4, $5) ON CONFLICT (resource, apikey) DO UPDATE SET "
                "tenant=EXCLUDED.tenant, service_path=EXCLUDED.service_path, doc=EXCLUDED.doc"
            )
            args = [tuple(r[c] for c in _GROUP_COLUMNS) for r in rows]
        elif section == "iot_device":
            sql = (
                "INSERT INTO iot_devices(tenant, service_path, device_id, doc) "
                "VALUES($1, $2, $3, $4) ON CONFLICT (tenant, device_id) DO UPDATE SET "
                "service_path=EXCLUDED.service_path, doc=EXCLUDED.doc"
            )
            args = [tuple(r[c] for c in _DEVICE_COLUMNS) for r in rows]
        elif section == "iot_device_status":
            sql = (
                "INSERT INTO iot_device_status(tenant, device_id, last_seen, silent) "
                "VALUES($1, $2, $3, $4) ON CONFLICT (tenant, device_id) DO UPDATE SET "
                "last_seen=EXCLUDED.last_seen, silent=EXCLUDED.silent"
            )
            args = [
                (r["tenant"], r["device_id"], float(r["last_seen"]), bool(r["silent"]))
                for r in rows
            ]
        else:
            raise ValueError(f"not a section of the IoT store: {section!r}")
        await conn.executemany(sql, args)

    async def setup(self) -> None:
        """Do nothing: migration 0004, applied by PostgresStorage.start(), made the tables."""

    async def _insert_unless_taken(
        self,
        find_taken: Callable[[Conn], Awaitable[T | None]],
        insert: Callable[[Conn], Awaitable[None]],
    ) -> T | None:
        """Run insert unless find_taken finds a key in use; return that key, if any."""
        async with self._store.pool.acquire() as conn:
            for attempt in range(_ATTEMPTS):
                try:
                    async with conn.transaction():
                        taken = await find_taken(conn)
                        if taken is None:
                            await insert(conn)
                        return taken
                except asyncpg.UniqueViolationError:
                    # another worker committed one of these keys after our check: look again
                    if attempt == _ATTEMPTS - 1:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- groups -------------------------------------------------------------------------------

    async def insert_groups(
        self, tenant: str, path: str, groups: list[tuple[str, str, dict[str, Any]]]
    ) -> tuple[str, str] | None:
        """Insert (resource, apikey, doc) rows, all or none; return a taken pair, if any."""

        async def find_taken(conn: Conn) -> tuple[str, str] | None:
            row = await conn.fetchrow(
                "SELECT g.resource, g.apikey "
                "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS g(resource, apikey, n) "
                "WHERE EXISTS (SELECT 1 FROM iot_groups x "
                "WHERE x.resource=g.resource AND x.apikey=g.apikey) ORDER BY g.n LIMIT 1",
                [r for r, _, _ in groups],
                [k for _, k, _ in groups],
            )
            return None if row is None else (row[0], row[1])

        async def insert(conn: Conn) -> None:
            await conn.executemany(
                "INSERT INTO iot_groups(tenant, service_path, resource, apikey, doc) "
                "VALUES($1, $2, $3, $4, $5)",
                [(tenant, path, r, k, _dumps(d)) for r, k, d in groups],
            )

        return await self._insert_unless_taken(find_taken, insert)

    async def list_groups(self, tenant: str) -> list[Row]:
        """Return the groups of a tenant in creation order."""
        rows = await self._store.pool.fetch(
            "SELECT service_path, doc FROM iot_groups WHERE tenant=$1 ORDER BY rid", tenant
        )
        return [(p, orjson.loads(d)) for p, d in rows]

    async def groups_by_apikey(self, apikey: str) -> list[tuple[str, str, str, dict[str, Any]]]:
        """Return (tenant, service path, resource, doc) of every group with this apikey."""
        rows = await self._store.pool.fetch(
            "SELECT tenant, service_path, resource, doc FROM iot_groups WHERE apikey=$1 "
            "ORDER BY rid",
            apikey,
        )
        return [(t, p, r, orjson.loads(d)) for t, p, r, d in rows]

    async def update_group(
        self, tenant: str, resource: str, apikey: str, doc: dict[str, Any]
    ) -> bool:
        """Replace a group's document; return False if it does not exist."""
        status = await self._store.pool.execute(
            "UPDATE iot_groups SET doc=$1 WHERE tenant=$2 AND resource=$3 AND apikey=$4",
            _dumps(doc),
            tenant,
            resource,
            apikey,
        )
        return _rowcount(status) > 0

    async def delete_group(self, tenant: str, resource: str, apikey: str) -> bool:
        """Delete a group; return False if it does not exist."""
        status = await self._store.pool.execute(
            "DELETE FROM iot_groups WHERE tenant=$1 AND resource=$2 AND apikey=$3",
            tenant,
            resource,
            apikey,
        )
        return _rowcount(status) > 0

    # -- devices ------------------------------------------------------------------------------

    async def insert_devices(
        self, tenant: str, path: str, devices: list[tuple[str, dict[str, Any]]]
    ) -> str | None:
        """Insert (device_id, doc) rows, all or none; return a device id already taken, if any."""

        async def find_taken(conn: Conn) -> str | None:
            taken: str | None = await conn.fetchval(
                "SELECT d.id FROM unnest($2::text[]) WITH ORDINALITY AS d(id, n) "
                "WHERE EXISTS (SELECT 1 FROM iot_devices x "
                "WHERE x.tenant=$1 AND x.device_id=d.id) ORDER BY d.n LIMIT 1",
                tenant,
                [i for i, _ in devices],
            )
            return taken

        async def insert(conn: Conn) -> None:
            await conn.executemany(
                "INSERT INTO iot_devices(tenant, service_path, device_id, doc) "
                "VALUES($1, $2, $3, $4)",
                [(tenant, path, i, _dumps(d)) for i, d in devices],
            )

        return await self._insert_unless_taken(find_taken, insert)

    async def list_devices(self, tenant: str) -> list[Row]:
        """Return the devices of a tenant in creation order."""
        rows = await self._store.pool.fetch(
            "SELECT service_path, doc FROM iot_devices WHERE tenant=$1 ORDER BY rid", tenant
        )
        return [(p, orjson.loads(d)) for p, d in rows]

    async def get_device(self, tenant: str, device_id: str) -> Row | None:
        """Return a device's (service path, doc), or None."""
        row = await self._store.pool.fetchrow(
            "SELECT service_path, doc FROM iot_devices WHERE tenant=$1 AND device_id=$2",
            tenant,
            device_id,
        )
        return None if row is None else (row[0], orjson.loads(row[1]))

    async def update_device(self, tenant: str, device_id: str, doc: dict[str, Any]) -> bool:
        """Replace a device's document; return False if it does not exist."""
        status = await self._store.pool.execute(
            "UPDATE iot_devices SET doc=$1 WHERE tenant=$2 AND device_id=$3",
            _dumps(doc),
            tenant,
            device_id,
        )
        return _rowcount(status) > 0

    async def delete_device(self, tenant: str, device_id: str) -> bool:
        """Delete a device; return False if it does not exist."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM iot_devices WHERE tenant=$1 AND device_id=$2", tenant, device_id
            )
            await conn.execute(
                "DELETE FROM iot_device_status WHERE tenant=$1 AND device_id=$2",
                tenant,
                device_id,
            )
        return _rowcount(status) > 0

    # -- device health ------------------------------------------------------------------------

    async def record_seen(self, seen: list[tuple[str, str, float]]) -> None:
        """Store (tenant, device id, last seen) of devices that sent measures."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO iot_device_status(tenant, device_id, last_seen) VALUES($1, $2, $3) "
                "ON CONFLICT (tenant, device_id) DO UPDATE SET "
                "last_seen=GREATEST(iot_device_status.last_seen, EXCLUDED.last_seen)",
                # in key order, so that two workers' batches lock rows in one order (no deadlock)
                sorted(seen),
            )

    async def set_silent(self, tenant: str, device_id: str, silent: bool, since: float) -> None:
        """Mark a device silent (alert raised) or not."""
        await self._store.pool.execute(
            "INSERT INTO iot_device_status(tenant, device_id, last_seen, silent) "
            "VALUES($1, $2, $3, $4) "
            "ON CONFLICT (tenant, device_id) DO UPDATE SET silent=EXCLUDED.silent",
            tenant,
            device_id,
            since,
            silent,
        )

    async def all_devices(self) -> list[DeviceHealth]:
        """Return (tenant, device doc, last seen, silent) of every device of every tenant."""
        rows = await self._store.pool.fetch(
            "SELECT d.tenant, d.doc, s.last_seen, s.silent FROM iot_devices d "
            "LEFT JOIN iot_device_status s ON s.tenant=d.tenant AND s.device_id=d.device_id "
            "ORDER BY d.rid"
        )
        return [(t, orjson.loads(doc), seen, bool(silent)) for t, doc, seen, silent in rows]

    async def status(self, tenant: str, device_id: str) -> Status:
        """Return (last seen, silent) of one device."""
        row = await self._store.pool.fetchrow(
            "SELECT last_seen, silent FROM iot_device_status WHERE tenant=$1 AND device_id=$2",
            tenant,
            device_id,
        )
        return (None, False) if row is None else (row[0], bool(row[1]))
