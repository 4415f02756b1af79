"""SQLite tables of IoT Agent config groups and devices, per tenant (Fiware-Service)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Final

import orjson

from cityos.storage.sqlite import DumpRow, DumpTable, SqliteStorage, dump_tables, load_tables

DDL: Final = (
    # (resource, apikey) is unique across tenants: a south-bound request names no service,
    # so the apikey alone must lead to one group.
    """CREATE TABLE IF NOT EXISTS iot_groups(
        tenant TEXT NOT NULL,
        service_path TEXT NOT NULL,
        resource TEXT NOT NULL,
        apikey TEXT NOT NULL,
        doc TEXT NOT NULL,
        UNIQUE(resource, apikey)
    )""",
    "CREATE INDEX IF NOT EXISTS iot_groups_tenant ON iot_groups(tenant)",
    "CREATE INDEX IF NOT EXISTS iot_groups_apikey ON iot_groups(apikey)",
    """CREATE TABLE IF NOT EXISTS iot_devices(
        tenant TEXT NOT NULL,
        service_path TEXT NOT NULL,
        device_id TEXT NOT NULL,
        doc TEXT NOT NULL,
        UNIQUE(tenant, device_id)
    )""",
    # when each device last sent a measure, and whether it is reported silent
    """CREATE TABLE IF NOT EXISTS iot_device_status(
        tenant TEXT NOT NULL,
        device_id TEXT NOT NULL,
        last_seen REAL NOT NULL,
        silent INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(tenant, device_id)
    ) WITHOUT ROWID""",
)
Status = tuple[float | None, bool]  # (last seen, epoch seconds; reported silent)

Row = tuple[str, dict[str, Any]]  # (service path, provisioning JSON)


class IotStore:
    """Config groups and devices in the broker's SQLite file."""

    def __init__(self, store: SqliteStorage) -> None:
        self._store = store

    #: (dump section, table, order, rowid too?) of what `cityos export` keeps
    DUMP_TABLES: Final[tuple[DumpTable, ...]] = (
        ("iot_group", "iot_groups", "rowid", False),
        ("iot_device", "iot_devices", "rowid", False),
        ("iot_device_status", "iot_device_status", "tenant, device_id", False),
    )

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the provisioned groups and devices and when each was last seen."""
        return dump_tables(conn, IotStore.DUMP_TABLES)

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        load_tables(conn, IotStore.DUMP_TABLES, section, rows)

    async def setup(self) -> None:
        """Create the tables if needed."""

        def run(conn: sqlite3.Connection) -> None:
            for stmt in DDL:
                conn.execute(stmt)

        await self._store.write(run)

    # -- groups -------------------------------------------------------------------------------

    async def insert_groups(
        self, tenant: str, path: str, groups: list[tuple[str, str, dict[str, Any]]]
    ) -> tuple[str, str] | None:
        """Insert (resource, apikey, doc) rows, all or none; return a taken pair, if any."""

        def run(conn: sqlite3.Connection) -> tuple[str, str] | None:
            for resource, apikey, _ in groups:
                taken = conn.execute(
                    "SELECT 1 FROM iot_groups WHERE resource=? AND apikey=?", (resource, apikey)
                ).fetchone()
                if taken:
                    return resource, apikey
            conn.executemany(
                "INSERT INTO iot_groups(tenant, service_path, resource, apikey, doc) "
                "VALUES (?, ?, ?, ?, ?)",
                [(tenant, path, r, k, orjson.dumps(d).decode()) for r, k, d in groups],
            )
            return None

        result: tuple[str, str] | None = await self._store.write(run)
        return result

    async def list_groups(self, tenant: str) -> list[Row]:
        """Return the groups of a tenant in creation order."""

        def run(conn: sqlite3.Connection) -> list[Row]:
            rows = conn.execute(
                "SELECT service_path, doc FROM iot_groups WHERE tenant=? ORDER BY rowid", (tenant,)
            ).fetchall()
            return [(p, orjson.loads(d)) for p, d in rows]

        result: list[Row] = await self._store.read(run)
        return result

    async def groups_by_apikey(self, apikey: str) -> list[tuple[str, str, str, dict[str, Any]]]:
        """Return (tenant, service path, resource, doc) of every group with this apikey."""

        def run(conn: sqlite3.Connection) -> list[tuple[str, str, str, dict[str, Any]]]:
            rows = conn.execute(
                "SELECT tenant, service_path, resource, doc FROM iot_groups WHERE apikey=? "
                "ORDER BY rowid",
                (apikey,),
            ).fetchall()
            return [(t, p, r, orjson.loads(d)) for t, p, r, d in rows]

        result: list[tuple[str, str, str, dict[str, Any]]] = await self._store.read(run)
        return result

    async def update_group(
        self, tenant: str, resource: str, apikey: str, doc: dict[str, Any]
    ) -> bool:
        """Replace a group's document; return False if it does not exist."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE iot_groups SET doc=? WHERE tenant=? AND resource=? AND apikey=?",
                (orjson.dumps(doc).decode(), tenant, resource, apikey),
            )
            return cur.rowcount > 0

        ok: bool = await self._store.write(run)
        return ok

    async def delete_group(self, tenant: str, resource: str, apikey: str) -> bool:
        """Delete a group; return False if it does not exist."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM iot_groups WHERE tenant=? AND resource=? AND apikey=?",
                (tenant, resource, apikey),
            )
            return cur.rowcount > 0

        ok: bool = await self._store.write(run)
        return ok

    # -- devices ------------------------------------------------------------------------------

    async def insert_devices(
        self, tenant: str, path: str, devices: list[tuple[str, dict[str, Any]]]
    ) -> str | None:
        """Insert (device_id, doc) rows, all or none; return a device id already taken, if any."""

        def run(conn: sqlite3.Connection) -> str | None:
            for device_id, _ in devices:
                taken = conn.execute(
                    "SELECT 1 FROM iot_devices WHERE tenant=? AND device_id=?",
                    (tenant, device_id),
                ).fetchone()
                if taken:
                    return device_id
            conn.executemany(
                "INSERT INTO iot_devices(tenant, service_path, device_id, doc) VALUES (?, ?, ?, ?)",
                [(tenant, path, i, orjson.dumps(d).decode()) for i, d in devices],
            )
            return None

        result: str | None = await self._store.write(run)
        return result

    async def list_devices(self, tenant: str) -> list[Row]:
        """Return the devices of a tenant in creation order."""

        def run(conn: sqlite3.Connection) -> list[Row]:
            rows = conn.execute(
                "SELECT service_path, doc FROM iot_devices WHERE tenant=? ORDER BY rowid",
                (tenant,),
            ).fetchall()
            return [(p, orjson.loads(d)) for p, d in rows]

        result: list[Row] = await self._store.read(run)
        return result

    async def get_device(self, tenant: str, device_id: str) -> Row | None:
        """Return a device's (service path, doc), or None."""

        def run(conn: sqlite3.Connection) -> Row | None:
            row = conn.execute(
                "SELECT service_path, doc FROM iot_devices WHERE tenant=? AND device_id=?",
                (tenant, device_id),
            ).fetchone()
            return None if row is None else (row[0], orjson.loads(row[1]))

        result: Row | None = await self._store.read(run)
        return result

    async def update_device(self, tenant: str, device_id: str, doc: dict[str, Any]) -> bool:
        """Replace a device's document; return False if it does not exist."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE iot_devices SET doc=? WHERE tenant=? AND device_id=?",
                (orjson.dumps(doc).decode(), tenant, device_id),
            )
            return cur.rowcount > 0

        ok: bool = await self._store.write(run)
        return ok

    async def delete_device(self, tenant: str, device_id: str) -> bool:
        """Delete a device; return False if it does not exist."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM iot_devices WHERE tenant=? AND device_id=?", (tenant, device_id)
            )
            conn.execute(
                "DELETE FROM iot_device_status WHERE tenant=? AND device_id=?", (tenant, device_id)
            )
            return cur.rowcount > 0

        ok: bool = await self._store.write(run)
        return ok

    # -- device health ------------------------------------------------------------------------

    async def record_seen(self, seen: list[tuple[str, str, float]]) -> None:
        """Store (tenant, device id, last seen) of devices that sent measures."""

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO iot_device_status(tenant, device_id, last_seen) VALUES(?,?,?) "
                "ON CONFLICT(tenant, device_id) DO UPDATE SET "
                "last_seen=max(last_seen, excluded.last_seen)",
                seen,
            )

        await self._store.write(run)

    async def set_silent(self, tenant: str, device_id: str, silent: bool, since: float) -> None:
        """Mark a device silent (alert raised) or not."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO iot_device_status(tenant, device_id, last_seen, silent) "
                "VALUES(?,?,?,?) "
                "ON CONFLICT(tenant, device_id) DO UPDATE SET silent=excluded.silent",
                (tenant, device_id, since, int(silent)),
            )

        await self._store.write(run)

    async def all_devices(self) -> list[tuple[str, dict[str, Any], float | None, bool]]:
        """Return (tenant, device doc, last seen, silent) of every device of every tenant."""

        def run(conn: sqlite3.Connection) -> list[tuple[str, dict[str, Any], float | None, bool]]:
            rows = conn.execute(
                "SELECT d.tenant, d.doc, s.last_seen, s.silent FROM iot_devices d "
                "LEFT JOIN iot_device_status s ON s.tenant=d.tenant AND s.device_id=d.device_id"
            ).fetchall()
            return [(t, orjson.loads(doc), seen, bool(silent)) for t, doc, seen, silent in rows]

        result: list[tuple[str, dict[str, Any], float | None, bool]] = await self._store.read(run)
        return result

    async def status(self, tenant: str, device_id: str) -> Status:
        """Return (last seen, silent) of one device."""

        def run(conn: sqlite3.Connection) -> Status:
            row = conn.execute(
                "SELECT last_seen, silent FROM iot_device_status WHERE tenant=? AND device_id=?",
                (tenant, device_id),
            ).fetchone()
            return (None, False) if row is None else (row[0], bool(row[1]))

        result: Status = await self._store.read(run)
        return result
