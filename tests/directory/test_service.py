"""Directory rules as the alliance office meets them: one lead, sane coordinates, real parents,
organisations in several alliances, staff with posts at several places, nearest-capability search."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from healthrelay.core.errors import Conflict, InvalidInput, NotFound
from healthrelay.directory import service
from healthrelay.directory.models import (
    AllianceKind,
    Area,
    AreaLevel,
    Capability,
    MembershipRole,
    Organisation,
    OrgKind,
    OrgLevel,
    Practitioner,
    TeamKind,
    TitleGrade,
)


def _org(db, code: str, name: str, *, level: OrgLevel = OrgLevel.TOWNSHIP,
         kind: OrgKind = OrgKind.TOWNSHIP_CENTRE, **extra) -> Organisation:
    return service.create_organisation(db, code=code, name=name, level=level, kind=kind, **extra)


def _fields(exc: pytest.ExceptionInfo) -> list[str]:
    return [e["field"] for e in exc.value.field_errors]


def _org_count(db) -> int:
    return db.execute(select(func.count()).select_from(Organisation)).scalar_one()


# --- alliances and membership ------------------------------------------------------------------

def test_an_alliance_has_exactly_one_lead(db) -> None:
    alliance = service.create_alliance(db, code="YGT", name="青山县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    county = _org(db, "C1", "青山县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    tcm = _org(db, "C2", "青山县中医医院", level=OrgLevel.SECONDARY, kind=OrgKind.TCM_HOSPITAL)
    service.add_member(db, alliance_id=alliance.id, organisation_id=county.id, role="lead")

    with pytest.raises(Conflict) as exc:
        service.add_member(db, alliance_id=alliance.id, organisation_id=tcm.id, role="lead")
    assert "青山县人民医院" in exc.value.message
    assert _fields(exc) == ["role"]

    service.add_member(db, alliance_id=alliance.id, organisation_id=tcm.id, role="member")
    with pytest.raises(Conflict):
        service.set_member_role(db, alliance_id=alliance.id, organisation_id=tcm.id, role="lead")

    # Hand the lead over: first step the old lead down, then the new one may take it.
    service.set_member_role(db, alliance_id=alliance.id, organisation_id=county.id, role="member")
    service.set_member_role(db, alliance_id=alliance.id, organisation_id=tcm.id, role="lead")
    assert service.alliance_leads(db, [alliance.id])[alliance.id].id == tcm.id
    # Re-saving the current lead as lead is not a second lead.
    service.set_member_role(db, alliance_id=alliance.id, organisation_id=tcm.id, role="lead")


def test_an_organisation_can_belong_to_several_alliances_but_once_to_each(db) -> None:
    county_a = service.create_alliance(db, code="A", name="甲县医共体", kind="county_community")
    county_b = service.create_alliance(db, code="B", name="乙县医共体", kind="county_community")
    chest = service.create_alliance(db, code="X", name="胸痛专科联盟", kind="specialty_alliance")
    province = _org(db, "P1", "省人民医院", level=OrgLevel.PROVINCIAL, kind=OrgKind.GENERAL_HOSPITAL)
    township = _org(db, "T1", "甲镇卫生院")
    for alliance in (county_a, county_b):
        service.add_member(db, alliance_id=alliance.id, organisation_id=province.id, role="supporting")
    service.add_member(db, alliance_id=chest.id, organisation_id=province.id, role="lead")
    service.add_member(db, alliance_id=county_a.id, organisation_id=township.id)

    with pytest.raises(Conflict) as exc:
        service.add_member(db, alliance_id=county_a.id, organisation_id=province.id, role="member")
    assert _fields(exc) == ["organisation_id"]

    roles = {m.alliance.code: m.role for m in service.memberships_of(db, [province.id])[province.id]}
    assert roles == {"A": MembershipRole.SUPPORTING, "B": MembershipRole.SUPPORTING, "X": MembershipRole.LEAD}
    in_b = service.search_organisations(db, alliance_id=county_b.id).items
    assert [o.name for o in in_b] == ["省人民医院"]
    in_a = service.search_organisations(db, alliance_id=county_a.id).items
    assert [o.name for o in in_a] == ["省人民医院", "甲镇卫生院"]  # provincial level listed first


def test_membership_needs_a_real_alliance_and_organisation(db) -> None:
    alliance = service.create_alliance(db, code="A", name="甲县医共体", kind="county_community")
    with pytest.raises(InvalidInput) as exc:
        service.add_member(db, alliance_id=alliance.id, organisation_id=9999)
    assert _fields(exc) == ["organisation_id"]
    org = _org(db, "T1", "甲镇卫生院")
    with pytest.raises(NotFound):
        service.add_member(db, alliance_id=9999, organisation_id=org.id)
    with pytest.raises(InvalidInput) as exc:
        service.create_alliance(db, code="B", name="乙", kind="province_club")
    assert _fields(exc) == ["kind"]


def test_duplicate_codes_are_conflicts(db) -> None:
    service.create_alliance(db, code="A", name="甲县医共体", kind="county_community")
    with pytest.raises(Conflict):
        service.create_alliance(db, code="A", name="另一个", kind="county_community")
    _org(db, "T1", "甲镇卫生院")
    with pytest.raises(Conflict) as exc:
        _org(db, "T1", "乙镇卫生院")
    assert _fields(exc) == ["code"]
    assert _org_count(db) == 1


# --- organisations -----------------------------------------------------------------------------

@pytest.mark.parametrize(("lat", "lng", "field"), [
    (90.5, 110.0, "latitude"), (-91, 110.0, "latitude"), (30.0, 180.01, "longitude"),
    (30.0, -200, "longitude"), (30.0, None, "longitude"), (None, 110.0, "latitude"),
    (float("nan"), 110.0, "latitude"),
])
def test_coordinates_outside_the_globe_are_refused_and_nothing_is_written(db, lat, lng, field) -> None:
    with pytest.raises(InvalidInput) as exc:
        _org(db, "T1", "甲镇卫生院", latitude=lat, longitude=lng)
    assert field in _fields(exc)
    assert _org_count(db) == 0


def test_edge_coordinates_are_accepted_and_can_be_cleared(db) -> None:
    org = _org(db, "T1", "极地站", latitude=-90, longitude=180)
    assert (org.latitude, org.longitude) == (-90, 180)
    with pytest.raises(InvalidInput) as exc:
        service.update_organisation(db, organisation_id=org.id, latitude=None)  # half a position
    assert _fields(exc) == ["latitude"] or _fields(exc) == ["longitude"]
    service.update_organisation(db, organisation_id=org.id, latitude=None, longitude=None)
    assert org.latitude is None and org.longitude is None


def test_unknown_parent_or_area_names_the_field(db) -> None:
    with pytest.raises(InvalidInput) as exc:
        _org(db, "V1", "甲村卫生室", level=OrgLevel.VILLAGE, kind=OrgKind.VILLAGE_CLINIC, parent_id=4242)
    assert _fields(exc) == ["parent_id"]
    assert "4242" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        _org(db, "V1", "甲村卫生室", area_id=777)
    assert _fields(exc) == ["area_id"]
    assert _org_count(db) == 0

    area = Area(code="360101001", name="甲镇", level=AreaLevel.TOWNSHIP)
    db.add(area)
    db.flush()
    township = _org(db, "T1", "甲镇卫生院", area_id=area.id)
    village = _org(db, "V1", "甲村卫生室", level=OrgLevel.VILLAGE, kind=OrgKind.VILLAGE_CLINIC,
                   parent_id=township.id)
    assert village.parent.name == "甲镇卫生院"
    assert [c.name for c in service.list_children(db, organisation_id=township.id)] == ["甲村卫生室"]


def test_an_organisation_cannot_sit_below_itself(db) -> None:
    county = _org(db, "C1", "县医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    township = _org(db, "T1", "甲镇卫生院", parent_id=county.id)
    village = _org(db, "V1", "甲村卫生室", level=OrgLevel.VILLAGE, kind=OrgKind.VILLAGE_CLINIC,
                   parent_id=township.id)
    for parent in (county, village):
        with pytest.raises(InvalidInput) as exc:
            service.update_organisation(db, organisation_id=county.id, parent_id=parent.id)
        assert _fields(exc) == ["parent_id"]
    assert county.parent_id is None


def test_capabilities_are_replaced_as_a_set(db) -> None:
    org = _org(db, "C1", "县医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL,
               capabilities=["CT", ("DR", "数字摄片"), {"capability": "ECG", "note": "12 导联"}])
    assert {c.capability for c in org.capabilities} == {Capability.CT, Capability.DR, Capability.ECG}
    service.update_organisation(db, organisation_id=org.id, capabilities=["ECG", "PCI"])
    db.expire_all()
    org = service.get_organisation(db, org.id)
    assert {c.capability: c.note for c in org.capabilities} == {Capability.ECG: "", Capability.PCI: ""}
    with pytest.raises(InvalidInput) as exc:
        service.update_organisation(db, organisation_id=org.id, capabilities=["CT", "CT"])
    assert _fields(exc) == ["capabilities"]
    with pytest.raises(InvalidInput):
        service.update_organisation(db, organisation_id=org.id, capabilities=["XRAY-VISION"])


def test_search_filters_and_pages_without_counting(db) -> None:
    alliance = service.create_alliance(db, code="A", name="甲县医共体", kind="county_community")
    county = _org(db, "C1", "甲县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL,
                  capabilities=["CT", "ECG"])
    service.add_member(db, alliance_id=alliance.id, organisation_id=county.id, role="lead")
    for i in range(5):
        town = _org(db, f"T{i}", f"甲{i}镇卫生院", capabilities=["ECG"] if i % 2 == 0 else [],
                    parent_id=county.id)
        service.add_member(db, alliance_id=alliance.id, organisation_id=town.id)
    _org(db, "X1", "100%_达标卫生院")  # not a member; a name full of LIKE wildcards

    first = service.search_organisations(db, alliance_id=alliance.id, limit=4)
    assert [o.code for o in first.items] == ["C1", "T0", "T1", "T2"]
    assert first.has_more and first.next_offset == 4
    second = service.search_organisations(db, alliance_id=alliance.id, limit=4, offset=4)
    assert [o.code for o in second.items] == ["T3", "T4"] and not second.has_more

    assert [o.code for o in service.search_organisations(db, capability="CT").items] == ["C1"]
    ecg_towns = service.search_organisations(db, capability="ECG", level="township").items
    assert [o.code for o in ecg_towns] == ["T0", "T2", "T4"]
    assert [o.code for o in service.search_organisations(db, q="人民").items] == ["C1"]
    assert [o.code for o in service.search_organisations(db, q="%_").items] == ["X1"]
    assert [o.code for o in service.search_organisations(db, q="t3").items] == ["T3"]  # codes, any case
    assert service.search_organisations(db, kind="tcm_hospital").items == []
    with pytest.raises(InvalidInput) as exc:
        service.search_organisations(db, limit=0)
    assert _fields(exc) == ["limit"]


# --- suggestions by distance -------------------------------------------------------------------

def test_suggest_organisations_ranks_by_great_circle_distance(db) -> None:
    # A patient at 30.00N 110.00E; candidates north, east and far away (east-west degrees are shorter).
    near_north = _org(db, "N", "北边卫生院", latitude=30.10, longitude=110.00, capabilities=["CT"])  # ~11.1 km
    near_east = _org(db, "E", "东边卫生院", latitude=30.00, longitude=110.11, capabilities=["CT"])  # ~10.6 km
    far = _org(db, "F", "远处县医院", latitude=31.00, longitude=111.00, capabilities=["CT", "MRI"])
    _org(db, "NOCT", "近处无CT卫生院", latitude=30.01, longitude=110.01, capabilities=["ECG"])
    _org(db, "NOWHERE", "无坐标医院", capabilities=["CT"])

    ranked = service.suggest_organisations(db, capability="CT", near_lat=30.0, near_lng=110.0, limit=10)
    assert [s.organisation.code for s in ranked] == ["E", "N", "F"]
    assert ranked[0].distance_km == pytest.approx(10.6, abs=0.2)
    assert ranked[1].distance_km == pytest.approx(11.1, abs=0.2)
    assert ranked[2].distance_km == pytest.approx(145, abs=3)

    assert [s.organisation.id for s in service.suggest_organisations(
        db, capability="CT", near_lat=30.0, near_lng=110.0, limit=1)] == [near_east.id]
    within = service.suggest_organisations(db, capability="CT", near_lat=30.0, near_lng=110.0, max_distance_km=50)
    assert {s.organisation.id for s in within} == {near_north.id, near_east.id}
    excluded = service.suggest_organisations(db, capability="CT", near_lat=30.0, near_lng=110.0,
                                             exclude_organisation_id=near_east.id)
    assert excluded[0].organisation.id == near_north.id

    alliance = service.create_alliance(db, code="A", name="甲县医共体", kind="county_community")
    service.add_member(db, alliance_id=alliance.id, organisation_id=far.id, role="lead")
    members_only = service.suggest_organisations(db, capability="CT", near_lat=30.0, near_lng=110.0,
                                                 alliance_id=alliance.id)
    assert [s.organisation.id for s in members_only] == [far.id]
    assert service.suggest_organisations(db, capability="PCI", near_lat=30.0, near_lng=110.0) == []


def test_suggest_organisations_refuses_bad_input(db) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.suggest_organisations(db, capability="CT", near_lat=95, near_lng=110, limit=3)
    assert _fields(exc) == ["near_lat"]
    with pytest.raises(InvalidInput) as exc:
        service.suggest_organisations(db, capability="TELEPORT", near_lat=30, near_lng=110, limit=3)
    assert _fields(exc) == ["capability"]


def test_great_circle_distance_matches_known_figures() -> None:
    # One degree of latitude is about 111.2 km; Beijing to Shanghai about 1,068 km.
    assert service.great_circle_km(0, 0, 1, 0) == pytest.approx(111.2, abs=0.1)
    assert service.great_circle_km(39.9042, 116.4074, 31.2304, 121.4737) == pytest.approx(1068, abs=5)


# --- practitioners and posts ---------------------------------------------------------------------

def test_a_practitioner_holds_posts_at_two_organisations(db) -> None:
    county = _org(db, "C1", "县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    township = _org(db, "T1", "甲镇卫生院")
    cardio = service.create_specialty(db, code="CARD", name="心血管内科")
    ward = service.create_department(db, organisation_id=county.id, code="XNK", name="心内科",
                                     specialty_id=cardio.id)
    doctor = service.create_practitioner(
        db, code="D1", name="张建国", title_grade="associate_chief", years_independent_practice=15,
        specialty_ids=[cardio.id],
        posts=[{"organisation_id": county.id, "department_id": ward.id, "position": "副主任"},
               {"organisation_id": township.id, "position": "下沉坐诊"}])
    assert [(p.organisation.name, p.is_primary) for p in doctor.posts] == [("县人民医院", True), ("甲镇卫生院", False)]
    for org in (county, township):
        assert [p.name for p in service.search_practitioners(db, organisation_id=org.id).items] == ["张建国"]
    assert [p.practitioner.name for p in service.list_staff(db, organisation_id=township.id).items] == ["张建国"]
    assert service.search_practitioners(db, specialty_id=cardio.id).items == [doctor]
    assert service.search_practitioners(db, grade="chief").items == []

    # A third post made primary takes the flag from the first.
    third = _org(db, "T2", "乙镇卫生院")
    service.add_post(db, practitioner_id=doctor.id, organisation_id=third.id, is_primary=True)
    assert [p.is_primary for p in doctor.posts] == [False, False, True]
    with pytest.raises(Conflict):
        service.add_post(db, practitioner_id=doctor.id, organisation_id=township.id)


def test_practitioner_rules_name_the_field(db) -> None:
    county = _org(db, "C1", "县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    township = _org(db, "T1", "甲镇卫生院")
    ward = service.create_department(db, organisation_id=county.id, code="XNK", name="心内科")
    cases = [
        ({"years_independent_practice": -1}, "years_independent_practice"),
        ({"title_grade": "professor"}, "title_grade"),
        ({"specialty_ids": [31337]}, "specialty_ids"),
        ({"posts": [{"organisation_id": 555}]}, "posts.0.organisation_id"),
        ({"posts": [{"organisation_id": township.id, "department_id": ward.id}]}, "posts.0.department_id"),
        ({"posts": [{"organisation_id": county.id}, {"organisation_id": county.id}]}, "posts.1"),
        ({"sex": "X"}, "sex"),
    ]
    for override, field in cases:
        kwargs = {"code": "D1", "name": "李医生", "title_grade": TitleGrade.ATTENDING} | override
        with pytest.raises(InvalidInput) as exc:
            service.create_practitioner(db, **kwargs)
        assert _fields(exc)[0] == field, override
    assert db.execute(select(func.count()).select_from(Practitioner)).scalar_one() == 0


# --- teams -------------------------------------------------------------------------------------

def test_teams_with_members_and_one_leader(db) -> None:
    township = _org(db, "T1", "甲镇卫生院")
    province = _org(db, "P1", "省人民医院", level=OrgLevel.PROVINCIAL, kind=OrgKind.GENERAL_HOSPITAL)
    doctors = [service.create_practitioner(db, code=f"D{i}", name=f"医生{i}", title_grade="attending")
               for i in range(3)]
    team = service.create_team(db, code="FD1", name="甲镇家庭医生一队", kind="family_doctor",
                               organisation_id=township.id,
                               members=[{"practitioner_id": doctors[0].id, "role": "leader"},
                                        {"practitioner_id": doctors[1].id}])
    assert sorted((m.practitioner.name, m.role) for m in team.members) == [("医生0", "leader"), ("医生1", "member")]
    with pytest.raises(Conflict):
        service.add_team_member(db, team_id=team.id, practitioner_id=doctors[2].id, role="leader")
    service.add_team_member(db, team_id=team.id, practitioner_id=doctors[2].id, role="assistant")
    with pytest.raises(Conflict):
        service.add_team_member(db, team_id=team.id, practitioner_id=doctors[2].id)

    studio = service.create_team(db, code="ES1", name="心内科专家工作室", kind=TeamKind.EXPERT_STUDIO,
                                 organisation_id=township.id, home_organisation_id=province.id)
    assert [t.code for t in service.list_teams(db, kind="expert_studio").items] == ["ES1"]
    assert [t.code for t in service.list_teams(db, home_organisation_id=province.id).items] == [studio.code]
    assert [t.code for t in service.list_teams(db, organisation_id=township.id).items] == ["ES1", "FD1"]  # by kind

    with pytest.raises(InvalidInput) as exc:
        service.create_team(db, code="FD2", name="二队", kind="family_doctor", organisation_id=township.id,
                            members=[{"practitioner_id": 999}])
    assert _fields(exc) == ["members.0.practitioner_id"]
    with pytest.raises(InvalidInput) as exc:
        service.create_team(db, code="FD2", name="二队", kind="family_doctor", organisation_id=9876)
    assert _fields(exc) == ["organisation_id"]
    with pytest.raises(InvalidInput) as exc:
        service.create_team(db, code="FD2", name="二队", kind="family_doctor", organisation_id=township.id,
                            area_ids=[123])
    assert _fields(exc) == ["area_ids"]
    with pytest.raises(InvalidInput) as exc:
        service.create_team(db, code="FD2", name="二队", kind="family_doctor", organisation_id=township.id,
                            members=[{"practitioner_id": doctors[0].id, "role": "leader"},
                                     {"practitioner_id": doctors[1].id, "role": "leader"}])
    assert _fields(exc) == ["members"]


# --- the map -----------------------------------------------------------------------------------

def test_alliance_map_links_members_to_their_parents(db) -> None:
    alliance = service.create_alliance(db, code="A", name="甲县医共体", kind="county_community")
    county = _org(db, "C1", "县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL,
                  latitude=30.0, longitude=110.0, capabilities=["CT", "ECG"])
    town = _org(db, "T1", "甲镇卫生院", parent_id=county.id, latitude=30.2, longitude=110.3, is_regional_centre=True)
    village = _org(db, "V1", "甲村卫生室", level=OrgLevel.VILLAGE, kind=OrgKind.VILLAGE_CLINIC, parent_id=town.id)
    outsider_parent = _org(db, "Z", "外县医院", latitude=29.0, longitude=109.0)
    town_b = _org(db, "T2", "乙镇卫生院", parent_id=outsider_parent.id, latitude=29.9, longitude=110.1)
    # A provincial supporter about 300 km away must not shrink the county to a corner of the map.
    province = _org(db, "P1", "省人民医院", level=OrgLevel.PROVINCIAL, kind=OrgKind.GENERAL_HOSPITAL,
                    latitude=31.5, longitude=112.5)
    for org, role in ((county, "lead"), (town, "member"), (village, "member"), (town_b, "member"),
                      (province, "supporting")):
        service.add_member(db, alliance_id=alliance.id, organisation_id=org.id, role=role)

    the_map = service.alliance_map(db, alliance_id=alliance.id)
    codes = [n.code for n in the_map.nodes]
    assert codes[0] == "C1" and set(codes[1:3]) == {"T1", "T2"} and codes[3:] == ["V1", "P1"]  # lead, members
    assert the_map.links == [(town.id, county.id)]  # village has no position, T2's parent is not a member
    assert [n.code for n in the_map.unplaced] == ["V1"]
    min_lng, min_lat, max_lng, max_lat = the_map.bounds
    assert min_lng < 110.0 and max_lng > 110.3 and min_lat < 29.9 and max_lat > 30.2
    assert max_lat < 30.5 and max_lng < 110.6  # framed on the county, not on the far supporter
    outside = [n for n in the_map.nodes if n.outside_frame]
    assert [n.code for n in outside] == ["P1"]
    assert outside[0].km_from_lead == pytest.approx(service.great_circle_km(30.0, 110.0, 31.5, 112.5), abs=1)
    assert the_map.levels == [OrgLevel.PROVINCIAL, OrgLevel.SECONDARY, OrgLevel.TOWNSHIP, OrgLevel.VILLAGE]
    assert the_map.nodes[0].capabilities == [Capability.CT, Capability.ECG]
