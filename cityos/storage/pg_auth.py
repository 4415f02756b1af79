"""PostgreSQL table of API keys: prefix, sha256, roles, tenants, scopes and their times."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final

import orjson

from cityos.auth import keys
from cityos.auth.keys import Credential
from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow

_COLUMNS: Final = "id, prefix, name, roles, tenants, scopes, created, expires, revoked, last_used"
#: the columns of a dumped key, in AuthStore's order
_DUMP_COLUMNS: Final = (
    "id", "prefix", "digest", "name", "roles", "tenants", "scopes", "created", "expires",
    "revoked", "last_used",
)  # fmt: skip
_LISTS: Final = ("roles", "tenants", "scopes")


def _credential(row: Any) -> Credential:
    id_, prefix, name, roles, tenants, scopes, created, expires, revoked, last_used = row
    return Credential(
        id_, prefix, name, tuple(roles), tuple(tenants), tuple(scopes),
        created, expires, revoked, last_used,
    )  # fmt: skip


class PgAuthStore:
    """API keys in the PostgreSQL database (migration 0005)."""

    def __init__(self, store: PostgresStorage) -> None:
        self._store = store
        #: key id -> when this process last wrote its last_used
        self._touched: dict[int, float] = {}

    #: dump sections, in the order and with the columns of AuthStore.dump_rows
    DUMP_SECTIONS: Final = ("key",)

    @staticmethod
    async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
        """Yield the API keys as AuthStore.dump_rows does (digests only)."""
        rows = await conn.fetch(f"SELECT {', '.join(_DUMP_COLUMNS)} FROM auth_keys ORDER BY id")
        for row in rows:
            # SQLite keeps the lists as JSON text: keep dumps engine-neutral
            lists = {c: orjson.dumps(row[c]).decode() for c in _LISTS}
            yield "key", {**dict(row.items()), **lists}

    @staticmethod
    async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their ids."""
        if section != "key":
            raise ValueError(f"not a section of the key store: {section!r}")
        names = ", ".join(_DUMP_COLUMNS)
        await conn.executemany(
            f"INSERT INTO auth_keys({names}) OVERRIDING SYSTEM VALUE VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{c}=EXCLUDED.{c}" for c in _DUMP_COLUMNS[1:]),
            [
                tuple(orjson.loads(r[c]) if c in _LISTS else r[c] for c in _DUMP_COLUMNS)
                for r in rows
            ],
        )
        # keys created later must not take a loaded id
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('auth_keys', 'id'), max(id)) FROM auth_keys"
        )

    async def setup(self) -> None:
        """Do nothing: the table comes with the migrations (PostgresStorage.start)."""

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
        while True:  # 8 hex digits: a clash is rare but possible, and prefixes are unique
            made = keys.new_key()
            id_ = await self._store.pool.fetchval(
                "INSERT INTO auth_keys(prefix, digest, name, roles, tenants, scopes, created, "
                "expires) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (prefix) DO NOTHING RETURNING id",
                made.prefix,
                made.digest,
                name,
                roles_,
                tenants_,
                scopes_,
                created,
                expires,
            )
            if id_ is not None:
                cred = Credential(
                    id_, made.prefix, name, roles_, tenants_, scopes_, created, expires
                )
                return cred, made.plaintext

    async def list_keys(self) -> list[Credential]:
        """Return every key, revoked and expired ones included, oldest first."""
        rows = await self._store.pool.fetch(f"SELECT {_COLUMNS} FROM auth_keys ORDER BY id")
        return [_credential(row) for row in rows]

    async def revoke(self, prefix: str, now: float | None = None) -> Credential | None:
        """Revoke the key with this prefix (a revoked one keeps its time); None if unknown."""
        at = time.time() if now is None else now
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE auth_keys SET revoked=$1 WHERE prefix=$2 AND revoked IS NULL", at, prefix
            )
            # a new statement: it sees a revocation by another worker that committed meanwhile
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM auth_keys WHERE prefix=$1", prefix)
        return None if row is None else _credential(row)

    async def find(self, presented: str, now: float | None = None) -> Credential | None:
        """Return the credential of a presented key; None if unknown, revoked or expired."""
        prefix = keys.prefix_of(presented)
        if prefix is None:
            return None
        row = await self._store.pool.fetchrow(
            f"SELECT digest, {_COLUMNS} FROM auth_keys WHERE prefix=$1", prefix
        )
        if row is None or not keys.matches(row[0], presented):
            return None
        cred = _credential(tuple(row)[1:])
        return cred if cred.active(time.time() if now is None else now) else None

    async def touch(self, key_id: int, now: float | None = None) -> bool:
        """Record that a key was used; write at most once a minute per key. True if written."""
        at = time.time() if now is None else now
        if at - self._touched.get(key_id, -keys.TOUCH_EVERY) < keys.TOUCH_EVERY:
            return False
        self._touched[key_id] = at
        # the time test also holds back other workers that touched it a moment ago
        status = await self._store.pool.execute(
            "UPDATE auth_keys SET last_used=$1 WHERE id=$2 AND "
            "(last_used IS NULL OR last_used <= $3)",
            at,
            key_id,
            at - keys.TOUCH_EVERY,
        )
        return bool(status != "UPDATE 0")
