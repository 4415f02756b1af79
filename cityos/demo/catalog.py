"""The demo's open data: Sano's live datasets (river levels, shelters, AEDs) in the catalog."""

from __future__ import annotations

from typing import Any, Final

from cityos.catalog import registry
from cityos.catalog.errors import NotFound
from cityos.catalog.registry import Context
from cityos.catalog.service import Catalog

ORGANIZATION: Final = {
    "name": "sano-city",
    "title": "佐野市",
    "description": "栃木県佐野市 (Sano City, Tochigi). 全国地方公共団体コード 092045.",
}
LIVE: Final[tuple[dict[str, Any], ...]] = (
    {
        "name": "sano-river-levels",
        "title": "河川水位（リアルタイム） River water levels (live)",
        "notes": "秋山川・旗川などの水位観測所の最新の水位と警戒レベル相当。"
        " Latest readings of Sano's river gauges with their flood alert levels.",
        "tags": [{"name": "防災"}, {"name": "河川"}, {"name": "水位"}],
        "query": "type=WaterObserved",
    },
    {
        "name": "sano-shelters-status",
        "title": "避難所の開設・混雑状況（リアルタイム） Shelters: open and crowding (live)",
        "notes": "指定避難所の開設状況、避難者数、混雑度。"
        " Which shelters are open, how many people are there, how crowded.",
        "tags": [{"name": "防災"}, {"name": "避難"}, {"name": "避難所"}],
        "query": "type=EvacuationShelter",
    },
    {
        "name": "sano-aed",
        "title": "AED設置箇所一覧 AED locations",
        "notes": "市内の公共施設に設置されたAED。 AEDs in Sano's public buildings.",
        "tags": [{"name": "健康"}, {"name": "AED"}],
        "query": 'type=PointOfInterest&q=category=="defibrillator"',
    },
)


async def publish_live_datasets(catalog: Catalog) -> list[str]:
    """Create the city's organization and the live datasets (again: they are redefined)."""
    ctx = Context(catalog=catalog, system=True, base_url=catalog.base_url)
    try:
        await registry.call(ctx, "organization_show", {"id": ORGANIZATION["name"]})
    except NotFound:
        await registry.call(ctx, "organization_create", dict(ORGANIZATION))
    names = []
    for spec in LIVE:
        params = {**spec, "owner_org": ORGANIZATION["name"], "license_id": "jp-pdl-1.0"}
        package = await registry.call(ctx, "cityos_live_dataset_create", params)
        names.append(package["name"])
    return names
