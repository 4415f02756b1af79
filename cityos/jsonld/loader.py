"""Resolve a request's @context value (URL, object or array) into a cached ActiveContext.

URLs are served, in this order, from the shipped NGSI-LD core context (every published
core-context URL), the contexts hosted by the broker (/jsonldContexts), the preloaded
contexts of CITYOS_CONTEXT_DIR, and contexts downloaded once and kept in memory.
Resolving a value seen before is one dict look-up.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin

import httpx
import orjson

from cityos.broker.errors import BadRequestData, LdContextNotAvailable
from cityos.broker.model import DEFAULT_VOCAB
from cityos.jsonld.context import ActiveContext, Definitions, process
from cityos.jsonld.store import ContextKind, ContextStore, Origin, StoredContext, check_document

CORE_FILE: Final = Path(__file__).parent / "contexts" / "ngsi-ld-core-context-v1.9.jsonld"
#: the project's own @contexts shipped in the package, served at PROJECT_PATH/<name>
PROJECT_CONTEXTS: Final = {
    name: Path(__file__).parent / "contexts" / name for name in ("cityos-sano-v1.jsonld",)
}
PROJECT_PATH: Final = "/contexts"
#: the core context URL echoed when a request names no @context (the broker speaks v1.8)
DEFAULT_CORE_URL: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
#: every URL ETSI published the core context under; all are served from CORE_FILE
CORE_URLS: Final = frozenset(
    f"{scheme}://uri.etsi.org/ngsi-ld/v1/{name}"
    for scheme in ("https", "http")
    for name in (
        "ngsi-ld-core-context.jsonld",
        *(f"ngsi-ld-core-context-v1.{n}.jsonld" for n in range(10)),
    )
)
DEFAULT_HOSTED_BASE: Final = "http://127.0.0.1:8000/ngsi-ld/v1/jsonldContexts/"
_HTTP: Final = re.compile(r"^https?://[^\s/]+", re.IGNORECASE)
_ACCEPT: Final = {"Accept": "application/ld+json, application/json;q=0.9, */*;q=0.1"}
_NULL: Final = "@context: null is not allowed: it would reset the protected NGSI-LD core context"

Key = Hashable


class ContextSetupError(ValueError):
    """The preloaded @context folder (CITYOS_CONTEXT_DIR) cannot be used."""


class ContextLoader:
    """Turn @context values into ActiveContexts, fetching and caching documents as needed."""

    def __init__(
        self,
        *,
        context_dir: Path | None = None,
        remote_fetch: bool = True,
        hosted_base: str = DEFAULT_HOSTED_BASE,
        core_url: str = DEFAULT_CORE_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
        max_bytes: int = 1 << 20,
        max_depth: int = 8,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.time,
        shipped: Mapping[str, Path] | None = None,
    ) -> None:
        self.remote_fetch = remote_fetch
        self.core_url = core_url
        self.store = ContextStore(hosted_base, clock=clock)
        self._transport = transport
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._cache_size = cache_size
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._inflight: dict[str, asyncio.Task[StoredContext]] = {}
        core_doc = check_document(orjson.loads(CORE_FILE.read_bytes()), str(CORE_FILE))
        self._core: Definitions = process([core_doc["@context"]])
        core_entry = self.store.set_core(core_url, core_doc, sorted(CORE_URLS | {core_url}))
        self._default = ActiveContext([], self._core, core_url, key=core_url)
        self._resolved: dict[Key, tuple[ActiveContext, tuple[StoredContext, ...]]] = {}
        self._order: deque[Key] = deque()
        self._remember(core_url, self._default, (core_entry,))
        for url, path in (shipped or {}).items():
            self._ship(url, path)
        if context_dir is not None:
            self._preload(context_dir)

    # -- the hot path ------------------------------------------------------------------------
    def default(self) -> ActiveContext:
        """Return the context of a request that names none: the core context alone."""
        return self._default

    async def resolve(self, value: Any) -> ActiveContext:
        """Return the ActiveContext for a request's @context value (URL, object or array)."""
        key: Key = value if isinstance(value, str) else _key(value)
        hit = self._resolved.get(key)
        if hit is None:
            hit = await self._build(value, key, implicit=True)
            self._remember(key, *hit)
        now = self._clock()
        for entry in hit[1]:
            entry.touch(now)
        return hit[0]

    # -- /jsonldContexts operations ----------------------------------------------------------
    async def add_hosted(self, body: Any) -> StoredContext:
        """Validate and store a POSTed context document; return the Hosted entry."""
        doc = check_document(body, "body")
        await self._build(doc["@context"], None, implicit=False)
        return self.store.add_hosted(doc)

    async def delete(self, context_id: str, *, reload: bool = False) -> StoredContext:
        """Delete a stored context, or download a Cached one afresh when reload is true."""
        entry = self.store.find(context_id)
        if self.store.is_core(entry):
            raise BadRequestData("the NGSI-LD core @context is built in: it cannot be deleted")
        if reload:
            if entry.kind != ContextKind.CACHED:
                raise BadRequestData(
                    f"reload=true applies to Cached @contexts only; {entry.url} is {entry.kind}"
                )
            try:
                doc = await self._fetch(entry.url)
            except LdContextNotAvailable as exc:
                raise LdContextNotAvailable(exc.detail, status=504) from None
            entry = self.store.put_cached(entry.url, doc, Origin.DOWNLOADED)
        else:
            self.store.remove(context_id)
        # Contexts built from the old document must be rebuilt.
        self._resolved.clear()
        self._order.clear()
        return entry

    async def close(self) -> None:
        """Close the HTTP client used for remote contexts."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- building ----------------------------------------------------------------------------
    async def _build(
        self, value: Any, key: Key | None, *, implicit: bool
    ) -> tuple[ActiveContext, tuple[StoredContext, ...]]:
        if value is None:
            raise BadRequestData(_NULL)
        user: list[dict[str, Any]] = []
        used: list[StoredContext] = []
        await self._flatten(value, user, used, (), None)
        source = value if isinstance(value, str) else copy.deepcopy(value)
        ctx = ActiveContext(user, self._core, source, key)
        if implicit and not isinstance(value, str) and user:
            used.append(self.store.put_implicit(source))
        return ctx, tuple(dict.fromkeys(used))

    async def _flatten(
        self,
        value: Any,
        out: list[dict[str, Any]],
        used: list[StoredContext],
        chain: tuple[str, ...],
        base: str | None,
    ) -> None:
        """Append the local context objects value stands for, fetching URLs it names."""
        if isinstance(value, str):
            entry, url = await self._reference(value, chain, base)
            used.append(entry)
            if not self.store.is_core(entry):
                await self._flatten(entry.body["@context"], out, used, (*chain, url), url)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, list):
                    raise BadRequestData("@context: an array may not contain an array")
                await self._flatten(item, out, used, chain, base)
        elif isinstance(value, dict):
            if "@import" in value:
                value = await self._import(value, used, chain, base)
            out.append(value)
        elif value is None:
            raise BadRequestData(_NULL)
        else:
            raise BadRequestData(
                f"@context: {type(value).__name__} is not a context "
                "(expected a URL string, an object or an array of them)"
            )

    async def _import(
        self,
        local: dict[str, Any],
        used: list[StoredContext],
        chain: tuple[str, ...],
        base: str | None,
    ) -> dict[str, Any]:
        ref = local["@import"]
        if not isinstance(ref, str):
            raise BadRequestData("@context: @import must be a URL string")
        entry, url = await self._reference(ref, chain, base)
        used.append(entry)
        imported = entry.body["@context"]
        if not isinstance(imported, dict) or "@import" in imported:
            raise BadRequestData(
                f"@context: @import {url} must name a single context object without @import"
            )
        return {**imported, **{k: v for k, v in local.items() if k != "@import"}}

    async def _reference(
        self, ref: str, chain: tuple[str, ...], base: str | None
    ) -> tuple[StoredContext, str]:
        url = urljoin(base, ref) if base is not None else ref
        entry = self.store.lookup(url)
        if entry is not None and self.store.is_core(entry):
            return entry, url
        if url in chain:
            raise BadRequestData(f"@context: {url} includes itself (recursive context inclusion)")
        if len(chain) >= self._max_depth:
            raise BadRequestData(
                f"@context: {url}: remote contexts nest deeper than {self._max_depth} levels"
            )
        if entry is None:
            entry = await self._document(url, ref)
        return entry, url

    # -- documents ---------------------------------------------------------------------------
    async def _document(self, url: str, ref: str) -> StoredContext:
        if not _HTTP.match(url):
            raise BadRequestData(f"@context: {ref!r} is not an absolute http(s) URL")
        if url.startswith(self.store.base_url):
            raise LdContextNotAvailable(f"@context {url}: no such @context is hosted here")
        if not self.remote_fetch:
            raise LdContextNotAvailable(
                f"@context {url}: not preloaded, and downloading remote @contexts is disabled "
                "(CITYOS_REMOTE_CONTEXTS=off)"
            )
        task = self._inflight.get(url)
        if task is None:
            # One download per URL however many requests wait for it.
            task = asyncio.get_running_loop().create_task(self._download(url))
            self._inflight[url] = task
            task.add_done_callback(partial(self._landed, url))
        return await asyncio.shield(task)

    def _landed(self, url: str, task: asyncio.Task[StoredContext]) -> None:
        self._inflight.pop(url, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so a waiter that went away leaves no warning

    async def _download(self, url: str) -> StoredContext:
        return self.store.put_cached(url, await self._fetch(url), Origin.DOWNLOADED)

    async def _fetch(self, url: str) -> dict[str, Any]:
        """Download a context document, within the time and size limits."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self._timeout,
                follow_redirects=True,
                max_redirects=5,
            )
        buf = bytearray()
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._client.stream("GET", url, headers=_ACCEPT) as resp,
            ):
                if resp.status_code != 200:
                    raise LdContextNotAvailable(
                        f"@context {url}: the server answered HTTP {resp.status_code}"
                    )
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise _too_large(url, self._max_bytes)
                async for chunk in resp.aiter_bytes():
                    buf += chunk
                    if len(buf) > self._max_bytes:
                        raise _too_large(url, self._max_bytes)
        except TimeoutError:
            raise LdContextNotAvailable(
                f"@context {url}: no complete answer within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise LdContextNotAvailable(
                f"@context {url}: cannot be retrieved ({type(exc).__name__}: {exc})"
            ) from None
        try:
            doc = orjson.loads(buf)
        except orjson.JSONDecodeError:
            raise BadRequestData(
                f"@context {url}: the retrieved document is not valid JSON"
            ) from None
        return _validated(check_document(doc, f"@context {url}"), f"@context {url}")

    def _remember(self, key: Key, ctx: ActiveContext, used: tuple[StoredContext, ...]) -> None:
        if key not in self._resolved:
            self._order.append(key)
        self._resolved[key] = (ctx, used)
        while len(self._order) > self._cache_size:
            self._resolved.pop(self._order.popleft(), None)

    # -- preloading --------------------------------------------------------------------------
    def _ship(self, url: str, path: Path) -> None:
        """Serve url from a context file shipped in the package (never downloaded)."""
        doc = _read_json(path, f"the shipped @context file for {url}")
        self.store.put_cached(
            url, _validated(check_document(doc, str(path)), str(path)), Origin.PRELOADED
        )

    def _preload(self, folder: Path) -> None:
        index_path = folder / "index.json"
        index = _read_json(index_path, "the index of preloaded @contexts")
        if not isinstance(index, dict):
            raise ContextSetupError(
                f"{index_path}: must be a JSON object mapping each @context URL to a file name"
            )
        root = folder.resolve()
        for url, name in index.items():
            if not _HTTP.match(url):
                raise ContextSetupError(f"{index_path}: {url!r} is not an http(s) URL")
            if url in CORE_URLS or url == self.core_url:
                raise ContextSetupError(
                    f"{index_path}: {url} is the NGSI-LD core context, which is built in"
                )
            if not isinstance(name, str) or not name:
                raise ContextSetupError(f"{index_path}: {url}: the file name must be a string")
            path = (folder / name).resolve()
            if not path.is_relative_to(root):
                raise ContextSetupError(f"{index_path}: {url}: {name!r} is outside {folder}")
            doc = _read_json(path, f"the @context file for {url}")
            try:
                checked = _validated(check_document(doc, str(path)), str(path))
            except BadRequestData as exc:
                raise ContextSetupError(exc.detail) from None
            self.store.put_cached(url, checked, Origin.PRELOADED)


def _key(value: Any) -> Key:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        raise BadRequestData("@context: not a JSON value") from None


def _validated(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """Check the context objects of a document on their own, so errors name the document."""
    value = doc["@context"]
    for local in value if isinstance(value, list) else [value]:
        if isinstance(local, list):
            raise BadRequestData(f"{where}: an array may not contain an array")
        if isinstance(local, dict) and "@import" not in local:
            try:
                process([local], DEFAULT_VOCAB)
            except BadRequestData as exc:
                raise BadRequestData(f"{where}: {exc.detail}") from None
    return doc


def _too_large(url: str, limit: int) -> LdContextNotAvailable:
    return LdContextNotAvailable(f"@context {url}: the document is larger than {limit} bytes")


def _read_json(path: Path, what: str) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ContextSetupError(f"CITYOS_CONTEXT_DIR: cannot read {what} {path}: {exc}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContextSetupError(f"{path}: {what} is not valid JSON ({exc})") from None
