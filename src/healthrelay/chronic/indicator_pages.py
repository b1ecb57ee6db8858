"""Chronic disease indicator pages (慢病管理指标) and the village grid (网格化管理); included by the chronic
pages module.

One route shape for the page, its `.xlsx` and `.pdf` and `?format=json`, so an export always shows what
the page showed for the same condition, level, area and month. Aggregates only: no name is read here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.audit import service as audit
from healthrelay.chronic import indicators
from healthrelay.chronic import rules as chronic_rules
from healthrelay.chronic.schemas import is_id
from healthrelay.core.db import local_today
from healthrelay.core.deps import CurrentActor, DbSession, require_roles
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.directory.models import Area, AreaLevel, Team
from healthrelay.referrals.kpi_pages import _PDF_BASE, _local_fetcher, _pct  # the same PDF and percent rules
from healthrelay.web.i18n import translate
from healthrelay.web.templating import render, request_locale

router = APIRouter(include_in_schema=False)

Reader = Annotated[User, require_roles(*indicators.READERS)]
SERIES_MONTHS = 12


@dataclass
class View:
    """Everything one request shows: the parameters as understood, the rows and their total."""

    condition: str
    condition_name: str
    level: str
    area: Area | None
    month: str  # "YYYY-MM" of the as-of day
    as_of: date
    present: bool
    rows: list[indicators.IndicatorRow]
    total: indicators.IndicatorRow
    scope: indicators.Scope

    @property
    def query(self) -> str:
        return urlencode(self.params())

    def params(self, **changes: Any) -> dict[str, Any]:
        p: dict[str, Any] = {"condition": self.condition, "level": self.level, "month": self.month}
        if self.area is not None:
            p["area"] = self.area.id
        p.update(changes)
        return {k: v for k, v in p.items() if v is not None}


def _int(value: str | None, name: str) -> int | None:
    if value is None or not value.strip():
        return None
    if not is_id(value):
        raise InvalidInput(f"{name} 须为编号 / {name} must be an id", field_errors=[field_error(name, "not an id")])
    return int(value)


def _condition(db: Session, code: str | None) -> chronic_rules.ConditionRules:
    code = (code or "htn").strip()
    known = {c.code for c in chronic_rules.all_conditions(db)}
    if code not in known:
        raise InvalidInput(f"没有这个慢病登记类别：{code} / no such chronic condition: {code}",
                           field_errors=[field_error("condition", "unknown value")])
    return chronic_rules.rules_for(db, code)


def _view(db: Session, user: User, condition: str | None, level: str | None, area: str | None,
          month: str | None) -> View:
    scope = indicators.scope_for(db, user=user)
    rules = _condition(db, condition)
    level = (level or "").strip() or ("township" if "township" in scope.levels else scope.levels[-1])
    area_id = _int(area, "area")
    if area_id is None:
        area_id = scope.default_area_id
    indicators.check_request(scope, level=level, area_id=area_id)
    area_row = db.get(Area, area_id) if area_id is not None else None
    if area_id is not None and area_row is None:
        raise InvalidInput(f"没有编号为 {area_id} 的地区 / no area {area_id}",
                           field_errors=[field_error("area", "unknown area")])
    today = local_today()
    as_of = indicators.as_of_for_month(month, today)
    rows = indicators.compute(db, condition=rules.code, as_of=as_of, group_by=level, area_id=area_id,
                              team_ids=scope.team_ids, today=today)
    adults = _adults(db, rows, level=level, as_of=as_of)
    total = indicators.total(rows, adults=adults, prevalence=rules.prevalence)
    names = {c.code: c.name for c in chronic_rules.all_conditions(db)}
    return View(condition=rules.code, condition_name=names.get(rules.code, rules.code), level=level, area=area_row,
                month=as_of.strftime("%Y-%m"), as_of=as_of, present=as_of >= today, rows=rows, total=total,
                scope=scope)


def _adults(db: Session, rows: list[indicators.IndicatorRow], *, level: str, as_of: date) -> int:
    """The total's population: the scope's villages (for teams, the villages they serve, counted once)."""
    if level != "team":
        return sum(r.adults for r in rows) if level != "county" else rows[0].adults if rows else 0
    ids = [int(r.key) for r in rows if r.key.isdigit()]
    villages = {int(v) for t in db.scalars(select(Team).where(Team.id.in_(ids))) for v in t.area_ids or []}
    return sum(indicators.adults_by_village(db, day=as_of, villages=villages).values())


def _choices(db: Session, scope: indicators.Scope) -> list[tuple[Area, list[Area]]]:
    """Townships with their villages, those the reader may pick."""
    areas = list(db.scalars(select(Area).order_by(Area.name)))
    allowed = scope.area_ids
    by_parent: dict[int | None, list[Area]] = {}
    for a in areas:
        by_parent.setdefault(a.parent_id, []).append(a)
    out = []
    for a in areas:
        if a.level != AreaLevel.TOWNSHIP:
            continue
        villages = [v for v in by_parent.get(a.id, []) if allowed is None or v.id in allowed]
        if allowed is None or a.id in allowed or villages:
            out.append((a, villages))
    return out


def _num(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def _drill(view: View, row: indicators.IndicatorRow) -> list[tuple[str, str]]:
    """Links one level down from a row, where the reader may look: (label key, query)."""
    if not row.key.isdigit() and row.key != indicators.COUNTY_KEY:
        return []
    levels = view.scope.levels
    links = []
    if view.level == "county" and "township" in levels:
        links.append(("indicators.drill.townships", urlencode(view.params(level="township", area=None))))
    elif view.level == "township":
        links.append(("indicators.drill.villages", urlencode(view.params(level="village", area=row.key))))
        if "team" in levels:
            links.append(("indicators.drill.teams", urlencode(view.params(level="team", area=row.key))))
    elif view.level == "village" and "team" in levels:
        links.append(("indicators.drill.teams", urlencode(view.params(level="team", area=row.key))))
    return links


def _context(db: Session, view: View, *, pdf: bool) -> dict[str, Any]:
    return {"v": view, "rows": view.rows, "total": view.total, "pct": _pct, "num": _num, "drill": _drill,
            "conditions": chronic_rules.all_conditions(db), "choices": [] if pdf else _choices(db, view.scope),
            "levels": view.scope.levels, "pdf": pdf, "today": local_today(),
            "series_query": urlencode({k: v for k, v in view.params().items() if k != "month"})}


def _audit(db: Session, actor: Any, view: View, output: str) -> None:
    """Exports leave the building: who took which figures is worth knowing. Called last (the audit lock)."""
    viewed = output in ("page", "json", "grid")
    audit.record(db, actor=actor, action="chronic.indicators_view" if viewed else "chronic.indicators_export",
                 resource=f"area:{view.area.id}" if view.area is not None else "",
                 detail={"condition": view.condition, "level": view.level, "as_of": view.as_of.isoformat(),
                         "output": output})


def view_json(view: View) -> dict[str, Any]:
    return {"condition": view.condition, "level": view.level, "area": view.area.id if view.area else None,
            "as_of": view.as_of.isoformat(), "rows": [r.as_dict() for r in view.rows],
            "total": view.total.as_dict()}


@router.get("/chronic/indicators")
def indicators_page(request: Request, db: DbSession, user: Reader, actor: CurrentActor, condition: str | None = None,
                    level: str | None = None, area: str | None = None, month: str | None = None,
                    format: str | None = None) -> Response:
    view = _view(db, user, condition, level, area, month)
    if format == "json":
        response: Response = JSONResponse(view_json(view))
    else:
        response = render(request, "chronic/indicators.html", _context(db, view, pdf=False))
    _audit(db, actor, view, "json" if format == "json" else "page")
    return response


@router.get("/chronic/indicators/series.json")
def indicators_series(db: DbSession, user: Reader, condition: str | None = None, level: str | None = None,
                      area: str | None = None) -> Response:
    """The last 12 months of the scope's rates, for the page's line chart (fetched after the page shows)."""
    scope = indicators.scope_for(db, user=user)
    rules = _condition(db, condition)
    area_id = _int(area, "area")
    if area_id is None:
        area_id = scope.default_area_id
    indicators.check_request(scope, level=(level or "").strip() or scope.levels[-1], area_id=area_id)
    series = indicators.monthly(db, condition=rules.code, months=SERIES_MONTHS, area_id=area_id,
                                team_ids=scope.team_ids)
    return JSONResponse({
        "months": [p.month for p in series],
        "management_rate": [_round(p.row.management_rate) for p in series],
        "standard_rate": [_round(p.row.standard_rate) for p in series],
        "control_rate": [_round(p.row.control_rate) for p in series],
        "managed": [p.row.managed for p in series],
        "overdue": [p.row.overdue for p in series],
    })


def _round(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 1)


@router.get("/chronic/indicators.xlsx")
def indicators_xlsx(request: Request, db: DbSession, user: Reader, actor: CurrentActor, condition: str | None = None,
                    level: str | None = None, area: str | None = None, month: str | None = None) -> Response:
    view = _view(db, user, condition, level, area, month)
    body = workbook_bytes(view, request_locale(request))
    _audit(db, actor, view, "xlsx")
    name = f"chronic-{view.condition}-{view.level}-{view.as_of:%Y%m%d}.xlsx"
    return Response(body, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/chronic/indicators.pdf")
def indicators_pdf(request: Request, db: DbSession, user: Reader, actor: CurrentActor, condition: str | None = None,
                   level: str | None = None, area: str | None = None, month: str | None = None) -> Response:
    from weasyprint import HTML  # imported here: it takes a moment to load and only this route needs it

    view = _view(db, user, condition, level, area, month)
    html = render(request, "chronic/indicators.html", _context(db, view, pdf=True)).body.decode()
    body = HTML(string=html, base_url=_PDF_BASE, url_fetcher=_local_fetcher()).write_pdf()
    _audit(db, actor, view, "pdf")
    name = f"chronic-{view.condition}-{view.level}-{view.as_of:%Y%m%d}.pdf"
    return Response(body, media_type="application/pdf", headers={"Content-Disposition": f'inline; filename="{name}"'})


@router.get("/chronic/grid")
def grid_page(request: Request, db: DbSession, user: Reader, actor: CurrentActor, condition: str | None = None,
              township: str | None = None, month: str | None = None) -> Response:
    """网格化管理: the villages of a township (or of the county) on their coordinates, coloured by control rate,
    with the same figures in a table for readers without JavaScript."""
    view = _view(db, user, condition, "village", township, month)
    placed = [r for r in view.rows if r.latitude is not None and r.longitude is not None]
    # No control rate (nobody in the denominator) is -1: outside the colour scale, drawn grey.
    points = [{"key": r.key, "name": r.name,
               "value": [r.longitude, r.latitude, -1 if r.control_rate is None else _round(r.control_rate)],
               "managed": r.managed, "overdue": r.overdue, "lost": r.lost, "control": _pct(r.control_rate)}
              for r in placed]
    response = render(request, "chronic/grid.html", {
        **_context(db, view, pdf=False), "points": points,
        "unplaced": [r for r in view.rows if r not in placed and r.key != indicators.UNKNOWN_KEY]})
    _audit(db, actor, view, "grid")
    return response


# --- Excel -------------------------------------------------------------------------------------------------

COLUMNS = (("name", None), ("key", None), ("managed", None), ("adults", None), ("estimated", "0.0"),
           ("management_rate", "0.0%"), ("standard_num", None), ("standard_den", None), ("standard_rate", "0.0%"),
           ("control_num", None), ("control_den", None), ("control_rate", "0.0%"), ("uncontrolled", None),
           ("no_visit", None), ("overdue", None), ("lost", None))


def workbook_bytes(view: View, locale: str = "zh") -> bytes:
    """Numbers as numbers (rates as fractions with a percent format); the first sheet is the page's table."""
    def t(key: str, **params: object) -> str:
        return translate(key, locale, **params)

    wb = Workbook()
    ws = wb.active
    ws.title = t("indicators.sheet.rows")
    ws.append([t(f"indicators.col.{c}") for c, _ in COLUMNS])
    for row in [*view.rows, view.total]:
        data = row.as_dict()
        data["name"] = row.name if row is not view.total else t("indicators.total")
        data["estimated"] = row.estimated
        ws.append([data[c] for c, _ in COLUMNS])
        for i, (_, fmt) in enumerate(COLUMNS, start=1):
            if fmt:
                ws.cell(row=ws.max_row, column=i).number_format = fmt
    for cell in ws[1]:
        cell.font = Font(bold=True)
    ws.freeze_panes = "B2"
    for i, width in enumerate([22, 8] + [12] * (len(COLUMNS) - 2), start=1):
        ws.column_dimensions[get_column_letter(i)].width = width
    about = wb.create_sheet(t("indicators.sheet.about"))
    for label, value in ((t("indicators.condition"), view.condition_name), (t("indicators.level"),
                         t(f"indicators.level.{view.level}")), (t("indicators.area"), view.area.name if view.area
                                                                else t("indicators.all_areas")),
                         (t("indicators.as_of"), view.as_of.isoformat())):
        about.append([label, value])
    for key in ("managed", "control", "standard", "overdue", "lost", "management"):
        about.append([t(f"indicators.foot.{key}")])
    about.column_dimensions["A"].width = 24
    about.column_dimensions["B"].width = 30
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
