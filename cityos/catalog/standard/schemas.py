"""The standard municipal datasets (自治体標準オープンデータセット) cityos imports: their columns.

Headers, order and levels follow the Digital Agency's current definitions as far as the project
reference (`open-data-japan.md` §3) has them: 03 指定緊急避難場所一覧 and 13 公衆トイレ一覧 are
complete (39 columns each). For 08 AED, 10 医療機関, 01 公共施設 and 09 介護サービス事業所 only the
key columns are known; those lists are the known columns plus the common head, address and
contact columns, and are marked `partial`. The old 推奨データセット headers (and the GSI
shelter headers) are accepted as aliases and written back under the current names.

Levels: ◎ required (必須), ○ recommended (推奨), blank optional (任意).
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field
from typing import Final, Literal

ColumnType = Literal[
    "text", "id", "code", "int", "float", "lat", "lon", "time", "flag", "yesno", "list", "url",
    "phone", "date",
]  # fmt: skip


class Level(enum.Enum):
    """How the standard asks for a column: ◎ 必須, ○ 推奨, or blank (任意)."""

    REQUIRED = "◎"
    RECOMMENDED = "○"
    OPTIONAL = ""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a standard dataset, under its current header."""

    name: str
    level: Level
    type: ColumnType
    #: a short English label for the clerk's report and for non-Japanese readers
    en: str
    #: when the file lacks this column, take its values from this one (e.g. an old-format
    #: shelter file has no 市区町村コード: it is the publisher's 全国地方公共団体コード)
    fallback: str | None = None

    @property
    def required(self) -> bool:
        return self.level is Level.REQUIRED


#: the NGSI-LD model an imported row becomes, or None for catalog-only datasets
EntityModel = Literal["EvacuationShelter", "PointOfInterest"]


@dataclass(frozen=True, slots=True)
class DatasetKind:
    """A standard dataset: its slug, title, number in the current list and columns."""

    slug: str
    title: str
    title_en: str
    number: str  # "08" in the current definition books
    columns: tuple[Column, ...]
    #: old or variant header -> current header
    aliases: dict[str, str] = field(default_factory=dict)
    #: True when the reference gives only part of the official column list
    partial: bool = False
    entity: EntityModel | None = None
    category: str | None = None  # PointOfInterest category
    tags: tuple[str, ...] = ()

    def column(self, name: str) -> Column:
        """Return the column with this current header."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def resolve(self, header: str) -> str | None:
        """Return the current header a file's header stands for, or None when unknown."""
        key = header_key(header)
        return self._lookup().get(key)

    def _lookup(self) -> dict[str, str]:
        table = {header_key(c.name): c.name for c in self.columns}
        for old, new in self.aliases.items():
            table.setdefault(header_key(old), new)
        return table


def header_key(header: str) -> str:
    """Return a header's comparison key: NFKC, no spaces, ASCII lower-cased.

    Real files mix full- and half-width brackets (連絡先備考（その他、SNSなど） vs (…)), pad
    headers with spaces and write `No`, `NO` or `No.` for the old number column.
    """
    text = unicodedata.normalize("NFKC", header).strip().lstrip("\ufeff")
    text = "".join(ch for ch in text if not ch.isspace())
    return text.lower().rstrip(".")


R, REC, N = Level.REQUIRED, Level.RECOMMENDED, Level.OPTIONAL
CODE_HEADER: Final = "全国地方公共団体コード"
HAZARDS: Final = (
    ("災害種別_洪水", "flood"),
    ("災害種別_崖崩れ、土石流及び地滑り", "landslide"),
    ("災害種別_高潮", "stormSurge"),
    ("災害種別_地震", "earthquake"),
    ("災害種別_津波", "tsunami"),
    ("災害種別_大規模な火事", "largeFire"),
    ("災害種別_内水氾濫", "inlandFlooding"),
    ("災害種別_火山現象", "volcano"),
)


def _c(name: str, level: Level, kind: ColumnType, en: str, fallback: str | None = None) -> Column:
    return Column(name, level, kind, en, fallback)


def _head(with_publisher: bool) -> tuple[Column, ...]:
    cols = [_c(CODE_HEADER, REC, "code", "local government code"), _c("ID", REC, "id", "ID")]
    if with_publisher:
        cols.append(_c("地方公共団体名", N, "text", "local government name"))
    return tuple(cols)


def _names(english: str = "名称_英字") -> tuple[Column, ...]:
    return (
        _c("名称", R, "text", "name"),
        _c("名称_カナ", REC, "text", "name in kana"),
        _c(english, REC, "text", "name in English"),
    )


ADDRESS: Final = (
    _c("所在地_全国地方公共団体コード", REC, "code", "code of the location"),
    _c("町字ID", REC, "text", "town ID (address base registry)"),
    _c("所在地_連結表記", R, "text", "full address"),
    _c("所在地_都道府県", REC, "text", "prefecture"),
    _c("所在地_市区町村", REC, "text", "city"),
    _c("所在地_町字", REC, "text", "town"),
    _c("所在地_番地以下", REC, "text", "block and number"),
    _c("建物名等(方書)", N, "text", "building"),
)
COORDINATES: Final = (_c("緯度", REC, "lat", "lat"), _c("経度", REC, "lon", "lon"))
HEIGHT: Final = (
    _c("高度の種別", N, "text", "height type (階数/標高/地表高)"),
    _c("高度の値", N, "float", "height value"),
)


def _contact(phone: Level = REC) -> tuple[Column, ...]:
    return (
        _c("電話番号", phone, "phone", "phone"),
        _c("内線番号", N, "text", "extension"),
        _c("連絡先メールアドレス", N, "text", "contact e-mail"),
        _c("連絡先FormURL", N, "url", "contact form URL"),
        _c("連絡先備考（その他、SNSなど）", N, "text", "other contact (SNS...)"),
        _c("郵便番号", N, "text", "postal code"),
    )


IMAGE: Final = (
    _c("画像", REC, "url", "image"),
    _c("画像_ライセンス", REC, "text", "image licence"),
)
TAIL: Final = (_c("URL", REC, "url", "URL"), _c("備考", N, "text", "remarks"))

#: the old 推奨データセット head (都道府県コード又は市区町村コード, NO, 都道府県名, 市区町村名)
#: and address columns, shared by every kind
OLD_COMMON: Final = {
    "都道府県コード又は市区町村コード": CODE_HEADER,
    "NO": "ID",
    "都道府県名": "所在地_都道府県",
    "市区町村名": "地方公共団体名",
    "住所": "所在地_連結表記",
    "方書": "建物名等(方書)",
    "所在地": "所在地_連結表記",
    "建物名等": "建物名等(方書)",
}


def _aliases(*tables: dict[str, str]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for t in tables:
        merged.update(t)
    return merged


def _check_aliases(kind: DatasetKind) -> DatasetKind:
    names = set(kind.names)
    bad = sorted(new for new in kind.aliases.values() if new not in names)
    if bad:
        raise RuntimeError(f"{kind.slug}: aliases name unknown columns {bad}")
    if len(names) != len(kind.columns):
        raise RuntimeError(f"{kind.slug}: a column is defined twice")
    return kind


EVACUATION_SPACE: Final = _check_aliases(
    DatasetKind(
        slug="evacuation_space",
        title="指定緊急避難場所一覧",
        title_en="Designated emergency evacuation sites",
        number="03",
        columns=(
            *_head(with_publisher=False),
            *_names(),
            *ADDRESS,
            *COORDINATES,
            _c("標高", N, "float", "elevation (m)"),
            *_contact(phone=R),
            _c("市区町村コード", R, "code", "code of the designating body", fallback=CODE_HEADER),
            _c("地方公共団体名", N, "text", "local government name"),
            *(_c(name, R, "flag", f"hazard: {en}") for name, en in HAZARDS),
            _c("指定避難所との重複", R, "flag", "also a designated shelter"),
            _c("想定収容人数", REC, "int", "capacity (persons)"),
            _c("対象となる町会・自治会", REC, "list", "neighbourhood associations served"),
            _c("URL", REC, "url", "URL"),
            *IMAGE,
            _c("備考", N, "text", "remarks"),
        ),
        aliases=_aliases(
            OLD_COMMON,
            {"名称_英語": "名称_英字"},
            # GSI's 指定緊急避難場所データ (hinanmap.gsi.go.jp)
            {
                "施設・場所名": "名称",
                "洪水": "災害種別_洪水",
                "崖崩れ、土石流及び地滑り": "災害種別_崖崩れ、土石流及び地滑り",
                "高潮": "災害種別_高潮",
                "地震": "災害種別_地震",
                "津波": "災害種別_津波",
                "大規模な火事": "災害種別_大規模な火事",
                "内水氾濫": "災害種別_内水氾濫",
                "火山現象": "災害種別_火山現象",
                "指定避難所との住所同一": "指定避難所との重複",
            },
        ),
        entity="EvacuationShelter",
        tags=("防災", "避難", "指定緊急避難場所"),
    )
)

AED: Final = _check_aliases(
    DatasetKind(
        slug="aed",
        title="AED設置箇所一覧",
        title_en="AED locations",
        number="08",
        columns=(
            *_head(with_publisher=True),
            *_names(),
            *ADDRESS,
            *COORDINATES,
            *HEIGHT,
            _c("設置位置", REC, "text", "where in the building"),
            *_contact(),
            _c("法人番号", N, "text", "corporate number"),
            _c("団体名", N, "text", "organization"),
            _c("利用可能曜日", N, "text", "days available"),
            _c("開始時間", N, "time", "opens"),
            _c("終了時間", N, "time", "closes"),
            _c("利用可能日時特記事項", N, "text", "availability notes"),
            _c("小児対応設備の有無", N, "yesno", "paediatric pads (有/無)"),
            *IMAGE,
            *TAIL,
        ),
        aliases=_aliases(
            OLD_COMMON, {"名称_英語": "名称_英字", "利用可能時間特記事項": "利用可能日時特記事項"}
        ),
        partial=True,
        entity="PointOfInterest",
        category="defibrillator",
        tags=("AED", "医療", "防災"),
    )
)

PUBLIC_FACILITY: Final = _check_aliases(
    DatasetKind(
        slug="public_facility",
        title="公共施設一覧",
        title_en="Public facilities",
        number="01",
        columns=(
            *_head(with_publisher=True),
            *_names(),
            _c("名称_通称", N, "text", "common name"),
            _c("POIコード", N, "text", "POI code"),
            *ADDRESS,
            *COORDINATES,
            *HEIGHT,
            *_contact(),
            _c("法人番号", N, "text", "corporate number"),
            _c("団体名", N, "text", "organization"),
            _c("利用可能曜日", N, "text", "days open"),
            _c("開始時間", N, "time", "opens"),
            _c("終了時間", N, "time", "closes"),
            _c("利用可能時間特記事項", N, "text", "opening notes"),
            _c("アクセス方法", N, "text", "access"),
            _c("駐車場情報", N, "text", "parking"),
            _c("説明", N, "text", "description"),
            _c("バリアフリー情報", N, "text", "accessibility"),
            *IMAGE,
            *TAIL,
        ),
        aliases=_aliases(
            OLD_COMMON, {"名称_英語": "名称_英字", "利用可能日時特記事項": "利用可能時間特記事項"}
        ),
        partial=True,
        entity="PointOfInterest",
        category="publicFacility",
        tags=("公共施設",),
    )
)

HOSPITAL: Final = _check_aliases(
    DatasetKind(
        slug="hospital",
        title="医療機関一覧",
        title_en="Medical institutions",
        number="10",
        columns=(
            *_head(with_publisher=True),
            *_names(),
            _c("医療機関の種類", REC, "text", "kind (病院/有床診療所/無床診療所)"),
            *ADDRESS,
            *COORDINATES,
            *_contact(),
            _c("FAX番号", N, "phone", "fax"),
            _c("法人番号", N, "text", "corporate number"),
            _c("法人の名称", N, "text", "corporation"),
            _c("医療機関コード", N, "text", "medical institution code"),
            _c("診療曜日", N, "text", "consultation days"),
            _c("診療開始時間", N, "time", "consultation opens"),
            _c("診療終了時間", N, "time", "consultation closes"),
            _c("診療日時特記事項", N, "text", "consultation notes"),
            _c("時間外における対応", N, "text", "out-of-hours care"),
            _c("診療科目", N, "list", "departments"),
            _c("病床数", N, "int", "beds"),
            _c("災害拠点分類", N, "text", "disaster base hospital class"),
            _c("状況", N, "text", "status"),
            *TAIL,
        ),
        aliases=_aliases(OLD_COMMON, {"名称_英語": "名称_英字"}),
        partial=True,
        tags=("医療", "病院"),
    )
)

CARE_SERVICE: Final = _check_aliases(
    DatasetKind(
        slug="care_service",
        title="介護サービス事業所一覧",
        title_en="Long-term care service offices",
        number="09",
        columns=(
            *_head(with_publisher=True),
            *_names(),
            *ADDRESS,
            *COORDINATES,
            *_contact(),
            _c("FAX番号", N, "phone", "fax"),
            _c("法人番号", N, "text", "corporate number"),
            _c("法人の名称", N, "text", "corporation"),
            _c("事業所番号", N, "text", "office number"),
            _c("実施サービス", N, "list", "services"),
            _c("利用可能曜日", N, "text", "days available"),
            _c("利用可能曜日特記事項", N, "text", "availability notes"),
            _c("定員", N, "int", "capacity (persons)"),
            *TAIL,
        ),
        aliases=_aliases(
            OLD_COMMON,
            {
                "名称_英語": "名称_英字",
                "介護サービス事業所名称": "名称",
                "介護サービス事業所名称_カナ": "名称_カナ",
            },
        ),
        partial=True,
        tags=("介護", "福祉"),
    )
)

PUBLIC_TOILET: Final = _check_aliases(
    DatasetKind(
        slug="public_toilet",
        title="公衆トイレ一覧",
        title_en="Public toilets",
        number="13",
        columns=(
            *_head(with_publisher=True),
            *_names(english="名称_英語"),
            *ADDRESS,
            _c("設置位置", R, "text", "where it is"),
            *COORDINATES,
            *HEIGHT,
            _c("男性トイレ総数", REC, "int", "men's toilets"),
            _c("男性トイレ数（小便器）", N, "int", "men's urinals"),
            _c("男性トイレ数（和式）", N, "int", "men's squat toilets"),
            _c("男性トイレ数（洋式）", N, "int", "men's western toilets"),
            _c("女性トイレ総数", REC, "int", "women's toilets"),
            _c("女性トイレ数（和式）", N, "int", "women's squat toilets"),
            _c("女性トイレ数（洋式）", N, "int", "women's western toilets"),
            _c("男女共用トイレ総数", REC, "int", "unisex toilets"),
            _c("男女共用トイレ数（和式）", N, "int", "unisex squat toilets"),
            _c("男女共用トイレ数（洋式）", N, "int", "unisex western toilets"),
            _c("バリアフリートイレ数", REC, "int", "accessible toilets"),
            _c("車椅子使用者用トイレ有無", REC, "yesno", "wheelchair toilet (有/無)"),
            _c("乳幼児用設備設置トイレ有無", REC, "yesno", "baby facilities (有/無)"),
            _c("オストメイト設置トイレ有無", REC, "yesno", "ostomate facilities (有/無)"),
            _c("利用開始時間", REC, "time", "opens"),
            _c("利用終了時間", REC, "time", "closes"),
            _c("利用可能時間特記事項", N, "text", "opening notes"),
            *IMAGE,
            _c("備考", N, "text", "remarks"),
        ),
        aliases=_aliases(
            OLD_COMMON,
            {
                "名称_英字": "名称_英語",
                "多機能トイレ数": "バリアフリートイレ数",
                "利用可能日時特記事項": "利用可能時間特記事項",
            },
        ),
        tags=("トイレ", "公衆トイレ"),
    )
)

KINDS: Final[dict[str, DatasetKind]] = {
    k.slug: k
    for k in (EVACUATION_SPACE, AED, PUBLIC_FACILITY, HOSPITAL, CARE_SERVICE, PUBLIC_TOILET)
}


def kind_for(slug: str) -> DatasetKind:
    """Return the dataset kind with this slug (KeyError names the known ones)."""
    try:
        return KINDS[slug]
    except KeyError:
        raise KeyError(f"unknown dataset kind {slug!r}; one of {', '.join(KINDS)}") from None
