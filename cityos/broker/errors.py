"""NGSI-LD errors (GS CIM 009 clause 5.5.2) raised by domain code, sent as ProblemDetails."""

from __future__ import annotations

from typing import Any

_BASE = "https://uri.etsi.org/ngsi-ld/errors/"


class NgsiError(Exception):
    """An error the API reports to the client as application/problem+json."""

    kind = "InternalError"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return _BASE + self.kind

    def problem(self) -> dict[str, Any]:
        """Return the ProblemDetails body."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        return body


class InvalidRequest(NgsiError):
    kind = "InvalidRequest"
    status = 400
    title = "The request associated to the operation is syntactically invalid"


class BadRequestData(NgsiError):
    kind = "BadRequestData"
    status = 400
    title = "The request includes input data which does not meet the requirements of the operation"


class AlreadyExists(NgsiError):
    kind = "AlreadyExists"
    status = 409
    title = "The referred element already exists"


class OperationNotSupported(NgsiError):
    kind = "OperationNotSupported"
    status = 422
    title = "The operation is not supported"


class ResourceNotFound(NgsiError):
    kind = "ResourceNotFound"
    status = 404
    title = "The referred resource has not been found"


class TooManyResults(NgsiError):
    kind = "TooManyResults"
    status = 403
    title = "The query associated to the operation is producing so many results"


class LdContextNotAvailable(NgsiError):
    kind = "LdContextNotAvailable"
    status = 503
    title = "A remote JSON-LD @context referenced in a request cannot be retrieved"


class NotAcceptable(NgsiError):
    kind = "NotAcceptable"
    status = 406
    title = "The media type requested in the Accept header is not supported"


class UnsupportedMediaType(NgsiError):
    # The standard names no problem type for 415; InvalidRequest's URI is what brokers send.
    kind = "InvalidRequest"
    status = 415
    title = "Unsupported media type"


class PayloadTooLarge(NgsiError):
    kind = "InvalidRequest"
    status = 413
    title = "Request body too large"


class MethodNotAllowed(NgsiError):
    kind = "InvalidRequest"
    status = 405
    title = "Method not allowed"


class InternalError(NgsiError):
    kind = "InternalError"
    status = 500
    title = "Internal error"


class Unauthorized(NgsiError):
    """The request needs a credential (the access policy's 401)."""

    kind = "Unauthorized"
    status = 401
    title = "A credential is needed"


class Forbidden(NgsiError):
    """The credential lacks the right (the access policy's 403)."""

    kind = "Forbidden"
    status = 403
    title = "The credential lacks the right"


class NonexistentTenant(NgsiError):
    kind = "NonexistentTenant"
    status = 404
    title = "The addressed tenant does not exist"
