"""Directory pages: alliances and members, organisation, practitioner and team pages, the
alliance map and the Excel export. Server-rendered and usable without JavaScript; htmx only
swaps the result list while typing a search."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from openpyxl import Workbook
from openpyxl.utils import get_column_letter

from healthrelay.accounts.models import Role, User
from healthrelay.core.deps import DbSession, require_roles
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.directory import service
from healthrelay.directory.models import (
    Capability,
    Organisation,
    OrgKind,
    OrgLevel,
    TeamKind,
)
from healthrelay.web.i18n import translate
from healthrelay.web.templating import render, request_locale

router = APIRouter(include_in_schema=False)

Reader = Annotated[User, require_roles(*(r for r in Role if r != Role.PATIENT))]
LIST_PAGE = 200
STAFF_PAGE = 100
TEAM_PAGE = 100


def _opt_int(name: str, value: str | None) -> int | None:
    """Empty form fields mean "any"; anything else must be a whole number."""
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name} 须为数字 / {name} must be a number",
                           field_errors=[field_error(name, "not a number")]) from None


def _offset(value: str | None) -> int:
    offset = _opt_int("offset", value) or 0
    if offset < 0:
        raise InvalidInput("offset 不能为负 / offset must not be negative",
                           field_errors=[field_error("offset", ">= 0")])
    return offset


def _is_partial(request: Request) -> bool:
    # A history restore asks for the whole page even though htmx sent it.
    return (request.headers.get("hx-request") == "true"
            and not request.headers.get("hx-history-restore-request"))


def _query(params: dict[str, Any], **overrides: Any) -> str:
    merged = {**params, **overrides}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "", 0) or k == "alliance"})


def _group_by_level(orgs: Iterable[Organisation]) -> list[tuple[OrgLevel, list[Organisation]]]:
    groups: dict[OrgLevel, list[Organisation]] = {}
    for org in orgs:
        groups.setdefault(org.level, []).append(org)
    return [(lvl, groups[lvl]) for lvl in service.LEVEL_ORDER if lvl in groups]


def _capability_codes(org: Organisation) -> list[Capability]:
    return sorted((c.capability for c in org.capabilities), key=list(Capability).index)


class _Filters:
    """The directory's filters as given in the query string, shared by the list and the export."""

    def __init__(self, db: DbSession, user: User, alliance: str | None, level: str, kind: str, capability: str,
                 q: str) -> None:
        if alliance is None:  # first visit: open on the user's own alliance
            default = service.default_alliance_for(db, user)
            self.alliance_id = default.id if default else None
        else:
            self.alliance_id = _opt_int("alliance", alliance)
        if self.alliance_id is not None:
            service.get_alliance(db, self.alliance_id)
        self.level = level.strip() or None
        self.kind = kind.strip() or None
        self.capability = capability.strip() or None
        self.q = q.strip()[:100] or None

    def service_kwargs(self) -> dict[str, Any]:
        return {"alliance_id": self.alliance_id, "level": self.level, "kind": self.kind,
                "capability": self.capability, "q": self.q}

    def params(self) -> dict[str, Any]:
        return {"alliance": self.alliance_id if self.alliance_id is not None else "", "level": self.level or "",
                "kind": self.kind or "", "capability": self.capability or "", "q": self.q or ""}


@router.get("/directory")
def directory_index(request: Request, db: DbSession, user: Reader, alliance: str | None = None,
                    level: str = "", kind: str = "", capability: str = "", q: str = "",
                    offset: str | None = None) -> Response:
    filters = _Filters(db, user, alliance, level, kind, capability, q)
    page = service.search_organisations(db, **filters.service_kwargs(), limit=LIST_PAGE, offset=_offset(offset))
    ids = [o.id for o in page.items]
    params = filters.params()
    context = {
        "filters": params,
        "page": page,
        "groups": _group_by_level(page.items),
        "memberships": service.memberships_of(db, ids),
        "parents": service.organisation_names(db, (o.parent_id for o in page.items)),
        "capability_codes": _capability_codes,
        "query": _query(params),
        "prev_query": _query(params, offset=page.prev_offset) if page.prev_offset is not None else None,
        "next_query": _query(params, offset=page.next_offset) if page.next_offset is not None else None,
    }
    if _is_partial(request):
        # Only the result list is swapped; the count goes to the status line (read out by screen readers).
        response = render(request, "directory/_results.html", context | {"partial": True})
    else:
        alliances = service.list_alliances(db)
        context.update(alliances=alliances, leads=service.alliance_leads(db, [a.id for a in alliances]),
                       levels=list(OrgLevel), kinds=list(OrgKind), capabilities=list(Capability))
        response = render(request, "directory/index.html", context)
    response.headers["Vary"] = "HX-Request"
    return response


@router.get("/directory/organisations.xlsx")
def export_organisations(request: Request, db: DbSession, user: Reader, alliance: str | None = None,
                         level: str = "", kind: str = "", capability: str = "", q: str = "") -> Response:
    """The organisation list as the directory shows it (same filters), one row per organisation."""
    filters = _Filters(db, user, alliance, level, kind, capability, q)
    locale = request_locale(request)

    def t(key: str) -> str:
        return translate(key, locale)

    orgs = list(service.iter_organisations(db, **filters.service_kwargs()))
    parents = service.organisation_names(db, (o.parent_id for o in orgs))
    memberships = service.memberships_of(db, [o.id for o in orgs])
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(t("directory.xlsx.sheet"))
    headers = ["code", "name", "level", "kind", "parent", "regional_centre", "capabilities", "alliances",
               "address", "phone", "latitude", "longitude"]
    widths = [14, 30, 14, 18, 30, 12, 36, 40, 36, 16, 11, 11]
    for i, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(i)].width = width
    ws.freeze_panes = "C2"
    ws.append([t(f"directory.col.{h}") for h in headers])
    for org in orgs:
        ws.append([
            org.code, org.name, t(f"directory.level.{org.level}"), t(f"directory.kind.{org.kind}"),
            parents.get(org.parent_id, "") if org.parent_id else "",
            t("directory.yes") if org.is_regional_centre else "",
            "、".join(t(f"directory.capability.{c}") for c in _capability_codes(org)),
            "；".join(f"{m.alliance.name}（{t('directory.member_role.' + m.role)}）" for m in memberships[org.id]),
            org.address, org.phone, org.latitude, org.longitude,
        ])
    buffer = io.BytesIO()
    wb.save(buffer)
    return Response(buffer.getvalue(),
                    media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": "attachment; filename=\"organisations.xlsx\"; "
                                                    "filename*=UTF-8''organisations.xlsx"})


@router.get("/directory/organisations/{organisation_id}")
def organisation_page(request: Request, organisation_id: int, db: DbSession, user: Reader,
                      staff_offset: str | None = None) -> Response:
    org = service.get_organisation(db, organisation_id)
    staff = service.list_staff(db, organisation_id=org.id, limit=STAFF_PAGE, offset=_offset(staff_offset))
    memberships = service.memberships_of(db, [org.id])[org.id]
    context = {
        "org": org,
        "parent": org.parent,
        "area_name": service.area_names(db, [org.area_id]).get(org.area_id) if org.area_id else None,
        "capabilities": sorted(org.capabilities, key=lambda c: list(Capability).index(c.capability)),
        "departments": service.list_departments(db, organisation_id=org.id),
        "memberships": memberships,
        "staff": staff,
        "teams": service.list_teams(db, organisation_id=org.id, limit=200).items,
        "studios": service.list_teams(db, home_organisation_id=org.id, limit=200).items,
        "children": service.list_children(db, organisation_id=org.id),
        "can_manage": service.can_manage_organisation(user, org.id),
    }
    return render(request, "directory/organisation.html", context)


@router.get("/directory/practitioners/{practitioner_id}")
def practitioner_page(request: Request, practitioner_id: int, db: DbSession, _user: Reader) -> Response:
    prac = service.get_practitioner(db, practitioner_id)
    return render(request, "directory/practitioner.html", {
        "prac": prac,
        "posts": sorted(prac.posts, key=lambda p: (not p.is_primary, p.id)),
        "teams": service.teams_of_practitioner(db, practitioner_id=prac.id),
    })


@router.get("/directory/teams")
def teams_page(request: Request, db: DbSession, _user: Reader, kind: str = "", organisation: str | None = None,
               q: str = "", offset: str | None = None) -> Response:
    organisation_id = _opt_int("organisation", organisation)
    org = service.get_organisation(db, organisation_id) if organisation_id is not None else None
    page = service.list_teams(db, kind=kind.strip() or None, organisation_id=organisation_id, q=q.strip() or None,
                              limit=TEAM_PAGE, offset=_offset(offset))
    params = {"kind": kind.strip(), "organisation": organisation_id or "", "q": q.strip()}
    return render(request, "directory/teams.html", {
        "page": page, "filters": params, "organisation": org, "team_kinds": list(TeamKind),
        "prev_query": urlencode({**params, "offset": page.prev_offset}) if page.prev_offset is not None else None,
        "next_query": urlencode({**params, "offset": page.next_offset}) if page.next_offset is not None else None,
    })


@router.get("/directory/teams/{team_id}")
def team_page(request: Request, team_id: int, db: DbSession, _user: Reader) -> Response:
    team = service.get_team(db, team_id)
    order = {"leader": 0, "member": 1, "assistant": 2}
    members = sorted(team.members, key=lambda m: (order.get(m.role, 9),
                                                  service.GRADE_ORDER.index(m.practitioner.title_grade),
                                                  m.practitioner.name))
    areas = service.area_names(db, team.area_ids or [])
    return render(request, "directory/team.html", {
        "team": team, "members": members, "areas": [areas[i] for i in (team.area_ids or []) if i in areas],
    })


@router.get("/directory/map")
def map_page(request: Request, db: DbSession, user: Reader, alliance: str | None = None) -> Response:
    """The alliance drawn from coordinates by ECharts, with the same members as a table below."""
    alliance_id = _opt_int("alliance", alliance)
    chosen = service.get_alliance(db, alliance_id) if alliance_id is not None else service.default_alliance_for(
        db, user)
    alliances = service.list_alliances(db)
    the_map = service.alliance_map(db, alliance_id=chosen.id) if chosen is not None else None
    parents = service.organisation_names(db, (n.parent_id for n in the_map.nodes)) if the_map else {}
    levels_present = the_map.levels if the_map else []
    return render(request, "directory/map.html", {
        "alliances": alliances, "chosen": chosen, "map": the_map, "parents": parents,
        "level_labels": {str(lvl): translate(f"directory.level.{lvl}", request_locale(request))
                         for lvl in levels_present},
        "capability_labels": {str(c): translate(f"directory.capability.{c}", request_locale(request))
                              for c in Capability},
        "role_labels": {str(r): translate(f"directory.member_role.{r}", request_locale(request))
                        for r in ("lead", "member", "supporting")},
    })
