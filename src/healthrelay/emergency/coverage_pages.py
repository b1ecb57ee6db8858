"""The coverage page (/emergency/coverage): which villages today's stations reach within 10/30 minutes,
and a placement study suggesting where k stations would cover most of last year's calls.

One GET route: the study runs when `k` is given, so the form works without JavaScript and a study can be
bookmarked; with htmx the form swaps only the study section. No patient data is read (calls count as
points, aggregated by village), so the health bureau may use it too.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from healthrelay.accounts.models import Role, User
from healthrelay.core.deps import DbSession, require_roles
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.directory import service as directory
from healthrelay.emergency.coverage import Demand, call_demand, county_sites, reach, summarise
from healthrelay.emergency.placement import Study, run_study
from healthrelay.geo.service import network_for
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)

Planner = Annotated[User, require_roles(Role.DISPATCHER, Role.ORG_ADMIN, Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU)]
STUDY_TIME_LIMIT_S = 5.0
MAX_K = 60


def _int_param(name: str, value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name} 须为整数 / {name} must be a whole number",
                           field_errors=[field_error(name, "not a whole number")]) from None


@router.get("/emergency/coverage")
def coverage_page(request: Request, db: DbSession, user: Planner, alliance: str | None = None,
                  k: str | None = None, keep: str | None = None) -> Response:
    """The map and table of today's 1030 coverage; with `k`, the placement study below them."""
    alliance_id = _int_param("alliance", alliance)
    chosen = (directory.get_alliance(db, alliance_id) if alliance_id is not None
              else directory.default_alliance_for(db, user))
    context: dict[str, Any] = {"alliances": directory.list_alliances(db), "chosen": chosen, "network": None,
                               "study": None, "study_error": None, "k_value": k or "",
                               # Unticked boxes send nothing: before any study, offer "keep current stations" ticked.
                               "keep": k is None or keep not in (None, "", "0", "false"), "max_k": MAX_K}
    if chosen is None:
        return render(request, "emergency/coverage.html", context)
    sites = county_sites(db, alliance_id=chosen.id)
    network = network_for(db)
    context.update(sites=sites, network=network)
    if network.node_count == 0:
        return render(request, "emergency/coverage.html", context)
    reaches = reach(network, sites.stations, sites.villages)
    context.update(reaches=reaches, summary=summarise(reaches),
                   uncovered=sorted((r for r in reaches if not r.covered),
                                    key=lambda r: (r.best_minutes is not None, -(r.best_minutes or 0))))
    demand = call_demand(db, sites.villages)
    context["demand"] = demand
    status = 200
    if k is not None:
        try:
            context["study"] = _study(network, sites, demand, k=k, keep=context["keep"])
        except InvalidInput as err:
            context["study_error"] = err
            status = 422
    if not context["k_value"]:
        context["k_value"] = str(len(sites.stations) + 2)
    context["map_data"] = _map_data(sites, reaches, context["study"])
    return render(request, "emergency/coverage.html", context, status_code=status)


def _study(network: Any, sites: Any, demand: Demand, *, k: str, keep: bool) -> Study:
    k_int = _int_param("k", k)
    if k_int is None or not 1 <= k_int <= MAX_K:
        raise InvalidInput(f"站点数须在 1 到 {MAX_K} 之间 / the number of stations must be 1 to {MAX_K}",
                           field_errors=[field_error("k", f"between 1 and {MAX_K}")])
    if keep and k_int < len(sites.stations):
        raise InvalidInput(f"保留现有 {len(sites.stations)} 个站点时，站点数不能少于此数 / keeping the "
                           f"{len(sites.stations)} current stations needs k of at least that",
                           field_errors=[field_error("k", f"at least {len(sites.stations)} when keeping stations")])
    if k_int > len({s.key for s in (*sites.stations, *sites.candidates)}):
        raise InvalidInput("候选站址不足 / fewer candidate sites than stations asked for",
                           field_errors=[field_error("k", "more stations than candidate sites")])
    return run_study(network, stations=sites.stations, candidates=sites.candidates, demand=demand.points, k=k_int,
                     keep_current=keep, time_limit_s=STUDY_TIME_LIMIT_S)


def _map_data(sites: Any, reaches: list[Any], study: Study | None) -> dict[str, Any]:
    village_at = {v.key: v for v in sites.villages}
    data: dict[str, Any] = {
        "stations": [{"name": s.name, "value": [s.lon, s.lat]} for s in sites.stations],
        "villages": [{"name": r.name, "value": [village_at[r.key].lon, village_at[r.key].lat],
                      "covered": r.covered, "urban": r.urban,
                      "minutes": None if r.best_minutes is None else round(r.best_minutes, 1)} for r in reaches],
        "suggested": [],
    }
    if study is not None:
        for key in study.optimal.chosen:
            site = study.candidates[key]
            data["suggested"].append({"name": site.name, "value": [site.lon, site.lat], "new": study.is_new(key)})
    return data
