"""SQLite table of API keys: prefix, sha256, roles, tenants, scopes and their times."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import orjson

from cityos.auth import keys
from cityos.auth.keys import Credential
from cityos.storage.sqlite import DumpRow, DumpTable, SqliteStorage, dump_tables, load_tables

DDL: Final = """CREATE TABLE IF NOT EXISTS auth_keys(
    id INTEGER PRIMARY KEY,
    prefix TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    roles TEXT NOT NULL,
    tenants TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    last_used REAL
)"""
_COLUMNS: Final = "id, prefix, name, roles, tenants, scopes, created, expires, revoked, last_used"


def _credential(row: tuple[Any, ...]) -> Credential:
    id_, prefix, name, roles, tenants, scopes, created, expires, revoked, last_used = row
    return Credential(
        id=id_,
        prefix=prefix,
        name=name,
        roles=tuple(orjson.loads(roles)),
        tenants=tuple(orjson.loads(tenants)),
        scopes=tuple(orjson.loads(scopes)),
        created=created,
        expires=expires,
        revoked=revoked,
        last_used=last_used,
    )


class AuthStore:
    """API keys in the broker's SQLite file."""

    def __init__(self, store: SqliteStorage) -> None:
        self._store = store
        #: key id -> when this process last wrote its last_used
        self._touched: dict[int, float] = {}

    #: (dump section, table, order, rowid too?) of what `cityos export` keeps
    DUMP_TABLES: Final[tuple[DumpTable, ...]] = (("key", "auth_keys", "id", False),)

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the API keys (digests only: a key is never stored in clear)."""
        return dump_tables(conn, AuthStore.DUMP_TABLES)

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        load_tables(conn, AuthStore.DUMP_TABLES, section, rows)

    async def setup(self) -> None:
        """Create the table if needed."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(DDL)

        await self._store.write(run)

    async def create_key(
        self,
        name: str,
        *,
        roles: Iterable[str],
        tenants: Iterable[str],
        scopes: Iterable[str] = (),
        expires: float | None = None,
        now: float | None = None,
    ) -> tuple[Credential, str]:
        """Store a new key; return it and its plaintext (shown once: only its hash is kept)."""
        created = time.time() if now is None else now
        name, roles_, tenants_, scopes_ = keys.check_request(
            name, roles, tenants, scopes, expires=expires, now=created
        )

        def run(conn: sqlite3.Connection) -> tuple[Credential, str]:
            while True:  # 8 hex digits: a clash is rare but possible, and prefixes are unique
                made = keys.new_key()
                taken = conn.execute("SELECT 1 FROM auth_keys WHERE prefix=?", (made.prefix,))
                if taken.fetchone() is None:
                    break
            cur = conn.execute(
                "INSERT INTO auth_keys(prefix, digest, name, roles, tenants, scopes, created, "
                "expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    made.prefix,
                    made.digest,
                    name,
                    *(orjson.dumps(v).decode() for v in (roles_, tenants_, scopes_)),
                    created,
                    expires,
                ),
            )
            assert cur.lastrowid is not None
            cred = Credential(
                cur.lastrowid, made.prefix, name, roles_, tenants_, scopes_, created, expires
            )
            return cred, made.plaintext

        result: tuple[Credential, str] = await self._store.write(run)
        return result

    async def list_keys(self) -> list[Credential]:
        """Return every key, revoked and expired ones included, oldest first."""

        def run(conn: sqlite3.Connection) -> list[Credential]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM auth_keys ORDER BY id")
            return [_credential(row) for row in rows]

        result: list[Credential] = await self._store.read(run)
        return result

    async def revoke(self, prefix: str, now: float | None = None) -> Credential | None:
        """Revoke the key with this prefix (a revoked one keeps its time); None if unknown."""
        at = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> Credential | None:
            conn.execute(
                "UPDATE auth_keys SET revoked=? WHERE prefix=? AND revoked IS NULL", (at, prefix)
            )
            row = conn.execute(f"SELECT {_COLUMNS} FROM auth_keys WHERE prefix=?", (prefix,))
            found = row.fetchone()
            return None if found is None else _credential(found)

        result: Credential | None = await self._store.write(run)
        return result

    async def find(self, presented: str, now: float | None = None) -> Credential | None:
        """Return the credential of a presented key; None if unknown, revoked or expired."""
        prefix = keys.prefix_of(presented)
        if prefix is None:
            return None

        def run(conn: sqlite3.Connection) -> tuple[str, Credential] | None:
            row = conn.execute(
                f"SELECT digest, {_COLUMNS} FROM auth_keys WHERE prefix=?", (prefix,)
            ).fetchone()
            return None if row is None else (row[0], _credential(row[1:]))

        found: tuple[str, Credential] | None = await self._store.read(run)
        if found is None:
            return None
        stored, cred = found
        if not keys.matches(stored, presented):
            return None
        return cred if cred.active(time.time() if now is None else now) else None

    async def touch(self, key_id: int, now: float | None = None) -> bool:
        """Record that a key was used; write at most once a minute per key. True if written."""
        at = time.time() if now is None else now
        if at - self._touched.get(key_id, -keys.TOUCH_EVERY) < keys.TOUCH_EVERY:
            return False
        self._touched[key_id] = at

        def run(conn: sqlite3.Connection) -> bool:
            # the time test also holds back other processes that touched it a moment ago
            cur = conn.execute(
                "UPDATE auth_keys SET last_used=? WHERE id=? AND "
                "(last_used IS NULL OR last_used <= ?)",
                (at, key_id, at - keys.TOUCH_EVERY),
            )
            return cur.rowcount > 0

        result: bool = await self._store.write(run)
        return result
