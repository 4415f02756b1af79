"""Find a CSV file's text encoding: the ones Japanese municipal files come in, in a fixed order.

Order: a byte-order mark first (UTF-8, UTF-16 LE/BE), then strict UTF-8, then UTF-16 without a
BOM (recognised by its NUL bytes: ASCII characters in UTF-16 have a zero high byte), then cp932
(Windows' Shift_JIS, Excel's default "CSV" in Japan). cp932 is tried last because almost any
byte string with few high bytes decodes as cp932, while text that is not UTF-8 rarely passes
strict UTF-8 decoding.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

#: encoding name -> how the report names it
LABELS = {
    "utf-8-sig": "UTF-8 (BOM付き / with BOM)",
    "utf-8": "UTF-8 (BOMなし / without BOM)",
    "utf-16-le-bom": "UTF-16LE (BOM付き / with BOM)",
    "utf-16-be-bom": "UTF-16BE (BOM付き / with BOM)",
    "utf-16-le": "UTF-16LE (BOMなし / without BOM)",
    "utf-16-be": "UTF-16BE (BOMなし / without BOM)",
    "cp932": "Shift_JIS (cp932)",
}


@dataclass(frozen=True, slots=True)
class Sniffed:
    """The decoded text and the encoding it was found in (a key of LABELS)."""

    text: str
    encoding: str

    @property
    def label(self) -> str:
        return LABELS[self.encoding]


class EncodingError(ValueError):
    """The bytes are in none of the accepted encodings; the message says where it failed."""

    def __init__(self, message_ja: str, message_en: str, line: int) -> None:
        super().__init__(message_en)
        self.message_ja = message_ja
        self.message_en = message_en
        self.line = line


def sniff(data: bytes) -> Sniffed:
    """Decode a file's bytes, trying the encodings municipal CSV files use, in order."""
    if data.startswith(codecs.BOM_UTF8):
        return Sniffed(_decode(data[3:], "utf-8"), "utf-8-sig")
    if data.startswith(codecs.BOM_UTF16_LE):
        return Sniffed(_decode(data[2:], "utf-16-le"), "utf-16-le-bom")
    if data.startswith(codecs.BOM_UTF16_BE):
        return Sniffed(_decode(data[2:], "utf-16-be"), "utf-16-be-bom")
    try:
        return Sniffed(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError as exc:
        utf8_failed_at = exc.start
    utf16 = _utf16_order(data)
    if utf16 is not None:
        return Sniffed(_decode(data, utf16), utf16)
    try:
        return Sniffed(data.decode("cp932"), "cp932")
    except UnicodeDecodeError as exc:
        # name the place where the likelier encoding (the one that read further) broke:
        # a UTF-8 file with one stray Shift_JIS cell fails as cp932 on its first line
        if utf8_failed_at > exc.start:
            raise _failure(data, "utf-8", utf8_failed_at) from None
        raise _failure(data, "cp932", exc.start) from None


def _utf16_order(data: bytes) -> str | None:
    """Return utf-16-le/-be when NULs sit mostly at odd/even offsets (CSV is mostly ASCII)."""
    if len(data) < 2 or len(data) % 2:
        return None
    even = data[0::2].count(0)
    odd = data[1::2].count(0)
    # commas and newlines alone make at least a tenth of a CSV's characters ASCII
    least = max(1, len(data) // 20)
    if odd >= least and even == 0:
        return "utf-16-le"
    if even >= least and odd == 0:
        return "utf-16-be"
    return None


def _decode(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _failure(data, encoding, exc.start) from None


def _failure(data: bytes, encoding: str, at: int) -> EncodingError:
    line = data[:at].decode(encoding, errors="replace").count("\n") + 1
    name = {"cp932": "Shift_JIS (cp932)", "utf-8": "UTF-8"}.get(encoding, encoding.upper())
    return EncodingError(
        f"{line}行目（先頭から{at}バイト目）が {name} として読めません。"
        "文字化けした文字を直し、UTF-8 で保存し直してください",
        f"line {line} (byte {at}) cannot be read as {name}; fix the garbled character and "
        "save the file as UTF-8",
        line,
    )
