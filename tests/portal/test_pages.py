"""The resident site as a resident sees it, built from entities written through the NGSI-LD API."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import make_client, storage_of

from cityos.demo import sano
from cityos.portal import build_site
from cityos.portal import data as portal_data
from cityos.portal.data import PortalData
from cityos.portal.render import render_page
from cityos.portal.svg import LEVEL_COLOURS, contrast

OPS = "/ngsi-ld/v1/entityOperations"
T0 = datetime(2019, 10, 12, 10, 50, tzinfo=UTC)  # 19:50 JST; twelve readings end at 21:40 JST
STEPS = 12
AKASAKA = "urn:ngsi-ld:WaterObserved:sano-akiyama-akasaka"  # lines 1.6 / 2.4 / 2.8 / 3.2
OHASHI = "urn:ngsi-ld:WaterObserved:sano-akiyama-ohashi"  # lines 1.5 / 2.1 / 2.6 / 3.0
TONARA = "urn:ngsi-ld:WaterObserved:sano-hatagawa-tonara"  # never reports
OPEN = {  # shelter slug -> occupancy; 280 * 35 % slightly crowded, 600 * 83 % full, 60 * 8 % vacant
    "johoku-es": 100,
    "city-gym": 500,
    "hoken-center": 5,
}
DEVICE_ALERT = "urn:ngsi-ld:Alert:device-sano-wl-hatagawa-tonara"


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _reading(eid: str, level: float, at: datetime) -> dict[str, Any]:
    return {
        "id": eid,
        "type": "WaterObserved",
        "waterLevel": {
            "type": "Property",
            "value": level,
            "unitCode": "MTR",
            "observedAt": _stamp(at),
        },
    }


def _load(data_dir: Path) -> None:
    """Write the Sano data set, a rising and a falling river, open shelters and a device alert."""
    with make_client(data_dir) as client:
        r = client.post(f"{OPS}/upsert", json=sano.entities())
        assert r.status_code in (201, 204), r.text
        for i in range(STEPS):
            at = T0 + timedelta(minutes=10 * i)
            batch = [
                _reading(AKASAKA, round(2.20 + 0.10 * i, 2), at),  # 2.20 -> 3.30: level 4
                _reading(OHASHI, round(2.80 - 0.01 * i, 2) if i < 11 else 2.65, at),  # level 3
            ]
            batch += [
                _reading(g.id, 0.50, at)
                for g in sano.GAUGES
                if g.id not in (AKASAKA, OHASHI, TONARA)
            ]
            r = client.post(f"{OPS}/update", json=batch)
            assert r.status_code == 204, r.text
        opened = _stamp(T0 + timedelta(minutes=20))
        counted = _stamp(T0 + timedelta(minutes=100))
        shelters = [
            {
                "id": f"urn:ngsi-ld:EvacuationShelter:sano-{slug}",
                "type": "EvacuationShelter",
                "openingStatus": {"type": "Property", "value": "open", "observedAt": opened},
                "occupancy": {"type": "Property", "value": n, "observedAt": counted},
            }
            for slug, n in OPEN.items()
        ]
        r = client.post(f"{OPS}/update", json=shelters)
        assert r.status_code == 204, r.text
        issued = {"@type": "DateTime", "@value": _stamp(T0 - timedelta(minutes=5))}
        device = {
            "id": DEVICE_ALERT,
            "type": "Alert",
            "category": {"type": "Property", "value": "deviceHealth"},
            "severity": {"type": "Property", "value": "medium"},
            "dateIssued": {"type": "Property", "value": issued},
            "description": {
                "type": "Property",
                "value": "機器 sano-wl-hatagawa-tonara から受信がありません / "
                "no data from device sano-wl-hatagawa-tonara",
            },
        }
        r = client.post("/ngsi-ld/v1/entities", json=device)
        assert r.status_code == 201, r.text


async def _build(db: Path, **kwargs: Any) -> dict[str, bytes]:
    store = storage_of(db.parent)  # the engine the data was loaded into
    await store.start()
    try:
        return await build_site(store, **kwargs)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("portal")
    _load(data_dir)
    return data_dir / "cityos.db"


@pytest.fixture(scope="module")
def site(db: Path) -> dict[str, bytes]:
    return asyncio.run(_build(db, tile_url="https://tiles.example/{z}/{x}/{y}.png"))


def text(site: dict[str, bytes], path: str) -> str:
    return site[path].decode("utf-8")


def plain(html: str) -> str:
    """Return the page's text with tags removed and whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


HTML_PAGES = [
    f"{prefix}{page}.html"
    for prefix in ("", "en/")
    for page in ("index", "water-levels", "shelters", "alerts", "lite")
]


class Outline(HTMLParser):
    """Collect what accessibility checks need: headings, images, scripts, styles, badges."""

    def __init__(self) -> None:
        super().__init__()
        self.lang: str | None = None
        self.headings: list[int] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.svg_titles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "html":
            self.lang = found.get("lang")
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        self.tags.append((tag, found))

    def handle_endtag(self, tag: str) -> None:
        pass


def outline(html: str) -> Outline:
    parser = Outline()
    parser.feed(html)
    return parser


# -- what the pages say ------------------------------------------------------------------------
def test_top_page_leads_with_the_highest_alert_level(site: dict[str, bytes]) -> None:
    ja = text(site, "index.html")
    main = ja.split('<h2 id="now">')[1].split("</section>")[0]
    assert 'style="background:#aa00aa;color:#ffffff">警戒レベル4相当</p>' in main
    assert "危険な場所にいる人は全員避難する目安です。" in main
    assert "秋山川 赤坂町" in main
    assert "開設中: 3 / 23" in plain(ja)
    en = plain(text(site, "en/index.html"))
    assert "Highest alert level now Alert level 4 equivalent" in en
    assert "Open: 3 / 23" in en
    for page in ("water-levels.html", "shelters.html", "alerts.html", "lite.html"):
        assert f'href="{page}"' in ja


def test_water_levels_show_level_time_trend_and_lines_most_dangerous_first(
    site: dict[str, bytes],
) -> None:
    ja = text(site, "water-levels.html")
    names = re.findall(r'<h2 id="urn-ngsi-ld-WaterObserved-[^"]+">([^<]+)</h2>', ja)
    assert names[:2] == ["秋山川 赤坂町", "秋山川 大橋"]
    assert names[-1] == "旗川 戸奈良"  # no reading yet: last
    assert len(names) == 8
    akasaka = ja.split("<h2 id=")[1]
    words = plain(akasaka)
    assert "警戒レベル4相当 氾濫危険水位を超過" in words
    assert "3.30 m (2019年10月12日 21:40)" in words
    assert "↑ 上昇中 (前回 3.20 m)" in words
    assert "氾濫危険水位（3.20 m）を 0.10 m 超えています" in words
    assert "↓ 下降中 (前回 2.70 m)" in plain(ja.split("<h2 id=")[2])
    assert "観測値がありません" in plain(ja.split("<h2 id=")[-1])
    en = plain(text(site, "en/water-levels.html"))
    assert "3.30 m (12 Oct 2019 21:40 JST)" in en
    assert "0.10 m above the flood danger level (3.20 m)" in en


def test_band_chart_is_an_accessible_server_side_svg(site: dict[str, bytes]) -> None:
    akasaka = text(site, "water-levels.html").split("<h2 id=")[1]
    chart = re.search(r"<svg.*?</svg>", akasaka)
    assert chart is not None
    svg = chart.group(0)
    assert 'role="img"' in svg
    assert 'aria-label="秋山川 赤坂町の水位グラフ: 現在 3.30 m' in svg
    assert "<title>秋山川 赤坂町の水位グラフ" in svg
    for colour in ("#f2e700", "#ff2800", "#aa00aa"):  # bands of levels 2, 3 and 4
        assert f'fill="{colour}"' in svg
    points = re.findall(r'<polyline points="([^"]+)"', svg)[0].split()
    assert len(points) == 4  # twelve 10-minute readings: the highest of each 30-minute slot
    ys = [float(p.split(",")[1]) for p in points]
    assert ys == sorted(ys, reverse=True)  # a rising river: the line climbs (SVG y grows down)
    marker = re.search(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)
    assert marker is not None
    assert float(marker.group(1)) == ys[-1]  # the level marker sits at the last reading


def test_shelters_show_opening_crowding_in_words_and_suitability(site: dict[str, bytes]) -> None:
    ja = text(site, "shelters.html")
    items = {
        plain(li).split(" ", 2)[1]: li for li in re.findall(r"<li data-lat.*?</li>", ja, flags=re.S)
    }
    assert len(items) == 23
    johoku = plain(items["城北小学校"])
    assert "開設中" in johoku
    assert "混雑: やや混雑" in johoku
    assert "避難者 100 / 収容 280人" in johoku
    assert "じょうほくしょうがっこう" in johoku
    assert "洪水" in johoku
    assert "ペット同行: 不可" in johoku
    assert "バリアフリー: あり" in johoku
    gym = plain(items["佐野市民体育館"])
    assert "混雑: 満（受け入れ困難）" in gym
    assert "洪水時は使えません" in gym
    assert "未開設" in plain(items["田沼小学校"])
    assert "混雑:" not in plain(items["田沼小学校"])
    assert "栃木県佐野市植下町" in johoku
    # the list is in kana order and works without script; the script only adds extras
    order = [plain(li).split(" ", 2)[1] for li in re.findall(r"<li data-lat.*?</li>", ja, re.S)]
    assert order[:2] == ["赤見小学校", "赤見地区公民館"]  # あかみし… before あかみち…
    assert '<button type="button" id="sort-distance" hidden>' in ja
    assert 'data-tile-url="https://tiles.example/{z}/{x}/{y}.png"' in ja
    assert '<script src="assets/portal.js" defer></script>' in ja
    map_svg = re.search(r'<svg[^>]*class="map".*?</svg>', ja, re.S)
    assert map_svg is not None
    assert map_svg.group(0).count("<circle") == 23
    assert map_svg.group(0).count("<polygon") == 8


def test_alerts_newest_first_with_japanese_then_english(site: dict[str, bytes]) -> None:
    ja = text(site, "alerts.html")
    listed = ja.split('<ol class="alerts">')[1].split("</ol>")[0]
    items = re.findall(r"<li>.*?</li>", listed, flags=re.S)
    times = [re.search(r'datetime="([^"]+)"', li).group(1) for li in items]  # type: ignore[union-attr]
    assert times == sorted(times, reverse=True)
    assert len(items) == 3  # akasaka and ohashi flood alerts, and the silent device
    first = plain(items[0])
    assert first.index("秋山川 赤坂町: 氾濫危険水位に到達") < first.index(
        "Akiyama River at Akasaka: flood danger level reached"
    )
    assert "機器の異常" in plain(items[-1])


def test_lite_page_is_small_text_only_and_complete(site: dict[str, bytes]) -> None:
    for path, words in (
        ("lite.html", ("警戒レベル4相当", "城北小学校: やや混雑 (100/280)", "秋山川 大橋")),
        ("en/lite.html", ("Alert level 4 equivalent", "Johoku Elementary School", "Full")),
    ):
        body = text(site, path)
        assert len(site[path]) < 10 * 1024
        assert "<script" not in body
        assert "<img" not in body
        assert 'rel="stylesheet"' not in body
        assert not re.search(r'<link[^>]*href="(?!data:)', body)  # nothing fetched
        for word in words:
            assert word in body, (path, word)
    assert "旗川 戸奈良: — 変化不明, 観測値がありません" in text(site, "lite.html")


# -- machine twins ---------------------------------------------------------------------------
def test_json_twins_hold_what_the_pages_show(site: dict[str, bytes]) -> None:
    levels = orjson.loads(site["water-levels.json"])
    assert levels["generatedFrom"] == "2019-10-12T12:40:00Z"  # the latest reading, not now
    assert levels["highestFloodAlertLevel"] == 4
    page = text(site, "water-levels.html")
    names = re.findall(r'<h2 id="urn-ngsi-ld-WaterObserved-[^"]+">([^<]+)</h2>', page)
    assert [g["name"]["ja"] for g in levels["gauges"]] == names
    first = levels["gauges"][0]
    assert list(first) == [
        "id",
        "name",
        "riverName",
        "waterLevel",
        "observedAt",
        "previousLevel",
        "trend",
        "referenceLevels",
        "levelStatus",
        "floodAlertLevel",
        "location",
        "history",
    ]
    assert (first["waterLevel"], first["observedAt"], first["trend"]) == (
        3.3,
        "2019-10-12T12:40:00Z",
        "rising",
    )
    shelters = orjson.loads(site["shelters.json"])
    assert shelters["openCount"] == 3
    assert len(shelters["shelters"]) == 23
    crowding = {s["name"]["ja"]: s["crowdingLevel"] for s in shelters["shelters"]}
    assert crowding["城北小学校"] == "slightlyCrowded"
    assert crowding["田沼小学校"] is None
    alerts = orjson.loads(site["alerts.json"])
    assert [a["id"] for a in alerts["alerts"]][-1] == DEVICE_ALERT
    assert len(alerts["alerts"]) == text(site, "alerts.html").count("<time ")


def test_english_pages_say_the_same_in_english(site: dict[str, bytes]) -> None:
    for page in ("index", "water-levels", "shelters", "alerts", "lite"):
        ja, en = text(site, f"{page}.html"), text(site, f"en/{page}.html")
        assert '<html lang="ja">' in ja
        assert '<html lang="en">' in en
        assert f'href="en/{page}.html"' in ja
        assert f'href="../{page}.html"' in en
        # the same numbers (word order differs): levels, counts, times on the JST clock
        number = r"\d+\.\d\d m|\d+ / \d+|\d\d:\d\d"
        assert sorted(re.findall(number, plain(ja))) == sorted(re.findall(number, plain(en))), page
    en = plain(text(site, "en/shelters.html"))
    assert "Crowding: Slightly crowded" in en
    assert "Not for floods" in en


# -- page rules --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", HTML_PAGES)
def test_every_page_is_small_accessible_and_well_outlined(
    site: dict[str, bytes], path: str
) -> None:
    html = text(site, path)
    assert len(site[path]) < 50 * 1024
    page = outline(html)
    assert page.lang == ("en" if path.startswith("en/") else "ja")
    assert page.headings.count(1) == 1
    assert page.headings[0] == 1
    for before, after in zip(page.headings, page.headings[1:], strict=False):
        assert after <= before + 1, f"heading h{after} follows h{before}"
    metas = [a for t, a in page.tags if t == "meta" and a.get("name") == "viewport"]
    assert metas
    assert "width=device-width" in (metas[0].get("content") or "")
    for tag, attrs in page.tags:
        if tag == "svg":
            assert attrs.get("role") == "img"
            assert attrs.get("aria-label")
        if tag == "img":
            assert "alt" in attrs


@pytest.mark.parametrize("path", HTML_PAGES)
def test_badge_text_contrast_is_at_least_4_5(site: dict[str, bytes], path: str) -> None:
    for bg, fg in re.findall(
        r'style="background:(#[0-9a-f]{6});color:(#[0-9a-f]{6})"', text(site, path)
    ):
        assert contrast(bg, fg) >= 4.5, (path, bg, fg)


def test_official_level_colours_get_readable_text() -> None:
    assert round(contrast("#000000", "#ffffff"), 1) == 21.0
    assert LEVEL_COLOURS[4] == "#aa00aa"
    assert LEVEL_COLOURS[5] == "#0c000c"


# -- determinism and surge -----------------------------------------------------------------------
def test_same_store_gives_the_same_bytes_and_surge_serves_lite(
    db: Path, site: dict[str, bytes]
) -> None:
    again = asyncio.run(_build(db, tile_url="https://tiles.example/{z}/{x}/{y}.png"))
    assert again == site
    surge = asyncio.run(_build(db, surge=True))
    assert surge["index.html"] == surge["lite.html"]
    assert surge["en/index.html"] == surge["en/lite.html"]
    assert "data-tile-url" not in surge["shelters.html"].decode()
    assert sorted(surge) == sorted(site)
    assert {"assets/portal.css", "assets/portal.js"} <= set(site)


@pytest.fixture
def empty_db(tmp_path: Path) -> Path:
    with make_client(tmp_path):
        pass
    return tmp_path / "cityos.db"


def test_an_empty_store_gives_calm_pages(empty_db: Path) -> None:
    site = asyncio.run(_build(empty_db))
    ja = plain(site["index.html"].decode())
    assert "警戒レベル相当なし" in ja
    assert "発表中の洪水の警戒はありません。" in ja
    assert orjson.loads(site["water-levels.json"])["generatedFrom"] is None


def test_lite_page_stays_under_10_kb_in_the_worst_case(db: Path) -> None:
    """Every shelter open, every gauge at level 5, an alert per gauge and per device."""

    async def gather() -> PortalData:
        store = storage_of(db.parent)
        await store.start()
        try:
            return await portal_data.gather(store)
        finally:
            await store.close()

    data = asyncio.run(gather())
    shelters = tuple(
        dataclasses.replace(s, opening_status="open", occupancy=999, crowding="full")
        for s in data.shelters
    )
    gauges = tuple(
        dataclasses.replace(g, level=9.99, alert_level=5, status="overflow", trend="rising")
        for g in data.gauges
    )
    alerts = tuple(
        dataclasses.replace(
            data.alerts[0],
            id=f"urn:ngsi-ld:Alert:{n}",
            description_ja="秋山川 赤坂町: 氾濫危険水位まで低下（警戒レベル4相当）",
            description_en="Akiyama River at Akasaka: fell back to the flood danger level "
            "(alert level 4 equivalent)",
        )
        for n in range(len(gauges) + 4)  # a flood alert per gauge and four silent devices
    )
    worst = PortalData(gauges, shelters, alerts, data.generated_from)
    assert len(worst.shelters) == 23
    assert len(worst.gauges) == 8
    for lang in ("ja", "en"):
        lite = render_page("lite", worst, lang=lang)
        assert len(lite) < 10 * 1024, (lang, len(lite))
        assert lite.decode().count("<li>") >= 23 + 8 + 12
