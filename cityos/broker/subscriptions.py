"""NGSI-LD subscriptions (GS CIM 009 v1.8 clauses 5.2.12, 5.8, 5.11): validation and matching.

A subscription is stored *expanded*, like entities: attribute names and entity types are IRIs,
and the names used in ``q`` are kept with the IRIs they meant when the subscription was
created, so a later request with another @context (or a restart) matches exactly the same
changes. The @context a notification is compacted with is resolved once, when the
subscription is created (``jsonldContext`` when given, else the request's @context), and
kept by source so it can be resolved again after a restart.

``Live`` is the in-memory, parsed form the change hook matches with: it decides from a
``Change`` alone whether a subscription fires, and renders the notification payload. The
conditions that need the stored row (``q``, ``scopeQ``, ``geoQ``) are left to the engine.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from cityos.broker import geo, qlang, typesel
from cityos.broker.errors import BadRequestData
from cityos.broker.model import LOCATION, VALUE_MEMBER, Doc, Instance
from cityos.broker.normalize import check_entity_id, check_name, is_uri, parse_datetime
from cityos.broker.render import RenderOptions, TermCompactor, render_entity
from cityos.jsonld.context import ActiveContext
from cityos.storage.base import EntityQuery

TRIGGERS: Final = (
    "entityCreated",
    "entityUpdated",
    "entityDeleted",
    "attributeCreated",
    "attributeUpdated",
    "attributeDeleted",
)
DEFAULT_TRIGGERS: Final = ("attributeCreated", "attributeUpdated")
FORMATS: Final = ("normalized", "keyValues", "concise")
ACCEPTS: Final = ("application/json", "application/ld+json")
SCHEMES: Final = ("http", "https", "mqtt", "mqtts")
NULL: Final = "urn:ngsi-ld:null"

_MEMBERS: Final = frozenset(
    {
        "id",
        "type",
        "subscriptionName",
        "description",
        "entities",
        "watchedAttributes",
        "notificationTrigger",
        "timeInterval",
        "q",
        "geoQ",
        "scopeQ",
        "lang",
        "csf",
        "isActive",
        "notification",
        "expiresAt",
        "throttling",
        "temporalQ",
        "jsonldContext",
        "@context",
        "status",
        "createdAt",
        "modifiedAt",
    }
)
_READ_ONLY: Final = frozenset({"status", "createdAt", "modifiedAt"})
_NOTIFICATION_MEMBERS: Final = frozenset(
    {
        "attributes",
        "format",
        "sysAttrs",
        "showChanges",
        "endpoint",
        "status",
        "timesSent",
        "timesFailed",
        "lastNotification",
        "lastSuccess",
        "lastFailure",
    }
)
_NOTIFICATION_STATUS: Final = _NOTIFICATION_MEMBERS - {
    "attributes",
    "format",
    "sysAttrs",
    "showChanges",
    "endpoint",
}
_ENDPOINT_MEMBERS: Final = frozenset({"uri", "accept", "receiverInfo", "notifierInfo"})
_MQTT_QOS: Final = ("0", "1", "2")
_MQTT_VERSIONS: Final = ("mqtt3.1.1", "mqtt5.0")
_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequestData(f"{where}: must be a non-empty string")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequestData(f"{where}: must be true or false")
    return value


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequestData(f"{where}: must be a positive number of seconds")
    return float(value)


def _names(value: Any, where: str, ctx: ActiveContext) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequestData(f"{where}: must be a non-empty array of attribute names")
    out: list[str] = []
    for name in value:
        if not isinstance(name, str):
            raise BadRequestData(f"{where}: every item must be an attribute name string")
        check_name(name, where)
        iri = ctx.expand_term(name)
        if iri not in out:
            out.append(iri)
    return out


def _key_values(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise BadRequestData(f"{where}: must be an array of {{key, value}} objects")
    out: list[dict[str, str]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"key", "value"}:
            raise BadRequestData(f"{where}[{i}]: must be an object with exactly key and value")
        key, val = item["key"], item["value"]
        if not isinstance(key, str) or not _HEADER_NAME.match(key):
            raise BadRequestData(f"{where}[{i}].key: {key!r} is not a valid header name")
        if not isinstance(val, str) or "\n" in val or "\r" in val:
            raise BadRequestData(f"{where}[{i}].value: must be a single-line string")
        out.append({"key": key, "value": val})
    return out


def _endpoint(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("notification.endpoint: must be an object with a uri")
    for key in value:
        if key not in _ENDPOINT_MEMBERS:
            raise BadRequestData(f"notification.endpoint.{key}: not an Endpoint member")
    uri = _str(value.get("uri"), "notification.endpoint.uri")
    scheme = uri.split(":", 1)[0].lower()
    if not is_uri(uri) or scheme not in SCHEMES or "//" not in uri:
        raise BadRequestData(
            f"notification.endpoint.uri: {uri!r} is not an http(s):// or mqtt(s):// URI"
        )
    if scheme.startswith("mqtt"):
        rest = uri.split("//", 1)[1]
        if "/" not in rest or not rest.split("/", 1)[1]:
            raise BadRequestData(
                f"notification.endpoint.uri: {uri!r} names no MQTT topic (mqtt://host/topic)"
            )
    out: dict[str, Any] = {"uri": uri}
    accept = value.get("accept", "application/json")
    if accept not in ACCEPTS:
        raise BadRequestData(
            f"notification.endpoint.accept: {accept!r} is not one of {', '.join(ACCEPTS)}"
        )
    out["accept"] = accept
    for key in ("receiverInfo", "notifierInfo"):
        if key in value:
            out[key] = _key_values(value[key], f"notification.endpoint.{key}")
    for item in out.get("notifierInfo", []):
        if item["key"] == "MQTT-QoS" and item["value"] not in _MQTT_QOS:
            raise BadRequestData("notification.endpoint.notifierInfo: MQTT-QoS must be 0, 1 or 2")
        if item["key"] == "MQTT-Version" and item["value"] not in _MQTT_VERSIONS:
            raise BadRequestData(
                "notification.endpoint.notifierInfo: MQTT-Version must be mqtt3.1.1 or mqtt5.0"
            )
    return out


def _notification(value: Any, ctx: ActiveContext, old: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("notification: must be an object with an endpoint")
    for key in value:
        if key not in _NOTIFICATION_MEMBERS:
            raise BadRequestData(f"notification.{key}: not a NotificationParams member")
        if key in _NOTIFICATION_STATUS:
            raise BadRequestData(f"notification.{key}: is read-only")
    out: dict[str, Any] = dict(old or {})
    if "attributes" in value:
        out["attributes"] = _names(value["attributes"], "notification.attributes", ctx)
    if "format" in value:
        if value["format"] not in FORMATS:
            raise BadRequestData(
                f"notification.format: {value['format']!r} is not one of {', '.join(FORMATS)}"
            )
        out["format"] = value["format"]
    for key in ("sysAttrs", "showChanges"):
        if key in value:
            out[key] = _bool(value[key], f"notification.{key}")
    if "endpoint" in value:
        out["endpoint"] = _endpoint(value["endpoint"])
    if "endpoint" not in out:
        raise BadRequestData("notification.endpoint: missing")
    return out


def _entities(value: Any, ctx: ActiveContext) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequestData("entities: must be a non-empty array of EntitySelector objects")
    out: list[dict[str, str]] = []
    for i, sel in enumerate(value):
        where = f"entities[{i}]"
        if not isinstance(sel, dict):
            raise BadRequestData(f"{where}: must be an object with type (and id or idPattern)")
        for key in sel:
            if key not in ("id", "idPattern", "type"):
                raise BadRequestData(f"{where}.{key}: not an EntitySelector member")
        if "type" not in sel:
            raise BadRequestData(f"{where}.type: missing")
        raw = _str(sel["type"], f"{where}.type")
        try:
            expr = typesel.parse_type_selection(raw)
        except BadRequestData as exc:
            raise BadRequestData(f"{where}.type: {exc.detail}") from None
        item = {
            "type": typesel.unparse_type_selection(typesel.map_type_names(expr, ctx.expand_term))
        }
        if "id" in sel and "idPattern" in sel:
            raise BadRequestData(f"{where}: id and idPattern are mutually exclusive")
        if "id" in sel:
            item["id"] = check_entity_id(sel["id"], f"{where}.id")
        if "idPattern" in sel:
            pattern = _str(sel["idPattern"], f"{where}.idPattern")
            qlang.check_regex(pattern, f"{where}.idPattern")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise BadRequestData(
                    f"{where}.idPattern: invalid regular expression ({exc})"
                ) from None
            item["idPattern"] = pattern
        out.append(item)
    return out


def _q_names(expr: qlang.QExpr) -> set[str]:
    if isinstance(expr, qlang.And | qlang.Or):
        out: set[str] = set()
        for x in expr.items:
            out |= _q_names(x)
        return out
    return {n for n in expr.path.names if n not in qlang.CORE_PATH_MEMBERS}


def _geo_q(value: Any, ctx: ActiveContext) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("geoQ: must be an object with geometry, coordinates and georel")
    for key in value:
        if key not in ("geometry", "coordinates", "georel", "geoproperty"):
            raise BadRequestData(f"geoQ.{key}: not a GeoQuery member")
    gp = value.get("geoproperty", "location")
    if not isinstance(gp, str):
        raise BadRequestData("geoQ.geoproperty: must be an attribute name")
    check_name(gp, "geoQ.geoproperty")
    coords = value.get("coordinates")
    if coords is not None and not isinstance(coords, list | str):
        raise BadRequestData("geoQ.coordinates: must be an array (or its JSON text)")
    try:
        geo.parse_geoquery(value.get("georel"), value.get("geometry"), coords, gp)
    except BadRequestData as exc:
        raise BadRequestData(f"geoQ.{exc.detail}") from None
    return {
        "georel": value["georel"],
        "geometry": value["geometry"],
        "coordinates": coords,
        "geoproperty": ctx.expand_term(gp),
    }


def validate(
    body: Any, ctx: ActiveContext, now: str, old: Doc | None = None
) -> tuple[Doc, str | None]:
    """Return the stored form of a subscription (created, or old patched with body).

    Also return the ``jsonldContext`` to resolve for notifications, when it changes.
    """
    if not isinstance(body, dict):
        raise BadRequestData("the subscription must be a JSON object")
    for key in body:
        if key not in _MEMBERS:
            raise BadRequestData(f"{key}: not a member of the Subscription data type")
        if key in _READ_ONLY:
            raise BadRequestData(f"{key}: is read-only")
    doc: Doc = dict(old) if old is not None else {}
    if old is None:
        if body.get("type") != "Subscription":
            raise BadRequestData('type: a subscription must have "type": "Subscription"')
        doc["id"] = (
            check_entity_id(body["id"], "id")
            if "id" in body
            else f"urn:ngsi-ld:Subscription:{uuid.uuid4()}"
        )
        doc["createdAt"] = now
        doc["context"] = ctx.source
        doc["terms"] = {}
    else:
        if "id" in body and body["id"] != old["id"]:
            raise BadRequestData("id: a subscription's id cannot be changed")
        if "type" in body and body["type"] != "Subscription":
            raise BadRequestData('type: must be "Subscription"')
    doc["modifiedAt"] = now
    for key in ("subscriptionName", "description", "lang"):
        if key in body:
            doc[key] = _str(body[key], key)
    if "entities" in body:
        doc["entities"] = _entities(body["entities"], ctx)
    if "watchedAttributes" in body:
        doc["watchedAttributes"] = _names(body["watchedAttributes"], "watchedAttributes", ctx)
    if "notificationTrigger" in body:
        trig = body["notificationTrigger"]
        if not isinstance(trig, list) or not trig:
            raise BadRequestData("notificationTrigger: must be a non-empty array")
        for t in trig:
            if t not in TRIGGERS:
                raise BadRequestData(
                    f"notificationTrigger: {t!r} is not one of {', '.join(TRIGGERS)}"
                )
        doc["notificationTrigger"] = list(dict.fromkeys(trig))
    if "q" in body:
        text = _str(body["q"], "q")
        expr = qlang.parse_q(text)
        doc["q"] = text
        doc["terms"] = {**doc.get("terms", {}), **{n: ctx.expand_term(n) for n in _q_names(expr)}}
    if "scopeQ" in body:
        text = _str(body["scopeQ"], "scopeQ")
        qlang.parse_scope_q(text)
        doc["scopeQ"] = text
    if "geoQ" in body:
        doc["geoQ"] = _geo_q(body["geoQ"], ctx)
    for key in ("throttling", "timeInterval"):
        if key in body:
            doc[key] = _positive(body[key], key)
    if "expiresAt" in body:
        text = parse_datetime(body["expiresAt"], "expiresAt")
        doc["expiresAt"] = qlang.canonical_datetime(text)
    if "isActive" in body:
        doc["isActive"] = _bool(body["isActive"], "isActive")
    if "notification" in body:
        doc["notification"] = _notification(body["notification"], ctx, doc.get("notification"))
    jsonld_context: str | None = None
    if "jsonldContext" in body:
        jsonld_context = _str(body["jsonldContext"], "jsonldContext")
        if not is_uri(jsonld_context):
            raise BadRequestData(f"jsonldContext: {jsonld_context!r} is not a URI")
        doc["jsonldContext"] = jsonld_context
    _check_whole(doc)
    return doc, jsonld_context


def _check_whole(doc: Doc) -> None:
    if "notification" not in doc:
        raise BadRequestData("notification: missing")
    if "entities" not in doc and "watchedAttributes" not in doc:
        raise BadRequestData("entities: at least one of entities or watchedAttributes is required")
    if "timeInterval" in doc:
        # a periodic subscription notifies on time, never on changes (clause 5.2.12)
        for key in ("watchedAttributes", "throttling"):
            if key in doc:
                raise BadRequestData(f"{key}: not allowed in a subscription with timeInterval")
        if "entities" not in doc:
            raise BadRequestData("entities: required with timeInterval")


def status(doc: Doc, now: str) -> str:
    """Return active, paused or expired."""
    expires = doc.get("expiresAt")
    if expires is not None and expires <= now:
        return "expired"
    return "active" if doc.get("isActive", True) else "paused"


@dataclass(frozen=True, slots=True)
class Counters:
    """What delivery has done so far (clause 5.2.22 NotificationParams status members)."""

    times_sent: int = 0
    times_failed: int = 0
    last_notification: str | None = None
    last_success: str | None = None
    last_failure: str | None = None


def render(doc: Doc, counters: Counters, ctx: TermCompactor, now: str, sys_attrs: bool) -> Doc:
    """Render a stored subscription as the API returns it."""
    out: Doc = {"id": doc["id"], "type": "Subscription"}
    for key in ("subscriptionName", "description"):
        if key in doc:
            out[key] = doc[key]
    if "entities" in doc:
        ents = []
        for sel in doc["entities"]:
            item = dict(sel)
            expr = typesel.parse_type_selection(sel["type"])
            item["type"] = typesel.unparse_type_selection(
                typesel.map_type_names(expr, ctx.compact_iri)
            )
            ents.append(item)
        out["entities"] = ents
    if "watchedAttributes" in doc:
        out["watchedAttributes"] = [ctx.compact_iri(a) for a in doc["watchedAttributes"]]
    out["notificationTrigger"] = doc.get("notificationTrigger", list(DEFAULT_TRIGGERS))
    for key in ("timeInterval", "q", "scopeQ", "lang", "throttling", "expiresAt"):
        if key in doc:
            out[key] = doc[key]
    if "geoQ" in doc:
        out["geoQ"] = {**doc["geoQ"], "geoproperty": ctx.compact_iri(doc["geoQ"]["geoproperty"])}
    out["isActive"] = doc.get("isActive", True)
    out["status"] = status(doc, now)
    note = doc["notification"]
    rendered: Doc = {}
    if "attributes" in note:
        rendered["attributes"] = [ctx.compact_iri(a) for a in note["attributes"]]
    rendered["format"] = note.get("format", "normalized")
    rendered["sysAttrs"] = note.get("sysAttrs", False)
    rendered["showChanges"] = note.get("showChanges", False)
    rendered["endpoint"] = note["endpoint"]
    rendered["timesSent"] = counters.times_sent
    rendered["timesFailed"] = counters.times_failed
    for key, value in (
        ("lastNotification", counters.last_notification),
        ("lastSuccess", counters.last_success),
        ("lastFailure", counters.last_failure),
    ):
        if value is not None:
            rendered[key] = value
    failed = counters.last_failure is not None and (
        counters.last_success is None or counters.last_failure > counters.last_success
    )
    rendered["status"] = "failed" if failed else "ok"
    out["notification"] = rendered
    if "jsonldContext" in doc:
        out["jsonldContext"] = doc["jsonldContext"]
    if sys_attrs:
        out["createdAt"] = doc["createdAt"]
        out["modifiedAt"] = doc["modifiedAt"]
    return out


# -- matching ---------------------------------------------------------------------------------
def _types_match(expr: typesel.TypeExpr, types: list[str]) -> bool:
    if isinstance(expr, typesel.TypeName):
        return expr.name in types
    if isinstance(expr, typesel.TypeAnd):
        return all(_types_match(x, types) for x in expr.items)
    return any(_types_match(x, types) for x in expr.items)


@dataclass(frozen=True, slots=True)
class _Selector:
    types: typesel.TypeExpr
    id: str | None
    pattern: re.Pattern[str] | None

    def matches(self, doc: Doc) -> bool:
        if self.id is not None and doc["id"] != self.id:
            return False
        if self.pattern is not None and self.pattern.search(doc["id"]) is None:
            return False
        return _types_match(self.types, doc.get("type", []))


@dataclass(frozen=True, slots=True)
class Fired:
    """Why a change notifies: the triggers it raised and the attributes they concern."""

    triggers: frozenset[str]
    attrs: frozenset[str]
    deleted_attrs: frozenset[str]


def _instances_by_ds(insts: Iterable[Instance]) -> dict[str | None, Instance]:
    return {i.get("datasetId"): i for i in insts}


def _sans_system(inst: Instance) -> Instance:
    return {k: v for k, v in inst.items() if k not in ("createdAt", "modifiedAt")}


@dataclass(slots=True)
class Live:
    """A subscription ready to be matched in the writer's transaction."""

    tenant: str
    doc: Doc
    ctx: ActiveContext  # compacts notifications
    selectors: tuple[_Selector, ...] = ()
    watched: frozenset[str] | None = None
    triggers: frozenset[str] = frozenset(DEFAULT_TRIGGERS)
    q: qlang.QExpr | None = None
    scope_q: qlang.ScopeExpr | None = None
    geo_q: geo.GeoQuery | None = None
    geoproperty: str = LOCATION
    opts: RenderOptions = field(default_factory=RenderOptions)
    throttling: float = 0.0
    #: the names used in q with the IRIs they meant when the subscription was written
    terms: dict[str, str] = field(default_factory=dict)
    #: a version bumped on every update, so caches keyed by it (compiled SQL) go stale
    version: int = 0

    @classmethod
    def build(cls, tenant: str, doc: Doc, ctx: ActiveContext, version: int = 0) -> Live:
        """Parse a stored subscription for matching."""
        selectors = tuple(
            _Selector(
                typesel.parse_type_selection(s["type"]),
                s.get("id"),
                re.compile(s["idPattern"]) if "idPattern" in s else None,
            )
            for s in doc.get("entities", ())
        )
        geo_q = None
        geoproperty = LOCATION
        if "geoQ" in doc:
            g = doc["geoQ"]
            geo_q = geo.parse_geoquery(g["georel"], g["geometry"], g["coordinates"], "location")
            geoproperty = g["geoproperty"]
        note = doc["notification"]
        attrs = note.get("attributes")
        return cls(
            tenant=tenant,
            doc=doc,
            ctx=ctx,
            selectors=selectors,
            watched=frozenset(doc["watchedAttributes"]) if "watchedAttributes" in doc else None,
            triggers=frozenset(doc.get("notificationTrigger", DEFAULT_TRIGGERS)),
            q=qlang.parse_q(doc["q"]) if "q" in doc else None,
            scope_q=qlang.parse_scope_q(doc["scopeQ"]) if "scopeQ" in doc else None,
            geo_q=geo_q,
            geoproperty=geoproperty,
            opts=RenderOptions(
                format=note.get("format", "normalized"),
                sys_attrs=note.get("sysAttrs", False),
                lang=doc.get("lang"),
                pick=frozenset([*attrs, "id", "type"]) if attrs else None,
            ),
            throttling=doc.get("throttling", 0.0),
            terms=doc.get("terms", {}),
            version=version,
        )

    @property
    def id(self) -> str:
        sid: str = self.doc["id"]
        return sid

    def expand(self, name: str) -> str:
        """Expand a name used in q as it was expanded when the subscription was written."""
        return self.terms.get(name) or self.ctx.expand_term(name)

    @property
    def periodic(self) -> bool:
        return "timeInterval" in self.doc

    @property
    def interval(self) -> float:
        """Return the seconds between periodic notifications (0 when not periodic)."""
        seconds: float = self.doc.get("timeInterval", 0.0)
        return seconds

    def active_at(self, now: str) -> bool:
        """Return whether the subscription notifies at this time (neither paused nor expired)."""
        return status(self.doc, now) == "active"

    def live_at(self, now: str) -> bool:
        """Return whether changes at this time notify (active, not expired, not periodic)."""
        return not self.periodic and self.active_at(now)

    def queries(self, limit: int) -> list[EntityQuery]:
        """Return the entity queries selecting what a periodic notification carries.

        One per entity selector (their union is the selection); with
        ``notification.attributes`` an entity must have one of them, as with ``attrs``.
        """
        base = EntityQuery(
            q=self.q,
            scope_q=self.scope_q,
            geo=self.geo_q,
            geoproperty=self.geoproperty if self.geo_q is not None else None,
            attrs=frozenset(self.doc["notification"].get("attributes", ())),
            expand=self.expand,
            limit=limit,
        )
        return [
            replace(
                base,
                types=s.types,
                ids=(s.id,) if s.id is not None else (),
                id_pattern=s.pattern.pattern if s.pattern is not None else None,
            )
            for s in self.selectors
        ] or [base]

    def selects(self, doc: Doc) -> bool:
        """Return whether the entity is one the subscription is about (entities member)."""
        return not self.selectors or any(s.matches(doc) for s in self.selectors)

    def fired(self, old: Doc | None, new: Doc | None) -> Fired | None:
        """Return what a change raises for this subscription, or None when it does not notify."""
        subject = new if new is not None else old
        if subject is None or not self.selects(subject):
            return None
        raised: set[str] = set()
        changed: set[str] = set()
        deleted: set[str] = set()
        if old is None:
            raised.add("entityCreated")
            changed = set(subject.get("attrs", {}))
            if changed:
                raised.add("attributeCreated")
        elif new is None:
            raised.add("entityDeleted")
            changed = set(old.get("attrs", {}))
        else:
            before, after = old.get("attrs", {}), new.get("attrs", {})
            for name in before.keys() | after.keys():
                if name not in before:
                    raised.add("attributeCreated")
                    changed.add(name)
                elif name not in after:
                    raised.add("attributeDeleted")
                    deleted.add(name)
                    changed.add(name)
                elif before[name] != after[name]:
                    raised.add(_instance_trigger(before[name], after[name]))
                    changed.add(name)
            if changed:
                raised.add("entityUpdated")
        if self.watched is not None:
            changed &= self.watched
            deleted &= self.watched
            if not changed:
                raised -= {"attributeCreated", "attributeUpdated", "attributeDeleted"}
                raised.discard("entityUpdated")
        hit = raised & self.triggers
        if not hit:
            return None
        return Fired(frozenset(hit), frozenset(changed), frozenset(deleted))

    def payload(self, old: Doc | None, new: Doc | None, fired: Fired, at: str) -> Doc:
        """Return the Notification for a change (notifiedAt is set again when sent)."""
        if new is None:
            assert old is not None
            types = old.get("type", [])
            compact = [self.ctx.compact_iri(t) for t in types]
            data: Doc = {
                "id": old["id"],
                "type": compact[0] if len(compact) == 1 else compact,
                "deletedAt": at,
            }
        else:
            doc = new
            note = self.doc["notification"]
            if (old is not None and note.get("showChanges")) or fired.deleted_attrs:
                doc = _annotated(old, new, fired, at, bool(note.get("showChanges")))
            data = render_entity(doc, self.ctx, self.opts)
        return self._notification([data], at)

    def periodic_payload(self, docs: list[Doc], at: str) -> Doc:
        """Return the Notification of the current state of stored entities (timeInterval)."""
        return self._notification([render_entity(d, self.ctx, self.opts) for d in docs], at)

    def _notification(self, data: list[Doc], at: str) -> Doc:
        body: Doc = {
            "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
            "type": "Notification",
            "subscriptionId": self.id,
            "notifiedAt": at,
            "data": data,
        }
        if self.doc["notification"]["endpoint"].get("accept") == "application/ld+json":
            body = {"@context": self.context_source(), **body}
        return body

    def context_source(self) -> Any:
        """Return the @context notifications name (jsonldContext, else the creator's)."""
        return self.doc.get("jsonldContext", self.doc.get("context"))


def _instance_trigger(before: list[Instance], after: list[Instance]) -> str:
    old = _instances_by_ds(before)
    new = _instances_by_ds(after)
    if set(new) - set(old):
        return "attributeCreated"
    if set(old) - set(new):
        return "attributeDeleted"
    return "attributeUpdated"


def _annotated(old: Doc | None, new: Doc, fired: Fired, at: str, show: bool) -> Doc:
    """Return new with previous values (showChanges) and deleted attributes marked."""
    attrs: dict[str, list[Instance]] = dict(new.get("attrs", {}))
    before: dict[str, list[Instance]] = old.get("attrs", {}) if old is not None else {}
    if show:
        for name in fired.attrs - fired.deleted_attrs:
            if name not in before or name not in attrs:
                continue
            prev = _instances_by_ds(before[name])
            out: list[Instance] = []
            for inst in attrs[name]:
                p = prev.get(inst.get("datasetId"))
                member = VALUE_MEMBER.get(inst.get("type", "Property"), "value")
                if p is not None and _sans_system(p) != _sans_system(inst) and member in p:
                    inst = {**inst, "previous" + member[0].upper() + member[1:]: p[member]}
                out.append(inst)
            attrs[name] = out
    for name in fired.deleted_attrs:
        attrs[name] = [
            {
                "type": inst.get("type", "Property"),
                VALUE_MEMBER.get(inst.get("type", "Property"), "value"): NULL,
                "deletedAt": at,
                **({"datasetId": inst["datasetId"]} if "datasetId" in inst else {}),
            }
            for inst in before.get(name, [])
        ]
    return {**new, "attrs": attrs}
