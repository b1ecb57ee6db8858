"""Export files: bounded, newest first, masked, and never a spreadsheet formula."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

from openpyxl import load_workbook

from healthrelay.audit import export
from healthrelay.audit.schemas import AuditQuery
from tests.audit.helpers import event_at


def test_exports_stop_at_the_row_limit_keeping_the_newest(db) -> None:
    ids = [event_at(db, datetime(2025, 1, 1, i, tzinfo=UTC), patient_id=i).id for i in range(7)]
    db.commit()
    path, count = export.write_csv(db, AuditQuery(), max_rows=3)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    finally:
        path.unlink()
    assert count == 3 and [int(r["id"]) for r in rows] == ids[:-4:-1]


def test_excel_cells_are_text_not_formulas_and_control_characters_are_dropped(db) -> None:
    event_at(db, datetime(2025, 1, 1, tzinfo=UTC), username="=1+1", resource="break_glass:\x073")
    db.commit()
    path, count = export.write_xlsx(db, AuditQuery())
    try:
        rows = list(load_workbook(path, read_only=True).active.iter_rows(values_only=True))
    finally:
        path.unlink()
    assert count == 1
    assert rows[1][2] == "'=1+1"
    assert rows[1][10] == "break_glass:3"


def test_mask_ids_finds_resident_ids_inside_text_and_structures() -> None:
    masked = export.mask_ids({"q": "查 11010519491231002x 的档案", "list": ["110105194912310021"], "n": 110105})
    assert masked == {"q": "查 110***********002x 的档案", "list": ["110***********0021"], "n": 110105}
    # Longer digit runs (phone numbers glued to text, record numbers) are left alone.
    assert export.mask_ids("1101051949123100211") == "1101051949123100211"
