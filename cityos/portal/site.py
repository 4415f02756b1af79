"""Build the whole resident site: every page in both languages, the JSON twins and the assets."""

from __future__ import annotations

from importlib import resources
from typing import Final

from cityos.portal import data as portal_data
from cityos.portal.render import LANGS, PAGES, render_page
from cityos.storage.base import Storage

__all__ = ["ASSETS", "build_site"]

#: files copied as they are into assets/
ASSETS: Final = ("portal.css", "portal.js")


def _asset(name: str) -> bytes:
    return resources.files("cityos.portal").joinpath("assets", name).read_bytes()


async def build_site(
    store: Storage, *, tenant: str = "", tile_url: str | None = None, surge: bool = False
) -> dict[str, bytes]:
    """Return every published file, relative path -> bytes; the same data gives the same bytes.

    Japanese pages sit at the root, English ones under en/. With surge, index.html (in both
    languages) holds the text-only page, so the busiest URL costs the least.
    """
    data = await portal_data.gather(store, tenant=tenant)
    files: dict[str, bytes] = {}
    for lang in LANGS:
        prefix = "" if lang == "ja" else f"{lang}/"
        for page in PAGES:
            files[f"{prefix}{page}.html"] = render_page(page, data, lang=lang, tile_url=tile_url)
        if surge:
            files[f"{prefix}index.html"] = files[f"{prefix}lite.html"]
    files["water-levels.json"] = portal_data.water_levels_json(data)
    files["shelters.json"] = portal_data.shelters_json(data)
    files["alerts.json"] = portal_data.alerts_json(data)
    for name in ASSETS:
        files[f"assets/{name}"] = _asset(name)
    return dict(sorted(files.items()))
