"""Builders of HL7 v2.5 test messages, made with hl7apy the way a member hospital's HIS or LIS would send them.

Every builder returns ER7 text with ``\\r`` between segments (no MLLP framing, not yet encoded: use `encode`
to get the bytes for the declared charset). Chinese names and values go in as they are; text is escaped the
HL7 way by `escape` (| ^ & ~ \\ and line breaks become \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and \\.br\\).

    from tests.hl7 import messages as m
    person = m.Person(name="王秀英", resident_id=rid, record_number="MZ0001")
    text = m.adt_a04(person, control_id="A04-1", facility="QX_SHIMEN_WSY")
    text = m.oru_r01(person, [m.LabOrder(tests=[m.Lab("GLU", "6.8", unit="mmol/L", flag="H")],
                                         filler="F-1")], control_id="ORU-1", facility="QX_SHIMEN_WSY")
    text = m.oru_r01(person, [m.ExamReport("CT_HEAD", findings="脑实质未见异常。", impression="头颅CT平扫未见异常")])
    text = m.orm_o01(person, [m.OrderLine("CT_CHEST", placer="ORD-1")])
    text = m.oml_o21(person, [m.OrderLine("GLU", placer="ORD-2")])
    raw = m.encode(text, m.GB18030)   # bytes in GB 18030, with MSH-18 built as charset=m.GB18030

Times: aware datetimes are written as Beijing local time without an offset (as most Chinese systems send);
naive ones are written as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from hl7apy.core import Field, Message, Segment

UTF8 = "UNICODE UTF-8"  # MSH-18 for UTF-8 (HL7 table 0211)
GB18030 = "GB 18030-2000"  # MSH-18 for GB 18030
DEFAULT_FACILITY = "QX_TEST_WSY"
BEIJING = ZoneInfo("Asia/Shanghai")
_NEWLINE = "\ue000"  # stands for a line break until the ER7 is written (hl7apy does not know \.br\)
_seq = itertools.count(1)


def escape(text: str) -> str:
    """Plain text → HL7 text: the delimiters and the escape character escaped, line breaks as \\.br\\."""
    out = (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
           .replace("~", "\\R\\"))
    return out.replace("\r\n", "\n").replace("\n", _NEWLINE)


def encode(text: str, charset: str = UTF8) -> bytes:
    """The bytes a sender puts on the wire for `text` in the MSH-18 character set."""
    return text.encode("gb18030" if "18030" in charset else "utf-8")


def ts(when: datetime | date | None) -> str:
    """An HL7 TS value (Beijing local time for aware datetimes)."""
    if when is None:
        return ""
    if isinstance(when, datetime):
        if when.tzinfo is not None:
            when = when.astimezone(BEIJING)
        return when.strftime("%Y%m%d%H%M%S")
    return when.strftime("%Y%m%d")


@dataclass
class Person:
    """A patient as PID describes them. `whole_name` puts the name in PID-5.1 alone (no family^given)."""

    name: str = "王秀英"
    resident_id: str = ""  # PID-3 repetition of type NNCHN
    record_number: str = ""  # PID-3 repetition of type MR (the sender's own 病案号)
    birth_date: date | None = date(1956, 3, 8)
    sex: str = "F"
    address: str = ""  # PID-11.1
    city: str = ""  # PID-11.3
    province: str = ""  # PID-11.4
    phone: str = ""  # PID-13.1
    whole_name: bool = False
    deceased_at: datetime | None = None  # PID-29
    resident_id_type: str = "NNCHN"
    authority: str = ""  # PID-3.4, defaults to the sending facility


@dataclass
class Lab:
    """One lab test result (an OBX)."""

    code: str
    value: str  # for value_type "SN" the components as ER7: "<^0.01", "^10^-^20"
    name: str = ""
    unit: str = ""
    range: str = ""
    flag: str = ""
    status: str = "F"
    value_type: str = "NM"
    observed_at: datetime | None = None  # OBX-14


@dataclass
class LabOrder:
    """One lab order with its results (OBR + OBX*), with optional NTE comments after the OBR."""

    tests: Sequence[Lab]
    code: str = ""  # OBR-4 (a panel code); defaults to the first test's code
    name: str = ""
    placer: str = ""  # OBR-2
    filler: str = ""  # OBR-3
    collected_at: datetime | None = None  # OBR-7
    reported_at: datetime | None = None  # OBR-22
    specimen: str = ""  # OBR-15
    provider: str = ""  # OBR-16 XCN, e.g. "P0001^李^医生"
    notes: Sequence[str] = ()
    with_orc: bool = False
    spm_specimen: str = ""  # an SPM segment with SPM-4 (CWE as ER7, "code^text") when set


@dataclass
class ExamReport:
    """One examination report: OBR-4 the examination code, text OBX for findings (GDT) and impression (IMP)."""

    code: str
    findings: str = ""
    impression: str = ""
    name: str = ""
    placer: str = ""
    filler: str = ""
    performed_at: datetime | None = None  # OBR-7
    reported_at: datetime | None = None  # OBR-22
    text_type: str = "TX"  # or FT
    flag: str = ""  # OBX-8 on the impression, e.g. "AA" for a critical finding
    findings_id: str = "GDT"
    impression_id: str = "IMP"


@dataclass
class OrderLine:
    """One order (ORC + OBR) from a member's HIS."""

    code: str
    placer: str = ""
    name: str = ""
    action: str = "NW"  # ORC-1: NW new, CA cancel
    ordered_at: datetime | None = None  # ORC-9
    provider: str = ""  # ORC-12 XCN
    reason: str = ""  # OBR-31 text
    reason_code: str = ""  # OBR-31 identifier (a code of the national exception list)


# ---------------------------------------------------------------------------------------------


def _msh(msg: Message, *, message_type: str, control_id: str | None, facility: str, application: str,
         charset: str, sent_at: datetime | None) -> None:
    msg.msh.msh_3 = application
    msg.msh.msh_4 = facility
    msg.msh.msh_5 = "HEALTHRELAY"
    msg.msh.msh_6 = "HR"
    msg.msh.msh_7 = ts(sent_at or datetime.now(BEIJING))
    msg.msh.msh_9 = message_type
    msg.msh.msh_10 = control_id or f"T{next(_seq):08d}"
    msg.msh.msh_11 = "P"
    msg.msh.msh_12 = "2.5"
    if charset:
        msg.msh.msh_18 = charset


def _pid(pid: Segment, person: Person, facility: str) -> None:
    pid.pid_1 = "1"
    authority = escape(person.authority or facility)
    ids = []
    if person.resident_id:
        ids.append(f"{escape(person.resident_id)}^^^{authority}^{person.resident_id_type}")
    if person.record_number:
        ids.append(f"{escape(person.record_number)}^^^{authority}^MR")
    for value in ids:
        f = Field("PID_3")
        f.value = value
        pid.add(f)
    if person.whole_name:
        pid.pid_5 = escape(person.name)
    else:
        pid.pid_5 = f"{escape(person.name[:1])}^{escape(person.name[1:])}"
    if person.birth_date:
        pid.pid_7 = ts(person.birth_date)
    pid.pid_8 = person.sex
    if person.address or person.city or person.province:
        pid.pid_11 = f"{escape(person.address)}^^{escape(person.city)}^{escape(person.province)}"
    if person.phone:
        pid.pid_13 = escape(person.phone)
    if person.deceased_at:
        pid.pid_29 = ts(person.deceased_at)
        pid.pid_30 = "Y"


def _er7(msg: Message) -> str:
    return msg.to_er7().replace(_NEWLINE, "\\.br\\")


def adt(event: str, person: Person, *, control_id: str | None = None, facility: str = DEFAULT_FACILITY,
        application: str = "HIS", charset: str = UTF8, sent_at: datetime | None = None) -> str:
    """ADT^<event> (A01 admission, A04 registration, A08 update): MSH, EVN, PID, PV1."""
    msg = Message("ADT_A01", version="2.5")
    _msh(msg, message_type=f"ADT^{event}^ADT_A01", control_id=control_id, facility=facility,
         application=application, charset=charset, sent_at=sent_at)
    msg.evn.evn_1 = event
    msg.evn.evn_2 = ts(sent_at or datetime.now(BEIJING))
    _pid(msg.pid, person, facility)
    msg.pv1.pv1_2 = "I" if event == "A01" else "O"
    return _er7(msg)


def adt_a01(person: Person, **msh: object) -> str:
    return adt("A01", person, **msh)  # type: ignore[arg-type]


def adt_a04(person: Person, **msh: object) -> str:
    return adt("A04", person, **msh)  # type: ignore[arg-type]


def adt_a08(person: Person, **msh: object) -> str:
    return adt("A08", person, **msh)  # type: ignore[arg-type]


def _obx(obx: Segment, n: int, *, value_type: str, ident: str, value: str, unit: str = "", range_: str = "",
         flag: str = "", status: str = "F", observed_at: datetime | None = None) -> None:
    obx.obx_1 = str(n)
    obx.obx_2 = value_type
    obx.obx_3 = ident
    obx.obx_5 = value
    if unit:
        obx.obx_6 = escape(unit)
    if range_:
        obx.obx_7 = escape(range_)
    if flag:
        obx.obx_8 = flag
    obx.obx_11 = status
    if observed_at:
        obx.obx_14 = ts(observed_at)


def oru_r01(person: Person, orders: Sequence[LabOrder | ExamReport], *, control_id: str | None = None,
            facility: str = DEFAULT_FACILITY, application: str = "LIS", charset: str = UTF8,
            sent_at: datetime | None = None) -> str:
    """ORU^R01: MSH, PID, PV1, then per order [ORC] OBR [NTE*] OBX* [SPM]."""
    msg = Message("ORU_R01", version="2.5")
    _msh(msg, message_type="ORU^R01^ORU_R01", control_id=control_id, facility=facility,
         application=application, charset=charset, sent_at=sent_at)
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    _pid(patient.pid, person, facility)
    patient.add_group("ORU_R01_VISIT").pv1.pv1_2 = "O"
    for k, order in enumerate(orders, start=1):
        group = result.add_group("ORU_R01_ORDER_OBSERVATION")
        if isinstance(order, LabOrder) and order.with_orc:
            group.orc.orc_1 = "RE"
            group.orc.orc_2 = escape(order.placer)
        obr = group.obr
        obr.obr_1 = str(k)
        if order.placer:
            obr.obr_2 = escape(order.placer)
        if order.filler:
            obr.obr_3 = escape(order.filler)
        obr.obr_25 = "F"
        if isinstance(order, LabOrder):
            first = order.tests[0] if order.tests else None
            code = order.code or (first.code if first else "")
            obr.obr_4 = f"{escape(code)}^{escape(order.name or (first.name if first else ''))}"
            if order.collected_at:
                obr.obr_7 = ts(order.collected_at)
            if order.specimen:
                obr.obr_15 = escape(order.specimen)
            if order.provider:
                obr.obr_16 = order.provider
            if order.reported_at:
                obr.obr_22 = ts(order.reported_at)
            for note in order.notes:
                group.add_segment("NTE").nte_3 = escape(note)
            for n, lab in enumerate(order.tests, start=1):
                obs = group.add_group("ORU_R01_OBSERVATION")
                _obx(obs.obx, n, value_type=lab.value_type, ident=f"{escape(lab.code)}^{escape(lab.name)}",
                     value=("^".join(escape(part) for part in lab.value.split("^")) if lab.value_type == "SN"
                            else escape(lab.value)), unit=lab.unit, range_=lab.range, flag=lab.flag, status=lab.status,
                     observed_at=lab.observed_at)
            if order.spm_specimen:
                spm = group.add_group("ORU_R01_SPECIMEN").spm
                spm.spm_1 = "1"
                spm.spm_4 = "^".join(escape(part) for part in order.spm_specimen.split("^"))
        else:
            obr.obr_4 = f"{escape(order.code)}^{escape(order.name)}"
            if order.performed_at:
                obr.obr_7 = ts(order.performed_at)
            if order.reported_at:
                obr.obr_22 = ts(order.reported_at)
            n = 0
            for ident, text, flag in ((order.findings_id, order.findings, ""),
                                      (order.impression_id, order.impression, order.flag)):
                if not text:
                    continue
                n += 1
                obs = group.add_group("ORU_R01_OBSERVATION")
                _obx(obs.obx, n, value_type=order.text_type, ident=escape(ident), value=escape(text), flag=flag)
    return _er7(msg)


def _orders(msg: Message, kind: str, lines: Sequence[OrderLine]) -> None:
    for k, line in enumerate(lines, start=1):
        group = msg.add_group(f"{kind}_ORDER")
        orc = group.orc
        orc.orc_1 = line.action
        if line.placer:
            orc.orc_2 = escape(line.placer)
        if line.ordered_at:
            orc.orc_9 = ts(line.ordered_at)
        if line.provider:
            orc.orc_12 = line.provider
        if kind == "ORM_O01":
            detail = group.add_group("ORM_O01_ORDER_DETAIL").add_group("ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP")
        else:
            detail = group.add_group("OML_O21_OBSERVATION_REQUEST")
        obr = detail.obr
        obr.obr_1 = str(k)
        if line.placer:
            obr.obr_2 = escape(line.placer)
        obr.obr_4 = f"{escape(line.code)}^{escape(line.name)}"
        if line.reason or line.reason_code:
            obr.obr_31 = f"{escape(line.reason_code)}^{escape(line.reason)}"


def _order_message(kind: str, person: Person, lines: Sequence[OrderLine], *, control_id: str | None,
                   facility: str, application: str, charset: str, sent_at: datetime | None) -> str:
    msg = Message(kind, version="2.5")
    event = kind.split("_")[1]
    _msh(msg, message_type=f"{kind.split('_')[0]}^{event}^{kind}", control_id=control_id, facility=facility,
         application=application, charset=charset, sent_at=sent_at)
    patient = msg.add_group(f"{kind}_PATIENT")
    _pid(patient.pid, person, facility)
    _orders(msg, kind, lines)
    return _er7(msg)


def orm_o01(person: Person, lines: Sequence[OrderLine], *, control_id: str | None = None,
            facility: str = DEFAULT_FACILITY, application: str = "HIS", charset: str = UTF8,
            sent_at: datetime | None = None) -> str:
    """ORM^O01: MSH, PID, then per order ORC + OBR."""
    return _order_message("ORM_O01", person, lines, control_id=control_id, facility=facility,
                          application=application, charset=charset, sent_at=sent_at)


def oml_o21(person: Person, lines: Sequence[OrderLine], *, control_id: str | None = None,
            facility: str = DEFAULT_FACILITY, application: str = "HIS", charset: str = UTF8,
            sent_at: datetime | None = None) -> str:
    """OML^O21: MSH, PID, then per order ORC + OBR."""
    return _order_message("OML_O21", person, lines, control_id=control_id, facility=facility,
                          application=application, charset=charset, sent_at=sent_at)


# ---------------------------------------------------------------------------------------------
# Editing built messages, to make broken ones.

def segments(text: str) -> list[str]:
    return [s for s in text.split("\r") if s]


def join(segs: Sequence[str]) -> str:
    return "\r".join(segs)


def move_segment(text: str, seg_id: str, *, before: str, occurrence: int = 1, before_occurrence: int = 1) -> str:
    """Move the `occurrence`-th `seg_id` segment to just before the `before_occurrence`-th `before` segment."""
    segs = segments(text)
    idx = [i for i, s in enumerate(segs) if s.startswith(seg_id + "|")][occurrence - 1]
    moved = segs.pop(idx)
    target = [i for i, s in enumerate(segs) if s.startswith(before + "|")][before_occurrence - 1]
    segs.insert(target, moved)
    return join(segs)


def drop_segments(text: str, seg_id: str) -> str:
    return join([s for s in segments(text) if not s.startswith(seg_id + "|")])


def set_field(text: str, seg_id: str, field_no: int, value: str, *, occurrence: int = 1) -> str:
    """Replace field `field_no` of the `occurrence`-th `seg_id` segment with raw ER7 `value`."""
    segs = segments(text)
    idx = [i for i, s in enumerate(segs) if s.startswith(seg_id + "|")][occurrence - 1]
    parts = segs[idx].split("|")
    position = field_no - 1 if seg_id == "MSH" else field_no  # MSH-1 is the separator itself
    while len(parts) <= position:
        parts.append("")
    parts[position] = value
    segs[idx] = "|".join(parts)
    return join(segs)


__all__ = [
    "DEFAULT_FACILITY", "GB18030", "UTF8", "ExamReport", "Lab", "LabOrder", "OrderLine", "Person", "adt",
    "adt_a01", "adt_a04", "adt_a08", "drop_segments", "encode", "escape", "join", "move_segment", "oml_o21",
    "orm_o01", "oru_r01", "segments", "set_field", "ts",
]
