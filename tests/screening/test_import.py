"""School check-up sheets: good rows kept, bad rows named (row and column) with nothing half-written, students found
by resident ID, a re-import harmless, and a 1,000-row sheet on both databases."""

from __future__ import annotations

import time

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.chronic.models import ChronicTask
from healthrelay.core.errors import Conflict, InvalidInput
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier
from healthrelay.screening import service
from healthrelay.screening.models import ScreeningAttendance, ScreeningImport, ScreeningResult
from healthrelay.screening.sheets import COLUMNS, bad_row_numbers, make_school_sheet, read_xlsx_fast, student_rows
from tests.screening.conftest import World, plan

SCHOOL_SERVICES = ["height_weight", "vision", "dental", "bp"]


def count(db: Session, model: type) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def csv_of(rows: list[list[object]], encoding: str = "utf-8-sig") -> bytes:
    return "\n".join(",".join(str(c) for c in r) for r in rows).encode(encoding)


def test_good_rows_are_kept_and_bad_rows_named_with_nothing_half_written(db: Session, world: World) -> None:
    event = plan(db, world, kind="school_checkup", services=SCHOOL_SERVICES)
    content = make_school_sheet(60, seed=3, bad_rows=6)
    record = service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="青石镇小学.xlsx",
                                         content=content)
    bad = bad_row_numbers(60, 6)
    assert (record.rows_total, record.rows_imported, record.rows_failed) == (60, 54, 6)
    assert sorted({e["row"] for e in record.errors}) == bad
    by_row = {e["row"]: e for e in record.errors}
    assert by_row[bad[0]]["field"] == "血压" and "400" in by_row[bad[0]]["message"]
    assert by_row[bad[1]]["field"] == "性别"
    assert by_row[bad[2]]["field"] == "身份证号" and "check digit" in by_row[bad[2]]["message"]
    assert by_row[bad[3]]["field"] == "视力左"
    assert by_row[bad[4]]["field"] == "姓名"
    assert by_row[bad[5]]["field"] == "血压"  # 80/120: diastolic above systolic
    # Nothing of a bad row was written: no resident, attendance or result for its student.
    rows = student_rows(60, seed=3, bad_rows=6)
    bad_ids = [rows[n - 1][COLUMNS.index("身份证号")] for n in bad]
    assert db.scalar(select(func.count()).select_from(PatientIdentifier)
                     .where(PatientIdentifier.value.in_(bad_ids))) == 0
    assert count(db, ScreeningAttendance) == 54
    assert record.residents_new == 54
    # Findings became tasks (one per student), each result pointing at it.
    abnormal = db.scalars(select(ScreeningResult).where(ScreeningResult.abnormal.is_(True))).all()
    assert abnormal and all(r.task_id is not None for r in abnormal)
    assert count(db, ChronicTask) == len({r.patient_id for r in abnormal}) == service.event_counts(
        db, event_id=event.id).people_with_findings
    # The error report downloads as a sheet with the same rows.
    book = load_workbook(__import__("io").BytesIO(service.error_sheet(record)))
    assert [r[0] for r in book.active.iter_rows(min_row=2, values_only=True)] == bad


def test_a_student_on_file_is_found_by_resident_id_and_a_reimport_adds_nothing(db: Session, world: World) -> None:
    event = plan(db, world, kind="school_checkup", services=SCHOOL_SERVICES)
    rows = student_rows(5, seed=9)
    rows[2][COLUMNS.index("身份证号")] = world.resident_id  # the third student is already in the index
    rows[2][COLUMNS.index("姓名")] = world.resident.name
    rows[2][COLUMNS.index("性别")] = "女"
    rows[2][COLUMNS.index("出生日期")] = world.resident.birth_date.isoformat()
    content = csv_of(rows)
    first = service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="s.csv", content=content)
    assert (first.rows_imported, first.residents_new, first.errors) == (5, 4, [])
    attendance = db.scalar(select(ScreeningAttendance).where(ScreeningAttendance.patient_id == world.resident.id))
    assert attendance is not None and attendance.how == "import"
    patients_before = count(db, Patient)
    again = service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="s.csv", content=content)
    assert (again.rows_imported, again.rows_skipped) == (0, 5)
    assert count(db, Patient) == patients_before and count(db, ScreeningAttendance) == 5


def test_csv_in_gb18030_and_english_headers_are_read(db: Session, world: World) -> None:
    event = plan(db, world, kind="school_checkup", services=SCHOOL_SERVICES)
    rows = student_rows(3, seed=4)
    rows[0] = ["school", "grade", "class", "name", "sex", "birth date", "resident id", "height", "weight",
               "vision left", "vision right", "caries", "bp"]
    record = service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="x.CSV",
                                         content=csv_of(rows, "gb18030"))
    assert record.rows_imported == 3
    names = set(db.scalars(select(Patient.name).join(ScreeningAttendance,
                                                     ScreeningAttendance.patient_id == Patient.id)))
    assert names == {r[3] for r in rows[1:]}


def test_a_duplicated_student_and_a_bad_file_are_refused(db: Session, world: World) -> None:
    event = plan(db, world, kind="school_checkup", services=SCHOOL_SERVICES)
    rows = student_rows(3, seed=5)
    rows.append(list(rows[1]))  # the first student again, as row 5
    record = service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="d.csv",
                                         content=csv_of(rows))
    assert record.rows_imported == 3 and record.errors[0]["row"] == 5 and "row 2" in record.errors[0]["message"]
    with pytest.raises(InvalidInput) as exc:
        service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="a.pdf", content=b"%PDF")
    assert exc.value.field_errors[0]["field"] == "file"
    with pytest.raises(InvalidInput):
        service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="a.csv",
                                    content="学校,年级\n一小,一年级\n".encode())  # no name or sex column
    clinic = plan(db, world)
    with pytest.raises(Conflict):
        service.import_school_sheet(db, by=world.doctor, event_id=clinic.id, filename="d.csv", content=csv_of(rows))


def test_a_thousand_row_sheet(db: Session, world: World) -> None:
    event = plan(db, world, kind="school_checkup", services=SCHOOL_SERVICES)
    content = make_school_sheet(1000, seed=11, bad_rows=10)
    started = time.perf_counter()
    record = service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="big.xlsx",
                                         content=content)
    db.commit()
    print(f"\n1,000-row school sheet on {db.get_bind().dialect.name}: {time.perf_counter() - started:.2f} s")
    assert (record.rows_imported, record.rows_failed) == (990, 10)
    assert count(db, ScreeningAttendance) == 990
    assert db.scalar(select(func.count()).select_from(PatientIdentifier)
                     .where(PatientIdentifier.type == IdentifierType.RESIDENT_ID)) == 991  # + the resident on file


def test_a_clash_meanwhile_reports_that_row_only(db: Session, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone registers a student while the sheet is written: the chunk is redone row by row, that row is
    reported, and the other students (new records from the rolled-back chunk) are written afresh. On PostgreSQL the
    clash comes from COPY as psycopg's own UniqueViolation."""
    event = plan(db, world, kind="school_checkup", services=SCHOOL_SERVICES)
    rows = student_rows(5, seed=9)
    rows[3][COLUMNS.index("身份证号")] = world.resident_id
    rows[3][COLUMNS.index("姓名")] = world.resident.name
    rows[3][COLUMNS.index("性别")] = "女"
    rows[3][COLUMNS.index("出生日期")] = world.resident.birth_date.isoformat()
    real = service._insert_ids

    def meanwhile(db: Session, model: type, rows: list[dict]) -> list[int]:
        if model is ScreeningAttendance and any(r["patient_id"] == world.resident.id for r in rows):
            db.add(ScreeningAttendance(event_id=event.id, patient_id=world.resident.id, client_token="tablet-000001",
                                       how="resident_id"))
            db.flush()
        return real(db, model, rows)

    monkeypatch.setattr(service, "_insert_ids", meanwhile)
    record = service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="s.csv",
                                         content=csv_of(rows))
    assert [e["row"] for e in record.errors] == [4] and "meanwhile" in record.errors[0]["message"]
    assert (record.rows_imported, record.residents_new, record.rows_failed) == (4, 4, 1)
    written = db.scalars(select(Patient.name).join(ScreeningAttendance, ScreeningAttendance.patient_id == Patient.id)
                         .where(ScreeningAttendance.event_id == event.id, ScreeningAttendance.how == "import_new"))
    assert sorted(written) == sorted(r[COLUMNS.index("姓名")] for r in rows[1:] if r is not rows[3])


def test_a_failing_import_leaves_nothing_written(db: Session, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    event = plan(db, world, kind="school_checkup", services=SCHOOL_SERVICES)
    patients_before = count(db, Patient)
    real = service._write_students
    calls = []

    def fail_second(*args: object, **kwargs: object) -> tuple[int, int, int]:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the server stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "IMPORT_CHUNK", 2)
    monkeypatch.setattr(service, "_write_students", fail_second)
    with pytest.raises(RuntimeError):
        service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="s.csv",
                                    content=csv_of(student_rows(5, seed=12)))
    db.rollback()
    assert len(calls) == 2  # the first chunk was written before the failure
    assert count(db, ScreeningAttendance) == count(db, ScreeningImport) == count(db, ScreeningResult) == 0
    assert count(db, Patient) == patients_before


def test_broken_and_overlong_files_are_refused_naming_the_file(db: Session, world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    event = plan(db, world, kind="school_checkup", services=SCHOOL_SERVICES)
    unclosed = ("姓名,性别\n\"张三,男\n" + "李四,女\n" * 30000).encode()  # the rest of the file is one field
    with pytest.raises(InvalidInput) as exc:
        service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename="q.csv", content=unclosed)
    assert exc.value.status_code == 422 and [e["field"] for e in exc.value.field_errors] == ["file"]
    # A sheet far past the limit is refused without reading it all.
    monkeypatch.setattr(service, "MAX_IMPORT_ROWS", 5)
    monkeypatch.setattr(service, "IMPORT_ROWS_MARGIN", 2)
    for name, content in (("big.xlsx", make_school_sheet(30, seed=1)), ("big.csv", csv_of(student_rows(30, seed=1)))):
        with pytest.raises(InvalidInput) as exc:
            service.import_school_sheet(db, by=world.doctor, event_id=event.id, filename=name, content=content)
        assert exc.value.field_errors == [{"field": "file", "message": "too many rows"}], name
    assert len(read_xlsx_fast(make_school_sheet(30, seed=1), max_rows=8)) == 8
    assert count(db, ScreeningImport) == 0
