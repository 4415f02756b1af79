"""Shared fixtures: a real cityos app on a temporary SQLite file, driven over HTTP in-process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
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

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
LD = {"Content-Type": "application/ld+json"}


#: CITYOS_TEST_ENGINE=postgresql runs the app-level tests on PostgreSQL: every app made by
#: make_client gets a fresh schema of one database made for this test run
ENGINE = os.environ.get("CITYOS_TEST_ENGINE", "sqlite")
_run_database: list[str] = []
#: data dir -> its schema: an app made again on the same data dir finds its data (restarts)
_schemas: dict[Path, str] = {}


def _engine_overrides(data_dir: Path) -> dict[str, Any]:
    if ENGINE != "postgresql":
        return {}
    if data_dir in _schemas:
        return {"database_url": _schemas[data_dir]}
    if not _run_database:
        name = f"cityos_test_{secrets.token_hex(4)}"
        asyncio.run(admin_sql(SERVER_URL, f"CREATE DATABASE {name}"))
        url = _with_database(SERVER_URL, name)
        asyncio.run(admin_sql(url, "CREATE EXTENSION IF NOT EXISTS postgis"))
        _run_database.append(url)
    _schemas[data_dir] = pg_schema_url(_run_database[0])
    return {"database_url": _schemas[data_dir]}


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
    if data_dir in _schemas:
        return PostgresStorage(_schemas[data_dir])
    return SqliteStorage(data_dir / "cityos.db")


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
        env={**os.environ, "CITYOS_AUTH": "off", **(env or {})},
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
        capture_output=True, text=True, check=True, timeout=60,
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
    asyncio.run(admin_sql(database_url, f"CREATE SCHEMA {schema}"))
    return f"{database_url}?search_path={quote(schema + ',public', safe='')}"


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """Return the URL of an empty schema of the test run's PostgreSQL database."""
    return pg_schema_url(pg_database)
