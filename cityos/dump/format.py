"""The dump file: gzip-compressed JSON lines, a header, one record per line, a trailer.

Line 1 is the header ``{"format": "cityos-dump", "version": 1, "created": ..., "cityos": ...}``;
then one ``{"section": ..., "record": {...}}`` per stored row; the last line is
``{"section": "end", "record": {"records": N}}``, so a cut-off file is told from a whole one.
Bytes (kv blobs, BLOB cells) travel as ``{"$b64": "..."}``.
"""

from __future__ import annotations

import base64
import gzip
import os
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import orjson

from cityos import __version__

FORMAT: Final = "cityos-dump"
#: bumped whenever a section's records change shape; a newer dump is refused
VERSION: Final = 1
END: Final = "end"
_B64: Final = "$b64"


class DumpError(Exception):
    """A dump cannot be written or read: the message says why, for the operator."""


def _default(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return {_B64: base64.b64encode(bytes(value)).decode()}
    raise TypeError(f"cannot dump a {type(value).__name__}")


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """Return a dumped table row with its {"$b64": ...} cells turned back into bytes."""
    out = dict(row)
    for k, v in row.items():
        if isinstance(v, dict) and len(v) == 1 and _B64 in v:
            out[k] = base64.b64decode(v[_B64])
    return out


class DumpWriter:
    """Write a dump to path.part, renamed to path only once the trailer is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._part = path.with_name(path.name + ".part")
        self._raw: IO[bytes] = self._part.open("wb")
        # mtime 0: two dumps of the same content are byte-identical apart from "created"
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "cityos": __version__,
        }
        self._gz.write(orjson.dumps(header) + b"\n")

    def write(self, section: str, record: dict[str, Any]) -> None:
        """Append one record of section."""
        line = orjson.dumps({"section": section, "record": record}, default=_default)
        self._gz.write(line + b"\n")
        self.count += 1

    def finish(self) -> None:
        """Write the trailer, flush to disk and move the file into place."""
        self._gz.write(orjson.dumps({"section": END, "record": {"records": self.count}}) + b"\n")
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self._part.replace(self.path)

    def abandon(self) -> None:
        """Close and delete the partial file."""
        self._gz.close()
        self._raw.close()
        self._part.unlink(missing_ok=True)

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.finish()
        else:
            self.abandon()


class DumpReader:
    """Read a dump: check its header on open, then yield its records, checking the trailer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._line = 0
        try:
            # closed by close(): the reader outlives this call
            self._gz = gzip.GzipFile(path, "rb")
        except OSError as exc:
            raise DumpError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            self.header = self._header()
        except DumpError:
            self._gz.close()
            raise

    def _next(self) -> bytes:
        self._line += 1
        try:
            return self._gz.readline()
        except EOFError:
            raise DumpError(f"{self.path} is cut off (line {self._line})") from None
        except gzip.BadGzipFile:
            if self._line == 1:
                raise DumpError(f"{self.path} is not a cityos dump (not gzip-compressed)") from None
            raise DumpError(f"{self.path} is damaged at line {self._line}") from None
        except (OSError, zlib.error) as exc:
            raise DumpError(f"{self.path} is damaged at line {self._line}: {exc}") from None

    def _parse(self, line: bytes) -> Any:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            raise DumpError(
                f"{self.path} is damaged at line {self._line}: not a JSON line"
            ) from None

    def _header(self) -> dict[str, Any]:
        head = self._parse(self._next())
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise DumpError(f"{self.path} is not a cityos dump (no cityos-dump header)")
        version = head.get("version")
        if not isinstance(version, int) or version < 1:
            raise DumpError(f"{self.path}: unknown dump format version {version!r}")
        if version > VERSION:
            raise DumpError(
                f"{self.path} was written by cityos {head.get('cityos', '?')} in dump format "
                f"{version}; this cityos ({__version__}) reads format {VERSION} at most. "
                "Upgrade cityos, then import it."
            )
        return head

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (section, record) up to the trailer; raise DumpError if it is missing or wrong."""
        count = 0
        while line := self._next():
            item = self._parse(line)
            if not isinstance(item, dict) or not isinstance(item.get("record"), dict):
                raise DumpError(f"{self.path} is damaged at line {self._line}: not a record")
            section, record = item.get("section"), item["record"]
            if section == END:
                if self._next():
                    raise DumpError(f"{self.path} is damaged: it has data after its trailer")
                if record.get("records") != count:
                    raise DumpError(
                        f"{self.path} is damaged: its trailer counts {record.get('records')} "
                        f"records, the file holds {count}"
                    )
                return
            if not isinstance(section, str):
                raise DumpError(f"{self.path} is damaged at line {self._line}: no section")
            count += 1
            yield section, record
        raise DumpError(f"{self.path} is cut off after {count} records (no trailer)")

    def close(self) -> None:
        """Close the file."""
        self._gz.close()
