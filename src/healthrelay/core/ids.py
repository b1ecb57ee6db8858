"""Ids as a request may carry them: an INTEGER key, refused with a 422 naming the field when out of range.

PostgreSQL's INTEGER stops at 2**31 - 1; a larger number reaching the database is a 500, so every route and form
bounds ids here. `is_id` is for ids typed into forms and queries, where "²".isdigit() is True."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

MAX_ID = 2_147_483_647
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
IdQuery = Annotated[int, Query(ge=1, le=MAX_ID)]


def is_id(value: str) -> bool:
    value = (value or "").strip()
    return value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_ID
