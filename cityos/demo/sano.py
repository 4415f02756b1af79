"""Illustrative Sano entities (demo values, not official readings or designations).

Types follow the project's Sano mapping (docs: shared reference, domain research §1.9):
river gauges are `WaterObserved` with Japan's four reference levels; shelters are
`PointOfInterest` with an opening status and a capacity.
"""

from __future__ import annotations

from typing import Any

# (id suffix, river, station name, lon, lat, stage m, caution m, danger m)
GAUGES = [
    ("akiyama-ohashi", "秋山川", "秋山川 大橋", 139.5790, 36.3195, 1.42, 2.60, 3.40),
    ("akiyama-akasaka", "秋山川", "秋山川 赤坂町", 139.5712, 36.3078, 1.18, 2.40, 3.20),
    ("akiyama-kamihikoma", "秋山川", "秋山川 上流", 139.5855, 36.3890, 0.86, 1.90, 2.70),
    ("hatagawa-tanuma", "旗川", "旗川 田沼", 139.5640, 36.3780, 0.74, 1.80, 2.50),
    ("watarase-koshina", "渡良瀬川", "渡良瀬川 越名", 139.6150, 36.2870, 2.05, 4.00, 5.20),
]

# (id suffix, name ja, name en, lon, lat, capacity, opening status)
SHELTERS = [
    ("city-hall", "佐野市役所", "Sano City Hall", 139.5783, 36.3144, 300, "closed"),
    (
        "johoku-es",
        "城北小学校 体育館",
        "Johoku Elementary School gym",
        139.5821,
        36.3260,
        250,
        "closed",
    ),
    ("tanuma-cc", "田沼公民館", "Tanuma Community Centre", 139.5617, 36.3707, 180, "closed"),
    ("kuzuu-gym", "葛生体育館", "Kuzuu Gymnasium", 139.6207, 36.4027, 220, "closed"),
]


def gauge(
    suffix: str,
    river: str,
    name: str,
    lon: float,
    lat: float,
    stage: float,
    caution: float,
    danger: float,
    observed_at: str,
) -> dict[str, Any]:
    """Return one river gauge entity."""
    status = "danger" if stage >= danger else "caution" if stage >= caution else "normal"
    return {
        "id": f"urn:ngsi-ld:WaterObserved:sano-{suffix}",
        "type": "WaterObserved",
        "name": {"type": "Property", "value": name},
        "riverName": {"type": "Property", "value": river},
        "waterLevel": {
            "type": "Property",
            "value": stage,
            "unitCode": "MTR",
            "observedAt": observed_at,
        },
        "cautionLevel": {"type": "Property", "value": caution, "unitCode": "MTR"},
        "dangerLevel": {"type": "Property", "value": danger, "unitCode": "MTR"},
        "levelStatus": {"type": "Property", "value": status},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
        "scope": "/Sano/Rivers",
    }


def shelter(
    suffix: str, name_ja: str, name_en: str, lon: float, lat: float, capacity: int, opening: str
) -> dict[str, Any]:
    """Return one shelter entity."""
    return {
        "id": f"urn:ngsi-ld:PointOfInterest:sano-shelter-{suffix}",
        "type": "PointOfInterest",
        "name": {"type": "LanguageProperty", "languageMap": {"ja": name_ja, "en": name_en}},
        "category": {"type": "Property", "value": ["evacuationShelter", "designatedShelter"]},
        "capacity": {"type": "Property", "value": capacity},
        "occupancy": {"type": "Property", "value": 0},
        "openingStatus": {"type": "Property", "value": opening},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
        "scope": "/Sano/Shelters",
    }


def entities(observed_at: str) -> list[dict[str, Any]]:
    """Return the whole demo data set."""
    return [gauge(*g, observed_at=observed_at) for g in GAUGES] + [shelter(*s) for s in SHELTERS]
