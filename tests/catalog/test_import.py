"""`cityos import` end to end: a real command on a temporary data dir, read back over the APIs."""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from conftest import database_exists, database_text, engine_env, make_client
from starlette.testclient import TestClient

CITYOS = str(Path(sys.executable).parent / "cityos")
API = "/api/3/action"
NGSI = "/ngsi-ld/v1/entities"

AED_HEADER = (
    "全国地方公共団体コード,ID,地方公共団体名,名称,名称_カナ,名称_英字,所在地_連結表記,緯度,経度,"
    "設置位置,電話番号,開始時間,終了時間,小児対応設備の有無"
)
AED_ROWS = (
    "92045,1,佐野市,佐野市役所,サノシヤクショ,Sano City Hall,栃木県佐野市高砂町1,36.3144,"
    "139.5783,1階ロビー,0283-24-5111,08:30,17:15,有",
    "92045,2,佐野市,城北地区公民館,ジョウホクチクコウミンカン,,栃木県佐野市若松町1-1,36.3201,"
    "139.5902,玄関,0283-22-0000,09:00,21:00,無",
    "92045,3,佐野市,佐野市運動公園,サノシウンドウコウエン,,栃木県佐野市赤坂町1,36.2990,"
    "139.5700,管理棟,0283-23-0000,09:00,17:00,",
)
HAZARDS = (
    "災害種別_洪水,災害種別_崖崩れ、土石流及び地滑り,災害種別_高潮,災害種別_地震,"
    "災害種別_津波,災害種別_大規模な火事,災害種別_内水氾濫,災害種別_火山現象"
)
OLD_SHELTERS = (
    "都道府県コード又は市区町村コード,NO,都道府県名,市区町村名,名称,名称_カナ,住所,方書,"
    f"緯度,経度,標高,電話番号,内線番号,{HAZARDS},指定避難所との重複,想定収容人数,"
    "対象となる町会・自治会,URL,備考"
)
SHELTER_ROWS = (
    "92045,S1,栃木県,佐野市,佐野小学校,サノショウガッコウ,栃木県佐野市高砂町2,,36.3150,139.5790,"
    "38.5,0283-22-1111,,1,,,1,,1,1,,1,500,高砂町;大橋町,,",
    "92045,S2,栃木県,佐野市,城山公園,ジョウザンコウエン,栃木県佐野市若松町3,,36.3170,139.5800,"
    "40,0283-22-2222,,,,,1,,1,,,,2000,若松町,,",
)


def csv_text(header: str, *rows: str) -> str:
    return "\r\n".join((header, *rows)) + "\r\n"


def cityos_import(path: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    env.update(engine_env(data))
    return subprocess.run(
        [CITYOS, "import", str(path), "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def action(c: TestClient, name: str, **params: Any) -> Any:
    r = c.post(f"{API}/{name}", json=params)
    body = r.json()
    assert body["success"], body
    return body["result"]


def records(c: TestClient, dataset: str) -> list[dict[str, Any]]:
    pkg = action(c, "package_show", id=dataset)
    csv_res = next(r for r in pkg["resources"] if r["format"] == "CSV")
    result = action(c, "datastore_search", resource_id=csv_res["id"], sort="ID")
    rows: list[dict[str, Any]] = result["records"]
    return rows


def entities(c: TestClient, type_: str, q: str | None = None) -> list[dict[str, Any]]:
    params = {"type": type_, "options": "keyValues", "limit": "100"}
    if q:
        params["q"] = q
    r = c.get(NGSI, params=params)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return sorted(found, key=lambda e: e["id"])


def test_an_imported_aed_file_is_a_dataset_a_table_and_entities(tmp_path: Path) -> None:
    # UTF-8 with BOM, as Excel writes "CSV UTF-8"; every code lost its leading zero
    src = write(tmp_path / "aed.csv", codecs.BOM_UTF8 + csv_text(AED_HEADER, *AED_ROWS).encode())
    data = tmp_path / "data"
    done = cityos_import(src, data, "--dataset", "aed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "read 3 rows, imported 3, skipped 0; 0 errors, 3 repairs" in done.stdout
    assert "encoding UTF-8 (BOM付き / with BOM)" in done.stdout
    assert '"92045" -> "092045" (leading zero restored)' in done.stdout
    with make_client(data) as c:
        pkg = action(c, "package_show", id="092045-aed")
        assert pkg["title"] == "AED設置箇所一覧"
        assert pkg["organization"]["name"] == "sano-city"
        assert pkg["organization"]["title"] == "佐野市"
        assert pkg["license_id"] == "jp-pdl-1.0"
        assert {t["name"] for t in pkg["tags"]} >= {"AED", "自治体標準オープンデータセット"}
        formats = {r["format"]: r for r in pkg["resources"]}
        assert set(formats) == {"CSV", "JSON", "GeoJSON"}
        assert formats["CSV"]["datastore_active"] is True

        csv_file = c.get(formats["CSV"]["url"].split("8000", 1)[-1])
        assert csv_file.status_code == 200
        assert csv_file.content.startswith(codecs.BOM_UTF8)
        lines = csv_file.content.decode("utf-8-sig").splitlines()
        assert lines[0].startswith(
            "全国地方公共団体コード,ID,地方公共団体名,名称,名称_カナ,名称_英字"
        )
        assert lines[1].startswith("092045,1,佐野市,佐野市役所")
        geo = orjson.loads(c.get(formats["GeoJSON"]["url"].split("8000", 1)[-1]).content)
        assert geo["features"][0]["geometry"] == {
            "type": "Point",
            "coordinates": [139.5783, 36.3144],
        }

        rows = records(c, "092045-aed")
        assert [(r["ID"], r["全国地方公共団体コード"], r["緯度"]) for r in rows] == [
            ("1", "092045", 36.3144),
            ("2", "092045", 36.3201),
            ("3", "092045", 36.299),
        ]

        found = action(
            c,
            "datastore_search",
            resource_id=formats["CSV"]["id"],
            filters={"名称": "城北地区公民館"},
        )
        assert [r["所在地_連結表記"] for r in found["records"]] == ["栃木県佐野市若松町1-1"]
        types = {f["id"]: f["type"] for f in found["fields"]}
        assert (types["ID"], types["緯度"]) == ("text", "numeric")

        aeds = entities(c, "PointOfInterest", 'category=="defibrillator"')
        assert [e["id"] for e in aeds] == [
            "urn:ngsi-ld:PointOfInterest:092045-aed-1",
            "urn:ngsi-ld:PointOfInterest:092045-aed-2",
            "urn:ngsi-ld:PointOfInterest:092045-aed-3",
        ]
        hall = aeds[0]
        assert hall["name"] == {
            "languageMap": {"ja": "AED 佐野市役所", "en": "AED, Sano City Hall"}
        }
        assert hall["location"] == {"type": "Point", "coordinates": [139.5783, 36.3144]}
        assert hall["description"] == "1階ロビー"
        assert hall["address"]["streetAddress"] == "栃木県佐野市高砂町1"


def test_a_refused_file_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = write(tmp_path / "aed.csv", csv_text(AED_HEADER, *AED_ROWS).encode())
    assert cityos_import(good, data, "--dataset", "aed").returncode == 0
    before = database_text(data)

    rows = list(AED_ROWS[:2])
    rows[1] = rows[1].replace("36.3201,139.5902", "139.5902,36.3201")  # swapped
    broken = write(tmp_path / "aed2.csv", csv_text(AED_HEADER, *rows).encode())
    done = cityos_import(broken, data, "--dataset", "aed")
    assert done.returncode == 1
    assert (
        'error: line 3, column 緯度 (lat): "139.5902" is a longitude: '
        "latitude and longitude look swapped (write 緯度 36.3201, 経度 139.5902)"
    ) in done.stdout
    assert "refused: nothing was imported" in done.stdout
    assert database_text(data) == before
    with make_client(data) as c:
        assert [r["ID"] for r in records(c, "092045-aed")] == ["1", "2", "3"]
        assert len(entities(c, "PointOfInterest")) == 3


def test_a_file_missing_a_required_column_is_refused_naming_it(tmp_path: Path) -> None:
    header = AED_HEADER.replace("名称,", "", 1)
    rows = [r.replace("佐野市役所,", "").replace("城北地区公民館,", "") for r in AED_ROWS[:2]]
    src = write(tmp_path / "aed.csv", csv_text(header, *rows).encode())
    data = tmp_path / "data"
    done = cityos_import(src, data, "--dataset", "aed", "--partial")
    assert done.returncode == 1
    assert "エラー 1行目 「名称」: 必須の列「名称」がありません" in done.stdout
    assert 'error: line 1, column 名称 (name): the required column "名称" (name) is missing' in (
        done.stdout
    )
    assert not data.exists()  # not even a database was created
    assert not database_exists(data)


def test_partial_imports_the_good_rows_only(tmp_path: Path) -> None:
    rows = list(AED_ROWS)
    rows[2] = rows[2].replace("17:00", "25:00")
    src = write(tmp_path / "aed.csv", csv_text(AED_HEADER, *rows).encode())
    data = tmp_path / "data"
    refused = cityos_import(src, data, "--dataset", "aed")
    assert refused.returncode == 1
    assert (
        "エラー 4行目 「終了時間」: 「25:00」はありえない時刻です（00:00〜24:00）" in refused.stdout
    )
    assert "--partial" in refused.stdout

    done = cityos_import(src, data, "--dataset", "aed", "--partial")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "read 3 rows, imported 2, skipped 1; 1 errors" in done.stdout
    with make_client(data) as c:
        assert [r["ID"] for r in records(c, "092045-aed")] == ["1", "2"]
        assert len(entities(c, "PointOfInterest")) == 2


def test_old_cp932_shelters_become_evacuation_shelters_and_reimport_replaces(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    src = write(tmp_path / "shelters.csv", csv_text(OLD_SHELTERS, *SHELTER_ROWS).encode("cp932"))
    done = cityos_import(src, data, "--dataset", "evacuation_space")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "encoding Shift_JIS (cp932)" in done.stdout
    with make_client(data) as c:
        pkg = action(c, "package_show", id="092045-evacuation-space")
        assert pkg["title"] == "指定緊急避難場所一覧"
        shelters = entities(c, "EvacuationShelter")
        assert [s["name"]["languageMap"]["ja"] for s in shelters] == ["佐野小学校", "城山公園"]
        school = shelters[0]
        assert school["hazardTypes"] == ["flood", "earthquake", "largeFire", "inlandFlooding"]
        assert school["nameKana"] == "サノショウガッコウ"
        portal = c.get("/public/shelters.json")
        assert portal.status_code == 200
        assert "佐野小学校" in portal.text
        assert "城山公園" in portal.text
        assert school["capacity"] == 500
        assert school["openingStatus"] == "closed"
        # the shelter opens during a typhoon...
        r = c.patch(
            f"{NGSI}/{school['id']}/attrs",
            json={"openingStatus": {"type": "Property", "value": "open"}},
        )
        assert r.status_code == 204, r.text
        resources = {r["format"]: r["id"] for r in pkg["resources"]}

    # ...and the city re-imports the list with one site removed and a capacity changed
    rows = [SHELTER_ROWS[0].replace(",500,", ",450,")]
    src.write_bytes(csv_text(OLD_SHELTERS, *rows).encode("cp932"))
    done = cityos_import(src, data, "--dataset", "evacuation_space")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 entities written, 1 removed" in done.stdout
    with make_client(data) as c:
        pkg = action(c, "package_show", id="092045-evacuation-space")
        assert {r["format"]: r["id"] for r in pkg["resources"]} == resources  # same URLs
        assert [r["ID"] for r in records(c, "092045-evacuation-space")] == ["S1"]
        [school] = entities(c, "EvacuationShelter")
        assert school["capacity"] == 450
        assert school["openingStatus"] == "open"  # live state kept


def test_a_utf16_toilet_list_is_catalog_only(tmp_path: Path) -> None:
    header = "全国地方公共団体コード,ID,名称,所在地_連結表記,設置位置,緯度,経度,利用開始時間"
    rows = ("092045,T1,駅前公衆トイレ,栃木県佐野市若松町1,駅前広場,36.3160,139.5800,06:00",)
    src = write(tmp_path / "toilets.csv", csv_text(header, *rows).encode("utf-16-le"))
    data = tmp_path / "data"
    done = cityos_import(src, data, "--dataset", "public_toilet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "encoding UTF-16LE (BOMなし / without BOM)" in done.stdout
    with make_client(data) as c:
        assert [r["名称"] for r in records(c, "092045-public-toilet")] == ["駅前公衆トイレ"]
        assert entities(c, "PointOfInterest") == []


def test_dry_run_and_usage_errors_write_nothing(tmp_path: Path) -> None:
    src = write(tmp_path / "aed.csv", csv_text(AED_HEADER, *AED_ROWS).encode())
    data = tmp_path / "data"
    dry = cityos_import(src, data, "--dataset", "aed", "--dry-run")
    assert dry.returncode == 0
    assert "dry run: read 3 rows, 3 importable" in dry.stdout
    assert cityos_import(src, data, "--dataset", "shelters").returncode == 2
    assert cityos_import(src, data, "--dataset", "aed", "--organization", "佐野").returncode == 2
    assert not data.exists()
    assert not database_exists(data)
