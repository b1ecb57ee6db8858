"""Request and response shapes for searching and verifying the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Outcome = Literal["ok", "denied", "failed"]


class AuditQuery(BaseModel):
    """One set of filters shared by the API, the page and the exports."""

    model_config = ConfigDict(extra="forbid")

    user_id: int | None = None
    username: str | None = Field(default=None, max_length=60)
    patient_id: int | None = None
    action: str | None = Field(default=None, max_length=60)  # a prefix: "patient." finds every patient action
    outcome: Outcome | None = None
    since: datetime | None = None  # inclusive, UTC
    until: datetime | None = None  # exclusive, UTC
    organisation_id: int | None = None

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A time without a zone is read as UTC, the zone the trail is stored in.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("username", "action")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        return value or None

    def filters(self) -> dict[str, Any]:
        return self.model_dump()

    def described(self) -> dict[str, Any]:
        """The filters as JSON for the audit.read / audit.export events."""
        return {k: v for k, v in self.model_dump(mode="json").items() if v is not None}


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    occurred_at: datetime
    user_id: int | None
    username: str
    role: str
    organisation_id: int | None
    patient_id: int | None
    action: str
    outcome: str
    purpose: str
    resource: str
    detail: dict[str, Any]
    client_address: str
    row_hash: str


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    # Pass as before_id for the next (older) page; null on the last page.
    next_before_id: int | None


class ChainBreakOut(BaseModel):
    event_id: int
    problem: str


class VerifyOut(BaseModel):
    checked: int
    breaks: list[ChainBreakOut]
