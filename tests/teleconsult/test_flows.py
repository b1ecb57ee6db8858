"""What happens after the commit: escalation of overdue reports on durable timers, and the pages that update
live (a reader's worklist, a requester's request page) in a real browser."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.timers import Timer
from healthrelay.notifications.models import Notification
from healthrelay.teleconsult import flows as flows  # noqa: F401 - registers the escalation handler
from healthrelay.teleconsult import service
from healthrelay.teleconsult.models import ConsultDeadline, ConsultEscalation, ConsultState, Priority
from tests.browser import SCREENSHOTS, sign_in
from tests.teleconsult.conftest import Requests, TeleWorld, make_request, move_due_into_past


def _notes(db: Session, user_id: int, kind: str) -> list[Notification]:
    return list(db.execute(select(Notification).where(Notification.user_id == user_id, Notification.kind == kind)
                           .order_by(Notification.id)).scalars())


def _count(db: Session, model: type) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()



@pytest.fixture
def fire() -> Callable[[], int]:
    """Run the due timers like a worker would; returns how many escalation timers fired this time."""
    seen = 0

    def run() -> int:
        nonlocal seen
        timers.run_due(get_sessionmaker(), runner="test")
        with get_sessionmaker()() as s:
            fired = s.execute(select(func.count()).where(Timer.kind == service.ESCALATE_KIND,
                                                         Timer.fired_at.is_not(None))).scalar_one()
        new, seen = fired - seen, fired
        return new

    return run


def test_an_overdue_report_escalates_to_the_head_then_the_medical_affairs_office(
        db: Session, tele: TeleWorld, fire: Callable[[], int]) -> None:
    request = make_request(db, tele, priority=Priority.URGENT)
    service.claim(db, by=tele.trainee, request_id=request.id)
    db.commit()
    assert fire() == 0  # not yet due
    move_due_into_past(db, request)
    assert fire() == 1
    db.expire_all()
    [level1] = db.execute(select(ConsultEscalation).where(ConsultEscalation.request_id == request.id)).scalars()
    assert level1.level == 1 and level1.notified_user_ids == [tele.head.id]
    [note] = _notes(db, tele.head.id, "teleconsult.escalation.1")
    assert note.urgent and request.number in note.title and tele.patient.name not in note.body
    # Level 2 comes half the deadline (2 h → 1 h) after the deadline.
    level2_timer = db.execute(select(Timer).where(Timer.dedupe_key == f"consult:{request.id}:escalate:2")).scalar_one()
    assert level2_timer.due_at == request.report_due_at + timedelta(minutes=60)
    assert fire() == 0
    db.execute(update(Timer).where(Timer.id == level2_timer.id).values(due_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    assert fire() == 1
    db.expire_all()
    levels = {e.level: e.notified_user_ids for e in db.execute(select(ConsultEscalation)).scalars()}
    assert levels == {1: [tele.head.id], 2: [tele.county_admin.id]}
    assert _notes(db, tele.county_admin.id, "teleconsult.escalation.2")
    assert db.execute(select(func.count()).where(AuditEvent.action.like("teleconsult.escalate.%"))).scalar() == 2
    move_due_into_past(db, request)
    assert fire() == 0  # each level once


def test_the_second_escalation_is_never_sooner_than_15_minutes(db: Session, tele: TeleWorld) -> None:
    emergency = make_request(db, tele, priority=Priority.EMERGENCY)  # 30 min: half would be 15
    assert service.second_escalation_at(emergency) - emergency.report_due_at == timedelta(minutes=15)
    db.execute(update(ConsultDeadline).where(ConsultDeadline.priority == "emergency").values(report_minutes=10))
    db.commit()
    quick = make_request(db, tele, priority=Priority.EMERGENCY)
    assert service.second_escalation_at(quick) - quick.report_due_at == timedelta(minutes=15)
    routine = make_request(db, tele, priority=Priority.ROUTINE)
    assert service.second_escalation_at(routine) - routine.report_due_at == timedelta(hours=12)


def test_a_report_before_the_deadline_stops_escalation(db: Session, tele: TeleWorld, requests: Requests,
                                                       fire: Callable[[], int]) -> None:
    request = requests.claimed_senior
    move_due_into_past(db, request)
    service.record_transition(db, request, action="sign", to_state=ConsultState.REPORTED, by=tele.senior)
    move_due_into_past(db, requests.cancelled)
    db.commit()
    assert fire() == 0
    assert _count(db, ConsultEscalation) == 0


def test_a_preliminary_report_still_escalates(db: Session, tele: TeleWorld, requests: Requests,
                                              fire: Callable[[], int]) -> None:
    request = requests.claimed_trainee
    service.record_transition(db, request, action="sign_preliminary", to_state=ConsultState.PRELIMINARY,
                              by=tele.trainee)
    db.commit()
    move_due_into_past(db, request)
    assert fire() == 1
    assert _count(db, ConsultEscalation) == 1


def test_an_escalation_after_restart_finds_the_request_closed_and_does_nothing(
        db: Session, tele: TeleWorld, fire: Callable[[], int]) -> None:
    """A timer that fires although its request was closed meanwhile (cancelled behind its back) is harmless."""
    request = make_request(db, tele)
    move_due_into_past(db, request)
    db.execute(update(service.ConsultRequest).where(service.ConsultRequest.id == request.id)
               .values(state=ConsultState.CANCELLED))
    db.commit()
    assert fire() == 1  # fired, and did nothing
    assert _count(db, ConsultEscalation) == 0


# --- live pages in a real browser ---------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_worklist_shows_a_new_request_live_and_a_claim_by_a_colleague(page: Page, db: Session,
                                                                          tele: TeleWorld) -> None:
    sign_in(page, "yx_senior")
    page.goto("/teleconsult/worklist")
    expect(page.locator("#worklist-empty")).to_be_visible()
    request = make_request(db, tele, priority=Priority.EMERGENCY)
    row = page.locator(f'tr[data-request-id="{request.id}"]')
    expect(row).to_be_visible(timeout=10_000)  # live, well before the 30 s poll
    expect(row).to_contain_text("王*英")
    expect(row).to_contain_text("急诊")
    expect(page.locator("#worklist-count")).to_have_text("1")
    toast = page.get_by_role("alert")
    expect(toast).to_contain_text(request.number)  # an emergency reaches the reader urgently
    page.screenshot(path=str(SCREENSHOTS / "teleconsult-worklist.png"))
    service.claim(db, by=tele.trainee, request_id=request.id)
    db.commit()
    expect(row).to_contain_text("孙医师", timeout=10_000)
    expect(page.locator(f"#claim-{request.id}")).to_have_count(0)
    page.set_viewport_size({"width": 390, "height": 800})
    page.screenshot(path=str(SCREENSHOTS / "teleconsult-worklist-phone.png"), full_page=True)


@pytest.mark.e2e
def test_the_requester_sees_the_answer_live_and_claims_work_from_the_keyboard(page: Page, browser,  # noqa: ANN001
                                                                             live_server: str, db: Session,
                                                                             tele: TeleWorld) -> None:
    request = make_request(db, tele)
    sign_in(page, "town_doc")
    page.goto(f"/teleconsult/{request.id}")
    expect(page.locator("#request-state")).to_contain_text("待接收")
    # The reader, in another browser, claims it with the keyboard only.
    other = browser.new_context(base_url=live_server, viewport={"width": 1366, "height": 768}, locale="zh-CN")
    reader = other.new_page()
    try:
        sign_in(reader, "yx_senior")
        reader.goto(f"/teleconsult/{request.id}")
        reader.locator("#claim-submit").focus()
        reader.keyboard.press("Enter")
        expect(reader.locator("#done")).to_contain_text("已认领")
        expect(reader.locator("#report-link")).to_be_visible()
    finally:
        other.close()
    expect(page.locator("#request-claimed-by")).to_contain_text("钱医师", timeout=10_000)
    expect(page.locator('#request-timeline li[data-action="claim"]')).to_have_count(1)
    page.screenshot(path=str(SCREENSHOTS / "teleconsult-detail-requester.png"), full_page=True)


@pytest.mark.e2e
def test_the_request_form_from_the_keyboard(page: Page, db: Session, tele: TeleWorld) -> None:
    sign_in(page, "town_doc")
    page.goto("/teleconsult/new")
    expect(page.locator("#patient-q")).to_be_focused()
    page.keyboard.type("wxy")
    page.keyboard.press("Enter")
    page.locator(f"#choose-patient-{tele.patient.id}").click()
    expect(page.locator("#centre_id")).to_be_focused()
    page.select_option("#centre_id", str(tele.centre.id))
    page.fill("#clinical_question", "胸片：肺部感染？")
    page.locator("#clinical_question").press("Enter")  # a textarea: Enter is a new line, not a submit
    page.locator("#request-submit").press("Enter")
    # Consent not confirmed: the error is beside the checkbox, which has the focus; what was typed stays.
    expect(page.locator("#consent_given-error")).to_be_visible()
    expect(page.locator("#consent_given")).to_be_focused()
    expect(page.locator("#clinical_question")).to_have_value("胸片：肺部感染？")
    page.keyboard.press("Space")
    page.locator("#request-submit").press("Enter")
    expect(page.locator("#done")).to_contain_text("会诊请求已提交")
    expect(page.locator("#request-consent")).to_contain_text("患者书面同意")
    page.set_viewport_size({"width": 390, "height": 800})
    page.screenshot(path=str(SCREENSHOTS / "teleconsult-detail-phone.png"), full_page=True)
