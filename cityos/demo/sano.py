"""The Sano (佐野市) demo data set: river gauges, rain gauges, shelters and AEDs.

Made for this project to show the platform: the places are real rivers, districts and kinds of
public facility in Sano, but every station code, reference level, capacity, address and
coordinate here is **illustrative**, not an official reading, designation or location.
Entities follow docs/models.md; devices send only readings, so everything static lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "AEDS",
    "GAUGES",
    "RAIN_GAUGES",
    "SHELTERS",
    "Aed",
    "Gauge",
    "RainGauge",
    "Shelter",
    "alert_id",
    "entities",
    "entity_ids",
]

SANO_BOUNDS: Final = ((139.50, 36.28), (139.68, 36.45))  # (lon, lat) south-west, north-east


@dataclass(frozen=True, slots=True)
class Gauge:
    """A river gauge (水位観測所) and its reference levels (基準水位), stage in metres."""

    slug: str
    river_ja: str
    station_ja: str
    station_en: str
    station_code: str
    lon: float
    lat: float
    standby: float  # 水防団待機水位
    caution: float  # 氾濫注意水位
    evacuation_judgement: float  # 避難判断水位
    danger: float  # 氾濫危険水位
    observation_start: float | None = None  # 観測開始水位: 危機管理型水位計 only
    overflow_start: float | None = None  # 氾濫開始水位: 危機管理型水位計 only

    @property
    def id(self) -> str:
        return f"urn:ngsi-ld:WaterObserved:sano-{self.slug}"

    @property
    def device_id(self) -> str:
        return f"sano-wl-{self.slug}"

    @property
    def crisis_management(self) -> bool:
        """Return whether this is a 危機管理型水位計 (reports only above its start level)."""
        return self.observation_start is not None


@dataclass(frozen=True, slots=True)
class RainGauge:
    """A rain gauge (雨量観測所)."""

    slug: str
    name_ja: str
    name_en: str
    lon: float
    lat: float

    @property
    def id(self) -> str:
        return f"urn:ngsi-ld:WeatherObserved:sano-{self.slug}"

    @property
    def device_id(self) -> str:
        return f"sano-rain-{self.slug}"


@dataclass(frozen=True, slots=True)
class Shelter:
    """A designated evacuation shelter (指定避難所) with a people counter at its entrance."""

    slug: str
    name_ja: str
    name_en: str
    kana: str
    street: str  # 町名 and an illustrative number, in 佐野市
    lon: float
    lat: float
    capacity: int
    designation: str  # emergencySite, shelter or welfareShelter
    hazards: tuple[str, ...]
    fever_capacity: int  # 0: no separate space for people with symptoms
    pets: bool
    barrier_free: bool

    @property
    def id(self) -> str:
        return f"urn:ngsi-ld:EvacuationShelter:sano-{self.slug}"

    @property
    def device_id(self) -> str:
        return f"sano-counter-{self.slug}"


@dataclass(frozen=True, slots=True)
class Aed:
    """An automated external defibrillator (AED) open to the public."""

    slug: str
    name_ja: str
    name_en: str
    where_ja: str
    where_en: str
    street: str
    lon: float
    lat: float

    @property
    def id(self) -> str:
        return f"urn:ngsi-ld:PointOfInterest:sano-aed-{self.slug}"


# 秋山川 runs from 葛生 south through 田沼 and the city centre to the 渡良瀬川; 旗川 runs west of
# it through 田沼 and 赤見 towards 足利. Upstream stations have lower lines (narrower channel).
GAUGES: Final = (
    Gauge("akiyama-kuzuu", "秋山川", "秋山川 葛生", "Akiyama River at Kuzuu", "SANO-AK01",
          139.6190, 36.4005, 1.20, 1.70, 2.10, 2.50),
    Gauge("akiyama-tanuma", "秋山川", "秋山川 田沼", "Akiyama River at Tanuma", "SANO-AK02",
          139.5880, 36.3700, 1.40, 2.00, 2.40, 2.80),
    Gauge("akiyama-ohashi", "秋山川", "秋山川 大橋", "Akiyama River at Ohashi", "SANO-AK03",
          139.5905, 36.3190, 1.50, 2.10, 2.60, 3.00),
    Gauge("akiyama-akasaka", "秋山川", "秋山川 赤坂町", "Akiyama River at Akasaka", "SANO-AK04",
          139.5918, 36.3085, 1.60, 2.40, 2.80, 3.20),
    Gauge("akiyama-koshina", "秋山川", "秋山川 越名", "Akiyama River at Koshina", "SANO-AK05",
          139.6040, 36.2880, 1.80, 2.60, 3.10, 3.50,
          observation_start=1.40, overflow_start=4.10),
    Gauge("hatagawa-tonara", "旗川", "旗川 戸奈良", "Hata River at Tonara", "SANO-HT01",
          139.5560, 36.3880, 1.10, 1.60, 2.00, 2.40),
    Gauge("hatagawa-akami", "旗川", "旗川 赤見", "Hata River at Akami", "SANO-HT02",
          139.5470, 36.3450, 1.30, 1.90, 2.30, 2.70,
          observation_start=0.90, overflow_start=3.20),
    Gauge("hatagawa-konaka", "旗川", "旗川 小中", "Hata River at Konaka", "SANO-HT03",
          139.5390, 36.3250, 1.40, 2.10, 2.50, 2.90),
)  # fmt: skip

#: the gauge at the city centre the typhoon scenario follows
CENTRAL_GAUGE: Final = "akiyama-ohashi"

RAIN_GAUGES: Final = (
    RainGauge("takasago", "佐野 高砂町", "Sano Takasago", 139.5780, 36.3150),
    RainGauge("tanuma", "田沼", "Tanuma", 139.5850, 36.3735),
    RainGauge("kuzuu", "葛生", "Kuzuu", 139.6225, 36.4040),
    RainGauge("nogami", "野上", "Nogami", 139.5830, 36.4360),
)

_FLOOD_AND_QUAKE: Final = ("flood", "landslide", "earthquake", "largeFire", "inlandFlooding")
_NO_FLOOD: Final = ("landslide", "earthquake", "largeFire")  # inside the inundation area

SHELTERS: Final = (
    Shelter("johoku-es", "城北小学校", "Johoku Elementary School", "じょうほくしょうがっこう",
            "植下町", 139.5825, 36.3262, 280, "shelter", _FLOOD_AND_QUAKE, 20, False, True),
    Shelter("inubushi-es", "犬伏小学校", "Inubushi Elementary School", "いぬぶししょうがっこう",
            "犬伏中町", 139.5560, 36.3230, 300, "shelter", _FLOOD_AND_QUAKE, 20, True, True),
    Shelter("hatagawa-es", "旗川小学校", "Hatagawa Elementary School", "はたがわしょうがっこう",
            "小中町", 139.5330, 36.3180, 220, "shelter", _NO_FLOOD, 0, False, False),
    Shelter("ueno-es", "植野小学校", "Ueno Elementary School", "うえのしょうがっこう",
            "植野町", 139.6010, 36.2960, 250, "shelter", _FLOOD_AND_QUAKE, 15, False, True),
    Shelter("sakai-es", "界小学校", "Sakai Elementary School", "さかいしょうがっこう",
            "高山町", 139.6280, 36.2990, 200, "shelter", _FLOOD_AND_QUAKE, 10, True, False),
    Shelter("akami-es", "赤見小学校", "Akami Elementary School", "あかみしょうがっこう",
            "赤見町", 139.5560, 36.3520, 260, "shelter", _FLOOD_AND_QUAKE, 20, True, True),
    Shelter("azuma-es", "吾妻小学校", "Azuma Elementary School", "あづましょうがっこう",
            "吾妻町", 139.6120, 36.3380, 240, "shelter", _FLOOD_AND_QUAKE, 15, False, True),
    Shelter("tanuma-es", "田沼小学校", "Tanuma Elementary School", "たぬましょうがっこう",
            "田沼町", 139.5800, 36.3760, 300, "shelter", _FLOOD_AND_QUAKE, 20, True, True),
    Shelter("kuzuu-es", "葛生小学校", "Kuzuu Elementary School", "くずうしょうがっこう",
            "葛生東", 139.6230, 36.4080, 220, "shelter", _FLOOD_AND_QUAKE, 10, False, False),
    Shelter("hokubu-jhs", "北中学校", "Kita Junior High School", "きたちゅうがっこう",
            "富岡町", 139.5700, 36.3340, 350, "shelter", _FLOOD_AND_QUAKE, 25, True, True),
    Shelter("nishi-jhs", "西中学校", "Nishi Junior High School", "にしちゅうがっこう",
            "出流原町", 139.5380, 36.3390, 320, "shelter", _FLOOD_AND_QUAKE, 20, False, True),
    Shelter("johto-jhs", "城東中学校", "Joto Junior High School", "じょうとうちゅうがっこう",
            "大橋町", 139.5960, 36.3200, 330, "shelter", _NO_FLOOD, 0, False, True),
    Shelter("tanuma-higashi-jhs", "田沼東中学校", "Tanuma-Higashi Junior High School",
            "たぬまひがしちゅうがっこう", "吉水町", 139.5930, 36.3560, 340, "shelter",
            _FLOOD_AND_QUAKE, 20, True, True),
    Shelter("kuzuu-jhs", "葛生中学校", "Kuzuu Junior High School", "くずうちゅうがっこう",
            "葛生西", 139.6150, 36.4120, 300, "shelter", _FLOOD_AND_QUAKE, 15, False, True),
    Shelter("city-gym", "佐野市民体育館", "Sano City Gymnasium", "さのしみんたいいくかん",
            "大橋町", 139.5860, 36.3170, 600, "shelter", _NO_FLOOD, 0, False, True),
    Shelter("undokoen-gym", "佐野市運動公園体育館", "Sano Sports Park Gymnasium",
            "さのしうんどうこうえんたいいくかん", "赤坂町", 139.5700, 36.2990, 500, "shelter",
            _FLOOD_AND_QUAKE, 30, True, True),
    Shelter("tanuma-gym", "田沼体育館", "Tanuma Gymnasium", "たぬまたいいくかん",
            "田沼町", 139.5760, 36.3800, 450, "shelter", _FLOOD_AND_QUAKE, 25, True, True),
    Shelter("kuzuu-gym", "葛生体育館", "Kuzuu Gymnasium", "くずうたいいくかん",
            "葛生東", 139.6207, 36.4027, 400, "shelter", _FLOOD_AND_QUAKE, 20, True, True),
    Shelter("johoku-cc", "城北地区公民館", "Johoku District Community Centre",
            "じょうほくちくこうみんかん", "植下町", 139.5790, 36.3290, 120, "shelter",
            _FLOOD_AND_QUAKE, 0, False, True),
    Shelter("akami-cc", "赤見地区公民館", "Akami District Community Centre",
            "あかみちくこうみんかん", "赤見町", 139.5510, 36.3560, 100, "shelter",
            _FLOOD_AND_QUAKE, 0, True, False),
    Shelter("azuma-cc", "吾妻地区公民館", "Azuma District Community Centre",
            "あづまちくこうみんかん", "吾妻町", 139.6150, 36.3330, 90, "shelter",
            _FLOOD_AND_QUAKE, 0, False, False),
    Shelter("nogami-cc", "野上地区公民館", "Nogami District Community Centre",
            "のがみちくこうみんかん", "長谷場町", 139.5870, 36.4310, 80, "shelter",
            _FLOOD_AND_QUAKE, 0, True, False),
    Shelter("hoken-center", "佐野市保健センター", "Sano Health Centre",
            "さのしほけんせんたー", "富岡町", 139.5680, 36.3300, 60, "welfareShelter",
            _FLOOD_AND_QUAKE, 10, False, True),
)  # fmt: skip

AEDS: Final = (
    Aed("city-hall", "佐野市役所", "Sano City Hall", "1階 正面玄関", "ground floor, main entrance",
        "高砂町", 139.5783, 36.3144),
    Aed("tanuma-office", "田沼行政センター", "Tanuma Administrative Centre", "1階 ロビー",
        "ground floor lobby", "田沼町", 139.5855, 36.3745),
    Aed("kuzuu-office", "葛生行政センター", "Kuzuu Administrative Centre", "1階 ロビー",
        "ground floor lobby", "葛生東", 139.6215, 36.4050),
    Aed("sano-station", "佐野駅", "Sano Station", "改札口付近", "near the ticket gates",
        "若松町", 139.5800, 36.3160),
    Aed("city-gym", "佐野市民体育館", "Sano City Gymnasium", "玄関ホール", "entrance hall",
        "大橋町", 139.5860, 36.3170),
    Aed("johoku-es", "城北小学校", "Johoku Elementary School", "職員室前", "by the staff room",
        "植下町", 139.5825, 36.3262),
    Aed("tanuma-gym", "田沼体育館", "Tanuma Gymnasium", "玄関ホール", "entrance hall",
        "田沼町", 139.5760, 36.3800),
    Aed("culture-hall", "佐野市文化会館", "Sano Cultural Hall", "1階 受付",
        "ground floor reception", "浅沼町", 139.5950, 36.3130),
    Aed("library", "佐野市立中央図書館", "Sano Central Library", "1階 カウンター横",
        "ground floor, beside the counter", "大橋町", 139.5880, 36.3180),
    Aed("hoken-center", "佐野市保健センター", "Sano Health Centre", "1階 受付",
        "ground floor reception", "富岡町", 139.5680, 36.3300),
    Aed("akami-cc", "赤見地区公民館", "Akami District Community Centre", "玄関", "entrance",
        "赤見町", 139.5510, 36.3560),
    Aed("undokoen", "佐野市運動公園", "Sano Sports Park", "管理棟", "park office",
        "赤坂町", 139.5700, 36.2990),
)  # fmt: skip


def _prop(value: Any, unit: str | None = None) -> dict[str, Any]:
    attr: dict[str, Any] = {"type": "Property", "value": value}
    if unit is not None:
        attr["unitCode"] = unit
    return attr


def _name(ja: str, en: str) -> dict[str, Any]:
    return {"type": "LanguageProperty", "languageMap": {"ja": ja, "en": en}}


def _point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def _address(street: str) -> dict[str, Any]:
    return _prop(
        {
            "addressCountry": "JP",
            "addressRegion": "栃木県",
            "addressLocality": "佐野市",
            "streetAddress": street,
        }
    )


def _device(device_id: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{device_id}"}


def gauge_entity(g: Gauge) -> dict[str, Any]:
    """Return a river gauge as a `WaterObserved` entity, without readings."""
    entity: dict[str, Any] = {
        "id": g.id,
        "type": "WaterObserved",
        "name": _name(g.station_ja, g.station_en),
        "riverName": _prop(g.river_ja),
        "stationCode": _prop(g.station_code),
        "location": _point(g.lon, g.lat),
        "refDevice": _device(g.device_id),
        "standbyLevel": _prop(g.standby, "MTR"),
        "cautionLevel": _prop(g.caution, "MTR"),
        "evacuationJudgementLevel": _prop(g.evacuation_judgement, "MTR"),
        "dangerLevel": _prop(g.danger, "MTR"),
    }
    if g.observation_start is not None:
        entity["observationStartLevel"] = _prop(g.observation_start, "MTR")
    if g.overflow_start is not None:
        entity["overflowStartLevel"] = _prop(g.overflow_start, "MTR")
    return entity


def rain_entity(r: RainGauge) -> dict[str, Any]:
    """Return a rain gauge as a `WeatherObserved` entity, without readings."""
    return {
        "id": r.id,
        "type": "WeatherObserved",
        "name": _name(f"{r.name_ja} 雨量観測所", f"{r.name_en} rain gauge"),
        "location": _point(r.lon, r.lat),
        "refDevice": _device(r.device_id),
    }


def shelter_entity(s: Shelter) -> dict[str, Any]:
    """Return a shelter as an `EvacuationShelter` entity, closed and empty."""
    return {
        "id": s.id,
        "type": "EvacuationShelter",
        "name": _name(s.name_ja, s.name_en),
        "nameKana": _prop(s.kana),
        "address": _address(s.street),
        "location": _point(s.lon, s.lat),
        "designation": _prop(s.designation),
        "hazardTypes": _prop(list(s.hazards)),
        "capacity": _prop(s.capacity, "IE"),
        "openingStatus": _prop("closed"),
        "occupancy": _prop(0),
        "feverSpaceAvailable": _prop(s.fever_capacity > 0),
        "feverSpaceCapacity": _prop(s.fever_capacity, "IE"),
        "petsAccepted": _prop(s.pets),
        "barrierFree": _prop(s.barrier_free),
    }


def aed_entity(a: Aed) -> dict[str, Any]:
    """Return an AED as a `PointOfInterest` of category `defibrillator`."""
    return {
        "id": a.id,
        "type": "PointOfInterest",
        "name": _name(f"AED {a.name_ja}", f"AED, {a.name_en}"),
        "category": _prop(["defibrillator"]),
        "description": _prop(f"{a.where_ja} / {a.where_en}"),
        "address": _address(a.street),
        "location": _point(a.lon, a.lat),
    }


def entities() -> list[dict[str, Any]]:
    """Return the whole static data set (normalized NGSI-LD entities)."""
    return [
        *(gauge_entity(g) for g in GAUGES),
        *(rain_entity(r) for r in RAIN_GAUGES),
        *(shelter_entity(s) for s in SHELTERS),
        *(aed_entity(a) for a in AEDS),
    ]


def alert_id(gauge: Gauge) -> str:
    """Return the id of the flood `Alert` the server keeps for a gauge."""
    return f"urn:ngsi-ld:Alert:flood-{gauge.id.rsplit(':', 1)[-1]}"


def entity_ids() -> list[str]:
    """Return the id of every entity the demo writes, the server's flood alerts included."""
    return [e["id"] for e in entities()] + [alert_id(g) for g in GAUGES]
