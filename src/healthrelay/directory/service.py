"""The alliance directory's rules: alliances and their members, organisations, departments,
practitioners with their posts, and teams.

Everything here is plain functions taking the session explicitly, so the API, the pages, the
demo builder and later domains (referrals use `suggest_organisations`) share one set of rules.
Every check runs before anything is written, so a refused change leaves nothing behind.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, case, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from healthrelay.accounts.models import Role, User
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
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
    PractitionerSpecialty,
    Specialty,
    Team,
    TeamKind,
    TeamMember,
    TitleGrade,
)

T = TypeVar("T")
E = TypeVar("E")

EARTH_RADIUS_KM = 6371.0088
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_YEARS_PRACTICE = 80
TEAM_MEMBER_ROLES = ("leader", "member", "assistant")
SEXES = ("M", "F", "U")

# Most senior level first, so lists read from the provincial hospital down to the village clinic.
LEVEL_ORDER: tuple[OrgLevel, ...] = tuple(OrgLevel)
GRADE_ORDER: tuple[TitleGrade, ...] = tuple(TitleGrade)
_LEVEL_RANK = case({lvl: i for i, lvl in enumerate(LEVEL_ORDER)}, value=Organisation.level, else_=99)
_GRADE_RANK = case({g: i for i, g in enumerate(GRADE_ORDER)}, value=Practitioner.title_grade, else_=99)
_ROLE_RANK = case({MembershipRole.LEAD: 0, MembershipRole.MEMBER: 1, MembershipRole.SUPPORTING: 2},
                  value=AllianceMembership.role, else_=9)


# ---------------------------------------------------------------------------------------------
# Small shared pieces
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list. `has_more` comes from fetching one extra row, never from COUNT(*)."""

    items: list[T]
    limit: int
    offset: int
    has_more: bool

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.has_more else None

    @property
    def prev_offset(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None


def _check_paging(limit: int, offset: int) -> None:
    errors = []
    if not 1 <= limit <= MAX_PAGE:
        errors.append(field_error("limit", f"1..{MAX_PAGE}"))
    if offset < 0:
        errors.append(field_error("offset", ">= 0"))
    if errors:
        raise InvalidInput(f"分页参数有误（limit 1–{MAX_PAGE}，offset ≥ 0）/ limit must be 1..{MAX_PAGE} and "
                           "offset at least 0", field_errors=errors)


def _paginate(db: Session, query: Select[tuple[T]], *, limit: int, offset: int) -> Page[T]:
    _check_paging(limit, offset)
    rows = list(db.execute(query.limit(limit + 1).offset(offset)).scalars().unique())
    return Page(items=rows[:limit], limit=limit, offset=offset, has_more=len(rows) > limit)


def _text(field_name: str, value: Any, *, max_length: int, required: bool = True) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise InvalidInput(f"{field_name} 不能为空 / {field_name} is required",
                           field_errors=[field_error(field_name, "required")])
    if len(text) > max_length:
        raise InvalidInput(f"{field_name} 过长（最多 {max_length} 字）/ {field_name} is longer than {max_length}",
                           field_errors=[field_error(field_name, f"at most {max_length} characters")])
    return text


def _code(field_name: str, value: Any) -> str:
    code = _text(field_name, value, max_length=40)
    if any(ch.isspace() for ch in code):
        raise InvalidInput(f"{field_name} 不能包含空格 / {field_name} must not contain spaces",
                           field_errors=[field_error(field_name, "no spaces allowed")])
    return code


def _enum_value(enum_cls: type[E], field_name: str, value: Any) -> E:
    try:
        return enum_cls(value)  # type: ignore[call-arg]
    except ValueError:
        allowed = ", ".join(str(m) for m in enum_cls)  # type: ignore[attr-defined]
        raise InvalidInput(f"{field_name} 的取值无效：{value} / {field_name} must be one of {allowed}",
                           field_errors=[field_error(field_name, f"unknown value {value!r}")]) from None


def _flush(db: Session, *, what: str) -> None:
    """Flush, turning a unique-constraint race lost to another request into a 409, not a 500."""
    try:
        db.flush()
    except IntegrityError as exc:
        raise Conflict(f"{what}与现有记录冲突，请刷新后重试 / {what}: conflicts with an existing record",
                       code="duplicate") from exc


def _require_fields(changes: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = set(changes) - set(allowed)
    if unknown:
        raise TypeError(f"unknown fields: {sorted(unknown)}")


def _referenced_organisation(db: Session, organisation_id: int | None, field_name: str) -> Organisation | None:
    """A body field that names an organisation: unknown ids are bad input (422) naming the field."""
    if organisation_id is None:
        return None
    org = db.get(Organisation, organisation_id)
    if org is None:
        raise InvalidInput(f"{field_name}：没有编号为 {organisation_id} 的机构 / {field_name}: no organisation "
                           f"with id {organisation_id}",
                           field_errors=[field_error(field_name, f"unknown organisation {organisation_id}")])
    return org


def _referenced(db: Session, model: type[Any], ident: int | None, field_name: str, label: str) -> Any:
    if ident is None:
        return None
    row = db.get(model, ident)
    if row is None:
        zh = {"area": "地区", "specialty": "专科", "department": "科室", "practitioner": "医务人员"}.get(label, label)
        raise InvalidInput(f"{field_name}：没有编号为 {ident} 的{zh} / {field_name}: no {label} with id {ident}",
                           field_errors=[field_error(field_name, f"unknown {label} {ident}")])
    return row


def check_coordinates(latitude: float | None, longitude: float | None) -> None:
    """Both or neither, and inside the globe; a half-given position cannot be drawn or ranked."""
    errors = []
    if (latitude is None) != (longitude is None):
        missing = "longitude" if longitude is None else "latitude"
        raise InvalidInput("经纬度须同时填写或同时留空 / give both latitude and longitude, or neither",
                           field_errors=[field_error(missing, "required when the other coordinate is given")])
    if latitude is not None and not (math.isfinite(latitude) and -90 <= latitude <= 90):
        errors.append(field_error("latitude", "must be between -90 and 90"))
    if longitude is not None and not (math.isfinite(longitude) and -180 <= longitude <= 180):
        errors.append(field_error("longitude", "must be between -180 and 180"))
    if errors:
        raise InvalidInput("坐标超出范围（纬度 -90…90，经度 -180…180）/ coordinates out of range "
                           "(latitude -90..90, longitude -180..180)", field_errors=errors)


def great_circle_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Haversine distance; good to a fraction of a percent, which is plenty for ranking hospitals."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dphi = p2 - p1
    dlmb = math.radians(lng2 - lng1)
    a = math.sin(dphi / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


# ---------------------------------------------------------------------------------------------
# Who may change what
# ---------------------------------------------------------------------------------------------

def is_directory_reader(user: User) -> bool:
    """Every staff role reads the directory (it holds no patient data); patients do not."""
    return user.role != Role.PATIENT


def require_alliance_admin(user: User) -> None:
    if user.role != Role.ALLIANCE_ADMIN:
        raise AccessDenied("只有医共体管理员可以修改 / only alliance administrators may change this")


def require_organisation_admin(user: User, organisation_id: int) -> None:
    """Alliance admins manage everything; an organisation admin manages their own organisation only."""
    if user.role == Role.ALLIANCE_ADMIN:
        return
    if user.role == Role.ORG_ADMIN and user.organisation_id is not None and user.organisation_id == organisation_id:
        return
    raise AccessDenied("只能由医共体管理员或本机构管理员修改 / only alliance administrators or this "
                       "organisation's administrators may change this")


def can_manage_organisation(user: User | None, organisation_id: int) -> bool:
    if user is None:
        return False
    try:
        require_organisation_admin(user, organisation_id)
    except AccessDenied:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Alliances and memberships
# ---------------------------------------------------------------------------------------------

def create_alliance(db: Session, *, code: str, name: str, kind: AllianceKind | str,
                    description: str = "") -> Alliance:
    code = _code("code", code)
    name = _text("name", name, max_length=200)
    kind = _enum_value(AllianceKind, "kind", kind)
    description = _text("description", description, max_length=2000, required=False)
    if db.execute(select(exists().where(Alliance.code == code))).scalar():
        raise Conflict(f"联盟编码 {code} 已存在 / alliance code {code} already exists", code="duplicate_code",
                       field_errors=[field_error("code", "already exists")])
    alliance = Alliance(code=code, name=name, kind=kind, description=description)
    db.add(alliance)
    _flush(db, what="联盟 / alliance")
    return alliance


def get_alliance(db: Session, alliance_id: int) -> Alliance:
    alliance = db.get(Alliance, alliance_id)
    if alliance is None:
        raise NotFound(f"没有编号为 {alliance_id} 的联盟 / no alliance with id {alliance_id}")
    return alliance


def update_alliance(db: Session, *, alliance_id: int, **changes: Any) -> Alliance:
    _require_fields(changes, ("name", "kind", "description"))
    alliance = get_alliance(db, alliance_id)
    values: dict[str, Any] = {}
    if "name" in changes:
        values["name"] = _text("name", changes["name"], max_length=200)
    if "kind" in changes:
        values["kind"] = _enum_value(AllianceKind, "kind", changes["kind"])
    if "description" in changes:
        values["description"] = _text("description", changes["description"], max_length=2000, required=False)
    for key, value in values.items():
        setattr(alliance, key, value)
    _flush(db, what="联盟 / alliance")
    return alliance


def list_alliances(db: Session, *, kind: AllianceKind | str | None = None) -> list[Alliance]:
    """All alliances (a deployment hosts a handful to a few dozen), county communities first."""
    query = select(Alliance).order_by(Alliance.kind, Alliance.name, Alliance.id)
    if kind:
        query = query.where(Alliance.kind == _enum_value(AllianceKind, "kind", kind))
    return list(db.execute(query).scalars())


def alliance_leads(db: Session, alliance_ids: Sequence[int]) -> dict[int, Organisation]:
    """The lead organisation of each alliance, in one query."""
    if not alliance_ids:
        return {}
    rows = db.execute(select(AllianceMembership.alliance_id, Organisation).join(Organisation).where(
        AllianceMembership.alliance_id.in_(alliance_ids), AllianceMembership.role == MembershipRole.LEAD))
    return {aid: org for aid, org in rows}


def _membership(db: Session, alliance_id: int, organisation_id: int) -> AllianceMembership | None:
    return db.execute(select(AllianceMembership).where(
        AllianceMembership.alliance_id == alliance_id,
        AllianceMembership.organisation_id == organisation_id)).scalar()


def _check_single_lead(db: Session, *, alliance: Alliance, organisation_id: int) -> None:
    # Lock the alliance row (PostgreSQL) so two admins naming a lead at once cannot both win.
    db.execute(select(Alliance.id).where(Alliance.id == alliance.id).with_for_update())
    current = db.execute(select(Organisation).join(AllianceMembership).where(
        AllianceMembership.alliance_id == alliance.id, AllianceMembership.role == MembershipRole.LEAD,
        AllianceMembership.organisation_id != organisation_id)).scalar()
    if current is not None:
        raise Conflict(f"{alliance.name} 已有牵头单位：{current.name}；一个联盟只能有一个牵头单位 / "
                       f"{alliance.name} already has a lead ({current.name}); an alliance has one lead",
                       code="lead_exists", field_errors=[field_error("role", f"lead is {current.name}")])


def add_member(db: Session, *, alliance_id: int, organisation_id: int,
               role: MembershipRole | str = MembershipRole.MEMBER) -> AllianceMembership:
    """Add an organisation to an alliance; it may already belong to others (a provincial hospital
    supports many counties), but only once to this one, and an alliance has at most one lead."""
    alliance = get_alliance(db, alliance_id)
    org = _referenced_organisation(db, organisation_id, "organisation_id")
    assert org is not None
    role = _enum_value(MembershipRole, "role", role)
    if _membership(db, alliance.id, org.id) is not None:
        raise Conflict(f"{org.name} 已是 {alliance.name} 的成员 / {org.name} is already a member of "
                       f"{alliance.name}", code="already_member",
                       field_errors=[field_error("organisation_id", "already a member")])
    if role == MembershipRole.LEAD:
        _check_single_lead(db, alliance=alliance, organisation_id=org.id)
    membership = AllianceMembership(alliance_id=alliance.id, organisation_id=org.id, role=role)
    db.add(membership)
    _flush(db, what="联盟成员 / membership")
    return membership


def get_membership(db: Session, *, alliance_id: int, organisation_id: int) -> AllianceMembership:
    alliance = get_alliance(db, alliance_id)
    membership = _membership(db, alliance.id, organisation_id)
    if membership is None:
        raise NotFound(f"机构 {organisation_id} 不是 {alliance.name} 的成员 / organisation {organisation_id} "
                       f"is not a member of {alliance.name}")
    return membership


def set_member_role(db: Session, *, alliance_id: int, organisation_id: int,
                    role: MembershipRole | str) -> AllianceMembership:
    membership = get_membership(db, alliance_id=alliance_id, organisation_id=organisation_id)
    role = _enum_value(MembershipRole, "role", role)
    if role == MembershipRole.LEAD:
        _check_single_lead(db, alliance=membership.alliance, organisation_id=organisation_id)
    membership.role = role
    _flush(db, what="联盟成员 / membership")
    return membership


def remove_member(db: Session, *, alliance_id: int, organisation_id: int) -> None:
    membership = get_membership(db, alliance_id=alliance_id, organisation_id=organisation_id)
    db.delete(membership)
    db.flush()


def list_members(db: Session, *, alliance_id: int, role: MembershipRole | str | None = None,
                 level: OrgLevel | str | None = None, limit: int = DEFAULT_PAGE,
                 offset: int = 0) -> Page[AllianceMembership]:
    """Members with their organisations, the lead first, then by level from the top down."""
    get_alliance(db, alliance_id)
    query = (select(AllianceMembership).join(Organisation)
             .where(AllianceMembership.alliance_id == alliance_id)
             .options(selectinload(AllianceMembership.organisation).selectinload(Organisation.capabilities))
             .order_by(_ROLE_RANK, _LEVEL_RANK, Organisation.name, Organisation.id))
    if role:
        query = query.where(AllianceMembership.role == _enum_value(MembershipRole, "role", role))
    if level:
        query = query.where(Organisation.level == _enum_value(OrgLevel, "level", level))
    return _paginate(db, query, limit=limit, offset=offset)


def memberships_of(db: Session, organisation_ids: Sequence[int]) -> dict[int, list[AllianceMembership]]:
    """Each organisation's memberships (with the alliance loaded), for lists that show them."""
    found: dict[int, list[AllianceMembership]] = {oid: [] for oid in organisation_ids}
    for chunk in _chunks(organisation_ids):
        rows = db.execute(select(AllianceMembership).where(AllianceMembership.organisation_id.in_(chunk))
                          .options(selectinload(AllianceMembership.alliance))
                          .order_by(AllianceMembership.alliance_id)).scalars()
        for m in rows:
            found[m.organisation_id].append(m)
    return found


# ---------------------------------------------------------------------------------------------
# Organisations and capabilities
# ---------------------------------------------------------------------------------------------

CapabilitySpec = Capability | str | tuple[Capability | str, str] | Mapping[str, Any]


def _capability_specs(items: Iterable[CapabilitySpec]) -> dict[Capability, str]:
    """Accept 'CT', ('CT', '64-slice') or {'capability': 'CT', 'note': ...}; refuse repeats."""
    specs: dict[Capability, str] = {}
    for item in items:
        if isinstance(item, Mapping):
            raw, note = item.get("capability"), item.get("note", "")
        elif isinstance(item, tuple):
            raw, note = item
        else:
            raw, note = item, ""
        cap = _enum_value(Capability, "capabilities", raw)
        if cap in specs:
            raise InvalidInput(f"能力 {cap} 重复 / capability {cap} listed twice",
                               field_errors=[field_error("capabilities", f"{cap} listed twice")])
        specs[cap] = _text("capabilities.note", note, max_length=200, required=False)
    return specs


def _check_parent(db: Session, *, organisation_id: int | None, parent_id: int | None) -> None:
    """The parent must exist and must not be the organisation itself or one of its descendants."""
    parent = _referenced_organisation(db, parent_id, "parent_id")
    if parent is None or organisation_id is None:
        return
    seen: set[int] = set()
    node: Organisation | None = parent
    while node is not None and node.id not in seen:
        if node.id == organisation_id:
            raise InvalidInput("上级机构不能是本机构或其下属机构 / the parent cannot be the organisation itself "
                               "or one below it", field_errors=[field_error("parent_id", "would create a cycle")])
        seen.add(node.id)
        node = node.parent


def create_organisation(db: Session, *, code: str, name: str, level: OrgLevel | str, kind: OrgKind | str,
                        name_en: str = "", parent_id: int | None = None, area_id: int | None = None,
                        is_regional_centre: bool = False, address: str = "", phone: str = "",
                        latitude: float | None = None, longitude: float | None = None,
                        capabilities: Iterable[CapabilitySpec] = ()) -> Organisation:
    code = _code("code", code)
    values = {
        "code": code,
        "name": _text("name", name, max_length=200),
        "name_en": _text("name_en", name_en, max_length=200, required=False),
        "level": _enum_value(OrgLevel, "level", level),
        "kind": _enum_value(OrgKind, "kind", kind),
        "address": _text("address", address, max_length=300, required=False),
        "phone": _text("phone", phone, max_length=40, required=False),
        "is_regional_centre": bool(is_regional_centre),
        "latitude": latitude,
        "longitude": longitude,
    }
    check_coordinates(latitude, longitude)
    _check_parent(db, organisation_id=None, parent_id=parent_id)
    _referenced(db, Area, area_id, "area_id", "area")
    specs = _capability_specs(capabilities)
    if db.execute(select(exists().where(Organisation.code == code))).scalar():
        raise Conflict(f"机构编码 {code} 已存在 / organisation code {code} already exists", code="duplicate_code",
                       field_errors=[field_error("code", "already exists")])
    org = Organisation(parent_id=parent_id, area_id=area_id, **values)
    org.capabilities = [OrganisationCapability(capability=cap, note=note) for cap, note in specs.items()]
    db.add(org)
    _flush(db, what="机构 / organisation")
    return org


def get_organisation(db: Session, organisation_id: int) -> Organisation:
    org = db.get(Organisation, organisation_id)
    if org is None:
        raise NotFound(f"没有编号为 {organisation_id} 的机构 / no organisation with id {organisation_id}")
    return org


_ORG_FIELDS = ("name", "name_en", "level", "kind", "parent_id", "area_id", "is_regional_centre", "address",
               "phone", "latitude", "longitude", "capabilities")


def update_organisation(db: Session, *, organisation_id: int, **changes: Any) -> Organisation:
    """Change the given fields only; `capabilities`, when given, replaces the whole list."""
    _require_fields(changes, _ORG_FIELDS)
    org = get_organisation(db, organisation_id)
    values: dict[str, Any] = {}
    for key, limit, required in (("name", 200, True), ("name_en", 200, False), ("address", 300, False),
                                 ("phone", 40, False)):
        if key in changes:
            values[key] = _text(key, changes[key], max_length=limit, required=required)
    if "level" in changes:
        values["level"] = _enum_value(OrgLevel, "level", changes["level"])
    if "kind" in changes:
        values["kind"] = _enum_value(OrgKind, "kind", changes["kind"])
    if "is_regional_centre" in changes:
        values["is_regional_centre"] = bool(changes["is_regional_centre"])
    if "latitude" in changes or "longitude" in changes:
        lat = changes.get("latitude", org.latitude)
        lng = changes.get("longitude", org.longitude)
        check_coordinates(lat, lng)
        values.update(latitude=lat, longitude=lng)
    if "parent_id" in changes:
        _check_parent(db, organisation_id=org.id, parent_id=changes["parent_id"])
        values["parent_id"] = changes["parent_id"]
    if "area_id" in changes:
        _referenced(db, Area, changes["area_id"], "area_id", "area")
        values["area_id"] = changes["area_id"]
    specs = _capability_specs(changes["capabilities"]) if changes.get("capabilities") is not None else None
    for key, value in values.items():
        setattr(org, key, value)
    if specs is not None:
        _replace_capabilities(db, org, specs)
    _flush(db, what="机构 / organisation")
    return org


def _replace_capabilities(db: Session, org: Organisation, specs: dict[Capability, str]) -> None:
    existing = {c.capability: c for c in org.capabilities}
    for cap, row in existing.items():
        if cap not in specs:
            org.capabilities.remove(row)
    db.flush()  # deletes first, so a re-added capability never meets its old row's unique key
    for cap, note in specs.items():
        if cap in existing:
            existing[cap].note = note
        else:
            org.capabilities.append(OrganisationCapability(capability=cap, note=note))


def set_capabilities(db: Session, *, organisation_id: int,
                     capabilities: Iterable[CapabilitySpec]) -> Organisation:
    return update_organisation(db, organisation_id=organisation_id, capabilities=list(capabilities))


def add_capability(db: Session, *, organisation_id: int, capability: Capability | str,
                   note: str = "") -> OrganisationCapability:
    org = get_organisation(db, organisation_id)
    cap = _enum_value(Capability, "capability", capability)
    if any(c.capability == cap for c in org.capabilities):
        raise Conflict(f"{org.name} 已登记 {cap} / {org.name} already lists {cap}", code="duplicate",
                       field_errors=[field_error("capability", "already listed")])
    row = OrganisationCapability(capability=cap, note=_text("note", note, max_length=200, required=False))
    org.capabilities.append(row)
    _flush(db, what="机构能力 / capability")
    return row


def _organisation_query(*, q: str | None = None, kind: OrgKind | str | None = None,
                        level: OrgLevel | str | None = None, capability: Capability | str | None = None,
                        alliance_id: int | None = None, parent_id: int | None = None,
                        regional_centre: bool | None = None) -> Select[tuple[Organisation]]:
    query = (select(Organisation).options(selectinload(Organisation.capabilities))
             .order_by(_LEVEL_RANK, Organisation.name, Organisation.id))
    if q and q.strip():
        term = q.strip()
        query = query.where(or_(Organisation.name.icontains(term, autoescape=True),
                                Organisation.code.icontains(term, autoescape=True),
                                Organisation.name_en.icontains(term, autoescape=True)))
    if kind:
        query = query.where(Organisation.kind == _enum_value(OrgKind, "kind", kind))
    if level:
        query = query.where(Organisation.level == _enum_value(OrgLevel, "level", level))
    if capability:
        cap = _enum_value(Capability, "capability", capability)
        query = query.where(exists().where(OrganisationCapability.organisation_id == Organisation.id,
                                           OrganisationCapability.capability == cap))
    if alliance_id is not None:
        query = query.where(exists().where(AllianceMembership.organisation_id == Organisation.id,
                                           AllianceMembership.alliance_id == alliance_id))
    if parent_id is not None:
        query = query.where(Organisation.parent_id == parent_id)
    if regional_centre is not None:
        query = query.where(Organisation.is_regional_centre.is_(regional_centre))
    return query


def search_organisations(db: Session, *, q: str | None = None, kind: OrgKind | str | None = None,
                         level: OrgLevel | str | None = None, capability: Capability | str | None = None,
                         alliance_id: int | None = None, parent_id: int | None = None,
                         regional_centre: bool | None = None, limit: int = DEFAULT_PAGE,
                         offset: int = 0) -> Page[Organisation]:
    """Organisations by name/code, kind, level, capability and alliance, top level first."""
    query = _organisation_query(q=q, kind=kind, level=level, capability=capability, alliance_id=alliance_id,
                                parent_id=parent_id, regional_centre=regional_centre)
    return _paginate(db, query, limit=limit, offset=offset)


def iter_organisations(db: Session, *, batch: int = 500, **filters: Any) -> Iterator[Organisation]:
    """Every matching organisation, fetched in batches (for exports; lists use the paged search)."""
    query = _organisation_query(**filters).execution_options(yield_per=batch)
    yield from db.execute(query).scalars()


def list_children(db: Session, *, organisation_id: int, limit: int = 200) -> list[Organisation]:
    return search_organisations(db, parent_id=organisation_id, limit=limit).items


@dataclass(frozen=True)
class Suggestion:
    organisation: Organisation
    distance_km: float


def suggest_organisations(db: Session, *, capability: Capability | str, near_lat: float, near_lng: float,
                          limit: int = 5, alliance_id: int | None = None,
                          exclude_organisation_id: int | None = None,
                          max_distance_km: float | None = None) -> list[Suggestion]:
    """Organisations offering `capability`, nearest first by great-circle distance.

    Only organisations with coordinates can be ranked; ties break on id so the order is stable.
    With `alliance_id`, only that alliance's members are considered.
    """
    cap = _enum_value(Capability, "capability", capability)
    try:
        check_coordinates(near_lat, near_lng)
    except InvalidInput as exc:
        exc.field_errors = [dict(e, field={"latitude": "near_lat", "longitude": "near_lng"}.get(e["field"],
                                                                                              e["field"]))
                            for e in exc.field_errors]
        raise
    if not 1 <= limit <= 100:
        raise InvalidInput("limit 须在 1–100 之间 / limit must be 1..100",
                           field_errors=[field_error("limit", "1..100")])
    query = (select(Organisation).options(selectinload(Organisation.capabilities))
             .where(Organisation.latitude.is_not(None), Organisation.longitude.is_not(None),
                    exists().where(OrganisationCapability.organisation_id == Organisation.id,
                                   OrganisationCapability.capability == cap)))
    if alliance_id is not None:
        get_alliance(db, alliance_id)
        query = query.where(exists().where(AllianceMembership.organisation_id == Organisation.id,
                                           AllianceMembership.alliance_id == alliance_id))
    if exclude_organisation_id is not None:
        query = query.where(Organisation.id != exclude_organisation_id)
    if max_distance_km is not None:
        # A latitude band cuts the candidates in SQL; the exact distance is checked below.
        band = max_distance_km / 111.0
        query = query.where(Organisation.latitude.between(near_lat - band, near_lat + band))
    ranked = ((great_circle_km(near_lat, near_lng, org.latitude, org.longitude), org.id, org)  # type: ignore[arg-type]
              for org in db.execute(query).scalars())
    if max_distance_km is not None:
        ranked = (r for r in ranked if r[0] <= max_distance_km)
    return [Suggestion(organisation=org, distance_km=round(dist, 2))
            for dist, _, org in heapq.nsmallest(limit, ranked, key=lambda r: (r[0], r[1]))]


# ---------------------------------------------------------------------------------------------
# The alliance map
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MapNode:
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
    # Far-away supporters (a provincial hospital 300 km off) sit outside the frame; the map pins
    # them to its edge and says how far they are from the lead instead of shrinking the county.
    outside_frame: bool = False
    km_from_lead: float | None = None


@dataclass(frozen=True)
class AllianceMap:
    alliance: Alliance
    nodes: list[MapNode]
    # (member, its parent): both members of the alliance and both placed on the map.
    links: list[tuple[int, int]]
    # min_lng, min_lat, max_lng, max_lat with a margin, or None when no member has coordinates.
    bounds: tuple[float, float, float, float] | None
    levels: list[OrgLevel] = field(default_factory=list)

    @property
    def unplaced(self) -> list[MapNode]:
        return [n for n in self.nodes if n.latitude is None]


def _frame(nodes: Sequence[MapNode]) -> tuple[float, float, float, float]:
    lats = [n.latitude for n in nodes if n.latitude is not None]
    lngs = [n.longitude for n in nodes if n.longitude is not None]
    lat_pad = max((max(lats) - min(lats)) * 0.06, 0.01)
    lng_pad = max((max(lngs) - min(lngs)) * 0.06, 0.01)
    return (round(min(lngs) - lng_pad, 5), round(min(lats) - lat_pad, 5),
            round(max(lngs) + lng_pad, 5), round(max(lats) + lat_pad, 5))


def alliance_map(db: Session, *, alliance_id: int) -> AllianceMap:
    """Everything the map draws: members with coordinates, lines to their parents and the frame.

    The frame fits the lead and the members; supporting organisations outside it (provincial
    hospitals in another city) are marked `outside_frame` with their distance from the lead.
    """
    alliance = get_alliance(db, alliance_id)
    rows = db.execute(
        select(AllianceMembership.role, Organisation).join(Organisation)
        .where(AllianceMembership.alliance_id == alliance.id)
        .options(selectinload(Organisation.capabilities))
        .order_by(_ROLE_RANK, _LEVEL_RANK, Organisation.name, Organisation.id)).all()
    nodes = [MapNode(id=org.id, code=org.code, name=org.name, level=org.level, kind=org.kind, role=role,
                     latitude=org.latitude, longitude=org.longitude, parent_id=org.parent_id,
                     is_regional_centre=org.is_regional_centre,
                     capabilities=sorted((c.capability for c in org.capabilities), key=list(Capability).index))
             for role, org in rows]
    placed = [n for n in nodes if n.latitude is not None]
    placed_ids = {n.id for n in placed}
    links = [(n.id, n.parent_id) for n in placed if n.parent_id is not None and n.parent_id in placed_ids]
    bounds = None
    if placed:
        core = [n for n in placed if n.role != MembershipRole.SUPPORTING] or placed
        bounds = _frame(core)
        lead = next((n for n in placed if n.role == MembershipRole.LEAD), None)
        min_lng, min_lat, max_lng, max_lat = bounds
        nodes = [replace(n, outside_frame=True, km_from_lead=(
                     round(great_circle_km(lead.latitude, lead.longitude, n.latitude, n.longitude))  # type: ignore[arg-type]
                     if lead is not None else None))
                 if n.latitude is not None and not (min_lat <= n.latitude <= max_lat
                                                    and min_lng <= n.longitude <= max_lng)  # type: ignore[operator]
                 else n for n in nodes]
    levels = [lvl for lvl in LEVEL_ORDER if any(n.level == lvl for n in nodes)]
    return AllianceMap(alliance=alliance, nodes=nodes, links=links, bounds=bounds, levels=levels)


def default_alliance_for(db: Session, user: User | None) -> Alliance | None:
    """The alliance a map or list opens on: the user's own county community if any, else the first."""
    if user is not None and user.organisation_id is not None:
        mine = db.execute(select(Alliance).join(AllianceMembership).where(
            AllianceMembership.organisation_id == user.organisation_id)
            .order_by(Alliance.kind != AllianceKind.COUNTY_COMMUNITY, Alliance.id).limit(1)).scalar()
        if mine is not None:
            return mine
    return db.execute(select(Alliance).order_by(Alliance.kind != AllianceKind.COUNTY_COMMUNITY, Alliance.id)
                      .limit(1)).scalar()


# ---------------------------------------------------------------------------------------------
# Specialties and departments
# ---------------------------------------------------------------------------------------------

def create_specialty(db: Session, *, code: str, name: str, name_en: str = "") -> Specialty:
    code = _code("code", code)
    name = _text("name", name, max_length=100)
    name_en = _text("name_en", name_en, max_length=100, required=False)
    if db.execute(select(exists().where(Specialty.code == code))).scalar():
        raise Conflict(f"专科编码 {code} 已存在 / specialty code {code} already exists", code="duplicate_code",
                       field_errors=[field_error("code", "already exists")])
    specialty = Specialty(code=code, name=name, name_en=name_en)
    db.add(specialty)
    _flush(db, what="专科 / specialty")
    return specialty


def list_specialties(db: Session) -> list[Specialty]:
    return list(db.execute(select(Specialty).order_by(Specialty.code)).scalars())


def get_specialty(db: Session, specialty_id: int) -> Specialty:
    row = db.get(Specialty, specialty_id)
    if row is None:
        raise NotFound(f"没有编号为 {specialty_id} 的专科 / no specialty with id {specialty_id}")
    return row


def create_department(db: Session, *, organisation_id: int, code: str, name: str,
                      specialty_id: int | None = None, head_practitioner_id: int | None = None,
                      phone: str = "") -> Department:
    org = get_organisation(db, organisation_id)
    code = _code("code", code)
    name = _text("name", name, max_length=100)
    phone = _text("phone", phone, max_length=40, required=False)
    _referenced(db, Specialty, specialty_id, "specialty_id", "specialty")
    _referenced(db, Practitioner, head_practitioner_id, "head_practitioner_id", "practitioner")
    if db.execute(select(exists().where(Department.organisation_id == org.id, Department.code == code))).scalar():
        raise Conflict(f"{org.name} 已有科室编码 {code} / {org.name} already has department code {code}",
                       code="duplicate_code", field_errors=[field_error("code", "already exists")])
    dept = Department(organisation_id=org.id, code=code, name=name, specialty_id=specialty_id,
                      head_practitioner_id=head_practitioner_id, phone=phone)
    db.add(dept)
    _flush(db, what="科室 / department")
    return dept


def get_department(db: Session, department_id: int) -> Department:
    row = db.get(Department, department_id)
    if row is None:
        raise NotFound(f"没有编号为 {department_id} 的科室 / no department with id {department_id}")
    return row


def update_department(db: Session, *, department_id: int, **changes: Any) -> Department:
    _require_fields(changes, ("name", "specialty_id", "head_practitioner_id", "phone"))
    dept = get_department(db, department_id)
    if "name" in changes:
        dept.name = _text("name", changes["name"], max_length=100)
    if "phone" in changes:
        dept.phone = _text("phone", changes["phone"], max_length=40, required=False)
    if "specialty_id" in changes:
        _referenced(db, Specialty, changes["specialty_id"], "specialty_id", "specialty")
        dept.specialty_id = changes["specialty_id"]
    if "head_practitioner_id" in changes:
        _referenced(db, Practitioner, changes["head_practitioner_id"], "head_practitioner_id", "practitioner")
        dept.head_practitioner_id = changes["head_practitioner_id"]
    _flush(db, what="科室 / department")
    return dept


def list_departments(db: Session, *, organisation_id: int) -> list[Department]:
    get_organisation(db, organisation_id)
    return list(db.execute(select(Department).where(Department.organisation_id == organisation_id)
                           .options(selectinload(Department.specialty))
                           .order_by(Department.code)).scalars())


# ---------------------------------------------------------------------------------------------
# Practitioners and posts
# ---------------------------------------------------------------------------------------------

PostSpec = Mapping[str, Any]


def _specialties(db: Session, ids: Iterable[int], field_name: str = "specialty_ids") -> list[Specialty]:
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    found = {s.id: s for s in db.execute(select(Specialty).where(Specialty.id.in_(wanted))).scalars()}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise InvalidInput(f"{field_name}：没有这些专科 {missing} / {field_name}: unknown specialties {missing}",
                           field_errors=[field_error(field_name, f"unknown specialty {i}") for i in missing])
    return [found[i] for i in wanted]


def _checked_post(db: Session, spec: PostSpec, index: int | None) -> dict[str, Any]:
    prefix = "posts" if index is None else f"posts.{index}"
    org = _referenced_organisation(db, spec.get("organisation_id"), f"{prefix}.organisation_id")
    if org is None:
        raise InvalidInput(f"{prefix}.organisation_id 不能为空 / {prefix}.organisation_id is required",
                           field_errors=[field_error(f"{prefix}.organisation_id", "required")])
    dept_id = spec.get("department_id")
    if dept_id is not None:
        dept = _referenced(db, Department, dept_id, f"{prefix}.department_id", "department")
        if dept.organisation_id != org.id:
            raise InvalidInput(f"科室 {dept.name} 不属于 {org.name} / department {dept.name} is not part of "
                               f"{org.name}", field_errors=[field_error(f"{prefix}.department_id",
                                                                        "belongs to another organisation")])
    return {"organisation_id": org.id, "department_id": dept_id,
            "position": _text(f"{prefix}.position", spec.get("position", ""), max_length=100, required=False),
            "is_primary": spec.get("is_primary")}


def create_practitioner(db: Session, *, code: str, name: str, title_grade: TitleGrade | str, sex: str = "U",
                        years_independent_practice: int = 0, licence_number: str = "", phone: str = "",
                        specialty_ids: Iterable[int] = (), posts: Sequence[PostSpec] = ()) -> Practitioner:
    """A person with their posts; several posts at different organisations are allowed (多点执业)."""
    code = _code("code", code)
    values = {
        "code": code,
        "name": _text("name", name, max_length=100),
        "title_grade": _enum_value(TitleGrade, "title_grade", title_grade),
        "sex": _sex(sex),
        "years_independent_practice": _years(years_independent_practice),
        "licence_number": _text("licence_number", licence_number, max_length=40, required=False),
        "phone": _text("phone", phone, max_length=40, required=False),
    }
    specialties = _specialties(db, specialty_ids)
    checked = [_checked_post(db, spec, i) for i, spec in enumerate(posts)]
    seen: set[tuple[int, int | None]] = set()
    for i, p in enumerate(checked):
        key = (p["organisation_id"], p["department_id"])
        if key in seen:
            raise InvalidInput("同一机构同一科室的岗位重复 / the same post is listed twice",
                               field_errors=[field_error(f"posts.{i}", "duplicate post")])
        seen.add(key)
    if sum(1 for p in checked if p["is_primary"]) > 1:
        raise InvalidInput("只能有一个主要执业岗位 / only one post can be the primary one",
                           field_errors=[field_error("posts", "more than one primary post")])
    if db.execute(select(exists().where(Practitioner.code == code))).scalar():
        raise Conflict(f"人员编码 {code} 已存在 / practitioner code {code} already exists", code="duplicate_code",
                       field_errors=[field_error("code", "already exists")])
    practitioner = Practitioner(**values)
    practitioner.specialties = specialties
    has_primary = any(p["is_primary"] for p in checked)
    for i, p in enumerate(checked):
        primary = bool(p["is_primary"]) if has_primary else i == 0
        practitioner.posts.append(Post(organisation_id=p["organisation_id"], department_id=p["department_id"],
                                       position=p["position"], is_primary=primary))
    db.add(practitioner)
    _flush(db, what="医务人员 / practitioner")
    return practitioner


def _sex(value: Any) -> str:
    sex = str(value or "U").strip().upper()
    if sex not in SEXES:
        raise InvalidInput("性别须为 M、F 或 U / sex must be M, F or U", field_errors=[field_error("sex", "M, F or U")])
    return sex


def _years(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_YEARS_PRACTICE:
        raise InvalidInput(f"独立执业年限须为 0–{MAX_YEARS_PRACTICE} 的整数 / years of independent practice must be "
                           f"a whole number from 0 to {MAX_YEARS_PRACTICE}",
                           field_errors=[field_error("years_independent_practice",
                                                     f"0..{MAX_YEARS_PRACTICE}")])
    return value


def get_practitioner(db: Session, practitioner_id: int) -> Practitioner:
    row = db.execute(select(Practitioner).where(Practitioner.id == practitioner_id).options(
        selectinload(Practitioner.specialties),
        selectinload(Practitioner.posts).selectinload(Post.organisation),
        selectinload(Practitioner.posts).selectinload(Post.department))).scalar()
    if row is None:
        raise NotFound(f"没有编号为 {practitioner_id} 的医务人员 / no practitioner with id {practitioner_id}")
    return row


def update_practitioner(db: Session, *, practitioner_id: int, **changes: Any) -> Practitioner:
    _require_fields(changes, ("name", "title_grade", "sex", "years_independent_practice", "licence_number",
                              "phone", "specialty_ids"))
    prac = get_practitioner(db, practitioner_id)
    values: dict[str, Any] = {}
    if "name" in changes:
        values["name"] = _text("name", changes["name"], max_length=100)
    if "title_grade" in changes:
        values["title_grade"] = _enum_value(TitleGrade, "title_grade", changes["title_grade"])
    if "sex" in changes:
        values["sex"] = _sex(changes["sex"])
    if "years_independent_practice" in changes:
        values["years_independent_practice"] = _years(changes["years_independent_practice"])
    for key in ("licence_number", "phone"):
        if key in changes:
            values[key] = _text(key, changes[key], max_length=40, required=False)
    specialties = _specialties(db, changes["specialty_ids"] or []) if "specialty_ids" in changes else None
    for key, value in values.items():
        setattr(prac, key, value)
    if specialties is not None:
        prac.specialties = specialties
    _flush(db, what="医务人员 / practitioner")
    return prac


def add_post(db: Session, *, practitioner_id: int, organisation_id: int, department_id: int | None = None,
             position: str = "", is_primary: bool = False) -> Post:
    """Another post for a practitioner (e.g. a county specialist's weekly session at a township)."""
    prac = get_practitioner(db, practitioner_id)
    p = _checked_post(db, {"organisation_id": organisation_id, "department_id": department_id,
                           "position": position, "is_primary": is_primary}, None)
    if any(x.organisation_id == p["organisation_id"] and x.department_id == p["department_id"] for x in prac.posts):
        raise Conflict("该人员已有这个岗位 / the practitioner already holds this post", code="duplicate_post",
                       field_errors=[field_error("organisation_id", "post already exists")])
    primary = bool(is_primary) or not prac.posts
    if primary:
        for other in prac.posts:
            other.is_primary = False
    post = Post(organisation_id=p["organisation_id"], department_id=p["department_id"], position=p["position"],
                is_primary=primary)
    prac.posts.append(post)
    _flush(db, what="岗位 / post")
    return post


def remove_post(db: Session, *, post_id: int) -> None:
    post = db.get(Post, post_id)
    if post is None:
        raise NotFound(f"没有编号为 {post_id} 的岗位 / no post with id {post_id}")
    prac = post.practitioner
    prac.posts.remove(post)
    if post.is_primary and prac.posts:
        prac.posts[0].is_primary = True
    db.flush()


def get_post(db: Session, post_id: int) -> Post:
    post = db.get(Post, post_id)
    if post is None:
        raise NotFound(f"没有编号为 {post_id} 的岗位 / no post with id {post_id}")
    return post


def search_practitioners(db: Session, *, q: str | None = None, organisation_id: int | None = None,
                         specialty_id: int | None = None, grade: TitleGrade | str | None = None,
                         limit: int = DEFAULT_PAGE, offset: int = 0) -> Page[Practitioner]:
    """Practitioners by name/code, organisation (any post there), specialty and grade, senior first."""
    query = (select(Practitioner)
             .options(selectinload(Practitioner.specialties),
                      selectinload(Practitioner.posts).selectinload(Post.organisation))
             .order_by(_GRADE_RANK, Practitioner.name, Practitioner.id))
    if q and q.strip():
        term = q.strip()
        query = query.where(or_(Practitioner.name.icontains(term, autoescape=True),
                                Practitioner.code.icontains(term, autoescape=True)))
    if organisation_id is not None:
        query = query.where(exists().where(Post.practitioner_id == Practitioner.id,
                                           Post.organisation_id == organisation_id))
    if specialty_id is not None:
        query = query.where(exists().where(PractitionerSpecialty.practitioner_id == Practitioner.id,
                                           PractitionerSpecialty.specialty_id == specialty_id))
    if grade:
        query = query.where(Practitioner.title_grade == _enum_value(TitleGrade, "grade", grade))
    return _paginate(db, query, limit=limit, offset=offset)


def list_staff(db: Session, *, organisation_id: int, limit: int = 200, offset: int = 0) -> Page[Post]:
    """The posts at an organisation with their practitioners, most senior grade first."""
    query = (select(Post).join(Practitioner).where(Post.organisation_id == organisation_id)
             .options(selectinload(Post.practitioner).selectinload(Practitioner.specialties),
                      selectinload(Post.department))
             .order_by(_GRADE_RANK, Practitioner.name, Post.id))
    return _paginate(db, query, limit=limit, offset=offset)


def require_practitioner_manager(db: Session, user: User, practitioner: Practitioner) -> None:
    """Organisation admins edit people who hold a post at their organisation."""
    if user.role == Role.ALLIANCE_ADMIN:
        return
    if user.role == Role.ORG_ADMIN and any(p.organisation_id == user.organisation_id for p in practitioner.posts):
        return
    raise AccessDenied("只能修改本机构人员 / you may change your own organisation's staff only")


# ---------------------------------------------------------------------------------------------
# Teams
# ---------------------------------------------------------------------------------------------

def _team_role(value: Any, field_name: str) -> str:
    role = str(value or "member").strip()
    if role not in TEAM_MEMBER_ROLES:
        raise InvalidInput(f"团队角色须为 {'/'.join(TEAM_MEMBER_ROLES)} / team role must be one of "
                           f"{', '.join(TEAM_MEMBER_ROLES)}", field_errors=[field_error(field_name, "unknown role")])
    return role


def _area_ids(db: Session, ids: Iterable[int]) -> list[int]:
    wanted = list(dict.fromkeys(int(i) for i in ids))
    if wanted:
        found = set(db.execute(select(Area.id).where(Area.id.in_(wanted))).scalars())
        missing = [i for i in wanted if i not in found]
        if missing:
            raise InvalidInput(f"area_ids：没有这些地区 {missing} / area_ids: unknown areas {missing}",
                               field_errors=[field_error("area_ids", f"unknown area {i}") for i in missing])
    return wanted


def create_team(db: Session, *, code: str, name: str, kind: TeamKind | str, organisation_id: int,
                home_organisation_id: int | None = None, specialty_id: int | None = None,
                area_ids: Iterable[int] = (), members: Sequence[Mapping[str, Any]] = ()) -> Team:
    code = _code("code", code)
    name = _text("name", name, max_length=200)
    kind = _enum_value(TeamKind, "kind", kind)
    _referenced_organisation(db, organisation_id, "organisation_id")
    _referenced_organisation(db, home_organisation_id, "home_organisation_id")
    _referenced(db, Specialty, specialty_id, "specialty_id", "specialty")
    areas = _area_ids(db, area_ids)
    checked: list[tuple[int, str]] = []
    for i, m in enumerate(members):
        _referenced(db, Practitioner, m.get("practitioner_id"), f"members.{i}.practitioner_id", "practitioner")
        if m.get("practitioner_id") is None:
            raise InvalidInput("members 中缺少 practitioner_id / a member needs practitioner_id",
                               field_errors=[field_error(f"members.{i}.practitioner_id", "required")])
        if any(pid == m["practitioner_id"] for pid, _ in checked):
            raise InvalidInput("同一人员重复列出 / a practitioner is listed twice",
                               field_errors=[field_error(f"members.{i}.practitioner_id", "listed twice")])
        checked.append((m["practitioner_id"], _team_role(m.get("role"), f"members.{i}.role")))
    if sum(1 for _, role in checked if role == "leader") > 1:
        raise InvalidInput("一个团队只能有一名队长 / a team has one leader",
                           field_errors=[field_error("members", "more than one leader")])
    if db.execute(select(exists().where(Team.code == code))).scalar():
        raise Conflict(f"团队编码 {code} 已存在 / team code {code} already exists", code="duplicate_code",
                       field_errors=[field_error("code", "already exists")])
    team = Team(code=code, name=name, kind=kind, organisation_id=organisation_id,
                home_organisation_id=home_organisation_id, specialty_id=specialty_id, area_ids=areas)
    team.members = [TeamMember(practitioner_id=pid, role=role) for pid, role in checked]
    db.add(team)
    _flush(db, what="团队 / team")
    return team


def get_team(db: Session, team_id: int) -> Team:
    row = db.execute(select(Team).where(Team.id == team_id).options(
        selectinload(Team.members).selectinload(TeamMember.practitioner).selectinload(Practitioner.specialties),
        selectinload(Team.organisation), selectinload(Team.home_organisation),
        selectinload(Team.specialty))).scalar()
    if row is None:
        raise NotFound(f"没有编号为 {team_id} 的团队 / no team with id {team_id}")
    return row


def update_team(db: Session, *, team_id: int, **changes: Any) -> Team:
    _require_fields(changes, ("name", "kind", "organisation_id", "home_organisation_id", "specialty_id",
                              "area_ids"))
    team = get_team(db, team_id)
    values: dict[str, Any] = {}
    if "name" in changes:
        values["name"] = _text("name", changes["name"], max_length=200)
    if "kind" in changes:
        values["kind"] = _enum_value(TeamKind, "kind", changes["kind"])
    if "organisation_id" in changes:
        if changes["organisation_id"] is None:
            raise InvalidInput("organisation_id 不能为空 / organisation_id is required",
                               field_errors=[field_error("organisation_id", "required")])
        _referenced_organisation(db, changes["organisation_id"], "organisation_id")
        values["organisation_id"] = changes["organisation_id"]
    if "home_organisation_id" in changes:
        _referenced_organisation(db, changes["home_organisation_id"], "home_organisation_id")
        values["home_organisation_id"] = changes["home_organisation_id"]
    if "specialty_id" in changes:
        _referenced(db, Specialty, changes["specialty_id"], "specialty_id", "specialty")
        values["specialty_id"] = changes["specialty_id"]
    if "area_ids" in changes:
        values["area_ids"] = _area_ids(db, changes["area_ids"] or [])
    for key, value in values.items():
        setattr(team, key, value)
    _flush(db, what="团队 / team")
    return team


def add_team_member(db: Session, *, team_id: int, practitioner_id: int, role: str = "member") -> TeamMember:
    team = get_team(db, team_id)
    prac = _referenced(db, Practitioner, practitioner_id, "practitioner_id", "practitioner")
    role = _team_role(role, "role")
    if any(m.practitioner_id == prac.id for m in team.members):
        raise Conflict(f"{prac.name} 已在团队中 / {prac.name} is already in the team", code="already_member",
                       field_errors=[field_error("practitioner_id", "already a member")])
    if role == "leader" and any(m.role == "leader" for m in team.members):
        raise Conflict("团队已有队长 / the team already has a leader", code="leader_exists",
                       field_errors=[field_error("role", "team already has a leader")])
    member = TeamMember(practitioner_id=prac.id, role=role)
    team.members.append(member)
    _flush(db, what="团队成员 / team member")
    return member


def remove_team_member(db: Session, *, team_id: int, practitioner_id: int) -> None:
    team = get_team(db, team_id)
    member = next((m for m in team.members if m.practitioner_id == practitioner_id), None)
    if member is None:
        raise NotFound(f"人员 {practitioner_id} 不在该团队中 / practitioner {practitioner_id} is not in this team")
    team.members.remove(member)
    db.flush()


def list_teams(db: Session, *, kind: TeamKind | str | None = None, organisation_id: int | None = None,
               home_organisation_id: int | None = None, q: str | None = None, limit: int = DEFAULT_PAGE,
               offset: int = 0) -> Page[Team]:
    """Teams by kind, running organisation (or experts' home hospital) and name."""
    query = (select(Team).options(selectinload(Team.organisation), selectinload(Team.home_organisation),
                                  selectinload(Team.specialty),
                                  selectinload(Team.members).selectinload(TeamMember.practitioner))
             .order_by(Team.kind, Team.name, Team.id))
    if kind:
        query = query.where(Team.kind == _enum_value(TeamKind, "kind", kind))
    if organisation_id is not None:
        query = query.where(Team.organisation_id == organisation_id)
    if home_organisation_id is not None:
        query = query.where(Team.home_organisation_id == home_organisation_id)
    if q and q.strip():
        term = q.strip()
        query = query.where(or_(Team.name.icontains(term, autoescape=True),
                                Team.code.icontains(term, autoescape=True)))
    return _paginate(db, query, limit=limit, offset=offset)


def teams_of_practitioner(db: Session, *, practitioner_id: int) -> list[Team]:
    return list(db.execute(select(Team).join(TeamMember).where(TeamMember.practitioner_id == practitioner_id)
                           .options(selectinload(Team.organisation)).order_by(Team.name)).scalars())


def require_team_manager(user: User, team: Team) -> None:
    require_organisation_admin(user, team.organisation_id)


# ---------------------------------------------------------------------------------------------
# Lookups for pages and exports
# ---------------------------------------------------------------------------------------------

_IN_CHUNK = 900  # stays under every backend's bound-parameter limit


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    unique = sorted({i for i in ids if i is not None})
    for start in range(0, len(unique), _IN_CHUNK):
        yield unique[start:start + _IN_CHUNK]


def organisation_names(db: Session, ids: Iterable[int | None]) -> dict[int, str]:
    names: dict[int, str] = {}
    for chunk in _chunks(ids):  # type: ignore[arg-type]
        names.update(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(chunk))).all())
    return names


def area_names(db: Session, ids: Iterable[int | None]) -> dict[int, str]:
    names: dict[int, str] = {}
    for chunk in _chunks(ids):  # type: ignore[arg-type]
        names.update(db.execute(select(Area.id, Area.name).where(Area.id.in_(chunk))).all())
    return names

