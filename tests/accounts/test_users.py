"""User administration: admins create accounts for the organisations they run, nothing more."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from healthrelay.accounts.models import Role, User
from healthrelay.audit.models import AuditEvent
from healthrelay.directory.models import Post
from tests import factories as f


def sign_in(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the real form; returns the session's CSRF token for later forms."""
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    page = client.get("/admin/users")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    return match.group(1) if match else ""


def new_account(**overrides: str) -> dict[str, str]:
    return {"username": "wang.doctor", "display_name": "王医生", "password": "long-enough-1", "role": "clinician",
            "practitioner_code": "", "patient_id": ""} | overrides


def count_users(db, username: str) -> int:  # noqa: ANN001
    return db.execute(select(func.count()).select_from(User).where(User.username == username)).scalar_one()


def test_alliance_admin_creates_a_clinician_from_the_page(client, db) -> None:
    town = f.organisation(db, name="青山镇卫生院")
    f.user(db, role=Role.ALLIANCE_ADMIN, username="boss")
    prac = f.practitioner(db, name="王医生")
    db.add(Post(practitioner_id=prac.id, organisation_id=town.id))
    db.commit()
    token = sign_in(client, "boss")
    form = client.get("/admin/users").text
    assert '<option value="clinician" selected>' in form  # never an admin role by accident
    response = client.post("/admin/users", data=new_account(csrf_token=token, organisation_id=str(town.id),
                                                            practitioner_code=prac.code), follow_redirects=False)
    assert response.status_code == 303
    listing = client.get(response.headers["location"])
    assert "wang.doctor" in listing.text and "已创建" in listing.text
    created = db.execute(select(User).where(User.username == "wang.doctor")).scalar_one()
    assert (created.role, created.organisation_id, created.practitioner_id) == (Role.CLINICIAN, town.id, prac.id)
    audit = db.execute(select(AuditEvent).where(AuditEvent.action == "user.create")).scalar_one()
    assert audit.username == "boss" and audit.resource == f"user:{created.id}"
    # The new account can sign in at once.
    client.cookies.clear()
    assert f.bearer(client, "wang.doctor", "long-enough-1")


def test_duplicate_username_is_refused_on_the_form_and_nothing_is_written(client, db) -> None:
    town = f.organisation(db)
    f.user(db, role=Role.ALLIANCE_ADMIN, username="boss")
    f.user(db, organisation=town, username="wang.doctor")
    db.commit()
    token = sign_in(client, "boss")
    response = client.post("/admin/users", data=new_account(csrf_token=token, organisation_id=str(town.id),
                                                            display_name="另一个王医生"))
    assert response.status_code == 409
    assert "用户名 wang.doctor 已被使用" in response.text
    assert re.search(r'id="e-username">already taken<', response.text)
    assert 'value="另一个王医生"' in response.text  # what was typed is kept, except the password
    assert "long-enough-1" not in response.text
    assert count_users(db, "wang.doctor") == 1


def test_bad_input_on_the_form_names_each_field(client, db) -> None:
    town = f.organisation(db)
    f.user(db, role=Role.ALLIANCE_ADMIN, username="boss")
    db.commit()
    token = sign_in(client, "boss")
    response = client.post("/admin/users", data=new_account(csrf_token=token, organisation_id=str(town.id),
                                                            username="x", password="short"))
    assert response.status_code == 422
    assert re.search(r'id="e-username">3-60 letters', response.text)
    assert re.search(r'id="e-password">at least 8 characters', response.text)
    unknown = client.post("/admin/users", data=new_account(csrf_token=token, organisation_id=str(town.id),
                                                           practitioner_code="NOPE"))
    assert unknown.status_code == 422 and "unknown practitioner code" in unknown.text
    patient = client.post("/admin/users", data=new_account(csrf_token=token, role="patient", organisation_id="",
                                                           patient_id="abc"))
    assert patient.status_code == 422 and "a whole number" in patient.text
    assert count_users(db, "wang.doctor") == 0


def test_the_form_needs_the_csrf_token(client, db) -> None:
    town = f.organisation(db)
    f.user(db, role=Role.ALLIANCE_ADMIN, username="boss")
    db.commit()
    sign_in(client, "boss")
    response = client.post("/admin/users", data=new_account(organisation_id=str(town.id)))
    assert response.status_code == 403
    assert count_users(db, "wang.doctor") == 0


def test_org_admin_sees_and_creates_only_their_own_organisations_accounts(client, db) -> None:
    mine, other = f.organisation(db, name="青山镇卫生院"), f.organisation(db, name="白水镇卫生院")
    f.user(db, role=Role.ORG_ADMIN, organisation=mine, username="admin_mine")
    f.user(db, organisation=mine, username="doc_mine")
    f.user(db, organisation=other, username="doc_other")
    db.commit()
    token = sign_in(client, "admin_mine")
    listing = client.get("/admin/users")
    assert "doc_mine" in listing.text and "doc_other" not in listing.text
    assert "白水镇卫生院" not in listing.text  # not even offered as a choice
    assert client.get("/admin/users", params={"organisation_id": other.id}).text.count("doc_other") == 0

    elsewhere = client.post("/admin/users", data=new_account(csrf_token=token, organisation_id=str(other.id)))
    assert elsewhere.status_code == 403
    too_high = client.post("/admin/users", data=new_account(csrf_token=token, organisation_id=str(mine.id),
                                                            role="alliance_admin"))
    assert too_high.status_code == 403
    assert count_users(db, "wang.doctor") == 0
    ok = client.post("/admin/users", data=new_account(csrf_token=token, organisation_id=str(mine.id)),
                     follow_redirects=False)
    assert ok.status_code == 303 and count_users(db, "wang.doctor") == 1


def test_org_admin_cannot_borrow_another_organisations_care_relationships(client, db) -> None:
    """An account inherits its practitioner's panels and its patient's record: linking is guarded."""
    mine, other = f.organisation(db), f.organisation(db)
    admin = f.user(db, role=Role.ORG_ADMIN, organisation=mine, username="admin_mine")
    doctor_elsewhere = f.user(db, organisation=other, username="doc_other")
    db.add(Post(practitioner_id=doctor_elsewhere.practitioner_id, organisation_id=other.id))
    resident_elsewhere = f.patient(db, registered_at=other)
    db.commit()
    headers = f.bearer(client, admin.username)
    body = {"username": "sneaky", "password": "long-enough-1", "display_name": "x", "organisation_id": mine.id}
    borrowed_doctor = client.post("/api/v1/users", headers=headers, json=body | {
        "role": "clinician", "practitioner_id": doctor_elsewhere.practitioner_id})
    assert borrowed_doctor.status_code == 403
    assert borrowed_doctor.json()["field_errors"][0]["field"] == "practitioner_id"
    borrowed_patient = client.post("/api/v1/users", headers=headers,
                                   json=body | {"role": "patient", "patient_id": resident_elsewhere.id})
    assert borrowed_patient.status_code == 403
    assert borrowed_patient.json()["field_errors"][0]["field"] == "patient_id"
    assert count_users(db, "sneaky") == 0


def test_api_create_user_duplicate_and_unknown_organisation(client, db) -> None:
    town = f.organisation(db)
    f.user(db, role=Role.ALLIANCE_ADMIN, username="boss")
    db.commit()
    headers = f.bearer(client, "boss")
    body = {"username": "wang.doctor", "password": "long-enough-1", "display_name": "王医生", "role": "clinician",
            "organisation_id": town.id}
    assert client.post("/api/v1/users", headers=headers, json=body).status_code == 201
    duplicate = client.post("/api/v1/users", headers=headers, json=body)
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "duplicate_username"
    assert duplicate.json()["field_errors"] == [{"field": "username", "message": "already taken"}]
    unknown = client.post("/api/v1/users", headers=headers,
                          json=body | {"username": "li.ming", "organisation_id": 99999})
    assert unknown.status_code == 422 and unknown.json()["field_errors"][0]["field"] == "organisation_id"
    assert count_users(db, "wang.doctor") == 1


def test_clinicians_cannot_create_accounts_through_the_api(client, db) -> None:
    f.user(db, organisation=f.organisation(db), username="doc_a")
    db.commit()
    headers = f.bearer(client, "doc_a")
    response = client.post("/api/v1/users", headers=headers, json={
        "username": "x-user", "password": "long-enough-1", "display_name": "x", "role": "clinician"})
    assert response.status_code == 403
    assert count_users(db, "x-user") == 0


def test_clinicians_get_the_refusal_page_for_user_administration(client, db) -> None:
    f.user(db, organisation=f.organisation(db), username="doc_a")
    db.commit()
    sign_in(client, "doc_a")
    response = client.get("/admin/users")
    assert response.status_code == 403
    assert "无权访问" in response.text
