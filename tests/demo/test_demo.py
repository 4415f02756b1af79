"""`cityos demo`: --no-serve loads the data set; --once replays the typhoon over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import MQTT_HOST, MQTT_PORT, engine_env, free_port, make_client, require_mosquitto

from cityos.cli import main
from cityos.demo import sano, scenario
from cityos.demo.scenario import Reading

E = "/ngsi-ld/v1/entities"
CITYOS = str(Path(sys.executable).parent / "cityos")
GAUGE = "urn:ngsi-ld:WaterObserved:sano-akiyama-ohashi"


def test_demo_no_serve_loads_sano_and_is_idempotent(tmp_path: Path) -> None:
    runner = CliRunner(env=engine_env(tmp_path))
    n = len(sano.entities())
    for _ in range(2):
        result = runner.invoke(main, ["demo", "--no-serve", "--data-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert f"loaded {n} demo entities" in result.output
    with make_client(tmp_path) as c:
        gauges = c.get(E, params={"type": "WaterObserved", "count": "true"})
        assert gauges.headers["NGSILD-Results-Count"] == str(len(sano.GAUGES))
        near = c.get(
            E,
            params={
                "type": "EvacuationShelter",
                "georel": "near;maxDistance==2000",
                "geometry": "Point",
                "coordinates": "[139.5783,36.3144]",
                "lang": "ja",
                "options": "keyValues",
            },
        )
        names = [e["name"] for e in near.json()]
        assert "城北小学校" in names
        assert "葛生体育館" not in names  # about 10 km away
        devices = c.get("/iot/devices").json()
        assert devices["count"] == len(sano.GAUGES) + len(sano.RAIN_GAUGES) + len(sano.SHELTERS)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run `cityos demo --once` as a real process, twice on the same data; return data and log."""
    data = tmp_path_factory.mktemp("demo")
    out = ""
    for _ in range(2):  # the second run must start afresh
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
        env.update(engine_env(data))
        r = subprocess.run(
            [CITYOS, "demo", "--once", "--speed", "1000000", "--port", str(free_port()),
             "--data-dir", str(data)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        out = r.stdout
    return data, out


pytestmark = pytest.mark.server


def test_demo_once_replays_the_typhoon_over_http(demo_run: tuple[Path, str]) -> None:
    data, out = demo_run
    assert "秋山川 大橋" in out
    assert "氾濫危険水位に到達" in out
    assert "shelters open: 20 of 23" in out
    with make_client(data) as c:
        r = c.get(
            f"/ngsi-ld/v1/temporal/entities/{GAUGE}",
            params={"attrs": "waterLevel", "options": "temporalValues"},
        )
        assert r.status_code == 200, r.text
        values = r.json()["waterLevel"]["values"]
        # one run's readings only: the second run deleted the first one's history
        times = [t for _, t in values]
        assert len(times) == len(set(times)) > 50
        assert times[0] == "2019-10-11T21:00:00Z"  # 06:00 JST, the device's own clock
        assert max(v for v, _ in values) > 3.0  # above the danger line
        shelters = c.get(
            E, params={"type": "EvacuationShelter", "options": "keyValues", "limit": 100}
        ).json()
        opened = [s for s in shelters if s["openingStatus"] == "open"]
        assert len(opened) == 20
        assert all(s["occupancy"] > 0 for s in opened)


def test_demo_once_leaves_the_derived_flood_state(demo_run: tuple[Path, str]) -> None:
    # needs server-side derivations (lead): levelStatus/floodAlertLevel, Alert, crowdingLevel
    data, _ = demo_run
    with make_client(data) as c:
        r = c.get(
            f"/ngsi-ld/v1/temporal/entities/{GAUGE}",
            params={"attrs": "floodAlertLevel", "options": "temporalValues"},
        )
        assert r.status_code == 200, r.text
        assert max(v for v, _ in r.json()["floodAlertLevel"]["values"]) == 4
        alert = c.get(f"{E}/urn:ngsi-ld:Alert:flood-sano-akiyama-ohashi").json()
        assert alert["alertSource"]["object"] == GAUGE
        shelters = c.get(
            E, params={"type": "EvacuationShelter", "options": "keyValues", "limit": 100}
        ).json()
        crowding = {s.get("crowdingLevel") for s in shelters if s["openingStatus"] == "open"}
        assert crowding == {"vacant", "slightlyCrowded", "crowded", "full"}
        closed = [s for s in shelters if s["openingStatus"] == "closed"]
        assert closed
        assert all("crowdingLevel" not in s for s in closed)


def test_demo_urls_answer(demo_run: tuple[Path, str]) -> None:
    data, out = demo_run
    lines = [line for line in out.splitlines() if line.startswith("  ") and "http" in line]
    portal = [line for line in lines if "/public/" in line]
    assert len(portal) == 1
    pages = [line.split(": ", 1)[1] for line in lines if line.endswith("/dataset")]
    assert len(pages) == 1
    dcat = [line.split(": ", 1)[1] for line in lines if line.endswith("/catalog.ttl")]
    assert len(dcat) == 1
    urls = [line.split(": ", 1)[1] for line in lines if "?" in line and line not in portal]
    assert len(urls) == 6
    with make_client(data) as c:
        # the portal the demo points at is published from the replayed data
        page = c.get("/public/water-levels.html")
        assert page.status_code == 200
        assert "秋山川" in page.text
        assert c.get("/public/en/").status_code == 200
        for url in urls:
            path = url.split("/", 3)[3]
            r = c.get("/" + path.split("?")[0], params=httpx.QueryParams(path.split("?")[1]))
            assert r.status_code == 200, (url, r.text)
            assert r.json(), url
        # the catalog holds the city's live datasets, found in Japanese, page and DCAT too
        found = c.get("/api/3/action/package_search", params={"q": "避難"}).json()["result"]
        assert "sano-shelters-status" in {d["name"] for d in found["results"]}
        assert "河川水位" in c.get("/dataset").text
        assert "sano-river-levels" in c.get("/catalog.ttl").text


def test_demo_once_replays_the_typhoon_over_mqtt(tmp_path: Path) -> None:
    require_mosquitto()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    env.update(engine_env(tmp_path))
    env["CITYOS_MQTT_URL"] = f"mqtt://{MQTT_HOST}:{MQTT_PORT}"
    env["CITYOS_MQTT_GROUP"] = f"demo-test-{os.getpid()}"  # nobody else takes our messages
    r = subprocess.run(
        [CITYOS, "demo", "--once", "--speed", "1000000", "--port", str(free_port()),
         "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "highest alert level reached: 4" in r.stdout
    assert "shelters open: 20 of 23" in r.stdout
    with make_client(tmp_path) as c:
        history = c.get(
            f"/ngsi-ld/v1/temporal/entities/{GAUGE}",
            params={"attrs": "waterLevel", "options": "temporalValues", "lastN": "10000"},
        ).json()
        # every reading published reached the gauge: nothing lost on the way through Mosquitto
        sent = {r.entity_id: 0 for r in scenario.typhoon_2019().events if isinstance(r, Reading)}
        for reading in scenario.typhoon_2019().events:
            if isinstance(reading, Reading):
                sent[reading.entity_id] += 1
        assert len(history["waterLevel"]["values"]) == sent[GAUGE] > 50
