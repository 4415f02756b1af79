"""The published portal in a real browser (Playwright driving Debian's chromium, headless).

A typhoon replay fills a database; a real `cityos serve` publishes and serves the snapshots;
chromium loads every page in both languages, follows the language switch, and checks what a
resident with a screen reader or a low-contrast screen would notice.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import engine_env, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CITYOS = str(Path(sys.executable).parent / "cityos")
PAGES = ["index.html", "water-levels.html", "shelters.html", "alerts.html", "lite.html"]

pytestmark = pytest.mark.server


def _require_chromium() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"playwright is not installed ({exc})")
    if not Path(CHROMIUM).exists():
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CITYOS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and CITYOS_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Replay the typhoon into a fresh data dir, then serve it; yield the portal's base URL."""
    data = tmp_path_factory.mktemp("portal")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    env.update(engine_env(data))
    subprocess.run(
        [CITYOS, "demo", "--once", "--speed", "1000000", "--port", str(free_port()),
         "--data-dir", str(data)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [CITYOS, "serve", "--port", str(port), "--data-dir", str(data)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/public/"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "index.html").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the portal was not published within 20 s")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def _luminance(rgb: tuple[float, float, float]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: tuple[float, float, float], bg: tuple[float, float, float]) -> float:
    """Return the WCAG contrast ratio of two sRGB colours."""
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def test_contrast_formula() -> None:
    assert round(contrast((0, 0, 0), (255, 255, 255)), 1) == 21.0
    assert round(contrast((119, 119, 119), (255, 255, 255)), 1) == 4.5


# For every element with its own background colour and text of its own, the colours.
_COLOURED_TEXT = """() => {
  const parse = s => (s.match(/[\\d.]+/g) || []).slice(0, 4).map(Number);
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const st = getComputedStyle(el);
    const bg = parse(st.backgroundColor);
    if (bg.length < 3 || (bg.length === 4 && bg[3] === 0)) continue;
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || st.visibility === 'hidden' || st.display === 'none') continue;
    out.push({text: el.textContent.trim().slice(0, 40), fg: parse(st.color), bg: bg});
  }
  return out;
}"""


@pytest.mark.parametrize("lang", ["ja", "en"])
@pytest.mark.parametrize("page", PAGES)
def test_page_in_a_real_browser(portal: str, page: str, lang: str) -> None:
    sync_playwright = _require_chromium()
    url = portal + ("en/" if lang == "en" else "") + page
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 360, "height": 740})
            errors: list[str] = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            response = tab.goto(url)
            assert response is not None
            assert response.status == 200
            assert errors == []
            assert tab.get_attribute("html", "lang") == lang
            assert tab.locator("h1").count() == 1
            levels = [
                int(h.evaluate("e => e.tagName")[1]) for h in tab.locator("h1, h2, h3, h4").all()
            ]
            assert all(b - a <= 1 for a, b in itertools.pairwise(levels)), levels
            for img in tab.locator("img").all():
                assert img.get_attribute("alt") is not None
            for svg in tab.locator("svg[role=img]").all():
                label = svg.get_attribute("aria-label") or svg.locator("title").count()
                assert label
            # small phones: nothing wider than the screen
            width = tab.evaluate("document.documentElement.scrollWidth")
            assert width <= 360 + 1, f"{url} scrolls sideways ({width} px)"
            for item in tab.evaluate(_COLOURED_TEXT):
                ratio = contrast(tuple(item["fg"][:3]), tuple(item["bg"][:3]))
                assert ratio >= 4.5, (url, item)
            if page == "lite.html":
                assert tab.locator("script, img").count() == 0
        finally:
            browser.close()


def test_language_switch_leads_to_the_same_page_in_english(portal: str) -> None:
    sync_playwright = _require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page()
            tab.goto(portal + "shelters.html")
            tab.locator("a[hreflang=en]").first.click()
            tab.wait_for_load_state()
            assert tab.url.endswith("/en/shelters.html")
            assert tab.get_attribute("html", "lang") == "en"
            tab.locator("a[hreflang=ja]").first.click()
            tab.wait_for_load_state()
            assert tab.url.endswith("/public/shelters.html")
        finally:
            browser.close()


def test_shelters_sort_by_distance_and_the_map_needs_no_network(portal: str) -> None:
    sync_playwright = _require_chromium()
    from cityos.demo import sano

    here = (36.3144, 139.5783)  # 佐野市役所

    def km(s: sano.Shelter) -> float:
        r = math.pi / 180
        a = math.sin((s.lat - here[0]) * r / 2)
        b = math.sin((s.lon - here[1]) * r / 2)
        h = a * a + math.cos(here[0] * r) * math.cos(s.lat * r) * b * b
        return 12742 * math.asin(math.sqrt(h))

    nearest = min(sano.SHELTERS, key=km)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(
                geolocation={"latitude": here[0], "longitude": here[1]},
                permissions=["geolocation"],
            )
            tab = context.new_page()
            hosts: set[str] = set()
            tab.on("request", lambda r: hosts.add(r.url.split("/")[2]))
            tab.goto(portal + "shelters.html")
            first = tab.locator("#shelter-list > li h3").first.inner_text()
            tab.locator("#sort-distance").click()
            tab.wait_for_function(
                "document.getElementById('distance-status').textContent.includes('近い順')"
            )
            sorted_first = tab.locator("#shelter-list > li h3").first.inner_text()
            assert nearest.name_ja in sorted_first, (first, sorted_first)
            assert "km" in sorted_first
            # the map is drawn from the data: a mark per shelter, no tiles fetched from anywhere
            assert tab.locator("svg.map").count() == 1
            assert tab.locator("svg.map circle").count() >= len(sano.SHELTERS)
            assert hosts == {portal.split("/")[2]}
        finally:
            browser.close()
