"""Request and response bodies of the directory API.

Inputs refuse unknown fields (a typo should not be silently dropped) and carry the ranges the
service enforces, so the OpenAPI document tells clients the rules up front.
"""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    Capability,
    Department,
    MembershipRole,
    Organisation,
    OrgKind,
    OrgLevel,
    Post,
    Practitioner,
    Team,
    TeamKind,
    TitleGrade,
)
from healthrelay.directory.service import AllianceMap, Page, Suggestion

T = TypeVar("T")

Code = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^\S+$")]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class PageOut(BaseModel, Generic[T]):
    """A page without a total: `next_offset` is null on the last page."""

    items: list[T]
    limit: int
    offset: int
    next_offset: int | None

    @classmethod
    def of(cls, page: Page, items: list[T]) -> PageOut[T]:
        return cls(items=items, limit=page.limit, offset=page.offset, next_offset=page.next_offset)


# --- alliances -----------------------------------------------------------------------------

class AllianceCreate(_In):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    kind: AllianceKind
    description: str = Field("", max_length=2000)


class AllianceUpdate(_In):
    name: str | None = Field(None, min_length=1, max_length=200)
    kind: AllianceKind | None = None
    description: str | None = Field(None, max_length=2000)


class OrganisationSummary(_Out):
    id: int
    code: str
    name: str
    level: OrgLevel
    kind: OrgKind


class AllianceOut(_Out):
    id: int
    code: str
    name: str
    kind: AllianceKind
    description: str
    lead: OrganisationSummary | None = None

    @classmethod
    def build(cls, alliance: Alliance, lead: Organisation | None = None) -> AllianceOut:
        return cls(id=alliance.id, code=alliance.code, name=alliance.name, kind=alliance.kind,
                   description=alliance.description,
                   lead=OrganisationSummary.model_validate(lead) if lead is not None else None)


class MembershipCreate(_In):
    organisation_id: int
    role: MembershipRole = MembershipRole.MEMBER


class MembershipUpdate(_In):
    role: MembershipRole


class MemberOut(BaseModel):
    alliance_id: int
    role: MembershipRole
    organisation: OrganisationOut

    @classmethod
    def build(cls, m: AllianceMembership) -> MemberOut:
        return cls(alliance_id=m.alliance_id, role=m.role, organisation=OrganisationOut.build(m.organisation))


class OrganisationMembershipOut(BaseModel):
    alliance_id: int
    alliance_code: str
    alliance_name: str
    alliance_kind: AllianceKind
    role: MembershipRole


# --- organisations -------------------------------------------------------------------------

class CapabilityIn(_In):
    capability: Capability
    note: str = Field("", max_length=200)


class CapabilityOut(_Out):
    capability: Capability
    note: str


class OrganisationCreate(_In):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    name_en: str = Field("", max_length=200)
    level: OrgLevel
    kind: OrgKind
    parent_id: int | None = None
    area_id: int | None = None
    is_regional_centre: bool = False
    address: str = Field("", max_length=300)
    phone: str = Field("", max_length=40)
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    # Either bare codes ("CT") or {"capability": "CT", "note": "64-slice"}.
    capabilities: list[Capability | CapabilityIn] = Field(default_factory=list, max_length=50)

    def service_kwargs(self) -> dict[str, object]:
        data = self.model_dump(exclude={"capabilities"})
        data["capabilities"] = _capabilities(self.capabilities)
        return data


class OrganisationUpdate(_In):
    name: str | None = Field(None, min_length=1, max_length=200)
    name_en: str | None = Field(None, max_length=200)
    level: OrgLevel | None = None
    kind: OrgKind | None = None
    parent_id: int | None = None
    area_id: int | None = None
    is_regional_centre: bool | None = None
    address: str | None = Field(None, max_length=300)
    phone: str | None = Field(None, max_length=40)
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    capabilities: list[Capability | CapabilityIn] | None = Field(None, max_length=50)

    def service_kwargs(self) -> dict[str, object]:
        """Only the fields the client sent, so an omitted field keeps its value and null clears it."""
        data = self.model_dump(exclude_unset=True, exclude={"capabilities"})
        for key in ("name", "level", "kind", "is_regional_centre"):
            if key in data and data[key] is None:
                data.pop(key)
        if self.capabilities is not None:
            data["capabilities"] = _capabilities(self.capabilities)
        return data


def _capabilities(items: list[Capability | CapabilityIn]) -> list[tuple[Capability, str]]:
    return [(i.capability, i.note) if isinstance(i, CapabilityIn) else (i, "") for i in items]


class OrganisationOut(_Out):
    id: int
    code: str
    name: str
    name_en: str
    level: OrgLevel
    kind: OrgKind
    parent_id: int | None
    area_id: int | None
    is_regional_centre: bool
    address: str
    phone: str
    latitude: float | None
    longitude: float | None
    capabilities: list[Capability]

    @classmethod
    def build(cls, org: Organisation) -> OrganisationOut:
        return cls(**_org_fields(org), capabilities=sorted((c.capability for c in org.capabilities),
                                                           key=list(Capability).index))


def _org_fields(org: Organisation) -> dict[str, object]:
    return {k: getattr(org, k) for k in ("id", "code", "name", "name_en", "level", "kind", "parent_id", "area_id",
                                         "is_regional_centre", "address", "phone", "latitude", "longitude")}


class DepartmentCreate(_In):
    code: Code
    name: str = Field(min_length=1, max_length=100)
    specialty_id: int | None = None
    head_practitioner_id: int | None = None
    phone: str = Field("", max_length=40)


class DepartmentUpdate(_In):
    name: str | None = Field(None, min_length=1, max_length=100)
    specialty_id: int | None = None
    head_practitioner_id: int | None = None
    phone: str | None = Field(None, max_length=40)


class DepartmentOut(_Out):
    id: int
    organisation_id: int
    code: str
    name: str
    specialty_id: int | None
    head_practitioner_id: int | None
    phone: str

    @classmethod
    def build(cls, d: Department) -> DepartmentOut:
        return cls.model_validate(d)


class OrganisationDetail(BaseModel):
    organisation: OrganisationOut
    parent: OrganisationSummary | None
    capabilities: list[CapabilityOut]
    departments: list[DepartmentOut]
    memberships: list[OrganisationMembershipOut]


class SuggestionOut(BaseModel):
    organisation: OrganisationOut
    distance_km: float

    @classmethod
    def build(cls, s: Suggestion) -> SuggestionOut:
        return cls(organisation=OrganisationOut.build(s.organisation), distance_km=s.distance_km)


# --- specialties and practitioners -----------------------------------------------------------

class SpecialtyCreate(_In):
    code: Code
    name: str = Field(min_length=1, max_length=100)
    name_en: str = Field("", max_length=100)


class SpecialtyOut(_Out):
    id: int
    code: str
    name: str
    name_en: str


class PostIn(_In):
    organisation_id: int
    department_id: int | None = None
    position: str = Field("", max_length=100)
    is_primary: bool | None = None


class PostOut(BaseModel):
    id: int
    organisation: OrganisationSummary
    department_id: int | None
    department_name: str | None
    position: str
    is_primary: bool

    @classmethod
    def build(cls, p: Post) -> PostOut:
        return cls(id=p.id, organisation=OrganisationSummary.model_validate(p.organisation),
                   department_id=p.department_id, department_name=p.department.name if p.department else None,
                   position=p.position, is_primary=p.is_primary)


class PractitionerCreate(_In):
    code: Code
    name: str = Field(min_length=1, max_length=100)
    sex: Literal["M", "F", "U"] = "U"
    title_grade: TitleGrade
    years_independent_practice: int = Field(0, ge=0, le=80)
    licence_number: str = Field("", max_length=40)
    phone: str = Field("", max_length=40)
    specialty_ids: list[int] = Field(default_factory=list, max_length=20)
    posts: list[PostIn] = Field(default_factory=list, max_length=20)


class PractitionerUpdate(_In):
    name: str | None = Field(None, min_length=1, max_length=100)
    sex: Literal["M", "F", "U"] | None = None
    title_grade: TitleGrade | None = None
    years_independent_practice: int | None = Field(None, ge=0, le=80)
    licence_number: str | None = Field(None, max_length=40)
    phone: str | None = Field(None, max_length=40)
    specialty_ids: list[int] | None = Field(None, max_length=20)

    def service_kwargs(self) -> dict[str, object]:
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}


class PostCreate(PostIn):
    is_primary: bool | None = False


class PractitionerOut(BaseModel):
    id: int
    code: str
    name: str
    sex: str
    title_grade: TitleGrade
    years_independent_practice: int
    licence_number: str
    phone: str
    specialties: list[SpecialtyOut]
    posts: list[PostOut]

    @classmethod
    def build(cls, p: Practitioner) -> PractitionerOut:
        return cls(id=p.id, code=p.code, name=p.name, sex=p.sex, title_grade=p.title_grade,
                   years_independent_practice=p.years_independent_practice, licence_number=p.licence_number,
                   phone=p.phone, specialties=[SpecialtyOut.model_validate(s) for s in p.specialties],
                   posts=[PostOut.build(x) for x in p.posts])


# --- teams -------------------------------------------------------------------------------------

TeamRole = Literal["leader", "member", "assistant"]


class TeamMemberIn(_In):
    practitioner_id: int
    role: TeamRole = "member"


class TeamCreate(_In):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    kind: TeamKind
    organisation_id: int
    home_organisation_id: int | None = None
    specialty_id: int | None = None
    area_ids: list[int] = Field(default_factory=list, max_length=200)
    members: list[TeamMemberIn] = Field(default_factory=list, max_length=200)


class TeamUpdate(_In):
    name: str | None = Field(None, min_length=1, max_length=200)
    kind: TeamKind | None = None
    organisation_id: int | None = None
    home_organisation_id: int | None = None
    specialty_id: int | None = None
    area_ids: list[int] | None = Field(None, max_length=200)

    def service_kwargs(self) -> dict[str, object]:
        data = self.model_dump(exclude_unset=True)
        for key in ("name", "kind", "area_ids"):
            if key in data and data[key] is None:
                data.pop(key)
        return data


class TeamMemberOut(BaseModel):
    practitioner_id: int
    name: str
    title_grade: TitleGrade
    role: str


class TeamOut(BaseModel):
    id: int
    code: str
    name: str
    kind: TeamKind
    organisation: OrganisationSummary
    home_organisation: OrganisationSummary | None
    specialty: SpecialtyOut | None
    area_ids: list[int]
    members: list[TeamMemberOut]

    @classmethod
    def build(cls, t: Team) -> TeamOut:
        return cls(id=t.id, code=t.code, name=t.name, kind=t.kind,
                   organisation=OrganisationSummary.model_validate(t.organisation),
                   home_organisation=(OrganisationSummary.model_validate(t.home_organisation)
                                      if t.home_organisation else None),
                   specialty=SpecialtyOut.model_validate(t.specialty) if t.specialty else None,
                   area_ids=list(t.area_ids or []),
                   members=[TeamMemberOut(practitioner_id=m.practitioner_id, name=m.practitioner.name,
                                          title_grade=m.practitioner.title_grade, role=m.role)
                            for m in t.members])


# --- the map -----------------------------------------------------------------------------------

class MapNodeOut(BaseModel):
    id: int
    code: str
    name: str
    level: OrgLevel
    kind: OrgKind
    role: MembershipRole
    latitude: float | None
    longitude: float | None
    parent_id: int | None
    is_regional_centre: bool
    capabilities: list[Capability]
    outside_frame: bool = Field(description="placed outside `bounds` (a far-away supporter); drawn at the edge")
    km_from_lead: float | None = Field(description="great-circle distance from the lead, for members outside")
    url: str


class MapOut(BaseModel):
    """What the alliance map draws: points, parent links as [member id, parent id], and the frame."""

    alliance: AllianceOut
    levels: list[OrgLevel]
    nodes: list[MapNodeOut]
    links: list[tuple[int, int]]
    bounds: tuple[float, float, float, float] | None = Field(
        description="min longitude, min latitude, max longitude, max latitude")

    @classmethod
    def build(cls, m: AllianceMap) -> MapOut:
        return cls(alliance=AllianceOut.build(m.alliance), levels=m.levels,
                   nodes=[MapNodeOut(**n.__dict__, url=f"/directory/organisations/{n.id}") for n in m.nodes],
                   links=m.links, bounds=m.bounds)


MemberOut.model_rebuild()
