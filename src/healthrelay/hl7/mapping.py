"""From a parsed HL7 v2 message to the platform's records: the master patient index (ADT), the results
repository (ORU^R01) and external orders (ORM^O01 / OML^O21).

The transport (`hl7.service`) has already decoded the bytes in the MSH-18 character set, parsed them with
python-hl7 and found the sender by MSH-4; it runs `apply_message` inside its transaction and a savepoint.
Here the message is read in three steps so that a bad message is refused before anything is written:
1. structure: segment order per message type, the groups (ORC/OBR/OBX) and required fields;
2. look-ups: the patient (resident ID first, else the sender's record number), the test and exam codes;
3. writes, through the owning services (patients, results, recognition), which audit what they do.
Anything the sender can fix and resend is refused with `MessageRejected(..., ack="AE")` naming the place in the
message (ERR-2 style `OBX[2]-3`); a malformed or unsupported message with ack "AR".

Choices made here (documented for interface partners):
- ADT^A08 for a patient we do not know registers them, like A04 (a member's HIS often sends A08 for
  patients registered before the interface existed); it needs a name and a birth date (or a resident ID).
- A new patient who looks like an existing resident (fuzzy match on name, birth date, sex, phone) is not
  registered: AE `possible_duplicate`, the message waits as a dead letter until an admin has linked the
  record number to the right record (or confirmed a new person) and replays it.
- A resident ID and a record number in one PID that point at two different residents: AE
  `identifier_conflict`; a known resident whose record holds another resident ID: AE `resident_id_mismatch`.
- A PID-3 repetition without an identifier type counts as a resident ID when it has the 18-character shape,
  otherwise as the sender's record number.
- Timestamps without an offset are Beijing time (what Chinese hospital systems send).
- One patient per message: an ORU^R01 with a second PID (several PATIENT_RESULT groups) is refused AR
  `segment_order` at that PID; the sender splits it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import hl7
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from healthrelay.access.service import actor_of, resolve_patient
from healthrelay.accounts.models import User
from healthrelay.audit import service as audit
from healthrelay.core.db import utcnow
from healthrelay.core.errors import DomainError
from healthrelay.directory.models import Practitioner
from healthrelay.hl7.models import Hl7Sender
from healthrelay.patients import matching
from healthrelay.patients.identity import parse_resident_id
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier, PatientRegistration, Sex

if TYPE_CHECKING:
    from healthrelay.results.models import ResultCode

SUPPORTED_TYPES = {"ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01", "ORM^O01", "OML^O21"}
BEIJING = ZoneInfo("Asia/Shanghai")

# Escapes beyond the delimiters: highlighting is dropped, formatted-text line breaks become "\n".
APP_MAP = {"H": "", "N": "", ".br": "\n", ".sp": "\n", ".ce": "\n", ".fi": "", ".nf": ""}
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_RESIDENT_ID_SHAPE = re.compile(r"^\d{17}[\dXx]$")
RESIDENT_ID_TYPES = {"NNCHN", "ID"}
RECORD_NUMBER_TYPES = {"MR", "PI", "PN", "PT"}
LAB_VALUE_TYPES = {"NM", "SN", "ST", "CE", "CWE", "TX", "FT"}
TEXT_VALUE_TYPES = {"TX", "FT"}
FINDINGS_IDS = {"GDT", "FINDINGS", "FINDING", "59776-5", "18782-3", "所见", "检查所见", "影像所见"}
IMPRESSION_IDS = {"IMP", "IMPRESSION", "CONCLUSION", "19005-8", "诊断", "结论", "印象", "检查结论", "诊断意见"}
STUDY_UID_IDS = {"SUID", "STUDYINSTANCEUID", "113014"}
CRITICAL_FLAGS = {"AA", "HH", "LL"}
OBX_STATUS = {"F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary", "S": "preliminary",
              "A": "corrected", "": "final"}
OBX_SKIPPED_STATUS = {"X", "D", "I", "W"}  # cannot be obtained, deleted, pending, wrong (withdrawn)
ORDER_ACTIONS = {"NW": "new", "CA": "cancel", "OC": "cancel", "DC": "cancel"}


class MessageRejected(Exception):
    """The message cannot be taken: the transport answers with `ack` (AE: fix and resend; AR: malformed or
    unsupported) and keeps the message as a dead letter with `code` and `reason`."""

    def __init__(self, code: str, reason: str, *, ack: str = "AE", location: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.ack = ack
        self.location = location

    def __repr__(self) -> str:
        return f"MessageRejected({self.code!r}, {self.reason!r}, ack={self.ack!r}, location={self.location!r})"


# ---------------------------------------------------------------------------------------------
# Reading fields.

@dataclass
class Seg:
    """One segment with its place in the message: `OBX[2]` is the second OBX."""

    id: str
    n: int
    seg: hl7.Segment

    def loc(self, field_no: int | None = None) -> str:
        return f"{self.id}[{self.n}]" + (f"-{field_no}" if field_no else "")


class Reader:
    """Field access by HL7 position with unescaping (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\.br\\ as a line break)."""

    def __init__(self, message: hl7.Message) -> None:
        self.message = message

    def unescape(self, raw: str) -> str:
        return self.message.unescape(raw, app_map=APP_MAP) if raw else ""

    @staticmethod
    def raw(s: Seg, f: int, r: int = 1, c: int = 1, sub: int = 1) -> str:
        seg = s.seg
        if f >= len(seg):
            return ""
        fld = seg(f)
        if isinstance(fld, str):
            return fld if r == 1 and c == 1 and sub == 1 else ""
        if r > len(fld):
            return ""
        rep = fld(r)
        if isinstance(rep, str):
            return rep if c == 1 and sub == 1 else ""
        if c > len(rep):
            return ""
        comp = rep(c)
        if isinstance(comp, str):
            return comp if sub == 1 else ""
        if sub > len(comp):
            return ""
        return str(comp(sub))

    def text(self, s: Seg, f: int, r: int = 1, c: int = 1, sub: int = 1) -> str:
        return self.unescape(self.raw(s, f, r, c, sub)).strip()

    @staticmethod
    def repetitions(s: Seg, f: int) -> int:
        if f >= len(s.seg):
            return 0
        fld = s.seg(f)
        if isinstance(fld, str):
            return 1 if fld else 0
        return len(fld)

    def whole(self, s: Seg, f: int, r: int = 1) -> str:
        """A whole repetition as text, components kept (for TX/FT values sent without escaping ^)."""
        if f >= len(s.seg):
            return ""
        fld = s.seg(f)
        if isinstance(fld, str):
            return self.unescape(fld) if r == 1 else ""
        if r > len(fld):
            return ""
        return self.unescape(str(fld(r)))

    def lines(self, s: Seg, f: int) -> str:
        """Every repetition of a text field, one line each."""
        return "\n".join(self.whole(s, f, r) for r in range(1, self.repetitions(s, f) + 1)).strip()

    def coded(self, s: Seg, f: int) -> tuple[str, str]:
        """(identifier, text) of a CE/CWE field."""
        return self.text(s, f, 1, 1), self.text(s, f, 1, 2)


def parse_ts(value: str, location: str) -> datetime | None:
    """An HL7 TS/DTM value as an aware UTC datetime; no offset means Beijing time."""
    value = (value or "").strip()
    if not value:
        return None
    m = _TS.match(value)
    if not m:
        raise MessageRejected("invalid_field", f"{location} 时间格式不对：{value} / {location}: not an HL7 timestamp "
                              f"{value!r}", location=location)
    year, month, day, hour, minute, second, frac, offset = m.groups()
    try:
        local = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                         int(second or 0), int((frac or "0").ljust(6, "0")[:6]))
    except ValueError:
        raise MessageRejected("invalid_field", f"{location} 日期不存在：{value} / {location}: no such date "
                              f"{value!r}", location=location) from None
    if offset:
        sign = 1 if offset[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        return local.replace(tzinfo=tz).astimezone(UTC)
    return local.replace(tzinfo=BEIJING).astimezone(UTC)


def parse_date(value: str, location: str) -> date | None:
    value = (value or "").strip()
    if not value:
        return None
    m = _TS.match(value)
    if not m or not m.group(3):
        raise MessageRejected("invalid_field", f"{location} 日期格式不对：{value} / {location}: not a date "
                              f"(YYYYMMDD) {value!r}", location=location)
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        raise MessageRejected("invalid_field", f"{location} 日期不存在：{value} / {location}: no such date "
                              f"{value!r}", location=location) from None


def _missing(location: str, what_zh: str, what_en: str) -> MessageRejected:
    return MessageRejected("missing_field", f"缺少{what_zh}（{location}）/ {what_en} is missing ({location})",
                           location=location)


# ---------------------------------------------------------------------------------------------
# Structure: segment order per message type, as transition tables (state -> segment -> next state).

_ADT_BODY = {"PD1", "ROL", "NK1", "PV1", "PV2", "DB1", "OBX", "AL1", "DG1", "DRG", "PR1", "GT1", "IN1", "IN2",
             "IN3", "ACC", "UB1", "UB2", "PDA", "NTE", "ARV", "MRG"}
_ORDER_PATIENT = {"PD1", "NTE", "NK1", "PV1", "PV2", "IN1", "IN2", "IN3", "GT1", "AL1", "ARV"}
_ORDER_DETAIL = {"NTE", "CTD", "DG1", "OBX", "TQ1", "TQ2", "TCD", "SPM", "SAC", "FT1", "CTI", "BLG", "RQD",
                 "RQ1", "ODS", "ODT"}

GRAMMAR: dict[str, dict[str, dict[str, str]]] = {
    "ADT": {
        "msh": {"SFT": "msh", "EVN": "evn", "PID": "pid"},
        "evn": {"PID": "pid"},
        "pid": dict.fromkeys(_ADT_BODY, "pid"),
    },
    "ORU": {
        "msh": {"SFT": "msh", "PID": "pid"},
        "pid": {"PD1": "pid", "NTE": "pid", "NK1": "pid", "PV1": "pv1", "ORC": "orc", "OBR": "obr"},
        "pv1": {"PV2": "pv1", "ORC": "orc", "OBR": "obr"},
        "orc": {"OBR": "obr"},
        "obr": {"NTE": "obr", "TQ1": "obr", "TQ2": "obr", "CTD": "obr", "OBX": "obx", "FT1": "tail",
                "CTI": "tail", "SPM": "spm", "ORC": "orc", "OBR": "obr", "DSC": "end"},
        "obx": {"NTE": "obx", "OBX": "obx", "FT1": "tail", "CTI": "tail", "SPM": "spm", "ORC": "orc",
                "OBR": "obr", "DSC": "end"},
        "tail": {"FT1": "tail", "CTI": "tail", "SPM": "spm", "ORC": "orc", "OBR": "obr", "DSC": "end"},
        "spm": {"OBX": "spm", "SPM": "spm", "ORC": "orc", "OBR": "obr", "DSC": "end"},
        "end": {},
    },
    "ORDER": {
        "msh": {"SFT": "msh", "NTE": "msh", "PID": "pid"},
        "pid": {**dict.fromkeys(_ORDER_PATIENT, "pid"), "ORC": "orc"},
        "orc": {"TQ1": "orc", "TQ2": "orc", "OBR": "obr", "ORC": "orc", "FT1": "orc", "CTI": "orc", "BLG": "orc"},
        "obr": {**dict.fromkeys(_ORDER_DETAIL, "obr"), "ORC": "orc"},
    },
}
# States a complete message may end in, and what is missing otherwise.
FINAL = {"ADT": {"pid"}, "ORU": {"obr", "obx", "tail", "spm", "end"}, "ORDER": {"orc", "obr"}}
NEEDED = {"ADT": "PID", "ORU": "OBR", "ORDER": "ORC"}


@dataclass
class Observation:
    obx: Seg
    notes: list[Seg] = field(default_factory=list)


@dataclass
class Group:
    """An order group: [ORC] OBR [NTE*] OBX* [SPM*] (ORU), or ORC [OBR] ... (ORM/OML)."""

    orc: Seg | None = None
    obr: Seg | None = None
    notes: list[Seg] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    specimens: list[Seg] = field(default_factory=list)


@dataclass
class Structure:
    msh: Seg
    pid: Seg | None = None
    groups: list[Group] = field(default_factory=list)


def read_structure(message: hl7.Message, grammar_name: str) -> Structure:
    """Walk the segments through the grammar, refusing the first one out of place (AR `segment_order`)."""
    counts: dict[str, int] = {}
    segs: list[Seg] = []
    for segment in message:
        seg_id = str(segment[0][0]).strip() if len(segment) and len(segment[0]) else ""
        counts[seg_id] = counts.get(seg_id, 0) + 1
        segs.append(Seg(seg_id, counts[seg_id], segment))
    if not segs or segs[0].id != "MSH":
        first = segs[0].loc() if segs else "MSH"
        raise MessageRejected("segment_order", "消息必须以 MSH 段开头 / the message must begin with MSH", ack="AR",
                              location=first)
    grammar = GRAMMAR[grammar_name]
    structure = Structure(msh=segs[0])
    state = "msh"
    previous = segs[0]
    group: Group | None = None
    for s in segs[1:]:
        if not _SEGMENT_ID.match(s.id):
            raise MessageRejected("segment_order", f"无法识别的段 {s.id!r}（第 {s.n} 个）/ unrecognised segment "
                                  f"{s.id!r}", ack="AR", location=s.loc())
        if s.id.startswith("Z"):
            continue  # site-defined segments are allowed anywhere and ignored
        following = grammar.get(state, {}).get(s.id)
        if following is None:
            raise MessageRejected("segment_order", f"{s.loc()} 段位置不对（不能跟在 {previous.loc()} 之后）/ segment "
                                  f"{s.loc()} is out of order: it cannot follow {previous.loc()} in this message type",
                                  ack="AR", location=s.loc())
        if s.id == "PID":
            structure.pid = s
        elif s.id == "ORC":
            group = Group(orc=s)
            structure.groups.append(group)
        elif s.id == "OBR":
            starts_group = group is None or state != "orc" or group.obr is not None
            if starts_group and (grammar_name == "ORU" or group is None):
                group = Group()
                structure.groups.append(group)
            assert group is not None
            group.obr = s
        elif group is not None:
            if s.id == "OBX" and state in ("obr", "obx") and grammar_name == "ORU":
                group.observations.append(Observation(s))
            elif s.id == "NTE" and state == "obx" and group.observations:
                group.observations[-1].notes.append(s)
            elif s.id == "NTE" and state == "obr":
                group.notes.append(s)
            elif s.id == "SPM":
                group.specimens.append(s)
        state, previous = following, s
    if state not in FINAL[grammar_name]:
        needed = NEEDED[grammar_name]
        raise MessageRejected("missing_segment", f"消息缺少 {needed} 段 / the message lacks a {needed} segment",
                              ack="AR", location=needed)
    return structure


# ---------------------------------------------------------------------------------------------
# The patient.

@dataclass
class PidData:
    seg: Seg
    resident_id: str = ""
    record_numbers: list[str] = field(default_factory=list)
    name: str = ""
    sex: str = ""  # M, F or "" (not stated / unknown)
    birth_date: date | None = None
    phone: str = ""
    address: str = ""
    deceased_on: date | None = None  # PID-29


def read_pid(reader: Reader, pid: Seg) -> PidData:
    """PID-3 identifiers (validated), PID-5 name, PID-7 birth date, PID-8 sex, PID-11 address, PID-13 phone."""
    data = PidData(seg=pid)
    loc3 = pid.loc(3)
    for r in range(1, Reader.repetitions(pid, 3) + 1):
        value = reader.text(pid, 3, r, 1)
        kind = reader.text(pid, 3, r, 5).upper()
        if not value:
            continue
        if kind in RESIDENT_ID_TYPES or (not kind and _RESIDENT_ID_SHAPE.match(value)):
            try:
                rid = parse_resident_id(value)
            except DomainError as exc:
                raise MessageRejected("invalid_resident_id", f"{loc3}: {exc.message}", location=loc3) from None
            if data.resident_id and data.resident_id != rid.number:
                raise MessageRejected("identifier_conflict", f"{loc3} 含两个不同的身份证号 / {loc3} carries two "
                                      "different resident IDs", location=loc3)
            data.resident_id = rid.number
        elif (kind in RECORD_NUMBER_TYPES or not kind) and value not in data.record_numbers:
            data.record_numbers.append(value)
    if not data.resident_id and not data.record_numbers:
        raise _missing(loc3, "患者标识（身份证号或病案号）", "the patient identifier (resident ID or record number)")
    family, given = reader.text(pid, 5, 1, 1), reader.text(pid, 5, 1, 2)
    if family and given:
        data.name = f"{family} {given}" if (family + given).isascii() else family + given
    else:
        data.name = family or given
    data.birth_date = parse_date(reader.text(pid, 7, 1, 1), pid.loc(7))
    sex = reader.text(pid, 8).upper()
    data.sex = sex if sex in ("M", "F") else ""
    street, other, city, province = (reader.text(pid, 11, 1, c) for c in (1, 2, 3, 4))
    data.address = "".join(part for part in (province, city, street, other) if part)
    died = parse_ts(reader.text(pid, 29, 1, 1), pid.loc(29))
    data.deceased_on = died.astimezone(BEIJING).date() if died else None
    data.phone = reader.text(pid, 13, 1, 1) or (reader.text(pid, 13, 1, 6) + reader.text(pid, 13, 1, 7)) \
        or reader.text(pid, 13, 1, 12)
    return data


def _identified(db: Session, kind: IdentifierType, value: str, issuer_id: int | None) -> int | None:
    q = select(PatientIdentifier.patient_id).where(PatientIdentifier.type == kind, PatientIdentifier.value == value)
    q = q.where(PatientIdentifier.issuer_organisation_id.is_(None) if issuer_id is None
                else PatientIdentifier.issuer_organisation_id == issuer_id)
    return db.execute(q.limit(1)).scalar()


def find_patient(db: Session, pid: PidData, *, organisation_id: int) -> Patient | None:
    """The resident by resident ID, else by this organisation's record number (merges followed)."""
    by_rid = by_mr = None
    if pid.resident_id:
        found = _identified(db, IdentifierType.RESIDENT_ID, pid.resident_id, None)
        by_rid = resolve_patient(db, found) if found else None
    for number in pid.record_numbers:
        found = _identified(db, IdentifierType.MEDICAL_RECORD, number, organisation_id)
        if found:
            by_mr = resolve_patient(db, found)
            break
    if by_rid is not None and by_mr is not None and by_rid.id != by_mr.id:
        raise MessageRejected(
            "identifier_conflict", f"身份证号属于居民 #{by_rid.id}，病案号属于居民 #{by_mr.id}，请先核对档案 / the "
            f"resident ID belongs to patient #{by_rid.id} but the record number to patient #{by_mr.id}; "
            "check the records first", location=pid.seg.loc(3))
    return by_rid or by_mr


# ---------------------------------------------------------------------------------------------
# Service errors → rejections naming the place in the message.

def _rejected_from(exc: DomainError, locate: Callable[[str], str], default_location: str) -> MessageRejected:
    fields = exc.field_errors or []
    first = fields[0] if fields else {}
    code = str(first.get("code") or exc.code or "invalid_input")
    location = locate(str(first.get("field", ""))) if first else default_location
    detail = "; ".join(f"{e.get('field')}: {e.get('message') or e.get('code', '')}" for e in fields)
    reason = f"{exc.message}" + (f" ({detail})" if detail and detail not in exc.message else "")
    return MessageRejected(code, reason[:1000], location=location or default_location)


_PATIENT_FIELDS = {"name": 5, "birth_date": 7, "sex": 8, "address_line": 11, "phone": 13, "resident_id": 3,
                   "record_number": 3, "value": 3, "issuer_organisation_id": 3, "deceased_on": 29}


def _pid_locator(pid: Seg) -> Callable[[str], str]:
    def locate(field_name: str) -> str:
        return pid.loc(_PATIENT_FIELDS[field_name]) if field_name in _PATIENT_FIELDS else pid.loc()
    return locate


# ---------------------------------------------------------------------------------------------
# ADT: register or update in the master patient index.

def _interface_user(by: User | None, sender: Hl7Sender, location: str) -> User:
    if by is None:
        raise MessageRejected("no_interface_user", "该发送机构未配置接口账号，无法建档 / this sender has no interface "
                              "account, so it cannot register patients", location=location)
    if by.organisation_id != sender.organisation_id:
        raise MessageRejected("interface_user_mismatch", "接口账号不属于发送机构 / the sender's interface account "
                              "belongs to another organisation", location=location)
    return by


def _apply_adt(db: Session, reader: Reader, structure: Structure, *, sender: Hl7Sender, by: User | None,
               event: str) -> dict[str, list[int]]:
    assert structure.pid is not None
    pid = read_pid(reader, structure.pid)
    user = _interface_user(by, sender, structure.msh.loc(4))
    patient = find_patient(db, pid, organisation_id=sender.organisation_id)
    if patient is None:
        patient = _register(db, pid, sender=sender, by=user)
    else:
        _update(db, pid, patient, sender=sender, by=user, event=event)
    return {"patients": [patient.id]}


def _register(db: Session, pid: PidData, *, sender: Hl7Sender, by: User) -> Patient:
    from healthrelay.patients import service as patients
    from healthrelay.patients.schemas import PatientCreate

    rid = parse_resident_id(pid.resident_id) if pid.resident_id else None
    birth_date = pid.birth_date or (rid.birth_date if rid else None)
    sex = pid.sex or (rid.sex if rid else "U")
    if not pid.name:
        raise _missing(pid.seg.loc(5), "患者姓名", "the patient's name")
    if birth_date is None:
        raise _missing(pid.seg.loc(7), "出生日期", "the birth date")
    locate = _pid_locator(pid.seg)
    candidates = matching.find_candidates(db, name=pid.name, birth_date=birth_date, sex=sex,
                                          phone=patients.normalise_phone(pid.phone), resident_id=pid.resident_id)
    if candidates:
        listed = ", ".join(f"#{c.patient_id}" for c in candidates[:5])
        raise MessageRejected(
            "possible_duplicate", f"可能与已有档案 {listed} 是同一人，请管理员核对（把病案号加到正确的档案，或确认是新"
            f"居民）后重放 / looks like existing record(s) {listed}; an admin should link the record number to the "
            "right record (or confirm a new resident) and replay the message", location=pid.seg.loc(3))
    try:
        data = PatientCreate(name=pid.name, sex=Sex(sex), birth_date=birth_date, resident_id=pid.resident_id or None,
                             phone=pid.phone, address_line=pid.address[:300],
                             record_number=pid.record_numbers[0] if pid.record_numbers else None)
    except ValueError as exc:
        raise MessageRejected("invalid_field", f"PID 字段无效 / invalid PID field: {exc}"[:500],
                              location=pid.seg.loc()) from None
    try:
        patient = patients.register(db, by=by, data=data, confirm_not_duplicate=True,
                                    client_address=f"hl7:{sender.facility}")
        for extra in pid.record_numbers[1:]:
            patients.add_identifier(db, by=by, patient_id=patient.id, kind=IdentifierType.MEDICAL_RECORD,
                                    value=extra, issuer_organisation_id=sender.organisation_id,
                                    client_address=f"hl7:{sender.facility}")
    except DomainError as exc:
        raise _rejected_from(exc, locate, pid.seg.loc()) from None
    return patient


def _update(db: Session, pid: PidData, patient: Patient, *, sender: Hl7Sender, by: User, event: str) -> None:
    """Register the known resident at the sender (the ADT says they are its patient), add its record
    number and a missing resident ID, and change the demographics the message states differently."""
    from healthrelay.patients import service as patients
    from healthrelay.patients.schemas import PatientUpdate

    locate = _pid_locator(pid.seg)
    current_rid = db.execute(select(PatientIdentifier.value).where(
        PatientIdentifier.patient_id == patient.id, PatientIdentifier.type == IdentifierType.RESIDENT_ID)).scalar()
    if pid.resident_id and current_rid and current_rid != pid.resident_id:
        raise MessageRejected("resident_id_mismatch", f"档案 #{patient.id} 登记的身份证号与消息不同，请先核对 / record "
                              f"#{patient.id} holds another resident ID; check it first", location=pid.seg.loc(3))
    changes: dict[str, Any] = {}
    if pid.name and pid.name != patient.name:
        changes["name"] = pid.name
    if pid.sex and pid.sex != str(patient.sex):
        changes["sex"] = Sex(pid.sex)
    if pid.birth_date and pid.birth_date != patient.birth_date:
        changes["birth_date"] = pid.birth_date
    phone = patients.normalise_phone(pid.phone)
    if phone and phone != patient.phone:
        changes["phone"] = pid.phone
    if pid.address and pid.address[:300] != patient.address_line:
        changes["address_line"] = pid.address[:300]
    if pid.deceased_on and pid.deceased_on != patient.deceased_on:
        changes["deceased_on"] = pid.deceased_on
    known_numbers = set(db.execute(select(PatientIdentifier.value).where(
        PatientIdentifier.patient_id == patient.id, PatientIdentifier.type == IdentifierType.MEDICAL_RECORD,
        PatientIdentifier.issuer_organisation_id == sender.organisation_id)).scalars())
    client = f"hl7:{sender.facility}"
    try:
        registered = db.execute(select(PatientRegistration.id).where(
            PatientRegistration.patient_id == patient.id,
            PatientRegistration.organisation_id == sender.organisation_id)).scalar()
        if registered is None:
            db.add(PatientRegistration(patient_id=patient.id, organisation_id=sender.organisation_id,
                                       registered_by_user_id=by.id, registered_at=utcnow()))
            db.flush()
            audit.record(db, actor=actor_of(by, client), action="patient.registered_elsewhere",
                         patient_id=patient.id, purpose="registration", resource=f"patient:{patient.id}",
                         detail={"organisation_id": sender.organisation_id, "via": f"ADT^{event}"})
        if changes:
            patients.update(db, by=by, patient_id=patient.id, data=PatientUpdate(**changes),
                            client_address=client)
        for number in pid.record_numbers:
            if number not in known_numbers:
                patients.add_identifier(db, by=by, patient_id=patient.id, kind=IdentifierType.MEDICAL_RECORD,
                                        value=number, issuer_organisation_id=sender.organisation_id,
                                        client_address=client)
        if pid.resident_id and not current_rid:
            patients.add_identifier(db, by=by, patient_id=patient.id, kind=IdentifierType.RESIDENT_ID,
                                    value=pid.resident_id, client_address=client)
    except DomainError as exc:
        raise _rejected_from(exc, locate, pid.seg.loc()) from None
    except ValueError as exc:
        raise MessageRejected("invalid_field", f"PID 字段无效 / invalid PID field: {exc}"[:500],
                              location=pid.seg.loc()) from None


# ---------------------------------------------------------------------------------------------
# Results (ORU^R01).

@dataclass
class _LabPlan:
    obx: Seg
    obr: Seg
    data: dict[str, Any]


@dataclass
class _ExamPlan:
    obr: Seg
    data: dict[str, Any]


def _known_patient(db: Session, reader: Reader, structure: Structure, sender: Hl7Sender) -> Patient:
    assert structure.pid is not None
    pid = read_pid(reader, structure.pid)
    patient = find_patient(db, pid, organisation_id=sender.organisation_id)
    if patient is None:
        shown = pid.record_numbers[0] if pid.record_numbers else pid.resident_id[:6] + "…"
        raise MessageRejected(
            "unknown_patient", f"平台中没有该患者（{shown}）；请先发送 ADT 建档，本消息将在建档后重放 / no such "
            f"patient ({shown}) on the platform; send the ADT first, this message is kept for replay",
            location=pid.seg.loc(3))
    return patient


def _provider(db: Session, reader: Reader, segs: Iterable[tuple[Seg, int]]) -> tuple[str, User | None]:
    """The ordering provider (XCN) as a name, and the platform user when XCN-1 is a practitioner's code."""
    for s, f in segs:
        ident, family, given = reader.text(s, f, 1, 1), reader.text(s, f, 1, 2), reader.text(s, f, 1, 3)
        if not (ident or family or given):
            continue
        name = f"{family} {given}" if (family + given).isascii() else family + given
        user = None
        if ident:
            user = db.execute(select(User).join(Practitioner, Practitioner.id == User.practitioner_id).where(
                Practitioner.code == ident).order_by(User.id).limit(1)).scalar()
        return (name or ident)[:100], user
    return "", None


def _lab_value(reader: Reader, obx: Seg, value_type: str) -> str:
    if value_type == "SN":  # comparator^num1^separator/suffix^num2: "<^0.5" → "<0.5", "^10^-^20" → "10-20"
        return "".join(reader.text(obx, 5, 1, c) for c in (1, 2, 3, 4))
    if value_type in ("CE", "CWE"):
        return reader.text(obx, 5, 1, 2) or reader.text(obx, 5, 1, 1)
    if value_type in TEXT_VALUE_TYPES:
        return reader.lines(obx, 5)
    return reader.whole(obx, 5).strip()


def _resolve(db: Session, kind: str, code: str) -> ResultCode | None:
    from healthrelay.results import service as results

    return results.resolve_code(db, kind=kind, code=code) if code else None


def _plan_results(db: Session, reader: Reader, structure: Structure, *, patient: Patient, sender: Hl7Sender,
                  ) -> list[_LabPlan | _ExamPlan]:
    msh_time = parse_ts(reader.text(structure.msh, 7, 1, 1), structure.msh.loc(7))
    plans: list[_LabPlan | _ExamPlan] = []
    for group in structure.groups:
        obr = group.obr
        assert obr is not None
        order_code, order_name = reader.coded(obr, 4)
        if not order_code and not order_name:
            raise _missing(obr.loc(4), "检查检验项目（OBR-4）", "the universal service identifier")
        placer = reader.text(obr, 2) or (reader.text(group.orc, 2) if group.orc else "")
        filler = reader.text(obr, 3) or (reader.text(group.orc, 3) if group.orc else "")
        observed = parse_ts(reader.text(obr, 7, 1, 1), obr.loc(7))
        reported = parse_ts(reader.text(obr, 22, 1, 1), obr.loc(22))
        _name, provider = _provider(db, reader, [(obr, 16)] + ([(group.orc, 12)] if group.orc else []))
        ordering_org = provider.organisation_id if provider and provider.organisation_id else sender.organisation_id
        exam = _resolve(db, "exam", order_code)
        text_obx = [o for o in group.observations if reader.text(o.obx, 2).upper() in TEXT_VALUE_TYPES]
        if exam is not None or (text_obx and len(text_obx) == len(group.observations)):
            if exam is None:
                raise MessageRejected("unknown_code", f"未知的检查项目 {order_code or order_name}（{obr.loc(4)}）/ "
                                      f"unknown examination code {order_code or order_name!r} at {obr.loc(4)}",
                                      location=obr.loc(4))
            plans.append(_plan_exam(reader, group, exam=exam, order_name=order_name, placer=placer, filler=filler,
                                    observed=observed, reported=reported or msh_time, patient=patient,
                                    sender=sender, ordering_org=ordering_org))
            continue
        if not group.observations:
            raise _missing(obr.loc(), "检验结果（OBX）", "the results (OBX) of this order")
        specimen = ""
        for spm in group.specimens:
            specimen = reader.text(spm, 4, 1, 2) or reader.text(spm, 4, 1, 1)
            if specimen:
                break
        specimen = specimen or reader.text(obr, 15, 1, 1, 2) or reader.text(obr, 15, 1, 1, 1)
        for obs in group.observations:
            obx = obs.obx
            value_type = reader.text(obx, 2).upper()
            status = reader.text(obx, 11).upper()
            if status in OBX_SKIPPED_STATUS:
                continue
            if value_type and value_type not in LAB_VALUE_TYPES:
                raise MessageRejected("unsupported_value_type", f"{obx.loc(2)} 不支持的值类型 {value_type} / "
                                      f"value type {value_type} is not supported", location=obx.loc(2))
            code, name = reader.coded(obx, 3)
            if not code:
                raise _missing(obx.loc(3), "检验项目代码（OBX-3）", "the observation identifier (test code)")
            known = _resolve(db, "lab", code)
            if known is None:
                raise MessageRejected("unknown_code", f"未知的检验项目 {code}（{obx.loc(3)}）/ unknown test code "
                                      f"{code!r} at {obx.loc(3)}", location=obx.loc(3))
            value = _lab_value(reader, obx, value_type)
            if not value:
                raise _missing(obx.loc(5), "检验结果值（OBX-5）", "the observation value")
            unit = reader.text(obx, 6, 1, 1) or reader.text(obx, 6, 1, 2)
            collected = parse_ts(reader.text(obx, 14, 1, 1), obx.loc(14)) or observed
            obx_reported = parse_ts(reader.text(obx, 19, 1, 1), obx.loc(19))
            data = {
                "patient_id": patient.id, "organisation_id": sender.organisation_id, "test_code": known.code,
                "test_name": (name or known.name_zh)[:200], "value": value[:200], "unit": unit[:40],
                "reference_range": reader.text(obx, 7)[:60], "abnormal_flag": reader.text(obx, 8, 1, 1).upper()[:4],
                "specimen": specimen[:60], "collected_at": collected,
                "reported_at": reported or obx_reported or msh_time or utcnow(),
                "status": OBX_STATUS.get(status, "final"), "order_number": placer[:40],
                "filler_number": filler[:40], "ordering_organisation_id": ordering_org,
                "ordered_by_user_id": provider.id if provider else None,
            }
            plans.append(_LabPlan(obx=obx, obr=obr, data=data))
    return plans


def _plan_exam(reader: Reader, group: Group, *, exam: ResultCode, order_name: str, placer: str, filler: str,
               observed: datetime | None, reported: datetime | None, patient: Patient, sender: Hl7Sender,
               ordering_org: int) -> _ExamPlan:
    obr = group.obr
    assert obr is not None
    findings: list[str] = []
    impression: list[str] = []
    study_uid = ""
    critical = False
    for obs in group.observations:
        obx = obs.obx
        if reader.text(obx, 11).upper() in OBX_SKIPPED_STATUS:
            continue
        ident, text_name = reader.coded(obx, 3)
        key = (ident or text_name).upper()
        value_type = reader.text(obx, 2).upper()
        text = reader.lines(obx, 5) if value_type in TEXT_VALUE_TYPES else reader.whole(obx, 5).strip()
        if reader.text(obx, 8, 1, 1).upper() in CRITICAL_FLAGS:
            critical = True
        if value_type not in TEXT_VALUE_TYPES and text and key not in STUDY_UID_IDS:  # a measurement (ECG: HR)
            unit = reader.text(obx, 6, 1, 1)
            text = f"{text_name or ident}: {text} {unit}".strip()
        if key in STUDY_UID_IDS or text_name.upper() in STUDY_UID_IDS:
            study_uid = text[:64]
        elif key in IMPRESSION_IDS or text_name in IMPRESSION_IDS:
            impression.append(text)
        elif text:
            findings.append(text)
    for note in group.notes:
        findings.append(reader.lines(note, 3))
    performed = observed or reported
    if performed is None:
        raise _missing(obr.loc(7), "检查时间（OBR-7）", "the examination time")
    data = {
        "patient_id": patient.id, "organisation_id": sender.organisation_id, "exam_code": exam.code,
        "exam_name": (order_name or exam.name_zh)[:200], "performed_at": performed,
        "reported_at": reported or performed, "findings": "\n".join(t for t in findings if t),
        "impression": "\n".join(t for t in impression if t), "study_instance_uid": study_uid,
        "order_number": placer[:40], "filler_number": filler[:40], "ordering_organisation_id": ordering_org,
        "critical": critical,
    }
    return _ExamPlan(obr=obr, data=data)


_LAB_FIELDS = {"test_code": ("obx", 3), "test_name": ("obx", 3), "value": ("obx", 5), "unit": ("obx", 6),
               "reference_range": ("obx", 7), "abnormal_flag": ("obx", 8), "status": ("obx", 11),
               "collected_at": ("obx", 14), "reported_at": ("obr", 22), "specimen": ("obr", 15),
               "order_number": ("obr", 2), "filler_number": ("obr", 3), "ordered_by_user_id": ("obr", 16)}
_EXAM_FIELDS = {"exam_code": 4, "exam_name": 4, "performed_at": 7, "reported_at": 22, "order_number": 2,
                "filler_number": 3}


def _apply_oru(db: Session, reader: Reader, structure: Structure, *, sender: Hl7Sender, by: User | None,
               message_id: int | None) -> dict[str, list[int]]:
    from healthrelay.results import service as results
    from healthrelay.results.schemas import ExamResultIn, LabResultIn

    patient = _known_patient(db, reader, structure, sender)
    plans = _plan_results(db, reader, structure, patient=patient, sender=sender)
    assert structure.pid is not None
    pid = structure.pid
    done: dict[str, list[int]] = {"lab_results": [], "exam_results": []}
    for plan in plans:
        if isinstance(plan, _LabPlan):
            def locate(name: str, plan: _LabPlan = plan) -> str:
                if name in ("patient_id",):
                    return pid.loc(3)
                where = _LAB_FIELDS.get(name)
                if where is None:
                    return plan.obx.loc()
                return (plan.obx if where[0] == "obx" else plan.obr).loc(where[1])
            try:
                lab = results.record_lab_result(db, data=LabResultIn(**plan.data), source="hl7", by=by,
                                                hl7_message_id=message_id)
            except DomainError as exc:
                raise _rejected_from(exc, locate, plan.obx.loc()) from None
            if lab.id not in done["lab_results"]:
                done["lab_results"].append(lab.id)
        else:
            def locate_exam(name: str, plan: _ExamPlan = plan) -> str:
                if name == "patient_id":
                    return pid.loc(3)
                return plan.obr.loc(_EXAM_FIELDS[name]) if name in _EXAM_FIELDS else plan.obr.loc()
            try:
                exam = results.record_exam_result(db, data=ExamResultIn(**plan.data), source="hl7", by=by,
                                                  hl7_message_id=message_id)
            except DomainError as exc:
                raise _rejected_from(exc, locate_exam, plan.obr.loc()) from None
            if exam.id not in done["exam_results"]:
                done["exam_results"].append(exam.id)
    return done


# ---------------------------------------------------------------------------------------------
# Orders (ORM^O01, OML^O21).

def _apply_orders(db: Session, reader: Reader, structure: Structure, *, sender: Hl7Sender, by: User | None,
                  message_id: int | None) -> dict[str, list[int]]:
    from healthrelay.recognition import service as recognition
    from healthrelay.recognition.schemas import ExternalOrderIn

    patient = _known_patient(db, reader, structure, sender)
    msh_time = parse_ts(reader.text(structure.msh, 7, 1, 1), structure.msh.loc(7))
    plans: list[tuple[Group, dict[str, Any]]] = []
    for group in structure.groups:
        orc = group.orc
        assert orc is not None
        control = reader.text(orc, 1).upper()
        action = ORDER_ACTIONS.get(control)
        if action is None:
            raise MessageRejected("unsupported_order_control", f"{orc.loc(1)} 不支持的医嘱控制码 {control or '（空）'}"
                                  f"，只接受 NW / CA / order control {control!r} is not supported (NW or CA)",
                                  location=orc.loc(1))
        obr = group.obr
        placer = reader.text(orc, 2) or (reader.text(obr, 2) if obr else "")
        if not placer:
            raise _missing(orc.loc(2), "医嘱号（ORC-2 / OBR-2）", "the placer order number")
        code, name = reader.coded(obr, 4) if obr else ("", "")
        if not code and action == "new":
            raise _missing(obr.loc(4) if obr else orc.loc(), "医嘱项目（OBR-4）", "the ordered test or examination")
        if action == "new" and _resolve(db, "lab", code) is None and _resolve(db, "exam", code) is None:
            assert obr is not None
            raise MessageRejected("unknown_code", f"未知的检查检验项目 {code}（{obr.loc(4)}）/ unknown code {code!r} "
                                  f"at {obr.loc(4)}", location=obr.loc(4))
        ordered_at = (parse_ts(reader.text(orc, 9, 1, 1), orc.loc(9))
                      or (parse_ts(reader.text(obr, 6, 1, 1), obr.loc(6)) if obr else None) or msh_time or utcnow())
        provider, _user = _provider(db, reader, [(orc, 12)] + ([(obr, 16)] if obr else []))
        reason = ""
        if obr:  # OBR-31 coded (a reason code of the national exception list) before its text, then OBR-13
            reason = reader.text(obr, 31, 1, 1) or reader.text(obr, 31, 1, 2) or reader.text(obr, 13)
        if action == "cancel" and not reason:
            reason = reader.text(orc, 16, 1, 2) or reader.text(orc, 16, 1, 1)
        plans.append((group, {"patient_id": patient.id, "ordering_organisation_id": sender.organisation_id,
                              "code": code[:40], "placer_number": placer[:40], "ordered_at": ordered_at,
                              "action": action, "ordering_provider": provider, "reason": reason[:500]}))
    done: dict[str, list[int]] = {"orders": []}
    for group, data in plans:
        orc = group.orc
        assert orc is not None
        obr = group.obr

        def locate(name: str, orc: Seg = orc, obr: Seg | None = obr) -> str:
            if name == "code":
                return obr.loc(4) if obr else orc.loc()
            if name == "placer_number":
                return orc.loc(2)
            if name == "patient_id":
                return structure.pid.loc(3) if structure.pid else orc.loc()
            if name == "ordered_at":
                return orc.loc(9)
            if name == "action":
                return orc.loc(1)
            return orc.loc()
        try:
            order = recognition.record_external_order(db, data=ExternalOrderIn(**data), by=by,
                                                      hl7_message_id=message_id)
        except DomainError as exc:
            raise _rejected_from(exc, locate, orc.loc()) from None
        if order.id not in done["orders"]:
            done["orders"].append(order.id)
    return done


# ---------------------------------------------------------------------------------------------

def message_type(message: hl7.Message) -> str:
    """MSH-9 as "ORU^R01" (message code ^ trigger event), upper case."""
    msh = Seg("MSH", 1, message.segment("MSH"))
    return f"{Reader.raw(msh, 9, 1, 1).strip().upper()}^{Reader.raw(msh, 9, 1, 2).strip().upper()}"


def apply_message(db: Session, *, message: hl7.Message, sender: Hl7Sender, by: User | None,
                  message_id: int | None) -> dict[str, list[int]]:
    """Apply one parsed message from `sender` (acting as `by`, its interface account) in the caller's transaction.

    Returns what was created or changed: {"patients": [...], "lab_results": [...], "exam_results": [...],
    "orders": [...]}. Raises `MessageRejected` naming the problem and its place; the caller's savepoint then
    leaves nothing written.
    """
    reader = Reader(message)
    if not len(message) or str(message[0][0][0]).strip() != "MSH":
        raise MessageRejected("segment_order", "消息必须以 MSH 段开头 / the message must begin with MSH", ack="AR",
                              location="MSH")
    kind = message_type(message)
    if kind not in SUPPORTED_TYPES:
        raise MessageRejected("unsupported_type", f"不支持的消息类型 {kind} / unsupported message type {kind}; "
                              f"supported: {', '.join(sorted(SUPPORTED_TYPES))}", ack="AR", location="MSH[1]-9")
    code, event = kind.split("^")
    structure = read_structure(message, {"ADT": "ADT", "ORU": "ORU"}.get(code, "ORDER"))
    result: dict[str, list[int]] = {"patients": [], "lab_results": [], "exam_results": [], "orders": []}
    try:
        with db.begin_nested():  # a late failure leaves nothing, even without the caller's savepoint
            if code == "ADT":
                result.update(_apply_adt(db, reader, structure, sender=sender, by=by, event=event))
            elif code == "ORU":
                result.update(_apply_oru(db, reader, structure, sender=sender, by=by, message_id=message_id))
            else:
                result.update(_apply_orders(db, reader, structure, sender=sender, by=by, message_id=message_id))
    except IntegrityError:
        # Another connection wrote the same patient or result at the same moment (two ADTs for one new
        # resident): nothing of this message is kept; resent, it finds what the other one wrote.
        raise MessageRejected("concurrent_update", "另一条消息同时写入了同一记录，请重发 / another message wrote the "
                              "same record at the same moment; please resend", location="MSH[1]-10") from None
    return result
