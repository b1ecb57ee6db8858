"""The referral state machine, its rules, escalation at the deadline and the care relationship."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from healthrelay.access.service import decide, require_patient_access
from healthrelay.audit.models import AuditEvent
from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NeedToKnowDenied
from healthrelay.core.timers import Timer
from healthrelay.referrals import service
from healthrelay.referrals.models import (
    Direction,
    FollowUpTask,
    Referral,
    ReferralDeadline,
    ReferralEscalation,
    ReferralTransition,
    State,
    Urgency,
)
from tests.referrals.conftest import World, move_due_into_past, sent_referral, up_input


def _fields(exc: pytest.ExceptionInfo) -> set[str]:
    return {e["field"] for e in exc.value.field_errors}


def _count(db: Session, model: type) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def test_draft_gets_a_readable_number_and_sending_sets_the_deadline(db: Session, world: World) -> None:
    draft = service.create_draft(db, by=world.village_doctor, data=up_input(world, urgency=Urgency.GREEN_CHANNEL))
    assert draft.state == State.DRAFT
    assert draft.number.startswith("ZZ") and draft.number.endswith(f"-{draft.id:04d}")
    before = utcnow()
    sent = service.send(db, by=world.village_doctor, referral_id=draft.id)
    assert sent.state == State.SENT
    assert timedelta(minutes=14) < sent.response_due_at - before <= timedelta(minutes=15, seconds=5)
    timer = db.execute(select(Timer).where(Timer.dedupe_key == f"referral:{sent.id}:escalate:1")).scalar_one()
    assert timer.due_at == sent.response_due_at


def test_deadlines_are_data_an_alliance_can_change(db: Session, world: World) -> None:
    seeded = {r.urgency: r.response_minutes for r in db.execute(select(ReferralDeadline)).scalars()}
    assert seeded == {"green_channel": 15, "urgent": 120, "routine": 1440}
    db.merge(ReferralDeadline(urgency="routine", response_minutes=60))
    db.flush()
    before = utcnow()
    referral = sent_referral(db, world, urgency=Urgency.ROUTINE)
    assert referral.response_due_at - before <= timedelta(minutes=60, seconds=5)


def test_full_upward_path_records_every_transition(db: Session, world: World) -> None:
    referral = sent_referral(db, world)
    appointment = utcnow() + timedelta(hours=3)
    service.accept(db, by=world.county_doctor, referral_id=referral.id, appointment_at=appointment)
    service.mark_arrived(db, by=world.county_doctor, referral_id=referral.id)
    service.complete(db, by=world.county_doctor, referral_id=referral.id, outcome="PCI 术后好转")
    db.commit()
    db.expire_all()
    referral = db.get(Referral, referral.id)
    assert referral.state == State.COMPLETED and referral.outcome == "PCI 术后好转"
    assert referral.appointment_at == appointment.replace(microsecond=appointment.microsecond)
    steps = [(t.from_state, t.to_state, t.by_user_id) for t in referral.transitions]
    assert steps == [("", "draft", world.village_doctor.id), ("draft", "sent", world.village_doctor.id),
                     ("sent", "accepted", world.county_doctor.id), ("accepted", "arrived", world.county_doctor.id),
                     ("arrived", "completed", world.county_doctor.id)]
    # Answered: the pending escalation is cancelled and never fires.
    timer = db.execute(select(Timer).where(Timer.dedupe_key == f"referral:{referral.id}:escalate:1")).scalar_one()
    assert timer.cancelled_at is not None


def test_decline_needs_a_reason_and_an_alternative(db: Session, world: World) -> None:
    referral = sent_referral(db, world)
    with pytest.raises(InvalidInput) as exc:
        service.decline(db, by=world.county_doctor, referral_id=referral.id, reason=" ")
    assert _fields(exc) == {"reason", "suggested_alternative_organisation_id"}
    assert db.get(Referral, referral.id).state == State.SENT
    service.decline(db, by=world.county_doctor, referral_id=referral.id, reason="无床位",
                    suggested_alternative_organisation_id=world.town_b.id)
    assert referral.state == State.DECLINED and referral.decline_reason == "无床位"
    assert referral.suggested_alternative_organisation_id == world.town_b.id
    # Accepting an already-declined referral is refused and names both states.
    with pytest.raises(Conflict) as refused:
        service.accept(db, by=world.county_doctor, referral_id=referral.id, bed="12 床")
    assert refused.value.code == "invalid_transition"
    assert "declined" in refused.value.message and "accepted" in refused.value.message


def test_redirect_moves_the_referral_and_restarts_the_clock(db: Session, world: World) -> None:
    referral = sent_referral(db, world)
    service.redirect(db, by=world.county_doctor, referral_id=referral.id, to_organisation_id=world.town_b.id,
                     reason="该院有康复床位")
    assert referral.state == State.REDIRECTED and referral.to_organisation_id == world.town_b.id
    first = db.execute(select(Timer).where(Timer.dedupe_key == f"referral:{referral.id}:escalate:1")).scalar_one()
    assert first.cancelled_at is not None
    assert db.execute(select(Timer).where(
        Timer.dedupe_key == f"referral:{referral.id}:escalate:1:r1", Timer.cancelled_at.is_(None))).scalar()
    # The old receiver can no longer answer; the new one can.
    with pytest.raises(AccessDenied):
        service.accept(db, by=world.county_doctor, referral_id=referral.id, bed="1")
    service.accept(db, by=world.town_b_doctor, referral_id=referral.id, bed="3 床")
    assert referral.state == State.ACCEPTED


@pytest.mark.parametrize(("path", "refused"), [
    ([], State.ACCEPTED),  # a draft cannot be accepted
    ([], State.ARRIVED),
    (["send"], State.COMPLETED),
    (["send"], State.ARRIVED),
    (["send", "cancel"], State.SENT),
    (["send", "accept"], State.DECLINED),
    (["send", "accept", "arrive"], State.CANCELLED),
    (["send", "accept", "arrive", "complete"], State.ARRIVED),
])
def test_transitions_outside_the_table_are_refused(db: Session, world: World, path: list[str],
                                                   refused: State) -> None:
    referral = service.create_draft(db, by=world.village_doctor, data=up_input(world))
    steps = {"send": lambda: service.send(db, by=world.village_doctor, referral_id=referral.id),
             "cancel": lambda: service.cancel(db, by=world.village_doctor, referral_id=referral.id, reason="家属拒绝"),
             "accept": lambda: service.accept(db, by=world.county_doctor, referral_id=referral.id, bed="1"),
             "arrive": lambda: service.mark_arrived(db, by=world.county_doctor, referral_id=referral.id),
             "complete": lambda: service.complete(db, by=world.county_doctor, referral_id=referral.id, outcome="好转")}
    for step in path:
        steps[step]()
    before = referral.state
    transitions = _count(db, ReferralTransition)
    with pytest.raises(Conflict) as exc:
        service.transition(db, referral=referral, to=refused, by=world.county_doctor)
    assert exc.value.code == "invalid_transition"
    assert f"{before} to {refused}" in exc.value.message
    assert referral.state == before and _count(db, ReferralTransition) == transitions


def test_every_allowed_transition_is_reachable(db: Session, world: World) -> None:
    for (start, end) in service.TRANSITIONS:
        referral = service.create_draft(db, by=world.village_doctor, data=up_input(world))
        db.execute(update(Referral).where(Referral.id == referral.id).values(state=start))
        db.refresh(referral)
        service.transition(db, referral=referral, to=end, by=world.county_doctor, reason="test")
        assert referral.state == end
        last = db.execute(select(ReferralTransition).where(ReferralTransition.referral_id == referral.id)
                          .order_by(ReferralTransition.id.desc()).limit(1)).scalar_one()
        assert (last.from_state, last.to_state) == (start, end)


def test_sending_without_consent_is_refused_and_nothing_changes(db: Session, world: World) -> None:
    draft = service.create_draft(db, by=world.village_doctor, data=up_input(world, consent_kind=None))
    with pytest.raises(InvalidInput) as exc:
        service.send(db, by=world.village_doctor, referral_id=draft.id)
    assert _fields(exc) == {"consent_kind"}
    assert draft.state == State.DRAFT and _count(db, Timer) == 0


def test_bad_targets_and_codes_are_named(db: Session, world: World) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.create_draft(db, by=world.village_doctor, data=up_input(
            world, to_organisation_id=world.outsider.id, to_department_id=None, diagnosis_code="chest pain"))
    assert _fields(exc) == {"to_organisation_id", "diagnosis_code"}
    with pytest.raises(InvalidInput) as exc:
        service.create_draft(db, by=world.village_doctor, data=up_input(world, to_organisation_id=999999))
    assert _fields(exc) == {"to_organisation_id"}
    with pytest.raises(InvalidInput) as exc:
        service.create_draft(db, by=world.village_doctor, data=up_input(world, to_department_id=999999))
    assert _fields(exc) == {"to_department_id"}
    with pytest.raises(InvalidInput) as exc:
        service.create_draft(db, by=world.village_doctor, data=up_input(world, consent_kind="nodded"))
    assert _fields(exc) == {"consent_kind"}
    assert _count(db, Referral) == 0


def test_only_the_right_side_may_act(db: Session, world: World) -> None:
    referral = sent_referral(db, world)
    with pytest.raises(AccessDenied):
        service.accept(db, by=world.village_doctor, referral_id=referral.id, bed="1")
    with pytest.raises(AccessDenied):
        service.cancel(db, by=world.county_doctor, referral_id=referral.id, reason="x")


@pytest.fixture
def fire() -> Callable[[], int]:
    """Run due timers like a worker would; each call returns how many referral escalations fired."""
    seen = 0

    def run() -> int:
        nonlocal seen
        timers.run_due(get_sessionmaker(), runner="test")
        with get_sessionmaker()() as s:
            fired = s.execute(select(func.count()).where(Timer.kind == service.ESCALATE_KIND,
                                                         Timer.fired_at.is_not(None))).scalar_one()
        new, seen = fired - seen, fired
        return new

    return run


def test_unanswered_referral_escalates_to_the_head_then_the_medical_affairs_office(
        db: Session, world: World, fire: Callable[[], int]) -> None:
    referral = sent_referral(db, world, urgency=Urgency.GREEN_CHANNEL)
    db.commit()
    assert fire() == 0  # not yet due
    move_due_into_past(db, referral)
    assert fire() == 1
    db.expire_all()
    level1 = db.execute(select(ReferralEscalation).where(ReferralEscalation.referral_id == referral.id)).scalar_one()
    assert level1.level == 1 and level1.notified_user_ids == [world.dept_head.id]
    assert level1.notified_department_id == world.cardiology.id
    level2_timer = db.execute(select(Timer).where(
        Timer.dedupe_key == f"referral:{referral.id}:escalate:2")).scalar_one()
    assert timedelta(minutes=14) < level2_timer.due_at - utcnow() <= timedelta(minutes=15)
    assert fire() == 0
    move_due_into_past(db, referral)
    assert fire() == 1
    db.expire_all()
    levels = {e.level: e for e in db.execute(select(ReferralEscalation)).scalars()}
    assert set(levels) == {1, 2}
    assert levels[2].notified_user_ids == [world.county_admin.id]
    assert levels[2].notified_organisation_id == world.county.id
    assert db.execute(select(func.count()).where(AuditEvent.action.like("referral.escalate.%"))).scalar() == 2
    # Nothing more to fire: each escalation happened once.
    move_due_into_past(db, referral)
    assert fire() == 0


def test_an_answer_before_the_deadline_stops_escalation(db: Session, world: World, fire: Callable[[], int]) -> None:
    referral = sent_referral(db, world)
    db.commit()
    move_due_into_past(db, referral)
    service.accept(db, by=world.county_doctor, referral_id=referral.id, bed="5 床")
    db.commit()
    assert fire() == 0
    assert _count(db, ReferralEscalation) == 0


def test_expire_closes_an_unanswered_referral(db: Session, world: World) -> None:
    referral = sent_referral(db, world)
    service.expire(db, referral_id=referral.id)
    assert referral.state == State.EXPIRED and referral.closed_at is not None
    assert referral.transitions[-1].by_user_id is None


def _down_input(world: World) -> service.ReferralInput:
    today = date.today()
    return service.ReferralInput(
        patient_id=world.patient.id, to_organisation_id=world.town_a.id, to_team_id=world.team_a.id,
        reason="病情稳定，回社区康复", diagnosis_code="I21.9", diagnosis_text="急性心肌梗死 PCI 术后",
        consent_kind="verbal",
        care_plan={"diagnosis": "急性心肌梗死 PCI 术后", "medicines": [{"name": "替格瑞洛", "dose": "90 mg bid"}],
                   "follow_up": [{"due_on": (today + timedelta(days=7)).isoformat(), "kind": "血压随访"},
                                 {"due_on": (today + timedelta(days=30)).isoformat(), "kind": "心电图复查"}],
                   "warning_signs": ["胸痛再发", "呼吸困难"]})


def test_down_referral_creates_follow_up_tasks_when_accepted(db: Session, world: World) -> None:
    up = sent_referral(db, world)
    service.accept(db, by=world.county_doctor, referral_id=up.id, bed="8 床")
    down = service.send_down(db, by=world.county_doctor, data=_down_input(world))
    assert down.direction == Direction.DOWN and down.state == State.SENT
    assert _count(db, FollowUpTask) == 0
    service.accept(db, by=world.village_doctor, referral_id=down.id)
    tasks = service.follow_up_tasks(db, user=world.village_doctor, organisation_id=world.town_a.id)
    assert [(t.kind, t.due_on - date.today()) for t in tasks] == [("血压随访", timedelta(days=7)),
                                                                  ("心电图复查", timedelta(days=30))]
    assert {t.team_id for t in tasks} == {world.team_a.id}
    with pytest.raises(AccessDenied):
        service.follow_up_tasks(db, user=world.county_doctor, organisation_id=world.town_a.id)


def test_down_referral_needs_a_follow_up_schedule(db: Session, world: World) -> None:
    data = _down_input(world)
    data.care_plan = {"diagnosis": "x", "follow_up": [{"due_on": "soon", "kind": "随访"}]}
    with pytest.raises(InvalidInput) as exc:
        service.send_down(db, by=world.county_doctor, data=data)
    assert _fields(exc) == {"care_plan.follow_up.0"}
    assert _count(db, Referral) == 0


def test_send_back_up_in_one_step_carries_the_history(db: Session, world: World) -> None:
    up = sent_referral(db, world)
    service.accept(db, by=world.county_doctor, referral_id=up.id, bed="8 床")
    data = _down_input(world)
    data.parent_referral_id = up.id
    down = service.send_down(db, by=world.county_doctor, data=data)
    assert down.parent_referral_id == up.id
    with pytest.raises(Conflict):  # not yet accepted by the township
        service.send_back_up(db, by=world.village_doctor, down_referral_id=down.id, reason="胸痛再发")
    service.accept(db, by=world.village_doctor, referral_id=down.id)
    again = service.send_back_up(db, by=world.village_doctor, down_referral_id=down.id, reason="胸痛再发，血压下降",
                                 urgency=Urgency.GREEN_CHANNEL)
    assert again.direction == Direction.UP and again.state == State.SENT
    assert again.to_organisation_id == world.county.id and again.parent_referral_id == down.id
    assert again.diagnosis_code == "I21.9" and again.consent_at is not None
    assert [h["referral_id"] for h in again.history] == [up.id, down.id]
    assert again.history[1]["care_plan"]["warning_signs"] == ["胸痛再发", "呼吸困难"]
    assert [t["to"] for t in again.history[1]["transitions"]] == ["draft", "sent", "accepted"]


def test_being_party_grants_the_care_relationship_and_it_ends(db: Session, world: World) -> None:
    assert decide(db, user=world.county_doctor, patient_id=world.patient.id) is None
    draft = service.create_draft(db, by=world.village_doctor, data=up_input(world))
    assert decide(db, user=world.county_doctor, patient_id=world.patient.id) is None  # a draft is private
    service.send(db, by=world.village_doctor, referral_id=draft.id)
    assert decide(db, user=world.county_doctor, patient_id=world.patient.id) == "referral"
    assert decide(db, user=world.town_b_doctor, patient_id=world.patient.id) is None
    service.cancel(db, by=world.village_doctor, referral_id=draft.id, reason="家属要求")
    assert decide(db, user=world.county_doctor, patient_id=world.patient.id) == "referral"  # 30 days after
    draft.closed_at = utcnow() - timedelta(days=31)
    db.flush()
    assert decide(db, user=world.county_doctor, patient_id=world.patient.id) is None
    with pytest.raises(NeedToKnowDenied):
        require_patient_access(db, user=world.county_doctor, patient_id=world.patient.id, action="referral.read")


def test_reads_and_changes_are_audited(db: Session, world: World) -> None:
    referral = sent_referral(db, world)
    service.get_for(db, user=world.county_doctor, referral_id=referral.id)
    service.accept(db, by=world.county_doctor, referral_id=referral.id, bed="1")
    db.commit()
    rows = db.execute(select(AuditEvent.action, AuditEvent.username, AuditEvent.patient_id)
                      .where(AuditEvent.action.like("referral.%")).order_by(AuditEvent.id)).all()
    assert [(a, u) for a, u, _ in rows] == [("referral.create", "village_doc"), ("referral.send", "village_doc"),
                                           ("referral.read", "county_doc"), ("referral.accept", "county_doc")]
    assert {p for _, _, p in rows} == {world.patient.id}


def test_a_redirected_referral_escalates_only_at_its_new_receiver(db: Session, world: World,
                                                                  fire: Callable[[], int]) -> None:
    referral = sent_referral(db, world)
    service.redirect(db, by=world.county_doctor, referral_id=referral.id, to_organisation_id=world.town_b.id)
    db.commit()
    move_due_into_past(db, referral)
    assert fire() == 1
    db.expire_all()
    (escalation,) = db.execute(select(ReferralEscalation)).scalars().all()
    assert (escalation.round, escalation.level, escalation.notified_organisation_id) == (1, 1, world.town_b.id)
