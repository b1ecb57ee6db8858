"""Demo chronic disease management: village monitoring points, the hypertension and diabetes registries,
family-doctor contracts, two years of follow-ups and readings, a few worklist calls and referral checks.

Who is enrolled, and what each visit measured, comes from the seed; every classification and every derived
column of an enrolment is computed with `chronic.rules` (classify_visit, apply_bp, apply_glucose, apply_contact,
risk_after_visit, risk_after_reading) and the schedule of `chronic.followups` (91 days after a controlled
face-to-face visit, 14 after an uncontrolled one; a phone call only brings a review forward), and each visit's
numbers are stored as readings of source "follow_up" as that service stores them, so the overdue worklist and
the indicators read what the services would have written. History goes in with bulk inserts (COPY on
PostgreSQL); the last visits of a few patients of the teams that have demo logins go through
`chronic.followups.record_follow_up`, which proposes their upward referrals (drafts) and the two-week
referral checks (team tasks).

The stored history was back-entered from the paper registers (随访本补录, no recording user): a referral
advised then was made on paper, so those visits carry a note and no `referral_id`.

The showcase lives in the village of the `vdoc.*` login of 石门镇 (the first village of township 3; in a very
small demo without residents there, the other village of the same family-doctor team):
- `showcase_enrolment(db)`: a hypertensive resident whose last visit, three weeks ago, was uncontrolled
  (162/98 mmHg, uncontrolled_streak 1, review overdue by a week): one more uncontrolled visit proposes an
  upward referral. The only enrolment of that team with last BP 162/98 and streak 1.
- `showcase_controlled_enrolment(db)`: a hypertensive resident controlled at the last visit (95 days ago,
  routine visit overdue) with a controlled village reading a month ago: an uncontrolled visit lowers the
  control rate and takes them off the overdue list.
- `patient.shimen`'s own patient is enrolled for hypertension and signed to their team (chronic package).
Their patient and enrolment ids are in the detail of the audit event "demo.chronic".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import func, insert, or_, select, text
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.audit import service as audit
from healthrelay.audit.models import AuditEvent
from healthrelay.chronic import followups
from healthrelay.chronic import rules as R
from healthrelay.chronic.followups import FACE_TO_FACE
from healthrelay.chronic.models import (
    CallOutcomeRule,
    ChronicCall,
    ChronicEnrolment,
    ChronicFollowUp,
    ChronicReading,
    FamilyDoctorContract,
    MonitoringPoint,
)
from healthrelay.core.db import LOCAL_TZ
from healthrelay.demo import county
from healthrelay.demo.bulk import insert_rows
from healthrelay.directory.models import Area, Organisation, OrgKind, Team, TeamKind, TeamMember
from healthrelay.patients.models import Patient, Sex, TeamPanelEntry

AUDIT_ACTION = "demo.chronic"
SHOWCASE_TOWNSHIP = 3  # 石门镇; its first village is the one of the vdoc.* login
SHOWCASE_BP = (162, 98)
SHOWCASE_DAYS_AGO = 21
HISTORY_DAYS = 730  # follow-ups and readings stored for the last two years

# Share of adults 35+ with the condition (the seeded prevalences) and the share of those the teams manage.
HTN_PREVALENCE, HTN_MANAGED = 0.279, 0.65
T2DM_PREVALENCE, T2DM_MANAGED = 0.112, 0.30
# Relative likelihood by age band (35-44, 45-54, 55-64, 65-74, 75+): older people are more often ill.
_HTN_AGE = (0.12, 0.25, 0.40, 0.52, 0.58)
_T2DM_AGE = (0.04, 0.08, 0.14, 0.17, 0.16)

HTN_MEDICINES = (("氨氯地平", "5mg", "qd"), ("硝苯地平缓释片", "20mg", "bid"), ("缬沙坦", "80mg", "qd"),
                 ("厄贝沙坦", "150mg", "qd"), ("美托洛尔", "25mg", "bid"), ("氢氯噻嗪", "12.5mg", "qd"))
T2DM_MEDICINES = (("二甲双胍", "0.5g", "tid"), ("格列美脲", "2mg", "qd"), ("阿卡波糖", "50mg", "tid"),
                  ("胰岛素（甘精）", "12U", "qn"))
RISK_FACTORS = ("smoking", "obesity", "dyslipidaemia", "family_history", "drinking", "inactivity", "high_salt")
HTN_COMPLICATIONS = ("stroke", "chd", "ckd", "heart_failure")
T2DM_COMPLICATIONS = ("retinopathy", "neuropathy", "ckd", "diabetic_foot", "chd", "pad")
SOURCES = (("clinic", 55), ("screening", 25), ("referral", 8), ("self_report", 6), ("transfer", 6))
SIDE_EFFECTS = ("干咳", "踝部水肿", "头痛面红", "胃肠不适")
# Symptom and complication codes of the follow-up form (chronic.followups.SYMPTOMS / COMPLICATIONS).
HTN_SYMPTOMS = ("headache_dizziness", "blurred_vision_tinnitus", "palpitation_chest_tightness", "limb_numbness",
                "leg_oedema", "nausea_vomiting")
T2DM_SYMPTOMS = ("polydipsia", "polyphagia", "polyuria", "blurred_vision", "weight_loss", "infection")
PAPER_NOTE = "随访本补录；已建议上转（纸质转诊单）/ back-entered from the paper register; referral advised on paper"


def _local(day: date, minutes: int) -> datetime:
    """A moment on a Shanghai day (minutes after midnight), as an aware datetime."""
    return datetime.combine(day, time(0, 0), tzinfo=LOCAL_TZ) + timedelta(minutes=minutes)


def _measured_at(day: date) -> datetime:
    """When a past visit's numbers count as taken: noon of its day, as `chronic.followups.measured_at` says."""
    return datetime.combine(day, time(12, 0), tzinfo=LOCAL_TZ)


def next_visit(rules: R.ConditionRules, *, on: date, face_to_face: bool, uncontrolled: bool, due: date | None,
               kind: str) -> tuple[date | None, str]:
    """The next visit after one on `on`, as `chronic.followups` schedules it: routine after a controlled
    face-to-face visit, a review after an uncontrolled one; a phone call only brings a review forward."""
    if uncontrolled:
        review = on + timedelta(days=rules.review_days)
        if face_to_face or due is None or review < due:
            return review, "review"
        return due, kind
    if face_to_face or due is None:
        return on + timedelta(days=rules.routine_days), "routine"
    return due, kind


def _band(age: int) -> int:
    return min(4, max(0, (age - 35) // 10))


@dataclass
class _Person:
    patient_id: int
    birth_date: date
    sex: str
    village_id: int
    team_id: int
    centre_id: int
    clinic_id: int | None
    point_id: int | None
    weight: float
    height: float


@dataclass
class _Visit:
    on: date
    at: datetime
    mode: str
    sbp: int | None
    dbp: int | None
    glucose: float | None
    label: str
    uncontrolled: bool
    danger: bool
    streak: int
    next_due: date | None
    next_kind: str
    side_effects: str = ""
    complication: str = ""
    weight: float | None = None
    heart_rate: int | None = None
    hba1c: float | None = None
    note: str = ""


@dataclass
class _Reading:
    at: datetime
    kind: str
    sbp: int | None = None
    dbp: int | None = None
    glucose: float | None = None
    danger: bool = False
    serial: str | None = None


@dataclass
class _Derived:
    """The derived columns of an enrolment while its history is replayed. Plain attributes, read and written by
    `chronic.rules.apply_*` exactly as on a `ChronicEnrolment` (without the ORM's per-attribute bookkeeping,
    which would cost seconds over a county's history)."""

    next_visit_due: date | None = None
    next_visit_kind: str = "first"
    last_visit_on: date | None = None
    last_classification: str = ""
    uncontrolled_streak: int = 0
    last_sbp: int | None = None
    last_dbp: int | None = None
    last_bp_at: datetime | None = None
    last_glucose: float | None = None
    last_glucose_at: datetime | None = None
    last_contact_at: datetime | None = None
    risk_level: int = 1
    hidden_until: date | None = None


DERIVED_COLUMNS = tuple(_Derived.__dataclass_fields__)


@dataclass
class _Enrol:
    person: _Person
    code: str
    diagnosed_on: date
    enrolled_on: date
    good: bool  # is the treatment working (most visits at target)
    profile: str  # regular, irregular, stopped
    stop: date | None = None
    source: str = "clinic"
    risk_factors: list[str] = field(default_factory=list)
    complications: list[str] = field(default_factory=list)
    medicines: list[dict[str, str]] = field(default_factory=list)
    visits: list[_Visit] = field(default_factory=list)
    # The schedule while visits are drawn, as chronic.followups keeps it on the enrolment.
    streak: int = 0
    uncontrolled: bool = False
    due: date | None = None
    kind: str = "first"
    # Visits still to be recorded through chronic.followups after the history is stored: (day, BP).
    live: list[tuple[date, tuple[int, int]]] = field(default_factory=list)
    scripted: bool = False
    id: int = 0


class _Demo:
    def __init__(self, db: Session, *, seed: int, now: datetime) -> None:
        self.db = db
        self.rng = random.Random(f"healthrelay-chronic:{seed}")
        self.now = now
        self.today = now.astimezone(LOCAL_TZ).date()
        self.rules = {code: R.rules_for(db, code) for code in ("htn", "t2dm")}
        self.counts: dict[str, int] = {}
        self.village_team: dict[int, int] = {}

    # ------------------------------------------------------------------------------ places and people

    def points(self) -> dict[int, tuple[int, int, str | None]]:
        """One point per village clinic and one per township/community centre; returns village area id ->
        (point id, clinic organisation id, device serial or None)."""
        rng = self.rng
        areas = {a.id: a for a in self.db.execute(select(Area)).scalars()}
        clinics = list(self.db.execute(select(Organisation).where(Organisation.kind == OrgKind.VILLAGE_CLINIC)
                                       .order_by(Organisation.id)).scalars())
        centres = list(self.db.execute(select(Organisation).where(
            Organisation.kind.in_([OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE])).order_by(Organisation.id))
            .scalars())
        rows: list[dict[str, Any]] = []
        for clinic in clinics:
            village = areas.get(clinic.area_id) if clinic.area_id else None
            serials = [f"YE680A-{clinic.code.replace('-', '')}"] if rng.random() < 0.3 else []
            rows.append({"code": f"MP-{clinic.code}", "name": f"{village.name if village else clinic.name}血压监测点",
                         "kind": "village_point", "organisation_id": clinic.id, "area_id": clinic.area_id,
                         "device_serials": serials, "active": True})
        for centre in centres:
            rows.append({"code": f"MP-{centre.code}", "name": f"{centre.name}慢病门诊测量点", "kind": "clinic",
                         "organisation_id": centre.id, "area_id": centre.area_id,
                         "device_serials": [f"HBP1320-{centre.code.replace('-', '')}"], "active": True})
        ids = _insert_ids(self.db, MonitoringPoint, rows)
        self.counts["monitoring_points"] = len(rows)
        by_village: dict[int, tuple[int, int, str | None]] = {}
        for row, point_id in zip(rows, ids, strict=True):
            if row["kind"] == "village_point" and row["area_id"] is not None:
                serials = row["device_serials"]
                by_village[row["area_id"]] = (point_id, row["organisation_id"], serials[0] if serials else None)
        return by_village

    def people(self, points: dict[int, tuple[int, int, str | None]]) -> list[_Person]:
        """Living residents on a family-doctor team's panel (planted duplicate records are on none)."""
        teams = {t.id: t for t in self.db.execute(select(Team).where(Team.kind == TeamKind.FAMILY_DOCTOR)).scalars()}
        village_team: dict[int, Team] = {}
        for team in sorted(teams.values(), key=lambda t: t.id):
            for area_id in team.area_ids or []:
                village_team.setdefault(area_id, team)
        self.village_team = {area_id: team.id for area_id, team in village_team.items()}
        on_panel = set(self.db.execute(select(TeamPanelEntry.patient_id)
                                       .where(TeamPanelEntry.team_id.in_(list(teams)))).scalars())
        rows = [r for r in self.db.execute(
            select(Patient.id, Patient.birth_date, Patient.sex, Patient.area_id)
            .where(Patient.merged_into_id.is_(None), Patient.deceased_on.is_(None)).order_by(Patient.id)).all()
            if r[0] in on_panel]
        people: list[_Person] = []
        seen: set[int] = set()
        for pid, birth, sex, area_id in rows:
            if pid in seen or area_id not in village_team:
                continue
            seen.add(pid)
            team = village_team[area_id]
            point = points.get(area_id)
            male = sex == Sex.MALE
            people.append(_Person(
                patient_id=pid, birth_date=birth, sex="M" if male else "F", village_id=area_id, team_id=team.id,
                centre_id=team.organisation_id, clinic_id=point[1] if point else None,
                point_id=point[0] if point else None,
                weight=round(self.rng.gauss(67 if male else 58, 9), 1),
                height=round(self.rng.gauss(166 if male else 155, 5.5), 1)))
        return people

    # ------------------------------------------------------------------------------------ registries

    def choose(self, people: list[_Person], code: str) -> list[_Enrol]:
        """Enrol about `managed` of the expected cases among adults 35+, older people more likely."""
        prevalence, managed, by_age = ((HTN_PREVALENCE, HTN_MANAGED, _HTN_AGE) if code == "htn"
                                       else (T2DM_PREVALENCE, T2DM_MANAGED, _T2DM_AGE))
        adults = [(p, R.age_on(p.birth_date, self.today)) for p in people]
        adults = [(p, age) for p, age in adults if age >= 35]
        weight = sum(by_age[_band(age)] for _, age in adults) or 1.0
        scale = prevalence * managed * len(adults) / weight
        chosen = []
        for p, age in adults:
            if self.rng.random() < min(0.95, scale * by_age[_band(age)]):
                chosen.append(self.enrolment(p, code, age))
        return chosen

    def enrolment(self, p: _Person, code: str, age: int) -> _Enrol:
        rng = self.rng
        years = min(8.0, max(0.1, (age - 30) / 6))
        diagnosed = self.today - timedelta(days=rng.randint(20, int(365 * years)))
        enrolled = min(self.today - timedelta(days=1), diagnosed + timedelta(days=rng.randint(0, 40)))
        draw = rng.random()
        profile, stop = "regular", None
        if draw < 0.06:  # stopped coming over a year ago: lost to follow-up
            profile, stop = "stopped", self.today - timedelta(days=rng.randint(380, 700))
        elif draw < 0.10:  # stopped this year: overdue, not yet lost
            profile, stop = "stopped", self.today - timedelta(days=rng.randint(60, 300))
        elif draw < 0.33:
            profile = "irregular"
        medicines_from = HTN_MEDICINES if code == "htn" else T2DM_MEDICINES
        n_drugs = 1 if rng.random() < 0.6 else 2
        medicines = [{"name": n, "dose": d, "frequency": f} for n, d, f in rng.sample(medicines_from, n_drugs)]
        complications_from = HTN_COMPLICATIONS if code == "htn" else T2DM_COMPLICATIONS
        complications = [rng.choice(complications_from)] if rng.random() < 0.07 else []
        factors = [f for f in RISK_FACTORS if rng.random() < 0.18]
        source = rng.choices([s for s, _ in SOURCES], [w for _, w in SOURCES])[0]
        return _Enrol(person=p, code=code, diagnosed_on=diagnosed, enrolled_on=enrolled, good=rng.random() < 0.46,
                      profile=profile, stop=stop, source=source, risk_factors=factors, complications=complications,
                      medicines=medicines)

    # ----------------------------------------------------------------------------------------- visits

    def _bp(self, good: bool, age: int) -> tuple[int, int]:
        rng = self.rng
        if rng.random() < 0.004:  # a danger value now and then
            return rng.randint(180, 196), rng.randint(98, 116)
        if good:
            sbp, dbp = rng.gauss(128, 10), rng.gauss(79, 6)
        else:
            sbp, dbp = rng.gauss(151, 11), rng.gauss(91, 7)
        if age >= 65:
            sbp, dbp = sbp + 4, dbp - 3
        sbp = int(min(178, max(96, round(sbp))))
        dbp = int(min(108, max(56, round(dbp))))
        return sbp, min(dbp, sbp - 25)

    def _glucose(self, good: bool) -> float:
        rng = self.rng
        if rng.random() < 0.004:
            return round(rng.uniform(16.8, 19.5), 1) if rng.random() < 0.6 else round(rng.uniform(3.2, 3.8), 1)
        value = rng.gauss(6.2, 0.6) if good else rng.gauss(8.7, 1.5)
        return round(min(15.5, max(4.2, value)), 1)

    def visit(self, e: _Enrol, on: date, *, bp: tuple[int, int] | None = None, glucose: float | None = None,
              mode: str | None = None) -> _Visit:
        """One follow-up, appended to the enrolment: measurements drawn from the patient's state, classified by the
        rules, the schedule moved as `chronic.followups` moves it."""
        rng = self.rng
        rules = self.rules[e.code]
        age = R.age_on(e.person.birth_date, on)
        # After an uncontrolled visit the treatment is changed: some reach the target by the review.
        good_now = e.good if not e.uncontrolled else (rng.random() < (0.65 if e.good else 0.35))
        if bp is None and (e.code == "htn" or rng.random() < 0.8):
            bp = self._bp(good_now if e.code == "htn" else True, age)
            if bp == SHOWCASE_BP:  # keep the showcase's numbers its own, so a query finds it alone
                bp = (bp[0], bp[1] - 1)
        if glucose is None and e.code == "t2dm":
            glucose = self._glucose(good_now)
        side = rng.choice(SIDE_EFFECTS) if rng.random() < 0.02 else ""
        complications_from = HTN_COMPLICATIONS if e.code == "htn" else T2DM_COMPLICATIONS
        new = [c for c in complications_from if c not in e.complications]
        complication = rng.choice(new) if new and rng.random() < 0.004 else ""
        if e.scripted:
            side, complication = "", ""
        label, uncontrolled, danger = R.classify_visit(
            rules, sbp=bp[0] if bp else None, dbp=bp[1] if bp else None, fasting_glucose=glucose, age=age,
            side_effects=side, new_complication=bool(complication))
        if complication:
            e.complications.append(complication)
        if mode is None:
            mode = "home" if rng.random() < (0.30 if age >= 75 else 0.12) else "clinic"
        e.streak = e.streak + 1 if uncontrolled else 0
        e.uncontrolled = uncontrolled
        e.due, e.kind = next_visit(rules, on=on, face_to_face=mode in FACE_TO_FACE, uncontrolled=uncontrolled,
                                   due=e.due, kind=e.kind)
        v = _Visit(on=on, at=_measured_at(on), mode=mode, sbp=bp[0] if bp else None, dbp=bp[1] if bp else None,
                   glucose=glucose, label=label, uncontrolled=uncontrolled, danger=danger, streak=e.streak,
                   next_due=e.due, next_kind=e.kind, side_effects=side, complication=complication,
                   weight=round(e.person.weight + rng.gauss(0, 1.2), 1),
                   heart_rate=int(min(110, max(52, round(rng.gauss(74, 8))))),
                   hba1c=round(min(12.0, max(5.2, rng.gauss(6.6 if good_now else 8.3, 0.6))), 1)
                   if e.code == "t2dm" and rng.random() < 0.3 else None,
                   note=PAPER_NOTE if e.streak >= 2 or danger else "")
        e.visits.append(v)
        return v

    def _delay(self, e: _Enrol, *, review: bool) -> int:
        """Days after the due date the patient comes: reviews are often late, routine visits sometimes skipped."""
        rng = self.rng
        if e.profile == "irregular":
            delay = int(abs(rng.gauss(8, 20))) - 5
            if not review and rng.random() < 0.18:
                delay += 91  # skipped a visit
            return max(-7, delay) if not review else max(-3, min(delay + 5, 75))
        if review:
            return max(-3, min(round(rng.gauss(6, 10)), 45))
        delay = round(rng.gauss(2, 6))
        if rng.random() < 0.05:
            delay += 91
        return max(-10, min(delay, 25))

    def simulate(self, e: _Enrol) -> None:
        """Visits from the start of the stored history (or the enrolment) to yesterday, each coming some days
        around the date the last one set; now and then a phone follow-up in between. A patient who stopped coming
        stops."""
        rng = self.rng
        start = self.today - timedelta(days=HISTORY_DAYS)
        day = e.enrolled_on if e.enrolled_on >= start else start + timedelta(days=rng.randrange(91))
        last = self.today - timedelta(days=1)
        if e.stop is not None:
            last = min(last, e.stop - timedelta(days=1))
        while day <= last:
            v = self.visit(e, day)
            if not v.uncontrolled and rng.random() < 0.15:
                call = day + timedelta(days=rng.randint(30, 60))
                if e.due is not None and call < e.due and call <= last:
                    self.visit(e, call, mode="phone")
            assert e.due is not None
            day = max(day + timedelta(days=7), e.due + timedelta(days=self._delay(e, review=e.kind == "review")))

    def readings(self, enrolments: list[_Enrol]) -> dict[int, list[_Reading]]:
        """Village point readings between visits, for about half the patients, over the last year."""
        rng = self.rng
        out: dict[int, list[_Reading]] = {}
        quiet = {e.person.patient_id for e in enrolments if e.scripted}
        for e in enrolments:
            if e.person.patient_id in quiet:
                continue
            p = e.person
            if p.point_id is None or rng.random() > (0.45 if e.code == "htn" else 0.3):
                continue
            begin = max(e.enrolled_on, self.today - timedelta(days=365))
            end = min(self.today - timedelta(days=1), e.stop or self.today)
            if end <= begin:
                continue
            span = (end - begin).days
            for _ in range(rng.randint(2, 9) if e.code == "htn" else rng.randint(1, 5)):
                day = begin + timedelta(days=rng.randint(0, span))
                at = _local(day, rng.randint(7 * 60, 18 * 60))
                age = R.age_on(p.birth_date, day)
                if e.code == "htn":
                    sbp, dbp = self._bp(e.good or rng.random() < 0.3, age)
                    r = _Reading(at=at, kind="bp", sbp=sbp, dbp=dbp,
                                 danger=R.bp_danger(self.rules["htn"], sbp=sbp, dbp=dbp))
                else:
                    value = self._glucose(e.good or rng.random() < 0.3)
                    r = _Reading(at=at, kind="glucose", glucose=value,
                                 danger=R.glucose_danger(self.rules["t2dm"], value=value))
                out.setdefault(p.patient_id, []).append(r)
        return out

    # ---------------------------------------------------------------------------------- derived columns

    def derive(self, e: _Enrol, readings: list[_Reading]) -> _Derived:
        """The enrolment as the services leave it after its visits and the patient's readings, in time order."""
        derived = _Derived(risk_level=R.RISK_USUAL)
        row = cast(ChronicEnrolment, derived)  # the rules read and write these attributes only
        events: list[tuple[datetime, int, _Visit | _Reading]] = [(v.at, 0, v) for v in e.visits]
        events += [(r.at, 1, r) for r in readings]
        for _, _, ev in sorted(events, key=lambda x: (x[0], x[1])):
            if isinstance(ev, _Visit):
                # chronic.followups: the visit's numbers become readings at the visit, then the schedule moves.
                if ev.sbp is not None and ev.dbp is not None:
                    R.apply_bp(row, sbp=ev.sbp, dbp=ev.dbp, at=ev.at)
                if ev.glucose is not None:
                    R.apply_glucose(row, value=ev.glucose, at=ev.at)
                R.apply_contact(row, at=ev.at)
                row.uncontrolled_streak = ev.streak
                row.last_classification = ev.label
                row.risk_level = R.risk_after_visit(danger=ev.danger, classification=ev.label)
                row.hidden_until = None
                if ev.mode in FACE_TO_FACE:
                    row.last_visit_on = max(row.last_visit_on or ev.on, ev.on)
                row.next_visit_due, row.next_visit_kind = ev.next_due, ev.next_kind
            else:
                if ev.kind == "bp" and ev.sbp is not None and ev.dbp is not None:
                    R.apply_bp(row, sbp=ev.sbp, dbp=ev.dbp, at=ev.at)
                elif ev.glucose is not None:
                    R.apply_glucose(row, value=ev.glucose, at=ev.at)
                row.risk_level = R.risk_after_reading(row.risk_level, danger=ev.danger)
        if row.next_visit_due is None:  # nothing stored since the paper era: due long ago
            start = self.today - timedelta(days=HISTORY_DAYS)
            row.next_visit_due = max(e.enrolled_on, start) + timedelta(days=self.rules[e.code].routine_days)
            row.next_visit_kind = "routine"
        return derived


def _insert_ids(db: Session, model: type[Any], rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows and return their ids in the order given."""
    if not rows:
        return []
    table = model.__table__
    connection = db.connection()
    if connection.dialect.name == "sqlite":
        # SQLite would insert row by row to keep RETURNING in order. Inside the build's write transaction
        # nobody else inserts and each rowid is max + 1, so the new ids are those above the old maximum.
        before = connection.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
        connection.execute(insert(table), rows)
        ids = list(connection.execute(select(table.c.id).where(table.c.id > before).order_by(table.c.id)).scalars())
        if len(ids) != len(rows):
            raise RuntimeError(f"expected {len(rows)} new rows in {table.name}, found {len(ids)}")
        return ids
    # PostgreSQL: reserve ids from the table's own sequence (safe beside other writers), then COPY.
    ids = list(connection.execute(
        text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
        {"t": table.name, "n": len(rows)}).scalars())
    insert_rows(db, model, [{"id": new_id, **row} for new_id, row in zip(ids, rows, strict=True)])
    return ids




def _showcase_village(db: Session) -> tuple[Area, User]:
    """The village of the 石门镇 village doctor's login (its first village), and patient.shimen."""
    village_site = county.geography().villages_by_township[SHOWCASE_TOWNSHIP][0]
    village = db.execute(select(Area).where(Area.code == village_site.code)).scalar_one()
    patient_user = db.execute(select(User).where(User.username == "patient.shimen")).scalar_one()
    return village, patient_user


def build_demo_chronic(db: Session, *, seed: int, now: datetime) -> dict[str, int]:
    """Write the county's chronic disease content; returns counts for the build summary."""
    demo = _Demo(db, seed=seed, now=now)
    rng, today = demo.rng, demo.today
    points = demo.points()
    people = demo.people(points)
    by_patient = {p.patient_id: p for p in people}
    htn = demo.choose(people, "htn")
    t2dm = demo.choose(people, "t2dm")
    village, patient_user = _showcase_village(db)
    scripted = _script_showcase(demo, htn, by_patient, village, patient_user)
    enrolments = htn + t2dm
    for e in enrolments:
        if not e.scripted:
            demo.simulate(e)
    live_cases = _referral_cases(demo, htn, scripted)
    readings = demo.readings(enrolments)
    # The "controlled" showcase: a controlled reading at the village point a month ago.
    if "controlled" in scripted:
        readings.setdefault(scripted["controlled"].person.patient_id, []).append(
            _Reading(at=_local(today - timedelta(days=30), 9 * 60 + 20), kind="bp", sbp=132, dbp=82))

    # Enrolments, with their derived columns.
    rows = []
    for e in enrolments:
        row = demo.derive(e, readings.get(e.person.patient_id, []))
        p = e.person
        rows.append({
            "patient_id": p.patient_id, "condition_code": e.code, "organisation_id": p.centre_id,
            "team_id": p.team_id, "village_area_id": p.village_id, "diagnosed_on": e.diagnosed_on,
            "source": e.source, "risk_factors": e.risk_factors, "complications": e.complications,
            "medicines": e.medicines, "status": "active", "enrolled_at": _local(e.enrolled_on, 10 * 60),
            "enrolled_by_user_id": None, "closed_at": None, "closed_reason": "",
            **{c: getattr(row, c) for c in DERIVED_COLUMNS}})
    calls = _calls(demo, enrolments, rows)
    for e, new_id in zip(enrolments, _insert_ids(db, ChronicEnrolment, rows), strict=True):
        e.id = new_id
    insert_rows(db, ChronicCall, [dict(c, enrolment_id=enrolments[c.pop("_index")].id) for c in calls])

    # Follow-ups, with their numbers as readings (source follow_up) the way the follow-up service stores them.
    follow_ups: list[dict[str, Any]] = []
    reading_rows: list[dict[str, Any]] = []
    for e in enrolments:
        p = e.person
        for v in e.visits:
            at_village = p.clinic_id is not None and v.mode != "phone" and rng.random() < 0.75
            org = p.clinic_id if at_village and p.clinic_id is not None else p.centre_id
            entered = v.at + timedelta(hours=rng.randint(2, 30))
            follow_ups.append({
                "enrolment_id": e.id, "patient_id": p.patient_id, "condition_code": e.code,
                "organisation_id": org, "visit_on": v.on, "mode": v.mode,
                "symptoms": _symptoms(rng, e.code, v), "sbp": v.sbp, "dbp": v.dbp, "heart_rate": v.heart_rate,
                "weight_kg": v.weight, "height_cm": p.height, "bmi": R.bmi(v.weight, p.height),
                "lifestyle": _lifestyle(rng, p, e), "medicines": e.medicines,
                "adherence": "regular" if e.profile == "regular" or rng.random() < 0.5 else "intermittent",
                "side_effects": v.side_effects, "fasting_glucose": v.glucose, "hba1c": v.hba1c,
                "foot_pulse": ("normal" if rng.random() < 0.9 else "weak_both") if e.code == "t2dm" else "",
                "hypoglycaemia": ("none" if rng.random() < 0.9 else "occasional") if e.code == "t2dm" else "",
                "classification": v.label, "next_visit_on": v.next_due, "referral_id": None,
                "note": v.note, "recorded_by_user_id": None, "recorded_at": entered})
            base = {"patient_id": p.patient_id, "point_id": None, "organisation_id": org, "measured_at": v.at,
                    "source": "follow_up", "device_serial": None, "device_record_id": None,
                    "recorded_by_user_id": None, "recorded_at": entered}
            if v.sbp is not None:
                reading_rows.append({**base, "kind": "bp", "sbp": v.sbp, "dbp": v.dbp, "pulse": v.heart_rate,
                                     "glucose_mmol": None, "glucose_context": ""})
            if v.glucose is not None:
                reading_rows.append({**base, "kind": "glucose", "sbp": None, "dbp": None, "pulse": None,
                                     "glucose_mmol": v.glucose, "glucose_context": "fasting"})
    insert_rows(db, ChronicFollowUp, follow_ups)
    # Readings at the village points, some uploaded from the point's device.
    record_ids: dict[str, int] = {}
    point_readings = 0
    for patient_id, items in readings.items():
        p = by_patient[patient_id]
        point = points.get(p.village_id)
        for r in sorted(items, key=lambda x: x.at):
            serial = point[2] if point and point[2] and rng.random() < 0.7 else None
            number = None
            if serial:
                record_ids[serial] = record_ids.get(serial, 0) + 1
                number = f"{record_ids[serial]:06d}"
            reading_rows.append({
                "patient_id": patient_id, "point_id": p.point_id, "organisation_id": p.clinic_id or p.centre_id,
                "kind": r.kind, "measured_at": r.at, "sbp": r.sbp, "dbp": r.dbp,
                "pulse": rng.randint(60, 92) if r.kind == "bp" else None, "glucose_mmol": r.glucose,
                "glucose_context": "fasting" if r.kind == "glucose" else "",
                "source": "device_csv" if serial else "manual", "device_serial": serial, "device_record_id": number,
                "recorded_by_user_id": None, "recorded_at": r.at + timedelta(minutes=2)})
            point_readings += 1
    insert_rows(db, ChronicReading, reading_rows)
    contracts = _contracts(demo, people, enrolments, scripted)
    insert_rows(db, FamilyDoctorContract, contracts)
    tasks = _record_live_visits(demo, live_cases)

    showcase = {f"{name}_{what}": e.person.patient_id if what == "patient_id" else e.id
                for name, e in scripted.items() for what in ("patient_id", "enrolment_id")}
    showcase["village_area_id"] = village.id
    overdue = db.execute(select(func.count()).select_from(ChronicEnrolment).where(
        ChronicEnrolment.status == "active", ChronicEnrolment.next_visit_due < today,
        or_(ChronicEnrolment.hidden_until.is_(None), ChronicEnrolment.hidden_until < today))).scalar_one()
    counts = {
        "monitoring_points": demo.counts["monitoring_points"],
        "htn_enrolments": len(htn), "t2dm_enrolments": len(t2dm), "contracts": len(contracts),
        "follow_ups": len(follow_ups) + sum(len(e.live) for e, _ in live_cases),
        "readings": len(reading_rows), "point_readings": point_readings, "worklist_calls": len(calls),
        "referral_checks": tasks, "chronic_overdue": overdue,
    }
    audit.record(db, actor=audit.Actor(username="system"), action=AUDIT_ACTION,
                 detail={"seed": seed, **counts, **showcase})
    db.flush()
    return counts


def _candidates(people: list[_Person], village_id: int, team_id: int | None, today: date,
                exclude: set[int]) -> list[_Person]:
    """Residents of the village aged 50-78, lowest patient id first (people come in patient id order); in a very
    small demo also younger and older adults, then the other village of the same team, then anyone."""
    found: list[_Person] = []
    seen = set(exclude)
    for low, high, where in ((50, 78, lambda p: p.village_id == village_id),
                             (35, 90, lambda p: p.village_id == village_id),
                             (35, 90, lambda p: p.team_id == team_id), (35, 90, lambda p: True)):
        for p in people:
            if p.patient_id not in seen and where(p) and low <= R.age_on(p.birth_date, today) <= high:
                found.append(p)
                seen.add(p.patient_id)
        if len(found) >= 2:
            break
    return found


def _scripted_history(demo: _Demo, e: _Enrol, last: list[tuple[int, tuple[int, int]]]) -> None:
    """Controlled quarterly visits for two years, then the given (days ago, BP) visits."""
    e.scripted = True
    e.good, e.profile, e.stop = True, "regular", None
    first_scripted = demo.today - timedelta(days=last[0][0])
    day = demo.today - timedelta(days=HISTORY_DAYS - 20)
    while day < first_scripted - timedelta(days=60):
        demo.visit(e, day, bp=(demo.rng.randint(124, 136), demo.rng.randint(74, 84)), mode="clinic")
        assert e.due is not None
        day = e.due + timedelta(days=demo.rng.randint(-3, 3))
    for days_ago, bp in last:
        demo.visit(e, demo.today - timedelta(days=days_ago), bp=bp, mode="clinic").note = ""


def _script_showcase(demo: _Demo, htn: list[_Enrol], by_patient: dict[int, _Person], village: Area,
                     patient_user: User) -> dict[str, _Enrol]:
    """Put the three showcase patients into the hypertension registry with their scripted histories."""
    people = list(by_patient.values())
    enrolled = {e.person.patient_id: e for e in htn}
    login_pid = patient_user.patient_id
    picked: dict[str, _Enrol] = {}
    exclude = {login_pid} if login_pid is not None else set()
    candidates = _candidates(people, village.id, demo.village_team.get(village.id), demo.today, exclude)
    plan = {"uncontrolled": [(112, (132, 82)), (SHOWCASE_DAYS_AGO, SHOWCASE_BP)],
            "controlled": [(190, (134, 84)), (95, (128, 80))]}
    for (name, last), person in zip(plan.items(), candidates, strict=False):
        e = enrolled.get(person.patient_id)
        if e is None:
            e = demo.enrolment(person, "htn", R.age_on(person.birth_date, demo.today))
            htn.append(e)
        e.diagnosed_on = demo.today - timedelta(days=3 * 365 + 40)
        e.enrolled_on = e.diagnosed_on + timedelta(days=7)
        e.complications = []
        _scripted_history(demo, e, last)
        picked[name] = e
    person = by_patient.get(login_pid) if login_pid is not None else None
    if person is not None:
        e = enrolled.get(person.patient_id) or demo.enrolment(person, "htn", R.age_on(person.birth_date, demo.today))
        if e not in htn:
            htn.append(e)
        e.diagnosed_on = demo.today - timedelta(days=5 * 365)
        e.enrolled_on = e.diagnosed_on + timedelta(days=3)
        _scripted_history(demo, e, [(40, (130, 80))])
        picked["login"] = e
    return picked


def _referral_cases(demo: _Demo, htn: list[_Enrol], scripted: dict[str, _Enrol]) -> list[tuple[_Enrol, User]]:
    """Patients of the teams with demo logins whose last weeks are rewritten so that the visits still to be
    recorded (through `chronic.followups`, after the history) propose an upward referral: two uncontrolled
    visits in a row, or a danger value. Returns each with the team's doctor who records them."""
    db = demo.db
    members = db.execute(select(Team, User).join(TeamMember, TeamMember.team_id == Team.id)
                         .join(User, User.practitioner_id == TeamMember.practitioner_id)
                         .where(Team.kind == TeamKind.FAMILY_DOCTOR).order_by(Team.id, User.id)).all()
    user_of: dict[int, User] = {}
    for team, user in members:  # the township doctor of the team when there is one, else its village doctor
        if team.id not in user_of or (user.organisation_id == team.organisation_id
                                      and user_of[team.id].organisation_id != team.organisation_id):
            user_of[team.id] = user
    taken = {e.person.patient_id for e in scripted.values()}
    cut = demo.today - timedelta(days=40)
    out: list[tuple[_Enrol, User]] = []
    for team_id, user in sorted(user_of.items()):
        pool = [e for e in htn if e.person.team_id == team_id and e.person.patient_id not in taken
                and e.profile != "stopped" and e.visits and e.diagnosed_on < cut - timedelta(days=30)]
        for danger, e in zip((False, True), pool[:2], strict=False):
            # Keep the history up to a controlled visit before the last weeks; replay it for the schedule.
            kept = [v for v in e.visits if v.on < cut]
            while kept and kept[-1].uncontrolled:
                kept.pop()
            e.visits = kept
            e.streak = kept[-1].streak if kept else 0
            e.uncontrolled = False
            e.due, e.kind = (kept[-1].next_due, kept[-1].next_kind) if kept else (None, "first")
            e.scripted = True
            e.live = ([(demo.today - timedelta(days=4), (184, 106))] if danger else
                      [(demo.today - timedelta(days=24), (158, 96)), (demo.today - timedelta(days=8), (164, 100))])
            taken.add(e.person.patient_id)
            out.append((e, user))
    return out


def _record_live_visits(demo: _Demo, cases: list[tuple[_Enrol, User]]) -> int:
    """Record the cases' last visits through the follow-up service: it classifies them, proposes the upward
    referral (a draft for the doctor to send) and schedules the two-week check as a team task."""
    tasks = 0
    for e, user in cases:
        p = e.person
        for on, (sbp, dbp) in e.live:
            outcome = followups.record_follow_up(demo.db, by=user, enrolment_id=e.id, data=followups.FollowUpInput(
                visit_on=on, mode="clinic", symptoms=["headache_dizziness"], sbp=sbp, dbp=dbp,
                heart_rate=demo.rng.randint(68, 92), weight_kg=p.weight, height_cm=p.height,
                lifestyle={"salt": "heavy", "exercise_per_week": 1, "compliance": "fair"}, medicines=e.medicines,
                adherence="intermittent"))
            tasks += outcome.task is not None
    return tasks


def _calls(demo: _Demo, enrolments: list[_Enrol], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Some overdue patients were called in the last days: the outcome (data, `call_outcome_rules`) hides them for
    a while, or closes the enrolment of one who moved away, as `chronic.worklist.record_call` does."""
    rng, today = demo.rng, demo.today
    outcomes = {r.code: r for r in demo.db.execute(select(CallOutcomeRule)).scalars()}
    hiding = [code for code in ("agreed_to_visit", "call_later", "no_answer") if code in outcomes]
    calls: list[dict[str, Any]] = []
    for index, (e, row) in enumerate(zip(enrolments, rows, strict=True)):
        if e.scripted or row["next_visit_due"] >= today - timedelta(days=1) or rng.random() > 0.12:
            continue
        earliest = max(row["next_visit_due"] + timedelta(days=1), today - timedelta(days=10))
        day = earliest + timedelta(days=rng.randint(0, max(0, (today - timedelta(days=1) - earliest).days)))
        lost = row["last_contact_at"] is None or row["last_contact_at"] < demo.now - timedelta(days=365)
        code = "moved" if lost and "moved" in outcomes and rng.random() < 0.25 else rng.choices(
            hiding, [45, 20, 35][:len(hiding)])[0]
        rule = outcomes[code]
        at = _local(day, rng.randint(9 * 60, 17 * 60))
        until = day + timedelta(days=rule.hide_days) if rule.hide_days > 0 else None
        calls.append({"_index": index, "patient_id": e.person.patient_id, "team_id": e.person.team_id,
                      "outcome_code": code, "hidden_until": until, "note": "", "called_at": at,
                      "called_by_user_id": None})
        if until is not None:
            row["hidden_until"] = until
        if rule.closes_with_status:
            row.update(status=rule.closes_with_status, closed_at=at,
                       closed_reason=f"电话随访：{rule.name} / call: {rule.name_en}"[:200])
    return calls


def _contracts(demo: _Demo, people: list[_Person], enrolments: list[_Enrol],
               scripted: dict[str, _Enrol]) -> list[dict[str, Any]]:
    """家庭医生签约: most enrolled patients (chronic package), many elderly, some other adults; one-year periods
    covering today, a few that ran out and were not renewed."""
    rng, today = demo.rng, demo.today
    enrolled = {e.person.patient_id for e in enrolments}
    always = {e.person.patient_id for e in scripted.values()}
    per_day: dict[date, int] = {}
    rows = []
    for p in people:
        age = R.age_on(p.birth_date, today)
        if p.patient_id in always:
            package, chance = "chronic", 1.0
        elif p.patient_id in enrolled:
            package, chance = "chronic", 0.85
        elif age >= 65:
            package, chance = "elderly", 0.5
        elif age >= 18:
            package, chance = "basic", 0.08
        else:
            continue
        if rng.random() >= chance:
            continue
        expired = p.patient_id not in always and rng.random() < 0.04
        starts = today - timedelta(days=rng.randint(380, 520) if expired else rng.randint(0, 360))
        ends = starts + timedelta(days=364)
        per_day[starts] = per_day.get(starts, 0) + 1
        signed = _local(starts, rng.randint(9 * 60, 16 * 60))
        rows.append({"number": f"QY{starts:%Y%m%d}-{per_day[starts]:04d}", "patient_id": p.patient_id,
                     "team_id": p.team_id, "package_code": package, "starts_on": starts, "ends_on": ends,
                     "status": "ended" if expired else "active", "signed_at": signed, "signed_by_user_id": None,
                     "ended_at": _local(ends + timedelta(days=1), 0) if expired else None,
                     "ended_reason": "期满未续约 / period ended, not renewed" if expired else ""})
    return rows


def _symptoms(rng: random.Random, code: str, v: _Visit) -> list[str]:
    if not v.uncontrolled and rng.random() < 0.85:
        return ["none"]
    pool = HTN_SYMPTOMS if code == "htn" else T2DM_SYMPTOMS
    return rng.sample(pool, rng.randint(1, 2))


def _lifestyle(rng: random.Random, p: _Person, e: _Enrol) -> dict[str, Any]:
    smoker = "smoking" in e.risk_factors
    return {"smoking_per_day": rng.choice((5, 10, 20)) if smoker else 0,
            "drinking_liang_per_day": rng.choice((1, 2)) if "drinking" in e.risk_factors else 0,
            "exercise_per_week": rng.randint(0, 7), "exercise_minutes": rng.choice((0, 20, 30, 60)),
            "salt": "heavy" if "high_salt" in e.risk_factors else rng.choice(("light", "medium")),
            "mood": "good" if rng.random() < 0.8 else "fair",
            "compliance": "good" if e.profile == "regular" else "fair"}


def _showcase_ids(db: Session) -> dict[str, Any]:
    event = db.execute(select(AuditEvent).where(AuditEvent.action == AUDIT_ACTION)
                       .order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
    return dict(event.detail)


def showcase_enrolment(db: Session) -> ChronicEnrolment:
    """The hypertensive resident whose last visit was uncontrolled (162/98, streak 1, review overdue)."""
    return db.get_one(ChronicEnrolment, _showcase_ids(db)["uncontrolled_enrolment_id"])


def showcase_controlled_enrolment(db: Session) -> ChronicEnrolment:
    """The hypertensive resident controlled at the last visit, routine visit overdue, controlled reading recently."""
    return db.get_one(ChronicEnrolment, _showcase_ids(db)["controlled_enrolment_id"])
