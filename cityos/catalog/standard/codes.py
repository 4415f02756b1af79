"""全国地方公共団体コード (JIS X 0402 with its check digit): check and repair.

A code is 6 half-width digits: 2 for the prefecture (01-47), 3 for the municipality, and a
check digit, `cd = (11 - (6*d1 + 5*d2 + 4*d3 + 3*d4 + 2*d5) % 11) % 10` (Sano: 09204 -> 092045).
Real files damage codes in two ways: Excel drops the leading zero (`92045`) and some lists
give the 5-digit code without its check digit (`09204`). Both leave 5 digits, so a repair is
made only when exactly one reading gives a well-formed code; when both do, a code the file
itself spells out in full decides, else the clerk is asked. A repair never invents a code
that fails its check digit, and a 6-digit code with a wrong check digit is an error (the
digit that is wrong cannot be known).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass

_WEIGHTS = (6, 5, 4, 3, 2)
_EXCEL_FLOAT = re.compile(r"^(\d+)\.0+$")


def check_digit(five: str) -> str:
    """Return the JIS X 0402 check digit of a 5-digit code."""
    if len(five) != 5 or not five.isascii() or not five.isdigit():
        raise ValueError(f"{five!r} is not 5 digits")
    total = sum(w * int(d) for w, d in zip(_WEIGHTS, five, strict=True))
    return str((11 - total % 11) % 10)


def prefecture_ok(two: str) -> bool:
    """Tell whether two digits are a prefecture number (01 Hokkaido to 47 Okinawa)."""
    return two.isdigit() and 1 <= int(two) <= 47


def is_valid(code: str) -> bool:
    """Tell whether a string is a well-formed 6-digit code with a correct check digit."""
    return (
        len(code) == 6
        and code.isascii()
        and code.isdigit()
        and prefecture_ok(code[:2])
        and check_digit(code[:5]) == code[5]
    )


@dataclass(frozen=True, slots=True)
class CodeFix:
    """A checked code and, when it had to be repaired, what was done (Japanese, English)."""

    code: str
    repair_ja: str | None = None
    repair_en: str | None = None

    @property
    def repaired(self) -> bool:
        return self.repair_ja is not None


class CodeError(ValueError):
    """The value is not a code and cannot be repaired safely; the messages say why."""

    def __init__(self, message_ja: str, message_en: str) -> None:
        super().__init__(message_en)
        self.message_ja = message_ja
        self.message_en = message_en


def repair(raw: str, hints: Collection[str] = ()) -> CodeFix:
    """Check a code, repairing a lost leading zero or a missing check digit when unambiguous.

    `hints` are full codes the file spells out elsewhere; they decide between two readings.
    """
    text = unicodedata.normalize("NFKC", raw).strip()
    notes_ja: list[str] = []
    notes_en: list[str] = []
    if text != raw.strip():
        notes_ja.append("全角を半角に")
        notes_en.append("full-width digits made half-width")
    if m := _EXCEL_FLOAT.match(text):
        text = m.group(1)
        notes_ja.append("小数点以下を削除")
        notes_en.append("decimal point removed")
    if not (text.isascii() and text.isdigit()):
        raise CodeError("6桁の半角数字ではありません", "not a 6-digit number")
    code, ja, en = _repair_digits(text, hints)
    notes_ja += ja
    notes_en += en
    if not notes_ja:
        return CodeFix(code)
    return CodeFix(code, "、".join(notes_ja), "; ".join(notes_en))


def _repair_digits(s: str, hints: Collection[str]) -> tuple[str, list[str], list[str]]:
    if len(s) == 6:
        if is_valid(s):
            return s, [], []
        if not prefecture_ok(s[:2]):
            raise CodeError(
                f"先頭2桁 {s[:2]} は都道府県番号（01〜47）ではありません",
                f"the first two digits {s[:2]} are not a prefecture (01-47)",
            )
        right = s[:5] + check_digit(s[:5])
        raise CodeError(
            f"検査数字が合いません（{s[:5]} なら {right}）。コードを確認してください",
            f"wrong check digit (if {s[:5]} is right the code is {right}); check the code",
        )
    if len(s) == 5:
        zero = "0" + s
        readings: list[tuple[str, str, str]] = []
        if is_valid(zero):
            readings.append((zero, "先頭の0を補完", "leading zero restored"))
        if prefecture_ok(s[:2]):
            full = s + check_digit(s)
            readings.append((full, "検査数字を付加", "check digit added"))
        if len(readings) == 1:
            code, ja, en = readings[0]
            return code, [ja], [en]
        if len(readings) == 2:
            known = [r for r in readings if r[0] in hints]
            if len(known) == 1:
                code, ja, en = known[0]
                return (
                    code,
                    [f"{ja}（ファイル中の {code} と一致）"],
                    [f"{en} (as {code} elsewhere)"],
                )
            a, b = readings[0][0], readings[1][0]
            raise CodeError(
                f"5桁のため {a}（先頭の0が欠落）か {b}（検査数字なし）か判別できません。"
                "6桁で記入してください",
                f"5 digits: either {a} (leading zero lost) or {b} (no check digit); "
                "write the 6-digit code",
            )
        if s[:2] == "00":
            raise CodeError(
                "先頭2桁 00 は都道府県番号（01〜47）ではありません",
                "the first two digits 00 are not a prefecture (01-47)",
            )
        right = "0" + s[:4] + check_digit("0" + s[:4])
        raise CodeError(
            f"5桁で、先頭に0を補っても検査数字が合いません（0{s[:4]} なら {right}）",
            f"5 digits, and with a leading zero the check digit is wrong "
            f"(if 0{s[:4]} is right the code is {right})",
        )
    if len(s) == 4 and prefecture_ok("0" + s[0]):
        five = "0" + s
        return (
            five + check_digit(five),
            ["先頭の0を補完し検査数字を付加"],
            ["leading zero restored and check digit added"],
        )
    raise CodeError(f"{len(s)}桁です（6桁が必要）", f"{len(s)} digits (6 needed)")
