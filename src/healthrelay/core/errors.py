"""Named rule violations, mapped once to one JSON error shape and one error page."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base for every error a user can cause; `code` is stable, `message` is for people."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field_errors: list[dict[str, Any]] | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field_errors = field_errors or []
        if code:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field_errors": self.field_errors}


class InvalidInput(DomainError):
    status_code = 422
    code = "invalid_input"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class NotAuthenticated(DomainError):
    status_code = 401
    code = "not_authenticated"


class AccessDenied(DomainError):
    status_code = 403
    code = "forbidden"


class NeedToKnowDenied(AccessDenied):
    """No care relationship with this patient; the user may break the glass with a reason."""

    code = "no_care_relationship"

    def __init__(self, message: str, *, patient_id: int) -> None:
        super().__init__(message)
        self.patient_id = patient_id


class TooManyAttempts(DomainError):
    status_code = 429
    code = "too_many_attempts"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def field_error(field: str, message: str) -> dict[str, Any]:
    return {"field": field, "message": message}
