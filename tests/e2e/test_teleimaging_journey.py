"""Tele-imaging end to end, in a real browser: a township CT sends a head CT over DICOM; the county reader
finds it on the worklist, opens it in the viewer, reports a haemorrhage as critical and signs; the township
doctor is told at once without reloading, does not acknowledge; the loop escalates to the doctor's
department head, whose acknowledgement (with the telephone read-back) closes it.

Four people at four screens. Deadlines pass because the test moves time, not by sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, Page, expect
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.timers import Timer
from healthrelay.demo.phantom import PatientModule, ct_series
from healthrelay.directory.models import Department, Post, TitleGrade
from healthrelay.imaging.models import ImagingStudy, Modality
from healthrelay.patients.models import IdentifierType, PatientIdentifier
from healthrelay.teleconsult.models import (
    ConsultRequest,
    CriticalResult,
    CriticalState,
    Priority,
    RoutingRule,
)
from tests.browser import SCREENSHOTS, screens_for, sign_in
from tests.imaging.conftest import start_test_receiver
from tests.teleconsult.conftest import TeleWorld, build_world, staff

pytestmark = pytest.mark.e2e

RESIDENT_ID = "11010519491231002X"


@pytest.fixture
def screens(browser: Browser, live_server: str) -> Iterator[dict[str, Page]]:
    """One browser context (its own cookies) per person."""
    with screens_for(browser, live_server, ("reader", "township", "head", "ywk")) as pages:
        yield pages


def _township_with_a_ct(db: Session, w: TeleWorld) -> dict[str, object]:
    """The township doctor works in a department with a head; the township's CT is registered and routed."""
    gp = Department(organisation_id=w.town.id, code="QKYK", name="全科医疗科")
    db.add(gp)
    db.flush()
    head = staff(db, organisation=w.town, username="town_head", display_name="林主任", grade=TitleGrade.ASSOCIATE_CHIEF,
                 department=gp, role=w.requester.role)
    gp.head_practitioner_id = head.practitioner_id
    db.execute(update(Post).where(Post.id == w.requester.post_id).values(department_id=gp.id))
    staff(db, organisation=w.town, username="town_ywk", display_name="医务科李", grade=TitleGrade.STAFF,
          role=w.county_admin.role)
    db.add(Modality(ae_title="DONGSHANCT", organisation_id=w.town.id, modality_type="CT", name="东山镇卫生院 CT",
                    contact_user_id=w.requester.id))
    db.add(RoutingRule(modality_type="CT", centre_id=w.centre.id, priority=Priority.URGENT, position=1))
    db.add(PatientIdentifier(patient_id=w.patient.id, type=IdentifierType.RESIDENT_ID, value=RESIDENT_ID))
    db.commit()
    return {"head": head}


def _send_ct_over_dicom(port: int) -> None:
    """The township's CT, as a modality would: one association, every slice by C-STORE."""
    patient = PatientModule(name="Wang^Xiuying=王^秀英", patient_id=RESIDENT_ID, birth_date="19491231", sex="F")
    ae = AE(ae_title="DONGSHANCT")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="HEALTHRELAY")
    assert assoc.is_established
    try:
        from pydicom import dcmread
        from pydicom.filebase import DicomBytesIO

        for data in ct_series(patient=patient, slices=12, size=256, body="head", bleed=True,
                              institution="东山镇卫生院"):
            ds: Dataset = dcmread(DicomBytesIO(data))
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000
    finally:
        assoc.release()


def _fire_escalation(db: Session, critical_id: int) -> None:
    """What the worker does once the acknowledgement time has passed (time moved by the test)."""
    past = utcnow() - timedelta(minutes=1)
    db.execute(update(CriticalResult).where(CriticalResult.id == critical_id).values(ack_due_at=past))
    db.execute(update(Timer).where(Timer.dedupe_key.like(f"critical:{critical_id}:escalate:%"),
                                   Timer.fired_at.is_(None)).values(due_at=past))
    db.commit()
    timers.run_due(get_sessionmaker(), runner="e2e")


def test_township_ct_read_at_the_county_critical_result_escalates_until_acknowledged(
        screens: dict[str, Page], db: Session) -> None:
    w = build_world(db)
    _township_with_a_ct(db, w)
    reader, township, head, ywk = screens["reader"], screens["township"], screens["head"], screens["ywk"]

    # The township doctor and the department head have their inboxes open; the reader the worklist.
    for screen, username in ((township, "town_doc"), (head, "town_head"), (ywk, "town_ywk")):
        sign_in(screen, username)
        screen.goto("/inbox")
        screen.evaluate("window.__notReloaded = true")
    sign_in(reader, "yx_senior")
    reader.goto("/teleconsult/worklist")
    reader.evaluate("window.__notReloaded = true")

    # The township's CT sends the study over DICOM; it is matched to the resident and routed (urgent).
    receiver = start_test_receiver()
    try:
        _send_ct_over_dicom(receiver.port)
    finally:
        receiver.shutdown()
    study = db.execute(select(ImagingStudy)).scalar_one()
    assert study.patient_id == w.patient.id and study.number_of_instances == 12
    request = db.get(ConsultRequest, study.consult_request_id)
    assert request is not None and request.priority == Priority.URGENT

    # It appears on the reader's worklist without a reload.
    row = reader.locator(f"tr[data-request-id='{request.id}']")
    expect(row).to_be_visible(timeout=10_000)
    expect(row).to_contain_text(request.number)
    assert reader.evaluate("window.__notReloaded") is True
    reader.screenshot(path=str(SCREENSHOTS / "teleimaging-worklist.png"), full_page=True)

    # The reader opens the study in the viewer: the first image is on screen.
    reader.goto(f"/imaging/studies/{study.study_instance_uid}/viewer")
    reader.wait_for_function("window.hrViewer && window.hrViewer.panes[0].drawn > 0")
    lit = reader.evaluate("""() => {
        const c = document.querySelector('#hv-pane-0 canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) { if (d[i] > 8) n++; } return n / (d.length / 4);
    }""")
    assert lit > 0.02
    reader.keyboard.press("ArrowDown")
    reader.screenshot(path=str(SCREENSHOTS / "teleimaging-viewer.png"))

    # Claims it, reports the haemorrhage as critical and signs.
    reader.goto(f"/teleconsult/{request.id}")
    reader.click("#claim-submit")
    expect(reader.locator("#request-claimed-by")).to_contain_text("钱医师")
    reader.goto(f"/teleconsult/{request.id}/report")
    reader.fill("#f-technique", "头颅 CT 平扫，层厚 5 mm。")
    reader.fill("#f-findings", "右侧颞叶见类圆形高密度影，CT 值约 70 HU，周围少许水肿，中线结构居中。")
    reader.fill("#f-impression", "右颞叶急性脑出血。")
    reader.fill("#f-recommendation", "立即转上级医院神经外科。")
    reader.check("#f-critical")
    reader.fill("#f-critical_finding", "右颞叶急性脑出血，约 10 ml")
    reader.click("#sign-report")
    expect(reader).to_have_url(re.compile(rf"/teleconsult/{request.id}(\?.*)?$"))
    expect(reader.locator("#report-state")).to_contain_text(re.compile("已签|signed", re.I))

    # The township doctor is told at once, on the open inbox page, with an urgent alert.
    alert = township.locator("[role=alert]").filter(has_text=request.number)
    expect(alert.first).to_be_visible(timeout=10_000)
    assert township.evaluate("window.__notReloaded") is True
    township.screenshot(path=str(SCREENSHOTS / "teleimaging-critical-toast.png"))
    critical = db.execute(select(CriticalResult).where(CriticalResult.request_id == request.id)).scalar_one()
    assert critical.notify_user_id == w.requester.id

    # The doctor does not acknowledge. The time passes: the department head is told, live.
    _fire_escalation(db, critical.id)
    expect(head.locator("[role=alert]").filter(has_text=request.number).first).to_be_visible(timeout=10_000)
    db.refresh(critical)
    assert critical.state == CriticalState.OPEN and critical.level == 1
    # Still nobody: the 医务科 hears next.
    _fire_escalation(db, critical.id)
    expect(ywk.locator("[role=alert]").filter(has_text=request.number).first).to_be_visible(timeout=10_000)

    # The department head acknowledges with the telephone read-back; the loop closes.
    head.goto(f"/teleconsult/critical/{critical.id}")
    expect(head.locator("#critical-state")).to_contain_text(re.compile("未确认|open", re.I))
    head.fill("#ack-call-number", "0718-6623120")
    head.fill("#ack-spoken-to", "钱医师（影像中心）")
    head.check("#ack-read-back-yes")
    head.fill("#ack-action", "已通知患者家属，120 转县医院神经外科")
    head.click("#ack-submit")
    expect(head.locator("#critical-state")).to_contain_text(re.compile("已确认|acknowledged", re.I))
    head.screenshot(path=str(SCREENSHOTS / "teleimaging-critical-acknowledged.png"), full_page=True)
    db.refresh(critical)
    assert critical.state == CriticalState.ACKNOWLEDGED and critical.acknowledged_by_user_id is not None
    assert critical.call_read_back is True
    kinds = [e.kind for e in critical.events]
    assert kinds[0] == "flagged" and "escalated" in kinds and kinds[-1] == "acknowledged"

    # Nothing more is sent after the acknowledgement, even when the next escalation time comes.
    _fire_escalation(db, critical.id)
    db.refresh(critical)
    assert critical.level == 2 and critical.state == CriticalState.ACKNOWLEDGED

    # The critical-results report lists it with its times.
    reader.goto("/teleconsult/critical")
    expect(reader.locator("body")).to_contain_text(request.number)
