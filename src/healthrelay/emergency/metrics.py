"""Pre-hospital response metrics (院前急救质控): "1030" and the national answer/departure targets.

Per station, month (Asia/Shanghai) and area (urban/rural), computed by ONE grouped SQL query:
- answered within 10 s (received → answered), target ≥ 95 %;
- departed within 3 min (dispatched → departed), target ≥ 95 %;
- on scene within 10 min in town, 30 min in the countryside (received → on scene: the caller's wait).
Limits and shares come from `emergency_response_targets` (data). Each share's denominator is the calls that
have both times (a cancelled call that never left counts for answering only). The calls that missed are
listed by the same expressions, newest first, bounded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import local_month
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.emergency.models import EmergencyCall, ResponseTarget
from healthrelay.emergency.service import organisation_names

TARGETS = ("answer", "depart", "on_scene")
MISSED_LIMIT = 200
_E = EmergencyCall


def _seconds(db: Session, later: Any, earlier: Any) -> ColumnElement[float]:
    if db.get_bind().dialect.name == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


def month_expr(db: Session) -> ColumnElement[str]:
    """The call's month in China time, as 'YYYY-MM'."""
    return local_month(db, _E.received_at)


@dataclass
class Limits:
    answer_seconds: float = 10
    answer_share: float = 0.95
    depart_seconds: float = 180
    depart_share: float = 0.95
    urban_seconds: float = 600
    rural_seconds: float = 1800

    @classmethod
    def from_db(cls, db: Session) -> Limits:
        rows = {t.code: t for t in db.execute(select(ResponseTarget)).scalars()}
        out = cls()

        def secs(t: ResponseTarget) -> float:
            return t.limit_value * (60 if t.unit == "minutes" else 1)

        if "answer_seconds" in rows:
            out.answer_seconds = secs(rows["answer_seconds"])
            out.answer_share = rows["answer_seconds"].required_share or out.answer_share
        if "depart_minutes" in rows:
            out.depart_seconds = secs(rows["depart_minutes"])
            out.depart_share = rows["depart_minutes"].required_share or out.depart_share
        if "urban_on_scene" in rows:
            out.urban_seconds = secs(rows["urban_on_scene"])
        if "rural_on_scene" in rows:
            out.rural_seconds = secs(rows["rural_on_scene"])
        return out


@dataclass
class Share:
    met: int = 0
    counted: int = 0

    @property
    def share(self) -> float | None:
        return self.met / self.counted if self.counted else None

    def add(self, other: Share) -> None:
        self.met += other.met
        self.counted += other.counted


@dataclass
class MetricRow:
    station_id: int | None
    station_name: str
    month: str
    urban: bool
    calls: int
    answer: Share = field(default_factory=Share)
    depart: Share = field(default_factory=Share)
    on_scene: Share = field(default_factory=Share)


def _conditions(db: Session, limits: Limits) -> dict[str, tuple[ColumnElement[bool], ColumnElement[bool]]]:
    """target -> (counted, met) conditions."""
    answer = _seconds(db, _E.answered_at, _E.received_at)
    depart = _seconds(db, _E.departed_at, _E.dispatched_at)
    scene = _seconds(db, _E.on_scene_at, _E.received_at)
    scene_limit = case((_E.urban.is_(True), limits.urban_seconds), else_=limits.rural_seconds)
    return {
        "answer": (_E.answered_at.is_not(None), answer <= limits.answer_seconds),
        "depart": (and_(_E.dispatched_at.is_not(None), _E.departed_at.is_not(None)), depart <= limits.depart_seconds),
        "on_scene": (_E.on_scene_at.is_not(None), scene <= scene_limit),
    }


def _filters(since: datetime | None, until: datetime | None, station_id: int | None) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if since is not None:
        out.append(_E.received_at >= since)
    if until is not None:
        out.append(_E.received_at < until)
    if station_id is not None:
        out.append(_E.station_organisation_id == station_id)
    return out


def response_metrics(db: Session, *, since: datetime | None = None, until: datetime | None = None,
                     station_id: int | None = None) -> list[MetricRow]:
    """One row per (station, month, urban/rural), by SQL aggregation."""
    limits = Limits.from_db(db)
    conds = _conditions(db, limits)
    month = month_expr(db).label("month")
    cols: list[Any] = [_E.station_organisation_id, month, _E.urban, func.count().label("calls")]
    for name, (counted, met) in conds.items():
        cols.append(func.sum(case((counted, 1), else_=0)).label(f"{name}_n"))
        cols.append(func.sum(case((and_(counted, met), 1), else_=0)).label(f"{name}_ok"))
    q = (select(*cols).where(*_filters(since, until, station_id))
         .group_by(_E.station_organisation_id, month, _E.urban).order_by(month, _E.station_organisation_id, _E.urban))
    rows = db.execute(q).all()
    names = organisation_names(db, [r.station_organisation_id for r in rows])
    out = []
    for r in rows:
        station = names.get(r.station_organisation_id, "") if r.station_organisation_id else "未派车 / no dispatch"
        out.append(MetricRow(
            station_id=r.station_organisation_id, station_name=station, month=r.month, urban=bool(r.urban),
            calls=int(r.calls), answer=Share(int(r.answer_ok or 0), int(r.answer_n or 0)),
            depart=Share(int(r.depart_ok or 0), int(r.depart_n or 0)),
            on_scene=Share(int(r.on_scene_ok or 0), int(r.on_scene_n or 0))))
    return out


def totals(rows: list[MetricRow], *, key: str = "all") -> dict[Any, MetricRow]:
    """Roll rows up: "all" (one row), "station", "month" or "area"."""
    out: dict[Any, MetricRow] = {}
    for r in rows:
        k = {"all": "all", "station": r.station_id, "month": r.month, "area": r.urban}[key]
        agg = out.setdefault(k, MetricRow(station_id=r.station_id if key == "station" else None,
                                          station_name=r.station_name if key == "station" else "",
                                          month=r.month if key == "month" else "",
                                          urban=r.urban if key == "area" else False, calls=0))
        agg.calls += r.calls
        agg.answer.add(r.answer)
        agg.depart.add(r.depart)
        agg.on_scene.add(r.on_scene)
    return out


def missed_calls(db: Session, *, target: str, since: datetime | None = None, until: datetime | None = None,
                 station_id: int | None = None, month: str | None = None, urban: bool | None = None,
                 limit: int = MISSED_LIMIT) -> list[EmergencyCall]:
    """The calls that missed one target, newest first (at most `limit`)."""
    if target not in TARGETS:
        raise InvalidInput(f"未知的指标 {target} / unknown target", field_errors=[field_error(
            "target", "|".join(TARGETS))])
    if month is not None and not (len(month) == 7 and month[4] == "-" and month.replace("-", "").isdigit()):
        raise InvalidInput("月份格式为 YYYY-MM / month must be YYYY-MM", field_errors=[field_error("month", month)])
    counted, met = _conditions(db, Limits.from_db(db))[target]
    q = select(_E).where(counted, ~met, *_filters(since, until, station_id))
    if month is not None:
        q = q.where(month_expr(db) == month)
    if urban is not None:
        q = q.where(_E.urban.is_(urban))
    return list(db.execute(q.order_by(_E.received_at.desc()).limit(limit)).scalars())


def to_xlsx(rows: list[MetricRow], limits: Limits) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = "1030"
    ws.append(["急救站 / station", "月份 / month", "区域 / area", "呼叫数 / calls",
               f"{round(limits.answer_seconds)}秒接听率 / answered ≤ {round(limits.answer_seconds)} s",
               f"{round(limits.depart_seconds / 60)}分钟出车率 / departed ≤ {round(limits.depart_seconds / 60)} min",
               "到达现场达标率 / on scene within 10/30 min", "接听计数 / answered n", "出车计数 / departed n",
               "到达计数 / on scene n"])
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for r in rows:
        ws.append([r.station_name, r.month, "城区 / urban" if r.urban else "农村 / rural", r.calls,
                   _pct(r.answer.share), _pct(r.depart.share), _pct(r.on_scene.share), r.answer.counted,
                   r.depart.counted, r.on_scene.counted])
    ws.append([])
    ws.append(["目标 / targets", "", "", "", f"≥ {round(limits.answer_share * 100)}%",
               f"≥ {round(limits.depart_share * 100)}%",
               f"城区 {round(limits.urban_seconds / 60)} 分钟 / 农村 {round(limits.rural_seconds / 60)} 分钟"])
    for col, width in zip("ABCDEFG", (34, 10, 14, 10, 22, 22, 26), strict=True):
        ws.column_dimensions[col].width = width
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _pct(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 1)
