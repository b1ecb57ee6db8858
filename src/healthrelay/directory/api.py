"""The directory's JSON API.

Every signed-in staff user reads (the health bureau too: the directory holds no patient
data); patients get 403. Alliance administrators change anything; an organisation
administrator changes their own organisation's departments, posts and teams.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.deps import CurrentActor, DbSession, require_roles
from healthrelay.directory import service
from healthrelay.directory.models import (
    AllianceKind,
    Capability,
    MembershipRole,
    OrgKind,
    OrgLevel,
    TeamKind,
    TitleGrade,
)
from healthrelay.directory.schemas import (
    AllianceCreate,
    AllianceOut,
    AllianceUpdate,
    CapabilityOut,
    DepartmentCreate,
    DepartmentOut,
    DepartmentUpdate,
    MapOut,
    MemberOut,
    MembershipCreate,
    MembershipUpdate,
    OrganisationCreate,
    OrganisationDetail,
    OrganisationMembershipOut,
    OrganisationOut,
    OrganisationSummary,
    OrganisationUpdate,
    PageOut,
    PostCreate,
    PostOut,
    PractitionerCreate,
    PractitionerOut,
    PractitionerUpdate,
    SpecialtyCreate,
    SpecialtyOut,
    SuggestionOut,
    TeamCreate,
    TeamMemberIn,
    TeamOut,
    TeamUpdate,
)

router = APIRouter(tags=["directory"])

STAFF_ROLES = tuple(r for r in Role if r != Role.PATIENT)
Reader = Annotated[User, require_roles(*STAFF_ROLES)]
AllianceAdmin = Annotated[User, require_roles(Role.ALLIANCE_ADMIN)]
Editor = Annotated[User, require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)]
Limit = Annotated[int, Query(ge=1, le=service.MAX_PAGE)]
Offset = Annotated[int, Query(ge=0)]


# --- alliances ---------------------------------------------------------------------------------

@router.get("/alliances", response_model=list[AllianceOut])
def list_alliances(db: DbSession, _user: Reader, kind: AllianceKind | None = None) -> list[AllianceOut]:
    alliances = service.list_alliances(db, kind=kind)
    leads = service.alliance_leads(db, [a.id for a in alliances])
    return [AllianceOut.build(a, leads.get(a.id)) for a in alliances]


@router.post("/alliances", response_model=AllianceOut, status_code=status.HTTP_201_CREATED)
def create_alliance(body: AllianceCreate, db: DbSession, actor: CurrentActor, _user: AllianceAdmin) -> AllianceOut:
    alliance = service.create_alliance(db, **body.model_dump())
    audit.record(db, actor=actor, action="directory.alliance.create", resource=f"alliance:{alliance.id}",
                 detail={"code": alliance.code})
    return AllianceOut.build(alliance)


@router.get("/alliances/{alliance_id}", response_model=AllianceOut)
def get_alliance(alliance_id: int, db: DbSession, _user: Reader) -> AllianceOut:
    alliance = service.get_alliance(db, alliance_id)
    return AllianceOut.build(alliance, service.alliance_leads(db, [alliance.id]).get(alliance.id))


@router.patch("/alliances/{alliance_id}", response_model=AllianceOut)
def update_alliance(alliance_id: int, body: AllianceUpdate, db: DbSession, actor: CurrentActor,
                    _user: AllianceAdmin) -> AllianceOut:
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    alliance = service.update_alliance(db, alliance_id=alliance_id, **changes)
    audit.record(db, actor=actor, action="directory.alliance.update", resource=f"alliance:{alliance.id}",
                 detail={"fields": sorted(changes)})
    return AllianceOut.build(alliance, service.alliance_leads(db, [alliance.id]).get(alliance.id))


@router.get("/alliances/{alliance_id}/members", response_model=PageOut[MemberOut])
def list_members(alliance_id: int, db: DbSession, _user: Reader, role: MembershipRole | None = None,
                 level: OrgLevel | None = None, limit: Limit = service.DEFAULT_PAGE,
                 offset: Offset = 0) -> PageOut[MemberOut]:
    page = service.list_members(db, alliance_id=alliance_id, role=role, level=level, limit=limit, offset=offset)
    return PageOut[MemberOut].of(page, [MemberOut.build(m) for m in page.items])


@router.post("/alliances/{alliance_id}/members", response_model=MemberOut, status_code=status.HTTP_201_CREATED)
def add_member(alliance_id: int, body: MembershipCreate, db: DbSession, actor: CurrentActor,
               _user: AllianceAdmin) -> MemberOut:
    membership = service.add_member(db, alliance_id=alliance_id, organisation_id=body.organisation_id,
                                    role=body.role)
    audit.record(db, actor=actor, action="directory.membership.add", resource=f"alliance:{alliance_id}",
                 detail={"organisation_id": body.organisation_id, "role": str(body.role)})
    return MemberOut.build(membership)


@router.patch("/alliances/{alliance_id}/members/{organisation_id}", response_model=MemberOut)
def set_member_role(alliance_id: int, organisation_id: int, body: MembershipUpdate, db: DbSession,
                    actor: CurrentActor, _user: AllianceAdmin) -> MemberOut:
    membership = service.set_member_role(db, alliance_id=alliance_id, organisation_id=organisation_id,
                                         role=body.role)
    audit.record(db, actor=actor, action="directory.membership.role", resource=f"alliance:{alliance_id}",
                 detail={"organisation_id": organisation_id, "role": str(body.role)})
    return MemberOut.build(membership)


@router.delete("/alliances/{alliance_id}/members/{organisation_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(alliance_id: int, organisation_id: int, db: DbSession, actor: CurrentActor,
                  _user: AllianceAdmin) -> None:
    service.remove_member(db, alliance_id=alliance_id, organisation_id=organisation_id)
    audit.record(db, actor=actor, action="directory.membership.remove", resource=f"alliance:{alliance_id}",
                 detail={"organisation_id": organisation_id})


@router.get("/alliances/{alliance_id}/map", response_model=MapOut)
def alliance_map(alliance_id: int, db: DbSession, _user: Reader) -> MapOut:
    """Members with coordinates, level, capabilities and parent links, for the tile-free map."""
    return MapOut.build(service.alliance_map(db, alliance_id=alliance_id))


# --- organisations -----------------------------------------------------------------------------

@router.get("/organisations", response_model=PageOut[OrganisationOut])
def search_organisations(db: DbSession, _user: Reader, q: str | None = None, kind: OrgKind | None = None,
                         level: OrgLevel | None = None, capability: Capability | None = None,
                         alliance_id: int | None = None, parent_id: int | None = None,
                         limit: Limit = service.DEFAULT_PAGE, offset: Offset = 0) -> PageOut[OrganisationOut]:
    page = service.search_organisations(db, q=q, kind=kind, level=level, capability=capability,
                                        alliance_id=alliance_id, parent_id=parent_id, limit=limit, offset=offset)
    return PageOut[OrganisationOut].of(page, [OrganisationOut.build(o) for o in page.items])


@router.post("/organisations", response_model=OrganisationOut, status_code=status.HTTP_201_CREATED)
def create_organisation(body: OrganisationCreate, db: DbSession, actor: CurrentActor,
                        _user: AllianceAdmin) -> OrganisationOut:
    org = service.create_organisation(db, **body.service_kwargs())
    audit.record(db, actor=actor, action="directory.organisation.create", resource=f"organisation:{org.id}",
                 detail={"code": org.code})
    return OrganisationOut.build(org)


@router.get("/organisations/suggest", response_model=list[SuggestionOut])
def suggest_organisations(db: DbSession, _user: Reader, capability: Capability,
                          lat: Annotated[float, Query(ge=-90, le=90)],
                          lng: Annotated[float, Query(ge=-180, le=180)],
                          limit: Annotated[int, Query(ge=1, le=100)] = 5, alliance_id: int | None = None,
                          exclude_organisation_id: int | None = None) -> list[SuggestionOut]:
    """Organisations offering a capability, nearest first (great-circle distance in km)."""
    found = service.suggest_organisations(db, capability=capability, near_lat=lat, near_lng=lng, limit=limit,
                                          alliance_id=alliance_id, exclude_organisation_id=exclude_organisation_id)
    return [SuggestionOut.build(s) for s in found]


@router.get("/organisations/{organisation_id}", response_model=OrganisationDetail)
def get_organisation(organisation_id: int, db: DbSession, _user: Reader) -> OrganisationDetail:
    org = service.get_organisation(db, organisation_id)
    memberships = service.memberships_of(db, [org.id])[org.id]
    return OrganisationDetail(
        organisation=OrganisationOut.build(org),
        parent=OrganisationSummary.model_validate(org.parent) if org.parent else None,
        capabilities=[CapabilityOut.model_validate(c) for c in org.capabilities],
        departments=[DepartmentOut.build(d) for d in service.list_departments(db, organisation_id=org.id)],
        memberships=[OrganisationMembershipOut(alliance_id=m.alliance_id, alliance_code=m.alliance.code,
                                               alliance_name=m.alliance.name, alliance_kind=m.alliance.kind,
                                               role=m.role) for m in memberships])


@router.patch("/organisations/{organisation_id}", response_model=OrganisationOut)
def update_organisation(organisation_id: int, body: OrganisationUpdate, db: DbSession, actor: CurrentActor,
                        _user: AllianceAdmin) -> OrganisationOut:
    changes = body.service_kwargs()
    org = service.update_organisation(db, organisation_id=organisation_id, **changes)
    audit.record(db, actor=actor, action="directory.organisation.update", resource=f"organisation:{org.id}",
                 detail={"fields": sorted(changes)})
    return OrganisationOut.build(org)


@router.get("/organisations/{organisation_id}/departments", response_model=list[DepartmentOut])
def list_departments(organisation_id: int, db: DbSession, _user: Reader) -> list[DepartmentOut]:
    return [DepartmentOut.build(d) for d in service.list_departments(db, organisation_id=organisation_id)]


@router.post("/organisations/{organisation_id}/departments", response_model=DepartmentOut,
             status_code=status.HTTP_201_CREATED)
def create_department(organisation_id: int, body: DepartmentCreate, db: DbSession, actor: CurrentActor,
                      user: Editor) -> DepartmentOut:
    service.get_organisation(db, organisation_id)
    service.require_organisation_admin(user, organisation_id)
    dept = service.create_department(db, organisation_id=organisation_id, **body.model_dump())
    audit.record(db, actor=actor, action="directory.department.create", resource=f"department:{dept.id}",
                 detail={"organisation_id": organisation_id, "code": dept.code})
    return DepartmentOut.build(dept)


@router.patch("/departments/{department_id}", response_model=DepartmentOut)
def update_department(department_id: int, body: DepartmentUpdate, db: DbSession, actor: CurrentActor,
                      user: Editor) -> DepartmentOut:
    dept = service.get_department(db, department_id)
    service.require_organisation_admin(user, dept.organisation_id)
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if not (k == "name" and v is None)}
    dept = service.update_department(db, department_id=department_id, **changes)
    audit.record(db, actor=actor, action="directory.department.update", resource=f"department:{dept.id}",
                 detail={"fields": sorted(changes)})
    return DepartmentOut.build(dept)


# --- specialties -------------------------------------------------------------------------------

@router.get("/specialties", response_model=list[SpecialtyOut])
def list_specialties(db: DbSession, _user: Reader) -> list[SpecialtyOut]:
    return [SpecialtyOut.model_validate(s) for s in service.list_specialties(db)]


@router.post("/specialties", response_model=SpecialtyOut, status_code=status.HTTP_201_CREATED)
def create_specialty(body: SpecialtyCreate, db: DbSession, actor: CurrentActor, _user: AllianceAdmin) -> SpecialtyOut:
    specialty = service.create_specialty(db, **body.model_dump())
    audit.record(db, actor=actor, action="directory.specialty.create", resource=f"specialty:{specialty.id}",
                 detail={"code": specialty.code})
    return SpecialtyOut.model_validate(specialty)


# --- practitioners -----------------------------------------------------------------------------

@router.get("/practitioners", response_model=PageOut[PractitionerOut])
def search_practitioners(db: DbSession, _user: Reader, q: str | None = None, organisation_id: int | None = None,
                         specialty_id: int | None = None, grade: TitleGrade | None = None,
                         limit: Limit = service.DEFAULT_PAGE, offset: Offset = 0) -> PageOut[PractitionerOut]:
    page = service.search_practitioners(db, q=q, organisation_id=organisation_id, specialty_id=specialty_id,
                                        grade=grade, limit=limit, offset=offset)
    return PageOut[PractitionerOut].of(page, [PractitionerOut.build(p) for p in page.items])


@router.post("/practitioners", response_model=PractitionerOut, status_code=status.HTTP_201_CREATED)
def create_practitioner(body: PractitionerCreate, db: DbSession, actor: CurrentActor,
                        user: Editor) -> PractitionerOut:
    if user.role == Role.ORG_ADMIN:
        # An organisation admin registers their own staff: at least one post, every post at home.
        if not body.posts:
            service.require_alliance_admin(user)
        for post in body.posts:
            service.require_organisation_admin(user, post.organisation_id)
    prac = service.create_practitioner(
        db, **body.model_dump(exclude={"posts"}), posts=[p.model_dump() for p in body.posts])
    audit.record(db, actor=actor, action="directory.practitioner.create", resource=f"practitioner:{prac.id}",
                 detail={"code": prac.code})
    return PractitionerOut.build(service.get_practitioner(db, prac.id))


@router.get("/practitioners/{practitioner_id}", response_model=PractitionerOut)
def get_practitioner(practitioner_id: int, db: DbSession, _user: Reader) -> PractitionerOut:
    return PractitionerOut.build(service.get_practitioner(db, practitioner_id))


@router.patch("/practitioners/{practitioner_id}", response_model=PractitionerOut)
def update_practitioner(practitioner_id: int, body: PractitionerUpdate, db: DbSession, actor: CurrentActor,
                        user: Editor) -> PractitionerOut:
    service.require_practitioner_manager(db, user, service.get_practitioner(db, practitioner_id))
    changes = body.service_kwargs()
    prac = service.update_practitioner(db, practitioner_id=practitioner_id, **changes)
    audit.record(db, actor=actor, action="directory.practitioner.update", resource=f"practitioner:{prac.id}",
                 detail={"fields": sorted(changes)})
    return PractitionerOut.build(prac)


@router.post("/practitioners/{practitioner_id}/posts", response_model=PostOut, status_code=status.HTTP_201_CREATED)
def add_post(practitioner_id: int, body: PostCreate, db: DbSession, actor: CurrentActor, user: Editor) -> PostOut:
    service.get_practitioner(db, practitioner_id)
    service.require_organisation_admin(user, body.organisation_id)
    post = service.add_post(db, practitioner_id=practitioner_id, organisation_id=body.organisation_id,
                            department_id=body.department_id, position=body.position,
                            is_primary=bool(body.is_primary))
    audit.record(db, actor=actor, action="directory.post.create", resource=f"post:{post.id}",
                 detail={"practitioner_id": practitioner_id, "organisation_id": body.organisation_id})
    return PostOut.build(post)


@router.delete("/posts/{post_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_post(post_id: int, db: DbSession, actor: CurrentActor, user: Editor) -> None:
    post = service.get_post(db, post_id)
    service.require_organisation_admin(user, post.organisation_id)
    detail = {"practitioner_id": post.practitioner_id, "organisation_id": post.organisation_id}
    service.remove_post(db, post_id=post_id)
    audit.record(db, actor=actor, action="directory.post.remove", resource=f"post:{post_id}", detail=detail)


# --- teams -------------------------------------------------------------------------------------

@router.get("/teams", response_model=PageOut[TeamOut])
def list_teams(db: DbSession, _user: Reader, kind: TeamKind | None = None, organisation_id: int | None = None,
               home_organisation_id: int | None = None, q: str | None = None,
               limit: Limit = service.DEFAULT_PAGE, offset: Offset = 0) -> PageOut[TeamOut]:
    page = service.list_teams(db, kind=kind, organisation_id=organisation_id,
                              home_organisation_id=home_organisation_id, q=q, limit=limit, offset=offset)
    return PageOut[TeamOut].of(page, [TeamOut.build(t) for t in page.items])


@router.post("/teams", response_model=TeamOut, status_code=status.HTTP_201_CREATED)
def create_team(body: TeamCreate, db: DbSession, actor: CurrentActor, user: Editor) -> TeamOut:
    if user.role != Role.ALLIANCE_ADMIN:
        service.require_organisation_admin(user, body.organisation_id)
    team = service.create_team(db, **body.model_dump(exclude={"members"}),
                               members=[m.model_dump() for m in body.members])
    audit.record(db, actor=actor, action="directory.team.create", resource=f"team:{team.id}",
                 detail={"code": team.code})
    return TeamOut.build(service.get_team(db, team.id))


@router.get("/teams/{team_id}", response_model=TeamOut)
def get_team(team_id: int, db: DbSession, _user: Reader) -> TeamOut:
    return TeamOut.build(service.get_team(db, team_id))


@router.patch("/teams/{team_id}", response_model=TeamOut)
def update_team(team_id: int, body: TeamUpdate, db: DbSession, actor: CurrentActor, user: Editor) -> TeamOut:
    service.require_team_manager(user, service.get_team(db, team_id))
    changes = body.service_kwargs()
    if changes.get("organisation_id") is not None:
        service.require_organisation_admin(user, changes["organisation_id"])  # not hand a team away
    team = service.update_team(db, team_id=team_id, **changes)
    audit.record(db, actor=actor, action="directory.team.update", resource=f"team:{team.id}",
                 detail={"fields": sorted(changes)})
    db.expire(team)
    return TeamOut.build(service.get_team(db, team_id))


@router.post("/teams/{team_id}/members", response_model=TeamOut, status_code=status.HTTP_201_CREATED)
def add_team_member(team_id: int, body: TeamMemberIn, db: DbSession, actor: CurrentActor, user: Editor) -> TeamOut:
    service.require_team_manager(user, service.get_team(db, team_id))
    service.add_team_member(db, team_id=team_id, practitioner_id=body.practitioner_id, role=body.role)
    audit.record(db, actor=actor, action="directory.team.member_add", resource=f"team:{team_id}",
                 detail={"practitioner_id": body.practitioner_id, "role": body.role})
    return TeamOut.build(service.get_team(db, team_id))


@router.delete("/teams/{team_id}/members/{practitioner_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_team_member(team_id: int, practitioner_id: int, db: DbSession, actor: CurrentActor,
                       user: Editor) -> None:
    service.require_team_manager(user, service.get_team(db, team_id))
    service.remove_team_member(db, team_id=team_id, practitioner_id=practitioner_id)
    audit.record(db, actor=actor, action="directory.team.member_remove", resource=f"team:{team_id}",
                 detail={"practitioner_id": practitioner_id})
