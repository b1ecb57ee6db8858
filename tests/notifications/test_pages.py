"""The inbox and outbox pages: Chinese first, read on open, CSRF on every change, admins only for the outbox."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from healthrelay.notifications import service
from tests.notifications.conftest import Mailbox, People, login, run_timers


def test_inbox_lists_newest_first_unread_bold_and_urgent_marked(client, db: Session,  # noqa: ANN001
                                                                people: People) -> None:
    service.send(db, user_ids=[people.doctor.id], kind="test", title="例行：随访提醒")
    service.send(db, user_ids=[people.doctor.id], kind="test", title="绿色通道转诊待接收", urgent=True,
                 body="请 15 分钟内处理")
    service.send(db, user_ids=[people.colleague.id], kind="test", title="别人的消息")
    db.commit()
    login(client, "zhang_doc")
    page = client.get("/inbox")
    assert page.status_code == 200
    html = page.text
    assert "<h1>消息</h1>" in html and "未读 2 条" in html and "别人的消息" not in html
    assert html.index("绿色通道转诊待接收") < html.index("例行：随访提醒")
    urgent_item = html[html.index('class="note unread urgent"'):]
    assert "紧急" in urgent_item[:600] and "请 15 分钟内处理" in urgent_item
    assert html.count('class="note unread') == 2
    assert 'id="inbox-count"' in html and "/static/live.js" in html
    assert "autofocus" in html

    client.cookies.set("lang", "en")
    assert "<h1>Inbox</h1>" in client.get("/inbox").text


def test_opening_marks_read_and_follows_the_link(client, db: Session, people: People) -> None:  # noqa: ANN001
    (note,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="转诊已接收", link="/referrals/9")
    (plain,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="没有链接")
    db.commit()
    csrf = login(client, "zhang_doc")
    opened = client.post(f"/inbox/{note.id}/open", data={"csrf_token": csrf}, follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/referrals/9"
    back = client.post(f"/inbox/{plain.id}/open", data={"csrf_token": csrf}, follow_redirects=False)
    assert back.headers["location"] == f"/inbox#n{plain.id}"
    db.expire_all()
    assert service.unread_count(db, user=people.doctor) == 0
    assert "未读 0 条" in client.get("/inbox").text


def test_changes_need_the_csrf_token_and_ones_own_notification(client, db: Session,  # noqa: ANN001
                                                              people: People) -> None:
    (theirs,) = service.send(db, user_ids=[people.colleague.id], kind="test", title="李医生的")
    service.send(db, user_ids=[people.doctor.id], kind="test", title="张医生的")
    db.commit()
    csrf = login(client, "zhang_doc")
    assert client.post("/inbox/read-all", data={}, follow_redirects=False).status_code == 403
    assert client.post(f"/inbox/{theirs.id}/open", data={"csrf_token": csrf}).status_code == 404
    db.expire_all()
    assert service.unread_count(db, user=people.colleague) == 1

    done = client.post("/inbox/read-all", data={"csrf_token": csrf}, follow_redirects=True)
    assert done.status_code == 200 and "已将 1 条消息标为已读" in done.text
    db.expire_all()
    assert service.unread_count(db, user=people.doctor) == 0
    assert service.unread_count(db, user=people.colleague) == 1


def test_the_live_refresh_returns_just_the_list(client, db: Session, people: People) -> None:  # noqa: ANN001
    service.send(db, user_ids=[people.doctor.id], kind="test", title="局部刷新")
    db.commit()
    login(client, "zhang_doc")
    fragment = client.get("/inbox", headers={"HX-Request": "true"}).text
    assert "局部刷新" in fragment and "<html" not in fragment and "autofocus" not in fragment


def test_signed_out_visitors_go_to_the_login_page(client) -> None:  # noqa: ANN001
    response = client.get("/inbox", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_outbox_shows_status_and_masks_mobile_numbers(client, db: Session, people: People) -> None:  # noqa: ANN001
    service.send(db, user_ids=[people.doctor.id], kind="test", title="绿色通道", urgent=True)
    db.commit()
    login(client, "county_admin")
    html = client.get("/admin/outbox").text
    assert "<h1>发件箱</h1>" in html
    assert "13912345678" not in html and "139****5678" in html
    assert "oWx_zhang_0001abcd" not in html
    assert "zhang@county.example" in html and "待发（未配置通道）" in html
    only_sms = client.get("/admin/outbox?channel=sms").text
    assert "139****5678" in only_sms and "zhang@county.example" not in only_sms
    assert client.get("/admin/outbox?status=bogus").status_code == 422


def test_outbox_is_for_admins_and_org_admins_see_their_own_staff(client, db: Session,  # noqa: ANN001
                                                                people: People) -> None:
    service.send(db, user_ids=[people.doctor.id, people.resident.id], kind="test", title="紧急", urgent=True)
    db.commit()
    login(client, "zhang_doc")
    assert client.get("/admin/outbox").status_code == 403
    client.cookies.clear()
    login(client, "county_admin")
    county_view = client.get("/admin/outbox").text
    assert "139****5678" in county_view and "138****1111" not in county_view  # the resident is not county staff
    client.cookies.clear()
    login(client, "alliance_admin")
    everything = client.get("/admin/outbox").text
    assert "139****5678" in everything and "138****1111" in everything


def test_an_alliance_admin_queues_held_email_once_a_server_is_configured(  # noqa: ANN001
        client, db: Session, people: People, smtp_server: Mailbox, settings_env: Callable[..., None]) -> None:
    settings_env(smtp_host="")
    service.send(db, user_ids=[people.colleague.id], kind="test", title="等邮件服务器")
    db.commit()
    settings_env(smtp_host=smtp_server.host)
    csrf = login(client, "county_admin")
    assert client.post("/admin/outbox/release", data={"csrf_token": csrf, "channel": "email"}).status_code == 403
    client.cookies.clear()
    csrf = login(client, "alliance_admin")
    assert client.post("/admin/outbox/release", data={"channel": "email"}).status_code == 403  # no CSRF token
    refused = client.post("/admin/outbox/release", data={"csrf_token": csrf, "channel": "sms"})
    assert refused.status_code == 409 and "仍未配置" in refused.text
    done = client.post("/admin/outbox/release", data={"csrf_token": csrf, "channel": "email"})
    assert done.status_code == 200 and "已重新排队 1 条待发消息" in done.text and "排队中" in done.text
    run_timers()
    assert [m["X-RcptTo"] for m in smtp_server.messages] == ["li@county.example"]
    assert "已发送" in client.get("/admin/outbox").text
