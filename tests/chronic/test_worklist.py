"""The team's worklist: overdue patients high risk first, call outcomes and the days they hide a patient,
moved/died closing the enrolment, team tasks done with an outcome, and who may see the list."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.audit.models import AuditEvent
from healthrelay.chronic import followups, tasks, worklist
from healthrelay.chronic.models import ChronicCall
from healthrelay.core.db import local_today
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NeedToKnowDenied
from healthrelay.patients.models import Patient
from tests import factories as f
from tests.chronic.test_followups import ChronicWorld, enrol, form_data, login, visit
from tests.chronic.test_followups import world as world  # noqa: F401 - fixture

TODAY = date(2026, 6, 15)


def resident(db: Session, w: ChronicWorld, name: str) -> Patient:
    p = f.patient(db, name=name, phone=f"139{len(name)}{ord(name[0]) % 10**7:07d}")
    f.on_panel(db, team=w.team, patient=p)
    return p


def names(rows: list[worklist.OverdueRow]) -> list[str]:
    return [r.name for r in rows]


def test_overdue_list_puts_high_risk_first_then_longest_overdue(db: Session, world: ChronicWorld) -> None:
    plan = [("赵一", 1, 40), ("钱二", 3, 5), ("孙三", 2, 20), ("李四", 1, 60), ("周五", 3, 30), ("吴六", 1, -3)]
    for name, risk, days_overdue in plan:
        enrol(db, world, patient=resident(db, world, name), risk=risk, due=TODAY - timedelta(days=days_overdue))
    enrol(db, world, patient=resident(db, world, "郑七"), due=None)  # no visit scheduled: not overdue
    rows = worklist.overdue_list(db, team_id=world.team.id, today=TODAY)
    assert names(rows) == ["周五", "钱二", "孙三", "李四", "赵一"]
    assert [r.days_overdue for r in rows] == [30, 5, 20, 60, 40]
    assert rows[0].phone.startswith("139") and rows[0].condition_code == "htn"
    assert names(worklist.overdue_list(db, team_id=world.team.id, today=TODAY, limit=2, offset=2)) == ["孙三", "李四"]
    assert worklist.overdue_list(db, team_id=world.team.id, today=TODAY, condition="t2dm") == []
    # Due in three days: not overdue, due this week.
    counts = worklist.team_worklist_counts(db, team_id=world.team.id, today=TODAY)
    assert (counts.overdue, counts.high_risk_overdue, counts.due_this_week, counts.open_tasks) == (5, 3, 1, 0)


def test_another_teams_patients_are_not_on_the_list(db: Session, world: ChronicWorld) -> None:
    other_team = f.family_team(db, organisation=world.town, members=[world.outsider])
    enrol(db, world, patient=resident(db, world, "外队"), team=other_team, due=TODAY - timedelta(days=9))
    assert worklist.overdue_list(db, team_id=world.team.id, today=TODAY) == []


@pytest.mark.parametrize(("outcome", "days"), [("agreed_to_visit", 14), ("call_later", 3), ("no_answer", 1)])
def test_a_call_hides_the_patient_for_its_days_and_then_they_come_back(db: Session, world: ChronicWorld,
                                                                       outcome: str, days: int) -> None:
    e = enrol(db, world, due=TODAY - timedelta(days=10))
    call = worklist.record_call(db, by=world.doctor, enrolment_id=e.id, outcome_code=outcome, note="已联系",
                                today=TODAY)
    db.commit()
    assert call.hidden_until == TODAY + timedelta(days=days) and call.team_id == world.team.id
    db.refresh(e)
    assert e.hidden_until == TODAY + timedelta(days=days) and e.status == "active"
    for day in (TODAY, TODAY + timedelta(days=days)):
        assert worklist.overdue_list(db, team_id=world.team.id, today=day) == [], day
    assert names(worklist.overdue_list(db, team_id=world.team.id, today=TODAY + timedelta(days=days + 1))) == [
        "张建国"]
    assert db.scalar(select(AuditEvent).where(AuditEvent.action == "chronic.call.record")) is not None


def test_a_visit_ends_the_hiding(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world, due=local_today() - timedelta(days=10))
    worklist.record_call(db, by=world.doctor, enrolment_id=e.id, outcome_code="agreed_to_visit")
    followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(sbp=150, dbp=92))
    db.commit()
    db.refresh(e)
    assert e.hidden_until is None
    later = local_today() + timedelta(days=15)
    assert names(worklist.overdue_list(db, team_id=world.team.id, today=later)) == ["张建国"]


@pytest.mark.parametrize("outcome", ["moved", "died"])
def test_moved_or_died_closes_the_enrolment(db: Session, world: ChronicWorld, outcome: str) -> None:
    e = enrol(db, world, due=TODAY - timedelta(days=10))
    worklist.record_call(db, by=world.doctor, enrolment_id=e.id, outcome_code=outcome, note="邻居告知", today=TODAY)
    db.commit()
    db.refresh(e)
    assert e.status == outcome and e.closed_at is not None and "邻居告知" in e.closed_reason
    assert worklist.overdue_list(db, team_id=world.team.id, today=TODAY + timedelta(days=400)) == []
    patient = db.get(Patient, world.patient.id)
    assert patient.deceased_on is None  # a phone call does not change the master patient index
    with pytest.raises(Conflict):
        worklist.record_call(db, by=world.doctor, enrolment_id=e.id, outcome_code="call_later", today=TODAY)


def test_an_unknown_outcome_is_named_and_nothing_is_written(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world, due=TODAY - timedelta(days=10))
    with pytest.raises(InvalidInput) as exc:
        worklist.record_call(db, by=world.doctor, enrolment_id=e.id, outcome_code="gone_fishing", today=TODAY)
    assert [err["field"] for err in exc.value.field_errors] == ["outcome_code"]
    db.rollback()
    assert db.scalar(select(func.count()).select_from(ChronicCall)) == 0


def test_an_outsider_cannot_record_a_call(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world, due=TODAY - timedelta(days=10))
    with pytest.raises(NeedToKnowDenied):
        worklist.record_call(db, by=world.outsider, enrolment_id=e.id, outcome_code="call_later")


def test_tasks_are_listed_and_done_with_an_outcome(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    late = tasks.create_task(db, patient_id=world.patient.id, kind="screening", title="义诊血糖 12.1", due_on=TODAY,
                             by=world.doctor, team_id=world.team.id, enrolment_id=e.id)
    soon = tasks.create_task(db, patient_id=world.patient.id, kind="referral_check", title="核查上转",
                             due_on=TODAY - timedelta(days=2), by=world.doctor, team_id=world.team.id)
    db.commit()
    assert [r.task.id for r in worklist.open_tasks(db, team_id=world.team.id)] == [soon.id, late.id]
    assert worklist.open_tasks(db, team_id=world.team.id)[0].name == "张建国"
    with pytest.raises(InvalidInput) as exc:
        worklist.complete_task(db, by=world.doctor, task_id=soon.id, outcome="  ")
    assert exc.value.field_errors[0]["field"] == "outcome"
    with pytest.raises(AccessDenied):
        worklist.complete_task(db, by=world.outsider, task_id=soon.id, outcome="看过了")
    done = worklist.complete_task(db, by=world.colleague, task_id=soon.id, outcome="已在县医院就诊，调整用药")
    db.commit()
    assert (done.status, done.done_by_user_id, done.outcome) == ("done", world.colleague.id, "已在县医院就诊，调整用药")
    assert [r.task.id for r in worklist.open_tasks(db, team_id=world.team.id)] == [late.id]
    assert worklist.team_worklist_counts(db, team_id=world.team.id, today=TODAY).open_tasks == 1
    with pytest.raises(Conflict):
        worklist.complete_task(db, by=world.doctor, task_id=soon.id, outcome="again")


def test_teams_of_user_and_who_may_open_a_worklist(db: Session, world: ChronicWorld) -> None:
    assert [t.id for t in worklist.teams_of_user(db, world.doctor)] == [world.team.id]
    second = f.family_team(db, organisation=world.town, members=[world.doctor])
    assert {t.id for t in worklist.teams_of_user(db, world.doctor)} == {world.team.id, second.id}
    admin = f.user(db, role=Role.ORG_ADMIN, organisation=world.town)
    assert {t.id for t in worklist.teams_of_user(db, admin)} == {world.team.id, second.id}
    bureau = f.user(db, role=Role.HEALTH_BUREAU, with_practitioner=False)
    assert worklist.teams_of_user(db, bureau) == []
    with pytest.raises(AccessDenied):
        worklist.team_worklist(db, user=bureau, team_id=world.team.id)
    with pytest.raises(AccessDenied):
        worklist.team_worklist(db, user=world.outsider, team_id=world.team.id)
    enrol(db, world, due=local_today() - timedelta(days=4))
    seen = worklist.team_worklist(db, user=world.colleague, team_id=world.team.id)
    assert names(seen.overdue) == ["张建国"] and seen.counts.overdue == 1
    assert db.scalar(select(AuditEvent).where(AuditEvent.action == "chronic.worklist.view")) is not None


# --- pages and JSON ---------------------------------------------------------------------------------------

def test_the_worklist_page_lists_overdue_high_risk_first_with_counts(client, db: Session,  # noqa: ANN001
                                                                     world: ChronicWorld) -> None:
    today = local_today()
    enrol(db, world, due=today - timedelta(days=40))
    enrol(db, world, patient=world.diabetic, condition="t2dm", risk=3, due=today - timedelta(days=2))
    login(client, "village_doc")
    page = client.get("/chronic/worklist")  # the user's only team
    assert page.status_code == 200, page.text
    assert page.text.index("李桂兰") < page.text.index("张建国")
    assert re.search(r'data-count="overdue">2<', page.text) and re.search(r'data-count="high_risk_overdue"[^>]*>1<',
                                                                          page.text)
    assert "逾期 40 天" in page.text and "13800001111" in page.text
    assert 'href="/chronic/follow-ups/new?enrolment=' in page.text and "同意来访" in page.text
    filtered = client.get(f"/chronic/worklist?team={world.team.id}&condition=t2dm")
    assert "李桂兰" in filtered.text and "张建国" not in filtered.text
    assert 'id="team"' not in page.text  # one team: no picker
    second = f.family_team(db, organisation=world.town, members=[world.doctor])
    db.commit()
    client.cookies.set("lang", "en")
    english = client.get(f"/chronic/worklist?team={world.team.id}")
    assert "Team worklist" in english.text and "40 days overdue" in english.text
    assert re.search(rf'<option value="{second.id}"', english.text)  # the team picker


def test_a_call_from_the_page_hides_the_row_with_and_without_htmx(client, db: Session,  # noqa: ANN001
                                                                  world: ChronicWorld) -> None:
    today = local_today()
    first = enrol(db, world, due=today - timedelta(days=10))
    second = enrol(db, world, patient=world.diabetic, condition="t2dm", due=today - timedelta(days=10))
    csrf = login(client, "village_doc")
    plain = client.post("/chronic/worklist/calls", data={"csrf_token": csrf, "enrolment_id": first.id,
                                                         "outcome_code": "agreed_to_visit", "team": world.team.id},
                        follow_redirects=False)
    assert plain.status_code == 303
    page = client.get(plain.headers["location"])
    assert "电话结果已记录" in page.text and "张建国" not in page.text and "李桂兰" in page.text
    swapped = client.post("/chronic/worklist/calls", headers={"HX-Request": "true"},
                          data={"csrf_token": csrf, "enrolment_id": second.id, "outcome_code": "moved",
                                "note": "去女儿家住"})
    assert swapped.status_code == 200 and swapped.text.lstrip().startswith(f'<tr id="overdue-{second.id}"')
    assert "已记录：已迁出" in swapped.text and "管理档案已结案" in swapped.text
    db.expire_all()
    assert db.get(type(second), second.id).status == "moved"
    assert "没有逾期未随访的患者" in client.get("/chronic/worklist").text


def test_a_task_is_done_from_the_page(client, db: Session, world: ChronicWorld) -> None:  # noqa: ANN001
    task = tasks.create_task(db, patient_id=world.patient.id, kind="referral_check", title="核查上转 ZZ1",
                             due_on=local_today(), by=world.doctor, team_id=world.team.id)
    db.commit()
    csrf = login(client, "team_nurse")
    assert "核查上转 ZZ1" in client.get("/chronic/worklist").text
    empty = client.post(f"/chronic/worklist/tasks/{task.id}/done", data={"csrf_token": csrf, "outcome": ""})
    assert empty.status_code == 422 and "请填写处理结果" in empty.text
    done = client.post(f"/chronic/worklist/tasks/{task.id}/done",
                       data={"csrf_token": csrf, "outcome": "已到县医院就诊", "team": world.team.id},
                       follow_redirects=False)
    assert done.status_code == 303
    assert "没有待办任务" in client.get(done.headers["location"]).text


def test_the_worklist_is_for_team_members_only(client, db: Session, world: ChronicWorld) -> None:  # noqa: ANN001
    enrol(db, world, due=local_today() - timedelta(days=3))
    f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False)
    db.commit()
    login(client, "other_doc")
    assert "张建国" not in client.get("/chronic/worklist").text
    assert client.get(f"/chronic/worklist?team={world.team.id}").status_code == 403
    login(client, "bureau")
    assert client.get(f"/chronic/worklist?team={world.team.id}").status_code == 403


def test_json_worklist_calls_and_tasks(client, db: Session, world: ChronicWorld) -> None:  # noqa: ANN001
    e = enrol(db, world, risk=2, due=local_today() - timedelta(days=7))
    task = tasks.create_task(db, patient_id=world.patient.id, kind="screening", title="义诊血糖偏高",
                             due_on=local_today(), by=world.doctor, team_id=world.team.id)
    db.commit()
    headers = f.bearer(client, "village_doc")
    got = client.get(f"/api/v1/chronic/worklist?team={world.team.id}", headers=headers).json()
    assert got["counts"] == {"overdue": 1, "high_risk_overdue": 1, "open_tasks": 1, "due_this_week": 0}
    assert got["overdue"][0]["name"] == "张建国" and got["overdue"][0]["days_overdue"] == 7
    assert got["tasks"][0]["title"] == "义诊血糖偏高"
    call = client.post("/api/v1/chronic/calls", json={"enrolment_id": e.id, "outcome_code": "call_later"},
                       headers=headers)
    assert call.status_code == 201 and call.json()["hidden_until"] == (local_today() + timedelta(days=3)).isoformat()
    assert client.get("/api/v1/chronic/worklist", headers=headers).json()["overdue"] == []
    bad = client.post("/api/v1/chronic/calls", json={"enrolment_id": e.id, "outcome_code": "??"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["field_errors"][0]["field"] == "outcome_code"
    done = client.post(f"/api/v1/chronic/tasks/{task.id}/done", json={"outcome": "复测 6.1 正常"}, headers=headers)
    assert done.status_code == 200 and done.json()["status"] == "done"
    again = client.post(f"/api/v1/chronic/tasks/{task.id}/done", json={"outcome": "x"}, headers=headers)
    assert again.status_code == 409


@pytest.mark.e2e
def test_in_the_browser_a_visit_from_the_keyboard_and_a_call_swapped_in_place(page, db: Session,  # noqa: ANN001
                                                                              world: ChronicWorld) -> None:
    from playwright.sync_api import expect

    from tests.browser import sign_in

    today = local_today()
    first = enrol(db, world, due=today - timedelta(days=20))
    followups.record_follow_up(db, by=world.doctor, enrolment_id=first.id, data=visit(days_ago=20, sbp=166, dbp=98))
    first.next_visit_due = today - timedelta(days=6)  # the 2-week review was missed
    second = enrol(db, world, patient=world.diabetic, condition="t2dm", due=today - timedelta(days=30))
    db.commit()
    sign_in(page, "village_doc")
    page.goto("/chronic/worklist")
    expect(page.locator("#overdue-table tbody tr")).to_have_count(2)
    expect(page.locator("#overdue-table tbody tr").first).to_contain_text("张建国")  # risk 2 before risk 1

    # A call recorded on one row swaps only that row (htmx), the page stays.
    page.select_option(f"#outcome-{second.id}", "call_later")
    page.click(f"#call-{second.id}")
    expect(page.locator(f"#overdue-{second.id}")).to_contain_text("已记录：稍后再打")
    expect(page.locator(f"#overdue-{first.id}")).to_be_visible()

    # The second uncontrolled visit, typed from the keyboard: the date has the focus, Enter saves.
    page.click(f"#visit-{first.id}")
    expect(page.locator("#visit_on")).to_be_focused()
    page.keyboard.press("Tab")  # mode
    for selector, value in (("#sbp", "172"), ("#dbp", "104"), ("#weight_kg", "70"), ("#height_cm", "170")):
        page.fill(selector, value)
    expect(page.locator("#bmi")).to_have_text("24.2")
    page.press("#height_cm", "Enter")
    expect(page.locator("#followup-result")).to_contain_text("控制不满意")
    link = page.locator("#referral-draft-link")
    expect(link).to_contain_text("已生成上转申请草稿，请核对后发送")
    link.click()
    expect(page).to_have_url(re.compile(r"/referrals/\d+$"))
    page.goto("/chronic/worklist")
    expect(page.locator("#tasks-table")).to_contain_text("核查上转申请")
    expect(page.locator("#overdue-empty")).to_be_visible()


def _fields(response) -> set[str]:  # noqa: ANN001
    return {e["field"] for e in response.json()["field_errors"]}


def test_out_of_range_ids_and_pages_are_refused_by_field_not_a_server_error(
        client, db: Session, world: ChronicWorld) -> None:  # noqa: ANN001
    """"²" passes str.isdigit(), and ids or offsets past an INTEGER make PostgreSQL fail: each is a 4xx naming
    the parameter, on the pages and in the JSON API."""
    e = enrol(db, world)
    huge = str(10**12)
    csrf = login(client, "village_doc")
    for url in ("/chronic/follow-ups/new?enrolment=²", f"/chronic/follow-ups/new?enrolment={huge}",
                "/chronic/worklist?team=²", f"/chronic/worklist?team={huge}", f"/chronic/follow-ups/{huge}",
                f"/chronic/worklist?page={10**9}"):
        response = client.get(url)
        assert response.status_code == 422, (url, response.status_code)
    posted = client.post("/chronic/follow-ups/new", data=form_data(e, csrf, enrolment_id=huge))
    assert posted.status_code == 422
    call = client.post("/chronic/worklist/calls", data={"csrf_token": csrf, "enrolment_id": huge,
                                                        "outcome_code": "no_answer"})
    assert call.status_code == 422 and "enrolment_id" in call.text
    task = client.post(f"/chronic/worklist/tasks/{huge}/done", data={"csrf_token": csrf, "outcome": "x"})
    assert task.status_code == 422
    headers = f.bearer(client, "village_doc")
    body = {"enrolment_id": 10**12, "visit_on": local_today().isoformat(), "sbp": 120, "dbp": 80}
    assert _fields(client.post("/api/v1/chronic/follow-ups", json=body, headers=headers)) == {"enrolment_id"}
    assert _fields(client.post("/api/v1/chronic/calls", json={"enrolment_id": 10**12, "outcome_code": "no_answer"},
                               headers=headers)) == {"enrolment_id"}
    for url, name in ((f"/api/v1/chronic/follow-ups?enrolment={huge}", "enrolment"),
                      (f"/api/v1/chronic/worklist?team={huge}", "team"),
                      (f"/api/v1/chronic/worklist?offset={huge}", "offset")):
        response = client.get(url, headers=headers)
        assert response.status_code == 422 and _fields(response) == {name}, (url, response.text)
    done = client.post(f"/api/v1/chronic/tasks/{huge}/done", json={"outcome": "x"}, headers=headers)
    assert done.status_code == 422 and _fields(done) == {"task_id"}
