"""HL7 v2 inbound: one MLLP payload in, one ACK out, and the admin's work on what could not be taken.

`handle_bytes` is the whole path of a message: read MSH from the raw bytes (MSH is ASCII), decode the
message in the character set MSH-18 declares, parse it, find the registered sender (MSH-4), answer a
repeated control ID with the ACK already given, otherwise store the message and let `hl7.mapping` turn it
into patients, results and orders inside a savepoint. Whatever cannot be taken is kept whole as a dead
letter with its reason, in the same commit as nothing else, so a sender is only ever acknowledged (AA,
AE or AR) for something durably stored, and a message is never stored twice.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import hl7
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from healthrelay.accounts.models import Role, User
from healthrelay.accounts.service import create_user
from healthrelay.audit import service as audit
from healthrelay.core.db import take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, DomainError, InvalidInput, NotFound, field_error
from healthrelay.core.security import hash_password
from healthrelay.directory.models import Organisation
from healthrelay.hl7.models import Hl7DeadLetter, Hl7Message, Hl7Sender
from healthrelay.notifications import live

log = logging.getLogger("healthrelay.hl7")

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
RECEIVING_APPLICATION = "HEALTHRELAY"
RECEIVING_FACILITY = "HEALTHRELAY"

# MSH-18 (HL7 table 0211 and what Chinese systems write in practice) -> the Python codec; the key is the
# declared value upper-cased without spaces, hyphens or underscores. Empty means the UTF-8 default.
CHARSETS: dict[str, tuple[str, str]] = {
    "": ("UTF-8", "utf-8"),
    "UNICODEUTF8": ("UTF-8", "utf-8"),
    "UTF8": ("UTF-8", "utf-8"),
    "ASCII": ("ASCII", "ascii"),
    "ISOIR6": ("ASCII", "ascii"),
    "8859/1": ("ISO-8859-1", "latin-1"),
    "GB18030": ("GB18030", "gb18030"),
    "GB180302000": ("GB18030", "gb18030"),
    "GB180302005": ("GB18030", "gb18030"),
    "GB2312": ("GB18030", "gb18030"),
    "GBK": ("GB18030", "gb18030"),
    "CP936": ("GB18030", "gb18030"),
    "EUCCN": ("GB18030", "gb18030"),
    "CHINESE": ("GB18030", "gb18030"),
    "ISOIR58": ("GB18030", "gb18030"),  # GB 2312 as an ISO-IR registration
}

# Our reason codes -> HL7 table 0357 (message error condition codes) for ERR-3.
ERROR_CONDITIONS: dict[str, tuple[str, str]] = {
    "segment_order": ("100", "Segment sequence error"),
    "missing_field": ("101", "Required field missing"),
    "bad_charset": ("102", "Data type error"),
    "malformed": ("102", "Data type error"),
    "unknown_code": ("103", "Table value not found"),
    "unsupported_type": ("200", "Unsupported message type"),
    "unsupported_event": ("201", "Unsupported event code"),
    "unknown_patient": ("204", "Unknown key identifier"),
    "unknown_sender": ("207", "Application internal error"),
    "too_large": ("207", "Application internal error"),
    "internal_error": ("207", "Application internal error"),
}

DEAD_LETTER_STATES = ("open", "replayed", "discarded")
_control_ids = itertools.count(1)


# --- reading MSH from the raw bytes -------------------------------------------------------------

@dataclass
class Header:
    """MSH as read from the raw bytes before decoding; values are decoded leniently, only for the ACK."""

    field_sep: str = "|"
    encoding_chars: str = "^~\\&"
    fields: dict[int, str] = field(default_factory=dict)  # MSH-n -> raw field text

    def get(self, n: int) -> str:
        return self.fields.get(n, "")

    def component(self, n: int, index: int = 1) -> str:
        parts = self.get(n).split(self.encoding_chars[0] if self.encoding_chars else "^")
        return parts[index - 1].strip() if len(parts) >= index else ""

    @property
    def message_type(self) -> str:
        code, event = self.component(9, 1), self.component(9, 2)
        return f"{code}^{event}" if event else code


def read_header(raw: bytes) -> Header | None:
    """MSH of a payload, or None when it does not start with MSH and a field separator."""
    data = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    if len(data) < 8 or data[:3] != b"MSH":
        return None
    sep = data[3:4]
    if sep.isalnum() or sep in (b"\r", b"\n", b" "):
        return None
    end = len(data)
    for stop in (b"\r", b"\n"):
        at = data.find(stop)
        if at != -1:
            end = min(end, at)
    parts = data[:end].split(sep)
    header = Header(field_sep=sep.decode("latin-1"))
    text = [p.decode("utf-8", "replace") for p in parts]
    header.encoding_chars = text[1] if len(text) > 1 and text[1] else "^~\\&"
    for n in range(2, len(text) + 1):
        header.fields[n] = text[n - 1]
    header.fields[1] = header.field_sep
    return header


def resolve_charset(declared: str) -> tuple[str, str] | None:
    """(label, codec) for an MSH-18 value (first repetition), or None when we do not know it."""
    first = declared.split("~")[0].split("^")[0]
    key = re.sub(r"[\s_\-]", "", first).upper()
    return CHARSETS.get(key)


# --- building the ACK ------------------------------------------------------------------------------

def escape(text: str, header: Header) -> str:
    """HL7 escape sequences for the delimiters (\\F\\ \\S\\ \\R\\ \\E\\ \\T\\) in a text we put in a field."""
    enc = (header.encoding_chars + "^~\\&")[:4]
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    out = []
    for ch in text:
        if ch == esc:
            out.append(f"{esc}E{esc}")
        elif ch == header.field_sep:
            out.append(f"{esc}F{esc}")
        elif ch == comp:
            out.append(f"{esc}S{esc}")
        elif ch == rep:
            out.append(f"{esc}R{esc}")
        elif ch == sub:
            out.append(f"{esc}T{esc}")
        elif ch in "\r\n":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def new_control_id() -> str:
    """Unique enough for an ACK: time, process and a counter (MSH-10 is ST 20 in 2.3, 199 later)."""
    return f"HR{time.strftime('%y%m%d%H%M%S')}{os.getpid() % 100000:05d}{next(_control_ids) % 100000:05d}"


def _location(location: str, header: Header) -> str:
    """M's `OBX[2]-3` -> ERR-2 (ERL) `OBX^2^3`; anything else as escaped text in the first component."""
    m = re.fullmatch(r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+))?", location.strip())
    comp = header.encoding_chars[0] if header.encoding_chars else "^"
    if not m:
        return escape(location, header)
    seg, seq, fld = m.group(1), m.group(2) or "1", m.group(3) or ""
    return comp.join(p for p in (seg, seq, fld) if p)


def build_ack(header: Header | None, *, code: str, text: str = "", reason_code: str = "", location: str = "",
              codec: str = "utf-8") -> bytes:
    """ACK^<event>^ACK: sender and receiver swapped, MSH-18 kept, a new MSH-10, MSA-1 code, MSA-2 original ID;
    an ERR segment for a negative ACK. Encoded in the message's own character set."""
    header = header or Header()
    sep = header.field_sep
    comp = header.encoding_chars[0] if header.encoding_chars else "^"
    now = datetime.now(LOCAL_TZ).strftime("%Y%m%d%H%M%S%z")
    event = header.component(9, 2)
    msh = ["MSH", header.encoding_chars,
           header.get(5) or RECEIVING_APPLICATION, header.get(6) or RECEIVING_FACILITY,
           header.get(3), header.get(4), now, "",
           comp.join(["ACK", event, "ACK"]) if event else "ACK",
           new_control_id(), header.get(11) or "P", header.get(12) or "2.5"]
    if header.get(18):
        msh += ["", "", "", "", "", header.get(18)]
    segments = [sep.join(msh)]

    def fits(value: str) -> str:
        try:
            value.encode(codec)
            return value
        except UnicodeEncodeError:  # e.g. Chinese under a declared ASCII: keep the English half
            return value.split(" / ", 1)[-1].encode(codec, "replace").decode(codec)

    segments.append(sep.join(["MSA", code, escape(header.get(10), header), escape(fits(text), header)[:500]]))
    if code != "AA":
        number, name = ERROR_CONDITIONS.get(reason_code, ERROR_CONDITIONS["internal_error"])
        severity = "E"
        err = ["ERR", "", _location(location, header) if location else "",
               comp.join([number, name, "HL70357"]), severity, escape(reason_code, header), "", "",
               escape(fits(text), header)[:250]]
        segments.append(sep.join(err))
    return ("\r".join(segments) + "\r").encode(codec, "replace")


def ack_fields(ack: bytes, codec: str = "utf-8") -> dict[str, str]:
    """MSA-1, MSA-2, MSA-3 and ERR of an ACK we built (tests and the messages page read it)."""
    msg = hl7.parse(ack.decode(codec).replace("\n", "\r"))
    out = {"code": str(msg.segment("MSA")(1)), "control_id": str(msg.segment("MSA")(2)),
           "text": str(msg.segment("MSA")(3)) if len(msg.segment("MSA")) > 3 else ""}
    try:
        err = msg.segment("ERR")
        out["error"] = str(err(5)) if len(err) > 5 else ""
    except KeyError:
        out["error"] = ""
    return out


# --- the path of one message -------------------------------------------------------------------------

class Refused(Exception):
    """This payload cannot be taken: answered with a negative ACK and kept as a dead letter."""

    def __init__(self, code: str, reason: str, *, ack: str = "AR", location: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.ack = ack
        self.location = location


@dataclass
class Decoded:
    header: Header | None
    charset: str = "UTF-8"
    codec: str = "utf-8"
    message: Any = None  # hl7.Message
    facility: str = ""
    application: str = ""
    control_id: str = ""
    message_type: str = ""


@dataclass
class Outcome:
    """What happened to a payload: the ACK bytes and the row that keeps it."""

    ack: bytes
    ack_code: str
    message_id: int | None = None
    dead_letter_id: int | None = None
    duplicate: bool = False
    reason_code: str = ""
    reason: str = ""


def decode(raw: bytes) -> Decoded:
    """Header, charset and the parsed message; raises Refused with what is wrong."""
    header = read_header(raw)
    if header is None:
        raise Refused("malformed", "不是 HL7 消息：缺少 MSH 段 / not an HL7 message: no MSH segment")
    result = Decoded(header=header, facility=header.component(4)[:60], application=header.component(3)[:60],
                     control_id=header.get(10).strip()[:64], message_type=header.message_type[:20])
    charset = resolve_charset(header.get(18))
    if charset is None:
        result.charset = header.get(18)[:20]
        raise Refused("bad_charset", f"不支持的字符集 {header.get(18)!r} / unsupported character set (MSH-18)",
                      location="MSH-18")
    result.charset, result.codec = charset
    try:
        text = raw.decode(result.codec)
    except UnicodeDecodeError as exc:
        raise Refused("bad_charset", f"字节不符合声明的字符集 {result.charset}（第 {exc.start} 字节）/ bytes do not "
                      f"decode as the declared character set {result.charset} (at byte {exc.start})",
                      location="MSH-18") from exc
    text = text.lstrip("\ufeff \t\r\n").replace("\r\n", "\r").replace("\n", "\r")
    result.header = header = read_header(text.encode("utf-8")) or header  # MSH-5/6 may hold Chinese names
    try:
        message = hl7.parse(text)
        message.segment("MSH")
    except Exception as exc:  # noqa: BLE001 - python-hl7 raises several kinds on broken text
        raise Refused("malformed", f"无法解析 HL7 消息 / cannot parse the HL7 message: {exc}"[:300]) from exc
    if not result.control_id:
        raise Refused("missing_field", "缺少消息控制号 MSH-10 / message control ID (MSH-10) is missing",
                      location="MSH-10")
    if not header.component(9, 1):
        raise Refused("missing_field", "缺少消息类型 MSH-9 / message type (MSH-9) is missing", location="MSH-9")
    if not result.facility:
        raise Refused("unknown_sender", "缺少发送机构 MSH-4 / sending facility (MSH-4) is missing",
                      location="MSH-4")
    result.message = message
    return result


def find_sender(db: Session, *, facility: str, application: str) -> Hl7Sender | None:
    """The active registered sender for MSH-4 (and MSH-3 when the registry names an application)."""
    sender = db.scalar(select(Hl7Sender).where(Hl7Sender.facility == facility))
    if sender is None or not sender.is_active:
        return None
    if sender.application and sender.application != application:
        return None
    return sender


def _actor(db: Session, sender: Hl7Sender | None, facility: str, peer: str) -> audit.Actor:
    host = peer.rsplit(":", 1)[0] if peer else ""
    user = db.get(User, sender.interface_user_id) if sender is not None and sender.interface_user_id else None
    if user is not None:
        return audit.Actor(user_id=user.id, username=user.username, role=str(user.role),
                           organisation_id=user.organisation_id, client_address=host)
    return audit.Actor(username=f"hl7:{facility}"[:60] if facility else "hl7",
                       organisation_id=sender.organisation_id if sender else None, client_address=host)


def _existing(db: Session, sender_id: int, control_id: str) -> Hl7Message | None:
    return db.scalar(select(Hl7Message).where(Hl7Message.sender_id == sender_id,
                                              Hl7Message.control_id == control_id))


def _dead_letter(db: Session, *, raw: bytes, peer: str, decoded: Decoded | None, refused: Refused,
                 sender: Hl7Sender | None) -> Hl7DeadLetter:
    """Keep the payload whole with its reason and audit the refusal, in the caller's transaction. The same bytes
    refused again for the same reason while the first is still open are kept once."""
    facility = decoded.facility if decoded else ""
    control_id = decoded.control_id if decoded else ""
    same = db.scalars(select(Hl7DeadLetter).where(
        Hl7DeadLetter.state == "open", Hl7DeadLetter.sender_facility == facility,
        Hl7DeadLetter.control_id == control_id, Hl7DeadLetter.reason_code == refused.code)).all()
    for row in same:
        if row.raw == raw:
            return row
    row = Hl7DeadLetter(peer=peer[:80], sender_facility=facility, control_id=control_id,
                        message_type=decoded.message_type if decoded else "",
                        charset=(decoded.charset if decoded else "")[:20], raw=raw, reason_code=refused.code[:40],
                        reason=refused.reason, ack_code=refused.ack)
    db.add(row)
    db.flush()
    audit.record(db, actor=_actor(db, sender, facility, peer), action="hl7.receive", outcome="refused",
                 resource=f"hl7_dead_letter:{row.id}",
                 detail={"facility": facility, "control_id": control_id, "message_type": row.message_type,
                         "reason_code": refused.code, "ack": refused.ack, "bytes": len(raw)})
    organisation_id = sender.organisation_id if sender else db.scalar(
        select(Hl7Sender.organisation_id).where(Hl7Sender.facility == facility)) if facility else None
    if organisation_id is not None:  # open dead-letter pages of that organisation's admins refresh
        live.publish(db, topic=live_topic(organisation_id), event={"type": "hl7.dead_letter", "id": row.id})
    return row


def live_topic(organisation_id: int) -> str:
    from healthrelay.notifications.service import org_topic

    return org_topic(organisation_id)


def process(db: Session, raw: bytes, *, peer: str, keep_dead_letter: bool = True) -> Outcome:
    """The whole path of one payload in the caller's transaction (the caller commits). With
    `keep_dead_letter=False` (a replay) a refusal raises `Refused` instead of storing a new dead letter."""
    decoded: Decoded | None = None
    sender: Hl7Sender | None = None
    try:
        try:
            decoded = decode(raw)
        except Refused:
            decoded = _partial(raw)
            raise
        sender = find_sender(db, facility=decoded.facility, application=decoded.application)
        if sender is None:
            raise Refused("unknown_sender", f"未登记或已停用的发送机构 {decoded.facility} / unknown or disabled "
                          f"sending facility (MSH-4) {decoded.facility}", location="MSH-4")
        from healthrelay.hl7.mapping import MessageRejected, apply_message

        take_sqlite_write_lock(db)
        earlier = _existing(db, sender.id, decoded.control_id)
        if earlier is not None:
            return _repeat(earlier, decoded)
        actor = _actor(db, sender, decoded.facility, peer)
        by = db.get(User, sender.interface_user_id) if sender.interface_user_id else None
        try:
            with db.begin_nested():
                row = Hl7Message(sender_id=sender.id, control_id=decoded.control_id,
                                 message_type=decoded.message_type or "?", charset=decoded.charset, raw=raw,
                                 peer=peer[:80])
                db.add(row)
                db.flush()
                detail = apply_message(db, message=decoded.message, sender=sender, by=by, message_id=row.id)
        except MessageRejected as exc:
            raise Refused(exc.code, exc.reason, ack=getattr(exc, "ack", "AE") or "AE",
                          location=getattr(exc, "location", "") or "") from exc
        except DomainError as exc:  # a rule of the results/patients services the mapping did not translate
            fields = "; ".join(f"{e.get('field')}: {e.get('message') or e.get('code', '')}" for e in exc.field_errors)
            raise Refused(exc.code, f"{exc.message} {fields}".strip()[:500], ack="AE") from exc
        row.detail = {k: list(v) for k, v in (detail or {}).items()}
        ack = build_ack(decoded.header, code="AA", codec=decoded.codec)
        row.ack_code = "AA"
        row.ack_text = ack.decode(decoded.codec)
        audit.record(db, actor=actor, action="hl7.receive", resource=f"hl7_message:{row.id}",
                     detail={"facility": decoded.facility, "control_id": decoded.control_id,
                             "message_type": row.message_type, "created": {k: len(v) for k, v in row.detail.items()}})
        db.flush()
        return Outcome(ack=ack, ack_code="AA", message_id=row.id)
    except Refused as refused:
        if not keep_dead_letter:
            raise
        header = decoded.header if decoded else None
        codec = decoded.codec if decoded else "utf-8"
        dead = _dead_letter(db, raw=raw, peer=peer, decoded=decoded, refused=refused, sender=sender)
        ack = build_ack(header, code=refused.ack, text=refused.reason, reason_code=refused.code,
                        location=refused.location, codec=codec)
        return Outcome(ack=ack, ack_code=refused.ack, dead_letter_id=dead.id, reason_code=refused.code,
                       reason=refused.reason)


def _partial(raw: bytes) -> Decoded:
    """What can be read of a payload that did not decode or parse: for the dead letter and the ACK."""
    header = read_header(raw)
    if header is None:
        return Decoded(header=None, charset="", codec="utf-8")
    charset = resolve_charset(header.get(18))
    label, codec = charset if charset else (header.get(18)[:20], "utf-8")
    if charset:  # re-read the header fields in the declared charset where they decode
        first = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
        try:
            first.decode(codec)
            header = read_header(first.decode(codec).encode("utf-8")) or header
        except UnicodeDecodeError:
            pass
    return Decoded(header=header, charset=label, codec=codec, facility=header.component(4)[:60],
                   application=header.component(3)[:60], control_id=header.get(10).strip()[:64],
                   message_type=header.message_type[:20])


def _repeat(earlier: Hl7Message, decoded: Decoded) -> Outcome:
    """A control ID already taken from this sender: the same ACK again, nothing stored."""
    log.info("HL7 %s from %s repeated: answered with the stored ACK", decoded.control_id, decoded.facility)
    try:
        ack = earlier.ack_text.encode(decoded.codec) if earlier.ack_text else b""
    except UnicodeEncodeError:
        ack = b""
    if not ack:
        ack = build_ack(decoded.header, code=earlier.ack_code or "AA", codec=decoded.codec)
    return Outcome(ack=ack, ack_code=earlier.ack_code or "AA", message_id=earlier.id, duplicate=True)


def handle_bytes(db_factory: sessionmaker[Session], raw: bytes, *, peer: str) -> bytes:
    """One MLLP payload in, the ACK bytes out. The message row or the dead letter is committed before this
    returns, so an ACK is only sent for something durably stored; nothing here raises."""
    return handle(db_factory, raw, peer=peer).ack


def handle(db_factory: sessionmaker[Session], raw: bytes, *, peer: str) -> Outcome:
    """`handle_bytes` with the outcome (benchmarks and tests read which row keeps the payload)."""
    for attempt in range(3):
        db = db_factory()
        try:
            outcome = process(db, raw, peer=peer)
            db.commit()
            return outcome
        except IntegrityError:
            # The same (sender, control ID) committed by another connection in the meantime: the next
            # attempt finds it and answers its ACK.
            db.rollback()
            if attempt == 2:
                log.exception("HL7 payload from %s kept colliding", peer)
        except Exception:  # noqa: BLE001 - never a crashed connection: keep the payload and answer AE
            db.rollback()
            log.exception("HL7 payload from %s failed", peer)
            break
        finally:
            db.close()
    return _internal_error(db_factory, raw, peer=peer)


def _internal_error(db_factory: sessionmaker[Session], raw: bytes, *, peer: str) -> Outcome:
    refused = Refused("internal_error", "内部错误，已保留消息待管理员处理 / internal error; the message is kept for an "
                      "administrator", ack="AE")
    decoded = _partial(raw)
    db = db_factory()
    try:
        dead = _dead_letter(db, raw=raw, peer=peer, decoded=decoded, refused=refused, sender=None)
        db.commit()
        dead_id: int | None = dead.id
    except Exception:  # noqa: BLE001 - the database itself is failing: AE tells the sender to send again
        db.rollback()
        log.exception("could not keep a failed HL7 payload from %s", peer)
        dead_id = None
    finally:
        db.close()
    ack = build_ack(decoded.header, code="AE", text=refused.reason, reason_code=refused.code, codec=decoded.codec)
    return Outcome(ack=ack, ack_code="AE", dead_letter_id=dead_id, reason_code=refused.code, reason=refused.reason)


# --- who may see and do what ----------------------------------------------------------------------

def admin_scope(user: User) -> int | None:
    """The organisation whose HL7 traffic an admin sees: None means all (the alliance admin)."""
    if user.role == Role.ALLIANCE_ADMIN:
        return None
    if user.role == Role.ORG_ADMIN and user.organisation_id is not None:
        return user.organisation_id
    raise AccessDenied("只有管理员可以管理 HL7 接口 / only administrators manage the HL7 interface")


def _facilities_of(db: Session, organisation_id: int) -> list[str]:
    return list(db.scalars(select(Hl7Sender.facility).where(Hl7Sender.organisation_id == organisation_id)))


def _admin_actor(user: User, client_address: str = "") -> audit.Actor:
    return audit.Actor(user_id=user.id, username=user.username, role=str(user.role),
                       organisation_id=user.organisation_id, client_address=client_address)


# --- the senders registry ---------------------------------------------------------------------------

FACILITY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,60}$")


def list_senders(db: Session, *, admin: User) -> list[Hl7Sender]:
    scope = admin_scope(admin)
    query = select(Hl7Sender).order_by(Hl7Sender.facility)
    if scope is not None:
        query = query.where(Hl7Sender.organisation_id == scope)
    return list(db.scalars(query))


def register_sender(db: Session, *, facility: str, organisation_id: int, application: str = "",
                    interface_user_id: int | None = None, note: str = "", by: User | None,
                    client_address: str = "") -> Hl7Sender:
    """Allow a member's system to send: its MSH-4 (and optionally MSH-3), the organisation it speaks for."""
    if by is not None:
        scope = admin_scope(by)
        if scope is not None and scope != organisation_id:
            raise AccessDenied("只能为本机构登记发送系统 / you can register senders for your own organisation only")
    facility, application, note = facility.strip(), application.strip(), note.strip()
    problems = []
    if not FACILITY_RE.match(facility):
        problems.append(field_error("facility", "MSH-4: 1-60 letters, digits, _ . -"))
    if application and not FACILITY_RE.match(application):
        problems.append(field_error("application", "MSH-3: 1-60 letters, digits, _ . -"))
    if len(note) > 200:
        problems.append(field_error("note", "at most 200 characters"))
    if db.get(Organisation, organisation_id) is None:
        problems.append(field_error("organisation_id", "unknown organisation"))
    if interface_user_id is not None:
        user = db.get(User, interface_user_id)
        if user is None or user.organisation_id != organisation_id:
            problems.append(field_error("interface_user_id", "not an account of that organisation"))
    if problems:
        raise InvalidInput("发送系统信息有误 / the sender's details are invalid", field_errors=problems)
    if db.scalar(select(Hl7Sender.id).where(Hl7Sender.facility == facility)) is not None:
        raise Conflict(f"发送机构 {facility} 已登记 / sending facility {facility} is already registered",
                       field_errors=[field_error("facility", "already registered")])
    if interface_user_id is None:
        interface_user_id = _new_interface_account(db, facility=facility, organisation_id=organisation_id).id
    sender = Hl7Sender(facility=facility, application=application, organisation_id=organisation_id,
                       interface_user_id=interface_user_id, note=note)
    db.add(sender)
    db.flush()
    actor = _admin_actor(by, client_address) if by else audit.Actor(username="system")
    audit.record(db, actor=actor, action="hl7.sender.register", resource=f"hl7_sender:{sender.id}",
                 detail={"facility": facility, "application": application, "organisation_id": organisation_id})
    return sender


def _new_interface_account(db: Session, *, facility: str, organisation_id: int) -> User:
    """The account the audit names for what a sending system writes (its registrations through ADT); nobody
    signs in with it: the password is random and never shown."""
    username = f"hl7.{facility.lower()}"[:50]
    taken = db.scalar(select(User).where(User.username == username))
    if taken is not None and taken.organisation_id == organisation_id:
        return taken
    return create_user(db, username=username if taken is None else f"{username}.{organisation_id}", password="",
                       hashed_password=hash_password(secrets.token_urlsafe(32)), role=Role.CLINICIAN,
                       display_name=f"HL7 接口 {facility} / HL7 interface", organisation_id=organisation_id)


def set_sender_active(db: Session, *, sender_id: int, active: bool, by: User, client_address: str = "") -> Hl7Sender:
    """Disable (or enable again) a sender: its messages are refused as unknown while disabled."""
    sender = db.get(Hl7Sender, sender_id)
    scope = admin_scope(by)
    if sender is None or (scope is not None and sender.organisation_id != scope):
        raise NotFound("没有这个发送系统 / no such sender")
    if sender.is_active != active:
        sender.is_active = active
        audit.record(db, actor=_admin_actor(by, client_address),
                     action="hl7.sender.enable" if active else "hl7.sender.disable",
                     resource=f"hl7_sender:{sender.id}", detail={"facility": sender.facility})
        db.flush()
    return sender


# --- messages and dead letters ---------------------------------------------------------------------

def list_messages(db: Session, *, admin: User, limit: int = 50, before_id: int | None = None,
                  message_type: str = "") -> list[tuple[Hl7Message, Hl7Sender]]:
    scope = admin_scope(admin)
    query = (select(Hl7Message, Hl7Sender).join(Hl7Sender, Hl7Sender.id == Hl7Message.sender_id)
             .order_by(Hl7Message.id.desc()).limit(max(1, min(limit, 500))))
    if scope is not None:
        query = query.where(Hl7Sender.organisation_id == scope)
    if before_id:
        query = query.where(Hl7Message.id < before_id)
    if message_type:
        query = query.where(Hl7Message.message_type == message_type)
    return [(m, s) for m, s in db.execute(query)]


def list_dead_letters(db: Session, *, admin: User, state: str = "open", limit: int = 50,
                      before_id: int | None = None) -> list[Hl7DeadLetter]:
    scope = admin_scope(admin)
    if state and state not in DEAD_LETTER_STATES:
        raise InvalidInput("未知状态 / unknown state",
                           field_errors=[field_error("state", "|".join(DEAD_LETTER_STATES))])
    query = select(Hl7DeadLetter).order_by(Hl7DeadLetter.id.desc()).limit(max(1, min(limit, 500)))
    if state:
        query = query.where(Hl7DeadLetter.state == state)
    if before_id:
        query = query.where(Hl7DeadLetter.id < before_id)
    if scope is not None:
        query = query.where(Hl7DeadLetter.sender_facility.in_(_facilities_of(db, scope)))
    return list(db.scalars(query))


def get_dead_letter(db: Session, *, dead_letter_id: int, admin: User) -> Hl7DeadLetter:
    row = db.get(Hl7DeadLetter, dead_letter_id)
    scope = admin_scope(admin)
    if row is None or (scope is not None and row.sender_facility not in _facilities_of(db, scope)):
        raise NotFound("没有这条死信 / no such dead letter")
    return row


def decoded_text(row: Hl7DeadLetter | Hl7Message) -> str:
    """The payload as text for reading: in its charset where it decodes, undecodable bytes shown as \\xNN;
    segments one per line."""
    charset = resolve_charset(row.charset or "")
    codec = charset[1] if charset else "utf-8"
    text = row.raw.decode(codec, "backslashreplace")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def replay(db: Session, *, dead_letter_id: int, by: User, client_address: str = "") -> Hl7Message:
    """Run a dead letter through the same path again (say after its patient was registered). Success marks it
    replayed and links the message; another refusal is raised with its reason and leaves it open."""
    row = get_dead_letter(db, dead_letter_id=dead_letter_id, admin=by)
    if row.state != "open":
        raise Conflict(f"这条死信已{'重放' if row.state == 'replayed' else '处理'} / this dead letter is already "
                       f"{row.state}")
    decoded = _partial(row.raw)
    sender = (find_sender(db, facility=decoded.facility, application=decoded.application)
              if decoded.facility else None)
    if sender is not None and decoded.control_id and _existing(db, sender.id, decoded.control_id) is not None:
        raise Conflict(f"控制号 {decoded.control_id} 已接收过，请作废这条死信 / control ID {decoded.control_id} was "
                       "already taken; discard this dead letter")
    try:
        outcome = process(db, row.raw, peer=row.peer, keep_dead_letter=False)
    except Refused as exc:
        raise InvalidInput(f"重放仍被拒绝：{exc.reason}", code=exc.code,
                           field_errors=[field_error("raw", f"{exc.code}: {exc.reason}")]) from exc
    message = db.get(Hl7Message, outcome.message_id)
    assert message is not None
    row.state = "replayed"
    row.handled_at = utcnow()
    row.handled_by_user_id = by.id
    row.replay_message_id = message.id
    audit.record(db, actor=_admin_actor(by, client_address), action="hl7.dead_letter.replay",
                 resource=f"hl7_dead_letter:{row.id}", detail={"message_id": message.id,
                                                               "control_id": row.control_id})
    db.flush()
    return message


def discard(db: Session, *, dead_letter_id: int, by: User, note: str, client_address: str = "") -> Hl7DeadLetter:
    """Close a dead letter without taking it (a test message, superseded by a corrected resend); why is kept."""
    row = get_dead_letter(db, dead_letter_id=dead_letter_id, admin=by)
    note = note.strip()
    if not note:
        raise InvalidInput("请写明作废原因 / say why it is discarded", field_errors=[field_error("note", "required")])
    if len(note) > 1000:
        raise InvalidInput("原因过长 / the note is too long", field_errors=[field_error("note", "at most 1000")])
    if row.state != "open":
        raise Conflict(f"这条死信已处理 / this dead letter is already {row.state}")
    row.state = "discarded"
    row.handled_at = utcnow()
    row.handled_by_user_id = by.id
    row.handled_note = note
    audit.record(db, actor=_admin_actor(by, client_address), action="hl7.dead_letter.discard",
                 resource=f"hl7_dead_letter:{row.id}", detail={"note": note[:300], "control_id": row.control_id})
    db.flush()
    return row
