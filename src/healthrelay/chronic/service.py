"""The chronic disease registries, family-doctor contracts, monitoring points and readings.

Everything that writes patient data checks the care relationship first (`access.require_patient_access`) and
is audited in the same transaction. Input is checked field by field before anything is written, so a refusal
names every problem and leaves nothing half-done. Readings keep the enrolments' derived columns current through
`chronic.rules` (the one definition the worklist and indicators read); a device export is imported row by row in
savepoints, so one bad row is reported and the rest kept.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.chronic import rules, tasks, worklist
from healthrelay.chronic.models import (
    ChronicCondition,
    ChronicEnrolment,
    ChronicFollowUp,
    ChronicReading,
    ChronicTask,
    FamilyDoctorContract,
    MonitoringPoint,
    ServicePackage,
)
from healthrelay.chronic.schemas import is_id
from healthrelay.core import timers
from healthrelay.core.db import LOCAL_TZ, local_today, take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Organisation, Team, TeamKind, TeamMember
from healthrelay.patients.identity import normalise as normalise_resident_id
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier, TeamPanelEntry
from healthrelay.patients.service import _chunks

CHECK_MESSAGE = "请检查标红的栏目 / please check the marked fields"
# A device or phone clock may run a little ahead of ours; more than this is a wrong time.
CLOCK_SKEW = timedelta(minutes=5)
WRITE_ROLES = frozenset({Role.CLINICIAN, Role.ORG_ADMIN})

SOURCES = {
    "clinic": ("门诊发现", "clinic"),
    "screening": ("筛查发现", "screening"),
    "referral": ("转诊下转", "referral"),
    "school": ("学校筛查", "school screening"),
    "device": ("监测设备", "monitoring device"),
    "self_report": ("本人报告", "self-reported"),
    "transfer": ("外地转入", "transferred in"),
}
RISK_FACTORS = {
    "smoking": ("吸烟", "smoking"),
    "drinking": ("饮酒", "drinking"),
    "obesity": ("肥胖", "obesity"),
    "overweight": ("超重", "overweight"),
    "dyslipidaemia": ("血脂异常", "dyslipidaemia"),
    "family_history": ("家族史", "family history"),
    "inactivity": ("缺乏运动", "physical inactivity"),
    "high_salt": ("高盐饮食", "high-salt diet"),
    "diabetes": ("糖尿病", "diabetes"),
    "hypertension": ("高血压", "hypertension"),
}
COMPLICATIONS = {
    "stroke": ("脑卒中", "stroke"),
    "chd": ("冠心病", "coronary heart disease"),
    "heart_failure": ("心力衰竭", "heart failure"),
    "ckd": ("慢性肾病", "chronic kidney disease"),
    "retinopathy": ("视网膜病变", "retinopathy"),
    "neuropathy": ("周围神经病变", "peripheral neuropathy"),
    "diabetic_foot": ("糖尿病足", "diabetic foot"),
    "pad": ("下肢动脉病变", "peripheral artery disease"),
}
CLOSE_STATUSES = {
    "moved": ("迁出", "moved away"),
    "died": ("死亡", "died"),
    "closed": ("其他原因结案", "closed for another reason"),
}
MEDICINE_FREQUENCIES = ("qd", "bid", "tid", "qid", "qn", "qw", "prn")
MAX_MEDICINES = 20
POINT_KINDS = {
    "village_point": ("村血压监测点", "village BP point"),
    "clinic": ("诊室", "clinic"),
    "pharmacy": ("药店", "pharmacy"),
    "home": ("家用设备", "home device"),
}
READING_KINDS = ("bp", "glucose")
GLUCOSE_CONTEXTS = {
    "fasting": ("空腹", "fasting"),
    "random": ("随机", "random"),
    "post_meal": ("餐后2小时", "2 h after a meal"),
}
READING_SOURCES = ("manual", "device_csv", "follow_up", "screening")
MAX_CONTRACT_YEARS = 3
PANEL_PAGE = 50
IMPORT_MAX_BYTES = 5 * 1024 * 1024
IMPORT_MAX_ROWS = 10_000  # about 15 s on SQLite (2,000 rows: 2.9 s SQLite, 3.9 s PostgreSQL)
EXPIRE_CONTRACTS_KIND = "chronic.expire_contracts"


def _problems_or_raise(errors: list[dict[str, Any]]) -> None:
    if errors:
        raise InvalidInput(CHECK_MESSAGE, field_errors=errors)


def _require_writer(by: User) -> None:
    if by.role not in WRITE_ROLES:
        raise AccessDenied("只有医生或机构管理员可以录入慢病数据 / only clinicians and organisation admins "
                           "record chronic disease data")


def _actor(by: User | None, client_address: str = "") -> audit.Actor:
    return access.actor_of(by, client_address)


# ---------------------------------------------------------------------------- registry (enrolment)

def conditions(db: Session) -> list[ChronicCondition]:
    return rules.all_conditions(db)


def _check_codes(name: str, values: Iterable[str], allowed: dict[str, tuple[str, str]],
                 errors: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for value in values:
        code = str(value).strip()
        if not code:
            continue
        if code not in allowed:
            errors.append(field_error(name, f"未知的代码 {code[:30]} / unknown code {code[:30]}"))
        elif code not in out:
            out.append(code)
    return out


def clean_medicines(medicines: Iterable[Any], errors: list[dict[str, Any]], *,
                    prefix: str = "medicines") -> list[dict[str, str]]:
    """[{name, dose, frequency}]: a name (≤ 60), a dose (≤ 30) and a frequency code; blank rows dropped."""
    out: list[dict[str, str]] = []
    for i, item in enumerate(medicines):
        if not isinstance(item, dict):
            errors.append(field_error(f"{prefix}.{i}", "格式错误 / must be {name, dose, frequency}"))
            continue
        name = str(item.get("name") or "").strip()
        dose = str(item.get("dose") or "").strip()
        frequency = str(item.get("frequency") or "").strip().lower()
        if not (name or dose or frequency):
            continue
        if not name:
            errors.append(field_error(f"{prefix}.{i}.name", "请填写药名 / enter the medicine's name"))
        elif len(name) > 60:
            errors.append(field_error(f"{prefix}.{i}.name", "药名最多 60 字 / at most 60 characters"))
        if len(dose) > 30:
            errors.append(field_error(f"{prefix}.{i}.dose", "剂量最多 30 字 / at most 30 characters"))
        if frequency not in MEDICINE_FREQUENCIES:
            errors.append(field_error(f"{prefix}.{i}.frequency",
                                      "请选择用法（qd、bid、tid…） / choose the frequency (qd, bid, tid...)"))
        out.append({"name": name, "dose": dose, "frequency": frequency})
    if len(out) > MAX_MEDICINES:
        errors.append(field_error(prefix, f"最多 {MAX_MEDICINES} 种药 / at most {MAX_MEDICINES} medicines"))
    return out


def _family_team(db: Session, team_id: int | None, errors: list[dict[str, Any]], name: str = "team_id") -> Team | None:
    if team_id is None:
        return None
    team = db.get(Team, team_id)
    if team is None or team.kind != TeamKind.FAMILY_DOCTOR:
        errors.append(field_error(name, "没有这个家庭医生团队 / no such family-doctor team"))
        return None
    return team


def enrol(db: Session, *, by: User, patient_id: int, condition_code: str, diagnosed_on: date | None, source: str,
          risk_factors: Sequence[str] = (), complications: Sequence[str] = (), medicines: Sequence[Any] = (),
          team_id: int | None = None, client_address: str = "") -> ChronicEnrolment:
    """Put a resident in a registry (建档). A closed enrolment of the same condition is reopened, since the
    table keeps one row per resident and condition; an active one is a conflict naming it."""
    _require_writer(by)
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=by, patient_id=patient.id, action="chronic.enrol",
                                  client_address=client_address)
    errors: list[dict[str, Any]] = []
    condition = db.get(ChronicCondition, (condition_code or "").strip())
    if condition is None or not condition.active:
        errors.append(field_error("condition_code", "请选择慢病类别（高血压或糖尿病） / choose the registry "
                                                    "(hypertension or diabetes)"))
    today = local_today()
    if diagnosed_on is None:
        errors.append(field_error("diagnosed_on", "请填写确诊日期 / enter the date of diagnosis"))
    elif diagnosed_on > today:
        errors.append(field_error("diagnosed_on", "确诊日期不能晚于今天 / the diagnosis date cannot be in the future"))
    elif diagnosed_on < patient.birth_date:
        errors.append(field_error("diagnosed_on", "确诊日期早于出生日期 / the diagnosis date is before the birth date"))
    if source not in SOURCES:
        errors.append(field_error("source", "请选择发现途径 / choose how the condition was found"))
    factors = _check_codes("risk_factors", risk_factors, RISK_FACTORS, errors)
    comps = _check_codes("complications", complications, COMPLICATIONS, errors)
    meds = clean_medicines(medicines, errors)
    team = _family_team(db, team_id, errors)
    if patient.deceased_on is not None:
        errors.append(field_error("patient_id", "该居民已登记死亡 / this resident is recorded as deceased"))
    _problems_or_raise(errors)
    assert condition is not None and diagnosed_on is not None
    if team is None:
        team = tasks.team_for_patient(db, patient.id)
    organisation_id = team.organisation_id if team is not None else by.organisation_id
    if organisation_id is None:
        raise InvalidInput("无法确定管理机构：请选择家庭医生团队 / no managing centre: choose a family-doctor team",
                           field_errors=[field_error("team_id", "请选择团队 / choose the team")])
    existing = db.scalar(select(ChronicEnrolment).where(ChronicEnrolment.patient_id == patient.id,
                                                        ChronicEnrolment.condition_code == condition.code))
    now = utcnow()
    if existing is not None:
        if existing.status == "active":
            raise Conflict(f"该居民已在{condition.name}登记中（登记号 {existing.id}，确诊 {existing.diagnosed_on}） / "
                           f"already in the {condition.name_en or condition.code} registry "
                           f"(enrolment {existing.id}, diagnosed {existing.diagnosed_on})", code="already_enrolled")
        if existing.status == "died":
            raise Conflict(f"登记号 {existing.id} 已因死亡结案 / enrolment {existing.id} was closed: died",
                           code="enrolment_closed_died")
        row = existing
        action = "chronic.enrolment.reopen"
        row.status, row.closed_at, row.closed_reason = "active", None, ""
    else:
        row = ChronicEnrolment(patient_id=patient.id, condition_code=condition.code)
        db.add(row)
        action = "chronic.enrolment.create"
    row.organisation_id = organisation_id
    row.team_id = team.id if team is not None else None
    row.village_area_id = patient.area_id
    row.diagnosed_on = diagnosed_on
    row.source = source
    row.risk_factors, row.complications, row.medicines = factors, comps, meds
    row.enrolled_at = now
    row.enrolled_by_user_id = by.id
    row.next_visit_due, row.next_visit_kind, row.hidden_until = today, "first", None
    if row.risk_level is None:
        row.risk_level = rules.RISK_USUAL
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action=action, patient_id=patient.id,
                 resource=f"chronic_enrolment:{row.id}",
                 detail={"condition": condition.code, "team_id": row.team_id, "source": source})
    return row


def get_enrolment(db: Session, *, user: User, enrolment_id: int, action: str = "chronic.enrolment.read",
                  client_address: str = "") -> ChronicEnrolment:
    row = db.get(ChronicEnrolment, enrolment_id)
    if row is None:
        raise NotFound(f"没有登记号 {enrolment_id} / no enrolment {enrolment_id}")
    access.require_patient_access(db, user=user, patient_id=row.patient_id, action=action,
                                  client_address=client_address)
    return row


def enrolments_of(db: Session, *, user: User, patient_id: int, client_address: str = "") -> list[ChronicEnrolment]:
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=user, patient_id=patient.id, action="chronic.enrolment.read",
                                  client_address=client_address)
    return list(db.scalars(select(ChronicEnrolment).where(ChronicEnrolment.patient_id == patient.id)
                           .order_by(ChronicEnrolment.condition_code)))


def update_enrolment(db: Session, *, by: User, enrolment_id: int, risk_factors: Sequence[str] | None = None,
                     complications: Sequence[str] | None = None, medicines: Sequence[Any] | None = None,
                     client_address: str = "") -> ChronicEnrolment:
    """Change the registry card's risk factors, complications or medicines (None leaves a list alone)."""
    _require_writer(by)
    row = get_enrolment(db, user=by, enrolment_id=enrolment_id, action="chronic.enrolment.update",
                        client_address=client_address)
    errors: list[dict[str, Any]] = []
    factors = _check_codes("risk_factors", risk_factors, RISK_FACTORS, errors) if risk_factors is not None else None
    comps = _check_codes("complications", complications, COMPLICATIONS, errors) if complications is not None else None
    meds = clean_medicines(medicines, errors) if medicines is not None else None
    _problems_or_raise(errors)
    before = {"risk_factors": row.risk_factors, "complications": row.complications, "medicines": row.medicines}
    if factors is not None:
        row.risk_factors = factors
    if comps is not None:
        row.complications = comps
    if meds is not None:
        row.medicines = meds
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="chronic.enrolment.update", patient_id=row.patient_id,
                 resource=f"chronic_enrolment:{row.id}", detail={"before": before})
    return row


def close_enrolment(db: Session, *, by: User, enrolment_id: int, status: str, reason: str,
                    client_address: str = "") -> ChronicEnrolment:
    """End management (结案): moved away, died, or another reason (which must be written down)."""
    _require_writer(by)
    row = get_enrolment(db, user=by, enrolment_id=enrolment_id, action="chronic.enrolment.close",
                        client_address=client_address)
    reason = (reason or "").strip()
    errors: list[dict[str, Any]] = []
    if status not in CLOSE_STATUSES:
        errors.append(field_error("status", "请选择结案原因 / choose why the enrolment ends"))
    if status == "closed" and not reason:
        errors.append(field_error("reason", "请写明结案原因 / write down the reason"))
    if len(reason) > 200:
        errors.append(field_error("reason", "最多 200 字 / at most 200 characters"))
    _problems_or_raise(errors)
    if row.status != "active":
        raise Conflict(f"登记号 {row.id} 已结案 / enrolment {row.id} is already closed", code="already_closed")
    row.status, row.closed_at, row.closed_reason = status, utcnow(), reason
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="chronic.enrolment.close", patient_id=row.patient_id,
                 resource=f"chronic_enrolment:{row.id}", detail={"status": status, "reason": reason})
    return row


# ---------------------------------------------------------------------------- the patient's chronic page

@dataclass
class PatientSummary:
    patient: Patient
    enrolments: list[ChronicEnrolment]
    condition_names: dict[str, ChronicCondition]
    readings: list[ChronicReading]
    danger_reading_ids: set[int]
    follow_ups: list[ChronicFollowUp]
    tasks: list[ChronicTask]
    contract: FamilyDoctorContract | None
    contract_team: Team | None
    team_names: dict[int, str]
    package: ServicePackage | None


def patient_chronic_summary(db: Session, *, user: User, patient_id: int, client_address: str = "",
                            reading_days: int = 365, reading_limit: int = 500) -> PatientSummary:
    """Everything the patient's chronic page shows, read under one audited access decision."""
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=user, patient_id=patient.id, action="chronic.read",
                                  client_address=client_address)
    enrolments = list(db.scalars(select(ChronicEnrolment).where(ChronicEnrolment.patient_id == patient.id)
                                 .order_by(ChronicEnrolment.status, ChronicEnrolment.condition_code)))
    since = utcnow() - timedelta(days=reading_days)
    readings = list(db.scalars(select(ChronicReading).where(ChronicReading.patient_id == patient.id,
                                                             ChronicReading.measured_at >= since)
                               .order_by(ChronicReading.measured_at.desc()).limit(reading_limit)))
    follow_ups = list(db.scalars(select(ChronicFollowUp).where(ChronicFollowUp.patient_id == patient.id)
                                 .order_by(ChronicFollowUp.visit_on.desc(), ChronicFollowUp.id.desc()).limit(20)))
    open_tasks = list(db.scalars(select(ChronicTask).where(ChronicTask.patient_id == patient.id,
                                                           ChronicTask.status == "open")
                                 .order_by(ChronicTask.due_on)))
    contract = active_contract(db, patient.id)
    team_ids = {e.team_id for e in enrolments} | {t.team_id for t in open_tasks}
    if contract is not None:
        team_ids.add(contract.team_id)
    team_ids.discard(None)
    names = dict(db.execute(select(Team.id, Team.name).where(Team.id.in_(team_ids))).all()) if team_ids else {}
    by_code = condition_rules(db)
    return PatientSummary(
        patient=patient, enrolments=enrolments,
        condition_names={c.code: c for c in db.scalars(select(ChronicCondition))},
        readings=readings, danger_reading_ids={r.id for r in readings if reading_danger(db, r, by_code)},
        follow_ups=follow_ups, tasks=open_tasks, contract=contract,
        contract_team=db.get(Team, contract.team_id) if contract else None, team_names=names,
        package=db.get(ServicePackage, contract.package_code) if contract else None)


# ---------------------------------------------------------------------------- family-doctor contracts

def packages(db: Session) -> list[ServicePackage]:
    return list(db.scalars(select(ServicePackage).where(ServicePackage.active).order_by(ServicePackage.price_fen,
                                                                                          ServicePackage.code)))


def active_contract(db: Session, patient_id: int) -> FamilyDoctorContract | None:
    """The contract in force today (else the next one queued), if any."""
    today = local_today()
    rows = list(db.scalars(select(FamilyDoctorContract).where(FamilyDoctorContract.patient_id == patient_id,
                                                               FamilyDoctorContract.status == "active")
                           .order_by(FamilyDoctorContract.starts_on)))
    current = [c for c in rows if c.starts_on <= today <= c.ends_on]
    return current[0] if current else (rows[0] if rows else None)


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def is_team_member(db: Session, user: User, team_id: int) -> bool:
    if user.practitioner_id is None:
        return False
    return bool(db.scalar(select(exists().where(TeamMember.team_id == team_id,
                                                TeamMember.practitioner_id == user.practitioner_id))))


def _require_team_staff(db: Session, user: User, team: Team, *, what: str) -> None:
    """A team's own members, the admin of the team's centre, or the alliance admin."""
    if user.role == Role.ALLIANCE_ADMIN:
        return
    if user.role == Role.ORG_ADMIN and user.organisation_id == team.organisation_id:
        return
    if user.role == Role.CLINICIAN and is_team_member(db, user, team.id):
        return
    raise AccessDenied(f"只有{team.name}的成员可以{what} / only members of {team.name} may do this")


def _villages_of(teams: Iterable[Team]) -> set[int]:
    return {int(v) for team in teams for v in team.area_ids or []}


def _require_signing_access(db: Session, user: User, patient: Patient, *, villages: set[int], action: str,
                            client_address: str) -> None:
    """A team signs a resident it has a care relationship with, or one living in a village it serves (signing
    then creates the relationship); allowed and audited, or the refusal audited and raised."""
    if access.decide(db, user=user, patient_id=patient.id) is None and patient.area_id in villages:
        audit.record(db, actor=_actor(user, client_address), action=action, patient_id=patient.id,
                     purpose="team_village")
    else:
        access.require_patient_access(db, user=user, patient_id=patient.id, action=action,
                                      client_address=client_address)


def contract_candidate(db: Session, *, user: User, patient_id: int,
                       client_address: str = "") -> tuple[Patient, FamilyDoctorContract | None]:
    """The resident the contract form is filled for, with their current contract: shown to the staff of a
    family-doctor team who may sign them (the rule of `sign_contract`, over all the user's teams), audited."""
    patient = access.resolve_patient(db, patient_id)
    teams = family_teams_for(db, user=user)
    action = "chronic.contract.read"
    if not teams:
        audit.record_now(actor=_actor(user, client_address), action=action, patient_id=patient.id,
                         outcome="denied", purpose="not_team_staff", db=db)
        raise AccessDenied("只有家庭医生团队成员可以为居民签约 / only members of a family-doctor team sign residents")
    _require_signing_access(db, user, patient, villages=_villages_of(teams), action=action,
                            client_address=client_address)
    return patient, active_contract(db, patient.id)


def _next_contract_number(db: Session, day: date) -> str:
    prefix = f"QY{day:%Y%m%d}-"
    last = db.scalar(select(func.max(FamilyDoctorContract.number))
                     .where(FamilyDoctorContract.number.like(f"{prefix}%")))
    seq = int(last.rsplit("-", 1)[1]) + 1 if last else 1
    return f"{prefix}{seq:04d}"


def sign_contract(db: Session, *, by: User, patient_id: int, team_id: int, package_code: str,
                  starts_on: date | None, years: int = 1, client_address: str = "") -> FamilyDoctorContract:
    """Sign a resident to a family-doctor team (签约) and put them on the team's panel.

    A team may sign a resident it already has a care relationship with, or one living in a village it serves.
    A resident is signed to one team at a time: an overlapping contract with another team is a conflict naming
    it; with the same team, a renewal starts after the current period ends.
    """
    patient = access.resolve_patient(db, patient_id)
    errors: list[dict[str, Any]] = []
    team = _family_team(db, team_id, errors)
    package = db.get(ServicePackage, (package_code or "").strip())
    if package is None or not package.active:
        errors.append(field_error("package_code", "请选择服务包 / choose the service package"))
    today = local_today()
    if starts_on is None:
        errors.append(field_error("starts_on", "请填写开始日期 / enter the start date"))
    elif starts_on > today + timedelta(days=366):
        errors.append(field_error("starts_on", "开始日期不能晚于一年以后 / the start cannot be more than a year ahead"))
    elif starts_on < today - timedelta(days=366):
        errors.append(field_error("starts_on", "开始日期不能早于一年以前 / the start cannot be more than a year ago"))
    if not 1 <= years <= MAX_CONTRACT_YEARS:
        errors.append(field_error("years", f"签约年限为 1-{MAX_CONTRACT_YEARS} 年 / "
                                           f"a contract runs 1-{MAX_CONTRACT_YEARS} years"))
    if patient.deceased_on is not None:
        errors.append(field_error("patient_id", "该居民已登记死亡 / this resident is recorded as deceased"))
    _problems_or_raise(errors)
    assert team is not None and package is not None and starts_on is not None
    _require_team_staff(db, by, team, what="签约 / sign")
    _require_signing_access(db, by, patient, villages=_villages_of([team]), action="chronic.contract.sign",
                            client_address=client_address)
    ends_on = _add_years(starts_on, years) - timedelta(days=1)
    overlapping = list(db.scalars(select(FamilyDoctorContract).where(
        FamilyDoctorContract.patient_id == patient.id, FamilyDoctorContract.status == "active",
        FamilyDoctorContract.starts_on <= ends_on, FamilyDoctorContract.ends_on >= starts_on)
        .order_by(FamilyDoctorContract.ends_on.desc())))
    for other in overlapping:
        other_team = db.get(Team, other.team_id)
        other_name = other_team.name if other_team else str(other.team_id)
        if other.team_id != team.id:
            raise Conflict(f"该居民已与{other_name}签约（{other.number}，至 {other.ends_on} 止） / already signed to "
                           f"{other_name} ({other.number}) until {other.ends_on}", code="signed_to_another_team")
        raise Conflict(f"该居民与本团队的签约至 {other.ends_on} 止，续签请从 {other.ends_on + timedelta(days=1)} "
                       f"开始 / already signed to this team until {other.ends_on}; a renewal starts on "
                       f"{other.ends_on + timedelta(days=1)}", code="already_signed")
    contract = FamilyDoctorContract(patient_id=patient.id, team_id=team.id, package_code=package.code,
                                    starts_on=starts_on, ends_on=ends_on, status="active",
                                    signed_by_user_id=by.id)
    for attempt in range(5):  # two desks signing the same second: the loser takes the next number
        contract.number = _next_contract_number(db, today)
        try:
            with db.begin_nested():
                db.add(contract)
                db.flush()
            break
        except IntegrityError:
            if attempt == 4:
                raise
    if not db.scalar(select(exists().where(TeamPanelEntry.team_id == team.id,
                                           TeamPanelEntry.patient_id == patient.id))):
        db.add(TeamPanelEntry(team_id=team.id, patient_id=patient.id))
    for enrolment in db.scalars(select(ChronicEnrolment).where(ChronicEnrolment.patient_id == patient.id,
                                                               ChronicEnrolment.team_id.is_(None))):
        enrolment.team_id = team.id
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="chronic.contract.create", patient_id=patient.id,
                 resource=f"fd_contract:{contract.id}",
                 detail={"number": contract.number, "team_id": team.id, "package": package.code,
                         "starts_on": starts_on.isoformat(), "ends_on": ends_on.isoformat()})
    return contract


def end_contract(db: Session, *, by: User, contract_id: int, reason: str,
                 client_address: str = "") -> FamilyDoctorContract:
    """End a contract early (解约), with the reason kept. The resident stays on the panel: the team may still
    be managing their chronic conditions."""
    contract = db.get(FamilyDoctorContract, contract_id)
    if contract is None:
        raise NotFound(f"没有编号为 {contract_id} 的签约 / no contract {contract_id}")
    reason = (reason or "").strip()
    if not reason or len(reason) > 200:
        raise InvalidInput(CHECK_MESSAGE, field_errors=[field_error(
            "reason", "请写明解约原因（最多 200 字） / write down the reason (at most 200 characters)")])
    team = db.get(Team, contract.team_id)
    assert team is not None
    _require_team_staff(db, by, team, what="解约 / end contracts")
    if contract.status != "active":
        raise Conflict(f"签约 {contract.number} 已结束 / contract {contract.number} has already ended",
                       code="contract_ended")
    contract.status, contract.ended_at, contract.ended_reason = "ended", utcnow(), reason
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="chronic.contract.end", patient_id=contract.patient_id,
                 resource=f"fd_contract:{contract.id}", detail={"number": contract.number, "reason": reason})
    return contract


def expire_contracts(db: Session, today: date | None = None) -> int:
    """Mark ended the contracts whose period is over (a daily job); returns how many."""
    today = today or local_today()
    rows = list(db.scalars(select(FamilyDoctorContract).where(FamilyDoctorContract.status == "active",
                                                               FamilyDoctorContract.ends_on < today)))
    now = utcnow()
    for row in rows:
        row.status, row.ended_at, row.ended_reason = "ended", now, "期满 / period over"
    if rows:
        db.flush()
        audit.record(db, actor=audit.Actor(), action="chronic.contract.expire",
                     detail={"count": len(rows), "contract_ids": [r.id for r in rows[:200]]})
    return len(rows)


@timers.handler(EXPIRE_CONTRACTS_KIND, every=timedelta(hours=6))
def _expire_contracts_job(db: Session, _payload: dict[str, Any]) -> None:
    """A few times a day, so a contract's end shows on the panel the day after it ends."""
    expire_contracts(db)


@dataclass
class PanelRow:
    patient_id: int
    name: str
    sex: str
    birth_date: date
    phone: str
    contract_number: str
    starts_on: date
    ends_on: date
    package_code: str
    package_name: str
    conditions: list[str]
    next_visit_due: date | None
    risk_level: int


@dataclass
class TeamPanel:
    team: Team
    rows: list[PanelRow]
    total: int
    page: int
    pages: int
    q: str


def team_name(db: Session, team_id: int) -> str:
    team = db.get(Team, team_id)
    return team.name if team is not None else str(team_id)


def team_of(db: Session, team_id: int) -> Team:
    team = db.get(Team, team_id)
    if team is None or team.kind != TeamKind.FAMILY_DOCTOR:
        raise NotFound(f"没有编号为 {team_id} 的家庭医生团队 / no family-doctor team {team_id}")
    return team


def team_panel(db: Session, *, user: User, team_id: int, q: str = "", page: int = 1, per_page: int = PANEL_PAGE,
               client_address: str = "") -> TeamPanel:
    """The team's signed residents (active contracts) with period, package, registries and next visit due."""
    team = team_of(db, team_id)
    _require_team_staff(db, user, team, what="查看签约居民 / see the signed residents")
    q = (q or "").strip()
    if len(q) > 60:
        raise InvalidInput("查询内容过长 / search text too long", field_errors=[field_error("q", "at most 60")])
    query = (select(FamilyDoctorContract, Patient)
             .join(Patient, Patient.id == FamilyDoctorContract.patient_id)
             .where(FamilyDoctorContract.team_id == team.id, FamilyDoctorContract.status == "active"))
    if q:
        low = q.lower().replace(" ", "")
        query = query.where(or_(Patient.name.contains(q), Patient.pinyin_initials.startswith(low),
                                func.replace(Patient.pinyin, " ", "").startswith(low), Patient.phone.endswith(q)))
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    found = db.execute(query.order_by(Patient.pinyin, Patient.id).limit(per_page)
                       .offset((page - 1) * per_page)).all()
    ids = [p.id for _, p in found]
    enrolments: dict[int, list[ChronicEnrolment]] = {}
    if ids:
        for e in db.scalars(select(ChronicEnrolment).where(ChronicEnrolment.patient_id.in_(ids),
                                                           ChronicEnrolment.status == "active")):
            enrolments.setdefault(e.patient_id, []).append(e)
    names = {p.code: p.name for p in db.scalars(select(ServicePackage))}
    rows = []
    for contract, patient in found:
        mine = enrolments.get(patient.id, [])
        dues = [e.next_visit_due for e in mine if e.next_visit_due is not None]
        rows.append(PanelRow(patient_id=patient.id, name=patient.name, sex=str(patient.sex),
                             birth_date=patient.birth_date, phone=patient.phone, contract_number=contract.number,
                             starts_on=contract.starts_on, ends_on=contract.ends_on,
                             package_code=contract.package_code, package_name=names.get(contract.package_code, ""),
                             conditions=sorted(e.condition_code for e in mine), next_visit_due=min(dues, default=None),
                             risk_level=max((e.risk_level for e in mine), default=0)))
    audit.record(db, actor=_actor(user, client_address), action="chronic.team_panel.read",
                 resource=f"team:{team.id}", detail={"q": q, "page": page, "patient_ids": ids[:PANEL_PAGE]})
    return TeamPanel(team=team, rows=rows, total=total, page=page, pages=pages, q=q)


@dataclass
class TeamCard:
    team: Team
    organisation_name: str
    signed: int
    enrolled: dict[str, int]
    overdue: int


def my_teams(db: Session, *, user: User) -> list[TeamCard]:
    """The family-doctor teams a clinician belongs to (an org admin: their centre's), with counts for the
    landing page: a few grouped queries whatever the number of teams."""
    teams = worklist.teams_of_user(db, user)
    if not teams:
        return []
    ids = [t.id for t in teams]
    today = local_today()
    E, C = ChronicEnrolment, FamilyDoctorContract
    signed = {team_id: n for team_id, n in db.execute(
        select(C.team_id, func.count()).where(C.team_id.in_(ids), C.status == "active").group_by(C.team_id))}
    enrolled: dict[int, dict[str, int]] = {}
    for team_id, code, n in db.execute(select(E.team_id, E.condition_code, func.count())
                                       .where(E.team_id.in_(ids), E.status == "active")
                                       .group_by(E.team_id, E.condition_code)):
        enrolled.setdefault(team_id, {})[code] = n
    overdue = {team_id: n for team_id, n in db.execute(
        select(E.team_id, func.count()).where(
            E.team_id.in_(ids), E.status == "active", E.next_visit_due < today,
            or_(E.hidden_until.is_(None), E.hidden_until < today)).group_by(E.team_id))}
    org_ids = sorted({t.organisation_id for t in teams})
    orgs = dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(org_ids))).all())
    return [TeamCard(team=team, organisation_name=orgs.get(team.organisation_id, ""), signed=signed.get(team.id, 0),
                     enrolled=enrolled.get(team.id, {}), overdue=overdue.get(team.id, 0)) for team in teams]


def family_teams_for(db: Session, *, user: User) -> list[Team]:
    """Teams the user may sign residents to (the contract form's choices)."""
    if user.role == Role.ALLIANCE_ADMIN:
        return list(db.scalars(select(Team).where(Team.kind == TeamKind.FAMILY_DOCTOR).order_by(Team.name)))
    return worklist.teams_of_user(db, user)


# ---------------------------------------------------------------------------- monitoring points

def _may_manage_points(db: Session, user: User, org: Organisation) -> bool:
    """The alliance admin; staff of the organisation or of the centre that supervises it (a township centre
    sets up its village clinics' points)."""
    if user.role == Role.ALLIANCE_ADMIN:
        return True
    return user.role in WRITE_ROLES and user.organisation_id is not None and \
        user.organisation_id in (org.id, org.parent_id)


def create_point(db: Session, *, by: User, code: str, name: str, organisation_id: int, kind: str = "village_point",
                 area_id: int | None = None, device_serials: Sequence[str] = (),
                 client_address: str = "") -> MonitoringPoint:
    code, name = (code or "").strip(), (name or "").strip()
    serials = [s.strip() for s in device_serials if s and s.strip()]
    errors: list[dict[str, Any]] = []
    if not code or len(code) > 40:
        errors.append(field_error("code", "请填写编号（最多 40 字） / enter a code (at most 40 characters)"))
    if not name or len(name) > 200:
        errors.append(field_error("name", "请填写名称（最多 200 字） / enter a name (at most 200 characters)"))
    if kind not in POINT_KINDS:
        errors.append(field_error("kind", "请选择类别 / choose the kind"))
    if any(len(s) > 60 for s in serials):
        errors.append(field_error("device_serials", "设备序列号最多 60 字 / at most 60 characters"))
    org = db.get(Organisation, organisation_id)
    if org is None:
        errors.append(field_error("organisation_id", "没有这个机构 / no such organisation"))
    _problems_or_raise(errors)
    assert org is not None
    if not _may_manage_points(db, by, org):
        raise AccessDenied("只能为本机构或所辖村卫生室设立监测点 / you set up points for your own organisation "
                           "or the village clinics it supervises")
    if db.scalar(select(exists().where(MonitoringPoint.code == code))):
        raise Conflict(f"编号 {code} 已被使用 / code {code} is taken", code="point_code_taken")
    point = MonitoringPoint(code=code, name=name, kind=kind, organisation_id=org.id,
                            area_id=area_id if area_id is not None else org.area_id, device_serials=serials)
    db.add(point)
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="chronic.point.create",
                 resource=f"monitoring_point:{point.id}", detail={"code": code, "organisation_id": org.id})
    return point


def list_points(db: Session, *, organisation_id: int | None = None, area_id: int | None = None,
                active_only: bool = True) -> list[MonitoringPoint]:
    query = select(MonitoringPoint).order_by(MonitoringPoint.name, MonitoringPoint.id)
    if organisation_id is not None:
        query = query.where(MonitoringPoint.organisation_id == organisation_id)
    if area_id is not None:
        query = query.where(MonitoringPoint.area_id == area_id)
    if active_only:
        query = query.where(MonitoringPoint.active)
    return list(db.scalars(query))


def points_for_user(db: Session, *, user: User) -> list[MonitoringPoint]:
    """The points a user records at: their organisation's, and those of the village clinics it supervises."""
    if user.organisation_id is None:
        return []
    children = select(Organisation.id).where(Organisation.parent_id == user.organisation_id)
    return list(db.scalars(select(MonitoringPoint).where(
        MonitoringPoint.active, or_(MonitoringPoint.organisation_id == user.organisation_id,
                                    MonitoringPoint.organisation_id.in_(children)))
        .order_by(MonitoringPoint.organisation_id != user.organisation_id, MonitoringPoint.name)))


def default_point(db: Session, *, user: User) -> MonitoringPoint | None:
    if user.organisation_id is None:
        return None
    return db.scalar(select(MonitoringPoint).where(MonitoringPoint.organisation_id == user.organisation_id,
                                                   MonitoringPoint.active).order_by(MonitoringPoint.id).limit(1))


# ---------------------------------------------------------------------------- readings

def condition_rules(db: Session) -> dict[str, rules.ConditionRules]:
    """Every condition's thresholds, read once per reading or import rather than once per row and enrolment."""
    return {c.code: rules.ConditionRules.from_row(c.code, c.rules or {}) for c in db.scalars(select(ChronicCondition))}


def _rules_for_kind(by_code: dict[str, rules.ConditionRules], kind: str) -> rules.ConditionRules:
    """The thresholds a reading is judged by outside any registry: the condition that uses that measurement."""
    for parsed in sorted(by_code.values(), key=lambda r: r.code):
        if (kind == "bp" and parsed.uses_bp) or (kind == "glucose" and parsed.uses_glucose):
            return parsed
    return rules.ConditionRules.from_row("", {})


def reading_danger(db: Session, reading: ChronicReading,
                   by_code: dict[str, rules.ConditionRules] | None = None) -> bool:
    """SBP ≥ 180 or DBP ≥ 110; glucose ≥ 16.7 or ≤ 3.9 (the thresholds are the conditions' data)."""
    by_code = by_code if by_code is not None else condition_rules(db)
    if reading.kind == "bp" and reading.sbp is not None and reading.dbp is not None:
        return rules.bp_danger(_rules_for_kind(by_code, "bp"), sbp=reading.sbp, dbp=reading.dbp)
    if reading.kind == "glucose" and reading.glucose_mmol is not None:
        return rules.glucose_danger(_rules_for_kind(by_code, "glucose"), value=reading.glucose_mmol)
    return False


def check_reading(*, kind: str, measured_at: datetime | None, sbp: int | None, dbp: int | None, pulse: int | None,
                  glucose: float | None, glucose_context: str) -> list[dict[str, Any]]:
    """Every field problem of one reading (no database needed), so a form or an import row shows them all."""
    errors: list[dict[str, Any]] = []
    if kind not in READING_KINDS:
        errors.append(field_error("kind", "请选择血压或血糖 / choose blood pressure or glucose"))
    elif kind == "bp":
        if sbp is None and dbp is None:
            errors.append(field_error("sbp", "请填写血压 / enter the blood pressure"))
        errors.extend(rules.check_bp(sbp, dbp, pulse=pulse))
    else:
        if glucose is None:
            errors.append(field_error("glucose", "请填写血糖 / enter the glucose"))
        errors.extend(rules.check_glucose(glucose))
        if glucose_context and glucose_context not in GLUCOSE_CONTEXTS:
            errors.append(field_error("glucose_context", "请选择空腹、随机或餐后 / choose fasting, random or "
                                                         "after a meal"))
    if measured_at is None:
        errors.append(field_error("measured_at", "请填写测量时间 / enter the time of measurement"))
    elif measured_at.tzinfo is None:
        errors.append(field_error("measured_at", "时间缺少时区 / the time has no time zone"))
    elif measured_at > utcnow() + CLOCK_SKEW:
        errors.append(field_error("measured_at", "测量时间不能晚于现在 / the time of measurement cannot be in "
                                                 "the future"))
    return errors


def _apply_to_enrolments(db: Session, reading: ChronicReading, by_code: dict[str, rules.ConditionRules]) -> None:
    """Keep every active enrolment of the patient current: last BP/glucose, last contact, danger risk."""
    _apply_reading(reading, list(db.scalars(select(ChronicEnrolment).where(
        ChronicEnrolment.patient_id == reading.patient_id, ChronicEnrolment.status == "active"))), by_code)


def _apply_reading(reading: ChronicReading, enrolments: list[ChronicEnrolment],
                   by_code: dict[str, rules.ConditionRules]) -> bool:
    """Apply one reading to the given enrolments through `chronic.rules`; True when it is a danger value (by
    the thresholds of the condition that uses that measurement, whatever the enrolments)."""
    for enrolment in enrolments:
        condition_rules = by_code.get(enrolment.condition_code) or rules.ConditionRules.from_row(
            enrolment.condition_code, {})
        danger = False
        if reading.kind == "bp" and reading.sbp is not None and reading.dbp is not None:
            rules.apply_bp(enrolment, sbp=reading.sbp, dbp=reading.dbp, at=reading.measured_at)
            danger = rules.bp_danger(condition_rules, sbp=reading.sbp, dbp=reading.dbp)
        elif reading.kind == "glucose" and reading.glucose_mmol is not None:
            # last_glucose is fasting when known: a random or after-meal value is contact, not the control figure.
            if reading.glucose_context in ("", "fasting"):
                rules.apply_glucose(enrolment, value=reading.glucose_mmol, at=reading.measured_at)
            else:
                rules.apply_contact(enrolment, at=reading.measured_at)
            danger = rules.glucose_danger(condition_rules, value=reading.glucose_mmol)
        enrolment.risk_level = rules.risk_after_reading(enrolment.risk_level or rules.RISK_USUAL, danger=danger)
    by_kind = _rules_for_kind(by_code, reading.kind)
    if reading.kind == "bp" and reading.sbp is not None and reading.dbp is not None:
        return rules.bp_danger(by_kind, sbp=reading.sbp, dbp=reading.dbp)
    if reading.kind == "glucose" and reading.glucose_mmol is not None:
        return rules.glucose_danger(by_kind, value=reading.glucose_mmol)
    return False


def _point(db: Session, point_id: int | None, errors: list[dict[str, Any]]) -> MonitoringPoint | None:
    if point_id is None:
        return None
    point = db.get(MonitoringPoint, point_id)
    if point is None or not point.active:
        errors.append(field_error("point_id", "没有这个监测点 / no such monitoring point"))
        return None
    return point


def record_reading(db: Session, *, by: User, patient_id: int, kind: str, measured_at: datetime | None,
                   sbp: int | None = None, dbp: int | None = None, pulse: int | None = None,
                   glucose: float | None = None, glucose_context: str = "", point_id: int | None = None,
                   source: str = "manual", client_address: str = "") -> ChronicReading:
    """A blood pressure or glucose reading taken at a point or a visit; impossible numbers are refused by field."""
    _require_writer(by)
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=by, patient_id=patient.id, action="chronic.reading.record",
                                  client_address=client_address)
    glucose_context = (glucose_context or "").strip()
    errors = check_reading(kind=kind, measured_at=measured_at, sbp=sbp, dbp=dbp, pulse=pulse, glucose=glucose,
                           glucose_context=glucose_context)
    if source not in READING_SOURCES:
        errors.append(field_error("source", "未知的来源 / unknown source"))
    point = _point(db, point_id, errors)
    organisation_id = point.organisation_id if point is not None else by.organisation_id
    if organisation_id is None and not errors:
        errors.append(field_error("point_id", "请选择监测点 / choose the monitoring point"))
    _problems_or_raise(errors)
    assert measured_at is not None and organisation_id is not None
    reading = _new_reading(patient_id=patient.id, kind=kind, measured_at=measured_at, sbp=sbp, dbp=dbp, pulse=pulse,
                           glucose=glucose, glucose_context=glucose_context, point_id=point_id,
                           organisation_id=organisation_id, source=source, by=by)
    db.add(reading)
    db.flush()
    by_code = condition_rules(db)
    _apply_to_enrolments(db, reading, by_code)
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="chronic.reading.record", patient_id=patient.id,
                 resource=f"chronic_reading:{reading.id}", detail={"kind": kind, "source": source,
                                                                   "danger": reading_danger(db, reading, by_code)})
    return reading


def _new_reading(*, patient_id: int, kind: str, measured_at: datetime, sbp: int | None, dbp: int | None,
                 pulse: int | None, glucose: float | None, glucose_context: str, point_id: int | None,
                 organisation_id: int, source: str, by: User | None, device_serial: str | None = None,
                 device_record_id: str | None = None) -> ChronicReading:
    bp = kind == "bp"
    return ChronicReading(
        patient_id=patient_id, point_id=point_id, organisation_id=organisation_id, kind=kind,
        measured_at=measured_at, sbp=sbp if bp else None, dbp=dbp if bp else None, pulse=pulse if bp else None,
        glucose_mmol=None if bp else glucose, glucose_context="" if bp else glucose_context, source=source,
        device_serial=device_serial, device_record_id=device_record_id,
        recorded_by_user_id=by.id if by is not None else None)


def get_reading(db: Session, *, user: User, reading_id: int, client_address: str = "") -> ChronicReading:
    reading = db.get(ChronicReading, reading_id)
    if reading is None:
        raise NotFound(f"没有编号为 {reading_id} 的读数 / no reading {reading_id}")
    access.require_patient_access(db, user=user, patient_id=reading.patient_id, action="chronic.reading.read",
                                  client_address=client_address)
    return reading


# ---------------------------------------------------------------------------- device CSV import

# Header spellings (lower case, spaces, underscores and a unit in brackets removed) -> our field.
HEADERS = {
    "device_serial": ("设备序列号", "设备编号", "设备号", "deviceserial", "serial", "serialnumber", "deviceid"),
    "record_id": ("记录编号", "记录号", "记录id", "recordid", "record", "recordno"),
    "resident_id": ("身份证号", "身份证", "身份证号码", "居民身份证号", "residentid", "idnumber", "idcard"),
    "patient_id": ("居民编号", "患者编号", "档案号", "patientid", "patient"),
    "measured_at": ("测量时间", "时间", "measuredat", "measuredtime", "time", "datetime"),
    "sbp": ("收缩压", "高压", "sbp", "systolic"),
    "dbp": ("舒张压", "低压", "dbp", "diastolic"),
    "pulse": ("脉搏", "心率", "pulse", "heartrate", "hr"),
    "glucose": ("血糖", "血糖值", "glucose", "bloodglucose", "bg"),
    "glucose_context": ("测量状态", "血糖类型", "测量时段", "glucosecontext", "context", "mealstatus"),
}
CONTEXT_WORDS = {"空腹": "fasting", "fasting": "fasting", "fbg": "fasting", "fpg": "fasting",
                 "随机": "random", "random": "random", "rbg": "random",
                 "餐后": "post_meal", "餐后2小时": "post_meal", "餐后两小时": "post_meal", "postmeal": "post_meal",
                 "post_meal": "post_meal", "2hpg": "post_meal"}
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%dT%H:%M", "%Y%m%d%H%M%S", "%Y%m%d %H:%M")
_UNIT = re.compile(r"[(（\[].*?[)）\]]")


def header_key(text: str) -> str:
    return _UNIT.sub("", text or "").strip().lower().replace(" ", "").replace("_", "").replace("-", "")


_HEADER_INDEX = {header_key(spelling): name for name, spellings in HEADERS.items() for spelling in spellings}


@dataclass
class ImportReport:
    filename: str
    point_id: int
    total: int = 0
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    danger: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    reading_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "point_id": self.point_id, "total": self.total, "added": self.added,
                "duplicates": self.duplicates, "failed": self.failed, "danger": self.danger, "errors": self.errors}


def decode_text(content: bytes) -> str:
    """UTF-8 (with or without a BOM), else GB18030 (what Chinese Windows and many devices write)."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return content.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise InvalidInput("文件编码无法识别（应为 UTF-8 或 GB18030） / file encoding not recognised (UTF-8 or GB18030 "
                       "expected)", field_errors=[field_error("file", "encoding")])


def parse_local_time(text: str) -> datetime | None:
    """A device's local (Shanghai) wall time as an aware instant; None when it is not a time."""
    text = (text or "").strip()
    for fmt in TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=LOCAL_TZ)
        except ValueError:
            continue
    return None


def _num(text: str, name: str, errors: list[dict[str, Any]], *, whole: bool) -> Any:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
        if whole:
            if value != int(value):
                raise ValueError
            return int(value)
        return round(value, 2)
    except (ValueError, OverflowError):
        errors.append(field_error(name, f"“{text[:20]}” 不是数字 / “{text[:20]}” is not a number"))
        return None


@dataclass
class _ImportBatch:
    """What the rows of one file share, read in a few queries up front instead of several per row: readings
    already stored, the residents named by ID number, each resident's active enrolments and access decision."""

    seen: set[tuple[str, str]]
    by_number: dict[str, int]
    enrolments: dict[int, list[ChronicEnrolment]]
    purposes: dict[int, str | None]
    by_code: dict[str, rules.ConditionRules]
    written: dict[int, list[int]] = field(default_factory=dict)  # patient -> reading ids, for the audit
    dangers: dict[int, int] = field(default_factory=dict)


def _prepare_batch(db: Session, rows: list[dict[str, str]]) -> _ImportBatch:
    serials = sorted({r.get("device_serial", "") for r in rows} - {""})
    record_ids = sorted({r.get("record_id", "") for r in rows} - {""})
    seen: set[tuple[str, str]] = set()
    if serials and record_ids:
        for chunk in _chunks(record_ids):
            seen.update((a, b) for a, b in db.execute(select(ChronicReading.device_serial,
                                                             ChronicReading.device_record_id).where(
                ChronicReading.device_serial.in_(serials), ChronicReading.device_record_id.in_(chunk))).all())
    numbers = sorted({normalise_resident_id(r.get("resident_id", "")) for r in rows} - {""})
    by_number: dict[str, int] = {}
    for chunk in _chunks(numbers):
        by_number.update(db.execute(select(PatientIdentifier.value, PatientIdentifier.patient_id).where(
            PatientIdentifier.type == IdentifierType.RESIDENT_ID, PatientIdentifier.value.in_(chunk))).all())
    return _ImportBatch(seen=seen, by_number=by_number, enrolments={}, purposes={}, by_code=condition_rules(db))


def _patient_for_row(db: Session, batch: _ImportBatch, resident_id: str, patient_id: str,
                     errors: list[dict[str, Any]]) -> Patient | None:
    if resident_id:
        pid = batch.by_number.get(normalise_resident_id(resident_id))
        if pid is None:
            errors.append(field_error("resident_id", "没有此身份证号的居民 / no resident with this ID number"))
            return None
    elif patient_id:
        if not is_id(patient_id):
            errors.append(field_error("patient_id", "居民编号须为数字 / the patient id must be a number"))
            return None
        pid = int(patient_id)
    else:
        errors.append(field_error("resident_id", "缺少身份证号或居民编号 / the resident ID or patient id is missing"))
        return None
    try:
        return access.resolve_patient(db, pid)
    except NotFound:
        errors.append(field_error("patient_id", f"没有编号为 {pid} 的居民 / no patient {pid}"))
        return None


def _read_rows(content: bytes) -> tuple[list[str | None], list[list[str]]]:
    text = decode_text(content)
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    if not rows:
        raise InvalidInput("文件是空的 / the file is empty", field_errors=[field_error("file", "empty")])
    columns = [_HEADER_INDEX.get(header_key(h)) for h in rows[0]]
    return columns, rows[1:]


def import_device_csv(db: Session, *, by: User, point_id: int, filename: str, content: bytes,
                      client_address: str = "") -> ImportReport:
    """A blood-pressure monitor's or glucometer's export: one reading a row, each in a savepoint.

    Columns (Chinese or English headers): device serial, record id, resident ID (身份证) or patient id, measured
    at (local time), sbp, dbp, pulse, or glucose with its context. A bad row is reported (row number as in a
    spreadsheet, the header being row 1; field; message) and the rest kept; a row already imported (same device
    serial and record id) counts as a duplicate. A resident without a care relationship is a row error.
    """
    _require_writer(by)
    errors: list[dict[str, Any]] = []
    point = _point(db, point_id, errors)
    if not content:
        errors.append(field_error("file", "请选择文件 / choose a file"))
    elif len(content) > IMPORT_MAX_BYTES:
        errors.append(field_error("file", f"文件超过 {IMPORT_MAX_BYTES // (1024 * 1024)} MB / the file is over "
                                          f"{IMPORT_MAX_BYTES // (1024 * 1024)} MB"))
    _problems_or_raise(errors)
    assert point is not None
    org = db.get(Organisation, point.organisation_id)
    if by.role != Role.ALLIANCE_ADMIN and (org is None or by.organisation_id not in (org.id, org.parent_id)):
        raise AccessDenied("只能导入本机构或所辖村卫生室监测点的数据 / you import for your own organisation's points "
                           "or those of the village clinics it supervises")
    columns, rows = _read_rows(content)
    missing = [name for name in ("device_serial", "record_id", "measured_at") if name not in columns]
    if "resident_id" not in columns and "patient_id" not in columns:
        missing.append("resident_id")
    if "sbp" not in columns and "glucose" not in columns:
        missing.append("sbp")
    if missing:
        names = "、".join(HEADERS[m][0] for m in missing)
        raise InvalidInput(f"缺少列：{names} / missing columns: {', '.join(missing)}",
                           field_errors=[field_error("file", f"missing column {m}") for m in missing])
    if len(rows) > IMPORT_MAX_ROWS:
        raise InvalidInput(f"一次最多导入 {IMPORT_MAX_ROWS} 行 / at most {IMPORT_MAX_ROWS} rows at a time",
                           field_errors=[field_error("file", "too many rows")])
    report = ImportReport(filename=(filename or "")[:200], point_id=point.id)
    actor = _actor(by, client_address)
    # Begin the write transaction now: otherwise on SQLite the first row's savepoint would become the outer
    # transaction and each row would commit on its own (slowly, and not with the rest of the import).
    take_sqlite_write_lock(db)
    parsed = [(number, {name: raw[i].strip() for i, name in enumerate(columns) if name and i < len(raw)})
              for number, raw in enumerate(rows, start=2) if any(cell.strip() for cell in raw)]
    batch = _prepare_batch(db, [values for _, values in parsed])
    for number, values in parsed:
        report.total += 1
        outcome = _import_row(db, by=by, point=point, values=values, report=report, batch=batch)
        if outcome:
            report.failed += 1
            report.errors.extend({"row": number, **e} for e in outcome)
    # One audit event per resident (with every reading id), in the import's transaction.
    for patient_id, reading_ids in batch.written.items():
        audit.record(db, actor=actor, action="chronic.reading.record", patient_id=patient_id,
                     purpose=batch.purposes.get(patient_id) or "", resource=f"monitoring_point:{point.id}",
                     detail={"source": "device_csv", "reading_ids": reading_ids,
                             "danger": batch.dangers.get(patient_id, 0), "filename": report.filename})
    audit.record(db, actor=actor, action="chronic.reading.import", resource=f"monitoring_point:{point.id}",
                 detail={k: v for k, v in report.as_dict().items() if k != "errors"} | {"errors": len(report.errors)})
    return report


def _import_row(db: Session, *, by: User, point: MonitoringPoint, values: dict[str, str], report: ImportReport,
                batch: _ImportBatch) -> list[dict[str, Any]]:
    """One row: its field errors (nothing written), or [] when added or a duplicate."""
    errors: list[dict[str, Any]] = []
    serial, record_id = values.get("device_serial", ""), values.get("record_id", "")
    if not serial or len(serial) > 60:
        errors.append(field_error("device_serial", "缺少设备序列号（最多 60 字） / the device serial is missing "
                                                   "(at most 60 characters)"))
    if not record_id or len(record_id) > 60:
        errors.append(field_error("record_id", "缺少记录编号（最多 60 字） / the record id is missing "
                                               "(at most 60 characters)"))
    if not errors and (serial, record_id) in batch.seen:
        report.duplicates += 1
        return []
    patient = _patient_for_row(db, batch, values.get("resident_id", ""), values.get("patient_id", ""), errors)
    measured_text = values.get("measured_at", "")
    measured_at = parse_local_time(measured_text)
    if measured_text and measured_at is None:
        errors.append(field_error("measured_at", f"时间格式应为 2026-12-05 08:30 / the time must read like "
                                                 f"2026-12-05 08:30, not “{measured_text[:30]}”"))
    sbp = _num(values.get("sbp", ""), "sbp", errors, whole=True)
    dbp = _num(values.get("dbp", ""), "dbp", errors, whole=True)
    pulse = _num(values.get("pulse", ""), "pulse", errors, whole=True)
    glucose = _num(values.get("glucose", ""), "glucose", errors, whole=False)
    context_text = values.get("glucose_context", "")
    context = CONTEXT_WORDS.get(header_key(context_text), "") if context_text else ""
    if context_text and not context:
        errors.append(field_error("glucose_context", f"“{context_text[:20]}” 应为 空腹、随机 或 餐后 / should be "
                                                     "fasting, random or post-meal"))
    if (sbp is not None or dbp is not None) and glucose is not None:
        errors.append(field_error("glucose", "一行只能有一个读数：血压或血糖 / one reading a row: blood pressure "
                                             "or glucose"))
    kind = "glucose" if glucose is not None and sbp is None and dbp is None else "bp"
    checked = check_reading(kind=kind, measured_at=measured_at, sbp=sbp, dbp=dbp, pulse=pulse, glucose=glucose,
                            glucose_context=context)
    unreadable_time = bool(measured_text) and measured_at is None  # already said above
    errors.extend(e for e in checked if not (unreadable_time and e["field"] == "measured_at"))
    if patient is not None and not errors:
        if patient.id not in batch.purposes:
            batch.purposes[patient.id] = access.decide(db, user=by, patient_id=patient.id)
        if batch.purposes[patient.id] is None:
            errors.append(field_error("resident_id", "您与该居民没有诊疗关系 / no care relationship with this "
                                                     "resident"))
    if errors or patient is None or measured_at is None:
        return errors
    try:
        with db.begin_nested():
            reading = _new_reading(patient_id=patient.id, kind=kind, measured_at=measured_at, sbp=sbp, dbp=dbp,
                                   pulse=pulse, glucose=glucose, glucose_context=context, point_id=point.id,
                                   organisation_id=point.organisation_id, source="device_csv", by=by,
                                   device_serial=serial, device_record_id=record_id)
            db.add(reading)
            db.flush()
            if patient.id not in batch.enrolments:
                batch.enrolments[patient.id] = list(db.scalars(select(ChronicEnrolment).where(
                    ChronicEnrolment.patient_id == patient.id, ChronicEnrolment.status == "active")))
            danger = _apply_reading(reading, batch.enrolments[patient.id], batch.by_code)
            db.flush()
    except IntegrityError:  # the same record imported at the same moment by another desk
        batch.enrolments.pop(patient.id, None)  # the rolled-back changes are expired; read them again
        report.duplicates += 1
        return []
    batch.seen.add((serial, record_id))
    batch.written.setdefault(patient.id, []).append(reading.id)
    batch.dangers[patient.id] = batch.dangers.get(patient.id, 0) + int(danger)
    report.added += 1
    report.danger += int(danger)
    report.reading_ids.append(reading.id)
    return []


def template_csv() -> bytes:
    """An example export with the Chinese headers, for the import page's download link."""
    lines = ["设备序列号,记录编号,身份证号,居民编号,测量时间,收缩压,舒张压,脉搏,血糖,测量状态",
             "BP-0001,000123,,1,2026-12-01 08:30,148,92,76,,",
             "GL-0001,000456,,1,2026-12-01 07:10,,,,6.8,空腹"]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8-sig")


def reading_label(reading: ChronicReading) -> str:
    if reading.kind == "bp":
        return f"{reading.sbp}/{reading.dbp} mmHg" + (f" · {reading.pulse}/min" if reading.pulse else "")
    context = GLUCOSE_CONTEXTS.get(reading.glucose_context, ("", ""))[0]
    return f"{reading.glucose_mmol} mmol/L" + (f" · {context}" if context else "")


def local_now_input() -> str:
    """Now, as a datetime-local input's value in Shanghai."""
    return utcnow().astimezone(LOCAL_TZ).strftime("%Y-%m-%dT%H:%M")
