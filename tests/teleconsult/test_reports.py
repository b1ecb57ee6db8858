"""Structured reports: drafts on the claim, signatures with a content hash, co-signature, addenda, and who hears."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput
from healthrelay.notifications.models import Notification
from healthrelay.teleconsult import reports, service
from healthrelay.teleconsult.models import (
    ConsultKind,
    ConsultState,
    ConsultTransition,
    Priority,
    ReadingCentre,
    Report,
    ReportState,
)
from tests.notifications.conftest import collect_live
from tests.teleconsult.conftest import Requests, TeleWorld, make_request

FULL = reports.ReportInput(
    technique="胸部 CT 平扫，层厚 5 mm / chest CT, 5 mm slices",
    findings="右肺上叶尖段见一约 12 mm 分叶状结节，边缘毛刺 / 12 mm spiculated nodule, RUL",
    impression="右肺上叶结节，考虑周围型肺癌可能 / RUL nodule, suspicious for peripheral carcinoma",
    recommendation="建议增强 CT 及胸外科会诊 / contrast CT and thoracic surgery referral",
    recognition_scope="county")


def _notes(db: Session, user_id: int, kind: str) -> list[Notification]:
    return list(db.execute(select(Notification).where(Notification.user_id == user_id, Notification.kind == kind))
                .scalars())


def test_only_the_claim_holder_writes_and_others_are_told_who_holds_it(
        db: Session, tele: TeleWorld, requests: Requests) -> None:
    with pytest.raises(AccessDenied) as other:
        reports.save_draft(db, request_id=requests.claimed_senior.id, by=tele.trainee, data=FULL)
    assert "钱医师" in other.value.message and other.value.status_code == 403
    db.rollback()
    with pytest.raises(AccessDenied) as unclaimed:
        reports.save_draft(db, request_id=requests.accepted.id, by=tele.senior, data=FULL)
    assert unclaimed.value.code == "not_claimed"
    db.rollback()
    with pytest.raises(AccessDenied):  # the requester is a party but never writes the report
        reports.save_draft(db, request_id=requests.claimed_senior.id, by=tele.requester, data=FULL)
    db.rollback()
    draft = reports.save_draft(db, request_id=requests.claimed_senior.id, by=tele.senior,
                               data=reports.ReportInput(findings="  右肺结节  \r\n"))
    db.commit()
    assert draft.state == ReportState.DRAFT and draft.findings == "右肺结节" and draft.author_user_id == tele.senior.id
    again = reports.save_draft(db, request_id=requests.claimed_senior.id, by=tele.senior, data=FULL)
    assert again.id == draft.id and again.impression == FULL.impression
    # A draft is the centre's business: the requester's side does not see it.
    assert reports.visible_report(db, user=tele.requester, request=requests.claimed_senior) is None
    assert reports.visible_report(db, user=tele.head, request=requests.claimed_senior) is not None


def test_signing_an_empty_report_names_the_missing_fields(db: Session, tele: TeleWorld, requests: Requests) -> None:
    with pytest.raises(InvalidInput) as empty:
        reports.sign(db, request_id=requests.claimed_senior.id, by=tele.senior, data=reports.ReportInput())
    assert [e["field"] for e in empty.value.field_errors] == ["technique", "findings", "impression"]
    assert "technique" in empty.value.message
    db.rollback()
    flagged = reports.ReportInput(**{**FULL.__dict__, "critical": True, "critical_finding": " "})
    with pytest.raises(InvalidInput) as no_finding:
        reports.sign(db, request_id=requests.claimed_senior.id, by=tele.senior, data=flagged)
    assert [e["field"] for e in no_finding.value.field_errors] == ["critical_finding"]
    db.rollback()
    assert db.execute(select(func.count()).select_from(Report)).scalar() == 0


def test_bad_fields_are_refused_before_anything_is_written(db: Session, tele: TeleWorld, requests: Requests) -> None:
    bad = reports.ReportInput(findings="x" * (reports.TEXT_MAX + 1), recognition_scope="city")
    with pytest.raises(InvalidInput) as refused:
        reports.save_draft(db, request_id=requests.claimed_senior.id, by=tele.senior, data=bad)
    assert {e["field"] for e in refused.value.field_errors} == {"findings", "recognition_scope"}
    db.rollback()
    assert db.execute(select(func.count()).select_from(Report)).scalar() == 0


def test_a_consultation_opinion_carries_no_recognition_mark(db: Session, tele: TeleWorld) -> None:
    clinic = ReadingCentre(code="ZK-CENTRE", name="专科会诊中心", kind=ConsultKind.SPECIALIST,
                           organisation_id=tele.county.id)
    db.add(clinic)
    db.flush()
    opinion = make_request(db, tele, kind=ConsultKind.SPECIALIST, centre_id=clinic.id)
    service.claim(db, by=tele.senior, request_id=opinion.id)
    with pytest.raises(InvalidInput) as refused:
        reports.save_draft(db, request_id=opinion.id, by=tele.senior, data=FULL)
    assert refused.value.field_errors[0]["field"] == "recognition_scope"


def test_a_senior_signature_is_final_hashed_and_tells_the_requester(
        db: Session, tele: TeleWorld, requests: Requests) -> None:
    request = requests.claimed_senior
    report = reports.sign(db, request_id=request.id, by=tele.senior, data=FULL)
    db.commit()
    db.refresh(request)
    assert report.state == ReportState.SIGNED and request.state == ConsultState.REPORTED
    assert request.reported_at is not None and report.signed_by_user_id == tele.senior.id
    assert len(report.content_sha256) == 64 and reports.verify(db, report)
    assert reports.hr_mark(report.recognition_scope) == "县域HR"
    last = db.execute(select(ConsultTransition).where(ConsultTransition.request_id == request.id)
                      .order_by(ConsultTransition.id.desc())).scalars().first()
    assert last.action == "sign" and last.to_state == "reported" and last.detail["sha256"] == report.content_sha256
    told = _notes(db, tele.requester.id, "teleconsult.reported")
    assert len(told) == 1 and request.number in told[0].title and told[0].link == f"/teleconsult/{request.id}"
    # Signed: nothing changes the report any more.
    with pytest.raises(Conflict):
        reports.save_draft(db, request_id=request.id, by=tele.senior, data=FULL)
    db.rollback()
    with pytest.raises(Conflict):
        reports.sign(db, request_id=request.id, by=tele.senior)
    db.rollback()
    # The requester now reads it.
    assert reports.visible_report(db, user=tele.requester, request=request) is not None


def test_the_hash_shows_any_change_made_behind_the_signature(db: Session, tele: TeleWorld,
                                                             requests: Requests) -> None:
    report = reports.sign(db, request_id=requests.claimed_senior.id, by=tele.senior, data=FULL)
    db.commit()
    assert reports.verify(db, report)
    db.execute(update(Report).where(Report.id == report.id).values(impression="未见异常 / normal"))
    db.commit()
    db.refresh(report)
    assert not reports.verify(db, report)
    db.execute(update(Report).where(Report.id == report.id).values(
        impression=FULL.impression, signed_at=report.signed_at + timedelta(seconds=1)))
    db.commit()
    db.refresh(report)
    assert not reports.verify(db, report)


def test_a_trainee_report_waits_for_a_senior_of_the_centre(db: Session, tele: TeleWorld, requests: Requests) -> None:
    request = requests.claimed_trainee
    report = reports.sign(db, request_id=request.id, by=tele.trainee, data=FULL)
    db.commit()
    db.refresh(request)
    assert report.state == ReportState.AWAITING_COSIGN and request.state == ConsultState.PRELIMINARY
    first_hash = report.content_sha256
    assert reports.verify(db, report)
    assert _notes(db, tele.requester.id, "teleconsult.reported") == []
    assert reports.visible_report(db, user=tele.requester, request=request) is None
    assert {n.user_id for n in db.execute(select(Notification).where(
        Notification.kind == "teleconsult.cosign")).scalars()} == {tele.head.id, tele.senior.id}
    with pytest.raises(AccessDenied) as own:
        reports.cosign(db, request_id=request.id, by=tele.trainee)
    assert own.value.code == "own_report"
    db.rollback()
    with pytest.raises(AccessDenied) as not_reader:
        reports.cosign(db, request_id=request.id, by=tele.county_doctor)
    assert not_reader.value.code == "not_centre_reader"
    db.rollback()
    with pytest.raises(AccessDenied):
        reports.cosign(db, request_id=request.id, by=tele.requester)
    db.rollback()
    # Nor may the content change while it waits.
    with pytest.raises(Conflict):
        reports.save_draft(db, request_id=request.id, by=tele.trainee, data=FULL)
    db.rollback()

    final = reports.cosign(db, request_id=request.id, by=tele.senior)
    db.commit()
    db.refresh(request)
    assert final.state == ReportState.SIGNED and request.state == ConsultState.REPORTED
    assert final.signed_by_user_id == tele.trainee.id and final.cosigned_by_user_id == tele.senior.id
    assert final.content_sha256 != first_hash and reports.verify(db, final)
    assert len(_notes(db, tele.requester.id, "teleconsult.reported")) == 1
    with pytest.raises(Conflict):
        reports.cosign(db, request_id=request.id, by=tele.head)


def test_a_senior_who_is_not_a_reader_of_the_centre_cannot_cosign(db: Session, tele: TeleWorld,
                                                                 requests: Requests) -> None:
    reports.sign(db, request_id=requests.claimed_trainee.id, by=tele.trainee, data=FULL)
    db.commit()
    # The township colleague is an attending physician, but of the inviting side.
    with pytest.raises(AccessDenied):
        reports.cosign(db, request_id=requests.claimed_trainee.id, by=tele.town_colleague)


def test_addenda_keep_the_original_and_carry_their_own_hash(db: Session, tele: TeleWorld,
                                                            requests: Requests) -> None:
    request = requests.claimed_senior
    with pytest.raises(Conflict):  # nothing signed yet: a draft is edited, not amended
        reports.add_addendum(db, request_id=request.id, by=tele.senior, text="补充")
    db.rollback()
    report = reports.sign(db, request_id=request.id, by=tele.senior, data=FULL)
    db.commit()
    signed_hash, signed_findings = report.content_sha256, report.findings
    with pytest.raises(InvalidInput):
        reports.add_addendum(db, request_id=request.id, by=tele.senior, text="   ")
    db.rollback()
    with pytest.raises(AccessDenied):
        reports.add_addendum(db, request_id=request.id, by=tele.requester, text="我想改")
    db.rollback()
    with pytest.raises(AccessDenied):  # a trainee of the centre who did not sign it
        reports.add_addendum(db, request_id=request.id, by=tele.trainee, text="补充")
    db.rollback()
    first = reports.add_addendum(db, request_id=request.id, by=tele.senior,
                                 text="复阅：右肺中叶另见 4 mm 磨玻璃结节 / a 4 mm GGO in the middle lobe")
    second = reports.add_addendum(db, request_id=request.id, by=tele.head, text="同意以上意见 / agreed")
    db.commit()
    db.refresh(report)
    assert report.content_sha256 == signed_hash and report.findings == signed_findings and reports.verify(db, report)
    assert [a.id for a in report.addenda] == [first.id, second.id]
    assert all(reports.verify_addendum(report, a) for a in report.addenda)
    assert first.content_sha256 != second.content_sha256
    assert len(_notes(db, tele.requester.id, "teleconsult.addendum")) == 2
    first.text = "改过的补充"
    assert not reports.verify_addendum(report, first)


def test_the_ecg_centre_needs_no_technique(db: Session, tele: TeleWorld) -> None:
    ecg = make_request(db, tele, centre_id=tele.ecg_centre.id, kind=ConsultKind.ECG, priority=Priority.URGENT)
    service.claim(db, by=tele.senior, request_id=ecg.id)
    report = reports.sign(db, request_id=ecg.id, by=tele.senior,
                          data=reports.ReportInput(findings="窦性心律，ST 段无改变", impression="正常心电图"))
    assert report.state == ReportState.SIGNED


def test_signatures_are_audited_with_the_hash(db: Session, tele: TeleWorld, requests: Requests) -> None:
    report = reports.sign(db, request_id=requests.claimed_senior.id, by=tele.senior, data=FULL)
    db.commit()
    event = db.execute(select(AuditEvent).where(AuditEvent.action == "teleconsult.sign")).scalar_one()
    assert event.user_id == tele.senior.id and event.patient_id == tele.patient.id
    assert event.detail["sha256"] == report.content_sha256


def test_the_requesters_open_page_hears_the_signature_live(db: Session, tele: TeleWorld, requests: Requests) -> None:
    request_id = requests.claimed_senior.id
    inviting_topic = f"org:{tele.town.id}"

    def sign() -> None:
        from healthrelay.core.db import get_sessionmaker

        with get_sessionmaker()() as s:
            from healthrelay.accounts.models import User

            reports.sign(s, request_id=request_id, by=s.get(User, tele.senior.id), data=FULL)
            s.commit()

    events = collect_live([inviting_topic, f"user:{tele.requester.id}"], sign, until_type="teleconsult.report")
    report_events = [e for e in events if e["type"] == "teleconsult.report"]
    assert report_events[0]["request_id"] == request_id and report_events[0]["report_state"] == "signed"
    assert any(e["type"] == "notification" and e["kind"] == "teleconsult.reported" for e in events)
