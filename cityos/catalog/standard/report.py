"""The clerk's report: each problem in Japanese first, then in English, with line and column.

    エラー 12行目 「緯度」: 「139.59」は経度の値です。緯度と経度が入れ替わっているようです…
      error: line 12, column 緯度 (lat): "139.59" is a longitude: latitude and longitude look…

The same repair on many lines (a lost leading zero in every row) is one entry listing the lines,
so the errors are not buried.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cityos.catalog.standard.sniff import LABELS
from cityos.catalog.standard.validate import Problem, Validation

_WORDS = {"error": ("エラー", "error"), "repair": ("修復", "repaired"), "warning": ("注意", "note")}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the import did: rows written (0 when refused or a dry run)."""

    imported: int
    refused: bool
    dry_run: bool = False


def _word(p: Problem) -> tuple[str, str]:
    if p.is_error:
        return _WORDS["error"]
    return _WORDS["repair"] if p.repaired is not None else _WORDS["warning"]


def _ranges(lines: list[int]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for n in sorted(set(lines)):
        if spans and spans[-1][1] == n - 1:
            spans[-1] = (spans[-1][0], n)
        else:
            spans.append((n, n))
    return spans


def _lines_ja(lines: list[int]) -> str:
    if not lines:
        return "ファイル全体"
    parts = [str(a) if a == b else f"{a}〜{b}" for a, b in _ranges(lines)]
    return "、".join(parts) + "行目"


def _lines_en(lines: list[int]) -> str:
    if not lines:
        return "the whole file"
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in _ranges(lines)]
    return ("lines " if len(lines) > 1 else "line ") + ", ".join(parts)


def problem_lines(problems: Iterable[Problem]) -> list[str]:
    """Return the report's lines for these problems, identical ones grouped by line."""
    groups: dict[tuple[object, ...], list[Problem]] = {}
    for p in problems:
        key = (p.severity, p.repaired is not None, p.column, p.message_ja, p.message_en)
        groups.setdefault(key, []).append(p)
    out: list[str] = []
    for same in groups.values():
        p = same[0]
        lines = [q.line for q in same if q.line is not None]
        ja_word, en_word = _word(p)
        ja_where = _lines_ja(lines) + (f" 「{p.column}」" if p.column else "")
        en_where = _lines_en(lines)
        if p.column:
            en_where += f", column {p.column}" + (f" ({p.column_en})" if p.column_en else "")
        out.append(f"{ja_word} {ja_where}: {p.message_ja}")
        out.append(f"  {en_word}: {en_where}: {p.message_en}")
    return out


def summary_lines(v: Validation, outcome: Outcome) -> list[str]:
    """Return the closing lines: rows read, imported and skipped, encoding and repairs."""
    read = len(v.rows)
    bad = read - len(v.good_rows)
    errors, repairs = len(v.errors), len(v.repairs)
    enc_ja = LABELS.get(v.encoding or "", "不明")
    enc_en = LABELS.get(v.encoding or "", "unknown")
    skipped = read - outcome.imported
    if outcome.dry_run:
        would = 0 if outcome.refused else read - bad
        lines = [
            f"確認のみ（--dry-run）: {read}行を読み込み、取り込み可能 {would}行、"
            f"エラー {errors}件、修復 {repairs}件、文字コード {enc_ja}",
            f"dry run: read {read} rows, {would} importable; {errors} errors, "
            f"{repairs} repairs; encoding {enc_en}",
        ]
    else:
        lines = [
            f"{read}行を読み込み、取り込み {outcome.imported}行、スキップ {skipped}行、"
            f"エラー {errors}件、修復 {repairs}件、文字コード {enc_ja}",
            f"read {read} rows, imported {outcome.imported}, skipped {skipped}; "
            f"{errors} errors, {repairs} repairs; encoding {enc_en}",
        ]
    if outcome.refused:
        if v.fatal or not v.good_rows:
            lines += [
                "取り込みを中止しました。上のエラーを直してから、もう一度実行してください",
                "refused: nothing was imported; fix the errors above and run again",
            ]
        else:
            lines += [
                "取り込みを中止しました。エラーを直すか、--partial で正しい行だけを取り込めます",
                "refused: nothing was imported; fix the errors, or import the good rows "
                "with --partial",
            ]
    return lines


def render(v: Validation, outcome: Outcome) -> list[str]:
    """Return the whole report: the kind and encoding, every problem, the summary."""
    head = [
        f"{v.kind.title}（{v.kind.slug}）文字コード: {LABELS.get(v.encoding or '', '不明')}",
    ]
    return head + problem_lines(v.problems) + summary_lines(v, outcome)
