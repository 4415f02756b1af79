"""Pick each store's class for the engine the broker runs on (SQLite or PostgreSQL).

Every store has a SQLite class and a PostgreSQL twin with the same async methods; callers ask
here instead of naming an engine, and register engine-neutral change listeners with
`on_change`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cityos.storage.base import Change, Storage
from cityos.storage.pg_audit import PgAuditStore
from cityos.storage.pg_auth import PgAuthStore
from cityos.storage.pg_catalog import PgCatalogStore
from cityos.storage.pg_datastore import PgDatastoreStore
from cityos.storage.pg_history import PgHistory
from cityos.storage.pg_history import record_change as pg_record_change
from cityos.storage.pg_iot import PgIotStore
from cityos.storage.pg_live import PgLiveStore
from cityos.storage.pg_subscriptions import LEASE, PostgresSubscriptionStore
from cityos.storage.pg_users import PgUserStore
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_audit import AuditStore
from cityos.storage.sqlite_auth import AuthStore
from cityos.storage.sqlite_catalog import CatalogStore
from cityos.storage.sqlite_datastore import DatastoreStore
from cityos.storage.sqlite_history import SqliteHistory
from cityos.storage.sqlite_history import record_change as sqlite_record_change
from cityos.storage.sqlite_iot import IotStore
from cityos.storage.sqlite_live import LiveStore
from cityos.storage.sqlite_subscriptions import Registry, SubscriptionStore
from cityos.storage.sqlite_users import UserStore

History = SqliteHistory | PgHistory
Iot = IotStore | PgIotStore
Live = LiveStore | PgLiveStore
Keys = AuthStore | PgAuthStore
Audit = AuditStore | PgAuditStore
Users = UserStore | PgUserStore
CatalogMeta = CatalogStore | PgCatalogStore
Datastore = DatastoreStore | PgDatastoreStore
Subscriptions = SubscriptionStore | PostgresSubscriptionStore


class EngineError(TypeError):
    """A store was asked for an engine it does not know."""


def sqlite(store: Storage) -> SqliteStorage:
    """Return store as the SQLite engine, or raise EngineError."""
    if isinstance(store, SqliteStorage):
        return store
    raise EngineError(f"no stores for the engine {type(store).__name__}")


def on_change(store: Storage, listener: Callable[[Change], None]) -> None:
    """Call listener with every entity change (must not block).

    On SQLite it runs on the writer thread in the write's transaction (work it starts queues
    behind the commit); on PostgreSQL, once the write has committed, so that work it starts
    reads the changed data.
    """
    if not isinstance(store, PostgresStorage):
        sqlite(store).add_change_hook(lambda _conn, change: listener(change))
        return
    store.add_listener(listener)


def history(store: Storage) -> History:
    """Return the history store, recording every change from now on."""
    if isinstance(store, PostgresStorage):
        store.add_change_hook(pg_record_change)
        return PgHistory(store)
    lite = sqlite(store)
    lite.add_change_hook(sqlite_record_change)
    return SqliteHistory(lite)


def history_reader(store: Storage) -> History:
    """Return the history store for reading only (no hook registered)."""
    if isinstance(store, PostgresStorage):
        return PgHistory(store)
    return SqliteHistory(sqlite(store))


def iot(store: Storage) -> Iot:
    """Return the IoT registry."""
    if isinstance(store, PostgresStorage):
        return PgIotStore(store)
    return IotStore(sqlite(store))


def live(store: Storage) -> Live:
    """Return the live dataset definitions."""
    if isinstance(store, PostgresStorage):
        return PgLiveStore(store)
    return LiveStore(sqlite(store))


def keys(store: Storage) -> Keys:
    """Return the API key store."""
    if isinstance(store, PostgresStorage):
        return PgAuthStore(store)
    return AuthStore(sqlite(store))


def audit(store: Storage) -> Audit:
    """Return the audit log."""
    if isinstance(store, PostgresStorage):
        return PgAuditStore(store)
    return AuditStore(sqlite(store))


def users(store: Storage) -> Users:
    """Return the staff accounts and sessions."""
    if isinstance(store, PostgresStorage):
        return PgUserStore(store)
    return UserStore(sqlite(store))


def catalog(store: Storage) -> CatalogMeta:
    """Return the catalog's metadata store."""
    if isinstance(store, PostgresStorage):
        return PgCatalogStore(store)
    return CatalogStore(sqlite(store))


def datastore(store: Storage, data_dir: Path) -> Datastore:
    """Return the datastore (on SQLite, a file of its own in the data dir)."""
    if isinstance(store, PostgresStorage):
        return PgDatastoreStore(store)
    sqlite(store)
    return DatastoreStore(data_dir / "datastore.db")


def subscriptions(store: Storage, registry: Registry, *, lease: float = LEASE) -> Subscriptions:
    """Return the subscriptions and their outbox, matching changes against registry.

    On PostgreSQL a worker holds the notifications it took for `lease` seconds (renewed while
    it lives); a dead worker's are taken over by another when its lease runs out.
    """
    if isinstance(store, PostgresStorage):
        return PostgresSubscriptionStore(store, registry, lease=lease)
    return SubscriptionStore(sqlite(store), registry)
