"""Demo screening events: a free clinic three weeks ago (about 400 people, 600 leaflets), a school check-up last
month (a few hundred students, imported from a sheet with a few bad rows), and a mobile check-up planned for next
week.

The free clinic's history goes in with bulk inserts; whether each result is abnormal comes from the service's rule
(`screening.service.judge`), and each resident with a finding gets one task for their family-doctor team through
`chronic.tasks.create_task` (some done since, the rest open). The school sheet goes through the real import
(`screening.service.import_school_sheet`). No chronic reading is written from the demo clinic, so the chronic
stage's showcase patients keep the state that stage gave them. Deterministic for a seed.
"""

from __future__ import annotations

import random
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.chronic.models import ChronicTask
from healthrelay.chronic.tasks import create_task
from healthrelay.core.db import LOCAL_TZ
from healthrelay.directory.models import Organisation, OrgKind, Team, TeamKind
from healthrelay.patients.models import Patient
from healthrelay.screening import service
from healthrelay.screening.models import ScreeningAttendance, ScreeningEvent, ScreeningResult
from healthrelay.screening.sheets import make_school_sheet

CLINIC_PEOPLE = 400
CLINIC_LEAFLETS = 600
SCHOOL_STUDENTS = 300
SCHOOL_BAD_ROWS = 4
_CONSTITUTIONS = ("pinghe", "pinghe", "qixu", "yangxu", "yinxu", "tanshi", "shire", "xueyu", "qiyu")


def _at(day: Any, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=LOCAL_TZ)


def _hosts(db: Session) -> list[tuple[Organisation, Team, User | None]]:
    """Township centres with a family-doctor team, and a clinician there to act as the organiser."""
    out = []
    centres = db.scalars(select(Organisation).where(Organisation.kind == OrgKind.TOWNSHIP_CENTRE)
                         .order_by(Organisation.id)).all()
    for org in centres:
        team = db.scalar(select(Team).where(Team.organisation_id == org.id, Team.kind == TeamKind.FAMILY_DOCTOR)
                         .order_by(Team.id).limit(1))
        if team is None:
            continue
        user = db.scalar(select(User).where(User.organisation_id == org.id, User.role == Role.CLINICIAN)
                         .order_by(User.id).limit(1))
        out.append((org, team, user))
    return out


def build_demo_screening(db: Session, *, seed: int, now: datetime, patient_ids: list[int]) -> dict[str, int]:
    """Write the demo events; returns counts for the build summary."""
    rng = random.Random(seed * 7 + 19)
    today = now.astimezone(LOCAL_TZ).date()
    hosts = _hosts(db)
    made = {"screening_events": 0, "screening_attendances": 0, "screening_results": 0, "screening_findings": 0,
            "screening_tasks_open": 0, "school_students": 0}
    if not hosts or not patient_ids:
        return made
    services = {s.code: s for s in service.services_of(db)}

    # --- the free clinic, three weeks ago
    org, team, organiser = hosts[0]
    day = today - timedelta(days=21)
    clinic_services = ["bp", "glucose", "tcm_pulse", "consultation"]
    clinic_id = db.scalar(insert(ScreeningEvent).returning(ScreeningEvent.id), {
        "number": service.temporary_number(), "kind": "free_clinic", "title": "家庭医生签约服务暨高血压糖尿病义诊",
        "host_organisation_id": org.id, "team_id": team.id, "place": "镇文化广场", "area_id": org.area_id,
        "starts_at": _at(day, 8), "ends_at": _at(day, 16), "departments": ["全科", "心内科", "内分泌科", "中医科"],
        "services": clinic_services, "status": "closed", "leaflets_given": CLINIC_LEAFLETS,
        "medicines_given": 85, "medicines_value_fen": 212_500, "notes": "县医院专家下沉参加",
        "created_by_user_id": organiser.id if organiser else None, "created_at": _at(day - timedelta(days=14), 10),
        "opened_at": _at(day, 7, 50), "closed_at": _at(day, 16, 20)})
    db.execute(update(ScreeningEvent).where(ScreeningEvent.id == clinic_id)
               .values(number=service.event_number(day, clinic_id)))
    adults = db.execute(select(Patient.id, Patient.birth_date).where(Patient.id.in_(patient_ids))).all()
    adults = sorted((pid, born) for pid, born in adults if (today - born).days >= 35 * 365)
    people = rng.sample(adults, min(CLINIC_PEOPLE, len(adults)))
    attendance_rows = [{"event_id": clinic_id, "patient_id": pid, "client_token": f"demo-{seed}-{clinic_id}-{pid}",
                        "how": "resident_id" if i % 3 else "match", "school": "", "grade": "", "class_name": "",
                        "registered_at": _at(day, 8) + timedelta(minutes=i * 420 // max(1, len(people))),
                        "registered_by_user_id": organiser.id if organiser else None}
                       for i, (pid, _born) in enumerate(people)]
    attendance_ids = db.scalars(insert(ScreeningAttendance).returning(ScreeningAttendance.id,
                                                                      sort_by_parameter_order=True),
                                attendance_rows).all()
    results: list[dict[str, Any]] = []
    for (pid, born), aid, arow in zip(people, attendance_ids, attendance_rows, strict=True):
        age = (today - born).days // 365
        values_by_code: dict[str, dict[str, Any]] = {
            "bp": {"sbp": rng.randint(108, 150) + max(0, age - 50) // 2 + (18 if rng.random() < 0.06 else 0),
                   "dbp": rng.randint(66, 92)}}
        if rng.random() < 0.6:
            fasting = rng.random() < 0.7
            values_by_code["glucose"] = {"value": round(rng.uniform(4.4, 7.8) + (4 if rng.random() < 0.05 else 0), 1),
                                         "context": "fasting" if fasting else "random"}
        if rng.random() < 0.3:
            values_by_code["tcm_pulse"] = {"constitution": rng.choice(_CONSTITUTIONS)}
        if rng.random() < 0.5:
            values_by_code["consultation"] = {"note": "健康教育：低盐饮食、规律服药"}
        for code, values in values_by_code.items():
            verdict = service.judge(services[code], values)
            results.append({"attendance_id": aid, "event_id": clinic_id, "patient_id": pid, "service_code": code,
                            "values": values, "abnormal": verdict.abnormal, "danger": verdict.danger,
                            "finding": verdict.finding, "task_id": None,
                            "recorded_by_user_id": organiser.id if organiser else None,
                            "recorded_at": arow["registered_at"] + timedelta(minutes=6)})
    result_ids = db.scalars(insert(ScreeningResult).returning(ScreeningResult.id, sort_by_parameter_order=True),
                            results).all()
    findings: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for rid, row in zip(result_ids, results, strict=True):
        if row["abnormal"]:
            findings.setdefault(row["patient_id"], []).append((rid, row))
    open_tasks = 0
    table = ScreeningResult.__table__
    for pid, found in sorted(findings.items()):
        danger = any(r["danger"] for _, r in found)
        task = create_task(db, patient_id=pid, kind="screening", due_on=day + timedelta(days=7 if danger else 14),
                           title=f"义诊发现异常：{found[0][1]['finding']}", by=organiser,
                           detail="\n".join(r["finding"] for _, r in found), screening_result_id=found[0][0])
        task.created_at = found[0][1]["recorded_at"]
        if rng.random() < 0.55:  # the team has followed up on about half of them since
            task.status, task.done_at, task.outcome = "done", _at(day + timedelta(days=rng.randint(3, 15)), 15), \
                "已电话随访，建议到卫生院复测血压/血糖"
            task.done_by_user_id = organiser.id if organiser else None
        else:
            open_tasks += 1
        db.execute(update(table).where(table.c.id.in_([rid for rid, _ in found])).values(task_id=task.id))
    made["screening_events"] += 1
    made["screening_attendances"] += len(attendance_ids)
    made["screening_results"] += len(result_ids)
    made["screening_findings"] += sum(len(v) for v in findings.values())

    # --- the school check-up, last month, through the real import
    org2, team2, teacher_doc = hosts[1 % len(hosts)]
    if teacher_doc is not None:
        day2 = today - timedelta(days=40)
        school = ScreeningEvent(number=service.temporary_number(), kind="school_checkup",
                                title="城关镇中心小学秋季学生体检",
                                host_organisation_id=org2.id, team_id=team2.id, place="城关镇中心小学",
                                area_id=org2.area_id, starts_at=_at(day2, 8), ends_at=_at(day2, 17),
                                departments=["儿科", "眼科", "口腔科"],
                                services=["height_weight", "vision", "dental", "bp"], status="open",
                                created_by_user_id=teacher_doc.id, created_at=_at(day2 - timedelta(days=10), 9),
                                opened_at=_at(day2, 7, 45))
        db.add(school)
        db.flush()
        school.number = service.event_number(day2, school.id)
        sheet = make_school_sheet(SCHOOL_STUDENTS, seed=seed, bad_rows=SCHOOL_BAD_ROWS)
        record = service.import_school_sheet(db, by=teacher_doc, event_id=school.id,
                                             filename="城关镇中心小学体检表.xlsx", content=sheet)
        school.status, school.closed_at, school.leaflets_given = "closed", _at(day2, 17, 30), SCHOOL_STUDENTS
        back = _at(day2 + timedelta(days=1), 10)
        record.imported_at = back
        attendance = ScreeningAttendance.__table__
        db.execute(update(attendance).where(attendance.c.event_id == school.id).values(registered_at=back))
        db.execute(update(table).where(table.c.event_id == school.id).values(recorded_at=back))
        school_tasks = select(table.c.task_id).where(table.c.event_id == school.id, table.c.task_id.is_not(None))
        tasks = ChronicTask.__table__
        db.execute(update(tasks).where(tasks.c.id.in_(school_tasks)).values(created_at=back))
        open_tasks += len(set(db.scalars(school_tasks)))
        made["screening_events"] += 1
        made["school_students"] = record.rows_imported
        made["screening_attendances"] += record.rows_imported
        made["screening_findings"] += record.abnormal_findings
        made["screening_import_errors"] = len(record.errors)
        made["screening_results"] += db.query(ScreeningResult).filter(ScreeningResult.event_id == school.id).count()

    # --- a mobile check-up planned for next week
    org3, team3, doc3 = hosts[2 % len(hosts)]
    day3 = today + timedelta(days=7)
    planned = ScreeningEvent(
        number=service.temporary_number(), kind="mobile_checkup", title="巡回体检车进村（65岁以上老人体检）",
        host_organisation_id=org3.id, team_id=team3.id, place="村卫生室门前", area_id=org3.area_id,
        starts_at=_at(day3, 8), ends_at=_at(day3, 15), departments=["体检科", "放射科", "心电图室"],
        services=["bp", "glucose", "ecg", "dr", "bone_density", "height_weight"], status="planned",
        created_by_user_id=doc3.id if doc3 else None, created_at=now)
    db.add(planned)
    db.flush()
    planned.number = service.event_number(day3, planned.id)
    db.flush()
    made["screening_events"] += 1
    made["screening_tasks_open"] = open_tasks
    return made
