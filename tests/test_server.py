"""A real `cityos serve` process: settings from flags and env, health, writes, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import database_exists, engine_env, free_port

pytestmark = pytest.mark.server
CITYOS = str(Path(sys.executable).parent / "cityos")


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CITYOS, "serve", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    """Send a signal, wait for the exit, and return the exit status."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode


def wait_healthy(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.communicate()[1].decode()
            pytest.fail(f"cityos serve exited with {proc.returncode}: {out}")
        try:
            if httpx.get(f"{base}/-/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("cityos serve did not become healthy in 30 s")


def test_serve_writes_survive_sigterm_and_restart(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    env = engine_env(data)  # the same database for both runs, on either engine
    proc = start(["--port", str(port), "--data-dir", str(data)], {"CITYOS_AUTH": "off", **env})
    try:
        wait_healthy(base, proc)
        with httpx.Client(base_url=base, timeout=10) as c:
            body = [
                {
                    "id": f"urn:ngsi-ld:WaterLevelObserved:{i}",
                    "type": "WaterLevelObserved",
                    "waterLevel": {"type": "Property", "value": i / 10},
                }
                for i in range(200)
            ]
            r = c.post("/ngsi-ld/v1/entityOperations/upsert", json=body)
            assert r.status_code == 201, r.text
            r = c.patch(
                "/ngsi-ld/v1/entities/urn:ngsi-ld:WaterLevelObserved:7/attrs/waterLevel",
                json={"value": 4.2},
            )
            assert r.status_code == 204
        assert stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert database_exists(data)
    # Restart on the same data, this time configured through the environment only.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start([], {"CITYOS_PORT": str(port), "CITYOS_DATA_DIR": str(data), **env})
    try:
        wait_healthy(base, proc)
        r = httpx.get(
            f"{base}/ngsi-ld/v1/entities",
            params={"type": "WaterLevelObserved", "count": "true", "limit": 0},
        )
        assert r.headers["NGSILD-Results-Count"] == "200"
        r = httpx.get(f"{base}/ngsi-ld/v1/entities/urn:ngsi-ld:WaterLevelObserved:7")
        assert r.json()["waterLevel"]["value"] == 4.2
    finally:
        assert stop(proc, signal.SIGINT) == 0


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    r = subprocess.run(
        [CITYOS, "serve", "--data-dir", str(tmp_path)],
        env={**os.environ, "CITYOS_DATABASE_URL": "mysql://x"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0
    assert "CITYOS_DATABASE_URL" in r.stderr


@pytest.mark.sqlite_only("writes a SQLite file of another storage schema")
def test_serve_refuses_a_database_of_another_schema(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "cityos.db")
    conn.execute("CREATE TABLE entities(rid INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    r = subprocess.run(
        [CITYOS, "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0
    assert "storage schema 0" in r.stderr
    assert "Traceback" not in r.stderr
