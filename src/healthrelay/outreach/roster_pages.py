"""Roster pages for the planner: propose next month from demand, look at why each session is there, move,
drop or add sessions, publish. Planner-only (403 for anyone else). Rules live in roster.py."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import local_today
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession
from healthrelay.core.errors import DomainError
from healthrelay.core.ids import IdPath, is_id
from healthrelay.directory.models import Organisation
from healthrelay.outreach import roster, service
from healthrelay.web.forms import FormProblems, messages_by_field, reraise_if_access
from healthrelay.web.templating import render, request_locale

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
FormList = Annotated[list[str], Form()]
DONE = ("proposed", "moved", "removed", "added", "published")


def _hosts(db: Session) -> list[Organisation]:
    return list(db.scalars(select(Organisation).where(Organisation.level.in_(roster.HOST_LEVELS))
                           .order_by(Organisation.level, Organisation.name).limit(1000)))


def _parse_month(value: str, problems: FormProblems) -> date | None:
    try:
        year, month = (int(x) for x in value.strip()[:7].split("-"))
        return date(year, month, 1)
    except ValueError:
        problems.add("month", "须为 年-月，如 2026-05 / use YYYY-MM, e.g. 2026-05")
        return None


def _number(value: str, name: str, problems: FormProblems, kind: type = int) -> Any:
    try:
        return kind(value.strip())
    except ValueError:
        problems.add(name, "须为数字 / must be a number")
        return None


def _list_page(request: Request, db: Session, user: User, *, form: dict[str, Any],
               invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    invalid = invalid or {}
    order = ["month", "months_back", "min_patients", "host_ids", "time_limit"]
    return render(request, "outreach/roster_list.html", {
        "rosters": roster.list_rosters(db, by=user), "form": form, "invalid": invalid, "error": error,
        "focus": next((f for f in order if f in invalid), ""), "hosts": _hosts(db)}, status_code=status_code)


@router.get("/outreach/roster")
def roster_list(request: Request, db: DbSession, user: CurrentUser) -> Response:
    service.require_planner(user)
    upcoming = roster.next_month(roster.month_start(local_today()))
    return _list_page(request, db, user, form={"month": upcoming.strftime("%Y-%m"), "months_back": "6",
                                               "host_ids": [], "time_limit": "10",
                                               "min_patients": str(roster.default_min_patients(db))})


@router.post("/outreach/roster", dependencies=[CsrfChecked])
def roster_propose(request: Request, db: DbSession, user: CurrentUser, month: FormText = "",
                   months_back: FormText = "6", time_limit: FormText = "10", min_patients: FormText = "",
                   host_ids: FormList = []) -> Response:  # noqa: B006
    service.require_planner(user)
    form = {"month": month, "months_back": months_back, "host_ids": host_ids, "time_limit": time_limit,
            "min_patients": min_patients}
    try:
        problems = FormProblems()
        first = _parse_month(month, problems)
        back = _number(months_back, "months_back", problems)
        limit = _number(time_limit, "time_limit", problems, float)
        least = _number(min_patients, "min_patients", problems) if min_patients.strip() else None
        hosts = []
        for h in host_ids:
            if is_id(h):
                hosts.append(int(h))
            elif h.strip():
                problems.add("host_ids", "机构编号无效 / not an organisation id")
        problems.raise_if_any()
        assert first is not None
        row = roster.propose(db, by=user, month=first, months_back=back, host_ids=hosts or None, time_limit=limit,
                             min_patients=least)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _list_page(request, db, user, form=form, invalid=messages_by_field(exc.field_errors),
                          error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/outreach/roster/{row.id}?done=proposed", status_code=303)


def _roster_page(request: Request, db: Session, user: User, roster_id: int, *, done: str = "", error: str = "",
                 invalid: dict[str, str] | None = None, target: str = "", status_code: int = 200) -> Response:
    view = roster.roster_view(db, by=user, roster_id=roster_id)
    month = view.roster.month
    days = [month + timedelta(days=n) for n in range((roster.next_month(month) - month).days)]
    return render(request, "outreach/roster.html", {
        "v": view, "done": done if done in DONE else "", "error": error, "invalid": invalid or {},
        "target": target, "month_days": days,
        "cal_hosts": [h for h in view.hosts if any(i.item.host_organisation_id == h[0] for i in view.items)],
        "weekdays": roster.WEEKDAYS_ZH if request_locale(request) == "zh" else roster.WEEKDAYS_EN,
        "all_hosts": _hosts(db),
        "today": local_today()}, status_code=status_code)


@router.get("/outreach/roster/{roster_id}")
def roster_page(request: Request, roster_id: IdPath, db: DbSession, user: CurrentUser, done: str = "") -> Response:
    return _roster_page(request, db, user, roster_id, done=done)


def _refused(request: Request, db: Session, user: User, roster_id: int, exc: DomainError, target: str) -> Response:
    reraise_if_access(exc)
    db.rollback()
    return _roster_page(request, db, user, roster_id, error=exc.message, invalid=messages_by_field(exc.field_errors),
                        target=target, status_code=exc.status_code)


@router.post("/outreach/roster/{roster_id}/items/{item_id}/remove", dependencies=[CsrfChecked])
def item_remove(request: Request, roster_id: IdPath, item_id: IdPath, db: DbSession, user: CurrentUser) -> Response:
    try:
        roster.remove_item(db, by=user, roster_id=roster_id, item_id=item_id)
    except DomainError as exc:
        return _refused(request, db, user, roster_id, exc, f"item-{item_id}")
    return RedirectResponse(f"/outreach/roster/{roster_id}?done=removed#items", status_code=303)


@router.post("/outreach/roster/{roster_id}/items/{item_id}/move", dependencies=[CsrfChecked])
def item_move(request: Request, roster_id: IdPath, item_id: IdPath, db: DbSession, user: CurrentUser,
              session_date: FormText = "", host_organisation_id: FormText = "", start_time: FormText = "") -> Response:
    try:
        problems = FormProblems()
        day = problems.day("session_date", session_date)
        host = problems.opt_int("host_organisation_id", host_organisation_id)
        problems.raise_if_any()
        roster.move_item(db, by=user, roster_id=roster_id, item_id=item_id, session_date=day,
                         host_organisation_id=host, start_time=start_time.strip() or None)
    except DomainError as exc:
        return _refused(request, db, user, roster_id, exc, f"item-{item_id}")
    return RedirectResponse(f"/outreach/roster/{roster_id}?done=moved#item-{item_id}", status_code=303)


@router.post("/outreach/roster/{roster_id}/items", dependencies=[CsrfChecked])
def item_add(request: Request, roster_id: IdPath, db: DbSession, user: CurrentUser, practitioner_id: FormText = "",
             host_organisation_id: FormText = "", session_date: FormText = "", start_time: FormText = "",
             capacity: FormText = "") -> Response:
    try:
        problems = FormProblems()
        person = problems.opt_int("practitioner_id", practitioner_id)
        host = problems.opt_int("host_organisation_id", host_organisation_id)
        day = problems.day("session_date", session_date)
        places = problems.opt_int("capacity", capacity)
        for name, value in (("practitioner_id", person), ("host_organisation_id", host), ("session_date", day)):
            if value is None and not any(e["field"] == name for e in problems.errors):
                problems.add(name, "必填 / required")
        problems.raise_if_any()
        assert person is not None and host is not None and day is not None
        roster.add_item(db, by=user, roster_id=roster_id, practitioner_id=person, host_organisation_id=host,
                        session_date=day, start_time=start_time.strip() or None, capacity=places)
    except DomainError as exc:
        return _refused(request, db, user, roster_id, exc, "add")
    return RedirectResponse(f"/outreach/roster/{roster_id}?done=added#items", status_code=303)


@router.post("/outreach/roster/{roster_id}/publish", dependencies=[CsrfChecked])
def roster_publish(request: Request, roster_id: IdPath, db: DbSession, user: CurrentUser) -> Response:
    try:
        roster.publish(db, by=user, roster_id=roster_id)
    except DomainError as exc:
        return _refused(request, db, user, roster_id, exc, "publish")
    return RedirectResponse(f"/outreach/roster/{roster_id}?done=published", status_code=303)
