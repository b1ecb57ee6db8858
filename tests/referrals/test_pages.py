"""Referral pages as staff use them: the board, the form, the actions, the timeline and follow-ups."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.directory.models import Department, Post
from healthrelay.referrals import service
from healthrelay.referrals.models import FollowUpTask, Referral, ReferralAttachment, State, Urgency
from tests import factories as f
from tests.referrals.conftest import World, move_due_into_past, sent_referral

SHANGHAI = ZoneInfo("Asia/Shanghai")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082")


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns the CSRF token the page forms carry."""
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/referrals").text).group(1)


def switch(client, username: str) -> str:  # noqa: ANN001
    client.cookies.clear()
    return login(client, username)


def row_ids(html: str, section: str) -> list[int]:
    """Referral ids in the order the section's table lists them."""
    match = re.search(rf'id="{section}-table".*?</table>', html, re.S)
    return [int(i) for i in re.findall(r'data-referral-id="(\d+)"', match.group(0))] if match else []


def new_form(token: str, w: World, **changes: str) -> dict[str, str]:
    form = {"csrf_token": token, "patient_id": str(w.patient.id), "urgency": "urgent",
            "target": f"{w.county.id}:{w.cardiology.id}", "reason": "胸痛 2 小时，含服硝酸甘油不缓解",
            "diagnosis_code": "I20.0", "diagnosis_text": "", "case_summary": "既往高血压十年", "bp_sys": "160",
            "bp_dia": "95", "hr": "102", "medicines": "阿司匹林 100 mg qd\n硝苯地平 10 mg tid",
            "consent_kind": "written", "action": "send"}
    form.update(changes)
    return form


def count(db: Session, model: type) -> int:
    db.expire_all()
    return db.execute(select(func.count()).select_from(model)).scalar_one()


# --- the board ------------------------------------------------------------------------------------

def test_board_lists_overdue_first_then_green_channel_with_countdowns(client, db: Session, world: World) -> None:  # noqa: ANN001
    urgent = sent_referral(db, world, urgency=Urgency.URGENT)
    late = sent_referral(db, world, urgency=Urgency.ROUTINE)
    green = sent_referral(db, world, urgency=Urgency.GREEN_CHANNEL)
    db.commit()
    move_due_into_past(db, late, minutes=7)
    login(client, "county_doc")
    page = client.get("/referrals")
    assert page.status_code == 200
    assert row_ids(page.text, "incoming") == [late.id, green.id, urgent.id]
    late_row = re.search(rf'<tr data-referral-id="{late.id}".*?</tr>', page.text, re.S).group(0)
    assert 'class="overdue"' in late_row and re.search(r"超时 (7|8) 分钟", late_row)
    green_row = re.search(rf'<tr data-referral-id="{green.id}".*?</tr>', page.text, re.S).group(0)
    assert "绿色通道" in green_row and "urg-green_channel" in green_row and "剩 1" in green_row
    # The patient's name is masked on the board; the full name appears on the detail page only.
    assert "王*英" in late_row and "王秀英" not in page.text
    assert 'hx-trigger="hr-live from:body, every 30s"' in page.text and 'id="incoming"' in page.text
    fragment = client.get("/referrals/_incoming?department=all")
    assert "<html" not in fragment.text and row_ids(fragment.text, "incoming") == [late.id, green.id, urgent.id]
    # The village doctor sent them: they are on the township's outgoing list, not its incoming one.
    switch(client, "village_doc")
    mine = client.get("/referrals").text
    assert row_ids(mine, "incoming") == [] and set(row_ids(mine, "outgoing")) == {urgent.id, late.id, green.id}


def test_board_opens_on_the_users_department_and_filters_by_urgency(client, db: Session, world: World) -> None:  # noqa: ANN001
    surgery = Department(organisation_id=world.county.id, code="WK", name="外科")
    db.add(surgery)
    db.flush()
    post = Post(practitioner_id=world.county_doctor2.practitioner_id, organisation_id=world.county.id,
                department_id=surgery.id)
    db.add(post)
    db.flush()
    world.county_doctor2.post_id = post.id
    cardiac = sent_referral(db, world, urgency=Urgency.URGENT)
    surgical = sent_referral(db, world, urgency=Urgency.ROUTINE, to_department_id=surgery.id)
    green = sent_referral(db, world, urgency=Urgency.GREEN_CHANNEL, to_department_id=surgery.id)
    db.commit()
    login(client, "county_doc2")
    page = client.get("/referrals").text
    assert row_ids(page, "incoming") == [green.id, surgical.id]
    assert re.search(rf'<option value="{surgery.id}" selected>外科', page)
    assert row_ids(client.get("/referrals?department=all").text, "incoming") == [green.id, cardiac.id, surgical.id]
    only_green = client.get("/referrals?department=all&urgency=green_channel").text
    assert row_ids(only_green, "incoming") == [green.id]
    assert client.get("/referrals?urgency=whenever").status_code == 422


# --- the referral form ----------------------------------------------------------------------------

def test_village_doctor_finds_the_patient_and_sees_suggested_targets(client, world: World) -> None:  # noqa: ANN001
    login(client, "village_doc")
    found = client.get("/referrals/new?q=王秀英")
    assert found.status_code == 200 and f'href="/referrals/new?patient_id={world.patient.id}"' in found.text
    form = client.get(f"/referrals/new?patient_id={world.patient.id}").text
    assert 'id="referral-form"' in form and "王秀英" in form
    suggestion = re.search(r'id="suggested-targets".*?</div>\s*</div>', form, re.S).group(0)
    assert "测试县人民医院" in suggestion and f'value="{world.county.id}:{world.cardiology.id}"' in suggestion
    assert "邻县人民医院" not in form  # outside the township's alliance
    # Routine is the default; the green channel is there, marked red, but not first and not chosen.
    radios = re.findall(r'<input type="radio" name="urgency" id="urgency-(\w+)" value="\w+" ?(checked)?', form)
    assert radios[0] == ("routine", "checked") and ("green_channel", "") in radios
    assert 'class="green"' in form and re.search(r'value="routine" checked autofocus', form)
    options = client.get("/referrals/_icd10?diagnosis_code=I21").text
    assert 'value="I21.9"' in options and "<html" not in options


def test_form_errors_sit_next_to_fields_and_keep_what_was_typed(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = login(client, "village_doc")
    first = client.post("/referrals/new", data=new_form(token, world, consent_kind="", bp_dia="", hr="abc"))
    assert first.status_code == 422
    assert 'id="consent_kind-error"' in first.text and 'id="bp_dia-error"' in first.text
    assert 'id="hr-error"' in first.text and "须为数字" in first.text
    assert "胸痛 2 小时，含服硝酸甘油不缓解</textarea>" in first.text  # the reason as typed
    assert 'value="160"' in first.text and "阿司匹林 100 mg qd\n硝苯地平 10 mg tid</textarea>" in first.text
    assert re.search(rf'value="{world.county.id}:{world.cardiology.id}"[^>]*\s+checked', first.text)
    second = client.post("/referrals/new", data=new_form(token, world, diagnosis_code="XYZ"))
    assert second.status_code == 422 and 'id="diagnosis_code-error"' in second.text
    assert 'value="XYZ"' in second.text and 'aria-invalid="true"' in second.text
    nowhere = client.post("/referrals/new", data=new_form(token, world, target="", target_other=""))
    assert nowhere.status_code == 422 and 'id="target-error"' in nowhere.text
    outside = client.post("/referrals/new", data=new_form(token, world, target="other",
                                                          target_other=f"{world.outsider.id}:"))
    assert outside.status_code == 422 and "医联体" in outside.text
    assert count(db, Referral) == 0


def test_sending_from_the_form_creates_the_referral_and_its_attachment(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = login(client, "village_doc")
    sent = client.post("/referrals/new", data=new_form(token, world),
                       files=[("attachments", ("ecg.png", PNG, "image/png"))], follow_redirects=False)
    assert sent.status_code == 303, sent.text
    referral_id = int(re.search(r"/referrals/(\d+)\?done=sent", sent.headers["location"]).group(1))
    db.expire_all()
    referral = db.get(Referral, referral_id)
    assert referral.state == State.SENT and referral.urgency == Urgency.URGENT
    assert referral.vital_signs == {"bp": "160/95", "hr": 102}
    assert referral.medicines == ["阿司匹林 100 mg qd", "硝苯地平 10 mg tid"]
    assert referral.diagnosis_code == "I20.0" and referral.diagnosis_text  # named from the code
    page = client.get(sent.headers["location"]).text
    assert 'id="done-notice"' in page and "王秀英" in page and "ecg.png" in page
    attachment = db.execute(select(ReferralAttachment)).scalar_one()
    download = client.get(f"/referrals/attachments/{attachment.id}")
    assert download.status_code == 200 and download.content == PNG


def test_a_refused_attachment_writes_nothing(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = login(client, "village_doc")
    refused = client.post("/referrals/new", data=new_form(token, world),
                          files=[("attachments", ("notes.txt", b"just text", "text/plain"))])
    assert refused.status_code == 422 and 'id="attachments-error"' in refused.text
    assert count(db, Referral) == 0 and count(db, ReferralAttachment) == 0


def test_a_draft_needs_no_consent_but_cannot_be_sent_until_it_is_taken(client, db: Session,  # noqa: ANN001
                                                                        world: World) -> None:
    token = login(client, "village_doc")
    # A browser sends the untouched file input as an empty part.
    saved = client.post("/referrals/new", data=new_form(token, world, consent_kind="", action="draft"),
                        files=[("attachments", ("", b"", "application/octet-stream"))], follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].endswith("?done=saved")
    referral_id = int(re.search(r"/referrals/(\d+)", saved.headers["location"]).group(1))
    page = client.get(f"/referrals/{referral_id}").text
    assert 'id="send-submit"' in page and "尚未记录知情同意" in page
    refused = client.post(f"/referrals/{referral_id}/send", data={"csrf_token": token})
    assert refused.status_code == 422 and 'id="send-error"' in refused.text and "知情同意" in refused.text
    db.expire_all()
    assert db.get(Referral, referral_id).state == State.DRAFT
    # The patient agrees later: the consent is recorded with the send, by who sent it.
    assert 'id="send-consent-verbal"' in page
    sent = client.post(f"/referrals/{referral_id}/send", data={"csrf_token": token, "consent_kind": "verbal"},
                       follow_redirects=False)
    assert sent.status_code == 303
    db.expire_all()
    referral = db.get(Referral, referral_id)
    assert referral.state == State.SENT and referral.consent_kind == "verbal"
    assert referral.consent_recorded_by_user_id == world.village_doctor.id


def test_files_over_the_limit_get_a_readable_page_not_json(client, world: World) -> None:  # noqa: ANN001
    from healthrelay.core.config import get_settings

    token = login(client, "village_doc")
    big = b"%PDF-1.4\n" + b"0" * (get_settings().attachment_max_bytes + 100 * 1024)
    response = client.post("/referrals/new", data=new_form(token, world), headers={"Accept": "text/html"},
                           files=[("attachments", ("大.pdf", big, "application/pdf"))])
    assert response.status_code == 413 and "文件太大" in response.text
    assert response.headers["content-type"].startswith("text/html")
    # Within the attachment limit (above the general 2 MB body limit) the form goes through.
    ok = client.post("/referrals/new", data=new_form(token, world), follow_redirects=False,
                     files=[("attachments", ("心电图.pdf", b"%PDF-1.4\n" + b"0" * 3 * 1024 * 1024, "application/pdf"))])
    assert ok.status_code == 303, ok.text[:300]


# --- actions on the detail page -------------------------------------------------------------------

def test_accept_arrive_complete_from_the_detail_page(client, db: Session, world: World) -> None:  # noqa: ANN001
    referral = sent_referral(db, world)
    db.commit()
    token = login(client, "county_doc")
    page = client.get(f"/referrals/{referral.id}").text
    for element in ('id="accept-submit"', 'id="appointment_at"', 'id="bed"', 'id="decline-submit"',
                    'id="decline-reason"', 'id="redirect-submit"'):
        assert element in page
    assert 'id="arrive-submit"' not in page and 'id="cancel-submit"' not in page
    empty = client.post(f"/referrals/{referral.id}/accept", data={"csrf_token": token, "appointment_at": "", "bed": ""})
    assert empty.status_code == 422 and 'id="accept-error"' in empty.text and 'id="appointment_at-error"' in empty.text
    garbled = client.post(f"/referrals/{referral.id}/accept", data={"csrf_token": token, "appointment_at": "明天上午"})
    assert garbled.status_code == 422 and 'value="明天上午"' in garbled.text
    accepted = client.post(f"/referrals/{referral.id}/accept",
                           data={"csrf_token": token, "appointment_at": "2026-11-24T09:00"}, follow_redirects=False)
    assert accepted.status_code == 303 and accepted.headers["location"] == f"/referrals/{referral.id}?done=accept"
    db.expire_all()
    assert db.get(Referral, referral.id).appointment_at == datetime(2026, 11, 24, 1, 0, tzinfo=ZoneInfo("UTC"))
    board = client.get("/referrals").text
    assert row_ids(board, "accepted") == [referral.id] and row_ids(board, "incoming") == []
    assert "预约 11-24 09:00" in board
    detail = client.get(f"/referrals/{referral.id}").text
    assert "2026-11-24 09:00" in detail and 'id="arrive-submit"' in detail and 'id="accept-submit"' not in detail
    assert client.post(f"/referrals/{referral.id}/arrive", data={"csrf_token": token},
                       follow_redirects=False).status_code == 303
    no_outcome = client.post(f"/referrals/{referral.id}/complete", data={"csrf_token": token, "outcome": " "})
    assert no_outcome.status_code == 422 and 'id="outcome-error"' in no_outcome.text
    done = client.post(f"/referrals/{referral.id}/complete", data={"csrf_token": token, "outcome": "PCI 术后好转"},
                       follow_redirects=False)
    assert done.status_code == 303
    timeline = client.get(f"/referrals/{referral.id}").text
    states = re.findall(r'<li data-to-state="(\w+)">', timeline)
    assert states == ["draft", "sent", "accepted", "arrived", "completed"]
    assert "PCI 术后好转" in timeline and 'id="send-down-submit"' in timeline


def test_decline_needs_a_reason_and_a_late_accept_gets_a_clear_409(client, db: Session, world: World) -> None:  # noqa: ANN001
    referral = sent_referral(db, world)
    db.commit()
    token = login(client, "county_doc")
    bare = client.post(f"/referrals/{referral.id}/decline", data={"csrf_token": token, "reason": "",
                                                                   "suggested_alternative_organisation_id": ""})
    assert bare.status_code == 422
    assert 'id="reason-error"' in bare.text and 'id="suggested_alternative_organisation_id-error"' in bare.text
    declined = client.post(f"/referrals/{referral.id}/decline", follow_redirects=False, data={
        "csrf_token": token, "reason": "心内科无床", "suggested_alternative_organisation_id": str(world.town_b.id)})
    assert declined.status_code == 303
    # Another doctor still had the old page open and accepts now.
    token2 = switch(client, "county_doc2")
    late = client.post(f"/referrals/{referral.id}/accept", data={"csrf_token": token2, "bed": "12 床"})
    assert late.status_code == 409 and 'id="action-error"' in late.text and "declined" in late.text
    assert "Traceback" not in late.text and 'id="accept-submit"' not in late.text
    assert "心内科无床" in late.text and "西河镇卫生院" in late.text


def test_redirect_and_cancel(client, db: Session, world: World) -> None:  # noqa: ANN001
    second = f.organisation(db, name="中医院", level="secondary", kind="tcm_hospital")
    from healthrelay.directory.models import AllianceMembership

    alliance_id = db.execute(select(AllianceMembership.alliance_id)).scalars().first()
    db.add(AllianceMembership(alliance_id=alliance_id, organisation_id=second.id, role="member"))
    referral = sent_referral(db, world)
    db.commit()
    token = login(client, "county_doc")
    same = client.post(f"/referrals/{referral.id}/redirect",
                       data={"csrf_token": token, "target": f"{world.county.id}:{world.cardiology.id}"})
    assert same.status_code == 422 and 'id="target-error"' in same.text
    moved = client.post(f"/referrals/{referral.id}/redirect", follow_redirects=False,
                        data={"csrf_token": token, "target": f"{second.id}:", "reason": "中医院有专家门诊"})
    assert moved.status_code == 303
    db.expire_all()
    assert db.get(Referral, referral.id).to_organisation_id == second.id
    token = switch(client, "village_doc")
    page = client.get(f"/referrals/{referral.id}").text
    assert 'id="cancel-submit"' in page and "中医院" in page
    no_reason = client.post(f"/referrals/{referral.id}/cancel", data={"csrf_token": token, "reason": ""})
    assert no_reason.status_code == 422 and 'id="reason-error"' in no_reason.text
    cancelled = client.post(f"/referrals/{referral.id}/cancel", data={"csrf_token": token, "reason": "家属决定去省城"},
                            follow_redirects=False)
    assert cancelled.status_code == 303
    db.expire_all()
    assert db.get(Referral, referral.id).state == State.CANCELLED


def test_page_forms_need_the_csrf_token_and_outsiders_get_the_error_page(client, db: Session, world: World) -> None:  # noqa: ANN001
    referral = sent_referral(db, world)
    db.commit()
    login(client, "county_doc")
    forged = client.post(f"/referrals/{referral.id}/accept", data={"bed": "3 床"})
    assert forged.status_code == 403 and "表单已过期" in forged.text
    token = switch(client, "outsider_doc")
    denied = client.get(f"/referrals/{referral.id}")
    assert denied.status_code == 403 and "破窗" in denied.text
    refused = client.post(f"/referrals/{referral.id}/accept", data={"csrf_token": token, "bed": "3 床"})
    assert refused.status_code == 403
    assert client.get("/referrals/987654").status_code == 404
    db.expire_all()
    assert db.get(Referral, referral.id).state == State.SENT


# --- down referral, follow-ups and sending back up ------------------------------------------------

def _arrived(db: Session, w: World) -> Referral:
    referral = sent_referral(db, w)
    service.accept(db, by=w.county_doctor, referral_id=referral.id, bed="8 床")
    service.mark_arrived(db, by=w.county_doctor, referral_id=referral.id)
    db.commit()
    return referral


def test_send_down_with_a_plan_then_the_township_works_its_follow_ups(client, db: Session, world: World) -> None:  # noqa: ANN001
    up = _arrived(db, world)
    token = login(client, "county_doc")
    form = client.get(f"/referrals/{up.id}").text
    assert re.search(rf'<option value="{world.town_a.id}:" selected>', form)  # the sender, by default
    assert f'value="{world.town_a.id}:{world.team_a.id}"' in form and 'id="add-follow-up"' in form
    today = datetime.now(SHANGHAI).date()  # the worklist counts days in the county's time zone
    yesterday, in_a_week = (today - timedelta(days=1)).isoformat(), (today + timedelta(days=7)).isoformat()
    data = {"csrf_token": token, "down_target": f"{world.town_a.id}:{world.team_a.id}", "diagnosis_code": "I20.0",
            "diagnosis_text": "不稳定型心绞痛", "medicines": "阿司匹林 100 mg qd\n阿托伐他汀 20 mg qn",
            "warning_signs": "胸痛超过 15 分钟\n血压 ≥ 180/110", "consent_kind": "verbal",
            "follow_up_date": [yesterday, in_a_week, "", "2026-13-01"],
            "follow_up_kind": ["电话随访", "门诊复查", "", "测血压"]}
    bad = client.post(f"/referrals/{up.id}/send-down", data=data)
    assert bad.status_code == 422 and 'id="follow_up-3-error"' in bad.text and 'value="2026-13-01"' in bad.text
    data["follow_up_date"], data["follow_up_kind"] = [yesterday, in_a_week, ""], ["电话随访", "门诊复查", ""]
    no_consent = client.post(f"/referrals/{up.id}/send-down", data={**data, "consent_kind": ""})
    assert no_consent.status_code == 422 and 'id="consent_kind-error"' in no_consent.text
    sent = client.post(f"/referrals/{up.id}/send-down", data=data, follow_redirects=False)
    assert sent.status_code == 303, sent.text
    down_id = int(re.search(r"/referrals/(\d+)\?done=send_down", sent.headers["location"]).group(1))
    db.expire_all()
    down = db.get(Referral, down_id)
    assert down.direction == "down" and down.parent_referral_id == up.id and down.to_team_id == world.team_a.id
    assert down.care_plan["warning_signs"] == ["胸痛超过 15 分钟", "血压 ≥ 180/110"]
    assert [i["kind"] for i in down.care_plan["follow_up"]] == ["电话随访", "门诊复查"]

    token = switch(client, "village_doc")
    board = client.get("/referrals").text
    assert row_ids(board, "down") == [down_id]
    detail = client.get(f"/referrals/{down_id}").text
    assert "胸痛超过 15 分钟" in detail and 'id="accept-submit"' in detail and 'id="appointment_at"' not in detail
    assert client.post(f"/referrals/{down_id}/accept", data={"csrf_token": token},
                       follow_redirects=False).status_code == 303
    worklist = client.get("/referrals/follow-ups").text
    tasks = db.execute(select(FollowUpTask).order_by(FollowUpTask.due_on)).scalars().all()
    assert [t.kind for t in tasks] == ["电话随访", "门诊复查"]
    late_row = re.search(rf'<tr data-task-id="{tasks[0].id}".*?</tr>', worklist, re.S).group(0)
    assert 'class="overdue"' in late_row and "due-late" in late_row and "已逾期 1 天" in late_row
    assert "王*英" in late_row and up.number not in late_row and down.number in late_row
    done = client.post(f"/referrals/follow-ups/{tasks[0].id}/done", follow_redirects=False,
                       data={"csrf_token": token, "note": "电话随访，无不适"})
    assert done.status_code == 303
    after = client.get(done.headers["location"]).text
    assert f'data-task-id="{tasks[0].id}"' not in after and f'data-task-id="{tasks[1].id}"' in after
    again = client.post(f"/referrals/follow-ups/{tasks[0].id}/done", data={"csrf_token": token})
    assert again.status_code == 409 and 'id="follow-up-error"' in again.text
    db.expire_all()
    assert "电话随访，无不适" in db.get(FollowUpTask, tasks[0].id).note

    # The patient worsens: one step back up, with the episode attached.
    page = client.get(f"/referrals/{down_id}").text
    assert 'id="send-back-up-submit"' in page
    missing = client.post(f"/referrals/{down_id}/send-back-up", data={"csrf_token": token, "reason": "",
                                                                      "urgency": "urgent", "consent_kind": "verbal"})
    assert missing.status_code == 422 and 'id="reason-error"' in missing.text
    back = client.post(f"/referrals/{down_id}/send-back-up", follow_redirects=False, data={
        "csrf_token": token, "reason": "再发胸痛，血压 190/110", "urgency": "green_channel", "consent_kind": "verbal"})
    assert back.status_code == 303
    back_id = int(re.search(r"/referrals/(\d+)\?done=send_back_up", back.headers["location"]).group(1))
    history = client.get(f"/referrals/{back_id}").text
    assert 'id="history"' in history and up.number in history and down.number in history

    timeline = client.get(f"/patients/{world.patient.id}/referrals").text
    assert [int(i) for i in re.findall(r'<li class="\w+" data-referral-id="(\d+)"', timeline)] == [up.id, down_id,
                                                                                                  back_id]
    assert re.findall(r'data-direction="(\w+)"', timeline) == ["up", "down", "up"]


def test_patient_timeline_is_audited_and_needs_a_care_relationship(client, db: Session, world: World) -> None:  # noqa: ANN001
    sent_referral(db, world)
    draft = service.create_draft(db, by=world.county_doctor, data=service.ReferralInput(
        patient_id=world.patient.id, to_organisation_id=world.town_b.id, reason="草稿"))
    db.commit()
    login(client, "village_doc")
    page = client.get(f"/patients/{world.patient.id}/referrals")
    assert page.status_code == 200 and page.text.count("data-referral-id=") == 1  # the county's draft is not shown
    assert draft.number not in page.text
    events = db.execute(select(AuditEvent).where(AuditEvent.action == "referral.timeline")).scalars().all()
    assert [e.patient_id for e in events] == [world.patient.id]
    switch(client, "outsider_doc")
    refused = client.get(f"/patients/{world.patient.id}/referrals")
    assert refused.status_code == 403 and "破窗" in refused.text


@pytest.mark.parametrize("path", ["/referrals", "/referrals/follow-ups", "/referrals/new"])
def test_pages_need_a_signed_in_user(client, world: World, path: str) -> None:  # noqa: ANN001
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_attachment_upload_on_the_detail_page(client, db: Session, world: World) -> None:  # noqa: ANN001
    referral = sent_referral(db, world)
    db.commit()
    token = login(client, "county_doc")
    empty = client.post(f"/referrals/{referral.id}/attachments", data={"csrf_token": token},
                        files=[("files", ("", b"", "application/octet-stream"))])
    assert empty.status_code == 422 and 'id="attach-error"' in empty.text
    wrong = client.post(f"/referrals/{referral.id}/attachments", data={"csrf_token": token, "description": "说明"},
                        files=[("files", ("x.exe", b"MZ\x90\x00" * 40, "application/octet-stream"))])
    assert wrong.status_code == 422 and "不支持的文件类型" in wrong.text and 'value="说明"' in wrong.text
    ok = client.post(f"/referrals/{referral.id}/attachments", data={"csrf_token": token, "description": "心电图"},
                     files=[("files", ("ecg.png", PNG, "image/png"))], follow_redirects=False)
    assert ok.status_code == 303
    page = client.get(ok.headers["location"]).text
    assert "ecg.png" in page and "心电图" in page
    assert count(db, ReferralAttachment) == 1
