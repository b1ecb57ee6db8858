"""live.js in a real browser: the badge counts, urgent news is a toast that stays, pages refresh on hr-live."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from healthrelay.notifications import service
from tests.browser import SCREENSHOTS, sign_in
from tests.notifications.conftest import People

pytestmark = pytest.mark.e2e



def test_the_inbox_updates_live_and_an_urgent_toast_stays_until_dismissed(page: Page, db: Session,
                                                                         people: People) -> None:
    service.send(db, user_ids=[people.doctor.id], kind="test", title="早先的消息")
    db.commit()
    sign_in(page, "zhang_doc")
    page.goto("/inbox")
    badge = page.locator("#inbox-count")
    expect(badge).to_have_text("1")
    page.evaluate("""() => { window.hrLive = [];
        document.body.addEventListener('hr-live', e => window.hrLive.push(e.detail)); }""")

    service.send(db, user_ids=[people.doctor.id], kind="referral.received", urgent=True,
                 title="绿色通道转诊待接收", body="东山镇卫生院，15 分钟内处理", link="/inbox")
    db.commit()
    toast = page.get_by_role("alert")
    expect(toast).to_contain_text("绿色通道转诊待接收")
    expect(badge).to_have_text("2")
    # htmx refreshed the list on the hr-live event, without a reload.
    expect(page.locator(".note.unread")).to_have_count(2)
    expect(page.locator(".note").first).to_contain_text("绿色通道转诊待接收")
    assert page.evaluate("window.hrLive.map(e => e.type)") == ["notification"]

    service.publish(db, topic=service.org_topic(people.county.id), event={"type": "referral.changed",
                                                                          "referral_id": 4})
    db.commit()
    page.wait_for_function("window.hrLive.some(e => e.type === 'referral.changed' && e.referral_id === 4)")
    expect(toast).to_be_visible()  # still there: urgent news waits for the user
    page.screenshot(path=str(SCREENSHOTS / "inbox-live-toast.png"))
    page.set_viewport_size({"width": 390, "height": 800})
    expect(toast).to_be_in_viewport()
    page.screenshot(path=str(SCREENSHOTS / "inbox-live-toast-phone.png"), full_page=True)
    toast.get_by_role("button", name="关闭").click()
    expect(page.get_by_role("alert")).to_have_count(0)

    # Marking all read (keyboard only) empties the badge.
    page.get_by_role("button", name="全部标为已读").focus()
    page.keyboard.press("Enter")
    expect(page.locator(".notice.ok")).to_contain_text("已将 2 条消息标为已读")
    expect(badge).to_be_hidden()
