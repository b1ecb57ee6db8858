"""Master patient index: registration, search, the audited record, identifiers, merge and undo.

Rules live here, not in the routes. Every read or write of one resident's data goes through
`require_patient_access` (which audits); lists show just enough to tell people apart, with
identifiers masked. A merge re-points every row in the schema that references the merged
record, found by introspecting the metadata, so tables added by later domains follow too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
    and_,
    delete,
    exists,
    insert,
    select,
    tuple_,
)
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from healthrelay.access.service import (
    CLINICAL_ROLES,
    actor_of,
    decide,
    require_patient_access,
    resolve_patient,
)
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import Base, get_sessionmaker, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Area, AreaLevel, Organisation, Team
from healthrelay.patients import matching
from healthrelay.patients.identity import (
    ResidentId,
    check_agrees,
    mask_phone,
    mask_resident_id,
    normalise,
    parse_resident_id,
)
from healthrelay.patients.models import (
    IdentifierType,
    Patient,
    PatientIdentifier,
    PatientMerge,
    PatientRegistration,
    Sex,
    TeamPanelEntry,
)
from healthrelay.patients.schemas import (
    CandidateOut,
    IdentifierOut,
    MergeOut,
    PanelOut,
    PatientCreate,
    PatientOut,
    PatientUpdate,
    RegistrationOut,
    SearchRow,
)

ADMIN_ROLES = frozenset({Role.ALLIANCE_ADMIN, Role.ORG_ADMIN})
# Staff who take in new residents: clinicians (incl. village doctors), dispatchers, admins.
REGISTERING_ROLES = CLINICAL_ROLES | ADMIN_ROLES

MOBILE_RE = re.compile(r"^1[3-9]\d{9}$")
# Area code 0xx or 0xxx, then a 7- or 8-digit local number (separators removed first).
LANDLINE_RE = re.compile(r"^0\d{2,3}\d{7,8}$")
# Provinces issue insurance cards of different shapes (many reuse the ID number, some add
# letters), so only the common envelope is checked: 6-20 capital letters or digits.
INSURANCE_CARD_RE = re.compile(r"^[A-Z0-9]{6,20}$")
RECORD_NUMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_/]{0,39}$")
RESIDENT_ID_SHAPE = re.compile(r"^\d{17}[\dX]$")
NAME_RE = re.compile(r"^[\u3400-\u9fffA-Za-z][\u3400-\u9fffA-Za-z ·.\-]*$")
MIN_MERGE_REASON = 4
MIN_PHONE_TAIL = 4
MAX_SEARCH_RESULTS = 200
EARLIEST_BIRTH_DATE = date(1880, 1, 1)


# ---------------------------------------------------------------------------------------------
# Errors that carry more than a message.

class LikelyDuplicates(Conflict):
    """Registration stopped: residents who look like the same person. Nothing was written."""

    code = "likely_duplicates"

    def __init__(self, message: str, *, candidates: list[CandidateOut]) -> None:
        super().__init__(message)
        self.candidates = candidates

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["candidates"] = [c.model_dump(mode="json") for c in self.candidates]
        return body


class DuplicateIdentifier(Conflict):
    """The number already identifies another resident: refused, naming that record."""

    def __init__(self, message: str, *, code: str, field: str, existing_patient_id: int) -> None:
        super().__init__(message, code=code,
                         field_errors=[field_error(field, f"already used by patient {existing_patient_id}")])
        self.existing_patient_id = existing_patient_id

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["existing_patient_id"] = self.existing_patient_id
        return body


# ---------------------------------------------------------------------------------------------
# Validation: collect every problem, then refuse once, before anything is written.

@dataclass
class _Problems:
    messages: list[str]
    field_errors: list[dict[str, Any]]
    codes: list[str]

    @classmethod
    def new(cls) -> _Problems:
        return cls([], [], [])

    def add(self, field: str, zh: str, en: str) -> None:
        self.messages.append(f"{zh} / {en}")
        self.field_errors.append(field_error(field, en))
        self.codes.append(InvalidInput.code)

    def absorb(self, exc: InvalidInput) -> None:
        self.messages.append(exc.message)
        self.field_errors.extend(exc.field_errors)
        self.codes.append(exc.code)

    def raise_if_any(self) -> None:
        if not self.messages:
            return
        if len(self.messages) == 1:  # keep the specific code (invalid_resident_id, resident_id_mismatch)
            raise InvalidInput(self.messages[0], field_errors=self.field_errors, code=self.codes[0])
        raise InvalidInput(f"居民信息有 {len(self.messages)} 处错误 / {len(self.messages)} problems in the "
                           "resident's details: " + "；".join(self.messages), field_errors=self.field_errors)


def normalise_phone(raw: str) -> str:
    """Digits only; a +86 country prefix is dropped."""
    digits = re.sub(r"[\s\-()（）]", "", raw or "")
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    return digits


def _clean_phone(raw: str, problems: _Problems) -> str:
    phone = normalise_phone(raw)
    if phone and not (MOBILE_RE.match(phone) or LANDLINE_RE.match(phone)):
        problems.add("phone", f"电话号码 {raw} 格式不对（手机 11 位，以 13-19 开头；座机带区号）",
                     f"phone {raw!r} is neither a mobile (11 digits, 13x-19x) nor a landline with area code")
    return phone


def _clean_insurance_card(raw: str | None, problems: _Problems) -> str:
    card = normalise(raw or "")
    if card and not INSURANCE_CARD_RE.match(card):
        problems.add("insurance_card", "医保卡号应为 6-20 位字母或数字",
                     "insurance card number must be 6-20 letters or digits")
    return card


def _clean_name(raw: str, problems: _Problems) -> str:
    name = " ".join((raw or "").split())
    if not name:
        problems.add("name", "请填写姓名", "name is required")
    elif len(name) > 50 or not NAME_RE.match(name):
        problems.add("name", "姓名只能包含汉字、字母和间隔号", "name may hold Chinese characters, letters and '·' only")
    return name


def _check_birth_date(born: date | None, problems: _Problems, *, today: date | None = None) -> None:
    if born is None:
        return
    if born > (today or date.today()):
        problems.add("birth_date", "出生日期不能晚于今天", "birth date is in the future")
    elif born < EARLIEST_BIRTH_DATE:
        problems.add("birth_date", "出生日期不合理", "birth date is implausibly early")


def _check_area(db: Session, area_id: int | None, problems: _Problems) -> None:
    if area_id is not None and db.get(Area, area_id) is None:
        problems.add("area_id", f"没有编号为 {area_id} 的村/社区", f"unknown area {area_id}")


def _parse_resident_id(raw: str | None, problems: _Problems) -> ResidentId | None:
    if not (raw or "").strip():
        return None
    try:
        return parse_resident_id(raw or "")
    except InvalidInput as exc:
        problems.absorb(exc)
        return None


def _check_id_agrees(rid: ResidentId | None, *, sex: str, born: date | None, problems: _Problems) -> None:
    if rid is None or born is None:
        return
    try:
        check_agrees(rid, sex=sex, birth_date=born)
    except InvalidInput as exc:
        problems.absorb(exc)


def _owner_of(db: Session, kind: IdentifierType, value: str, issuer_id: int | None = None) -> int | None:
    """Which live resident (if any) already holds this number."""
    q = select(PatientIdentifier.patient_id).where(PatientIdentifier.type == kind,
                                                   PatientIdentifier.value == value)
    q = q.where(PatientIdentifier.issuer_organisation_id.is_(None) if issuer_id is None
                else PatientIdentifier.issuer_organisation_id == issuer_id)
    return db.execute(q.limit(1)).scalar()


def _refuse_taken(db: Session, *, kind: IdentifierType, value: str, issuer_id: int | None = None,
                  field: str, mine: int | None = None) -> None:
    owner = _owner_of(db, kind, value, issuer_id)
    if owner is None or owner == mine:
        return
    label_zh, label_en, code = {
        IdentifierType.RESIDENT_ID: ("身份证号", "resident ID", "duplicate_resident_id"),
        IdentifierType.INSURANCE_CARD: ("医保卡号", "insurance card", "duplicate_insurance_card"),
        IdentifierType.MEDICAL_RECORD: ("本机构病案号", "record number", "duplicate_record_number"),
    }[kind]
    raise DuplicateIdentifier(
        f"该{label_zh}已登记在居民档案 #{owner}，请打开该档案而不要重复建档 / this {label_en} already "
        f"belongs to patient #{owner}; open that record instead of registering again",
        code=code, field=field, existing_patient_id=owner)


# ---------------------------------------------------------------------------------------------
# Who sees what.

def sees_full_identifiers(user: User, patient_id: int) -> bool:
    """Identity management (admins) and the resident themself see whole numbers; others masked."""
    return user.role in ADMIN_ROLES or (user.role == Role.PATIENT and user.patient_id == patient_id)


def _resident_ids(db: Session, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = db.execute(select(PatientIdentifier.patient_id, PatientIdentifier.value).where(
        PatientIdentifier.patient_id.in_(ids), PatientIdentifier.type == IdentifierType.RESIDENT_ID
    ).order_by(PatientIdentifier.id))
    found: dict[int, str] = {}
    for pid, value in rows:
        found.setdefault(pid, value)
    return found


def _area_names(db: Session, area_ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {a for a in area_ids if a is not None}
    if not wanted:
        return {}
    return dict(db.execute(select(Area.id, Area.name).where(Area.id.in_(wanted))).all())


def candidate_rows(db: Session, candidates: Sequence[matching.Candidate]) -> list[CandidateOut]:
    """What a duplicate warning shows: name, sex, birth date, village and a masked ID."""
    ids = [c.patient_id for c in candidates]
    patients = {p.id: p for p in db.execute(select(Patient).where(Patient.id.in_(ids))).scalars()} if ids else {}
    rids = _resident_ids(db, ids)
    areas = _area_names(db, (p.area_id for p in patients.values()))
    rows = []
    for c in candidates:
        p = patients.get(c.patient_id)
        if p is None:
            continue
        rows.append(CandidateOut(patient_id=p.id, score=c.score, reasons=list(c.reasons), name=p.name, sex=p.sex,
                                 birth_date=p.birth_date, area_name=areas.get(p.area_id or 0, ""),
                                 masked_id=mask_resident_id(rids.get(p.id, ""))))
    return rows


def _audit_disclosure(actor: audit.Actor, rows: Sequence[CandidateOut], *, action: str) -> None:
    """Record whose details a duplicate warning showed, even though the request then fails."""
    if not rows:
        return
    db = get_sessionmaker()()
    try:
        for row in rows:
            audit.record(db, actor=actor, action=action, patient_id=row.patient_id, purpose="duplicate_check",
                         detail={"score": row.score})
        db.commit()
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------
# Registration.

@dataclass
class _Clean:
    name: str
    sex: Sex
    birth_date: date
    phone: str
    area_id: int | None
    grid: str
    address_line: str
    resident_id: str
    insurance_card: str
    record_number: str


def _validate_new(db: Session, data: PatientCreate, *, by: User) -> _Clean:
    problems = _Problems.new()
    name = _clean_name(data.name, problems)
    _check_birth_date(data.birth_date, problems)
    rid = _parse_resident_id(data.resident_id, problems)
    _check_id_agrees(rid, sex=str(data.sex), born=data.birth_date, problems=problems)
    phone = _clean_phone(data.phone, problems)
    card = _clean_insurance_card(data.insurance_card, problems)
    _check_area(db, data.area_id, problems)
    record_number = (data.record_number or "").strip()
    if record_number and not RECORD_NUMBER_RE.match(record_number):
        problems.add("record_number", "病案号只能包含字母、数字和 - _ /", "record number: letters, digits, - _ / only")
    if record_number and by.organisation_id is None:
        problems.add("record_number", "您的账号不属于任何机构，不能登记病案号",
                     "your account belongs to no organisation, so it cannot issue record numbers")
    problems.raise_if_any()
    return _Clean(name=name, sex=data.sex, birth_date=data.birth_date, phone=phone, area_id=data.area_id,
                  grid=data.grid.strip(), address_line=data.address_line.strip(),
                  resident_id=rid.number if rid else "", insurance_card=card, record_number=record_number)


def register(db: Session, *, by: User, data: PatientCreate, confirm_not_duplicate: bool = False,
             client_address: str = "") -> Patient:
    """Register a resident at the user's organisation (which is the care relationship).

    Refused with 409 when the resident ID or insurance card is already on file, and with
    `LikelyDuplicates` when fuzzy matching finds the person probably is, unless the user
    has looked and confirmed these are different people.
    """
    if by.role not in REGISTERING_ROLES:
        raise AccessDenied("您的角色不能为居民建档 / your role may not register residents")
    clean = _validate_new(db, data, by=by)
    if clean.resident_id:
        _refuse_taken(db, kind=IdentifierType.RESIDENT_ID, value=clean.resident_id, field="resident_id")
    if clean.insurance_card:
        _refuse_taken(db, kind=IdentifierType.INSURANCE_CARD, value=clean.insurance_card, field="insurance_card")
    if clean.record_number:
        _refuse_taken(db, kind=IdentifierType.MEDICAL_RECORD, value=clean.record_number,
                      issuer_id=by.organisation_id, field="record_number")

    candidates = matching.find_candidates(
        db, name=clean.name, birth_date=clean.birth_date, sex=str(clean.sex), phone=clean.phone,
        area_id=clean.area_id, resident_id=clean.resident_id, insurance_card=clean.insurance_card)
    actor = actor_of(by, client_address)
    if candidates and not confirm_not_duplicate:
        rows = candidate_rows(db, candidates)
        _audit_disclosure(actor, rows, action="patient.duplicate_warning")
        raise LikelyDuplicates(
            f"发现 {len(rows)} 条可能是同一人的档案，请核对；确认不是同一人后再提交 / {len(rows)} existing "
            "record(s) look like the same person; check them, and confirm they are different people to continue",
            candidates=rows)

    pinyin, initials = matching.pinyin_of(clean.name)
    patient = Patient(name=clean.name, pinyin=pinyin, pinyin_initials=initials, sex=clean.sex,
                      birth_date=clean.birth_date, phone=clean.phone, area_id=clean.area_id, grid=clean.grid,
                      address_line=clean.address_line, created_by_user_id=by.id)
    db.add(patient)
    db.flush()
    if clean.resident_id:
        db.add(PatientIdentifier(patient_id=patient.id, type=IdentifierType.RESIDENT_ID, value=clean.resident_id))
    if clean.insurance_card:
        db.add(PatientIdentifier(patient_id=patient.id, type=IdentifierType.INSURANCE_CARD,
                                 value=clean.insurance_card))
    if clean.record_number:
        db.add(PatientIdentifier(patient_id=patient.id, type=IdentifierType.MEDICAL_RECORD,
                                 value=clean.record_number, issuer_organisation_id=by.organisation_id))
    if by.organisation_id is not None:
        db.add(PatientRegistration(patient_id=patient.id, organisation_id=by.organisation_id,
                                   registered_by_user_id=by.id))
    db.flush()
    detail: dict[str, Any] = {"organisation_id": by.organisation_id}
    if candidates:
        detail["confirmed_not_duplicate_of"] = {str(c.patient_id): c.score for c in candidates}
    audit.record(db, actor=actor, action="patient.create", patient_id=patient.id, purpose="registration",
                 resource=f"patient:{patient.id}", detail=detail)
    return patient


# ---------------------------------------------------------------------------------------------
# Search.

def _prefix(column: Any, prefix: str) -> ColumnElement[bool]:
    """`column LIKE 'prefix%'` written as a range, which an ordinary index serves on both databases."""
    return and_(column >= prefix, column < prefix[:-1] + chr(ord(prefix[-1]) + 1))


def _ids(db: Session, where: ColumnElement[bool], order: Any, limit: int) -> list[int]:
    """Ordered by the searched column, so the index that finds the rows also sorts them (an ORDER
    BY on another column makes planners walk that column's index instead)."""
    q = select(Patient.id).where(where, matching.live_only()).order_by(order, Patient.id).limit(limit)
    return list(db.scalars(q))


def _ids_by_identifier(db: Session, kind: IdentifierType, value: str, limit: int,
                       issuer_id: int | None = None) -> list[int]:
    q = select(PatientIdentifier.patient_id).where(PatientIdentifier.type == kind, PatientIdentifier.value == value)
    if kind == IdentifierType.MEDICAL_RECORD:
        if issuer_id is None:
            return []
        q = q.where(PatientIdentifier.issuer_organisation_id == issuer_id)
    return list(db.scalars(q.limit(limit)))


def _search_ids(db: Session, *, user: User, q: str, limit: int) -> tuple[str, list[int]]:
    compact = re.sub(r"[\s\-]", "", q)
    found: list[list[int]] = []
    if RESIDENT_ID_SHAPE.match(compact.upper()):
        kind = "resident_id"
        found.append(_ids_by_identifier(db, IdentifierType.RESIDENT_ID, compact.upper(), limit))
    elif compact.isdigit():
        if len(compact) < MIN_PHONE_TAIL:
            raise InvalidInput(f"按号码查找请至少输入 {MIN_PHONE_TAIL} 位数字 / enter at least {MIN_PHONE_TAIL} "
                               "digits to search by number", field_errors=[field_error("q", "too few digits")])
        kind = "number"
        found.append(_ids_by_identifier(db, IdentifierType.INSURANCE_CARD, compact, limit))
        found.append(_ids_by_identifier(db, IdentifierType.MEDICAL_RECORD, compact, limit, user.organisation_id))
        phone = normalise_phone(compact)
        found.append(_ids(db, Patient.phone == phone, Patient.phone, limit))
        # The last digits of a phone: a suffix match cannot use the phone index, so this one scans.
        found.append(_ids(db, Patient.phone.like(f"%{compact}"), Patient.phone, limit))
    elif re.fullmatch(r"[A-Za-z0-9]+", compact) and any(ch.isdigit() for ch in compact):
        kind = "number"
        found.append(_ids_by_identifier(db, IdentifierType.INSURANCE_CARD, compact.upper(), limit))
        found.append(_ids_by_identifier(db, IdentifierType.MEDICAL_RECORD, compact, limit, user.organisation_id))
    elif re.fullmatch(r"[A-Za-z ]+", q):
        kind = "pinyin"
        words = q.lower().split()
        if len(words) == 1:
            found.append(_ids(db, Patient.pinyin_initials == words[0], Patient.pinyin_initials, limit))
            found.append(_ids(db, _prefix(Patient.pinyin_initials, words[0]), Patient.pinyin_initials, limit))
        found.append(_ids(db, _prefix(Patient.pinyin, " ".join(words)), Patient.pinyin, limit))
    else:
        kind = "name"
        name = " ".join(q.split())
        found.append(_ids(db, Patient.name == name, Patient.name, limit))
        pinyin, _ = matching.pinyin_of(name)
        if pinyin:  # homophones: 王秀瑛 is found when 王秀英 is typed
            found.append(_ids(db, Patient.pinyin == pinyin, Patient.pinyin, limit))
        found.append(_ids(db, _prefix(Patient.name, name), Patient.name, limit))
    ordered: list[int] = []
    seen: set[int] = set()
    for ids in found:
        for pid in ids:
            if pid not in seen:
                seen.add(pid)
                ordered.append(pid)
    return kind, ordered[:limit]


def search(db: Session, *, user: User, q: str, limit: int = 50, client_address: str = "") -> list[SearchRow]:
    """Find residents by name, pinyin or its initials, resident ID, phone (4+ last digits),
    insurance card or this organisation's record number.

    Staff search the whole index, because a patient often turns up where they have no
    record yet; each row says whether the user may open it (`can_open`). Rows carry only
    name, sex, birth year, village and masked numbers; the search itself is audited.
    """
    if user.role == Role.HEALTH_BUREAU:
        raise AccessDenied("卫健局账号只能查看汇总数据 / health-bureau accounts see aggregates only")
    if user.role == Role.PATIENT:
        raise AccessDenied("居民账号不能查找其他居民 / patient accounts cannot search residents")
    q = (q or "").strip()
    if not q:
        return []
    if len(q) > 60:
        raise InvalidInput("查询内容过长 / search text too long", field_errors=[field_error("q", "at most 60")])
    limit = max(1, min(limit, MAX_SEARCH_RESULTS))
    kind, ids = _search_ids(db, user=user, q=q, limit=limit)
    patients = {p.id: p for p in db.execute(select(Patient).where(Patient.id.in_(ids))).scalars()} if ids else {}
    rids = _resident_ids(db, ids)
    areas = _area_names(db, (p.area_id for p in patients.values()))
    rows = []
    for pid in ids:
        p = patients[pid]
        rows.append(SearchRow(
            id=p.id, name=p.name, sex=p.sex, birth_year=p.birth_date.year, area_name=areas.get(p.area_id or 0, ""),
            masked_id=mask_resident_id(rids.get(pid, "")), masked_phone=mask_phone(p.phone),
            can_open=decide(db, user=user, patient_id=pid) is not None))
    audit.record(db, actor=actor_of(user, client_address), action="patient.search",
                 detail={"kind": kind, "results": len(rows), "patient_ids": ids[:50]})
    return rows


# ---------------------------------------------------------------------------------------------
# The record.

def merge_out(db: Session, merge: PatientMerge) -> MergeOut:
    names = dict(db.execute(select(User.id, User.display_name).where(
        User.id.in_([u for u in (merge.merged_by_user_id, merge.undone_by_user_id) if u is not None]))).all())
    moved = {key: len(value) for key, value in (merge.moved or {}).items()}
    return MergeOut(id=merge.id, survivor_id=merge.survivor_id, merged_id=merge.merged_id, reason=merge.reason,
                    merged_at=merge.merged_at, merged_by=names.get(merge.merged_by_user_id, ""), moved=moved,
                    undone_at=merge.undone_at, undone_by=names.get(merge.undone_by_user_id or 0, ""),
                    undo_reason=merge.undo_reason or "")


def view(db: Session, *, user: User, patient: Patient, purpose: str = "",
         requested_id: int | None = None) -> PatientOut:
    """The record as this user may see it (call only after `require_patient_access`)."""
    full = sees_full_identifiers(user, patient.id)
    identifiers = db.execute(select(PatientIdentifier, Organisation.name).outerjoin(
        Organisation, Organisation.id == PatientIdentifier.issuer_organisation_id
    ).where(PatientIdentifier.patient_id == patient.id).order_by(PatientIdentifier.id)).all()
    ident_out = []
    resident_id = ""
    for ident, issuer_name in identifiers:
        national = ident.type in (IdentifierType.RESIDENT_ID, IdentifierType.INSURANCE_CARD)
        value = ident.value if (full or not national) else mask_resident_id(ident.value)
        if ident.type == IdentifierType.RESIDENT_ID and not resident_id:
            resident_id = value
        ident_out.append(IdentifierOut(id=ident.id, type=ident.type, value=value, masked=national and not full,
                                       issuer_organisation_id=ident.issuer_organisation_id,
                                       issuer_name=issuer_name or ""))
    registrations = [
        RegistrationOut(organisation_id=reg.organisation_id, organisation_name=org_name,
                        registered_at=reg.registered_at)
        for reg, org_name in db.execute(select(PatientRegistration, Organisation.name).join(
            Organisation, Organisation.id == PatientRegistration.organisation_id
        ).where(PatientRegistration.patient_id == patient.id).order_by(PatientRegistration.registered_at))
    ]
    panels = [
        PanelOut(team_id=entry.team_id, team_name=team_name, since=entry.since)
        for entry, team_name in db.execute(select(TeamPanelEntry, Team.name).join(
            Team, Team.id == TeamPanelEntry.team_id).where(TeamPanelEntry.patient_id == patient.id))
    ]
    merges = [merge_out(db, m) for m in db.execute(select(PatientMerge).where(
        (PatientMerge.survivor_id == patient.id) | (PatientMerge.merged_id == patient.id)
    ).order_by(PatientMerge.merged_at.desc(), PatientMerge.id.desc())).scalars()]
    area_name = db.execute(select(Area.name).where(Area.id == patient.area_id)).scalar() if patient.area_id else ""
    return PatientOut(
        id=patient.id, requested_id=requested_id, name=patient.name, pinyin=patient.pinyin, sex=patient.sex,
        birth_date=patient.birth_date, phone=patient.phone, area_id=patient.area_id, area_name=area_name or "",
        grid=patient.grid, address_line=patient.address_line, deceased_on=patient.deceased_on,
        resident_id=resident_id, resident_id_masked=not full, identifiers=ident_out, registrations=registrations,
        panels=panels, merges=merges, access_purpose=purpose, created_at=patient.created_at)


def get(db: Session, *, user: User, patient_id: int, client_address: str = "") -> PatientOut:
    """The audited read of one record; a merged id leads to the surviving record."""
    patient = resolve_patient(db, patient_id)
    grant = require_patient_access(db, user=user, patient_id=patient.id, action="patient.read",
                                   client_address=client_address)
    return view(db, user=user, patient=patient, purpose=grant.purpose,
                requested_id=patient_id if patient.id != patient_id else None)


def update(db: Session, *, by: User, patient_id: int, data: PatientUpdate, client_address: str = "") -> Patient:
    """Change demographics (only the fields sent), with the same checks as registration."""
    patient = resolve_patient(db, patient_id)
    require_patient_access(db, user=by, patient_id=patient.id, action="patient.update", client_address=client_address)
    sent = data.model_fields_set
    problems = _Problems.new()
    name = _clean_name(data.name or "", problems) if "name" in sent else patient.name
    sex = data.sex if "sex" in sent and data.sex is not None else patient.sex
    born = data.birth_date if "birth_date" in sent and data.birth_date is not None else patient.birth_date
    _check_birth_date(born, problems)
    phone = _clean_phone(data.phone or "", problems) if "phone" in sent else patient.phone
    if "area_id" in sent:
        _check_area(db, data.area_id, problems)
    if "deceased_on" in sent and data.deceased_on is not None and (
            data.deceased_on < born or data.deceased_on > date.today()):
        problems.add("deceased_on", "死亡日期不合理", "date of death must lie between birth and today")
    current_rid = _resident_ids(db, [patient.id]).get(patient.id, "")
    new_rid: ResidentId | None = None
    if "resident_id" in sent:
        if not (data.resident_id or "").strip():
            problems.add("resident_id", "身份证号不能清空", "a resident ID cannot be removed")
        else:
            new_rid = _parse_resident_id(data.resident_id, problems)
    # A stored number is re-read leniently: a legacy record must stay editable.
    rid = new_rid if "resident_id" in sent else _parse_resident_id(current_rid, _Problems.new())
    _check_id_agrees(rid, sex=str(sex), born=born, problems=problems)
    problems.raise_if_any()
    if new_rid is not None and new_rid.number != current_rid:
        _refuse_taken(db, kind=IdentifierType.RESIDENT_ID, value=new_rid.number, field="resident_id", mine=patient.id)

    changed = []
    for field_name, value in (("name", name), ("sex", sex), ("birth_date", born), ("phone", phone),
                              ("area_id", data.area_id if "area_id" in sent else patient.area_id),
                              ("grid", (data.grid or "").strip() if "grid" in sent else patient.grid),
                              ("address_line", (data.address_line or "").strip() if "address_line" in sent
                               else patient.address_line),
                              ("deceased_on", data.deceased_on if "deceased_on" in sent else patient.deceased_on)):
        if getattr(patient, field_name) != value:
            setattr(patient, field_name, value)
            changed.append(field_name)
    if "name" in changed:
        patient.pinyin, patient.pinyin_initials = matching.pinyin_of(name)
    if new_rid is not None and new_rid.number != current_rid:
        row = db.execute(select(PatientIdentifier).where(
            PatientIdentifier.patient_id == patient.id, PatientIdentifier.type == IdentifierType.RESIDENT_ID,
            PatientIdentifier.value == current_rid)).scalar() if current_rid else None
        if row is not None:
            row.value = new_rid.number
        else:
            db.add(PatientIdentifier(patient_id=patient.id, type=IdentifierType.RESIDENT_ID, value=new_rid.number))
        changed.append("resident_id")
    db.flush()
    audit.record(db, actor=actor_of(by, client_address), action="patient.updated", patient_id=patient.id,
                 resource=f"patient:{patient.id}", detail={"changed": changed})
    return patient


def add_identifier(db: Session, *, by: User, patient_id: int, kind: IdentifierType, value: str,
                   issuer_organisation_id: int | None = None, client_address: str = "") -> PatientIdentifier:
    """Add a resident ID (if none yet), an insurance card or a record number of the user's organisation."""
    patient = resolve_patient(db, patient_id)
    require_patient_access(db, user=by, patient_id=patient.id, action="patient.update", client_address=client_address)
    problems = _Problems.new()
    issuer: int | None = None
    if kind == IdentifierType.RESIDENT_ID:
        rid = _parse_resident_id(value, problems)
        _check_id_agrees(rid, sex=str(patient.sex), born=patient.birth_date, problems=problems)
        problems.raise_if_any()
        assert rid is not None
        clean = rid.number
        if _resident_ids(db, [patient.id]):
            raise Conflict("该居民已有身份证号；如需更正请修改档案 / the resident already has a resident ID; "
                           "edit the record to correct it", code="resident_id_exists",
                           field_errors=[field_error("value", "already has a resident ID")])
    elif kind == IdentifierType.INSURANCE_CARD:
        clean = _clean_insurance_card(value, problems)
        if not clean:
            problems.add("value", "请填写医保卡号", "insurance card number is required")
        problems.raise_if_any()
    else:
        clean = (value or "").strip()
        issuer = issuer_organisation_id or by.organisation_id
        if not RECORD_NUMBER_RE.match(clean):
            problems.add("value", "病案号只能包含字母、数字和 - _ /", "record number: letters, digits, - _ / only")
        if issuer is None:
            problems.add("issuer_organisation_id", "请指定发号机构", "issuing organisation is required")
        elif by.role != Role.ALLIANCE_ADMIN and issuer != by.organisation_id:
            problems.add("issuer_organisation_id", "只能登记本机构的病案号",
                         "you may add record numbers of your own organisation only")
        elif db.get(Organisation, issuer) is None:
            problems.add("issuer_organisation_id", f"机构 {issuer} 不存在", f"unknown organisation {issuer}")
        problems.raise_if_any()
    _refuse_taken(db, kind=kind, value=clean, issuer_id=issuer, field="value", mine=patient.id)
    if _owner_of(db, kind, clean, issuer) == patient.id:
        raise Conflict("该号码已在本档案中 / this number is already on the record", code="identifier_exists",
                       field_errors=[field_error("value", "already on this record")])
    ident = PatientIdentifier(patient_id=patient.id, type=kind, value=clean, issuer_organisation_id=issuer)
    db.add(ident)
    db.flush()
    audit.record(db, actor=actor_of(by, client_address), action="patient.identifier_added", patient_id=patient.id,
                 resource=f"patient_identifier:{ident.id}", detail={"type": str(kind)})
    return ident


def duplicates(db: Session, *, user: User, patient_id: int, client_address: str = "",
               limit: int = 10) -> list[CandidateOut]:
    """Likely duplicates of a record, at the lower review threshold, for someone who may see it."""
    patient = resolve_patient(db, patient_id)
    require_patient_access(db, user=user, patient_id=patient.id, action="patient.duplicates",
                           client_address=client_address)
    rows = candidate_rows(db, matching.find_candidates_for(db, patient.id, limit=limit))
    actor = actor_of(user, client_address)
    for row in rows:
        audit.record(db, actor=actor, action="patient.duplicate_review", patient_id=row.patient_id,
                     purpose="duplicate_check", detail={"of": patient.id, "score": row.score})
    return rows


# ---------------------------------------------------------------------------------------------
# Merge and undo.

def patient_references() -> list[Column[Any]]:
    """Every column in the schema holding a patient id, except the merge bookkeeping itself."""
    import healthrelay.models  # noqa: F401  (every domain's tables in the metadata)

    found = []
    for table in Base.metadata.sorted_tables:
        if table.name in (PatientMerge.__tablename__, Patient.__tablename__):
            continue  # patients.merged_into_id records the merge; patient_merges is its history
        for column in table.columns:
            if any(fk.column.table.name == Patient.__tablename__ and fk.column.name == "id"
                   for fk in column.foreign_keys):
                found.append(column)
    return found


def _key_columns(table: Table, column: Column[Any]) -> list[Column[Any]]:
    """Columns that identify a row across the move (the primary key without the moved column)."""
    keys = [c for c in table.primary_key.columns if c.name != column.name]
    if not keys:
        raise RuntimeError(f"{table.name}: its primary key is only {column.name}; merge cannot track its rows")
    return keys


def _unique_sets(table: Table, column: Column[Any]) -> list[list[Column[Any]]]:
    """Unique constraints, unique indexes and composite primary keys that include `column`."""
    sets: list[list[Column[Any]]] = []
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint):
            cols = list(constraint.columns)
            if any(c.name == column.name for c in cols) and (
                    isinstance(constraint, UniqueConstraint) or len(cols) > 1):
                sets.append(cols)
    for index in table.indexes:
        cols = [c for c in index.columns if isinstance(c, Column)]
        if index.unique and any(c.name == column.name for c in cols):
            sets.append(cols)
    return sets


def _where_keys(key_cols: Sequence[Column[Any]], keys: Sequence[Any]) -> ColumnElement[bool]:
    if len(key_cols) == 1:
        return key_cols[0].in_(keys)
    return tuple_(*key_cols).in_([tuple(k) for k in keys])


def _key_of(row: Any, key_cols: Sequence[Column[Any]]) -> Any:
    return row[key_cols[0].name] if len(key_cols) == 1 else [row[c.name] for c in key_cols]


def _chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _dump(value: Any) -> Any:
    """A JSON-safe copy of a column value that `_load` turns back into the same value."""
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    return value


def _load(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        (tag, text), = value.items()
        if tag == "$datetime":
            return datetime.fromisoformat(text)
        if tag == "$date":
            return date.fromisoformat(text)
        if tag == "$decimal":
            return Decimal(text)
    return value


def _require_merge_role(by: User) -> None:
    if by.role not in ADMIN_ROLES:
        raise AccessDenied("只有医共体或机构管理员可以合并档案 / only alliance or organisation admins merge records")


def merge(db: Session, *, by: User, survivor_id: int, merged_id: int, reason: str,
          client_address: str = "") -> PatientMerge:
    """Fold a duplicate record into the survivor; every reference follows the survivor.

    Rows that would break a unique constraint once moved (both records registered at the
    same organisation, on the same panel) are link rows the survivor already has: they are
    deleted and kept in full in `PatientMerge.moved` ("deleted:<table>") so undo restores them.
    """
    _require_merge_role(by)
    reason = (reason or "").strip()
    if len(reason) < MIN_MERGE_REASON:
        raise InvalidInput(f"请写明合并理由（至少 {MIN_MERGE_REASON} 个字）/ state the reason (at least "
                           f"{MIN_MERGE_REASON} characters)", field_errors=[field_error("reason", "too short")])
    if survivor_id == merged_id:
        raise InvalidInput("不能把档案合并到自己 / a record cannot be merged into itself",
                           field_errors=[field_error("merged_id", "same as survivor_id")])
    survivor = db.get(Patient, survivor_id)
    merged = db.get(Patient, merged_id)
    for field, patient, pid in (("survivor_id", survivor, survivor_id), ("merged_id", merged, merged_id)):
        if patient is None:
            raise NotFound(f"没有编号为 {pid} 的居民 / no patient with id {pid}",
                           field_errors=[field_error(field, "unknown patient")])
        if patient.merged_into_id is not None:
            raise Conflict(f"档案 #{pid} 已被合并到 #{patient.merged_into_id} / record #{pid} was already merged "
                           f"into #{patient.merged_into_id}", code="already_merged",
                           field_errors=[field_error(field, "already merged")])
    assert survivor is not None and merged is not None
    for pid in (survivor.id, merged.id):
        require_patient_access(db, user=by, patient_id=pid, action="patient.merge", client_address=client_address)
    ids = _resident_ids(db, [survivor.id, merged.id])
    if len(ids) == 2 and ids[survivor.id] != ids[merged.id]:
        raise Conflict("两份档案的身份证号不同，应是两个人；如其中一个号码录错，请先更正 / the two records carry "
                       "different resident IDs, so they are different people; correct a wrong ID first",
                       code="different_resident_ids")

    moved: dict[str, Any] = {}
    for column in patient_references():
        table = column.table
        assert isinstance(table, Table)
        key_cols = _key_columns(table, column)
        # 1. Link rows the survivor already has: delete the merged side's copy, keep it for undo.
        for unique in _unique_sets(table, column):
            other = table.alias("survivor_side")
            same = [other.c[column.name] == survivor.id] + [
                other.c[c.name] == table.c[c.name] for c in unique if c.name != column.name]
            clashing = db.execute(select(table).where(
                table.c[column.name] == merged.id, exists(select(other.c[column.name]).where(*same))
            )).mappings().all()
            for row in clashing:
                moved.setdefault(f"deleted:{table.name}", []).append({k: _dump(v) for k, v in row.items()})
                db.execute(delete(table).where(*[c == row[c.name] for c in table.primary_key.columns]))
        # 2. Everything else moves; the keys are recorded so undo moves exactly these back.
        keys = [_key_of(row, key_cols) for row in db.execute(
            select(*key_cols).where(column == merged.id)).mappings()]
        if keys:
            moved[f"{table.name}.{column.name}"] = keys
            db.execute(sql_update(table).where(column == merged.id).values({column.name: survivor.id}))
    db.expire_all()
    merged = db.get(Patient, merged_id)
    assert merged is not None
    merged.merged_into_id = survivor_id
    record = PatientMerge(survivor_id=survivor_id, merged_id=merged_id, reason=reason, moved=moved,
                          merged_by_user_id=by.id, merged_at=utcnow())
    db.add(record)
    db.flush()
    counts = {key: len(value) for key, value in moved.items()}
    actor = actor_of(by, client_address)
    for pid in (survivor_id, merged_id):
        audit.record(db, actor=actor, action="patient.merged", patient_id=pid, purpose="record_management",
                     resource=f"patient_merge:{record.id}",
                     detail={"survivor_id": survivor_id, "merged_id": merged_id, "moved": counts})
    return record


def undo_merge(db: Session, *, by: User, merge_id: int, reason: str, client_address: str = "") -> PatientMerge:
    """Move back exactly the rows the merge moved, restore the link rows it deleted, and let
    the merged record stand on its own again. Rows added to the survivor since stay there."""
    _require_merge_role(by)
    reason = (reason or "").strip()
    if len(reason) < MIN_MERGE_REASON:
        raise InvalidInput(f"请写明撤销理由（至少 {MIN_MERGE_REASON} 个字）/ state the reason (at least "
                           f"{MIN_MERGE_REASON} characters)", field_errors=[field_error("reason", "too short")])
    record = db.get(PatientMerge, merge_id)
    if record is None:
        raise NotFound(f"没有编号为 {merge_id} 的合并记录 / no merge {merge_id}")
    if record.undone_at is not None:
        raise Conflict("该合并已撤销 / this merge was already undone", code="already_undone")
    survivor = db.get(Patient, record.survivor_id)
    merged = db.get(Patient, record.merged_id)
    assert survivor is not None and merged is not None
    if survivor.merged_into_id is not None:
        raise Conflict(f"档案 #{survivor.id} 之后又被合并到 #{survivor.merged_into_id}，请先撤销那次合并 / record "
                       f"#{survivor.id} was later merged into #{survivor.merged_into_id}; undo that merge first",
                       code="undo_later_merge_first")
    require_patient_access(db, user=by, patient_id=survivor.id, action="patient.merge_undo",
                           client_address=client_address)
    import healthrelay.models  # noqa: F401

    tables = Base.metadata.tables
    restored = 0
    for key, values in (record.moved or {}).items():
        if key.startswith("deleted:"):
            continue
        table_name, column_name = key.rsplit(".", 1)
        table = tables[table_name]
        column = table.c[column_name]
        key_cols = _key_columns(table, column)
        for chunk in _chunks(values):
            db.execute(sql_update(table).where(column == survivor.id, _where_keys(key_cols, chunk))
                       .values({column_name: merged.id}))
    for key, rows in (record.moved or {}).items():
        if not key.startswith("deleted:"):
            continue
        table = tables[key.removeprefix("deleted:")]
        pk_cols = list(table.primary_key.columns)
        for row in rows:
            values = {name: _load(value) for name, value in row.items() if name in table.c}
            taken = db.execute(select(pk_cols[0]).where(*[c == values.get(c.name) for c in pk_cols])).first()
            if taken is not None and len(pk_cols) == 1:
                values.pop(pk_cols[0].name)  # the id was reused meanwhile (SQLite may): take a new one
            db.execute(insert(table).values(values))
            restored += 1
    db.expire_all()
    merged = db.get(Patient, record.merged_id)
    record = db.get(PatientMerge, merge_id)
    assert merged is not None and record is not None
    merged.merged_into_id = None
    record.undone_at = utcnow()
    record.undone_by_user_id = by.id
    record.undo_reason = reason
    db.flush()
    actor = actor_of(by, client_address)
    for pid in (record.survivor_id, record.merged_id):
        audit.record(db, actor=actor, action="patient.merge_undone", patient_id=pid, purpose="record_management",
                     resource=f"patient_merge:{record.id}", detail={"restored_rows": restored, "reason": reason})
    return record


# ---------------------------------------------------------------------------------------------
# Page helpers.

def village_choices(db: Session) -> list[tuple[str, list[tuple[int, str]]]]:
    """Villages grouped by township, for the registration form's select."""
    townships = dict(db.execute(select(Area.id, Area.name).where(Area.level == AreaLevel.TOWNSHIP)).all())
    groups: dict[str, list[tuple[int, str]]] = {}
    for area_id, name, parent_id in db.execute(select(Area.id, Area.name, Area.parent_id).where(
            Area.level == AreaLevel.VILLAGE).order_by(Area.parent_id, Area.code)):
        groups.setdefault(townships.get(parent_id, ""), []).append((area_id, name))
    return list(groups.items())
