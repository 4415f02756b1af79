"""DCAT: /catalog.{ttl,jsonld,rdf} and /dataset/<id>.{ttl,jsonld,rdf}, parsed back with rdflib."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client
from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, XSD
from starlette.testclient import TestClient

from cityos.catalog import dcat, registry
from cityos.catalog.registry import Context

HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
PDL = URIRef("https://www.digital.go.jp/resources/open_data/public_data_license_v1.0")
CC_BY = URIRef("https://creativecommons.org/licenses/by/4.0/")
ACTION = "/api/3/action/"
FORMATS = {"ttl": "turtle", "jsonld": "json-ld", "rdf": "xml"}
MEDIA = {"ttl": "text/turtle", "jsonld": "application/ld+json", "rdf": "application/rdf+xml"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as client:
        assert client.portal is not None
        token = client.portal.call(client.app.catalog.meta.create_token, "admin")  # type: ignore[attr-defined]
        client.headers["Authorization"] = token
        call(client, "organization_create", name="sano", title="佐野市")
        yield client


def call(client: TestClient, action: str, **params: Any) -> Any:
    r = client.post(ACTION + action, json=params)
    body = r.json()
    assert body["success"], body
    return body["result"]


def create(client: TestClient, name: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "title": name, "owner_org": "sano", **extra}
    result: dict[str, Any] = call(client, "package_create", **params)
    return result


def read_rdf(data: bytes, fmt: str) -> Graph:
    """Parse a document as a harvester would (rdflib; JSON-LD with its inline context)."""
    with warnings.catch_warnings():
        # rdflib 7.6's own JSON-LD parser builds a ConjunctiveGraph and warns about it
        warnings.filterwarnings("ignore", "ConjunctiveGraph is deprecated", DeprecationWarning)
        return Graph().parse(data=data, format=FORMATS[fmt])


def upload(client: TestClient, params: dict[str, Any], filename: str, data: bytes) -> Any:
    catalog = client.app.catalog  # type: ignore[attr-defined]
    ctx = Context(catalog=catalog, user="admin", files={"upload": (filename, "text/csv", data)})
    assert client.portal is not None
    return client.portal.call(registry.call, ctx, "resource_create", params)


def parse(client: TestClient, path: str, fmt: str) -> Graph:
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(MEDIA[fmt])
    return read_rdf(r.content, fmt)


def aed(client: TestClient) -> dict[str, Any]:
    return create(
        client,
        "aed",
        title="AED設置箇所一覧",
        notes="佐野市内のAEDの設置場所",
        tags=[{"name": "防災"}, {"name": "健康"}],
        license_id="jp-pdl-1.0",
        maintainer="情報政策課",
        maintainer_email="opendata@city.sano.example",
        resources=[{"name": "AED一覧 CSV", "url": "https://example.org/aed.csv", "format": "CSV"}],
    )


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_dataset_document_carries_dcat_ap_fields(api: TestClient, fmt: str) -> None:
    pkg = aed(api)
    g = parse(api, f"/dataset/{pkg['id']}.{fmt}", fmt)
    ds = URIRef(f"{api.app.catalog.base_url}/dataset/{pkg['id']}")  # type: ignore[attr-defined]
    assert (ds, RDF.type, DCAT.Dataset) in g
    assert g.value(ds, DCTERMS.title) == Literal("AED設置箇所一覧", lang="ja")
    assert g.value(ds, DCTERMS.description) == Literal("佐野市内のAEDの設置場所", lang="ja")
    assert set(g.objects(ds, DCAT.keyword)) == {
        Literal("防災", lang="ja"),
        Literal("健康", lang="ja"),
    }
    assert g.value(ds, DCTERMS.identifier) == Literal(pkg["id"])
    assert g.value(ds, DCTERMS.license) == PDL
    modified = g.value(ds, DCTERMS.modified)
    assert isinstance(modified, Literal)
    assert modified.datatype == XSD.dateTime
    publisher = g.value(ds, DCTERMS.publisher)
    assert (publisher, RDF.type, FOAF.Agent) in g
    assert g.value(publisher, FOAF.name) == Literal("佐野市", lang="ja")
    contact = g.value(ds, DCAT.contactPoint)
    assert str(g.value(contact, dcat.VCARD.hasEmail)) == "mailto:opendata@city.sano.example"
    (dist,) = g.objects(ds, DCAT.distribution)
    assert (dist, RDF.type, DCAT.Distribution) in g
    assert g.value(dist, DCTERMS.title) == Literal("AED一覧 CSV", lang="ja")
    assert g.value(dist, DCAT.accessURL) == URIRef("https://example.org/aed.csv")
    assert g.value(dist, DCTERMS.format) == Literal("CSV")
    assert g.value(dist, DCAT.mediaType) == URIRef(dcat.IANA + "text/csv")
    assert g.value(dist, DCTERMS.license) == PDL


def test_dataset_by_name_and_uploaded_file_gets_download_url(api: TestClient) -> None:
    pkg = create(api, "toilets", title="公衆トイレ一覧", license_id="cc-by-4.0")
    body = "名称,緯度,経度\n駅前トイレ,36.3144,139.5783\n".encode()
    # the upload goes through resource_create with the file, as a multipart call hands it over
    res = upload(api, {"package_id": pkg["id"], "name": "トイレ CSV"}, "toilets.csv", body)
    g = parse(api, "/dataset/toilets.ttl", "ttl")  # the name works as well as the id
    (dist,) = g.subjects(RDF.type, DCAT.Distribution)
    assert g.value(dist, DCAT.downloadURL) == URIRef(res["url"])
    assert g.value(dist, DCAT.byteSize) == Literal(len(body), datatype=XSD.nonNegativeInteger)
    assert g.value(dist, DCTERMS.license) == CC_BY
    ds = next(g.subjects(DCAT.distribution, dist))
    assert g.value(ds, DCTERMS.license) == CC_BY


@pytest.mark.parametrize(
    ("license_id", "expected"),
    [
        ("jp-pdl-1.0", str(PDL)),
        ("cc-by-4.0", str(CC_BY)),
        ("odc-odbl", "from the licence list"),
        ("notspecified", None),
    ],
)
def test_license_uri_comes_from_the_licence_list(
    api: TestClient, license_id: str, expected: str | None
) -> None:
    pkg = create(api, "lic", title="ライセンス", license_id=license_id)
    if expected == "from the licence list":
        expected = pkg["license_url"]
        assert expected
    g = parse(api, "/dataset/lic.rdf", "rdf")
    licence = g.value(URIRef(f"{api.app.catalog.base_url}/dataset/{pkg['id']}"), DCTERMS.license)  # type: ignore[attr-defined]
    assert (None if licence is None else str(licence)) == expected


def test_unknown_and_private_datasets_are_404(api: TestClient) -> None:
    secret = create(api, "secret", title="非公開", private=True)
    for fmt in FORMATS:
        assert api.get(f"/dataset/nope.{fmt}").status_code == 404
        assert api.get(f"/dataset/{secret['id']}.{fmt}").status_code == 404
        assert api.get(f"/dataset/secret.{fmt}").status_code == 404


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_catalog_lists_public_datasets_only(api: TestClient, fmt: str) -> None:
    aed(api)
    create(api, "shelters", title="避難所一覧", tags=[{"name": "防災"}])
    create(api, "secret", title="非公開", private=True)
    g = parse(api, f"/catalog.{fmt}", fmt)
    (cat,) = g.subjects(RDF.type, DCAT.Catalog)
    titles = {str(g.value(ds, DCTERMS.title)) for ds in g.objects(cat, DCAT.dataset)}
    assert titles == {"AED設置箇所一覧", "避難所一覧"}
    (page,) = g.subjects(RDF.type, HYDRA.PagedCollection)
    assert g.value(page, HYDRA.totalItems).toPython() == 2  # type: ignore[union-attr]
    assert g.value(page, HYDRA.itemsPerPage).toPython() == 100  # type: ignore[union-attr]
    assert g.value(page, HYDRA.nextPage) is None


def test_catalog_pages_by_100_with_hydra_links(api: TestClient) -> None:
    for n in range(101):
        create(api, f"ds-{n:03d}", title=f"データ {n}")
    first = parse(api, "/catalog.ttl", "ttl")
    (cat,) = first.subjects(RDF.type, DCAT.Catalog)
    assert len(set(first.objects(cat, DCAT.dataset))) == 100
    (page,) = first.subjects(RDF.type, HYDRA.PagedCollection)
    assert first.value(page, HYDRA.totalItems).toPython() == 101  # type: ignore[union-attr]
    next_url = str(first.value(page, HYDRA.nextPage))
    assert next_url.endswith("/catalog.ttl?page=2")
    assert str(first.value(page, HYDRA.lastPage)) == next_url
    assert first.value(page, HYDRA.previousPage) is None
    second = parse(api, "/catalog.ttl?page=2", "ttl")
    datasets = set(second.objects(None, DCAT.dataset))
    assert len(datasets) == 1
    # newest change first: the first dataset created is the one left for page 2
    assert second.value(datasets.pop(), DCTERMS.title) == Literal("データ 0", lang="ja")
    (page2,) = second.subjects(RDF.type, HYDRA.PagedCollection)
    assert str(second.value(page2, HYDRA.previousPage)).endswith("/catalog.ttl?page=1")
    assert second.value(page2, HYDRA.nextPage) is None
    assert api.get("/catalog.ttl?page=3").status_code == 404


def test_catalog_modified_since_and_query(api: TestClient) -> None:
    create(api, "old", title="古いデータ", tags=[{"name": "防災"}])
    time.sleep(0.05)
    new = create(api, "new", title="新しいデータ", tags=[{"name": "観光"}])
    g = parse(api, f"/catalog.jsonld?modified_since={new['metadata_modified']}", "jsonld")
    titles = {str(o) for o in g.objects(None, DCTERMS.title)} - {"オープンデータカタログ"}
    assert titles == {"新しいデータ"}
    every = parse(api, "/catalog.ttl?modified_since=2000-01-01", "ttl")
    assert len(set(every.subjects(RDF.type, DCAT.Dataset))) == 2
    g = parse(api, "/catalog.ttl?fq=tags:防災", "ttl")
    assert {str(o) for o in g.objects(None, DCAT.keyword)} == {"防災"}
    # the paging links keep the filter
    (page,) = g.subjects(RDF.type, HYDRA.PagedCollection)
    assert "fq=tags" in str(g.value(page, HYDRA.firstPage))


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "2026-01-01T25:00"])
def test_bad_modified_since_is_400_naming_the_parameter(api: TestClient, bad: str) -> None:
    r = api.get("/catalog.ttl", params={"modified_since": bad})
    assert r.status_code == 400
    assert "modified_since" in r.text
    assert bad in r.text


def test_bad_page_is_400(api: TestClient) -> None:
    for bad in ("0", "-1", "two"):
        r = api.get("/catalog.rdf", params={"page": bad})
        assert r.status_code == 400
        assert "page" in r.text


# -- the pure mapping over hand-made CKAN dicts ---------------------------------------------------
PKG: dict[str, Any] = {
    "id": "3f1c0c8e-0000-4000-8000-000000000001",
    "name": "aed",
    "title": "AED Locations",
    "notes": "",
    "tags": [{"name": "health"}],
    "license_id": "cc-by-4.0",
    "metadata_created": "2026-01-02T03:04:05.000001",
    "metadata_modified": "2026-02-02T03:04:05.123456",
    "organization": None,
    "resources": [],
    "url": "https://www.city.sano.lg.jp/aed.html",
    "version": "1.2",
}


def test_english_text_has_no_language_tag_and_source_url_is_landing_page() -> None:
    g = dcat.dataset_graph(PKG, "https://data.example")
    ds = URIRef("https://data.example/dataset/" + PKG["id"])
    assert g.value(ds, DCTERMS.title) == Literal("AED Locations")
    assert g.value(ds, DCAT.landingPage) == URIRef(PKG["url"])
    assert g.value(ds, DCTERMS.license) == CC_BY
    assert g.value(ds, DCTERMS.modified).toPython().isoformat() == (  # type: ignore[union-attr]
        "2026-02-02T03:04:05.123456+00:00"
    )
    assert g.value(ds, DCTERMS.publisher) is None  # no organization, no publisher


def test_json_ld_needs_no_network_and_round_trips() -> None:
    data = dcat.serialize(dcat.dataset_graph(PKG, "https://data.example"), dcat.FORMATS["jsonld"])
    assert b'"@context": {' in data  # inline, never a remote URL
    back = read_rdf(data, "jsonld")
    assert len(back) == len(dcat.dataset_graph(PKG, "https://data.example"))


def test_schema_org_dataset() -> None:
    doc = dcat.schema_org({**PKG, "title": "AED設置箇所一覧"}, "https://data.example")
    assert doc["@type"] == "Dataset"
    assert doc["name"] == "AED設置箇所一覧"
    assert doc["license"] == str(CC_BY)
    assert doc["keywords"] == ["health"]
    assert doc["description"]  # required by search engines: falls back to the title
