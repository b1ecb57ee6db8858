"""Demo referrals: six months of history for the indicators, and a live board to try.

Every referral goes through the real service functions (so transitions, audit, timers and
notifications are what production would write); history is then moved back in time. A few are
left open: an overdue urgent one that escalates as soon as the demo runs, and a green-channel one
due a quarter of an hour after the build.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import utcnow
from healthrelay.core.timers import Timer
from healthrelay.demo import county
from healthrelay.directory.models import Department, Organisation
from healthrelay.notifications import service as notifications
from healthrelay.notifications.models import Notification, OutboundMessage
from healthrelay.patients.models import PatientRegistration
from healthrelay.referrals import service
from healthrelay.referrals.models import FollowUpTask, Referral, ReferralTransition, Urgency

SENDERS = ("doc.shimen", "doc.baisha", "doc.qingshan", "doc.chengdong")
# (department code at the county hospital, receiving login, diagnoses (ICD-10), reasons)
CASES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("CARD", "doc.cardio", ("I20.0", "I21.9", "I50.9", "I48"), "胸闷胸痛，心电图 ST-T 改变，需进一步诊治"),
    ("NEUR", "doc.neuro", ("I63.9", "G45.9", "I61.9"), "突发一侧肢体无力、言语不清"),
    ("RESP", "doc.emergency", ("J44.1", "J18.9", "J45.9"), "气促加重，血氧饱和度下降"),
    ("ENDO", "doc.emergency", ("E11.9", "E11.2", "E16.2"), "血糖控制不佳，需调整方案"),
    ("ORTH", "doc.emergency", ("S72.0", "M51.2", "S82.2"), "外伤后疼痛、活动受限，需影像及手术评估"),
    ("GAST", "doc.emergency", ("K92.2", "K81.0", "K85.9"), "腹痛伴呕血/黑便"),
)
RESPONSE_MEDIAN_MINUTES = {Urgency.GREEN_CHANNEL: 8, Urgency.URGENT: 45, Urgency.ROUTINE: 300}


@dataclass
class _Ctx:
    db: Session
    rng: random.Random
    users: dict[str, User]
    county_id: int
    departments: dict[str, int]
    patients: dict[int, list[int]]  # sender organisation -> registered patients


def _context(db: Session, seed: int) -> _Ctx:
    users = {u.username: u for u in db.execute(select(User)).scalars()}
    county_org = db.execute(select(Organisation).where(Organisation.code == county.COUNTY_HOSPITAL)).scalar_one()
    departments = {d.code: d.id for d in db.execute(select(Department)
                                                    .where(Department.organisation_id == county_org.id)).scalars()}
    patients: dict[int, list[int]] = {}
    for name in SENDERS:
        org_id = users[name].organisation_id
        patients[org_id] = list(db.execute(select(PatientRegistration.patient_id)  # type: ignore[index]
                                           .where(PatientRegistration.organisation_id == org_id)
                                           .order_by(PatientRegistration.patient_id).limit(400)).scalars())
    return _Ctx(db, random.Random(seed * 7 + 3), users, county_org.id, departments, patients)


def _up(ctx: _Ctx, *, urgency: Urgency, case: tuple[str, str, tuple[str, ...], str], sender: str) -> Referral:
    dept, _, codes, reason = case
    by = ctx.users[sender]
    patient_id = ctx.rng.choice(ctx.patients[by.organisation_id])  # type: ignore[index]
    data = service.ReferralInput(
        patient_id=patient_id, to_organisation_id=ctx.county_id, to_department_id=ctx.departments[dept],
        urgency=urgency, reason=reason, diagnosis_code=ctx.rng.choice(codes),
        case_summary="门诊初诊，已完成血常规、心电图等基础检查。", consent_kind=ctx.rng.choice(("written", "verbal")),
        vital_signs={"bp_systolic": ctx.rng.randint(110, 185), "bp_diastolic": ctx.rng.randint(65, 110),
                     "heart_rate": ctx.rng.randint(58, 118), "spo2": ctx.rng.randint(88, 99)},
        medicines=ctx.rng.sample(["阿司匹林 100 mg qd", "氨氯地平 5 mg qd", "二甲双胍 0.5 g tid",
                                  "阿托伐他汀 20 mg qn"], 2))
    draft = service.create_draft(ctx.db, by=by, data=data)
    return service.send(ctx.db, by=by, referral_id=draft.id)


def _down(ctx: _Ctx, up: Referral, receiver: User, today: date) -> Referral:
    follow_up = [{"due_on": str(today + timedelta(days=d)), "kind": kind}
                 for d, kind in ((7, "电话随访"), (14, "血压/血糖复查"), (30, "门诊复诊"))]
    return service.send_down(ctx.db, by=receiver, data=service.ReferralInput(
        patient_id=up.patient_id, to_organisation_id=up.from_organisation_id, parent_referral_id=up.id,
        diagnosis_code=up.diagnosis_code, consent_kind="verbal", reason="病情稳定，转回基层继续治疗与随访",
        care_plan={"diagnosis": up.diagnosis_text, "medicines": up.medicines, "follow_up": follow_up,
                   "warning_signs": ["胸痛持续超过 15 分钟", "血压 ≥ 180/110 mmHg", "意识改变"]}))


def _play(ctx: _Ctx, up: Referral, receiver: User, ending: str, today: date) -> list[Referral]:
    """Answer and finish one referral the way `ending` says; returns every referral it produced."""
    db, rng = ctx.db, ctx.rng
    if ending == "declined":
        service.decline(db, by=receiver, referral_id=up.id, reason="专科床位已满，建议转省人民医院",
                        suggested_alternative_organisation_id=ctx.county_id)
        return [up]
    if ending == "cancelled":
        service.cancel(db, by=ctx.db.get(User, up.from_user_id), referral_id=up.id, reason="患者及家属要求暂缓")
        return [up]
    if ending == "expired":
        service.expire(db, referral_id=up.id)
        return [up]
    service.accept(db, by=receiver, referral_id=up.id, appointment_at=utcnow() + timedelta(hours=rng.randint(1, 48)))
    if ending == "accepted":
        return [up]
    service.mark_arrived(db, by=receiver, referral_id=up.id)
    if ending == "arrived":
        return [up]
    service.complete(db, by=receiver, referral_id=up.id, outcome=rng.choice(("好转出院", "治愈出院", "好转，转回基层")))
    produced = [up]
    if ending == "sent_down":
        down = _down(ctx, up, receiver, today)
        township_doctor = db.get(User, up.from_user_id)
        service.accept(db, by=township_doctor, referral_id=down.id)
        produced.append(down)
    return produced


def _move_back(db: Session, referrals: list[Referral], *, sent_at: datetime, response_minutes: float) -> None:
    """Shift a finished episode so it was sent at `sent_at` and answered `response_minutes` later."""
    for index, referral in enumerate(referrals):
        shift = referral.sent_at - sent_at if referral.sent_at else timedelta(0)
        if index > 0:  # the down referral follows the up one by days
            shift -= timedelta(days=3 + index)
        answer = timedelta(minutes=response_minutes) if index == 0 else timedelta(minutes=30)
        values = {c: getattr(referral, c) - shift for c in ("created_at", "sent_at", "updated_at", "closed_at",
                                                             "response_due_at", "appointment_at")
                  if getattr(referral, c) is not None}
        if referral.answered_at is not None:
            values["answered_at"] = values["sent_at"] + answer
        db.execute(update(Referral).where(Referral.id == referral.id).values(**values))
        for t in db.execute(select(ReferralTransition).where(ReferralTransition.referral_id == referral.id)).scalars():
            t.at = values.get("answered_at", t.at - shift) if t.to_state in ("accepted", "declined") else t.at - shift
        for task in db.execute(select(FollowUpTask).where(FollowUpTask.referral_id == referral.id)).scalars():
            task.due_on -= timedelta(days=shift.days)
            task.created_at -= shift
            if task.due_on < date.today():
                task.done_at = datetime.combine(task.due_on, datetime.min.time(), tzinfo=UTC) + timedelta(hours=2)


def build_demo_referrals(db: Session, *, seed: int, history: int = 90) -> dict[str, int]:
    ctx = _context(db, seed)
    rng = ctx.rng
    now = utcnow()
    today = date.today()
    endings = (["sent_down"] * 30 + ["completed"] * 38 + ["declined"] * 10 + ["cancelled"] * 6 + ["expired"] * 4
               + ["arrived"] * 2)
    made = 0
    for _ in range(history):
        case = rng.choice(CASES)
        urgency = rng.choices(list(Urgency), weights=(60, 30, 10))[0]
        up = _up(ctx, urgency=urgency, case=case, sender=rng.choice(SENDERS))
        produced = _play(ctx, up, ctx.users[case[1]], rng.choice(endings), today)
        minutes = RESPONSE_MEDIAN_MINUTES[urgency] * rng.lognormvariate(0, 0.8)
        sent_at = now - timedelta(days=rng.uniform(2, 183), minutes=rng.uniform(0, 600))
        _move_back(db, produced, sent_at=sent_at, response_minutes=minutes)
        made += len(produced)
    # History happened months ago: nobody is told about it now.
    db.execute(delete(OutboundMessage))
    db.execute(delete(Notification))
    db.execute(delete(Timer).where(Timer.kind == notifications.DELIVER_KIND))
    # Open work for the board: overdue urgent ones escalate at once, a green channel is due soon.
    open_referrals = []
    for dept_case, urgency, overdue_minutes in ((0, Urgency.URGENT, 150), (1, Urgency.URGENT, 20),
                                                 (0, Urgency.GREEN_CHANNEL, None), (2, Urgency.ROUTINE, None),
                                                 (4, Urgency.ROUTINE, None), (3, Urgency.ROUTINE, 30)):
        up = _up(ctx, urgency=urgency, case=CASES[dept_case], sender=rng.choice(SENDERS))
        if overdue_minutes is not None:
            due = now - timedelta(minutes=overdue_minutes)
            shift = up.response_due_at - due
            db.execute(update(Referral).where(Referral.id == up.id).values(
                sent_at=up.sent_at - shift, created_at=up.created_at - shift, response_due_at=due))
            db.execute(update(Timer).where(Timer.dedupe_key == service.escalation_key(up, 1)).values(due_at=due))
        open_referrals.append(up)
    for case in (CASES[0], CASES[1]):
        up = _up(ctx, urgency=Urgency.URGENT, case=case, sender="doc.shimen")
        service.accept(db, by=ctx.users[case[1]], referral_id=up.id, appointment_at=now + timedelta(hours=3))
        open_referrals.append(up)
    # Follow-up tasks due this week at 石门镇, from a patient sent down yesterday.
    up = _up(ctx, urgency=Urgency.URGENT, case=CASES[0], sender="doc.shimen")
    _play(ctx, up, ctx.users["doc.cardio"], "sent_down", today - timedelta(days=6))
    db.flush()
    return {"referrals": made + len(open_referrals) + 2, "open": len(open_referrals)}
