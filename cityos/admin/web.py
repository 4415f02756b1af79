"""What every admin page needs: who is signed in, the CSRF and Origin checks, and rendering.

A request to /admin/ acts as the user of its `cityos_session` cookie. With CITYOS_AUTH=off
(loopback only) it acts as a local administrator without signing in, and every page says so.
A GET of a JSON twin may also present an API key or token (`Authorization: Bearer ...`),
which the access middleware has already identified. Every POST must come from a page of this
site: its Origin, when sent, must be this Host, and its form must repeat the session's CSRF
token (a cookie alone proves nothing: a browser sends it with forms of other sites too).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import jinja2
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cityos.auth import context
from cityos.auth.audit import Entry
from cityos.auth.context import Identity
from cityos.auth.policy import ALL, Action, Area, Operation, Policy, Principal
from cityos.auth.sessions import COOKIE, Sessions, same_token
from cityos.auth.users import Accounts, User
from cityos.storage.engines import Audit

#: the principal of the admin pages with CITYOS_AUTH=off
LOCAL: Final = Principal(
    "user", id="local:admin", roles=frozenset({"admin"}), tenants=frozenset({ALL})
)
#: the double-submit cookie of the sign-in form (no session exists yet to hold a token)
LOGIN_COOKIE: Final = "cityos_login"
MAX_FORM: Final = 64 * 1024
NO_STORE: Final = {"cache-control": "no-store"}
_JST: Final = timezone(timedelta(hours=9))


@dataclass(frozen=True, slots=True)
class Staff:
    """Who a request to the admin pages acts as."""

    principal: Principal
    #: the token forms must repeat; None for a bearer credential (which posts no forms)
    csrf: str | None
    user: User | None = None
    #: True with CITYOS_AUTH=off: a local administrator who did not sign in
    local: bool = False
    #: when the session began (None without one)
    started: float | None = None

    @property
    def actor(self) -> str:
        """Return the name the audit log records this staff member by."""
        return self.principal.id or "anonymous"


class Gate:
    """Find who a request acts as and whether the policy lets them do what a page does."""

    def __init__(self, sessions: Sessions, policy: Policy, *, enforce: bool) -> None:
        self.sessions = sessions
        self.policy = policy
        self.enforce = enforce
        # with auth off there is no session: forms carry this process's token instead
        self._local_csrf = secrets.token_urlsafe(32)

    async def staff(self, request: Request, *, bearer: bool = False) -> Staff | None:
        """Return who the request acts as, or None when nobody is signed in."""
        if not self.enforce:
            return Staff(LOCAL, self._local_csrf, local=True)
        current = await self.sessions.find(request.cookies.get(COOKIE))
        if current is not None:
            user = current.user
            return Staff(
                user.principal(), current.session.csrf, user, started=current.session.created
            )
        principal = context.current()
        if bearer and principal.kind != "anonymous":
            return Staff(principal, None)
        return None

    def may(self, staff: Staff, action: Action, area: Area, tenants: Iterable[str]) -> bool:
        """Return True when staff may do action on area in every one of tenants."""
        return all(
            self.policy.decide(staff.principal, Operation(action, area, t)).allowed for t in tenants
        )

    def home(self, staff: Staff) -> str:
        """Return the tenant a page is checked in: the default one, else the first of theirs."""
        tenants = staff.principal.tenants
        if ALL in tenants or "" in tenants or not tenants:
            return ""
        return min(tenants)


def same_origin(request: Request) -> bool:
    """Return True unless the request's Origin names another site than its Host."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


async def read_form(request: Request) -> dict[str, list[str]] | None:
    """Return the fields of a url-encoded form, or None when it is too large."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def field(form: dict[str, list[str]], name: str) -> str:
    """Return the first value of a form field ('' when absent)."""
    values = form.get(name)
    return values[0] if values else ""


def csrf_ok(staff: Staff, form: dict[str, list[str]]) -> bool:
    """Return True when the form repeats the session's CSRF token."""
    return staff.csrf is not None and same_token(staff.csrf, field(form, "csrf"))


def split_list(text: str) -> list[str]:
    """Return the items of a comma- or blank-separated field ("(default)" is the '' tenant)."""
    items = [item.strip() for item in text.replace(",", " ").split()]
    return ["" if item == "(default)" else item for item in items]


def when(t: float | None, never: str = "—") -> str:
    """Return an epoch time as Japan time for people, e.g. 2026-11-25 18:30 (JST)."""
    if t is None:
        return never
    return datetime.fromtimestamp(t, _JST).strftime("%Y-%m-%d %H:%M (JST)")


def iso(t: float | None) -> str | None:
    """Return an epoch time as UTC ISO 8601 for the JSON twins."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tenants_text(tenants: Iterable[str]) -> str:
    """Return tenants as the pages show them ('' is "(default)")."""
    return ", ".join("(default)" if t == "" else t for t in tenants)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cityos.admin", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, tenants=tenants_text)
    return env


_ENV: Final = _env()
CSS: Final = (resources.files("cityos.admin") / "assets" / "admin.css").read_bytes()


def html(template: str, staff: Staff | None, status: int = 200, **values: Any) -> HTMLResponse:
    """Render a page; never cached (pages show keys, accounts and the log)."""
    body = _ENV.get_template(template).render(staff=staff, **values)
    return HTMLResponse(body, status, headers=NO_STORE)


def json(doc: object, status: int = 200) -> Response:
    """Return a JSON twin; never cached."""
    return Response(orjson.dumps(doc), status, media_type="application/json", headers=NO_STORE)


def refuse(staff: Staff | None, status: int, message: str, *, as_json: bool = False) -> Response:
    """Return the refusal page (or JSON) of a request that may not go on."""
    if as_json:
        return json({"error": message}, status)
    return html("error.html", staff, status, title="エラー / Error", message=message)


def to_login(*, as_json: bool = False) -> Response:
    """Send a visitor who is not signed in to the sign-in page (a JSON twin answers 401)."""
    if as_json:
        return json({"error": "sign in at /admin/login first"}, 401)
    return RedirectResponse("/admin/login", 303, headers=NO_STORE)


def back(path: str) -> Response:
    """Return to a page after a change (303: the browser then GETs it)."""
    return RedirectResponse(path, 303, headers=NO_STORE)


@dataclass(frozen=True, slots=True)
class Admin:
    """What the admin pages work with."""

    gate: Gate
    accounts: Accounts
    identity: Identity
    audit: Audit

    async def record(self, staff: Staff, action: str, target: str, **detail: Any) -> None:
        """Append a change made on the pages to the audit log, in staff's name."""
        await self.audit.append(Entry(staff.actor, action, target, detail=detail))

    async def allowed(
        self, request: Request, action: Action, area: Area, *, as_json: bool = False
    ) -> Staff | Response:
        """Return who asks when they may do action on area, else the answer refusing them."""
        staff = await self.gate.staff(request, bearer=as_json)
        if staff is None:
            return to_login(as_json=as_json)
        if not self.gate.may(staff, action, area, [self.gate.home(staff)]):
            message = f"{staff.actor} may not {action} {area} / この操作の権限がありません"
            return refuse(staff, 403, message, as_json=as_json)
        return staff

    async def posted(
        self, request: Request, action: Action, area: Area
    ) -> tuple[Staff, dict[str, list[str]]] | Response:
        """Return who posts and their form when it is theirs and allowed, else the refusal."""
        if not same_origin(request):
            return refuse(None, 403, CROSS_SITE)
        staff = await self.allowed(request, action, area)
        if isinstance(staff, Response):
            return staff
        form = await read_form(request)
        if form is None:
            return refuse(staff, 413, f"the form is larger than {MAX_FORM} bytes")
        if not csrf_ok(staff, form):
            return refuse(staff, 403, STALE_FORM)
        return staff, form


CROSS_SITE: Final = (
    "他のサイトからの送信は受け付けません / A form posted from another site is refused"
)
STALE_FORM: Final = (
    "フォームが古いか、このサイトのものではありません。ページを開き直してください / "
    "The form is stale or not from this site: open the page again"
)
