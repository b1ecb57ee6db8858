"""Critical lab values (检验危急值) in the same loop as imaging: a K 2.5 (LL) opens a critical result, the ordering
doctor is told at once on every channel, durable timers escalate to the department head and the 医务科, the
telephone read-back closes it, and the list of critical results shows it beside the imaging ones."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, InvalidInput, NotFound
from healthrelay.core.timers import Timer
from healthrelay.notifications.models import Notification, OutboundMessage
from healthrelay.results.models import LabResult
from healthrelay.teleconsult import critical
from healthrelay.teleconsult.models import CriticalResult, CriticalResultEvent, CriticalState
from tests import factories as f
from tests.notifications.conftest import login
from tests.teleconsult.conftest import Requests, TeleWorld, staff
from tests.teleconsult.test_critical import CRITICAL, _ack, fire, flag, town_chain


def potassium(db: Session, tele: TeleWorld, *, ordered_by: int | None = None, ordering: int | None = None,
              value: str = "2.5", flag_: str = "LL", filler: str = "K-0001") -> LabResult:
    """A potassium of 2.5 mmol/L (critically low) measured by the county lab for the township."""
    lab = LabResult(patient_id=tele.patient.id, organisation_id=tele.county.id, ordering_organisation_id=ordering,
                    ordered_by_user_id=ordered_by, order_number="JY20261204-0007", filler_number=filler,
                    test_code="K", test_name="血钾", value_text=value, value_numeric=float(value), unit="mmol/L",
                    reference_range="3.5-5.3", abnormal_flag=flag_, specimen="血清", reported_at=utcnow(),
                    collected_at=utcnow() - timedelta(hours=1), status="final", critical=True, source="hl7",
                    created_at=utcnow())
    db.add(lab)
    db.commit()
    return lab


def open_lab(db: Session, tele: TeleWorld, **kwargs: object) -> tuple[LabResult, CriticalResult]:
    lab = potassium(db, tele, **kwargs)  # type: ignore[arg-type]
    result = critical.open_for_lab(db, lab=lab, by=None)
    db.commit()
    return lab, result


def test_a_critical_potassium_tells_the_ordering_doctor_at_once_on_every_channel(db: Session,
                                                                                  tele: TeleWorld) -> None:
    town_chain(db, tele)
    lab, result = open_lab(db, tele, ordered_by=tele.requester.id, ordering=tele.town.id)
    assert result.lab_result_id == lab.id and result.request_id is None and result.report_id is None
    assert result.finding == "血钾 2.5 mmol/L (LL) 参考 3.5–5.3"
    assert result.state == CriticalState.OPEN and result.notify_user_id == tele.requester.id
    assert result.organisation_id == tele.town.id and result.flagged_by_user_id is None
    assert result.ack_due_at - result.flagged_at == timedelta(minutes=15)
    note = db.execute(select(Notification).where(Notification.user_id == tele.requester.id,
                                                 Notification.kind == "teleconsult.critical")).scalar_one()
    assert note.urgent and note.link == f"/teleconsult/critical/{result.id}"
    assert "JY20261204-0007" in note.title and "2.5 mmol/L" in note.body
    notified = [e for e in critical.events_of(db, result) if e.kind == "notified"]
    assert {e.detail["channel"] for e in notified} == {"inbox", "live", "email", "sms", "wechat"}
    # The patient's name is in no message, not in the inbox and not on any outbound channel.
    texts = [note.title, note.body] + [m.body + (m.subject or "") for m in db.execute(
        select(OutboundMessage).where(OutboundMessage.notification_id == note.id)).scalars()]
    assert tele.patient.name not in "".join(texts)
    assert db.execute(select(Timer).where(Timer.dedupe_key == f"critical:{result.id}:escalate:1")).scalar_one()
    # The same lab row again (a resend, a correction that stays critical) opens nothing new.
    again = critical.open_for_lab(db, lab=lab, by=None)
    db.commit()
    assert again.id == result.id
    assert db.execute(select(func.count()).select_from(CriticalResult)).scalar() == 1
    assert db.execute(select(func.count()).select_from(Notification).where(
        Notification.kind == "teleconsult.critical")).scalar() == 1
    assert db.execute(select(AuditEvent).where(AuditEvent.action == "teleconsult.critical.flag",
                                               AuditEvent.patient_id == tele.patient.id)).scalar_one()


def test_without_an_ordering_doctor_the_ordering_then_the_performing_organisations_clinicians_hear(
        db: Session, tele: TeleWorld) -> None:
    _, by_org = open_lab(db, tele, ordering=tele.town.id, filler="K-0002")
    told = set(db.execute(select(Notification.user_id).where(
        Notification.resource == f"critical:{by_org.id}")).scalars())
    assert told == {tele.requester.id, tele.town_colleague.id}
    _, by_lab = open_lab(db, tele, filler="K-0003")  # nobody ordered it here: the county lab's clinicians
    told = set(db.execute(select(Notification.user_id).where(
        Notification.resource == f"critical:{by_lab.id}")).scalars())
    assert told == {tele.county_doctor.id}
    assert by_lab.organisation_id == tele.county.id


def test_unacknowledged_it_climbs_to_the_department_head_then_the_medical_affairs_office(
        db: Session, tele: TeleWorld) -> None:
    town = town_chain(db, tele)
    assert town is not None
    _, result = open_lab(db, tele, ordered_by=tele.requester.id, ordering=tele.town.id)
    assert fire(db, result) == [1]
    heard = set(db.execute(select(Notification.user_id).where(Notification.resource == f"critical:{result.id}",
                                                              Notification.user_id == town.head.id)).scalars())
    assert heard == {town.head.id}
    assert fire(db, result) == [2]
    admin_note = db.execute(select(Notification).where(Notification.user_id == town.admin.id,
                                                       Notification.resource == f"critical:{result.id}")).scalar_one()
    assert "检验危急值未确认" in admin_note.title and tele.patient.name not in admin_note.title + admin_note.body
    assert fire(db, result) == [3]  # and again every interval until someone acknowledges
    db.refresh(result)
    assert result.level == 3
    # The head acknowledges (he was told) with the telephone read-back; escalation stops.
    critical.acknowledge(db, critical_id=result.id, by=town.head, data=_ack(call_spoken_to="郑医生"))
    db.commit()
    db.refresh(result)
    assert result.state == CriticalState.ACKNOWLEDGED and result.acknowledged_by_user_id == town.head.id
    assert result.call_read_back and result.call_number == "0710-1234567"
    assert fire(db, result) == []
    ack = db.execute(select(CriticalResultEvent).where(CriticalResultEvent.critical_result_id == result.id,
                                                       CriticalResultEvent.kind == "acknowledged")).scalar_one()
    assert ack.detail["call_read_back"] is True and ack.detail["call_spoken_to"] == "郑医生"


def test_without_a_medical_affairs_office_at_the_ordering_member_the_labs_hears(db: Session,
                                                                                tele: TeleWorld) -> None:
    _, result = open_lab(db, tele, ordered_by=tele.requester.id, ordering=tele.town.id)
    assert fire(db, result) == [2]  # no head at the township, no 医务科 there: the county lab's 医务科
    escalated = [e for e in critical.events_of(db, result) if e.kind == "escalated"][0]
    assert escalated.detail["user_ids"] == [tele.county_admin.id]
    assert escalated.detail["fallback"] == "lab_medical_affairs"


def test_who_may_see_and_acknowledge_a_lab_value(db: Session, tele: TeleWorld) -> None:
    _, result = open_lab(db, tele, ordered_by=tele.requester.id, ordering=tele.town.id)
    with pytest.raises(NotFound):
        critical.get_for(db, critical_id=result.id, user=tele.outsider_doctor)
    with pytest.raises(NotFound):
        critical.acknowledge(db, critical_id=result.id, by=tele.town_b_doctor, data=_ack())
    db.rollback()
    # The performing lab's staff see it but were not told: they may not close the ordering side's loop.
    seen, request = critical.get_for(db, critical_id=result.id, user=tele.county_doctor)
    assert seen.id == result.id and request is None
    with pytest.raises(AccessDenied):
        critical.acknowledge(db, critical_id=result.id, by=tele.county_doctor, data=_ack())
    db.rollback()
    # Bad input names each missing field and writes nothing.
    with pytest.raises(InvalidInput) as bad:
        critical.acknowledge(db, critical_id=result.id, by=tele.town_colleague,
                             data=critical.AckInput(call_number="abc", call_read_back=None))
    db.rollback()
    assert {e["field"] for e in bad.value.field_errors} >= {"call_at", "call_number", "call_spoken_to",
                                                            "call_read_back", "action_taken"}
    db.refresh(result)
    assert result.state == CriticalState.OPEN
    # A colleague at the ordering township closes it.
    critical.acknowledge(db, critical_id=result.id, by=tele.town_colleague, data=_ack())
    db.commit()
    db.refresh(result)
    assert result.state == CriticalState.ACKNOWLEDGED


def test_the_list_shows_lab_values_beside_imaging_with_times_and_export(client, db: Session, tele: TeleWorld,  # noqa: ANN001
                                                                          requests: Requests) -> None:
    imaging = flag(db, tele, requests.claimed_senior)
    lab, lab_result = open_lab(db, tele, ordered_by=tele.requester.id, ordering=tele.town.id)
    critical.acknowledge(db, critical_id=lab_result.id, by=tele.requester, data=_ack())
    db.commit()
    outsider_lab = LabResult(patient_id=tele.patient.id, organisation_id=tele.outsider.id, test_code="K",
                             test_name="血钾", value_text="7.1", value_numeric=7.1, unit="mmol/L",
                             abnormal_flag="HH", reported_at=utcnow(), status="final", critical=True,
                             source="entered", created_at=utcnow())
    db.add(outsider_lab)
    db.commit()
    hidden = critical.open_for_lab(db, lab=outsider_lab, by=tele.outsider_doctor)
    db.commit()
    login(client, "town_doc")
    page = client.get("/teleconsult/critical")
    assert page.status_code == 200
    ids = re.findall(r'<tr id="critical-row-(\d+)"', page.text)
    assert set(ids) == {str(imaging.id), str(lab_result.id)}  # not another hospital's patient
    row = page.text.split(f'id="critical-row-{lab_result.id}"')[1].split("</tr>")[0]
    assert "JY20261204-0007" in row and 'data-kind="lab"' in row and "测试县人民医院" in row
    assert "东山镇卫生院" in row and "血钾 2.5 mmol/L (LL)" in row
    assert re.search(r'id="sum-total">2<', page.text) and re.search(r'id="sum-open">1<', page.text)
    assert 'id="sum-median">' in page.text and 'id="sum-median">—<' not in page.text
    export = client.get("/teleconsult/critical.xlsx")
    assert export.status_code == 200
    sheet = load_workbook(io.BytesIO(export.content)).worksheets[0]
    numbers = [r[0] for r in sheet.iter_rows(min_row=2, values_only=True)]
    assert sorted(numbers) == sorted([requests.claimed_senior.number, "JY20261204-0007"])
    rows, summary = critical.report(db, user=tele.outsider_doctor, start=utcnow().date() - timedelta(days=1),
                                    end=utcnow().date() + timedelta(days=1))
    assert [r.result.id for r in rows] == [hidden.id] and rows[0].kind == "lab" and summary.total == 1
    overseer = staff(db, organisation=tele.county, username="ygt_admin", display_name="医共体管理员",
                     role=Role.ALLIANCE_ADMIN)
    db.commit()
    rows, summary = critical.report(db, user=overseer, start=utcnow().date() - timedelta(days=1),
                                    end=utcnow().date() + timedelta(days=1), organisation_id=tele.town.id)
    assert {r.result.id for r in rows} == {imaging.id, lab_result.id}
    assert summary.acknowledged == 1 and summary.median_minutes is not None and summary.p90_minutes is not None
    assert CRITICAL.critical_finding in {r.result.finding for r in rows}


def test_the_inbox_link_opens_the_lab_value_and_the_read_back_closes_it(client, db: Session,  # noqa: ANN001
                                                                        tele: TeleWorld) -> None:
    """Needs the small patch of teleconsult/reports_pages.py and reports_api.py (a lab value has no request)."""
    lab, result = open_lab(db, tele, ordered_by=tele.requester.id, ordering=tele.town.id)
    token = login(client, "town_doc")
    note = db.execute(select(Notification).where(Notification.user_id == tele.requester.id,
                                                 Notification.kind == "teleconsult.critical")).scalar_one()
    page = client.get(note.link)
    assert page.status_code == 200
    assert "血钾 2.5 mmol/L (LL) 参考 3.5–5.3" in page.text and 'id="critical-kind"' in page.text
    assert 'id="critical-lab"' in page.text and "测试县人民医院" in page.text and 'id="request-link"' not in page.text
    assert re.search(r'<input id="ack-call-number"[^>]*autofocus', page.text)
    missing = client.post(f"/teleconsult/critical/{result.id}/acknowledge", data={"csrf_token": token})
    assert missing.status_code == 422 and 'id="ack-call_number-error"' in missing.text
    local_now = (utcnow() + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M")
    done = client.post(f"/teleconsult/critical/{result.id}/acknowledge", data={
        "csrf_token": token, "call_number": "0710-3322110", "call_at": local_now, "call_spoken_to": "检验科李老师",
        "call_read_back": "yes", "action_taken": "口服及静脉补钾，2 小时后复查"}, follow_redirects=False)
    assert done.status_code == 303
    shown = client.get(done.headers["location"]).text
    assert 'id="critical-ack"' in shown and "检验科李老师" in shown
    # The API shows both kinds; a lab value has no request and carries its order number.
    requester = f.bearer(client, "town_doc")
    items = client.get("/api/v1/teleconsult/critical", headers=requester).json()["items"]
    assert [(i["id"], i["request_id"], i["request_number"]) for i in items] == [
        (result.id, None, "JY20261204-0007")]
    one = client.get(f"/api/v1/teleconsult/critical/{result.id}", headers=requester)
    assert one.status_code == 200 and one.json()["state"] == "acknowledged"
    assert lab.id == one.json()["lab_result_id"]


def test_a_critical_value_recorded_by_the_results_service_opens_the_loop(db: Session, tele: TeleWorld) -> None:
    """The way real values arrive (here over HL7, nobody signed in): results.service.record_lab_result opens it."""
    from healthrelay.results import service as results
    from healthrelay.results.schemas import LabResultIn

    data = LabResultIn(patient_id=tele.patient.id, organisation_id=tele.county.id, test_code="K", value="2.5",
                       unit="mmol/L", reference_range="3.5-5.3", abnormal_flag="LL", reported_at=utcnow(),
                       order_number="JY20261204-0042", filler_number="LIS-88", ordering_organisation_id=tele.town.id,
                       ordered_by_user_id=tele.requester.id)
    lab = results.record_lab_result(db, data=data, source="hl7", by=None)
    db.commit()
    result = critical.for_lab(db, lab_result_id=lab.id)
    assert result is not None and result.notify_user_id == tele.requester.id
    assert result.flagged_by_user_id is None and "2.5 mmol/L (LL)" in result.finding
    # The lab sends the same result again: still one loop, nobody told twice.
    results.record_lab_result(db, data=data, source="hl7", by=None)
    db.commit()
    assert db.execute(select(func.count()).select_from(CriticalResult)).scalar() == 1
    assert db.execute(select(func.count()).select_from(Notification).where(
        Notification.kind == "teleconsult.critical")).scalar() == 1
