"""The real ckanapi client (CLI and RemoteCKAN) against a real `cityos serve` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ckanapi import NotAuthorized, NotFound, RemoteCKAN, SearchQueryError, ValidationError
from conftest import make_token, running_server

pytestmark = pytest.mark.server
BIN = Path(sys.executable).parent
# ckanapi's dump starts its workers as `ckanapi` found on PATH
ENV = {**os.environ, "CITYOS_AUTH": "off", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("ckanapi")
    token = make_token(data)
    with running_server(data, ENV) as base:
        with RemoteCKAN(base, apikey=token) as ck:
            ck.action.organization_create(name="sano", title="佐野市")
            for name, title, tags in (
                ("evacuation-sites", "指定緊急避難場所一覧 佐野市文化会館ほか", ["避難", "防災"]),
                ("aed-locations", "AED設置箇所一覧", ["AED", "防災"]),
                ("flood-levels", "秋山川 水位", ["河川"]),
            ):
                ck.action.package_create(
                    name=name,
                    title=title,
                    owner_org="sano",
                    license_id="jp-pdl-1.0",
                    tags=[{"name": t} for t in tags],
                )
        yield base, token


def ckanapi(*args: str) -> str:
    out = subprocess.run(
        [str(BIN / "ckanapi"), *args], env=ENV, capture_output=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def test_ckanapi_action_package_search(server: tuple[str, str]) -> None:
    base, _ = server
    out = ckanapi("action", "package_search", "-r", base, "-j", "q=避難", 'facet.field:["tags"]')
    result = json.loads(out)
    assert result["count"] == 1
    assert [d["name"] for d in result["results"]] == ["evacuation-sites"]
    assert result["facets"]["tags"] == {"避難": 1, "防災": 1}
    out = ckanapi("action", "package_search", "-r", base, "-j", "-g", "q=文化会館", "rows:1")
    assert json.loads(out)["results"][0]["name"] == "evacuation-sites"


def test_ckanapi_dump_datasets_all(server: tuple[str, str]) -> None:
    base, _ = server
    lines = ckanapi("dump", "datasets", "--all", "-r", base, "-p", "1").splitlines()
    dumped = [json.loads(line) for line in lines if line.strip()]
    assert sorted(d["name"] for d in dumped) == [
        "aed-locations",
        "evacuation-sites",
        "flood-levels",
    ]
    assert all(d["organization"]["name"] == "sano" for d in dumped)


def test_ckanapi_search_datasets(server: tuple[str, str]) -> None:
    base, _ = server
    lines = ckanapi("search", "datasets", "-r", base, "q=tags:防災").splitlines()
    assert sorted(json.loads(x)["name"] for x in lines if x.strip()) == [
        "aed-locations",
        "evacuation-sites",
    ]


def test_remoteckan_creates_a_dataset_and_uploads_a_resource(
    server: tuple[str, str], tmp_path: Path
) -> None:
    base, token = server
    csv = tmp_path / "避難所.csv"
    csv.write_bytes("名称,住所\n佐野市文化会館,佐野市高砂町\n".encode())
    with RemoteCKAN(base, apikey=token) as ck:
        pkg = ck.action.package_create(name="shelters-upload", title="避難所", owner_org="sano")
        with csv.open("rb") as f:
            res = ck.action.resource_create(package_id=pkg["id"], name="一覧", upload=f)
        assert res["url_type"] == "upload"
        assert res["format"] == "CSV"
        import httpx

        got = httpx.get(res["url"], timeout=10)
        assert got.status_code == 200
        assert got.content == csv.read_bytes()
        shown = ck.action.package_show(id="shelters-upload")
        assert shown["resources"][0]["id"] == res["id"]
        with pytest.raises(NotFound):
            ck.action.package_show(id="no-such-dataset")
        with pytest.raises(ValidationError):
            ck.action.package_create(name="shelters-upload")
        with pytest.raises(SearchQueryError):
            ck.action.package_search(q="(unclosed")
        ck.action.package_delete(id="shelters-upload")
    with RemoteCKAN(base) as anonymous, pytest.raises(NotAuthorized):
        anonymous.action.package_create(name="nope-nope")
