"""Outbound HL7 v2: signed reports go back to the inviting member's own system as ORU^R01 over MLLP.

The message is built once, in the signing transaction (`enqueue_report`, on `teleconsult.reports.after_final`),
with a control ID of its own that stays the same across retries, so a receiver that saw an attempt whose
answer we lost can recognise the repeat. A durable timer sends it after commit; an AA answer marks it sent in
the timer's transaction and nothing sends it again. AE/AR or no answer is retried with backoff up to
`MAX_ATTEMPTS`, then the row is `failed` and waits on /admin/hl7/outbound for someone to press "retry now".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import hl7
from hl7.mllp import open_hl7_connection
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core import timers
from healthrelay.core.db import take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.core.timers import Timer
from healthrelay.directory.models import Organisation
from healthrelay.hl7.models import Hl7Destination, Hl7Outbound
from healthrelay.imaging.models import ImagingStudy
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier
from healthrelay.teleconsult import reports
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Report, ReportState

log = logging.getLogger("healthrelay.hl7.outbound")

SEND_KIND = "hl7.outbound.send"
OUR_APPLICATION = "HEALTHRELAY"
OUR_FACILITY = "HEALTHRELAY"
SOURCE_REPORT = "consult_report"
PENDING, SENT, FAILED = "pending", "sent", "failed"
STATES = (PENDING, SENT, FAILED)
MAX_ATTEMPTS = 6
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
LOCAL_TZ = ZoneInfo("Asia/Shanghai")
# MSH-18 as HL7 table 0211 names them, and the Python codec for the bytes.
CHARSETS: dict[str, tuple[str, str]] = {"UTF-8": ("UNICODE UTF-8", "utf-8"),
                                        "GB18030": ("GB 18030-2000", "gb18030")}
_KIND_NAMES = {ConsultKind.IMAGING: "远程影像诊断", ConsultKind.ECG: "远程心电诊断",
               ConsultKind.PATHOLOGY: "远程病理诊断", ConsultKind.SPECIALIST: "专科会诊", ConsultKind.MDT: "多学科会诊"}
_SECTION = {"technique": ("TECH", "检查技术"), "findings": ("FINDINGS", "检查所见"),
            "impression": ("IMPRESSION", "诊断意见"), "recommendation": ("RECOMMEND", "建议"),
            "critical": ("CRITICAL", "危急值"),
            "mark": ("HR", "互认标识"), "signer": ("SIGNER", "签发医师")}


def charset_of(value: str) -> str | None:
    """The destination's charset as one of CHARSETS: "utf8", "UNICODE UTF-8" → UTF-8; GBK and GB2312 are sent
    as GB 18030, their superset. None when unknown."""
    key = "".join(ch for ch in (value or "").upper() if ch.isalnum())
    if key in ("UTF8", "UNICODEUTF8", ""):
        return "UTF-8"
    if key in ("GB18030", "GB180302000", "GBK", "GB2312", "CHINESE"):
        return "GB18030"
    return None


def retry_delay_seconds(attempts: int) -> float:
    """30 s, 2 min, 8 min, 32 min, then hourly: a restart of the far side passes, an outage is not hammered."""
    return min(30.0 * 4 ** (max(attempts, 1) - 1), 3600.0)


# ---------------------------------------------------------------------------- building the message

def escape(text: str) -> str:
    """HL7 escapes for the delimiters (|^~\\&) and line breaks; Chinese text stays as it is (the charset
    carries it), unlike python-hl7's escape, which turns every non-ASCII character into \\X..\\."""
    out = []
    for ch in text or "":
        if ch == "\\":
            out.append("\\E\\")
        elif ch == "|":
            out.append("\\F\\")
        elif ch == "^":
            out.append("\\S\\")
        elif ch == "~":
            out.append("\\R\\")
        elif ch == "&":
            out.append("\\T\\")
        elif ch in "\r\n":
            out.append(" ")
        elif ord(ch) < 0x20:
            continue
        else:
            out.append(ch)
    return "".join(out)


def _ts(value: datetime | None) -> str:
    return value.astimezone(LOCAL_TZ).strftime("%Y%m%d%H%M%S+0800") if value is not None else ""


def new_control_id() -> str:
    """20 characters (the ST length of MSH-10 in v2.3): HR + UTC time to the second + random hex."""
    return f"HR{utcnow():%y%m%d%H%M%S}{secrets.token_hex(3).upper()}"


def _identifier(db: Session, patient_id: int, kind: IdentifierType, issuer: int | None = None) -> str:
    query = select(PatientIdentifier.value).where(PatientIdentifier.patient_id == patient_id,
                                                  PatientIdentifier.type == kind)
    if issuer is not None:
        query = query.where(PatientIdentifier.issuer_organisation_id == issuer)
    return db.execute(query.order_by(PatientIdentifier.id).limit(1)).scalar() or ""


def _exam(db: Session, request: ConsultRequest) -> tuple[str, str]:
    """OBR-4: the examination, from the results repository when it knows the request, else the study."""
    try:
        from healthrelay.results.models import ExamResult  # helper R's table; absent in older trees
    except ImportError:  # pragma: no cover - depends on what is installed alongside
        ExamResult = None  # noqa: N806
    if ExamResult is not None:
        row = db.execute(select(ExamResult.exam_code, ExamResult.exam_name)
                         .where(ExamResult.consult_request_id == request.id).limit(1)).first()
        if row is not None and row[0]:
            return row[0], row[1] or row[0]
    study = db.execute(select(ImagingStudy.modalities_in_study, ImagingStudy.description)
                       .where(ImagingStudy.consult_request_id == request.id).order_by(ImagingStudy.id).limit(1)).first()
    if study is not None and study[0]:
        modality = study[0].split("\\")[0]
        return modality, study[1] or modality
    kind = ConsultKind(request.kind)
    return kind.value.upper(), _KIND_NAMES.get(kind, kind.value)


@dataclass
class Built:
    control_id: str
    text: str  # segments joined by \r, before encoding
    raw: bytes


def build_oru(db: Session, *, request: ConsultRequest, report: Report, destination: Hl7Destination,
              control_id: str | None = None) -> Built:
    """The ORU^R01 of a signed report: MSH, PID (resident ID, record number), OBR (the request number as placer
    and filler, the exam), and one OBX TX line per line of text for findings, impression, the HR mark and signer."""
    charset = charset_of(destination.charset)
    if charset is None:
        raise InvalidInput(f"不支持的字符集 {destination.charset} / unsupported charset",
                           field_errors=[field_error("charset", "UTF-8 | GB18030")])
    msh18, codec = CHARSETS[charset]
    control_id = control_id or new_control_id()
    now = utcnow()
    msh = "|".join(["MSH", "^~\\&", OUR_APPLICATION, OUR_FACILITY, escape(destination.receiving_application),
                    escape(destination.receiving_facility), _ts(now), "", "ORU^R01^ORU_R01", control_id, "P", "2.5",
                    "", "", "", "", "", msh18])
    patient = db.get(Patient, request.patient_id) if request.patient_id else None
    pid3 = []
    name = birth = sex = ""
    if patient is not None:
        resident = _identifier(db, patient.id, IdentifierType.RESIDENT_ID)
        if resident:
            pid3.append(f"{escape(resident)}^^^CHN^NNCHN")
        record = _identifier(db, patient.id, IdentifierType.MEDICAL_RECORD, request.inviting_organisation_id)
        if record:
            org_code = db.execute(select(Organisation.code)
                                  .where(Organisation.id == request.inviting_organisation_id)).scalar() or ""
            pid3.append(f"{escape(record)}^^^{escape(org_code)}^MR")
        name, birth, sex = escape(patient.name), patient.birth_date.strftime("%Y%m%d"), str(patient.sex)
    pid = "|".join(["PID", "1", "", "~".join(pid3), "", name, "", birth, sex])
    code, exam_name = _exam(db, request)
    signer = db.get(User, report.cosigned_by_user_id or report.signed_by_user_id) if (
        report.cosigned_by_user_id or report.signed_by_user_id) else None
    signed_at = report.cosigned_at or report.signed_at
    obr = "|".join(["OBR", "1", escape(request.number), escape(request.number),
                    f"{escape(code)}^{escape(exam_name)}^L", "", "", _ts(request.created_at), "", "", "", "", "", "",
                    "", "", "", "", "", "", "", "", _ts(signed_at), "", escape(ConsultKind(request.kind).value.upper()),
                    "F", "", "", "", "", "", "", escape(signer.display_name if signer else "")])
    lines: list[tuple[str, str]] = []
    for key in ("technique", "findings", "impression", "recommendation"):
        for line in (getattr(report, key) or "").splitlines():
            if line.strip():
                lines.append((key, line))
    if report.critical and report.critical_finding:
        lines.append(("critical", report.critical_finding))
    mark = reports.hr_mark(report.recognition_scope)
    if mark:
        lines.append(("mark", mark))
    if signer is not None:
        lines.append(("signer", f"{signer.display_name} {signed_at.astimezone(LOCAL_TZ):%Y-%m-%d %H:%M}"
                      if signed_at else signer.display_name))
    obx = []
    sub_ids: dict[str, int] = {}
    for n, (key, line) in enumerate(lines, start=1):
        sub_ids[key] = sub_ids.get(key, 0) + 1
        section, label = _SECTION[key]
        obx.append("|".join(["OBX", str(n), "TX", f"{section}^{label}^L", str(sub_ids[key]), escape(line), "", "",
                             "A" if key == "critical" else "", "", "", "F", "", "", _ts(signed_at)]))
    text = "\r".join([msh, pid, obr, *obx]) + "\r"
    hl7.parse(text)  # what we send must parse as HL7; a bug here should fail loudly, not at the receiver
    return Built(control_id=control_id, text=text, raw=text.encode(codec))


# ---------------------------------------------------------------------------- queueing

def destination_for(db: Session, organisation_id: int) -> Hl7Destination | None:
    return db.execute(select(Hl7Destination).where(Hl7Destination.organisation_id == organisation_id,
                                                   Hl7Destination.is_active.is_(True))).scalar()


def _schedule(db: Session, row: Hl7Outbound, *, attempt: int, delay_seconds: float = 0) -> None:
    due = utcnow() + timedelta(seconds=delay_seconds)
    row.next_attempt_at = due
    timers.schedule(db, kind=SEND_KIND, due_at=due, payload={"outbound_id": row.id},
                    dedupe_key=f"hl7out:{row.id}:{attempt}")


def enqueue_report(db: Session, *, request: ConsultRequest, report: Report) -> Hl7Outbound | None:
    """Queue the final report for the inviting member's system, once per report and destination; None when the
    report is not final yet (a trainee's) or the member has no active destination."""
    if report.state != ReportState.SIGNED:
        return None
    destination = destination_for(db, request.inviting_organisation_id)
    if destination is None:
        return None
    existing = db.execute(select(Hl7Outbound).where(
        Hl7Outbound.source_kind == SOURCE_REPORT, Hl7Outbound.source_id == report.id,
        Hl7Outbound.destination_id == destination.id)).scalar()
    if existing is not None:
        return existing
    built = build_oru(db, request=request, report=report, destination=destination)
    row = Hl7Outbound(destination_id=destination.id, control_id=built.control_id, message_type="ORU^R01",
                      source_kind=SOURCE_REPORT, source_id=report.id, raw=built.raw, state=PENDING, attempts=0,
                      created_at=utcnow())
    db.add(row)
    db.flush()
    _schedule(db, row, attempt=1)
    audit.record(db, actor=audit.Actor(username="system"), action="hl7.outbound.queue",
                 patient_id=request.patient_id, resource=f"hl7_outbound:{row.id}",
                 detail={"request_id": request.id, "report_id": report.id, "destination_id": destination.id,
                         "control_id": row.control_id})
    return row


def _report_final(db: Session, request: ConsultRequest, report: Report, by: User) -> None:
    """On `reports.after_final`, in a savepoint: a misconfigured destination must never undo the signature; the
    refusal is audited."""
    try:
        with db.begin_nested():
            enqueue_report(db, request=request, report=report)
    except Exception as exc:  # noqa: BLE001 - the signature stands; the admin sees why nothing went out
        log.warning("hl7 outbound for report %s not queued: %s", report.id, exc)
        audit.record(db, actor=audit.Actor(username="system"), action="hl7.outbound.queue", outcome="error",
                     patient_id=request.patient_id, resource=f"consult:{request.id}",
                     detail={"report_id": report.id, "error": f"{type(exc).__name__}: {exc}"[:500]})


def register() -> None:
    if _report_final not in reports.after_final:
        reports.after_final.append(_report_final)


register()


# ---------------------------------------------------------------------------- sending

@dataclass
class Answer:
    code: str  # MSA-1: AA, AE, AR (or CA/CE/CR), "" when nothing usable came back
    text: str  # MSA-3 and ERR, or what went wrong


async def _exchange(host: str, port: int, raw: bytes, codec: str, connect_timeout: float,
                    read_timeout: float) -> bytes:
    reader, writer = await asyncio.wait_for(open_hl7_connection(host, port, encoding=codec), connect_timeout)
    try:
        writer.writeblock(raw)
        await asyncio.wait_for(writer.drain(), read_timeout)
        return await asyncio.wait_for(reader.readblock(), read_timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


def _run(coro: Any) -> Any:
    """asyncio.run, also from a thread whose loop is already running (then in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, name="hl7-outbound-send")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def send_raw(*, host: str, port: int, raw: bytes, charset: str, control_id: str,
             connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT) -> Answer:
    """One MLLP exchange: the message out, the ACK back (decoded in the destination's charset)."""
    codec = CHARSETS[charset_of(charset) or "UTF-8"][1]
    try:
        block = _run(_exchange(host, port, raw, codec, connect_timeout, read_timeout))
    except TimeoutError:
        return Answer("", "无应答（超时）/ no answer (timeout)")
    except asyncio.IncompleteReadError:
        return Answer("", "对方未应答即断开 / the peer closed the connection without an answer")
    except (OSError, ValueError) as exc:
        return Answer("", f"连接失败 / cannot connect: {type(exc).__name__}: {exc}"[:500])
    try:
        ack = hl7.parse(block.decode(codec))
        msa = ack.segment("MSA")
    except (UnicodeDecodeError, KeyError, IndexError, ValueError, hl7.ParseException) as exc:
        return Answer("", f"应答无法解析 / unreadable answer: {type(exc).__name__}"[:500])
    code = str(msa(1)).strip().upper()
    if str(msa(2)).strip() != control_id:
        return Answer("", f"应答的控制号 {msa(2)} 与 {control_id} 不符 / the ACK is for another message")
    text = str(msa(3)).strip() if len(msa) > 3 else ""
    try:
        err = ack.segment("ERR")
        text = "; ".join(t for t in (text, str(err)) if t)
    except KeyError:
        pass
    return Answer(code, text[:2000])


@timers.handler(SEND_KIND)
def deliver(db: Session, payload: dict[str, Any]) -> None:
    """Send one pending message; only AA (or CA) marks it sent, in this transaction, so it never goes twice."""
    query = select(Hl7Outbound).where(Hl7Outbound.id == int(payload["outbound_id"]))
    if db.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    row = db.execute(query).scalar()
    if row is None or row.state != PENDING:
        return
    destination = db.get(Hl7Destination, row.destination_id)
    row.attempts += 1
    if destination is None or not destination.is_active:
        answer = Answer("", "目的地已停用 / the destination is disabled")
    else:
        answer = send_raw(host=destination.host, port=destination.port, raw=row.raw, charset=destination.charset,
                          control_id=row.control_id)
    row.ack_code = answer.code[:2]
    if answer.code in ("AA", "CA"):
        row.state = SENT
        row.sent_at = utcnow()
        row.next_attempt_at = None
        row.last_error = ""
        patient_id = db.execute(select(ConsultRequest.patient_id).join(Report, Report.request_id == ConsultRequest.id)
                                .where(Report.id == row.source_id)).scalar() if row.source_kind == SOURCE_REPORT \
            else None
        audit.record(db, actor=audit.Actor(username="system"), action="hl7.outbound.sent", patient_id=patient_id,
                     resource=f"hl7_outbound:{row.id}",
                     detail={"control_id": row.control_id, "destination_id": row.destination_id,
                             "attempts": row.attempts})
        return
    row.last_error = (f"{answer.code}: {answer.text}" if answer.code else answer.text)[:2000]
    if row.attempts >= MAX_ATTEMPTS or destination is None or not destination.is_active:
        row.state = FAILED
        row.next_attempt_at = None
        log.warning("hl7 outbound %s (%s) failed after %s attempts: %s", row.id, row.control_id, row.attempts,
                    row.last_error)
        return
    _schedule(db, row, attempt=row.attempts + 1, delay_seconds=retry_delay_seconds(row.attempts))


# ---------------------------------------------------------------------------- the admin side

_ADMINS = (Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)


def _scope(user: User) -> int | None:
    """The alliance admin sees every destination; an organisation's admin only their own organisation's."""
    if user.role == Role.ALLIANCE_ADMIN:
        return None
    if user.role != Role.ORG_ADMIN or user.organisation_id is None:
        raise AccessDenied("只有管理员可以查看 HL7 发送队列 / only administrators see the HL7 outbound queue")
    return user.organisation_id


@dataclass
class OutRow:
    row: Hl7Outbound
    organisation: str
    destination: str
    number: str


def outbound_list(db: Session, *, user: User, state: str = "", limit: int = 200) -> list[OutRow]:
    """Newest first; metadata only (the message itself carries patient data and is not shown)."""
    if state and state not in STATES:
        raise InvalidInput("未知状态 / unknown state", field_errors=[field_error("state", "|".join(STATES))])
    own = _scope(user)
    query = (select(Hl7Outbound, Hl7Destination, Organisation.name)
             .join(Hl7Destination, Hl7Destination.id == Hl7Outbound.destination_id)
             .join(Organisation, Organisation.id == Hl7Destination.organisation_id))
    if own is not None:
        query = query.where(Hl7Destination.organisation_id == own)
    if state:
        query = query.where(Hl7Outbound.state == state)
    rows = db.execute(query.order_by(Hl7Outbound.id.desc()).limit(max(1, min(limit, 1000)))).all()
    report_ids = [o.source_id for o, _, _ in rows if o.source_kind == SOURCE_REPORT]
    numbers: dict[int, str] = {}
    if report_ids:
        numbers = dict(db.execute(select(Report.id, ConsultRequest.number)
                                  .join(ConsultRequest, ConsultRequest.id == Report.request_id)
                                  .where(Report.id.in_(report_ids))).all())
    return [OutRow(row=o, organisation=name, destination=f"{d.host}:{d.port} {d.receiving_application}"
                   f"^{d.receiving_facility} ({d.charset})".strip(),
                   number=numbers.get(o.source_id, "") if o.source_kind == SOURCE_REPORT else "")
            for o, d, name in rows]


def retry_now(db: Session, *, outbound_id: int, by: User, client_address: str = "") -> Hl7Outbound:
    """One more attempt at once: a failed message gets a single attempt (failed again if it fails), a pending
    one has its waiting attempt brought forward. An acknowledged message is never sent again."""
    take_sqlite_write_lock(db)
    own = _scope(by)
    row = db.get(Hl7Outbound, outbound_id)
    destination = db.get(Hl7Destination, row.destination_id) if row is not None else None
    if row is None or destination is None or (own is not None and destination.organisation_id != own):
        raise NotFound(f"没有编号为 {outbound_id} 的外发消息 / no outbound message {outbound_id}")
    if row.state == SENT:
        raise Conflict(f"消息 {row.control_id} 已被对方确认，不会重发 / already acknowledged, never sent twice",
                       code="already_sent")
    if not destination.is_active:
        raise Conflict("目的地已停用，请先启用 / the destination is disabled", code="destination_disabled")
    before = row.state
    if row.state == FAILED:
        row.state = PENDING
        _schedule(db, row, attempt=row.attempts + 1)
    else:
        row.next_attempt_at = utcnow()
        db.execute(update(Timer).where(Timer.dedupe_key == f"hl7out:{row.id}:{row.attempts + 1}",
                                       Timer.fired_at.is_(None)).values(due_at=row.next_attempt_at, cancelled_at=None)
                   .execution_options(synchronize_session=False))
        _schedule(db, row, attempt=row.attempts + 1)  # a no-op when that attempt's timer exists
    audit.record(db, actor=access.actor_of(by, client_address), action="hl7.outbound.retry",
                 resource=f"hl7_outbound:{row.id}",
                 detail={"control_id": row.control_id, "from_state": before, "attempts": row.attempts})
    return row
