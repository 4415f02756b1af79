"""`cityos demo` loads Sano's river gauges and shelters, and loading twice changes nothing."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from conftest import make_client

from cityos.cli import main

E = "/ngsi-ld/v1/entities"


def test_demo_loads_sano_and_is_idempotent(tmp_path: Path) -> None:
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(main, ["demo", "--no-serve", "--data-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "loaded 9 demo entities" in result.output
    with make_client(tmp_path) as c:
        gauges = c.get(E, params={"type": "WaterObserved", "count": "true"})
        assert gauges.headers["NGSILD-Results-Count"] == "5"
        near = c.get(
            E,
            params={
                "type": "PointOfInterest",
                "georel": "near;maxDistance==2000",
                "geometry": "Point",
                "coordinates": "[139.5783,36.3144]",
                "lang": "ja",
                "options": "keyValues",
            },
        )
        names = [e["name"] for e in near.json()]
        assert names[0] == "佐野市役所"
        assert "城北小学校 体育館" in names
        assert "葛生体育館" not in names  # about 10 km away


def test_demo_data_has_history(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--no-serve", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with make_client(tmp_path) as c:
        r = c.get(
            "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:sano-akiyama-ohashi",
            params={"attrs": "waterLevel", "options": "temporalValues"},
        )
        assert r.status_code == 200, r.text
        assert [v[0] for v in r.json()["waterLevel"]["values"]] == [1.42]
