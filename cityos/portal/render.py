"""Render the resident pages from PortalData with Jinja2, in Japanese and in English.

Words live here and in the templates, numbers and order in data.py, drawings in svg.py. Every
label is a (Japanese, English) pair; `tr` in a template picks the page's language.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Final

import jinja2

from cityos.portal import svg
from cityos.portal.data import GaugeInfo, PortalData, ShelterInfo

__all__ = ["LANGS", "PAGES", "render_page"]

LANGS: Final = ("ja", "en")
#: page name -> (Japanese title, English title, JSON twin or None)
PAGES: Final[dict[str, tuple[str, str, str | None]]] = {
    "index": ("佐野市 川と避難所の情報", "Sano: rivers and shelters now", None),
    "water-levels": ("川の水位", "River water levels", "water-levels.json"),
    "shelters": ("避難所", "Evacuation shelters", "shelters.json"),
    "alerts": ("発表中の警戒情報", "Active alerts", "alerts.json"),
    "lite": ("文字だけの版", "Text-only version", None),
}
_JST: Final = timezone(timedelta(hours=9))
_MONTHS: Final = (
    *("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
    *("Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
)

# -- words ---------------------------------------------------------------------------------------
LEVEL_MEANING: Final[dict[int, tuple[str, str]]] = {
    5: (
        "氾濫が発生しています。命の危険があります。ただちに身の安全を確保してください。",
        "Flooding has begun. Your life is in danger: make yourself safe immediately.",
    ),
    4: (
        "危険な場所にいる人は全員避難する目安です。",
        "Everyone in a dangerous place should evacuate now.",
    ),
    3: (
        "高齢者など避難に時間のかかる人は、危険な場所から避難する目安です。",
        "Older people and others who need more time should leave dangerous places now.",
    ),
    2: (
        "ハザードマップなどで避難先と避難経路を確認してください。",
        "Check your shelter and the way there on the hazard map.",
    ),
    0: (
        "警戒レベル相当の水位に達している観測所はありません。",
        "No river gauge is at an alert level.",
    ),
}
STATUS: Final[dict[str, tuple[str, str]]] = {
    "normal": ("平常", "Normal"),
    "standby": ("水防団待機水位を超過", "Above the standby level"),
    "caution": ("氾濫注意水位を超過", "Above the flood caution level"),
    "evacuationJudgement": ("避難判断水位を超過", "Above the evacuation judgement level"),
    "danger": ("氾濫危険水位を超過", "Above the flood danger level"),
    "overflow": ("氾濫発生", "Flooding"),
}
LINE: Final[dict[str, tuple[str, str]]] = {
    "standby": ("水防団待機水位", "standby level"),
    "caution": ("氾濫注意水位", "flood caution level"),
    "evacuationJudgement": ("避難判断水位", "evacuation judgement level"),
    "danger": ("氾濫危険水位", "flood danger level"),
    "overflow": ("氾濫開始水位", "overflow level"),
}
TREND: Final[dict[str | None, tuple[str, str]]] = {
    "rising": ("↑ 上昇中", "↑ Rising"),
    "falling": ("↓ 下降中", "↓ Falling"),
    "steady": ("→ 横ばい", "→ Steady"),
    None: ("変化不明", "Change unknown"),
}
CROWDING: Final[dict[str | None, tuple[str, str]]] = {
    "vacant": ("空いています", "Vacant"),
    "slightlyCrowded": ("やや混雑", "Slightly crowded"),
    "crowded": ("混雑", "Crowded"),
    "full": ("満（受け入れ困難）", "Full (may not accept more)"),
    None: ("—", "—"),
}
OPENING: Final[dict[str, tuple[str, str]]] = {
    "open": ("開設中", "Open"),
    "preparing": ("開設準備中", "Preparing to open"),
    "closed": ("未開設", "Not open"),
}
DESIGNATION: Final[dict[str, tuple[str, str]]] = {
    "emergencySite": ("指定緊急避難場所", "Designated emergency evacuation site"),
    "shelter": ("指定避難所", "Designated shelter"),
    "welfareShelter": ("福祉避難所", "Welfare shelter"),
}
HAZARD: Final[dict[str, tuple[str, str]]] = {
    "flood": ("洪水", "Flood"),
    "landslide": ("土砂災害", "Landslide"),
    "stormSurge": ("高潮", "Storm surge"),
    "earthquake": ("地震", "Earthquake"),
    "tsunami": ("津波", "Tsunami"),
    "largeFire": ("大規模な火事", "Large fire"),
    "inlandFlooding": ("内水氾濫", "Inland flooding"),
    "volcano": ("火山", "Volcano"),
}


def _pair(table: dict[Any, tuple[str, str]], key: Any, lang: str) -> str:
    ja, en = table.get(key, (str(key), str(key)))
    return ja if lang == "ja" else en


def level_badge(level: int, lang: str) -> str:
    """Return the badge text of a 警戒レベル相当."""
    if level == 0:
        return "警戒レベル相当なし" if lang == "ja" else "No alert level"
    return f"警戒レベル{level}相当" if lang == "ja" else f"Alert level {level} equivalent"


def when(stamp: str | None, lang: str) -> str:
    """Return a UTC DateTime as Japan time: 2019年10月12日 21:40 / 12 Oct 2019 21:40 JST."""
    if not stamp:
        return "—"
    dt = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(_JST)
    if lang == "ja":
        return f"{dt.year}年{dt.month}月{dt.day}日 {dt:%H:%M}"
    return f"{dt.day} {_MONTHS[dt.month - 1]} {dt.year} {dt:%H:%M} JST"


def metres(value: float | None) -> str:
    """Return a stage in metres, e.g. 2.45 m."""
    return "—" if value is None else f"{value:.2f} m"


def line_words(g: GaugeInfo, lang: str) -> str:
    """Return where the level stands against the lines, in words."""
    if g.level is None:
        return "観測値がありません" if lang == "ja" else "no reading yet"
    nxt = g.next_line()
    if nxt is None:
        name, line = ("overflow", g.overflow_start) if g.overflow_start else ("danger", g.danger)
        assert line is not None
        over = g.level - line
        if lang == "ja":
            return f"{LINE[name][0]}（{line:.2f} m）を {over:.2f} m 超えています"
        return f"{over:.2f} m above the {LINE[name][1]} ({line:.2f} m)"
    name, line = nxt
    below = line - g.level
    if lang == "ja":
        return f"{LINE[name][0]}（{line:.2f} m）まで あと {below:.2f} m"
    return f"{below:.2f} m below the {LINE[name][1]} ({line:.2f} m)"


def _badge_style(background: str) -> str:
    return f"background:{background};color:{svg.text_colour(background)}"


def level_style(level: int) -> str:
    """Return the inline style of a 警戒レベル badge: official colour, readable text colour."""
    return _badge_style(svg.LEVEL_COLOURS.get(level, svg.LEVEL_COLOURS[0]))


def crowding_style(crowding: str | None) -> str:
    """Return the inline style of a crowding badge."""
    return _badge_style(svg.CROWDING_COLOURS.get(crowding or "", "#ffffff"))


def _map_points(data: PortalData, lang: str) -> list[svg.MapPoint]:
    points = []
    for n, s in enumerate(_shelter_order(data, lang), 1):
        if s.lon is None or s.lat is None:
            continue
        name = s.name_ja if lang == "ja" else s.name_en
        state = _pair(OPENING, s.opening_status, lang)
        if s.crowding:
            state += " " + _pair(CROWDING, s.crowding, lang)
        fill = svg.CROWDING_COLOURS.get(s.crowding or "", "#9e9e9e")
        points.append(svg.MapPoint(s.lon, s.lat, str(n), f"{n}. {name}: {state}", fill, "shelter"))
    for g in data.gauges:
        if g.lon is None or g.lat is None:
            continue
        name = g.name_ja if lang == "ja" else g.name_en
        title = f"{name}: {metres(g.level)}, {level_badge(g.alert_level, lang)}"
        fill = svg.LEVEL_COLOURS.get(g.alert_level, "#ffffff")
        points.append(svg.MapPoint(g.lon, g.lat, "", title, fill, "gauge"))
    return points


def _shelter_order(data: PortalData, lang: str) -> list[ShelterInfo]:
    """Return shelters by name: kana order in Japanese, alphabetical in English."""
    if lang == "ja":
        return list(data.shelters)
    return sorted(data.shelters, key=lambda s: (s.name_en.casefold(), s.id))


def _credit(tile_url: str | None) -> str | None:
    if not tile_url:
        return None
    return "地理院タイル / GSI Tiles" if "gsi.go.jp" in tile_url else tile_url.split("/")[2]


# -- the environment -----------------------------------------------------------------------------
@jinja2.pass_context
def _tr(ctx: jinja2.runtime.Context, ja: str, en: str) -> str:
    return ja if ctx["lang"] == "ja" else en


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cityos.portal", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals.update(
        tr=_tr,
        pair=_pair,
        level_badge=level_badge,
        level_style=level_style,
        crowding_style=crowding_style,
        when=when,
        metres=metres,
        line_words=line_words,
        STATUS=STATUS,
        TREND=TREND,
        CROWDING=CROWDING,
        OPENING=OPENING,
        DESIGNATION=DESIGNATION,
        HAZARD=HAZARD,
        LEVEL_MEANING=LEVEL_MEANING,
    )
    return env


_ENV: Final = _env()


def render_page(page: str, data: PortalData, *, lang: str, tile_url: str | None = None) -> bytes:
    """Return one page of one language as UTF-8 HTML."""
    ja_title, en_title, twin = PAGES[page]
    root = "" if lang == "ja" else "../"
    context: dict[str, Any] = {
        "lang": lang,
        "page": page,
        "title": ja_title if lang == "ja" else en_title,
        "root": root,
        "twin": twin,
        "switch": (f"en/{page}.html" if lang == "ja" else f"../{page}.html"),
        "data": data,
        "highest": data.highest_level,
        "open_shelters": data.open_shelters(),
    }
    if page == "water-levels":
        context["charts"] = {
            g.id: svg.band_chart(g, lang=lang, title=_chart_title(g, lang)) for g in data.gauges
        }
    if page == "shelters":
        context["shelters"] = _shelter_order(data, lang)
        title = (
            "佐野市の避難所（丸、番号は一覧の番号）と水位観測所（三角）の地図"
            if lang == "ja"
            else "Map of Sano: shelters (circles, numbered as in the list) and river gauges "
            "(triangles)"
        )
        context["map"] = svg.map_svg(_map_points(data, lang), title=title, tile_url=tile_url)
        context["credit"] = _credit(tile_url)
    if page in ("index", "lite"):
        context["crowding_counts"] = _crowding_counts(data)
    html = _ENV.get_template(f"{page}.html").render(context)
    return html.encode("utf-8")


def _chart_title(g: GaugeInfo, lang: str) -> str:
    name = g.name_ja if lang == "ja" else g.name_en
    if lang == "ja":
        return (
            f"{name}の水位グラフ: 現在 {metres(g.level)}、{line_words(g, lang)}。"
            f"色の帯は基準水位の区間、線は過去24時間の水位"
        )
    return (
        f"Water level chart of {name}: now {metres(g.level)}, {line_words(g, lang)}. "
        "Coloured bands are the ranges between reference levels; the line is the last 24 hours"
    )


def _crowding_counts(data: PortalData) -> list[tuple[str, int]]:
    counts = dict.fromkeys(("vacant", "slightlyCrowded", "crowded", "full"), 0)
    for s in data.open_shelters():
        if s.crowding in counts:
            counts[s.crowding] += 1
    return list(counts.items())
