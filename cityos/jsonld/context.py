"""The active JSON-LD @context of a request: term expansion and IRI compaction without pyld.

The broker stores every attribute name and entity type expanded, so each request maps its
short names to IRIs and each response maps them back. Full JSON-LD processing per request is
far too slow for that, so an ActiveContext is built once per distinct @context (the loader
caches it) and answers term look-ups from dicts.

Processing follows the JSON-LD 1.1 context processing algorithm for what NGSI-LD needs:
term definitions (string, ``{"@id"}``, ``{"@reverse"}``, ``@id``-less terms), compact IRIs
with prefix terms, ``@vocab`` (absolute, compact or vocabulary-relative), ``@protected`` and
``@version``. Deliberate differences, all in favour of never losing data:

* the NGSI-LD core context is applied last and always wins for its own terms, even over a
  user term marked ``@protected``; a user ``@vocab`` still wins over the core's default one;
* ``null`` as a whole context is refused (it would reset the protected core context);
* a term mapped to ``null`` is treated as undefined (expanded with ``@vocab``), not dropped;
* scoped contexts (``@context`` in a term definition), ``@base``, ``@language``,
  ``@direction``, ``@propagate`` and ``@container`` are accepted and ignored;
* when several terms map to one IRI, compaction picks the core term, else the shortest
  (then alphabetically first) term, without looking at the value as JSON-LD would.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from cityos.broker.errors import BadRequestData

#: JSON-LD keywords (a term may map to one of them, e.g. "id" -> "@id")
KEYWORDS: Final = frozenset(
    {
        "@base",
        "@container",
        "@context",
        "@direction",
        "@graph",
        "@id",
        "@import",
        "@included",
        "@index",
        "@json",
        "@language",
        "@list",
        "@nest",
        "@none",
        "@prefix",
        "@propagate",
        "@protected",
        "@reverse",
        "@set",
        "@type",
        "@value",
        "@version",
        "@vocab",
    }
)
_CONTEXT_KEYWORDS: Final = frozenset(
    {
        "@base",
        "@direction",
        "@import",
        "@language",
        "@propagate",
        "@protected",
        "@type",
        "@version",
        "@vocab",
    }
)
_ABSOLUTE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+\-.]*|_):\S*$")
_GEN_DELIM_END: Final = re.compile(r".*[:/?#\[\]@]$")
_CACHE_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class TermDefinition:
    """What one term maps to: its IRI and whether it may be used as a compact-IRI prefix."""

    iri: str
    prefix: bool


@dataclass(frozen=True, slots=True)
class Definitions:
    """The result of processing a sequence of local contexts."""

    terms: Mapping[str, TermDefinition]
    vocab: str | None


def _error(detail: str) -> BadRequestData:
    return BadRequestData(f"@context: {detail}")


class _Processor:
    """Apply local contexts one after the other, as the JSON-LD context processing does."""

    def __init__(self, fallback_vocab: str | None) -> None:
        self.terms: dict[str, TermDefinition | None] = {}
        self.protected: set[str] = set()
        self.vocab: str | None = None
        # Used only where JSON-LD would fail for want of @vocab (the core sets one later).
        self.fallback_vocab = fallback_vocab

    def definitions(self) -> Definitions:
        terms = {t: d for t, d in self.terms.items() if d is not None}
        return Definitions(terms, self.vocab)

    def apply(self, local: Mapping[str, Any]) -> None:
        """Merge one local context object into the definitions."""
        version = local.get("@version")
        if version is not None and version != 1.1:
            raise _error(f"@version must be 1.1, got {version!r}")
        if "@import" in local:
            raise _error("@import must be resolved by the context loader")
        if "@vocab" in local:
            vocab = local["@vocab"]
            if vocab is None:
                self.vocab = None
            elif isinstance(vocab, str):
                expanded = self.expand(vocab)
                if expanded is None or not _ABSOLUTE.match(expanded):
                    raise _error(f"@vocab {vocab!r} is not an absolute IRI")
                self.vocab = expanded
            else:
                raise _error("@vocab must be a string or null")
        defined: dict[str, bool] = {}
        for term in local:
            if term not in _CONTEXT_KEYWORDS:
                self._define(local, term, defined)

    def _define(self, local: Mapping[str, Any], term: str, defined: dict[str, bool]) -> None:
        state = defined.get(term)
        if state is True:
            return
        if state is False:
            raise _error(f"term {term!r} has a cyclic IRI mapping")
        defined[term] = False
        if term == "" or term.startswith("@"):
            # Keywords cannot be redefined; other "@..." keys are reserved and ignored.
            if term in KEYWORDS and term != "@type":
                raise _error(f"keyword {term!r} cannot be redefined")
            defined[term] = True
            return
        raw = local[term]
        simple = isinstance(raw, str)
        if raw is None or (isinstance(raw, dict) and "@id" in raw and raw["@id"] is None):
            self._set(term, None, raw, local)
            defined[term] = True
            return
        if simple:
            spec: Mapping[str, Any] = {"@id": raw}
        elif isinstance(raw, dict):
            spec = raw
        else:
            raise _error(f"term {term!r}: a definition must be a string, an object or null")
        colon = term.find(":", 1)
        prefix_flag = False
        if "@reverse" in spec:
            iri = self._expand_in(spec["@reverse"], term, local, defined)
        elif "@id" in spec and spec["@id"] != term:
            target = spec["@id"]
            if not isinstance(target, str):
                raise _error(f"term {term!r}: @id must be a string")
            if target.startswith("@") and target not in KEYWORDS:
                defined[term] = True  # reserved for future keywords: ignored, as JSON-LD does
                return
            iri = self._expand_in(target, term, local, defined)
            prefix_flag = (
                simple and colon == -1 and (iri.startswith("_:") or bool(_GEN_DELIM_END.match(iri)))
            )
        elif colon > 0:
            prefix = term[:colon]
            if prefix in local:
                self._define(local, prefix, defined)
            parent = self.terms.get(prefix)
            iri = parent.iri + term[colon + 1 :] if parent is not None else term
        else:
            vocab = self.vocab if self.vocab is not None else self.fallback_vocab
            if vocab is None:
                raise _error(f"term {term!r} has no @id and no @vocab is in effect")
            iri = vocab + term
        if isinstance(spec.get("@prefix"), bool):
            prefix_flag = spec["@prefix"]
        self._set(term, TermDefinition(iri, prefix_flag), raw, local)
        defined[term] = True

    def _set(
        self, term: str, definition: TermDefinition | None, raw: Any, local: Mapping[str, Any]
    ) -> None:
        if term in self.protected and self.terms.get(term) != definition:
            raise _error(f"term {term!r} is protected and cannot be redefined")
        self.terms[term] = definition
        flag = raw.get("@protected") if isinstance(raw, dict) else None
        if flag is None:
            flag = local.get("@protected", False)
        if flag is True:
            self.protected.add(term)

    def _expand_in(
        self, value: Any, term: str, local: Mapping[str, Any], defined: dict[str, bool]
    ) -> str:
        if not isinstance(value, str):
            raise _error(f"term {term!r}: @id must be a string")
        iri = self.expand(value, local, defined)
        if iri is None or not (_ABSOLUTE.match(iri) or iri in KEYWORDS):
            raise _error(f"term {term!r}: {value!r} does not expand to an absolute IRI")
        return iri

    def expand(
        self,
        value: str,
        local: Mapping[str, Any] | None = None,
        defined: dict[str, bool] | None = None,
    ) -> str | None:
        """IRI-expand value against the definitions made so far (vocabulary-relative)."""
        if value in KEYWORDS:
            return value
        if value.startswith("@"):
            return None
        if (
            local is not None
            and defined is not None
            and value in local
            and defined.get(value) is not True
        ):
            self._define(local, value, defined)
        if value in self.terms:
            found = self.terms[value]
            return found.iri if found is not None else None
        colon = value.find(":")
        if colon > 0:
            prefix, suffix = value[:colon], value[colon + 1 :]
            if prefix == "_" or suffix.startswith("//"):
                return value
            if (
                local is not None
                and defined is not None
                and prefix in local
                and not defined.get(prefix)
            ):
                self._define(local, prefix, defined)
            parent = self.terms.get(prefix)
            if parent is not None and parent.prefix:
                return parent.iri + suffix
            if _ABSOLUTE.match(value):
                return value
        vocab = self.vocab if self.vocab is not None else self.fallback_vocab
        return vocab + value if vocab is not None else value


def process(locals_: Sequence[Mapping[str, Any]], fallback_vocab: str | None = None) -> Definitions:
    """Process local context objects in order into term definitions and a @vocab."""
    proc = _Processor(fallback_vocab)
    for local in locals_:
        if not isinstance(local, Mapping):
            raise _error(f"expected a context object, got {type(local).__name__}")
        proc.apply(local)
    return proc.definitions()


class ActiveContext:
    """The term mappings of one request's @context (user contexts, then the core context)."""

    __slots__ = (
        "_compact_cache",
        "_compact_order",
        "_expand_cache",
        "_expand_order",
        "_inverse",
        "_prefix_map",
        "_prefixes",
        "_terms",
        "key",
        "source",
        "vocab",
    )

    def __init__(
        self,
        user: Sequence[Mapping[str, Any]],
        core: Definitions,
        source: Any,
        key: Hashable | None = None,
    ) -> None:
        mine = process(user, core.vocab)
        terms = {**mine.terms, **core.terms}
        self.source = source
        self.key: Hashable = key if key is not None else _key_of(source, user)
        self.vocab: str | None = mine.vocab if mine.vocab is not None else core.vocab
        self._terms: dict[str, str] = {t: d.iri for t, d in terms.items()}
        self._prefix_map: dict[str, str] = {t: d.iri for t, d in terms.items() if d.prefix}
        self._prefixes: tuple[tuple[str, str], ...] = tuple(self._prefix_map.items())
        inverse: dict[str, str] = {}
        for term, iri in sorted(mine.terms.items(), key=lambda kv: (len(kv[0]), kv[0])):
            if not iri.iri.startswith("@"):
                inverse.setdefault(iri.iri, term)
        core_inverse: dict[str, str] = {}
        for term, d in sorted(core.terms.items(), key=lambda kv: (len(kv[0]), kv[0])):
            if not d.iri.startswith("@"):
                core_inverse.setdefault(d.iri, term)
        # A user term that the core context overrode no longer maps to its old IRI.
        self._inverse = {i: t for i, t in inverse.items() if self._terms.get(t) == i}
        self._inverse.update(core_inverse)
        self._expand_cache: dict[str, str] = {}
        self._expand_order: deque[str] = deque()
        self._compact_cache: dict[str, str] = {}
        self._compact_order: deque[str] = deque()

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActiveContext) and other.key == self.key

    def __repr__(self) -> str:
        return f"ActiveContext(source={self.source!r})"

    # -- expansion ---------------------------------------------------------------------------
    def expand_term(self, term: str) -> str:
        """Return the IRI an attribute name or entity type stands for."""
        iri = self._terms.get(term)
        if iri is not None:
            return iri
        iri = self._expand_cache.get(term)
        if iri is None:
            iri = self._expand(term)
            _remember(self._expand_cache, self._expand_order, term, iri)
        return iri

    def expand_vocab_value(self, v: str) -> str:
        """Return the IRI a value of an ``@type: @vocab`` member (vocab, objectType) stands for."""
        iri = self.expand_term(v)
        if iri.startswith("@"):
            return v if self.vocab is None else self.vocab + v
        return iri

    def _expand(self, term: str) -> str:
        if term.startswith("@"):
            return term
        colon = term.find(":")
        if colon > 0:
            prefix, suffix = term[:colon], term[colon + 1 :]
            if prefix == "_" or suffix.startswith("//"):
                return term
            base = self._prefix_map.get(prefix)
            if base is not None:
                return base + suffix
            if _ABSOLUTE.match(term):
                return term
        return self.vocab + term if self.vocab is not None else term

    # -- compaction --------------------------------------------------------------------------
    def compact_iri(self, iri: str) -> str:
        """Return the short name this context gives an IRI (the IRI itself if none)."""
        term = self._inverse.get(iri)
        if term is not None:
            return term
        term = self._compact_cache.get(iri)
        if term is None:
            term = self._compact(iri)
            _remember(self._compact_cache, self._compact_order, iri, term)
        return term

    def compact_vocab_value(self, v: str) -> str:
        """Return the short form of an ``@type: @vocab`` value (vocab, objectType)."""
        return self.compact_iri(v)

    def _compact(self, iri: str) -> str:
        vocab = self.vocab
        if vocab and iri.startswith(vocab) and len(iri) > len(vocab):
            suffix = iri[len(vocab) :]
            if self.expand_term(suffix) == iri:
                return suffix
        best: str | None = None
        for name, base in self._prefixes:
            if iri.startswith(base) and len(iri) > len(base):
                candidate = f"{name}:{iri[len(base) :]}"
                if (best is None or (len(candidate), candidate) < (len(best), best)) and (
                    self.expand_term(candidate) == iri
                ):
                    best = candidate
        return best if best is not None else iri


def _remember(cache: dict[str, str], order: deque[str], key: str, value: str) -> None:
    # Bounded memo: the oldest computed entry goes first. A hit costs one dict look-up, which
    # matters more on this path than keeping the exact least-recently-used order.
    if key not in cache:
        order.append(key)
    cache[key] = value
    while len(order) > _CACHE_SIZE:
        cache.pop(order.popleft(), None)


def _key_of(source: Any, user: Sequence[Mapping[str, Any]]) -> Hashable:
    if isinstance(source, str):
        return source
    return orjson.dumps([source, list(user)], option=orjson.OPT_SORT_KEYS)
