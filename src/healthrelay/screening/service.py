"""Screening rules: planning events, on-site registration through the master patient index, results, school imports.

What a finding leads to is the point: an abnormal result becomes a task for the resident's own family-doctor team
(`chronic.tasks.create_task`), and a known hypertensive's or diabetic's blood pressure or glucose becomes a chronic
reading the registry sees (`chronic.rules.apply_bp` / `apply_glucose`). Registration goes through the master
patient index (resident ID, else one confident match, else a new record), and a likely duplicate is shown to the
user rather than created. A tablet's retried POST carries the same client token and gets the first attendance.
"""

from __future__ import annotations

import csv
import enum
import io
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import JSON, String, any_, bindparam, case, exists, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.audit.export import _cell as safe_cell  # typed text that Excel would take for a formula
from healthrelay.chronic import rules as chronic_rules
from healthrelay.chronic import service as chronic_service
from healthrelay.chronic import tasks as chronic_tasks
from healthrelay.chronic.models import ChronicEnrolment, ChronicReading, ChronicTask
from healthrelay.core.db import LOCAL_TZ, local_today, take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Area, Organisation, Team, TeamMember
from healthrelay.patients import matching
from healthrelay.patients import service as patients
from healthrelay.patients.identity import check_agrees, parse_resident_id
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier, PatientRegistration, Sex
from healthrelay.patients.schemas import PatientCreate
from healthrelay.screening.models import (
    EVENT_KINDS,
    ScreeningAttendance,
    ScreeningEvent,
    ScreeningImport,
    ScreeningResult,
    ScreeningService,
)

STAFF_ROLES = frozenset({Role.CLINICIAN, Role.ORG_ADMIN})
# A single match at this score (same name, birth date and sex at least) is taken as the resident without asking.
CONFIDENT_MATCH = 85
TASK_DAYS = 14
TASK_DAYS_DANGER = 7
MAX_EVENT_DAYS = 31
IMPORT_CHUNK = 500
MAX_IMPORT_ROWS = 20000
# Rows read past MAX_IMPORT_ROWS before a sheet is refused unread (a header and blank rows are not students).
IMPORT_ROWS_MARGIN = 1000
MAX_INT4 = 2**31 - 1  # the largest PostgreSQL integer
MAX_IMPORT_BYTES = 10 * 1024 * 1024
TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")


def _err(name: str, zh: str, en: str) -> dict[str, Any]:
    return field_error(name, f"{zh} / {en}")


# ---------------------------------------------------------------------------- services and access

def services_of(db: Session) -> list[ScreeningService]:
    return list(db.scalars(select(ScreeningService).where(ScreeningService.active.is_(True))
                           .order_by(ScreeningService.sort_order, ScreeningService.code)))


def get_event(db: Session, event_id: int) -> ScreeningEvent:
    event = db.get(ScreeningEvent, event_id)
    if event is None:
        raise NotFound(f"没有编号为 {event_id} 的活动 / no screening event {event_id}")
    return event


def _runs_event(user: User) -> Any:
    """The events a staff member runs, as a condition on ScreeningEvent: their organisation hosts it, or they are on
    its team. One rule for running an event (`may_run`), listing it and the care relationship an attendance gives
    (`_attended_our_event`). None when it matches no event."""
    ways = []
    if user.organisation_id is not None:
        ways.append(ScreeningEvent.host_organisation_id == user.organisation_id)
    if user.practitioner_id is not None:
        ways.append(ScreeningEvent.team_id.in_(select(TeamMember.team_id)
                                               .where(TeamMember.practitioner_id == user.practitioner_id)))
    return or_(*ways) if ways else None


def may_run(db: Session, user: User, event: ScreeningEvent) -> bool:
    """Staff of the host organisation, members of the event's team, and alliance admins run an event."""
    if user.role == Role.ALLIANCE_ADMIN:
        return True
    if user.role not in STAFF_ROLES:
        return False
    if user.organisation_id is not None and user.organisation_id == event.host_organisation_id:
        return True
    condition = _runs_event(user)
    return condition is not None and bool(db.scalar(select(exists().where(ScreeningEvent.id == event.id,
                                                                          condition))))


def require_runner(db: Session, user: User, event: ScreeningEvent) -> None:
    if not may_run(db, user, event):
        raise AccessDenied("只有主办机构或活动团队的医务人员可以操作本次活动 / only staff of the host organisation "
                           "or the event's team work on this event")


def visible_events(db: Session, *, user: User, limit: int = 100) -> list[ScreeningEvent]:
    """Events a user may see: all for alliance admins and the health bureau, else their organisation's and their
    teams' events."""
    query = select(ScreeningEvent).order_by(ScreeningEvent.starts_at.desc()).limit(limit)
    if user.role not in (Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU):
        condition = _runs_event(user)
        if condition is None:
            return []
        query = query.where(condition)
    return list(db.scalars(query))


def may_see_figures(db: Session, user: User, event: ScreeningEvent) -> bool:
    """The counts (no names) are for the runners, the health bureau and alliance admins."""
    return user.role in (Role.HEALTH_BUREAU, Role.ALLIANCE_ADMIN) or may_run(db, user, event)


def event_for_figures(db: Session, *, user: User, event_id: int) -> ScreeningEvent:
    """The event, for someone who may see its counts (404, else 403)."""
    event = get_event(db, event_id)
    if not may_see_figures(db, user, event):
        raise AccessDenied("您无权查看本次活动 / you may not see this event")
    return event


@access.care_relationship_check
def _attended_our_event(db: Session, user: User, patient_id: int) -> str | None:
    """A resident seen at a free clinic or check-up is in the care of those who run the event (`may_run`)."""
    if user.role not in STAFF_ROLES:
        return None
    condition = _runs_event(user)
    if condition is None:
        return None
    found = db.scalar(select(exists().where(
        ScreeningAttendance.patient_id == patient_id, ScreeningAttendance.event_id == ScreeningEvent.id, condition)))
    return "screening_attendance" if found else None


# ---------------------------------------------------------------------------- planning

@dataclass
class EventPlan:
    kind: str
    title: str
    host_organisation_id: int
    starts_at: datetime
    ends_at: datetime
    services: list[str]
    team_id: int | None = None
    place: str = ""
    area_id: int | None = None
    departments: list[str] = field(default_factory=list)
    notes: str = ""


def temporary_number() -> str:
    """A unique placeholder until the row has its id (two plans at once must not share a number)."""
    return f"tmp-{uuid.uuid4().hex[:24]}"


def event_number(day: date, event_id: int) -> str:
    """SC20261205-0042: the day it was planned and the event's id, like the referrals' numbers."""
    return f"SC{day:%Y%m%d}-{event_id:04d}"


def plan_event(db: Session, *, by: User, plan: EventPlan) -> ScreeningEvent:
    """Plan an event; every problem is named before anything is written."""
    errors: list[dict[str, Any]] = []
    if plan.kind not in EVENT_KINDS:
        errors.append(_err("kind", "活动类型须为义诊、巡回体检或学校体检",
                           "kind must be free_clinic, mobile_checkup or school_checkup"))
    title = " ".join((plan.title or "").split())
    if not title:
        errors.append(_err("title", "请填写活动名称", "the title is required"))
    elif len(title) > 200:
        errors.append(_err("title", "活动名称最多 200 字", "the title is at most 200 characters"))
    host = db.get(Organisation, plan.host_organisation_id)
    if host is None:
        errors.append(_err("host_organisation_id", "没有这个机构", "unknown organisation"))
    elif by.role != Role.ALLIANCE_ADMIN and (by.role not in STAFF_ROLES or by.organisation_id != host.id):
        raise AccessDenied("只能为本机构策划活动 / you plan events for your own organisation only")
    team = db.get(Team, plan.team_id) if plan.team_id is not None else None
    if plan.team_id is not None and team is None:
        errors.append(_err("team_id", "没有这个团队", "unknown team"))
    elif team is not None and team.organisation_id != plan.host_organisation_id:
        errors.append(_err("team_id", "只能选择主办机构的团队", "the team must belong to the host organisation"))
    if plan.area_id is not None and db.get(Area, plan.area_id) is None:
        errors.append(_err("area_id", "没有这个地区", "unknown area"))
    if plan.starts_at.tzinfo is None or plan.ends_at.tzinfo is None:
        raise ValueError("event times must be aware")
    if plan.ends_at <= plan.starts_at:
        errors.append(_err("ends_at", "结束时间须晚于开始时间", "the end must be after the start"))
    elif plan.ends_at - plan.starts_at > timedelta(days=MAX_EVENT_DAYS):
        errors.append(_err("ends_at", f"一次活动最长 {MAX_EVENT_DAYS} 天",
                           f"an event lasts at most {MAX_EVENT_DAYS} days"))
    known = {s.code for s in services_of(db)}
    wanted = list(dict.fromkeys(s.strip() for s in plan.services if s.strip()))
    if not wanted:
        errors.append(_err("services", "请至少选择一项服务", "choose at least one service"))
    unknown = [s for s in wanted if s not in known]
    if unknown:
        errors.append(_err("services", f"未知的服务：{', '.join(unknown)}", f"unknown services: {', '.join(unknown)}"))
    departments = [d.strip()[:50] for d in plan.departments if d.strip()][:20]
    if len(plan.place or "") > 200:
        errors.append(_err("place", "地点最多 200 字", "the place is at most 200 characters"))
    if errors:
        raise InvalidInput("活动信息有误 / the event has errors", field_errors=errors)
    event = ScreeningEvent(number=temporary_number(), kind=plan.kind, title=title,
                           host_organisation_id=plan.host_organisation_id, team_id=plan.team_id,
                           place=(plan.place or "").strip(), area_id=plan.area_id, starts_at=plan.starts_at,
                           ends_at=plan.ends_at, departments=departments, services=wanted, status="planned",
                           notes=(plan.notes or "").strip()[:4000], created_by_user_id=by.id, created_at=utcnow())
    db.add(event)
    db.flush()
    event.number = event_number(local_today(), event.id)
    db.flush()
    audit.record(db, actor=access.actor_of(by), action="screening.event.plan", resource=f"screening_event:{event.id}",
                 detail={"kind": event.kind, "services": wanted})
    return event


def set_status(db: Session, *, by: User, event_id: int, status: str) -> ScreeningEvent:
    """planned → open → closed; a closed event takes no more registrations or results."""
    event = get_event(db, event_id)
    require_runner(db, by, event)
    allowed = {"open": ("planned",), "closed": ("planned", "open")}
    if status not in allowed:
        raise InvalidInput("状态须为 open 或 closed / status must be open or closed",
                           field_errors=[field_error("status", "open | closed")])
    if event.status not in allowed[status]:
        raise Conflict(f"活动当前为 {event.status}，不能改为 {status} / the event is {event.status}; it cannot become "
                       f"{status}", code="bad_transition")
    event.status = status
    if status == "open":
        event.opened_at = utcnow()
    else:
        event.closed_at = utcnow()
    audit.record(db, actor=access.actor_of(by), action=f"screening.event.{status}",
                 resource=f"screening_event:{event.id}")
    return event


def set_counts(db: Session, *, by: User, event_id: int, leaflets_given: int, medicines_given: int,
               medicines_value_fen: int) -> ScreeningEvent:
    """The counts people type in: leaflets and medicines handed out (and the medicines' value)."""
    event = get_event(db, event_id)
    require_runner(db, by, event)
    errors = [_err(name, "须为 0 到 1000000 之间的整数", "must be a whole number from 0 to 1,000,000")
              for name, value in (("leaflets_given", leaflets_given), ("medicines_given", medicines_given))
              if not 0 <= value <= 1_000_000]
    if not 0 <= medicines_value_fen <= MAX_INT4:
        errors.append(_err("medicines_value", "药品金额不合理", "the medicines' value is implausible"))
    if errors:
        raise InvalidInput("数量有误 / the counts have errors", field_errors=errors)
    event.leaflets_given, event.medicines_given = leaflets_given, medicines_given
    event.medicines_value_fen = medicines_value_fen
    audit.record(db, actor=access.actor_of(by), action="screening.event.counts", resource=f"screening_event:{event.id}",
                 detail={"leaflets": leaflets_given, "medicines": medicines_given, "value_fen": medicines_value_fen})
    return event


def _require_open(event: ScreeningEvent) -> None:
    if event.status != "open":
        raise Conflict("活动未开始或已结束，不能登记 / the event is not open", code="event_not_open")


# ---------------------------------------------------------------------------- quick registration

def new_client_token() -> str:
    return uuid.uuid4().hex


def _by_token(db: Session, token: str) -> ScreeningAttendance | None:
    return db.scalar(select(ScreeningAttendance).where(ScreeningAttendance.client_token == token))


def _attend(db: Session, *, by: User, event: ScreeningEvent, patient_id: int, token: str, how: str,
            school: str = "", grade: str = "", class_name: str = "") -> ScreeningAttendance:
    """The resident's attendance: a second registration of the same person at the same event is the first one."""
    take_sqlite_write_lock(db)  # else on SQLite the savepoint below would be the transaction, committed on release
    existing = db.scalar(select(ScreeningAttendance).where(ScreeningAttendance.event_id == event.id,
                                                           ScreeningAttendance.patient_id == patient_id))
    if existing is not None:
        return existing
    row = ScreeningAttendance(event_id=event.id, patient_id=patient_id, client_token=token, how=how, school=school,
                              grade=grade, class_name=class_name, registered_at=utcnow(),
                              registered_by_user_id=by.id)
    try:
        with db.begin_nested():  # two tablets sending the same token (or person) at once: the second finds the first
            db.add(row)
            db.flush()
    except IntegrityError:
        found = _by_token(db, token) or db.scalar(select(ScreeningAttendance).where(
            ScreeningAttendance.event_id == event.id, ScreeningAttendance.patient_id == patient_id))
        if found is None:
            raise
        return found
    audit.record(db, actor=access.actor_of(by), action="screening.register", patient_id=patient_id,
                 resource=f"screening_attendance:{row.id}", detail={"event_id": event.id, "how": how})
    return row


def quick_register(db: Session, *, by: User, event_id: int, client_token: str, resident_id: str = "", name: str,
                   sex: str, birth_date: date | None, phone: str = "", village: int | None = None,
                   patient_id: int | None = None, confirm_new: bool = False) -> ScreeningAttendance:
    """Register a resident at the event through the master patient index.

    The resident ID finds the record; without one, a single confident match is taken; a likely duplicate stops
    with `patients.service.LikelyDuplicates` listing the candidates, and the user either picks one (`patient_id`,
    sent with the same details, and refused unless it is one of their candidates or holds the resident ID given)
    or confirms a new person (`confirm_new`). The same client token twice returns the first attendance.
    """
    token = (client_token or "").strip()
    if not TOKEN_RE.match(token):
        raise InvalidInput("缺少页面令牌，请刷新页面后重试 / the form's token is missing; reload the page",
                           field_errors=[field_error("client_token", "8-64 letters or digits")])
    earlier = _by_token(db, token)
    if earlier is not None:
        if earlier.event_id != event_id:
            raise Conflict("页面令牌属于另一场活动 / the token belongs to another event", code="token_reused")
        return earlier
    event = get_event(db, event_id)
    require_runner(db, by, event)
    _require_open(event)
    errors: list[dict[str, Any]] = []
    rid_number = ""
    if (resident_id or "").strip():
        try:
            rid = parse_resident_id(resident_id)
            rid_number = rid.number
            if birth_date is None:
                birth_date = rid.birth_date
            if sex not in ("M", "F"):
                sex = rid.sex
        except InvalidInput as exc:
            errors += exc.field_errors
    owner = patients._owner_of(db, IdentifierType.RESIDENT_ID, rid_number) if rid_number else None
    if patient_id is not None:  # picked from the candidates shown
        return _attend_chosen(db, by=by, event=event, token=token, patient_id=patient_id, owner=owner,
                              errors=errors, name=name, sex=sex, birth_date=birth_date, phone=phone,
                              village=village, rid_number=rid_number)
    if owner is not None and not errors:
        survivor = access.resolve_patient(db, owner)
        return _attend(db, by=by, event=event, patient_id=survivor.id, token=token, how="resident_id")
    if not " ".join((name or "").split()):
        errors.append(_err("name", "请填写姓名", "the name is required"))
    if sex not in ("M", "F"):
        errors.append(_err("sex", "请选择性别", "choose the sex"))
    if birth_date is None:
        errors.append(_err("birth_date", "请填写出生日期或身份证号", "enter the birth date or the resident ID"))
    if errors:
        raise InvalidInput("登记信息有误 / the registration has errors", field_errors=errors)
    assert birth_date is not None
    clean_phone = patients.normalise_phone(phone)
    if not confirm_new:
        found = _candidates(db, name=name, sex=sex, birth_date=birth_date, phone=clean_phone, village=village,
                            rid_number=rid_number)
        if len(found) == 1 and found[0].score >= CONFIDENT_MATCH and not rid_number:
            return _attend(db, by=by, event=event, patient_id=found[0].patient_id, token=token, how="match")
    data = PatientCreate(name=name, sex=Sex(sex), birth_date=birth_date, resident_id=rid_number or None,
                         phone=clean_phone, area_id=village)
    patient = patients.register(db, by=by, data=data, confirm_not_duplicate=confirm_new)
    return _attend(db, by=by, event=event, patient_id=patient.id, token=token, how="new")


def _candidates(db: Session, *, name: str, sex: str, birth_date: date, phone: str, village: int | None,
                rid_number: str) -> list[matching.Candidate]:
    """The residents who look like the person described: those a likely duplicate shows to pick from."""
    return matching.find_candidates(db, name=" ".join((name or "").split()), birth_date=birth_date, sex=sex,
                                    phone=phone, area_id=village, resident_id=rid_number)


def _attend_chosen(db: Session, *, by: User, event: ScreeningEvent, token: str, patient_id: int, owner: int | None,
                   errors: list[dict[str, Any]], name: str, sex: str, birth_date: date | None, phone: str,
                   village: int | None, rid_number: str) -> ScreeningAttendance:
    """A resident picked from the candidates shown. The pick must be one of them for the details the form sent
    back (or hold the resident ID given): an attendance puts the resident in the care of the event's staff, so a
    bare patient id would open any record."""
    if errors:
        raise InvalidInput("登记信息有误 / the registration has errors", field_errors=errors)
    allowed: set[int] = set()
    if owner is not None:
        allowed |= {owner, access.resolve_patient(db, owner).id}
    if birth_date is not None and sex in ("M", "F") and " ".join((name or "").split()):
        allowed |= {c.patient_id for c in _candidates(db, name=name, sex=sex, birth_date=birth_date,
                                                       phone=patients.normalise_phone(phone), village=village,
                                                       rid_number=rid_number)}
    if patient_id in allowed:  # checked before loading it: any other id is refused alike, found or not
        survivor = access.resolve_patient(db, patient_id)
        return _attend(db, by=by, event=event, patient_id=survivor.id, token=token, how="chosen")
    raise InvalidInput("所选居民与填写的姓名、性别、出生日期或身份证号不符，请重新查找 / the resident picked does not "
                       "match the name, sex, birth date or resident ID given; search again",
                       field_errors=[_err("patient_id", "所选居民不在候选名单中", "not among the candidates shown")])


def get_attendance(db: Session, *, user: User, event_id: int, attendance_id: int) -> ScreeningAttendance:
    row = db.get(ScreeningAttendance, attendance_id)
    if row is None or row.event_id != event_id:
        raise NotFound(f"本次活动没有编号为 {attendance_id} 的登记 / no attendance {attendance_id} at this event")
    event = get_event(db, event_id)
    require_runner(db, user, event)
    access.require_patient_access(db, user=user, patient_id=row.patient_id, action="screening.attendance")
    return row


# ---------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Judgement:
    abnormal: bool
    danger: bool
    finding: str


def _number(raw: Any, kind: str) -> float | int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool):
        raise ValueError
    value = float(str(raw).strip())
    if not math.isfinite(value):  # "nan", "inf", "1e999"
        raise ValueError
    if kind == "int":
        if value != int(value):
            raise ValueError
        return int(value)
    return value


def clean_values(service: ScreeningService, values: dict[str, Any]) -> dict[str, Any]:
    """The service's values, typed and range-checked; InvalidInput naming each bad field."""
    errors: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    specs = {spec["key"]: spec for spec in service.fields}
    for key in values:
        if key not in specs:
            errors.append(_err(key, f"{service.name}没有这一项", f"{service.name_en} records no {key!r}"))
    for key, spec in specs.items():
        raw = values.get(key)
        kind = spec["type"]
        label = f"{spec['zh']} / {spec['en']}"
        if kind in ("int", "float"):
            try:
                number = _number(raw, kind)
            except (TypeError, ValueError):
                errors.append(_err(key, f"{spec['zh']}须为{'整数' if kind == 'int' else '数字'}",
                                   f"{spec['en']} must be a {'whole number' if kind == 'int' else 'number'}"))
                continue
            if number is None:
                if spec.get("required"):
                    errors.append(_err(key, f"请填写{spec['zh']}", f"{spec['en']} is required"))
                continue
            low, high = spec.get("min"), spec.get("max")
            if (low is not None and number < low) or (high is not None and number > high):
                errors.append(_err(key, f"{spec['zh']} {number} 不合理，应在 {low}-{high} 之间",
                                   f"{spec['en']} {number} is implausible (allowed {low}-{high})"))
                continue
            out[key] = number
        elif kind == "choice":
            text = str(raw or "").strip()
            codes = [c[0] for c in spec.get("choices", [])]
            if not text:
                if spec.get("required"):
                    errors.append(_err(key, f"请选择{spec['zh']}", f"choose {spec['en']}"))
                continue
            if text not in codes:
                errors.append(_err(key, f"{label} 须为 {'、'.join(codes)} 之一", f"must be one of {', '.join(codes)}"))
                continue
            out[key] = text
        else:
            text = str(raw or "").strip()
            if len(text) > 500:
                errors.append(_err(key, f"{spec['zh']}最多 500 字", f"{spec['en']} is at most 500 characters"))
            elif text:
                out[key] = text
            elif spec.get("required"):
                errors.append(_err(key, f"请填写{spec['zh']}", f"{spec['en']} is required"))
    rule = service.rule.get("type")
    if rule == "bp" and "sbp" in out and "dbp" in out:
        errors += chronic_rules.check_bp(out["sbp"], out["dbp"], pulse=out.get("pulse"))
    elif rule == "bp" and "pulse" in out:
        errors += chronic_rules.check_bp(None, None, pulse=out["pulse"])
    if rule == "glucose" and "value" in out:
        errors += chronic_rules.check_glucose(out["value"], field="value")
    if rule == "bmi":
        errors += chronic_rules.check_body(out.get("weight_kg"), out.get("height_cm"))
    if errors:
        raise InvalidInput(f"{service.name}结果有误 / the {service.name_en} result has errors", field_errors=errors)
    return out


def judge(service: ScreeningService, values: dict[str, Any]) -> Judgement:
    """Abnormal and danger by the service's rule (data); `finding` says why, Chinese first."""
    rule = service.rule or {}
    kind = rule.get("type", "none")
    if kind == "bp" and "sbp" in values:
        sbp, dbp = values["sbp"], values["dbp"]
        danger = sbp >= rule["danger_sbp"] or dbp >= rule["danger_dbp"]
        if danger or sbp >= rule["sbp"] or dbp >= rule["dbp"]:
            return Judgement(True, danger, f"血压 {sbp}/{dbp} mmHg 偏高 / blood pressure {sbp}/{dbp} mmHg is high")
    elif kind == "glucose" and "value" in values:
        value, context = values["value"], values.get("context", "random")
        danger = value >= rule["danger_high"] or value <= rule["danger_low"]
        limit = rule.get(context, rule["random"])
        if danger or value >= limit:
            word = "偏低 / is low" if value <= rule["danger_low"] else "偏高 / is high"
            zh, en = word.split(" / ")
            return Judgement(True, danger, f"血糖 {value} mmol/L {zh} / glucose {value} mmol/L {en}")
    elif kind == "bmi":
        index = chronic_rules.bmi(values.get("weight_kg"), values.get("height_cm"))
        if index is not None and index >= rule["high"]:
            return Judgement(True, False, f"BMI {index} 肥胖 / BMI {index}: obese")
    elif kind == "choice":
        value = values.get(rule["field"])
        if value in rule.get("abnormal", []):
            danger = value in rule.get("danger", [])
            return Judgement(True, danger, f"{service.name}：{value} / {service.name_en}: {value}")
    elif kind == "below":
        keys = rule.get("fields") or [rule["field"]]
        low = [k for k in keys if k in values and (values[k] <= rule["value"] if rule.get("inclusive")
                                                    else values[k] < rule["value"])]
        if low:
            shown = ", ".join(f"{k} {values[k]}" for k in low)
            return Judgement(True, False, f"{service.name}异常（{shown}）/ {service.name_en} abnormal ({shown})")
    elif kind == "at_least":
        value = values.get(rule["field"])
        if value is not None and value >= rule["value"]:
            return Judgement(True, False, f"{service.name}：{value} / {service.name_en}: {value}")
    return Judgement(False, False, "")


def _active_enrolments(db: Session, patient_id: int) -> list[ChronicEnrolment]:
    return list(db.scalars(select(ChronicEnrolment).where(ChronicEnrolment.patient_id == patient_id,
                                                          ChronicEnrolment.status == "active")))


def _chronic_reading(db: Session, *, by: User | None, event: ScreeningEvent, patient_id: int, service_code: str,
                     values: dict[str, Any], danger: bool, at: datetime,
                     reading_id: int | None = None) -> ChronicReading | None:
    """A known hypertensive's or diabetic's BP or glucose from the event, so the registry sees it.

    `reading_id`: the reading this result wrote before (entered again): corrected in place, so one result is one
    reading; removed when the result no longer makes one. Returns the result's reading, if any."""
    earlier = db.get(ChronicReading, reading_id) if reading_id is not None else None
    enrolments = ([] if service_code not in ("bp", "glucose") or (service_code == "bp" and "sbp" not in values)
                  else _active_enrolments(db, patient_id))
    if not enrolments:
        if earlier is not None:
            db.delete(earlier)
            db.flush()
        return None
    reading = earlier or ChronicReading(patient_id=patient_id, organisation_id=event.host_organisation_id,
                                        kind=service_code, source="screening")
    reading.measured_at, reading.recorded_by_user_id, reading.recorded_at = at, by.id if by else None, utcnow()
    if service_code == "bp":
        reading.sbp, reading.dbp, reading.pulse = values["sbp"], values["dbp"], values.get("pulse")
    else:
        reading.glucose_mmol, reading.glucose_context = values["value"], values.get("context", "random")
    if earlier is None:
        db.add(reading)
    for enrolment in enrolments:
        if service_code == "bp":
            chronic_rules.apply_bp(enrolment, sbp=values["sbp"], dbp=values["dbp"], at=at)
        elif values.get("context") == "fasting" or enrolment.condition_code == "t2dm":
            chronic_rules.apply_glucose(enrolment, value=values["value"], at=at)
        else:
            chronic_rules.apply_contact(enrolment, at=at)
        enrolment.risk_level = chronic_rules.risk_after_reading(enrolment.risk_level, danger=danger)
    db.flush()
    return reading


def _task_for(db: Session, *, by: User | None, event: ScreeningEvent, result: ScreeningResult,
              service: ScreeningService, today: date) -> ChronicTask:
    due = today + timedelta(days=TASK_DAYS_DANGER if result.danger else TASK_DAYS)
    title = f"{event.title}：{result.finding}"
    return chronic_tasks.create_task(
        db, patient_id=result.patient_id, kind="screening", title=title, due_on=due, by=by,
        detail=f"{service.name} / {service.name_en}: {result.values}", screening_result_id=result.id)


def record_result(db: Session, *, by: User, attendance_id: int, service_code: str,
                  values: dict[str, Any]) -> ScreeningResult:
    """Check and store one service's values for an attendance (again: replaced); abnormal → a team task."""
    attendance = db.get(ScreeningAttendance, attendance_id)
    if attendance is None:
        raise NotFound(f"没有编号为 {attendance_id} 的登记 / no attendance {attendance_id}")
    event = get_event(db, attendance.event_id)
    require_runner(db, by, event)
    _require_open(event)
    access.require_patient_access(db, user=by, patient_id=attendance.patient_id, action="screening.result")
    service = db.get(ScreeningService, service_code)
    if service is None or service_code not in event.services:
        raise InvalidInput("本次活动不提供这项服务 / this event does not offer that service",
                           field_errors=[field_error("service_code", service_code)])
    clean = clean_values(service, values)
    verdict = judge(service, clean)
    now = utcnow()
    row = db.scalar(select(ScreeningResult).where(ScreeningResult.attendance_id == attendance.id,
                                                  ScreeningResult.service_code == service_code))
    old: dict[str, Any] | None = None
    if row is None:
        row = ScreeningResult(attendance_id=attendance.id, event_id=event.id, patient_id=attendance.patient_id,
                              service_code=service_code)
        db.add(row)
    else:
        old = dict(row.values)
    row.values, row.abnormal, row.danger, row.finding = clean, verdict.abnormal, verdict.danger, verdict.finding[:300]
    row.recorded_by_user_id, row.recorded_at = by.id, now
    db.flush()
    if row.task_id is not None and not row.abnormal:
        task = db.get(ChronicTask, row.task_id)
        if task is not None and task.status == "open":
            task.status, task.outcome, task.done_at = "cancelled", "复测正常 / normal on re-entry", now
        row.task_id = None
    elif row.abnormal and row.task_id is None:
        row.task_id = _task_for(db, by=by, event=event, result=row, service=service, today=local_today()).id
    reading = _chronic_reading(db, by=by, event=event, patient_id=row.patient_id, service_code=service_code,
                               values=clean, danger=verdict.danger, at=now, reading_id=row.reading_id)
    row.reading_id = reading.id if reading is not None else None
    db.flush()
    audit.record(db, actor=access.actor_of(by), action="screening.result", patient_id=row.patient_id,
                 resource=f"screening_result:{row.id}",
                 detail={"service": service_code, "abnormal": row.abnormal, "task_id": row.task_id,
                         **({"previous": old} if old is not None else {})})
    return row


# ---------------------------------------------------------------------------- reading back

@dataclass
class EventCounts:
    people_served: int
    new_residents: int
    by_service: dict[str, int]
    abnormal_by_service: dict[str, int]
    abnormal_findings: int
    people_with_findings: int
    tasks_made: int
    leaflets_given: int
    medicines_given: int
    medicines_value_fen: int


def event_counts(db: Session, *, event_id: int) -> EventCounts:
    """What the county reports for an event: people served, per service, findings, tasks, leaflets, medicines."""
    event = get_event(db, event_id)
    served = db.scalar(select(func.count()).select_from(ScreeningAttendance)
                       .where(ScreeningAttendance.event_id == event_id)) or 0
    new = db.scalar(select(func.count()).select_from(ScreeningAttendance).where(
        ScreeningAttendance.event_id == event_id, ScreeningAttendance.how.in_(("new", "import_new")))) or 0
    by_service: dict[str, int] = {}
    abnormal: dict[str, int] = {}
    for code, is_abnormal, n in db.execute(
            select(ScreeningResult.service_code, ScreeningResult.abnormal, func.count())
            .where(ScreeningResult.event_id == event_id)
            .group_by(ScreeningResult.service_code, ScreeningResult.abnormal)):
        by_service[code] = by_service.get(code, 0) + n
        if is_abnormal:
            abnormal[code] = abnormal.get(code, 0) + n
    people = db.scalar(select(func.count(func.distinct(ScreeningResult.patient_id))).where(
        ScreeningResult.event_id == event_id, ScreeningResult.abnormal.is_(True))) or 0
    tasks = db.scalar(select(func.count()).select_from(ScreeningResult).where(
        ScreeningResult.event_id == event_id, ScreeningResult.task_id.is_not(None))) or 0
    return EventCounts(people_served=served, new_residents=new, by_service=by_service, abnormal_by_service=abnormal,
                       abnormal_findings=sum(abnormal.values()), people_with_findings=people, tasks_made=tasks,
                       leaflets_given=event.leaflets_given, medicines_given=event.medicines_given,
                       medicines_value_fen=event.medicines_value_fen)


@dataclass
class AttendanceRow:
    id: int
    patient_id: int
    name: str
    sex: str
    birth_date: date
    registered_at: datetime
    how: str
    school: str
    grade: str
    class_name: str
    results: int
    abnormal: int


ATTENDANCE_ROWS = 200


def attendance_rows(db: Session, *, event_id: int) -> list[AttendanceRow]:
    """The latest ATTENDANCE_ROWS people registered at an event, newest first, with how many results and findings
    each has (the runner's list; callers check `require_runner`)."""
    results = (select(ScreeningResult.attendance_id, func.count().label("n"),
                      func.sum(case((ScreeningResult.abnormal.is_(True), 1), else_=0)).label("bad"))
               .where(ScreeningResult.event_id == event_id).group_by(ScreeningResult.attendance_id).subquery())
    query = (select(ScreeningAttendance, Patient.name, Patient.sex, Patient.birth_date, results.c.n, results.c.bad)
             .join(Patient, Patient.id == ScreeningAttendance.patient_id)
             .outerjoin(results, results.c.attendance_id == ScreeningAttendance.id)
             .where(ScreeningAttendance.event_id == event_id)
             .order_by(ScreeningAttendance.registered_at.desc(), ScreeningAttendance.id.desc())
             .limit(ATTENDANCE_ROWS))
    return [AttendanceRow(id=a.id, patient_id=a.patient_id, name=name, sex=str(sex), birth_date=born,
                          registered_at=a.registered_at, how=a.how, school=a.school, grade=a.grade,
                          class_name=a.class_name, results=n or 0, abnormal=int(bad or 0))
            for a, name, sex, born, n, bad in db.execute(query)]


def results_of(db: Session, attendance_id: int) -> dict[str, ScreeningResult]:
    return {r.service_code: r for r in db.scalars(select(ScreeningResult)
                                                  .where(ScreeningResult.attendance_id == attendance_id))}


# ---------------------------------------------------------------------------- school sheets

HEADERS: dict[str, tuple[str, ...]] = {
    "school": ("学校", "school"),
    "grade": ("年级", "grade"),
    "class_name": ("班级", "class"),
    "name": ("姓名", "name"),
    "sex": ("性别", "sex"),
    "birth_date": ("出生日期", "birth date", "birth_date", "date of birth"),
    "resident_id": ("身份证号", "身份证", "resident id", "resident_id", "id number"),
    "height_cm": ("身高cm", "身高", "身高(cm)", "height", "height cm", "height_cm"),
    "weight_kg": ("体重kg", "体重", "体重(kg)", "weight", "weight kg", "weight_kg"),
    "vision_left": ("视力左", "左眼视力", "vision left", "vision_left", "left eye"),
    "vision_right": ("视力右", "右眼视力", "vision right", "vision_right", "right eye"),
    "caries": ("龋齿", "龋齿数", "caries"),
    "bp": ("血压", "blood pressure", "bp"),
}
REQUIRED_COLUMNS = ("name", "sex")
SEX_WORDS = {"男": "M", "m": "M", "male": "M", "女": "F", "f": "F", "female": "F"}
BP_RE = re.compile(r"^\s*(\d{2,3})\s*[/／]\s*(\d{2,3})\s*$")


def _header_key(text: str) -> str:
    return re.sub(r"[\s（）()]", "", str(text or "")).lower()


_HEADER_INDEX = {_header_key(alias): key for key, aliases in HEADERS.items() for alias in aliases}


def _too_many_rows() -> InvalidInput:
    return InvalidInput(f"一次最多导入 {MAX_IMPORT_ROWS} 行 / at most {MAX_IMPORT_ROWS} rows per file",
                        field_errors=[field_error("file", "too many rows")])


def read_sheet(filename: str, content: bytes) -> list[list[Any]]:
    """The sheet's rows as lists (first row the headers): .xlsx, or .csv in UTF-8 (with or without BOM) or GB18030.

    Reading stops a little past MAX_IMPORT_ROWS (a sheet that long is refused, so the rest is not read)."""
    lower = (filename or "").lower()
    if len(content) > MAX_IMPORT_BYTES:
        raise InvalidInput("文件过大（最大 10 MB）/ the file is too large (10 MB at most)",
                           field_errors=[field_error("file", "too large")])
    most = MAX_IMPORT_ROWS + IMPORT_ROWS_MARGIN
    if lower.endswith(".xlsx"):
        from openpyxl import load_workbook

        from healthrelay.screening.sheets import read_xlsx_fast

        try:
            rows = read_xlsx_fast(content, max_rows=most + 1)
        except Exception:  # noqa: BLE001 - an unusual workbook: let openpyxl read it, or name the problem
            try:
                book = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
            except Exception:  # noqa: BLE001 - any unreadable workbook is the same problem for the user
                raise InvalidInput("无法读取 Excel 文件 / the Excel file cannot be read",
                                   field_errors=[field_error("file", "not a readable .xlsx")]) from None
            rows = [list(r) for r in islice(book.worksheets[0].iter_rows(values_only=True), most + 1)]
            book.close()
    elif lower.endswith(".csv"):
        text = chronic_service.decode_text(content)
        try:
            rows = [list(r) for r in islice(csv.reader(io.StringIO(text)), most + 1)]
        except csv.Error as exc:  # an unclosed quote, a NUL byte
            raise InvalidInput(f"CSV 文件格式有误：{exc} / the CSV file is malformed: {exc}",
                               field_errors=[field_error("file", "malformed CSV")]) from None
    else:
        raise InvalidInput("只接受 .xlsx 或 .csv 文件 / only .xlsx or .csv files are accepted",
                           field_errors=[field_error("file", "must be .xlsx or .csv")])
    if len(rows) > most:
        raise _too_many_rows()
    return rows


@dataclass
class _Student:
    row: int
    school: str
    grade: str
    class_name: str
    name: str
    sex: str
    birth_date: date
    resident_id: str
    results: dict[str, dict[str, Any]]
    patient_id: int | None = None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat()
    return str(value).strip()


def _parse_day(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, (int, float)) and 1 <= value < 80000:  # an Excel date cell read as its serial number
        return date(1899, 12, 30) + timedelta(days=int(value))
    text = _cell(value).replace("/", "-").replace(".", "-").replace("年", "-").replace("月", "-").rstrip("日")
    if re.fullmatch(r"\d{8}", text):
        text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
    try:
        parts = [int(p) for p in text.split("-")]
        return date(parts[0], parts[1], parts[2]) if len(parts) == 3 else None
    except ValueError:
        return None


def _parse_student(number: int, cells: dict[str, Any], services: dict[str, ScreeningService],
                   today: date) -> tuple[_Student | None, list[dict[str, Any]]]:
    """One sheet row checked completely; (student, []) or (None, the row's errors)."""
    errors: list[dict[str, Any]] = []

    def bad(name: str, zh: str, en: str) -> None:
        errors.append({"row": number, "field": name, "message": f"{zh} / {en}"})

    name = " ".join(_cell(cells.get("name")).split())
    if not name:
        bad("姓名", "姓名为空", "the name is empty")
    elif len(name) > 50 or not patients.NAME_RE.match(name):
        bad("姓名", "姓名只能包含汉字、字母和间隔号", "the name may hold Chinese characters, letters and '·' only")
    sex = SEX_WORDS.get(_cell(cells.get("sex")).lower(), "")
    if not sex:
        bad("性别", f"性别 {_cell(cells.get('sex'))!r} 应为 男 或 女", "the sex must be 男 or 女 (M or F)")
    rid_text = _cell(cells.get("resident_id")).upper()
    rid = None
    if rid_text:
        try:
            rid = parse_resident_id(rid_text, today=today)
        except InvalidInput as exc:
            bad("身份证号", exc.message.split(" / ")[0], exc.message.split(" / ")[-1])
    born = _parse_day(cells.get("birth_date")) if _cell(cells.get("birth_date")) else None
    if _cell(cells.get("birth_date")) and born is None:
        bad("出生日期", f"出生日期 {_cell(cells.get('birth_date'))!r} 无法识别", "the birth date cannot be read")
    elif born is not None and not date(1900, 1, 1) <= born <= today:
        bad("出生日期", "出生日期不合理", "the birth date is implausible")
    if rid is not None:
        try:
            check_agrees(rid, sex=sex, birth_date=born or rid.birth_date)
        except InvalidInput as exc:
            disagree = {e["field"] for e in exc.field_errors}
            if "birth_date" in disagree:
                bad("出生日期", "出生日期与身份证号不一致", "the birth date disagrees with the resident ID")
            if "sex" in disagree:
                bad("性别", "性别与身份证号不一致", "the sex disagrees with the resident ID")
        born = born or rid.birth_date
    if born is None and not errors:
        bad("出生日期", "请填写出生日期或身份证号", "give the birth date or the resident ID")
    results: dict[str, dict[str, Any]] = {}
    wanted = {"height_weight": {"height_cm": cells.get("height_cm"), "weight_kg": cells.get("weight_kg")},
              "vision": {"left": cells.get("vision_left"), "right": cells.get("vision_right")},
              "dental": {"caries": cells.get("caries")}}
    bp_text = _cell(cells.get("bp"))
    if bp_text:
        match = BP_RE.match(bp_text)
        if match:
            wanted["bp"] = {"sbp": match.group(1), "dbp": match.group(2)}
        else:
            bad("血压", f"血压 {bp_text!r} 应写成 120/80", "the blood pressure must read like 120/80")
    column_names = {"height_cm": "身高cm", "weight_kg": "体重kg", "left": "视力左", "right": "视力右", "caries": "龋齿",
                    "sbp": "血压", "dbp": "血压"}
    for code, values in wanted.items():
        present = {k: v for k, v in values.items() if _cell(v)}
        if not present or code not in services:
            continue
        try:
            results[code] = clean_values(services[code], {k: _cell(v) for k, v in values.items()})
        except InvalidInput as exc:
            for e in exc.field_errors:
                message = e["message"]
                errors.append({"row": number, "field": column_names.get(e["field"], e["field"]), "message": message})
    if errors:
        return None, errors
    assert born is not None
    return _Student(row=number, school=_cell(cells.get("school"))[:100], grade=_cell(cells.get("grade"))[:20],
                    class_name=_cell(cells.get("class_name"))[:20], name=name, sex=sex, birth_date=born,
                    resident_id=rid.number if rid else "", results=results), []


def _owners(db: Session, numbers: Iterable[str]) -> dict[str, int]:
    """Resident ID → live patient, 500 IDs per statement (a sheet of 12,000 is 24 look-ups). No join: right after a
    big import the planner's statistics are stale, and a join then turned into a nested loop over every patient."""
    wanted = sorted(set(numbers))
    found: dict[str, int] = {}
    postgres = db.get_bind().dialect.name == "postgresql"
    # PostgreSQL: the whole sheet as one array parameter (= ANY), which it hashes; lists of 500 parameters were
    # compared one by one against every row whenever the planner (stale statistics after an import) chose a scan.
    size = max(1, len(wanted)) if postgres else IMPORT_CHUNK
    for start in range(0, len(wanted), size):
        chunk = wanted[start:start + size]
        match = (PatientIdentifier.value == any_(bindparam("ids", chunk, type_=ARRAY(String))) if postgres
                 else PatientIdentifier.value.in_(chunk))
        for value, patient_id in db.execute(select(PatientIdentifier.value, PatientIdentifier.patient_id).where(
                PatientIdentifier.type == IdentifierType.RESIDENT_ID,
                PatientIdentifier.issuer_organisation_id.is_(None), match)):
            found[value] = patient_id
    holders = sorted(set(found.values()))
    merged: dict[int, int] = {}
    for start in range(0, len(holders), IMPORT_CHUNK):
        for patient_id, survivor in db.execute(select(Patient.id, Patient.merged_into_id).where(
                Patient.id.in_(holders[start:start + IMPORT_CHUNK]), Patient.merged_into_id.is_not(None))):
            merged[patient_id] = survivor
    for value, patient_id in found.items():
        while patient_id in merged:  # a merged record: its survivor attends
            patient_id = merged[patient_id]
        found[value] = patient_id
    return found


def import_school_sheet(db: Session, *, by: User, event_id: int, filename: str, content: bytes) -> ScreeningImport:
    """Import a school's check-up sheet: one row per student, each row kept or reported (row, column, message).

    Students are found by resident ID (looked up in batches), else by a confident match; a new student is
    registered at the host organisation. A row is all or nothing (a savepoint per chunk of rows, redone row by row
    if a chunk fails); a student already at the event is skipped, so importing the same sheet twice is harmless.
    """
    event = get_event(db, event_id)
    require_runner(db, by, event)
    _require_open(event)
    if event.kind != "school_checkup":
        raise Conflict("只有学校体检活动可以导入学生体检表 / only a school check-up imports a school sheet",
                       code="not_school_checkup")
    rows = read_sheet(filename, content)
    while rows and not any(_cell(c) for c in rows[0]):
        rows.pop(0)
    if not rows:
        raise InvalidInput("文件是空的 / the file is empty", field_errors=[field_error("file", "empty")])
    columns = {i: _HEADER_INDEX.get(_header_key(h)) for i, h in enumerate(rows[0])}
    missing = [HEADERS[k][0] for k in REQUIRED_COLUMNS if k not in columns.values()]
    if missing:
        raise InvalidInput(f"缺少列：{'、'.join(missing)} / missing columns: {', '.join(missing)}",
                           field_errors=[field_error("file", f"missing columns {missing}")])
    if len(rows) - 1 > MAX_IMPORT_ROWS:
        raise _too_many_rows()
    services = {s.code: s for s in services_of(db) if s.code in event.services}
    today = local_today()
    errors: list[dict[str, Any]] = []
    students: list[_Student] = []
    seen_ids: dict[str, int] = {}
    total = 0
    for offset, raw in enumerate(rows[1:]):
        number = offset + 2  # spreadsheet row number, the header is row 1
        if not any(_cell(c) for c in raw):
            continue
        total += 1
        cells = {key: raw[i] for i, key in columns.items() if key and i < len(raw)}
        student, problems = _parse_student(number, cells, services, today)
        if student is not None and student.resident_id:
            if student.resident_id in seen_ids:
                problems = [{"row": number, "field": "身份证号",
                             "message": f"与第 {seen_ids[student.resident_id]} 行重复 / the same resident ID as row "
                                        f"{seen_ids[student.resident_id]}"}]
                student = None
            else:
                seen_ids[student.resident_id] = number
        errors += problems
        if student is not None:
            students.append(student)
    # On SQLite the savepoints below would otherwise be the transaction itself, each chunk committed on release.
    take_sqlite_write_lock(db)
    owners = _owners(db, (s.resident_id for s in students if s.resident_id))
    at_event = set(db.scalars(select(ScreeningAttendance.patient_id).where(ScreeningAttendance.event_id == event.id)))
    imported = skipped = new = findings = 0
    ready: list[_Student] = []
    for s in students:
        s.patient_id = owners.get(s.resident_id) if s.resident_id else None
        if s.patient_id is None and not s.resident_id:
            found = matching.find_candidates(db, name=s.name, birth_date=s.birth_date, sex=s.sex)
            if len(found) == 1 and found[0].score >= CONFIDENT_MATCH:
                s.patient_id = found[0].patient_id
            elif found:
                errors.append({"row": s.row, "field": "身份证号", "message":
                               f"可能与已有居民 #{found[0].patient_id} 是同一人，请补充身份证号 / may be the same "
                               f"person as resident #{found[0].patient_id}; add the resident ID"})
                continue
        if s.patient_id is not None and s.patient_id in at_event:
            skipped += 1
            continue
        ready.append(s)
    for start in range(0, len(ready), IMPORT_CHUNK):
        chunk = ready[start:start + IMPORT_CHUNK]
        fresh = [s for s in chunk if s.patient_id is None]
        try:
            with db.begin_nested():
                outcome = _write_students(db, by=by, event=event, students=chunk, services=services, today=today)
        except _CLASHES:  # someone registered one of these meanwhile: redo the chunk row by row
            for s in fresh:  # their new records went with the rolled-back chunk
                s.patient_id = None
            outcome = (0, 0, 0)
            for s in chunk:
                try:
                    with db.begin_nested():
                        one = _write_students(db, by=by, event=event, students=[s], services=services, today=today)
                except _CLASHES:
                    errors.append({"row": s.row, "field": "身份证号", "message": "该学生刚被他人登记，请重新导入本行 / "
                                   "this student was registered by someone else meanwhile; import the row again"})
                    continue
                outcome = tuple(a + b for a, b in zip(outcome, one, strict=True))  # type: ignore[assignment]
        imported += outcome[0]
        new += outcome[1]
        findings += outcome[2]
    errors.sort(key=lambda e: (e["row"], e["field"]))
    record = ScreeningImport(event_id=event.id, filename=(filename or "")[:200], rows_total=total,
                             rows_imported=imported, rows_skipped=skipped,
                             rows_failed=len({e["row"] for e in errors}), residents_new=new,
                             abnormal_findings=findings, errors=errors, imported_by_user_id=by.id, imported_at=utcnow())
    db.add(record)
    db.flush()
    audit.record(db, actor=access.actor_of(by), action="screening.import", resource=f"screening_import:{record.id}",
                 detail={"event_id": event.id, "rows": total, "imported": imported, "new_residents": new,
                         "failed": record.rows_failed})
    return record


def _clashes() -> tuple[type[Exception], ...]:
    """A clash with a row written meanwhile: SQLAlchemy's IntegrityError, or psycopg's own from `_copy`, which
    writes through the driver's cursor."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - SQLite-only installs
        return (IntegrityError,)
    return (IntegrityError, psycopg.IntegrityError)


_CLASHES = _clashes()


def _insert_ids(db: Session, model: type[Any], rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows in bulk and return their ids in the order given.

    SQLite cannot promise RETURNING order for a multi-row insert (SQLAlchemy would go row by row, 12,000 round
    trips), but inside our write transaction nobody else inserts and each new rowid is max(rowid) + 1, so the new
    ids are those above the old maximum, in order. PostgreSQL: ids reserved from the table's own sequence (safe
    beside other writers), then COPY, as the demo builder does: psycopg's multi-row INSERT ... RETURNING spent most
    of a 12,000-student import parsing parameters.
    """
    if not rows:
        return []
    table = model.__table__
    if db.get_bind().dialect.name != "sqlite":
        ids = list(db.scalars(text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
                              {"t": table.name, "n": len(rows)}))
        _copy(db, table, [{"id": new_id, **row} for new_id, row in zip(ids, rows, strict=True)])
        return ids
    before = db.scalar(select(func.coalesce(func.max(table.c.id), 0)))
    db.execute(insert(table), rows)
    ids = list(db.scalars(select(table.c.id).where(table.c.id > before).order_by(table.c.id)))
    if len(ids) != len(rows):
        raise RuntimeError(f"expected {len(rows)} new rows in {table.name}, found {len(ids)}")
    return ids


def _copy(db: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY inside our transaction (column defaults filled in first, since COPY does not apply the
    models' Python-side defaults)."""
    from psycopg.types.json import Jsonb

    columns = [c for c in table.columns if c.name in rows[0] or c.default is not None]
    values = []
    for row in rows:
        out = []
        for column in columns:
            if column.name in row:
                value = row[column.name]
            else:
                default = column.default.arg
                value = default(None) if callable(default) else default
            if isinstance(column.type, JSON):
                value = Jsonb(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            out.append(value)
        values.append(out)
    raw = db.connection().connection.driver_connection
    names = ", ".join(c.name for c in columns)  # our own models' column names, never input
    with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for value in values:
            copy.write_row(value)


def _write_students(db: Session, *, by: User, event: ScreeningEvent, students: Sequence[_Student],
                    services: dict[str, ScreeningService], today: date) -> tuple[int, int, int]:
    """Bulk-insert new residents, attendances, results and tasks for checked rows; (imported, new residents,
    findings). Runs inside the caller's savepoint."""
    db.flush()
    now = utcnow()
    fresh = [s for s in students if s.patient_id is None]
    fresh_rows = {id(s) for s in fresh}
    if fresh:
        people = []
        for s in fresh:
            pinyin, initials = matching.pinyin_of(s.name)
            people.append({"name": s.name, "pinyin": pinyin, "pinyin_initials": initials, "sex": Sex(s.sex),
                           "birth_date": s.birth_date, "phone": "", "grid": "", "address_line": s.school,
                           "created_at": now, "updated_at": now, "created_by_user_id": by.id})
        for s, pid in zip(fresh, _insert_ids(db, Patient, people), strict=True):
            s.patient_id = pid
        identifiers = [{"patient_id": s.patient_id, "type": IdentifierType.RESIDENT_ID, "value": s.resident_id,
                        "issuer_organisation_id": None} for s in fresh if s.resident_id]
        if identifiers:
            db.execute(insert(PatientIdentifier.__table__), identifiers)
        db.execute(insert(PatientRegistration.__table__), [
            {"patient_id": s.patient_id, "organisation_id": event.host_organisation_id, "registered_at": now,
             "registered_by_user_id": by.id} for s in fresh])
    attendance_ids = _insert_ids(db, ScreeningAttendance, [
        {"event_id": event.id, "patient_id": s.patient_id, "client_token": new_client_token(),
         "how": "import_new" if id(s) in fresh_rows else "import", "school": s.school, "grade": s.grade,
         "class_name": s.class_name, "registered_at": now, "registered_by_user_id": by.id} for s in students])
    result_rows: list[dict[str, Any]] = []
    for s, attendance_id in zip(students, attendance_ids, strict=True):
        for code, values in s.results.items():
            verdict = judge(services[code], values)
            result_rows.append({"attendance_id": attendance_id, "event_id": event.id, "patient_id": s.patient_id,
                                "service_code": code, "values": values, "abnormal": verdict.abnormal,
                                "danger": verdict.danger, "finding": verdict.finding[:300], "task_id": None,
                                "recorded_by_user_id": by.id, "recorded_at": now})
    result_ids = _insert_ids(db, ScreeningResult, result_rows)
    fresh_ids = {s.patient_id for s in fresh}
    known = {s.patient_id for s in students if s.patient_id not in fresh_ids}
    enrolled = set(db.scalars(select(ChronicEnrolment.patient_id).where(
        ChronicEnrolment.patient_id.in_(known), ChronicEnrolment.status == "active"))) if known else set()
    by_student: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    readings = []
    for values, result_id in zip(result_rows, result_ids, strict=True):
        if values["patient_id"] in enrolled:
            reading = _chronic_reading(db, by=by, event=event, patient_id=values["patient_id"],
                                       service_code=values["service_code"], values=values["values"],
                                       danger=values["danger"], at=now)
            if reading is not None:
                readings.append({"rid": result_id, "reading": reading.id})
        if values["abnormal"]:
            by_student.setdefault(values["patient_id"], []).append((result_id, values))
    if readings:
        table = ScreeningResult.__table__
        db.execute(update(table).where(table.c.id == bindparam("rid")).values(reading_id=bindparam("reading")),
                   readings)
    findings = sum(len(found) for found in by_student.values())
    if by_student:
        _bulk_tasks(db, by=by, event=event, by_student=by_student, fresh_ids=fresh_ids, today=today, now=now)
    db.flush()
    return len(students), len(fresh), findings


def _bulk_tasks(db: Session, *, by: User, event: ScreeningEvent,
                by_student: dict[int, list[tuple[int, dict[str, Any]]]], fresh_ids: set[int], today: date,
                now: datetime) -> None:
    """One task per student with findings, listing them all (the team calls the family once, not three times).

    The same row `chronic.tasks.create_task` writes, inserted in bulk: a sheet of 12,000 students has thousands
    of findings, and one flush per task would turn seconds into minutes. The team is `team_for_patient`'s answer
    for a student already on file; a new student is on no panel and has no village yet, so the event's team (else
    the host organisation) follows up.
    """
    teams: dict[int | None, Team | None] = {}

    def team_of(patient_id: int) -> Team | None:
        if patient_id in fresh_ids:
            key = event.team_id
            if key not in teams:
                teams[key] = db.get(Team, key) if key is not None else None
            return teams[key]
        return chronic_tasks.team_for_patient(db, patient_id)

    rows = []
    for patient_id, found in by_student.items():
        team = team_of(patient_id)
        danger = any(v["danger"] for _, v in found)
        rows.append({"patient_id": patient_id, "team_id": team.id if team else None,
                     "organisation_id": team.organisation_id if team else event.host_organisation_id,
                     "kind": "screening",
                     "title": f"{event.title}：{len(found)} 项异常 / {len(found)} finding(s)"[:300],
                     "detail": "\n".join(v["finding"] for _, v in found),
                     "due_on": today + timedelta(days=TASK_DAYS_DANGER if danger else TASK_DAYS),
                     "screening_result_id": found[0][0], "status": "open", "created_at": now,
                     "created_by_user_id": by.id, "outcome": ""})
    task_ids = _insert_ids(db, ChronicTask, rows)
    links = [{"rid": result_id, "tid": task_id}
             for (_, found), task_id in zip(by_student.items(), task_ids, strict=True) for result_id, _ in found]
    table = ScreeningResult.__table__
    db.execute(update(table).where(table.c.id == bindparam("rid")).values(task_id=bindparam("tid")), links)


def error_sheet(record: ScreeningImport) -> bytes:
    """The import's per-row errors as .xlsx (row, column, message), for the school to correct and resend."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "错误 errors"
    sheet.append(["行 row", "列 column", "问题 problem"])
    for e in record.errors:
        sheet.append([e["row"], e["field"], e["message"]])
    sheet.column_dimensions["C"].width = 90
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def report_sheet(db: Session, *, event_id: int) -> bytes:
    """The counts a county reports for one event, as .xlsx."""
    from openpyxl import Workbook

    event = get_event(db, event_id)
    counts = event_counts(db, event_id=event_id)
    names = {s.code: (s.name, s.name_en) for s in services_of(db)}
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "活动统计 counts"
    local_start = event.starts_at.astimezone(LOCAL_TZ)
    for row in (["活动 event", safe_cell(event.title)], ["编号 number", event.number], ["类型 kind", event.kind],
                ["日期 date", local_start.strftime("%Y-%m-%d")], ["地点 place", safe_cell(event.place)], [],
                ["服务人次 people served", counts.people_served], ["新建档 new residents", counts.new_residents],
                ["发现异常 abnormal findings", counts.abnormal_findings],
                ["异常人数 people with findings", counts.people_with_findings],
                ["随访任务 follow-up tasks", counts.tasks_made], ["发放宣传资料 leaflets", counts.leaflets_given],
                ["发放药品 medicines (packs)", counts.medicines_given],
                ["药品金额 medicines value (元)", round(counts.medicines_value_fen / 100, 2)], [],
                ["服务项目 service", "人次 done", "异常 abnormal"]):
        sheet.append(row)
    for code in event.services:
        zh, en = names.get(code, (code, code))
        sheet.append([f"{zh} {en}", counts.by_service.get(code, 0), counts.abnormal_by_service.get(code, 0)])
    sheet.column_dimensions["A"].width = 36
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
