"""The directory API as its clients see it: who may read and write, and clear 4xx for bad input."""

from __future__ import annotations

from sqlalchemy import func, select

from healthrelay.accounts.models import Role
from healthrelay.audit.models import AuditEvent
from healthrelay.directory import service
from healthrelay.directory.models import Organisation, OrgKind, OrgLevel
from tests import factories as f

API = "/api/v1"


def _headers(client, db, role: Role, organisation: Organisation | None = None) -> dict[str, str]:
    user = f.user(db, role=role, organisation=organisation)
    db.commit()
    return f.bearer(client, user.username)


def _org_body(code: str = "T100", **extra) -> dict:
    return {"code": code, "name": "青山镇卫生院", "level": "township", "kind": "township_centre",
            "latitude": 30.1, "longitude": 110.2,
            "capabilities": ["ECG", {"capability": "DR", "note": "数字摄片"}]} | extra


def _field_names(response) -> list[str]:
    return [e["field"] for e in response.json()["field_errors"]]


def test_alliance_admin_builds_an_alliance(client, db) -> None:
    admin = _headers(client, db, Role.ALLIANCE_ADMIN)
    r = client.post(f"{API}/alliances", json={"code": "QS", "name": "青山县医共体", "kind": "county_community"},
                    headers=admin)
    assert r.status_code == 201, r.text
    alliance_id = r.json()["id"]
    r = client.post(f"{API}/organisations", json=_org_body("C1", name="青山县人民医院", level="secondary",
                                                          kind="general_hospital", capabilities=["CT"]),
                    headers=admin)
    assert r.status_code == 201, r.text
    county_id = r.json()["id"]
    r = client.post(f"{API}/organisations", json=_org_body(parent_id=county_id), headers=admin)
    assert r.status_code == 201, r.text
    town = r.json()
    assert town["capabilities"] == ["DR", "ECG"] and town["parent_id"] == county_id

    assert client.post(f"{API}/alliances/{alliance_id}/members", json={"organisation_id": county_id, "role": "lead"},
                       headers=admin).status_code == 201
    assert client.post(f"{API}/alliances/{alliance_id}/members", json={"organisation_id": town["id"]},
                       headers=admin).status_code == 201
    r = client.post(f"{API}/organisations/{town['id']}/departments",
                    json={"code": "QK", "name": "全科"}, headers=admin)
    assert r.status_code == 201, r.text

    detail = client.get(f"{API}/organisations/{town['id']}", headers=admin).json()
    assert detail["parent"]["name"] == "青山县人民医院"
    assert [d["name"] for d in detail["departments"]] == ["全科"]
    assert {c["capability"]: c["note"] for c in detail["capabilities"]} == {"ECG": "", "DR": "数字摄片"}
    assert [(m["alliance_name"], m["role"]) for m in detail["memberships"]] == [("青山县医共体", "member")]

    alliance = client.get(f"{API}/alliances/{alliance_id}", headers=admin).json()
    assert alliance["lead"]["name"] == "青山县人民医院"
    members = client.get(f"{API}/alliances/{alliance_id}/members?limit=1", headers=admin).json()
    assert [m["organisation"]["name"] for m in members["items"]] == ["青山县人民医院"]
    assert members["next_offset"] == 1

    # Changes to the directory are in the audit trail.
    actions = set(db.execute(select(AuditEvent.action)).scalars())
    assert {"directory.alliance.create", "directory.organisation.create", "directory.membership.add",
            "directory.department.create"} <= actions


def test_clinician_reads_but_may_not_write(client, db) -> None:
    org = f.organisation(db, name="甲镇卫生院")
    clinician = _headers(client, db, Role.CLINICIAN, org)
    assert client.get(f"{API}/organisations", headers=clinician).status_code == 200
    r = client.post(f"{API}/organisations", json=_org_body(), headers=clinician)
    assert r.status_code == 403
    assert r.json()["code"] == "forbidden"
    r = client.post(f"{API}/alliances", json={"code": "X", "name": "X", "kind": "county_community"},
                    headers=clinician)
    assert r.status_code == 403
    assert db.execute(select(func.count()).select_from(Organisation)).scalar_one() == 1


def test_patients_may_not_read_the_directory_but_the_health_bureau_may(client, db) -> None:
    f.organisation(db, name="甲镇卫生院")
    patient = f.patient(db)
    user = f.user(db, role=Role.PATIENT, patient=patient)
    db.commit()
    as_patient = f.bearer(client, user.username)
    for path in ("/organisations", "/alliances", "/practitioners", "/teams", "/specialties"):
        assert client.get(f"{API}{path}", headers=as_patient).status_code == 403, path
    bureau = _headers(client, db, Role.HEALTH_BUREAU)
    r = client.get(f"{API}/organisations", headers=bureau)
    assert r.status_code == 200
    assert [o["name"] for o in r.json()["items"]] == ["甲镇卫生院"]
    assert client.get(f"{API}/organisations").status_code == 401


def test_duplicate_code_is_409(client, db) -> None:
    admin = _headers(client, db, Role.ALLIANCE_ADMIN)
    assert client.post(f"{API}/organisations", json=_org_body("DUP"), headers=admin).status_code == 201
    r = client.post(f"{API}/organisations", json=_org_body("DUP", name="另一家"), headers=admin)
    assert r.status_code == 409
    assert r.json()["code"] == "duplicate_code"
    assert _field_names(r) == ["code"]
    assert client.post(f"{API}/specialties", json={"code": "CARD", "name": "心内科"}, headers=admin).status_code == 201
    assert client.post(f"{API}/specialties", json={"code": "CARD", "name": "心内"}, headers=admin).status_code == 409


def test_wrong_types_are_422_naming_the_field(client, db) -> None:
    admin = _headers(client, db, Role.ALLIANCE_ADMIN)
    cases = [
        (_org_body(latitude="north"), "latitude"),
        (_org_body(latitude=95), "latitude"),
        (_org_body(longitude=-181), "longitude"),
        (_org_body(level="hamlet"), "level"),
        (_org_body(parent_id="the county"), "parent_id"),
        (_org_body(capabilities=["XRAY"]), "capabilities.0"),
        (_org_body(colour="green"), "colour"),
    ]
    for body, field in cases:
        r = client.post(f"{API}/organisations", json=body, headers=admin)
        assert r.status_code == 422, (body, r.text)
        assert any(name.startswith(field) for name in _field_names(r)), (field, r.json())
    r = client.post(f"{API}/practitioners", json={"code": "D1", "name": "李医生", "title_grade": "attending",
                                                   "years_independent_practice": "ten"}, headers=admin)
    assert r.status_code == 422 and _field_names(r) == ["years_independent_practice"]
    r = client.post(f"{API}/practitioners", json={"code": "D1", "name": "李医生", "title_grade": "attending",
                                                   "years_independent_practice": -2}, headers=admin)
    assert r.status_code == 422 and _field_names(r) == ["years_independent_practice"]
    r = client.get(f"{API}/organisations?level=hamlet", headers=admin)
    assert r.status_code == 422 and _field_names(r) == ["level"]
    assert db.execute(select(func.count()).select_from(Organisation)).scalar_one() == 0


def test_unknown_organisations_are_named(client, db) -> None:
    admin = _headers(client, db, Role.ALLIANCE_ADMIN)
    r = client.post(f"{API}/organisations", json=_org_body(parent_id=9999), headers=admin)
    assert r.status_code == 422
    assert _field_names(r) == ["parent_id"] and "9999" in r.json()["message"]
    r = client.post(f"{API}/teams", json={"code": "FD1", "name": "一队", "kind": "family_doctor",
                                           "organisation_id": 4321}, headers=admin)
    assert r.status_code == 422 and _field_names(r) == ["organisation_id"]
    r = client.post(f"{API}/practitioners", json={"code": "D1", "name": "李医生", "title_grade": "attending",
                                                   "posts": [{"organisation_id": 777}]}, headers=admin)
    assert r.status_code == 422 and _field_names(r) == ["posts.0.organisation_id"]
    r = client.get(f"{API}/organisations/9999", headers=admin)
    assert r.status_code == 404 and "9999" in r.json()["message"]
    assert client.get(f"{API}/alliances/9999/map", headers=admin).status_code == 404
    assert client.post(f"{API}/organisations/9999/departments", json={"code": "QK", "name": "全科"},
                       headers=admin).status_code == 404


def test_second_lead_is_refused(client, db) -> None:
    admin = _headers(client, db, Role.ALLIANCE_ADMIN)
    alliance = service.create_alliance(db, code="QS", name="青山县医共体", kind="county_community")
    first = f.organisation(db, name="县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    second = f.organisation(db, name="县中医院", level=OrgLevel.SECONDARY, kind=OrgKind.TCM_HOSPITAL)
    service.add_member(db, alliance_id=alliance.id, organisation_id=first.id, role="lead")
    db.commit()
    r = client.post(f"{API}/alliances/{alliance.id}/members", json={"organisation_id": second.id, "role": "lead"},
                    headers=admin)
    assert r.status_code == 409 and r.json()["code"] == "lead_exists"
    assert "县人民医院" in r.json()["message"]


def test_org_admin_manages_their_own_departments_posts_and_teams_only(client, db) -> None:
    home = f.organisation(db, name="甲镇卫生院")
    other = f.organisation(db, name="乙镇卫生院")
    admin = _headers(client, db, Role.ORG_ADMIN, home)
    r = client.post(f"{API}/organisations/{home.id}/departments", json={"code": "QK", "name": "全科"}, headers=admin)
    assert r.status_code == 201
    assert client.post(f"{API}/organisations/{other.id}/departments", json={"code": "QK", "name": "全科"},
                       headers=admin).status_code == 403
    assert client.patch(f"{API}/organisations/{home.id}", json={"name": "改名"}, headers=admin).status_code == 403

    r = client.post(f"{API}/practitioners", json={"code": "D1", "name": "王村医", "title_grade": "village_doctor",
                                                   "posts": [{"organisation_id": home.id}]}, headers=admin)
    assert r.status_code == 201, r.text
    doctor_id = r.json()["id"]
    assert client.post(f"{API}/practitioners", json={"code": "D2", "name": "外院医生", "title_grade": "attending",
                                                      "posts": [{"organisation_id": other.id}]},
                       headers=admin).status_code == 403
    assert client.post(f"{API}/practitioners/{doctor_id}/posts", json={"organisation_id": other.id},
                       headers=admin).status_code == 403

    r = client.post(f"{API}/teams", json={"code": "FD1", "name": "甲镇家庭医生一队", "kind": "family_doctor",
                                           "organisation_id": home.id,
                                           "members": [{"practitioner_id": doctor_id, "role": "leader"}]},
                    headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["members"][0]["name"] == "王村医"
    assert client.post(f"{API}/teams", json={"code": "FD2", "name": "乙镇一队", "kind": "family_doctor",
                                              "organisation_id": other.id}, headers=admin).status_code == 403
    assert client.patch(f"{API}/teams/{r.json()['id']}", json={"organisation_id": other.id},
                        headers=admin).status_code == 403


def test_practitioner_with_posts_at_two_organisations_over_the_api(client, db) -> None:
    county = f.organisation(db, name="县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    township = f.organisation(db, name="甲镇卫生院")
    admin = _headers(client, db, Role.ALLIANCE_ADMIN)
    spec = client.post(f"{API}/specialties", json={"code": "CARD", "name": "心血管内科"}, headers=admin).json()
    r = client.post(f"{API}/practitioners", json={
        "code": "D9", "name": "张建国", "title_grade": "chief", "years_independent_practice": 22,
        "specialty_ids": [spec["id"]],
        "posts": [{"organisation_id": county.id, "position": "主任"}, {"organisation_id": township.id}]},
        headers=admin)
    assert r.status_code == 201, r.text
    body = r.json()
    assert [(p["organisation"]["name"], p["is_primary"]) for p in body["posts"]] == [
        ("县人民医院", True), ("甲镇卫生院", False)]
    for org in (county, township):
        found = client.get(f"{API}/practitioners?organisation_id={org.id}", headers=admin).json()["items"]
        assert [p["name"] for p in found] == ["张建国"]
    assert client.get(f"{API}/practitioners?grade=resident", headers=admin).json()["items"] == []
    by_specialty = client.get(f"{API}/practitioners?specialty_id={spec['id']}", headers=admin).json()["items"]
    assert [p["code"] for p in by_specialty] == ["D9"]


def test_map_and_suggestions(client, db) -> None:
    alliance = service.create_alliance(db, code="QS", name="青山县医共体", kind="county_community")
    county = service.create_organisation(db, code="C1", name="县人民医院", level="secondary",
                                         kind="general_hospital", latitude=30.0, longitude=110.0,
                                         capabilities=["CT", "PCI"])
    town = service.create_organisation(db, code="T1", name="甲镇卫生院", level="township", kind="township_centre",
                                       parent_id=county.id, latitude=30.3, longitude=110.4, capabilities=["CT"])
    service.add_member(db, alliance_id=alliance.id, organisation_id=county.id, role="lead")
    service.add_member(db, alliance_id=alliance.id, organisation_id=town.id)
    reader = _headers(client, db, Role.REMOTE_READER, county)

    data = client.get(f"{API}/alliances/{alliance.id}/map", headers=reader).json()
    assert data["alliance"]["name"] == "青山县医共体"
    assert data["links"] == [[town.id, county.id]]
    assert {n["name"]: n["level"] for n in data["nodes"]} == {"县人民医院": "secondary", "甲镇卫生院": "township"}
    assert data["nodes"][0]["url"] == f"/directory/organisations/{county.id}"
    assert data["levels"] == ["secondary", "township"]

    r = client.get(f"{API}/organisations/suggest?capability=CT&lat=30.31&lng=110.41", headers=reader)
    assert r.status_code == 200
    assert [s["organisation"]["name"] for s in r.json()] == ["甲镇卫生院", "县人民医院"]
    assert r.json()[0]["distance_km"] < 2
    r = client.get(f"{API}/organisations/suggest?capability=PCI&lat=30.31&lng=110.41", headers=reader)
    assert [s["organisation"]["name"] for s in r.json()] == ["县人民医院"]
    assert client.get(f"{API}/organisations/suggest?capability=CT&lat=91&lng=110",
                      headers=reader).status_code == 422


def test_updates_change_only_what_is_sent(client, db) -> None:
    admin = _headers(client, db, Role.ALLIANCE_ADMIN)
    org_id = client.post(f"{API}/organisations", json=_org_body(), headers=admin).json()["id"]
    r = client.patch(f"{API}/organisations/{org_id}", json={"phone": "0791-1234567", "capabilities": ["CT"]},
                     headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["phone"] == "0791-1234567" and r.json()["capabilities"] == ["CT"]
    assert r.json()["latitude"] == 30.1 and r.json()["name"] == "青山镇卫生院"
    r = client.patch(f"{API}/organisations/{org_id}", json={"latitude": None}, headers=admin)
    assert r.status_code == 422  # half a position
    r = client.patch(f"{API}/organisations/{org_id}", json={"latitude": None, "longitude": None}, headers=admin)
    assert r.status_code == 200 and r.json()["latitude"] is None
