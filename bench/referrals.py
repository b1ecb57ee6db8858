"""Referral benchmark: the department worklist, the KPI page and a load run at county scale.

    .venv/bin/python bench/referrals.py --smoke     # ~5,000 referrals on SQLite (or on
                                                    # HEALTHRELAY_TEST_DATABASE_URL), 5 users for 5 s
    .venv/bin/python bench/referrals.py --referrals 1000000 --fresh \\
        --database-url postgresql+psycopg://healthrelay@127.0.0.1:55432/kpi_bench   # full
    ... --reuse     # keep the referrals already loaded by an earlier full run, measure again

Steps: build the demo county (healthrelay.demo.build), bulk-load N referrals spread over two years
(COPY on PostgreSQL) with realistic senders, receivers, urgencies, answer times and states (about
one in ten still open, some overdue; down referrals linked to the up referrals they discharge;
transitions rows for the redirected ones, the only ones the KPI reads), REINDEX and VACUUM ANALYZE,
then measure:
  (a) `service.worklist` as the referral board calls it: a county department's incoming referrals
      waiting for an answer, overdue first, limit 100 (200 runs over varied departments; the
      target), and the board's other sections (accepted, outgoing, down) and the API's default;
  (b) `kpi.compute` for 6 and 12 months, and the KPI page over HTTP;
  (c) a locust load run against `uvicorn healthrelay.asgi:app --workers 2` on 127.0.0.1: township
      doctors create and send referrals, county doctors list their department's incoming referrals
      and accept them, through the JSON API with bearer tokens (full: 50 users for 60 s).
Prints a summary table; exits non-zero when the load run had failures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SMOKE_REFERRALS = 5000
DEADLINE_MINUTES = {"green_channel": 15, "urgent": 120, "routine": 1440}
EXPIRE_MINUTES = {"green_channel": 120, "urgent": 720, "routine": 4320}
# Median minutes to an answer, per urgency (lognormal spread; a share of them late).
ANSWER_MEDIAN = {"green_channel": 7, "urgent": 50, "routine": 300}
SENDER_LOGINS = ("doc.shimen", "doc.baisha", "doc.qingshan", "doc.chengdong")
RECEIVER_LOGINS = {"doc.cardio": "CARD", "doc.neuro": "NEUR", "doc.emergency": "EMER"}
KPI_LOGIN = "admin.alliance"


# ------------------------------------------------------------------------------------ plumbing

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Row:
    """One line of the summary table."""

    what: str
    n: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    rps: float | None = None
    failures: int | None = None
    note: str = ""


@dataclass
class Places:
    """Ids from the demo county that the generator and the load run need."""

    county: int
    county_depts: list[int]
    dept_by_code: dict[str, int]
    tcm: int
    tcm_depts: list[int]
    mch: int
    mch_depts: list[int]
    provincial: list[int]
    provincial_depts: dict[int, list[int]]
    townships: list[int]  # township and community centres
    villages: list[int]
    township_of: dict[int, int]  # village clinic -> its township centre
    user_of: dict[int, int]  # organisation -> some user there
    any_user: int
    patients: list[int]
    leads: set[int] = field(default_factory=set)


# ------------------------------------------------------------------------------------ database

def reset_database(url: str) -> None:
    """Empty the database: the bench owns it (a scratch database or the test database)."""
    from sqlalchemy import create_engine, text

    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        path.unlink(missing_ok=True)
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def places(db: Any) -> Places:
    from sqlalchemy import select

    from healthrelay.accounts.models import User
    from healthrelay.demo import county
    from healthrelay.directory.models import AllianceMembership, Department, MembershipRole, Organisation, OrgKind
    from healthrelay.patients.models import Patient

    orgs = {o.code: o for o in db.execute(select(Organisation)).scalars()}
    depts: dict[int, list[Department]] = {}
    for d in db.execute(select(Department).order_by(Department.id)).scalars():
        depts.setdefault(d.organisation_id, []).append(d)
    users: dict[int, int] = {}
    for u in db.execute(select(User).order_by(User.id)).scalars():
        if u.organisation_id is not None:
            users.setdefault(u.organisation_id, u.id)
    ph = orgs[county.COUNTY_HOSPITAL]
    prov = [orgs[c].id for c in (county.PROVINCIAL_GENERAL, county.PROVINCIAL_UNIVERSITY, county.PROVINCIAL_TCM)]
    townships = [o.id for o in orgs.values() if o.kind in (OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE)]
    villages = [o for o in orgs.values() if o.kind == OrgKind.VILLAGE_CLINIC]
    return Places(
        county=ph.id, county_depts=[d.id for d in depts[ph.id]], dept_by_code={d.code: d.id for d in depts[ph.id]},
        tcm=orgs[county.TCM_HOSPITAL].id, tcm_depts=[d.id for d in depts[orgs[county.TCM_HOSPITAL].id]],
        mch=orgs[county.MCH_HOSPITAL].id, mch_depts=[d.id for d in depts[orgs[county.MCH_HOSPITAL].id]],
        provincial=prov, provincial_depts={p: [d.id for d in depts.get(p, [])] for p in prov},
        townships=sorted(townships), villages=sorted(v.id for v in villages),
        township_of={v.id: v.parent_id or townships[0] for v in villages},
        user_of=users, any_user=min(users.values()),
        patients=list(db.execute(select(Patient.id).order_by(Patient.id)).scalars()),
        leads=set(db.execute(select(AllianceMembership.organisation_id)
                             .where(AllianceMembership.role == MembershipRole.LEAD)).scalars()),
    )


# ------------------------------------------------------------------------------------ generator

class Generator:
    """Referrals as a county would have them after two years: growing volume, mostly up to the
    county hospital, answered in minutes to hours, most closed, the recent ones still open."""

    def __init__(self, p: Places, *, seed: int, now: datetime) -> None:
        self.p = p
        self.rng = random.Random(seed)
        self.now = now
        self.start = now - timedelta(days=730)
        # Busier departments first: a skewed choice, as real referral streams are.
        self.county_weights = [1 / (i + 1) ** 0.8 for i in range(len(p.county_depts))]
        self.transitions: list[dict[str, Any]] = []

    def _sent_at(self) -> datetime:
        # Volume grows over the two years: density proportional to (1 + 2t), t in [0, 1].
        t = (-1 + math.sqrt(1 + 8 * self.rng.random())) / 2  # inverse of the CDF (t + t^2) / 2
        return self.start + timedelta(seconds=t * 730 * 86400)

    def _urgency(self, down: bool = False) -> str:
        r = self.rng.random()
        if down:
            return "urgent" if r < 0.1 else "routine"
        return "green_channel" if r < 0.05 else "urgent" if r < 0.30 else "routine"

    def _answer_minutes(self, urgency: str) -> float:
        return min(ANSWER_MEDIAN[urgency] * math.exp(self.rng.gauss(0, 0.9)), EXPIRE_MINUTES[urgency] * 0.9)

    def _sender_receiver(self) -> tuple[int, int, int | None]:
        p, r = self.p, self.rng.random()
        if r < 0.60:
            sender = self.rng.choice(p.townships)
        elif r < 0.85:
            sender = self.rng.choice(p.villages)
        elif r < 0.95:
            sender = self.rng.choice((p.tcm, p.mch))
        else:
            prov = self.rng.choice(p.provincial)
            return p.county, prov, self.rng.choice(p.provincial_depts[prov] or [None])  # type: ignore[list-item]
        r = self.rng.random()
        if sender in (p.tcm, p.mch) and r < 0.3:
            prov = self.rng.choice(p.provincial)
            return sender, prov, self.rng.choice(p.provincial_depts[prov] or [None])  # type: ignore[list-item]
        if sender not in (p.tcm, p.mch) and r > 0.85:
            org, dept_ids = (p.tcm, p.tcm_depts) if r > 0.925 else (p.mch, p.mch_depts)
            return sender, org, self.rng.choice(dept_ids)
        return sender, p.county, self.rng.choices(p.county_depts, self.county_weights)[0]

    def _state(self, sent: datetime, urgency: str) -> dict[str, Any]:
        """Timestamps and state for one referral sent at `sent`."""
        rng, now = self.rng, self.now
        age_days = (now - sent).total_seconds() / 86400
        p_open = 0.8 if age_days < 3 else 0.3 if age_days < 30 else 0.11 if age_days < 365 else 0.07
        due_minutes = DEADLINE_MINUTES[urgency]
        v: dict[str, Any] = {"sent_at": sent, "response_due_at": sent + timedelta(minutes=due_minutes),
                             "round": 0, "answered_at": None, "closed_at": None, "appointment_at": None}
        answer = sent + timedelta(minutes=self._answer_minutes(urgency))
        redirected = rng.random() < 0.03
        if redirected:  # passed on halfway; the new receiver gets a fresh window
            hop = sent + (answer - sent) / 2
            v.update(round=1, response_due_at=hop + timedelta(minutes=due_minutes), _redirect_at=hop)
        if rng.random() < p_open:
            r = rng.random()
            stuck = age_days >= 3
            state = ("sent" if r < (0.15 if stuck else 0.5) else "accepted" if r < (0.65 if stuck else 0.75)
                     else "arrived")
            if answer > now:
                state = "sent"
            if redirected and state == "sent":
                state = "redirected"
            if state != "sent" and state != "redirected":
                v.update(answered_at=answer, appointment_at=answer + timedelta(days=1))
            v["state"] = state
            return v
        r = rng.random()
        if r < 0.78:
            closed = answer + timedelta(hours=rng.uniform(24, 14 * 24))
            if closed > now:
                v.update(state="arrived", answered_at=answer, appointment_at=answer + timedelta(hours=4))
            else:
                v.update(state="completed", answered_at=answer, closed_at=closed,
                         appointment_at=answer + timedelta(hours=4))
        elif r < 0.88:
            v.update(state="declined", answered_at=answer, closed_at=answer)
        elif r < 0.94:
            v.update(state="cancelled", closed_at=min(sent + timedelta(minutes=rng.uniform(10, 2880)), now))
        else:
            expired = sent + timedelta(minutes=EXPIRE_MINUTES[urgency])
            if expired > now:
                v.update(state="sent")
            else:
                v.update(state="expired", closed_at=expired)
        if v["answered_at"] is not None and v["answered_at"] > now:
            v.update(state="sent", answered_at=None, closed_at=None, appointment_at=None)
        return v

    def _row(self, rid: int, *, direction: str, urgency: str, sender: int, receiver: int, dept: int | None,
             patient: int, v: dict[str, Any], parent: int | None = None) -> dict[str, Any]:
        sent = v["sent_at"]
        created = sent - timedelta(minutes=self.rng.uniform(2, 30))
        hop = v.pop("_redirect_at", None)
        if hop is not None:
            self.transitions.append({"referral_id": rid, "from_state": "sent", "to_state": "redirected",
                                     "by_user_id": self.p.user_of.get(receiver, self.p.any_user), "at": hop,
                                     "reason": "更适合的科室", "detail": {}})
        last = max(t for t in (created, sent, v["answered_at"], v["closed_at"]) if t is not None)
        local_day = (created + timedelta(hours=8)).strftime("%Y%m%d")
        down = direction == "down"
        return {
            "id": rid, "number": f"ZZ{local_day}-{rid:04d}", "direction": direction, "urgency": urgency,
            "state": v["state"], "patient_id": patient, "from_organisation_id": sender,
            "from_user_id": self.p.user_of.get(sender, self.p.any_user), "to_organisation_id": receiver,
            "to_department_id": dept, "to_team_id": None, "wanted_specialty_id": None,
            "reason": "出院后社区随访" if down else "胸闷气短，基层处理后仍未缓解",
            "diagnosis_code": "I10" if down else "I20.0",
            "diagnosis_text": "原发性高血压" if down else "不稳定型心绞痛",
            "case_summary": "", "vital_signs": {} if down else {"bp": "150/90"}, "medicines": [],
            "consent_kind": "verbal", "consent_recorded_by_user_id": None, "consent_at": created,
            "response_due_at": v["response_due_at"], "round": v["round"], "appointment_at": v["appointment_at"],
            "bed": "", "decline_reason": "床位已满" if v["state"] == "declined" else "",
            "suggested_alternative_organisation_id": None, "outcome": "好转" if v["state"] == "completed" else "",
            "care_plan": {"follow_up": [{"due_on": (sent + timedelta(days=14)).date().isoformat(), "kind": "随访"}]}
            if down else {}, "parent_referral_id": parent, "history": [], "created_at": created,
            "sent_at": sent, "answered_at": v["answered_at"], "closed_at": v["closed_at"], "updated_at": last,
        }

    def rows(self, n: int, first_id: int) -> Iterator[dict[str, Any]]:
        """Exactly `n` referrals in the order they were sent, as a live system writes them (ids and
        the heap follow time, as the worklist and KPI indexes expect). Up referrals; down referrals
        discharging up referrals completed at a lead hospital up to three days earlier; down
        referrals from elsewhere, as many as make the count exact. The plan is made first (a few
        hundred MB at 1,000,000), then written in order."""
        p, rng = self.p, self.rng
        plan: list[list[Any]] = []  # [sent_at, direction, sender, receiver, dept, urgency, patient, state, parent]
        for sent in (self._sent_at() for _ in range(round(n * 0.76))):
            sender, receiver, dept = self._sender_receiver()
            urgency = self._urgency()
            up = [sent, "up", sender, receiver, dept, urgency, rng.choice(p.patients), self._state(sent, urgency),
                  None]
            plan.append(up)
            v = up[7]
            if v["state"] == "completed" and receiver in p.leads and rng.random() < 0.42:
                down_at = v["closed_at"] + timedelta(hours=rng.uniform(0, 72))
                township = p.township_of.get(sender, sender)
                if down_at < self.now and len(plan) < n:
                    urgency = self._urgency(down=True)
                    plan.append([down_at, "down", receiver,
                                 township if township in p.townships else rng.choice(p.townships), None, urgency,
                                 up[6], self._state(down_at, urgency), up])
        while len(plan) < n:
            sent, urgency = self._sent_at(), self._urgency(down=True)
            plan.append([sent, "down", rng.choice((p.county, p.county, p.tcm, *p.provincial)),
                         rng.choice(p.townships), None, urgency, rng.choice(p.patients), self._state(sent, urgency),
                         None])
        del plan[n:]
        plan.sort(key=lambda item: item[0])
        ids: dict[int, int] = {}
        for rid, (_sent, direction, sender, receiver, dept, urgency, patient, v, parent) in enumerate(plan, first_id):
            ids[id(v)] = rid
            yield self._row(rid, direction=direction, urgency=urgency, sender=sender, receiver=receiver, dept=dept,
                            patient=patient, v=v, parent=ids[id(parent[7])] if parent is not None else None)


def load_referrals(url: str, n: int, *, seed: int, progress: Callable[[str], None]) -> float:
    """Bulk-load `n` referrals (and the redirect transitions); returns seconds taken."""
    from sqlalchemy import func, select, text

    from healthrelay.core.db import get_engine, get_sessionmaker, utcnow
    from healthrelay.referrals.models import Referral, ReferralTransition

    began = time.perf_counter()
    with get_sessionmaker()() as db:
        p = places(db)
        first = (db.execute(select(func.max(Referral.id))).scalar() or 0) + 1
        gen = Generator(p, seed=seed, now=utcnow())
        pg = db.get_bind().dialect.name == "postgresql"
        chunk: list[dict[str, Any]] = []
        done = 0
        for row in gen.rows(n, first):
            chunk.append(row)
            if len(chunk) >= 50000:
                _write(db, Referral.__table__, chunk, pg)
                done += len(chunk)
                chunk = []
                progress(f"      referrals {done:,}/{n:,} ({time.perf_counter() - began:.0f}s)")
        _write(db, Referral.__table__, chunk, pg)
        for start in range(0, len(gen.transitions), 50000):
            _write(db, ReferralTransition.__table__, gen.transitions[start:start + 50000], pg, with_id=False)
        if pg:
            db.execute(text("SELECT setval(pg_get_serial_sequence('referrals', 'id'), "
                            "(SELECT max(id) FROM referrals))"))
        db.commit()
    engine = get_engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if pg:
            # The demo's own referrals are recent, so two years loaded before them land left of the
            # sent_at index's right end and split every page in half (173 MB instead of 96 MB; the
            # planner then scanned the table instead). A live system appends at the right end;
            # rebuilding gives the index it would have.
            conn.execute(text("REINDEX TABLE referrals"))
            conn.execute(text("VACUUM ANALYZE referrals"))
            conn.execute(text("VACUUM ANALYZE referral_transitions"))
        else:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - began


def _write(db: Any, table: Any, rows: list[dict[str, Any]], pg: bool, with_id: bool = True) -> None:
    if not rows:
        return
    if not pg:
        from sqlalchemy import insert

        db.execute(insert(table), rows)
        return
    from psycopg.types.json import Jsonb
    from sqlalchemy import JSON

    columns = list(rows[0])
    is_json = [isinstance(table.c[c].type, JSON) for c in columns]
    raw = db.connection().connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([Jsonb(v) if js else v for v, js in zip(row.values(), is_json, strict=True)])


# ------------------------------------------------------------------------------------ measurements

def time_worklist(runs: int, *, seed: int) -> list[Row]:
    """The referral board's calls to `service.worklist`, as pages.py makes them (limit 100 each)."""
    from sqlalchemy import select

    from healthrelay.accounts.models import User
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.referrals import service
    from healthrelay.referrals.models import Direction, State

    rng = random.Random(seed)
    with get_sessionmaker()() as db:
        p = places(db)
        users = {name: db.execute(select(User).where(User.username == name)).scalar_one()
                 for name in ("doc.cardio", "doc.shimen")}
        for user in users.values():
            db.expunge(user)
    head, township = users["doc.cardio"], users["doc.shimen"]

    def measure(user: Any, call: Callable[[Any, Any, int], list[Any]], n: int) -> tuple[list[float], list[int]]:
        times, sizes = [], []
        for _ in range(n):
            dept = rng.choice(p.county_depts)
            with get_sessionmaker()() as db:
                db.add(user)
                t0 = time.perf_counter()
                rows = call(db, user, dept)
                db.commit()  # the audit event is part of the cost
                times.append((time.perf_counter() - t0) * 1000)
                sizes.append(len(rows))
                db.expunge(user)
        return times, sizes

    def incoming(db: Any, user: Any, dept: int) -> list[Any]:
        return service.worklist(db, user=user, direction=Direction.UP, state=service.AWAITING_ANSWER,
                                to_organisation_id=p.county, to_department_id=dept, limit=100)

    def accepted(db: Any, user: Any, dept: int) -> list[Any]:
        return service.worklist(db, user=user, direction=Direction.UP, state=(State.ACCEPTED, State.ARRIVED),
                                to_organisation_id=p.county, to_department_id=dept, limit=100)

    def outgoing(db: Any, user: Any, dept: int) -> list[Any]:
        return service.worklist(db, user=user, from_organisation_id=user.organisation_id, limit=100,
                                newest_first=True)

    def down(db: Any, user: Any, dept: int) -> list[Any]:
        return service.worklist(db, user=user, direction=Direction.DOWN, to_organisation_id=user.organisation_id,
                                limit=100)

    def unfiltered(db: Any, user: Any, dept: int) -> list[Any]:
        return service.worklist(db, user=user, limit=100)

    few = max(5, runs // 10)
    rows = []
    for label, user, call, n in (
            ("worklist: department incoming (sent/redirected), overdue first", head, incoming, runs),
            ("worklist: department accepted/arrived", head, accepted, few),
            ("worklist: county hospital outgoing", head, outgoing, few),
            ("worklist: township's down referrals", township, down, few),
            ("worklist: county hospital, no filter (API default)", head, unfiltered, few)):
        measure(user, call, 3)  # warm the cache and the plan
        times, sizes = measure(user, call, n)
        rows.append(Row(label, n, percentile(times, 0.5), percentile(times, 0.99),
                        note=f"{statistics.mean(sizes):.0f} rows/run"))
    return rows


def time_kpi(runs: int) -> list[Row]:
    from sqlalchemy import select

    from healthrelay.accounts.models import User
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.referrals import kpi

    rows = []
    with get_sessionmaker()() as db:
        admin = db.execute(select(User).where(User.username == KPI_LOGIN)).scalar_one()
        for months in (6, 12):
            start, end = kpi.last_months(months)
            kpi.compute(db, user=admin, start=start, end=end)  # warm
            times, report = [], None
            for _ in range(runs):
                t0 = time.perf_counter()
                report = kpi.compute(db, user=admin, start=start, end=end)
                times.append((time.perf_counter() - t0) * 1000)
            assert report is not None
            rows.append(Row(f"kpi.compute, {months} months", runs, percentile(times, 0.5), max(times),
                            note=f"{report.up + report.down:,} referrals in range; p99 column = max"))
            db.rollback()
    return rows


# ------------------------------------------------------------------------------------ server + load

class Server:
    """uvicorn with two workers on loopback, against the bench database."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "healthrelay.asgi:app", "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "2", "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def token(base: str, username: str, password: str) -> str:
    import httpx

    r = httpx.post(f"{base}/api/v1/auth/token", data={"username": username, "password": password}, timeout=30)
    r.raise_for_status()
    return str(r.json()["access_token"])


def time_kpi_page(base: str, bearer: str, runs: int) -> list[Row]:
    import httpx

    from healthrelay.referrals import kpi

    rows = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {bearer}"}, timeout=60) as client:
        for months in (6, 12):
            start, end = kpi.last_months(months)
            params = {"start": f"{start:%Y-%m}", "end": f"{end:%Y-%m}"}
            client.get("/referrals/kpi", params=params).raise_for_status()
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                r = client.get("/referrals/kpi", params=params)
                r.raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
            rows.append(Row(f"KPI page over HTTP, {months} months", runs, percentile(times, 0.5), max(times),
                            note=f"{len(r.content) // 1024} KiB HTML; p99 column = max"))
    return rows


def load_plan(db_url: str, base: str) -> dict[str, Any]:
    """Tokens and ids for the locust users, prepared before the clock starts."""
    from sqlalchemy import select

    from healthrelay.accounts.models import User
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.demo.logins import DEMO_PASSWORD
    from healthrelay.patients.models import PatientRegistration

    with get_sessionmaker()() as db:
        p = places(db)
        senders = []
        for name in SENDER_LOGINS:
            user = db.execute(select(User).where(User.username == name)).scalar_one()
            patients = list(db.execute(select(PatientRegistration.patient_id)
                                       .where(PatientRegistration.organisation_id == user.organisation_id)
                                       .order_by(PatientRegistration.patient_id).limit(400)).scalars())
            if patients:
                senders.append({"token": token(base, name, DEMO_PASSWORD), "patients": patients})
        receivers = [{"token": token(base, name, DEMO_PASSWORD), "department": p.dept_by_code[code]}
                     for name, code in RECEIVER_LOGINS.items()]
    plan = {"host": base, "county": p.county, "departments": [r["department"] for r in receivers],
            "senders": senders, "receivers": receivers}
    warm_up(plan)
    return plan


def warm_up(plan: dict[str, Any], rounds: int = 12) -> None:
    """A few of each request first, so both workers have loaded what they load once (the ICD-10
    table, templates) before the clock starts."""
    import httpx

    with httpx.Client(base_url=plan["host"], timeout=60) as client:
        for i in range(rounds):
            sender = plan["senders"][i % len(plan["senders"])]
            receiver = plan["receivers"][i % len(plan["receivers"])]
            client.post("/api/v1/referrals", headers={"Authorization": f"Bearer {sender['token']}"}, json={
                "patient_id": sender["patients"][i % len(sender["patients"])], "to_organisation_id": plan["county"],
                "to_department_id": receiver["department"], "urgency": "routine", "reason": "预热 / warm-up",
                "diagnosis_code": "I10", "consent_kind": "verbal", "send": True}).raise_for_status()
            client.get("/api/v1/referrals", headers={"Authorization": f"Bearer {receiver['token']}"},
                       params={"direction": "up", "state": "sent", "to_organisation": plan["county"],
                               "to_department": receiver["department"], "limit": 100}).raise_for_status()


def run_locust(plan: dict[str, Any], users: int, seconds: int, workdir: Path) -> tuple[list[Row], int]:
    """Locust patches the standard library with gevent on import, so it runs in a child process."""
    plan_path, out_path = workdir / "locust-plan.json", workdir / "locust-result.json"
    plan_path.write_text(json.dumps({**plan, "users": users, "seconds": seconds, "out": str(out_path)}))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--locust-child", str(plan_path)],
                   check=True, cwd=ROOT)
    result = json.loads(out_path.read_text())
    rows = [Row(f"load: {e['name']}", e["n"], e["p50"], e["p99"], e["rps"], e["failures"], e.get("note", ""))
            for e in result["entries"]]
    total = result["total"]
    rows.append(Row(f"load: all ({users} users, {seconds} s)", total["n"], total["p50"], total["p99"], total["rps"],
                    total["failures"], result.get("note", "")))
    return rows, int(total["failures"])


def locust_child(plan_path: str) -> int:
    """The load run itself (child process): township senders and county receivers."""
    import gevent
    from locust import HttpUser, between, task
    from locust.env import Environment

    plan = json.loads(Path(plan_path).read_text())
    lost_races = [0]
    rng = random.Random(7)

    class Sender(HttpUser):
        weight = 3
        wait_time = between(0.5, 1.5)
        host = plan["host"]

        def on_start(self) -> None:
            me = rng.choice(plan["senders"])
            self.client.headers["Authorization"] = f"Bearer {me['token']}"
            self.patients = me["patients"]

        @task(3)
        def create_and_send(self) -> None:
            body = {"patient_id": rng.choice(self.patients), "to_organisation_id": plan["county"],
                    "to_department_id": rng.choice(plan["departments"]),
                    "urgency": rng.choice(["routine", "routine", "urgent", "green_channel"]),
                    "reason": "胸痛 2 小时，基层处理后未缓解", "diagnosis_code": "I20.0",
                    "diagnosis_text": "不稳定型心绞痛", "consent_kind": "verbal", "send": True}
            self.client.post("/api/v1/referrals", json=body, name="create+send")

        @task(2)
        def my_list(self) -> None:
            self.client.get("/api/v1/referrals", params={"limit": 100}, name="list (township)")

    class Receiver(HttpUser):
        weight = 2
        wait_time = between(0.5, 1.5)
        host = plan["host"]

        def on_start(self) -> None:
            me = rng.choice(plan["receivers"])
            self.client.headers["Authorization"] = f"Bearer {me['token']}"
            self.department = me["department"]
            self.waiting: list[int] = []

        @task(3)
        def incoming(self) -> None:
            r = self.client.get("/api/v1/referrals", name="list (department incoming)",
                                params={"direction": "up", "state": "sent", "to_organisation": plan["county"],
                                        "to_department": self.department, "limit": 100})
            if r.ok:
                self.waiting = [x["id"] for x in r.json()]

        @task(2)
        def accept(self) -> None:
            if not self.waiting:
                return
            rid = self.waiting.pop(rng.randrange(len(self.waiting)))
            with self.client.post(f"/api/v1/referrals/{rid}/accept", name="accept", catch_response=True,
                                  json={"appointment_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
                                        "bed": "3-12"}) as r:
                if r.status_code == 409:  # another doctor accepted it first: the rule working, not a failure
                    lost_races[0] += 1
                    r.success()

    env = Environment(user_classes=[Sender, Receiver])
    runner = env.create_local_runner()
    runner.start(plan["users"], spawn_rate=plan["users"])
    gevent.spawn_later(plan["seconds"], runner.quit)
    runner.greenlet.join()
    entries = []
    for (name, _method), e in sorted(env.stats.entries.items()):
        entries.append({"name": name, "n": e.num_requests, "failures": e.num_failures,
                        "p50": e.get_response_time_percentile(0.5), "p99": e.get_response_time_percentile(0.99),
                        "rps": e.total_rps, "note": f"{lost_races[0]} lost races (409)" if name == "accept" else ""})
    t = env.stats.total
    errors = [f"{e.method} {e.name}: {e.error} x{e.occurrences}" for e in env.stats.errors.values()]
    Path(plan["out"]).write_text(json.dumps({
        "entries": entries, "errors": errors,
        "total": {"n": t.num_requests, "failures": t.num_failures, "p50": t.get_response_time_percentile(0.5),
                  "p99": t.get_response_time_percentile(0.99), "rps": t.total_rps}}))
    for line in errors[:20]:
        print("  load error:", line, file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ main

def print_table(rows: list[Row]) -> None:
    def num(v: float | int | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    print()
    print(f"{'measurement':<62}{'n':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}{'fail':>6}  note")
    for r in rows:
        print(f"{r.what:<62}{r.n:>8}{num(r.p50_ms, '.1f'):>10}{num(r.p99_ms, '.1f'):>10}{num(r.rps, '.1f'):>9}"
              f"{num(r.failures, 'd'):>6}  {r.note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_REFERRALS:,} referrals, 5 users for 5 s")
    parser.add_argument("--referrals", type=int, default=1_000_000)
    parser.add_argument("--residents", type=int, default=20000)
    parser.add_argument("--database-url", default="", help="default: HEALTHRELAY_TEST_DATABASE_URL, else SQLite")
    parser.add_argument("--fresh", action="store_true", help="empty the database first (it must be a scratch one)")
    parser.add_argument("--reuse", action="store_true", help="keep a database loaded by an earlier run")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--runs", type=int, default=200, help="worklist runs")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--locust-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.locust_child:
        return locust_child(args.locust_child)
    if args.smoke:
        args.referrals, args.residents, args.runs, args.users, args.seconds = SMOKE_REFERRALS, 600, 20, 5, 5

    workdir = Path(tempfile.mkdtemp(prefix="hr-referral-bench-"))
    try:
        return run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> int:
    test_url = os.environ.get("HEALTHRELAY_TEST_DATABASE_URL", "")
    url = args.database_url or test_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    # The test database and our temporary SQLite file are ours to empty; any other needs --fresh.
    fresh = args.fresh or (not args.database_url and not args.reuse)
    env = {**os.environ, "HEALTHRELAY_DATABASE_URL": url, "HEALTHRELAY_DATA_DIR": str(workdir),
           "HEALTHRELAY_ASSETS_DIR": str(ROOT / "node_modules")}
    env.pop("HEALTHRELAY_RUN_TIMERS", None)
    os.environ.update({k: env[k] for k in ("HEALTHRELAY_DATABASE_URL", "HEALTHRELAY_DATA_DIR",
                                           "HEALTHRELAY_ASSETS_DIR")})
    from sqlalchemy import func, select

    from healthrelay.core.db import get_sessionmaker, reset_caches
    from healthrelay.core.migrate import upgrade
    from healthrelay.demo.build import build_demo_if_missing
    from healthrelay.referrals.models import Referral

    print(f"database: {url.split('@')[-1]}  referrals: {args.referrals:,}  "
          f"({'smoke' if args.smoke else 'full'}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f})", flush=True)
    if fresh:
        reset_database(url)
    reset_caches()
    upgrade(url)
    quiet = (lambda line: None) if args.smoke else (lambda line: print(line, flush=True))
    t0 = time.perf_counter()
    built = build_demo_if_missing(seed=args.seed, residents=args.residents, progress=quiet)
    if not built and not args.reuse:
        print("the database already holds the demo county; use --fresh or --reuse", file=sys.stderr)
        return 2
    print(f"demo county: {time.perf_counter() - t0:.1f}s", flush=True)
    with get_sessionmaker()() as db:
        present = db.execute(select(func.count()).select_from(Referral)).scalar_one()
    # The demo brings a few referrals of its own; --reuse tops an earlier run up to the count asked for.
    to_load = max(0, args.referrals - present) if args.reuse else args.referrals
    if to_load:
        seconds = load_referrals(url, to_load, seed=args.seed, progress=quiet)
        print(f"loaded {to_load:,} referrals in {seconds:.1f}s ({to_load / seconds:,.0f}/s, ANALYZE included)",
              flush=True)
    with get_sessionmaker()() as db:
        total = db.execute(select(func.count()).select_from(Referral)).scalar_one()
        open_ = db.execute(select(func.count()).select_from(Referral)
                           .where(Referral.state.in_(("sent", "redirected", "accepted", "arrived")))).scalar_one()
    print(f"referrals in the database: {total:,} ({open_ / max(total, 1):.1%} open)", flush=True)

    rows = time_worklist(args.runs, seed=args.seed)
    rows += time_kpi(3 if args.smoke else 5)
    server = Server(env, workdir / "server.log")
    failures = 0
    try:
        server.wait()
        from healthrelay.demo.logins import DEMO_PASSWORD

        rows += time_kpi_page(server.url, token(server.url, KPI_LOGIN, DEMO_PASSWORD), 2 if args.smoke else 5)
        plan = load_plan(url, server.url)
        load_rows, failures = run_locust(plan, args.users, args.seconds, workdir)
        rows += load_rows
    finally:
        server.stop()
        reset_caches()
    print_table(rows)
    print(f"\nload average (1/5/15 min) at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"\nworklist target: p99 < 50 ms; KPI target: < 1000 ms ({total:,} referrals)")
    if failures:
        print(f"load run had {failures} failed requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
