"""The printed report: Chinese text really in the PDF (Noto CJK embedded), both organisations, the masked ID,
the structured report, signatures with times, the hash, the HR mark and the addenda; printing is audited."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.patients.identity import make_resident_id, mask_resident_id
from healthrelay.patients.models import IdentifierType, PatientIdentifier
from healthrelay.teleconsult import reports
from tests.notifications.conftest import login
from tests.referrals.test_slip import Pdf
from tests.teleconsult.conftest import Requests, TeleWorld
from tests.teleconsult.test_reports import FULL


@pytest.fixture
def resident_id(db: Session, tele: TeleWorld) -> str:
    number = make_resident_id("421122", date(1956, 3, 8), 12, "F")
    db.add(PatientIdentifier(patient_id=tele.patient.id, type=IdentifierType.RESIDENT_ID, value=number))
    db.commit()
    return number


def test_the_report_pdf_carries_everything_the_paper_needs(client, db: Session, tele: TeleWorld,  # noqa: ANN001
                                                            requests: Requests, resident_id: str) -> None:
    request = requests.claimed_trainee
    data = reports.ReportInput(**{**FULL.__dict__, "critical": True, "critical_finding": "疑似张力性气胸"})
    reports.sign(db, request_id=request.id, by=tele.trainee, data=data)
    report = reports.cosign(db, request_id=request.id, by=tele.senior)
    reports.add_addendum(db, request_id=request.id, by=tele.senior, text="复阅：纵隔无移位")
    db.commit()
    login(client, "town_doc")
    response = client.get(f"/teleconsult/{request.id}/report.pdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    pdf = Pdf(response.content)
    assert any(name.endswith("+Noto-Sans-CJK-SC") for name in pdf.font_names())
    assert pdf.embedded_font_files() >= 2
    text = pdf.text()
    for expected in (request.number, "远程诊断报告单", "测试县人民医院", "东山镇卫生院", "县域影像诊断中心", "王秀英",
                     mask_resident_id(resident_id), "右肺上叶尖段", "周围型肺癌", "增强 CT", "县域HR",
                     "疑似张力性气胸", "孙医师", "钱医师", report.content_sha256[:32], "复阅：纵隔无移位",
                     "郑医生"):
        assert expected in text.replace("\n", ""), expected
    assert resident_id not in text
    events = db.execute(select(AuditEvent).where(AuditEvent.action == "teleconsult.report.print")).scalars().all()
    assert [(e.user_id, e.patient_id) for e in events] == [(tele.requester.id, tele.patient.id)]
    assert events[0].detail["sha256"] == report.content_sha256


def test_no_pdf_before_signature_and_none_for_strangers(client, db: Session, tele: TeleWorld,  # noqa: ANN001
                                                       requests: Requests) -> None:
    request = requests.claimed_senior
    reports.save_draft(db, request_id=request.id, by=tele.senior, data=FULL)
    db.commit()
    login(client, "yx_senior")
    assert client.get(f"/teleconsult/{request.id}/report.pdf").status_code == 404
    reports.sign(db, request_id=request.id, by=tele.senior)
    db.commit()
    assert client.get(f"/teleconsult/{request.id}/report.pdf").status_code == 200
    client.cookies.clear()
    login(client, "outsider_doc")
    refused = client.get(f"/teleconsult/{request.id}/report.pdf")
    assert refused.status_code == 403 and not refused.content.startswith(b"%PDF")
