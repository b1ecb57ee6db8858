"""Request and response shapes of the HL7 interface admin API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SenderIn(BaseModel):
    """A member's sending system: MSH-4 (and MSH-3 when only one application of it may send)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    facility: str = Field(min_length=1, max_length=60)
    application: str = Field(default="", max_length=60)
    organisation_id: int
    interface_user_id: int | None = None
    note: str = Field(default="", max_length=200)


class SenderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    facility: str
    application: str
    organisation_id: int
    interface_user_id: int | None
    is_active: bool
    note: str
    created_at: datetime


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    sender_id: int
    facility: str = ""
    control_id: str
    message_type: str
    charset: str
    peer: str
    ack_code: str
    detail: dict[str, Any]
    received_at: datetime


class DeadLetterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    received_at: datetime
    peer: str
    sender_facility: str
    control_id: str
    message_type: str
    charset: str
    reason_code: str
    reason: str
    ack_code: str
    state: str
    handled_at: datetime | None
    handled_by_user_id: int | None
    handled_note: str
    replay_message_id: int | None


class DeadLetterDetail(DeadLetterOut):
    text: str = ""  # the payload decoded in its charset, undecodable bytes as \xNN


class DiscardIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    note: str = Field(min_length=1, max_length=1000)
