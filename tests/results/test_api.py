"""The results API: bad input gets a 422 naming the field, nothing stored; need-to-know on reads."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.results import service
from tests import factories as f
from tests.results.conftest import ResultsWorld, count_exams, count_labs, lab_in


def body(world: ResultsWorld, **changes: object) -> dict[str, object]:
    values: dict[str, object] = {"patient_id": world.tele.patient.id, "organisation_id": world.tele.town.id,
                                 "test_code": "K", "value": "4.2", "specimen": "血清",
                                 "reported_at": (utcnow() - timedelta(minutes=30)).isoformat()}
    values.update(changes)
    return values


def fields(response) -> set[str]:  # noqa: ANN001
    return {e["field"] for e in response.json()["field_errors"]}


def test_a_lab_posts_a_result_and_gets_it_back_with_its_flag(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    headers = f.bearer(client, "town_lab")
    created = client.post("/api/v1/results/lab", json=body(world, value="5.6", filler_number="A-1"), headers=headers)
    assert created.status_code == 201, created.text
    out = created.json()
    assert (out["test_code"], out["abnormal_flag"], out["critical"], out["organisation_name"]) == (
        "K", "H", False, "东山镇卫生院")
    again = client.post("/api/v1/results/lab", json=body(world, value="5.6", filler_number="A-1"), headers=headers)
    assert again.json()["id"] == out["id"] and count_labs(db) == 1


def test_bad_lab_input_is_a_422_naming_the_field(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    headers = f.bearer(client, "town_lab")
    cases = [
        (body(world, test_code="NOPE"), {"test_code"}),
        (body(world, value="high"), {"value"}),
        (body(world, reported_at=(utcnow() + timedelta(hours=3)).isoformat()), {"reported_at"}),
        (body(world, reported_at="yesterday"), {"reported_at"}),
        (body(world, status="final-ish"), {"status"}),
        (body(world, patient_id=424242), {"patient_id"}),
        ({k: v for k, v in body(world).items() if k != "value"}, {"value"}),
        (body(world, specimen="x" * 61), {"specimen"}),
    ]
    for payload, expected in cases:
        response = client.post("/api/v1/results/lab", json=payload, headers=headers)
        assert response.status_code == 422, (payload, response.text)
        assert fields(response) == expected, response.json()
    unknown = client.post("/api/v1/results/lab", json=body(world, test_code="NOPE"), headers=headers).json()
    assert unknown["field_errors"][0]["code"] == "unknown_code"
    assert count_labs(db) == 0


def test_bad_exam_input_is_a_422_naming_the_field(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    headers = f.bearer(client, "town_lab")
    now = utcnow()
    good = {"patient_id": world.tele.patient.id, "organisation_id": world.tele.town.id, "modality": "DX",
            "body_part": "CHEST", "performed_at": (now - timedelta(hours=3)).isoformat(),
            "reported_at": (now - timedelta(hours=1)).isoformat(), "impression": "两肺未见明显异常"}
    for payload, expected in [({**good, "exam_code": "PET"}, {"exam_code"}),
                              ({**good, "modality": "XA"}, {"exam_code"}),
                              ({**good, "impression": ""}, {"impression"}),
                              ({**good, "performed_at": now.isoformat(), "reported_at": (now - timedelta(days=1))
                                .isoformat()}, {"performed_at"})]:
        response = client.post("/api/v1/results/exam", json=payload, headers=headers)
        assert response.status_code == 422 and fields(response) == expected, response.text
    assert count_exams(db) == 0
    created = client.post("/api/v1/results/exam", json=good, headers=headers)
    assert created.status_code == 201 and created.json()["exam_code"] == "DR_CHEST"


def test_posting_for_another_organisation_is_refused(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    headers = f.bearer(client, "town_lab")
    response = client.post("/api/v1/results/lab", json=body(world, organisation_id=world.tele.county.id),
                           headers=headers)
    assert response.status_code == 403 and count_labs(db) == 0


def test_patient_results_and_need_to_know(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    service.record_lab_result(db, data=lab_in(world, organisation_id=world.tele.county.id, value="4.4"),
                              source="hl7", by=None)
    db.commit()
    mine = client.get(f"/api/v1/patients/{world.tele.patient.id}/results?kind=lab",
                      headers=f.bearer(client, "town_doc"))
    assert mine.status_code == 200
    assert [(r["test_code"], r["organisation_name"]) for r in mine.json()["lab"]] == [("GLU", "测试县人民医院")]
    stranger = client.get(f"/api/v1/patients/{world.tele.patient.id}/results",
                          headers=f.bearer(client, "outsider_doc"))
    assert stranger.status_code == 403 and stranger.json()["code"] == "no_care_relationship"
    bad = client.get(f"/api/v1/patients/{world.tele.patient.id}/results?kind=x", headers=f.bearer(client, "town_doc"))
    assert bad.status_code == 422 and fields(bad) == {"kind"}


def test_the_code_dictionary_searches_by_pinyin(client, world: ResultsWorld) -> None:  # noqa: ANN001
    headers = f.bearer(client, "town_lab")
    by_initials = client.get("/api/v1/results/codes?q=ptt", headers=headers).json()
    assert by_initials[0]["code"] == "GLU"  # 葡萄糖 = p-t-t, before APTT which merely contains it
    exams = client.get("/api/v1/results/codes?kind=exam", headers=headers).json()
    assert {"CT_HEAD", "ECG_12", "GASTROSCOPY"} <= {c["code"] for c in exams}
    assert all(c["kind"] == "exam" for c in exams)
    potassium = client.get("/api/v1/results/codes?q=2823-3", headers=headers).json()
    assert potassium[0]["critical_low"] == 2.8 and potassium[0]["critical_high"] == 6.2
