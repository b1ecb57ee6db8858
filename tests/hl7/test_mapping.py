"""hl7.mapping.apply_message end to end on a migrated database: messages built with hl7apy as a member's HIS/LIS
sends them, parsed by python-hl7 as the transport does, applied, and checked in the tables a user sees."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import hl7
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.hl7.mapping import SUPPORTED_TYPES, MessageRejected, Reader, Seg, apply_message
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier, PatientRegistration, Sex
from tests import factories as f
from tests.hl7 import messages as m
from tests.hl7.world import Hl7World, build_world, person

BEIJING = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def world(db: Session) -> Hl7World:
    return build_world(db)


def apply(db: Session, world: Hl7World, text: str, *, sender=None, by="default") -> dict[str, list[int]]:  # noqa: ANN001
    sender = sender or world.sender
    user = world.interface_user if by == "default" else by
    return apply_message(db, message=hl7.parse(text), sender=sender, by=user, message_id=None)


def rejected(db: Session, world: Hl7World, text: str, **kw: object) -> MessageRejected:
    before = _written(db)
    with pytest.raises(MessageRejected) as caught:
        apply(db, world, text, **kw)  # type: ignore[arg-type]
    assert _written(db) == before, "a rejected message must leave nothing written"
    return caught.value


def _written(db: Session) -> tuple[int, ...]:
    tables = [Patient, PatientIdentifier, PatientRegistration, AuditEvent]
    try:
        from healthrelay.results.models import ExamResult, LabResult
        tables += [LabResult, ExamResult]
    except ImportError:
        pass
    return tuple(db.scalar(select(func.count()).select_from(t)) or 0 for t in tables)


def identifiers(db: Session, patient_id: int) -> dict[tuple[str, int | None], str]:
    rows = db.execute(select(PatientIdentifier).where(PatientIdentifier.patient_id == patient_id)).scalars()
    return {(str(r.type), r.issuer_organisation_id): r.value for r in rows}


# ---------------------------------------------------------------------------------------------
# ADT: the master patient index.

def test_a04_registers_a_new_resident_with_chinese_details(db: Session, world: Hl7World) -> None:
    p = person("欧阳秀英")
    p.address, p.city, p.province, p.phone = "石门镇幸福村3组", "恩施州", "湖北省", "13972712345"
    done = apply(db, world, m.adt_a04(p, control_id="A04-1"))

    assert len(done["patients"]) == 1 and done["lab_results"] == [] and done["orders"] == []
    patient = db.get(Patient, done["patients"][0])
    assert (patient.name, patient.sex, patient.birth_date) == ("欧阳秀英", Sex.FEMALE, date(1956, 3, 8))
    assert patient.phone == "13972712345"
    assert patient.address_line == "湖北省恩施州石门镇幸福村3组"
    assert patient.created_by_user_id == world.interface_user.id
    assert identifiers(db, patient.id) == {("resident_id", None): p.resident_id,
                                           ("medical_record", world.town.id): p.record_number}
    assert db.scalar(select(PatientRegistration.organisation_id).where(
        PatientRegistration.patient_id == patient.id)) == world.town.id
    assert db.scalar(select(AuditEvent.action).where(AuditEvent.patient_id == patient.id)) == "patient.create"


def test_a04_again_updates_what_changed_and_registers_no_one_twice(db: Session, world: Hl7World) -> None:
    p = person("李建国", sex="M", birth=date(1961, 10, 1))
    first = apply(db, world, m.adt_a04(p))["patients"][0]
    p.phone, p.address = "13800001111", "石门镇新街8号"
    again = apply(db, world, m.adt_a04(p))["patients"][0]

    assert again == first
    assert db.scalar(select(func.count()).select_from(Patient)) == 1
    patient = db.get(Patient, first)
    db.refresh(patient)
    assert (patient.phone, patient.address_line) == ("13800001111", "石门镇新街8号")
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.patient_id == first)).all()
    assert "patient.updated" in actions


def test_a08_finds_the_resident_by_record_number_and_corrects_the_name(db: Session, world: Hl7World) -> None:
    p = person("王秀瑛")
    pid = apply(db, world, m.adt_a04(p))["patients"][0]
    by_number_only = m.Person(name="王秀英", record_number=p.record_number, birth_date=p.birth_date, sex="F")
    assert apply(db, world, m.adt_a08(by_number_only))["patients"] == [pid]
    patient = db.get(Patient, pid)
    db.refresh(patient)
    assert patient.name == "王秀英"
    assert patient.pinyin == "wang xiu ying"


def test_a08_for_an_unknown_resident_registers_them(db: Session, world: Hl7World) -> None:
    done = apply(db, world, m.adt_a08(person("张桂兰")))
    assert db.get(Patient, done["patients"][0]).name == "张桂兰"


def test_a01_for_a_resident_of_another_member_links_them_here(db: Session, world: Hl7World) -> None:
    rid = make_resident_id("422822", date(1950, 1, 2), 7, "M")
    known = f.patient(db, name="赵大山", sex=Sex.MALE, birth_date=date(1950, 1, 2), registered_at=world.other)
    db.add(PatientIdentifier(patient_id=known.id, type=IdentifierType.RESIDENT_ID, value=rid))
    db.commit()
    p = m.Person(name="赵大山", sex="M", birth_date=date(1950, 1, 2), resident_id=rid, record_number="ZY0042")

    assert apply(db, world, m.adt_a01(p))["patients"] == [known.id]
    assert identifiers(db, known.id)[("medical_record", world.town.id)] == "ZY0042"
    orgs = set(db.scalars(select(PatientRegistration.organisation_id).where(
        PatientRegistration.patient_id == known.id)))
    assert orgs == {world.other.id, world.town.id}


def test_whole_name_in_one_component_and_sex_and_birth_from_the_resident_id(db: Session, world: Hl7World) -> None:
    rid = make_resident_id("422822", date(1972, 5, 20), 3, "M")
    p = m.Person(name="司马光明", whole_name=True, resident_id=rid, birth_date=None, sex="")
    patient = db.get(Patient, apply(db, world, m.adt_a04(p))["patients"][0])
    assert (patient.name, patient.sex, patient.birth_date) == ("司马光明", Sex.MALE, date(1972, 5, 20))


def test_a_resident_id_failing_gb11643_is_refused_naming_pid_3(db: Session, world: Hl7World) -> None:
    p = person()
    p.resident_id = p.resident_id[:-1] + ("0" if p.resident_id[-1] != "0" else "1")
    exc = rejected(db, world, m.adt_a04(p))
    assert (exc.code, exc.ack, exc.location) == ("invalid_resident_id", "AE", "PID[1]-3")
    assert "校验位" in exc.reason and "check digit" in exc.reason


def test_no_patient_identifier_is_refused(db: Session, world: Hl7World) -> None:
    exc = rejected(db, world, m.adt_a04(m.Person(name="无名氏")))
    assert (exc.code, exc.ack, exc.location) == ("missing_field", "AE", "PID[1]-3")


def test_a_new_resident_without_birth_date_is_refused(db: Session, world: Hl7World) -> None:
    exc = rejected(db, world, m.adt_a04(m.Person(name="刘芳", record_number="MZ9", birth_date=None)))
    assert (exc.code, exc.location) == ("missing_field", "PID[1]-7")


def test_a_bad_birth_date_is_refused(db: Session, world: Hl7World) -> None:
    text = m.set_field(m.adt_a04(person()), "PID", 7, "19560230")
    exc = rejected(db, world, text)
    assert (exc.code, exc.location) == ("invalid_field", "PID[1]-7")


def test_a_bad_phone_is_refused_naming_pid_13(db: Session, world: Hl7World) -> None:
    p = person()
    p.phone = "12345"
    exc = rejected(db, world, m.adt_a04(p))
    assert (exc.ack, exc.location) == ("AE", "PID[1]-13")
    assert "phone" in exc.reason


def test_a_resident_id_disagreeing_with_sex_is_refused(db: Session, world: Hl7World) -> None:
    p = person(sex="F")
    p.sex = "M"
    exc = rejected(db, world, m.adt_a04(p))
    assert (exc.code, exc.location) == ("resident_id_mismatch", "PID[1]-3")


def test_a_likely_duplicate_is_not_registered(db: Session, world: Hl7World) -> None:
    existing = f.patient(db, name="陈淑珍", birth_date=date(1948, 2, 14), phone="13911112222")
    db.commit()
    p = m.Person(name="陈淑珍", birth_date=date(1948, 2, 14), record_number="MZ777", phone="13911112222")
    exc = rejected(db, world, m.adt_a04(p))
    assert (exc.code, exc.ack, exc.location) == ("possible_duplicate", "AE", "PID[1]-3")
    assert f"#{existing.id}" in exc.reason


def test_resident_id_and_record_number_of_two_people_are_refused(db: Session, world: Hl7World) -> None:
    a, b = person("甲某"), person("乙某")
    apply(db, world, m.adt_a04(a))
    apply(db, world, m.adt_a04(b))
    mixed = m.Person(name="甲某", resident_id=a.resident_id, record_number=b.record_number)
    exc = rejected(db, world, m.adt_a08(mixed))
    assert (exc.code, exc.location) == ("identifier_conflict", "PID[1]-3")


def test_a_sender_without_interface_account_cannot_register(db: Session, world: Hl7World) -> None:
    exc = rejected(db, world, m.adt_a04(person(), facility=world.other_sender.facility),
                   sender=world.other_sender, by=None)
    assert (exc.code, exc.ack) == ("no_interface_user", "AE")


# ---------------------------------------------------------------------------------------------
# Structure.

def test_supported_types_are_the_contracts() -> None:
    assert {"ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01", "ORM^O01", "OML^O21"} == SUPPORTED_TYPES


@pytest.mark.parametrize("msh9", ["ADT^A03^ADT_A03", "SIU^S12", "", "ORU^R30"])
def test_an_unsupported_type_is_rejected_ar(db: Session, world: Hl7World, msh9: str) -> None:
    text = m.set_field(m.adt_a04(person()), "MSH", 9, msh9)
    exc = rejected(db, world, text)
    assert (exc.code, exc.ack, exc.location) == ("unsupported_type", "AR", "MSH[1]-9")


def _lab_message(p: m.Person, **kw: object) -> str:
    return m.oru_r01(p, [m.LabOrder(tests=[m.Lab("GLU", "6.8", unit="mmol/L")], filler="F-1")], **kw)  # type: ignore[arg-type]


def test_an_obx_before_any_obr_is_out_of_order(db: Session, world: Hl7World) -> None:
    exc = rejected(db, world, m.move_segment(_lab_message(person()), "OBX", before="OBR"))
    assert (exc.code, exc.ack, exc.location) == ("segment_order", "AR", "OBX[1]")
    assert "PV1[1]" in exc.reason, "the reason says what it cannot follow"


def test_an_obr_without_pid_is_out_of_order(db: Session, world: Hl7World) -> None:
    text = m.drop_segments(m.drop_segments(_lab_message(person()), "PID"), "PV1")
    exc = rejected(db, world, text)
    assert (exc.code, exc.ack, exc.location) == ("segment_order", "AR", "OBR[1]")


def test_a_pid_after_obr_is_out_of_order(db: Session, world: Hl7World) -> None:
    segs = m.segments(_lab_message(person()))
    pid = next(s for s in segs if s.startswith("PID|"))
    exc = rejected(db, world, m.join(segs + [pid]))
    assert (exc.code, exc.ack, exc.location) == ("segment_order", "AR", "PID[2]")


def test_results_without_obr_lack_a_segment(db: Session, world: Hl7World) -> None:
    text = m.drop_segments(m.drop_segments(_lab_message(person()), "OBR"), "OBX")
    exc = rejected(db, world, text)
    assert (exc.code, exc.ack) == ("missing_segment", "AR")


def test_a_message_not_starting_with_msh_is_rejected(db: Session, world: Hl7World) -> None:
    message = hl7.parse(m.adt_a04(person()))  # python-hl7 refuses to parse it, so turn a parsed one round
    message[:] = message[2:] + message[:2]
    with pytest.raises(MessageRejected) as caught:
        apply_message(db, message=message, sender=world.sender, by=world.interface_user, message_id=None)
    assert (caught.value.code, caught.value.ack) == ("segment_order", "AR")


def test_an_unknown_segment_in_the_body_is_out_of_order_but_z_segments_pass(db: Session, world: Hl7World) -> None:
    base = m.adt_a04(person())
    exc = rejected(db, world, base + "\rOBR|1||X")
    assert (exc.code, exc.location) == ("segment_order", "OBR[1]")
    assert apply(db, world, base + "\rZPI|1|自定义")["patients"]


# ---------------------------------------------------------------------------------------------
# Escapes: each sequence, read where a user sees it.

@pytest.mark.parametrize(("escaped", "plain"), [
    ("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~"), ("\\E\\", "\\"), ("\\.br\\", "\n"),
])
def test_each_escape_sequence_is_unescaped(escaped: str, plain: str) -> None:
    message = hl7.parse(f"MSH|^~\\&|HIS|F|||20260101||ADT^A04|1|P|2.5\rNTE|1||前{escaped}后")
    nte = Seg("NTE", 1, message.segment("NTE"))
    assert Reader(message).text(nte, 3) == f"前{plain}后"


def test_escapes_in_an_address_reach_the_record(db: Session, world: Hl7World) -> None:
    p = person("黄小燕")
    p.address = "幸福村|3组^东&西~南\\北"
    patient = db.get(Patient, apply(db, world, m.adt_a04(p))["patients"][0])
    assert patient.address_line == "幸福村|3组^东&西~南\\北"


def test_hl7_timestamps_are_beijing_time_unless_an_offset_is_given() -> None:
    from healthrelay.hl7.mapping import parse_ts

    assert parse_ts("20260301083000", "X") == datetime(2026, 3, 1, 0, 30, tzinfo=UTC)
    assert parse_ts("202603010830+0000", "X") == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    assert parse_ts("20260301", "X") == datetime(2026, 2, 28, 16, 0, tzinfo=UTC)
    with pytest.raises(MessageRejected) as caught:
        parse_ts("2026-03-01", "OBR[1]-7")
    assert caught.value.location == "OBR[1]-7"


# ---------------------------------------------------------------------------------------------
# ORU^R01: lab and examination results.

def _registered(db: Session, world: Hl7World, name: str = "王秀英") -> tuple[m.Person, int]:
    p = person(name)
    return p, apply(db, world, m.adt_a04(p))["patients"][0]


def test_oru_lab_results_are_recorded(db: Session, world: Hl7World) -> None:
    from healthrelay.results.models import LabResult

    p, pid = _registered(db, world)
    collected = datetime(2026, 3, 2, 7, 40, tzinfo=BEIJING)
    reported = datetime(2026, 3, 2, 10, 5, tzinfo=BEIJING)
    order = m.LabOrder(tests=[m.Lab("GLU", "7.9", name="空腹血糖", unit="mmol/L", range="3.9-6.1", flag="H"),
                              m.Lab("K", "4.1", name="钾", unit="mmol/L", range="3.5-5.3", flag="N")],
                       code="BIOCHEM", name="生化", placer="ORD-88", filler="LIS-2026-1", collected_at=collected,
                       reported_at=reported, specimen="血清")
    done = apply(db, world, m.oru_r01(p, [order], control_id="ORU-1"))

    assert len(done["lab_results"]) == 2
    rows = {r.test_code: r for r in db.scalars(select(LabResult).where(LabResult.id.in_(done["lab_results"])))}
    glu = rows["GLU"]
    assert (glu.patient_id, glu.organisation_id, glu.source) == (pid, world.town.id, "hl7")
    assert (glu.value_text, glu.value_numeric, glu.unit, glu.reference_range) == ("7.9", 7.9, "mmol/L", "3.9-6.1")
    assert glu.abnormal_flag == "H" and glu.test_name == "空腹血糖" and glu.specimen == "血清"
    assert (glu.order_number, glu.filler_number, glu.status) == ("ORD-88", "LIS-2026-1", "final")
    assert glu.collected_at == collected and glu.reported_at == reported
    assert rows["K"].value_numeric == 4.1


def test_oru_exam_report_with_line_breaks_is_recorded(db: Session, world: Hl7World) -> None:
    from healthrelay.results.models import ExamResult

    p, pid = _registered(db, world)
    performed = datetime.now(UTC) - timedelta(days=5)
    report = m.ExamReport("CT_HEAD", name="头颅CT平扫", findings="脑实质密度均匀。\n脑室系统未见扩大|中线居中。",
                          impression="头颅CT平扫未见明显异常", performed_at=performed,
                          reported_at=performed + timedelta(hours=2), filler="PACS-9")
    done = apply(db, world, m.oru_r01(p, [report]))

    exam = db.get(ExamResult, done["exam_results"][0])
    assert (exam.patient_id, exam.exam_code, exam.source) == (pid, "CT_HEAD", "hl7")
    assert exam.findings == "脑实质密度均匀。\n脑室系统未见扩大|中线居中。"
    assert exam.impression == "头颅CT平扫未见明显异常"
    assert exam.performed_at == performed.replace(microsecond=0)


def test_oru_for_an_unknown_patient_is_kept_for_replay(db: Session, world: Hl7World) -> None:
    exc = rejected(db, world, _lab_message(person("不存在")))
    assert (exc.code, exc.ack, exc.location) == ("unknown_patient", "AE", "PID[1]-3")


def test_oru_unknown_test_code_names_the_obx_and_writes_nothing(db: Session, world: Hl7World) -> None:
    p, _ = _registered(db, world)
    order = m.LabOrder(tests=[m.Lab("GLU", "5.1"), m.Lab("NOT-A-TEST", "1")], filler="F-2")
    exc = rejected(db, world, m.oru_r01(p, [order]))
    assert (exc.code, exc.ack, exc.location) == ("unknown_code", "AE", "OBX[2]-3")
    assert "NOT-A-TEST" in exc.reason


def test_oru_obx_without_test_code_is_refused(db: Session, world: Hl7World) -> None:
    p, _ = _registered(db, world)
    exc = rejected(db, world, m.set_field(_lab_message(p), "OBX", 3, ""))
    assert (exc.code, exc.location) == ("missing_field", "OBX[1]-3")


def test_oru_results_service_refusal_names_the_field(db: Session, world: Hl7World) -> None:
    p, _ = _registered(db, world)
    future = datetime.now(UTC) + timedelta(days=3)
    order = m.LabOrder(tests=[m.Lab("GLU", "5.1")], filler="F-3", reported_at=future)
    exc = rejected(db, world, m.oru_r01(p, [order]))
    assert (exc.ack, exc.location) == ("AE", "OBR[1]-22")


def test_oru_unknown_exam_code_with_report_text_names_obr_4(db: Session, world: Hl7World) -> None:
    p, _ = _registered(db, world)
    report = m.ExamReport("NO_SUCH_EXAM", findings="所见", impression="结论", performed_at=datetime.now(UTC))
    exc = rejected(db, world, m.oru_r01(p, [report]))
    assert (exc.code, exc.location) == ("unknown_code", "OBR[1]-4")


def test_oru_replayed_after_the_adt_arrives(db: Session, world: Hl7World) -> None:
    p = person("孙立群")
    text = _lab_message(p)
    assert rejected(db, world, text).code == "unknown_patient"
    apply(db, world, m.adt_a04(p))
    assert len(apply(db, world, text)["lab_results"]) == 1


# ---------------------------------------------------------------------------------------------
# ORM^O01 / OML^O21: orders from a member's HIS.

@pytest.mark.parametrize("build", [m.orm_o01, m.oml_o21])
def test_new_and_cancelled_orders(db: Session, world: Hl7World, build) -> None:  # noqa: ANN001
    from healthrelay.recognition.models import ClinicalOrder

    p, pid = _registered(db, world)
    ordered = datetime.now(UTC) - timedelta(hours=1)
    done = apply(db, world, build(p, [m.OrderLine("CT_CHEST", placer="HIS-1", name="胸部CT", ordered_at=ordered,
                                                  reason="咳嗽两周", provider="P1^张^医生")]))
    order = db.get(ClinicalOrder, done["orders"][0])
    assert order.patient_id == pid
    again = apply(db, world, build(p, [m.OrderLine("CT_CHEST", placer="HIS-1", ordered_at=ordered)]))
    assert again["orders"] == done["orders"], "orders are idempotent on the placer number"
    cancelled = apply(db, world, build(p, [m.OrderLine("CT_CHEST", placer="HIS-1", action="CA")]))
    assert cancelled["orders"] == done["orders"]


def test_order_with_unknown_code_names_obr_4(db: Session, world: Hl7World) -> None:
    p, _ = _registered(db, world)
    exc = rejected(db, world, m.orm_o01(p, [m.OrderLine("NO_SUCH", placer="HIS-2")]))
    assert (exc.code, exc.ack, exc.location) == ("unknown_code", "AE", "OBR[1]-4")


def test_order_control_other_than_nw_or_ca_is_refused(db: Session, world: Hl7World) -> None:
    p, _ = _registered(db, world)
    exc = rejected(db, world, m.oml_o21(p, [m.OrderLine("GLU", placer="HIS-3", action="XO")]))
    assert (exc.code, exc.location) == ("unsupported_order_control", "ORC[1]-1")


def test_order_without_placer_number_is_refused(db: Session, world: Hl7World) -> None:
    p, _ = _registered(db, world)
    exc = rejected(db, world, m.orm_o01(p, [m.OrderLine("GLU")]))
    assert (exc.code, exc.location) == ("missing_field", "ORC[1]-2")


def test_order_for_an_unknown_patient_is_refused(db: Session, world: Hl7World) -> None:
    exc = rejected(db, world, m.orm_o01(person("查无此人"), [m.OrderLine("GLU", placer="HIS-4")]))
    assert (exc.code, exc.location) == ("unknown_patient", "PID[1]-3")


# ---------------------------------------------------------------------------------------------
# More of what a clinician sees from HL7 results and orders.

def test_a_critical_glucose_over_hl7_opens_the_critical_result_loop(db: Session, world: Hl7World) -> None:
    from healthrelay.results.models import LabResult
    from healthrelay.teleconsult.models import CriticalResult

    p, pid = _registered(db, world, "周志强")
    order = m.LabOrder(tests=[m.Lab("GLU", "28.4", name="血糖", unit="mmol/L", flag="HH")], filler="F-CRIT")
    lab = db.get(LabResult, apply(db, world, m.oru_r01(p, [order]))["lab_results"][0])
    assert lab.critical
    critical = db.scalar(select(CriticalResult).where(CriticalResult.lab_result_id == lab.id))
    assert critical is not None and critical.patient_id == pid


def test_a_corrected_result_updates_the_one_row(db: Session, world: Hl7World) -> None:
    from healthrelay.results.models import LabResult

    p, _ = _registered(db, world)
    first = apply(db, world, m.oru_r01(p, [m.LabOrder(tests=[m.Lab("K", "6.9", flag="H")], filler="F-C")]))
    corrected = apply(db, world, m.oru_r01(p, [m.LabOrder(tests=[m.Lab("K", "4.2", status="C")], filler="F-C")]))
    assert corrected["lab_results"] == first["lab_results"]
    row = db.get(LabResult, first["lab_results"][0])
    db.refresh(row)
    assert (row.value_text, row.status) == ("4.2", "corrected")
    assert db.scalar(select(func.count()).select_from(LabResult)) == 1


def test_structured_numeric_specimen_from_spm_and_the_ordering_doctor(db: Session, world: Hl7World) -> None:
    from healthrelay.directory.models import Practitioner
    from healthrelay.results.models import LabResult

    doctor = f.user(db, organisation=world.town, username="shimen_doctor")
    practitioner_code = db.get(Practitioner, doctor.practitioner_id).code
    db.commit()
    p, _ = _registered(db, world)
    order = m.LabOrder(tests=[m.Lab("CTNI", "^0.02", value_type="SN", unit="ng/mL")], filler="F-SN",
                       spm_specimen="^静脉血", provider=f"{practitioner_code}^李^医生", with_orc=True,
                       placer="HIS-77")
    lab = db.get(LabResult, apply(db, world, m.oru_r01(p, [order]))["lab_results"][0])
    assert (lab.value_text, lab.value_numeric) == ("0.02", 0.02)
    assert lab.specimen == "静脉血"
    assert lab.ordered_by_user_id == doctor.id
    assert lab.order_number == "HIS-77"


def test_an_exam_flagged_aa_is_critical_and_ecg_measurements_reach_the_findings(db: Session,
                                                                                 world: Hl7World) -> None:
    from healthrelay.results.models import ExamResult

    p, _ = _registered(db, world)
    when = datetime.now(UTC) - timedelta(hours=3)
    text = m.oru_r01(p, [m.ExamReport("ECG_12", impression="急性下壁心肌梗死", flag="AA", performed_at=when)])
    segs = m.segments(text)
    at = next(i for i, s in enumerate(segs) if s.startswith("OBX|"))
    segs.insert(at, "OBX|1|NM|8867-4^心率||96|bpm|||||F")
    exam = db.get(ExamResult, apply(db, world, m.join(segs))["exam_results"][0])
    assert exam.critical
    assert exam.impression == "急性下壁心肌梗死"
    assert "心率: 96 bpm" in exam.findings


def test_a_gb18030_message_decoded_by_the_transport_maps_the_same(db: Session, world: Hl7World) -> None:
    p = person("諸葛亮")
    raw = m.encode(m.adt_a04(p, charset=m.GB18030), m.GB18030)
    text = raw.decode("gb18030")
    patient = db.get(Patient, apply(db, world, text)["patients"][0])
    assert patient.name == "諸葛亮"


def test_a08_records_a_death(db: Session, world: Hl7World) -> None:
    p, pid = _registered(db, world, "钱淑华")
    p.deceased_at = datetime(2026, 1, 3, 23, 30, tzinfo=BEIJING)
    apply(db, world, m.adt_a08(p))
    patient = db.get(Patient, pid)
    db.refresh(patient)
    assert patient.deceased_on == date(2026, 1, 3)


def test_an_hl7_order_keeps_its_details(db: Session, world: Hl7World) -> None:
    from healthrelay.recognition.models import ClinicalOrder

    p, pid = _registered(db, world)
    ordered = datetime(2026, 3, 1, 9, 0, tzinfo=BEIJING)
    done = apply(db, world, m.orm_o01(p, [m.OrderLine("CT_HEAD", placer="HIS-9", ordered_at=ordered,
                                                      reason="头晕三天", provider="D01^王^医生")]))
    order = db.get(ClinicalOrder, done["orders"][0])
    assert (order.code, order.placer_number, order.source, order.status) == ("CT_HEAD", "HIS-9", "hl7", "placed")
    assert (order.ordering_organisation_id, order.ordering_provider) == (world.town.id, "王医生")
    assert order.ordered_at == ordered and order.clinical_note == "头晕三天"
    apply(db, world, m.orm_o01(p, [m.OrderLine("CT_HEAD", placer="HIS-9", action="CA", reason="患者拒绝")]))
    db.refresh(order)
    assert (order.status, order.cancel_reason) == ("cancelled", "患者拒绝")


def test_cancelling_an_unknown_order_names_orc_2(db: Session, world: Hl7World) -> None:
    p, _ = _registered(db, world)
    exc = rejected(db, world, m.oml_o21(p, [m.OrderLine("GLU", placer="NEVER-SENT", action="CA")]))
    assert (exc.ack, exc.location) == ("AE", "ORC[1]-2")


def test_a_late_refusal_by_the_results_service_leaves_the_earlier_results_unwritten(db: Session,
                                                                                   world: Hl7World) -> None:
    p, _ = _registered(db, world)
    order = m.LabOrder(tests=[m.Lab("GLU", "5.1"), m.Lab("NA", "高", value_type="ST")], filler="F-LATE")
    exc = rejected(db, world, m.oru_r01(p, [order]))  # GLU passes every check; NA is refused when written
    assert (exc.ack, exc.location) == ("AE", "OBX[2]-5")


def test_two_adts_for_one_new_resident_at_once_make_one_record(db: Session, world: Hl7World) -> None:
    """Two connections register the same new resident at the same moment: one wins, the other is answered
    (AE concurrent_update, or it finds the winner) and never leaves a second record or an unhandled error."""
    import threading

    from healthrelay.accounts.models import User
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.hl7.models import Hl7Sender

    if db.get_bind().dialect.name != "postgresql":
        pytest.skip("two writers at once: SQLite serialises them before the mapping runs (the transport's lock)")
    text = m.adt_a04(person("吴明远", sex="M", birth=date(1980, 6, 6)))
    maker = get_sessionmaker()
    first, second = maker(), maker()
    outcome: dict[str, object] = {}

    def run_second() -> None:
        try:
            sender = second.get(Hl7Sender, world.sender.id)
            outcome["ids"] = apply_message(second, message=hl7.parse(text), sender=sender,
                                           by=second.get(User, world.interface_user.id), message_id=None)["patients"]
            second.commit()
        except MessageRejected as exc:
            outcome["rejected"] = exc.code
            second.rollback()

    try:
        won = apply_message(first, message=hl7.parse(text), sender=first.get(Hl7Sender, world.sender.id),
                            by=first.get(User, world.interface_user.id), message_id=None)["patients"]
        thread = threading.Thread(target=run_second)
        thread.start()
        thread.join(0.5)  # the second writer now waits on the first one's uncommitted rows
        first.commit()
        thread.join(30)
    finally:
        first.close()
        second.close()
    assert outcome.get("rejected") == "concurrent_update" or outcome.get("ids") == won
    assert db.scalar(select(func.count()).select_from(Patient)) == 1
