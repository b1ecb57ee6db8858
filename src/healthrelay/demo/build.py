"""Build the demo county (青溪县) into the configured database, once, in one transaction.

The plan comes from pure modules (county: places and organisations; staff: practitioners and teams;
residents: people and planted duplicates; logins: demo accounts); this module only writes it, with
bulk inserts so 20,000 residents take seconds, and reports progress per stage.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, func, insert, select, text, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.accounts.service import create_user
from healthrelay.audit import service as audit
from healthrelay.core.config import get_settings
from healthrelay.core.db import utcnow
from healthrelay.core.security import hash_password
from healthrelay.demo import county
from healthrelay.demo import imaging as demo_imaging
from healthrelay.demo import results as demo_results
from healthrelay.demo.chronic import build_demo_chronic
from healthrelay.demo.ecg import build_demo_ecgs
from healthrelay.demo.emergency import CALLS_PER_YEAR, build_demo_emergency
from healthrelay.demo.logins import DEMO_PASSWORD, logins
from healthrelay.demo.outreach import build_demo_outreach
from healthrelay.demo.pathways import build_demo_pathways
from healthrelay.demo.referrals import build_demo_referrals
from healthrelay.demo.residents import REFERENCE_DATE, ResidentRecord, synthetic_residents
from healthrelay.demo.roads import build_demo_roads
from healthrelay.demo.screening import build_demo_screening
from healthrelay.demo.staff import StaffPlan, plan_staff
from healthrelay.directory.models import (
    Alliance,
    AllianceMembership,
    Area,
    AreaLevel,
    Department,
    Organisation,
    OrganisationCapability,
    Post,
    Practitioner,
    PractitionerSpecialty,
    Specialty,
    Team,
    TeamMember,
)
from healthrelay.patients.models import (
    IdentifierType,
    Patient,
    PatientIdentifier,
    PatientRegistration,
    TeamPanelEntry,
)

Progress = Callable[[str], None]
PLANTED_FILE = "planted_duplicates.json"
_CHUNK = 5000


def demo_accounts_document() -> dict[str, Any]:
    """Every demo login (from the definitions, so it works before the database exists)."""
    orgs = county.organisations_by_code()
    accounts = []
    for login in logins():
        org = orgs[login.org_code] if login.org_code else None
        accounts.append({
            "username": login.username, "password": DEMO_PASSWORD, "role": str(login.role),
            "organisation": org.name if org else None, "organisation_code": org.code if org else None,
            "description": login.description,
        })
    alliance = county.alliances()[0]
    settings = get_settings()
    modalities = [{"ae_title": m.ae_title, "organisation": orgs[m.org_code].name, "organisation_code": m.org_code,
                   "modality_type": m.modality_type, "name": m.name} for m in demo_imaging.modalities()]
    return {"alliance": {"code": alliance.code, "name": alliance.name}, "password": DEMO_PASSWORD,
            "accounts": accounts,
            "dicom": {"ae_title": settings.dicom_ae_title, "host": settings.dicom_host, "port": settings.dicom_port},
            "modalities": modalities,
            "hl7": {"host": settings.hl7_host, "port": settings.hl7_port},
            "hl7_facilities": [{"facility": s.facility, "application": s.application,
                                "organisation": orgs[s.org_code].name, "organisation_code": s.org_code,
                                "note": s.note} for s in demo_results.hl7_senders()]}


def demo_present(db: Session) -> bool:
    return db.execute(select(Alliance.id).where(Alliance.code == county.ALLIANCE_CODE)).scalar() is not None


def planted_pairs_path(data_dir: Path | None = None) -> Path:
    """Where the build records the planted duplicate pairs as patient ids (JSON)."""
    if data_dir is None:
        from healthrelay.core.config import get_settings

        data_dir = get_settings().data_dir
    return data_dir / "demo" / PLANTED_FILE


def build_demo_if_missing(*, seed: int, residents: int, progress: Progress = print,
                          duplicate_share: float = 0.01, data_dir: Path | None = None) -> bool:
    """Build the demo county unless its alliance already exists; True when it was built now.

    Everything is written in one transaction: a failure leaves nothing half-built.
    """
    from healthrelay.core.db import get_sessionmaker

    with get_sessionmaker()() as db:
        if demo_present(db):
            progress(f"演示县已存在，未改动 / demo county already present (alliance {county.ALLIANCE_CODE}); "
                     "nothing to do")
            return False
        try:
            builder = _Builder(db, seed=seed, residents=residents, progress=progress,
                               duplicate_share=duplicate_share)
            builder.build()
            db.commit()
        except BaseException:
            db.rollback()
            progress("演示县创建失败，已全部回滚 / demo build failed; nothing was kept")
            raise
    builder.write_planted_pairs(planted_pairs_path(data_dir))
    progress(f"演示县已建成 / demo county built in {time.perf_counter() - builder.started:.1f}s "
             f"(seed {seed}); planted duplicate pairs: {planted_pairs_path(data_dir)}")
    return True


@dataclass
class _Ids:
    areas: dict[str, int]
    orgs: dict[str, int]
    specialties: dict[str, int]
    departments: dict[tuple[str, str], int]
    practitioners: dict[str, int]
    posts: dict[tuple[str, str], int]  # (practitioner code, organisation code) -> post id
    teams: dict[str, int]


class _Builder:
    STAGES = ("areas", "specialties", "organisations", "alliances", "practitioners", "teams", "residents",
              "accounts", "referrals", "imaging", "roads", "emergency", "pathways", "ecg", "results", "chronic",
              "screening", "outreach")

    def __init__(self, db: Session, *, seed: int, residents: int, progress: Progress, duplicate_share: float) -> None:
        self.db = db
        self.seed = seed
        self.residents = residents
        self.progress = progress
        self.duplicate_share = duplicate_share
        self.now = utcnow()
        self.started = time.perf_counter()
        self.ids = _Ids({}, {}, {}, {}, {}, {}, {})
        self.records: list[ResidentRecord] = []
        self.pairs: list[tuple[int, int]] = []
        self.patient_ids: list[int] = []
        self.counts: dict[str, int] = {}
        self.plan: StaffPlan = plan_staff(seed)

    # ------------------------------------------------------------------------------- helpers

    def _insert_returning(self, model: type[Any], rows: list[dict[str, Any]]) -> list[int]:
        """Insert rows, returning their new ids in the order given."""
        if not rows:
            return []
        table = model.__table__
        connection = self.db.connection()
        if connection.dialect.name == "sqlite":
            # SQLite cannot promise RETURNING order for multi-row inserts, so SQLAlchemy would go row by row.
            # Inside our write transaction nobody else inserts, and each new rowid is max(rowid) + 1, so
            # the new ids are exactly the ones above the old maximum, in insertion order.
            before = connection.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
            connection.execute(insert(table), rows)
            ids = list(connection.execute(select(table.c.id).where(table.c.id > before).order_by(table.c.id))
                       .scalars())
            if len(ids) != len(rows):
                raise RuntimeError(f"expected {len(rows)} new rows in {table.name}, found {len(ids)}")
            return ids
        # PostgreSQL: reserve ids from the table's own sequence (safe beside other writers), then COPY.
        ids = list(connection.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": len(rows)}).scalars())
        self._copy(table, [{"id": new_id, **row} for new_id, row in zip(ids, rows, strict=True)])
        return ids

    def _insert(self, model: type[Any], rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        connection = self.db.connection()
        if connection.dialect.name == "sqlite":
            connection.execute(insert(model.__table__), rows)  # executemany is fast on SQLite
        else:
            self._copy(model.__table__, rows)

    def _copy(self, table: Any, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL COPY inside our transaction: psycopg's executemany sends a statement per row, and
        multi-row INSERTs spend most of their time parsing parameters."""
        from psycopg.types.json import Jsonb

        columns = list(rows[0])
        is_json = [isinstance(table.c[c].type, JSON) for c in columns]
        raw = self.db.connection().connection.driver_connection
        names = ", ".join(columns)  # column names come from our own models, never from input
        with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([Jsonb(v) if js else (v.value if isinstance(v, enum.Enum) else v)
                                for v, js in zip(row.values(), is_json, strict=True)])

    def _stage(self, number: int, name: str, summary: str, began: float) -> None:
        self.progress(f"[{number}/{len(self.STAGES)}] {name}: {summary} "
                      f"({time.perf_counter() - began:.2f}s, total {time.perf_counter() - self.started:.1f}s)")

    # -------------------------------------------------------------------------------- stages

    def build(self) -> None:
        self.progress(f"创建演示县 {county.COUNTY_NAME} / building the demo county (seed {self.seed}, "
                      f"{self.residents:,} residents)")
        for number, stage in enumerate(self.STAGES, start=1):
            began = time.perf_counter()
            summary = getattr(self, f"_build_{stage}")()
            self._stage(number, stage, summary, began)
        audit.record(self.db, actor=audit.Actor(username="system"), action="demo.built",
                     detail={"seed": self.seed, "residents": self.residents, **self.counts})

    def _build_areas(self) -> str:
        geo = county.geography()
        by_level: dict[str, list[county.AreaDef]] = {}
        for a in geo.areas:
            by_level.setdefault(a.level, []).append(a)
        for level in ("county", "township", "village"):
            defs = by_level.get(level, [])
            rows = [{"code": a.code, "name": a.name, "level": AreaLevel(a.level),
                     "parent_id": self.ids.areas[a.parent_code] if a.parent_code else None,
                     "latitude": a.lat, "longitude": a.lon, "grids": list(a.grids)} for a in defs]
            for a, new_id in zip(defs, self._insert_returning(Area, rows), strict=True):
                self.ids.areas[a.code] = new_id
        self.counts["areas"] = len(geo.areas)
        return (f"{len(by_level['township'])} townships, {len(by_level['village'])} villages, "
                f"{sum(len(a.grids) for a in by_level['village'])} grids")

    def _build_specialties(self) -> str:
        rows = [{"code": c, "name": zh, "name_en": en} for c, zh, en in county.SPECIALTIES]
        for (code, _, _), new_id in zip(county.SPECIALTIES, self._insert_returning(Specialty, rows), strict=True):
            self.ids.specialties[code] = new_id
        return f"{len(rows)} disciplines"

    def _build_organisations(self) -> str:
        orgs = county.organisations()
        rows = [{"code": o.code, "name": o.name, "name_en": o.name_en, "level": o.level, "kind": o.kind,
                 "area_id": self.ids.areas.get(o.area_code) if o.area_code else None,
                 "is_regional_centre": o.is_regional_centre, "address": o.address, "phone": o.phone,
                 "latitude": o.lat, "longitude": o.lon, "created_at": self.now} for o in orgs]
        for o, new_id in zip(orgs, self._insert_returning(Organisation, rows), strict=True):
            self.ids.orgs[o.code] = new_id
        parents = [{"id": self.ids.orgs[o.code], "parent_id": self.ids.orgs[o.parent_code]}
                   for o in orgs if o.parent_code]
        self.db.execute(update(Organisation), parents)
        caps = [{"organisation_id": self.ids.orgs[o.code], "capability": c, "note": ""}
                for o in orgs for c in o.capabilities]
        self._insert(OrganisationCapability, caps)
        dept_keys = [(o.code, d) for o in orgs for d in o.departments]
        dept_rows = [{"organisation_id": self.ids.orgs[oc], "code": d[0], "name": d[1],
                      "specialty_id": self.ids.specialties[d[2]], "phone": ""} for oc, d in dept_keys]
        for (oc, d), new_id in zip(dept_keys, self._insert_returning(Department, dept_rows), strict=True):
            self.ids.departments[(oc, d[0])] = new_id
        self.counts["organisations"] = len(orgs)
        regional = sum(o.is_regional_centre for o in orgs)
        return (f"{len(orgs)} organisations ({regional} regional centres), {len(dept_rows)} departments, "
                f"{len(caps)} capabilities")

    def _build_alliances(self) -> str:
        defs = county.alliances()
        rows = [{"code": a.code, "name": a.name, "kind": a.kind, "description": a.description,
                 "created_at": self.now} for a in defs]
        members = []
        for a, new_id in zip(defs, self._insert_returning(Alliance, rows), strict=True):
            members += [{"alliance_id": new_id, "organisation_id": self.ids.orgs[code], "role": role}
                        for code, role in a.members]
        self._insert(AllianceMembership, members)
        return f"{len(defs)} alliances, {len(members)} memberships"

    def _build_practitioners(self) -> str:
        people = self.plan.practitioners
        rows = [{"code": p.code, "name": p.name, "sex": p.sex, "title_grade": p.grade,
                 "years_independent_practice": p.years, "licence_number": p.licence, "phone": p.phone,
                 "created_at": self.now} for p in people]
        for p, new_id in zip(people, self._insert_returning(Practitioner, rows), strict=True):
            self.ids.practitioners[p.code] = new_id
        self._insert(PractitionerSpecialty, [
            {"practitioner_id": self.ids.practitioners[p.code], "specialty_id": self.ids.specialties[s]}
            for p in people for s in dict.fromkeys(p.specialties)])
        post_keys = [(p.code, post) for p in people for post in p.posts]
        post_rows = [{"practitioner_id": self.ids.practitioners[code], "organisation_id": self.ids.orgs[post.org_code],
                      "department_id": self.ids.departments.get((post.org_code, post.dept_code))
                      if post.dept_code else None,
                      "position": post.position, "is_primary": post.is_primary} for code, post in post_keys]
        for (code, post), new_id in zip(post_keys, self._insert_returning(Post, post_rows), strict=True):
            self.ids.posts.setdefault((code, post.org_code), new_id)
        heads = [{"id": self.ids.departments[key], "head_practitioner_id": self.ids.practitioners[code]}
                 for key, code in self.plan.department_heads.items() if key in self.ids.departments]
        self.db.execute(update(Department), heads)
        multi = sum(len(p.posts) > 1 for p in people)
        self.counts["practitioners"] = len(people)
        return f"{len(people)} practitioners, {len(post_rows)} posts ({multi} with posts at two or more places)"

    def _build_teams(self) -> str:
        teams = self.plan.teams
        rows = [{"code": t.code, "name": t.name, "kind": t.kind, "organisation_id": self.ids.orgs[t.org_code],
                 "home_organisation_id": self.ids.orgs[t.home_org_code] if t.home_org_code else None,
                 "specialty_id": self.ids.specialties[t.specialty] if t.specialty else None,
                 "area_ids": [self.ids.areas[c] for c in t.area_codes], "created_at": self.now} for t in teams]
        for t, new_id in zip(teams, self._insert_returning(Team, rows), strict=True):
            self.ids.teams[t.code] = new_id
        members = [{"team_id": self.ids.teams[t.code], "practitioner_id": self.ids.practitioners[code], "role": role}
                   for t in teams for code, role in t.members]
        self._insert(TeamMember, members)
        kinds: dict[str, int] = {}
        for t in teams:
            kinds[str(t.kind)] = kinds.get(str(t.kind), 0) + 1
        self.counts["teams"] = len(teams)
        return ", ".join(f"{n} {kind}" for kind, n in kinds.items()) + f", {len(members)} team members"

    def _build_residents(self) -> str:
        began = time.perf_counter()
        self.records, self.pairs = synthetic_residents(self.seed, self.residents,
                                                       duplicate_share=self.duplicate_share)
        total = len(self.records)
        self.progress(f"      generated {total:,} resident records ({len(self.pairs)} planted duplicates) "
                      f"in {time.perf_counter() - began:.2f}s")
        family_team: dict[str, int] = {}
        for t in self.plan.teams:
            if t.kind == "family_doctor":
                for code in t.area_codes:
                    family_team[code] = self.ids.teams[t.code]
        orgs, areas = self.ids.orgs, self.ids.areas
        counts = {"identifiers": 0, "registrations": 0, "panel": 0}
        for start in range(0, total, _CHUNK):
            chunk = self.records[start:start + _CHUNK]
            rows = [{"name": r.name, "pinyin": r.pinyin, "pinyin_initials": r.pinyin_initials, "sex": r.sex,
                     "birth_date": r.birth_date, "phone": r.phone, "area_id": areas[r.village_code],
                     "grid": r.grid, "address_line": r.address_line, "created_at": self.now,
                     "updated_at": self.now} for r in chunk]
            ids = self._insert_returning(Patient, rows)
            self.patient_ids.extend(ids)
            identifiers, registrations, panel = [], [], []
            for r, pid in zip(chunk, ids, strict=True):
                if r.resident_id:
                    identifiers.append({"patient_id": pid, "type": IdentifierType.RESIDENT_ID,
                                        "value": r.resident_id, "issuer_organisation_id": None})
                if r.insurance_card:
                    identifiers.append({"patient_id": pid, "type": IdentifierType.INSURANCE_CARD,
                                        "value": r.insurance_card, "issuer_organisation_id": None})
                for org_code, number in r.registered_at:
                    registrations.append({"patient_id": pid, "organisation_id": orgs[org_code],
                                          "registered_at": self.now})
                    if number:
                        identifiers.append({"patient_id": pid, "type": IdentifierType.MEDICAL_RECORD,
                                            "value": number, "issuer_organisation_id": orgs[org_code]})
                if not r.is_planted_duplicate and r.village_code in family_team:
                    panel.append({"team_id": family_team[r.village_code], "patient_id": pid, "since": self.now})
            self._insert(PatientIdentifier, identifiers)
            self._insert(PatientRegistration, registrations)
            self._insert(TeamPanelEntry, panel)
            counts["identifiers"] += len(identifiers)
            counts["registrations"] += len(registrations)
            counts["panel"] += len(panel)
            done = start + len(chunk)
            self.progress(f"      residents {done:,}/{total:,} ({done * 100 // max(total, 1)}%) "
                          f"{time.perf_counter() - began:.1f}s")
        self.counts["residents"] = total
        return (f"{total:,} records ({len(self.pairs)} planted near-duplicates), {counts['identifiers']:,} "
                f"identifiers, {counts['registrations']:,} registrations, {counts['panel']:,} on team panels")

    def _build_accounts(self) -> str:
        hashed = hash_password(DEMO_PASSWORD)  # argon2 is slow: hash once, reuse for every demo user
        staff = self.plan.by_code()
        for login in logins():
            practitioner_id = post_id = patient_id = None
            display = login.description.split(" / ")[0]  # e.g. 县卫健局（只看汇总，不见姓名）
            if login.practitioner_code:
                person = staff[login.practitioner_code]
                practitioner_id = self.ids.practitioners[person.code]
                post_id = self.ids.posts.get((person.code, login.org_code or ""))
                display = person.name
            if login.role == Role.PATIENT:
                record = self._resident_for_login(login.patient_village_code or "")
                patient_id = self.patient_ids[record.index]
                display = record.name
            create_user(self.db, username=login.username, password="", display_name=display, role=login.role,
                        organisation_id=self.ids.orgs[login.org_code] if login.org_code else None,
                        practitioner_id=practitioner_id, post_id=post_id, patient_id=patient_id,
                        hashed_password=hashed)
        # Addresses for the email channel (held in the outbox until an SMTP server is configured).
        self.db.execute(update(User).where(User.role != Role.PATIENT)
                        .values(email=User.username + "@qingxi.example"))
        return f"{len(logins())} demo logins, password {DEMO_PASSWORD}"

    def _build_referrals(self) -> str:
        made = build_demo_referrals(self.db, seed=self.seed)
        self.counts.update(made)
        return f"{made['referrals']} referrals over six months, {made['open']} open on the county board"

    def _build_imaging(self) -> str:
        made = demo_imaging.build_demo_centres(self.db)
        made.update(demo_imaging.build_demo_studies(self.db, now=self.now))
        self.counts.update(made)
        return (f"{made['centres']} reading centres, {made['modalities']} DICOM modalities, "
                f"{made['routing_rules']} routing rules, {made['studies']} studies ({made['instances']} images)")

    def _build_roads(self) -> str:
        made = build_demo_roads(self.db, seed=self.seed)
        self.counts.update(road_nodes=made["nodes"], road_edges=made["edges"])
        return f"{made['nodes']:,} road nodes, {made['edges']:,} road segments"

    def _build_emergency(self) -> str:
        # A year of 120 calls in proportion to the people (3,000 for the 20,000 of the full demo).
        calls = max(300, round(CALLS_PER_YEAR * self.residents / 20_000))
        made = build_demo_emergency(self.db, seed=self.seed, now=self.now, calls_per_year=calls)
        self.counts.update(made)
        return ", ".join(f"{v:,} {k}" for k, v in made.items())

    def _build_pathways(self) -> str:
        made = build_demo_pathways(self.db, seed=self.seed, now=self.now)
        self.counts.update(made)
        return ", ".join(f"{v:,} {k}" for k, v in made.items())

    def _build_ecg(self) -> str:
        made = build_demo_ecgs(self.db, now=self.now)
        self.counts.update(made)
        return f"{made['ecgs']} ECGs sent from members to the ECG centre (one inferior STEMI waiting)"

    def _build_results(self) -> str:
        made = demo_results.build_demo_results(self.db, seed=self.seed, now=self.now)
        self.counts.update(made)
        return (f"{made['hl7_senders']} HL7 senders, {made['eqa_records']} quality-assessment records, "
                f"{made['lab_results']:,} lab results, {made['exam_results']} examination reports, "
                f"{made['orders']} orders with recognisable priors")

    def _build_chronic(self) -> str:
        made = build_demo_chronic(self.db, seed=self.seed, now=self.now)
        self.counts.update(made)
        return (f"{made['monitoring_points']} monitoring points, {made['htn_enrolments']:,} hypertension and "
                f"{made['t2dm_enrolments']:,} diabetes patients, {made['contracts']:,} family-doctor contracts, "
                f"{made['follow_ups']:,} follow-ups, {made['readings']:,} readings, "
                f"{made['chronic_overdue']:,} overdue")

    def _build_screening(self) -> str:
        made = build_demo_screening(self.db, seed=self.seed, now=self.now, patient_ids=self.patient_ids)
        self.counts.update(made)
        return (f"{made['screening_events']} free-clinic and screening events, "
                f"{made['screening_attendances']:,} people served, {made['screening_findings']:,} abnormal findings, "
                f"{made['screening_tasks_open']:,} follow-up tasks open")

    def _build_outreach(self) -> str:
        residents = [pid for r, pid in zip(self.records, self.patient_ids, strict=True) if not r.is_planted_duplicate]
        made = build_demo_outreach(self.db, seed=self.seed, now=self.now, patient_ids=residents)
        self.counts.update(made)
        if not made:
            return "no expert studios, nothing to plan"
        return (f"{made['outreach_agreements']} agreements for {made['outreach_studios']} studios, "
                f"{made['outreach_aid_batches']} aid batches ({made['outreach_rotations']} rotations), "
                f"{made['outreach_schedules']} weekly clinic schedules, {made['outreach_sessions']:,} sessions "
                f"({made['outreach_sessions_done']:,} done, {made['outreach_sessions_upcoming']:,} upcoming), "
                f"{made['outreach_patients_seen']:,} patients seen ({made['outreach_referred_up']:,} referred up), "
                f"{made['outreach_procedures']:,} operations, {made['outreach_bookings']:,} bookings, "
                f"{made['outreach_new_techniques']} new techniques, {made['outreach_traineeships']} traineeships, "
                f"{made['outreach_availability']} availabilities")

    def _resident_for_login(self, village_code: str) -> ResidentRecord:
        """An adult with an ID and a phone in that village (else the township, else anyone)."""
        def fits(r: ResidentRecord) -> bool:
            age = (REFERENCE_DATE - r.birth_date).days // 365
            return not r.is_planted_duplicate and bool(r.resident_id) and bool(r.phone) and 30 <= age <= 75

        township = village_code[:9]
        for wanted in (lambda r: r.village_code == village_code, lambda r: r.village_code.startswith(township),
                       lambda r: True):
            for r in self.records:
                if wanted(r) and fits(r):
                    return r
        return next(r for r in self.records if not r.is_planted_duplicate)

    # ------------------------------------------------------------------------------ results

    def write_planted_pairs(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "seed": self.seed, "residents": self.residents, "duplicate_share": self.duplicate_share,
            "records": len(self.records),
            "how": "healthrelay.demo.residents.synthetic_residents(seed, residents, duplicate_share=...) returns "
                   "the same records in patient-id order; these are its pairs mapped to patient ids",
            "pairs": [{"original_patient_id": self.patient_ids[a], "duplicate_patient_id": self.patient_ids[b],
                       "original_index": a, "duplicate_index": b,
                       "errors": list(self.records[b].planted_errors)} for a, b in self.pairs],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, ensure_ascii=False, indent=1))
        tmp.replace(path)
