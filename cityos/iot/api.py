"""HTTP routes of the IoT Agent north-bound provisioning API and the HTTP south-bound ingestion.

Measures become NGSI-LD upserts with ``options=update`` semantics through the broker's own
entity service, every update of one message in one ``store.apply``; a message that fails to
parse or map changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cityos.broker import clock
from cityos.broker.api.common import Broker, read_body
from cityos.broker.entities import EntityService, UpdateResult
from cityos.broker.errors import NgsiError
from cityos.http import media
from cityos.http.routing import Handler
from cityos.iot import payloads
from cityos.iot.provisioning import (
    Device,
    Group,
    IotError,
    bad_request,
    entity_id_for,
    entity_type_for,
    mapping_for,
    parse_device,
    parse_group,
    service_of,
    service_path_of,
)
from cityos.storage.base import Mutation
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_iot import IotStore

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


def _now() -> datetime:
    return datetime.fromisoformat(clock.now())


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the IoT Agent provisioning and HTTP ingestion routes."""
    assert isinstance(broker.store, SqliteStorage), "IoT provisioning needs the SQLite engine"
    iot = IotStore(broker.store)

    async def start() -> None:
        await iot.setup()

    broker.on_start.append(start)

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
        return Response(b"", 204)

    async def delete_group(request: Request) -> Response:
        tenant, _ = envelope(request)
        resource, apikey = group_key(request)
        if not await iot.delete_group(tenant, resource, apikey):
            raise _group_not_found(resource, apikey)
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
        return _json(shown(tenant, row[0], row[1]))

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
        return Response(b"", 204)

    async def delete_device(request: Request) -> Response:
        tenant, _ = envelope(request)
        device_id = request.path_params["device_id"]
        if not await iot.delete_device(tenant, device_id):
            raise _device_not_found(device_id)
        return Response(b"", 204)

    # -- south-bound --------------------------------------------------------------------------

    async def find_group(apikey: str, resource: str) -> tuple[str, str, Group]:
        rows = await iot.groups_by_apikey(apikey)
        if not rows:
            raise IotError("DEVICE_GROUP_NOT_FOUND", f"no group has apikey {apikey!r}", 404)
        # A group provisioned for this transport's resource first, else the apikey alone.
        exact = [r for r in rows if r[2] == resource]
        tenant, path, _, doc = (exact or rows)[0]
        return tenant, path, parse_group(doc)

    async def find_device(tenant: str, path: str, group: Group, device_id: str) -> Device:
        row = await iot.get_device(tenant, device_id)
        if row is not None:
            return parse_device(row[1])
        if not group.autoprovision:
            raise _device_not_found(device_id)
        doc: dict[str, Any] = {"device_id": device_id, "apikey": group.apikey}
        if group.entity_type:
            doc["entity_type"] = group.entity_type
        device = parse_device(doc)
        doc["entity_name"] = entity_id_for(device, group)
        # Another request may have provisioned it meanwhile; then that device stands.
        await iot.insert_devices(tenant, path, [(device_id, doc)])
        row = await iot.get_device(tenant, device_id)
        return parse_device(row[1] if row else doc)

    async def ingest(
        request: Request, resource: str, parse: Callable[[], Awaitable[list[payloads.Measures]]]
    ) -> Response:
        qp = request.query_params
        apikey, device_id = qp.get("k"), qp.get("i")
        if not apikey or not device_id:
            raise bad_request("the k (apikey) and i (device id) query parameters are required")
        stamp = qp.get("t")
        tenant, path, group = await find_group(apikey, resource)
        device = await find_device(tenant, path, group, device_id)
        try:
            messages = await parse()
            if stamp is not None:
                forced = _query_timestamp(stamp)
                # A timestamp inside the payload is the device's own and stays.
                messages = [payloads.Measures(m.values, m.timestamp or forced) for m in messages]
            mapping = mapping_for(device, group)
            updates = payloads.to_updates(messages, mapping, now=_now())
        except payloads.PayloadError as exc:
            log.warning("measure from %s/%s refused: %s", apikey, device_id, exc)
            raise bad_request(str(exc)) from None
        entity_id = entity_id_for(device, group)
        entity_type = entity_type_for(device, group)
        svc = EntityService(broker.store, tenant, broker.loader.default(), clock.now())
        try:
            mutations = [
                Mutation(
                    entity_id,
                    svc.append_fn(
                        entity_id,
                        {"type": entity_type, **update},
                        overwrite=True,
                        only_existing=False,
                        result=UpdateResult(),
                        create=True,
                    ),
                )
                for update in updates
                if update
            ]
        except NgsiError as exc:
            log.warning("measure from %s/%s refused: %s", apikey, device_id, exc.detail)
            raise IotError("UNPROCESSABLE_ENTITY", exc.detail, 422) from None
        outcomes = await broker.store.apply(tenant, mutations) if mutations else []
        failed = [o.error for o in outcomes if o.error is not None]
        if failed:
            detail = failed[0].detail if isinstance(failed[0], NgsiError) else str(failed[0])
            log.warning("measure from %s/%s refused: %s", apikey, device_id, detail)
            raise IotError("UNPROCESSABLE_ENTITY", detail, 422)
        return Response(b"", 200)

    async def ingest_json(request: Request) -> Response:
        async def parse() -> list[payloads.Measures]:
            return payloads.parse_json(await _body(request))

        return await ingest(request, "/iot/json", parse)

    async def ingest_ul(request: Request) -> Response:
        async def parse() -> list[payloads.Measures]:
            if request.method == "GET":
                data = request.query_params.get("d")
                if data is None:
                    raise payloads.PayloadError("the d query parameter carries the measures")
                return payloads.parse_ul(data)
            return payloads.parse_ul(await _body(request))

        return await ingest(request, "/iot/d", parse)

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
        ("POST", "/iot/d", ingest_ul),
        ("GET", "/iot/d", ingest_ul),
    ]
    return [(method, path, _iot_errors(handler)) for method, path, handler in table]


async def _body(request: Request) -> bytes:
    try:
        return await read_body(request, payloads.MAX_BODY_BYTES)
    except NgsiError as exc:
        raise payloads.PayloadError(exc.detail) from None


def _group_not_found(resource: str, apikey: str) -> IotError:
    return IotError(
        "DEVICE_GROUP_NOT_FOUND",
        f"no group with resource {resource!r} and apikey {apikey!r}",
        404,
    )


def _device_not_found(device_id: str) -> IotError:
    return IotError("DEVICE_NOT_FOUND", f"no device with id {device_id!r}", 404)


def _query_timestamp(stamp: str) -> datetime | None:
    """Parse the t= parameter with exactly the payload parser's timestamp rules."""
    wrapped = payloads.parse_json(orjson.dumps({payloads.TIMESTAMP_KEY: stamp, "t": 0}))
    return wrapped[0].timestamp
