"""Family-doctor contracts: signing (number, panel, enrolments' team), one team at a time, renewal, ending,
expiry, the team panel and its pages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.audit.models import AuditEvent
from healthrelay.chronic import service
from healthrelay.chronic.models import FamilyDoctorContract
from healthrelay.core.db import local_today
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NeedToKnowDenied
from healthrelay.patients.models import PatientRegistration, TeamPanelEntry
from tests import factories as f
from tests.chronic.registry_world import RegistryWorld, build, login, other_user


@pytest.fixture
def registry_world(db: Session) -> RegistryWorld:
    world = build(db)
    db.commit()
    return world


def test_signing_numbers_the_contract_puts_the_resident_on_the_panel_and_gives_access(
        db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    # The village doctor had no care relationship with this resident of their own village before signing.
    assert service.access.decide(db, user=w.vdoc, patient_id=w.p1.id) is None
    enrolment = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn",
                              diagnosed_on=local_today(), source="clinic")
    enrolment.team_id = None  # as if no team served the village at enrolment
    db.commit()
    today = local_today()
    contract = service.sign_contract(db, by=w.vdoc, patient_id=w.p1.id, team_id=w.team1.id, package_code="chronic",
                                     starts_on=today, years=1)
    db.commit()
    assert contract.number == f"QY{today:%Y%m%d}-0001"
    assert (contract.ends_on - contract.starts_on).days in (364, 365)  # one year, the last day included
    assert db.scalar(select(func.count()).select_from(TeamPanelEntry).where(
        TeamPanelEntry.team_id == w.team1.id, TeamPanelEntry.patient_id == w.p1.id)) == 1
    assert service.access.decide(db, user=w.vdoc, patient_id=w.p1.id) == "team_panel"
    db.refresh(enrolment)
    assert enrolment.team_id == w.team1.id
    neighbour = f.patient(db, name="赵大妈", registered_at=w.town1)
    second = service.sign_contract(db, by=w.doc1, patient_id=neighbour.id, team_id=w.team1.id,
                                   package_code="basic", starts_on=today)
    assert second.number == f"QY{today:%Y%m%d}-0002"


def test_already_signed_to_another_team_is_refused_naming_it(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    today = local_today()
    # p2 lives in team2's village; team2 signs them.
    first = service.sign_contract(db, by=w.doc2, patient_id=w.p2.id, team_id=w.team2.id, package_code="basic",
                                  starts_on=today)
    db.commit()
    # Give doc1 a care relationship with p2 (registered at town1 too), then try to sign them to team1.
    db.add(PatientRegistration(patient_id=w.p2.id, organisation_id=w.town1.id))
    db.commit()
    with pytest.raises(Conflict) as exc:
        service.sign_contract(db, by=w.doc1, patient_id=w.p2.id, team_id=w.team1.id, package_code="basic",
                              starts_on=today)
    assert exc.value.code == "signed_to_another_team"
    assert w.team2.name in exc.value.message and str(first.ends_on) in exc.value.message
    db.rollback()
    # After the other contract's period a new team may sign them.
    service.sign_contract(db, by=w.doc1, patient_id=w.p2.id, team_id=w.team1.id, package_code="basic",
                          starts_on=first.ends_on + timedelta(days=1))
    db.commit()


def test_same_team_renews_only_after_the_current_period(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    start = local_today() - timedelta(days=300)
    current = service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=w.team1.id, package_code="basic",
                                    starts_on=start)
    db.commit()
    with pytest.raises(Conflict) as exc:
        service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=w.team1.id, package_code="chronic",
                              starts_on=local_today())
    assert exc.value.code == "already_signed" and str(current.ends_on + timedelta(days=1)) in exc.value.message
    db.rollback()
    renewal = service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=w.team1.id, package_code="chronic",
                                    starts_on=current.ends_on + timedelta(days=1))
    db.commit()
    assert renewal.starts_on == current.ends_on + timedelta(days=1)
    assert service.active_contract(db, w.p1.id).id == current.id  # the one in force today


def test_bad_contract_input_is_named_by_field(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    with pytest.raises(InvalidInput) as exc:
        service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=999_999, package_code="gold",
                              starts_on=local_today() + timedelta(days=800), years=9)
    assert {e["field"] for e in exc.value.field_errors} == {"team_id", "package_code", "starts_on", "years"}
    db.rollback()
    assert db.scalar(select(func.count()).select_from(FamilyDoctorContract)) == 0


def test_only_team_members_sign_and_only_residents_they_may_see(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    # doc2 is not in team1.
    with pytest.raises(AccessDenied):
        service.sign_contract(db, by=w.doc2, patient_id=w.p2.id, team_id=w.team1.id, package_code="basic",
                              starts_on=local_today())
    db.rollback()
    # doc1 is in team1, but p2 lives in another township and has no relationship with doc1.
    with pytest.raises(NeedToKnowDenied):
        service.sign_contract(db, by=w.doc1, patient_id=w.p2.id, team_id=w.team1.id, package_code="basic",
                              starts_on=local_today())
    db.rollback()
    assert db.scalar(select(func.count()).select_from(FamilyDoctorContract)) == 0


def test_end_and_expire(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    old = service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=w.team1.id, package_code="basic",
                                starts_on=local_today() - timedelta(days=365))
    db.commit()
    other = service.sign_contract(db, by=w.doc2, patient_id=w.p2.id, team_id=w.team2.id, package_code="basic",
                                  starts_on=local_today())
    db.commit()
    with pytest.raises(InvalidInput):
        service.end_contract(db, by=w.doc2, contract_id=other.id, reason="")
    service.end_contract(db, by=w.doc2, contract_id=other.id, reason="搬到县城 / moved to town")
    db.commit()
    with pytest.raises(Conflict):
        service.end_contract(db, by=w.doc2, contract_id=other.id, reason="again")
    db.rollback()
    assert service.expire_contracts(db, local_today()) == 1
    db.commit()
    db.refresh(old)
    assert old.status == "ended" and "期满" in old.ended_reason
    assert service.expire_contracts(db, local_today()) == 0


def test_team_panel_lists_signed_residents_for_members_only(client, db: Session,  # noqa: ANN001
                                                            registry_world: RegistryWorld) -> None:
    w = registry_world
    service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=w.team1.id, package_code="chronic",
                          starts_on=local_today())
    service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn", diagnosed_on=local_today(),
                  source="clinic")
    db.commit()
    panel = service.team_panel(db, user=w.vdoc, team_id=w.team1.id)
    assert [(r.name, r.conditions, r.package_code) for r in panel.rows] == [("王秀英", ["htn"], "chronic")]
    assert panel.rows[0].next_visit_due == local_today()
    assert service.team_panel(db, user=w.vdoc, team_id=w.team1.id, q="wxy").total == 1
    assert service.team_panel(db, user=w.vdoc, team_id=w.team1.id, q="zhang").total == 0
    with pytest.raises(AccessDenied):
        service.team_panel(db, user=w.doc2, team_id=w.team1.id)
    db.rollback()
    api = client.get(f"/api/v1/chronic/teams/{w.team1.id}/panel", headers=f.bearer(client, w.doc1.username))
    assert api.status_code == 200 and api.json()["rows"][0]["conditions"] == ["htn"]
    refused = client.get(f"/api/v1/chronic/teams/{w.team1.id}/panel", headers=f.bearer(client, w.doc2.username))
    assert refused.status_code == 403
    login(client, w.vdoc.username)
    page = client.get(f"/chronic/teams/{w.team1.id}")
    assert page.status_code == 200 and "王秀英" in page.text and "慢病服务包" in page.text


def test_contract_form_signs_and_shows_conflicts(client, db: Session, registry_world: RegistryWorld) -> None:  # noqa: ANN001
    w = registry_world
    service.sign_contract(db, by=w.doc2, patient_id=w.p2.id, team_id=w.team2.id, package_code="basic",
                          starts_on=local_today())
    db.add(PatientRegistration(patient_id=w.p2.id, organisation_id=w.town1.id))
    db.commit()
    token = login(client, w.doc1.username, f"/chronic/contracts/new?patient={w.p1.id}")
    form = {"csrf_token": token, "patient_id": str(w.p1.id), "team_id": str(w.team1.id), "package_code": "basic",
            "starts_on": "2026-13-40", "years": "1"}
    bad = client.post("/chronic/contracts/new", data=form, follow_redirects=False)
    assert bad.status_code == 422 and 'id="starts_on-error"' in bad.text
    done = client.post("/chronic/contracts/new", data={**form, "starts_on": str(local_today())},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith(f"/chronic/teams/{w.team1.id}?done=QY")
    conflict = client.post("/chronic/contracts/new", data={**form, "patient_id": str(w.p2.id),
                                                           "starts_on": str(local_today())}, follow_redirects=False)
    assert conflict.status_code == 409 and w.team2.name in conflict.text
    # The API answers the same way.
    api = client.post("/api/v1/chronic/contracts", headers=f.bearer(client, w.doc1.username), json={
        "patient_id": w.p2.id, "team_id": w.team1.id, "package_code": "basic", "starts_on": str(local_today())})
    assert api.status_code == 409 and api.json()["code"] == "signed_to_another_team"


def test_contract_form_shows_a_resident_only_to_staff_who_may_sign_them(client, db: Session,  # noqa: ANN001
                                                                       registry_world: RegistryWorld) -> None:
    """GET /chronic/contracts/new?patient= names the resident and their contract: the rule of signing applies
    (a family-doctor team, and a care relationship or a village the team serves), and the read is audited."""
    w = registry_world
    bureau = other_user(db, role=Role.HEALTH_BUREAU, organisation=None)
    resident = f.user(db, role=Role.PATIENT, username="reg_resident_p1", patient=w.p1)  # own record: not staff
    db.commit()
    url = f"/chronic/contracts/new?patient={w.p1.id}"
    for username in (bureau.username, resident.username, w.doc2.username):  # doc2: team2, p1 lives elsewhere
        login(client, username, "/")
        refused = client.get(url)
        assert refused.status_code == 403, (username, refused.status_code)
        assert "王秀英" not in refused.text and "1956" not in refused.text
    denied = db.scalars(select(AuditEvent).where(AuditEvent.action == "chronic.contract.read",
                                                 AuditEvent.outcome == "denied")).all()
    assert len(denied) == 3 and {e.patient_id for e in denied} == {w.p1.id}
    # The village doctor of team1: p1 lives in a village team1 serves.
    login(client, w.vdoc.username)
    shown = client.get(url)
    assert shown.status_code == 200 and "王秀英" in shown.text
    read = db.scalar(select(AuditEvent).where(AuditEvent.action == "chronic.contract.read",
                                              AuditEvent.outcome == "ok"))
    assert read is not None and read.patient_id == w.p1.id and read.purpose == "team_village"


def test_landing_counts_each_team_and_the_contract_form_lists_the_users_teams(
        client, db: Session, registry_world: RegistryWorld) -> None:  # noqa: ANN001
    w = registry_world
    service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=w.team1.id, package_code="basic",
                          starts_on=local_today())
    service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn", diagnosed_on=local_today(),
                  source="clinic")
    service.sign_contract(db, by=w.doc2, patient_id=w.p2.id, team_id=w.team2.id, package_code="basic",
                          starts_on=local_today())
    third = f.family_team(db, organisation=w.town1, members=[w.doc1])  # doc1's second team, nobody signed
    db.commit()
    cards = {c.team.id: c for c in service.my_teams(db, user=w.doc1)}
    assert set(cards) == {w.team1.id, third.id}
    assert (cards[w.team1.id].signed, cards[w.team1.id].enrolled, cards[w.team1.id].overdue) == (1, {"htn": 1}, 0)
    assert (cards[third.id].signed, cards[third.id].enrolled, cards[third.id].overdue) == (0, {}, 0)
    assert cards[w.team1.id].organisation_name == w.town1.name
    assert [t.id for t in service.family_teams_for(db, user=w.doc2)] == [w.team2.id]
    assert service.family_teams_for(db, user=other_user(db, role=Role.HEALTH_BUREAU, organisation=None)) == []
