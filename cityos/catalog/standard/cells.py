"""Check and clean one cell of a standard-dataset CSV by its column type (pure).

A cell is repaired only where a clerk would not hesitate (full-width digits, `9:00` for
`09:00`, `1,200人` for `1200`, a lost leading zero of a 全国地方公共団体コード); anything else
raises CellError with the reason, which catalog/standard/validate.py turns into a problem
naming the line and column.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cityos.catalog.standard import codes
from cityos.catalog.standard.schemas import ColumnType

#: Japan's bounding box, with the remote islands (Okinotori 20.4 N, Minamitori 153.98 E)
LAT_RANGE = (20.0, 46.0)
LON_RANGE = (122.0, 154.0)

_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)$")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})(:00)?$")
_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_PHONE = re.compile(r"^\+?[\d\-() ]+$")
_ID = re.compile(r"^[A-Za-z0-9_\-]+$")
_COUNT_UNITS = ("人", "名", "床", "台", "基", "箇所", "か所", "ヶ所")


class CellError(ValueError):
    """The cell's value is wrong for its column; the messages say why and how to fix it."""

    def __init__(self, message_ja: str, message_en: str) -> None:
        super().__init__(message_en)
        self.message_ja = message_ja
        self.message_en = message_en


@dataclass(frozen=True, slots=True)
class Cell:
    """A checked value and, when it differs from the file's, why (Japanese, English)."""

    value: str
    repair_ja: str | None = None
    repair_en: str | None = None


def _half(raw: str, *, dashes: bool = False) -> tuple[str, bool]:
    """Return NFKC text (full-width digits, colons, ： made half-width) and if it changed.

    With dashes, the look-alikes typed for a hyphen (ー − ‐) become `-` too (phone numbers).
    """
    text = unicodedata.normalize("NFKC", raw)
    if dashes:
        text = text.replace("ー", "-").replace("−", "-").replace("‐", "-")
    return text, text != raw


def _width(value: str, changed: bool) -> Cell:
    if changed:
        return Cell(value, "全角を半角に", "full-width characters made half-width")
    return Cell(value)


def check(kind: ColumnType, raw: str, *, hints: Collection[str] = ()) -> Cell:
    """Check one non-empty, stripped cell by its column type."""
    return _CHECKS[kind](raw, hints)


def _text(raw: str, _: Collection[str]) -> Cell:
    return Cell(raw)


def _id(raw: str, _: Collection[str]) -> Cell:
    text, changed = _half(raw)
    if not _ID.match(text):
        raise CellError(
            "IDは半角英数字（と - _）で書いてください", "an ID is half-width letters and digits"
        )
    return _width(text, changed)


def _code(raw: str, hints: Collection[str]) -> Cell:
    try:
        fix = codes.repair(raw, hints)
    except codes.CodeError as exc:
        raise CellError(exc.message_ja, exc.message_en) from None
    return Cell(fix.code, fix.repair_ja, fix.repair_en)


def _int(raw: str, _: Collection[str]) -> Cell:
    text, changed = _half(raw)
    notes_ja, notes_en = (["全角を半角に"], ["full-width made half-width"]) if changed else ([], [])
    if text.startswith("約"):
        text = text[1:].strip()
        notes_ja.append("「約」を削除")
        notes_en.append("'約' (about) removed")
    for unit in _COUNT_UNITS:
        if text.endswith(unit):
            text = text[: -len(unit)].strip()
            notes_ja.append(f"単位「{unit}」を削除")
            notes_en.append(f"unit '{unit}' removed")
            break
    if re.fullmatch(r"\d{1,3}(,\d{3})+", text):
        text = text.replace(",", "")
        notes_ja.append("桁区切りのカンマを削除")
        notes_en.append("thousands separators removed")
    if not _INT.match(text) or text.startswith("-"):
        raise CellError(
            "0以上の整数（数字のみ）で書いてください", "not a whole number (digits only, 0 or more)"
        )
    text = str(int(text))
    if notes_ja:
        return Cell(text, "、".join(notes_ja), "; ".join(notes_en))
    return Cell(text)


def _float(raw: str, _: Collection[str]) -> Cell:
    text, changed = _half(raw)
    if not _FLOAT.match(text):
        raise CellError("数値（半角、小数点は .）で書いてください", "not a decimal number")
    return _width(text, changed)


def _degrees(raw: str, _: Collection[str]) -> Cell:
    text, changed = _half(raw)
    if not _FLOAT.match(text):
        raise CellError(
            "10進数の度（例 36.3144）で書いてください（度分秒は不可）",
            "not decimal degrees (e.g. 36.3144; degrees-minutes-seconds are not accepted)",
        )
    return _width(text, changed)


def _one_time(text: str) -> tuple[str, bool]:
    m = _TIME.match(text.strip())
    if not m:
        raise CellError(
            f"「{text}」は時刻ではありません（hh:mm、例 09:00）",
            f'"{text}" is not a time (hh:mm, e.g. 09:00)',
        )
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 24 or minute > 59 or (hour == 24 and minute):
        raise CellError(
            f"「{text}」はありえない時刻です（00:00〜24:00）",
            f'"{text}" is not a time of day (00:00 to 24:00)',
        )
    value = f"{hour:02d}:{minute:02d}"
    return value, value != text.strip()


def _time(raw: str, _: Collection[str]) -> Cell:
    text, changed = _half(raw)
    parts = [_one_time(p) for p in text.split(";")]  # several sessions: "09:00;14:00"
    value = ";".join(p for p, _ in parts)
    if changed or any(c for _, c in parts):
        return Cell(value, "hh:mm 形式に", "written as hh:mm")
    return Cell(value)


_FLAG_YES = {"○", "◎", "〇", "●", "有", "あり", "はい", "true", "TRUE", "True"}
_FLAG_NO = {"0", "×", "✕", "無", "なし", "-", "false", "FALSE", "False"}


def _flag(raw: str, _: Collection[str]) -> Cell:
    text, changed = _half(raw)
    if text == "1":
        return _width(text, changed)
    if text in _FLAG_YES:
        return Cell("1", "該当は 1", "1 means it applies")
    if text in _FLAG_NO:
        return Cell("", "非該当は空欄", "empty means it does not apply")
    raise CellError(
        "該当する場合は 1、しない場合は空欄にしてください",
        "write 1 when it applies, else leave empty",
    )


_YES = {"有り", "あり", "アリ", "○", "〇", "◎", "1", "はい"}
_NO = {"無し", "なし", "ナシ", "×", "✕", "0", "いいえ", "-"}


def _yesno(raw: str, _: Collection[str]) -> Cell:
    text, _changed = _half(raw)
    if raw in ("有", "無"):
        return Cell(raw)
    if raw in _YES or text in _YES:
        return Cell("有", "有/無 で記入", "written as 有/無")
    if raw in _NO or text in _NO:
        return Cell("無", "有/無 で記入", "written as 有/無")
    raise CellError("「有」か「無」で書いてください", "write 有 (yes) or 無 (no)")


def _list(raw: str, _: Collection[str]) -> Cell:
    items = [p.strip() for p in raw.replace("；", ";").split(";")]
    value = ";".join(p for p in items if p)
    if "；" in raw:
        return Cell(value, "全角の；を半角の;に", "full-width ； made ;")
    return Cell(value)


def _url(raw: str, _: Collection[str]) -> Cell:
    # no normalization: a URL's path may hold any character
    if not re.match(r"^https?://[^\s/]+", raw) or re.search(r"\s", raw):
        raise CellError(
            "http:// か https:// で始まるURLを書いてください（空白は不可）",
            "not a URL starting with http:// or https:// (no spaces)",
        )
    return Cell(raw)


def _phone(raw: str, _: Collection[str]) -> Cell:
    text, changed = _half(raw, dashes=True)
    digits = sum(ch.isdigit() for ch in text)
    if not _PHONE.match(text) or digits < 6:
        raise CellError(
            "電話番号は半角数字とハイフンで書いてください（例 0283-24-5111）",
            "not a phone number (digits and hyphens, e.g. 0283-24-5111)",
        )
    return _width(text, changed)


def _date(raw: str, _: Collection[str]) -> Cell:
    text, _changed = _half(raw)
    m = _DATE.match(text)
    try:
        if not m:
            raise ValueError(text)
        day = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        raise CellError(
            "日付は YYYY-MM-DD（西暦、例 2026-04-01）で書いてください",
            "not a date (YYYY-MM-DD, e.g. 2026-04-01)",
        ) from None
    value = day.isoformat()
    if value != raw:
        return Cell(value, "YYYY-MM-DD 形式に", "written as YYYY-MM-DD")
    return Cell(value)


_CHECKS: dict[ColumnType, Callable[[str, Collection[str]], Cell]] = {
    "text": _text,
    "id": _id,
    "code": _code,
    "int": _int,
    "float": _float,
    "lat": _degrees,
    "lon": _degrees,
    "time": _time,
    "flag": _flag,
    "yesno": _yesno,
    "list": _list,
    "url": _url,
    "phone": _phone,
    "date": _date,
}


def in_lat(value: float) -> bool:
    return LAT_RANGE[0] <= value <= LAT_RANGE[1]


def in_lon(value: float) -> bool:
    return LON_RANGE[0] <= value <= LON_RANGE[1]
