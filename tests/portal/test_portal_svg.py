"""The drawings: readable badge colours, band charts that put the level where it belongs, maps."""

from __future__ import annotations

import re

import pytest

from cityos.portal.data import GaugeInfo
from cityos.portal.svg import (
    CROWDING_COLOURS,
    LEVEL_COLOURS,
    MapPoint,
    band_chart,
    contrast,
    map_svg,
    text_colour,
)


def gauge(level: float | None, history: tuple[tuple[str, float], ...] = ()) -> GaugeInfo:
    return GaugeInfo(
        id="urn:ngsi-ld:WaterObserved:x",
        name_ja="川 x",
        name_en="River x",
        river="川",
        level=level,
        observed_at="2019-10-12T12:40:00Z" if level is not None else None,
        previous_level=None,
        trend=None,
        standby=1.0,
        caution=2.0,
        evacuation_judgement=3.0,
        danger=4.0,
        observation_start=None,
        overflow_start=5.0,
        status="danger",
        alert_level=4,
        lon=139.58,
        lat=36.31,
        history=history,
    )


@pytest.mark.parametrize("background", [*LEVEL_COLOURS.values(), *CROWDING_COLOURS.values()])
def test_badge_text_colour_reaches_4_5_to_1(background: str) -> None:
    assert contrast(background, text_colour(background)) >= 4.5


def test_text_colour_follows_the_background() -> None:
    assert text_colour(LEVEL_COLOURS[2]) == "#000000"  # yellow
    assert text_colour(LEVEL_COLOURS[3]) == "#000000"  # red (white would be 3.8:1)
    assert text_colour(LEVEL_COLOURS[4]) == "#ffffff"  # purple
    assert text_colour(LEVEL_COLOURS[5]) == "#ffffff"  # black


def _y_of_line(svg: str, label: str) -> float:
    m = re.search(rf'y="([\d.]+)" font-size="9">{label}', svg)
    assert m is not None, label
    return float(m.group(1)) - 3  # labels sit 3 units below their line


def test_band_chart_puts_the_level_between_the_right_lines() -> None:
    svg = band_chart(gauge(4.5), lang="en", title="t")
    marker = re.search(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)
    assert marker is not None
    y = float(marker.group(1))
    # above the danger line, below the overflow line (SVG y grows downwards)
    assert _y_of_line(svg, "overflow 5.00") < y < _y_of_line(svg, "danger 4.00")
    assert 'fill="#0c000c"' in svg  # the overflow band of a 危機管理型水位計 is black


def test_band_chart_without_reading_or_history_draws_only_the_bands() -> None:
    svg = band_chart(gauge(None), lang="ja", title="t")
    assert "<circle" not in svg
    assert "<polyline" not in svg
    assert "危険 4.00" in svg


def test_map_marks_every_point_and_carries_tile_geometry_only_with_a_tile_url() -> None:
    points = [
        MapPoint(139.58, 36.31, "1", "A", "#9e9e9e", "shelter"),
        MapPoint(139.62, 36.41, "", "B", "#aa00aa", "gauge"),
    ]
    offline = map_svg(points, title="map", tile_url=None)
    assert "data-tile-url" not in offline
    assert offline.count("<circle") == 1
    assert offline.count("<polygon") == 1
    online = map_svg(points, title="map", tile_url="https://t.example/{z}/{x}/{y}.png")
    box = re.search(r'viewBox="0 0 (\d+) (\d+)"', online)
    assert box is not None
    w, h = int(box.group(1)), int(box.group(2))
    assert f'data-w="{w}" data-h="{h}"' in online
    for cx, cy in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', online):
        assert 0 < float(cx) < w
        assert 0 < float(cy) < h
    assert h > w  # Sano's points spread further north-south than east-west
