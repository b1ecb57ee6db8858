"""Demo pathway cases: a year of chest-pain, stroke, trauma, critical maternal and neonatal timelines for the
demo county (about 150 chest-pain and 600 stroke patients a year, as domain.md's county found), and a few
cases open on the chest-pain and stroke boards right now.

Node times are drawn so that most cases meet the national targets and some miss (D2B around 65 min with a
tail past 90; DNT around 45 min with a tail past 60); about half the ambulance STEMI patients have their ECG
transmitted before arrival and about four in ten bypass the emergency department. Every timeline respects
the centre's partial order (a test checks it against the seeded rules). Rows go in with bulk inserts.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from healthrelay.demo import county
from healthrelay.directory.models import Organisation, OrgKind
from healthrelay.pathways.models import CaseState, Centre, PathwayCase, PathwayEvent, PathwayNode
from healthrelay.pathways.service import NUMBER_PREFIX
from healthrelay.patients.models import Patient, PatientRegistration

_SHANGHAI = ZoneInfo("Asia/Shanghai")
YEARLY = {Centre.CHEST_PAIN: 150, Centre.STROKE: 600, Centre.TRAUMA: 40, Centre.MATERNAL: 24, Centre.NEONATAL: 24}
OUTCOMES = ("好转出院 / discharged improved", "转上级医院 / transferred up", "康复出院 / discharged recovered")
Timeline = dict[str, datetime]


def _minutes(rng: random.Random, mean: float, spread: float, low: float = 1.0) -> timedelta:
    """A skewed positive duration: mostly near `mean`, a tail to the right."""
    return timedelta(minutes=max(low, rng.lognormvariate(0, spread) * mean))


def _chest_pain(rng: random.Random, fmc: datetime) -> tuple[Timeline, dict[str, Any]]:
    kind = rng.choices(("stemi", "nstemi", "ua"), weights=(60, 25, 15))[0]
    mode = rng.choices(("ambulance", "self", "transfer"), weights=(55, 35, 10))[0]
    t: Timeline = {"onset": fmc - _minutes(rng, 90, 0.6, 10), "first_medical_contact": fmc}
    t["first_ecg"] = fmc + _minutes(rng, 5, 0.45)
    prehospital = mode == "ambulance" and rng.random() < 0.5
    if prehospital:
        t["ecg_transmitted"] = t["first_ecg"] + _minutes(rng, 2, 0.4)
        t["ecg_read"] = t["ecg_transmitted"] + _minutes(rng, 4, 0.4)
    t["diagnosis"] = t["first_ecg"] + _minutes(rng, 5, 0.5)
    t["arrival"] = fmc + _minutes(rng, 35, 0.3, 12) if mode != "self" else fmc - timedelta(minutes=rng.randint(1, 4))
    bypass = None
    if kind == "stemi":
        if mode == "ambulance":
            bypass = prehospital and rng.random() < 0.8
        if rng.random() < 0.85:  # primary PCI
            t["cath_lab_activation"] = t["diagnosis"] + _minutes(rng, 12, 0.5)
            ready = max(t["arrival"], t["cath_lab_activation"])
            t["cath_lab_arrival"] = ready + _minutes(rng, 8 if bypass else 25, 0.45)
            t["wire_crossing"] = t["cath_lab_arrival"] + _minutes(rng, 22, 0.35, 8)
        else:
            t["thrombolysis"] = max(t["diagnosis"], t["arrival"]) + _minutes(rng, 20, 0.4)
    return t, {"diagnosis_code": kind, "arrival_mode": mode, "bypass_ed": bypass,
               "diagnosis": {"stemi": "急性ST段抬高型心肌梗死 STEMI", "nstemi": "非ST段抬高型心肌梗死 NSTEMI",
                             "ua": "不稳定型心绞痛"}[kind]}


def _stroke(rng: random.Random, fmc: datetime) -> tuple[Timeline, dict[str, Any]]:
    kind = rng.choices(("ischaemic_stroke", "haemorrhagic_stroke"), weights=(80, 20))[0]
    mode = rng.choices(("ambulance", "self"), weights=(60, 40))[0]
    t: Timeline = {"onset": fmc - _minutes(rng, 80, 0.7, 10), "first_medical_contact": fmc}
    t["arrival"] = fmc + _minutes(rng, 30, 0.35, 10) if mode == "ambulance" else fmc
    t["ct"] = t["arrival"] + _minutes(rng, 15, 0.35, 5)
    t["ct_read"] = t["ct"] + _minutes(rng, 6, 0.4)
    if kind == "ischaemic_stroke" and rng.random() < 0.3:
        t["needle"] = max(t["ct_read"], t["arrival"] + _minutes(rng, 44, 0.25, 20))
        if rng.random() < 0.25:
            t["groin_puncture"] = t["needle"] + _minutes(rng, 40, 0.3)
            t["recanalisation"] = t["groin_puncture"] + _minutes(rng, 45, 0.3)
    return t, {"diagnosis_code": kind, "arrival_mode": mode, "bypass_ed": None,
               "diagnosis": "急性缺血性脑卒中" if kind == "ischaemic_stroke" else "脑出血"}


def _trauma(rng: random.Random, fmc: datetime) -> tuple[Timeline, dict[str, Any]]:
    t: Timeline = {"injury": fmc - _minutes(rng, 15, 0.5), "first_medical_contact": fmc}
    t["arrival"] = fmc + _minutes(rng, 35, 0.35, 10)
    t["ct"] = t["arrival"] + _minutes(rng, 18, 0.4)
    if rng.random() < 0.5:
        t["surgery"] = t["ct"] + _minutes(rng, 70, 0.4)
    return t, {"diagnosis_code": "trauma", "arrival_mode": "ambulance", "bypass_ed": None,
               "diagnosis": rng.choice(("多发伤", "颅脑外伤", "骨盆骨折"))}


def _maternal(rng: random.Random, fmc: datetime, code: str) -> tuple[Timeline, dict[str, Any]]:
    t: Timeline = {"first_medical_contact": fmc, "arrival": fmc + _minutes(rng, 40, 0.35, 10)}
    t["first_assessment"] = t["arrival"] + _minutes(rng, 8, 0.4)
    t["definitive_treatment"] = t["first_assessment"] + _minutes(rng, 45, 0.4)
    dx = ("产后出血", "重度子痫前期") if code == "maternal" else ("新生儿窒息", "早产儿呼吸窘迫")
    return t, {"diagnosis_code": code, "arrival_mode": rng.choice(("ambulance", "transfer")), "bypass_ed": None,
               "diagnosis": rng.choice(dx)}


def draw(rng: random.Random, centre: Centre, fmc: datetime) -> tuple[Timeline, dict[str, Any]]:
    """One case's node times and attributes, first medical contact at `fmc`."""
    if centre == Centre.CHEST_PAIN:
        return _chest_pain(rng, fmc)
    if centre == Centre.STROKE:
        return _stroke(rng, fmc)
    if centre == Centre.TRAUMA:
        return _trauma(rng, fmc)
    return _maternal(rng, fmc, str(centre))


def _now_cases(now: datetime) -> list[tuple[Centre, Timeline, dict[str, Any]]]:
    """Open right now: an ambulance STEMI pre-alerted and on its way, one in the cath lab, one at 75 min of
    D2B (amber); two strokes waiting for the needle."""
    def ago(m: float) -> datetime:
        return now - timedelta(minutes=m)

    stemi = {"diagnosis_code": "stemi", "diagnosis": "急性ST段抬高型心肌梗死 STEMI"}
    return [
        (Centre.CHEST_PAIN, {"onset": ago(95), "first_medical_contact": ago(40), "first_ecg": ago(36),
                             "ecg_transmitted": ago(34), "ecg_read": ago(30), "diagnosis": ago(29),
                             "cath_lab_activation": ago(20)},
         {**stemi, "arrival_mode": "ambulance", "bypass_ed": True, "source": "ecg"}),
        (Centre.CHEST_PAIN, {"onset": ago(150), "arrival": ago(50), "first_medical_contact": ago(48),
                             "first_ecg": ago(44), "diagnosis": ago(38), "cath_lab_activation": ago(30),
                             "cath_lab_arrival": ago(12)},
         {**stemi, "arrival_mode": "self", "bypass_ed": None, "source": "walk_in"}),
        (Centre.CHEST_PAIN, {"first_medical_contact": ago(120), "first_ecg": ago(114), "ecg_transmitted": ago(111),
                             "diagnosis": ago(105), "arrival": ago(75), "cath_lab_activation": ago(70)},
         {**stemi, "arrival_mode": "transfer", "bypass_ed": False, "source": "ecg"}),
        (Centre.STROKE, {"onset": ago(70), "first_medical_contact": ago(50), "arrival": ago(25), "ct": ago(12)},
         {"diagnosis_code": "ischaemic_stroke", "diagnosis": "急性缺血性脑卒中", "arrival_mode": "ambulance",
          "bypass_ed": None, "source": "call"}),
        (Centre.STROKE, {"onset": ago(120), "arrival": ago(45), "ct": ago(33), "ct_read": ago(28)},
         {"diagnosis_code": "ischaemic_stroke", "diagnosis": "急性缺血性脑卒中", "arrival_mode": "self",
          "bypass_ed": None, "source": "walk_in"}),
    ]


def _reserve_ids(db: Session, n: int) -> list[int]:
    """Ids for `n` new cases: the table's own sequence on PostgreSQL, max + 1 inside our write on SQLite."""
    if n == 0:
        return []
    if db.get_bind().dialect.name == "postgresql":
        return list(db.execute(text("SELECT nextval(pg_get_serial_sequence('pathway_cases', 'id')) "
                                    "FROM generate_series(1, :n)"), {"n": n}).scalars())
    start = db.execute(select(func.coalesce(func.max(PathwayCase.id), 0))).scalar_one() + 1
    return list(range(start, start + n))


def _organisation(db: Session, code: str) -> Organisation | None:
    org = db.execute(select(Organisation).where(Organisation.code == code)).scalar()
    if org is None:  # outside the demo county (tests): the first general hospital
        org = db.execute(select(Organisation).where(Organisation.kind == OrgKind.GENERAL_HOSPITAL)
                         .order_by(Organisation.id).limit(1)).scalar()
    return org


def build_demo_pathways(db: Session, *, seed: int, now: datetime) -> dict[str, int]:
    """Write a year of pathway cases ending at `now`, plus the open ones on the boards; returns counts."""
    rng = random.Random(f"pathways-{seed}")
    hospital = _organisation(db, county.COUNTY_HOSPITAL)
    if hospital is None:
        raise RuntimeError("the demo county has no hospital to receive pathway patients")
    mch = _organisation(db, county.MCH_HOSPITAL) or hospital
    registrations = list(db.execute(select(PatientRegistration.patient_id, PatientRegistration.organisation_id)
                                    .order_by(PatientRegistration.id).limit(20000)).all())
    if not registrations:
        registrations = [(pid, None) for pid in db.execute(select(Patient.id).order_by(Patient.id).limit(20000))
                         .scalars()]
    plans: list[tuple[Centre, Timeline, dict[str, Any], bool]] = []
    for centre, yearly in YEARLY.items():
        for _ in range(yearly):
            fmc = now - timedelta(days=rng.uniform(1, 365), minutes=rng.uniform(0, 60))
            timeline, attrs = draw(rng, centre, fmc)
            attrs["source"] = ("ecg" if centre == Centre.CHEST_PAIN and "ecg_transmitted" in timeline
                               else "call" if attrs["arrival_mode"] == "ambulance" else "walk_in")
            plans.append((centre, timeline, attrs, False))
    plans += [(c, t, a, True) for c, t, a in _now_cases(now)]
    ids = _reserve_ids(db, len(plans))
    cases: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for case_id, (centre, timeline, attrs, is_open) in zip(ids, plans, strict=True):
        patient_id, home_org = rng.choice(registrations) if registrations else (None, None)
        if rng.random() < 0.03 and not is_open:
            patient_id = None  # an unidentified patient, never matched
        # Opened at first medical contact (the door for a walk-in), as a case is opened in real life.
        opened = timeline.get("first_medical_contact") or timeline.get("arrival") or min(timeline.values())
        receiving = mch if centre in (Centre.MATERNAL, Centre.NEONATAL) else hospital
        opener = home_org if attrs["source"] == "ecg" and home_org else receiving.id
        last = max(timeline.values())
        closed_at = None if is_open else last + timedelta(hours=rng.uniform(2, 72))
        cases.append({
            "id": case_id, "number": f"{NUMBER_PREFIX[centre]}{opened.astimezone(_SHANGHAI):%Y%m%d}-{case_id:04d}",
            "centre": centre, "patient_id": patient_id, "state": CaseState.OPEN if is_open else CaseState.CLOSED,
            "source": attrs["source"], "hospital_organisation_id": receiving.id, "opened_organisation_id": opener,
            "ecg_request_id": None, "call_id": None, "arrival_mode": attrs["arrival_mode"],
            "bypass_ed": attrs["bypass_ed"], "diagnosis": attrs["diagnosis"], "diagnosis_code": attrs["diagnosis_code"],
            "outcome": "" if is_open else rng.choice(OUTCOMES), "opened_at": opened, "opened_by_user_id": None,
            "closed_at": closed_at, "closed_by_user_id": None, "updated_at": closed_at or last})
        source = "call" if attrs["source"] == "call" else "ecg" if attrs["source"] == "ecg" else "manual"
        for node, at in timeline.items():
            nodes.append({"case_id": case_id, "node": node, "at": at, "recorded_at": at + timedelta(minutes=1),
                          "by_user_id": None, "source": source, "note": ""})
        events.append({"case_id": case_id, "kind": "open", "node": "", "old_at": None, "new_at": None,
                       "by_user_id": None, "at": opened, "reason": "", "detail": {"source": attrs["source"],
                                                                                   "demo": True}})
        if closed_at is not None:
            events.append({"case_id": case_id, "kind": "close", "node": "", "old_at": None, "new_at": None,
                           "by_user_id": None, "at": closed_at, "reason": "", "detail": {"demo": True}})
    for table, rows in ((PathwayCase, cases), (PathwayNode, nodes), (PathwayEvent, events)):
        for start in range(0, len(rows), 2000):
            db.execute(insert(table), rows[start:start + 2000])
    db.flush()
    counts = {str(c): sum(1 for p in plans if p[0] == c) for c in Centre}
    return {**counts, "cases": len(cases), "open": sum(1 for p in plans if p[3]), "nodes": len(nodes)}
