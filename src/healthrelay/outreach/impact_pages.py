"""The outreach impact report (下沉成效) as a page, an Excel workbook and a PDF, from one set of query parameters.

`/outreach/impact?year=2026&group=studio&studio=&batch=&host=` (year "all" for every year); the `.xlsx` and
`.pdf` take the same query, so an export shows what the page showed. `/outreach/studios/{id}/impact` is the
studio's own view. Readers: planners, the health bureau, members of the studio. Aggregates only: no patient
name is read here. Definitions: impact.py.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.audit import service as audit
from healthrelay.core.db import local_today
from healthrelay.core.deps import CurrentActor, CurrentUser, DbSession
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.core.ids import IdPath, is_id
from healthrelay.outreach import impact
from healthrelay.outreach.models import SESSION_KINDS
from healthrelay.referrals.kpi_pages import _PDF_BASE, _local_fetcher  # the same PDF rules (no network)
from healthrelay.web.i18n import translate
from healthrelay.web.templating import render, request_locale

router = APIRouter(include_in_schema=False)

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# The table's columns: (attribute of ImpactRow or "kind:<kind>", Excel number format)
COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("sessions", None), *((f"kind:{k}", None) for k in SESSION_KINDS),
    ("operations", None), ("performed", None), ("guided", None), ("demonstrated", None),
    ("patients_seen", None), ("kept_local", None), ("referred_up", None), ("referrals", None),
    ("techniques", None), ("gaps_filled", None), ("trainees_present", None), ("traineeships", None),
    ("further_training", None), ("mentorships", None), ("bookings", None), ("no_shows", None),
    ("travel_km", "#,##0.0"), ("travel_hours", "#,##0.0"), ("money_yuan", "#,##0.00"), ("travel_unknown", None),
)
DEFINITIONS = ("sessions", "operations", "patients", "techniques", "trainees", "bookings", "travel", "money")


@dataclass
class View:
    report: impact.ImpactReport
    year_param: str  # "" (this year), a year, or "all"
    studio_page: bool

    def params(self, **changes: Any) -> dict[str, Any]:
        f = self.report.filters
        p: dict[str, Any] = {"year": "all" if f.year is None else f.year, "group": self.report.group_by,
                             "studio": f.studio_team_id, "batch": f.batch_id, "host": f.host_organisation_id}
        p.update(changes)
        return {k: v for k, v in p.items() if v not in (None, "")}

    @property
    def query(self) -> str:
        return urlencode(self.params())


def value_of(row: impact.ImpactRow, column: str) -> Any:
    if column.startswith("kind:"):
        return row.by_kind.get(column[5:], 0)
    value = getattr(row, column)
    return round(value, 1) if isinstance(value, float) and column != "money_yuan" else value


def _id(value: str | None, name: str) -> int | None:
    if value is None or not value.strip():
        return None
    if not is_id(value):
        raise InvalidInput(f"{name} 须为编号 / {name} must be an id", field_errors=[field_error(name, "not an id")])
    return int(value)


def _year(value: str | None) -> int | None:
    value = (value or "").strip()
    if not value:
        return local_today().year
    if value == "all":
        return None
    if not (value.isascii() and value.isdigit() and len(value) == 4):
        raise InvalidInput("年份须为四位数字或 all / year must be four digits or 'all'",
                           field_errors=[field_error("year", "四位年份 / a four-digit year")])
    return int(value)


def _view(db: Session, user: User, *, year: str | None, group: str | None, studio: str | None, batch: str | None,
          host: str | None, studio_page: bool = False) -> View:
    studio_id = impact.check_reader(db, user, _id(studio, "studio"))
    report = impact.compute(db, year=_year(year), group_by=(group or "studio").strip() or "studio",
                            studio_team_id=studio_id, batch_id=_id(batch, "batch"),
                            host_organisation_id=_id(host, "host"))
    return View(report=report, year_param=(year or "").strip(), studio_page=studio_page)


def _audit(db: Session, actor: Any, view: View, output: str) -> None:
    """Who took which figures; called last (the audit lock)."""
    f = view.report.filters
    audit.record(db, actor=actor, action="outreach.impact_view" if output == "page" else "outreach.impact_export",
                 resource=f"team:{f.studio_team_id}" if f.studio_team_id else "",
                 detail={"group": view.report.group_by, "year": f.year, "batch": f.batch_id,
                         "host": f.host_organisation_id, "output": output})


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def _chart(view: View, locale: str) -> dict[str, Any] | None:
    """Patients kept local per month (a year) or per group (every year), for the bar chart."""
    r = view.report
    if r.monthly_kept_local is not None:
        labels = [translate("impact.month", locale, m=m) for m in range(1, 13)]
        return {"labels": labels, "values": r.monthly_kept_local}
    if not r.rows:
        return None
    return {"labels": [row.name or translate(f"impact.none.{r.group_by}", locale) for row in r.rows],
            "values": [row.kept_local for row in r.rows]}


def _context(db: Session, request: Request, view: View, *, pdf: bool) -> dict[str, Any]:
    f = view.report.filters
    return {"v": view, "r": view.report, "rows": view.report.rows, "total": view.report.total, "columns": COLUMNS,
            "value_of": value_of, "num": _num, "pdf": pdf, "definitions": DEFINITIONS, "groups": impact.GROUPS,
            "choices": {} if pdf else impact.grouping_choices(db), "chart": None if pdf else _chart(
                view, request_locale(request)),
            "this_year": local_today().year, "year_value": "all" if f.year is None else str(f.year)}


def _page(request: Request, db: Session, actor: Any, view: View) -> Response:
    response = render(request, "outreach/impact.html", _context(db, request, view, pdf=False))
    _audit(db, actor, view, "page")
    return response


@router.get("/outreach/impact")
def impact_page(request: Request, db: DbSession, user: CurrentUser, actor: CurrentActor, year: str | None = None,
                group: str | None = None, studio: str | None = None, batch: str | None = None,
                host: str | None = None) -> Response:
    return _page(request, db, actor, _view(db, user, year=year, group=group, studio=studio, batch=batch, host=host))


@router.get("/outreach/studios/{team_id}/impact")
def studio_impact_page(request: Request, db: DbSession, user: CurrentUser, actor: CurrentActor, team_id: IdPath,
                       year: str | None = None, group: str | None = None) -> Response:
    """A studio's own figures (the studio page links here), grouped by host unless asked otherwise."""
    view = _view(db, user, year=year, group=group or "host", studio=str(team_id), batch=None, host=None,
                 studio_page=True)
    return _page(request, db, actor, view)


@router.get("/outreach/impact.xlsx")
def impact_xlsx(request: Request, db: DbSession, user: CurrentUser, actor: CurrentActor, year: str | None = None,
                group: str | None = None, studio: str | None = None, batch: str | None = None,
                host: str | None = None) -> Response:
    view = _view(db, user, year=year, group=group, studio=studio, batch=batch, host=host)
    f = view.report.filters
    reports = impact.rows_by_group(db, year=f.year, studio_team_id=f.studio_team_id, batch_id=f.batch_id,
                                   host_organisation_id=f.host_organisation_id)
    body = workbook_bytes(view, reports, request_locale(request))
    _audit(db, actor, view, "xlsx")
    name = f"outreach-impact-{f.year or 'all'}.xlsx"
    return Response(body, media_type=XLSX, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/outreach/impact.pdf")
def impact_pdf(request: Request, db: DbSession, user: CurrentUser, actor: CurrentActor, year: str | None = None,
               group: str | None = None, studio: str | None = None, batch: str | None = None,
               host: str | None = None) -> Response:
    from weasyprint import HTML  # imported here: it takes a moment to load and only this route needs it

    view = _view(db, user, year=year, group=group, studio=studio, batch=batch, host=host)
    html = render(request, "outreach/impact.html", _context(db, request, view, pdf=True)).body.decode()
    body = HTML(string=html, base_url=_PDF_BASE, url_fetcher=_local_fetcher()).write_pdf()
    _audit(db, actor, view, "pdf")
    name = f"outreach-impact-{view.report.filters.year or 'all'}-{view.report.group_by}.pdf"
    return Response(body, media_type="application/pdf", headers={"Content-Disposition": f'inline; filename="{name}"'})


# --- Excel -------------------------------------------------------------------------------------------------

def workbook_bytes(view: View, reports: dict[str, impact.ImpactReport], locale: str = "zh") -> bytes:
    """One sheet per grouping (studio, batch, host, year) with a total row, then the definitions and rates.
    Numbers stay numbers; money in yuan."""
    def t(key: str, **params: object) -> str:
        return translate(key, locale, **params)

    wb = Workbook()
    wb.remove(wb.active)
    for group in impact.GROUPS:
        report = reports[group]
        ws = wb.create_sheet(t(f"impact.group.{group}"))
        ws.append([t(f"impact.group.{group}")] + [t(f"impact.col.{c.replace(':', '.')}") for c, _ in COLUMNS])
        for row in [*report.rows, report.total]:
            name = (t("impact.total") if row is report.total else row.name or t(f"impact.none.{group}"))
            ws.append([name] + [value_of(row, c) for c, _ in COLUMNS])
            for i, (_, fmt) in enumerate(COLUMNS, start=2):
                if fmt:
                    ws.cell(row=ws.max_row, column=i).number_format = fmt
        for cell in ws[1]:
            cell.font = Font(bold=True)
        for cell in ws[ws.max_row]:
            cell.font = Font(bold=True)
        ws.freeze_panes = "B2"
        ws.column_dimensions["A"].width = 28
        for i in range(2, len(COLUMNS) + 2):
            ws.column_dimensions[get_column_letter(i)].width = 11
    about = wb.create_sheet(t("impact.sheet.definitions"))
    f = view.report.filters
    about.append([t("impact.year"), t("impact.all_years") if f.year is None else f.year])
    for key, value in (("studio", f.studio_team_id), ("batch", f.batch_id), ("host", f.host_organisation_id)):
        if value is not None:
            about.append([t(f"impact.group.{key}"), value])
    about.append([])
    for key in DEFINITIONS:
        about.append([t(f"impact.def.{key}")])
    about.append([])
    about.append([t("impact.rates")])
    for key, value in sorted(view.report.rates.items()):
        about.append([key, value])
    about.column_dimensions["A"].width = 120
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
