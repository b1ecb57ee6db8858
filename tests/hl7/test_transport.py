"""The inbound HL7 path (hl7/service.py): one payload in, one ACK out, everything stored exactly once.

Messages are built with hl7apy (tests/hl7/messages.py) and handed to `handle_bytes` as the listener would;
the MLLP socket side is in tests/interop/test_hl7_mllp.py."""

from __future__ import annotations

from datetime import date

import hl7
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from healthrelay.core.db import get_sessionmaker
from healthrelay.core.errors import Conflict, InvalidInput, NotFound
from healthrelay.hl7 import service
from healthrelay.hl7.models import Hl7DeadLetter, Hl7Message
from healthrelay.patients.models import Patient
from healthrelay.results.models import LabResult
from tests.hl7 import messages as m
from tests.hl7.world import FACILITY, OTHER_FACILITY, Hl7World, build_world, count, person

PEER = "10.8.0.21:50412"


@pytest.fixture
def world(db: Session) -> Hl7World:
    return build_world(db)


@pytest.fixture
def factory(database_url: str) -> sessionmaker[Session]:
    return get_sessionmaker()


def send(factory: sessionmaker[Session], text: str, charset: str = m.UTF8) -> hl7.Message:
    """Hand the bytes to the inbound path; the ACK parsed (in the charset the message declared)."""
    ack = service.handle_bytes(factory, m.encode(text, charset), peer=PEER)
    return hl7.parse(ack.decode("gb18030" if "18030" in charset else "utf-8"))


def msa(ack: hl7.Message) -> tuple[str, str, str]:
    seg = ack.segment("MSA")
    return str(seg(1)), str(seg(2)), str(seg(3)) if len(seg) > 3 else ""


def glucose(p: m.Person, control_id: str, *, filler: str = "F-1", charset: str = m.UTF8) -> str:
    return m.oru_r01(p, [m.LabOrder(tests=[m.Lab("GLU", "6.8", name="葡萄糖", unit="mmol/L", flag="H",
                                                 range="3.9-6.1")], filler=filler, specimen="血清")],
                     control_id=control_id, charset=charset)


# --- character sets --------------------------------------------------------------------------------

def test_utf8_registration_is_stored_with_its_chinese_name(world: Hl7World, factory, db: Session) -> None:
    p = person("欧阳秀英")
    ack = send(factory, m.adt_a04(p, control_id="A04-UTF8"))
    assert msa(ack)[:2] == ("AA", "A04-UTF8")
    row = db.scalar(select(Hl7Message).where(Hl7Message.control_id == "A04-UTF8"))
    assert row is not None and row.charset == "UTF-8" and row.ack_code == "AA" and row.peer == PEER
    assert row.sender_id == world.sender.id
    assert row.detail["patients"], "the registration names the patient it created"
    assert db.get(Patient, row.detail["patients"][0]).name == "欧阳秀英"


def test_gb18030_message_is_decoded_and_answered_in_gb18030(world: Hl7World, factory, db: Session) -> None:
    p = person("聂晓燕")
    raw = m.encode(m.adt_a04(p, control_id="A04-GB", charset=m.GB18030), m.GB18030)
    assert "聂".encode() not in raw  # really GB 18030 bytes on the wire
    ack_bytes = service.handle_bytes(factory, raw, peer=PEER)
    ack = hl7.parse(ack_bytes.decode("gb18030"))
    assert msa(ack)[:2] == ("AA", "A04-GB")
    assert str(ack.segment("MSH")(18)) == m.GB18030  # the ACK declares the charset it is written in
    row = db.scalar(select(Hl7Message).where(Hl7Message.control_id == "A04-GB"))
    assert row is not None and row.charset == "GB18030"
    assert db.get(Patient, row.detail["patients"][0]).name == "聂晓燕"


@pytest.mark.parametrize("declared", ["GB2312", "GBK", "CHINESE"])
def test_older_gb_labels_decode_as_gb18030(world: Hl7World, factory, db: Session, declared: str) -> None:
    p = person("严冬梅")
    text = m.adt_a04(p, control_id=f"A04-{declared}", charset=declared)
    ack = hl7.parse(service.handle_bytes(factory, text.encode("gb18030"), peer=PEER).decode("gb18030"))
    assert msa(ack)[0] == "AA"
    row = db.scalar(select(Hl7Message).where(Hl7Message.control_id == f"A04-{declared}"))
    assert db.get(Patient, row.detail["patients"][0]).name == "严冬梅"


def test_bytes_not_in_the_declared_charset_are_refused_and_kept(world: Hl7World, factory, db: Session) -> None:
    p = person("聂晓燕")
    patients_before = count(db, Patient)
    raw = m.adt_a04(p, control_id="A04-BADBYTES", charset=m.UTF8).encode("gb18030")  # GB bytes, says UTF-8
    ack = hl7.parse(service.handle_bytes(factory, raw, peer=PEER).decode("utf-8"))
    code, control_id, text = msa(ack)
    assert (code, control_id) == ("AR", "A04-BADBYTES")
    assert "UTF-8" in text
    dead = db.scalar(select(Hl7DeadLetter).where(Hl7DeadLetter.control_id == "A04-BADBYTES"))
    assert dead is not None and dead.reason_code == "bad_charset" and dead.raw == raw and dead.state == "open"
    assert dead.sender_facility == FACILITY
    assert count(db, Hl7Message) == 0 and count(db, Patient) == patients_before


def test_unknown_charset_is_refused(world: Hl7World, factory, db: Session) -> None:
    text = m.adt_a04(person(), control_id="A04-EBCDIC", charset="EBCDIC")
    ack = hl7.parse(service.handle_bytes(factory, text.encode(), peer=PEER).decode())
    assert msa(ack)[0] == "AR"
    assert db.scalar(select(Hl7DeadLetter.reason_code).where(Hl7DeadLetter.control_id == "A04-EBCDIC")) == \
        "bad_charset"


# --- senders -----------------------------------------------------------------------------------------

def test_unknown_sender_is_refused_and_audited(world: Hl7World, factory, db: Session) -> None:
    from healthrelay.audit.models import AuditEvent

    ack = send(factory, m.adt_a04(person(), control_id="A04-STRANGER", facility="NOT_A_MEMBER"))
    code, control_id, text = msa(ack)
    assert (code, control_id) == ("AR", "A04-STRANGER") and "NOT_A_MEMBER" in text
    dead = db.scalar(select(Hl7DeadLetter).where(Hl7DeadLetter.control_id == "A04-STRANGER"))
    assert dead.reason_code == "unknown_sender" and dead.peer == PEER
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "hl7.receive", AuditEvent.outcome == "refused"))
    assert event is not None and event.detail["facility"] == "NOT_A_MEMBER" and event.client_address == "10.8.0.21"


def test_disabled_sender_and_wrong_application_are_refused(world: Hl7World, factory, db: Session) -> None:
    service.set_sender_active(db, sender_id=world.sender.id, active=False, by=world.town_admin)
    db.commit()
    assert msa(send(factory, m.adt_a04(person(), control_id="A04-OFF")))[0] == "AR"
    # The second member registered only its LIS: its HIS may not send.
    ack = send(factory, m.adt_a04(person(), control_id="A04-HIS", facility=OTHER_FACILITY, application="HIS"))
    assert msa(ack)[0] == "AR"
    assert count(db, Hl7Message) == 0 and count(db, Hl7DeadLetter, reason_code="unknown_sender") == 2


# --- idempotency ------------------------------------------------------------------------------------------

def test_repeated_control_id_is_answered_again_and_not_stored_twice(world: Hl7World, factory, db: Session) -> None:
    p = person("柏雪")
    text = m.adt_a04(p, control_id="A04-TWICE")
    first = service.handle_bytes(factory, m.encode(text), peer=PEER)
    patients = count(db, Patient)
    second = service.handle_bytes(factory, m.encode(text), peer=PEER)
    assert second == first  # the stored ACK, word for word
    assert msa(hl7.parse(second.decode()))[:2] == ("AA", "A04-TWICE")
    assert count(db, Hl7Message, control_id="A04-TWICE") == 1
    assert count(db, Patient) == patients
    # The control ID is per sender: the other member may use the same one.
    other = m.adt_a04(person("郝建国", sex="M", birth=date(1971, 5, 2)), control_id="A04-TWICE",
                      facility=OTHER_FACILITY, application="LIS")
    assert msa(send(factory, other))[0] == "AA"
    assert count(db, Hl7Message, control_id="A04-TWICE") == 2


def test_the_same_refused_bytes_make_one_dead_letter(world: Hl7World, factory, db: Session) -> None:
    raw = b"this is not HL7 at all"
    for _ in range(3):
        ack = hl7.parse(service.handle_bytes(factory, raw, peer=PEER).decode())
        assert msa(ack)[0] == "AR"
    assert count(db, Hl7DeadLetter, reason_code="malformed") == 1


# --- malformed ------------------------------------------------------------------------------------------

def test_message_without_control_id_is_refused_naming_msh10(world: Hl7World, factory, db: Session) -> None:
    text = m.set_field(m.adt_a04(person(), control_id="X"), "MSH", 10, "")
    ack = send(factory, text)
    assert msa(ack)[0] == "AR"
    assert str(ack.segment("ERR")(2)) == "MSH^1^10"
    assert count(db, Hl7DeadLetter, reason_code="missing_field") == 1 and count(db, Hl7Message) == 0


# --- application errors (the mapping's MessageRejected) --------------------------------------------------

def test_result_for_unknown_patient_gets_ae_and_a_dead_letter_not_a_message(world: Hl7World, factory,
                                                                             db: Session) -> None:
    ack = send(factory, glucose(person("从未登记"), "ORU-NOBODY"))
    code, control_id, text = msa(ack)
    assert (code, control_id) == ("AE", "ORU-NOBODY")
    assert text, "the reason travels in MSA-3"
    err = ack.segment("ERR")
    assert str(err(3)(1)(1)) == "204" and str(err(4)) == "E" and str(err(5)) == "unknown_patient"
    dead = db.scalar(select(Hl7DeadLetter).where(Hl7DeadLetter.control_id == "ORU-NOBODY"))
    assert dead.reason_code == "unknown_patient" and dead.ack_code == "AE" and dead.message_type == "ORU^R01"
    assert count(db, Hl7Message) == 0 and count(db, LabResult) == 0


def test_replay_takes_the_result_once_the_patient_is_registered(world: Hl7World, factory, db: Session) -> None:
    p = person("李桂兰")
    assert msa(send(factory, glucose(p, "ORU-EARLY")))[0] == "AE"
    dead = db.scalar(select(Hl7DeadLetter).where(Hl7DeadLetter.control_id == "ORU-EARLY"))
    with pytest.raises(InvalidInput) as still:  # the patient is still unknown: refused again, left open
        service.replay(db, dead_letter_id=dead.id, by=world.town_admin)
    assert still.value.code == "unknown_patient"
    db.rollback()
    assert msa(send(factory, m.adt_a04(p, control_id="A04-LATE")))[0] == "AA"
    message = service.replay(db, dead_letter_id=dead.id, by=world.town_admin)
    db.commit()
    db.expire_all()
    assert message.control_id == "ORU-EARLY" and message.ack_code == "AA"
    assert db.get(Hl7DeadLetter, dead.id).state == "replayed"
    assert db.get(Hl7DeadLetter, dead.id).replay_message_id == message.id
    labs = db.scalars(select(LabResult).where(LabResult.hl7_message_id == message.id)).all()
    assert [(lab.test_code, lab.value_text) for lab in labs] == [("GLU", "6.8")]
    with pytest.raises(Conflict):
        service.replay(db, dead_letter_id=dead.id, by=world.town_admin)
    db.rollback()
    # The sender resending the same message now is answered from the stored row.
    assert msa(send(factory, glucose(p, "ORU-EARLY")))[0] == "AA"
    assert count(db, LabResult) == 1 and count(db, Hl7Message, control_id="ORU-EARLY") == 1


def test_dead_letters_are_scoped_to_the_admins_organisation(world: Hl7World, factory, db: Session) -> None:
    send(factory, glucose(person(), "ORU-SCOPE"))
    dead = db.scalar(select(Hl7DeadLetter).where(Hl7DeadLetter.control_id == "ORU-SCOPE"))
    assert [d.id for d in service.list_dead_letters(db, admin=world.town_admin)] == [dead.id]
    assert service.list_dead_letters(db, admin=world.other_admin) == []
    assert [d.id for d in service.list_dead_letters(db, admin=world.alliance_admin)] == [dead.id]
    with pytest.raises(NotFound):
        service.discard(db, dead_letter_id=dead.id, by=world.other_admin, note="不是我们的")
    with pytest.raises(InvalidInput):
        service.discard(db, dead_letter_id=dead.id, by=world.town_admin, note=" ")
    service.discard(db, dead_letter_id=dead.id, by=world.town_admin, note="测试消息 / a test message")
    db.commit()
    assert db.get(Hl7DeadLetter, dead.id).state == "discarded"
    assert service.list_dead_letters(db, admin=world.town_admin) == []


# --- the ACK itself ----------------------------------------------------------------------------------------

def test_ack_swaps_sender_and_receiver_and_names_the_original(world: Hl7World, factory) -> None:
    text = m.adt_a08(person(), control_id="A08-ACK", application="HIS")
    ack = send(factory, text)
    original = hl7.parse(text)
    msh = ack.segment("MSH")
    assert str(msh(3)) == str(original.segment("MSH")(5)) == "HEALTHRELAY"
    assert str(msh(4)) == str(original.segment("MSH")(6))
    assert (str(msh(5)), str(msh(6))) == ("HIS", FACILITY)
    assert str(msh(9)) == "ACK^A08^ACK"
    assert str(msh(10)) and str(msh(10)) != "A08-ACK"
    assert str(msh(12)) == "2.5" and str(msh(18)) == m.UTF8
    assert msa(ack)[:2] == ("AA", "A08-ACK")
    with pytest.raises(KeyError):
        ack.segment("ERR")  # no error segment on success


def test_reason_with_delimiters_is_escaped_in_the_ack() -> None:
    header = service.read_header(m.encode(m.adt_a04(person(), control_id="ESC-1")))
    ack = hl7.parse(service.build_ack(header, code="AE", text="血糖|GLU^6.8 & 7~8 \\ ok", reason_code="x").decode())
    seg = ack.segment("MSA")
    assert len(seg) == 4  # no delimiter leaked into new fields
    assert ack.unescape(str(seg(3))) == "血糖|GLU^6.8 & 7~8 \\ ok"
