"""Device health: last-seen times, and an Alert when a device falls silent past its interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client, wait_for
from starlette.testclient import TestClient

from cityos.iot.health import due

E = "/ngsi-ld/v1/entities"
KEY = "sano-health"


def test_grace_is_a_tenth_of_the_interval_at_most_a_minute() -> None:
    assert due(1000.0, 600) == 1000.0 + 600 + 60
    assert due(1000.0, 10) == 1000.0 + 10 + 1
    assert due(0.0, 86400) == 86400 + 60


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, device_check=0.1) as c:
        r = c.post("/iot/groups", json={"groups": [{"apikey": KEY, "resource": "/iot/json"}]})
        assert r.status_code == 201, r.text
        yield c


def provision(c: TestClient, device_id: str, **intervals: int) -> None:
    device = {
        "device_id": device_id,
        "apikey": KEY,
        "entity_name": f"urn:ngsi-ld:WaterObserved:{device_id}",
        "entity_type": "WaterObserved",
        "attributes": [{"object_id": "l", "name": "waterLevel", "type": "Number"}],
        **intervals,
    }
    r = c.post("/iot/devices", json={"devices": [device]})
    assert r.status_code == 201, r.text


def send(c: TestClient, device_id: str, level: float) -> None:
    r = c.post("/iot/json", params={"k": KEY, "i": device_id}, json={"l": level})
    assert r.status_code == 200, r.text


def alert(c: TestClient, device_id: str) -> dict[str, Any] | None:
    r = c.get(f"{E}/urn:ngsi-ld:Alert:device-{device_id}", params={"options": "keyValues"})
    return r.json() if r.status_code == 200 else None


def test_silent_device_raises_an_alert_that_closes_when_it_reports(client: TestClient) -> None:
    provision(client, "gauge-a", expected_interval=1)
    send(client, "gauge-a", 1.0)
    shown = client.get("/iot/devices/gauge-a").json()
    assert shown["last_seen"] is not None
    assert shown["silent"] is False
    assert alert(client, "gauge-a") is None
    raised = wait_for(lambda: alert(client, "gauge-a"))
    assert raised["category"] == "deviceHealth"
    assert raised["alertSource"] == "urn:ngsi-ld:WaterObserved:gauge-a"
    assert raised["description"].startswith("機器 gauge-a から")
    assert "validTo" not in raised
    assert client.get("/iot/devices/gauge-a").json()["silent"] is True
    send(client, "gauge-a", 1.1)
    closed = wait_for(lambda: (a := alert(client, "gauge-a")) and "validTo" in a and a)
    assert closed["severity"] == "informational"
    assert client.get("/iot/devices/gauge-a").json()["silent"] is False


def test_a_gauge_with_water_up_must_report_more_often(client: TestClient) -> None:
    levels = {
        "standbyLevel": 1.6,
        "cautionLevel": 2.4,
        "evacuationJudgementLevel": 2.8,
        "dangerLevel": 3.2,
    }
    for name in ("gauge-high", "gauge-low"):
        provision(client, name, expected_interval=3600, active_interval=1)
        r = client.post(
            E, json={"id": f"urn:ngsi-ld:WaterObserved:{name}", "type": "WaterObserved", **levels}
        )
        assert r.status_code == 201, r.text
    send(client, "gauge-high", 2.5)  # caution: reports every second are expected now
    send(client, "gauge-low", 0.5)  # normal: one heartbeat an hour is enough
    wait_for(lambda: alert(client, "gauge-high"))
    time.sleep(0.5)
    assert alert(client, "gauge-low") is None


@pytest.mark.parametrize("bad", ["600", 0, -5, 1.5, True, 10**9])
def test_intervals_are_validated(client: TestClient, bad: Any) -> None:
    r = client.post(
        "/iot/devices", json={"devices": [{"device_id": "x", "expected_interval": bad}]}
    )
    assert r.status_code == 400
    assert "expected_interval" in r.json()["message"]
    assert client.get("/iot/devices/x").status_code == 404


def test_last_seen_survives_a_restart(tmp_path: Path) -> None:
    with make_client(tmp_path) as c:
        assert (
            c.post(
                "/iot/groups", json={"groups": [{"apikey": KEY, "resource": "/iot/json"}]}
            ).status_code
            == 201
        )
        provision(c, "gauge-r")
        send(c, "gauge-r", 1.0)
        first = c.get("/iot/devices/gauge-r").json()["last_seen"]
    with make_client(tmp_path) as c:
        assert c.get("/iot/devices/gauge-r").json()["last_seen"] == first
