"""Booking a clinic session: places, the waitlist, cancellation, attendance and no-shows, reminders.

Places are taken by one conditional UPDATE (`booked_count = booked_count + 1 WHERE booked_count < capacity`),
so however many requests arrive at once — several app processes on PostgreSQL, or threads queueing for
SQLite's write lock — a session never holds more bookings than places. A request that finds it full takes a
waitlist place the same way, or is refused with 409 `session_full`. A freed place goes to the earliest
waitlisted resident, who is told. One row per resident and session (a unique key): booking twice is a 409.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core import timers
from healthrelay.core.db import LOCAL_TZ, take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Organisation
from healthrelay.notifications import service as notifications
from healthrelay.outreach.models import BOOKABLE_KINDS, OutreachBooking, OutreachSession
from healthrelay.outreach.service import get_session, may_staff_session, temporary_number
from healthrelay.patients.models import Patient

REMIND_KIND = "outreach.remind"
REMIND_HOURS_BEFORE = 24
ACTIVE = ("booked", "waitlisted")


def booking_number(day: Any, booking_id: int) -> str:
    """YY20261205-0042 (预约): the day it was made and its id."""
    return f"YY{day:%Y%m%d}-{booking_id:04d}"


def _err(name: str, zh: str, en: str) -> dict[str, Any]:
    return field_error(name, f"{zh} / {en}")


def _patient_for(db: Session, *, by: User, patient_id: int | None, client_address: str) -> tuple[int, str]:
    """Whom the booking is for: a resident books for themself; staff for a resident they care for."""
    if by.role == Role.PATIENT:
        if by.patient_id is None:
            raise AccessDenied("您的账号尚未关联居民档案，请到卫生院登记 / your account is not linked to a "
                               "resident record yet; ask your health centre")
        if patient_id is not None and access.resolve_patient(db, patient_id).id != by.patient_id:
            raise AccessDenied("只能为自己预约 / you can book only for yourself")
        return by.patient_id, "self"
    if by.role not in (Role.CLINICIAN, Role.ORG_ADMIN, Role.ALLIANCE_ADMIN):
        raise AccessDenied("此账号不能预约 / this account cannot book")
    if patient_id is None:
        raise InvalidInput("请选择居民 / choose the resident", field_errors=[_err("patient_id", "必填", "required")])
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=by, patient_id=patient.id, action="outreach.book",
                                  client_address=client_address)
    return patient.id, "clinic"


def _open_for_booking(session: OutreachSession) -> None:
    if session.kind not in BOOKABLE_KINDS:
        raise InvalidInput("只有门诊可以预约 / only clinic sessions take bookings",
                           field_errors=[_err("session_id", "该安排不接受预约", "this session takes no bookings")])
    if session.status != "published":
        raise Conflict("该安排已取消或结束，不能预约 / the session is cancelled or over", code="session_closed")
    if session.starts_at <= utcnow():
        raise Conflict("该门诊已开始或已过去，不能预约 / the session has started or is past",
                       code="session_past")


def book(db: Session, *, by: User, session_id: int, patient_id: int | None = None, phone: str = "",
         note: str = "", client_address: str = "") -> OutreachBooking:
    """Book a place, else a waitlist place, else refuse with 409 `session_full`."""
    take_sqlite_write_lock(db)
    session = get_session(db, session_id)
    _open_for_booking(session)
    pid, via = _patient_for(db, by=by, patient_id=patient_id, client_address=client_address)
    phone = phone.strip()
    if phone and (len(phone) > 20 or not phone.replace("-", "").replace(" ", "").isdigit()):
        raise InvalidInput("手机号格式不对 / the phone number is not valid",
                           field_errors=[_err("phone", "只能是数字", "digits only")])
    existing = db.scalars(select(OutreachBooking).where(OutreachBooking.session_id == session.id,
                                                        OutreachBooking.patient_id == pid)).first()
    if existing is not None and existing.status in ACTIVE:
        raise Conflict(f"已预约（{existing.number}，{_status_zh(existing.status)}） / already booked "
                       f"({existing.number}, {existing.status})", code="already_booked")
    if existing is not None and existing.status != "cancelled":
        raise Conflict("该居民已就诊或已记爽约 / this resident was already seen or marked absent",
                       code="already_booked")
    status = _take_place(db, session)
    now = utcnow()
    if existing is not None:  # booking again after cancelling reuses the row
        row = existing
        row.status, row.created_at, row.cancelled_at, row.cancel_reason = status, now, None, ""
        row.booked_by_user_id, row.via, row.phone, row.note = by.id, via, phone or row.phone, note.strip()[:300]
        row.promoted_at = row.marked_at = row.reminded_at = None
        db.flush()
    else:
        row = OutreachBooking(number=temporary_number(), session_id=session.id, patient_id=pid, status=status,
                              booked_by_user_id=by.id, via=via, phone=phone, note=note.strip()[:300], created_at=now)
        try:
            with db.begin_nested():
                db.add(row)
        except IntegrityError:  # the same resident in another request at this moment
            raise Conflict("该居民已预约此门诊 / this resident already booked this session",
                           code="already_booked") from None
        row.number = booking_number(now.astimezone(LOCAL_TZ).date(), row.id)
    audit.record(db, actor=access.actor_of(by, client_address), action=f"outreach.{status}", patient_id=pid,
                 resource=f"outreach_booking:{row.id}", detail={"session": session.number, "via": via})
    _tell_booked(db, session=session, booking=row, booked_by=by)
    if status == "booked":
        _schedule_reminder(db, session=session, booking=row)
    return row


def _take_place(db: Session, session: OutreachSession) -> str:
    """The conditional UPDATEs: a place if one is left, else a waitlist place, else 409."""
    t = OutreachSession.__table__
    took = db.execute(update(t).where(t.c.id == session.id, t.c.status == "published",
                                      t.c.booked_count < t.c.capacity)
                      .values(booked_count=t.c.booked_count + 1))
    if took.rowcount == 1:  # type: ignore[attr-defined]
        return "booked"
    waited = db.execute(update(t).where(t.c.id == session.id, t.c.status == "published",
                                        t.c.waitlist_count < t.c.waitlist_limit)
                        .values(waitlist_count=t.c.waitlist_count + 1))
    if waited.rowcount == 1:  # type: ignore[attr-defined]
        return "waitlisted"
    raise Conflict("号源已满，候补也已满 / the session is full and so is its waitlist", code="session_full")


def _status_zh(status: str) -> str:
    return {"booked": "已预约", "waitlisted": "候补中", "cancelled": "已取消", "attended": "已就诊",
            "no_show": "爽约"}.get(status, status)


def get_booking(db: Session, booking_id: int) -> OutreachBooking:
    row = db.get(OutreachBooking, booking_id)
    if row is None:
        raise NotFound("没有这个预约 / no such booking")
    return row


def _may_act_for(db: Session, by: User, booking: OutreachBooking, session: OutreachSession) -> bool:
    if by.role == Role.PATIENT:
        return by.patient_id == booking.patient_id
    return booking.booked_by_user_id == by.id or may_staff_session(db, by, session)


def cancel(db: Session, *, by: User, booking_id: int, reason: str = "", client_address: str = "") -> OutreachBooking:
    """Cancel a place or a waitlist entry; a freed place goes to the earliest waitlisted resident."""
    take_sqlite_write_lock(db)
    row = get_booking(db, booking_id)
    session = get_session(db, row.session_id)
    if not _may_act_for(db, by, row, session):
        raise AccessDenied("您不能取消这个预约 / you may not cancel this booking")
    if row.status not in ACTIVE:
        raise Conflict(f"该预约{_status_zh(row.status)}，不能取消 / the booking is {row.status}", code="booking_closed")
    if session.starts_at <= utcnow():
        raise Conflict("门诊已开始，不能取消；请由医生记录爽约 / the session has started; the clinic records a "
                       "no-show instead", code="session_past")
    was = row.status
    changed = db.execute(update(OutreachBooking).where(OutreachBooking.id == row.id, OutreachBooking.status == was)
                         .values(status="cancelled", cancelled_at=utcnow(), cancel_reason=reason.strip()[:300]))
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("该预约刚被修改，请刷新 / the booking just changed, reload", code="stale")
    t = OutreachSession.__table__
    column = t.c.booked_count if was == "booked" else t.c.waitlist_count
    db.execute(update(t).where(t.c.id == session.id).values({column: column - 1}))
    timers.cancel(db, dedupe_key=f"outreach:booking:{row.id}:remind")
    audit.record(db, actor=access.actor_of(by, client_address), action="outreach.booking_cancelled",
                 patient_id=row.patient_id, resource=f"outreach_booking:{row.id}", detail={"was": was})
    if was == "booked":
        promote_from_waitlist(db, session_id=session.id)
    db.refresh(row)
    return row


def promote_from_waitlist(db: Session, *, session_id: int) -> OutreachBooking | None:
    """Give a free place to the earliest waitlisted resident, if any (each step a conditional UPDATE)."""
    session = get_session(db, session_id)
    db.refresh(session)
    if session.status != "published" or session.starts_at <= utcnow():
        return None
    nxt = db.scalars(select(OutreachBooking).where(OutreachBooking.session_id == session_id,
                                                   OutreachBooking.status == "waitlisted")
                     .order_by(OutreachBooking.created_at, OutreachBooking.id).limit(1)).first()
    if nxt is None:
        return None
    t = OutreachSession.__table__
    took = db.execute(update(t).where(t.c.id == session_id, t.c.booked_count < t.c.capacity)
                      .values(booked_count=t.c.booked_count + 1, waitlist_count=t.c.waitlist_count - 1))
    if took.rowcount != 1:  # type: ignore[attr-defined]
        return None
    db.execute(update(OutreachBooking).where(OutreachBooking.id == nxt.id).values(status="booked",
                                                                                  promoted_at=utcnow()))
    db.refresh(nxt)
    db.refresh(session)
    when = session.starts_at.astimezone(LOCAL_TZ)
    notifications.send(db, user_ids=_people_to_tell(db, nxt), kind="outreach.promoted",
                       title=f"候补成功：{when:%m月%d日 %H:%M} {session.title}",
                       body=f"预约号 {nxt.number}。Your waitlist place became a booking.",
                       link="/outreach/my-bookings", resource=f"outreach_booking:{nxt.id}")
    _schedule_reminder(db, session=session, booking=nxt)
    return nxt


def cancel_all_for_session(db: Session, *, session: OutreachSession, reason: str) -> int:
    """The session was cancelled: every active booking is cancelled and its resident told."""
    rows = list(db.scalars(select(OutreachBooking).where(OutreachBooking.session_id == session.id,
                                                         OutreachBooking.status.in_(ACTIVE))))
    when = session.starts_at.astimezone(LOCAL_TZ)
    for row in rows:
        row.status, row.cancelled_at, row.cancel_reason = "cancelled", utcnow(), f"门诊取消：{reason}"[:300]
        timers.cancel(db, dedupe_key=f"outreach:booking:{row.id}:remind")
        notifications.send(db, user_ids=_people_to_tell(db, row), kind="outreach.cancelled",
                           title=f"门诊取消：{when:%m月%d日 %H:%M} {session.title}",
                           body=f"原因：{reason}。The session was cancelled.", link="/outreach/my-bookings",
                           resource=f"outreach_booking:{row.id}")
    session.booked_count = 0
    session.waitlist_count = 0
    db.flush()
    return len(rows)


def mark(db: Session, *, by: User, booking_id: int, attended: bool, client_address: str = "") -> OutreachBooking:
    """Record that a booked resident came, or did not (a no-show); only once the session has started."""
    row = get_booking(db, booking_id)
    session = get_session(db, row.session_id)
    if by.role == Role.PATIENT or not may_staff_session(db, by, session):
        raise AccessDenied("只有门诊的医生或医务科可以记录 / only the session's staff record attendance")
    if session.starts_at > utcnow():
        raise Conflict("门诊尚未开始 / the session has not started yet", code="session_not_started")
    if row.status not in ("booked", "attended", "no_show"):
        raise Conflict(f"该预约{_status_zh(row.status)} / the booking is {row.status}", code="booking_closed")
    row.status = "attended" if attended else "no_show"
    row.marked_at = utcnow()
    db.flush()
    audit.record(db, actor=access.actor_of(by, client_address), action=f"outreach.{row.status}",
                 patient_id=row.patient_id, resource=f"outreach_booking:{row.id}")
    return row


# ---------------------------------------------------------------------------- who hears, and when

def _people_to_tell(db: Session, booking: OutreachBooking) -> list[int]:
    """The resident's own accounts (inbox, SMS, WeChat); if none, the clinic user who booked, to phone them."""
    own = list(db.scalars(select(User.id).where(User.patient_id == booking.patient_id, User.is_active.is_(True))))
    if own:
        return own
    return [booking.booked_by_user_id] if booking.booked_by_user_id else []


def _tell_booked(db: Session, *, session: OutreachSession, booking: OutreachBooking, booked_by: User) -> None:
    when = session.starts_at.astimezone(LOCAL_TZ)
    host = db.get(Organisation, session.host_organisation_id)
    word = "预约成功" if booking.status == "booked" else "已进入候补"
    notifications.send(db, user_ids=_people_to_tell(db, booking), kind=f"outreach.{booking.status}",
                       title=f"{word}：{when:%m月%d日 %H:%M} {host.name if host else ''} {session.title}",
                       body=f"预约号 {booking.number}。{'Booked' if booking.status == 'booked' else 'Waitlisted'}.",
                       link="/outreach/my-bookings", resource=f"outreach_booking:{booking.id}")


def _schedule_reminder(db: Session, *, session: OutreachSession, booking: OutreachBooking) -> None:
    due = session.starts_at - timedelta(hours=REMIND_HOURS_BEFORE)
    if due <= utcnow():
        due = utcnow()  # booked within a day of the session: remind now (the confirmation is not enough)
        if session.starts_at - utcnow() < timedelta(hours=2):
            return
    timers.schedule(db, kind=REMIND_KIND, due_at=due, payload={"booking_id": booking.id},
                    dedupe_key=f"outreach:booking:{booking.id}:remind")


@timers.handler(REMIND_KIND)
def remind(db: Session, payload: dict[str, Any]) -> None:
    """The day before: remind a resident still booked of a session still on."""
    row = db.get(OutreachBooking, int(payload["booking_id"]))
    if row is None or row.status != "booked" or row.reminded_at is not None:
        return
    session = db.get(OutreachSession, row.session_id)
    if session is None or session.status != "published":
        return
    when = session.starts_at.astimezone(LOCAL_TZ)
    host = db.get(Organisation, session.host_organisation_id)
    notifications.send(db, user_ids=_people_to_tell(db, row), kind="outreach.reminder",
                       title=f"就诊提醒：{when:%m月%d日 %H:%M} {host.name if host else ''} {session.title}",
                       body=f"预约号 {row.number}，请带身份证和医保卡。Reminder of your booking.",
                       link="/outreach/my-bookings", resource=f"outreach_booking:{row.id}")
    row.reminded_at = utcnow()


# ---------------------------------------------------------------------------- reading

@dataclass
class BookingRow:
    booking: OutreachBooking
    patient_name: str
    masked_phone: str
    waitlist_position: int | None


def session_bookings(db: Session, *, by: User, session: OutreachSession, limit: int = 500) -> list[BookingRow]:
    """The session's list for its staff (names shown: booking makes a care relationship with the host)."""
    from healthrelay.patients.identity import mask_phone

    if not may_staff_session(db, by, session):
        raise AccessDenied("只有门诊的医生或医务科可以查看预约名单 / only the session's staff see its bookings")
    rows = db.execute(select(OutreachBooking, Patient).join(Patient, Patient.id == OutreachBooking.patient_id)
                      .where(OutreachBooking.session_id == session.id)
                      .order_by(OutreachBooking.status != "booked", OutreachBooking.created_at, OutreachBooking.id)
                      .limit(limit)).all()
    out: list[BookingRow] = []
    position = 0
    for b, p in rows:
        if b.status == "waitlisted":
            position += 1
        out.append(BookingRow(booking=b, patient_name=p.name, masked_phone=mask_phone(b.phone or p.phone or ""),
                              waitlist_position=position if b.status == "waitlisted" else None))
    audit.record(db, actor=access.actor_of(by), action="outreach.bookings_read",
                 resource=f"outreach_session:{session.id}", detail={"rows": len(out)})
    return out


def waitlist_position(db: Session, booking: OutreachBooking) -> int | None:
    if booking.status != "waitlisted":
        return None
    ahead = db.scalar(select(func.count()).select_from(OutreachBooking).where(
        OutreachBooking.session_id == booking.session_id, OutreachBooking.status == "waitlisted",
        (OutreachBooking.created_at < booking.created_at)
        | ((OutreachBooking.created_at == booking.created_at) & (OutreachBooking.id < booking.id))))
    return int(ahead or 0) + 1


def my_bookings(db: Session, *, patient_id: int, since: datetime | None = None,
                limit: int = 100) -> list[tuple[OutreachBooking, OutreachSession]]:
    q = select(OutreachBooking, OutreachSession).join(OutreachSession, OutreachSession.id == OutreachBooking.session_id
                                                      ).where(OutreachBooking.patient_id == patient_id)
    if since is not None:
        q = q.where(OutreachSession.starts_at >= since)
    return [(b, s) for b, s in db.execute(q.order_by(OutreachSession.starts_at.desc()).limit(limit)).all()]
