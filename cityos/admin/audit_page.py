"""The audit page: the log's head, whether its chain verifies, and its latest records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from cityos.admin.web import Admin, Staff, html, json
from cityos.auth.audit import Head, Record, Verdict
from cityos.http.routing import Handler

TITLE: Final = "監査ログ / Audit log"
LATEST: Final = 50


@dataclass(frozen=True, slots=True)
class View:
    """What the audit page shows."""

    head: Head
    verdict: Verdict
    records: list[Record]


def audit_routes(admin: Admin) -> list[tuple[str, str, Handler]]:
    """Return the routes of the audit page."""

    async def view(staff: Staff) -> View:
        head = await admin.audit.head()
        verdict = await admin.audit.verify()
        latest = await admin.audit.records(after_seq=max(0, head.seq - LATEST), limit=LATEST)
        # a tenant's admin sees the records of their tenants
        shown: list[Record] = [r for r in reversed(latest) if staff.principal.in_tenant(r.tenant)]
        return View(head, verdict, shown)

    async def page(request: Request) -> Response:
        staff = await admin.allowed(request, "read", "audit")
        if isinstance(staff, Response):
            return staff
        return html("audit.html", staff, title=TITLE, view=await view(staff))

    async def page_json(request: Request) -> Response:
        staff = await admin.allowed(request, "read", "audit", as_json=True)
        if isinstance(staff, Response):
            return staff
        found = await view(staff)
        verdict = found.verdict
        return json(
            {
                "head": {"seq": found.head.seq, "hash": found.head.hash},
                "verify": {"ok": verdict.ok, "kind": verdict.kind, "message": verdict.message},
                "records": [r.as_dict() for r in found.records],
            }
        )

    return [("GET", "/admin/audit", page), ("GET", "/admin/audit.json", page_json)]
