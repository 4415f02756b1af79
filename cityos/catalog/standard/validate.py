"""Check a standard-dataset CSV: rows -> typed records and a list of line-precise problems.

Each cell is cleaned by its column type (catalog/standard/cells.py); anything that needs a
judgement is an error naming the line (as counted in the file), the column (as headed in the
file), the value and the fix. The file as a
whole fails when a required column is missing or two headers mean the same column.

Swapped coordinates are reported as errors with the corrected pair, not repaired: a swap is
often a sign that the row was filled by hand, and the clerk should look at it.
"""

from __future__ import annotations

import csv
import difflib
import io
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from cityos.catalog.standard import codes
from cityos.catalog.standard.cells import CellError, check, in_lat, in_lon
from cityos.catalog.standard.schemas import (
    CODE_HEADER,
    ColumnType,
    DatasetKind,
    header_key,
)
from cityos.catalog.standard.sniff import EncodingError, sniff

Severity = Literal["error", "warning"]


# -- rows and files ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong (error) or repaired or doubtful (warning) in the file."""

    line: int | None  # line in the file, counted from 1 as an editor does; None: whole file
    column: str | None  # the header as written in the file
    column_en: str | None  # the column's English label
    value: str | None
    message_ja: str
    message_en: str
    severity: Severity
    repaired: str | None = None  # the value written instead, for a repair

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


@dataclass(slots=True)
class Row:
    """One data row: checked values under current headers; ok when it had no error."""

    line: int
    values: dict[str, str] = field(default_factory=dict)
    ok: bool = True


#: datastore field type of each column type
FIELD_TYPES: dict[ColumnType, str] = {
    "int": "int",
    "float": "numeric",
    "lat": "numeric",
    "lon": "numeric",
}  # everything else is text: codes keep their leading zeros


@dataclass(slots=True)
class Validation:
    """The outcome of checking one file: its rows, its problems and what was found."""

    kind: DatasetKind
    encoding: str | None  # a key of sniff.LABELS, None when the bytes could not be read
    columns: list[str] = field(default_factory=list)  # output headers, standard order first
    types: dict[str, ColumnType] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: the file as a whole is refused (unreadable, or required columns missing)
    fatal: bool = False

    @property
    def good_rows(self) -> list[Row]:
        return [r for r in self.rows if r.ok]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    @property
    def repairs(self) -> list[Problem]:
        return [p for p in self.problems if p.repaired is not None]

    def importable(self, *, partial: bool) -> bool:
        """Tell whether anything may be imported: all rows fine, or (partial) some rows fine."""
        if self.fatal or not self.good_rows:
            return False
        return partial or not self.errors

    def record(self, row: Row) -> dict[str, Any]:
        """Return a checked row with typed values (int, float, str; None when empty)."""
        out: dict[str, Any] = {}
        for name in self.columns:
            value = row.values.get(name, "")
            kind = self.types[name]
            if value == "":
                out[name] = None
            elif kind == "int":
                out[name] = int(value)
            elif FIELD_TYPES.get(kind) == "numeric":
                out[name] = float(value)
            else:
                out[name] = value
        return out

    def fields(self) -> list[dict[str, Any]]:
        """Return the datastore fields: current headers, types, English label and level."""
        out: list[dict[str, Any]] = []
        by_name = {c.name: c for c in self.kind.columns}
        for name in self.columns:
            f: dict[str, Any] = {"id": name, "type": FIELD_TYPES.get(self.types[name], "text")}
            col = by_name.get(name)
            if col is not None:
                level = {"◎": "必須 required", "○": "推奨 recommended"}.get(col.level.value)
                f["info"] = {"label": col.en, **({"notes": level} if level else {})}
            out.append(f)
        return out

    def city_code(self) -> str | None:
        """Return the publisher's code most rows give, if any."""
        counts: dict[str, int] = {}
        for row in self.good_rows:
            code = row.values.get(CODE_HEADER, "")
            if codes.is_valid(code):
                counts[code] = counts.get(code, 0) + 1
        return max(counts, key=lambda c: (counts[c], c)) if counts else None


ADDRESS_PARTS = ("所在地_都道府県", "所在地_市区町村", "所在地_町字", "所在地_番地以下")
FULL_ADDRESS = "所在地_連結表記"


def validate(data: bytes, kind: DatasetKind) -> Validation:
    """Decode and check a file's bytes as a dataset of this kind."""
    try:
        sniffed = sniff(data)
    except EncodingError as exc:
        v = Validation(kind, None, fatal=True)
        v.problems.append(
            Problem(exc.line, None, None, None, exc.message_ja, exc.message_en, "error")
        )
        return v
    return validate_text(sniffed.text, kind, encoding=sniffed.encoding)


def validate_text(text: str, kind: DatasetKind, *, encoding: str = "utf-8") -> Validation:
    """Check a file's text as a dataset of this kind."""
    return _Checker(kind, Validation(kind, encoding)).run(text)


def _strip(raw: str) -> str:
    return raw.strip(" \t\r\n\u3000\ufeff")


class _Checker:
    """One pass over a file: headers first, then every row."""

    def __init__(self, kind: DatasetKind, out: Validation) -> None:
        self.kind = kind
        self.out = out
        self.by_name = {c.name: c for c in kind.columns}
        self.shown: dict[str, str] = {}  # current header -> header as in the file
        self.targets: list[str | None] = []
        self.filled: dict[str, str] = {}  # missing column -> column it is filled from
        self.join_address = False
        self.generate_ids = False
        self.hints: set[str] = set()
        self.ids: dict[str, int] = {}

    # problems
    def _problem(
        self,
        severity: Severity,
        line: int | None,
        target: str | None,
        value: str | None,
        ja: str,
        en: str,
        repaired: str | None = None,
    ) -> None:
        column = self.shown.get(target, target) if target is not None else None
        col = self.by_name.get(target) if target is not None else None
        label = col.en if col is not None else None
        self.out.problems.append(Problem(line, column, label, value, ja, en, severity, repaired))

    def error(
        self, line: int | None, target: str | None, value: str | None, ja: str, en: str
    ) -> None:
        self._problem("error", line, target, value, ja, en)

    def warning(
        self,
        line: int | None,
        target: str | None,
        value: str | None,
        ja: str,
        en: str,
        repaired: str | None = None,
    ) -> None:
        self._problem("warning", line, target, value, ja, en, repaired)

    # the pass
    def run(self, text: str) -> Validation:
        try:
            records = list(_records(text))
        except csv.Error as exc:
            self.out.fatal = True
            self.error(None, None, None, f"CSVとして読めません: {exc}", f"not a CSV file: {exc}")
            return self.out
        if not records:
            self.out.fatal = True
            self.error(None, None, None, "ファイルが空です", "the file is empty")
            return self.out
        at = self._header_index(records)
        header_line, header = records[at]
        if at:
            self.warning(
                header_line,
                None,
                None,
                f"見出しの上の{header_line - 1}行（表題など）は読み飛ばしました。"
                "見出しは1行目に置いてください",
                f"the {header_line - 1} line(s) above the header (a title?) were skipped; "
                "put the header on line 1",
            )
        self._headers(header_line, header)
        if self.out.fatal:
            return self._finish()
        data = records[at + 1 :]
        for _, cells in data:
            self._collect_hints(cells)
        for line, cells in data:
            if any(_strip(c) for c in cells):
                self._row(line, cells, len(header))
        if not self.out.rows:
            self.error(None, None, None, "データの行がありません", "the file has no data rows")
        return self._finish()

    def _header_index(self, records: list[tuple[int, list[str]]]) -> int:
        """Return which of the first records is the header: the first naming 2 known columns."""
        for i, (_, cells) in enumerate(records[:10]):
            known = {self.kind.resolve(c) for c in cells if _strip(c)} - {None}
            if len(known) >= 2:
                return i
        return 0

    def _finish(self) -> Validation:
        order = {n: i for i, n in enumerate(self.out.columns)}
        self.out.problems.sort(
            key=lambda p: (p.line or 0, order.get(self._target_of(p.column), len(order)))
        )
        return self.out

    def _target_of(self, column: str | None) -> str:
        for target, shown in self.shown.items():
            if shown == column:
                return target
        return column or ""

    def _headers(self, line: int, header: list[str]) -> None:
        unknown: list[str] = []
        renamed: list[tuple[str, str]] = []
        for cell in header:
            shown = _strip(cell)
            if not shown:
                self.targets.append(None)
                continue
            target = self.kind.resolve(shown)
            if target is None and not _usable_extra(shown):
                self.targets.append(None)
                self.warning(
                    line,
                    None,
                    shown,
                    f"見出し「{shown}」は使えない名前のため、この列は取り込みません"
                    '（先頭の _、"、%、64文字以上は不可）',
                    f'the column "{shown}" is left out: its header cannot name a field '
                    '(no leading _, no " or %, at most 63 characters)',
                )
                continue
            if target is None:
                target = shown
                unknown.append(shown)
            elif header_key(target) != header_key(shown):
                renamed.append((shown, target))
            if target in self.shown:
                self.out.fatal = True
                self.error(
                    line,
                    None,
                    None,
                    f"見出し「{self.shown[target]}」と「{shown}」はどちらも「{target}」です。"
                    "片方の列を削除してください",
                    f'columns "{self.shown[target]}" and "{shown}" both mean "{target}"; '
                    "remove one of them",
                )
            self.shown[target] = shown
            self.targets.append(target)
        present = set(self.shown)
        missing = [c for c in self.kind.columns if c.name not in present]
        for c in missing:
            if c.fallback and c.fallback in present:
                self.filled[c.name] = c.fallback
                self.warning(
                    line,
                    c.name,
                    None,
                    f"列「{c.name}」がないため「{self.shown[c.fallback]}」の値を使います",
                    f'no column "{c.name}": filled from "{self.shown[c.fallback]}"',
                )
            elif c.name == FULL_ADDRESS and any(p in present for p in ADDRESS_PARTS):
                self.join_address = True
                self.warning(
                    line,
                    c.name,
                    None,
                    f"列「{c.name}」がないため所在地の各列をつなげて作ります",
                    f'no column "{c.name}": made by joining the address parts',
                )
            elif c.name == "ID":
                self.generate_ids = True
                self.warning(
                    line,
                    "ID",
                    None,
                    "列「ID」がないため行番号をIDにします（L + 行番号）",
                    'no column "ID": each row gets its line number as ID (L + line)',
                )
            elif c.required:
                self.out.fatal = True
                near = [h for h in unknown if c.name in h or h in c.name]
                near += difflib.get_close_matches(c.name, unknown, n=1, cutoff=0.5)
                hint_ja = (
                    f"（「{near[0]}」のことなら見出しを「{c.name}」に直してください）"
                    if near
                    else ""
                )
                hint_en = f' (if "{near[0]}" is meant, rename it "{c.name}")' if near else ""
                self.error(
                    line,
                    c.name,
                    None,
                    f"必須の列「{c.name}」がありません{hint_ja}",
                    f'the required column "{c.name}" ({c.en}) is missing{hint_en}',
                )
        if renamed:
            pairs_ja = "、".join(f"{old}→{new}" for old, new in renamed)
            pairs_en = ", ".join(f"{old} -> {new}" for old, new in renamed)
            self.warning(
                line,
                None,
                None,
                f"旧形式（推奨データセット等）の見出しを現行の見出しに読み替えました: {pairs_ja}",
                f"old-format headers read as the current ones: {pairs_en}",
            )
        for name in unknown:
            self.warning(
                line,
                name,
                None,
                f"見出し「{name}」は{self.kind.title}の項目にありません。末尾の列として残します",
                f'"{name}" is not a column of {self.kind.title}; kept as an extra column',
            )
        self.out.columns = [*self.kind.names, *unknown]
        self.out.types = {c.name: c.type for c in self.kind.columns}
        self.out.types.update(dict.fromkeys(unknown, "text"))

    def _collect_hints(self, cells: list[str]) -> None:
        for i, target in enumerate(self.targets):
            col = self.by_name.get(target) if target is not None else None
            if col is not None and col.type == "code" and i < len(cells):
                text = unicodedata.normalize("NFKC", cells[i]).strip()
                if codes.is_valid(text):
                    self.hints.add(text)

    def _row(self, line: int, cells: list[str], width: int) -> None:
        row = Row(line)
        self.out.rows.append(row)
        if len(cells) > width and any(_strip(c) for c in cells[width:]):
            row.ok = False
            self.error(
                line,
                None,
                None,
                f"値が{len(cells)}個あり、見出しの{width}列より多くなっています。"
                'カンマを含む値は "…" で囲んでください',
                f"{len(cells)} values but {width} columns; quote values that contain a comma "
                '("...")',
            )
            return
        for i, target in enumerate(self.targets):
            raw = _strip(cells[i]) if i < len(cells) else ""
            if target is None:
                continue
            if not raw:
                row.values[target] = ""
                continue
            col = self.by_name.get(target)
            try:
                cell = check(col.type if col else "text", raw, hints=self.hints)
            except CellError as exc:
                row.ok = False
                row.values[target] = raw
                ja, en = exc.message_ja, exc.message_en
                if f"「{raw}」" not in ja:  # show the clerk the value that is wrong
                    ja, en = f"「{raw}」: {ja}", f'"{raw}": {en}'
                self.error(line, target, raw, ja, en)
                continue
            row.values[target] = cell.value
            if cell.repair_ja is not None and cell.repair_en is not None:
                ja = f"「{raw}」→「{cell.value}」（{cell.repair_ja}）"
                en = f'"{raw}" -> "{cell.value}" ({cell.repair_en})'
                self.warning(line, target, raw, ja, en, repaired=cell.value)
        for name, source in self.filled.items():
            row.values[name] = row.values.get(source, "")
        self._address(row)
        self._required(row)
        self._coordinates(row)
        self._id(row)

    def _address(self, row: Row) -> None:
        if row.values.get(FULL_ADDRESS):
            return
        joined = "".join(row.values.get(p, "") for p in ADDRESS_PARTS)
        # a prefecture and a city alone are no address (old files give the publisher's)
        if not (row.values.get("所在地_町字") or any(ch.isdigit() for ch in joined)):
            return
        building = row.values.get("建物名等(方書)", "")
        if building:
            joined = f"{joined} {building}"
        row.values[FULL_ADDRESS] = joined
        if not self.join_address:  # the column exists but this cell is empty
            self.warning(
                row.line,
                FULL_ADDRESS,
                "",
                f"空欄のため所在地の各列をつなげました:「{joined}」",
                f'empty: made from the address parts: "{joined}"',
                repaired=joined,
            )

    def _required(self, row: Row) -> None:
        for c in self.kind.columns:
            empty = c.required and c.type != "flag" and not row.values.get(c.name)
            if empty and (c.name in self.shown or c.name in self.filled or c.name == FULL_ADDRESS):
                row.ok = False
                self.error(
                    row.line,
                    c.name,
                    "",
                    "必須項目（◎）のため空欄にできません",
                    "empty, but the standard requires a value here (◎)",
                )

    def _coordinates(self, row: Row) -> None:
        lat_s, lon_s = row.values.get("緯度", ""), row.values.get("経度", "")
        if not lat_s and not lon_s:
            if self.kind.entity is not None and row.ok:
                self.warning(
                    row.line,
                    "緯度",
                    "",
                    "緯度・経度がないため地図には表示されません",
                    "no latitude/longitude: the row will not appear on maps",
                )
            return
        if not lat_s or not lon_s:
            row.ok = False
            which = "経度" if lat_s else "緯度"
            self.error(
                row.line,
                which,
                "",
                "緯度と経度は両方書いてください（片方だけは不可）",
                "latitude and longitude go together; one of them is empty",
            )
            return
        try:
            lat, lon = float(lat_s), float(lon_s)
        except ValueError:
            return  # already reported as not a number
        if in_lat(lat) and in_lon(lon):
            return
        row.ok = False
        if in_lon(lat) and in_lat(lon):
            self.error(
                row.line,
                "緯度",
                lat_s,
                f"「{lat_s}」は経度の値です。緯度と経度が入れ替わっているようです"
                f"（緯度 {lon_s}、経度 {lat_s} に直してください）",
                f'"{lat_s}" is a longitude: latitude and longitude look swapped '
                f"(write 緯度 {lon_s}, 経度 {lat_s})",
            )
            return
        if not in_lat(lat):
            self.error(
                row.line,
                "緯度",
                lat_s,
                f"緯度「{lat_s}」は日本の範囲（北緯20〜46度）の外です",
                f"latitude {lat_s} is outside Japan (20 to 46 N)",
            )
        if not in_lon(lon):
            self.error(
                row.line,
                "経度",
                lon_s,
                f"経度「{lon_s}」は日本の範囲（東経122〜154度）の外です",
                f"longitude {lon_s} is outside Japan (122 to 154 E)",
            )

    def _id(self, row: Row) -> None:
        value = row.values.get("ID", "")
        if not value:
            value = f"L{row.line}"
            row.values["ID"] = value
            if not self.generate_ids:
                self.warning(
                    row.line,
                    "ID",
                    "",
                    f"IDが空欄のため「{value}」にしました",
                    f'empty ID: "{value}" given',
                    repaired=value,
                )
        first = self.ids.setdefault(value, row.line)
        if first != row.line:
            row.ok = False
            self.error(
                row.line,
                "ID",
                value,
                f"ID「{value}」は{first}行目と重複しています",
                f'ID "{value}" is already used on line {first}',
            )


def _usable_extra(header: str) -> bool:
    """Tell whether an unknown header can name a datastore field (catalog/datastore.py)."""
    return (
        not header.startswith("_") and '"' not in header and "%" not in header and len(header) <= 63
    )


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line where the record starts, cells); tab-separated when the header says so."""
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    for cells in reader:
        yield start, cells
        start = reader.line_num + 1
