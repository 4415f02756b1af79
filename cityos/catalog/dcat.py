"""CKAN dataset dicts as DCAT-AP RDF (rdflib) and as schema.org Dataset JSON-LD; pure.

The mapping follows ckanext-dcat's (docs/catalog.md): a dataset is `<base>/dataset/<id>`,
its resources are `dcat:Distribution`s, the organization is the `foaf:Agent` publisher, and a
catalog page carries Hydra paging (`hydra:PagedCollection`, 100 datasets a page). Japanese
text gets the `@ja` language tag. JSON-LD is written with an inline context, so neither
writing nor reading it back fetches anything over the network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard

from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, OWL, RDF, XSD

from cityos.settings import DEFAULT_CATALOG_TITLE

__all__ = [
    "FORMATS",
    "HYDRA",
    "LICENSE_URIS",
    "PAGE_SIZE",
    "VCARD",
    "CatalogPage",
    "RdfFormat",
    "catalog_graph",
    "dataset_graph",
    "dataset_uri",
    "is_japanese",
    "license_uri",
    "schema_org",
    "serialize",
]

HYDRA: Final = Namespace("http://www.w3.org/ns/hydra/core#")
VCARD: Final = Namespace("http://www.w3.org/2006/vcard/ns#")
IANA: Final = "https://www.iana.org/assignments/media-types/"
#: datasets per catalog page, as ckanext-dcat (ckanext.dcat.datasets_per_page)
PAGE_SIZE: Final = 100

PDL_1_0: Final = "https://www.digital.go.jp/resources/open_data/public_data_license_v1.0"
CC_BY_4_0: Final = "https://creativecommons.org/licenses/by/4.0/"
#: licence ids whose version is certain -> the licence document's URI; other licences use
#: the URL the licence list gives (CKAN's unversioned "cc-by" points at opendefinition.org)
LICENSE_URIS: Final[dict[str, str]] = {
    "jp-pdl-1.0": PDL_1_0,
    "cc-by-4.0": CC_BY_4_0,
}
#: CKAN formats whose media type is certain, for resources that carry no mimetype
_MEDIA_TYPES: Final[dict[str, str]] = {
    "CSV": "text/csv",
    "TSV": "text/tab-separated-values",
    "JSON": "application/json",
    "GEOJSON": "application/geo+json",
    "XML": "application/xml",
    "PDF": "application/pdf",
    "XLSX": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "XLS": "application/vnd.ms-excel",
    "ZIP": "application/zip",
    "TXT": "text/plain",
    "HTML": "text/html",
}
_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_PREFIXES: Final[dict[str, str]] = {
    "dcat": str(DCAT),
    "dct": str(DCTERMS),
    "foaf": str(FOAF),
    "vcard": str(VCARD),
    "hydra": str(HYDRA),
    "owl": str(OWL),
    "xsd": str(XSD),
    "rdf": str(RDF),
}


@dataclass(frozen=True, slots=True)
class RdfFormat:
    """One serialization of the DCAT endpoints: its suffix, rdflib name and media type."""

    suffix: str
    rdflib_name: str
    media_type: str


FORMATS: Final[dict[str, RdfFormat]] = {
    "ttl": RdfFormat("ttl", "turtle", "text/turtle"),
    "jsonld": RdfFormat("jsonld", "json-ld", "application/ld+json"),
    "rdf": RdfFormat("rdf", "xml", "application/rdf+xml"),
}


@dataclass(frozen=True, slots=True)
class CatalogPage:
    """Where a catalog page sits in the whole result: Hydra's paging facts."""

    page: int
    total: int
    #: the URL of page n of the same listing (same format and filters)
    url: Callable[[int], str]
    per_page: int = PAGE_SIZE

    @property
    def last(self) -> int:
        """Return the last page's number (1 for an empty catalog)."""
        return max(1, -(-self.total // self.per_page))


def is_japanese(text: str) -> bool:
    """Tell whether the text holds kana or kanji."""
    return _JAPANESE.search(text) is not None


def _text(value: str) -> Literal:
    return Literal(value, lang="ja") if is_japanese(value) else Literal(value)


def _when(value: Any) -> datetime | None:
    """Return a CKAN timestamp (ISO, UTC when naive) as an aware datetime, None if unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _extra(pkg: Mapping[str, Any], key: str) -> str | None:
    for item in pkg.get("extras") or []:
        if isinstance(item, Mapping) and item.get("key") == key and item.get("value"):
            return str(item["value"])
    return None


def _is_url(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def license_uri(license_id: Any, license_url: Any = None) -> str | None:
    """Return the licence document's URI for a CKAN licence id (or its own URL)."""
    if isinstance(license_id, str) and license_id.lower() in LICENSE_URIS:
        return LICENSE_URIS[license_id.lower()]
    return license_url if _is_url(license_url) else None


def dataset_uri(base: str, pkg: Mapping[str, Any]) -> str:
    """Return the dataset's URI: `<base>/dataset/<id>`."""
    return f"{base}/dataset/{pkg['id']}"


def _media_type(res: Mapping[str, Any]) -> str | None:
    mimetype = res.get("mimetype")
    if isinstance(mimetype, str) and "/" in mimetype:
        return mimetype.split(";")[0].strip()
    fmt = res.get("format")
    return _MEDIA_TYPES.get(fmt.upper()) if isinstance(fmt, str) else None


def _add_license(g: Graph, subject: URIRef, uri: str | None, title: Any) -> None:
    if uri is None:
        return
    ref = URIRef(uri)
    g.add((subject, DCTERMS.license, ref))
    g.add((ref, RDF.type, DCTERMS.LicenseDocument))
    if isinstance(title, str) and title:
        g.add((ref, DCTERMS.title, _text(title)))


def _add_publisher(g: Graph, ds: URIRef, base: str, org: Any) -> None:
    if not isinstance(org, Mapping) or not org.get("name"):
        return
    agent = URIRef(f"{base}/organization/{org['name']}")
    g.add((ds, DCTERMS.publisher, agent))
    g.add((agent, RDF.type, FOAF.Agent))
    g.add((agent, FOAF.name, _text(str(org.get("title") or org["name"]))))


def _add_contact(g: Graph, ds: URIRef, pkg: Mapping[str, Any]) -> None:
    """Add the vcard contact: maintainer, else author, else the organization (no e-mail)."""
    org = pkg.get("organization") if isinstance(pkg.get("organization"), Mapping) else {}
    for name_key, mail_key in (("maintainer", "maintainer_email"), ("author", "author_email")):
        name, mail = pkg.get(name_key), pkg.get(mail_key)
        if name or mail:
            break
    else:
        name, mail = (org or {}).get("title"), None
    if not name and not mail:
        return
    contact = BNode()
    g.add((ds, DCAT.contactPoint, contact))
    g.add((contact, RDF.type, VCARD.Organization))
    if name:
        g.add((contact, VCARD.fn, _text(str(name))))
    if isinstance(mail, str) and "@" in mail:
        g.add((contact, VCARD.hasEmail, URIRef(f"mailto:{mail}")))


def _add_distribution(
    g: Graph, ds: URIRef, uri: str, res: Mapping[str, Any], license_: str | None
) -> None:
    dist = URIRef(f"{uri}/resource/{res['id']}")
    g.add((ds, DCAT.distribution, dist))
    g.add((dist, RDF.type, DCAT.Distribution))
    if res.get("name"):
        g.add((dist, DCTERMS.title, _text(str(res["name"]))))
    if res.get("description"):
        g.add((dist, DCTERMS.description, _text(str(res["description"]))))
    url = res.get("url")
    if _is_url(url):
        g.add((dist, DCAT.accessURL, URIRef(url)))
        if res.get("url_type") == "upload":
            g.add((dist, DCAT.downloadURL, URIRef(url)))
    if _is_url(res.get("download_url")):
        g.add((dist, DCAT.downloadURL, URIRef(res["download_url"])))
    if res.get("format"):
        g.add((dist, DCTERMS.format, Literal(str(res["format"]))))
    media = _media_type(res)
    if media:
        g.add((dist, DCAT.mediaType, URIRef(IANA + media)))
    size = res.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        g.add((dist, DCAT.byteSize, Literal(size, datatype=XSD.nonNegativeInteger)))
    for key, prop in (("created", DCTERMS.issued), ("last_modified", DCTERMS.modified)):
        when = _when(res.get(key))
        if when is not None:
            g.add((dist, prop, Literal(when, datatype=XSD.dateTime)))
    _add_license(g, dist, license_uri(res.get("license")) or license_, None)


def add_dataset(g: Graph, pkg: Mapping[str, Any], base: str) -> URIRef:
    """Add one CKAN dataset dict to the graph as a dcat:Dataset; return its URI."""
    uri = dataset_uri(base, pkg)
    ds = URIRef(uri)
    g.add((ds, RDF.type, DCAT.Dataset))
    g.add((ds, DCTERMS.title, _text(str(pkg.get("title") or pkg.get("name") or pkg["id"]))))
    if pkg.get("notes"):
        g.add((ds, DCTERMS.description, _text(str(pkg["notes"]))))
    for tag in pkg.get("tags") or []:
        name = tag.get("name") if isinstance(tag, Mapping) else tag
        if isinstance(name, str) and name:
            g.add((ds, DCAT.keyword, _text(name)))
    g.add((ds, DCTERMS.identifier, Literal(_extra(pkg, "identifier") or str(pkg["id"]))))
    for extra, key, prop in (
        ("issued", "metadata_created", DCTERMS.issued),
        ("modified", "metadata_modified", DCTERMS.modified),
    ):
        when = _when(_extra(pkg, extra)) or _when(pkg.get(key))
        if when is not None:
            g.add((ds, prop, Literal(when, datatype=XSD.dateTime)))
    if pkg.get("version"):
        g.add((ds, OWL.versionInfo, Literal(str(pkg["version"]))))
    source = pkg.get("url")
    landing = source if _is_url(source) else f"{base}/dataset/{pkg.get('name') or pkg['id']}"
    g.add((ds, DCAT.landingPage, URIRef(landing)))
    g.add((URIRef(landing), RDF.type, FOAF.Document))
    _add_publisher(g, ds, base, pkg.get("organization"))
    _add_contact(g, ds, pkg)
    licence = license_uri(pkg.get("license_id"), pkg.get("license_url"))
    _add_license(g, ds, licence, pkg.get("license_title"))
    for res in pkg.get("resources") or []:
        if isinstance(res, Mapping) and res.get("id"):
            _add_distribution(g, ds, uri, res, licence)
    return ds


def _graph() -> Graph:
    g = Graph(bind_namespaces="none")
    for prefix, ns in _PREFIXES.items():
        g.bind(prefix, Namespace(ns))
    return g


def dataset_graph(pkg: Mapping[str, Any], base: str) -> Graph:
    """Return the graph of one dataset and its distributions."""
    g = _graph()
    add_dataset(g, pkg, base)
    return g


def catalog_graph(
    packages: Iterable[Mapping[str, Any]],
    base: str,
    *,
    paging: CatalogPage,
    title: str = DEFAULT_CATALOG_TITLE,
    description: str = "公開されているオープンデータの一覧 (open data catalog)",
) -> Graph:
    """Return a page of the catalog: the dcat:Catalog, its datasets and Hydra paging."""
    g = _graph()
    cat = URIRef(f"{base}/")
    g.add((cat, RDF.type, DCAT.Catalog))
    g.add((cat, DCTERMS.title, _text(title)))
    g.add((cat, DCTERMS.description, _text(description)))
    g.add((cat, FOAF.homepage, URIRef(f"{base}/dataset")))
    latest: datetime | None = None
    for pkg in packages:
        g.add((cat, DCAT.dataset, add_dataset(g, pkg, base)))
        when = _when(pkg.get("metadata_modified"))
        if when is not None and (latest is None or when > latest):
            latest = when
    if latest is not None:
        g.add((cat, DCTERMS.modified, Literal(latest, datatype=XSD.dateTime)))
    here = URIRef(paging.url(paging.page))
    g.add((here, RDF.type, HYDRA.PagedCollection))
    g.add((here, HYDRA.totalItems, Literal(paging.total, datatype=XSD.nonNegativeInteger)))
    g.add((here, HYDRA.itemsPerPage, Literal(paging.per_page, datatype=XSD.nonNegativeInteger)))
    g.add((here, HYDRA.firstPage, URIRef(paging.url(1))))
    g.add((here, HYDRA.lastPage, URIRef(paging.url(paging.last))))
    if paging.page < paging.last:
        g.add((here, HYDRA.nextPage, URIRef(paging.url(paging.page + 1))))
    if paging.page > 1:
        g.add((here, HYDRA.previousPage, URIRef(paging.url(min(paging.page - 1, paging.last)))))
    return g


def serialize(g: Graph, fmt: RdfFormat) -> bytes:
    """Return the graph in a format; JSON-LD gets an inline context (nothing is fetched)."""
    if fmt.rdflib_name == "json-ld":
        text = g.serialize(format="json-ld", context=dict(_PREFIXES), auto_compact=True)
        return text.encode("utf-8")
    return g.serialize(format=fmt.rdflib_name, encoding="utf-8")


def schema_org(pkg: Mapping[str, Any], base: str) -> dict[str, Any]:
    """Return the schema.org Dataset description of a dataset, for its page's JSON-LD."""
    doc: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "Dataset",
        "@id": dataset_uri(base, pkg),
        "name": str(pkg.get("title") or pkg.get("name") or pkg["id"]),
        "url": f"{base}/dataset/{pkg.get('name') or pkg['id']}",
        "identifier": _extra(pkg, "identifier") or str(pkg["id"]),
        "inLanguage": "ja",
        "isAccessibleForFree": True,
    }
    # Google's Dataset rich results need a description; fall back to the title.
    doc["description"] = str(pkg.get("notes") or doc["name"])
    keywords = [
        t["name"] for t in pkg.get("tags") or [] if isinstance(t, Mapping) and t.get("name")
    ]
    if keywords:
        doc["keywords"] = keywords
    licence = license_uri(pkg.get("license_id"), pkg.get("license_url"))
    if licence:
        doc["license"] = licence
    for key, prop in (("metadata_created", "datePublished"), ("metadata_modified", "dateModified")):
        when = _when(pkg.get(key))
        if when is not None:
            doc[prop] = when.isoformat()
    org = pkg.get("organization")
    if isinstance(org, Mapping) and org.get("name"):
        agent = {
            "@type": "Organization",
            "name": str(org.get("title") or org["name"]),
            "url": f"{base}/organization/{org['name']}",
        }
        doc["creator"] = agent
        doc["publisher"] = agent
    if pkg.get("version"):
        doc["version"] = str(pkg["version"])
    downloads = []
    for res in pkg.get("resources") or []:
        if not isinstance(res, Mapping) or not _is_url(res.get("url")):
            continue
        item: dict[str, Any] = {"@type": "DataDownload", "contentUrl": res["url"]}
        if res.get("name"):
            item["name"] = str(res["name"])
        media = _media_type(res)
        if media or res.get("format"):
            item["encodingFormat"] = media or str(res["format"])
        if isinstance(res.get("size"), int) and not isinstance(res.get("size"), bool):
            item["contentSize"] = f"{res['size']} B"
        downloads.append(item)
    if downloads:
        doc["distribution"] = downloads
    return doc
