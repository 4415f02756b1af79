"""The admin pages in Chromium against a real `cityos serve` with CITYOS_AUTH=on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import CITYOS, engine_env, running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "akiyama-river-2019"


def test_a_staff_admin_signs_in_makes_a_key_and_revokes_it(tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"playwright is not installed ({exc})")
    if not Path(CHROMIUM).exists():
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CITYOS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and CITYOS_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    made = subprocess.run(
        [CITYOS, "users", "create", "tanaka", "--role", "admin", "--display-name", "田中 一郎",
         "--password-stdin", "--data-dir", str(tmp_path)],
        input=PASSWORD + "\n", env={**os.environ, **engine_env(tmp_path)}, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with running_server(tmp_path, {"CITYOS_AUTH": "on"}) as base:
        elsewhere: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            try:
                tab = browser.new_page(viewport={"width": 360, "height": 740})
                tab.on(
                    "request",
                    lambda r: None if r.url.startswith(base) else elsewhere.append(r.url),
                )
                tab.goto(base + "/admin/keys")
                assert (
                    tab.url == base + "/admin/login?next=/admin/keys" or "/admin/login" in tab.url
                )
                tab.fill("input[name=name]", "tanaka")
                tab.fill("input[name=password]", "not-the-password")
                tab.click("button[type=submit]")
                assert "名前かパスワードが違います" in tab.inner_text("body")
                tab.fill("input[name=name]", "tanaka")
                tab.fill("input[name=password]", PASSWORD)
                tab.click("button[type=submit]")
                tab.goto(base + "/admin/keys")
                width = tab.evaluate("document.documentElement.scrollWidth")
                assert width <= 360, f"the keys page is {width} px wide on a 360 px screen"
                tab.fill("input[name=name]", "shelter-app")
                tab.check("input[name=role][value=steward]")
                tab.click("form.stack button[type=submit]")
                key = tab.inner_text(".secret").strip()
                assert key.startswith("cok_")
                building = {"id": "urn:ngsi-ld:Building:city-hall", "type": "Building"}
                with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
                    assert c.post("/ngsi-ld/v1/entities", json=building).status_code == 201
                    # shown once: the list has the prefix, never the key
                    tab.goto(base + "/admin/keys")
                    assert key not in tab.content()
                    assert key[4:12] in tab.content()
                    tab.click(f"form[action='/admin/keys/{key[4:12]}/revoke'] button")
                    assert c.get(f"/ngsi-ld/v1/entities/{building['id']}").status_code == 401
                tab.goto(base + "/admin/audit")
                text = tab.inner_text("body")
                assert "key.revoke" in text
                assert "user:tanaka" in text
            finally:
                browser.close()
        assert elsewhere == []
