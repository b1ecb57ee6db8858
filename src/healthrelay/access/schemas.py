"""Request and response shapes for break-the-glass access and its review."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BreakGlassIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The minimum length is a rule of the service (one message for page and API); this only bounds size.
    reason: str = Field(max_length=2000)


class BreakGlassOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    patient_id: int
    reason: str
    granted_at: datetime
    expires_at: datetime
    reviewed_at: datetime | None
    reviewed_by_user_id: int | None
    review_outcome: str
    review_note: str


class BreakGlassListItem(BreakGlassOut):
    username: str
    user_display_name: str
    organisation_id: int | None


class BreakGlassReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["justified", "unjustified"]
    note: str = Field(default="", max_length=2000)
