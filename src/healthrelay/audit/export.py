"""Audit exports (CSV and Excel) and the masking every shown or exported audit value passes through.

Exports stream plain rows in keyset batches into a temporary file, so 50,000 events never sit
in memory as objects, and the request session's identity map (which holds the signed-in user)
is left alone.
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from sqlalchemy import Row
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.audit.schemas import AuditQuery
from healthrelay.audit.service import search_query
from healthrelay.patients.identity import mask_resident_id

LOCAL_TZ = ZoneInfo("Asia/Shanghai")

EXPORT_MAX_ROWS = 50_000
BATCH = 2_000

COLUMNS = ("id", "occurred_at_local", "username", "user_id", "role", "organisation_id", "patient_id",
           "action", "outcome", "purpose", "resource", "client_address", "detail")

# An 18-character resident ID number standing on its own inside free text.
_RESIDENT_ID_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
# A cell starting with these is a formula to Excel and LibreOffice; a reason typed by a user must stay text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def mask_ids(value: Any) -> Any:
    """Mask resident ID numbers anywhere in a value (audit details may quote a searched ID)."""
    if isinstance(value, str):
        return _RESIDENT_ID_IN_TEXT.sub(lambda m: mask_resident_id(m.group(0)), value)
    if isinstance(value, dict):
        return {k: mask_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_ids(v) for v in value]
    return value


def detail_text(detail: dict[str, Any] | None) -> str:
    if not detail:
        return ""
    return json.dumps(mask_ids(detail), ensure_ascii=False, sort_keys=True)


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _local(value: datetime) -> str:
    return value.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S")


def iter_rows(db: Session, query: AuditQuery, *, max_rows: int = EXPORT_MAX_ROWS) -> Iterator[Row[Any]]:
    """Newest first, at most `max_rows`, fetched in keyset batches as plain rows."""
    sent = 0
    before_id: int | None = None
    while sent < max_rows:
        statement = search_query(**query.filters(), limit=min(BATCH, max_rows - sent), before_id=before_id)
        rows = db.execute(statement.with_only_columns(*AuditEvent.__table__.columns)).all()
        if not rows:
            return
        yield from rows
        sent += len(rows)
        before_id = rows[-1].id


def _values(row: Row[Any]) -> list[Any]:
    return [row.id, _local(row.occurred_at), mask_ids(row.username), row.user_id, row.role,
            row.organisation_id, row.patient_id, row.action, row.outcome, row.purpose,
            mask_ids(row.resource), row.client_address, detail_text(row.detail)]


def write_csv(db: Session, query: AuditQuery, *, max_rows: int = EXPORT_MAX_ROWS) -> tuple[Path, int]:
    """UTF-8 with a byte-order mark, so Excel on a clinic PC shows the Chinese correctly."""
    with tempfile.NamedTemporaryFile("w", suffix=".csv", encoding="utf-8-sig", newline="",
                                     delete=False) as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        count = 0
        for row in iter_rows(db, query, max_rows=max_rows):
            writer.writerow([_cell(v) for v in _values(row)])
            count += 1
    return Path(handle.name), count


def write_xlsx(db: Session, query: AuditQuery, *, max_rows: int = EXPORT_MAX_ROWS) -> tuple[Path, int]:
    """openpyxl's write-only mode keeps memory flat however many rows there are."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("audit")
    sheet.append(list(COLUMNS))
    count = 0
    for row in iter_rows(db, query, max_rows=max_rows):
        # Control characters cannot be stored in an .xlsx cell at all.
        sheet.append([ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v
                      for v in map(_cell, _values(row))])
        count += 1
    with tempfile.NamedTemporaryFile(suffix=".xlsx", delete=False) as handle:
        path = Path(handle.name)
    workbook.save(path)
    return path, count
