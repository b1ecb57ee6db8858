"""Chronic disease benchmark: the overdue worklist, the county indicators and a school sheet import at county scale.

    .venv/bin/python bench/chronic.py --smoke        # ~1% scale on SQLite in a temporary directory
    .venv/bin/python bench/chronic.py                # 100,000 hypertensive + 40,000 diabetic patients, SQLite
    .venv/bin/python bench/chronic.py --database-url postgresql+psycopg://healthrelay@127.0.0.1:55432/hr_bench
    ... --reuse     # keep the cohort an earlier full run loaded into that database, measure again

Steps: empty the database (a scratch one: the bench owns it), migrate, build a minimal directory (1 county,
20 townships, 300 villages with coordinates, 20 township centres, 150 family-doctor teams serving two villages
each), then bulk-load (COPY on PostgreSQL, executemany on SQLite) the residents (450,000, ages 0-90; the
management rate's denominator), the enrolments (100,000 hypertension, 40,000 type 2 diabetes, 10,000 of them
the same people) and four years of history: follow-up visits about every 91 days (14 after an uncontrolled
one; a fifth irregular, a tenth stopping at some point, so some are overdue and some lost), village
monitoring-point readings, and the derived columns of each enrolment set the way chronic.rules sets them.
VACUUM ANALYZE / ANALYZE, then measure:
  (a) `chronic.worklist.overdue_list` for random teams (200 runs): p50 / p95 / p99 ms (target p99 < 100 ms);
  (b) `chronic.indicators.compute` today, grouped by county, township, village and team (target: county-level
      under 2 s on PostgreSQL), a past month, and the 12-month series of the indicator page;
  (c) `screening.service.import_school_sheet` of a 12,000-row sheet from `screening.sheets.make_school_sheet`.
Prints a summary table.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
TOWNSHIPS = 20
VILLAGES_PER_TOWNSHIP = 15
TEAMS_PER_TOWNSHIP = 7  # plus one more in every other township: 150 teams
BATCH = 5000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Row:
    """One line of the summary table."""

    what: str
    n: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""


@dataclass
class Directory:
    county: int
    townships: list[int]
    villages: list[int]
    team_of_village: dict[int, int]
    org_of_team: dict[int, int]
    teams: list[int]
    centres: list[int]


# ------------------------------------------------------------------------------------ database

def reset_database(url: str) -> None:
    """Empty the database: the bench owns it (a scratch database or a temporary SQLite file)."""
    from sqlalchemy import create_engine, text

    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def insert_rows(db: Any, model: Any, rows: list[dict[str, Any]]) -> None:
    """Bulk insert: COPY on PostgreSQL (every column given), executemany on SQLite."""
    if not rows:
        return
    table = model.__table__
    if db.get_bind().dialect.name != "postgresql":
        from sqlalchemy import insert

        db.execute(insert(table), rows)
        return
    import enum

    from psycopg.types.json import Jsonb
    from sqlalchemy import JSON

    columns = list(rows[0])
    is_json = [isinstance(table.c[c].type, JSON) for c in columns]
    raw = db.connection().connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([Jsonb(v) if js else (v.value if isinstance(v, enum.Enum) else v)
                            for v, js in zip(row.values(), is_json, strict=True)])


def fix_sequences(db: Any, tables: list[str]) -> None:
    from sqlalchemy import text

    if db.get_bind().dialect.name != "postgresql":
        return
    for t in tables:
        db.execute(text(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), COALESCE((SELECT max(id) FROM {t}), 1))"))


# ------------------------------------------------------------------------------------ directory

def build_directory(db: Any, rng: random.Random) -> Directory:
    from healthrelay.directory.models import Area, AreaLevel, Organisation, OrgKind, OrgLevel, Team, TeamKind

    county = Area(code="BC", name="基准县", level=AreaLevel.COUNTY, latitude=29.5, longitude=111.5)
    db.add(county)
    db.flush()
    hospital = Organisation(code="BC-H", name="基准县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL,
                            area_id=county.id, latitude=29.5, longitude=111.5)
    db.add(hospital)
    townships, villages, centres, teams = [], [], [], []
    team_of_village: dict[int, int] = {}
    org_of_team: dict[int, int] = {}
    for i in range(TOWNSHIPS):
        lat, lon = 29.2 + 0.6 * rng.random(), 111.1 + 0.8 * rng.random()
        town = Area(code=f"BC{i:02d}", name=f"第{i + 1}镇", level=AreaLevel.TOWNSHIP, parent_id=county.id,
                    latitude=lat, longitude=lon)
        db.add(town)
        db.flush()
        townships.append(town.id)
        centre = Organisation(code=f"BC{i:02d}-C", name=f"第{i + 1}镇卫生院", level=OrgLevel.TOWNSHIP,
                              kind=OrgKind.TOWNSHIP_CENTRE, area_id=town.id, parent_id=hospital.id,
                              latitude=lat, longitude=lon)
        db.add(centre)
        db.flush()
        centres.append(centre.id)
        mine = []
        for j in range(VILLAGES_PER_TOWNSHIP):
            v = Area(code=f"BC{i:02d}{j:02d}", name=f"第{i + 1}镇{j + 1}村", level=AreaLevel.VILLAGE, parent_id=town.id,
                     latitude=lat + rng.uniform(-0.05, 0.05), longitude=lon + rng.uniform(-0.05, 0.05))
            db.add(v)
            db.flush()
            mine.append(v.id)
        villages += mine
        n_teams = TEAMS_PER_TOWNSHIP + (i % 2)
        for k in range(n_teams):
            served = mine[k::n_teams]
            team = Team(code=f"BC{i:02d}-T{k}", name=f"第{i + 1}镇家庭医生{k + 1}队", kind=TeamKind.FAMILY_DOCTOR,
                        organisation_id=centre.id, area_ids=served)
            db.add(team)
            db.flush()
            teams.append(team.id)
            org_of_team[team.id] = centre.id
            for v_id in served:
                team_of_village[v_id] = team.id
    db.commit()
    return Directory(county=county.id, townships=townships, villages=villages, team_of_village=team_of_village,
                     org_of_team=org_of_team, teams=teams, centres=centres)


# ------------------------------------------------------------------------------------ cohort

def local_at(day: date, hour: int = 9, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


class Cohort:
    """Deterministic residents, enrolments and four years of history."""

    def __init__(self, d: Directory, *, seed: int, today: date, residents: int, htn: int, t2dm: int,
                 overlap: int) -> None:
        self.d, self.rng, self.today = d, random.Random(seed), today
        self.residents, self.htn, self.t2dm, self.overlap = residents, htn, t2dm, overlap
        self.now = datetime.now(UTC)
        self.counts = {"patients": 0, "enrolments": 0, "follow_ups": 0, "readings": 0}

    def patients(self, first_id: int) -> Iterator[list[dict[str, Any]]]:
        from healthrelay.patients.models import Sex

        rng, batch = self.rng, []
        enrolled = self.htn + self.t2dm - self.overlap
        for i in range(self.residents):
            age = rng.randint(35, 90) if i < enrolled else rng.randint(0, 90)
            born = self.today - timedelta(days=age * 365 + rng.randint(0, 364))
            batch.append({"id": first_id + i, "name": f"居民{i}", "pinyin": "ju min", "pinyin_initials": "jm",
                          "sex": Sex.FEMALE if rng.random() < 0.5 else Sex.MALE, "birth_date": born, "phone": "",
                          "area_id": self.d.villages[i % len(self.d.villages)], "grid": "", "address_line": "",
                          "created_at": self.now, "updated_at": self.now})
            if len(batch) >= BATCH * 4:
                yield batch
                batch = []
        if batch:
            yield batch

    def enrolments(self, first_patient: int) -> Iterator[tuple[int, str]]:
        for i in range(self.htn):
            yield first_patient + i, "htn"
        start = self.htn - self.overlap
        for i in range(self.t2dm):
            yield first_patient + start + i, "t2dm"

    def history(self, enrolment_id: int, patient_id: int, condition: str, village: int, birth: date
                ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """One enrolment with its visits and readings, and its derived columns as chronic.rules sets them."""
        rng, today = self.rng, self.today
        start = today - timedelta(days=4 * 365)
        if rng.random() < 0.7:
            enrolled = today - timedelta(days=rng.randint(4 * 365, 8 * 365))
        else:
            enrolled = today - timedelta(days=rng.randint(10, 4 * 365))
        team = self.d.team_of_village[village]
        org = self.d.org_of_team[team]
        pattern = rng.random()
        dropped = pattern > 0.9
        irregular = 0.72 < pattern <= 0.9
        stop = start + timedelta(days=rng.randint(0, 4 * 365)) if dropped else today
        p_ctrl = rng.uniform(0.35, 0.9)
        elderly = (today - birth).days >= 65 * 365
        visits: list[dict[str, Any]] = []
        readings: list[dict[str, Any]] = []
        day = max(enrolled, start) + timedelta(days=rng.randint(0, 60))
        streak, last_class, last_ctrl, danger, last_visit = 0, "", True, False, None
        last_bp: tuple[int, int, datetime] | None = None
        last_glu: tuple[float, datetime] | None = None
        contact: datetime | None = None
        while day <= min(today, stop):
            ctrl = rng.random() < p_ctrl
            r = rng.random()
            mode = "clinic" if r < 0.55 else "home" if r < 0.85 else "phone"
            sbp = dbp = glu = None
            is_danger = False
            if condition == "htn" and mode != "phone":
                if ctrl:
                    sbp, dbp = rng.randint(108, 147 if elderly else 138), rng.randint(62, 88)
                else:
                    is_danger = rng.random() < 0.03
                    sbp = rng.randint(180, 196) if is_danger else rng.randint(151 if elderly else 141, 176)
                    dbp = rng.randint(78, 108)
            if condition == "t2dm" and mode != "phone":
                glu = round(rng.uniform(4.6, 6.9), 1) if ctrl else round(rng.uniform(7.1, 13.0), 1)
                if not ctrl and rng.random() < 0.02:
                    glu, is_danger = 17.2, True
            measured = sbp is not None or glu is not None
            klass = "controlled" if ctrl or not measured else "uncontrolled"
            visits.append({"enrolment_id": enrolment_id, "patient_id": patient_id, "condition_code": condition,
                           "organisation_id": org, "visit_on": day, "mode": mode, "symptoms": [], "sbp": sbp,
                           "dbp": dbp, "lifestyle": {}, "medicines": [], "adherence": "regular", "side_effects": "",
                           "fasting_glucose": glu, "foot_pulse": "", "hypoglycaemia": "", "classification": klass,
                           "note": "", "recorded_at": local_at(day, 10)})
            at = local_at(day, 10)
            contact = at
            if sbp is not None:
                last_bp = (sbp, dbp or 0, at)
            if glu is not None:
                last_glu = (glu, at)
            if mode != "phone":
                last_visit = day
                streak = streak + 1 if klass != "controlled" else 0
                last_class, last_ctrl, danger = klass, klass == "controlled", is_danger
            gap = rng.randint(120, 220) if irregular else (rng.randint(82, 100) if klass == "controlled"
                                                           else rng.randint(12, 20))
            day += timedelta(days=gap)
        # Village monitoring-point readings: about two a year while the patient still comes.
        active_days = max((min(today, stop) - max(enrolled, start)).days, 0)
        for _ in range(int(active_days / 365 * rng.choice((0, 1, 2, 3)))):
            rday = max(enrolled, start) + timedelta(days=rng.randint(0, active_days))
            at = local_at(rday, rng.randint(7, 17), rng.randint(0, 59))
            if condition == "htn":
                s, dd = (rng.randint(112, 138), rng.randint(64, 88)) if rng.random() < p_ctrl else (
                    rng.randint(141, 175), rng.randint(80, 104))
                readings.append({"patient_id": patient_id, "organisation_id": org, "kind": "bp", "measured_at": at,
                                 "sbp": s, "dbp": dd, "glucose_context": "", "source": "manual",
                                 "recorded_at": at})
                if last_bp is None or at >= last_bp[2]:
                    last_bp = (s, dd, at)
            else:
                g = round(rng.uniform(4.8, 6.9) if rng.random() < p_ctrl else rng.uniform(7.1, 12.0), 1)
                readings.append({"patient_id": patient_id, "organisation_id": org, "kind": "glucose",
                                 "measured_at": at, "glucose_mmol": g, "glucose_context": "fasting",
                                 "source": "manual", "recorded_at": at})
                if last_glu is None or at >= last_glu[1]:
                    last_glu = (g, at)
            contact = at if contact is None or at > contact else contact
        if last_visit is not None:
            due = last_visit + timedelta(days=91 if last_ctrl else 14)
            kind = "routine" if last_ctrl else "review"
        else:
            due, kind = enrolled + timedelta(days=14), "first"
        hidden = (today + timedelta(days=rng.randint(1, 14))) if due < today and rng.random() < 0.05 else None
        moved = dropped and rng.random() < 0.2
        enrolment = {
            "id": enrolment_id, "patient_id": patient_id, "condition_code": condition, "organisation_id": org,
            "team_id": team, "village_area_id": village, "diagnosed_on": enrolled - timedelta(days=rng.randint(0, 300)),
            "source": "clinic", "risk_factors": [], "complications": [], "medicines": [],
            "status": "moved" if moved else "active", "enrolled_at": local_at(enrolled, 9),
            "closed_at": local_at(stop, 12) if moved else None, "closed_reason": "迁出" if moved else "",
            "next_visit_due": due, "next_visit_kind": kind, "last_visit_on": last_visit,
            "last_classification": last_class, "uncontrolled_streak": streak,
            "last_sbp": last_bp[0] if last_bp else None, "last_dbp": last_bp[1] if last_bp else None,
            "last_bp_at": last_bp[2] if last_bp else None, "last_glucose": last_glu[0] if last_glu else None,
            "last_glucose_at": last_glu[1] if last_glu else None, "last_contact_at": contact,
            "risk_level": 3 if danger else (1 if last_ctrl else 2), "hidden_until": hidden,
        }
        return enrolment, visits, readings


def load_cohort(db: Any, d: Directory, args: argparse.Namespace, today: date, progress: Callable[[str], None]
                ) -> dict[str, int]:
    from sqlalchemy import func, select

    from healthrelay.chronic.models import ChronicEnrolment, ChronicFollowUp, ChronicReading
    from healthrelay.patients.models import Patient

    cohort = Cohort(d, seed=args.seed, today=today, residents=args.residents, htn=args.hypertensive,
                    t2dm=args.diabetic, overlap=args.overlap)
    first_patient = (db.scalar(select(func.max(Patient.id))) or 0) + 1
    births: dict[int, tuple[date, int]] = {}
    for batch in cohort.patients(first_patient):
        insert_rows(db, Patient, batch)
        for p in batch:
            births[p["id"]] = (p["birth_date"], p["area_id"])
        cohort.counts["patients"] += len(batch)
    db.commit()
    progress(f"  residents: {cohort.counts['patients']:,}")
    enrolments, visits, readings = [], [], []
    next_id = (db.scalar(select(func.max(ChronicEnrolment.id))) or 0) + 1

    def flush() -> None:
        insert_rows(db, ChronicEnrolment, enrolments)
        insert_rows(db, ChronicFollowUp, visits)
        insert_rows(db, ChronicReading, [r for r in readings if r["kind"] == "bp"])
        insert_rows(db, ChronicReading, [r for r in readings if r["kind"] == "glucose"])
        db.commit()
        cohort.counts["enrolments"] += len(enrolments)
        cohort.counts["follow_ups"] += len(visits)
        cohort.counts["readings"] += len(readings)
        enrolments.clear()
        visits.clear()
        readings.clear()

    for patient_id, condition in cohort.enrolments(first_patient):
        birth, village = births[patient_id]
        e, v, r = cohort.history(next_id, patient_id, condition, village, birth)
        next_id += 1
        enrolments.append(e)
        visits.extend(v)
        readings.extend(r)
        if len(enrolments) >= BATCH:
            flush()
            if cohort.counts["enrolments"] % 20000 == 0:
                progress(f"  enrolments: {cohort.counts['enrolments']:,}, visits {cohort.counts['follow_ups']:,}, "
                         f"readings {cohort.counts['readings']:,}")
    flush()
    fix_sequences(db, ["patients", "chronic_enrolments", "chronic_follow_ups", "chronic_readings"])
    db.commit()
    return cohort.counts


def analyse(url: str) -> None:
    from sqlalchemy import create_engine, text

    if url.startswith("sqlite"):
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    else:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for t in ("patients", "chronic_enrolments", "chronic_follow_ups", "chronic_readings", "areas", "teams"):
                conn.execute(text(f"VACUUM ANALYZE {t}"))
    engine.dispose()


# ------------------------------------------------------------------------------------ measurements

def time_worklist(runs: int, *, seed: int, today: date) -> list[Row]:
    from sqlalchemy import select

    from healthrelay.chronic import worklist
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.directory.models import Team, TeamKind

    rng = random.Random(seed + 1)
    with get_sessionmaker()() as db:
        teams = list(db.scalars(select(Team.id).where(Team.kind == TeamKind.FAMILY_DOCTOR)))
        worklist.overdue_list(db, team_id=teams[0], today=today)  # warm the connection and the caches
        db.rollback()
        ms, sizes = [], []
        for _ in range(runs):
            team = rng.choice(teams)
            t0 = time.perf_counter()
            rows = worklist.overdue_list(db, team_id=team, today=today, limit=50)
            ms.append((time.perf_counter() - t0) * 1000)
            sizes.append(len(rows))
            db.rollback()
    return [Row("overdue_list (random team, first 50)", runs, percentile(ms, 0.5), percentile(ms, 0.95),
                percentile(ms, 0.99), f"mean rows {statistics.mean(sizes):.0f}")]


def time_indicators(runs: int, *, today: date) -> tuple[list[Row], dict[str, Any]]:
    from healthrelay.chronic import indicators
    from healthrelay.core.db import get_sessionmaker

    out: list[Row] = []
    figures: dict[str, Any] = {}
    month_end = today.replace(day=1) - timedelta(days=1)
    cases: list[tuple[str, str, str, date]] = [
        ("htn", "county", "today", today), ("htn", "township", "today", today), ("htn", "village", "today", today),
        ("htn", "team", "today", today), ("t2dm", "county", "today", today),
        ("htn", "county", f"as of {month_end}", month_end), ("htn", "township", f"as of {month_end}", month_end),
    ]
    for condition, level, label, day in cases:
        ms = []
        rows: list[Any] = []
        for _ in range(runs):
            with get_sessionmaker()() as db:
                t0 = time.perf_counter()
                rows = indicators.compute(db, condition=condition, as_of=day, group_by=level, today=today)
                ms.append((time.perf_counter() - t0) * 1000)
                db.rollback()
        if level == "county":
            r = rows[0]
            figures[f"{condition} {label}"] = r
            note = (f"managed {r.managed:,}, control {pct(r.control_rate)}, standard {pct(r.standard_rate)}, "
                    f"mgmt {pct(r.management_rate)}, overdue {r.overdue if r.overdue is not None else '—'}, "
                    f"lost {r.lost:,}")
        else:
            note = f"{len(rows)} rows"
        out.append(Row(f"indicators {condition} by {level} ({label})", runs, percentile(ms, 0.5), None,
                       max(ms), note))
    with get_sessionmaker()() as db:
        t0 = time.perf_counter()
        series = indicators.monthly(db, condition="htn", months=12, today=today)
        ms12 = (time.perf_counter() - t0) * 1000
        db.rollback()
    out.append(Row("indicators htn 12-month series (county)", 1, ms12, None, ms12,
                   "control " + " ".join(pct(p.row.control_rate) for p in series[-4:]) + " (last 4 months)"))
    return out, figures


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def time_import(rows: int, *, seed: int, d: Directory) -> list[Row]:
    from healthrelay.accounts.models import Role
    from healthrelay.accounts.service import create_user
    from healthrelay.core.db import get_sessionmaker, utcnow
    from healthrelay.screening import service as screening
    from healthrelay.screening.sheets import make_school_sheet

    t0 = time.perf_counter()
    content = make_school_sheet(rows, seed=seed, fmt="xlsx", bad_rows=max(rows // 1000, 1))
    make_ms = (time.perf_counter() - t0) * 1000
    with get_sessionmaker()() as db:
        admin = create_user(db, username=f"bench.admin.{seed}.{time.time_ns()}", password="bench-password-42",
                            display_name="基准测试", role=Role.CLINICIAN, organisation_id=d.centres[0])
        services = [s.code for s in screening.services_of(db)]
        now = utcnow()
        event = screening.plan_event(db, by=admin, plan=screening.EventPlan(
            kind="school_checkup", title="基准学校体检", host_organisation_id=d.centres[0], starts_at=now,
            ends_at=now + timedelta(hours=8), services=services, area_id=d.townships[0]))
        screening.set_status(db, by=admin, event_id=event.id, status="open")
        db.commit()
        t0 = time.perf_counter()
        result = screening.import_school_sheet(db, by=admin, event_id=event.id, filename="school.xlsx", content=content)
        db.commit()
        seconds = time.perf_counter() - t0
    note = (f"{rows / seconds:,.0f} rows/s; imported {result.rows_imported:,}, failed {result.rows_failed}, "
            f"new residents {result.residents_new:,}, abnormal {result.abnormal_findings:,}")
    return [Row(f"school sheet import ({rows:,} rows, xlsx)", 1, seconds * 1000, None, None, note),
            Row("  making the sheet (make_school_sheet)", 1, make_ms, None, None, "")]


def print_table(rows: list[Row]) -> None:
    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:,.1f}"

    print(f"\n{'what':<52}{'n':>5}{'p50 ms':>11}{'p95 ms':>10}{'p99/max':>11}  note")
    for r in rows:
        print(f"{r.what:<52}{r.n:>5}{num(r.p50_ms):>11}{num(r.p95_ms):>10}{num(r.p99_ms):>11}  {r.note}")


# ------------------------------------------------------------------------------------ main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="about 1%% of the full scale, under a minute")
    parser.add_argument("--database-url", default="",
                        help="a scratch database (emptied); default: SQLite in a temporary directory")
    parser.add_argument("--reuse", action="store_true", help="keep the cohort an earlier run loaded")
    parser.add_argument("--hypertensive", type=int, default=100_000)
    parser.add_argument("--diabetic", type=int, default=40_000)
    parser.add_argument("--overlap", type=int, default=10_000, help="patients in both registries")
    parser.add_argument("--residents", type=int, default=450_000)
    parser.add_argument("--runs", type=int, default=200, help="worklist runs")
    parser.add_argument("--indicator-runs", type=int, default=3)
    parser.add_argument("--sheet-rows", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--skip-import", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.hypertensive, args.diabetic, args.overlap, args.residents = 1000, 400, 100, 4500
        args.runs, args.indicator_runs, args.sheet_rows = 50, 2, 1200
    workdir = Path(tempfile.mkdtemp(prefix="hr-chronic-bench-"))
    try:
        return run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> int:
    url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ.update({"HEALTHRELAY_DATABASE_URL": url, "HEALTHRELAY_DATA_DIR": str(workdir),
                       "HEALTHRELAY_ASSETS_DIR": str(ROOT / "node_modules"), "HEALTHRELAY_FAST_PASSWORD_HASH": "1"})
    os.environ.pop("HEALTHRELAY_RUN_TIMERS", None)
    from sqlalchemy import func, select

    import healthrelay.models  # noqa: F401  (every table, for the mappers)
    from healthrelay.chronic.models import ChronicEnrolment
    from healthrelay.core.db import get_sessionmaker, local_today, reset_caches
    from healthrelay.core.migrate import upgrade
    from healthrelay.directory.models import Area, AreaLevel

    progress = print if not args.smoke else (lambda line: None)
    today = local_today()
    print(f"database: {url.split('@')[-1]}  ({'smoke' if args.smoke else 'full'}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f})", flush=True)
    if not args.reuse:
        reset_database(url)
    reset_caches()
    upgrade(url)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    with get_sessionmaker()() as db:
        loaded = db.scalar(select(func.count()).select_from(ChronicEnrolment)) or 0
        if loaded and not args.reuse:
            print("the database already holds enrolments; use --reuse or a scratch database", file=sys.stderr)
            return 2
        if not loaded:
            d = build_directory(db, rng)
            counts = load_cohort(db, d, args, today, progress)
            print(f"loaded {counts['patients']:,} residents, {counts['enrolments']:,} enrolments, "
                  f"{counts['follow_ups']:,} follow-ups, {counts['readings']:,} readings "
                  f"in {time.perf_counter() - t0:.1f}s", flush=True)
        else:
            d = reuse_directory(db)
            print(f"reusing {loaded:,} enrolments", flush=True)
        townships = db.scalar(select(func.count()).select_from(Area).where(Area.level == AreaLevel.TOWNSHIP))
    t0 = time.perf_counter()
    analyse(url)
    print(f"ANALYZE: {time.perf_counter() - t0:.1f}s ({townships} townships, {len(d.teams)} teams)", flush=True)
    rows = time_worklist(args.runs, seed=args.seed, today=today)
    ind_rows, _ = time_indicators(args.indicator_runs, today=today)
    rows += ind_rows
    if not args.skip_import:
        try:
            rows += time_import(args.sheet_rows, seed=args.seed, d=d)
        except Exception as exc:  # noqa: BLE001  (a missing or failing import is reported, the figures still print)
            rows.append(Row("school sheet import", 0, note=f"failed: {type(exc).__name__}: {exc}"[:160]))
    reset_caches()
    print_table(rows)
    print(f"\nload average (1/5/15 min) at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("targets: overdue list p99 < 100 ms; county indicators < 2 s on PostgreSQL")
    return 0


def reuse_directory(db: Any) -> Directory:
    from sqlalchemy import select

    from healthrelay.directory.models import Area, AreaLevel, Team, TeamKind

    areas = list(db.scalars(select(Area)))
    teams = list(db.scalars(select(Team).where(Team.kind == TeamKind.FAMILY_DOCTOR)))
    return Directory(county=next(a.id for a in areas if a.level == AreaLevel.COUNTY),
                     townships=[a.id for a in areas if a.level == AreaLevel.TOWNSHIP],
                     villages=[a.id for a in areas if a.level == AreaLevel.VILLAGE],
                     team_of_village={v: t.id for t in teams for v in t.area_ids},
                     org_of_team={t.id: t.organisation_id for t in teams}, teams=[t.id for t in teams],
                     centres=sorted({t.organisation_id for t in teams}))


if __name__ == "__main__":
    raise SystemExit(main())
