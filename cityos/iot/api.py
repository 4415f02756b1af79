"""HTTP routes of the IoT Agent north-bound provisioning API and the HTTP south-bound ingestion.

Measures become NGSI-LD upserts with ``options=update`` semantics through the broker's own
entity service, every update of one message in one ``store.apply``; a message that fails to
parse or map changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cityos import __version__
from cityos.broker.api.common import Broker, read_body
from cityos.broker.errors import NgsiError
from cityos.bus import CacheDrop
from cityos.http import media
from cityos.http.routing import Handler
from cityos.iot import payloads
from cityos.iot.health import HealthMonitor, iso
from cityos.iot.ingest import Ingestor, Proto
from cityos.iot.mqtt import MqttIngest
from cityos.iot.provisioning import (
    IotError,
    bad_request,
    mapping_for,
    parse_device,
    parse_group,
    service_of,
    service_path_of,
)
from cityos.storage import engines

log = logging.getLogger("cityos.iot")

MAX_PROVISIONING_BODY = 1024 * 1024


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type=media.JSON)


def _iot_errors(handler: Handler) -> Handler:
    """Answer errors in the IoT Agent's shape rather than as NGSI-LD ProblemDetails."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except IotError as exc:
            return _json(exc.body(), exc.status)
        except NgsiError as exc:
            name = "BAD_REQUEST" if exc.status < 500 else "INTERNAL_ERROR"
            return _json({"name": name, "message": exc.detail}, exc.status)

    return wrapped


#: the name of the provisioning cache on the bus
IOT_CACHE: Final = "iot.provisioning"


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the IoT Agent provisioning and HTTP ingestion routes."""
    iot = engines.iot(broker.store)
    ingestor = Ingestor(broker, iot)

    monitor = HealthMonitor(
        broker, iot, ingestor, every=broker.settings.device_check, leader=broker.cluster.is_leader
    )

    async def start() -> None:
        await iot.setup()
        await monitor.start()

    broker.on_start.append(start)
    broker.on_stop.append(monitor.stop)

    async def provisioned() -> None:
        """Forget the cached groups and devices here and in every other worker."""
        ingestor.forget()
        await broker.cluster.publish(CacheDrop(IOT_CACHE))

    def dropped(event: CacheDrop) -> None:
        if event.name == IOT_CACHE:
            ingestor.forget()

    broker.cluster.on(CacheDrop, dropped)
    subscriber: MqttIngest | None = None
    if broker.settings.mqtt is not None:
        subscriber = MqttIngest(ingestor, broker.settings)
        broker.on_start.append(subscriber.start)
        broker.on_stop.append(subscriber.stop)

    def envelope(request: Request) -> tuple[str, str]:
        headers = request.headers
        return (
            service_of(headers.get("fiware-service")),
            service_path_of(headers.get("fiware-servicepath")),
        )

    async def body_list(request: Request, key: str) -> list[Any]:
        raw = await read_body(request, MAX_PROVISIONING_BODY)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None
        if key == "groups" and isinstance(doc, dict) and "groups" not in doc:
            key = "services"  # the deprecated /iot/services body, still sent by tutorials
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list) or not doc[key]:
            raise bad_request(f"the body must be an object with a non-empty {key!r} array")
        items: list[Any] = doc[key]
        return items

    async def body_object(request: Request) -> dict[str, Any]:
        raw = await read_body(request, MAX_PROVISIONING_BODY)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise bad_request("the body must be a JSON object")
        return doc

    def shown(tenant: str, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "service": tenant, "subservice": path}

    # -- groups -------------------------------------------------------------------------------

    async def create_groups(request: Request) -> Response:
        tenant, path = envelope(request)
        groups = [parse_group(g) for g in await body_list(request, "groups")]
        pairs = [(g.resource, g.apikey) for g in groups]
        if len(set(pairs)) < len(pairs):
            raise IotError("DUPLICATE_GROUP", "the body repeats a (resource, apikey) pair", 409)
        taken = await iot.insert_groups(
            tenant, path, [(g.resource, g.apikey, g.doc) for g in groups]
        )
        if taken is not None:
            raise IotError(
                "DUPLICATE_GROUP",
                f"a group with resource {taken[0]!r} and apikey {taken[1]!r} already exists",
                409,
            )
        await provisioned()
        return Response(b"", 201)

    async def list_groups(request: Request) -> Response:
        tenant, _ = envelope(request)
        rows = await iot.list_groups(tenant)
        return _json({"count": len(rows), "groups": [shown(tenant, p, d) for p, d in rows]})

    def group_key(request: Request) -> tuple[str, str]:
        resource = request.query_params.get("resource")
        apikey = request.query_params.get("apikey")
        if not resource or not apikey:
            raise bad_request("the resource and apikey query parameters are required")
        return resource, apikey

    async def update_group(request: Request) -> Response:
        tenant, _ = envelope(request)
        resource, apikey = group_key(request)
        changes = await body_object(request)
        for key, value in (("resource", resource), ("apikey", apikey)):
            if changes.get(key, value) != value:
                raise bad_request(f"{key} cannot be changed; delete and recreate the group")
        old = next(
            (
                d
                for _, d in await iot.list_groups(tenant)
                if d.get("apikey") == apikey and d.get("resource") == resource
            ),
            None,
        )
        if old is None:
            raise _group_not_found(resource, apikey)
        group = parse_group({**old, **changes})
        if not await iot.update_group(tenant, resource, apikey, group.doc):
            raise _group_not_found(resource, apikey)
        await provisioned()
        return Response(b"", 204)

    async def delete_group(request: Request) -> Response:
        tenant, _ = envelope(request)
        resource, apikey = group_key(request)
        if not await iot.delete_group(tenant, resource, apikey):
            raise _group_not_found(resource, apikey)
        await provisioned()
        return Response(b"", 204)

    # -- devices ------------------------------------------------------------------------------

    async def create_devices(request: Request) -> Response:
        tenant, path = envelope(request)
        devices = [parse_device(d) for d in await body_list(request, "devices")]
        ids = [d.device_id for d in devices]
        if len(set(ids)) < len(ids):
            raise IotError("DUPLICATE_DEVICE_ID", "the body repeats a device_id", 409)
        for device in devices:
            mapping_for(device, None)  # refuses a device whose own mappings clash
        taken = await iot.insert_devices(tenant, path, [(d.device_id, d.doc) for d in devices])
        if taken is not None:
            raise IotError("DUPLICATE_DEVICE_ID", f"a device with id {taken!r} already exists", 409)
        await provisioned()
        return Response(b"", 201)

    async def list_devices(request: Request) -> Response:
        tenant, _ = envelope(request)
        rows = await iot.list_devices(tenant)
        return _json({"count": len(rows), "devices": [shown(tenant, p, d) for p, d in rows]})

    async def get_device(request: Request) -> Response:
        tenant, _ = envelope(request)
        device_id = request.path_params["device_id"]
        row = await iot.get_device(tenant, device_id)
        if row is None:
            raise _device_not_found(device_id)
        await monitor.flush()
        last_seen, silent = await iot.status(tenant, device_id)
        health = {"last_seen": None if last_seen is None else iso(last_seen), "silent": silent}
        return _json({**shown(tenant, row[0], row[1]), **health})

    async def update_device(request: Request) -> Response:
        tenant, _ = envelope(request)
        device_id = request.path_params["device_id"]
        row = await iot.get_device(tenant, device_id)
        if row is None:
            raise _device_not_found(device_id)
        changes = await body_object(request)
        if changes.get("device_id", device_id) != device_id:
            raise bad_request("device_id cannot be changed; delete and recreate the device")
        device = parse_device({**row[1], **changes})
        mapping_for(device, None)
        if not await iot.update_device(tenant, device_id, device.doc):
            raise _device_not_found(device_id)
        await provisioned()
        return Response(b"", 204)

    async def delete_device(request: Request) -> Response:
        tenant, _ = envelope(request)
        device_id = request.path_params["device_id"]
        if not await iot.delete_device(tenant, device_id):
            raise _device_not_found(device_id)
        await provisioned()
        return Response(b"", 204)

    # -- south-bound --------------------------------------------------------------------------

    async def ingest(
        request: Request, proto: Proto, resource: str, body: bytes, attr: str | None = None
    ) -> Response:
        qp = request.query_params
        apikey, device_id = qp.get("k"), qp.get("i")
        if not apikey or not device_id:
            raise bad_request("the k (apikey) and i (device id) query parameters are required")
        await ingestor.ingest(
            proto, apikey, device_id, body, resource=resource, attr=attr, stamp=qp.get("t")
        )
        return Response(b"", 200)

    async def ingest_json_attr(request: Request) -> Response:
        attr = request.path_params["attr"]
        return await ingest(request, "json", "/iot/json", await _body(request), attr)

    async def ingest_json(request: Request) -> Response:
        return await ingest(request, "json", "/iot/json", await _body(request))

    async def ingest_ul(request: Request) -> Response:
        if request.method == "GET":
            data = request.query_params.get("d")
            if data is None:
                raise bad_request("the d query parameter carries the measures")
            return await ingest(request, "ul", "/iot/d", data.encode())
        return await ingest(request, "ul", "/iot/d", await _body(request))

    async def about(_: Request) -> Response:
        return _json(
            {
                "libVersion": __version__,
                "version": __version__,
                "baseRoot": "/",
                "mqtt": None
                if subscriber is None
                else {
                    "broker": f"{subscriber.host}:{subscriber.port}",
                    "group": subscriber.group,
                    "connected": subscriber.connected.is_set(),
                },
                "measures": dict(sorted(ingestor.counts.items())),
            }
        )

    table: list[tuple[str, str, Handler]] = []
    for base in ("/iot/groups", "/iot/services"):
        table += [
            ("POST", base, create_groups),
            ("GET", base, list_groups),
            ("PUT", base, update_group),
            ("DELETE", base, delete_group),
        ]
    table += [
        ("POST", "/iot/devices", create_devices),
        ("GET", "/iot/devices", list_devices),
        ("GET", "/iot/devices/{device_id}", get_device),
        ("PUT", "/iot/devices/{device_id}", update_device),
        ("DELETE", "/iot/devices/{device_id}", delete_device),
        ("POST", "/iot/json", ingest_json),
        ("POST", "/iot/json/attrs/{attr}", ingest_json_attr),
        ("POST", "/iot/d", ingest_ul),
        ("GET", "/iot/d", ingest_ul),
        ("GET", "/iot/about", about),
    ]
    return [(method, path, _iot_errors(handler)) for method, path, handler in table]


async def _body(request: Request) -> bytes:
    try:
        return await read_body(request, payloads.MAX_BODY_BYTES)
    except NgsiError as exc:
        raise IotError(
            "BAD_REQUEST" if exc.status != 413 else "PAYLOAD_TOO_LARGE", exc.detail, exc.status
        ) from None


def _group_not_found(resource: str, apikey: str) -> IotError:
    return IotError(
        "DEVICE_GROUP_NOT_FOUND",
        f"no group with resource {resource!r} and apikey {apikey!r}",
        404,
    )


def _device_not_found(device_id: str) -> IotError:
    return IotError("DEVICE_NOT_FOUND", f"no device with id {device_id!r}", 404)
