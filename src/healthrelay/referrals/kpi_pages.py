"""Referral indicator page (转诊指标) and its Excel and PDF exports; included by the referral pages module.

One route shape for the three outputs (`/referrals/kpi`, `.xlsx`, `.pdf`, and `?format=json`) so an
exported file always shows exactly what the page showed for the same months and organisation.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from datetime import date
from pathlib import Path
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
from healthrelay.core.deps import CurrentActor, DbSession, require_roles
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.directory.models import AllianceMembership, Organisation, OrgKind
from healthrelay.referrals import kpi
from healthrelay.referrals.models import Urgency
from healthrelay.web.i18n import translate
from healthrelay.web.templating import local_time, render, request_locale

router = APIRouter(include_in_schema=False)

KpiReader = Annotated[User, require_roles(*kpi.READERS)]
DEFAULT_MONTHS = 6
_STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
_PDF_BASE = "http://healthrelay.invalid/"  # resolves "/static/app.css"; never fetched over a network


def _period(start: str | None, end: str | None) -> tuple[date, date]:
    default_start, default_end = kpi.last_months(DEFAULT_MONTHS)
    first = start.strip() if start and start.strip() else default_start.strftime("%Y-%m")
    last = end.strip() if end and end.strip() else default_end.strftime("%Y-%m")
    return kpi.month_range(first, last)


def _organisation_id(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput("organisation 须为数字 / organisation must be a number",
                           field_errors=[field_error("organisation", "not a number")]) from None


def _report(db: Session, user: User, start: str | None, end: str | None,
            organisation: str | None) -> kpi.KpiReport:
    first, last = _period(start, end)
    return kpi.compute(db, user=user, start=first, end=last, organisation_id=_organisation_id(organisation))


def _choices(db: Session, user: User) -> list[Organisation]:
    """Organisations the reader may pick: alliance members (not the bureau itself); org_admin none."""
    if user.role not in kpi.SEE_ALL:
        return []
    members = select(AllianceMembership.organisation_id)
    return list(db.execute(select(Organisation).where(Organisation.id.in_(members),
                                                      Organisation.kind != OrgKind.HEALTH_BUREAU)
                           .order_by(Organisation.level, Organisation.name)).scalars())


def _query(report: kpi.KpiReport) -> str:
    params = {"start": report.start.strftime("%Y-%m"), "end": report.end.strftime("%Y-%m")}
    if report.organisation_id is not None:
        params["organisation"] = str(report.organisation_id)
    return urlencode(params)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _minutes(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _num(value: int) -> str:
    return f"{value:,}"


def _chart_data(report: kpi.KpiReport, locale: str) -> dict[str, Any]:
    return {
        "months": report.month_keys,
        "up": [m.up for m in report.months],
        "down": [m.down for m in report.months],
        "labels": {"up": translate("referrals.kpi.up", locale), "down": translate("referrals.kpi.down", locale)},
    }


def _audit(db: Session, actor: Any, report: kpi.KpiReport, output: str) -> None:
    """Exports leave the building; who took which figures is worth knowing even without patient data.

    Called last in each route: appending takes the audit chain's lock until the request commits, and
    every audited write in the system waits for it, so nothing slow (rendering a PDF) may follow.
    """
    audit.record(db, actor=actor, action="referral.kpi_view" if output == "page" else "referral.kpi_export",
                 resource=f"organisation:{report.organisation_id}" if report.organisation_id else "",
                 detail={"start": report.start.isoformat(), "end": report.end.isoformat(), "output": output})


def _context(db: Session, user: User, report: kpi.KpiReport, locale: str) -> dict[str, Any]:
    return {
        "report": report, "choices": _choices(db, user), "can_choose": user.role in kpi.SEE_ALL,
        "query": _query(report), "chart": _chart_data(report, locale), "urgencies": [str(u) for u in Urgency],
        "pct": _pct, "minutes": _minutes, "num": _num, "start_value": report.start.strftime("%Y-%m"),
        "end_value": report.end.strftime("%Y-%m"), "pdf": False,
    }


@router.get("/referrals/kpi")
def kpi_page(request: Request, db: DbSession, user: KpiReader, actor: CurrentActor, start: str | None = None,
             end: str | None = None, organisation: str | None = None, format: str | None = None) -> Response:
    report = _report(db, user, start, end, organisation)
    if format == "json":
        response: Response = JSONResponse(report_json(report))
    else:
        response = render(request, "referrals/kpi.html", _context(db, user, report, request_locale(request)))
    _audit(db, actor, report, "json" if format == "json" else "page")
    return response


@router.get("/referrals/kpi.xlsx")
def kpi_xlsx(request: Request, db: DbSession, user: KpiReader, actor: CurrentActor, start: str | None = None,
             end: str | None = None, organisation: str | None = None) -> Response:
    report = _report(db, user, start, end, organisation)
    body = workbook_bytes(report, request_locale(request))
    _audit(db, actor, report, "xlsx")
    name = f"referral-kpi-{report.start:%Y%m}-{report.end:%Y%m}.xlsx"
    return Response(body, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/referrals/kpi.pdf")
def kpi_pdf(request: Request, db: DbSession, user: KpiReader, actor: CurrentActor, start: str | None = None,
            end: str | None = None, organisation: str | None = None) -> Response:
    from weasyprint import HTML  # imported here: it takes a moment to load and only this route needs it

    report = _report(db, user, start, end, organisation)
    context = {**_context(db, user, report, request_locale(request)), "pdf": True}
    html = render(request, "referrals/kpi.html", context).body.decode()
    body = HTML(string=html, base_url=_PDF_BASE, url_fetcher=_local_fetcher()).write_pdf()
    _audit(db, actor, report, "pdf")
    name = f"referral-kpi-{report.start:%Y%m}-{report.end:%Y%m}.pdf"
    return Response(body, media_type="application/pdf", headers={"Content-Disposition": f'inline; filename="{name}"'})


def _local_fetcher() -> Any:
    """WeasyPrint may read our own stylesheets and nothing else: no network from a PDF render."""
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class StaticOnly(URLFetcher):
        def fetch(self, url: str, headers: Any = None) -> URLFetcherResponse:
            prefix = _PDF_BASE + "static/"
            if url.startswith(prefix) and url.endswith(".css"):
                target = (_STATIC / url.removeprefix(prefix)).resolve()
                if target.is_relative_to(_STATIC) and target.is_file():
                    return URLFetcherResponse(url, target.read_bytes(), {"Content-Type": "text/css; charset=utf-8"})
            raise ValueError(f"not fetched for a PDF: {url}")

    return StaticOnly()


# --- JSON and Excel ------------------------------------------------------------------------------

def report_json(report: kpi.KpiReport) -> dict[str, Any]:
    """The report as plain data, with the derived rates spelled out (for scripts and the bench)."""
    data = asdict(report)
    data["start"], data["end"] = report.start.isoformat(), report.end.isoformat()
    data["generated_at"] = report.generated_at.isoformat()
    data["answering"].update(acceptance_rate=report.answering.acceptance_rate,
                             on_time_share=report.answering.on_time_share)
    data["discharge_down_share"] = report.discharge_down_share
    for m, row in zip(report.months, data["months"], strict=True):
        row["discharge_down_share"] = m.discharge_down_share
    for org, row in zip(report.organisations, data["organisations"], strict=True):
        row["answering"].update(acceptance_rate=org.answering.acceptance_rate,
                                on_time_share=org.answering.on_time_share)
    for key, ans in report.answering_by_urgency.items():
        data["answering_by_urgency"][key].update(acceptance_rate=ans.acceptance_rate,
                                                 on_time_share=ans.on_time_share)
    return json.loads(json.dumps(data, default=str))


def workbook_bytes(report: kpi.KpiReport, locale: str = "zh") -> bytes:
    """Numbers as numbers (rates as fractions with a percent format), one sheet per table on the page."""
    def t(key: str, **params: object) -> str:
        return translate(key, locale, **params)

    wb = Workbook()
    summary = wb.active
    summary.title = t("referrals.kpi.sheet.summary")
    scope = report.organisation_name or t("referrals.kpi.all_organisations")
    rows: list[tuple[str, Any, str | None]] = [
        (t("referrals.kpi.period"), f"{report.start:%Y-%m} – {report.end:%Y-%m}", None),
        (t("referrals.kpi.scope"), scope, None),
        (t("referrals.kpi.up"), report.up, None),
        (t("referrals.kpi.down"), report.down, None),
        (t("referrals.kpi.answered"), report.answering.answered, None),
        (t("referrals.kpi.acceptance_rate"), report.answering.acceptance_rate, "0.0%"),
        (t("referrals.kpi.median_minutes"), report.response.median_minutes, None),
        (t("referrals.kpi.p90_minutes"), report.response.p90_minutes, None),
        (t("referrals.kpi.on_time_share"), report.answering.on_time_share, "0.0%"),
        (t("referrals.kpi.discharge_share"), report.discharge_down_share if report.has_lead else None, "0.0%"),
        (t("referrals.kpi.generated_at"), local_time(report.generated_at), None),
    ]
    for label, value, fmt in rows:
        summary.append([label, value])
        if fmt:
            summary.cell(row=summary.max_row, column=2).number_format = fmt
    summary.append([])
    summary.append([t("referrals.kpi.footnote_discharge")])
    _widths(summary, [28, 30])

    months = wb.create_sheet(t("referrals.kpi.sheet.months"))
    months.append([t("referrals.kpi.month"), t("referrals.kpi.up"), t("referrals.kpi.down"),
                   t("referrals.kpi.lead_completed"), t("referrals.kpi.lead_sent_down"),
                   t("referrals.kpi.discharge_share")])
    for m in report.months:
        months.append([m.month, m.up, m.down, m.lead_up_completed, m.lead_sent_down, m.discharge_down_share])
        months.cell(row=months.max_row, column=6).number_format = "0.0%"
    _widths(months, [10, 10, 10, 16, 16, 16])

    urg = wb.create_sheet(t("referrals.kpi.sheet.urgency"))
    urg.append([t("referrals.kpi.urgency"), t("referrals.kpi.answered"), t("referrals.kpi.acceptance_rate"),
                t("referrals.kpi.median_minutes"), t("referrals.kpi.p90_minutes"), t("referrals.kpi.on_time_share")])
    for key in (str(u) for u in Urgency):
        ans, rt = report.answering_by_urgency[key], report.response_by_urgency[key]
        urg.append([t(f"referrals.kpi.urgency.{key}"), ans.answered, ans.acceptance_rate, rt.median_minutes,
                    rt.p90_minutes, ans.on_time_share])
        for col in (3, 6):
            urg.cell(row=urg.max_row, column=col).number_format = "0.0%"
    _widths(urg, [14, 10, 14, 16, 16, 16])

    orgs = wb.create_sheet(t("referrals.kpi.sheet.members"))
    orgs.append([t("referrals.kpi.organisation"), t("referrals.kpi.lead"), t("referrals.kpi.up_sent"),
                 t("referrals.kpi.up_received"), t("referrals.kpi.down_sent"), t("referrals.kpi.down_received"),
                 t("referrals.kpi.answered"), t("referrals.kpi.acceptance_rate"), t("referrals.kpi.on_time_share")])
    for o in report.organisations:
        c = o.counts
        orgs.append([o.name, "✓" if o.is_lead else "", c.up_sent, c.up_received, c.down_sent, c.down_received,
                     o.answering.answered, o.answering.acceptance_rate, o.answering.on_time_share])
        for col in (8, 9):
            orgs.cell(row=orgs.max_row, column=col).number_format = "0.0%"
    _widths(orgs, [30, 6] + [12] * 7)

    by_month = wb.create_sheet(t("referrals.kpi.sheet.members_by_month"))
    by_month.append([t("referrals.kpi.organisation"), t("referrals.kpi.month"), t("referrals.kpi.up_sent"),
                     t("referrals.kpi.up_received"), t("referrals.kpi.down_sent"), t("referrals.kpi.down_received")])
    for o in report.organisations:
        for key, c in o.by_month.items():
            by_month.append([o.name, key, c.up_sent, c.up_received, c.down_sent, c.down_received])
    _widths(by_month, [30, 10, 12, 12, 12, 12])

    for ws in wb.worksheets:
        for cell in ws[1]:
            cell.font = Font(bold=True)
        ws.freeze_panes = "A2" if ws is not summary else None
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _widths(ws: Any, widths: list[int]) -> None:
    for i, w in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(i)].width = w
