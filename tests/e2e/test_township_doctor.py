"""The foundation as a township doctor and an administrator use it, in a real browser."""

from __future__ import annotations

import re
from datetime import date

import pytest
from playwright.sync_api import Page, expect

from healthrelay.accounts.models import Role
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import Sex
from tests import factories as f
from tests.browser import SCREENSHOTS, sign_in

pytestmark = pytest.mark.e2e



def sign_out(page: Page) -> None:
    page.locator("form[action='/logout'] button").click()
    expect(page).to_have_url(re.compile(r"/login"))


def test_township_doctor_registers_is_refused_breaks_glass_and_admin_sees_it(page: Page, db) -> None:
    shimen = f.organisation(db, name="石门镇卫生院")
    baisha = f.organisation(db, name="白沙镇卫生院")
    f.user(db, role=Role.CLINICIAN, organisation=shimen, username="doc.shimen")
    f.user(db, role=Role.ALLIANCE_ADMIN, username="admin.alliance", with_practitioner=False)
    f.patient(db, name="王秀英", birth_date=date(1956, 3, 8), phone="13907181234", registered_at=shimen)
    other = f.patient(db, name="张建国", sex=Sex.MALE, birth_date=date(1948, 11, 2), registered_at=baisha)
    db.commit()

    sign_in(page, "doc.shimen")

    # Registering 王秀瑛 (same sound as 王秀英), same birth date and phone: the duplicate warning shows.
    page.goto("/patients/new")
    page.fill("#name", "王秀瑛")
    page.select_option("#sex", "F")
    page.fill("#birth_date", "1956-03-08")
    page.fill("#phone", "13907181234")
    page.fill("#resident_id", make_resident_id("421126", date(1956, 3, 8), 31, "F"))
    page.click("#register-submit")
    warning = page.locator("#duplicate-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("王秀英")
    page.screenshot(path=str(SCREENSHOTS / "duplicate-warning.png"), full_page=True)

    # The doctor checks and confirms these are different people; the record is created.
    page.check("#confirm_not_duplicate")
    page.click("#register-submit")
    expect(page).to_have_url(re.compile(r"/patients/\d+(\?.*)?$"))
    expect(page.locator("main")).to_contain_text("王秀瑛")

    # Another township's patient: refused, with a break-the-glass form.
    response = page.goto(f"/patients/{other.id}")
    assert response is not None and response.status == 403
    expect(page.locator("main")).not_to_contain_text("张建国")
    page.fill("#bg-reason", "患者昏迷送至本院急诊，需要查看既往病史和过敏史")
    page.locator("form.break-glass button[type=submit]").click()
    expect(page).to_have_url(re.compile(rf"/patients/{other.id}(\?.*)?$"))
    expect(page.locator("main")).to_contain_text("张建国")
    sign_out(page)

    # The administrator finds the break-glass access in the audit page.
    sign_in(page, "admin.alliance")
    page.goto(f"/admin/audit?patient_id={other.id}")
    rows = page.locator("table tbody tr")
    expect(rows.filter(has_text="access.break_glass").first).to_contain_text("doc.shimen")
    # ... after the refusal that preceded it (拒绝 = denied).
    expect(rows.filter(has_text="拒绝").first).to_contain_text("doc.shimen")
    page.screenshot(path=str(SCREENSHOTS / "audit-break-glass.png"), full_page=True)
