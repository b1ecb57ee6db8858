"""Outreach rules: who may plan, studio agreements, aid batches and rotations, sessions and weekly schedules.

A session is refused when its person is elsewhere: another session of theirs overlaps it once the road time
between the two hosts is added on both sides (known from the county's road network; outside it, straight
line × detour factor at the fallback speed). A studio's session must fall inside one of the studio's agreement
periods and belong to one of its members; a rotation's session inside the rotation. Bookings: booking.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.access.service import actor_of
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import LOCAL_TZ, local_today, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import (
    Organisation,
    OrgLevel,
    Post,
    Practitioner,
    Team,
    TeamKind,
    TeamMember,
)
from healthrelay.geo import service as geo
from healthrelay.outreach.models import (
    SESSION_KINDS,
    AidBatch,
    AidRelationship,
    AidRotation,
    OutreachSchedule,
    OutreachSession,
    OutreachSetting,
    StudioAgreement,
)

PLANNER_ROLES = (Role.ORG_ADMIN, Role.ALLIANCE_ADMIN)
MAX_SESSION_MINUTES = 12 * 60
MAX_CAPACITY = 500
MAX_WAITLIST = 200
MAX_SCHEDULE_DAYS = 366
PUBLIC_DAYS = 56  # the public page shows the next eight weeks


def _err(name: str, zh: str, en: str) -> dict[str, Any]:
    return field_error(name, f"{zh} / {en}")


def temporary_number() -> str:
    """A unique placeholder until the row has its id (two plans at once must not share a number)."""
    return f"tmp-{uuid.uuid4().hex[:24]}"


def local_dt(day: date, hhmm: str) -> datetime:
    """A local (Asia/Shanghai) day and HH:MM as an aware datetime."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=LOCAL_TZ)


def check_hhmm(value: str, name: str = "start_time") -> str:
    try:
        hour, minute = (int(x) for x in value.strip().split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise InvalidInput("时间格式须为 时:分 / time must be HH:MM",
                           field_errors=[_err(name, "须为 08:30 这样的时间", "use HH:MM, e.g. 08:30")]) from None
    return f"{hour:02d}:{minute:02d}"


# ---------------------------------------------------------------------------- who may do what

def is_planner(user: User) -> bool:
    """The 医务科 of a member (org admin) or the alliance admin plans outreach."""
    return user.role in PLANNER_ROLES and user.organisation_id is not None


def require_planner(user: User) -> None:
    if not is_planner(user):
        raise AccessDenied("只有医务科（机构管理员）或医共体管理员可以安排下沉 / "
                           "only a member's medical-affairs office or the alliance admin plans outreach")


def may_manage_session(user: User, session: OutreachSession) -> bool:
    """Planners, staff of the host's administration, and the session's own person."""
    if user.role == Role.ALLIANCE_ADMIN:
        return True
    if user.role == Role.ORG_ADMIN and user.organisation_id == session.host_organisation_id:
        return True
    if is_planner(user) and session.created_by_user_id == user.id:
        return True
    return user.practitioner_id is not None and user.practitioner_id == session.practitioner_id


def may_staff_session(db: Session, user: User, session: OutreachSession) -> bool:
    """Who sees a session's bookings and records attendance: its managers and the host's clinicians."""
    if may_manage_session(user, session):
        return True
    return user.role == Role.CLINICIAN and user.organisation_id == session.host_organisation_id


def record_audit(db: Session, by: User, action: str, *, resource: str, **detail: Any) -> None:
    audit.record(db, actor=actor_of(by), action=action, resource=resource, detail=detail)


# ---------------------------------------------------------------------------- settings and travel

def settings_of(db: Session) -> dict[str, float]:
    return {row.key: row.value for row in db.scalars(select(OutreachSetting))}


def travel_minutes(db: Session, a: Organisation, b: Organisation, *,
                   settings: dict[str, float] | None = None) -> float | None:
    """Road minutes from one organisation to another; None when either has no coordinates.

    Inside the county's road network this is Dijkstra on the roads; a provincial hospital beyond the network
    gets the straight line × detour factor at the fallback speed (the road network would snap it to the edge
    of the county and report nonsense).
    """
    if a.id == b.id:
        return 0.0
    if None in (a.latitude, a.longitude, b.latitude, b.longitude):
        return None
    assert a.latitude is not None and a.longitude is not None and b.latitude is not None and b.longitude is not None
    km = straight_km(a, b)
    s = settings if settings is not None else settings_of(db)
    fallback = km * s.get("detour_factor", 1.3) / s.get("fallback_kmh", 60.0) * 60.0
    if OrgLevel.PROVINCIAL in (a.level, b.level):
        return fallback
    try:
        network = geo.network_for(db)
        if network.node_count == 0:
            return fallback
        minutes = network.minutes_between((a.latitude, a.longitude), (b.latitude, b.longitude))
    except (ValueError, IndexError):
        return fallback
    return fallback if minutes is None else minutes


def straight_km(a: Organisation, b: Organisation) -> float:
    assert a.latitude is not None and a.longitude is not None and b.latitude is not None and b.longitude is not None
    return geo.haversine_m(a.latitude, a.longitude, b.latitude, b.longitude) / 1000.0


# ---------------------------------------------------------------------------- studios and agreements

def studio(db: Session, team_id: int) -> Team:
    team = db.get(Team, team_id)
    if team is None or team.kind != TeamKind.EXPERT_STUDIO:
        raise NotFound("没有这个专家工作室 / no such expert studio")
    return team


def studio_members(db: Session, team_id: int) -> list[int]:
    return list(db.scalars(select(TeamMember.practitioner_id).where(TeamMember.team_id == team_id)))


def agreements_of(db: Session, team_id: int) -> list[StudioAgreement]:
    return list(db.scalars(select(StudioAgreement).where(StudioAgreement.team_id == team_id)
                           .order_by(StudioAgreement.starts_on)))


def add_agreement(db: Session, *, by: User, team_id: int, starts_on: date, ends_on: date,
                  signed_on: date | None = None, sessions_per_month: int = 0, goals: str = "") -> StudioAgreement:
    require_planner(by)
    studio(db, team_id)
    if ends_on < starts_on:
        raise InvalidInput("协议结束日期早于开始日期 / the agreement ends before it starts",
                           field_errors=[_err("ends_on", "须不早于开始日期", "must not be before the start")])
    if not 0 <= sessions_per_month <= 200:
        raise InvalidInput("每月次数须在 0 到 200 之间 / sessions a month must be 0 to 200",
                           field_errors=[_err("sessions_per_month", "0–200", "0 to 200")])
    overlap = db.scalars(select(StudioAgreement).where(
        StudioAgreement.team_id == team_id, StudioAgreement.starts_on <= ends_on,
        StudioAgreement.ends_on >= starts_on)).first()
    if overlap is not None:
        raise Conflict(f"与已有协议（{overlap.starts_on} 至 {overlap.ends_on}）重叠 / overlaps the agreement "
                       f"{overlap.starts_on} to {overlap.ends_on}", code="agreement_overlap")
    row = StudioAgreement(team_id=team_id, starts_on=starts_on, ends_on=ends_on, signed_on=signed_on,
                          sessions_per_month=sessions_per_month, goals=goals.strip()[:4000],
                          created_by_user_id=by.id)
    db.add(row)
    db.flush()
    record_audit(db, by, "outreach.agreement_added", resource=f"team:{team_id}", agreement_id=row.id)
    return row


def agreement_covering(db: Session, team_id: int, day: date) -> StudioAgreement | None:
    return db.scalars(select(StudioAgreement).where(
        StudioAgreement.team_id == team_id, StudioAgreement.starts_on <= day,
        StudioAgreement.ends_on >= day)).first()


# ---------------------------------------------------------------------------- aid relationships

def create_aid_relationship(db: Session, *, by: User, code: str, name: str, supporting_organisation_id: int,
                            supported_organisation_id: int, starts_on: date, ends_on: date,
                            alliance_id: int | None = None, goals: str = "") -> AidRelationship:
    require_planner(by)
    errors = []
    if not code.strip():
        errors.append(_err("code", "请填写编号", "a code is required"))
    if not name.strip():
        errors.append(_err("name", "请填写名称", "a name is required"))
    for fname, org_id in (("supporting_organisation_id", supporting_organisation_id),
                          ("supported_organisation_id", supported_organisation_id)):
        if db.get(Organisation, org_id) is None:
            errors.append(_err(fname, "没有这个机构", "no such organisation"))
    if supporting_organisation_id == supported_organisation_id:
        errors.append(_err("supported_organisation_id", "帮扶双方不能是同一机构", "cannot help itself"))
    if ends_on < starts_on:
        errors.append(_err("ends_on", "须不早于开始日期", "must not be before the start"))
    if errors:
        raise InvalidInput("帮扶关系有误 / the aid relationship has problems", field_errors=errors)
    if db.scalars(select(AidRelationship).where(AidRelationship.code == code.strip())).first():
        raise Conflict(f"编号 {code} 已存在 / code {code} is taken", code="duplicate_code")
    row = AidRelationship(code=code.strip(), name=name.strip(), supporting_organisation_id=supporting_organisation_id,
                          supported_organisation_id=supported_organisation_id, alliance_id=alliance_id,
                          starts_on=starts_on, ends_on=ends_on, goals=goals.strip())
    db.add(row)
    db.flush()
    record_audit(db, by, "outreach.aid_created", resource=f"outreach_aid:{row.id}")
    return row


def add_batch(db: Session, *, by: User, relationship_id: int, number: int, starts_on: date, ends_on: date,
              goals: str = "") -> AidBatch:
    require_planner(by)
    rel = db.get(AidRelationship, relationship_id)
    if rel is None:
        raise NotFound("没有这个帮扶关系 / no such aid relationship")
    if ends_on < starts_on or starts_on < rel.starts_on or ends_on > rel.ends_on:
        raise InvalidInput(f"批次须在帮扶期（{rel.starts_on} 至 {rel.ends_on}）之内 / a batch must fall inside the "
                           f"relationship ({rel.starts_on} to {rel.ends_on})",
                           field_errors=[_err("starts_on", "超出帮扶期", "outside the relationship")])
    if number < 1 or db.scalars(select(AidBatch).where(AidBatch.relationship_id == relationship_id,
                                                       AidBatch.number == number)).first():
        raise Conflict(f"第 {number} 批已存在或编号无效 / batch {number} exists or is invalid", code="duplicate_batch")
    row = AidBatch(relationship_id=relationship_id, number=number, starts_on=starts_on, ends_on=ends_on,
                   goals=goals.strip())
    db.add(row)
    db.flush()
    return row


def add_rotation(db: Session, *, by: User, batch_id: int, practitioner_id: int, posted_organisation_id: int,
                 starts_on: date, ends_on: date, department_id: int | None = None, role: str = "",
                 goals: str = "") -> AidRotation:
    require_planner(by)
    batch = db.get(AidBatch, batch_id)
    if batch is None:
        raise NotFound("没有这个批次 / no such batch")
    errors = []
    if db.get(Practitioner, practitioner_id) is None:
        errors.append(_err("practitioner_id", "没有这位医生", "no such practitioner"))
    if db.get(Organisation, posted_organisation_id) is None:
        errors.append(_err("posted_organisation_id", "没有这个机构", "no such organisation"))
    if ends_on < starts_on or starts_on < batch.starts_on or ends_on > batch.ends_on:
        errors.append(_err("starts_on", f"须在本批（{batch.starts_on} 至 {batch.ends_on}）之内",
                           f"must fall inside the batch ({batch.starts_on} to {batch.ends_on})"))
    if errors:
        raise InvalidInput("轮派有误 / the rotation has problems", field_errors=errors)
    clash = db.scalars(select(AidRotation).where(
        AidRotation.practitioner_id == practitioner_id, AidRotation.starts_on <= ends_on,
        AidRotation.ends_on >= starts_on)).first()
    if clash is not None:
        raise Conflict(f"该专家 {clash.starts_on} 至 {clash.ends_on} 已在另一轮派中 / this expert is already on a "
                       f"rotation from {clash.starts_on} to {clash.ends_on}", code="rotation_overlap")
    row = AidRotation(batch_id=batch_id, practitioner_id=practitioner_id, posted_organisation_id=posted_organisation_id,
                      department_id=department_id, starts_on=starts_on, ends_on=ends_on, role=role.strip()[:60],
                      goals=goals.strip())
    db.add(row)
    db.flush()
    return row


# ---------------------------------------------------------------------------- sessions

@dataclass
class SessionPlan:
    kind: str
    title: str
    practitioner_id: int
    host_organisation_id: int
    starts_at: datetime
    minutes: int
    capacity: int = 0
    waitlist_limit: int = 10
    place: str = ""
    department_id: int | None = None
    specialty_id: int | None = None
    studio_team_id: int | None = None
    rotation_id: int | None = None


@dataclass
class SessionConflict:
    """Why a person cannot be at a session: the other session and the road time between the two hosts."""

    starts_at: datetime
    other_number: str
    other_host: str
    other_starts_at: datetime
    other_ends_at: datetime
    travel_minutes: float | None

    def message(self) -> str:
        when = self.other_starts_at.astimezone(LOCAL_TZ)
        end = self.other_ends_at.astimezone(LOCAL_TZ)
        day = self.starts_at.astimezone(LOCAL_TZ).date()
        travel = (f"，两地车程约 {self.travel_minutes:.0f} 分钟 / {self.travel_minutes:.0f} min by road between them"
                  if self.travel_minutes else " / overlaps")
        return (f"{day}：此人 {when:%H:%M}–{end:%H:%M} 在{self.other_host}（{self.other_number}）{travel}"
                f" — {day}: this person is at {self.other_host} {when:%H:%M}-{end:%H:%M} ({self.other_number})")


@dataclass
class _Checked:
    host: Organisation
    practitioner: Practitioner
    specialty_id: int | None
    errors: list[dict[str, Any]] = field(default_factory=list)


def _check_plan(db: Session, plan: SessionPlan, *, allow_past: bool) -> _Checked:
    """Name every problem of a plan at once (the form marks each field)."""
    errors: list[dict[str, Any]] = []
    host = db.get(Organisation, plan.host_organisation_id)
    person = db.get(Practitioner, plan.practitioner_id)
    if plan.kind not in SESSION_KINDS:
        errors.append(_err("kind", "类型无效", f"kind must be one of {', '.join(SESSION_KINDS)}"))
    if not plan.title.strip() or len(plan.title) > 200:
        errors.append(_err("title", "请填写标题（200 字以内）", "a title of at most 200 characters is required"))
    if host is None:
        errors.append(_err("host_organisation_id", "没有这个机构", "no such organisation"))
    if person is None:
        errors.append(_err("practitioner_id", "没有这位医生", "no such practitioner"))
    if plan.starts_at.tzinfo is None:
        errors.append(_err("starts_at", "须带时区", "must carry a zone offset"))
    elif not allow_past and plan.starts_at < utcnow():
        errors.append(_err("starts_at", "不能安排在过去", "cannot be in the past"))
    if not 15 <= plan.minutes <= MAX_SESSION_MINUTES:
        errors.append(_err("minutes", "时长须在 15 到 720 分钟之间", "length must be 15 to 720 minutes"))
    bookable = plan.kind == "clinic"
    if bookable and not 1 <= plan.capacity <= MAX_CAPACITY:
        errors.append(_err("capacity", "门诊号源须在 1 到 500 之间", "a clinic needs 1 to 500 places"))
    elif not bookable and not 0 <= plan.capacity <= MAX_CAPACITY:
        errors.append(_err("capacity", "须在 0 到 500 之间", "must be 0 to 500"))
    if not 0 <= plan.waitlist_limit <= MAX_WAITLIST:
        errors.append(_err("waitlist_limit", "候补人数须在 0 到 200 之间", "waitlist must be 0 to 200"))
    specialty_id = plan.specialty_id
    if plan.studio_team_id is not None:
        team = db.get(Team, plan.studio_team_id)
        if team is None or team.kind != TeamKind.EXPERT_STUDIO:
            errors.append(_err("studio_team_id", "没有这个专家工作室", "no such expert studio"))
        else:
            specialty_id = specialty_id or team.specialty_id
            if person is not None and plan.practitioner_id not in studio_members(db, team.id):
                errors.append(_err("practitioner_id", f"{person.name} 不是{team.name}的成员",
                                   f"{person.name} is not a member of this studio"))
            if plan.starts_at.tzinfo is not None:
                day = plan.starts_at.astimezone(LOCAL_TZ).date()
                if agreement_covering(db, team.id, day) is None:
                    periods = "；".join(f"{a.starts_on} 至 {a.ends_on}" for a in agreements_of(db, team.id)) or "无"
                    errors.append(_err("starts_at", f"{day} 不在工作室协议期内（协议期：{periods}）",
                                       f"{day} is outside the studio's agreement period(s): {periods}"))
    if plan.rotation_id is not None:
        rotation = db.get(AidRotation, plan.rotation_id)
        if rotation is None:
            errors.append(_err("rotation_id", "没有这个轮派", "no such rotation"))
        else:
            if rotation.practitioner_id != plan.practitioner_id:
                errors.append(_err("practitioner_id", "轮派专家与所选医生不符", "not this rotation's expert"))
            if plan.starts_at.tzinfo is not None:
                day = plan.starts_at.astimezone(LOCAL_TZ).date()
                if not rotation.starts_on <= day <= rotation.ends_on:
                    errors.append(_err("starts_at", f"{day} 不在轮派期（{rotation.starts_on} 至 {rotation.ends_on}）内",
                                       f"{day} is outside the rotation ({rotation.starts_on} to {rotation.ends_on})"))
    if host is None or person is None or errors:
        raise InvalidInput("下沉安排有误 / the session has problems", field_errors=errors)
    return _Checked(host=host, practitioner=person, specialty_id=specialty_id)


def conflicts_for(db: Session, *, practitioner_id: int, host: Organisation,
                  windows: Iterable[tuple[datetime, datetime]], exclude_ids: Iterable[int] = (),
                  settings: dict[str, float] | None = None) -> list[SessionConflict]:
    """Every window the person cannot make: another live session overlaps once road time is added."""
    windows = sorted(windows)
    if not windows:
        return []
    exclude = set(exclude_ids)
    # Nobody drives more than a day between hosts: look a day either side of the windows.
    rows = db.execute(select(OutreachSession, Organisation).join(
        Organisation, Organisation.id == OutreachSession.host_organisation_id).where(
        OutreachSession.practitioner_id == practitioner_id,
        OutreachSession.status.in_(("published", "done")),
        OutreachSession.starts_at < windows[-1][1] + timedelta(days=1),
        OutreachSession.ends_at > windows[0][0] - timedelta(days=1))).all()
    s = settings if settings is not None else settings_of(db)
    travel_cache: dict[int, float | None] = {}
    found: list[SessionConflict] = []
    for start, end in windows:
        for other, other_host in rows:
            if other.id in exclude:
                continue
            if other_host.id not in travel_cache:
                travel_cache[other_host.id] = travel_minutes(db, host, other_host, settings=s)
            gap = timedelta(minutes=travel_cache[other_host.id] or 0)
            if other.starts_at < end + gap and other.ends_at + gap > start:
                found.append(SessionConflict(starts_at=start, other_number=other.number, other_host=other_host.name,
                                             other_starts_at=other.starts_at, other_ends_at=other.ends_at,
                                             travel_minutes=travel_cache[other_host.id] if other_host.id != host.id
                                             else None))
                break
    return found


def _raise_conflicts(conflicts: list[SessionConflict]) -> None:
    if conflicts:
        shown = conflicts[:10]
        more = f"（另有 {len(conflicts) - 10} 处 / and {len(conflicts) - 10} more）" if len(conflicts) > 10 else ""
        raise Conflict("此人在这段时间已有其他安排 / this person is elsewhere at that time: "
                       + "；".join(c.message() for c in shown) + more, code="person_busy",
                       field_errors=[_err("starts_at", c.message(), "conflict") for c in shown])


def session_number(day: date, session_id: int) -> str:
    """XC20261205-0042 (下沉): the local day of the session and its id."""
    return f"XC{day:%Y%m%d}-{session_id:04d}"


def create_session(db: Session, *, by: User | None, plan: SessionPlan,
                   schedule_id: int | None = None, roster_id: int | None = None, allow_past: bool = False,
                   check_conflicts: bool = True) -> OutreachSession:
    """Plan one session; refused with every reason named (bad fields, agreement period, the person busy).

    `by` None is the system (the demo build); otherwise a planner. `allow_past` lets a planner record a session
    that already happened (its activity follows).
    """
    if by is not None:
        require_planner(by)
    checked = _check_plan(db, plan, allow_past=allow_past)
    ends_at = plan.starts_at + timedelta(minutes=plan.minutes)
    if check_conflicts:
        _raise_conflicts(conflicts_for(db, practitioner_id=plan.practitioner_id, host=checked.host,
                                       windows=[(plan.starts_at, ends_at)]))
    now = utcnow()
    row = OutreachSession(
        number=temporary_number(), kind=plan.kind, title=plan.title.strip(), place=plan.place.strip()[:200],
        practitioner_id=plan.practitioner_id, host_organisation_id=plan.host_organisation_id,
        department_id=plan.department_id, specialty_id=checked.specialty_id, studio_team_id=plan.studio_team_id,
        rotation_id=plan.rotation_id, schedule_id=schedule_id, roster_id=roster_id, starts_at=plan.starts_at,
        ends_at=ends_at, capacity=plan.capacity, waitlist_limit=plan.waitlist_limit if plan.kind == "clinic" else 0,
        status="published", created_by_user_id=by.id if by else None, published_at=now)
    db.add(row)
    db.flush()
    row.number = session_number(plan.starts_at.astimezone(LOCAL_TZ).date(), row.id)
    if by is not None:
        record_audit(db, by, "outreach.session_planned", resource=f"outreach_session:{row.id}",
                     number=row.number)
    return row


def get_session(db: Session, session_id: int) -> OutreachSession:
    row = db.get(OutreachSession, session_id)
    if row is None:
        raise NotFound("没有这次下沉安排 / no such outreach session")
    return row


def cancel_session(db: Session, *, by: User, session_id: int, reason: str) -> OutreachSession:
    """Cancel a session that has not happened; its bookings are cancelled and their residents told."""
    from healthrelay.outreach import booking  # booking imports this module

    row = get_session(db, session_id)
    if not may_manage_session(by, row):
        raise AccessDenied("您不能取消这次安排 / you may not cancel this session")
    if not reason.strip():
        raise InvalidInput("请说明取消原因 / give a reason", field_errors=[_err("reason", "必填", "required")])
    if row.status in ("cancelled", "done"):
        raise Conflict(f"该安排已{'取消' if row.status == 'cancelled' else '完成'} / the session is already "
                       f"{row.status}", code="session_closed")
    changed = db.execute(OutreachSession.__table__.update().where(
        OutreachSession.id == row.id, OutreachSession.status == row.status).values(
        status="cancelled", cancel_reason=reason.strip()[:300], cancelled_at=utcnow()))
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("该安排刚被他人修改，请刷新 / the session just changed, reload", code="stale")
    db.refresh(row)
    booking.cancel_all_for_session(db, session=row, reason=reason.strip())
    record_audit(db, by, "outreach.session_cancelled", resource=f"outreach_session:{row.id}",
                 reason=reason.strip()[:300])
    return row


# ---------------------------------------------------------------------------- weekly schedules

@dataclass
class SchedulePlan:
    session: SessionPlan  # its starts_at is ignored; weekday + start_time + the period make the dates
    weekday: int
    start_time: str
    starts_on: date
    ends_on: date
    skip_dates: list[date] = field(default_factory=list)


def schedule_dates(*, weekday: int, starts_on: date, ends_on: date, skip: Iterable[date] = ()) -> list[date]:
    skipped = set(skip)
    first = starts_on + timedelta(days=(weekday - starts_on.weekday()) % 7)
    out: list[date] = []
    day = first
    while day <= ends_on:
        if day not in skipped:
            out.append(day)
        day += timedelta(days=7)
    return out


def publish_schedule(db: Session, *, by: User, plan: SchedulePlan) -> tuple[OutreachSchedule, list[OutreachSession]]:
    """Publish a recurring session: every date is checked first, so either all are made or none."""
    require_planner(by)
    errors = []
    if not 0 <= plan.weekday <= 6:
        errors.append(_err("weekday", "须为周一到周日", "must be Monday to Sunday"))
    start_time = check_hhmm(plan.start_time)
    if plan.ends_on < plan.starts_on:
        errors.append(_err("ends_on", "须不早于开始日期", "must not be before the start"))
    elif (plan.ends_on - plan.starts_on).days > MAX_SCHEDULE_DAYS:
        errors.append(_err("ends_on", "一次最多安排一年", "at most one year at a time"))
    if plan.starts_on < local_today():
        errors.append(_err("starts_on", "不能从过去开始", "cannot start in the past"))
    if errors:
        raise InvalidInput("周期安排有误 / the schedule has problems", field_errors=errors)
    days = [d for d in schedule_dates(weekday=plan.weekday, starts_on=plan.starts_on, ends_on=plan.ends_on,
                                      skip=plan.skip_dates) if local_dt(d, start_time) > utcnow()]
    if not days:
        raise InvalidInput("这段时间内没有符合的日期 / no date in that period falls on that weekday",
                           field_errors=[_err("weekday", "期间内没有这个星期几", "no such weekday in the period")])
    first = SessionPlan(**{**plan.session.__dict__, "starts_at": local_dt(days[0], start_time)})
    checked = _check_plan(db, first, allow_past=False)
    windows = [(local_dt(d, start_time), local_dt(d, start_time) + timedelta(minutes=first.minutes)) for d in days]
    if first.studio_team_id is not None or first.rotation_id is not None:
        for d in days[1:]:  # the agreement or rotation must cover every date, not only the first
            _check_plan(db, SessionPlan(**{**first.__dict__, "starts_at": local_dt(d, start_time)}), allow_past=False)
    _raise_conflicts(conflicts_for(db, practitioner_id=first.practitioner_id, host=checked.host, windows=windows))
    schedule = OutreachSchedule(
        practitioner_id=first.practitioner_id, host_organisation_id=first.host_organisation_id,
        department_id=first.department_id, specialty_id=checked.specialty_id, studio_team_id=first.studio_team_id,
        rotation_id=first.rotation_id, kind=first.kind, title=first.title.strip(), place=first.place.strip()[:200],
        weekday=plan.weekday, start_time=start_time, minutes=first.minutes, capacity=first.capacity,
        waitlist_limit=first.waitlist_limit, starts_on=plan.starts_on, ends_on=plan.ends_on,
        skip_dates=sorted(d.isoformat() for d in plan.skip_dates), created_by_user_id=by.id)
    db.add(schedule)
    db.flush()
    sessions = [create_session(db, by=None, plan=SessionPlan(**{**first.__dict__, "starts_at": start}),
                               schedule_id=schedule.id, check_conflicts=False) for start, _ in windows]
    for s in sessions:
        s.created_by_user_id = by.id
    record_audit(db, by, "outreach.schedule_published", resource=f"outreach_schedule:{schedule.id}",
                 sessions=len(sessions))
    return schedule, sessions


def skip_schedule_date(db: Session, *, by: User, schedule_id: int, day: date, reason: str) -> OutreachSchedule:
    """An exception to a weekly schedule: that date's session is cancelled (bookers told) and remembered."""
    schedule = db.get(OutreachSchedule, schedule_id)
    if schedule is None:
        raise NotFound("没有这个周期安排 / no such schedule")
    session = db.scalars(select(OutreachSession).where(
        OutreachSession.schedule_id == schedule_id, OutreachSession.status == "published",
        OutreachSession.starts_at >= local_dt(day, "00:00"),
        OutreachSession.starts_at < local_dt(day + timedelta(days=1), "00:00"))).first()
    if session is None:
        raise InvalidInput(f"{day} 没有这个周期的待开展安排 / no open session of this schedule on {day}",
                           field_errors=[_err("day", "当天没有安排", "no session that day")])
    cancel_session(db, by=by, session_id=session.id, reason=reason)
    schedule.skip_dates = sorted({*schedule.skip_dates, day.isoformat()})
    return schedule


# ---------------------------------------------------------------------------- reading

@dataclass
class SessionView:
    """A session with the names a page or the public list shows (no patient data)."""

    session: OutreachSession
    host: str
    person: str
    person_grade: str
    person_home: str
    specialty: str
    studio: str
    places_left: int


def session_views(db: Session, sessions: list[OutreachSession]) -> list[SessionView]:
    from healthrelay.directory.models import Specialty

    if not sessions:
        return []
    org_ids = {s.host_organisation_id for s in sessions}
    person_ids = {s.practitioner_id for s in sessions}
    people = {p.id: p for p in db.scalars(select(Practitioner).where(Practitioner.id.in_(person_ids)))}
    homes = dict(db.execute(select(Post.practitioner_id, Organisation.name).join(
        Organisation, Organisation.id == Post.organisation_id).where(
        Post.practitioner_id.in_(person_ids), Post.is_primary.is_(True))).all())
    orgs = dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(org_ids))).all())
    spec_ids = {s.specialty_id for s in sessions if s.specialty_id}
    specs = dict(db.execute(select(Specialty.id, Specialty.name).where(Specialty.id.in_(spec_ids))).all()) \
        if spec_ids else {}
    team_ids = {s.studio_team_id for s in sessions if s.studio_team_id}
    teams = dict(db.execute(select(Team.id, Team.name).where(Team.id.in_(team_ids))).all()) if team_ids else {}
    return [SessionView(session=s, host=orgs.get(s.host_organisation_id, ""),
                        person=people[s.practitioner_id].name if s.practitioner_id in people else "",
                        person_grade=people[s.practitioner_id].title_grade.value if s.practitioner_id in people else "",
                        person_home=homes.get(s.practitioner_id, ""), specialty=specs.get(s.specialty_id or 0, ""),
                        studio=teams.get(s.studio_team_id or 0, ""),
                        places_left=max(0, s.capacity - s.booked_count)) for s in sessions]


def upcoming(db: Session, *, host_ids: Iterable[int] | None = None, practitioner_id: int | None = None,
             studio_team_id: int | None = None, days: int = PUBLIC_DAYS, statuses: tuple[str, ...] = ("published",),
             limit: int = 500) -> list[OutreachSession]:
    now = utcnow()
    q = select(OutreachSession).where(OutreachSession.status.in_(statuses), OutreachSession.ends_at > now,
                                      OutreachSession.starts_at < now + timedelta(days=days))
    if host_ids is not None:
        q = q.where(OutreachSession.host_organisation_id.in_(list(host_ids)))
    if practitioner_id is not None:
        q = q.where(OutreachSession.practitioner_id == practitioner_id)
    if studio_team_id is not None:
        q = q.where(OutreachSession.studio_team_id == studio_team_id)
    return list(db.scalars(q.order_by(OutreachSession.starts_at, OutreachSession.id).limit(limit)))


def public_hosts(db: Session) -> list[Organisation]:
    """Organisations residents can go to for an expert session: township and community centres, hospitals."""
    return list(db.scalars(select(Organisation).where(Organisation.level.in_((
        OrgLevel.TOWNSHIP, OrgLevel.COMMUNITY, OrgLevel.SECONDARY, OrgLevel.TERTIARY))).order_by(Organisation.code)))


def public_host(db: Session, code: str) -> Organisation:
    org = db.scalars(select(Organisation).where(Organisation.code == code)).first()
    if org is None or org.level in (OrgLevel.PROVINCIAL, OrgLevel.VILLAGE):
        raise NotFound("没有这个机构的下沉门诊 / no outreach clinics listed for this place")
    return org


def sessions_between(db: Session, *, start: datetime, end: datetime, host_id: int | None = None,
                     practitioner_id: int | None = None, include_cancelled: bool = True,
                     limit: int = 1000) -> list[OutreachSession]:
    q = select(OutreachSession).where(OutreachSession.starts_at >= start, OutreachSession.starts_at < end)
    if host_id is not None:
        q = q.where(OutreachSession.host_organisation_id == host_id)
    if practitioner_id is not None:
        q = q.where(OutreachSession.practitioner_id == practitioner_id)
    if not include_cancelled:
        q = q.where(OutreachSession.status != "cancelled")
    return list(db.scalars(q.order_by(OutreachSession.starts_at, OutreachSession.id).limit(limit)))


def person_choices(db: Session, *, limit: int = 2000) -> list[tuple[Practitioner, str]]:
    """People who go out: studio members and doctors at hospitals (county and provincial), with their home."""
    rows = db.execute(select(Practitioner, Organisation.name).join(Post, Post.practitioner_id == Practitioner.id).join(
        Organisation, Organisation.id == Post.organisation_id).where(
        Post.is_primary.is_(True), Organisation.level.in_((OrgLevel.PROVINCIAL, OrgLevel.TERTIARY,
                                                           OrgLevel.SECONDARY)),
        Practitioner.title_grade.in_(("chief", "associate_chief", "attending"))).order_by(
        Organisation.name, Practitioner.name).limit(limit)).all()
    return [(p, name) for p, name in rows]


def sessions_of_schedule(db: Session, *, schedule_id: int) -> list[OutreachSession]:
    return list(db.scalars(select(OutreachSession).where(OutreachSession.schedule_id == schedule_id)
                           .order_by(OutreachSession.starts_at)))
