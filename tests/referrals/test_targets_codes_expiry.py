"""Diagnosis codes from the ICD-10 table, suggested targets from the directory, expiry and follow-up completion."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput
from healthrelay.core.timers import Timer
from healthrelay.directory.models import (
    AllianceMembership,
    Department,
    MembershipRole,
    OrgKind,
    OrgLevel,
    Specialty,
)
from healthrelay.referrals import icd10, service
from healthrelay.referrals.models import Direction, FollowUpTask, ReferralDeadline, State, Urgency
from tests import factories as f
from tests.referrals.conftest import World, sent_referral, up_input


def test_codes_are_checked_against_icd10_and_named_in_chinese(db: Session, world: World) -> None:
    referral = service.create_draft(db, by=world.village_doctor, data=up_input(world, diagnosis_code="i21.9",
                                                                               diagnosis_text=""))
    assert referral.diagnosis_code == "I21.9" and referral.diagnosis_text == "急性心肌梗死"
    # The national clinical version's extension of a WHO code is accepted as it is.
    national = service.create_draft(db, by=world.village_doctor, data=up_input(world, diagnosis_code="I10.x00x002"))
    assert national.diagnosis_code == "I10.x00x002"
    for bad in ("I99.9", "X1", "I20-I25", "高血压"):
        with pytest.raises(InvalidInput) as exc:
            service.create_draft(db, by=world.village_doctor, data=up_input(world, diagnosis_code=bad))
        error = exc.value.field_errors[0]
        assert error["field"] == "diagnosis_code" and bad in error["message"]


def test_icd10_search_finds_by_code_chinese_and_pinyin_initials(client, world: World) -> None:  # noqa: ANN001
    headers = f.bearer(client, "village_doc")
    by_initials = client.get("/api/v1/referrals/icd10?q=gxy", headers=headers).json()
    assert by_initials[0] == {"code": "I10", "name_zh": "原发性高血压", "name_en": "Essential (primary) hypertension"}
    assert [e.code for e in icd10.search("脑梗")][:1] == ["I63.9"]
    assert icd10.search("I21")[0].code.startswith("I21")
    assert client.get("/api/v1/referrals/icd10?q=", headers=headers).status_code == 422


def test_suggested_targets_prefer_the_right_department_then_county_then_distance(
        client, db: Session, world: World) -> None:  # noqa: ANN001
    cardio = Specialty(code="CARD", name="心血管内科")
    db.add(cardio)
    db.flush()
    world.cardiology.specialty_id = cardio.id
    province = f.organisation(db, name="省人民医院", level=OrgLevel.PROVINCIAL, kind=OrgKind.GENERAL_HOSPITAL)
    db.add(Department(organisation_id=province.id, code="XNK", name="心内科", specialty_id=cardio.id))
    alliance_id = db.execute(select(AllianceMembership.alliance_id)
                             .where(AllianceMembership.organisation_id == world.county.id)).scalar_one()
    db.add(AllianceMembership(alliance_id=alliance_id, organisation_id=province.id, role=MembershipRole.SUPPORTING))
    db.commit()
    headers = f.bearer(client, "village_doc")
    rows = client.get(f"/api/v1/referrals/suggested-targets?patient_id={world.patient.id}&specialty_id={cardio.id}",
                      headers=headers).json()
    assert [r["organisation_name"] for r in rows] == ["测试县人民医院", "省人民医院"]
    assert rows[0]["departments"][0]["name"] == "心内科" and rows[0]["distance_km"] > 0
    assert any("km" in reason for reason in rows[0]["reasons"])
    # The neighbouring county's hospital is outside the alliance and never suggested.
    everything = client.get(f"/api/v1/referrals/suggested-targets?patient_id={world.patient.id}",
                            headers=headers).json()
    assert world.outsider.id not in {r["organisation_id"] for r in everything}
    # A specialty nobody has: no suggestion rather than a wrong one.
    other = Specialty(code="BURN", name="烧伤科")
    db.add(other)
    db.commit()
    assert client.get(f"/api/v1/referrals/suggested-targets?patient_id={world.patient.id}&specialty_id={other.id}",
                      headers=headers).json() == []


def _fire_expiry(db: Session, referral_id: int) -> None:
    db.execute(update(Timer).where(Timer.dedupe_key == service.expiry_key(referral_id), Timer.fired_at.is_(None))
               .values(due_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    timers.run_due(get_sessionmaker(), runner="test")
    db.expire_all()


def test_an_unanswered_referral_expires_on_its_timer_and_an_answered_one_does_not(db: Session, world: World) -> None:
    assert db.get(ReferralDeadline, "green_channel").expire_minutes == 120
    referral = sent_referral(db, world, urgency=Urgency.GREEN_CHANNEL)
    timer = db.execute(select(Timer).where(Timer.dedupe_key == service.expiry_key(referral))).scalar_one()
    assert timedelta(minutes=119) < timer.due_at - utcnow() <= timedelta(minutes=120)
    answered = sent_referral(db, world)
    service.accept(db, by=world.county_doctor, referral_id=answered.id, bed="3 床")
    db.commit()
    _fire_expiry(db, referral.id)
    _fire_expiry(db, answered.id)
    assert db.get(type(referral), referral.id).state == State.EXPIRED
    assert db.get(type(answered), answered.id).state == State.ACCEPTED


def _down(db: Session, world: World) -> FollowUpTask:
    up = sent_referral(db, world)
    service.accept(db, by=world.county_doctor, referral_id=up.id, bed="3 床")
    plan = {"follow_up": [{"due_on": str(date.today() + timedelta(days=14)), "kind": "血压随访"}]}
    referral = service.send_down(db, by=world.county_doctor, data=service.ReferralInput(
        patient_id=world.patient.id, to_organisation_id=world.town_a.id, diagnosis_code="I10",
        consent_kind="verbal", parent_referral_id=up.id, care_plan=plan))
    service.accept(db, by=world.village_doctor, referral_id=referral.id)
    assert referral.direction == Direction.DOWN
    return db.execute(select(FollowUpTask).where(FollowUpTask.referral_id == referral.id)).scalar_one()


def test_a_follow_up_task_is_done_once_by_the_receiving_township(db: Session, world: World) -> None:
    task = _down(db, world)
    with pytest.raises(AccessDenied):
        service.complete_follow_up(db, by=world.town_b_doctor, task_id=task.id)
    done = service.complete_follow_up(db, by=world.village_doctor, task_id=task.id, note="血压 132/84，继续服药")
    assert done.done_at is not None and "132/84" in done.note
    with pytest.raises(Conflict):
        service.complete_follow_up(db, by=world.village_doctor, task_id=task.id)
    assert service.follow_up_tasks(db, user=world.village_doctor, organisation_id=world.town_a.id) == []
