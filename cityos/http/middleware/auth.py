"""Who is asking, may they, how often, and the audit record of every write (pure ASGI).

With CITYOS_AUTH=on a presented key or catalog token is looked up (an invalid one gets 401),
requests are rate-limited (per key prefix, or per client address without a key: 429 with
Retry-After), every write asks `Policy.decide` with the area `areas.area_of` gives its path,
and every request asks `Policy.reading` what it may read there: a refusal is answered here,
anything else is bound (`context.reading()`) for the endpoints that filter what they return.
With auth on and off alike, every write is appended to the audit log once answered.
One middleware does all four because each needs what the one before it found.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.auth import areas, context
from cityos.auth.audit import AuditError, Entry, Outcome
from cityos.auth.context import Found, Identity
from cityos.auth.policy import (
    EVERYTHING,
    Action,
    Area,
    Decision,
    Operation,
    Policy,
    Principal,
    Reading,
)
from cityos.auth.ratelimit import Limit, RateLimiter
from cityos.broker.errors import NgsiError
from cityos.http.media import PROBLEM
from cityos.storage.engines import Audit

log = logging.getLogger("cityos.auth")

_NGSI_KINDS: Final = {
    401: ("https://uri.etsi.org/ngsi-ld/errors/Unauthorized", "A credential is needed"),
    403: ("https://uri.etsi.org/ngsi-ld/errors/Forbidden", "The credential lacks the right"),
    404: (
        "https://uri.etsi.org/ngsi-ld/errors/NonexistentTenant",
        "The addressed tenant does not exist",
    ),
    429: ("https://uri.etsi.org/ngsi-ld/errors/TooManyRequests", "Too many requests"),
}
_IOT_NAMES: Final = {
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "TENANT_NOT_FOUND",
    429: "TOO_MANY_REQUESTS",
}
_CKAN_TYPES: Final = {
    401: "Authorization Error",
    403: "Authorization Error",
    404: "Not Found Error",
    429: "Too Many Requests",
}


def error_body(path: str, status: int, message: str) -> tuple[str, bytes]:
    """Return the content type and body of an access error in the shape path's clients read."""
    shape = areas.shape_of(path)
    if shape == "ckan":
        doc: object = {
            "help": "/api/3/action/help_show",
            "success": False,
            "error": {"__type": _CKAN_TYPES[status], "message": message},
        }
        return "application/json", orjson.dumps(doc)
    if shape == "iot":
        return "application/json", orjson.dumps({"name": _IOT_NAMES[status], "message": message})
    type_, title = _NGSI_KINDS[status]
    problem = {"type": type_, "title": title, "status": status, "detail": message}
    return PROBLEM, orjson.dumps(problem)


async def _refuse(
    send: Send, path: str, status: int, message: str, extra: list[tuple[bytes, bytes]]
) -> None:
    ctype, body = error_body(path, status, message)
    headers = [
        (b"content-type", ctype.encode()),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    if status == 401 and not any(name == b"www-authenticate" for name, _ in extra):
        headers.append((b"www-authenticate", b'Bearer realm="cityos"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _invalid(found: Found) -> tuple[int, str, list[tuple[bytes, bytes]]]:
    """Return the 401 of a presented credential that is not valid, saying why if known."""
    if not found.reason:
        return 401, "the API key or token is not valid (unknown, revoked or expired)", []
    # RFC 6750: an invalid bearer token says so in its challenge
    quoted = found.reason.replace("\\", "").replace('"', "'")
    challenge = f'Bearer realm="cityos", error="invalid_token", error_description="{quoted}"'
    return (
        401,
        f"the token is not valid: {found.reason}",
        [(b"www-authenticate", challenge.encode("utf-8", "replace"))],
    )


def outcome_of(status: int, denied: bool) -> Outcome:
    """Return the audit outcome of an answered request."""
    if denied or status == 429:
        return "denied"
    return "ok" if 200 <= status < 300 else "error"


class AuthMiddleware:
    """Identify, rate-limit and authorize requests (when enforcing); audit every write."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        identity: Identity,
        audit: Audit,
        policy: Policy,
        enforce: bool,
        anonymous_limit: Limit,
        key_limit: Limit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.identity = identity
        self.audit = audit
        self.policy = policy
        self.enforce = enforce
        self.by_address = RateLimiter(anonymous_limit, clock=clock)
        self.by_key = RateLimiter(key_limit, clock=clock)
        self._pending: set[asyncio.Future[object]] = set()
        #: (id of a principal, action, area, tenant) -> (the principal, its access or refusal)
        self._memo: dict[
            tuple[int, str, str | None, str], tuple[Principal, context.Access | Decision]
        ] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        action = areas.action_of(method, path)
        if not self.enforce and action == "read":
            # nothing to check and nothing to record: the hot path of a public deployment
            await self.app(scope, receive, send)
            return
        area = areas.area_of(path)
        if area is None and (
            path.startswith("/public/") or path == "/-/health" or not self.enforce
        ):
            # not governed by the policy (health, snapshots, IoT south-bound measures, which
            # their group's apikey authenticates): neither checked nor audited
            await self.app(scope, receive, send)
            return
        authorization = api_key = tenant_header = service = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                api_key = value.decode("latin-1")
            elif name == b"ngsild-tenant":
                tenant_header = value.decode("latin-1")
            elif name == b"fiware-service":
                service = value.decode("latin-1")
        # the catalog and the portal are the installation's: their tenant is the default one
        tenant = "" if area in areas.SINGLE_TENANT else (tenant_header or service or "")
        found = await self._identify(authorization, api_key)
        principal = found.principal
        refusal: tuple[int, str, list[tuple[bytes, bytes]]] | None = None
        access: context.Access
        if self.enforce:
            refusal = self._limit(scope, found)
            if refusal is None and not found.valid:
                refusal = _invalid(found)
            if refusal is None:
                granted = self._granted(principal, action, area, tenant)
                if isinstance(granted, Decision):
                    refusal = (granted.status, granted.reason, [])
                else:
                    access = granted
        else:
            access = context.Access(principal, EVERYTHING)
        audited = action == "write" and area is not None
        if refusal is not None:
            status, message, extra = refusal
            await _refuse(send, path, status, message, extra)
            if audited:
                self._audit(principal, area, method, path, tenant, status, denied=True)
            return
        if found.key_id is not None:
            await self.identity.touch(found.key_id)
        token = context.bind_access(access)
        if not audited:
            try:
                await self.app(scope, receive, send)
            finally:
                context.reset(token)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except NgsiError as exc:
            status = exc.status  # ErrorMiddleware, outside, answers it
            raise
        finally:
            context.reset(token)
            self._audit(principal, area, method, path, tenant, status, denied=False)

    def _audit(
        self,
        principal: Principal,
        area: str | None,
        method: str,
        path: str,
        tenant: str,
        status: int,
        *,
        denied: bool,
    ) -> None:
        """Append the record without holding up the connection's next request.

        The append goes to the storage writer at once and shares its group commits; the
        tasks are awaited at shutdown (`drain`), so a graceful stop loses none.
        """
        try:
            entry = Entry(
                actor=principal.id or "anonymous",
                action=f"{area or 'http'}.{method.lower()}",
                target=path[:1000],
                tenant=tenant[:200],
                outcome=outcome_of(status, denied),
                detail={"status": status},
            )
        except AuditError:
            # a request the log cannot hold (an odd method name) is logged here instead
            log.warning("not audited: %s %s (%s)", method, path, status)
            return
        task: asyncio.Future[object] = asyncio.ensure_future(self.audit.append(entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _granted(
        self, principal: Principal, action: Action, area: Area | None, tenant: str
    ) -> context.Access | Decision:
        """Return the access a request runs with, or the decision refusing it (memoized).

        A key's principal is one object while its key is cached, so the policy is asked once
        per key, area and tenant rather than once per request.
        """
        memo = (id(principal), action, area, tenant)
        hit = self._memo.get(memo)
        if hit is not None and hit[0] is principal:
            return hit[1]
        if area is None:
            # a path outside every area (/catalog.ttl, south-bound IoT) shows public data
            answer: context.Access | Decision = context.Access(
                principal, self._public(principal), self.policy
            )
        else:
            granted = self._grant(principal, action, area, tenant)
            answer = (
                granted
                if isinstance(granted, Decision)
                else context.Access(principal, granted, self.policy)
            )
        if len(self._memo) > 10_000:
            self._memo.clear()
        self._memo[memo] = (principal, answer)
        return answer

    def _grant(
        self, principal: Principal, action: Action, area: Area, tenant: str
    ) -> Reading | Decision:
        """Return what the request may read once it runs, or the decision refusing it."""
        if action == "write":
            decision = self.policy.decide(principal, Operation("write", area, tenant))
            if not decision.allowed:
                return decision
        reading = self.policy.reading(principal, area, tenant)
        if isinstance(reading, Reading):
            return reading
        if action == "write":
            # may write here but not read the area (an app with iot:write only): what its
            # write answers may show is the public part
            return self._public(principal)
        return reading

    def _public(self, principal: Principal) -> Reading:
        return Reading(
            everything=False,
            public_types=self.policy.public_types,
            anonymous=principal.kind == "anonymous",
        )

    async def announce(self, **settings: object) -> None:
        """Append `policy.change` when the policy in force differs from the last one recorded.

        The policy is configuration: a restart with other settings is a policy change, and
        the audit log is where anyone checking the city's access rules finds it.
        """
        detail = {"auth": "on" if self.enforce else "off", **self.policy.describe(), **settings}
        last = await self.audit.last("policy.change")
        if last is not None and dict(last.detail) == detail:
            return
        await self.audit.append(
            Entry(actor="system", action="policy.change", target="access policy", detail=detail)
        )
        log.info("access policy recorded in the audit log: %s", detail)

    async def drain(self) -> None:
        """Wait for the audit records still being written."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _identify(self, authorization: str | None, api_key: str | None) -> Found:
        credential = context.presented(authorization, api_key)
        found = await self.identity.identify(credential)
        if not self.enforce and not found.valid:
            return Found(found.principal)  # auth off: an unknown credential changes nothing
        return found

    def _limit(
        self, scope: Scope, found: Found
    ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        principal = found.principal
        if principal.kind != "anonymous":  # a key, a user or a token: limited per identity
            verdict = self.by_key.take(principal.id)
        else:
            client = scope.get("client")
            verdict = self.by_address.take(client[0] if client else "")
        if verdict.allowed:
            return None
        retry = str(verdict.retry_after).encode()
        return (
            429,
            f"too many requests; retry after {verdict.retry_after} s",
            [(b"retry-after", retry)],
        )
