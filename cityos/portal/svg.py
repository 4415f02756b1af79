"""Server-side drawings: the official alert colours, a gauge's band chart and the shelter map.

Every drawing is plain inline SVG with a text alternative (role="img", <title>, aria-label), so
pages need no script and no external file to show them. Numbers are rounded to one decimal to
keep the pages small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from cityos.portal.data import GaugeInfo

__all__ = [
    "CROWDING_COLOURS",
    "LEVEL_COLOURS",
    "MapPoint",
    "band_chart",
    "contrast",
    "map_svg",
    "text_colour",
]

#: 警戒レベル colours on screen (Cabinet Office, 2020-05-29; see docs/portal.md for the source)
LEVEL_COLOURS: Final[dict[int, str]] = {
    5: "#0c000c",  # black
    4: "#aa00aa",  # purple
    3: "#ff2800",  # red
    2: "#f2e700",  # yellow
    0: "#ffffff",  # no alert level: white with a border
}
#: crowding colours; the label is always printed next to them, colour is never the only signal
CROWDING_COLOURS: Final[dict[str, str]] = {
    "vacant": "#1d7a3a",
    "slightlyCrowded": "#f2c200",
    "crowded": "#e86a00",
    "full": "#b0001e",
}
_STANDBY_FILL: Final = "#dde6ee"  # 水防団待機水位 has no 警戒レベル: a neutral tint


def _luminance(hex_colour: str) -> float:
    """Return the WCAG relative luminance of a #rrggbb colour."""
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    """Return the WCAG contrast ratio of two #rrggbb colours (1 to 21)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour(background: str) -> str:
    """Return black or white, whichever reads better on the background."""
    black, white = "#000000", "#ffffff"
    return black if contrast(background, black) >= contrast(background, white) else white


def _n(x: float) -> str:
    """Return a coordinate with at most one decimal and no trailing zero."""
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


# -- band chart ----------------------------------------------------------------------------------
_W: Final = 320
_H: Final = 158
_LEFT: Final = 4
_RIGHT: Final = 250  # the plot ends here; the line labels sit to its right
_TOP: Final = 6
_BOTTOM: Final = 144


def _lines(g: GaugeInfo) -> list[tuple[float, int | None, str, str]]:
    """Return (metres, alert level of the band above, Japanese name, English name), low first."""
    out: list[tuple[float, int | None, str, str]] = [
        (g.standby, None, "待機", "standby"),
        (g.caution, 2, "注意", "caution"),
        (g.evacuation_judgement, 3, "判断", "judgement"),
        (g.danger, 4, "危険", "danger"),
    ]
    if g.overflow_start is not None:
        out.append((g.overflow_start, 5, "氾濫", "overflow"))
    return out


def band_chart(g: GaugeInfo, *, lang: str, title: str) -> str:
    """Return an inline SVG of a gauge: coloured bands between its lines, 24 h trend, level now."""
    lines = _lines(g)
    values = [v for _, v in g.history] + ([g.level] if g.level is not None else [])
    top_line = lines[-1][0]
    high = max([top_line + (top_line - lines[0][0]) * 0.25, *values])
    low = min([0.0, *values])
    span = high - low or 1.0

    def y(m: float) -> float:
        return _BOTTOM - (m - low) / span * (_BOTTOM - _TOP)

    ja = lang == "ja"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
        f'class="chart" aria-label={quoteattr(title)}><title>{escape(title)}</title>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{_RIGHT - _LEFT}" height="{_BOTTOM - _TOP}" '
        'fill="#fff" stroke="#767676"/>',
    ]
    for i, (metres, level, name_ja, name_en) in enumerate(lines):
        upper = lines[i + 1][0] if i + 1 < len(lines) else high
        fill = LEVEL_COLOURS[level] if level is not None else _STANDBY_FILL
        y0, y1 = y(upper), y(metres)
        parts.append(
            f'<rect x="{_LEFT}" y="{_n(y0)}" width="{_RIGHT - _LEFT}" height="{_n(y1 - y0)}" '
            f'fill="{fill}" fill-opacity="0.45"/>'
        )
        parts.append(
            f'<line x1="{_LEFT}" x2="{_RIGHT}" y1="{_n(y1)}" y2="{_n(y1)}" stroke="#333" '
            'stroke-width="0.6"/>'
        )
        label = f"{name_ja if ja else name_en} {metres:.2f}"
        parts.append(
            f'<text x="{_RIGHT + 4}" y="{_n(y1 + 3)}" font-size="9">{escape(label)}</text>'
        )
    if len(g.history) >= 2:
        parts.append(_trend(g, y))
        start, end = ("24時間前", "現在") if ja else ("24 h ago", "now")
        parts.append(
            f'<text x="{_LEFT}" y="{_H - 1}" font-size="8">{start}</text>'
            f'<text x="{_RIGHT}" y="{_H - 1}" font-size="8" text-anchor="end">{end}</text>'
        )
    if g.level is not None:
        yl = _n(y(g.level))
        parts.append(
            f'<line x1="{_LEFT}" x2="{_RIGHT}" y1="{yl}" y2="{yl}" stroke="#003a8c" '
            'stroke-width="1.5" stroke-dasharray="4 3"/>'
            f'<circle cx="{_RIGHT}" cy="{yl}" r="4.5" fill="#003a8c" stroke="#fff"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _trend(g: GaugeInfo, y: Callable[[float], float]) -> str:
    """Return the 24 h polyline: time runs left to right over the window before the reading."""
    stamps = [datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t, _ in g.history]
    end = stamps[-1]
    start = end - 24 * 3600
    width = _RIGHT - _LEFT
    points = " ".join(
        f"{_n(_LEFT + (s - start) / (end - start) * width)},{_n(y(v))}"
        for s, (_, v) in zip(stamps, g.history, strict=True)
    )
    return (
        f'<polyline points="{points}" fill="none" stroke="#fff" stroke-width="4"/>'
        f'<polyline points="{points}" fill="none" stroke="#003a8c" stroke-width="2"/>'
    )


# -- map -------------------------------------------------------------------------------------------
#: Web Mercator zoom whose pixel grid the map uses, so that map tiles of this zoom line up
MAP_ZOOM: Final = 12
_TILE: Final = 256
_PAD: Final = 16.0


@dataclass(frozen=True, slots=True)
class MapPoint:
    """A place on the map: a shelter (circle) or a gauge (triangle)."""

    lon: float
    lat: float
    label: str  # the short mark printed on the map, e.g. a list number
    title: str  # the full name, for screen readers and hover
    fill: str
    kind: str  # shelter or gauge


def _project(lon: float, lat: float) -> tuple[float, float]:
    """Return Web Mercator world pixels at MAP_ZOOM."""
    scale = _TILE * 2**MAP_ZOOM
    x = (lon + 180.0) / 360.0 * scale
    rad = math.radians(lat)
    y = (1.0 - math.log(math.tan(rad) + 1.0 / math.cos(rad)) / math.pi) / 2.0 * scale
    return x, y


def map_svg(points: Sequence[MapPoint], *, title: str, tile_url: str | None) -> str:
    """Return an inline SVG map of the points; with a tile URL the page script may add tiles."""
    if not points:
        return ""
    projected = [_project(p.lon, p.lat) for p in points]
    x0 = math.floor(min(x for x, _ in projected) - _PAD)
    y0 = math.floor(min(y for _, y in projected) - _PAD)
    w = math.ceil(max(x for x, _ in projected) + _PAD) - x0
    h = math.ceil(max(y for _, y in projected) + _PAD) - y0
    tiles = (
        f' data-tile-url={quoteattr(tile_url)} data-zoom="{MAP_ZOOM}" '
        f'data-x0="{x0}" data-y0="{y0}" data-w="{w}" data-h="{h}"'
        if tile_url
        else ""
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" '
        f'class="map" aria-label={quoteattr(title)}{tiles}><title>{escape(title)}</title>',
        f'<rect class="map-bg" width="{w}" height="{h}" fill="#f4f1e8"/>',
    ]
    for p, (px, py) in zip(points, projected, strict=True):
        x, y = px - x0, py - y0
        if p.kind == "gauge":
            shape = (
                f'<polygon points="{_n(x)},{_n(y - 7)} {_n(x - 6)},{_n(y + 4)} '
                f'{_n(x + 6)},{_n(y + 4)}" fill="{p.fill}" stroke="#000"/>'
            )
        else:
            shape = f'<circle cx="{_n(x)}" cy="{_n(y)}" r="5" fill="{p.fill}" stroke="#000"/>'
        parts.append(
            f"<g><title>{escape(p.title)}</title>{shape}"
            f'<text x="{_n(x + 7)}" y="{_n(y + 3)}" font-size="9">{escape(p.label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
