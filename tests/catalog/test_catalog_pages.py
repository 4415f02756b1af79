"""The catalog's pages for people: search with facets, dataset pages, organizations.

(Named test_catalog_pages.py: tests/portal/test_pages.py already owns the module name.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client
from starlette.testclient import TestClient

ACTION = "/api/3/action/"
PDL = "https://www.digital.go.jp/resources/open_data/public_data_license_v1.0"
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as client:
        assert client.portal is not None
        token = client.portal.call(client.app.catalog.meta.create_token, "admin")  # type: ignore[attr-defined]
        client.headers["Authorization"] = token
        call(client, "organization_create", name="sano", title="佐野市")
        call(client, "organization_create", name="tochigi", title="栃木県")
        yield client


def call(client: TestClient, action: str, **params: Any) -> Any:
    body = client.post(ACTION + action, json=params).json()
    assert body["success"], body
    return body["result"]


def create(client: TestClient, name: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "title": name, "owner_org": "sano", **extra}
    result: dict[str, Any] = call(client, "package_create", **params)
    return result


def page(client: TestClient, path: str, status: int = 200, **params: Any) -> str:
    r = client.get(path, params=params) if params else client.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    return r.text


class Links(HTMLParser):
    """Collect the page's links: (text, href)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append(("".join(self._text).strip(), self._href))
            self._href = None


def links(html: str) -> list[tuple[str, str]]:
    parser = Links()
    parser.feed(html)
    return parser.links


def link(html: str, text: str) -> str:
    found = [href for t, href in links(html) if t == text]
    assert found, f"no link {text!r} in {links(html)}"
    return found[0]


def seed(client: TestClient) -> None:
    create(
        client,
        "shelters",
        title="指定緊急避難場所一覧",
        notes="佐野市の指定緊急避難場所",
        tags=[{"name": "防災"}, {"name": "避難"}],
        license_id="jp-pdl-1.0",
        resources=[{"name": "CSV", "url": "https://example.org/s.csv", "format": "CSV"}],
    )
    create(
        client,
        "aed",
        title="AED設置箇所一覧",
        tags=[{"name": "防災"}, {"name": "健康"}],
        license_id="cc-by-4.0",
        resources=[{"name": "JSON", "url": "https://example.org/a.json", "format": "JSON"}],
    )
    create(client, "tourism", title="観光施設一覧", owner_org="tochigi", tags=[{"name": "観光"}])


def test_search_page_lists_datasets_with_facet_counts(site: TestClient) -> None:
    seed(site)
    html = page(site, "/dataset")
    assert '<html lang="ja">' in html
    for title in ("指定緊急避難場所一覧", "AED設置箇所一覧", "観光施設一覧"):
        assert title in html
    assert "<strong>3</strong> 件" in html
    facet_text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    for label, count in (("防災", 2), ("佐野市", 2), ("栃木県", 1), ("CSV", 1), ("JSON", 1)):
        assert f"{label} {count}" in facet_text, label
    # the machine twins: the same search from the API and the DCAT catalog
    assert "/api/3/action/package_search?" in html
    assert 'href="/catalog.ttl"' in html


def test_facet_link_adds_an_fq_term_and_filter_can_be_removed(site: TestClient) -> None:
    seed(site)
    tag = link(page(site, "/dataset"), "防災")
    assert "fq=tags" in tag
    html = page(site, tag)
    assert "指定緊急避難場所一覧" in html
    assert "AED設置箇所一覧" in html
    assert "観光施設一覧" not in html
    # a second facet narrows further (AND)
    narrowed = page(site, link(html, "JSON"))
    assert "AED設置箇所一覧" in narrowed
    assert "指定緊急避難場所一覧" not in narrowed
    assert "<strong>1</strong> 件" in narrowed
    # the chip of the tag filter removes only that filter
    remove = link(narrowed, "タグ: 防災 ×")
    back = page(site, remove)
    assert "<strong>1</strong> 件" in back  # the format filter stays
    assert "タグ: 防災" not in back


def test_keyword_search_and_paging(site: TestClient) -> None:
    for n in range(25):
        create(site, f"park-{n:02d}", title=f"公園 {n:02d}", tags=[{"name": "公園"}])
    create(site, "library", title="図書館一覧")
    html = page(site, "/dataset", q="公園")
    assert "<strong>25</strong> 件" in html
    assert "図書館一覧" not in html
    assert html.count('<li>\n<h3><a href="/dataset/park-') == 20
    second = page(site, link(html, "次へ ›"))
    assert second.count('<h3><a href="/dataset/park-') == 5


def test_bad_search_is_a_clear_400(site: TestClient) -> None:
    html = page(site, "/dataset", status=400, fq="nosuchfield:x")
    assert "検索できませんでした" in html
    assert "nosuchfield" in html
    html = page(site, "/dataset", status=400, page="zero")
    assert "page" in html


def test_dataset_page_shows_resources_licence_and_schema_org(site: TestClient) -> None:
    seed(site)
    html = page(site, "/dataset/shelters")
    assert "<h1>指定緊急避難場所一覧</h1>" in html
    assert "佐野市の指定緊急避難場所" in html
    assert link(html, "佐野市") == "/organization/sano"
    licence = [href for text, href in links(html) if "PDL 1.0" in text]
    assert licence == [PDL]
    assert any(href == "https://example.org/s.csv" for _, href in links(html))
    (raw,) = re.findall(r'<script type="application/ld\+json">(.*?)</script>', html, re.S)
    doc = json.loads(raw)
    assert doc["@type"] == "Dataset"
    assert doc["name"] == "指定緊急避難場所一覧"
    assert doc["license"] == PDL
    assert set(doc["keywords"]) == {"防災", "避難"}
    assert doc["distribution"][0]["contentUrl"] == "https://example.org/s.csv"
    # the machine twins
    pkg_id = call(site, "package_show", id="shelters")["id"]
    for twin in ("package_show?id=", ".ttl", ".jsonld", ".rdf"):
        assert any(twin in href and pkg_id in href for _, href in links(html)), twin


def test_dataset_page_previews_datastore_rows_and_maps_points(site: TestClient) -> None:
    pkg = create(site, "aed-points", title="AED設置箇所", license_id="cc-by-4.0")
    records = [
        {"名称": f"施設{n}", "緯度": 36.30 + n / 1000, "経度": 139.57 + n / 1000} for n in range(25)
    ]
    call(
        site,
        "datastore_create",
        resource={"package_id": pkg["id"], "name": "AED表"},
        fields=[
            {"id": "名称", "type": "text"},
            {"id": "緯度", "type": "numeric"},
            {"id": "経度", "type": "numeric"},
        ],
        records=records,
    )
    html = page(site, "/dataset/aed-points")
    (table,) = re.findall(r"<table>.*?</table>", html, re.S)
    assert table.count("<tr>") == 21  # the header and the first 20 rows
    assert '<th scope="col">名称</th>' in table
    assert "施設0" in table
    assert "施設24" not in table
    assert "全 25 行" in html
    (svg,) = re.findall(r"<svg .*?</svg>", html, re.S)
    assert svg.count("<circle") == 25  # every point is on the map, not only the previewed
    assert "施設24" in svg
    assert "<script src" not in html  # no script needed, nothing loaded from elsewhere


def test_hostile_title_is_escaped_everywhere(site: TestClient) -> None:
    create(site, "hostile", title=HOSTILE, notes=HOSTILE, tags=[{"name": "防災"}])
    for path in ("/dataset", "/dataset/hostile", "/organization/sano"):
        html = page(site, path)
        assert HOSTILE not in html
        assert "&lt;script&gt;" in html
    html = page(site, "/dataset/hostile")
    (raw,) = re.findall(r'<script type="application/ld\+json">(.*?)</script>', html, re.S)
    assert json.loads(raw)["name"] == HOSTILE  # intact as data, inert in the page


def test_javascript_urls_never_become_links(site: TestClient) -> None:
    pkg = create(site, "sneaky", title="怪しいリンク")
    # a resource whose URL is a script: refused by the API or stored but never linked
    r = site.post(
        ACTION + "resource_create",
        json={"package_id": pkg["id"], "name": "x", "url": "javascript:alert(1)"},
    )
    html = page(site, "/dataset/sneaky")
    assert r.status_code in (200, 409)
    assert all(not href.lower().startswith("javascript:") for _, href in links(html))


def test_unknown_and_private_dataset_pages_are_404(site: TestClient) -> None:
    create(site, "secret", title="非公開データ", private=True)
    assert "データセットが見つかりません" in page(site, "/dataset/nope", status=404)
    assert "非公開データ" not in page(site, "/dataset/secret", status=404)
    assert "非公開データ" not in page(site, "/dataset")


def test_dcat_suffix_wins_over_the_dataset_page(site: TestClient) -> None:
    create(site, "shelters", title="避難所")
    r = site.get("/dataset/shelters.ttl")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/turtle")


def test_organization_pages(site: TestClient) -> None:
    seed(site)
    html = page(site, "/organization")
    assert link(html, "佐野市") == "/organization/sano"
    html = page(site, "/organization/sano")
    assert "<h1>佐野市</h1>" in html
    assert "AED設置箇所一覧" in html
    assert "観光施設一覧" not in html
    page(site, "/organization/nowhere", status=404)


def test_stylesheet_is_served_and_pages_load_nothing_external(site: TestClient) -> None:
    seed(site)
    r = site.get("/catalog/assets/catalog.css")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/css")
    assert site.get("/catalog/assets/nope.css").status_code == 404
    for path in ("/dataset", "/dataset/aed", "/organization"):
        html = page(site, path)
        assert '<meta name="viewport"' in html
        assert not re.search(
            r'(src|href)="(https?:)?//(?!example\.org|www\.digital|creative)', html
        )


# -- in a real browser ----------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_pages_fit_a_small_phone_in_a_real_browser(site: TestClient) -> None:
    """Chromium at 360 px: nothing wider than the screen, nothing fetched from elsewhere."""
    try:
        from playwright.sync_api import Route, sync_playwright
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"playwright is not installed ({exc})")
    if not Path(CHROMIUM).exists():
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CITYOS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and CITYOS_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    seed(site)
    pkg = create(site, "aed-points", title="AED設置箇所")
    records = [
        {"名称": f"施設{n}", "緯度": 36.3 + n / 300, "経度": 139.5 + n / 200} for n in range(30)
    ]
    call(
        site,
        "datastore_create",
        resource={"package_id": pkg["id"], "name": "AED表"},
        fields=[{"id": k, "type": "text" if k == "名称" else "numeric"} for k in records[0]],
        records=records,
    )
    origin = "http://catalog.test"
    requested: list[str] = []

    def serve(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if not url.startswith(origin):
            route.abort()
            return
        r = site.get(url[len(origin) :])
        route.fulfill(status=r.status_code, headers=dict(r.headers), body=r.content)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            tab = browser.new_page(viewport={"width": 360, "height": 740})
            tab.route("**/*", serve)
            for path in ("/dataset", "/dataset/aed-points", "/dataset/shelters", "/organization"):
                tab.goto(origin + path)
                width = tab.evaluate("document.documentElement.scrollWidth")
                assert width <= 360, f"{path} is {width} px wide"
                assert tab.evaluate("getComputedStyle(document.body).margin") == "0px"  # the CSS
            tab.goto(origin + "/dataset/aed-points")
            box = tab.locator("svg.map").bounding_box()
            assert box is not None
            assert 0 < box["width"] <= 360
            assert tab.locator("svg.map circle").count() == 30
        finally:
            browser.close()
    assert requested
    assert all(url.startswith(origin) for url in requested), requested


def test_the_catalog_title_setting_names_pages_dcat_and_status(tmp_path: Path) -> None:
    title = "佐野市オープンデータカタログ"
    with make_client(tmp_path, catalog_title=title) as c:
        page = c.get("/dataset").text
        assert page.count(title) >= 2  # the <title> and the site header
        status = c.get("/api/3/action/status_show").json()["result"]
        assert status["site_title"] == title
        assert title in c.get("/catalog.ttl").text
