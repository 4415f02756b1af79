"""Serve the published snapshots under /public/ from memory, with validators and gzip.

Each file is read once per version (its inode, mtime and size) and kept with its ETag, its
`.gz` sibling and ready-made response headers, so that during a surge a request costs one
stat() and no read. The same headers come from the nginx configuration in docs/portal.md.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import time
import zlib
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cityos.broker.errors import MethodNotAllowed, NgsiError, ResourceNotFound
from cityos.http import media, rsgi
from cityos.http.middleware.errors import send_problem
from cityos.settings import Settings

#: what nginx's mime.types and `charset_types` give, so both servers answer alike
CONTENT_TYPES: Final[dict[str, str]] = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".svg": "image/svg+xml; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "text/xml; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
DEFAULT_TYPE: Final = "application/octet-stream"
#: files the publisher gives a .gz sibling and this server sends gzipped when asked
COMPRESSIBLE: Final = frozenset({".html", ".json", ".css", ".js", ".svg", ".txt", ".xml"})
#: pages change with the data; everything else (css, js, images) only with a new release
PAGES: Final = frozenset({".html", ".json"})
MAX_ENTRIES = 1024
#: a file answered from memory is stat()ed again after this many seconds (a stat per request
#: was half of the fast lane's time); the in-process publisher calls forget() after writing
RECHECK: Final = 0.05
PREFIX: Final = "/public"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Cache-Control lifetimes (seconds) for pages (html, json) and for assets."""

    max_age: int = 10
    stale_while_revalidate: int = 30
    stale_if_error: int = 86400
    asset_max_age: int = 3600
    asset_stale_while_revalidate: int = 86400
    asset_stale_if_error: int = 604800

    def header(self, suffix: str) -> str:
        """Return the Cache-Control value for a file with this suffix."""
        if suffix in PAGES:
            ages = (self.max_age, self.stale_while_revalidate, self.stale_if_error)
        else:
            ages = (
                self.asset_max_age,
                self.asset_stale_while_revalidate,
                self.asset_stale_if_error,
            )
        return "public, max-age={}, stale-while-revalidate={}, stale-if-error={}".format(*ages)


def cache_policy(settings: Settings) -> CachePolicy:
    """Return the lifetimes set by CITYOS_PORTAL_MAX_AGE and its siblings (settings.py)."""
    max_age, revalidate, if_error, asset_max_age = settings.portal_cache
    return CachePolicy(
        max_age=max_age,
        stale_while_revalidate=revalidate,
        stale_if_error=if_error,
        asset_max_age=asset_max_age,
    )


Headers = list[tuple[bytes, bytes]]
StrHeaders = list[tuple[str, str]]
#: what browsers send, known to allow gzip without parsing q-values
_PLAIN_GZIP: Final = frozenset(
    {"gzip", "gzip, deflate", "gzip, deflate, br", "gzip, deflate, br, zstd"}
)


#: which of an entry's header sets a response uses
PLAIN, ZIPPED, NOT_MODIFIED, NOT_MODIFIED_GZ = range(4)


@dataclass(slots=True)
class _Entry:
    """One file version in memory with the headers of each answer it can give."""

    version: tuple[int, int, int, int]  # (device, inode, mtime_ns, size)
    file: str  # the path stat()ed to see whether it changed
    body: bytes
    gz: bytes | None
    etag: str
    gz_etag: str
    mtime: int  # whole seconds, as Last-Modified carries them
    checked: float  # time.monotonic() of the last stat() that found this version
    #: indexed by PLAIN, ZIPPED, NOT_MODIFIED, NOT_MODIFIED_GZ; as ASGI and as RSGI want them
    headers: tuple[Headers, ...]
    str_headers: tuple[StrHeaders, ...]


def _version(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def clean_path(path: str) -> str | None:
    """Return the relative file path a URL path names, or None when it is not allowed."""
    if "\\" in path or "\x00" in path:
        return None
    parts = path.strip("/").split("/") if path.strip("/") else []
    for part in parts:
        # no empty segment (//), no . or .., no dotfiles (the publisher's temp files, .manifest)
        if not part or part[0] == ".":
            return None
    return "/".join(parts)


class PublicFiles:
    """The files of one folder, answered from memory with ETag, Last-Modified and gzip."""

    def __init__(
        self, root: Path, policy: CachePolicy | None = None, *, recheck: float = RECHECK
    ) -> None:
        self.root = Path(root)
        self.policy = policy or CachePolicy()
        self.recheck = recheck
        self._entries: dict[str, _Entry] = {}
        self._dates: dict[str, float | None] = {}
        self._real_root = ""

    # -- answering ------------------------------------------------------------------------
    def answer(self, path: str, method: str, headers: Headers) -> tuple[int, Headers, bytes] | None:
        """Return (status, headers, body) for a GET or HEAD of path, or None for 404."""
        accept = inm = ims = None
        for name, value in headers:
            if name == b"accept-encoding":
                accept = value.decode("latin-1")
            elif name == b"if-none-match":
                inm = value.decode("latin-1")
            elif name == b"if-modified-since":
                ims = value.decode("latin-1")
        found = self._pick(path, method, accept, inm, ims)
        if found is None:
            return None
        entry, which, status, body = found
        return status, entry.headers[which], body

    def _pick(
        self, path: str, method: str, accept: str | None, inm: str | None, ims: str | None
    ) -> tuple[_Entry, int, int, bytes] | None:
        """Return the entry, which of its header sets, the status and the body to send."""
        entry = self._entry(path)
        if entry is None:
            return None
        zipped = entry.gz is not None and accept is not None and _accepts_gzip(accept)
        if inm is not None:
            fresh = _etag_matches(inm, entry.etag, entry.gz_etag)
        elif ims is not None:
            since = self._date(ims)
            fresh = since is not None and entry.mtime <= since
        else:
            fresh = False
        if fresh:
            return entry, (NOT_MODIFIED_GZ if zipped else NOT_MODIFIED), 304, b""
        if zipped:
            assert entry.gz is not None
            return entry, ZIPPED, 200, (b"" if method == "HEAD" else entry.gz)
        return entry, PLAIN, 200, (b"" if method == "HEAD" else entry.body)

    def rsgi(self, scope: rsgi.Scope, proto: Any) -> bool:
        """Answer a GET or HEAD of an existing file under /public at once (the RSGI fast lane).

        Anything else (another method, a missing file) is left to the app, which gives the
        same answers as the ASGI path, errors included.
        """
        path = scope.path
        if not path.startswith(PREFIX) or (len(path) > len(PREFIX) and path[len(PREFIX)] != "/"):
            return False
        method = scope.method
        if method != "GET" and method != "HEAD":
            return False
        get = scope.headers.get
        found = self._pick(
            path[len(PREFIX) :],
            method,
            get("accept-encoding"),
            get("if-none-match"),
            get("if-modified-since"),
        )
        if found is None:
            return False
        entry, which, status, body = found
        proto.response_bytes(status, entry.str_headers[which], body)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve as a plain ASGI app for paths under /public (see PublicFront)."""
        path: str = scope["path"][len(PREFIX) :]
        if scope["method"] not in ("GET", "HEAD"):
            error: NgsiError = MethodNotAllowed(
                f"method {scope['method']} is not allowed here; allowed: GET", allow="GET"
            )
            await send_problem(send, error)
            return
        found = self.answer(path, scope["method"], scope["headers"])
        if found is None:
            await send_problem(send, ResourceNotFound(f"no such file: {scope['path']}"))
            return
        status, headers, body = found
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def handle(self, request: Request) -> Response:
        """Serve as a route handler of `/public` and `/public/{path:path}`."""
        found = self.answer(
            request.path_params.get("path", ""), request.method, request.scope["headers"]
        )
        if found is None:
            raise ResourceNotFound(f"no such file: {request.url.path}")
        return _Raw(*found)

    # -- the in-memory files --------------------------------------------------------------
    def forget(self) -> None:
        """Look at every file again on its next request (the publisher has just written)."""
        for entry in list(self._entries.values()):
            entry.checked = -RECHECK

    def _entry(self, path: str) -> _Entry | None:
        entry = self._entries.get(path)
        if entry is not None:
            now = time.monotonic()
            if now - entry.checked < self.recheck:
                return entry
            try:
                st = os.stat(entry.file)
            except OSError:
                del self._entries[path]
                return None
            if _version(st) == entry.version:
                entry.checked = now
                return entry
        rel = clean_path(path)
        if rel is None:
            return None
        entry = self._load(rel)
        if entry is None:
            self._entries.pop(path, None)
            return None
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()  # only reached by many distinct names; start afresh
        self._entries[path] = entry
        return entry

    def _inside(self, file: str) -> str | None:
        """Return the real path of file when it is inside the root (no symlink out), else None."""
        if not self._real_root:
            self._real_root = os.path.realpath(self.root)
        real = os.path.realpath(file)
        if real.startswith(self._real_root + os.sep):
            return real
        return None

    def _load(self, rel: str) -> _Entry | None:
        file = os.path.join(self.root, rel) if rel else str(self.root)
        try:
            if not rel or stat.S_ISDIR(os.stat(file).st_mode):
                file = os.path.join(file, "index.html")
            real = self._inside(file)
            if real is None:
                return None
            with open(real, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return None
                body = f.read()
        except OSError:
            return None
        suffix = os.path.splitext(real)[1].lower()
        gz = self._sibling(real, body) if suffix in COMPRESSIBLE else None
        # the version of the bytes read (fstat), not of whatever the name holds by now
        return self._make(file, _version(st), body, gz, st.st_mtime, suffix)

    def _sibling(self, real: str, body: bytes) -> bytes | None:
        """Return the .gz sibling's bytes when it exists and holds exactly this file."""
        gz_real = self._inside(real + ".gz")
        if gz_real is None:
            return None
        try:
            with open(gz_real, "rb") as f:
                gz = f.read()
            # a sibling from another version (half-way through a publish) is never sent
            return gz if gzip.decompress(gz) == body else None
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
            return None

    def _make(
        self,
        file: str,
        version: tuple[int, int, int, int],
        body: bytes,
        gz: bytes | None,
        mtime: float,
        suffix: str,
    ) -> _Entry:
        digest = hashlib.blake2b(body, digest_size=12).hexdigest()
        etag, gz_etag = f'"{digest}"', f'"{digest}-gz"'
        common: StrHeaders = [
            ("cache-control", self.policy.header(suffix)),
            ("last-modified", formatdate(int(mtime), usegmt=True)),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "strict-origin-when-cross-origin"),
            ("x-frame-options", "DENY"),
        ]
        if suffix == ".html":
            # the pages colour badges with style= and lite.html carries its own <style>, so
            # inline styles are allowed (never inline scripts); map tiles come from the tile
            # host the site was built with, which these headers do not know: any https image
            common.append(
                (
                    "content-security-policy",
                    "default-src 'self'; img-src 'self' data: https:; "
                    "style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; "
                    "base-uri 'none'; frame-ancestors 'none'",
                )
            )
        if gz is not None:
            common.append(("vary", "Accept-Encoding"))
        ctype = CONTENT_TYPES.get(suffix, DEFAULT_TYPE)
        plain: StrHeaders = [
            ("content-type", ctype),
            ("content-length", str(len(body))),
            ("etag", etag),
            *common,
        ]
        zipped: StrHeaders = plain  # never chosen: gz is None
        if gz is not None:
            zipped = [
                ("content-type", ctype),
                ("content-length", str(len(gz))),
                ("content-encoding", "gzip"),
                ("etag", gz_etag),
                *common,
            ]
        sets = (plain, zipped, [("etag", etag), *common], [("etag", gz_etag), *common])
        return _Entry(
            version=version,
            file=file,
            body=body,
            gz=gz,
            etag=etag,
            gz_etag=gz_etag,
            mtime=int(mtime),
            checked=time.monotonic(),
            headers=tuple([(k.encode(), v.encode()) for k, v in h] for h in sets),
            str_headers=sets,
        )

    def _date(self, raw: str) -> float | None:
        """Parse an HTTP date (remembering the few distinct ones clients send)."""
        if raw in self._dates:
            return self._dates[raw]
        try:
            when: float | None = parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError, IndexError):
            when = None
        if len(self._dates) > 256:
            self._dates.clear()
        self._dates[raw] = when
        return when


def _accepts_gzip(header: str) -> bool:
    """Tell whether an Accept-Encoding value allows gzip (RFC 9110 12.5.3)."""
    if header in _PLAIN_GZIP:
        return True
    if "gzip" not in header and "*" not in header:
        return False
    star = False
    for coding, q in media.weighted(header):
        if coding == "gzip":
            return q > 0
        if coding == "*":
            star = q > 0
    return star


def _etag_matches(header: str, etag: str, gz_etag: str) -> bool:
    """Weak comparison of If-None-Match against either representation's tag."""
    if header.strip() == "*":
        return True
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag in (etag, gz_etag):
            return True
    return False


class PublicFront:
    """Answer /public and /public/... from files before the app's middleware and routing.

    The route handler (`PublicFiles.handle`) gives the same answers; in front of the app a
    request skips the router, the middleware and the Request object, which measured about
    1.5 times the requests per second under 1,000 connections (docs/portal.md).
    """

    def __init__(self, app: ASGIApp, files: PublicFiles) -> None:
        self.app = app
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(PREFIX) and (len(path) == len(PREFIX) or path[len(PREFIX)] == "/"):
                await self.files(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Raw(Response):
    """A response whose status, headers and body are ready to send as they are."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        # no Response.__init__: the headers are built once per file version, not per request
        self.status_code = status
        self.raw_headers = headers
        self.body = body
        self.background = None
