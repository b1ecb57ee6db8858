"""The results repository's rules: checking and recording lab and examination results, and reading them back.

Every way a result arrives (entered on the platform, signed by the remote diagnosis centre, received over HL7)
goes through `record_lab_result` / `record_exam_result`, so the same checks, the same abnormal and critical
flags, the same recognition mark and the same audit apply whoever sent it. A result with the lab's own number
(filler number) is stored once: a resend is a no-op, a correction updates the row and the audit keeps the old
values. Reading is need-to-know (access.require_patient_access) and audited.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Organisation
from healthrelay.notifications import service as notifications
from healthrelay.patients.models import Patient, PatientRegistration
from healthrelay.results.models import (
    ABNORMAL_FLAGS,
    CRITICAL_FLAGS,
    EXAM,
    LAB,
    SOURCES,
    STATUSES,
    ExamResult,
    LabResult,
    ResultCode,
)
from healthrelay.results.schemas import ExamResultIn, LabResultIn

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
# A sender's clock may run a little ahead of ours; more than this is a wrong time, not skew.
CLOCK_SKEW = timedelta(minutes=5)
ENTER_ROLES = frozenset({Role.CLINICIAN, Role.ORG_ADMIN})
READ_LIMIT = 2000  # per kind on the patient-wide view; a patient with more is paged by the date filter
TEXT_MAX = 8000
# Modalities as DICOM and senders spell them -> the modality of result_codes.
MODALITY_ALIASES = {"DX": "DR", "CR": "DR", "XR": "DR", "EKG": "ECG", "ECG": "ECG", "SM": "PATH", "GM": "ES",
                    "ENDO": "ES"}
# DICOM BodyPartExamined values (and common variants) -> the body part of result_codes.
BODY_PART_ALIASES = {"BRAIN": "HEAD", "SKULL": "HEAD", "HEADNECK": "HEAD", "THORAX": "CHEST", "LUNG": "CHEST",
                     "ABD": "ABDOMEN", "LIVER": "ABDOMEN", "ABDOMENPELVIS": "ABDOMEN", "L-SPINE": "LSPINE",
                     "LUMBAR": "LSPINE", "CARDIAC": "HEART", "NECK": "THYROID"}
POSITIVE_WORDS = frozenset({"阳性", "弱阳性", "+", "++", "+++", "POS", "POSITIVE", "REACTIVE", "DETECTED"})
_NUMBER = r"[+-]?\d+(?:\.\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*[-~–—]\s*({_NUMBER})\s*$")
_BOUND = re.compile(rf"^\s*(<=|>=|≤|≥|<|>)\s*({_NUMBER})\s*$")
_VALUE = re.compile(rf"^\s*(?:<=|>=|≤|≥|<|>)?\s*({_NUMBER})\s*$")

LAB_FIELDS = ("test_code", "test_name", "value_text", "value_numeric", "unit", "reference_range", "abnormal_flag",
              "specimen", "collected_at", "reported_at", "status", "critical", "order_number")
EXAM_FIELDS = ("exam_code", "exam_name", "modality", "body_part", "performed_at", "reported_at", "findings",
               "impression", "critical", "study_instance_uid", "order_number")


# ---------------------------------------------------------------------------- codes

def codes_of(db: Session, kind: str | None = None) -> list[ResultCode]:
    query = select(ResultCode).order_by(ResultCode.kind.desc(), ResultCode.category, ResultCode.code)
    if kind:
        query = query.where(ResultCode.kind == kind)
    return list(db.execute(query).scalars())


def resolve_code(db: Session, *, kind: str, code: str) -> ResultCode | None:
    """The dictionary entry for a code senders use: our own code or one of its aliases (LOINC, LIS codes);
    `kind` "" takes either kind."""
    wanted = (code or "").strip().upper()
    if not wanted:
        return None
    found = _code_index(db).get(wanted, [])
    return next((row for row in found if not kind or row.kind == kind), None)


def _code_index(db: Session) -> dict[str, list[ResultCode]]:
    """Every spelling (code, LOINC, alias; upper case) → its entries, own codes first; built once per transaction,
    since a message resolves several codes and the dictionary does not change under it."""
    index = db.info.get(_CODE_INDEX)
    if index is None:
        index = {}
        rows = codes_of(db)
        for row in rows:
            index.setdefault(row.code.upper(), []).append(row)
        for row in rows:
            for spelling in {row.loinc.upper(), *(a.upper() for a in row.aliases or [])} - {""}:
                index.setdefault(spelling, []).append(row)
        db.info[_CODE_INDEX] = index
    return index


_CODE_INDEX = "results.code_index"


@event.listens_for(Session, "after_transaction_end")
def _forget_code_index(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_CODE_INDEX, None)


def normal_modality(modality: str) -> str:
    value = (modality or "").strip().upper().split("\\")[0]
    return MODALITY_ALIASES.get(value, value)


def normal_body_part(body_part: str) -> str:
    value = (body_part or "").strip().upper().replace(" ", "")
    return BODY_PART_ALIASES.get(value, value)


def exam_code_for(db: Session, *, modality: str, body_part: str) -> str:
    """The examination code for a modality and body part: the exact one, else the modality's "other region"
    code (body part ""); "" when none fits."""
    mod = normal_modality(modality)
    if not mod:
        return ""
    part = normal_body_part(body_part)
    rows = list(db.execute(select(ResultCode).where(ResultCode.kind == EXAM, ResultCode.modality == mod)
                           .order_by(ResultCode.code)).scalars())
    for row in rows:
        if part and row.body_part == part:
            return row.code
    return next((row.code for row in rows if not row.body_part), "")


def search_codes(db: Session, *, kind: str = "", q: str = "", limit: int = 50) -> list[ResultCode]:
    """Codes matching `q` in the code, an alias, the Chinese or English name, or the name's pinyin (full or
    initials): what the entry form's test picker offers."""
    from pypinyin import Style, lazy_pinyin

    rows = codes_of(db, kind or None)
    needle = (q or "").strip().lower().replace(" ", "")
    if not needle:
        return rows[:limit]
    ranked = []
    for position, row in enumerate(rows):
        keys = [k for k in (row.code.lower(), row.name_zh, row.name_en.lower().replace(" ", ""), row.loinc.lower(),
                            "".join(lazy_pinyin(row.name_zh)).lower(),
                            "".join(lazy_pinyin(row.name_zh, style=Style.FIRST_LETTER)).lower(),
                            *(a.lower() for a in row.aliases or [])) if k]
        # An exact code, alias or initials first, then what starts with the text, then what contains it.
        rank = min((0 if k == needle else 1 if k.startswith(needle) else 2 for k in keys if needle in k), default=None)
        if rank is not None:
            ranked.append((rank, position, row))
    return [row for _, _, row in sorted(ranked, key=lambda t: t[:2])][:limit]


def code_for_text(db: Session, *, kind: str, text: str) -> ResultCode | None:
    """What a person typed in the test picker: a code or alias, else the one test whose Chinese name, pinyin or
    pinyin initials it is exactly ("ptt" = 葡萄糖 = GLU); None when that is not exactly one."""
    found = resolve_code(db, kind=kind, code=text)
    if found is not None:
        return found
    from pypinyin import Style, lazy_pinyin

    needle = (text or "").strip().lower().replace(" ", "")
    if not needle:
        return None
    exact = [row for row in codes_of(db, kind) if needle in (
        row.name_zh, "".join(lazy_pinyin(row.name_zh)).lower(),
        "".join(lazy_pinyin(row.name_zh, style=Style.FIRST_LETTER)).lower())]
    return exact[0] if len(exact) == 1 else None


def pinyin_initials(name: str) -> str:
    from pypinyin import Style, lazy_pinyin

    return "".join(lazy_pinyin(name, style=Style.FIRST_LETTER)).lower()


# ---------------------------------------------------------------------------- values and flags

def parse_range(text: str) -> tuple[float | None, float | None] | None:
    """A numeric reference range ("3.5-5.3", "<5.2", ">1.0", "≤0.04") as (low, high); None when it is text."""
    text = (text or "").strip()
    match = _RANGE.match(text)
    if match:
        return float(match.group(1)), float(match.group(2))
    match = _BOUND.match(text)
    if match:
        bound = float(match.group(2))
        return (None, bound) if match.group(1) in ("<", "<=", "≤") else (bound, None)
    return None


def parse_value(text: str) -> float | None:
    """The number in a result ("5.6", "<0.01" counts as 0.01), or None for a text result."""
    match = _VALUE.match(text or "")
    return float(match.group(1)) if match else None


def is_numeric(code: ResultCode) -> bool:
    """A test reported as a number: it has a unit, a numeric reference range or critical limits."""
    return bool(code.unit) or parse_range(code.reference_range) is not None or (
        code.critical_low is not None or code.critical_high is not None)


def _unit_key(unit: str) -> str:
    return (unit or "").strip().lower().replace(" ", "").replace("µ", "u").replace("μ", "u")


def same_unit(sent: str, ours: str) -> bool:
    """The sender's unit is ours (or not given), so our critical limits apply to its number."""
    return not sent.strip() or _unit_key(sent) == _unit_key(ours)


def range_flag(value: float, reference_range: str) -> str:
    """N, H or L against a numeric reference range; "" when the range is not numeric."""
    bounds = parse_range(reference_range)
    if bounds is None:
        return ""
    low, high = bounds
    strict_high = (reference_range or "").strip().startswith("<") and not reference_range.strip().startswith("<=")
    strict_low = (reference_range or "").strip().startswith(">") and not reference_range.strip().startswith(">=")
    if low is not None and (value <= low if strict_low else value < low):
        return "L"
    if high is not None and (value >= high if strict_high else value > high):
        return "H"
    return "N"


def critical_side(value: float, code: ResultCode) -> str:
    """"LL" or "HH" when the value crosses one of the code's critical limits, else ""."""
    if code.critical_low is not None and value < code.critical_low:
        return "LL"
    if code.critical_high is not None and value > code.critical_high:
        return "HH"
    return ""


def text_flag(value: str, reference_range: str) -> str:
    """A qualitative result against a qualitative reference ("阴性"): A when positive, N when as expected."""
    ref = (reference_range or "").strip()
    if not ref or parse_range(ref) is not None:
        return ""
    shown = value.strip()
    if shown == ref:
        return "N"
    return "A" if shown.upper() in POSITIVE_WORDS else ""


# ---------------------------------------------------------------------------- checks shared by both kinds

def _aware(value: datetime | None) -> datetime | None:
    """Times without a zone are wall-clock times in China (as HL7 senders mostly send them)."""
    if value is None:
        return None
    return value.replace(tzinfo=LOCAL_TZ) if value.tzinfo is None else value


def _check_time(errors: list[dict[str, Any]], name: str, value: datetime | None, now: datetime) -> None:
    if value is not None and value > now + CLOCK_SKEW:
        errors.append(_err(name, "时间不能晚于现在 / the time is in the future", "in_future"))


def _err(name: str, message: str, code: str = "invalid") -> dict[str, Any]:
    return {**field_error(name, message), "code": code}


def _check_length(errors: list[dict[str, Any]], name: str, value: str, limit: int) -> None:
    if len(value or "") > limit:
        errors.append(_err(name, f"最多 {limit} 个字符 / at most {limit} characters", "too_long"))


def _check_parties(db: Session, errors: list[dict[str, Any]], *, patient_id: int, organisation_id: int,
                   ordering_organisation_id: int | None) -> int | None:
    """The patient (followed through merges) and the organisations must exist; returns the surviving patient."""
    survivor = None
    try:
        survivor = access.resolve_patient(db, patient_id).id
    except NotFound:
        errors.append(_err("patient_id", f"没有编号为 {patient_id} 的居民 / no patient with id {patient_id}",
                           "unknown_patient"))
    for name, org_id in (("organisation_id", organisation_id), ("ordering_organisation_id", ordering_organisation_id)):
        if org_id is not None and db.get(Organisation, org_id) is None:
            errors.append(_err(name, f"没有编号为 {org_id} 的机构 / no organisation with id {org_id}",
                               "unknown_organisation"))
    return survivor


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown result source {source!r}")


def _require_enterer(db: Session, *, by: User | None, organisation_id: int, patient_id: int) -> None:
    """Entered on the platform: a clinician or admin of the performing organisation, with a care relationship."""
    if by is None or by.role not in ENTER_ROLES or by.organisation_id != organisation_id:
        raise AccessDenied("只有执行机构的医师或管理员可以录入结果 / only clinicians and admins of the performing "
                           "organisation enter its results", code="not_performing_staff")
    access.require_patient_access(db, user=by, patient_id=patient_id, action="results.enter")


def _actor(by: User | None, source: str) -> audit.Actor:
    return access.actor_of(by) if by is not None else audit.Actor(username=f"system:{source}")


def _mark(db: Session, *, organisation_id: int, code: str, at: datetime) -> str:
    from healthrelay.recognition.service import mark_for

    return mark_for(db, organisation_id=organisation_id, code=code, at=at)


def _announce(db: Session, *, patient_id: int, organisation_ids: set[int | None], kind: str, result_id: int) -> None:
    """Open results pages of the patient refresh: the performing and ordering members and where the patient is
    registered hear an event with ids only (no names)."""
    orgs = {o for o in organisation_ids if o is not None}
    orgs.update(db.execute(select(PatientRegistration.organisation_id)
                           .where(PatientRegistration.patient_id == patient_id)).scalars())
    event = {"type": "results.changed", "patient_id": patient_id, "kind": kind, "result_id": result_id}
    for org in sorted(orgs):
        notifications.publish(db, topic=notifications.org_topic(org), event=event)


# ---------------------------------------------------------------------------- lab results

@dataclass
class _LabValues:
    code: ResultCode
    patient_id: int
    values: dict[str, Any] = field(default_factory=dict)


def _clean_lab(db: Session, data: LabResultIn) -> _LabValues:
    errors: list[dict[str, Any]] = []
    now = utcnow()
    code = resolve_code(db, kind=LAB, code=data.test_code)
    if code is None:
        errors.append(_err("test_code", f"未知的检验项目代码 {data.test_code!r} / unknown test code", "unknown_code"))
    patient_id = _check_parties(db, errors, patient_id=data.patient_id, organisation_id=data.organisation_id,
                                ordering_organisation_id=data.ordering_organisation_id)
    if data.ordered_by_user_id is not None and db.get(User, data.ordered_by_user_id) is None:
        errors.append(_err("ordered_by_user_id", "没有这个用户 / no such user", "unknown_user"))
    value = (data.value or "").strip()
    if not value:
        errors.append(_err("value", "结果不能为空 / the value is required", "required"))
    flag = (data.abnormal_flag or "").strip().upper()
    if flag not in ABNORMAL_FLAGS:
        errors.append(_err("abnormal_flag", "异常标志须为 N、H、L、HH、LL、A、AA 或留空 / the flag must be N, H, L, "
                                            "HH, LL, A, AA or empty"))
    status = (data.status or "final").strip().lower()
    if status not in STATUSES:
        errors.append(_err("status", "状态须为 final、corrected 或 preliminary / the status must be final, corrected "
                                     "or preliminary"))
    reported_at, collected_at = _aware(data.reported_at), _aware(data.collected_at)
    _check_time(errors, "reported_at", reported_at, now)
    _check_time(errors, "collected_at", collected_at, now)
    if collected_at is not None and reported_at is not None and collected_at > reported_at:
        errors.append(_err("collected_at", "采样时间不能晚于报告时间 / collected after it was reported"))
    for name, limit in (("value", 200), ("test_name", 200), ("unit", 40), ("reference_range", 60), ("specimen", 60),
                        ("order_number", 40), ("filler_number", 40)):
        _check_length(errors, name, getattr(data, name), limit)
    numeric = parse_value(value)
    if code is not None and value and is_numeric(code) and numeric is None:
        errors.append(_err("value", f"{code.name_zh}须为数值 / {code.name_en} must be a number", "not_numeric"))
    if errors:
        raise InvalidInput("检验结果有误 / the lab result has errors", field_errors=errors)
    assert code is not None and patient_id is not None and reported_at is not None
    unit = data.unit.strip() or code.unit
    units_match = same_unit(data.unit, code.unit)
    reference = data.reference_range.strip() or (code.reference_range if units_match else "")
    critical = flag in CRITICAL_FLAGS
    if not is_numeric(code):
        numeric = None
    if numeric is not None and units_match:
        side = critical_side(numeric, code)
        critical = critical or bool(side)
        flag = flag or side
    if not flag:
        flag = range_flag(numeric, reference) if numeric is not None else text_flag(value, reference)
    return _LabValues(code=code, patient_id=patient_id, values={
        "test_code": code.code, "test_name": data.test_name.strip() or code.name_zh, "value_text": value,
        "value_numeric": numeric, "unit": unit, "reference_range": reference, "abnormal_flag": flag,
        "specimen": data.specimen.strip(), "collected_at": collected_at, "reported_at": reported_at,
        "status": status, "critical": critical, "order_number": data.order_number.strip()})


def record_lab_result(db: Session, *, data: LabResultIn, source: str, by: User | None,
                      hl7_message_id: int | None = None) -> LabResult:
    """Check and store one lab result; with a filler number a resend returns the stored row and a correction
    (status corrected, or a final result after a preliminary one) updates it. A critical value opens the
    critical-result loop."""
    _check_source(source)
    clean = _clean_lab(db, data)
    if source == "entered":
        _require_enterer(db, by=by, organisation_id=data.organisation_id, patient_id=clean.patient_id)
    filler = data.filler_number.strip()
    if filler:
        existing = _lab_by_filler(db, data.organisation_id, filler, clean.code.code)
        if existing is not None:
            return _correct_lab(db, existing, clean, by=by, source=source, hl7_message_id=hl7_message_id)
    row = LabResult(patient_id=clean.patient_id, organisation_id=data.organisation_id,
                    ordering_organisation_id=data.ordering_organisation_id,
                    ordered_by_user_id=data.ordered_by_user_id, filler_number=filler, source=source,
                    hl7_message_id=hl7_message_id, entered_by_user_id=by.id if by is not None else None,
                    created_at=utcnow(), **clean.values)
    row.recognition_scope = _mark(db, organisation_id=row.organisation_id, code=row.test_code, at=row.reported_at)
    try:
        with db.begin_nested():  # two senders racing with the same filler number: the second finds the first
            db.add(row)
            db.flush()
    except IntegrityError:
        existing = _lab_by_filler(db, data.organisation_id, filler, clean.code.code) if filler else None
        if existing is None:
            raise
        return _correct_lab(db, existing, clean, by=by, source=source, hl7_message_id=hl7_message_id)
    audit.record(db, actor=_actor(by, source), action="results.lab.record", patient_id=row.patient_id,
                 resource=f"lab_result:{row.id}",
                 detail={"test_code": row.test_code, "flag": row.abnormal_flag, "critical": row.critical,
                         "source": source, "hl7_message_id": hl7_message_id, "status": row.status})
    if row.critical:
        _open_critical(db, row, by)
    _announce(db, patient_id=row.patient_id, organisation_ids={row.organisation_id, row.ordering_organisation_id},
              kind=LAB, result_id=row.id)
    return row


def _lab_by_filler(db: Session, organisation_id: int, filler: str, code: str) -> LabResult | None:
    return db.execute(select(LabResult).where(LabResult.organisation_id == organisation_id,
                                              LabResult.filler_number == filler,
                                              LabResult.test_code == code)).scalar()


def _same_patient(row: LabResult | ExamResult, patient_id: int) -> None:
    """A lab's number names one result of one patient; the same number for another patient is a sender's error,
    never a reason to touch the stored result."""
    if row.patient_id != patient_id:
        raise InvalidInput("该报告单号已属于另一位患者的结果 / this filler number belongs to another patient's result",
                           field_errors=[_err("filler_number", "报告单号已被另一位患者使用 / used for another "
                                                                "patient", "filler_number_clash")])


def _correct_lab(db: Session, row: LabResult, clean: _LabValues, *, by: User | None, source: str,
                 hl7_message_id: int | None) -> LabResult:
    _same_patient(row, clean.patient_id)
    new = clean.values
    replaces = new["status"] == "corrected" or (row.status == "preliminary" and new["status"] == "final")
    if not replaces:
        return row  # the same result sent again: nothing to store
    old = {name: _json(getattr(row, name)) for name in LAB_FIELDS if getattr(row, name) != new[name]}
    if not old:
        return row
    was_critical = row.critical
    for name, value in new.items():
        setattr(row, name, value)
    row.hl7_message_id = hl7_message_id if hl7_message_id is not None else row.hl7_message_id
    db.flush()
    audit.record(db, actor=_actor(by, source), action="results.lab.correct", patient_id=row.patient_id,
                 resource=f"lab_result:{row.id}",
                 detail={"old": old, "new": {k: _json(new[k]) for k in old}, "source": source,
                         "hl7_message_id": hl7_message_id})
    if row.critical and not was_critical:
        _open_critical(db, row, by)
    _announce(db, patient_id=row.patient_id, organisation_ids={row.organisation_id, row.ordering_organisation_id},
              kind=LAB, result_id=row.id)
    return row


def _open_critical(db: Session, row: LabResult, by: User | None) -> None:
    from healthrelay.teleconsult.critical import open_for_lab

    open_for_lab(db, lab=row, by=by)


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# ---------------------------------------------------------------------------- examination results

def record_exam_result(db: Session, *, data: ExamResultIn, source: str, by: User | None,
                       hl7_message_id: int | None = None) -> ExamResult:
    """Check and store one examination report. One result per consultation request and per filler number:
    a resend returns the stored row; the same filler number with other content updates it (audited)."""
    _check_source(source)
    errors: list[dict[str, Any]] = []
    now = utcnow()
    code = None
    if data.exam_code.strip():
        code = resolve_code(db, kind=EXAM, code=data.exam_code)
    else:
        found = exam_code_for(db, modality=data.modality, body_part=data.body_part)
        code = db.get(ResultCode, found) if found else None
    if code is None:
        errors.append(_err("exam_code", f"未知的检查项目 {data.exam_code or data.modality!r} / unknown examination "
                                        "code", "unknown_code"))
    patient_id = _check_parties(db, errors, patient_id=data.patient_id, organisation_id=data.organisation_id,
                                ordering_organisation_id=data.ordering_organisation_id)
    performed_at, reported_at = _aware(data.performed_at), _aware(data.reported_at)
    _check_time(errors, "performed_at", performed_at, now)
    _check_time(errors, "reported_at", reported_at, now)
    if performed_at is not None and reported_at is not None and performed_at > reported_at:
        errors.append(_err("performed_at", "检查时间不能晚于报告时间 / performed after it was reported"))
    for name, limit in (("exam_name", 200), ("modality", 16), ("body_part", 40), ("study_instance_uid", 64),
                        ("order_number", 40), ("filler_number", 40), ("findings", TEXT_MAX),
                        ("impression", TEXT_MAX)):
        _check_length(errors, name, getattr(data, name), limit)
    if not (data.findings.strip() or data.impression.strip()):
        errors.append(_err("impression", "所见与诊断意见不能都为空 / findings or impression required", "required"))
    if data.consult_request_id is not None:
        from healthrelay.teleconsult.models import ConsultRequest

        if db.get(ConsultRequest, data.consult_request_id) is None:
            errors.append(_err("consult_request_id", "没有这个会诊申请 / no such consultation request", "unknown"))
    if errors:
        raise InvalidInput("检查结果有误 / the examination result has errors", field_errors=errors)
    assert code is not None and patient_id is not None and performed_at is not None and reported_at is not None
    if source == "entered":
        _require_enterer(db, by=by, organisation_id=data.organisation_id, patient_id=patient_id)
    values: dict[str, Any] = {
        "exam_code": code.code, "exam_name": data.exam_name.strip() or code.name_zh,
        "modality": normal_modality(data.modality) or code.modality,
        "body_part": normal_body_part(data.body_part) or code.body_part, "performed_at": performed_at,
        "reported_at": reported_at, "findings": data.findings.strip(), "impression": data.impression.strip(),
        "critical": bool(data.critical), "study_instance_uid": data.study_instance_uid.strip(),
        "order_number": data.order_number.strip()}
    filler = data.filler_number.strip()
    existing = None
    if data.consult_request_id is not None:
        existing = db.execute(select(ExamResult).where(
            ExamResult.consult_request_id == data.consult_request_id)).scalar()
    if existing is None and filler:
        existing = _exam_by_filler(db, data.organisation_id, filler, code.code)
    if existing is not None:
        _same_patient(existing, patient_id)
        return _correct_exam(db, existing, values, by=by, source=source, hl7_message_id=hl7_message_id)
    row = ExamResult(patient_id=patient_id, organisation_id=data.organisation_id, category=code.category,
                     ordering_organisation_id=data.ordering_organisation_id, filler_number=filler,
                     consult_request_id=data.consult_request_id, source=source, hl7_message_id=hl7_message_id,
                     created_at=utcnow(), **values)
    row.recognition_scope = _mark(db, organisation_id=row.organisation_id, code=row.exam_code, at=row.performed_at)
    try:
        with db.begin_nested():
            db.add(row)
            db.flush()
    except IntegrityError:
        existing = db.execute(select(ExamResult).where(
            ExamResult.consult_request_id == data.consult_request_id)).scalar() if data.consult_request_id else None
        if existing is None and filler:
            existing = _exam_by_filler(db, data.organisation_id, filler, code.code)
        if existing is None:
            raise
        return existing
    audit.record(db, actor=_actor(by, source), action="results.exam.record", patient_id=row.patient_id,
                 resource=f"exam_result:{row.id}",
                 detail={"exam_code": row.exam_code, "critical": row.critical, "source": source,
                         "consult_request_id": row.consult_request_id, "hl7_message_id": hl7_message_id})
    _announce(db, patient_id=row.patient_id, organisation_ids={row.organisation_id, row.ordering_organisation_id},
              kind=EXAM, result_id=row.id)
    return row


def _exam_by_filler(db: Session, organisation_id: int, filler: str, code: str) -> ExamResult | None:
    return db.execute(select(ExamResult).where(ExamResult.organisation_id == organisation_id,
                                               ExamResult.filler_number == filler,
                                               ExamResult.exam_code == code)).scalar()


def _correct_exam(db: Session, row: ExamResult, values: dict[str, Any], *, by: User | None, source: str,
                  hl7_message_id: int | None) -> ExamResult:
    old = {name: _json(getattr(row, name)) for name in EXAM_FIELDS if getattr(row, name) != values[name]}
    if not old:
        return row
    for name, value in values.items():
        setattr(row, name, value)
    db.flush()
    audit.record(db, actor=_actor(by, source), action="results.exam.correct", patient_id=row.patient_id,
                 resource=f"exam_result:{row.id}",
                 detail={"old": old, "source": source, "hl7_message_id": hl7_message_id})
    _announce(db, patient_id=row.patient_id, organisation_ids={row.organisation_id, row.ordering_organisation_id},
              kind=EXAM, result_id=row.id)
    return row


# ---------------------------------------------------------------------------- reading

@dataclass
class ResultFilters:
    kind: str = ""  # "", lab, exam
    organisation_id: int | None = None
    date_from: date | None = None
    date_to: date | None = None  # inclusive, in China's calendar
    test_code: str = ""


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ)


@dataclass
class PatientResults:
    patient: Patient
    labs: list[LabResult]
    exams: list[ExamResult]
    organisations: dict[int, str]


def _filtered(query: Select[Any], filters: ResultFilters, *, organisation: Any, code: Any, at: Any) -> Select[Any]:
    if filters.organisation_id is not None:
        query = query.where(organisation == filters.organisation_id)
    if filters.test_code:
        query = query.where(code == filters.test_code)
    if filters.date_from is not None:
        query = query.where(at >= _day_start(filters.date_from))
    if filters.date_to is not None:
        query = query.where(at < _day_start(filters.date_to) + timedelta(days=1))
    return query


def patient_results(db: Session, *, user: User, patient_id: int, filters: ResultFilters | None = None,
                    client_address: str = "") -> PatientResults:
    """Every result of the patient from every member, newest first (need-to-know, audited)."""
    filters = filters or ResultFilters()
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=user, patient_id=patient.id, action="results.read",
                                  client_address=client_address)
    labs: list[LabResult] = []
    exams: list[ExamResult] = []
    if filters.kind in ("", LAB):
        query = _filtered(select(LabResult).where(LabResult.patient_id == patient.id), filters,
                          organisation=LabResult.organisation_id, code=LabResult.test_code, at=LabResult.reported_at)
        labs = list(db.execute(query.order_by(LabResult.reported_at.desc(), LabResult.id.desc())
                               .limit(READ_LIMIT)).scalars())
    if filters.kind in ("", EXAM):
        query = _filtered(select(ExamResult).where(ExamResult.patient_id == patient.id), filters,
                          organisation=ExamResult.organisation_id, code=ExamResult.exam_code,
                          at=ExamResult.performed_at)
        exams = list(db.execute(query.order_by(ExamResult.performed_at.desc(), ExamResult.id.desc())
                                .limit(READ_LIMIT)).scalars())
    return PatientResults(patient=patient, labs=labs, exams=exams,
                          organisations=organisation_names(db, {r.organisation_id for r in [*labs, *exams]}))


def organisation_names(db: Session, ids: set[int | None]) -> dict[int, str]:
    wanted = sorted(i for i in ids if i is not None)
    if not wanted:
        return {}
    return dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(wanted))).all())


def organisations_of_patient(db: Session, patient_id: int) -> dict[int, str]:
    """Every member that performed a result for the patient (the results view's organisation filter)."""
    ids = set(db.execute(select(LabResult.organisation_id).where(LabResult.patient_id == patient_id)
                         .distinct()).scalars())
    ids |= set(db.execute(select(ExamResult.organisation_id).where(ExamResult.patient_id == patient_id)
                          .distinct()).scalars())
    return organisation_names(db, ids)


def lab_result_for(db: Session, *, user: User, result_id: int, client_address: str = "") -> LabResult:
    row = db.get(LabResult, result_id)
    if row is None:
        raise NotFound(f"没有编号为 {result_id} 的检验结果 / no lab result {result_id}")
    access.require_patient_access(db, user=user, patient_id=row.patient_id, action="results.lab.read",
                                  client_address=client_address)
    return row


def exam_result_for(db: Session, *, user: User, result_id: int, client_address: str = "") -> ExamResult:
    row = db.get(ExamResult, result_id)
    if row is None:
        raise NotFound(f"没有编号为 {result_id} 的检查结果 / no examination result {result_id}")
    access.require_patient_access(db, user=user, patient_id=row.patient_id, action="results.exam.read",
                                  client_address=client_address)
    return row


def exam_links(db: Session, row: ExamResult) -> dict[str, str]:
    """Where to see the examination itself: the image viewer, or the ECG tracing of the request."""
    links: dict[str, str] = {}
    if row.study_instance_uid:
        links["images"] = f"/imaging/studies/{row.study_instance_uid}/viewer"
    if row.consult_request_id is not None:
        links["consult"] = f"/teleconsult/{row.consult_request_id}"
        if row.modality == "ECG":
            from healthrelay.ecg.service import recordings_of

            recordings = recordings_of(db, row.consult_request_id)
            if recordings:
                links["ecg"] = f"/ecg/recordings/{recordings[0].id}"
    return links


@dataclass
class Trend:
    code: str
    name: str
    unit: str
    low: float | None
    high: float | None
    points: list[tuple[str, float, str]]  # (ISO time, value, flag), oldest first


def trends(labs: list[LabResult], codes: dict[str, ResultCode]) -> list[Trend]:
    """One series per numeric test (values over time, with the reference band of the dictionary, else of the
    latest result)."""
    by_code: dict[str, list[LabResult]] = {}
    for row in labs:
        if row.value_numeric is not None:
            by_code.setdefault(row.test_code, []).append(row)
    out = []
    for test, rows in by_code.items():
        rows = sorted(rows, key=lambda r: r.reported_at)
        code = codes.get(test)
        bounds = parse_range(code.reference_range if code is not None else "") or parse_range(
            rows[-1].reference_range) or (None, None)
        out.append(Trend(code=test, name=code.name_zh if code is not None else rows[-1].test_name,
                         unit=rows[-1].unit, low=bounds[0], high=bounds[1],
                         points=[(r.reported_at.isoformat(), r.value_numeric, r.abnormal_flag)
                                 for r in rows if r.value_numeric is not None]))
    return out
