"""Media types, Accept negotiation and Link headers for the NGSI-LD API."""

from __future__ import annotations

import re

from cityos.broker.errors import NotAcceptable

JSON = "application/json"
LD_JSON = "application/ld+json"
GEO_JSON = "application/geo+json"
MERGE_PATCH = "application/merge-patch+json"
PROBLEM = "application/problem+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"

_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


def weighted(header: str) -> list[tuple[str, float]]:
    """Split a list header with q-values (Accept, Accept-Encoding) into (lower-cased token, q).

    A malformed q counts as 0 (refused), as RFC 9110 12.4.2 leaves it to the recipient.
    """
    items: list[tuple[str, float]] = []
    for part in header.split(","):
        bits = part.strip().split(";")
        token = bits[0].strip().lower()
        if not token:
            continue
        q = 1.0
        for p in bits[1:]:
            k, _, v = p.strip().partition("=")
            if k.strip() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        items.append((token, q))
    return items


def parse_accept(header: str | None, offered: tuple[str, ...]) -> str:
    """Pick the offered media type the Accept header prefers; raise NotAcceptable if none."""
    if not header:
        return offered[0]
    scored: list[tuple[float, int, int, str]] = []
    for mtype, q in weighted(header):
        if q <= 0:
            continue
        for rank, cand in enumerate(offered):
            if mtype in (cand, "*/*") or (
                mtype == "application/*" and cand.startswith("application/")
            ):
                # explicit types beat wildcards at the same q; then the server's order
                scored.append((q, 1 if mtype == cand else 0, -rank, cand))
    if not scored:
        raise NotAcceptable(
            f"Accept: none of {header!r} can be produced; this resource offers {', '.join(offered)}"
        )
    return max(scored)[3]


def content_type(header: str | None) -> str:
    """Return the bare, lower-cased media type of a Content-Type header."""
    if not header:
        return ""
    return header.split(";", 1)[0].strip().lower()


def context_links(header: str | None) -> list[str]:
    """Return the @context URLs named by JSON-LD context Link headers."""
    if not header:
        return []
    urls = []
    for m in _LINK.finditer(header):
        params = m.group(2)
        if re.search(r'rel\s*=\s*"?' + re.escape(CONTEXT_REL) + r'"?', params):
            urls.append(m.group(1).strip())
    return urls


def link_header(url: str) -> str:
    """Return a Link header value naming a JSON-LD @context."""
    return f'<{url}>; rel="{CONTEXT_REL}"; type="{LD_JSON}"'
