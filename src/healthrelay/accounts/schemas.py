from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.accounts.models import Role


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    display_name: str
    role: Role
    organisation_id: int | None
    practitioner_id: int | None
    patient_id: int | None
    locale: str


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=3, max_length=60)
    password: str = Field(min_length=8, max_length=200)
    display_name: str = Field(min_length=1, max_length=100)
    role: Role
    organisation_id: int | None = None
    practitioner_id: int | None = None
    patient_id: int | None = None
