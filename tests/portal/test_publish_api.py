"""The portal routes in an app: the surge switch (API and CLI), /public/, `cityos publish`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from conftest import engine_env, free_port
from starlette.routing import Router
from starlette.testclient import TestClient

from cityos import cli
from cityos.app import make_storage
from cityos.broker.api.common import Broker
from cityos.http.middleware.errors import ErrorMiddleware, not_found_app
from cityos.http.middleware.slashes import TrailingSlashMiddleware
from cityos.http.routing import grouped
from cityos.jsonld.loader import ContextLoader
from cityos.portal import api as portal_api
from cityos.portal.api import portal_routes
from cityos.settings import Settings


async def tiny_site(*, surge: bool) -> dict[str, bytes]:
    """Stand in for the real site: the top page says which page it is."""
    top = b"<p>lite</p>" if surge else b"<p>full</p>"
    return {"index.html": top, "lite.html": b"<p>lite</p>", "alerts.json": b"[]"}


def portal_app(data_dir: Path) -> Any:
    """Assemble the portal routes the way cityos/app.py does, with the tiny site."""
    url = engine_env(data_dir).get("CITYOS_DATABASE_URL")  # the engine under test
    settings = Settings(data_dir=data_dir, database_url=url, remote_contexts=False)
    store = make_storage(settings)
    broker = Broker(store, ContextLoader(remote_fetch=False), settings)
    table = portal_routes(broker, tiny_site)

    @contextlib.asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        await store.start()
        for start in broker.on_start:
            await start()
        try:
            yield
        finally:
            for stop in reversed(broker.on_stop):
                await stop()
            await store.close()

    router = Router(grouped(table), lifespan=lifespan, default=not_found_app())
    return ErrorMiddleware(TrailingSlashMiddleware(router))


def wait_for_top(c: TestClient, want: bytes) -> None:
    deadline = time.monotonic() + 3
    while c.get("/public/").content != want:
        assert time.monotonic() < deadline, c.get("/public/").content
        time.sleep(0.02)


def test_surge_switch_round_trip_survives_a_restart(tmp_path: Path) -> None:
    with TestClient(portal_app(tmp_path)) as c:
        assert c.get("/admin/portal/surge").json() == {"surge": False, "changedAt": None}
        wait_for_top(c, b"<p>full</p>")
        r = c.put("/admin/portal/surge", json={"surge": True})
        assert r.status_code == 200
        assert r.json()["surge"] is True
        assert r.json()["published"] is True
        # answered once published: the very next request gets the light page
        assert c.get("/public/").content == b"<p>lite</p>"
        state = c.get("/admin/portal/surge").json()
        assert state["surge"] is True
        assert state["changedAt"].endswith("Z")
    (tmp_path / "public" / "index.html").unlink()
    with TestClient(portal_app(tmp_path)) as c:
        assert c.get("/admin/portal/surge").json() == state
        wait_for_top(c, b"<p>lite</p>")  # the first build after the restart is in surge mode
        assert c.put("/admin/portal/surge", json=state | {"surge": False}).status_code == 200
        assert c.get("/public/").content == b"<p>full</p>"
        assert c.get("/admin/portal/surge").json()["surge"] is False


@pytest.mark.parametrize(
    ("body", "kind", "detail"),
    [
        (b'{"surge": "on"}', "BadRequestData", 'surge: must be true or false, got "on"'),
        (b'{"surge": 1}', "BadRequestData", "surge: must be true or false, got 1"),
        (b"{}", "BadRequestData", "surge: required (true or false)"),
        (b'{"surge": true, "mode": "lite"}', "BadRequestData", "mode: unknown member"),
        (b"[true]", "BadRequestData", "the body must be a JSON object"),
        (b"surge=on", "InvalidRequest", ""),
        (b"", "InvalidRequest", "the request body is empty"),
    ],
)
def test_bad_switch_requests_get_problem_details_and_change_nothing(
    tmp_path: Path, body: bytes, kind: str, detail: str
) -> None:
    with TestClient(portal_app(tmp_path)) as c:
        r = c.put("/admin/portal/surge", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == f"https://uri.etsi.org/ngsi-ld/errors/{kind}"
        assert detail in r.json()["detail"]
        assert c.get("/admin/portal/surge").json()["surge"] is False


def test_the_switch_only_takes_get_and_put(tmp_path: Path) -> None:
    with TestClient(portal_app(tmp_path)) as c:
        r = c.post("/admin/portal/surge", json={"surge": True})
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, PUT"


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """Serve the portal app over a real socket in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(portal_app(tmp_path), port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve()))
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def test_cli_switches_surge_on_a_running_server(server: str, tmp_path: Path) -> None:
    runner = CliRunner()
    on = runner.invoke(cli.main, ["surge", "on", "--url", server])
    assert on.exit_code == 0, on.output
    assert "surge mode is on" in on.output
    assert (tmp_path / "public" / "index.html").read_bytes() == b"<p>lite</p>"
    status = runner.invoke(cli.main, ["surge", "status", "--url", server + "/"])
    assert "surge mode is on" in status.output
    off = runner.invoke(cli.main, ["surge", "off", "--url", server])
    assert "surge mode is off" in off.output
    assert (tmp_path / "public" / "index.html").read_bytes() == b"<p>full</p>"


def test_cli_says_clearly_when_no_server_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = CliRunner().invoke(cli.main, ["surge", "on", "--url", url])
    assert r.exit_code == 1
    assert f"cannot reach cityos at {url}" in r.output
    assert "Traceback" not in r.output


def test_publish_writes_a_full_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    with TestClient(portal_app(data)) as c:  # a database with surge mode on
        c.put("/admin/portal/surge", json={"surge": True})
    monkeypatch.setattr(portal_api, "site_builder", lambda *_a, **_k: tiny_site)
    monkeypatch.delenv("CITYOS_DATA_DIR", raising=False)
    out = tmp_path / "copy"
    runner = CliRunner(env=engine_env(data))
    first = runner.invoke(cli.main, ["publish", "--to", str(out), "--data-dir", str(data)])
    assert first.exit_code == 0, first.output
    assert "written   index.html  11 bytes" in first.output
    assert (out / "index.html").read_bytes() == b"<p>lite</p>"  # the server's switch
    assert (out / "alerts.json").read_bytes() == b"[]"
    again = runner.invoke(
        cli.main, ["publish", "--to", str(out), "--data-dir", str(data), "--no-surge"]
    )
    assert "written   index.html" in again.output
    assert "unchanged alerts.json" in again.output
    assert (out / "index.html").read_bytes() == b"<p>full</p>"


@pytest.mark.sqlite_only("a data dir without its SQLite file")
def test_publish_refuses_a_missing_database(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli.main, ["publish", "--to", str(tmp_path / "out"), "--data-dir", str(tmp_path / "no")]
    )
    assert r.exit_code == 1
    assert "no database at" in r.output
    assert not (tmp_path / "out").exists()
