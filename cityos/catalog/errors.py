"""CKAN's error types: the `error.__type` names and HTTP statuses clients map to exceptions."""

from __future__ import annotations

from typing import Any


class CkanError(Exception):
    """An action failed; rendered as CKAN's envelope with success false."""

    type_name = "Internal Server Error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def error(self) -> dict[str, Any]:
        """Return the envelope's `error` object."""
        return {"__type": self.type_name, "message": self.message}


class NotFound(CkanError):
    type_name = "Not Found Error"
    status = 404


class NotAuthorized(CkanError):
    type_name = "Authorization Error"
    status = 403


class ValidationError(CkanError):
    """Field errors: CKAN sends {field: [messages], "__type": ...} without a message key."""

    type_name = "Validation Error"
    status = 409

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors

    def error(self) -> dict[str, Any]:
        return {**self.errors, "__type": self.type_name}


class SearchQueryError(CkanError):
    type_name = "Search Query Error"
    status = 400


class SearchError(CkanError):
    type_name = "Search Error"
    status = 409


class IntegrityError(CkanError):
    type_name = "Integrity Error"
    status = 400


class UnknownAction(CkanError):
    """CKAN answers an unknown action name with 400 and a bare JSON string, not an envelope."""

    status = 400

    def __init__(self, name: str) -> None:
        super().__init__(f"Bad request - Action name not known: {name}")
