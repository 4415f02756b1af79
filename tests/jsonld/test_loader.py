"""ContextLoader and ContextStore: core, preloaded, hosted and downloaded @contexts, offline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from cityos.broker.errors import (
    BadRequestData,
    LdContextNotAvailable,
    OperationNotSupported,
    ResourceNotFound,
)
from cityos.jsonld.loader import CORE_URLS, DEFAULT_CORE_URL, ContextLoader, ContextSetupError

T = TypeVar("T")
NGSI = "https://uri.etsi.org/ngsi-ld/"
DEFAULT = NGSI + "default-context/"
BASE = "http://broker.test/ngsi-ld/v1/jsonldContexts/"
SDM_URL = "https://contexts.example.org/sdm.jsonld"
SDM = {"@context": {"env": "https://sdm.example/env/", "waterLevel": "env:waterLevel"}}


class Remote:
    """A fake web of context documents served through httpx.MockTransport."""

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = docs
        self.calls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.calls.append(url)
        doc = self.docs.get(url)
        if doc is None:
            return httpx.Response(404, text="not here")
        if isinstance(doc, httpx.Response):
            return doc
        if isinstance(doc, bytes):
            return httpx.Response(200, content=doc)
        return httpx.Response(200, json=doc)

    def loader(self, **kwargs: Any) -> ContextLoader:
        kwargs.setdefault("hosted_base", BASE)
        return ContextLoader(transport=httpx.MockTransport(self.handler), **kwargs)


def run(loader: ContextLoader, step: Callable[[], Awaitable[T]]) -> T:
    async def go() -> T:
        try:
            return await step()
        finally:
            await loader.close()

    return asyncio.run(go())


# -- the core context ----------------------------------------------------------------------
@pytest.mark.parametrize("url", sorted(CORE_URLS))
def test_every_published_core_url_is_served_offline_and_echoed(url: str) -> None:
    remote = Remote({})
    loader = remote.loader()
    ctx = run(loader, lambda: loader.resolve(url))
    assert ctx.source == url
    assert ctx.expand_term("observedAt") == NGSI + "observedAt"
    assert ctx.expand_term("waterLevel") == DEFAULT + "waterLevel"
    assert remote.calls == []


def test_core_versions_from_1_0_to_1_9_and_the_unversioned_url_are_known() -> None:
    base = "https://uri.etsi.org/ngsi-ld/v1/"
    for n in range(10):
        assert f"{base}ngsi-ld-core-context-v1.{n}.jsonld" in CORE_URLS
    assert f"{base}ngsi-ld-core-context.jsonld" in CORE_URLS


def test_default_is_the_core_context_named_by_its_v1_8_url() -> None:
    ctx = ContextLoader(remote_fetch=False).default()
    assert ctx.source == DEFAULT_CORE_URL
    assert ctx.expand_term("location") == NGSI + "location"


def test_resolving_the_same_value_again_returns_the_cached_context() -> None:
    loader = Remote({SDM_URL: SDM}).loader()

    async def twice() -> list[Any]:
        return [await loader.resolve(v) for v in (SDM_URL, SDM_URL, [SDM_URL], [SDM_URL])]

    a, b, c, d = run(loader, twice)
    assert a is b
    assert c is d
    assert a.source == SDM_URL
    assert c.source == [SDM_URL]


def test_inline_object_and_array_are_echoed_as_given() -> None:
    loader = ContextLoader(remote_fetch=False)
    inline = {"temp": "http://ex.org/temp"}
    listed = [inline, DEFAULT_CORE_URL]
    assert run(loader, lambda: loader.resolve(inline)).source == inline
    got = run(loader, lambda: loader.resolve(listed))
    assert got.source == listed
    assert got.expand_term("temp") == "http://ex.org/temp"
    inline["temp"] = "http://changed/"  # the caller's payload may change later
    assert got.source == [{"temp": "http://ex.org/temp"}, DEFAULT_CORE_URL]


# -- remote contexts -----------------------------------------------------------------------
def test_remote_context_is_fetched_once_and_cached() -> None:
    remote = Remote({SDM_URL: SDM})
    loader = remote.loader()

    async def many() -> list[Any]:
        first = await asyncio.gather(*(loader.resolve(SDM_URL) for _ in range(20)))
        again = await loader.resolve([SDM_URL, {"x": "http://x.example/"}])
        return [*first, again]

    ctxs = run(loader, many)
    assert remote.calls == [SDM_URL]
    assert {c.expand_term("waterLevel") for c in ctxs} == {"https://sdm.example/env/waterLevel"}


def test_nested_and_relative_context_references_are_followed() -> None:
    remote = Remote(
        {
            "https://ctx.example/a/main.jsonld": {"@context": ["common.jsonld", {"b": "env:b"}]},
            "https://ctx.example/a/common.jsonld": {"@context": {"env": "https://env.example/"}},
        }
    )
    loader = remote.loader()
    ctx = run(loader, lambda: loader.resolve("https://ctx.example/a/main.jsonld"))
    assert ctx.expand_term("b") == "https://env.example/b"
    assert ctx.expand_term("env:c") == "https://env.example/c"


def test_import_merges_the_imported_context_under_local_terms() -> None:
    remote = Remote(
        {"https://ctx.example/base.jsonld": {"@context": {"a": "http://a/", "t": "http://a/t"}}}
    )
    loader = remote.loader()
    ctx = run(
        loader,
        lambda: loader.resolve({"@import": "https://ctx.example/base.jsonld", "t": "http://b/t"}),
    )
    assert ctx.expand_term("t") == "http://b/t"
    assert ctx.expand_term("a:x") == "http://a/x"


@pytest.mark.parametrize(
    ("served", "kind", "message"),
    [
        (None, LdContextNotAvailable, "HTTP 404"),
        (httpx.Response(500), LdContextNotAvailable, "HTTP 500"),
        (b"{not json", BadRequestData, "not valid JSON"),
        (b"[1, 2]", BadRequestData, "JSON object"),
        (b'{"context": {}}', BadRequestData, "no @context member"),
        (b'{"@context": 5}', BadRequestData, "@context must be"),
        (b'{"@context": {"a": 5}}', BadRequestData, "'a'"),
        (b'{"@context": [[]]}', BadRequestData, "array may not contain an array"),
        (b'{"@context": null}', BadRequestData, "@context must be"),
    ],
)
def test_bad_remote_contexts_are_reported_naming_the_url(
    served: Any, kind: type[Exception], message: str
) -> None:
    url = "https://ctx.example/bad.jsonld"
    loader = Remote({} if served is None else {url: served}).loader()
    with pytest.raises(kind, match=message) as err:
        run(loader, lambda: loader.resolve([url]))
    assert url in str(err.value)


def test_unreachable_host_raises_ld_context_not_available() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    loader = ContextLoader(transport=httpx.MockTransport(refuse))
    with pytest.raises(LdContextNotAvailable, match="ConnectError") as err:
        run(loader, lambda: loader.resolve(SDM_URL))
    assert err.value.status == 503
    assert SDM_URL in err.value.detail


def test_slow_server_times_out() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(2)
        return httpx.Response(200, json=SDM)

    loader = ContextLoader(transport=httpx.MockTransport(slow), timeout=0.05)
    with pytest.raises(LdContextNotAvailable, match="within"):
        run(loader, lambda: loader.resolve(SDM_URL))


def test_failed_fetch_is_retried_on_the_next_request() -> None:
    remote = Remote({})
    loader = remote.loader()

    async def fail_then_succeed() -> str:
        with pytest.raises(LdContextNotAvailable):
            await loader.resolve(SDM_URL)
        remote.docs[SDM_URL] = SDM
        return (await loader.resolve(SDM_URL)).expand_term("waterLevel")

    assert run(loader, fail_then_succeed) == "https://sdm.example/env/waterLevel"
    assert remote.calls == [SDM_URL, SDM_URL]


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize("declared", [True, False])
def test_oversize_context_is_refused(declared: bool) -> None:
    body = orjson.dumps({"@context": {f"t{i}": f"http://x/{i}" for i in range(200)}})
    headers = {} if declared else {"transfer-encoding": "chunked"}

    def handler(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=body)
        return httpx.Response(200, headers=headers, content=_chunks(body[:500], body[500:]))

    loader = ContextLoader(transport=httpx.MockTransport(handler), max_bytes=1000)
    with pytest.raises(LdContextNotAvailable, match="larger than 1000 bytes"):
        run(loader, lambda: loader.resolve(SDM_URL))


def test_recursive_contexts_are_refused() -> None:
    a, b = "https://ctx.example/a.jsonld", "https://ctx.example/b.jsonld"
    loader = Remote({a: {"@context": [b]}, b: {"@context": [{"x": "http://x/"}, a]}}).loader()
    with pytest.raises(BadRequestData, match="recursive"):
        run(loader, lambda: loader.resolve(a))


def test_too_deep_context_chains_are_refused() -> None:
    docs = {
        f"https://ctx.example/{i}": {"@context": f"https://ctx.example/{i + 1}"} for i in range(20)
    }
    loader = Remote(docs).loader(max_depth=8)
    with pytest.raises(BadRequestData, match="deeper than 8"):
        run(loader, lambda: loader.resolve("https://ctx.example/0"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "null is not allowed"),
        ([{"a": "http://a/"}, None], "null is not allowed"),
        (42, "int is not a context"),
        ([["https://x/"]], "array may not contain an array"),
        ("not-a-url", "not an absolute http"),
        ({"@import": 3}, "@import must be a URL"),
    ],
)
def test_invalid_context_values_are_bad_request_data(value: Any, message: str) -> None:
    loader = ContextLoader(remote_fetch=False)
    with pytest.raises(BadRequestData, match=message):
        run(loader, lambda: loader.resolve(value))


def test_remote_fetch_off_names_the_setting() -> None:
    remote = Remote({SDM_URL: SDM})
    loader = remote.loader(remote_fetch=False)
    with pytest.raises(LdContextNotAvailable, match="CITYOS_REMOTE_CONTEXTS=off"):
        run(loader, lambda: loader.resolve(SDM_URL))
    assert remote.calls == []


# -- preloaded contexts --------------------------------------------------------------------
def _context_dir(tmp_path: Path, index: Any, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    if index is not None:
        raw = index if isinstance(index, bytes) else orjson.dumps(index)
        (tmp_path / "index.json").write_bytes(raw)
    return tmp_path


def test_preloaded_contexts_are_served_without_network(tmp_path: Path) -> None:
    folder = _context_dir(tmp_path, {SDM_URL: "sdm.jsonld"}, {"sdm.jsonld": orjson.dumps(SDM)})
    remote = Remote({})
    loader = remote.loader(context_dir=folder)
    ctx = run(loader, lambda: loader.resolve(SDM_URL))
    assert ctx.expand_term("waterLevel") == "https://sdm.example/env/waterLevel"
    assert remote.calls == []
    assert loader.store.serve(SDM_URL, details=True)["extraInfo"] == {"origin": "preloaded"}


@pytest.mark.parametrize(
    ("index", "files", "message"),
    [
        (None, {}, "cannot read the index"),
        (b"{oops", {}, "not valid JSON"),
        ([SDM_URL], {}, "must be a JSON object"),
        ({"ftp://x/c": "c.jsonld"}, {}, "not an http"),
        ({SDM_URL: 3}, {}, "file name must be a string"),
        ({SDM_URL: "missing.jsonld"}, {}, "cannot read the @context file"),
        ({SDM_URL: "../outside.jsonld"}, {}, "outside"),
        ({SDM_URL: "c.jsonld"}, {"c.jsonld": b"{]"}, "not valid JSON"),
        ({SDM_URL: "c.jsonld"}, {"c.jsonld": b'{"ctx": {}}'}, "no @context member"),
        ({DEFAULT_CORE_URL: "c.jsonld"}, {"c.jsonld": b'{"@context": {}}'}, "built in"),
        (
            {SDM_URL: "c.jsonld"},
            {"c.jsonld": b'{"@context": [{"a": 5}]}'},
            "c.jsonld: @context: term 'a'",
        ),
    ],
)
def test_bad_context_dir_fails_at_start_with_a_clear_message(
    tmp_path: Path, index: Any, files: dict[str, bytes], message: str
) -> None:
    folder = tmp_path / "ctx"
    folder.mkdir()
    with pytest.raises(ContextSetupError, match=message):
        ContextLoader(context_dir=_context_dir(folder, index, files))


# -- /jsonldContexts -----------------------------------------------------------------------
def test_hosted_context_is_resolvable_at_its_served_url() -> None:
    loader = ContextLoader(remote_fetch=False, hosted_base=BASE)
    body = {"@context": {"river": "https://sano.example/river"}}
    entry = run(loader, lambda: loader.add_hosted(body))
    assert entry.url == BASE + entry.local_id
    assert loader.store.serve(entry.local_id) == body
    assert loader.store.serve(entry.url) == body
    ctx = run(loader, lambda: loader.resolve(entry.url))
    assert ctx.expand_term("river") == "https://sano.example/river"
    assert ctx.source == entry.url
    assert entry.url in loader.store.listing(kind="Hosted")


def test_unknown_url_under_the_hosted_base_is_not_fetched() -> None:
    remote = Remote({})
    loader = remote.loader()
    with pytest.raises(LdContextNotAvailable, match="no such @context"):
        run(loader, lambda: loader.resolve(BASE + "nope"))
    assert remote.calls == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"x": 1}, "no @context member"),
        ({"@context": 1}, "@context must be"),
        ({"@context": {"a": {"@id": 3}}}, "@id must be a string"),
    ],
)
def test_invalid_hosted_context_is_refused(body: Any, message: str) -> None:
    loader = ContextLoader(remote_fetch=False)
    with pytest.raises(BadRequestData, match=message):
        run(loader, lambda: loader.add_hosted(body))
    assert loader.store.listing(kind="Hosted") == []


def test_listing_with_details_reports_kind_and_hits() -> None:
    clock = iter(range(1_700_000_000, 1_800_000_000))
    remote = Remote({SDM_URL: SDM})
    loader = remote.loader(clock=lambda: float(next(clock)))

    async def use() -> None:
        for _ in range(3):
            await loader.resolve(SDM_URL)
        await loader.resolve({"inline": "http://inline/"})

    run(loader, use)
    urls = loader.store.listing()
    assert DEFAULT_CORE_URL in urls
    assert SDM_URL in urls
    details = {d["URL"]: d for d in loader.store.listing(details=True)}
    sdm = details[SDM_URL]
    assert sdm["kind"] == "Cached"
    assert sdm["numberOfHits"] == 3
    assert sdm["timestamp"].endswith("Z")
    assert sdm["lastUsage"] > sdm["timestamp"]
    assert sdm["extraInfo"] == {"origin": "downloaded"}
    implicit = loader.store.listing(details=True, kind="ImplicitlyCreated")
    assert len(implicit) == 1
    assert loader.store.serve(implicit[0]["localId"]) == {"@context": {"inline": "http://inline/"}}
    with pytest.raises(BadRequestData, match="kind"):
        loader.store.listing(kind="Remote")


def test_cached_context_is_described_but_not_served() -> None:
    loader = ContextLoader(remote_fetch=False)
    with pytest.raises(OperationNotSupported):
        loader.store.serve(DEFAULT_CORE_URL)
    assert loader.store.serve("ngsi-ld-core", details=True)["URL"] == DEFAULT_CORE_URL


def test_core_context_cannot_be_deleted_by_any_of_its_urls() -> None:
    loader = ContextLoader(remote_fetch=False)
    for cid in (
        "ngsi-ld-core",
        DEFAULT_CORE_URL,
        "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
    ):
        with pytest.raises(BadRequestData, match="core"):
            run(loader, partial(loader.delete, cid))
        with pytest.raises(BadRequestData, match="core"):
            loader.store.remove(cid)
    assert run(loader, lambda: loader.resolve(DEFAULT_CORE_URL)).expand_term("type") == "@type"


def test_deleted_hosted_context_is_gone() -> None:
    loader = ContextLoader(remote_fetch=False, hosted_base=BASE)

    async def add_use_delete() -> str:
        entry = await loader.add_hosted({"@context": {"r": "http://r/"}})
        await loader.resolve(entry.url)
        await loader.delete(entry.local_id)
        return entry.url

    url = run(loader, add_use_delete)
    with pytest.raises(ResourceNotFound):
        loader.store.serve(url)
    with pytest.raises(LdContextNotAvailable):
        run(loader, lambda: loader.resolve(url))


def test_reload_downloads_a_cached_context_afresh() -> None:
    remote = Remote({SDM_URL: SDM})
    loader = remote.loader()

    async def reload() -> tuple[str, str]:
        before = (await loader.resolve(SDM_URL)).expand_term("waterLevel")
        remote.docs[SDM_URL] = {"@context": {"waterLevel": "https://v2.example/waterLevel"}}
        await loader.delete(SDM_URL, reload=True)
        return before, (await loader.resolve(SDM_URL)).expand_term("waterLevel")

    assert run(loader, reload) == (
        "https://sdm.example/env/waterLevel",
        "https://v2.example/waterLevel",
    )


def test_reload_failure_is_504_and_keeps_the_old_copy() -> None:
    remote = Remote({SDM_URL: SDM})
    loader = remote.loader()

    async def reload() -> None:
        await loader.resolve(SDM_URL)
        remote.docs.clear()
        await loader.delete(SDM_URL, reload=True)

    with pytest.raises(LdContextNotAvailable) as err:
        run(loader, reload)
    assert err.value.status == 504
    assert (
        run(loader, lambda: loader.resolve(SDM_URL))
        .expand_term("waterLevel")
        .startswith("https://sdm.example/")
    )


def test_reload_of_a_hosted_context_is_bad_request() -> None:
    loader = ContextLoader(remote_fetch=False)

    async def go() -> None:
        entry = await loader.add_hosted({"@context": {}})
        await loader.delete(entry.local_id, reload=True)

    with pytest.raises(BadRequestData, match="Cached @contexts only"):
        run(loader, go)


def test_deleting_a_cached_context_makes_the_next_use_fetch_it_again() -> None:
    remote = Remote({SDM_URL: SDM})
    loader = remote.loader()

    async def go() -> None:
        await loader.resolve(SDM_URL)
        await loader.delete(SDM_URL)
        await loader.resolve(SDM_URL)

    run(loader, go)
    assert remote.calls == [SDM_URL, SDM_URL]


def test_hosted_records_survive_a_restart() -> None:
    first = ContextLoader(remote_fetch=False, hosted_base=BASE)
    entry = run(first, lambda: first.add_hosted({"@context": {"r": "http://r/"}}))
    record = orjson.loads(orjson.dumps(entry.record()))

    second = ContextLoader(remote_fetch=False, hosted_base=BASE)
    second.store.restore([record])
    ctx = run(second, lambda: second.resolve(entry.url))
    assert ctx.expand_term("r") == "http://r/"
    assert (
        second.store.serve(entry.local_id, details=True)["timestamp"]
        == (first.store.serve(entry.local_id, details=True)["timestamp"])
    )
    with pytest.raises(ValueError, match="malformed"):
        second.store.restore([{"URL": "x"}])
