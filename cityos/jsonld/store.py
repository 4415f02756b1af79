"""The broker's @context store behind /jsonldContexts (ETSI GS CIM 009 v1.8, clause 5.13).

Every @context document the broker knows is one StoredContext, found by its URL:

* ``Hosted``: added by a client (POST /jsonldContexts), served by the broker at
  ``<base URL><localId>``; the only kind that must survive a restart (see ``record``);
* ``Cached``: a copy of a context published elsewhere: the NGSI-LD core context, the
  preloaded contexts of CITYOS_CONTEXT_DIR and contexts downloaded for requests;
* ``ImplicitlyCreated``: an inline @context (object or array) a request carried, kept so it
  can be served by URL.

This class keeps them in memory; the HTTP routes and persistence of Hosted contexts are wired
by the API layer (persist ``record()`` on add, forget on delete, ``restore`` at start).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import orjson

from cityos.broker.errors import BadRequestData, OperationNotSupported, ResourceNotFound

MAX_DOWNLOADED: Final = 512
MAX_IMPLICIT: Final = 1024


class ContextKind(StrEnum):
    HOSTED = "Hosted"
    CACHED = "Cached"
    IMPLICIT = "ImplicitlyCreated"


class Origin(StrEnum):
    """Where a Cached context came from (reported in extraInfo)."""

    CORE = "core"
    PRELOADED = "preloaded"
    DOWNLOADED = "downloaded"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True, eq=False)  # identity semantics: entries are counted in sets
class StoredContext:
    """One @context document the broker holds, with its usage statistics."""

    url: str
    local_id: str
    kind: ContextKind
    body: dict[str, Any]  # {"@context": ...}
    created: float
    origin: Origin | None = None
    hits: int = 0
    last_usage: float | None = None
    aliases: tuple[str, ...] = field(default=())

    def touch(self, now: float) -> None:
        """Count one use of this context."""
        self.hits += 1
        self.last_usage = now

    def details(self) -> dict[str, Any]:
        """Return the metadata object of clause 5.13.3/5.13.4 (details=true)."""
        out: dict[str, Any] = {
            "URL": self.url,
            "localId": self.local_id,
            "kind": str(self.kind),
            "timestamp": _iso(self.created),
        }
        if self.last_usage is not None:
            out["lastUsage"] = _iso(self.last_usage)
        out["numberOfHits"] = self.hits
        extra: dict[str, Any] = {}
        if self.origin is not None:
            extra["origin"] = str(self.origin)
        if extra:
            out["extraInfo"] = extra
        return out

    def record(self) -> dict[str, Any]:
        """Return a JSON-serialisable form for persisting a Hosted context."""
        return {
            "URL": self.url,
            "localId": self.local_id,
            "kind": str(self.kind),
            "created": self.created,
            "body": self.body,
        }


def check_document(body: Any, where: str) -> dict[str, Any]:
    """Validate a context document (a JSON object with an @context member) and return it."""
    if not isinstance(body, dict):
        raise BadRequestData(f"{where}: a JSON-LD context document must be a JSON object")
    if "@context" not in body:
        raise BadRequestData(f"{where}: the document has no @context member")
    value = body["@context"]
    if not isinstance(value, (dict, list, str)):
        raise BadRequestData(f"{where}: @context must be an object, an array or a URL string")
    return {"@context": value}


class ContextStore:
    """The @contexts the broker holds, by URL and by local id."""

    def __init__(
        self,
        base_url: str,
        *,
        clock: Callable[[], float] = time.time,
        max_downloaded: int = MAX_DOWNLOADED,
        max_implicit: int = MAX_IMPLICIT,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._clock = clock
        self._max = {Origin.DOWNLOADED: max_downloaded, ContextKind.IMPLICIT: max_implicit}
        self._by_url: dict[str, StoredContext] = {}
        self._by_id: dict[str, StoredContext] = {}
        self._core: StoredContext | None = None

    # -- look-ups ----------------------------------------------------------------------------
    def lookup(self, url: str) -> StoredContext | None:
        """Return the context stored under a URL (core aliases included), if any."""
        return self._by_url.get(url)

    def find(self, context_id: str) -> StoredContext:
        """Return the context with this local id or URL, or raise ResourceNotFound."""
        entry = self._by_id.get(context_id) or self._by_url.get(context_id)
        if entry is None and context_id.startswith(self.base_url):
            entry = self._by_id.get(context_id[len(self.base_url) :])
        if entry is None:
            raise ResourceNotFound(f"no @context with id or URL {context_id!r} is stored")
        return entry

    def is_core(self, entry: StoredContext) -> bool:
        """Return whether entry is the NGSI-LD core context."""
        return entry is self._core

    def entries(self, kind: ContextKind | str | None = None) -> list[StoredContext]:
        """Return the stored contexts, optionally only those of one kind."""
        if kind is not None and kind not in ContextKind._value2member_map_:
            raise BadRequestData(f"kind: {kind!r} is not one of Hosted, Cached, ImplicitlyCreated")
        return [e for e in self._by_id.values() if kind is None or e.kind == kind]

    def listing(self, *, details: bool = False, kind: ContextKind | str | None = None) -> list[Any]:
        """Return GET /jsonldContexts: URLs, or metadata objects when details is true."""
        found = self.entries(kind)
        return [e.details() for e in found] if details else [e.url for e in found]

    def serve(self, context_id: str, *, details: bool = False) -> dict[str, Any]:
        """Return GET /jsonldContexts/{id}: the document (Hosted, ImplicitlyCreated) or details."""
        entry = self.find(context_id)
        if details:
            return entry.details()
        if entry.kind == ContextKind.CACHED:
            raise OperationNotSupported(
                f"{entry.url} is a Cached @context: fetch it from its URL or ask for details=true"
            )
        return entry.body

    # -- changes -----------------------------------------------------------------------------
    def set_core(self, url: str, body: dict[str, Any], aliases: Iterable[str]) -> StoredContext:
        """Store the NGSI-LD core context under its URL and every published alias."""
        others = tuple(a for a in aliases if a != url)
        entry = self._put(url, "ngsi-ld-core", ContextKind.CACHED, body, Origin.CORE)
        entry.aliases = others
        for alias in others:
            self._by_url[alias] = entry
        self._core = entry
        return entry

    def put_cached(self, url: str, body: dict[str, Any], origin: Origin) -> StoredContext:
        """Store a copy of a published context (preloaded or downloaded)."""
        local_id = hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:20]
        entry = self._put(url, local_id, ContextKind.CACHED, body, origin)
        if origin == Origin.DOWNLOADED:
            self._evict(lambda e: e.origin == Origin.DOWNLOADED, self._max[Origin.DOWNLOADED])
        return entry

    def add_hosted(self, body: Any) -> StoredContext:
        """Store a context a client POSTed; return it (its url goes in the Location header)."""
        doc = check_document(body, "body")
        local_id = uuid.uuid4().hex
        return self._put(self.base_url + local_id, local_id, ContextKind.HOSTED, doc, None)

    def put_implicit(self, value: Any) -> StoredContext:
        """Store an inline @context a request carried, named by a digest of its content."""
        digest = hashlib.sha1(
            orjson.dumps(value, option=orjson.OPT_SORT_KEYS), usedforsecurity=False
        ).hexdigest()[:24]
        known = self._by_id.get(digest)
        if known is not None:
            return known
        entry = self._put(
            self.base_url + digest, digest, ContextKind.IMPLICIT, {"@context": value}, None
        )
        self._evict(lambda e: e.kind == ContextKind.IMPLICIT, self._max[ContextKind.IMPLICIT])
        return entry

    def remove(self, context_id: str) -> StoredContext:
        """Delete a stored context by local id or URL; the core context cannot be deleted."""
        entry = self.find(context_id)
        if entry is self._core:
            raise BadRequestData("the NGSI-LD core @context cannot be deleted")
        self._drop(entry)
        return entry

    def restore(self, records: Iterable[dict[str, Any]]) -> None:
        """Reload Hosted contexts persisted with StoredContext.record()."""
        for rec in records:
            try:
                url, local_id, created = rec["URL"], rec["localId"], float(rec["created"])
                doc = check_document(rec["body"], f"stored @context {local_id}")
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"a persisted @context record is malformed: {exc!r}") from None
            entry = self._put(url, local_id, ContextKind.HOSTED, doc, None)
            entry.created = created

    def _put(
        self,
        url: str,
        local_id: str,
        kind: ContextKind,
        body: dict[str, Any],
        origin: Origin | None,
    ) -> StoredContext:
        old = self._by_url.get(url)
        if old is not None and old is not self._core:
            self._drop(old)
        entry = StoredContext(url, local_id, kind, body, self._clock(), origin)
        self._by_url[url] = entry
        self._by_id[local_id] = entry
        return entry

    def _drop(self, entry: StoredContext) -> None:
        self._by_id.pop(entry.local_id, None)
        for url in (entry.url, *entry.aliases):
            if self._by_url.get(url) is entry:
                del self._by_url[url]

    def _evict(self, matches: Callable[[StoredContext], bool], limit: int) -> None:
        # Entries are kept in insertion order, so the first matches are the oldest.
        victims = [e for e in self._by_id.values() if matches(e)]
        for entry in victims[: max(0, len(victims) - limit)]:
            self._drop(entry)
