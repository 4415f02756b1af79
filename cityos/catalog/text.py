"""Japanese-aware search tokens: CJK runs as character bigrams, other words lowercased.

Text is NFKC-normalized first, so full-width ＡＢＣ１２３ and half-width ｶﾀｶﾅ match their usual
forms. A CJK run of one character is kept as itself. The index stores tokens joined by spaces;
a query word matches as the phrase of its own tokens, so 文化会館 (文化 化会 会館) finds
佐野市文化会館 (佐野 野市 市文 文化 化会 会館) and the two-character word 避難 is one token.
"""

from __future__ import annotations

import unicodedata


def is_cjk(ch: str) -> bool:
    """Return True for a Han, Hiragana or Katakana character (and 々, ー)."""
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FA  # hiragana, katakana (not the middle dot ・)
        or 0x30FC <= o <= 0x30FF  # ー and katakana iteration marks
        or 0x3400 <= o <= 0x4DBF
        or 0x4E00 <= o <= 0x9FFF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x3FFFF
        or o in (0x3005, 0x3006, 0x3007)  # 々 〆 〇
    )


def normalize(text: str) -> str:
    """Return text NFKC-normalized and lowercased."""
    return unicodedata.normalize("NFKC", text).lower()


def tokens(text: str) -> list[str]:
    """Split text into search tokens (CJK bigrams, lowercased words), in order."""
    out: list[str] = []
    run: list[str] = []
    kind = ""  # "c" for a CJK run, "w" for a word, "" between runs

    def flush() -> None:
        if kind == "c":
            if len(run) == 1:
                out.append(run[0])
            else:
                out.extend(run[i] + run[i + 1] for i in range(len(run) - 1))
        elif kind == "w":
            out.append("".join(run))
        run.clear()

    for ch in normalize(text):
        if is_cjk(ch):
            now = "c"
        elif ch.isalnum():
            now = "w"
        else:
            now = ""
        if now != kind:
            flush()
            kind = now
        if now:
            run.append(ch)
    flush()
    return out


def index_text(*parts: str) -> str:
    """Return the space-joined tokens of the parts, as stored in the full-text index."""
    return " ".join(t for part in parts for t in tokens(part))
