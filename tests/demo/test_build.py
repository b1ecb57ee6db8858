"""The demo county as stored: sizes from domain.md, valid identifiers, logins that work, built once."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.access.service import decide
from healthrelay.accounts.models import Role, User
from healthrelay.core.db import utcnow
from healthrelay.core.errors import Conflict
from healthrelay.demo.build import build_demo_if_missing, planted_pairs_path
from healthrelay.demo.residents import synthetic_residents
from healthrelay.demo.results import SHOWCASE_LOGIN
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    Area,
    Capability,
    Department,
    MembershipRole,
    Organisation,
    OrganisationCapability,
    OrgKind,
    OrgLevel,
    Post,
    Practitioner,
    Specialty,
    Team,
    TeamKind,
    TeamMember,
    TitleGrade,
)
from healthrelay.patients.identity import check_agrees, parse_resident_id
from healthrelay.patients.models import (
    IdentifierType,
    Patient,
    PatientIdentifier,
    PatientRegistration,
    TeamPanelEntry,
)
from healthrelay.screening.models import ScreeningAttendance, ScreeningEvent
from tests.conftest import DEMO_RESIDENTS as SMALL
from tests.conftest import DEMO_SEED as SEED


def _count(db: Session, model: type, *where: object) -> int:
    return db.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def _pupils(db: Session) -> set[int]:
    """The school check-up registers its pupils through the master patient index; they are not residents."""
    pupils = set(db.execute(select(ScreeningAttendance.patient_id).join(ScreeningEvent).where(
        ScreeningEvent.kind == "school_checkup")).scalars())
    assert pupils
    return pupils


def _orgs(db: Session, *where: object) -> list[Organisation]:
    return list(db.execute(select(Organisation).where(*where)).scalars())


def _caps(db: Session, org: Organisation) -> set[Capability]:
    return set(db.execute(select(OrganisationCapability.capability)
                          .where(OrganisationCapability.organisation_id == org.id)).scalars())


def test_directory_is_sized_like_a_real_county_alliance(built: list[str], db: Session) -> None:
    centres = _orgs(db, Organisation.kind.in_([OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE]))
    assert len(centres) >= 20
    assert sum(c.is_regional_centre for c in centres) == 6
    centre_ids = {c.id for c in centres}
    clinics = _orgs(db, Organisation.kind == OrgKind.VILLAGE_CLINIC)
    assert len(clinics) >= 150 and all(c.parent_id in centre_ids and c.level == OrgLevel.VILLAGE for c in clinics)
    stations = _orgs(db, Organisation.kind == OrgKind.EMERGENCY_STATION)
    substations = _orgs(db, Organisation.kind == OrgKind.EMERGENCY_SUBSTATION)
    assert (len(stations), len(substations)) == (2, 6)
    assert all(Capability.AMBULANCE in _caps(db, o) for o in stations + substations)
    provincial = _orgs(db, Organisation.level == OrgLevel.PROVINCIAL)
    assert len(provincial) >= 2
    assert len(_orgs(db, Organisation.kind == OrgKind.HEALTH_BUREAU)) == 1
    (county_hospital,) = _orgs(db, Organisation.code == "QX-PH")
    assert {Capability.CT, Capability.MRI, Capability.PCI, Capability.THROMBOLYSIS,
            Capability.PATHOLOGY, Capability.DIALYSIS} <= _caps(db, county_hospital)
    assert _orgs(db, Organisation.kind == OrgKind.TCM_HOSPITAL, Organisation.level == OrgLevel.SECONDARY)
    for c in centres:
        assert {Capability.ULTRASOUND, Capability.ECG, Capability.LAB} <= _caps(db, c)
        assert c.latitude and c.longitude
    # the county spreads over roughly 60 x 50 km, villages lie near their township
    villages = list(db.execute(select(Area).where(Area.level == "village")).scalars())
    assert len(villages) >= 150 and all(2 <= len(v.grids) <= 4 for v in villages)
    lats = [v.latitude for v in villages]
    lons = [v.longitude for v in villages]
    assert 0.35 < max(lats) - min(lats) < 0.5 and 0.5 < max(lons) - min(lons) < 0.7
    assert _count(db, Specialty) >= 25
    # hospital departments have a specialty and a head who works there
    for dept in db.execute(select(Department).where(Department.organisation_id == county_hospital.id)).scalars():
        assert dept.specialty_id is not None and dept.head_practitioner_id is not None
        assert _count(db, Post, Post.practitioner_id == dept.head_practitioner_id,
                      Post.organisation_id == county_hospital.id) == 1


def test_alliances_are_many_to_many_with_roles(built: list[str], db: Session) -> None:
    alliances = {a.kind: a for a in db.execute(select(Alliance)).scalars()}
    assert set(alliances) == set(AllianceKind)
    community = alliances[AllianceKind.COUNTY_COMMUNITY]
    roles = Counter(db.execute(select(AllianceMembership.role)
                               .where(AllianceMembership.alliance_id == community.id)).scalars())
    assert roles[MembershipRole.LEAD] == 1 and roles[MembershipRole.SUPPORTING] >= 2
    assert roles[MembershipRole.MEMBER] > 190
    lead = db.execute(select(Organisation).join(AllianceMembership).where(
        AllianceMembership.alliance_id == community.id, AllianceMembership.role == MembershipRole.LEAD)).scalar_one()
    assert lead.code == "QX-PH"
    in_several = db.execute(select(AllianceMembership.organisation_id).group_by(AllianceMembership.organisation_id)
                            .having(func.count() >= 3)).scalars().all()
    assert lead.id in in_several
    chest_pain_lead = db.execute(select(Organisation).join(AllianceMembership).where(
        AllianceMembership.alliance_id == alliances[AllianceKind.SPECIALTY_ALLIANCE].id,
        AllianceMembership.role == MembershipRole.LEAD)).scalar_one()
    assert chest_pain_lead.level == OrgLevel.PROVINCIAL


def test_teams_studios_and_practitioners(built: list[str], db: Session) -> None:
    studios = list(db.execute(select(Team).where(Team.kind == TeamKind.EXPERT_STUDIO)).scalars())
    assert len(studios) >= 30 and len({s.specialty_id for s in studios}) >= 20
    for studio in studios:
        assert studio.home_organisation.level in (OrgLevel.PROVINCIAL, OrgLevel.TERTIARY)
        assert studio.organisation.level == OrgLevel.SECONDARY
        leader = db.execute(select(Practitioner).join(TeamMember).where(
            TeamMember.team_id == studio.id, TeamMember.role == "leader")).scalar_one()
        assert leader.title_grade in (TitleGrade.CHIEF, TitleGrade.ASSOCIATE_CHIEF)
        # 多点执业: the visiting expert holds a post at the home hospital and one at the host
        assert {p.organisation_id for p in leader.posts} >= {studio.home_organisation_id, studio.organisation_id}
    family = list(db.execute(select(Team).where(Team.kind == TeamKind.FAMILY_DOCTOR)).scalars())
    assert len(family) >= 100
    served = [a for t in family for a in t.area_ids]
    assert len(served) == len(set(served)) == _count(db, Area, Area.level == "village")  # each village, one team
    for team in family[:30]:
        assert team.organisation.kind in (OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE)
        grades = {m.practitioner.title_grade for m in team.members}
        assert TitleGrade.NURSE in grades
        assert grades & {TitleGrade.VILLAGE_DOCTOR, TitleGrade.ASSISTANT, TitleGrade.RESIDENT}
    assert _count(db, Team, Team.kind == TeamKind.MOBILE_MEDICAL) >= 2
    # title grades by level: provincial experts are senior, village clinics have village doctors
    provincial_grades = set(db.execute(select(Practitioner.title_grade).join(Post).join(Organisation).where(
        Organisation.level == OrgLevel.PROVINCIAL, Post.is_primary.is_(True))).scalars())
    assert provincial_grades == {TitleGrade.CHIEF, TitleGrade.ASSOCIATE_CHIEF}
    village_grades = Counter(db.execute(select(Practitioner.title_grade).join(Post).join(Organisation).where(
        Organisation.kind == OrgKind.VILLAGE_CLINIC)).scalars())
    assert village_grades.most_common(1)[0][0] == TitleGrade.VILLAGE_DOCTOR


def test_residents_are_registered_paneled_and_carry_valid_ids(built: list[str], db: Session) -> None:
    records, pairs = synthetic_residents(SEED, SMALL)
    pupils = _pupils(db)
    assert _count(db, Patient, Patient.id.not_in(pupils)) == len(records) == SMALL + len(pairs)
    rows = db.execute(select(PatientIdentifier.value, Patient.sex, Patient.birth_date).join(Patient).where(
        PatientIdentifier.type == IdentifierType.RESIDENT_ID)).all()
    assert len(rows) > 0.95 * SMALL
    for value, sex, born in rows:
        check_agrees(parse_resident_id(value), sex=str(sex), birth_date=born)
    registrations = Counter(db.execute(select(PatientRegistration.patient_id)).scalars())
    patients = list(db.execute(select(Patient).where(Patient.id.not_in(pupils)).order_by(Patient.id)).scalars())
    duplicate_ids = {patients[b].id for _, b in pairs}
    # The shared-results showcase resident was also seen at the county hospital.
    showcase = db.execute(select(User.patient_id).where(User.username == SHOWCASE_LOGIN)).scalar_one()
    for p in patients:
        assert registrations[p.id] == (1 if p.id in duplicate_ids else 2) + (p.id == showcase)
        assert p.area_id and p.address_line and p.pinyin_initials
    # on the panel of the family-doctor team that serves their village
    panel = dict(db.execute(select(TeamPanelEntry.patient_id, TeamPanelEntry.team_id)).all())
    assert len(panel) == SMALL
    teams = {t.id: t for t in db.execute(select(Team).where(Team.kind == TeamKind.FAMILY_DOCTOR)).scalars()}
    assert all(p.area_id in teams[panel[p.id]].area_ids for p in patients if p.id in panel)


def test_same_seed_stores_exactly_the_generated_people(built: list[str], db: Session) -> None:
    records, _ = synthetic_residents(SEED, SMALL)
    pupils = _pupils(db)
    stored = db.execute(select(Patient.name, Patient.birth_date, Patient.phone).where(
        Patient.id.not_in(pupils)).order_by(Patient.id)).all()
    assert [tuple(s) for s in stored] == [(r.name, r.birth_date, r.phone) for r in records]
    ids = set(db.execute(select(PatientIdentifier.value).where(
        PatientIdentifier.type == IdentifierType.RESIDENT_ID, PatientIdentifier.patient_id.not_in(pupils))).scalars())
    assert ids == {r.resident_id for r in records if r.resident_id}


def test_planted_pairs_are_recorded_with_patient_ids(built: list[str], db: Session, data_dir: Path) -> None:
    document = json.loads(planted_pairs_path(data_dir).read_text())
    assert document["seed"] == SEED and len(document["pairs"]) == round(SMALL * 0.01)
    for pair in document["pairs"]:
        original = db.get(Patient, pair["original_patient_id"])
        dup = db.get(Patient, pair["duplicate_patient_id"])
        assert original.sex == dup.sex and original.area_id == dup.area_id and pair["errors"]
        assert _count(db, PatientIdentifier, PatientIdentifier.patient_id == dup.id,
                      PatientIdentifier.type == IdentifierType.RESIDENT_ID) == 0


def test_every_role_has_a_demo_user_linked_to_a_post_or_resident(built: list[str], db: Session) -> None:
    users = list(db.execute(select(User)).scalars())
    assert {u.role for u in users} == set(Role)
    for u in users:
        if u.practitioner_id:
            post = db.get(Post, u.post_id)
            assert post.practitioner_id == u.practitioner_id and post.organisation_id == u.organisation_id
    clinicians_at = {db.get(Organisation, u.organisation_id).kind for u in users if u.role == Role.CLINICIAN}
    assert {OrgKind.TOWNSHIP_CENTRE, OrgKind.VILLAGE_CLINIC, OrgKind.GENERAL_HOSPITAL} <= clinicians_at
    assert sum(u.role == Role.PATIENT and u.patient_id is not None for u in users) == 2


def test_demo_users_have_the_care_relationships_of_their_posts(built: list[str], db: Session) -> None:
    by_name = {u.username: u for u in db.execute(select(User)).scalars()}
    resident = db.get(Patient, by_name["patient.shimen"].patient_id)
    assert decide(db, user=by_name["doc.shimen"], patient_id=resident.id) == "registered_here"
    assert decide(db, user=by_name["doc.baisha"], patient_id=resident.id) is None
    assert decide(db, user=by_name["patient.shimen"], patient_id=resident.id) == "own_record"
    assert decide(db, user=by_name["bureau.health"], patient_id=resident.id) is None
    # the village doctor sees a neighbouring village's resident through the shared family-doctor team
    vdoc = next(u for name, u in by_name.items() if name.startswith("vdoc."))
    team = db.execute(select(Team).join(TeamMember).where(
        TeamMember.practitioner_id == vdoc.practitioner_id, Team.kind == TeamKind.FAMILY_DOCTOR)).scalar_one()
    own_area = db.get(Organisation, vdoc.organisation_id).area_id
    neighbour = db.execute(select(Patient).join(TeamPanelEntry).where(
        TeamPanelEntry.team_id == team.id, Patient.area_id != own_area).limit(1)).scalar()
    if neighbour is not None:  # 600 residents over 169 villages: the neighbour village may be empty
        assert decide(db, user=vdoc, patient_id=neighbour.id) == "team_panel"


def test_building_again_changes_nothing(built: list[str], db: Session) -> None:
    counts = {m: _count(db, m) for m in (Organisation, Practitioner, Patient, User, Team, PatientIdentifier)}
    lines: list[str] = []
    assert build_demo_if_missing(seed=SEED, residents=SMALL, progress=lines.append) is False
    assert "already present" in lines[-1]
    db.expire_all()
    assert {m: _count(db, m) for m in counts} == counts


def test_progress_reports_each_stage_with_counts_and_time(built: list[str]) -> None:
    stages = [line for line in built if line.startswith("[")]
    names = [line.split("] ", 1)[1].split(":", 1)[0] for line in stages]
    assert names == ["areas", "specialties", "organisations", "alliances", "practitioners", "teams", "residents",
                     "accounts", "referrals", "imaging", "roads", "emergency", "pathways", "ecg", "results",
                     "chronic", "screening", "outreach"]
    assert stages[-1].startswith(f"[{len(names)}/{len(names)}] outreach")
    assert re.search(r"emergency: \d+ ambulances, [\d,]+ calls", "\n".join(stages))
    assert all("s, total" in line for line in stages)
    assert any("(100%)" in line for line in built)


def test_a_failed_build_leaves_nothing_behind(database_url: str, db: Session) -> None:
    from tests import factories as f

    f.user(db, username="doc.shimen", organisation=f.organisation(db))  # the last stage will collide
    db.commit()
    lines: list[str] = []
    with pytest.raises(Conflict):
        build_demo_if_missing(seed=SEED, residents=SMALL, progress=lines.append)
    assert "nothing was kept" in lines[-1]
    db.expire_all()
    assert _count(db, Alliance) == 0 and _count(db, Patient) == 0 and _count(db, Area) == 0
    assert _count(db, Organisation) == 1 and _count(db, User) == 1


def test_the_demo_has_referral_history_and_an_open_county_board(built: list[str], db: Session) -> None:
    from healthrelay.referrals.models import FollowUpTask, Referral, State

    states = {s for s in db.execute(select(Referral.state)).scalars()}
    assert {State.SENT, State.ACCEPTED, State.COMPLETED, State.DECLINED} <= states
    months = {r.sent_at.strftime("%Y-%m") for r in db.execute(select(Referral)).scalars() if r.sent_at}
    assert len(months) >= 5  # six months of history for the indicators
    overdue = db.execute(select(func.count()).where(Referral.state == State.SENT,
                                                    Referral.response_due_at < utcnow())).scalar_one()
    assert overdue >= 2
    assert db.execute(select(func.count()).where(FollowUpTask.done_at.is_(None))).scalar_one() >= 3


def test_demo_registers_the_members_modalities_and_lists_them_for_peers(built: list[str], db: Session) -> None:
    from healthrelay.demo.build import demo_accounts_document
    from healthrelay.imaging.models import Modality

    listed = demo_accounts_document()
    assert listed["dicom"] == {"ae_title": "HEALTHRELAY", "host": "127.0.0.1", "port": 11112}
    stored = {m.ae_title: m for m in db.execute(select(Modality)).scalars()}
    assert {m["ae_title"] for m in listed["modalities"]} == set(stored)
    shimen_ct = next(m for m in listed["modalities"] if m["ae_title"] == "QXC03CT")
    assert shimen_ct["organisation"] == "石门镇中心卫生院" and shimen_ct["modality_type"] == "CT"
    assert stored["QXC03CT"].contact_user_id is not None  # the township doctor hears about its studies
