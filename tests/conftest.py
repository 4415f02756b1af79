"""Shared fixtures: a real cityos app (temporary SQLite file or PostgreSQL schema) over HTTP."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import asyncpg
import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from cityos.storage.base import Storage
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage

T = TypeVar("T")
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
LD = {"Content-Type": "application/ld+json"}


#: CITYOS_TEST_ENGINE=postgresql runs the suite on PostgreSQL: every installation (data dir) a
#: test makes gets a fresh schema of one database made for this test run
ENGINE = os.environ.get("CITYOS_TEST_ENGINE", "sqlite")
_run_database: list[str] = []
#: data dir -> its schema: an app made again on the same data dir finds its data (restarts)
_schemas: dict[Path, str] = {}


def _engine_overrides(data_dir: Path) -> dict[str, Any]:
    if ENGINE != "postgresql":
        return {}
    data_dir = Path(data_dir)
    if data_dir in _schemas:
        return {"database_url": _schemas[data_dir]}
    if not _run_database:
        name = f"cityos_test_{secrets.token_hex(4)}"
        _sync(admin_sql(SERVER_URL, f"CREATE DATABASE {name}"))
        url = _with_database(SERVER_URL, name)
        _run_database.append(url)  # dropped at the end even if what follows fails
        _sync(admin_sql(url, "CREATE EXTENSION IF NOT EXISTS postgis"))
    _schemas[data_dir] = pg_schema_url(_run_database[0])
    return {"database_url": _schemas[data_dir]}


def engine_env(data_dir: Path) -> dict[str, str]:
    """Return the environment that points a `cityos` command at data_dir's installation.

    On SQLite the data dir alone names it (nothing to add); on PostgreSQL it is the
    CITYOS_DATABASE_URL of the schema that make_client(data_dir) uses too.
    """
    url = _engine_overrides(data_dir).get("database_url")
    return {"CITYOS_DATABASE_URL": url} if url else {}


def _picks_its_engine(item: pytest.Item) -> bool:
    """Return True for a test that chooses its engines itself, whatever CITYOS_TEST_ENGINE says.

    The test_*_engines.py modules run every test on both; a test asking for pg_database (or a
    fixture that does) runs on PostgreSQL in any pass.
    """
    return item.path.name.endswith("_engines.py") or "pg_database" in getattr(
        item, "fixturenames", ()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect, on PostgreSQL, the tests that pick their engine: the SQLite pass ran them."""
    if ENGINE != "postgresql":
        return
    done = [item for item in items if _picks_its_engine(item)]
    if done:
        config.hook.pytest_deselected(items=done)
        items[:] = [item for item in items if not _picks_its_engine(item)]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip, with its reason, a test marked sqlite_only when the suite runs on PostgreSQL."""
    marker = item.get_closest_marker("sqlite_only")
    if marker is None:
        return
    if not marker.args or not str(marker.args[0]).strip():
        pytest.fail(f'{item.nodeid}: sqlite_only needs a reason: sqlite_only("why")')
    if ENGINE == "postgresql":
        pytest.skip(f"SQLite only: {marker.args[0]}")


@pytest.fixture(scope="session", autouse=True)
def _drop_run_database() -> Iterator[None]:
    yield
    for url in _run_database:
        name = url.rpartition("/")[2]
        asyncio.run(admin_sql(SERVER_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        # migration 7 makes a server-wide reader role per database
        asyncio.run(admin_sql(SERVER_URL, f'DROP ROLE IF EXISTS "{name}_datastore_reader"'))


def storage_of(data_dir: Path) -> Storage:
    """Return (not started) the storage engine the apps of make_client(data_dir) use."""
    url = _engine_overrides(data_dir).get("database_url")
    if url is not None:
        return PostgresStorage(url)
    return SqliteStorage(data_dir / "cityos.db")


def database_sql(data_dir: Path, *statements: str) -> None:
    """Run SQL statements on data_dir's database directly, outside cityos (as a forger would)."""
    url = _engine_overrides(data_dir).get("database_url")
    if url is not None:
        _sync(admin_sql(url, *statements))
        return
    conn = sqlite3.connect(data_dir / "cityos.db")
    try:
        with conn:
            for sql in statements:
                conn.execute(sql)
    finally:
        conn.close()


def database_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run a query on data_dir's database directly, outside cityos; return its rows."""
    url = _engine_overrides(data_dir).get("database_url")
    if url is not None:
        return _sync(_pg_rows(url, sql))
    conn = sqlite3.connect(data_dir / "cityos.db")
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def database_exists(data_dir: Path) -> bool:
    """Return True once data_dir's database was made (the SQLite file, the schema's tables)."""
    if _engine_overrides(data_dir).get("database_url") is None:
        return (data_dir / "cityos.db").exists()
    return bool(database_rows(data_dir, _TABLES))


#: the tables of a test's PostgreSQL schema
_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"


def database_text(data_dir: Path) -> str:
    """Return every row of every table of data_dir's database as text (to grep for secrets)."""
    if _engine_overrides(data_dir).get("database_url") is None:
        conn = sqlite3.connect(data_dir / "cityos.db")
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()
    tables = database_rows(data_dir, _TABLES)
    lines = []
    for (table,) in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        lines += [str(row[0]) for row in database_rows(data_dir, f"SELECT t::text FROM {quoted} t")]
    return "\n".join(lines)


async def _pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url, timeout=3)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run a query on the PostgreSQL database (and schema) at url; return its rows."""
    return _sync(_pg_rows(url, sql))


def _sync(job: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end, also from inside a running event loop (in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(job)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, job).result()


def make_client(tmp_path: Path, **overrides: Any) -> TestClient:
    settings = Settings(
        data_dir=tmp_path,
        remote_contexts=False,
        **{**_engine_overrides(overrides.get("data_dir", tmp_path)), **overrides},
    )
    return TestClient(create_app(settings), raise_server_exceptions=True)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


def sensor(n: int = 1, level: float = 1.5, **extra: Any) -> dict[str, Any]:
    """Return a water-level sensor entity near Sano's Akiyama river."""
    return {
        "id": f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}",
        "type": "WaterLevelObserved",
        "waterLevel": {
            "type": "Property",
            "value": level,
            "unitCode": "MTR",
            "observedAt": "2026-11-25T10:00:00Z",
        },
        "name": {"type": "Property", "value": f"秋山川 {n}"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.5783 + n * 0.001, 36.3144]},
        },
        "refRiver": {"type": "Relationship", "object": "urn:ngsi-ld:River:akiyama"},
        **extra,
    }


MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


def require_mosquitto() -> None:
    """Skip (or fail under CITYOS_REQUIRE_SERVICES=1) when no MQTT broker listens locally."""
    try:
        socket.create_connection((MQTT_HOST, MQTT_PORT), timeout=1).close()
    except OSError as exc:
        reason = f"no MQTT broker on {MQTT_HOST}:{MQTT_PORT} ({exc})"
        if os.environ.get("CITYOS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and CITYOS_REQUIRE_SERVICES=1")
        pytest.skip(reason)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], Any], what: str = "the condition", timeout: float = 10.0) -> Any:
    """Poll check() until it returns something truthy; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


CITYOS = str(Path(sys.executable).parent / "cityos")


@contextlib.contextmanager
def running_server(data: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `cityos serve` on data until the block ends; yield its base URL.

    Leaving the block sends SIGTERM and checks a clean exit (status 0, no traceback).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [CITYOS, "serve", "--port", str(port), "--data-dir", str(data)],
        env={**os.environ, "CITYOS_AUTH": "off", **engine_env(data), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"cityos serve exited: {proc.communicate()[1].decode()}")
        try:
            return httpx.get(f"{base}/-/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, "cityos serve to answer", timeout=30)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()


def make_token(data: Path, user: str = "admin") -> str:
    """Create a catalog API token with `cityos token create`; return it."""
    made = subprocess.run(
        [CITYOS, "token", "create", "--user", user, "--data-dir", str(data)],
        env={**os.environ, **engine_env(data)}, capture_output=True, text=True, check=True,
        timeout=60,
    )  # fmt: skip
    return made.stdout.strip()


class Receiver:
    """An HTTP server on a free port that records the notifications POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 204
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._cond:
                    status = receiver.status
                    if status < 300:
                        receiver.received.append(orjson.loads(body))
                        receiver.headers.append(dict(self.headers.items()))
                        receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Return the first n notifications once they have arrived."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.received) >= n, timeout)
            assert ok, f"received {len(self.received)} notifications, expected {n}"
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def make_key(client: TestClient, *roles: str, tenants: tuple[str, ...] = ("",), **kw: Any) -> str:
    """Create an API key in the running app's store; return its plaintext."""
    store = client.app.identity.store  # type: ignore[attr-defined]
    create = functools.partial(store.create_key, "test", roles=roles, tenants=tenants, **kw)
    assert client.portal is not None
    _, plaintext = client.portal.call(create)
    return str(plaintext)


# -- PostgreSQL: a database for this test run (dropped at the end), a schema per test --------
#: the server to make test databases on (any database of it that we may connect to)
SERVER_URL = os.environ.get("CITYOS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def admin_sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=3)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Create a PostgreSQL database (with PostGIS) for this run; yield its URL."""
    name = f"cityos_test_{secrets.token_hex(4)}"
    try:
        asyncio.run(admin_sql(SERVER_URL, f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL is not reachable at {SERVER_URL}: {exc}"
        if os.environ.get("CITYOS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (CITYOS_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    url = _with_database(SERVER_URL, name)
    try:
        # in public, so that every test schema finds it on its search_path
        asyncio.run(admin_sql(url, "CREATE EXTENSION IF NOT EXISTS postgis"))
        yield url
    finally:
        asyncio.run(admin_sql(SERVER_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        # migration 7 makes a server-wide reader role per database
        asyncio.run(admin_sql(SERVER_URL, f'DROP ROLE IF EXISTS "{name}_datastore_reader"'))


def pg_schema_url(database_url: str) -> str:
    """Create an empty schema; return a URL whose connections use it (and public)."""
    schema = f"t_{secrets.token_hex(6)}"
    _sync(admin_sql(database_url, f"CREATE SCHEMA {schema}"))
    return f"{database_url}?search_path={quote(schema + ',public', safe='')}"


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """Return the URL of an empty schema of the test run's PostgreSQL database."""
    return pg_schema_url(pg_database)


class ServeProcess:
    """One `cityos serve` process of an installation, in a process group of its own.

    `kill()` sends SIGKILL to the group (the server and every granian worker: no graceful
    stop); `stop()` sends SIGTERM and returns what it wrote on stderr. Ready when ready()
    says so (by default: /-/health answers 200).
    """

    def __init__(self, data: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [CITYOS, "serve", "--port", str(self.port), "--data-dir", str(data), *args],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        wait_for(self._started, f"cityos serve on {self.port}", timeout=60)

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/-/health", timeout=1).status_code == 200

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"cityos serve exited: {self.proc.communicate()[1].decode()}")
        try:
            return self.ready()
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and its workers: nothing more is written or acknowledged."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=30)

    def stop(self) -> str:
        """SIGTERM; return its stderr (SIGKILL after 60 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate()
        return err.decode()
